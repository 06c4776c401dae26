"""The one training loop: optimizer, schedule, mixed precision, gradient accumulation, progress, curves, checkpoints.

``train`` drives any :class:`~ikd.strategies.base.Strategy`; ``adapt`` (teacher fine-tuning) and ``distill``
(student training) both call it. For a strategy that only defines a loss the loop runs the forward passes under
autocast (``precision``), backward on ``accumulation`` micro-batches, then one optimizer step; a strategy that
sets ``owns_step`` takes each step itself (:meth:`~ikd.strategies.base.Strategy.step`). Batches: :mod:`.batches`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader

from ikd import progress
from ikd.config import Config, TrainConfig
from ikd.core.metrics import Tracker
from ikd.errors import CheckpointError, ConfigError, TrainingError
from ikd.strategies.base import Strategy
from ikd.training import distributed
from ikd.training.batches import Epochs, LengthGroupedSampler, make_loader, predict_outputs, to_device, with_upcoming
from ikd.training.checkpoint import Checkpoints, rng_state, set_rng_state
from ikd.training.optim import linear_warmup, make_optimizer
from ikd.training.result import TrainResult, peak_memory, reset_peak_memory

__all__ = [
    "LengthGroupedSampler",
    "LoopState",
    "TrainResult",
    "make_loader",
    "predict_outputs",
    "seed_everything",
    "select_device",
    "to_device",
    "train",
]

log = logging.getLogger("ikd")


class Progress(Protocol):
    """Where progress goes besides the bar (a Pushgateway: :class:`ikd.integrations.jobmetrics.JobMetrics`)."""

    def start(self, step: int, total: int, epoch: int) -> None: ...

    def update(self, step: int, total: int, epoch: int, logs: dict[str, float], rate: float) -> None: ...


def select_device(cfg: Config) -> torch.device:
    """The device the config asks for; never falls back silently."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda was asked for, but torch sees no CUDA device (set device: cpu or auto)")
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


#: Strategy log values that count since the start of training: a curve record keeps their latest value.
CUMULATIVE = frozenset({"teacher_updates"})


@dataclass
class LoopState:
    """The loop's own state: everything a checkpoint carries besides models, optimizers and RNG. ``step`` counts
    optimizer updates, ``position`` the batches read in the current ``epoch``."""

    step: int = 0
    epoch: int = 0
    position: int = 0
    samples: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    window: dict[str, list[float]] = field(default_factory=dict)
    dev_history: list[dict[str, float]] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    eval_seconds: float = 0.0
    elapsed: float = 0.0
    started_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoopState:
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


class Precision:
    """Autocast for the forward passes and, for fp16, a gradient scaler; fp32 is a no-op."""

    def __init__(self, name: str, device: torch.device, section: str):
        if name == "fp16" and device.type != "cuda":
            raise ConfigError(
                f"{section}.precision: fp16 needs a CUDA device (this run is on {device.type}); "
                "use bf16 (CPU and GPU) or fp32"
            )
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(name)
        self.device_type = device.type
        self.scaler = torch.amp.GradScaler("cuda") if name == "fp16" else None

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


def train(
    strategy: Strategy,
    loader: DataLoader,
    cfg: TrainConfig,
    device: torch.device,
    desc: str = "train",
    dev: Callable[[], dict[str, float]] | None = None,
    tracker: Tracker | None = None,
    checkpoints: Checkpoints | None = None,
    monitor: Progress | None = None,
    dev_split: str = "dev",
) -> TrainResult:
    """Run ``cfg.epochs`` epochs (or ``cfg.max_steps`` optimizer steps) of ``strategy`` over ``loader``.

    ``dev()`` returns dev metrics of the model being trained; it is called as ``cfg.eval_every`` says (and after
    the last step), under a forked RNG so that evaluating never changes the training. ``tracker`` receives every
    record of the training and dev curves. ``checkpoints``: resume from the newest one when there is one, write
    one when due (a resumed run ends with the same weights as an uninterrupted one). ``monitor``: progress pushed
    to a Pushgateway. Each evaluation is one INFO line on the ``ikd`` logger, naming ``dev_split`` (what ``dev()``
    scores). Returns a TrainResult with both curves (one training record every ``cfg.log_every`` steps and
    at the end).
    """
    return _Trainer(strategy, loader, cfg, device, desc, dev, tracker, checkpoints, monitor, dev_split).run()


class _Trainer:
    """One call of :func:`train`: set-up, resume, the epochs, one optimizer update, records, checkpoints."""

    def __init__(self, strategy, loader, cfg, device, desc, dev, tracker, checkpoints, monitor, dev_split="dev"):
        self.strategy, self.loader, self.cfg, self.device, self.desc = strategy, loader, cfg, device, desc
        self.dev_split = dev_split
        self.dev, self.tracker, self.checkpoints, self.monitor = dev, tracker, checkpoints, monitor
        section = desc.split("[")[0]
        if strategy.owns_step and (cfg.accumulation > 1 or cfg.precision != "fp32"):
            key = "accumulation" if cfg.accumulation > 1 else "precision"
            raise ConfigError(
                f"{section}.{key}: strategy {strategy.name} takes its own optimizer steps (teacher "
                f"updates, meta-gradients between student steps); it trains in fp32 without gradient "
                f"accumulation: set {section}.precision: fp32 and {section}.accumulation: 1"
            )
        self.precision = Precision(cfg.precision, device, section)
        self.per_epoch = len(loader)
        updates_per_epoch = math.ceil(self.per_epoch / cfg.accumulation)
        self.total = int(min(cfg.max_steps or math.inf, cfg.epochs * updates_per_epoch))
        self.optimizer = make_optimizer(strategy, cfg)
        self.scheduler = linear_warmup(self.optimizer, int(cfg.warmup_ratio * self.total), self.total)
        self.world = distributed.world_size()
        self.st = LoopState()
        self.every = cfg.eval_every if dev is not None else "never"
        self.resumed_from = 0
        self.start = time.perf_counter()
        self.logs: dict[str, float] = {"loss": float("nan")}

    # ---- the loop --------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        self.strategy.train()
        resume_in_epoch = self._resume()  # may replace self.st with the checkpoint's state
        st, total = self.st, self.total
        reset_peak_memory(self.device)
        self.start = time.perf_counter()
        self.bar = progress.bar(
            total=total,
            initial=st.step,
            desc=self.desc,
            unit="step",
            dynamic_ncols=True,
            mininterval=1.0,
            disable=not distributed.is_main(),
        )
        epochs = Epochs(self.loader)
        if self.monitor is not None:
            self.monitor.start(st.step, total, max(1, st.epoch))
        # a checkpoint taken after an epoch's last batch resumes in that epoch (its end-of-epoch work still to do)
        while st.step < total or (resume_in_epoch and st.position == self.per_epoch):
            if not resume_in_epoch:
                st.epoch += 1
                st.position = 0
            resume_in_epoch = False
            order = epochs.order(st.epoch)
            group: list[dict[str, Any]] = []
            for batch, upcoming in with_upcoming(epochs.read(order[st.position :])):
                st.position += 1
                # a tail batch too small to give every rank a row: every rank leaves it out
                if self.world == 1 or len(batch["labels"]) >= self.world:
                    group.append(to_device(distributed.shard(batch), self.device))
                if not group or (len(group) < self.cfg.accumulation and upcoming is not None):
                    continue  # the update takes `accumulation` micro-batches, or what the epoch has left
                self._step(group, upcoming)
                group = []
                if st.step >= total:
                    break
            if self.every == "epoch" and (not st.dev_history or st.dev_history[-1]["step"] != st.step):
                self._evaluate()
        self.bar.close()
        if self.monitor is not None:
            self.monitor.update(st.step, total, st.epoch, self.logs, self._rate())
        return self._result()

    def _step(self, group: list[dict[str, Any]], upcoming: dict[str, Any] | None) -> None:
        """One optimizer update on ``group`` (its micro-batches), then the records that fall due."""
        st, cfg = self.st, self.cfg
        tick = time.perf_counter()
        if self.strategy.owns_step:
            if upcoming is not None and st.step + 1 < self.total and len(upcoming["labels"]) >= self.world:
                upcoming = to_device(distributed.shard(upcoming), self.device)
            else:
                upcoming = None
            self.logs = self.strategy.step(group[0], self.optimizer, self.scheduler, upcoming=upcoming)
        else:
            self.logs = self._update(group)
        st.step_seconds.append(time.perf_counter() - tick)
        step = st.step + 1
        if not math.isfinite(self.logs["loss"]):
            self.bar.close()
            raise TrainingError(
                f"{self.desc}: the loss became {self.logs['loss']} at step {step}; lower the learning rate"
            )
        st.step = step
        st.samples += sum(len(b["labels"]) for b in group) * self.world
        for k, v in self.logs.items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                st.window.setdefault(k, []).append(float(v))
        self.bar.update(1)
        if step % cfg.log_every == 0 or step == self.total:
            self._record()
        if self.every != "never" and (step == self.total or (isinstance(self.every, int) and step % self.every == 0)):
            self._evaluate()
        if self.monitor is not None:
            self.monitor.update(step, self.total, st.epoch, self.logs, self._rate())
        if self.checkpoints is not None and self.checkpoints.due(step, self.total):
            if distributed.is_main():
                self._save_checkpoint()
            distributed.barrier()

    def _update(self, group: list[dict[str, Any]]) -> dict[str, float]:
        """Backward on each micro-batch's loss (scaled by 1/len(group)) under autocast, then one optimizer step:
        gradients averaged across ranks, unscaled (fp16), clipped, applied; the schedule advances."""
        strategy, opt, scaler = self.strategy, self.optimizer, self.precision.scaler
        opt.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        for batch in group:
            with self.precision.autocast():
                loss, logs = strategy.loss(batch)
            scaled = loss.float() / len(group)
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
            strategy.counts["student_bwd"] += 1
            for k, v in {"loss": float(loss.detach()), **logs}.items():
                sums[k] = sums.get(k, 0.0) + float(v) / len(group)
        params = list(strategy.parameters())
        distributed.average_gradients(params)  # no-op in one process
        if scaler is not None:
            scaler.unscale_(opt)
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        self.scheduler.step()
        return sums

    # ---- records, evaluation, checkpoints -------------------------------------------------------------
    def _record(self) -> None:
        """A training-curve record: each term's mean over the steps since the last record that reported it (a
        teacher loss comes only from the steps that update the teacher); running counts keep their last value."""
        st = self.st
        rec = {
            "step": st.step,
            "epoch": st.epoch,
            "lr": self.scheduler.get_last_lr()[0],
            **{k: v[-1] if k in CUMULATIVE else sum(v) / len(v) for k, v in st.window.items()},
        }
        st.history.append(rec)
        self.bar.set_postfix(loss=f"{rec['loss']:.4f}")
        if self.tracker is not None:
            self.tracker.log("train", rec)
        st.window = {}

    def _evaluate(self) -> None:
        assert self.dev is not None
        tick = time.perf_counter()
        with torch.random.fork_rng(devices=[]):  # the dev loader draws a seed: keep the training RNG untouched
            rec = {"step": self.st.step, "epoch": self.st.epoch, **self.dev()}
        self.strategy.train()
        self.st.eval_seconds += time.perf_counter() - tick
        self.st.dev_history.append(rec)
        if distributed.is_main():
            figures = " ".join(f"{k}={v:.4f}" for k, v in rec.items() if k not in ("step", "epoch") and _number(v))
            log.info(
                "%s: step %d/%d (epoch %d) %s %s",
                self.desc,
                rec["step"],
                self.total,
                rec["epoch"],
                self.dev_split,
                figures,
            )
        if self.tracker is not None:
            self.tracker.log("dev", rec)

    def _save_checkpoint(self) -> None:
        assert self.checkpoints is not None
        tensors, s_state = self.strategy.checkpoint_state()
        loop_state = {**self.st.to_dict(), "elapsed": self._elapsed(), "total": self.total}
        state = {
            "loop": loop_state,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "strategy": s_state,
            "rng": rng_state(),
        }
        if self.precision.scaler is not None:
            state["grad_scaler"] = self.precision.scaler.state_dict()
        self.checkpoints.save(self.st.step, tensors, state)

    def _resume(self) -> bool:
        """Restore the newest checkpoint, if any; True when the run resumes inside an epoch."""
        resumed = self.checkpoints.latest() if self.checkpoints is not None else None
        if resumed is None:
            return False
        state = resumed.state
        if state["loop"]["total"] != self.total:
            raise CheckpointError(
                f"{resumed.path}: written for {state['loop']['total']} steps, this run has {self.total}"
            )
        self.strategy.restore_checkpoint({k: v.to(self.device) for k, v in resumed.tensors.items()}, state["strategy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.precision.scaler is not None and "grad_scaler" in state:
            self.precision.scaler.load_state_dict(state["grad_scaler"])
        self.st = LoopState.from_dict(state["loop"])
        set_rng_state(state["rng"])  # last: restoring the strategy may draw quiz batches
        if self.tracker is not None:
            for rec in self.st.history:
                self.tracker.log("train", rec)
            for rec in self.st.dev_history:
                self.tracker.log("dev", rec)
        self.resumed_from = resumed.step
        log.info(
            "%s: resumed at step %d of %d (epoch %d) from %s",
            self.desc,
            self.st.step,
            self.total,
            self.st.epoch,
            resumed.path,
        )
        return self.st.epoch > 0

    def _elapsed(self) -> float:
        return self.st.elapsed + time.perf_counter() - self.start

    def _rate(self) -> float:
        saving = self.checkpoints.save_seconds if self.checkpoints is not None else 0.0
        return self.st.samples / max(self._elapsed() - self.st.eval_seconds - saving, 1e-9)

    def _result(self) -> TrainResult:
        st = self.st
        return TrainResult(
            steps=st.step,
            epochs=st.epoch,
            wall_seconds=self._elapsed(),
            samples_per_second=self._rate(),
            final_loss=st.history[-1]["loss"] if st.history else float("nan"),
            history=st.history,
            counts=dict(self.strategy.counts),
            peak_memory_bytes=int(peak_memory(self.device)),
            step_seconds=st.step_seconds,
            dev_history=st.dev_history,
            eval_seconds=st.eval_seconds,
            resumed_from=self.resumed_from,
            checkpoint_seconds=self.checkpoints.save_seconds if self.checkpoints is not None else 0.0,
        )


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)
