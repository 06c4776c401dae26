"""The bilevel engine behind ``metadistil`` (pilot update) and ``ikd`` (course step / exam step): teachers that
learn from the student's quiz result (``prokt``, the first-order one, is in :mod:`ikd.strategies.prokt`).

The bilevel engine (:meth:`Bilevel.teacher_update`) does one teacher update from one training batch B:
a differentiable student step theta_S' = theta_S - lambda * grad L_KD(B; theta_S, theta_T), the quiz loss
L_Q = CE(y_q, p_S(x_q; theta_S')) on quiz batches carved from train (never dev), and a teacher step on
grad_theta_T L_Q, computed by ``meta_grad``:

- ``exact``: double backward through the pilot step (math attention kernel forced here only);
- ``jvp``: grad_T L_Q = -lambda * grad_T < dL_KD/dz_S, u >, with u = J_S(B) g the forward-mode JVP of the
  student outputs along g = grad_theta_S' L_Q. Exact for any loss of (student outputs, teacher outputs);
  no second-order graph through the student;
- ``finite_diff``: -lambda * [grad_T L_KD(theta_S + eps g) - grad_T L_KD(theta_S - eps g)] / (2 eps),
  eps = r / ||g||; one teacher forward serves both terms.

It returns the pilot gradient at theta_S (first order, pre-update teacher): with ``reuse_teacher_outputs``
the real step (metadistil) or the next course step (ikd) applies it instead of recomputing — the same
point, with the teacher one update stale. The two strategies differ only in ordering.
"""

from __future__ import annotations

import contextlib
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from pydantic import Field

from ikd.errors import ConfigError
from ikd.strategies.base import cycle, masked_ce
from ikd.strategies.prokt import LearningTeacher, LearningTeacherOptions
from ikd.training import distributed


def math_attention():
    """Context forcing the math SDPA kernel (fused kernels lack double backward / forward AD on CPU)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


def _across_ranks(tensors) -> list[torch.Tensor | None]:
    """The mean across ranks (:func:`distributed.mean`, differentiable) of the tensors that are not None (the same
    ones on every rank); the tensors themselves in one process."""
    present = iter(distributed.mean([t for t in tensors if t is not None]))
    return [None if t is None else next(present) for t in tensors]


class BilevelOptions(LearningTeacherOptions):
    """``distill.metadistil``: the meta-gradient teacher update."""

    meta_grad: Literal["exact", "jvp", "finite_diff"] = Field("jvp", description="How the meta-gradient is computed.")
    pilot_lr: float = Field(5e-5, gt=0.0, description="lambda: SGD step size of the pilot / look-ahead step.")
    teacher_every: int = Field(1, ge=1, description="k: one teacher update every k student steps.")
    quiz_batches: int = Field(1, ge=1, description="Quiz batches per teacher update.")
    quiz_batch_size: int | None = Field(None, ge=1, description="Default: distill.batch_size.")
    reuse_teacher_outputs: bool = Field(
        True, description="Real/course step reuses the pilot gradient (pre-update teacher, one step stale)."
    )
    fd_radius: float = Field(1e-2, gt=0.0, description="finite_diff: r in epsilon = r / ||g||.")


class IKDOptions(BilevelOptions):
    """``distill.ikd``: the bilevel options, and a task term in the teacher's loss."""

    teacher_ce_weight: float = Field(0.0, ge=0.0, description="+ weight * CE(y, p_T) in the teacher's loss.")


class Bilevel(LearningTeacher):
    """The engine shared by ``metadistil`` and ``ikd``: one meta-gradient teacher update per call."""

    uses_quiz = True
    options = BilevelOptions
    quiz: cycle  # never None: __init__ refuses a run without quiz rows

    @classmethod
    def quiz_batch_size(cls, cfg):
        return cfg.options(cls.name).quiz_batch_size or cfg.batch_size

    def __init__(self, cfg, student, teacher=None, teacher_outputs=None, input_side="student", quiz=None):
        if quiz is None:
            raise ConfigError(
                f"distill.strategy: {self.name} needs quiz rows for teacher feedback; set "
                "data.quiz_rows > 0 and run prepare again"
            )
        super().__init__(cfg, student, teacher, teacher_outputs, input_side, quiz)
        self.steps_done = 0

    def _student_params(self) -> dict[str, torch.Tensor]:
        return {n: p for n, p in self.student.named_parameters() if p.requires_grad}

    def _extra_params(self) -> list[torch.Tensor]:
        return [p for m in self.extra_modules().values() for p in m.parameters() if p.requires_grad]

    def quiz_loss(self, params: dict[str, torch.Tensor], quiz: list[dict[str, Any]]) -> torch.Tensor:
        """Mean CE of the student at ``params`` over the quiz batches (under torchrun: this rank's share of each
        global quiz batch's mean, whatever the size of its slice)."""

        def ce(q):
            logits = self.student_outputs(q, params)[0]
            if distributed.world_size() == 1:
                return F.cross_entropy(logits, q["labels"])
            rows = distributed.share(logits.new_tensor(float(len(q["labels"]))))
            return F.cross_entropy(logits, q["labels"], reduction="sum") / rows

        return torch.stack([ce(q) for q in quiz]).mean()

    def _next_quiz(self, device) -> list[dict[str, Any]]:
        from ikd.core.tensors import to_device

        # under torchrun each rank takes its slice of the quiz batch; teacher_update averages the pilot gradient and
        # the quiz gradient across ranks (both are then the global batch's), TeacherOptimizer the meta-gradients
        return [to_device(distributed.shard(next(self.quiz)), device) for _ in range(self.opts.quiz_batches)]

    def teacher_update(self, batch: dict[str, Any]) -> tuple[list[torch.Tensor], float, dict[str, float]]:
        """One teacher step from the pilot step on ``batch``.

        Returns (pilot gradient at the current student, one tensor per student then extra-module trainable
        parameter; the pilot L_KD value; logs).
        """
        cfg = self.opts
        lam = cfg.pilot_lr
        params = self._student_params()
        names, values = list(params), list(params.values())
        extra = self._extra_params()
        quiz = self._next_quiz(batch["labels"].device)
        rng = torch.get_rng_state()
        mode = cfg.meta_grad
        ctx = math_attention() if mode in ("exact", "jvp") else contextlib.nullcontext()
        with ctx:
            t_out = self.teacher_forward(batch, grad=True)
            s_out = self.student_outputs(batch)
            t_extra = self._teacher_extra_loss(batch, t_out)
            if mode == "exact":
                loss, logs = self.objective(s_out, t_out, batch["labels"])
                grads = torch.autograd.grad(loss, values + extra, create_graph=True, allow_unused=True)
                self.counts["student_bwd"] += 1
                step = _across_ranks(grads[: len(names)])  # differentiable: the quiz gradient comes back averaged
                pilot = {n: p if g is None else p - lam * g for n, p, g in zip(names, values, step, strict=True)}
                meta = self.quiz_loss(pilot, quiz)
                total = meta + t_extra
                self.counts["student_bwd_second_order"] += 1
            else:
                loss, logs = self.objective(s_out, tuple(t.detach() for t in t_out), batch["labels"])
                grads = torch.autograd.grad(loss, values + extra, allow_unused=True)
                self.counts["student_bwd"] += 1
                step = _across_ranks(grads[: len(names)])
                pilot = {
                    n: (p if g is None else p - lam * g).detach().requires_grad_(True)
                    for n, p, g in zip(names, values, step, strict=True)
                }
                meta = self.quiz_loss(pilot, quiz)
                g = _across_ranks(torch.autograd.grad(meta, list(pilot.values()), allow_unused=True))
                self.counts["student_bwd"] += 1
                direction = {
                    n: torch.zeros_like(p) if d is None else d for n, p, d in zip(names, values, g, strict=True)
                }
                if mode == "jvp":
                    total = self._jvp_term(batch, params, direction, t_out, rng, lam) + t_extra
                else:
                    total = self._fd_term(batch, params, direction, t_out, rng, lam) + t_extra
            t_grads = torch.autograd.grad(total, self.t_params, allow_unused=True)
        self.counts["teacher_bwd"] += 1
        norm = self.t_opt.apply(list(t_grads))
        self.teacher_updates += 1
        logs = {**logs, "quiz_loss": float(meta.detach()), "teacher_grad_norm": norm, **self._logs()}
        return [None if g is None else g.detach() for g in grads], float(loss.detach()), logs

    def _teacher_extra_loss(self, batch, t_out) -> torch.Tensor:
        w = getattr(self.opts, "teacher_ce_weight", 0.0)
        return w * masked_ce(t_out[0], batch["labels"]) if w else t_out[0].new_zeros(())

    def _jvp_term(self, batch, params, direction, t_out, rng, lam) -> torch.Tensor:
        """-lambda * < dL_KD/dz_S, J_S g >: its gradient w.r.t. the teacher is the meta-gradient."""
        primals = {n: p.detach() for n, p in params.items()}
        tangents = {n: direction[n].detach() for n in params}
        torch.set_rng_state(rng)  # the same dropout masks as the pilot forward
        out = torch.func.jvp(lambda p: self.student_outputs(batch, p, count=False), (primals,), (tangents,))
        z, u = cast(tuple[Any, Any], out)  # no has_aux: (outputs, tangents); torch's type says 2- or 3-tuple
        self.counts["student_jvp"] += 1
        z = tuple(zi.detach().requires_grad_(True) for zi in z)
        lk, _ = self.objective(z, t_out, batch["labels"])
        dz = torch.autograd.grad(lk, z, create_graph=True)
        return -lam * sum((d * ui.detach()).sum() for d, ui in zip(dz, u, strict=True))

    def _fd_term(self, batch, params, direction, t_out, rng, lam) -> torch.Tensor:
        """Central difference of L_KD along g; its teacher gradient approximates the meta-gradient."""
        norm = torch.sqrt(sum((g.double() ** 2).sum() for g in direction.values())).item()
        if norm == 0.0:
            return t_out[0].new_zeros(())
        eps = self.opts.fd_radius / norm
        outs = []
        with torch.no_grad():
            for sign in (1.0, -1.0):
                torch.set_rng_state(rng)
                outs.append(self.student_outputs(batch, {n: p + sign * eps * direction[n] for n, p in params.items()}))
        plus, _ = self.objective(outs[0], t_out, batch["labels"])
        minus, _ = self.objective(outs[1], t_out, batch["labels"])
        return -lam * (plus - minus) / (2 * eps)

    def apply_gradient(self, grads: list[torch.Tensor], optimizer, scheduler) -> None:
        """A student optimizer step with precomputed gradients (student then extra-module parameters)."""
        optimizer.zero_grad(set_to_none=True)
        for p, g in zip(list(self._student_params().values()) + self._extra_params(), grads, strict=True):
            p.grad = g
        self.optimizer_step(optimizer, scheduler)

    def checkpoint_state(self):
        tensors, state = super().checkpoint_state()
        return tensors, {**state, "steps_done": self.steps_done}

    def restore_checkpoint(self, tensors, state):
        super().restore_checkpoint(tensors, state)
        self.steps_done = int(state["steps_done"])

    def _is_update_step(self) -> bool:
        due = self.steps_done % self.opts.teacher_every == 0
        self.steps_done += 1
        return due


class MetaDistil(Bilevel):
    """Pilot step on B, teacher update, then the real step on the same B (with the updated teacher, or
    reusing the pilot gradient when ``reuse_teacher_outputs``)."""

    name = "metadistil"

    def step(self, batch, optimizer, scheduler, upcoming=None):
        if not self._is_update_step():
            return super().step(batch, optimizer, scheduler)
        grads, loss, logs = self.teacher_update(batch)
        if self.opts.reuse_teacher_outputs:
            self.apply_gradient(grads, optimizer, scheduler)
            return {"loss": loss, **logs}
        out = super().step(batch, optimizer, scheduler)
        return {**out, **{k: v for k, v in logs.items() if k not in out}}


class IKD(Bilevel):
    """Course step on B_t with the current teacher; then the exam: look-ahead on the next batch B_t+1,
    quiz loss, teacher update. The updated teacher gives the soft targets of the next course step (which
    reuses the look-ahead gradient when ``reuse_teacher_outputs``)."""

    name = "ikd"
    options = IKDOptions

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pending: tuple[torch.Tensor, list[torch.Tensor], float] | None = None

    def checkpoint_state(self):
        """+ the look-ahead gradient waiting for the next course step (its batch's row index and pilot loss)."""
        tensors, state = super().checkpoint_state()
        if self.pending is None:
            return tensors, {**state, "pending": None}
        index, grads, loss = self.pending
        tensors["pending.index"] = index
        tensors.update({f"pending.grad.{i}": g for i, g in enumerate(grads) if g is not None})
        return tensors, {**state, "pending": {"loss": loss, "grads": len(grads)}}

    def restore_checkpoint(self, tensors, state):
        super().restore_checkpoint(tensors, state)
        self.pending = None
        if state["pending"] is not None:
            device = next(self.student.parameters()).device
            grads = [
                tensors[f"pending.grad.{i}"].to(device) if f"pending.grad.{i}" in tensors else None
                for i in range(state["pending"]["grads"])
            ]
            self.pending = (tensors["pending.index"].to(device), grads, float(state["pending"]["loss"]))

    def step(self, batch, optimizer, scheduler, upcoming=None):
        pending, self.pending = self.pending, None
        if pending is not None and self.opts.reuse_teacher_outputs and torch.equal(pending[0], batch["index"]):
            self.apply_gradient(pending[1], optimizer, scheduler)
            out = {"loss": pending[2]}
        else:
            out = super().step(batch, optimizer, scheduler)
        if self._is_update_step() and upcoming is not None:
            grads, loss, logs = self.teacher_update(upcoming)
            self.pending = (upcoming["index"].clone(), grads, loss)
            out = {**out, **{k: v for k, v in logs.items() if k not in out}}
        return out
