"""The strategy interface every distillation method implements.

The loop owns data order, the student optimizer and scheduler, progress, logging and checkpoints. A
strategy owns what one training step means: which losses, which forward passes, and any extra trainable
state (a teacher that learns, added modules, their optimizers). Strategies that update the teacher or
add modules declare it through :attr:`Strategy.updates_teacher` and :meth:`Strategy.extra_modules`, so
the loop's callers never change when a new strategy arrives.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ikd.config import DistillConfig, TrainConfig


@dataclass
class TeacherOutputs:
    """Teacher logits computed once over the training split: ``logits`` [N_train, C], row i = train row i."""

    logits: torch.Tensor
    meta: dict[str, str]

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor:
        return self.logits[index]


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            temperature: float, alpha: float) -> tuple[torch.Tensor, dict[str, float]]:
    """alpha * tau^2 * KL(p_T^tau || p_S^tau) + (1 - alpha) * CE(y, p_S), batch mean.

    student_logits, teacher_logits: [B, C]; labels: [B]. Returns (loss, {"kl": ..., "ce": ...}).
    """
    tau = temperature
    kl = F.kl_div(F.log_softmax(student_logits / tau, -1), F.log_softmax(teacher_logits / tau, -1),
                  reduction="batchmean", log_target=True)
    ce = F.cross_entropy(student_logits, labels)
    loss = alpha * tau * tau * kl + (1.0 - alpha) * ce
    return loss, {"kl": float(kl.detach()), "ce": float(ce.detach())}


def model_inputs(side: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: side[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in side}


class Strategy:
    """One way to train a student. Subclasses implement :meth:`loss` (and may override :meth:`step`)."""

    name = "base"
    uses_teacher = False     # needs the teacher's outputs
    updates_teacher = False  # changes teacher weights (cached teacher outputs are then refused)

    def __init__(self, cfg: DistillConfig | TrainConfig, student: nn.Module, teacher: nn.Module | None = None,
                 teacher_outputs: TeacherOutputs | None = None, input_side: str = "student"):
        self.cfg = cfg
        self.input_side = input_side  # which tokenization feeds the trained model ("teacher" in adapt)
        self.student = student
        self.teacher = teacher
        self.teacher_outputs = teacher_outputs
        self.counts: Counter[str] = Counter()  # student_fwd, student_bwd, teacher_fwd, teacher_bwd

    # ---- what the loop asks -----------------------------------------------------------------------
    def extra_modules(self) -> dict[str, nn.Module]:
        """Trainable modules besides the student, optimised with it and saved in checkpoints."""
        return {}

    def parameters(self):
        yield from self.student.parameters()
        for m in self.extra_modules().values():
            yield from m.parameters()

    def train(self) -> None:
        self.student.train()
        for m in self.extra_modules().values():
            m.train()
        if self.teacher is not None and not self.updates_teacher:
            self.teacher.eval()

    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def step(self, batch: dict[str, Any], optimizer: torch.optim.Optimizer,
             scheduler: torch.optim.lr_scheduler.LRScheduler) -> dict[str, float]:
        """One optimisation step on ``batch``. Returns scalar logs (at least "loss")."""
        loss, logs = self.loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.counts["student_bwd"] += 1
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(list(self.parameters()), self.cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        return {"loss": float(loss.detach()), **logs}

    # ---- helpers for subclasses --------------------------------------------------------------------
    def student_logits(self, batch: dict[str, Any]) -> torch.Tensor:
        self.counts["student_fwd"] += 1
        return self.student(**model_inputs(batch[self.input_side]))

    def teacher_logits(self, batch: dict[str, Any]) -> torch.Tensor:
        """Teacher logits [B, C] for the batch: from the cache when there is one, else a no-grad forward."""
        if self.teacher_outputs is not None:
            return self.teacher_outputs[batch["index"]].to(batch["labels"].device)
        self.counts["teacher_fwd"] += 1
        with torch.no_grad():
            return self.teacher(**model_inputs(batch["teacher"]))

    def state_dict(self) -> dict[str, Any]:
        """Strategy state beyond the student and its optimizer (for checkpoints)."""
        return {name: m.state_dict() for name, m in self.extra_modules().items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, m in self.extra_modules().items():
            m.load_state_dict(state[name])
