"""Component ``adapt``: fine-tune the teacher on the task."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from ikd.integrations.kubeflow import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def adapt(config: str, data: Input[Dataset], teacher: Output[Model], metrics: Output[Metrics]):
    """``ikd.steps.adapt``: writes the adapted teacher (safetensors, tokenizer, config)."""
    from ikd.integrations.kubeflow import run_component

    run_component("adapt", config, out=teacher, metrics=metrics, data=data)
