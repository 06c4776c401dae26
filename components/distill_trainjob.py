"""Component ``distill`` for several nodes: launches ``ikd distill`` as a Kubeflow Trainer TrainJob and waits.

Used by the pipeline instead of ``components/distill.py`` when ``kubeflow.distill_nodes`` > 1; its task is still
named ``distill`` and has the same inputs and outputs. The launcher pod needs the RWX volume
``kubeflow.workspace_claim`` at /workspace (the pipeline mounts it) and a service account allowed to create
TrainJobs (``manifests/base/rbac.yaml``).
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from ikd.integrations.kubeflow import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def distill(
    config: str,
    data: Input[Dataset],
    teacher: Input[Model],
    run_id: str,
    image: str,
    student: Output[Model],
    metrics: Output[Metrics],
):
    """``ikd.steps.distill`` on ``kubeflow.distill_nodes`` nodes (torchrun in a TrainJob of image ``image``)."""
    from ikd.integrations.kubeflow import run_trainjob_component

    run_trainjob_component(config, data=data, teacher=teacher, run_id=run_id, image=image, out=student, metrics=metrics)
