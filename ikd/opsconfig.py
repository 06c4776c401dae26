"""The sections that say where and how the pipeline runs, never what a step computes: Kubeflow placement and
naming (``kubeflow``), checkpoints (``checkpoint``), progress pushed to a Pushgateway (``monitor``) and the gate
that decides whether a new export replaces the served model (``promote``).

They are part of :class:`ikd.config.Config` (and importable from :mod:`ikd.config`); no step's key reads them.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ikd.section import Section


class Toleration(Section):
    key: str | None = None
    operator: Literal["Equal", "Exists"] = "Exists"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$"


class Placement(Section):
    """Where and with what one Kubeflow task runs (CPU/memory requests, GPUs, node pool, /dev/shm)."""

    cpu_request: str | None = Field("2", pattern=_QUANTITY, description="Kubernetes quantity, e.g. '4' or '500m'.")
    memory_request: str | None = Field("8Gi", pattern=_QUANTITY)
    cpu_limit: str | None = Field(None, pattern=_QUANTITY)
    memory_limit: str | None = Field(None, pattern=_QUANTITY)
    accelerator_type: str = Field("nvidia.com/gpu", min_length=1, description="Extended resource of the GPUs.")
    accelerator_count: int = Field(0, ge=0, description="GPUs per pod (0: none).")
    node_selector: dict[str, str] = Field(default_factory=dict, description="e.g. nvidia.com/gpu.product: ...")
    tolerations: list[Toleration] = Field(default_factory=list)
    shm_size: str | None = Field(None, pattern=_QUANTITY, description="Memory-backed /dev/shm of this size.")


class TrainPlacement(Placement):
    """Placement of the training steps (adapt, distill): one GPU by default. Its own defaults, so that
    ``--set kubeflow.adapt.accelerator_count=0`` changes that key only."""

    cpu_request: str | None = Field("4", pattern=_QUANTITY)
    memory_request: str | None = Field("16Gi", pattern=_QUANTITY)
    accelerator_count: int = Field(1, ge=0, description="GPUs per pod (0: none).")
    tolerations: list[Toleration] = Field(
        default_factory=lambda: [Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")],
        description="Default: tolerate the nvidia.com/gpu taint of GPU node pools.",
    )
    shm_size: str | None = Field(
        "8Gi",
        pattern=_QUANTITY,
        description="Memory-backed /dev/shm for NCCL and torch shared memory (the data loader has no workers).",
    )


class KubeflowConfig(Section):
    """How the Kubeflow pipeline places and names its tasks (no effect on what a step computes)."""

    image: str | None = Field(None, description="Task image (default: the project image of this ikd version).")
    pipeline_name: str = Field("ikd", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    default: Placement = Field(default_factory=Placement, description="prepare, evaluate, export.")
    adapt: TrainPlacement = Field(default_factory=TrainPlacement)
    distill: TrainPlacement = Field(default_factory=TrainPlacement)
    score: TrainPlacement = Field(
        default_factory=TrainPlacement, description="Each teacher scoring task (one per shard): a GPU by default."
    )
    score_shards: int = Field(
        1,
        ge=1,
        le=256,
        description=">1: the teacher scores the distillation rows as this many parallel tasks (a ParallelFor over "
        "contiguous row ranges, one pod each), merged into one artifact before distill.",
    )
    distill_nodes: int = Field(
        1,
        ge=1,
        description=">1: the distill task launches a Kubeflow Trainer TrainJob on this many nodes "
        "(placement: kubeflow.distill per node) and waits for it.",
    )
    workspace_claim: str | None = Field(
        None, description="ReadWriteMany PVC shared by the launcher and the TrainJob nodes (distill_nodes > 1)."
    )
    data_claim: str | None = Field(
        None,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="A PVC holding data sets: mounted at data_mount in the prepare task, so that the pipeline's "
        "source (--data) can be a folder on it, e.g. /data/sst2.",
    )
    data_mount: str = Field("/data", pattern=r"^/[^:]*$", description="Where data_claim is mounted.")
    dvc_secret: str | None = Field(
        None,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="Secret with the DVC remote's credentials, given to the tasks that talk to a remote: prepare "
        "(a DVC repository's data) and push. Its keys become environment variables as dvc_secret_env says.",
    )
    dvc_secret_env: dict[str, str] = Field(
        default_factory=lambda: {
            "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
        },
        description="Secret key -> environment variable (default: S3 and S3-compatible stores); {} for none.",
    )
    dvc_secret_mount: str | None = Field(
        None,
        pattern=r"^/[^:]*$",
        description="Also mount the Secret's keys as files here (e.g. a GCS service-account key that the DVC "
        "remote's credentialpath names).",
    )
    trainer_runtime: str = Field("torch-distributed", description="ClusterTrainingRuntime of the TrainJob.")
    trainjob_timeout_s: int = Field(24 * 3600, ge=60, description="Give up waiting for the TrainJob after this.")

    @model_validator(mode="after")
    def _multinode_needs_workspace(self) -> KubeflowConfig:
        if self.distill_nodes > 1 and not self.workspace_claim:
            raise ValueError("distill_nodes > 1 needs workspace_claim: a ReadWriteMany PVC the TrainJob nodes mount")
        env_names = list(self.dvc_secret_env.values())
        bad = [v for v in env_names if not _ENV_NAME.match(v)]
        if bad:
            raise ValueError(f"dvc_secret_env: {', '.join(bad)} is not an environment variable name")
        if len(set(env_names)) != len(env_names):
            raise ValueError("dvc_secret_env: two secret keys map to the same environment variable")
        if self.dvc_secret_mount and self.dvc_secret_mount.rstrip("/") in {"/workspace", self.data_mount.rstrip("/")}:
            raise ValueError(f"dvc_secret_mount {self.dvc_secret_mount} collides with another mount")
        return self


class CheckpointConfig(Section):
    """Checkpoints of adapt and distill, resumed by re-running the same command (not part of any step's key:
    a resumed run ends with the same weights as an uninterrupted one)."""

    every: int = Field(
        0,
        ge=0,
        description="Optimizer steps between checkpoints (0: none); when > 0 one is also written after the last step.",
    )
    keep: int = Field(2, ge=1, description="Newest checkpoints kept (older ones are removed after each save).")
    keep_after_success: bool = Field(False, description="Keep the checkpoints once the step's output is written.")


class MonitorConfig(Section):
    """Progress of adapt and distill pushed to a Prometheus Pushgateway (no effect on what a step computes)."""

    pushgateway: str | None = Field(
        None,
        description="Pushgateway URL, e.g. http://pushgateway.monitoring:9091 "
        "(--pushgateway wins); none: nothing is pushed.",
    )
    push_every_seconds: float = Field(10.0, gt=0.0, le=3600.0, description="Seconds between pushes.")
    timeout_seconds: float = Field(5.0, gt=0.0, le=120.0, description="HTTP timeout of one push.")

    @field_validator("pushgateway")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("must be a URL like http://host:9091, or null")
        return v


class PromoteConfig(Section):
    """The promotion gate (``ikd promote``, docs/promote.md): the new export against the served model on the same
    held-out rows, and what to do when the new one wins (register it, roll it out). Never part of a step's key."""

    current: str = Field(
        "",
        description="The model served now: an export folder, registry:<model name> (its newest version's model "
        "artifact), inferenceservice:<namespace>/<name> (its storage URI), or '' (nothing served: the first model "
        "promotes). A URI must be a local folder or file:// here. --current wins.",
    )
    metric: Literal["accuracy", "f1", "matthews"] | None = Field(
        None, description="The metric compared (default: the task's first metric)."
    )
    min_gain: float = Field(0.0, ge=-1.0, le=1.0, description="New metric minus current must be at least this.")
    min_agreement: float = Field(
        0.0, ge=0.0, le=1.0, description="Argmax agreement of new and current on the rows at least this (0: off)."
    )
    max_latency_ratio: float = Field(
        1.5, ge=0.0, description="New p50 latency at most this times the current's (0: off); same machine, same rows."
    )
    latency_budget_ms: float | None = Field(
        None, gt=0.0, description="New p50 latency of one batch (latency_batch rows) at most this many ms."
    )
    latency_batch: int = Field(32, ge=1, le=1024, description="Rows per timed batch.")
    latency_repeats: int = Field(7, ge=1, le=1000, description="Timed batches per model (p50 of these).")
    max_rows: int = Field(1024, ge=1, description="Held-out rows compared (calib, else dev), at most this many.")
    registry_url: str | None = Field(
        None,
        description="Kubeflow Model Registry REST address (API v1alpha3), e.g. "
        "http://model-registry-service.kubeflow:8080; none: nothing is registered.",
    )
    registry_model: str = Field("ikd-student", min_length=1, description="The RegisteredModel's name.")
    registry_author: str = Field("ikd", min_length=1, description="Author and owner recorded in the registry.")
    target: Literal["none", "inferenceservice", "deployment"] = Field(
        "none", description="What a promotion rolls out (Kubernetes API); none: decide and register only."
    )
    namespace: str | None = Field(None, description="Namespace of the target (default: the pod's own, else 'default').")
    name: str = Field(
        "student",
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="InferenceService or Deployment name (manifests/kserve: student; manifests/serving: ikd-serve).",
    )
    storage_uri: str = Field(
        "",
        description="Where the new export is stored, as the server reads it; {version} and {sha256} are filled "
        "in, e.g. s3://ml-artifacts/ikd/models/onnx/{version}. Needed for a registry or a rollout.",
    )
    timeout_s: float = Field(600.0, gt=0.0, description="Wait this long for the new revision to be ready.")
    poll_s: float = Field(5.0, ge=0.0, description="Seconds between readiness polls.")

    @model_validator(mode="after")
    def _needs_uri(self) -> PromoteConfig:
        if (self.target != "none" or self.registry_url) and not self.storage_uri:
            raise ValueError("storage_uri: a rollout or a registry entry needs the new model's storage URI")
        return self
