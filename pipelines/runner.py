"""Build, compile and run the ikd pipeline here: the pipeline function for a config, its IR YAML, and a whole run
offline with ``kfp.local`` (``ikd-pipeline compile`` and ``ikd-pipeline run``).

The front door's side of Kubeflow: it imports the library (``ikd.integrations.kubeflow`` for placement, cache
keys and the image; ``ikd.steps`` for the run summary), never the reverse.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

from ikd.config import Config
from ikd.errors import ConfigError
from ikd.integrations import kubeflow
from ikd.integrations.kubeflow import PipelineError, PipelineInputs, as_inputs, require_kfp

#: step -> the name of its output artifact (components/): what ``run_local`` links as ``<out>/<step>``.
STEP_OUTPUTS = {
    "prepare": "data",
    "adapt": "teacher",
    "distill": "student",
    "evaluate": "evaluation",
    "export": "onnx_model",
    "promote": "decision",
}


def default_source(cfg: Config) -> str:
    """The data source a pipeline is compiled with when none is given: the hub's GLUE for GLUE presets."""
    if cfg.data.preset and cfg.data.preset.startswith("glue-"):
        return "nyu-mll/glue"
    raise ConfigError(
        "--data: no default data source for a config without a GLUE preset; give a folder the "
        "pods can read or a hub dataset id"
    )


def build_pipeline(cfg: Config, source: str | PipelineInputs, for_cluster: bool = True):
    """The pipeline function for ``cfg`` (validated) with ``source`` (a data source or :class:`PipelineInputs`) as
    its parameters' defaults. ``for_cluster`` checks the placement against the config (a local run ignores it)."""
    require_kfp()
    if for_cluster:
        kubeflow.check_placement(cfg)
        check_data_mount(cfg, as_inputs(source))
    from ikd.pipelines.ikd_pipeline import build  # imports kfp: only once it is known to be installed

    return build(cfg, as_inputs(source), kubeflow.cache_keys(cfg, source), cfg.kubeflow.image or kubeflow.IMAGE)


def check_data_mount(cfg: Config, inputs: PipelineInputs) -> None:
    """With ``kubeflow.data_claim``, a folder source must lie on that volume (under ``kubeflow.data_mount``)."""
    kc, src = cfg.kubeflow, inputs.source
    if not kc.data_claim or inputs.dvc_repo or not src.startswith("/"):
        return
    mount = kc.data_mount.rstrip("/")
    if src != mount and not src.startswith(mount + "/"):
        raise ConfigError(
            f"--data {src}: kubeflow.data_claim {kc.data_claim} is mounted at {mount} in the prepare task; "
            f"give a folder under it (e.g. {mount}/{Path(src).name}) or set kubeflow.data_mount"
        )


def compile_pipeline(cfg: Config, source: str | PipelineInputs, out: Path) -> Path:
    """Write the pipeline's IR YAML to ``out`` (atomically). Returns ``out``."""
    func = build_pipeline(cfg, source)
    from kfp import compiler

    out = Path(out)
    if out.suffix not in (".yaml", ".yml"):
        raise ConfigError(f"--out {out}: the pipeline file must end in .yaml or .yml")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp.yaml")
    try:
        compiler.Compiler().compile(func, package_path=str(tmp))
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _local_paths(inputs: PipelineInputs) -> PipelineInputs:
    """Tasks run in their own folders: local paths among the inputs made absolute (hub ids and URLs unchanged)."""
    local_path = lambda p: str(Path(p).resolve()) if p and Path(p).exists() else p  # noqa: E731
    if inputs.dvc_repo:
        inputs = replace(inputs, dvc_repo=local_path(inputs.dvc_repo))
    else:
        inputs = replace(inputs, source=local_path(inputs.source))
    return replace(inputs, dvc_remote=local_path(inputs.dvc_remote))


def run_local(cfg: Config, source: str | PipelineInputs, out: Path) -> dict[str, Any]:
    """Run the whole DAG offline with ``kfp.local`` (subprocesses in this environment; resource and accelerator
    settings have no effect locally). Artifacts land under ``<out>/kfp/``; ``<out>/<step>`` links to each step's
    output folder, so the layout matches ``ikd run``. Returns the run's metrics dict (also ``<out>/metrics.json``).
    """
    require_kfp()
    from kfp import local

    from ikd.core.metrics import write_json
    from ikd.steps.runner import summarize

    out = Path(out).resolve()
    root = out / "kfp"
    root.mkdir(parents=True, exist_ok=True)
    inputs = _local_paths(as_inputs(source))
    func = build_pipeline(cfg, inputs, for_cluster=False)
    before = {p.name for p in root.iterdir()}
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    start = time.perf_counter()
    try:  # kfp.local logs task progress on stdout: keep stdout for the caller's result
        with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
            warnings.filterwarnings("ignore", message=".*custom or non-Python base image.*")
            func(config=cfg.to_json(), **inputs.params())
    except RuntimeError as exc:  # kfp.local raises RuntimeError when a task fails; the task's log says why
        plain = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # kfp colours its messages
        raise PipelineError(f"local pipeline run failed: {plain} (the task's log above says why)") from None
    runs = sorted((p for p in root.iterdir() if p.name not in before and p.is_dir()), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise PipelineError(f"local pipeline run left no outputs under {root}")
    run_dir = runs[-1]
    d: dict[str, Path] = {}
    for step, name in STEP_OUTPUTS.items():
        target = run_dir / step / name
        if not target.is_dir():
            raise PipelineError(f"local pipeline run: {target} is missing")
        link = out / step
        if link.is_symlink() or link.is_file():
            link.unlink()
        elif link.is_dir():
            shutil.rmtree(link)
        link.symlink_to(target.relative_to(out))
        d[step] = link
    result = summarize(
        d, cfg.distill.strategy, {"pipeline_run": run_dir.name, "seconds": round(time.perf_counter() - start, 2)}
    )
    write_json(out / "metrics.json", result)
    return result
