"""``kd``: vanilla knowledge distillation from a frozen teacher (Hinton et al.), the baseline.

Loss: alpha * tau^2 * KL(p_T^tau || p_S^tau) + (1 - alpha) * CE, plus the optional PKD hidden-state term
beta * mean ||normalize(P h_S^(i)) - normalize(h_T^(j))||^2 over mapped layer pairs (P: a learned linear
projection when the widths differ; states pooled the way each model's head pools). The teacher never
changes, so its logits and pooled states come from :class:`~ikd.strategies.base.TeacherOutputs`
computed once per training set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

from ikd.strategies.base import CacheSpec, Strategy, default_layer_pairs, hidden_loss, kd_loss, model_inputs

if TYPE_CHECKING:
    from ikd.core.classifier import SequenceClassifier
    from ikd.strategies.base import DistillSettings


def layer_pairs(cfg, teacher, student) -> list[tuple[int, int]]:
    """The [student, teacher] hidden-state index pairs of the PKD term, checked against both models."""
    from ikd.errors import ConfigError

    pairs = (
        [tuple(p) for p in cfg.hidden_layers]
        if cfg.hidden_layers
        else default_layer_pairs(student.num_layers, teacher.num_layers)
    )
    for s, t in pairs:
        if not (0 <= s <= student.num_layers and 0 <= t <= teacher.num_layers):
            raise ConfigError(
                f"distill.hidden_layers: pair [{s}, {t}] is out of range (student has "
                f"{student.num_layers} layers, teacher {teacher.num_layers})"
            )
    return pairs


class KD(Strategy):
    name = "kd"
    uses_teacher = True
    # what the distill step gives a strategy that uses a teacher (never the adapt step's TrainConfig)
    cfg: DistillSettings
    teacher: SequenceClassifier

    def __init__(self, cfg, student, teacher=None, teacher_outputs=None, input_side="student", quiz=None):
        super().__init__(cfg, student, teacher, teacher_outputs, input_side, quiz)
        self.pairs: list[tuple[int, int]] = []
        self.projection: nn.Module | None = None
        if getattr(cfg, "hidden_weight", 0.0) > 0:
            self.pairs = layer_pairs(cfg, teacher, student)
            if student.hidden_size != teacher.hidden_size and cfg.hidden_loss != "relation":
                ref = next(student.parameters())
                self.projection = nn.Linear(student.hidden_size, teacher.hidden_size).to(ref.device, ref.dtype)

    @classmethod
    def cache_spec(cls, cfg, teacher, student):
        if cfg.hidden_weight > 0:
            return CacheSpec(hidden=tuple(sorted({t for _, t in layer_pairs(cfg, teacher, student)})))
        return CacheSpec()

    def extra_modules(self):
        return {"hidden_projection": self.projection} if self.projection is not None else {}

    def teacher_states(self, batch):
        """(teacher logits [B, C], pooled teacher states of the mapped layers) for the batch, no grad."""
        if not self.pairs:
            return self.teacher_logits(batch), ()
        layers = tuple(t for _, t in self.pairs)
        if self.teacher_outputs is not None and all(t in self.teacher_outputs.hidden for t in layers):
            dev = batch["labels"].device
            idx = batch["index"]
            return self.teacher_outputs[idx].to(dev), tuple(self.teacher_outputs.hidden[t][idx].to(dev) for t in layers)
        import torch

        self.counts["teacher_fwd"] += 1
        with torch.no_grad():
            return self.teacher(**model_inputs(batch["teacher"]), pooled_layers=layers)

    def loss(self, batch):
        t_logits, t_states = self.teacher_states(batch)
        return self.objective(self.student_outputs(batch), (t_logits, *t_states), batch["labels"])

    def student_outputs(self, batch, params=None, count: bool = True) -> tuple:
        """(student logits [B, C], pooled states of the mapped layers...) on ``batch``; with ``params`` (a
        name -> tensor dict) the student is evaluated functionally at those weights."""
        self.counts["student_fwd"] += int(count)
        kwargs: dict[str, Any] = model_inputs(batch[self.input_side])
        if self.pairs:
            kwargs["pooled_layers"] = tuple(s for s, _ in self.pairs)
        if params is None:
            out = self.student(**kwargs)
        else:
            from torch.func import functional_call

            out = functional_call(self.student, params, args=(), kwargs=kwargs)
        return (out[0], *out[1]) if isinstance(out, tuple) else (out,)

    def objective(self, s_out: tuple, t_out: tuple, labels):
        """L_KD (+ beta * L_hidden) from student and teacher outputs (logits first, then pooled states)."""
        loss, logs = kd_loss(s_out[0], t_out[0], labels, self.cfg.temperature, self.cfg.alpha, self.cfg.soft_loss)
        if self.pairs:
            h = hidden_loss(tuple(s_out[1:]), tuple(t_out[1:]), self.projection, self.cfg.hidden_loss)
            loss = loss + self.cfg.hidden_weight * h
            logs["hidden"] = float(h.detach())
        return loss, logs
