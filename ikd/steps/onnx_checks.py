"""How every exported ONNX file is measured: ONNX Runtime sessions, parity with PyTorch, task metrics and argmax
agreement with the PyTorch student on the prepared calib and dev rows, and speed (:class:`FileChecks`)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ikd.config import Config
from ikd.core import models
from ikd.core.data import Prepared
from ikd.core.metrics import compute
from ikd.training import loop

log = logging.getLogger("ikd")


def session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _batches(prep: Prepared, rows: int, batch_size: int, by_length: bool = False, split: str = "dev"):
    rows_of = prep.splits[split]
    rows_of = rows_of.select(range(min(rows, len(rows_of)))).remove_columns(
        [c for c in rows_of.column_names if c.startswith("teacher_")]
    )
    if not len(rows_of):
        return []
    if by_length:
        order = sorted(range(len(rows_of)), key=lambda i: len(rows_of[i]["student_input_ids"]))
        rows_of = rows_of.select(order)
    return list(loop.make_loader(rows_of, {"student": prep.info["pad_ids"]["student"]}, batch_size, False, 0))


def _feed(sess, side: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The session's inputs from a batch (a fused graph may drop an input it does not use)."""
    return {i.name: side[i.name].numpy().astype(np.int64) for i in sess.get_inputs()}


def _run(sess, side: dict[str, torch.Tensor]) -> np.ndarray:
    return sess.run(["logits"], _feed(sess, side))[0]


def parity(model, sess, names: list[str], batches) -> dict[str, Any]:
    """Max |ORT - torch| over ``batches`` and how often the argmax agrees."""
    worst, agree, n = 0.0, 0, 0
    with torch.no_grad():
        for b in batches:
            ref = model(*(b["student"].get(k) for k in names)).numpy()
            got = _run(sess, b["student"])
            worst = max(worst, float(np.abs(ref - got).max()))
            agree += int((ref.argmax(-1) == got.argmax(-1)).sum())
            n += len(ref)
    return {"max_abs_diff": worst, "argmax_agreement": agree / max(n, 1), "rows": n}


def predictions(run_batch, batches) -> tuple[np.ndarray, np.ndarray]:
    """(argmax predictions, labels) of ``run_batch`` (a batch's student side -> logits) over ``batches``."""
    preds, ys = [], []
    for b in batches:
        preds.append(np.asarray(run_batch(b["student"])).argmax(-1))
        ys.append(b["labels"].numpy())
    return np.concatenate(preds), np.concatenate(ys)


def ort_metrics(sess, batches, metric_names: list[str]) -> dict[str, float]:
    preds, ys = predictions(lambda side: _run(sess, side), batches)
    return compute(metric_names, ys, preds)


def speed(sess, sets: dict[str, list]) -> dict[str, float]:
    """Rows per second of ``sess`` on each named list of batches (one warm-up batch first, then the best of three
    passes, so that a moment of contention on a shared machine does not decide a scheme)."""
    out = {}
    for name, batches in sets.items():
        if not batches:
            continue
        feeds = [_feed(sess, b["student"]) for b in batches]
        sess.run(["logits"], feeds[0])
        rows = sum(len(f["input_ids"]) for f in feeds)
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            for f in feeds:
                sess.run(["logits"], f)
            best = min(best, time.perf_counter() - start)
        out[name] = rows / best
    return out


class FileChecks:
    """What every written file is measured on: parity rows against PyTorch (dev), all calib and all dev rows in
    batches of 32 (task metrics, argmax agreement with the PyTorch student, whose predictions are computed once
    here), speed batches (dev). An int8.Checks: ``judged_on`` is calib, or dev when the data has no calib rows."""

    def __init__(self, cfg: Config, prep: Prepared, model, names: list[str]):
        self.model, self.names, self.threads = model, names, cfg.threads
        self.metric_names = prep.info["metrics"]
        self.metric = self.metric_names[0]
        self.parity_batches = _batches(prep, cfg.export.parity_rows, 16)
        self.sets = {
            split: batches
            for split in ("calib", "dev")
            if (batches := _batches(prep, len(prep.splits[split]), 32, split=split))
        }
        self.judged_on = "calib" if "calib" in self.sets else "dev"
        if self.judged_on == "dev" and cfg.export.quantize:
            log.warning(
                "int8: %s has no calibration rows (prepared before data.calib_rows existed, data.calib_rows: 0, or too "
                "few train rows); "
                "the int8 guard judges on dev rows instead, so dev is no longer an unbiased report: run `ikd "
                "prepare` again with data.calib_rows > 0",
                prep.path,
            )
        self.student: dict[str, np.ndarray] = {}
        self.reference: dict[str, dict[str, float]] = {}
        with torch.no_grad():
            for split, batches in self.sets.items():
                preds, ys = predictions(lambda side: model(*(side.get(k) for k in names)).numpy(), batches)
                self.student[split] = preds
                self.reference[split] = compute(self.metric_names, ys, preds)
        rows = cfg.export.speed_rows
        self.speed_sets = (
            {"batch_1": _batches(prep, min(rows, 64), 1), "batch_32_sorted": _batches(prep, rows, 32, by_length=True)}
            if rows
            else {}
        )

    def measure(self, path: Path) -> dict[str, Any]:
        sess = session(path, self.threads)
        record: dict[str, Any] = {"path": path.name, **parity(self.model, sess, self.names, self.parity_batches)}
        agreement: dict[str, Any] = {"reference": "torch student"}
        for split, batches in self.sets.items():
            preds, ys = predictions(lambda side: _run(sess, side), batches)
            record[split] = compute(self.metric_names, ys, preds)
            agreement[split] = {"argmax": float((preds == self.student[split]).mean()), "rows": len(preds)}
        return {
            **record,
            "agreement": agreement,
            "rows_per_second": speed(sess, self.speed_sets),
            "size_bytes": path.stat().st_size,
            "sha256": models.sha256_file(path),
        }
