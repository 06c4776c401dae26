"""The Katib Experiment (``kubeflow.org/v1beta1``) that runs ``ikd tune``'s search on a cluster.

Each Katib trial is a ``batch/v1`` Job running ``ikd distill`` in the project image with the trial's values as
``--set key=${trialParameters.name}``; it prints ``calib-<metric>=<value>`` lines (:func:`metric_lines`), which the
StdOut metrics collector reads with :data:`METRICS_FORMAT`. The Job mounts a volume (``kubeflow.workspace_claim``,
default :data:`DEFAULT_CLAIM`) at /workspace holding what ``ikd tune`` made locally: ``<run>/prepare``,
``<run>/adapt`` and ``<run>/base-params.yaml`` (docs/tuning.md says how to copy them there). The pod follows Pod
Security "restricted" like the TrainJob (:func:`ikd.integrations.trainjob.pod_spec`).
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from ikd.config import Config
from ikd.integrations import trainjob

if TYPE_CHECKING:
    from ikd.tune.space import Space

API_VERSION = "kubeflow.org/v1beta1"
#: The claim mounted at /workspace when the config names none (kubeflow.workspace_claim).
DEFAULT_CLAIM = "ikd-workspace"
#: The trial's container: Katib's metrics collector reads this one's output.
CONTAINER = "training-container"
#: StdOut collector filter: two groups, the metric name (calib-...) and its value.
METRICS_FORMAT = r"(calib-[a-z0-9_]+)=([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"
#: Katib's conditions of a finished batch/v1 Job (GJSON paths on its status).
SUCCESS = 'status.conditions.#(type=="Complete")#|#(status=="True")#'
FAILURE = 'status.conditions.#(type=="Failed")#|#(status=="True")#'
#: The files ``ikd tune`` writes that a trial reads from the volume, under /workspace/<run>/.
BASE_PARAMS = "base-params.yaml"


def metric_name(metric: str) -> str:
    """The name a calibration metric is printed and collected under: ``calib-accuracy``."""
    return f"calib-{metric}"


def metric_lines(metrics: dict[str, Any]) -> list[str]:
    """``calib-<metric>=<value>`` for each number of a distill step's ``calib`` metrics (row count excluded)."""
    return [
        f"{metric_name(k)}={float(v):.6f}"
        for k, v in metrics.items()
        if k != "rows" and isinstance(v, int | float) and not isinstance(v, bool)
    ]


def name(text: str) -> str:
    """``text`` as a Kubernetes object name (lower case, '-' for anything else, at most 63 characters)."""
    s = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    s = re.sub(r"^[^a-z]+", "", s)[:63].rstrip("-")
    return s or "ikd-tune"


def parameter_name(key: str) -> str:
    """The Katib parameter (and trial parameter) of a config key: ``distill.lr`` -> ``distill-lr``."""
    return key.replace(".", "-").replace("_", "-")


def _number(v: Any, integer: bool) -> str:
    return str(int(v)) if integer else repr(float(v))


def parameters(space: Space) -> list[dict[str, Any]]:
    """The searched keys as Katib parameters: double / int ranges (logUniform when searched on a log scale) and
    categorical lists (values as strings, read back as YAML by ``--set``)."""
    out = []
    for p in space.params:
        if p.kind == "categorical":
            feasible: dict[str, Any] = {"list": [_yaml_scalar(c) for c in p.choices]}
            kind = "categorical"
        else:
            kind = "double" if p.kind == "float" else "int"
            integer = p.kind == "int"
            feasible = {"min": _number(p.low, integer), "max": _number(p.high, integer)}
            if p.step is not None:
                feasible["step"] = _number(p.step, integer)
            if p.log:
                feasible["distribution"] = "logUniform"
        out.append({"name": parameter_name(p.key), "parameterType": kind, "feasibleSpace": feasible})
    return out


def _yaml_scalar(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def command(space: Space, run_dir: str, teacher: bool) -> list[str]:
    """The trial's command: ``ikd distill`` on the staged data (and teacher), the fixed keys and each searched key
    as ``--set key=${trialParameters.name}``, into a folder per trial."""
    from ikd.tune.space import overrides

    cmd = ["ikd", "distill", "--params", f"{run_dir}/{BASE_PARAMS}", "--data", f"{run_dir}/prepare"]
    if teacher:
        cmd += ["--teacher", f"{run_dir}/adapt"]
    cmd += ["--out", f"{run_dir}/trials/${{trialParameters.trialName}}"]
    for item in overrides(space.fixed):
        cmd += ["--set", item]
    for p in space.params:
        cmd += ["--set", f"{p.key}=${{trialParameters.{parameter_name(p.key)}}}"]
    return cmd


def experiment(
    cfg: Config,
    space: Space,
    study: str,
    metrics: list[str],
    trials: int,
    parallel: int,
    teacher: bool,
    image: str | None = None,
) -> dict[str, Any]:
    """The Experiment searching ``space`` over ``cfg`` (``study``: its name and the run folder on the volume;
    ``metrics``: the task metrics, the first maximized; ``teacher``: the trials read an adapted teacher).
    ``maxTrialCount`` is ``trials``, ``parallelTrialCount`` at most that; TPE seeded from ``cfg.seed``."""
    from ikd.integrations.kubeflow import IMAGE

    kc = cfg.kubeflow
    run = name(study)
    run_dir = f"{trainjob.WORKSPACE}/{run}"
    pod = trainjob.pod_spec(kc.distill, kc.workspace_claim or DEFAULT_CLAIM, CONTAINER)
    [container] = pod["containers"]
    container.update(
        image=kc.image or image or IMAGE,
        command=command(space, run_dir, teacher),
        resources=trainjob.resources(kc.distill),
    )
    pod["restartPolicy"] = "Never"
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {
                    "labels": {"app.kubernetes.io/part-of": "ikd"},
                    "annotations": {"sidecar.istio.io/inject": "false"},
                },
                "spec": pod,
            },
        },
    }
    objective = metric_name(metrics[0])
    trial_parameters = [{"name": "trialName", "description": "the trial's name", "reference": "${trialSpec.Name}"}] + [
        {"name": parameter_name(p.key), "description": f"config key {p.key}", "reference": parameter_name(p.key)}
        for p in space.params
    ]
    return {
        "apiVersion": API_VERSION,
        "kind": "Experiment",
        "metadata": {"name": run, "labels": {"app.kubernetes.io/part-of": "ikd"}},
        "spec": {
            "objective": {
                "type": "maximize",
                "objectiveMetricName": objective,
                **({"additionalMetricNames": [metric_name(m) for m in metrics[1:]]} if metrics[1:] else {}),
                "metricStrategies": [{"name": metric_name(m), "value": "latest"} for m in metrics],
            },
            "algorithm": {
                "algorithmName": "tpe",
                "algorithmSettings": [{"name": "random_state", "value": str(cfg.seed % 2**31)}],
            },
            "parallelTrialCount": min(parallel, trials),
            "maxTrialCount": trials,
            "maxFailedTrialCount": trials,
            "parameters": parameters(space),
            "metricsCollectorSpec": {
                "collector": {"kind": "StdOut"},
                "source": {"filter": {"metricsFormat": [METRICS_FORMAT]}},
            },
            "trialTemplate": {
                "primaryContainerName": CONTAINER,
                "successCondition": SUCCESS,
                "failureCondition": FAILURE,
                "trialParameters": trial_parameters,
                "trialSpec": job,
            },
        },
    }
