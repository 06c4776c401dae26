"""The ``score`` step: the frozen teacher's outputs over the distillation rows, an artifact of their own.

What is scored is what ``distill`` would precompute: the rows are the prepared train split followed by the transfer
split (:func:`distillation_rows`), the outputs those the strategy asks for (its
:class:`~ikd.strategies.base.CacheSpec`: logits, pooled hidden states, features), from the adapted teacher or the
pretrained one as the strategy says. The output folder is a scores folder (:mod:`ikd.steps.scoring`) plus the step
record. Scores already in the shared cache (same teacher, data, rows, outputs and backend) are copied, not
recomputed; new ones are added to it.

``--shard I/N`` scores one of N contiguous row ranges (a Kubeflow ``ParallelFor`` task each);
``ikd score --merge SHARD... --out DIR`` joins them into the folder ``distill`` reads.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from ikd.config import Config
from ikd.core import models
from ikd.core.data import Prepared
from ikd.core.metrics import Tracker
from ikd.errors import ConfigError, DataError
from ikd.steps import fit, scoring
from ikd.steps.fit import load_teacher
from ikd.steps.io import StepResult, atomic_dir, finish, require_dir
from ikd.steps.table import input_keys, read_key, teacher_source
from ikd.strategies import TeacherOutputs, get_strategy

log = logging.getLogger("ikd")


def distillation_rows(prep: Prepared, with_transfer: bool = True):
    """The rows ``distill`` trains on, in its order: train, then the (unlabeled) transfer rows."""
    import datasets

    train, transfer = prep.splits["train"], prep.splits.get("transfer")
    if with_transfer and transfer is not None and len(transfer):
        return datasets.concatenate_datasets([train, transfer])
    return train


def backend_for(cfg: Config, device) -> str:
    """The scoring backend: ``distill.score_backend``; ONNX Runtime runs on CPU only."""
    backend = cfg.distill.score_backend
    if backend != "torch" and device.type != "cpu":
        raise ConfigError(
            f"distill.score_backend: {backend} runs on CPU (ONNX Runtime's CPU provider); this run uses "
            f"{device.type}, where the torch backend is the fast one: set distill.score_backend: torch"
        )
    return backend


def teacher_model(cfg: Config, inputs: dict[str, Any], prep: Prepared, device):
    """(the frozen teacher distill reads, its key, the teacher folder or None) as ``distill.strategy`` says."""
    kind = teacher_source(cfg)
    if kind == "pretrained":
        teacher, _ = models.build(cfg.teacher, prep.num_labels, cfg.seed)
        teacher.requires_grad_(False)
        keys = input_keys(cfg, "score", inputs)
        return teacher.to(device).eval(), keys["teacher"], None
    if kind == "adapted":
        folder = require_dir(inputs.get("teacher"), "teacher")
        teacher = load_teacher(folder, prep).to(device).eval()
        return teacher, read_key(folder), folder
    return None, None, None


def check_cacheable(cfg: Config):
    """The strategy class of ``distill.strategy``; ConfigError when its outputs are asked to be cached although its
    teacher changes during training."""
    dc = cfg.distill
    strategy = get_strategy(dc.strategy)
    if strategy.updates_teacher and dc.cache_teacher_outputs:
        raise ConfigError(
            f"distill.cache_teacher_outputs: the teacher of strategy {dc.strategy} changes "
            "during training, so its outputs cannot be cached; set it to false or leave it unset"
        )
    return strategy


def spec_for(cfg: Config, teacher, prep: Prepared):
    """The strategy's :class:`CacheSpec` (None: nothing to precompute). Hidden-state pairs need the student's
    depth: its model is built (weights unused)."""
    dc = cfg.distill
    strategy = check_cacheable(cfg)
    if teacher is None or dc.cache_teacher_outputs is False:
        return None
    student, _ = models.build(cfg.student, prep.num_labels, cfg.seed)
    return strategy.cache_spec(dc, teacher, student)


def obtain(
    cfg: Config,
    teacher,
    teacher_key: str,
    prep: Prepared,
    rows_ds,
    spec,
    device,
    rows: tuple[int, int] | None = None,
    out: Path | None = None,
) -> Path:
    """A finished scores folder for ``rows`` (default: all) of ``rows_ds``: from the shared cache, else scored
    (into the cache, or into ``out`` when the cache cannot be written). With ``out`` the result is also there."""
    rows = rows or (0, len(rows_ds))
    of, digest = scoring.identity(
        teacher_key, read_key(prep.path), rows, tuple(spec.hidden), bool(spec.features), backend_for(cfg, device)
    )
    found = scoring.cached(of, digest)
    if found is not None:
        log.info("teacher scores: reusing %s (%d rows)", found, rows[1] - rows[0])
    else:
        target = scoring.cache_root() / digest
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            if out is None:
                raise DataError(
                    f"{target.parent}: cannot write the teacher scores cache ({exc}); set IKD_CACHE"
                ) from None
            log.warning("teacher scores: cache %s not writable (%s); scoring into %s only", target.parent, exc, out)
            target = Path(out)
        found = scoring.score(
            teacher,
            rows_ds,
            prep.info["pad_ids"]["teacher"],
            target,
            of,
            device,
            cfg.distill.score_batch_size,
            cfg.threads,
        )
    if out is not None and Path(out).resolve() != found.resolve():
        copy_scores(found, Path(out))
        return Path(out)
    return found


def copy_scores(src: Path, dst: Path) -> None:
    """Hard links where the file system allows (the cache and the output on one disk), copies elsewhere."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file():
            try:
                (dst / f.name).hardlink_to(f)
            except OSError:
                shutil.copy2(f, dst / f.name)


def load(folder: Path, of_expected: dict[str, Any] | None = None) -> TeacherOutputs:
    """The outputs of a scores folder as :class:`TeacherOutputs` (memory-mapped)."""
    tensors, record = scoring.read(folder)
    if of_expected is not None and not scoring.matches(record, of_expected):
        have = record.get("of", {})
        diff = sorted(k for k in of_expected if have.get(k) != of_expected[k])
        raise DataError(
            f"{folder}: teacher scores of another {', '.join(diff) or 'run'} than this distill step reads "
            f"({'; '.join(f'{k}: {have.get(k)} != {of_expected[k]}' for k in diff)}); score again with `ikd score`"
        )
    return TeacherOutputs.from_tensors(tensors, {k: str(v) for k, v in record["of"].items()})


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"I/N"`` -> (I, N), 0 <= I < N."""
    if text is None:
        return None
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard: '{text}' is not I/N (e.g. 0/4: the first of four row ranges)") from None
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"--shard: '{text}': the index must be 0..{max(count - 1, 0)} (I/N, counted from 0)")
    return index, count


def run(
    cfg: Config,
    inputs: dict[str, Any],
    out_dir: Path,
    live: Path | None = None,
    shard: tuple[int, int] | None = None,
) -> StepResult:
    """Writes the scores folder (``scores.json``, ``*.npy``) and the step record into ``out_dir``; with ``shard``
    (index, count) only that row range."""
    data_dir = require_dir(inputs.get("data"), "prepared data")
    prep = Prepared.load(data_dir)
    keys = input_keys(cfg, "score", inputs)
    device = fit.training_device(cfg)
    teacher, teacher_key, teacher_dir = teacher_model(cfg, inputs, prep, device)
    spec = spec_for(cfg, teacher, prep)
    rows_ds = distillation_rows(prep)
    metrics: dict[str, Any] = {"strategy": cfg.distill.strategy, "backend": cfg.distill.score_backend}
    with Tracker(live) as tracker, atomic_dir(out_dir) as tmp:
        if spec is None:
            reason = "no teacher" if teacher is None else f"the teacher of {cfg.distill.strategy} is not frozen"
            log.info("score: nothing to score (%s)", reason)
            metrics |= {"rows": 0, "skipped": reason}
        else:
            rows = scoring.shard_rows(len(rows_ds), shard[1], shard[0]) if shard else None
            obtain(cfg, teacher, str(teacher_key), prep, rows_ds, spec, device, rows, tmp / "scores")
            _, record = scoring.read(tmp / "scores")
            found: dict[str, Any] = {k: record[k] for k in ("seconds", "rows_per_second", "check") if k in record}
            metrics |= {
                "rows": record["rows"],
                "row_range": record["of"]["rows"],
                "outputs": record["outputs"],
                "shard": list(shard) if shard else None,
                **found,
            }
        finish(tmp, cfg, "score", keys, metrics, lineage={"inputs": (data_dir, teacher_dir)}, tracker=tracker)
    return StepResult("score", Path(out_dir), metrics, read_key(Path(out_dir)))


def merge_folders(parts: list[Path], out_dir: Path) -> StepResult:
    """``ikd score --merge``: shard step folders (each ``ikd score --shard I/N``) into one score step folder."""
    from ikd.core.metrics import read_json, write_json

    if not parts:
        raise ConfigError("ikd score --merge needs the shard folders to join")
    records = [read_json(require_dir(p, "score shard") / "step.json") for p in parts]
    keys = {r.get("key") for r in records}
    if len(keys) != 1 or any(r.get("step") != "score" for r in records):
        raise DataError(f"{', '.join(map(str, parts))}: not shards of one `ikd score` run (different keys or steps)")
    with atomic_dir(out_dir) as tmp:
        if all((Path(p) / "scores").is_dir() for p in parts):
            scoring.merge([Path(p) / "scores" for p in parts], tmp / "scores")
            _, record = scoring.read(tmp / "scores")
            metrics: dict[str, Any] = {**read_json(Path(parts[0]) / "metrics.json")}
            metrics |= {"rows": record["rows"], "shard": None}
            metrics |= {"row_range": record["of"]["rows"], "shards": len(parts), "seconds": record.get("seconds")}
        else:
            metrics = read_json(Path(parts[0]) / "metrics.json")
        for name in ("config.yaml", "step.json"):
            shutil.copy2(Path(parts[0]) / name, tmp / name)
        write_json(tmp / "metrics.json", metrics)
    return StepResult("score", Path(out_dir), metrics, str(next(iter(keys))))
