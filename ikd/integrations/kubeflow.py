"""Kubeflow Pipelines, the library side: what runs inside a task pod and what the pipeline definition reads.

- :func:`run_component` is the body of every step component: it rebuilds the config with the CLI's validator,
  calls the same ``ikd.steps`` function and logs that step's ``metrics.json`` to the KFP Metrics artifact;
  :func:`run_trainjob_component` (multi-node distill) and :func:`run_push_component` (models to a DVC remote) are
  the other two bodies.
- :func:`place` is the one placement helper: CPU/memory requests and limits, GPUs, node selector, tolerations and
  a memory-backed ``/dev/shm``, from the config's ``kubeflow`` section; :func:`check_placement` refuses GPUs that
  would sit idle; :func:`cache_keys` gives the training steps' KFP cache keys.

Compiling the pipeline, running it locally (kfp.local), submitting and scheduling it are the front door's job:
``pipelines/`` (installed as ``ikd.pipelines``; the ``ikd-pipeline`` command, also reachable as ``ikd pipeline``).
It imports this module; nothing under ``ikd/`` imports it (tests/unit/test_layers.py).

kfp is an optional dependency (extra ``kfp``); it is imported where it is used.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ikd
from ikd.config import Config, Placement
from ikd.errors import ConfigError, IkdError

#: The project image every task runs in; the Dockerfile's ``train`` target, tagged with the package version.
IMAGE_REPOSITORY = "ghcr.io/ikd-project/ikd"
IMAGE = f"{IMAGE_REPOSITORY}:{ikd.__version__}"
#: The serving image (Dockerfile target ``serve``: ONNX Runtime, no torch).
SERVE_IMAGE = f"{IMAGE_REPOSITORY}-serve:{ikd.__version__}"
#: Steps that train: cached only when the config and the input data fingerprints say the result is the same.
TRAINING_STEPS = ("prepare", "adapt", "distill")


#: The framework metadata of each model-producing step's output artifact.
FRAMEWORKS = {"adapt": "pytorch", "distill": "pytorch", "export": "onnx"}


class PipelineError(IkdError):
    """The pipeline could not be compiled, run, submitted or scheduled (the message says which and why)."""


@dataclass(frozen=True)
class PipelineInputs:
    """The pipeline's parameters besides the config. ``source``: a folder the pods can read or a hub id; with
    ``dvc_repo`` (a git URL), the path of a folder in that DVC repository at ``dvc_rev`` (``dvc get``).
    ``dvc_remote``: when set, a last task pushes teacher, student and ONNX model to that DVC remote."""

    source: str
    dvc_repo: str = ""
    dvc_rev: str = ""
    dvc_remote: str = ""

    def params(self) -> dict[str, str]:
        return {
            "source": self.source,
            "dvc_repo": self.dvc_repo,
            "dvc_rev": self.dvc_rev,
            "dvc_remote": self.dvc_remote,
        }


def as_inputs(source: str | PipelineInputs) -> PipelineInputs:
    """``source`` as :class:`PipelineInputs` (a plain data source has no DVC repository or remote)."""
    return source if isinstance(source, PipelineInputs) else PipelineInputs(str(source))


def require_kfp() -> None:
    """Raise a :class:`PipelineError` naming the ``kfp`` extra when kfp is not installed."""
    try:
        import kfp  # noqa: F401
    except ImportError:
        raise PipelineError("Kubeflow Pipelines support needs the kfp extra: pip install 'ikd[kfp]'") from None


# ---- inside a task pod ----------------------------------------------------------------------------------------
def flatten_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a ``metrics.json`` dict as ``{"a.b.c": value}`` (booleans, strings, NaN left out; the
    same selection as :func:`ikd.core.metrics.numeric_leaves`, flattened)."""
    from ikd.core.metrics import numeric_leaves

    flat: dict[str, float] = {}
    for k, v in numeric_leaves(metrics).items():
        if isinstance(v, dict):
            flat.update(flatten_metrics(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = float(v)
    return flat


def _bytes(quantity: str) -> float:
    """A Kubernetes quantity (``8Gi``, ``512Mi``, ``2G``, ``100``) in bytes."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "m": 1e-3}
    for unit, factor in units.items():
        if quantity.endswith(unit):
            return float(quantity[: -len(unit)]) * factor
    return float(quantity)


def check_task_mounts(cfg: Config, step: str, shm: Path = Path("/dev/shm")) -> None:
    """In a KFP pod (the backend sets ``KFP_POD_NAME``): the memory-backed /dev/shm the placement asked for is
    there. KFP backends before 2.3 drop ``emptyDir`` mounts of the kubernetes platform spec without an error,
    which leaves the container runtime's 64 MiB /dev/shm, too small for what uses shared memory in a GPU pod
    (NCCL's intra-node transport, torch's shared tensors), failing with a bus error mid-run; fail at the start
    instead, saying why."""
    if not os.environ.get("KFP_POD_NAME"):
        return  # kfp.local, or the step run by hand: placement does not apply
    kc = cfg.kubeflow
    section = step if step in ("adapt", "distill", "score") else "default"
    placement = getattr(kc, section)
    if not placement.shm_size:
        return
    st = os.statvfs(shm)
    have, want = st.f_blocks * st.f_frsize, _bytes(placement.shm_size)
    if have < 0.9 * want:
        raise PipelineError(
            f"{step}: {shm} holds {have / 2**20:.0f} MiB but kubeflow.{section}.shm_size asks for "
            f"{placement.shm_size}: the KFP backend did not mount the emptyDir "
            "(emptyDir mounts need KFP backend >= 2.3; docs/kubeflow.md, minimum versions)"
        )


def run_component(
    step: str,
    config: str,
    *,
    out,
    metrics,
    source: str | None = None,
    dvc_repo: str = "",
    dvc_rev: str = "",
    data=None,
    teacher=None,
    scores=None,
    student=None,
    confusion=None,
    report=None,
    report_html=None,
    shard: str = "",
) -> None:
    """Run ``ikd.steps.<step>`` with KFP artifacts: ``out.path`` becomes the step's output folder (the same files
    as ``ikd run`` writes to ``<out>/<step>/``), ``metrics`` receives the flattened ``metrics.json``.

    For ``evaluate``, ``confusion`` (ClassificationMetrics) gets the student's dev confusion matrix, ``report``
    (Markdown) the report and ``report_html`` (HTML) the report as one page, pictures inlined.
    """
    from ikd.core.metrics import read_json
    from ikd.steps import table

    if step not in table.STEPS:
        raise PipelineError(f"unknown step {step!r}; known: {', '.join(table.NAMES)}")
    cfg = Config.from_text(config, source="pipeline parameter 'config'")
    check_task_mounts(cfg, step)
    out_dir = Path(out.path)
    artifacts = {"data": data, "teacher": teacher, "scores": scores, "student": student}
    inputs: dict[str, Any] = {k: Path(a.path) for k, a in artifacts.items() if a is not None}
    if source is not None:
        inputs["source"] = table.Source(source, dvc_repo or None, dvc_rev or None)
    if step == "score":
        from ikd.steps import score_teacher

        result = score_teacher.run(cfg, inputs, out_dir, shard=score_teacher.parse_shard(shard or None))
    else:
        result = table.call(cfg, step, inputs, out_dir)
    framework = FRAMEWORKS.get(step)
    _log_outputs(step, result.key, out, metrics, {"framework": framework} if framework else {})
    if step == "evaluate":
        c = read_json(out_dir / "confusion.json")
        confusion.log_confusion_matrix([str(x) for x in c["labels"]], c["student"])
        for artifact, name in ((report, "report.md"), (report_html, "report.html")):
            if artifact is not None:
                Path(artifact.path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(out_dir / name, artifact.path)


def run_merge_component(config: str, *, shards, out, metrics) -> None:
    """Body of ``merge_scores``: the ``score`` shard artifacts joined into ``out`` (:func:`ikd.steps.score_teacher.
    merge_folders`), with the same metrics and metadata as :func:`run_component`."""
    from ikd.steps import score_teacher

    Config.from_text(config, source="pipeline parameter 'config'")  # the same validation as every component
    result = score_teacher.merge_folders([Path(a.path) for a in shards], Path(out.path))
    _log_outputs("score", result.key, out, metrics, {})


def run_trainjob_component(config: str, *, data, teacher, run_id: str, image: str, out, metrics) -> None:
    """Body of the multi-node ``distill`` component: :func:`ikd.integrations.trainjob.launch`, then the same
    metrics and metadata as :func:`run_component`."""
    from ikd.core.metrics import read_json
    from ikd.integrations import trainjob

    cfg = Config.from_text(config, source="pipeline parameter 'config'")
    out_dir = Path(out.path)
    trainjob.launch(cfg, image, Path(data.path), Path(teacher.path), out_dir, run_id)
    _log_outputs(
        "distill",
        read_json(out_dir / "step.json")["key"],
        out,
        metrics,
        {"framework": "pytorch", "nodes": cfg.kubeflow.distill_nodes},
    )


def _log_outputs(step: str, key: str, out, metrics, extra: dict[str, Any]) -> None:
    """The step's metrics.json to the KFP Metrics artifact (flattened) and lineage to the output's metadata."""
    from ikd.core.metrics import read_json

    for name, value in flatten_metrics(read_json(Path(out.path) / "metrics.json")).items():
        metrics.log_metric(name, value)
    lineage = read_json(Path(out.path) / "step.json").get("lineage", {})
    out.metadata.update({"step": step, "key": key, "ikd_version": ikd.__version__, "lineage": lineage, **extra})


def run_push_component(remote: str, *, teacher, student, onnx_model, out) -> None:
    """Body of the optional ``push`` task: :func:`ikd.integrations.dvc.push` of the three models to the DVC remote
    ``remote``; ``out`` (a folder) receives ``teacher.dvc``, ``student.dvc`` and ``onnx.dvc`` and their md5s as
    metadata."""
    from ikd.integrations import dvc

    folders = {"teacher": Path(teacher.path), "student": Path(student.path), "onnx": Path(onnx_model.path)}
    pushed = dvc.push(folders, remote, Path(out.path))
    out.metadata.update({"remote": remote, **{f"{name}_md5": v["md5"] for name, v in pushed.items()}})


# ---- placement and caching (read when the pipeline is defined) ------------------------------------------------
def place(task, placement: Placement):
    """Apply a :class:`~ikd.config.Placement` to a KFP task; returns the task. Everything it sets is visible in the
    compiled YAML (resources in the pipeline spec, the rest in the kubernetes platform spec)."""
    from kfp import kubernetes

    if placement.cpu_request:
        task.set_cpu_request(placement.cpu_request)
    if placement.cpu_limit:
        task.set_cpu_limit(placement.cpu_limit)
    if placement.memory_request:
        task.set_memory_request(placement.memory_request)
    if placement.memory_limit:
        task.set_memory_limit(placement.memory_limit)
    if placement.accelerator_count:
        task.set_accelerator_type(placement.accelerator_type).set_accelerator_limit(placement.accelerator_count)
    for key, value in sorted(placement.node_selector.items()):
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    for t in placement.tolerations:
        kubernetes.add_toleration(task, key=t.key, operator=t.operator, value=t.value, effect=t.effect)
    if placement.shm_size:
        kubernetes.empty_dir_mount(
            task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit=placement.shm_size
        )
    return task


def check_placement(cfg: Config) -> None:
    """GPUs asked for a step whose config pins the CPU would sit idle: refuse (the CLI's rule: no silent CPU)."""
    gpu_steps = [s for s in ("adapt", "distill") if getattr(cfg.kubeflow, s).accelerator_count]
    if cfg.kubeflow.default.accelerator_count:
        gpu_steps.append("default")
    if gpu_steps and cfg.device == "cpu":
        raise ConfigError(
            [
                f"kubeflow.{s}.accelerator_count: GPUs requested but device is 'cpu' (set device: auto "
                "or cuda, or kubeflow.<step>.accelerator_count: 0)"
                for s in gpu_steps
            ]
        )


def cache_keys(cfg: Config, source: str | PipelineInputs) -> dict[str, str | None]:
    """Per step: a KFP cache key, or None where caching must be off.

    Training steps (prepare, adapt, distill) are cached only under a key made of the config sections they and
    their upstream steps read, the data files' sha256 and the ikd version; without a fingerprint of the data
    (a hub id, or a folder not readable where the pipeline is compiled) they are never cached; a DVC source is
    fingerprinted by repository, path and revision only when the revision is a full commit sha (a tag or branch can
    move). Under ``adapt.mode: import`` adapt and distill also digest the imported classifier's weights sha256
    (never cached when it does not resolve at compile time). evaluate and export keep KFP's default key (their
    inputs are the upstream artifacts).
    """
    from ikd.steps import table

    inputs = as_inputs(source)
    if inputs.dvc_repo:
        pinned = re.fullmatch(r"[0-9a-f]{40}", inputs.dvc_rev or "")
        fp = {"dvc": f"{inputs.dvc_repo}:{inputs.source}@{inputs.dvc_rev}"} if pinned else None
    else:
        fp = table.source_key(cfg, table.Source(inputs.source)) if Path(inputs.source).is_dir() else None
    teacher = imported_teacher_key(cfg)
    keys: dict[str, str | None] = {}
    sections: tuple[str, ...] = ("seed",)
    for step in TRAINING_STEPS:
        sections = (*sections, *table.STEPS[step].sections)
        after_adapt = step != "prepare" and cfg.adapt.mode == "import"
        if fp is None or (after_adapt and teacher is None):
            keys[step] = None
            continue
        d = cfg.to_dict()
        payload: dict[str, Any] = {
            "step": step,
            "config": {s: d[s] for s in sorted(set(sections))},
            "data": fp,
            "ikd_version": ikd.__version__,
        }
        if after_adapt:
            payload["teacher"] = teacher
        keys[step] = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    return keys


def imported_teacher_key(cfg: Config) -> dict[str, Any] | None:
    """Under ``adapt.mode: import``, the imported classifier's key (config fields and weights sha256) where the
    pipeline is compiled; None when it does not resolve there (adapt and distill are then never cached)."""
    if cfg.adapt.mode != "import":
        return None
    from ikd.core.models import source_key
    from ikd.errors import ModelError

    try:
        return source_key(cfg.teacher)
    except ModelError:
        return None
