"""The ``adapt`` step: fine-tune the teacher on the task (``finetune`` on the teacher's tokenization), or, with
``adapt.mode: import``, take a classifier already fine-tuned on it as it is (:func:`imported`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ikd.config import Config
from ikd.core import foreign, models
from ikd.core.data import Prepared
from ikd.core.metrics import write_json
from ikd.core.packs import resolve
from ikd.core.sources import served_label_names
from ikd.steps import fit, job, model_card
from ikd.steps.io import StepResult, atomic_dir, finish, require_dir
from ikd.steps.table import input_keys
from ikd.strategies.finetune import Finetune
from ikd.training import distributed, loop


def run(
    cfg: Config, inputs: dict[str, Any], out_dir: Path, live: Path | None = None, opts: job.JobOptions | None = None
) -> StepResult:
    """Writes out_dir/model/ (the adapted teacher, with its model card README.md) and history.json. ``live``:
    DVCLive folder; ``opts``: checkpoints and Pushgateway."""
    opts = opts or job.JobOptions()
    data_dir = require_dir(inputs.get("data"), "prepared data")
    prep = Prepared.load(data_dir)
    keys = input_keys(cfg, "adapt", inputs)
    device = fit.training_device(cfg)
    if cfg.adapt.mode == "import":
        return imported(cfg, prep, data_dir, keys, Path(out_dir), device, live)
    ckpt = job.checkpoints(cfg, "adapt", keys, out_dir, opts)
    loop.seed_everything(cfg.seed)
    tokenizer = fit.tokenizer(prep, "teacher")
    model, source = models.build(cfg.teacher, prep.num_labels, cfg.seed)
    model.to(device)
    ds = prep.splits["train"].remove_columns(fit.side_columns(prep.splits["train"], "student"))
    loader = loop.make_loader(
        ds,
        {"teacher": prep.info["pad_ids"]["teacher"]},
        cfg.adapt.batch_size,
        True,
        cfg.seed,
        group_by_length=cfg.adapt.group_by_length,
    )
    with fit.tracker(live) as tracker, job.monitor(cfg, "adapt", out_dir, opts) as pushed:
        result = loop.train(
            Finetune(cfg.adapt, model, input_side="teacher"),
            loader,
            cfg.adapt,
            device,
            desc="adapt",
            dev=fit.dev_metrics(model, prep, "teacher", device),
            tracker=tracker,
            checkpoints=ckpt,
            monitor=pushed,
        )
        if not distributed.is_main():
            return fit.follower_done("adapt", out_dir)
        with atomic_dir(out_dir) as tmp:
            models.save(
                model.cpu(),
                tokenizer,
                tmp / "model",
                {"role": "teacher", "source": source, **fit.label_meta(prep)},
            )
            write_json(tmp / "history.json", {"train": result.history, "dev": result.dev_history})
            metrics = {"train": result.metrics()}
            key = finish(
                tmp,
                cfg,
                "adapt",
                keys,
                metrics,
                {"model": source},
                {"inputs": (data_dir,), "models": {"teacher": source}},
                tracker,
            )
            model_card.write_teacher(tmp, prep.info)
        job.finished(cfg, ckpt)
    distributed.barrier()  # followers return once rank 0 has written
    return StepResult("adapt", Path(out_dir), metrics, key)


def imported(
    cfg: Config,
    prep: Prepared,
    data_dir: Path,
    keys: dict[str, str],
    out_dir: Path,
    device: torch.device,
    live: Path | None,
) -> StepResult:
    """``adapt.mode: import``: ``teacher.name``, a classifier already fine-tuned on the task, checked against the
    data's labels and written as the adapted teacher, trained no further. A model folder ikd wrote is loaded as
    ikd's classifier (every strategy can use it); a transformers ``*ForSequenceClassification`` folder is kept as it
    is, head included (:mod:`ikd.core.foreign`), with the data's label names as its id2label. ``metrics.json``
    holds its dev metrics."""
    from ikd.core.classifier import SequenceClassifier

    if not distributed.is_main():  # under torchrun: rank 0 writes, the others wait for it
        return fit.follower_done("adapt", out_dir)
    folder = resolve(cfg.teacher.name, cfg.teacher.revision)
    names = list(prep.info["label_names"])
    served = served_label_names(prep.info["task"], names)
    tokenizer = fit.tokenizer(prep, "teacher")
    model: Any = None
    if (folder / models.META_FILE).is_file():
        model, _, meta = models.load(folder)
        if isinstance(model, SequenceClassifier):
            generic = [f"LABEL_{i}" for i in range(model.num_labels)]
            foreign.match_labels(meta.get("label_names") or generic, names, str(folder / models.META_FILE), served)
    if not isinstance(model, SequenceClassifier):
        model = foreign.load(folder)  # on the CPU
        foreign.match_labels(foreign.labels_of(model.config), names, f"{folder / 'config.json'}: id2label", served)
    source = models.source_key(cfg.teacher) | {
        "imported": True,
        "layers": model.num_layers,
        "pooling": model.pooling,
    }
    with fit.tracker(live) as tracker, atomic_dir(out_dir) as tmp:
        meta = {"role": "teacher", "source": source, "label_names": names, "labels": served}
        if isinstance(model, SequenceClassifier):
            models.save(model, tokenizer, tmp / "model", meta)
        else:
            hf = model.model
            hf.config.id2label = dict(enumerate(served))
            hf.config.label2id = {n: i for i, n in enumerate(served)}
            hf.save_pretrained(str(tmp / "model"), safe_serialization=True)
            tokenizer.save_pretrained(str(tmp / "model"))
            full = {"format": foreign.FORMAT, "pooling": model.pooling, "num_labels": model.num_labels, **meta}
            write_json(tmp / "model" / models.META_FILE, full)
        dev = fit.dev_metrics(model.to(device), prep, "teacher", device)
        metrics: dict[str, Any] = {"imported": {"from": str(folder), **({"dev": dev()} if dev else {})}}
        key = finish(
            tmp,
            cfg,
            "adapt",
            keys,
            metrics,
            {"model": source},
            {"inputs": (data_dir,), "models": {"teacher": source}},
            tracker,
        )
        model_card.write_teacher(tmp, prep.info)
    distributed.barrier()
    return StepResult("adapt", out_dir, metrics, key)
