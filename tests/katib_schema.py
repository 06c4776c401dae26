"""What a Katib ``kubeflow.org/v1beta1`` Experiment must be for a cluster to accept and run it, as a test can check it.

Katib's Experiment CRD validates nothing itself (its openAPIV3Schema is ``type: object`` with
``x-kubernetes-preserve-unknown-fields: true``, so a schema check against it passes anything) and the
kubeflow-katib SDK cannot be installed beside kfp 2.17 (it pins protobuf<5). What a cluster checks is the Go
types' JSON fields and Katib's validating webhook, written out here from Katib v0.19's API
(pkg/apis/controller/{experiments,common}/v1beta1) and its webhook rules; the trial's ``batch/v1`` Job is checked
field by field against the Kubernetes client's V1Job model, strictly (an unknown field is an error, as
``kubectl apply`` reports it).
"""

from __future__ import annotations

import json
import re
from typing import Any

# ---- the v1beta1 types: field -> type ("str", "int", "bool", "any", {nested}, [item type], ("map", "str")) -------
_SETTING = {"name": "str", "value": "str"}
_FEASIBLE = {"max": "str", "min": "str", "list": ["str"], "step": "str", "distribution": "str"}
_PARAMETER = {"name": "str", "parameterType": "str", "feasibleSpace": _FEASIBLE}
_OBJECTIVE = {
    "type": "str",
    "goal": "num",
    "objectiveMetricName": "str",
    "additionalMetricNames": ["str"],
    "metricStrategies": [{"name": "str", "value": "str"}],
}
_ALGORITHM = {"algorithmName": "str", "algorithmSettings": [_SETTING]}
_COLLECTOR = {
    "source": {
        "fileSystemPath": {"path": "str", "kind": "str", "format": "str"},
        "filter": {"metricsFormat": ["str"]},
        "httpGet": "any",
    },
    "collector": {"kind": "str", "customCollector": "any"},
}
_TRIAL_TEMPLATE = {
    "retain": "bool",
    "trialSpec": "any",  # checked as the Kubernetes kind it names (batch/v1 Job below)
    "configMap": {"configMapName": "str", "configMapNamespace": "str", "templatePath": "str"},
    "trialParameters": [{"name": "str", "description": "str", "reference": "str"}],
    "primaryPodLabels": ("map", "str"),
    "primaryContainerName": "str",
    "successCondition": "str",
    "failureCondition": "str",
}
EXPERIMENT = {
    "apiVersion": "str",
    "kind": "str",
    "metadata": {"name": "str", "namespace": "str", "labels": ("map", "str"), "annotations": ("map", "str")},
    "spec": {
        "parameters": [_PARAMETER],
        "objective": _OBJECTIVE,
        "algorithm": _ALGORITHM,
        "earlyStopping": _ALGORITHM | {"algorithmSettings": [_SETTING]},
        "trialTemplate": _TRIAL_TEMPLATE,
        "parallelTrialCount": "int",
        "maxTrialCount": "int",
        "maxFailedTrialCount": "int",
        "metricsCollectorSpec": _COLLECTOR,
        "nasConfig": "any",
        "resumePolicy": "str",
    },
}
_SCALARS = {"str": str, "int": int, "bool": bool, "num": (int, float)}


def structure(value: Any, schema: Any, path: str = "") -> list[str]:
    """Unknown fields and wrong types of ``value`` against ``schema`` (one of the forms above)."""
    if schema == "any":
        return []
    if isinstance(schema, str):
        ok = isinstance(value, _SCALARS[schema]) and not (schema != "bool" and isinstance(value, bool))
        return [] if ok else [f"{path}: expected {schema}, got {type(value).__name__} {value!r}"]
    if isinstance(schema, tuple):  # ("map", item)
        if not isinstance(value, dict):
            return [f"{path}: expected a mapping"]
        return [p for k, v in value.items() for p in structure(v, schema[1], f"{path}.{k}")]
    if isinstance(schema, list):
        if not isinstance(value, list):
            return [f"{path}: expected a list"]
        return [p for i, v in enumerate(value) for p in structure(v, schema[0], f"{path}[{i}]")]
    if not isinstance(value, dict):
        return [f"{path}: expected a mapping, got {value!r}"]
    out = [f"{path}.{k}: unknown field" for k in value if k not in schema]
    return out + [p for k, v in value.items() if k in schema for p in structure(v, schema[k], f"{path}.{k}")]


# ---- Kubernetes built-in kinds through the client's models ---------------------------------------------------------
def kube(value: Any, type_name: str, path: str) -> list[str]:
    """``value`` against the kubernetes client model ``type_name`` (e.g. "V1Job"), strictly."""
    import kubernetes.client as k8s

    if type_name.startswith("list["):
        if not isinstance(value, list):
            return [f"{path}: expected a list"]
        return [p for i, v in enumerate(value) for p in kube(v, type_name[5:-1], f"{path}[{i}]")]
    if type_name.startswith("dict("):
        if not isinstance(value, dict):
            return [f"{path}: expected a mapping"]
        item = type_name[5:-1].split(", ", 1)[1]
        return [p for k, v in value.items() for p in kube(v, item, f"{path}.{k}")]
    if type_name in ("object",):  # IntOrString, quantities of some fields
        return [] if isinstance(value, str | int | float) else [f"{path}: expected a string or number"]
    if type_name in _SCALARS:
        return structure(value, type_name, path)
    if type_name == "float":
        return structure(value, "num", path)
    model = getattr(k8s, type_name)
    if not isinstance(value, dict):
        return [f"{path}: expected a {type_name} mapping"]
    by_json = {j: model.openapi_types[attr] for attr, j in model.attribute_map.items()}
    out = [f"{path}.{k}: unknown field of {type_name}" for k in value if k not in by_json]
    return out + [p for k, v in value.items() if k in by_json for p in kube(v, by_json[k], f"{path}.{k}")]


# ---- Katib's validating webhook (pkg/webhook/v1beta1/experiment/validator) -----------------------------------------
NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
ALGORITHMS = {"random", "grid", "hyperband", "bayesianoptimization", "tpe", "multivariate-tpe", "cmaes", "sobol"}
TPE_SETTINGS = {"gamma", "prior_weight", "n_EI_candidates", "random_state"}
COLLECTORS = {"StdOut", "File", "TensorFlowEvent", "PrometheusMetric", "Custom", "None", "Push"}
DISTRIBUTIONS = {"uniform", "logUniform", "normal", "logNormal"}
META_KEYS = {"Name", "Namespace", "Kind", "APIVersion"}


def webhook(exp: dict[str, Any]) -> list[str]:
    """The rules Katib's admission webhook enforces beyond the field types."""
    out: list[str] = []
    spec = exp["spec"]
    if not NAME.match(exp["metadata"]["name"]):
        out.append(f"metadata.name {exp['metadata']['name']!r} is not a DNS label")
    maxt, par, fail = spec.get("maxTrialCount"), spec.get("parallelTrialCount"), spec.get("maxFailedTrialCount")
    if any(n is not None and n <= 0 for n in (maxt, par)) or (fail is not None and fail < 0):
        out.append("trial counts must be positive")
    if maxt is not None and any(n is not None and n > maxt for n in (par, fail)):
        out.append("parallelTrialCount and maxFailedTrialCount must not exceed maxTrialCount")
    obj = spec.get("objective") or {}
    if obj.get("type") not in ("minimize", "maximize") or not obj.get("objectiveMetricName"):
        out.append("objective needs type minimize|maximize and objectiveMetricName")
    if obj.get("objectiveMetricName") in obj.get("additionalMetricNames", []):
        out.append("additionalMetricNames must not repeat the objective")
    algo = spec.get("algorithm") or {}
    if algo.get("algorithmName") not in ALGORITHMS:
        out.append(f"algorithm {algo.get('algorithmName')!r} unknown")
    if algo.get("algorithmName") == "tpe":
        for s in algo.get("algorithmSettings", []):
            if s["name"] not in TPE_SETTINGS:
                out.append(f"tpe has no setting {s['name']!r}")
            elif s["name"] == "random_state" and not int(s["value"]) >= 0:
                out.append("tpe random_state must be >= 0")
    names = set()
    for i, p in enumerate(spec.get("parameters", [])):
        names.add(p["name"])
        fs, kind = p.get("feasibleSpace", {}), p.get("parameterType")
        if kind not in ("int", "double", "categorical", "discrete"):
            out.append(f"parameters[{i}].parameterType {kind!r} unsupported")
        if fs.get("distribution", "uniform") not in DISTRIBUTIONS:
            out.append(f"parameters[{i}].feasibleSpace.distribution {fs['distribution']!r} unsupported")
        if kind in ("int", "double"):
            if fs.get("list") or not fs.get("min") or not fs.get("max"):
                out.append(f"parameters[{i}]: {kind} needs min and max, no list")
            else:
                conv = int if kind == "int" else float
                try:
                    if not conv(fs["min"]) < conv(fs["max"]):
                        out.append(f"parameters[{i}]: min must be less than max")
                except ValueError:
                    out.append(f"parameters[{i}]: min/max {fs['min']!r}/{fs['max']!r} are not {kind} numbers")
        elif kind in ("categorical", "discrete") and (set(fs) - {"list"} or not fs.get("list")):
            out.append(f"parameters[{i}]: {kind} takes a non-empty list only")
    if not names:
        out.append("spec.parameters must be given")
    out += _template(spec.get("trialTemplate") or {}, names)
    mc = spec.get("metricsCollectorSpec", {})
    kind = mc.get("collector", {}).get("kind", "StdOut")
    if kind not in COLLECTORS:
        out.append(f"metrics collector {kind!r} unknown")
    for fmt in mc.get("source", {}).get("filter", {}).get("metricsFormat", []):
        try:
            if re.compile(fmt).groups < 2:
                out.append(f"metricsFormat {fmt!r} needs two groups (name, value)")
        except re.error as exc:
            out.append(f"metricsFormat {fmt!r}: {exc}")
    return out


def _template(t: dict[str, Any], parameters: set[str]) -> list[str]:
    out = []
    for key in ("primaryContainerName", "successCondition", "failureCondition", "trialParameters"):
        if not t.get(key):
            out.append(f"trialTemplate.{key} must be given")
    if ("trialSpec" in t) == ("configMap" in t):
        out.append("trialTemplate needs exactly one of trialSpec and configMap")
    text = json.dumps(t.get("trialSpec", {}))
    seen_names, seen_refs = set(), set()
    for i, tp in enumerate(t.get("trialParameters", [])):
        n, ref = tp.get("name", ""), tp.get("reference", "")
        if not n or not ref or "{" in n or "}" in n:
            out.append(f"trialParameters[{i}] needs a name (no braces) and a reference")
            continue
        if n in seen_names or ref in seen_refs:
            out.append(f"trialParameters[{i}]: name or reference repeated")
        seen_names.add(n)
        seen_refs.add(ref)
        meta = re.fullmatch(r"\$\{trialSpec\.(\w+)\}", ref)
        if not (meta and meta.group(1) in META_KEYS) and ref not in parameters:
            out.append(f"trialParameters[{i}].reference {ref!r} is no parameter")
        placeholder = f"${{trialParameters.{n}}}"
        if placeholder not in text:
            out.append(f"trialParameters[{i}] {n!r} is not used in the trialSpec")
        text = text.replace(placeholder, "test-value")
    left = re.findall(r"\$\{trialParameters\..+?\}", text)
    if left:
        out.append(f"trialSpec uses undeclared trial parameters {left}")
    job = t.get("trialSpec", {})
    if job.get("metadata", {}).get("name") or job.get("metadata", {}).get("namespace"):
        out.append("trialSpec must not set metadata.name or metadata.namespace")
    if not job.get("apiVersion") or not job.get("kind"):
        out.append("trialSpec needs apiVersion and kind")
    if (job.get("apiVersion"), job.get("kind")) == ("batch/v1", "Job"):
        out += kube(job, "V1Job", "trialSpec")
        containers = job.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
        if t.get("primaryContainerName") not in {c.get("name") for c in containers}:
            out.append("primaryContainerName names no container of the trial's pod")
    return out


def problems(exp: dict[str, Any]) -> list[str]:
    """Everything that keeps a cluster from accepting ``exp`` (empty: nothing found)."""
    if (exp.get("apiVersion"), exp.get("kind")) != ("kubeflow.org/v1beta1", "Experiment"):
        return ["not a kubeflow.org/v1beta1 Experiment"]
    return structure(exp, EXPERIMENT) + webhook(exp)
