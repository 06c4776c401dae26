"""Multi-node distillation from a pipeline: a launcher that runs ``ikd distill`` as a Kubeflow Trainer TrainJob.

The launcher task (component ``distill`` when ``kubeflow.distill_nodes`` > 1) mounts a ReadWriteMany volume at
``/workspace``, copies its input artifacts (prepared data, adapted teacher) and the config there, creates a
``TrainJob`` (API ``trainer.kubeflow.org/v1alpha1``, Trainer >= 2.2) on the ``torch-distributed`` runtime whose
nodes mount the same volume and run ``torchrun --no-python ikd distill ...``, waits for it, and copies the student
back into its output artifact. The TrainJob body is the one in ``manifests/trainjob`` (a test keeps them equal).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from ikd.config import Config, Placement
from ikd.errors import IkdError

log = logging.getLogger("ikd")

GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
#: ``spec.runtimePatches[].manager``: Trainer's webhook wants a domain-prefixed path
#: (``validation.IsDomainPrefixedPath``)
MANAGER = "ikd-project.github.io/ikd"
#: The node container's environment. It goes in ``spec.trainer.env``: Trainer's webhook refuses ``env`` on the
#: ``node`` container of a runtime patch.
NODE_ENV = [{"name": "HF_HUB_OFFLINE", "value": "1"}]
WORKSPACE = Path("/workspace")
SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class TrainJobError(IkdError):
    """The TrainJob failed, timed out, or could not be created (the message names it and says why)."""


def command(run_dir: str) -> list[str]:
    """The node command: torchrun (configured by Trainer's PET_* variables) around ``ikd distill``."""
    return [
        "torchrun",
        "--no-python",
        "ikd",
        "distill",
        "--params",
        f"{run_dir}/params.yaml",
        "--data",
        f"{run_dir}/prepare",
        "--teacher",
        f"{run_dir}/adapt",
        "--out",
        f"{run_dir}/distill",
    ]


def resources(p: Placement) -> dict[str, dict[str, str]]:
    """Kubernetes requests and limits of one pod placed by ``p`` (GPUs as limits)."""
    requests = {k: v for k, v in (("cpu", p.cpu_request), ("memory", p.memory_request)) if v}
    limits = {k: v for k, v in (("cpu", p.cpu_limit), ("memory", p.memory_limit)) if v}
    if p.accelerator_count:
        limits[p.accelerator_type] = str(p.accelerator_count)
    return {"requests": requests, **({"limits": limits} if limits else {})}


def pod_spec(p: Placement, claim: str | None, container: str) -> dict[str, Any]:
    """A pod running one container named ``container`` under Pod Security "restricted" with a read-only root:
    ``claim`` (a PVC) at /workspace, /dev/shm when ``p`` sizes one, /home/ikd and /tmp as emptyDirs; ``p``'s
    tolerations and node selector. The caller adds image, command and resources where its kind wants them."""
    volumes: list[dict[str, Any]] = [{"name": "workspace", "persistentVolumeClaim": {"claimName": claim}}]
    mounts: list[dict[str, Any]] = [{"name": "workspace", "mountPath": str(WORKSPACE)}]
    if p.shm_size:
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": p.shm_size}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    for vol, path in (("home", "/home/ikd"), ("tmp", "/tmp")):  # the root filesystem is read-only
        volumes.append({"name": vol, "emptyDir": {"sizeLimit": "4Gi"}})
        mounts.append({"name": vol, "mountPath": path})
    pod: dict[str, Any] = {  # Pod Security "restricted", like manifests/trainjob
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumes": volumes,
        "containers": [
            {
                "name": container,
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                },
                "env": [{"name": "HF_HUB_OFFLINE", "value": "1"}],
                "volumeMounts": mounts,
            }
        ],
    }
    if p.tolerations:
        pod["tolerations"] = [{k: v for k, v in t.model_dump().items() if v is not None} for t in p.tolerations]
    if p.node_selector:
        pod["nodeSelector"] = dict(p.node_selector)
    return pod


def body(cfg: Config, name: str, image: str, run_dir: str) -> dict[str, Any]:
    """The TrainJob for ``cfg`` (nodes, per-node placement from ``kubeflow.distill``, the shared volume).

    Kubeflow Trainer >= 2.2 (``spec.runtimePatches``); the patch follows its webhook's rules (a domain-prefixed
    manager, no ``env`` on the ``node`` container: the environment is ``spec.trainer.env``)."""
    kc = cfg.kubeflow
    pod = pod_spec(kc.distill, kc.workspace_claim, "node")
    env = pod["containers"][0].pop("env", [])
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainJob",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "ikd"}},
        "spec": {
            "runtimeRef": {"name": kc.trainer_runtime},
            "trainer": {
                "image": image,
                "command": command(run_dir),
                "env": env,
                "numNodes": kc.distill_nodes,
                "resourcesPerNode": resources(kc.distill),
            },
            "runtimePatches": [
                {
                    "manager": MANAGER,
                    "trainingRuntimeSpec": {
                        "template": {
                            "spec": {
                                "replicatedJobs": [{"name": "node", "template": {"spec": {"template": {"spec": pod}}}}]
                            }
                        }
                    },
                }
            ],
        },
    }


def wait(api, namespace: str, name: str, timeout_s: float, poll_s: float = 15.0) -> dict[str, Any]:
    """Poll the TrainJob until its ``Complete`` or ``Failed`` condition is True. Returns the final object.
    ``api``: a ``kubernetes.client.CustomObjectsApi`` (or anything with ``get_namespaced_custom_object``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        job = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        conditions = {c.get("type"): c for c in (job.get("status") or {}).get("conditions") or []}
        if conditions.get("Failed", {}).get("status") == "True":
            c = conditions["Failed"]
            raise TrainJobError(
                f"TrainJob {namespace}/{name} failed: {c.get('reason', '')} {c.get('message', '')}".rstrip()
            )
        if conditions.get("Complete", {}).get("status") == "True":
            return job
        if time.monotonic() > deadline:
            raise TrainJobError(f"TrainJob {namespace}/{name} did not finish within {timeout_s:.0f} s")
        time.sleep(poll_s)


def launch(
    cfg: Config,
    image: str,
    data: Path,
    teacher: Path,
    out: Path,
    run_id: str,
    api=None,
    namespace: str | None = None,
    workspace: Path = WORKSPACE,
    poll_s: float = 15.0,
) -> dict[str, Any]:
    """Stage inputs on the shared volume, run the TrainJob, copy the student to ``out``. Returns the distill
    step's metrics. ``api``/``namespace`` default to the in-cluster Kubernetes client and the pod's namespace."""
    from ikd.core.metrics import read_json

    run_dir = workspace / run_id
    for src, dst in ((data, run_dir / "prepare"), (teacher, run_dir / "adapt")):
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(src, dst)
    (run_dir / "params.yaml").write_text(cfg.to_yaml())
    if api is None:
        from kubernetes import client, config

        config.load_incluster_config()
        api = client.CustomObjectsApi()
    if namespace is None:
        namespace = SA_NAMESPACE.read_text().strip() if SA_NAMESPACE.is_file() else "default"
    name = f"ikd-distill-{run_id}"[:63].rstrip("-").lower()
    spec = body(cfg, name, image, f"{WORKSPACE}/{run_id}")
    try:
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, spec)
    except Exception as exc:  # the kubernetes client raises ApiException; keep its status and reason
        raise TrainJobError(f"could not create TrainJob {namespace}/{name}: {exc}") from None
    log.info("distill: TrainJob %s/%s on %d nodes", namespace, name, cfg.kubeflow.distill_nodes)
    wait(api, namespace, name, cfg.kubeflow.trainjob_timeout_s, poll_s)
    result = run_dir / "distill"
    if not (result / "step.json").is_file():
        raise TrainJobError(f"TrainJob {namespace}/{name} completed but {result} holds no finished distill output")
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(result, out)
    return read_json(out / "metrics.json")
