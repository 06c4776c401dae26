"""Check Kubernetes objects the way an API server would, before any cluster sees them.

- Custom resources (TrainJob, ClusterTrainingRuntime, InferenceService, PodMonitor, PrometheusRule) against the
  upstream CRDs in ``../shared/k8s-crds`` (provenance in its README): the served version's ``openAPIV3Schema``
  turned into a JSON Schema that rejects unknown fields, as ``kubectl apply`` does by default (field validation
  "Strict" since Kubernetes 1.27). Kubernetes' structural-schema extensions are honoured:
  ``x-kubernetes-preserve-unknown-fields`` keeps a subtree open, ``x-kubernetes-int-or-string`` takes either,
  ``nullable`` admits null. ``metadata`` is checked as an ObjectMeta (the CRD schemas leave it open).
- Built-in kinds with the ``kubernetes-validate`` package (its strict schemas, per Kubernetes minor version).

CEL rules (``x-kubernetes-validations``) and admission webhooks are not schema: tests/trainer_webhook.py holds the
Trainer webhook's rules.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import yaml

CRDS = Path(__file__).resolve().parents[2] / "shared" / "k8s-crds"
#: Kubernetes minor versions built-in kinds are checked against: the oldest the docs support and the newest.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")


class SchemaError(AssertionError):
    """An object a cluster would refuse; the message lists every offending field path."""


def _strict(node: Any) -> Any:
    """A copy of an OpenAPI v3 structural schema as a JSON Schema that refuses unknown fields."""
    if isinstance(node, list):
        return [_strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict(v) for k, v in node.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    closed = "properties" in node and "additionalProperties" not in node
    if node.get("type") == "object" and closed and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    out.pop("format", None)  # int32/int64/byte/date-time: the API server's own parsers, not JSON Schema formats
    return out


#: ObjectMeta fields a manifest or generated object may set (the rest are the server's).
_META = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", "maxLength": 253},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        "generateName": {"type": "string"},
    },
}


@functools.cache
def _crd_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> strict JSON Schema, for every served version of every CRD in ``CRDS``."""
    if not CRDS.is_dir():
        raise FileNotFoundError(f"{CRDS} is missing: the upstream CRDs live in ../shared/k8s-crds")
    schemas = {}
    for f in sorted(CRDS.glob("*.yaml")):
        doc = yaml.load(f.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # libyaml: 10x faster
        if doc.get("kind") != "CustomResourceDefinition":
            continue
        group, kind = doc["spec"]["group"], doc["spec"]["names"]["kind"]
        for v in doc["spec"]["versions"]:
            if not v.get("served", True):
                continue
            schema = _strict(copy.deepcopy(v["schema"]["openAPIV3Schema"]))
            schema.setdefault("properties", {})["metadata"] = _META
            schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
            schemas[(f"{group}/{v['name']}", kind)] = schema
    return schemas


def custom_kinds() -> set[tuple[str, str]]:
    return set(_crd_schemas())


def _errors(schema: dict, obj: dict) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    out = []
    for e in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path)):
        path = ".".join(str(p) for p in e.absolute_path) or "<root>"
        out.append(f"{path}: {e.message[:300]}")
    return out


def validate_custom(obj: dict) -> None:
    """Raise SchemaError unless ``obj`` passes its CRD's schema strictly."""
    key = (obj.get("apiVersion"), obj.get("kind"))
    schema = _crd_schemas().get(key)  # type: ignore[arg-type]
    if schema is None:
        raise SchemaError(f"no CRD in {CRDS} serves {key[0]} {key[1]}")
    errors = _errors(schema, obj)
    if errors:
        name = obj.get("metadata", {}).get("name")
        raise SchemaError(f"{key[1]} {name!r} fails its CRD schema:\n  " + "\n  ".join(errors))


def validate_builtin(obj: dict, version: str) -> None:
    """Raise SchemaError unless ``obj`` passes Kubernetes ``version``'s strict schema (kubernetes-validate)."""
    import kubernetes_validate

    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path) or "<root>"
        raise SchemaError(
            f"{obj.get('kind')} {obj.get('metadata', {}).get('name')!r} fails Kubernetes {version}: "
            f"{path}: {exc.message[:300]}"
        ) from None
    except kubernetes_validate.SchemaNotFoundError as exc:
        raise SchemaError(
            f"Kubernetes {version} has no kind {obj.get('apiVersion')} {obj.get('kind')}: {exc}"
        ) from None


def validate(obj: dict, versions: tuple[str, ...] = KUBERNETES_VERSIONS) -> None:
    """A custom resource against its CRD, a built-in kind against every Kubernetes version in ``versions``."""
    if (obj.get("apiVersion"), obj.get("kind")) in custom_kinds():
        validate_custom(obj)
    else:
        for v in versions:
            validate_builtin(obj, v)
