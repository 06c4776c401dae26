"""The promoted export in Kubeflow Model Registry: a RegisteredModel (found by name or created), a ModelVersion named
after the export (the decision's figures and the export's lineage as custom properties) and its ModelArtifact (the
storage URI, format onnx); and, for ``--current registry:<name>``, the newest version's artifact URI.

A small REST client of the registry's API ``v1alpha3`` (``../shared/model-registry/model-registry.openapi.yaml``),
standard library only. Not the ``model-registry`` package: its current release (0.3.18) installs cleanly but
speaks ``/api/model_registry/v1``, which a server of the documented ``v1alpha3`` API answers with 404, and it
would add aiohttp and a patched event loop to the serving and training images. The calls are those that client
makes for ``register_model`` (find or create the model, refuse an existing version, create version and artifact).
A bearer token, when the registry wants one, comes from the environment variable ``IKD_REGISTRY_TOKEN``.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from ikd.errors import IkdError
from ikd.opsconfig import PromoteConfig

log = logging.getLogger("ikd")

PREFIX = "/api/model_registry/v1alpha3"
TOKEN_ENV = "IKD_REGISTRY_TOKEN"


class RegistryError(IkdError):
    """The registry could not be reached, or refused a call (the message names the address and the call)."""


class Registry:
    """The registry at ``url`` (``http(s)://host:port``)."""

    def __init__(self, url: str, timeout_s: float = 30.0):
        self.url, self.timeout_s = url.rstrip("/"), timeout_s

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, **query: str) -> dict[str, Any] | None:
        """One request; the answer's JSON, or None for 404 on a find (``GET`` of a single entity by parameters)."""
        qs = urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        url = f"{self.url}{PREFIX}{path}" + (f"?{qs}" if qs else "")
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if os.environ.get(TOKEN_ENV):
            headers["Authorization"] = f"Bearer {os.environ[TOKEN_ENV]}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                return json.loads(r.read() or b"null")
        except urllib.error.HTTPError as exc:
            if exc.code == 404 and method == "GET" and "/" not in path.strip("/"):
                return None
            detail = exc.read().decode(errors="replace")[:300]
            raise RegistryError(f"model registry {self.url}: {method} {path} answered {exc.code}: {detail}") from None
        except (OSError, ValueError) as exc:
            raise RegistryError(f"model registry {self.url}: {method} {path} failed ({exc})") from None


def value(v: Any) -> dict[str, Any]:
    """A custom property value as the registry's MetadataValue."""
    if isinstance(v, bool):
        return {"metadataType": "MetadataBoolValue", "bool_value": v}
    if isinstance(v, int) and abs(v) < 10**9:
        return {"metadataType": "MetadataIntValue", "int_value": str(v)}
    if isinstance(v, int | float):
        return {"metadataType": "MetadataDoubleValue", "double_value": float(v)}
    return {"metadataType": "MetadataStringValue", "string_value": str(v)}


def properties(figures: dict[str, Any], lineage: dict[str, Any], extra: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Custom properties of the ModelVersion: both sides' metrics and p50 latency, the comparison's figures, and the
    export's lineage as one JSON string."""
    props: dict[str, Any] = dict(extra)
    for side in ("new", "current"):
        part = figures.get(side) or {}
        for k, v in (part.get("metrics") or {}).items():
            props[f"{side}.{k}"] = float(v)
        if "p50_ms" in part:
            props[f"{side}.p50_ms"] = float(part["p50_ms"])
    for k in ("rows", "split", "metric", "gain", "agreement", "latency_ratio"):
        if figures.get(k) is not None:
            props[k] = figures[k]
    props["lineage"] = json.dumps(lineage, sort_keys=True)
    return {k: value(v) for k, v in props.items()}


def register(
    cfg: PromoteConfig, version: str, uri: str, opset: int, props: dict[str, Any], api: Registry | None = None
) -> dict[str, str]:
    """Register ``version`` of ``cfg.registry_model`` at ``uri``. Returns the ids the registry gave."""
    api = api or Registry(str(cfg.registry_url))
    name = cfg.registry_model
    rm = api.call("GET", "/registered_model", name=name) or api.call(
        "POST", "/registered_models", {"name": name, "owner": cfg.registry_author}
    )
    assert rm is not None
    if api.call("GET", "/model_version", name=version, parentResourceId=rm["id"]) is not None:
        raise RegistryError(f"model registry {api.url}: {name} already has a version {version}")
    mv = api.call(
        "POST",
        "/model_versions",
        {
            "name": version,
            "registeredModelId": rm["id"],
            "author": cfg.registry_author,
            "description": "promoted by ikd promote",
            "customProperties": props,
        },
    )
    assert mv is not None
    artifact = {
        "artifactType": "model-artifact",
        "name": f"{name}-{version}",
        "uri": uri,
        "modelFormatName": "onnx",
        "modelFormatVersion": str(opset),
        "modelSourceKind": "ikd",
        "modelSourceClass": "promote",
        "modelSourceName": f"{name}:{version}",
    }
    ma = api.call("POST", f"/model_versions/{mv['id']}/artifacts", artifact)
    assert ma is not None
    log.info("promote: registered %s version %s in %s", name, version, api.url)
    return {"registered_model_id": rm["id"], "model_version_id": mv["id"], "model_artifact_id": ma["id"]}


def served_uri(cfg: PromoteConfig, name: str, api: Registry | None = None) -> str | None:
    """The URI of the newest version of RegisteredModel ``name`` (its model artifact's), or None when the registry
    has no such model or version (nothing served yet)."""
    api = api or Registry(str(cfg.registry_url))
    rm = api.call("GET", "/registered_model", name=name)
    if rm is None:
        return None
    versions = api.call("GET", f"/registered_models/{rm['id']}/versions", orderBy="ID", sortOrder="DESC", pageSize="1")
    items = (versions or {}).get("items") or []
    if not items:
        return None
    arts = api.call("GET", f"/model_versions/{items[0]['id']}/artifacts", artifactType="model-artifact")
    found = [a.get("uri") for a in (arts or {}).get("items") or [] if a.get("uri")]
    return found[0] if found else None
