"""Submit and schedule the ikd pipeline on a Kubeflow cluster through the KFP API (``ikd-pipeline submit`` and
``ikd-pipeline schedule``): the client, token, upload as a pipeline version, one run or a recurring run, and waiting
for a run to finish (``submit --wait``)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ikd
from ikd.config import Config
from ikd.errors import ConfigError, IkdError
from ikd.integrations.kubeflow import PipelineError, PipelineInputs, as_inputs, require_kfp
from ikd.pipelines.runner import compile_pipeline


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


def client(
    host: str,
    namespace: str | None = None,
    token: str | None = None,
    cookies: str | None = None,
    ssl_ca_cert: str | None = None,
    verify_ssl: bool | None = None,
):
    """A ``kfp.Client`` for the KFP API at ``host`` (e.g. https://kubeflow.example.com/pipeline). ``token`` is sent
    as a bearer token (a service-account or OIDC token); ``cookies`` for clusters behind an auth proxy session."""
    require_kfp()
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
    if token_file:
        f = Path(token_file)
        if not f.is_file():
            raise ConfigError(f"--token-file {token_file}: file not found")
        token = f.read_text().strip()
        if not token:
            raise ConfigError(f"--token-file {token_file}: the file is empty")
        return token
    return os.environ.get("KFP_TOKEN") or None


def check_cron(cron: str) -> str:
    """KFP's scheduler takes 6-field cron expressions (seconds first, robfig/cron): refuse 5-field ones clearly."""
    fields = cron.split()
    if len(fields) != 6:
        hint = f" (did you mean '0 {cron}'?)" if len(fields) == 5 else ""
        raise ConfigError(f"--cron {cron!r}: KFP needs 6 fields, seconds first: 'sec min hour day month weekday'{hint}")
    return " ".join(fields)


def _experiment_id(kfp_client, experiment: str, namespace: str | None) -> str:
    """The id of ``experiment``, created when missing (kfp's create_experiment looks it up first)."""
    return kfp_client.create_experiment(name=experiment, namespace=namespace).experiment_id


def upload(kfp_client, package: Path, name: str, namespace: str | None, description: str) -> tuple[str, str]:
    """Upload ``package`` as a new version of pipeline ``name`` (the pipeline is created on first upload), so
    every run points at the exact spec it ran. Returns ``(pipeline_id, version_id)``."""
    pipeline_id = kfp_client.get_pipeline_id(name)
    if pipeline_id is None:
        pipeline = kfp_client.upload_pipeline(
            str(package), pipeline_name=name, description=description, namespace=namespace
        )
        pipeline_id = pipeline.pipeline_id
        versions = kfp_client.list_pipeline_versions(pipeline_id=pipeline_id, page_size=1)
        return pipeline_id, versions.pipeline_versions[0].pipeline_version_id
    version_name = f"{name}-{ikd.__version__}-{_digest(package)}-{time.strftime('%Y%m%d-%H%M%S')}"
    version = kfp_client.upload_pipeline_version(
        str(package), pipeline_version_name=version_name, pipeline_id=pipeline_id, description=description
    )
    return pipeline_id, version.pipeline_version_id


def _digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:8]


def _description(cfg: Config) -> str:
    return (
        f"ikd {ikd.__version__}: {cfg.teacher.name} -> {cfg.student.name}, strategy {cfg.distill.strategy}, "
        f"config {cfg.section_hash('data', 'teacher', 'student', 'adapt', 'distill', 'evaluate', 'export')}"
    )


@contextlib.contextmanager
def _uploaded(
    cfg: Config,
    source: str | PipelineInputs,
    kfp_client,
    experiment: str,
    namespace: str | None,
    package: Path | None = None,
):
    """Compile, find or create the experiment, upload as a pipeline version; yields ``(experiment_id,
    pipeline_id, version_id)`` with API errors turned into PipelineErrors and kfp's stdout sent to stderr."""
    # kfp.Client prints UI links on stdout: send them to stderr, stdout is the caller's (ids as JSON)
    with (
        tempfile.TemporaryDirectory() as tmp,
        contextlib.redirect_stdout(sys.stderr),
        _ApiErrors(kfp_client._uihost or "the KFP API"),
    ):
        pkg = compile_pipeline(cfg, source, Path(package) if package else Path(tmp) / "pipeline.yaml")
        exp_id = _experiment_id(kfp_client, experiment, namespace)
        pipeline_id, version_id = upload(kfp_client, pkg, cfg.kubeflow.pipeline_name, namespace, _description(cfg))
        yield exp_id, pipeline_id, version_id


def submit(
    cfg: Config,
    source: str | PipelineInputs,
    kfp_client,
    *,
    experiment: str,
    run_name: str | None = None,
    namespace: str | None = None,
    package: Path | None = None,
    service_account: str | None = None,
) -> dict[str, str]:
    """Compile, upload as a pipeline version, start one run. Returns the ids."""
    with _uploaded(cfg, source, kfp_client, experiment, namespace, package) as (exp_id, pipeline_id, version_id):
        name = run_name or f"{cfg.kubeflow.pipeline_name}-{cfg.distill.strategy}-{time.strftime('%Y%m%d-%H%M%S')}"
        params = {"config": cfg.to_json(), **as_inputs(source).params()}
        run = kfp_client.run_pipeline(
            experiment_id=exp_id,
            job_name=name,
            pipeline_id=pipeline_id,
            version_id=version_id,
            params=params,
            service_account=service_account,
        )
        return {
            "run_id": run.run_id,
            "run_name": name,
            "experiment_id": exp_id,
            "pipeline_id": pipeline_id,
            "pipeline_version_id": version_id,
        }


def schedule(
    cfg: Config,
    source: str | PipelineInputs,
    kfp_client,
    *,
    cron: str,
    experiment: str,
    job_name: str | None = None,
    namespace: str | None = None,
    max_concurrency: int = 1,
    catchup: bool = False,
    service_account: str | None = None,
) -> dict[str, str]:
    """Compile, upload as a pipeline version, create a recurring run on ``cron`` (6 fields). Returns the ids."""
    cron = check_cron(cron)
    with _uploaded(cfg, source, kfp_client, experiment, namespace) as (exp_id, pipeline_id, version_id):
        name = job_name or f"{cfg.kubeflow.pipeline_name}-{cfg.distill.strategy}-recurring"
        job = kfp_client.create_recurring_run(
            experiment_id=exp_id,
            job_name=name,
            cron_expression=cron,
            max_concurrency=max_concurrency,
            no_catchup=not catchup,
            params={"config": cfg.to_json(), **as_inputs(source).params()},
            pipeline_id=pipeline_id,
            version_id=version_id,
            service_account=service_account,
        )
        return {
            "recurring_run_id": job.recurring_run_id,
            "job_name": name,
            "cron": cron,
            "experiment_id": exp_id,
            "pipeline_id": pipeline_id,
            "pipeline_version_id": version_id,
        }


#: Run states (KFP API v2beta1) after which a run changes no more.
FINAL_STATES = ("SUCCEEDED", "FAILED", "CANCELED", "SKIPPED")


def run_url(kfp_client, run_id: str) -> str:
    """The run's page in the KFP UI (the link kfp prints when it starts a run)."""
    try:
        prefix = kfp_client._get_url_prefix()
    except Exception:  # a client without a UI address: the API host is the best guess
        prefix = getattr(kfp_client, "_uihost", None) or ""
    return f"{str(prefix).rstrip('/')}/#/runs/details/{run_id}"


def _transient(exc: BaseException) -> bool:
    """A polling error worth retrying: the connection, or the API's 5xx / 429; never a refused token."""
    import urllib3
    from kfp_server_api.exceptions import ApiException

    if isinstance(exc, urllib3.exceptions.HTTPError):
        return True
    return isinstance(exc, ApiException) and (exc.status or 0) in (429, 500, 502, 503, 504)


def wait(
    kfp_client,
    run_id: str,
    *,
    timeout_s: float,
    poll_s: float = 30.0,
    retries: int = 5,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Poll run ``run_id`` every ``poll_s`` seconds until it reaches a final state or ``timeout_s`` passes.

    Returns ``{"state", "url"}``, plus ``"error"`` (the run's error message) when the API gives one and
    ``"timed_out": True`` when the time ran out first (the run goes on in the cluster). Up to ``retries`` failed
    polls in a row (connection errors, 5xx) are retried; a refused token or a missing run is a PipelineError at once.
    kfp's own ``wait_for_run_completion`` is not used: it does not stop on a CANCELED run.
    """
    log = logging.getLogger("ikd")
    url = run_url(kfp_client, run_id)
    deadline = clock() + timeout_s
    state, seen, failures = "PENDING", None, 0
    while True:
        try:
            run = kfp_client.get_run(run_id)
        except Exception as exc:
            failures += 1
            if failures > retries or not _transient(exc):
                with _ApiErrors(getattr(kfp_client, "_uihost", None) or "the KFP API"):
                    raise
            log.warning("run %s: polling failed (%s), try %d of %d", run_id, type(exc).__name__, failures, retries)
        else:
            failures = 0
            state = str(getattr(run, "state", None) or "PENDING").upper()
            if state != seen:
                log.info("run %s: %s (%s)", run_id, state, url)
                seen = state
            if state in FINAL_STATES:
                error = getattr(getattr(run, "error", None), "message", None)
                out = {"state": state, "url": url, **({"error": " ".join(str(error).split())} if error else {})}
                return {**out, **({"tasks": tasks} if (tasks := task_states(run)) else {})}
        left = deadline - clock()
        if left <= 0:
            return {"state": state, "url": url, "timed_out": True}
        sleep(min(poll_s, left))


def task_states(run) -> dict[str, str]:
    """Task display name -> final state, from a run's ``run_details`` (empty when the API gives none). ``promote``
    is the gate's: its decision (promote / refuse, and why) is the task's Markdown and Metrics in the run's UI."""
    details = getattr(getattr(run, "run_details", None), "task_details", None) or []
    states = {}
    for t in details:
        name = getattr(t, "display_name", None)
        if name and not name.startswith(("root", "condition-", "dvc-remote")):
            states[str(name)] = str(getattr(t, "state", None) or "UNKNOWN").upper()
    return states


def check_succeeded(name: str, result: dict[str, Any], timeout_s: float) -> None:
    """Raise a PipelineError unless ``result`` (from :func:`wait`) says the run SUCCEEDED."""
    if result["state"] == "SUCCEEDED":
        return
    if result.get("timed_out"):
        raise PipelineError(
            f"run {name} still {result['state']} after {timeout_s:g} s; it goes on in the cluster: {result['url']}"
        )
    error = f": {result['error'][:300]}" if result.get("error") else ""
    raise PipelineError(f"run {name} ended {result['state']}{error} ({result['url']})")
