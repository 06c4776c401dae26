"""Component ``evaluate``: teacher and student on dev, speed and size, the Markdown report and its HTML page."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

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
    report_html: Output[HTML],
):
    """``ikd.steps.evaluate``: ``confusion`` is the student's confusion matrix on dev; ``report_html`` the report
    with its pictures inlined (the Markdown's image links point into the ``evaluation`` artifact)."""
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
        report_html=report_html,
    )
