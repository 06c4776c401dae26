"""Component ``promote`` (after export): the new export against the served model on held-out rows; registered and
rolled out when it wins (config section ``promote``, docs/promote.md)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from ikd.integrations.kubeflow import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def promote(
    config: str,
    data: Input[Dataset],
    onnx_model: Input[Model],
    current_model: str,
    decision: Output[Artifact],
    metrics: Output[Metrics],
    report: Output[Markdown],
):
    """``ikd.promote.command.run``: ``current_model`` names the served model (an export folder the pod can read,
    registry:<name>, inferenceservice:<ns>/<name>; empty: the config's ``promote.current``); ``decision`` receives
    decision.json and decision.md, ``report`` the Markdown."""
    from ikd.promote.command import run_component

    run_component(
        config,
        data=data,
        onnx_model=onnx_model,
        current_model=current_model,
        out=decision,
        metrics=metrics,
        report=report,
    )
