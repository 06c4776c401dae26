"""The bilevel engine (metadistil / ikd), prokt, teacher scopes and LoRA, on tiny random BERTs."""

import copy

import pytest
import torch
import torch.nn.functional as F
from tests_helpers import batch, tiny

from ikd.config import DistillConfig
from ikd.strategies import STRATEGIES, TeacherOutputs
from ikd.strategies import teacher as teacher_mod
from ikd.strategies.bilevel import Bilevel


def meta_gradient(mode, **overrides):
    """The teacher gradient of one update (computed by the engine; the teacher optimizer step is captured)."""
    torch.manual_seed(0)
    cfg = DistillConfig(metadistil={"meta_grad": mode, "pilot_lr": 0.5}, temperature=2.0, **overrides)
    teacher, student = tiny(24, 2, seed=1), tiny(16, 1, seed=2)
    strat = STRATEGIES["metadistil"](cfg, student, teacher, quiz=[batch(5, seed=3)])
    seen = {}
    strat.t_opt.apply = lambda grads: (
        seen.setdefault(
            "g", [torch.zeros_like(p) if g is None else g.clone() for p, g in zip(strat.t_params, grads, strict=True)]
        )
        and 0.0
    )
    strat.train()
    strat.teacher_update(batch(seed=4))
    return torch.cat([g.flatten() for g in seen["g"]])


def test_jvp_meta_gradient_equals_exact():
    exact, jvp = meta_gradient("exact"), meta_gradient("jvp")
    assert exact.norm() > 0
    rel = ((jvp - exact).norm() / exact.norm()).item()
    assert rel <= 1e-4, rel


def test_jvp_matches_exact_with_the_hidden_term_and_mse_soft_loss():
    kw = {"hidden_weight": 10.0, "soft_loss": "mse"}
    exact, jvp = meta_gradient("exact", **kw), meta_gradient("jvp", **kw)
    assert ((jvp - exact).norm() / exact.norm()).item() <= 1e-4


def test_finite_difference_agrees_in_direction():
    exact, fd = meta_gradient("exact"), meta_gradient("finite_diff")
    assert F.cosine_similarity(exact, fd, dim=0).item() >= 0.99


def test_meta_gradient_is_zero_without_second_order_terms():
    # the KD part of the loss is what couples teacher and student; with alpha = 0 there is no meta-gradient
    g = meta_gradient("exact", alpha=0.0)
    assert g.abs().max().item() == 0.0


@pytest.mark.parametrize("name", ["metadistil", "ikd", "prokt"])
def test_learning_teachers_change_the_teacher_and_kd_does_not(name):
    cfg = DistillConfig(**{s: {"teacher_lr": 1e-2} for s in ("metadistil", "ikd", "prokt")})
    teacher, student = tiny(24, 2, seed=1).float(), tiny(16, 1, seed=2).float()
    before = copy.deepcopy(teacher.state_dict())
    quiz = [batch(4, seed=9)]
    strat = STRATEGIES[name](cfg, student, teacher, quiz=quiz if name != "prokt" else None)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    strat.train()
    b1, b2 = batch(seed=5), batch(seed=6)
    strat.step(b1, opt, sched, upcoming=b2)
    strat.step(b2, opt, sched, upcoming=None)
    assert strat.teacher_updates >= 1
    changed = [k for k, v in teacher.state_dict().items() if not torch.equal(before[k], v)]
    assert changed, f"{name} left the teacher unchanged"
    kd_teacher = tiny(24, 2, seed=1).float()
    kd_before = copy.deepcopy(kd_teacher.state_dict())
    kd = STRATEGIES["kd"](cfg, tiny(16, 1, seed=2).float(), kd_teacher)
    kd.step(batch(seed=5), opt, sched)
    assert all(torch.equal(kd_before[k], v) for k, v in kd_teacher.state_dict().items())


def test_ikd_course_step_reuses_the_lookahead_gradient():
    cfg = DistillConfig(ikd={"reuse_teacher_outputs": True})
    teacher, student = tiny(24, 2, seed=1).float(), tiny(16, 1, seed=2).float()
    strat = STRATEGIES["ikd"](cfg, student, teacher, quiz=[batch(4, seed=9)])
    opt = torch.optim.SGD(student.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    strat.train()
    b1, b2 = batch(seed=5), batch(seed=6)
    strat.step(b1, opt, sched, upcoming=b2)  # course on b1 (student fwd + bwd), exam on b2
    fwd_after_first = strat.counts["student_fwd"]
    strat.step(b2, opt, sched, upcoming=None)  # course on b2 reuses the exam's look-ahead gradient
    assert strat.counts["student_fwd"] == fwd_after_first
    assert strat.teacher_updates == 1


@pytest.mark.parametrize(("scope", "expect"), [("head", {"head.weight", "head.bias"}), ("top:1", None), ("lora", None)])
def test_teacher_scopes(scope, expect):
    teacher = tiny(24, 2, seed=1).float()
    params = teacher_mod.configure(teacher, scope, lora_rank=4)
    names = {n for n, p in teacher.named_parameters() if p.requires_grad}
    assert len(params) == len(names) > 0
    if expect:
        assert names == expect
    if scope == "top:1":
        assert all(n.startswith(("head.", "encoder.encoder.layer.1.")) for n in names)
        assert any(n.startswith("encoder.encoder.layer.1.") for n in names)
    if scope == "lora":
        assert all("lora_" in n or n.startswith("head.") for n in names)


def test_lora_merge_keeps_the_function():
    teacher = tiny(24, 2, seed=1).float().eval()
    teacher_mod.configure(teacher, "lora", lora_rank=4)
    for m in teacher.modules():
        if isinstance(m, teacher_mod.LoRALinear):
            torch.nn.init.normal_(m.lora_b, std=0.1)
    b = batch()["teacher"]
    with torch.no_grad():
        before = teacher(**b)
        teacher_mod.merge_lora(teacher)
        after = teacher(**b)
    assert not any(isinstance(m, teacher_mod.LoRALinear) for m in teacher.modules())
    torch.testing.assert_close(before, after, atol=1e-5, rtol=1e-5)


def test_bilevel_needs_a_quiz_split():
    from ikd.errors import ConfigError

    with pytest.raises(ConfigError, match="quiz_rows"):
        STRATEGIES["metadistil"](DistillConfig(), tiny(16, 1), tiny(24, 2), quiz=None)


def test_head_scope_uses_cached_features_and_matches_a_live_teacher():
    teacher, student = tiny(24, 2, seed=1).float(), tiny(16, 1, seed=2).float()
    b = batch()
    with torch.no_grad():
        logits, feats = teacher.eval()(**b["teacher"], features=True)
    cache = TeacherOutputs(logits, {}, features=feats)
    cfg = DistillConfig(metadistil={"teacher_scope": "head"})
    cached = STRATEGIES["metadistil"](cfg, student, teacher, cache, quiz=[batch(4, seed=9)])
    live = STRATEGIES["metadistil"](cfg, copy.deepcopy(student), copy.deepcopy(teacher), quiz=[batch(4, seed=9)])
    a = cached.teacher_forward(b, grad=False)[0]
    c = live.teacher_forward(b, grad=False)[0]
    torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-5)
    assert cached.counts["teacher_fwd"] == 0 and cached.counts["teacher_head_fwd"] == 1
    assert issubclass(STRATEGIES["ikd"], Bilevel) and issubclass(STRATEGIES["metadistil"], Bilevel)
