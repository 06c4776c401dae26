"""The ``prepare`` step's work: read a source, validate, split (train / quiz / dev / transfer), tokenize for teacher
and student, write the Arrow splits, tokenizers and ``schema.json``. ``ikd.steps.prepare`` adds the atomic output
folder, lineage and step record around it (:func:`run`)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ikd.config import Config
from ikd.core.metrics import Tracker, write_json
from ikd.errors import ConfigError, DataError
from ikd.steps.io import StepResult, atomic_dir, finish
from ikd.steps.table import Source, dvc_fingerprint


def build(cfg: Config, source: str, tmp: Path, shown: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Prepare the local folder or hub id ``source`` into ``tmp`` (``shown``: how schema.json names the source).
    Returns (metrics, fingerprint: file name -> sha256, or {"hub": id})."""
    import datasets

    from ikd.core import data, models

    schema = data.Schema.from_config(cfg.data)
    for role, m in (("teacher", cfg.teacher), ("student", cfg.student)):  # fail now, not after the teacher trained
        if m.init == "pretrained":
            models.resolve(m.name, m.revision)
        limit = models.max_positions(m)
        if limit is not None and cfg.data.max_length > limit:
            raise ConfigError(
                f"data.max_length: {cfg.data.max_length} tokens is more than the {role} "
                f"'{m.name}' holds ({limit} positions); lower data.max_length to {limit} or less"
            )
    train, dev = data.load_source(str(source), schema)
    fingerprint = data.source_fingerprint(cfg.data, str(source))
    names = data.label_names(schema, train)
    if len(names) < 2:
        raise DataError(f"{train.origin[0].rsplit(':', 1)[0]}: train has a single label value ({names[0]})")
    train_y = data.encode_labels(train, names, "train")
    dev_y = data.encode_labels(dev, names, "train")
    rest, quiz = data.carve_quiz(train, train_y, dev, cfg.data.quiz_rows, cfg.seed)
    avoid = set(dev.texts) | {train.texts[i] for i in quiz}
    calib_rows = min(cfg.data.calib_rows, len(rest) // 5)  # never more than a fifth of what is left to train on
    rest, calib = data.carve_heldout(train, train_y, rest, avoid, calib_rows, cfg.seed + 3)
    rng = np.random.default_rng(cfg.seed + 1)
    left_out = np.empty(0, dtype=int)
    if cfg.data.max_train_rows is not None:
        kept = rest[data.stratified_sample(train_y[rest], cfg.data.max_train_rows, rng)]
        left_out = np.setdiff1d(rest, kept) if cfg.data.transfer == "rest" else left_out
        rest = kept
    extra = None
    if cfg.data.transfer_file:
        folder = Path(source)
        if not folder.is_dir():
            raise DataError(f"data.transfer_file needs a local data folder; {source} is not one")
        extra = data.read_split(data.find_file(folder, cfg.data.transfer_file), schema, labeled=False)
    avoid |= {train.texts[i] for i in calib} | {train.texts[i] for i in rest}
    if cfg.data.augment:
        from ikd.core.augment import augment

        variants = augment(train.take(rest), cfg.data.augment, cfg.data.augment_ops, cfg.seed + 4)
        extra = (
            variants
            if extra is None
            else data.Split(
                extra.texts + variants.texts,
                extra.labels + variants.labels,
                extra.origin + variants.origin,
                extra.source_rows + variants.source_rows,
            )
        )
    transfer = data.transfer_rows(train, left_out, extra, avoid, cfg.data.max_transfer_rows, cfg.seed + 2)
    dev_idx = np.arange(len(dev.texts))
    if cfg.data.max_dev_rows is not None:
        dev_idx = data.stratified_sample(dev_y, cfg.data.max_dev_rows, rng)
    if len(rest) == 0:
        raise DataError(
            f"{train.origin[0].rsplit(':', 1)[0]}: data.quiz_rows ({cfg.data.quiz_rows}) takes all "
            f"{len(train.texts)} train rows, none is left for training; lower data.quiz_rows"
        )
    tokenizers = {"teacher": models.load_tokenizer(cfg.teacher), "student": models.load_tokenizer(cfg.student)}
    splits = {
        "train": (train.take(rest), train_y[rest]),
        "quiz": (train.take(quiz), train_y[quiz]),
        "calib": (train.take(calib), train_y[calib]),
        "dev": (dev.take(dev_idx), dev_y[dev_idx]),
        "transfer": (transfer, np.full(len(transfer.texts), -1, dtype=np.int64)),
    }
    built, stats = {}, {}
    for name, (split, y) in splits.items():
        cols: dict[str, Any] = {
            "text_a": [t[0] for t in split.texts],
            "label": y.tolist(),
            "origin": split.origin,
            "source_row": split.source_rows,
        }
        if len(schema.text_fields) == 2:
            cols["text_b"] = [t[1] for t in split.texts]
        for side, tok in tokenizers.items():
            for k, v in data.tokenize(tok, split.texts, cfg.data.max_length).items():
                cols[f"{side}_{k}"] = v
        built[name] = datasets.Dataset.from_dict(cols, features=_features(cols))
        stats[name] = {
            "rows": len(y),
            "labels": np.bincount(y[y >= 0], minlength=len(names)).tolist(),
            **{
                f"{side}_mean_tokens": round(
                    float(np.mean([len(r) for r in cols[f"{side}_input_ids"]])) if len(y) else 0.0, 2
                )
                for side in tokenizers
            },
        }
    # empty splits are not written (datasets cannot read a zero-row split back); Prepared.load restores them
    datasets.DatasetDict({k: v for k, v in built.items() if len(v)}).save_to_disk(str(tmp / "data"))
    for side, tok in tokenizers.items():
        tok.save_pretrained(str(tmp / "tokenizers" / side))
    info = {
        **data.schema_dict(schema),
        "label_names": names,
        "num_labels": len(names),
        "max_length": cfg.data.max_length,
        "source": shown,
        "fingerprint": fingerprint,
        "pad_ids": {s: int(t.pad_token_id) for s, t in tokenizers.items()},
        "splits": stats,
    }
    write_json(tmp / "schema.json", info)
    metrics = {"task": schema.task, "num_labels": len(names), **{f"{k}_rows": v["rows"] for k, v in stats.items()}}
    return metrics, fingerprint


def _features(cols: dict[str, Any]):
    import datasets

    f = {}
    for k in cols:
        if k.endswith(("_input_ids", "_token_type_ids")):
            f[k] = datasets.List(datasets.Value("int32"))
        elif k in ("label", "source_row"):
            f[k] = datasets.Value("int64")
        else:
            f[k] = datasets.Value("string")
    return datasets.Features(f)


def run(cfg: Config, inputs: dict[str, Any], out_dir: Path, live: Path | None = None) -> StepResult:
    """The ``prepare`` step: ``inputs["source"]`` (a :class:`~ikd.steps.table.Source`) into ``out_dir``. A source
    in a DVC repository is downloaded first; ``live``: also write DVCLive files there."""
    source: Source = inputs["source"]
    if source.dvc_repo:
        from ikd.integrations import dvc

        with tempfile.TemporaryDirectory(prefix="ikd-dvc-source-") as fetched:
            record = dvc.fetch(source.dvc_repo, source.path, source.dvc_rev, Path(fetched))
            return _run(cfg, fetched, out_dir, live, {"dvc_source": record}, dvc_fingerprint(record))
    return _run(cfg, source.path, out_dir, live, None, None)


def _run(
    cfg: Config,
    source: str,
    out_dir: Path,
    live: Path | None,
    origin: dict[str, Any] | None,
    source_key: dict[str, str] | None,
) -> StepResult:
    from ikd.steps import lineage as lin

    shown = (
        f"{origin['dvc_source']['repo']}:{origin['dvc_source']['path']}@{origin['dvc_source']['commit']}"
        if origin
        else str(source)
    )
    with Tracker(live) as tracker, atomic_dir(out_dir) as tmp:
        metrics, fingerprint = build(cfg, source, tmp, shown)
        if origin is not None:  # fetched into a temporary folder: record where it came from, not that folder
            data_lineage = origin
        elif "hub" in fingerprint:
            data_lineage = {"source": str(source), "hub": fingerprint["hub"]}
        else:
            data_lineage = lin.local_data(Path(source), fingerprint)
        key = finish(
            tmp,
            cfg,
            "prepare",
            {"source": json.dumps(source_key or fingerprint, sort_keys=True)},
            metrics,
            {"fingerprint": fingerprint},
            {"data": data_lineage, "models": {"teacher": lin.model(cfg.teacher), "student": lin.model(cfg.student)}},
            tracker,
        )
    return StepResult("prepare", Path(out_dir), metrics, key)
