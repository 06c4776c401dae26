"""Component ``evaluate``: teacher and student on dev, speed and size, the Markdown report."""

from kfp import dsl
from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

from ikd.integrations.kubeflow import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate(
    config: str,
    data: Input[Dataset],
    teacher: Input[Model],
    student: Input[Model],
    evaluation: Output[Artifact],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    report: Output[Markdown],
):
    """``ikd.steps.evaluate``: ``confusion`` is the student's confusion matrix on dev."""
    from ikd.integrations.kubeflow import run_component

    run_component(
        "evaluate",
        config,
        out=evaluation,
        metrics=metrics,
        data=data,
        teacher=teacher,
        student=student,
        confusion=confusion,
        report=report,
    )
