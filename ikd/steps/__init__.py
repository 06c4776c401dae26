"""Pipeline steps: prepare -> adapt -> distill -> evaluate -> export, wired by one table (:mod:`ikd.steps.table`).

Each step is ``(cfg, inputs, out_dir) -> StepResult``; the functions below are the Python API with the inputs as
arguments (the CLI, ``ikd run``, the Kubeflow components and the DVC stages go through :func:`table.call`).
"""

from __future__ import annotations

from pathlib import Path

from ikd.config import Config
from ikd.steps.io import StepResult, atomic_dir
from ikd.steps.table import NAMES, STEPS, Source, call, dvc_fingerprint, input_keys, read_key, step_key

__all__ = [
    "NAMES",
    "STEPS",
    "Source",
    "StepResult",
    "adapt",
    "atomic_dir",
    "call",
    "distill",
    "dvc_fingerprint",
    "evaluate",
    "export",
    "input_keys",
    "prepare",
    "read_key",
    "step_key",
]


def prepare(
    cfg: Config,
    source: str,
    out_dir: Path,
    live: Path | None = None,
    dvc_repo: str | None = None,
    dvc_rev: str | None = None,
) -> StepResult:
    """Read, validate, split (train / quiz / dev) and tokenize ``source`` (a folder or hub id; with ``dvc_repo``,
    a path in that DVC repository at ``dvc_rev``) for teacher and student."""
    return call(cfg, "prepare", {"source": Source(str(source), dvc_repo, dvc_rev)}, out_dir, live)


def adapt(cfg: Config, data_dir: Path, out_dir: Path, live: Path | None = None, opts=None) -> StepResult:
    """Fine-tune the teacher on the task. ``opts``: checkpoints and Pushgateway (:class:`ikd.steps.job.JobOptions`)."""
    return call(cfg, "adapt", {"data": data_dir}, out_dir, live, opts)


def distill(
    cfg: Config, data_dir: Path, teacher_dir: Path | None, out_dir: Path, live: Path | None = None, opts=None
) -> StepResult:
    """Train the student with ``cfg.distill.strategy`` (``teacher_dir``: the adapted teacher, when it needs one)."""
    return call(cfg, "distill", {"data": data_dir, "teacher": teacher_dir}, out_dir, live, opts)


def evaluate(
    cfg: Config, data_dir: Path, teacher_dir: Path | None, student_dir: Path, out_dir: Path, live: Path | None = None
) -> StepResult:
    """Dev metrics, sizes and measured latency of teacher (optional) and student; report.md."""
    return call(cfg, "evaluate", {"data": data_dir, "teacher": teacher_dir, "student": student_dir}, out_dir, live)


def export(cfg: Config, data_dir: Path, student_dir: Path, out_dir: Path, live: Path | None = None) -> StepResult:
    """The student to ONNX (+ optimized / int8 graphs), checked against PyTorch."""
    return call(cfg, "export", {"data": data_dir, "student": student_dir}, out_dir, live)
