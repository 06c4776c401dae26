"""Roll a promoted export out to the server (Kubernetes API), wait for it, and roll back when it is not ready.

- ``inferenceservice`` (KServe ``serving.kserve.io/v1beta1``): the predictor's ``model.storageUri`` when it has a
  ``model`` (manifests/kserve/triton), else the ``STORAGE_URI`` variable of its first container (the custom
  predictor of manifests/kserve/custom, which KServe's storage initializer reads); ready when ``status``
  has caught up with the new ``metadata.generation`` (``observedGeneration``), condition ``Ready`` is True and, under
  Knative, the predictor's newest revision is its ready one.
- ``deployment`` (manifests/serving): the pod template's annotations ``ikd-project.github.io/model-uri`` and
  ``model-version`` (a new template, so a new ReplicaSet: the servers restart and read the model the loader put on
  the claim); ready when ``observedGeneration`` has caught up and every replica is updated and available.

Rollback re-applies what the patch replaced (the old URI or container list, the old annotations), so the previous
revision comes back; the result says ``rolled_back`` and the command exits non-zero.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from pathlib import Path
from typing import Any

from ikd.errors import IkdError
from ikd.opsconfig import PromoteConfig

log = logging.getLogger("ikd")

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
URI_ANNOTATION = "ikd-project.github.io/model-uri"
VERSION_ANNOTATION = "ikd-project.github.io/model-version"
SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class RolloutError(IkdError):
    """The target could not be read or patched, or the new revision did not become ready (and was rolled back)."""


def _plain(obj: Any) -> dict[str, Any]:
    """A Kubernetes client model as the API's JSON dict (a dict stays as it is)."""
    if isinstance(obj, dict):
        return obj
    from kubernetes.client import ApiClient

    return ApiClient().sanitize_for_serialization(obj)


def namespace(cfg: PromoteConfig) -> str:
    if cfg.namespace:
        return cfg.namespace
    return SA_NAMESPACE.read_text().strip() if SA_NAMESPACE.is_file() else "default"


def apis(kind: str):
    """The in-cluster (else kubeconfig) client for ``kind``."""
    try:
        from kubernetes import client, config
    except ImportError:
        raise RolloutError("promote.target needs the kubernetes package (it comes with the kfp extra)") from None

    try:
        config.load_incluster_config()
    except config.ConfigException:  # KUBECONFIG read now: the client reads it once, when it is imported
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
    return client.CustomObjectsApi() if kind == "inferenceservice" else client.AppsV1Api()


# ---- InferenceService -----------------------------------------------------------------------------------------
def isvc_uri(obj: dict[str, Any]) -> str | None:
    """The storage URI an InferenceService serves (``model.storageUri`` or the first container's STORAGE_URI)."""
    pred = obj.get("spec", {}).get("predictor", {})
    if "model" in pred:
        return pred["model"].get("storageUri")
    for c in pred.get("containers", [])[:1]:
        for e in c.get("env", []):
            if e.get("name") == "STORAGE_URI":
                return e.get("value")
    return None


def isvc_patch(obj: dict[str, Any], uri: str, version: str | None) -> dict[str, Any]:
    """The merge patch that points ``obj`` at ``uri`` (and records ``version``); with the old values, it undoes."""
    pred = obj.get("spec", {}).get("predictor", {})
    if "model" in pred:
        spec: dict[str, Any] = {"model": {"storageUri": uri}}
    elif pred.get("containers"):
        containers = copy.deepcopy(pred["containers"])
        env = [e for e in containers[0].get("env", []) if e.get("name") != "STORAGE_URI"]
        containers[0]["env"] = [*env, {"name": "STORAGE_URI", "value": uri}]
        spec = {"containers": containers}
    else:
        raise RolloutError(
            f"InferenceService {obj.get('metadata', {}).get('name')}: its predictor has neither a model nor containers"
        )
    return {"metadata": {"annotations": {VERSION_ANNOTATION: version}}, "spec": {"predictor": spec}}


def isvc_ready(obj: dict[str, Any], generation: int) -> bool:
    status = obj.get("status") or {}
    if int(status.get("observedGeneration") or 0) < generation:
        return False
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    pred = (status.get("components") or {}).get("predictor") or {}
    created = pred.get("latestCreatedRevision")
    return ready and (created is None or pred.get("latestReadyRevision") == created)


# ---- Deployment -----------------------------------------------------------------------------------------------
def deployment_patch(uri: str | None, version: str | None) -> dict[str, Any]:
    return {"spec": {"template": {"metadata": {"annotations": {URI_ANNOTATION: uri, VERSION_ANNOTATION: version}}}}}


def deployment_ready(obj: dict[str, Any], generation: int) -> bool:
    status, want = obj.get("status") or {}, int(obj.get("spec", {}).get("replicas") or 1)
    return (
        int(status.get("observedGeneration") or 0) >= generation
        and int(status.get("updatedReplicas") or 0) == want
        and int(status.get("availableReplicas") or 0) == want
        and int(status.get("replicas") or 0) == want  # no pod of the old template left
    )


# ---- both -----------------------------------------------------------------------------------------------------
class Target:
    """The InferenceService or Deployment ``cfg`` names, through ``api`` (a CustomObjectsApi / AppsV1Api or a
    stand-in with the same methods)."""

    def __init__(self, cfg: PromoteConfig, api=None):
        self.cfg, self.kind, self.ns, self.name = cfg, cfg.target, namespace(cfg), cfg.name
        self.api = api if api is not None else apis(cfg.target)
        self.what = f"{'InferenceService' if self.kind == 'inferenceservice' else 'Deployment'} {self.ns}/{self.name}"

    def get(self) -> dict[str, Any]:
        try:
            if self.kind == "inferenceservice":
                return _plain(self.api.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, self.name))
            return _plain(self.api.read_namespaced_deployment(self.name, self.ns))
        except Exception as exc:  # ApiException (status and reason in its text), connection errors
            raise RolloutError(f"{self.what}: cannot read it ({' '.join(str(exc).split())[:300]})") from None

    def patch(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            if self.kind == "inferenceservice":
                out = self.api.patch_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, self.name, body)
            else:
                out = self.api.patch_namespaced_deployment(self.name, self.ns, body)
        except Exception as exc:
            raise RolloutError(f"{self.what}: patch refused ({' '.join(str(exc).split())[:300]})") from None
        return _plain(out)

    def served_uri(self) -> str | None:
        obj = self.get()
        if self.kind == "inferenceservice":
            return isvc_uri(obj)
        return ((obj.get("spec", {}).get("template", {}).get("metadata") or {}).get("annotations") or {}).get(
            URI_ANNOTATION
        )

    def wait(self, generation: int) -> bool:
        """Poll until ready (True) or ``cfg.timeout_s`` has passed (False)."""
        ready = isvc_ready if self.kind == "inferenceservice" else deployment_ready
        deadline = time.monotonic() + self.cfg.timeout_s
        while True:
            if ready(self.get(), generation):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(self.cfg.poll_s)

    def rollout(self, uri: str, version: str) -> dict[str, Any]:
        """Patch to ``uri``, wait; on timeout re-apply the previous values and wait for those. Returns what
        happened (``status``: ready | rolled_back; ``previous_uri``; the patches' generations)."""
        before = self.get()
        if self.kind == "inferenceservice":
            forward = isvc_patch(before, uri, version)
            old_version = (before.get("metadata", {}).get("annotations") or {}).get(VERSION_ANNOTATION)
            undo = isvc_patch(before, isvc_uri(before) or "", old_version)
            if "model" not in before["spec"]["predictor"]:  # the containers as they were, not re-derived
                undo["spec"]["predictor"] = {"containers": before["spec"]["predictor"]["containers"]}
            previous = isvc_uri(before)
        else:
            notes = (before.get("spec", {}).get("template", {}).get("metadata") or {}).get("annotations") or {}
            forward = deployment_patch(uri, version)
            undo = deployment_patch(notes.get(URI_ANNOTATION), notes.get(VERSION_ANNOTATION))
            previous = notes.get(URI_ANNOTATION)
        generation = int(self.patch(forward).get("metadata", {}).get("generation") or 0)
        log.info(
            "promote: %s -> %s (generation %d); waiting up to %.0f s", self.what, uri, generation, self.cfg.timeout_s
        )
        result: dict[str, Any] = {"target": self.what, "uri": uri, "previous_uri": previous, "generation": generation}
        if self.wait(generation):
            return {**result, "status": "ready"}
        log.warning("promote: %s not ready after %.0f s: rolling back", self.what, self.cfg.timeout_s)
        back = int(self.patch(undo).get("metadata", {}).get("generation") or 0)
        restored = self.wait(back)
        return {**result, "status": "rolled_back", "rollback_generation": back, "rollback_ready": restored}
