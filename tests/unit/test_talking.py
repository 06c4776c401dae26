"""Talking Models: modules train, the teacher does not, widths may differ, messages round-trip."""

import copy

import pytest
import torch
from tests_helpers import batch, tiny

from ikd.config import DistillConfig
from ikd.errors import ConfigError
from ikd.strategies import STRATEGIES, TeacherOutputs
from ikd.strategies.talking import talking_layers


def _strategy(**talking):
    teacher, student = tiny(24, 2, seed=1).float(), tiny(16, 1, seed=2).float()  # different widths
    cfg = DistillConfig(talking=talking)
    return STRATEGIES["talking"](cfg, student, teacher), teacher, student


def test_talking_trains_its_modules_and_leaves_the_teacher_untouched():
    strat, teacher, student = _strategy(rounds=2, module="mlp")
    t0 = copy.deepcopy(teacher.state_dict())
    m0 = copy.deepcopy(strat.messenger.state_dict())
    s0 = copy.deepcopy(student.state_dict())
    opt = torch.optim.AdamW(list(strat.parameters()), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    strat.train()
    first = strat.step(batch(), opt, sched)
    for _ in range(5):
        last = strat.step(batch(), opt, sched)
    assert last["loss"] < first["loss"]
    assert all(torch.equal(t0[k], v) for k, v in teacher.state_dict().items())
    assert all(not torch.equal(m0[k], v) for k, v in strat.messenger.state_dict().items())
    assert any(not torch.equal(s0[k], v) for k, v in student.state_dict().items())
    assert all(not p.requires_grad for p in teacher.parameters())
    assert strat.counts["teacher_partial_fwd"] == 6 * 2  # two rounds a step


def test_interpret_runs_the_teacher_layers_with_gradients_through_activations():
    strat, teacher, _ = _strategy(teacher_layers=[0, 2])
    msg = torch.randn(3, strat.cfg.talking.message_dim, requires_grad=True)
    reply = strat.interpret(msg)
    reply.sum().backward()
    assert reply.shape == msg.shape and msg.grad is not None and msg.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_one_position_message_equals_a_repeated_sequence():
    # the interpret pass places the message as one position: identical positions give identical states
    teacher = tiny(24, 2, seed=1).float().eval()
    x = torch.randn(2, 1, 24)
    with torch.no_grad():
        one = teacher.run_layers(x, 0, 2)[:, 0]
        many = teacher.run_layers(x.expand(2, 5, 24).contiguous(), 0, 2)
    torch.testing.assert_close(many, one.unsqueeze(1).expand_as(many), atol=1e-5, rtol=1e-5)


def test_cached_teacher_states_match_a_live_teacher():
    strat, teacher, student = _strategy()
    b = batch()
    (lt, ht) = strat.lt, strat.ht
    with torch.no_grad():
        logits, (low, high) = teacher.eval()(**b["teacher"], pooled_layers=(lt, ht))
    cached = STRATEGIES["talking"](strat.cfg, student, teacher, TeacherOutputs(logits, {}, hidden={lt: low, ht: high}))
    for a, c in zip(strat._teacher(b), cached._teacher(b), strict=True):
        torch.testing.assert_close(a, c)
    assert cached.counts["teacher_fwd"] == 0


def test_layer_choices_are_checked():
    teacher, student = tiny(24, 2, seed=1), tiny(16, 1, seed=2)
    assert talking_layers(DistillConfig(), teacher, student) == ((0, 1), (1, 2))
    with pytest.raises(ConfigError, match="teacher_layers"):
        talking_layers(DistillConfig(talking={"teacher_layers": [1, 5]}), teacher, student)
