"""Set-up shared by the two training steps (``adapt``, ``distill``): the device and process group, the rank that
writes, the dev- (or calibration-) metric callback, tokenizers and column selection of a prepared split."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ikd.config import Config
from ikd.core import models
from ikd.core.data import Prepared
from ikd.core.foreign import ForeignClassifier
from ikd.core.metrics import Tracker, compute, read_json
from ikd.core.sources import served_label_names
from ikd.errors import ConfigError, ModelError
from ikd.steps.io import StepResult
from ikd.steps.table import read_key
from ikd.training import distributed, loop

if TYPE_CHECKING:
    from ikd.strategies.base import Strategy


def training_device(cfg: Config) -> torch.device:
    """The device of this process; joins the process group when launched by torchrun (WORLD_SIZE > 1)."""
    device = loop.select_device(cfg)
    distributed.setup(device.type)
    return distributed.local_device(device)


def follower_done(step: str, out_dir: Path) -> StepResult:
    """Ranks > 0 write nothing: wait until rank 0 has written the step's output, then report it."""
    distributed.barrier()
    f = Path(out_dir) / "metrics.json"
    return StepResult(step, Path(out_dir), read_json(f) if f.is_file() else {}, read_key(out_dir))


def tracker(live: Path | None) -> Tracker:
    """DVCLive for the process that writes the step's output (rank 0 under torchrun); a no-op elsewhere."""
    return Tracker(live if distributed.is_main() else None)


def dev_metrics(
    model: torch.nn.Module, prep: Prepared, side: str, device: torch.device, batch_size: int = 64
) -> Callable[[], dict[str, float]] | None:
    """A function returning ``model``'s task metrics on the dev split (``side`` tokenization); None without dev."""
    return split_metrics(model, prep, side, device, "dev", batch_size)


def split_metrics(
    model: torch.nn.Module, prep: Prepared, side: str, device: torch.device, split: str, batch_size: int = 64
) -> Callable[[], dict[str, float]] | None:
    """A function returning ``model``'s task metrics on the prepared ``split`` ("dev", "calib"; ``side``
    tokenization); None when that split is empty."""
    dev = prep.splits[split]
    if not len(dev):
        return None
    other = "student" if side == "teacher" else "teacher"
    loader = loop.make_loader(
        dev.remove_columns(side_columns(dev, other)),
        {side: prep.info["pad_ids"][side]},
        batch_size,
        False,
        0,
        sort_by_length=True,
    )
    y = np.asarray(dev["label"])

    def metrics() -> dict[str, float]:
        logits = loop.predict_outputs(model, loader, side, device)["logits"]
        return compute(prep.info["metrics"], y, logits.argmax(-1).numpy())

    return metrics


def label_meta(prep: Prepared) -> dict[str, list[str]]:
    """What a saved model folder records of the labels: the data's values (``label_names``, what metrics and
    checks compare) and the names a served model answers with (``labels``, config.json's id2label)."""
    names = list(prep.info["label_names"])
    return {"label_names": names, "labels": served_label_names(prep.info["task"], names)}


def tokenizer(prep: Prepared, side: str):
    """The tokenizer ``side`` was prepared with, its ``model_max_length`` the data's ``max_length``: a saved model
    folder then truncates in ``pipeline(..., truncation=True)`` exactly as ikd trained and evaluated it."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(prep.tokenizer_dir(side)))
    if isinstance(prep.info.get("max_length"), int):
        tok.model_max_length = prep.info["max_length"]
    return tok


def side_columns(ds, side: str) -> list[str]:
    """The columns of one side's tokenization ("teacher" or "student") in a prepared split."""
    return [c for c in ds.column_names if c.startswith(f"{side}_")]


def load_teacher(teacher_dir: Path, prep: Prepared, strategy: type[Strategy] | None = None) -> Any:
    """The adapted teacher of ``teacher_dir`` (the output of ``ikd adapt``), frozen, checked against the labels:
    ikd's classifier, or a transformers classifier imported as it is (adapt.mode: import), which ``strategy``
    must not need to train or to run layer by layer (ConfigError)."""
    record = Path(teacher_dir) / "step.json"
    made_by = read_json(record).get("step") if record.is_file() else None
    if made_by not in (None, "adapt"):
        raise ModelError(
            f"{teacher_dir}: the output of `ikd {made_by}`, not an adapted teacher (the output of `ikd adapt`)"
        )
    model, _, meta = models.load(Path(teacher_dir) / "model")
    models.check_labels(meta, prep.info["label_names"], Path(teacher_dir) / "model", "teacher")
    if isinstance(model, ForeignClassifier) and strategy and (strategy.updates_teacher or strategy.runs_teacher_layers):
        arch = (model.config.architectures or [type(model.model).__name__])[0]
        raise ConfigError(
            f"distill.strategy: {strategy.name} {'trains' if strategy.updates_teacher else 'runs the layers of'} the "
            f"teacher, and {teacher_dir} holds an imported {arch} (adapt.mode: import), which offers logits and "
            "hidden states only: use a strategy that reads those (kd), or import a model folder written by ikd"
        )
    model.requires_grad_(False)
    return model
