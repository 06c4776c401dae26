"""Task metrics and the metrics contract.

Every step writes ``metrics.json`` next to its output; :func:`write_json` is the one writer. The run's
top-level ``metrics.json`` has the shape
``{"task": ..., "teacher": {<metric>: ...}, "student": {<metric>: ...}, "export": {"max_abs_diff": ..., "path": ...}}``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np


def accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    return float((y == pred).mean()) if len(y) else float("nan")


def f1(y: np.ndarray, pred: np.ndarray, positive: int = 1) -> float:
    """Binary F1 of class ``positive`` (GLUE's MRPC metric)."""
    tp = int(((pred == positive) & (y == positive)).sum())
    fp = int(((pred == positive) & (y != positive)).sum())
    fn = int(((pred != positive) & (y == positive)).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def matthews(y: np.ndarray, pred: np.ndarray) -> float:
    """Matthews correlation coefficient, multi-class form (GLUE's CoLA metric); 0 when undefined."""
    k = int(max(y.max(initial=0), pred.max(initial=0))) + 1
    c = np.zeros((k, k), dtype=np.float64)
    np.add.at(c, (y, pred), 1)
    t, p, n, s = c.sum(1), c.sum(0), np.trace(c), c.sum()
    denom = math.sqrt((s * s - (p * p).sum()) * (s * s - (t * t).sum()))
    return float((n * s - (t * p).sum()) / denom) if denom else 0.0


METRICS = {"accuracy": accuracy, "f1": f1, "matthews": matthews}


def compute(names: list[str], y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """The named task metrics of predictions ``pred`` [N] against labels ``y`` [N]."""
    return {name: METRICS[name](y, pred) for name in names}


def confusion(y: np.ndarray, pred: np.ndarray, k: int) -> list[list[int]]:
    c = np.zeros((k, k), dtype=np.int64)
    np.add.at(c, (y, pred), 1)
    return c.tolist()


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON atomically (temporary name, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
