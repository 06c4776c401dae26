"""Evaluation: task metrics on dev, parameter counts, sizes and measured inference speed, plus report.md."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ikd.config import Config
from ikd.core import models
from ikd.core.data import Prepared
from ikd.core.metrics import Tracker, compute, confusion, write_json
from ikd.core.tensors import model_inputs
from ikd.steps import report
from ikd.steps.io import StepResult, atomic_dir, finish, require_dir
from ikd.steps.table import input_keys
from ikd.training import loop


def throughput(model, ds, pad_id: int, side: str, batch_size: int, rows: int, device) -> dict[str, float]:
    """Sentences/s at ``batch_size`` and mean ms per sentence at batch 1, after one warm-up batch each."""
    sub = ds.select(range(min(rows, len(ds))))
    out = {}
    for bs, key in ((batch_size, "sentences_per_second"), (1, "latency_ms_batch1")):
        n = len(sub) if bs > 1 else min(len(sub), 64)
        loader = loop.make_loader(sub.select(range(n)), {side: pad_id}, bs, False, 0)
        batches = [loop.to_device(b, device)[side] for b in loader]
        model.eval()
        with torch.inference_mode():
            model(**model_inputs(batches[0]))
            start = time.perf_counter()
            for b in batches:
                model(**model_inputs(b))
            if device.type == "cuda":
                torch.cuda.synchronize()
            wall = time.perf_counter() - start
        out[key] = round(n / wall, 2) if bs > 1 else round(1000 * wall / n, 3)
    return out


def evaluate_models(
    cfg: Config, data_dir: Path, teacher_dir: Path | None, student_dir: Path, out: Path, tracker=None
) -> dict[str, Any]:
    """Evaluate teacher (if given) and student on the dev split. Writes confusion.json, report.md, its pictures
    (plots/: training curves, confusion matrices, metric against throughput) and report.html in ``out``;
    ``tracker`` (an :class:`ikd.core.metrics.Tracker`) also gets each dev confusion matrix."""
    prep = Prepared.load(data_dir)
    device = loop.select_device(cfg)
    dev = prep.splits["dev"]
    y = np.asarray(dev["label"])
    names = prep.info["metrics"]
    result: dict[str, Any] = {
        "task": prep.info["task"],
        "primary_metric": names[0],
        "dev_rows": len(y),
        "device": str(device),
    }
    # what answering train's most frequent label everywhere scores: a retention figure means little when the
    # teacher is not clearly above it (e.g. CoLA's MCC 0, MRPC's accuracy 0.684)
    counts = np.bincount(np.asarray(prep.splits["train"]["label"]), minlength=prep.num_labels)
    majority = int(counts.argmax())
    result["majority"] = {
        **compute(names, y, np.full_like(y, majority)),
        "label": prep.info["label_names"][majority],
    }
    confusions = {}
    for role, folder in (("teacher", teacher_dir), ("student", student_dir)):
        if folder is None:
            continue
        model, _, meta = models.load(folder)
        models.check_labels(meta, prep.info["label_names"], folder, role)
        model.to(device)
        keep = dev.remove_columns(
            [c for c in dev.column_names if c.startswith("teacher_" if role == "student" else "student_")]
        )
        pad = prep.info["pad_ids"][role]
        loader = loop.make_loader(keep, {role: pad}, cfg.evaluate.batch_size, False, 0, sort_by_length=True)
        pred = loop.predict_outputs(model, loader, role, device, desc=f"evaluate {role}")["logits"].argmax(-1).numpy()
        speed = throughput(model, keep, pad, role, cfg.evaluate.latency_batch_size, cfg.evaluate.latency_rows, device)
        result[role] = {
            **compute(names, y, pred),
            "parameters": models.count_parameters(model),
            "size_bytes": models.folder_size(folder),
            "layers": meta["source"]["layers"],
            "model": meta["source"]["name"],
            **speed,
        }
        confusions[role] = confusion(y, pred, prep.num_labels)
        if tracker is not None:  # DVCLive: the dev confusion matrix as a plot
            tracker.confusion(role, y, pred, prep.info["label_names"])
    if "teacher" in result:
        t, s = result["teacher"], result["student"]
        result["ratios"] = {
            "parameters": round(t["parameters"] / s["parameters"], 2),
            "speedup": round(s["sentences_per_second"] / t["sentences_per_second"], 2),
            "metric_retained": round(s[names[0]] / t[names[0]], 4) if t[names[0]] else None,
        }
    training = student_dir.parent / "metrics.json"  # the distill step's record: strategy and its cost
    if training.is_file():
        d = json.loads(training.read_text())
        if "train" in d:
            t = d["train"]
            result["distill"] = {
                "strategy": d.get("strategy"),
                "steps": t["steps"],
                "step_time_ms": t.get("step_time_ms"),
                "peak_memory_bytes": t["peak_memory_bytes"],
                "counts_per_step": t.get("counts_per_step", {}),
                "transfer_rows": d.get("transfer_rows", 0),
            }
    conf = {"labels": prep.info["label_names"], **confusions}
    write_json(out / "confusion.json", conf)
    histories = {
        "adapt": teacher_dir and teacher_dir.parent / "history.json",
        "distill": student_dir.parent / "history.json",
    }
    figs = report.figures(result, conf, {k: v for k, v in histories.items() if v is not None})
    report.write(out, report.evaluation_markdown(result, names), figs)
    return result


def run(cfg: Config, inputs: dict[str, Any], out_dir: Path, live: Path | None = None) -> StepResult:
    """The ``evaluate`` step: dev metrics, sizes and measured latency of teacher (when given) and student;
    writes report.md and report.html. ``live``: DVCLive folder (summary metrics and the dev confusion matrices)."""
    data_dir = require_dir(inputs.get("data"), "prepared data")
    student_dir = require_dir(inputs.get("student"), "student")
    teacher_dir = require_dir(inputs["teacher"], "teacher") if inputs.get("teacher") is not None else None
    keys = input_keys(cfg, "evaluate", inputs)
    with Tracker(live) as tracker, atomic_dir(out_dir) as tmp:
        metrics = evaluate_models(
            cfg, data_dir, teacher_dir and teacher_dir / "model", student_dir / "model", tmp, tracker
        )
        key = finish(
            tmp, cfg, "evaluate", keys, metrics, None, {"inputs": (data_dir, teacher_dir, student_dir)}, tracker
        )
    return StepResult("evaluate", Path(out_dir), metrics, key)
