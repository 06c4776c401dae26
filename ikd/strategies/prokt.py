"""``prokt``: the teacher learns online, first order, from the labels and from the student; and
:class:`LearningTeacher`, what every strategy whose teacher trains shares (``metadistil`` and ``ikd`` build on it).

Each step: a student step on L_KD; a teacher step on CE(y, p_T) + gamma * KL(p_S^tau || p_T^tau). The trainable
teacher part is ``teacher_scope`` (full, top:N, head, lora: :mod:`ikd.strategies.teacher`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from ikd.section import Section
from ikd.strategies import teacher as teacher_mod
from ikd.strategies.base import CacheSpec, masked_ce, model_inputs
from ikd.strategies.kd import KD, layer_pairs


class LearningTeacherOptions(Section):
    """What every strategy whose teacher trains has: which teacher part trains and its optimizer."""

    teacher_lr: float = Field(1e-5, gt=0.0, lt=1.0, description="Teacher AdamW learning rate.")
    teacher_grad_clip: float | None = Field(1.0, gt=0.0)
    teacher_scope: str = Field("full", description="Trainable teacher part: full | top:N | head | lora.")
    lora_rank: int = Field(8, ge=1, description="teacher_scope lora: rank of the adapters.")

    @field_validator("teacher_scope")
    @classmethod
    def _scope(cls, s: str) -> str:
        if s not in ("full", "head", "lora") and not (s.startswith("top:") and s[4:].isdigit() and int(s[4:]) > 0):
            raise ValueError("must be full, head, lora or top:N with N > 0")
        return s


class ProKTOptions(LearningTeacherOptions):
    """``distill.prokt``."""

    gamma: float = Field(0.4, ge=0.0, description="Weight of KL(p_S||p_T) in the teacher's loss.")


class LearningTeacher(KD):
    """KD whose teacher trains: scope, optimizer, differentiable teacher forward, teacher saving."""

    updates_teacher = True
    owns_step = True  # a student step and a teacher step (or a meta-gradient) per batch

    def __init__(self, cfg, student, teacher=None, teacher_outputs=None, input_side="student", quiz=None):
        super().__init__(cfg, student, teacher, teacher_outputs, input_side, quiz)
        o = self.opts
        self.t_params = teacher_mod.configure(teacher, o.teacher_scope, o.lora_rank)
        self.t_opt = teacher_mod.TeacherOptimizer(self.t_params, o.teacher_lr, o.teacher_grad_clip)
        self.teacher_updates = 0

    @classmethod
    def cache_spec(cls, cfg, teacher, student):
        if cfg.options(cls.name).teacher_scope != "head":
            return None  # the teacher's body changes: nothing to precompute
        hidden = tuple(sorted({t for _, t in layer_pairs(cfg, teacher, student)})) if cfg.hidden_weight > 0 else ()
        return CacheSpec(hidden=hidden, features=True)

    def teacher_forward(self, batch: dict[str, Any], grad: bool) -> tuple:
        """(teacher logits [B, C], pooled mapped states...) with the current teacher; ``grad``: keep the graph."""
        layers = tuple(t for _, t in self.pairs)
        cache = self.teacher_outputs
        with torch.set_grad_enabled(grad):
            if cache is not None and cache.features is not None:  # frozen body: only the head runs
                idx, dev = batch["index"], batch["labels"].device
                self.counts["teacher_head_fwd"] += 1
                return (self.teacher.head(cache.features[idx].to(dev)), *(cache.hidden[t][idx].to(dev) for t in layers))
            self.counts["teacher_fwd"] += 1
            kwargs = model_inputs(batch["teacher"])
            if not layers:
                return (self.teacher(**kwargs),)
            logits, states = self.teacher(**kwargs, pooled_layers=layers)
            return (logits, *states)

    def teacher_states(self, batch):
        out = self.teacher_forward(batch, grad=False)
        return out[0], tuple(out[1:])

    def trained_teacher(self):
        """The teacher as trained (LoRA adapters merged), for saving."""
        teacher_mod.merge_lora(self.teacher)
        return self.teacher

    def save_artifacts(self, folder, write_model):
        """+ the trained teacher (``teacher/``: a model folder with its optimizer state, ``optimizer.pt``)."""
        super().save_artifacts(folder, write_model)
        t_opt = self.t_opt.state_dict()
        teacher = self.trained_teacher()
        write_model(
            teacher,
            folder / "teacher",
            {
                "role": "teacher",
                "strategy": self.name,
                "source": {"name": f"trained by {self.name}", "layers": teacher.num_layers},
                "teacher_updates": self.teacher_updates,
            },
            "teacher",
        )
        torch.save(t_opt, folder / "teacher" / "optimizer.pt")  # plain tensors: torch.load(weights_only=True)

    def _logs(self) -> dict[str, float]:
        return {"teacher_updates": float(self.teacher_updates)}

    def checkpoint_state(self):
        """+ the teacher's trainable parameters (the frozen rest never changes), its optimizer, its update count."""
        tensors, state = super().checkpoint_state()
        tensors.update({f"teacher.{n}": p for n, p in self.teacher.named_parameters() if p.requires_grad})
        return tensors, {**state, "teacher_optimizer": self.t_opt.state_dict(), "teacher_updates": self.teacher_updates}

    def restore_checkpoint(self, tensors, state):
        super().restore_checkpoint(tensors, state)
        with torch.no_grad():
            for n, p in self.teacher.named_parameters():
                if p.requires_grad:
                    p.copy_(tensors[f"teacher.{n}"])
        self.t_opt.opt.load_state_dict(state["teacher_optimizer"])
        self.teacher_updates = int(state["teacher_updates"])


class ProKT(LearningTeacher):
    """Each step: student step on L_KD; teacher step on CE(y, p_T) + gamma * KL(p_S^tau || p_T^tau)."""

    name = "prokt"
    options = ProKTOptions

    def step(self, batch, optimizer, scheduler, upcoming=None):
        t_out = self.teacher_forward(batch, grad=True)
        s_out = self.student_outputs(batch)
        loss, logs = self.objective(s_out, tuple(t.detach() for t in t_out), batch["labels"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.counts["student_bwd"] += 1
        self.optimizer_step(optimizer, scheduler)
        tau = self.cfg.temperature
        s = s_out[0].detach()
        t_loss = masked_ce(t_out[0], batch["labels"]) + self.opts.gamma * F.kl_div(
            F.log_softmax(t_out[0] / tau, -1), F.log_softmax(s / tau, -1), reduction="batchmean", log_target=True
        )
        grads = torch.autograd.grad(t_loss, self.t_params, allow_unused=True)
        self.counts["teacher_bwd"] += 1
        self.t_opt.apply(list(grads))
        self.teacher_updates += 1
        return {"loss": float(loss.detach()), **logs, "teacher_loss": float(t_loss.detach()), **self._logs()}
