import math

import pytest
import torch
import torch.nn.functional as F

from ikd.config import DistillConfig
from ikd.strategies import STRATEGIES, TeacherOutputs
from ikd.strategies.base import kd_loss


def test_kd_loss_golden_values():
    s = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    y = torch.tensor([0, 1])
    loss, logs = kd_loss(s, t, y, temperature=2.0, alpha=0.5)
    ps, pt = F.softmax(s / 2, -1), F.softmax(t / 2, -1)
    kl = (pt * (pt.log() - ps.log())).sum(-1).mean()
    ce = F.cross_entropy(s, y)
    assert loss.item() == pytest.approx(0.5 * 4 * kl.item() + 0.5 * ce.item(), rel=1e-6)
    assert logs["kl"] == pytest.approx(kl.item(), rel=1e-6)
    # hand-computed golden number for this input
    assert loss.item() == pytest.approx(0.5 * 4 * 0.0590966 + 0.5 * 0.2200949, rel=1e-5)


def test_kd_loss_limits():
    s = torch.randn(4, 3)
    y = torch.tensor([0, 1, 2, 0])
    same, _logs = kd_loss(s, s.clone(), y, 3.0, 1.0)
    assert same.item() == pytest.approx(0.0, abs=1e-6)
    ce_only, _ = kd_loss(s, torch.randn(4, 3), y, 3.0, 0.0)
    assert ce_only.item() == pytest.approx(F.cross_entropy(s, y).item())


class Lin(torch.nn.Module):
    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.lin = torch.nn.Linear(4, 2)

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        return self.lin(input_ids.float())


def _batch():
    x = torch.randn(6, 4)
    return {
        "labels": torch.tensor([0, 1, 0, 1, 0, 1]),
        "index": torch.arange(6),
        "student": {"input_ids": x, "attention_mask": torch.ones(6, 4)},
        "teacher": {"input_ids": x, "attention_mask": torch.ones(6, 4)},
    }


def test_cached_teacher_outputs_give_the_same_loss_as_a_live_teacher():
    batch = _batch()
    teacher = Lin(1).eval()
    with torch.no_grad():
        cache = TeacherOutputs(teacher(batch["teacher"]["input_ids"], None), {})
    live = STRATEGIES["kd"](DistillConfig(), Lin(2), teacher)
    cached = STRATEGIES["kd"](DistillConfig(), Lin(2), None, cache)
    a, _ = live.loss(batch)
    b, _ = cached.loss(batch)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)
    assert live.counts["teacher_fwd"] == 1 and cached.counts["teacher_fwd"] == 0


def test_kd_step_leaves_the_teacher_unchanged_and_moves_the_student():
    batch = _batch()
    teacher, student = Lin(1), Lin(2)
    t0 = {k: v.clone() for k, v in teacher.state_dict().items()}
    s0 = student.lin.weight.clone()
    strat = STRATEGIES["kd"](DistillConfig(lr=0.1), student, teacher)
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    logs = strat.step(batch, opt, sched)
    assert math.isfinite(logs["loss"]) and not torch.equal(s0, student.lin.weight)
    assert all(torch.equal(t0[k], v) for k, v in teacher.state_dict().items())


def test_registry_flags():
    assert not STRATEGIES["finetune"].uses_teacher and STRATEGIES["kd"].uses_teacher
    learning = {name for name, cls in STRATEGIES.items() if cls.updates_teacher}
    assert learning == {"prokt", "metadistil", "ikd"}
    assert {name for name, cls in STRATEGIES.items() if cls.uses_quiz} == {"metadistil", "ikd"}


def test_masked_ce_skips_unlabeled_rows():
    from ikd.strategies.base import masked_ce

    logits = torch.randn(4, 2)
    y = torch.tensor([0, -1, 1, -1])
    assert masked_ce(logits, y).item() == pytest.approx(F.cross_entropy(logits[[0, 2]], y[[0, 2]]).item())
    assert masked_ce(logits, torch.full((4,), -1)).item() == 0.0
    loss, _ = kd_loss(logits, torch.randn(4, 2), torch.full((4,), -1), 2.0, 0.5)
    assert torch.isfinite(loss)


def test_hidden_loss_is_zero_for_matching_directions_and_positive_otherwise():
    from ikd.strategies.base import default_layer_pairs, hidden_loss

    a = torch.randn(3, 8)
    for kind in ("pkd", "centered", "relation"):
        assert hidden_loss((a,), (2.0 * a,), None, kind).item() == pytest.approx(0.0, abs=1e-6), kind
    assert hidden_loss((a,), (-a,), None, "pkd").item() == pytest.approx(4.0, rel=1e-5)
    assert hidden_loss((a,), (-a,), None, "centered").item() == pytest.approx(4.0, rel=1e-5)
    assert default_layer_pairs(6, 12) == [(1, 2), (2, 4), (3, 6), (4, 8), (5, 10), (6, 12)]


def test_centered_hidden_loss_gives_a_collapsed_student_nothing():
    """Anisotropic teacher states (a large shared direction): under pkd one constant student vector, the shared
    direction, scores far better than chance, the pull that collapses a student; centered and relation score it
    like chance (2 and the teacher's own relation energy), so only what tells rows apart is rewarded."""
    from ikd.strategies.base import hidden_loss

    torch.manual_seed(0)
    shared = torch.randn(1, 32) * 3.0
    teacher = shared + torch.randn(64, 32)
    collapsed = shared.expand(64, 32) + 1e-4 * torch.randn(64, 32)
    assert hidden_loss((collapsed,), (teacher,), None, "pkd").item() < 0.5
    assert hidden_loss((collapsed,), (teacher,), None, "centered").item() > 1.5
    good = teacher + 0.1 * torch.randn(64, 32)
    assert hidden_loss((good,), (teacher,), None, "centered").item() < 0.1
    assert (
        hidden_loss((good,), (teacher,), None, "relation").item()
        < hidden_loss((torch.randn(64, 32),), (teacher,), None, "relation").item()
    )
