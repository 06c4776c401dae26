"""The rules Kubeflow Trainer's validating webhook applies to a TrainJob on create, written out for tests.

A CRD schema does not hold them. Source: github.com/kubeflow/trainer at v2.3.0 (commit 658725bd, the tag the
CRDs in ../shared/k8s-crds come from); the same rules are in v2.2.0 and v2.2.1, the first releases with
``spec.runtimePatches``:

- pkg/webhooks/trainjob_webhook.go: ``ValidateCreate`` looks up the runtime ``spec.runtimeRef`` names
  ("unsupported runtime") and runs each plugin's ``Validate``;
- pkg/runtime/framework/plugins/jobset/jobset.go, ``(*JobSet).Validate``: every ``runtimePatches[].manager`` is a
  domain-prefixed path (k8s.io/apimachinery ``validation.IsDomainPrefixedPath``); a patched replicated job must
  exist in the runtime's template, and so must every container and init container the patch names; containers
  named ``dataset-initializer``, ``model-initializer`` or ``node`` must not carry ``env`` in a patch (the
  trainer's env goes in ``spec.trainer.env``); ``spec.initializer.dataset``/``model`` need those jobs;
- pkg/runtime/framework/plugins/torch/torch.go, ``(*Torch).Validate``: ``spec.trainer.env`` must not set the
  torchrun variables Trainer injects (pkg/constants: PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK,
  PET_MASTER_ADDR, PET_MASTER_PORT).

The messages are the webhook's own, so a failing test reads like the error ``kubectl apply`` would print.
"""

from __future__ import annotations

import re
from typing import Any

RESERVED_TORCH_ENV = {"PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT"}
NO_ENV_IN_PATCH = ("dataset-initializer", "model-initializer", "node")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_HTTP_PATH = re.compile(r"^[A-Za-z0-9/\-._~%!$&'()*+,;=:]+$")


def domain_prefixed_path_errors(field: str, value: str) -> list[str]:
    """apimachinery's IsDomainPrefixedPath: ``<DNS-1123 subdomain>/<HTTP path>``."""
    if not value:
        return [f"{field}: Required value"]
    host, sep, path = value.partition("/")
    if not sep or not host or not path:
        return [f'{field}: Invalid value: "{value}": must be a domain-prefixed path (such as "acme.io/foo")']
    errors = []
    if len(host) > 253 or not _DNS1123_SUBDOMAIN.match(host):
        errors.append(f'{field}: Invalid value: "{host}": a lowercase RFC 1123 subdomain must consist of ...')
    if not _HTTP_PATH.match(path):
        errors.append(f'{field}: Invalid value: "{path}": Invalid path')
    return errors


def _runtime_containers(runtime: dict[str, Any]) -> dict[str, set[str]]:
    """replicated job name -> names of its containers and init containers, from a (Cluster)TrainingRuntime."""
    out = {}
    for job in runtime["spec"]["template"]["spec"]["replicatedJobs"]:
        pod = job["template"]["spec"]["template"]["spec"]
        out[job["name"]] = {c["name"] for c in [*pod.get("initContainers", []), *pod.get("containers", [])]}
    return out


def validate_create(job: dict[str, Any], runtimes: dict[str, dict[str, Any]]) -> list[str]:
    """Every error the webhook would return for creating ``job``; ``runtimes``: name -> ClusterTrainingRuntime."""
    spec = job.get("spec", {})
    ref = spec.get("runtimeRef", {})
    runtime = runtimes.get(ref.get("name", ""))
    if runtime is None or ref.get("kind", "ClusterTrainingRuntime") != "ClusterTrainingRuntime":
        return [f"unsupported runtime: {ref.get('kind', 'ClusterTrainingRuntime')}/{ref.get('name')}"]
    errors = []
    jobs = _runtime_containers(runtime)
    for kind in ("dataset", "model"):
        if (spec.get("initializer") or {}).get(kind) and f"{kind}-initializer" not in jobs:
            errors.append(f"spec.runtimeRef: must have {kind}-initializer job when trainJob is configured with it")
    for patch in spec.get("runtimePatches") or []:
        errors += domain_prefixed_path_errors("spec.runtimePatches.manager", patch.get("manager", ""))
        template = ((patch.get("trainingRuntimeSpec") or {}).get("template") or {}).get("spec") or {}
        for rjob in template.get("replicatedJobs") or []:
            if rjob.get("name") not in jobs:
                errors.append("spec.runtimePatches: must not have replicated job that doesn't exist in the runtime")
                continue
            pod = (((rjob.get("template") or {}).get("spec") or {}).get("template") or {}).get("spec") or {}
            for c in pod.get("initContainers") or []:
                if c["name"] not in jobs[rjob["name"]]:
                    errors.append(f"spec.runtimePatches: must not have initContainer {c['name']!r} that doesn't exist")
            for c in pod.get("containers") or []:
                if c["name"] not in jobs[rjob["name"]]:
                    errors.append(f"spec.runtimePatches: must not have container {c['name']!r} that doesn't exist")
                elif c.get("env") and c["name"] in NO_ENV_IN_PATCH:
                    errors.append(
                        "spec.runtimePatches: must not have envs for the dataset-initializer, model-initializer, "
                        "node containers"
                    )
    torch = "torch" in (runtime["spec"].get("mlPolicy") or {})
    reserved = sorted({e["name"] for e in (spec.get("trainer") or {}).get("env") or []} & RESERVED_TORCH_ENV)
    if torch and reserved:
        errors.append(f"spec.trainer.env: must not have reserved envs, invalid envs configured: {reserved}")
    return errors
