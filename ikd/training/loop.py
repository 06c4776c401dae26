"""The one training loop: data order, optimizer, schedule, progress, training curve.

``train`` drives any :class:`~ikd.strategies.base.Strategy`; ``adapt`` (teacher fine-tuning) and
``distill`` (student training) both call it. ``predict`` is the matching batched inference.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ikd.config import Config, TrainConfig
from ikd.core.data import collate
from ikd.core.metrics import Tracker
from ikd.errors import CheckpointError, ConfigError, TrainingError
from ikd.integrations.jobmetrics import JobMetrics
from ikd.strategies.base import Strategy, model_inputs
from ikd.training import distributed
from ikd.training.checkpoint import Checkpoints, rng_state, set_rng_state

log = logging.getLogger("ikd")


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


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (to_device(v, device) if isinstance(v, dict) else v.to(device)) for k, v in batch.items()}


def make_loader(ds, pad_ids: dict[str, int], batch_size: int, shuffle: bool, seed: int,
                group_by_length: bool = False, sort_by_length: bool = False) -> DataLoader:
    """Batches of a prepared split, padded per batch.

    shuffle + group_by_length: seeded random batches of rows of similar length (less padding, same
    randomness across epochs as a plain shuffle would give per chunk). sort_by_length (inference):
    longest rows first; ``loader.batch_sampler.order`` maps batch positions back to rows.
    """
    side = next(iter(pad_ids))
    rows = _Rows(ds.with_format(None))
    collate_fn = partial(collate, pad_ids=pad_ids)
    if (shuffle and group_by_length) or sort_by_length:
        lengths = np.fromiter((len(x) for x in ds[f"{side}_input_ids"]), dtype=np.int64, count=len(ds))
        sampler = LengthGroupedSampler(lengths, batch_size, seed, shuffle=shuffle)
        return DataLoader(rows, batch_sampler=sampler, collate_fn=collate_fn)
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(rows, batch_size=batch_size, shuffle=shuffle, generator=gen, collate_fn=collate_fn)


class LengthGroupedSampler(torch.utils.data.Sampler):
    """Batches of similar-length rows. shuffle: a new seeded permutation each epoch, sorted by length
    within chunks of 50 batches, batch order shuffled; otherwise all rows longest first (``order``)."""

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int, shuffle: bool):
        self.lengths, self.batch_size, self.seed, self.shuffle = lengths, batch_size, seed, shuffle
        self.epoch = 0
        self.order = np.argsort(-lengths, kind="stable")

    def __len__(self) -> int:
        return (len(self.lengths) + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        bs = self.batch_size
        if not self.shuffle:
            yield from (self.order[i:i + bs].tolist() for i in range(0, len(self.order), bs))
            return
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        perm = rng.permutation(len(self.lengths))
        chunk = bs * 50
        for i in range(0, len(perm), chunk):
            part = perm[i:i + chunk]
            perm[i:i + chunk] = part[np.argsort(-self.lengths[part], kind="stable")]
        batches = [perm[i:i + bs] for i in range(0, len(perm), bs)]
        for j in rng.permutation(len(batches)):
            yield batches[j].tolist()


class _Rows(torch.utils.data.Dataset):
    """A prepared split as a map-style dataset of dicts, each with its row ``index``."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**self.ds[int(i)], "index": int(i)}


@dataclass
class TrainResult:
    steps: int
    epochs: int
    wall_seconds: float
    samples_per_second: float
    final_loss: float
    history: list[dict[str, float]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    peak_memory_bytes: int = 0
    step_seconds: list[float] = field(default_factory=list)
    dev_history: list[dict[str, float]] = field(default_factory=list)
    eval_seconds: float = 0.0
    resumed_from: int = 0
    checkpoint_seconds: float = 0.0

    def metrics(self) -> dict[str, Any]:
        per_step = {k: round(v / max(1, self.steps), 3) for k, v in sorted(self.counts.items())}
        dev = {k: v for k, v in self.dev_history[-1].items() if k not in ("step", "epoch")} if self.dev_history else {}
        return {"steps": self.steps, "epochs": self.epochs, "wall_seconds": round(self.wall_seconds, 3),
                "eval_seconds": round(self.eval_seconds, 3), **({"dev": dev} if dev else {}),
                **({"resumed_from_step": self.resumed_from} if self.resumed_from else {}),
                **({"checkpoint_seconds": round(self.checkpoint_seconds, 3)} if self.checkpoint_seconds else {}),
                # mean over steps after warm-up (a median would pick one side of a strategy that does extra
                # work every k-th step)
                "step_time_ms": round(1000 * float(np.mean(self.step_seconds[_warmup(len(self.step_seconds)):])), 2)
                if self.step_seconds else None,
                "samples_per_second": round(self.samples_per_second, 2), "final_loss": self.final_loss,
                "peak_memory_bytes": self.peak_memory_bytes, "counts": dict(sorted(self.counts.items())),
                "counts_per_step": per_step}


#: Strategy log values that count since the start of training: a curve record keeps their latest value.
CUMULATIVE = frozenset({"teacher_updates"})


def _warmup(n: int) -> int:
    """Steps left out of the mean step time: the first 5, or fewer in short runs."""
    return min(5, n // 10)


def _optimizer(strategy: Strategy, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in _named_trainable(strategy):
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # fused: one kernel over all parameters; the for-each default costs ~0.7 s a step on a 110M model on CPU
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=True)


def _named_trainable(strategy: Strategy):
    yield from (("student." + n, p) for n, p in strategy.student.named_parameters() if p.requires_grad)
    for mname, m in strategy.extra_modules().items():
        yield from ((f"{mname}.{n}", p) for n, p in m.named_parameters() if p.requires_grad)


def _linear_warmup(optimizer, warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _reset_peak_rss() -> None:
    """Reset the kernel's resident-set high-water mark of this process (Linux), so the peak is per run."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_rss() -> int:
    """Peak resident memory in bytes since the last reset (VmHWM), else the process's lifetime peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _with_upcoming(batches):
    """(batch, next batch of the same pass or None) pairs."""
    it = iter(batches)
    current = next(it, None)
    while current is not None:
        following = next(it, None)
        yield current, following
        current = following


class _Epochs:
    """The row-index batches of each epoch of a training loader, drawn from its batch sampler (the same seeded
    order the loader itself would give), so that a resumed run can start inside an epoch: epochs before it are
    drawn and dropped (index lists only, no rows read), then the epoch's batches from a position on are read."""

    def __init__(self, loader: DataLoader):
        self.loader, self.drawn = loader, 0

    def order(self, epoch: int) -> list[list[int]]:
        """Batches of ``epoch`` (1-based; called with increasing epochs)."""
        while self.drawn < epoch - 1:
            for _ in self.loader.batch_sampler:
                pass
            self.drawn += 1
        self.drawn += 1
        return [list(b) for b in self.loader.batch_sampler]

    def read(self, order: list[list[int]]):
        ds, collate_fn = self.loader.dataset, self.loader.collate_fn
        for idx in order:
            yield collate_fn([ds[i] for i in idx])


def train(strategy: Strategy, loader: DataLoader, cfg: TrainConfig, device: torch.device, desc: str = "train",
          dev: Callable[[], dict[str, float]] | None = None, tracker: Tracker | None = None,
          checkpoints: Checkpoints | None = None, monitor: JobMetrics | None = None) -> TrainResult:
    """Run ``cfg.epochs`` epochs (or ``cfg.max_steps`` steps) of ``strategy.step`` over ``loader``.

    ``dev()`` returns dev metrics of the model being trained; it is called as ``cfg.eval_every`` says (and after
    the last step), under a forked RNG so that evaluating never changes the training. ``tracker`` receives every
    record of the training and dev curves. ``checkpoints``: resume from the newest one when there is one, write
    one when due (a resumed run ends with the same weights as an uninterrupted one). ``monitor``: progress pushed
    to a Pushgateway. Returns a TrainResult with both curves (one training record every ``cfg.log_every`` steps and
    at the end).
    """
    per_epoch = len(loader)
    total = min(cfg.max_steps or math.inf, cfg.epochs * per_epoch)
    total = int(total)
    optimizer = _optimizer(strategy, cfg)
    scheduler = _linear_warmup(optimizer, int(cfg.warmup_ratio * total), total)
    strategy.train()
    # the loop's own state: everything a checkpoint must carry besides models, optimizers and RNG
    st: dict[str, Any] = {"step": 0, "epoch": 0, "position": 0, "samples": 0, "history": [], "window": {},
                          "dev_history": [], "step_seconds": [], "eval_seconds": 0.0, "elapsed": 0.0,
                          "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    resumed = checkpoints.latest() if checkpoints is not None else None
    if resumed is not None:
        state = resumed.state
        if state["loop"]["total"] != total:
            raise CheckpointError(f"{resumed.path}: written for {state['loop']['total']} steps, this run has {total}")
        strategy.restore_checkpoint({k: v.to(device) for k, v in resumed.tensors.items()}, state["strategy"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        st.update({k: v for k, v in state["loop"].items() if k in st})
        set_rng_state(state["rng"])  # last: restoring the strategy may draw quiz batches
        if tracker is not None:
            for rec in st["history"]:
                tracker.log("train", rec)
            for rec in st["dev_history"]:
                tracker.log("dev", rec)
        log.info("%s: resumed at step %d of %d (epoch %d) from %s", desc, st["step"], total, st["epoch"],
                 resumed.path)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        _reset_peak_rss()
    start = time.perf_counter()
    world = distributed.world_size()
    bar = tqdm(total=total, initial=st["step"], desc=desc, unit="step", dynamic_ncols=True, mininterval=1.0,
               disable=not distributed.is_main())
    logs: dict[str, float] = {"loss": float("nan")}
    epochs = _Epochs(loader)
    if monitor is not None:
        monitor.start(st["step"], total, max(1, st["epoch"]))

    def elapsed() -> float:
        return st["elapsed"] + time.perf_counter() - start

    def rate() -> float:
        busy = elapsed() - st["eval_seconds"] - (checkpoints.save_seconds if checkpoints is not None else 0.0)
        return st["samples"] / max(busy, 1e-9)

    def evaluate() -> None:
        tick = time.perf_counter()
        with torch.random.fork_rng(devices=[]):  # the dev loader draws a seed: keep the training RNG untouched
            rec = {"step": st["step"], "epoch": st["epoch"], **dev()}
        strategy.train()
        st["eval_seconds"] += time.perf_counter() - tick
        st["dev_history"].append(rec)
        if tracker is not None:
            tracker.log("dev", rec)

    def save_checkpoint() -> None:
        tensors, s_state = strategy.checkpoint_state()
        loop_state = {**st, "elapsed": elapsed(), "total": total}
        checkpoints.save(st["step"], tensors, {"loop": loop_state, "optimizer": optimizer.state_dict(),
                                               "scheduler": scheduler.state_dict(), "strategy": s_state,
                                               "rng": rng_state()})

    every = cfg.eval_every if dev is not None else "never"
    # a checkpoint taken after an epoch's last batch resumes in that epoch (its end-of-epoch work still to do)
    resume_in_epoch = resumed is not None and st["epoch"] > 0
    while st["step"] < total or (resume_in_epoch and st["position"] == per_epoch):
        if not resume_in_epoch:
            st["epoch"] += 1
            st["position"] = 0
        resume_in_epoch = False
        order = epochs.order(st["epoch"])
        for batch, upcoming in _with_upcoming(epochs.read(order[st["position"]:])):
            st["position"] += 1
            if world > 1 and len(batch["labels"]) < world:
                continue  # a tail batch too small to give every rank a row: every rank skips it
            batch = to_device(distributed.shard(batch), device)
            if upcoming is not None and st["step"] + 1 < total and len(upcoming["labels"]) >= world:
                upcoming = to_device(distributed.shard(upcoming), device)
            else:
                upcoming = None
            tick = time.perf_counter()
            logs = strategy.step(batch, optimizer, scheduler, upcoming=upcoming)
            st["step_seconds"].append(time.perf_counter() - tick)
            step = st["step"] + 1
            if not math.isfinite(logs["loss"]):
                bar.close()
                raise TrainingError(f"{desc}: the loss became {logs['loss']} at step {step}; "
                                    "lower the learning rate")
            st["step"] = step
            st["samples"] += len(batch["labels"]) * world
            for k, v in logs.items():
                if isinstance(v, int | float) and not isinstance(v, bool):
                    st["window"].setdefault(k, []).append(float(v))
            bar.update(1)
            if step % cfg.log_every == 0 or step == total:
                # each term's mean over the steps since the last record that reported it (a teacher loss
                # comes only from the steps that update the teacher); running counts keep their last value
                rec = {"step": step, "epoch": st["epoch"], "lr": scheduler.get_last_lr()[0],
                       **{k: v[-1] if k in CUMULATIVE else sum(v) / len(v) for k, v in st["window"].items()}}
                st["history"].append(rec)
                bar.set_postfix(loss=f"{rec['loss']:.4f}")
                if tracker is not None:
                    tracker.log("train", rec)
                st["window"] = {}
            if every != "never" and (step == total or (isinstance(every, int) and step % every == 0)):
                evaluate()
            if monitor is not None:
                monitor.update(step, total, st["epoch"], logs, rate())
            if checkpoints is not None and checkpoints.due(step, total):
                if distributed.is_main():
                    save_checkpoint()
                distributed.barrier()
            if step >= total:
                break
        if every == "epoch" and (not st["dev_history"] or st["dev_history"][-1]["step"] != st["step"]):
            evaluate()
    bar.close()
    wall = elapsed()
    if monitor is not None:
        monitor.update(st["step"], total, st["epoch"], logs, rate())
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _peak_rss()
    history = st["history"]
    return TrainResult(steps=st["step"], epochs=st["epoch"], wall_seconds=wall, samples_per_second=rate(),
                       final_loss=history[-1]["loss"] if history else float("nan"), history=history,
                       counts=dict(strategy.counts), peak_memory_bytes=int(peak), step_seconds=st["step_seconds"],
                       dev_history=st["dev_history"], eval_seconds=st["eval_seconds"],
                       resumed_from=resumed.step if resumed is not None else 0,
                       checkpoint_seconds=checkpoints.save_seconds if checkpoints is not None else 0.0)


@torch.no_grad()
def predict_outputs(model: torch.nn.Module, loader: DataLoader, side: str, device: torch.device,
                    layers: tuple[int, ...] = (), features: bool = False, desc: str | None = None
                    ) -> dict[str, torch.Tensor]:
    """Row-ordered outputs of a classifier over ``loader``: "logits" [N, C], "features" [N, H] (pooled last
    state) when asked, and "hidden.<i>" [N, H] pooled states for each hidden-state index in ``layers``."""
    model.eval()
    out: dict[str, list[torch.Tensor]] = {}
    index = []
    for batch in tqdm(loader, desc=desc, unit="batch", disable=desc is None, dynamic_ncols=True, mininterval=1.0):
        inputs = model_inputs(to_device(batch, device)[side])
        want = tuple(layers) + ((model.num_layers,) if features else ())
        if want:
            logits, states = model(**inputs, pooled_layers=want)
            named = {f"hidden.{i}": s for i, s in zip(layers, states, strict=False)}
            if features:
                named["features"] = states[-1]
        else:
            logits, named = model(**inputs), {}
        for k, v in {"logits": logits, **named}.items():
            out.setdefault(k, []).append(v.float().cpu())
        index.append(batch["index"])
    if not index:
        return {"logits": torch.empty(0)}
    order = torch.cat(index)
    result = {}
    for k, parts in out.items():
        values = torch.cat(parts)
        result[k] = torch.empty_like(values)
        result[k][order] = values  # back to row order, whatever order the loader used
    return result


@torch.no_grad()
def predict(model: torch.nn.Module, loader: DataLoader, side: str, device: torch.device,
            desc: str | None = None) -> torch.Tensor:
    """Logits [N, C] of ``model`` over the rows of ``loader`` (row order), using the ``side`` tokenization."""
    model.eval()
    out, index = [], []
    for batch in tqdm(loader, desc=desc, unit="batch", disable=desc is None, dynamic_ncols=True, mininterval=1.0):
        out.append(model(**model_inputs(to_device(batch, device)[side])).float().cpu())
        index.append(batch["index"])
    if not out:
        return torch.empty(0)
    logits, index = torch.cat(out), torch.cat(index)
    result = torch.empty_like(logits)
    result[index] = logits  # back to row order, whatever order the loader used
    return result
