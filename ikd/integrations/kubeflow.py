"""Kubeflow Pipelines: the logic behind ``components/``, ``pipelines/`` and ``ikd pipeline``.

- :func:`run_component` is the body of every component: it rebuilds the config with the CLI's validator, calls
  the same ``ikd.steps`` function and logs that step's ``metrics.json`` to the KFP Metrics artifact.
- :func:`place` is the one placement helper: CPU/memory requests and limits, GPUs, node selector, tolerations and
  a memory-backed ``/dev/shm``, from the config's ``kubeflow`` section.
- :func:`compile_pipeline`, :func:`run_local`, :func:`submit` and :func:`schedule` back ``ikd pipeline``.

kfp is an optional dependency (extra ``kfp``); it is imported where it is used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import ikd
from ikd.config import Config, Placement
from ikd.errors import ConfigError, IkdError

log = logging.getLogger("ikd")

#: The project image every task runs in; the Dockerfile's ``train`` target, tagged with the package version.
IMAGE_REPOSITORY = "ghcr.io/ikd-project/ikd"
IMAGE = f"{IMAGE_REPOSITORY}:{ikd.__version__}"
#: The serving image (Dockerfile target ``serve``: ONNX Runtime, no torch).
SERVE_IMAGE = f"{IMAGE_REPOSITORY}-serve:{ikd.__version__}"
#: Steps that train: cached only when the config and the input data fingerprints say the result is the same.
TRAINING_STEPS = ("prepare", "adapt", "distill")


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
        return {"source": self.source, "dvc_repo": self.dvc_repo, "dvc_rev": self.dvc_rev,
                "dvc_remote": self.dvc_remote}


def _inputs(source: str | PipelineInputs) -> PipelineInputs:
    return source if isinstance(source, PipelineInputs) else PipelineInputs(str(source))


def _require_kfp():
    try:
        import kfp  # noqa: F401
    except ImportError:
        raise PipelineError("Kubeflow Pipelines support needs the kfp extra: pip install 'ikd[kfp]'") from None


# ---- inside a component --------------------------------------------------------------------------------------
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


def run_component(step: str, config: str, *, out, metrics, source: str | None = None, dvc_repo: str = "",
                  dvc_rev: str = "", data=None, teacher=None, student=None, confusion=None, report=None) -> None:
    """Run ``ikd.steps.<step>`` with KFP artifacts: ``out.path`` becomes the step's output folder (the same files
    as ``ikd run`` writes to ``<out>/<step>/``), ``metrics`` receives the flattened ``metrics.json``.

    For ``evaluate``, ``confusion`` (ClassificationMetrics) gets the student's dev confusion matrix and ``report``
    (Markdown) the report.
    """
    from ikd import steps
    from ikd.core.metrics import read_json

    cfg = Config.from_text(config, source="pipeline parameter 'config'")
    path = (lambda a: Path(a.path) if a is not None else None)  # noqa: E731
    out_dir = Path(out.path)
    calls = {
        "prepare": lambda: steps.prepare(cfg, source, out_dir, dvc_repo=dvc_repo or None, dvc_rev=dvc_rev or None),
        "adapt": lambda: steps.adapt(cfg, path(data), out_dir),
        "distill": lambda: steps.distill(cfg, path(data), path(teacher), out_dir),
        "evaluate": lambda: steps.evaluate(cfg, path(data), path(teacher), path(student), out_dir),
        "export": lambda: steps.export(cfg, path(data), path(student), out_dir),
    }
    if step not in calls:
        raise PipelineError(f"unknown step {step!r}; known: {', '.join(calls)}")
    result = calls[step]()
    framework = {"adapt": "pytorch", "distill": "pytorch", "export": "onnx"}.get(step)
    _log_outputs(step, result.key, out, metrics, {"framework": framework} if framework else {})
    if step == "evaluate":
        c = read_json(out_dir / "confusion.json")
        confusion.log_confusion_matrix([str(x) for x in c["labels"]], c["student"])
        Path(report.path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out_dir / "report.md", report.path)


def run_trainjob_component(config: str, *, data, teacher, run_id: str, image: str, out, metrics) -> None:
    """Body of the multi-node ``distill`` component: :func:`ikd.integrations.trainjob.launch`, then the same metrics and
    metadata as :func:`run_component`."""
    from ikd.core.metrics import read_json
    from ikd.integrations import trainjob

    cfg = Config.from_text(config, source="pipeline parameter 'config'")
    out_dir = Path(out.path)
    trainjob.launch(cfg, image, Path(data.path), Path(teacher.path), out_dir, run_id)
    _log_outputs("distill", read_json(out_dir / "step.json")["key"], out, metrics,
                 {"framework": "pytorch", "nodes": cfg.kubeflow.distill_nodes})


def _log_outputs(step: str, key: str, out, metrics, extra: dict[str, Any]) -> None:
    """The step's metrics.json to the KFP Metrics artifact (flattened) and lineage to the output's metadata."""
    from ikd.core.metrics import read_json

    for name, value in flatten_metrics(read_json(Path(out.path) / "metrics.json")).items():
        metrics.log_metric(name, value)
    lineage = read_json(Path(out.path) / "step.json").get("lineage", {})
    out.metadata.update({"step": step, "key": key, "ikd_version": ikd.__version__, "lineage": lineage, **extra})


def run_push_component(remote: str, *, teacher, student, onnx_model, out) -> None:
    """Body of the optional ``push`` task: :func:`ikd.integrations.dvc.push` of the three models to the DVC remote ``remote``;
    ``out`` (a folder) receives ``teacher.dvc``, ``student.dvc`` and ``onnx.dvc`` and their md5s as metadata."""
    from ikd.integrations import dvc
    folders = {"teacher": Path(teacher.path), "student": Path(student.path), "onnx": Path(onnx_model.path)}
    pushed = dvc.push(folders, remote, Path(out.path))
    out.metadata.update({"remote": remote, **{f"{name}_md5": v["md5"] for name, v in pushed.items()}})


# ---- placement and caching -----------------------------------------------------------------------------------
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
        kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                                   size_limit=placement.shm_size)
    return task


def cache_keys(cfg: Config, source: str | PipelineInputs) -> dict[str, str | None]:
    """Per step: a KFP cache key, or None where caching must be off.

    Training steps (prepare, adapt, distill) are cached only under a key made of the config sections they and
    their upstream steps read, the data files' sha256 and the ikd version; without a fingerprint of the data
    (a hub id, or a folder not readable where the pipeline is compiled) they are never cached; a DVC source is
    fingerprinted by repository, path and revision only when the revision is a full commit sha (a tag or branch can
    move). evaluate and export keep KFP's default key (their inputs are the upstream artifacts).
    """
    from ikd import steps
    inputs = _inputs(source)
    if inputs.dvc_repo:
        pinned = re.fullmatch(r"[0-9a-f]{40}", inputs.dvc_rev or "")
        fp = {"dvc": f"{inputs.dvc_repo}:{inputs.source}@{inputs.dvc_rev}"} if pinned else None
    else:
        fp = steps.source_fingerprint(cfg, inputs.source) if Path(inputs.source).is_dir() else None
    keys: dict[str, str | None] = {}
    sections: tuple[str, ...] = ("seed",)
    for step in TRAINING_STEPS:
        sections = (*sections, *steps.STEP_SECTIONS[step])
        if fp is None:
            keys[step] = None
            continue
        d = cfg.to_dict()
        payload = {"step": step, "config": {s: d[s] for s in sorted(set(sections))}, "data": fp,
                   "ikd_version": ikd.__version__}
        keys[step] = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    return keys


def check_placement(cfg: Config) -> None:
    """GPUs asked for a step whose config pins the CPU would sit idle: refuse (the CLI's rule: no silent CPU)."""
    gpu_steps = [s for s in ("adapt", "distill") if getattr(cfg.kubeflow, s).accelerator_count]
    if cfg.kubeflow.default.accelerator_count:
        gpu_steps.append("default")
    if gpu_steps and cfg.device == "cpu":
        raise ConfigError([f"kubeflow.{s}.accelerator_count: GPUs requested but device is 'cpu' (set device: auto "
                           "or cuda, or kubeflow.<step>.accelerator_count: 0)" for s in gpu_steps])


# ---- the pipeline ---------------------------------------------------------------------------------------------
def build_pipeline(cfg: Config, source: str | PipelineInputs, for_cluster: bool = True):
    """The pipeline function for ``cfg`` (validated) with ``source`` (a data source or :class:`PipelineInputs`) as
    its parameters' defaults. ``for_cluster`` checks the placement against the config (a local run ignores it)."""
    _require_kfp()
    if for_cluster:
        check_placement(cfg)
    from ikd.pipelines.ikd_pipeline import build

    return build(cfg, _inputs(source), cache_keys(cfg, source), cfg.kubeflow.image or IMAGE)


def compile_pipeline(cfg: Config, source: str | PipelineInputs, out: Path) -> Path:
    """Write the pipeline's IR YAML to ``out`` (atomically). Returns ``out``."""
    from kfp import compiler

    func = build_pipeline(cfg, source)
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


def run_local(cfg: Config, source: str | PipelineInputs, out: Path) -> dict[str, Any]:
    """Run the whole DAG offline with ``kfp.local`` (subprocesses in this environment; resource and accelerator
    settings have no effect locally). Artifacts land under ``<out>/kfp/``; ``<out>/<step>`` links to each step's
    output folder, so the layout matches ``ikd run``. Returns the run's metrics dict (also ``<out>/metrics.json``).
    """
    _require_kfp()
    from kfp import local

    from ikd.core.metrics import write_json
    from ikd.steps.runner import summarize

    out = Path(out).resolve()
    root = out / "kfp"
    root.mkdir(parents=True, exist_ok=True)
    inputs = _inputs(source)
    local_path = (lambda p: str(Path(p).resolve()) if p and Path(p).exists() else p)  # noqa: E731
    if inputs.dvc_repo:  # tasks run in their own folders: local paths must be absolute
        inputs = replace(inputs, dvc_repo=local_path(inputs.dvc_repo))
    else:
        inputs = replace(inputs, source=local_path(inputs.source))
    inputs = replace(inputs, dvc_remote=local_path(inputs.dvc_remote))
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
    outputs = {"prepare": "data", "adapt": "teacher", "distill": "student", "evaluate": "evaluation",
               "export": "onnx_model"}
    d: dict[str, Path] = {}
    for step, name in outputs.items():
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
    result = summarize(d, cfg.distill.strategy, {"pipeline_run": run_dir.name,
                                                 "seconds": round(time.perf_counter() - start, 2)})
    write_json(out / "metrics.json", result)
    return result


# ---- cluster: submit and schedule -----------------------------------------------------------------------------
class _ApiErrors:
    """Turn transport and API errors of the KFP client into one-line PipelineErrors naming the host."""

    def __init__(self, host: str):
        self.host = host

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or isinstance(exc, IkdError):
            return False
        import urllib3
        from kfp_server_api.exceptions import ApiException

        if isinstance(exc, urllib3.exceptions.HTTPError):
            raise PipelineError(f"cannot reach the KFP API at {self.host}: {type(exc).__name__}") from None
        if isinstance(exc, ApiException):
            detail = " ".join(str(exc.body or exc.reason or "").split())[:300]
            hint = " (check --token-file / KFP_TOKEN and --namespace)" if exc.status in (401, 403) else ""
            raise PipelineError(f"KFP API at {self.host} answered {exc.status}: {detail}{hint}") from None
        return False


def client(host: str, namespace: str | None = None, token: str | None = None, cookies: str | None = None,
           ssl_ca_cert: str | None = None, verify_ssl: bool | None = None):
    """A ``kfp.Client`` for the KFP API at ``host`` (e.g. https://kubeflow.example.com/pipeline). ``token`` is sent
    as a bearer token (a service-account or OIDC token); ``cookies`` for clusters behind an auth proxy session."""
    _require_kfp()
    import kfp

    kwargs: dict[str, Any] = {"host": host, "existing_token": token, "cookies": cookies, "ssl_ca_cert": ssl_ca_cert}
    if namespace:
        kwargs["namespace"] = namespace
    if verify_ssl is not None:
        kwargs["verify_ssl"] = verify_ssl
    with _ApiErrors(host):
        return kfp.Client(**kwargs)


def read_token(token_file: str | None) -> str | None:
    """The bearer token: from ``token_file`` when given, else env ``KFP_TOKEN``, else None."""
    import os

    if token_file:
        f = Path(token_file)
        if not f.is_file():
            raise ConfigError(f"--token-file {token_file}: file not found")
        token = f.read_text().strip()
        if not token:
            raise ConfigError(f"--token-file {token_file}: the file is empty")
        return token
    return os.environ.get("KFP_TOKEN") or None


def default_source(cfg: Config) -> str:
    """The data source a pipeline is compiled with when none is given: the hub's GLUE for GLUE presets."""
    if cfg.data.preset and cfg.data.preset.startswith("glue-"):
        return "nyu-mll/glue"
    raise ConfigError("--data: no default data source for a config without a GLUE preset; give a folder the "
                      "pods can read or a hub dataset id")


def _experiment_id(kfp_client, experiment: str, namespace: str | None) -> str:
    """The id of ``experiment``, created when missing (kfp's create_experiment looks it up first)."""
    return kfp_client.create_experiment(name=experiment, namespace=namespace).experiment_id


def upload(kfp_client, package: Path, name: str, namespace: str | None, description: str) -> tuple[str, str]:
    """Upload ``package`` as a new version of pipeline ``name`` (the pipeline is created on first upload), so
    every run points at the exact spec it ran. Returns ``(pipeline_id, version_id)``."""
    pipeline_id = kfp_client.get_pipeline_id(name)
    if pipeline_id is None:
        pipeline = kfp_client.upload_pipeline(str(package), pipeline_name=name, description=description,
                                              namespace=namespace)
        pipeline_id = pipeline.pipeline_id
        versions = kfp_client.list_pipeline_versions(pipeline_id=pipeline_id, page_size=1)
        return pipeline_id, versions.pipeline_versions[0].pipeline_version_id
    version_name = f"{name}-{ikd.__version__}-{_digest(package)}-{time.strftime('%Y%m%d-%H%M%S')}"
    version = kfp_client.upload_pipeline_version(str(package), pipeline_version_name=version_name,
                                                 pipeline_id=pipeline_id, description=description)
    return pipeline_id, version.pipeline_version_id


def _digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:8]


def _description(cfg: Config) -> str:
    return (f"ikd {ikd.__version__}: {cfg.teacher.name} -> {cfg.student.name}, strategy {cfg.distill.strategy}, "
            f"config {cfg.section_hash('data', 'teacher', 'student', 'adapt', 'distill', 'evaluate', 'export')}")


def submit(cfg: Config, source: str | PipelineInputs, kfp_client, *, experiment: str, run_name: str | None = None,
           namespace: str | None = None, package: Path | None = None, service_account: str | None = None,
           ) -> dict[str, str]:
    """Compile, upload as a pipeline version, start one run. Returns the ids."""
    import tempfile

    # kfp.Client prints UI links on stdout: send them to stderr, stdout is the caller's (ids as JSON)
    with (tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(sys.stderr),
          _ApiErrors(kfp_client._uihost or "the KFP API")):
        pkg = compile_pipeline(cfg, source, Path(package) if package else Path(tmp) / "pipeline.yaml")
        exp_id = _experiment_id(kfp_client, experiment, namespace)
        pipeline_id, version_id = upload(kfp_client, pkg, cfg.kubeflow.pipeline_name, namespace, _description(cfg))
        name = run_name or f"{cfg.kubeflow.pipeline_name}-{cfg.distill.strategy}-{time.strftime('%Y%m%d-%H%M%S')}"
        params = {"config": cfg.to_json(), **_inputs(source).params()}
        run = kfp_client.run_pipeline(experiment_id=exp_id, job_name=name, pipeline_id=pipeline_id,
                                      version_id=version_id, params=params, service_account=service_account)
        return {"run_id": run.run_id, "run_name": name, "experiment_id": exp_id, "pipeline_id": pipeline_id,
                "pipeline_version_id": version_id}


def check_cron(cron: str) -> str:
    """KFP's scheduler takes 6-field cron expressions (seconds first, robfig/cron): refuse 5-field ones clearly."""
    fields = cron.split()
    if len(fields) != 6:
        hint = f" (did you mean '0 {cron}'?)" if len(fields) == 5 else ""
        raise ConfigError(f"--cron {cron!r}: KFP needs 6 fields, seconds first: 'sec min hour day month weekday'"
                          f"{hint}")
    return " ".join(fields)


def schedule(cfg: Config, source: str | PipelineInputs, kfp_client, *, cron: str, experiment: str,
             job_name: str | None = None, namespace: str | None = None, max_concurrency: int = 1, catchup: bool = False,
             service_account: str | None = None) -> dict[str, str]:
    """Compile, upload as a pipeline version, create a recurring run on ``cron`` (6 fields). Returns the ids."""
    import tempfile

    cron = check_cron(cron)
    with (tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(sys.stderr),
          _ApiErrors(kfp_client._uihost or "the KFP API")):
        pkg = compile_pipeline(cfg, source, Path(tmp) / "pipeline.yaml")
        exp_id = _experiment_id(kfp_client, experiment, namespace)
        pipeline_id, version_id = upload(kfp_client, pkg, cfg.kubeflow.pipeline_name, namespace, _description(cfg))
        name = job_name or f"{cfg.kubeflow.pipeline_name}-{cfg.distill.strategy}-recurring"
        job = kfp_client.create_recurring_run(
            experiment_id=exp_id, job_name=name, cron_expression=cron, max_concurrency=max_concurrency,
            no_catchup=not catchup, params={"config": cfg.to_json(), **_inputs(source).params()},
            pipeline_id=pipeline_id, version_id=version_id, service_account=service_account)
        return {"recurring_run_id": job.recurring_run_id, "job_name": name, "cron": cron, "experiment_id": exp_id,
                "pipeline_id": pipeline_id, "pipeline_version_id": version_id}
