"""What every step shares: an output folder written atomically, and the record beside its artifact.

Each step writes into a temporary sibling of its output folder and renames it into place only when it has
finished, so a failed step leaves the previous good output intact. Next to its artifact it writes the resolved
``config.yaml``, ``metrics.json`` and ``step.json`` (the step's key, the config sections it read, its inputs' keys,
the seed, and lineage carried from its inputs). Nothing here knows a strategy or a model.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ikd
from ikd.config import Config
from ikd.core.metrics import Tracker, write_json
from ikd.errors import DataError
from ikd.steps.table import STEPS, step_key


@dataclass
class StepResult:
    step: str
    out_dir: Path
    metrics: dict[str, Any]
    key: str


@contextlib.contextmanager
def atomic_dir(out_dir: Path) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``out_dir``, on failure it is removed."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def finish(
    tmp: Path,
    cfg: Config,
    step: str,
    inputs: dict[str, str],
    metrics: dict[str, Any],
    extra: dict[str, Any] | None = None,
    lineage: dict[str, Any] | None = None,
    tracker: Tracker | None = None,
) -> str:
    """Write config.yaml, metrics.json and step.json (key, inputs, seed, lineage) into ``tmp``; returns the key.
    ``lineage``: this step's own data/models records, merged over what its ``inputs`` folders carried."""
    from ikd.steps import lineage as lin

    key = step_key(cfg, step, inputs)
    (tmp / "config.yaml").write_text(cfg.to_yaml())
    write_json(tmp / "metrics.json", metrics)
    own = dict(lineage or {})
    record = lin.inherited(*own.pop("inputs", ()))
    for k, v in own.items():
        record[k] = {**record.get(k, {}), **v} if k == "models" else v
    code = lin.code()
    write_json(
        tmp / "step.json",
        {
            "step": step,
            "key": key,
            "inputs": inputs,
            "sections": list(STEPS[step].sections),
            "seed": cfg.seed,
            "ikd_version": ikd.__version__,
            "git_revision": code["git_revision"],
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **(extra or {}),
            "lineage": {**record, "code": code},
        },
    )
    if tracker is not None:
        tracker.summary(step, metrics)
    return key


def require_dir(path: Path | None, what: str) -> Path:
    """``path`` when it is a folder; DataError otherwise, and for a model folder (``config.json``) given where the
    step folder that holds it is wanted (``--student runs/x/distill/model``: pass ``runs/x/distill``)."""
    if path is None or not Path(path).is_dir():
        raise DataError(f"{path}: {what} folder not found")
    path = Path(path)
    if (path / "config.json").is_file() and not (path / "model").is_dir():
        raise DataError(
            f"{path}: a model folder, not the {what} step folder that holds it; pass {path.parent} (the folder "
            f"`ikd {'adapt' if what == 'teacher' else 'distill'}` wrote, with model/, config.yaml and step.json)"
        )
    return path
