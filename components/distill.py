"""Component ``distill``: train the student with the configured strategy."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from ikd.integrations.kubeflow import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def distill(
    config: str,
    data: Input[Dataset],
    teacher: Input[Model],
    scores: Input[Dataset],
    student: Output[Model],
    metrics: Output[Metrics],
):
    """``ikd.steps.distill``: writes the student, and the learning teacher / added modules where the strategy
    has them. ``teacher`` is ignored by strategies that use none (``finetune``); ``scores`` (the ``score`` task's
    artifact) holds the frozen teacher's outputs."""
    from ikd.integrations.kubeflow import run_component

    run_component("distill", config, out=student, metrics=metrics, data=data, teacher=teacher, scores=scores)
