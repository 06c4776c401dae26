"""Component ``export``: the student to ONNX, checked against PyTorch on dev rows."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from ikd.integrations.kubeflow import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def export(
    config: str, data: Input[Dataset], student: Input[Model], onnx_model: Output[Model], metrics: Output[Metrics]
):
    """``ikd.steps.export``: writes model.onnx (+ int8 when configured), tokenizer and labels."""
    from ikd.integrations.kubeflow import run_component

    run_component("export", config, out=onnx_model, metrics=metrics, data=data, student=student)
