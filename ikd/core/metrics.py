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

from ikd.errors import DataError


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
    """The JSON file at ``path``; DataError naming it when it is not valid JSON (e.g. cut short)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise DataError(f"{path}: not valid JSON ({exc}); run the step that wrote it again") from None


# ---- DVCLive ---------------------------------------------------------------------------------------
def numeric_leaves(d: dict[str, Any]) -> dict[str, Any]:
    """``d`` with only its int/float leaves (nested dicts kept, empty ones dropped): what DVC can compare."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            sub = numeric_leaves(v)
            if sub:
                out[k] = sub
        elif isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            out[k] = v
    return out


def _merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


#: What each step's DVCLive summary (``dvc metrics show``, ``dvc exp show``) keeps of its metrics.json, as dotted
#: paths (a path to a section keeps the whole section; paths a step lacks are skipped). The latest point of every
#: training and dev curve is there as well (``train.loss``, ``dev.accuracy``, ...).
SUMMARY: dict[str, tuple[str, ...]] = {
    "prepare": ("train_rows", "quiz_rows", "calib_rows", "dev_rows", "transfer_rows"),
    "adapt": ("train.steps", "train.wall_seconds", "train.samples_per_second"),
    "score": ("rows", "seconds", "rows_per_second"),
    "distill": ("train.steps", "train.wall_seconds", "train.step_time_ms", "train.peak_memory_bytes"),
    "evaluate": (
        *tuple(
            f"{role}.{k}" for role in ("teacher", "student") for k in (*METRICS, "sentences_per_second", "parameters")
        ),
        "ratios",
    ),
    "export": (
        "max_abs_diff",
        "agreement",
        "calib",
        "dev",
        "size_bytes",
        "rows_per_second",
        "optimized.agreement",
        "optimized.calib",
        "optimized.dev",
        "optimized.rows_per_second",
        "int8.agreement",
        "int8.calib",
        "int8.dev",
        "int8.argmax_agreement",
        "int8.size_bytes",
        "int8.loss_points",
        "int8.speedup",
    ),
}


def pick(d: dict[str, Any], paths: tuple[str, ...]) -> dict[str, Any]:
    """The parts of the nested dict ``d`` named by dotted ``paths``, nested as in ``d``."""
    out: dict[str, Any] = {}
    for path in paths:
        node: Any = d
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            continue
        target = out
        *parents, last = path.split(".")
        for part in parents:
            target = target.setdefault(part, {})
        target[last] = node
    return out


class Tracker:
    """Where a step's numbers go besides its own files: nowhere, or a DVCLive folder (``live_dir``).

    The training loop calls :meth:`log` with every record of its curve (the same records as ``history.json``);
    a step calls :meth:`summary` with its ``metrics.json`` and :meth:`confusion` with dev predictions. DVCLive
    writes into a temporary sibling that replaces ``live_dir`` in :meth:`close`, so a failed step leaves the
    previous files intact. Layout: ``metrics.json`` (summary), ``plots/metrics/<prefix>/<name>.tsv`` (curves),
    ``plots/sklearn/confusion/<role>.json``.
    """

    def __init__(self, live_dir: Path | str | None = None):
        self.dir = Path(live_dir) if live_dir else None
        self.live = None
        if self.dir is None:
            return
        try:
            from dvclive import Live
        except ImportError:
            from ikd.errors import ConfigError

            raise ConfigError("--live needs DVCLive: pip install 'ikd[dvc]'") from None
        import tempfile

        self.dir.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.dir.name}.tmp-", dir=self.dir.parent))
        self.live = Live(str(self.tmp), dvcyaml=None, report=None, save_dvc_exp=False, monitor_system=False)

    def log(self, prefix: str, record: dict[str, Any]) -> None:
        """One point of the ``prefix`` curves ("train", "dev") at ``record["step"]``; other keys are values."""
        if self.live is None:
            return
        self.live.step = int(record["step"])
        for name, value in numeric_leaves({k: v for k, v in record.items() if k not in ("step", "epoch")}).items():
            if not isinstance(value, dict):
                self.live.log_metric(f"{prefix}/{name}", value)

    def summary(self, step: str, metrics: dict[str, Any]) -> None:
        """Merge the :data:`SUMMARY` part of a step's metrics into the ``metrics.json`` that ``dvc metrics`` reads."""
        if self.live is not None:
            _merge(self.live.summary, numeric_leaves(pick(metrics, SUMMARY[step])))

    def confusion(self, role: str, y: np.ndarray, pred: np.ndarray, labels: list[str]) -> None:
        """Dev confusion of ``role``: one (actual, predicted) pair per row, DVC's confusion template."""
        if self.live is not None:
            self.live.log_sklearn_plot(
                "confusion_matrix", [labels[i] for i in y], [labels[i] for i in pred], name=f"confusion/{role}.json"
            )

    def close(self, ok: bool = True) -> None:
        """Write the summary; on success replace ``live_dir`` with the new files, else drop them."""
        if self.live is None or self.dir is None:  # both set together, in __init__
            return
        import shutil

        self.live.make_summary()
        self.live = None
        if not ok:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        old = self.dir.with_name(f".{self.dir.name}.old-{os.getpid()}")
        if self.dir.exists():
            os.replace(self.dir, old)
        os.replace(self.tmp, self.dir)
        shutil.rmtree(old, ignore_errors=True)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(ok=exc_type is None)
