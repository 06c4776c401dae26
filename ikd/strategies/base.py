"""The strategy interface every distillation method implements, and the losses they share.

The loop owns data order, the student optimizer and scheduler, mixed precision, gradient accumulation,
progress, logging and checkpoints. A strategy says what the training objective is: most define only
:meth:`Strategy.loss` and the loop does backward and the optimizer step; strategies that must take the step
themselves (a teacher update between student steps, a meta-gradient) set :attr:`Strategy.owns_step` and override
:meth:`Strategy.step`. Whatever else the distill step needs it asks the strategy class: where the teacher comes
from (:meth:`Strategy.teacher_source`), what to precompute from it (:meth:`Strategy.cache_spec`), the strategy's
own config section (:attr:`Strategy.options`, read as ``distill.<name>``), and what to save besides the student
(:meth:`Strategy.save_artifacts`).

Every batch is a :class:`Batch`. Rows without a label (transfer rows) carry label -1: the CE terms skip them, the
teacher terms use them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, TypedDict

import torch
import torch.nn.functional as F
from torch import nn

from ikd.core.tensors import model_inputs
from ikd.section import Section
from ikd.training import distributed

if TYPE_CHECKING:
    from ikd.core.classifier import SequenceClassifier


class TrainSettings(Protocol):
    """What a strategy reads of its training section (``adapt``: :class:`ikd.config.TrainConfig` satisfies it).
    Strategies are typed against these protocols, not the config classes: the config reads the strategy registry."""

    @property
    def batch_size(self) -> int: ...

    @property
    def grad_clip(self) -> float | None: ...


class DistillSettings(TrainSettings, Protocol):
    """What a strategy reads of ``distill`` (:class:`ikd.config.DistillConfig` satisfies it): the shared KD loss
    and, through :meth:`options`, its own section ``distill.<name>``."""

    @property
    def strategy(self) -> str: ...

    @property
    def temperature(self) -> float: ...

    @property
    def alpha(self) -> float: ...

    @property
    def soft_loss(self) -> str: ...

    @property
    def hidden_weight(self) -> float: ...
    @property
    def hidden_loss(self) -> str: ...

    @property
    def hidden_layers(self) -> list[tuple[int, int]] | None: ...

    def options(self, strategy: str | None = None) -> Any: ...


class SideInputs(TypedDict, total=False):
    """One tokenization of the batch's rows, padded to the batch's longest row: ``input_ids`` and
    ``attention_mask`` [B, T] (int64), ``token_type_ids`` [B, T] for models that have them."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor


class Batch(TypedDict, total=False):
    """What a strategy receives for each batch (on the training device).

    ``student`` / ``teacher``: the rows tokenized for each model (a side is absent when nothing needs it, e.g.
    ``teacher`` when the teacher's outputs are cached); ``labels`` [B] int64, -1 for a row without a label (a
    transfer row); ``index`` [B] int64, each row's position in the training split (the key into
    :class:`TeacherOutputs`). Under torchrun each rank gets its contiguous slice of the global batch.
    """

    student: SideInputs
    teacher: SideInputs
    labels: torch.Tensor
    index: torch.Tensor


#: Where a strategy's teacher comes from: the adapt step's output, the configured model as loaded, or none.
TeacherSource = Literal["adapted", "pretrained"] | None
#: Writes a model folder: (model, folder, metadata, tokenizer side "teacher" | "student").
ModelWriter = Callable[[nn.Module, Path, dict[str, Any], str], None]


@dataclass
class TeacherOutputs:
    """Teacher outputs computed once over the training rows (row i = training row i).

    ``logits`` [N, C]; ``features`` [N, H] the pooled last state under the head (None when not needed);
    ``hidden`` {hidden-state index: pooled state [N, H]} for strategies that match hidden states.
    """

    logits: torch.Tensor
    meta: dict[str, str]
    features: torch.Tensor | None = None
    hidden: dict[int, torch.Tensor] = field(default_factory=dict)

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor:
        return self.logits[index]

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"logits": self.logits}
        if self.features is not None:
            out["features"] = self.features
        out |= {f"hidden.{k}": v for k, v in self.hidden.items()}
        return {k: v.contiguous() for k, v in out.items()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> TeacherOutputs:
        hidden = {int(k.split(".", 1)[1]): v for k, v in tensors.items() if k.startswith("hidden.")}
        return cls(tensors["logits"], meta, tensors.get("features"), hidden)


@dataclass(frozen=True)
class CacheSpec:
    """What a strategy wants precomputed from a frozen teacher part: hidden-state indices, pooled features."""

    hidden: tuple[int, ...] = ()
    features: bool = False


# ---- losses ----------------------------------------------------------------------------------------
def masked_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the rows with a label (>= 0); 0 when the batch has none. logits [B, C], labels [B].

    Under torchrun the divisor is the labeled-row count of the global batch over world size (a rank's slice may hold
    more or fewer labeled rows than another), so that the ranks' averaged gradients are those of the global mean."""
    per_row = F.cross_entropy(logits, labels.clamp(min=0), reduction="none")
    mask = (labels >= 0).to(per_row.dtype)
    return (per_row * mask).sum() / distributed.share(mask.sum())


def soft_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, kind: str = "kl"
) -> torch.Tensor:
    """kl: KL(p_T^tau || p_S^tau), batch mean; mse: mean squared error of the softened probabilities."""
    tau = temperature
    if kind == "mse":
        return F.mse_loss(F.softmax(student_logits / tau, -1), F.softmax(teacher_logits / tau, -1))
    return F.kl_div(
        F.log_softmax(student_logits / tau, -1),
        F.log_softmax(teacher_logits / tau, -1),
        reduction="batchmean",
        log_target=True,
    )


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
    kind: str = "kl",
) -> tuple[torch.Tensor, dict[str, float]]:
    """alpha * tau^2 * soft(p_T^tau, p_S^tau) + (1 - alpha) * CE(y, p_S) over labeled rows.

    student_logits, teacher_logits: [B, C]; labels: [B] (-1: no label). Returns (loss, {"kl": ..., "ce": ...}).
    """
    soft = soft_loss(student_logits, teacher_logits, temperature, kind)
    ce = masked_ce(student_logits, labels)
    loss = alpha * temperature * temperature * soft + (1.0 - alpha) * ce
    return loss, {"kl": float(soft.detach()), "ce": float(ce.detach())}


def hidden_loss(
    student_states: tuple[torch.Tensor, ...],
    teacher_states: tuple[torch.Tensor, ...],
    projection: nn.Module | None,
    kind: str = "centered",
) -> torch.Tensor:
    """The hidden-state term, mean over layer pairs, batch mean. States [B, H] (pooled).

    - ``pkd``: ||normalize(P s) - normalize(t)||^2 (BERT-PKD). Pooled transformer states are anisotropic (rows
      share a large common direction: mean pairwise cosine 0.16-0.60 over the quick teacher's layers), so one
      constant student vector already gets most of the way down; weighted up, this term pulls every row to it
      and the student collapses to one class.
    - ``centered``: the same after subtracting each side's batch mean, so that only what tells rows apart is
      matched (a constant student scores 2, no better than chance).
    - ``relation``: MSE between the rows' cosine-similarity matrices of the centered states of student and
      teacher (the relational form of MiniLM / similarity-preserving KD): no projection, any widths.
    """
    total = student_states[0].new_zeros(())
    for s, t in zip(student_states, teacher_states, strict=True):
        t = t.to(s.dtype)
        if kind == "relation":
            gs = _unit_centered(s)
            gt = _unit_centered(t)
            total = total + (gs @ gs.T - gt @ gt.T).pow(2).mean()
            continue
        s = projection(s) if projection is not None else s
        if kind == "centered":
            s, t = s - s.mean(0, keepdim=True), t - t.mean(0, keepdim=True)
        total = total + (F.normalize(s, dim=-1) - F.normalize(t, dim=-1)).pow(2).sum(-1).mean()
    return total / max(1, len(student_states))


def _unit_centered(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x - x.mean(0, keepdim=True), dim=-1)


def default_layer_pairs(n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    """Student hidden state i (1..n_s) paired with teacher state round(i * n_t / n_s)."""
    return [(i, round(i * n_teacher / n_student)) for i in range(1, n_student + 1)]


class cycle(Iterator[dict[str, Any]]):  # noqa: N801 - used like itertools.cycle
    """Batches of ``loader`` forever (a new pass, and a new shuffle, after each end), counting what it gave so that
    a resumed run can draw the same batches again (:meth:`skip`)."""

    def __init__(self, loader):
        self.loader, self.drawn = loader, 0
        self._it = self._passes()

    def _passes(self):
        while True:
            empty = True
            for batch in self.loader:
                empty = False
                yield batch
            if empty:
                return

    def __next__(self) -> dict[str, Any]:
        batch = next(self._it)
        self.drawn += 1
        return batch

    def skip(self, n: int) -> None:
        """Draw ``n`` batches and drop them (the loader's shuffles advance exactly as they did)."""
        for _ in range(n):
            next(self)


class Strategy:
    """One way to train a student. Subclasses implement :meth:`loss`; those that set :attr:`owns_step` override
    :meth:`step` too. Register a new one with :func:`ikd.strategies.register` (or in the registry's tuple)."""

    name: ClassVar[str] = "base"
    uses_teacher: ClassVar[bool] = False  # needs the teacher's outputs
    updates_teacher: ClassVar[bool] = False  # changes teacher weights (cached teacher logits are then refused)
    runs_teacher_layers: ClassVar[bool] = False  # calls teacher.run_layers (an imported classifier has none)
    uses_quiz: ClassVar[bool] = False  # draws quiz batches (teacher feedback)
    owns_step: ClassVar[bool] = False  # takes the optimizer step itself in step(); else the loop does
    #: The model of this strategy's own config section ``distill.<name>``; None: it has no options.
    options: ClassVar[type[Section] | None] = None

    def __init__(
        self,
        cfg: DistillSettings | TrainSettings,
        student: SequenceClassifier,
        teacher: SequenceClassifier | None = None,
        teacher_outputs: TeacherOutputs | None = None,
        input_side: str = "student",
        quiz=None,
    ):
        self.cfg = cfg
        self.input_side = input_side  # which tokenization feeds the trained model ("teacher" in adapt)
        self.student = student
        self.teacher = teacher
        self.teacher_outputs = teacher_outputs
        self.quiz = cycle(quiz) if quiz is not None else None
        self.counts: Counter[str] = Counter()  # student_fwd, student_bwd, teacher_fwd, teacher_bwd, ...
        #: this strategy's section ``distill.<name>`` (None in adapt, or for a strategy without options)
        self.opts: Any = cfg.options(self.name) if self.options is not None and hasattr(cfg, "options") else None

    # ---- what the distill step asks the class --------------------------------------------------------
    @classmethod
    def teacher_source(cls, cfg: DistillSettings) -> TeacherSource:
        """Where the teacher comes from under ``cfg``: "adapted" (the adapt step's output, ``--teacher``),
        "pretrained" (``teacher`` of the config as loaded: no adapt step needed) or None (no teacher)."""
        return "adapted" if cls.uses_teacher else None

    @classmethod
    def cache_spec(cls, cfg: DistillSettings, teacher: nn.Module, student: nn.Module) -> CacheSpec | None:
        """What to precompute from the teacher over the training rows; None: nothing (teacher changes)."""
        return CacheSpec() if cls.uses_teacher else None

    @classmethod
    def quiz_batch_size(cls, cfg: DistillSettings) -> int:
        """Rows per quiz batch (strategies with :attr:`uses_quiz`)."""
        return cfg.batch_size

    def save_artifacts(self, folder: Path, write_model: ModelWriter) -> None:
        """Write what this strategy trained besides the student into the step's output ``folder``: the added
        modules as ``strategy_state.safetensors``; subclasses add more (a learning teacher's model folder)."""
        from safetensors.torch import save_file

        extra = {
            f"{name}.{k}": v.detach().cpu().contiguous()
            for name, m in self.extra_modules().items()
            for k, v in m.state_dict().items()
        }
        if extra:
            save_file(extra, str(folder / "strategy_state.safetensors"), metadata={"strategy": self.name})

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
        if self.teacher is not None:
            self.teacher.eval()  # no dropout in the teacher, frozen or learning (our choice)

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """The training objective on ``batch``: (a scalar tensor to minimise, with its graph to the trainable
        parameters; scalar logs, e.g. each term's value). The loop calls it under autocast when
        ``precision`` asks for it, scales it for gradient accumulation and runs backward itself."""
        raise NotImplementedError

    def step(
        self,
        batch: Batch,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        upcoming: Batch | None = None,
    ) -> dict[str, float]:
        """One whole optimisation step on ``batch``, called by the loop only for strategies that set
        :attr:`owns_step` (``upcoming``: the next batch of the epoch, when there is one). Must leave the student
        optimizer stepped once (through :meth:`optimizer_step`) and return scalar logs with at least "loss".
        This default, a plain step on :meth:`loss`, is what such strategies use between their special steps."""
        loss, logs = self.loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.counts["student_bwd"] += 1
        self.optimizer_step(optimizer, scheduler)
        return {"loss": float(loss.detach()), **logs}

    def optimizer_step(self, optimizer, scheduler) -> None:
        distributed.average_gradients(self.parameters())  # no-op in one process
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(list(self.parameters()), self.cfg.grad_clip)
        optimizer.step()
        scheduler.step()

    # ---- helpers for subclasses --------------------------------------------------------------------
    def student_logits(self, batch: dict[str, Any]) -> torch.Tensor:
        self.counts["student_fwd"] += 1
        return self.student(**model_inputs(batch[self.input_side]))

    def teacher_logits(self, batch: dict[str, Any]) -> torch.Tensor:
        """Teacher logits [B, C] for the batch: from the cache when there is one, else a no-grad forward."""
        if self.teacher_outputs is not None:
            return self.teacher_outputs[batch["index"]].to(batch["labels"].device)
        assert self.teacher is not None  # a strategy that asks for teacher logits has a teacher (uses_teacher)
        self.counts["teacher_fwd"] += 1
        with torch.no_grad():
            return self.teacher(**model_inputs(batch["teacher"]))

    # ---- checkpoints --------------------------------------------------------------------------------
    def checkpoint_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(tensors, other state) that restore this strategy exactly: the student, the added modules, the step
        counts and the quiz position. Subclasses with more state extend both."""
        tensors = {f"student.{k}": v for k, v in self.student.state_dict().items()}
        for name, m in self.extra_modules().items():
            tensors.update({f"{name}.{k}": v for k, v in m.state_dict().items()})
        return tensors, {"counts": dict(self.counts), "quiz_drawn": self.quiz.drawn if self.quiz is not None else 0}

    def restore_checkpoint(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        self.student.load_state_dict(_part(tensors, "student."))
        for name, m in self.extra_modules().items():
            m.load_state_dict(_part(tensors, f"{name}."))
        self.counts = Counter(state["counts"])
        if self.quiz is not None:
            self.quiz.skip(int(state["quiz_drawn"]))


def _part(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
