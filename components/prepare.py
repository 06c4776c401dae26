"""Component ``prepare``: read the data source, split (train / quiz / dev), tokenize for teacher and student."""

from kfp import dsl
from kfp.dsl import Dataset, Metrics, Output

from ikd.kubeflow import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def prepare(config: str, source: str, data: Output[Dataset], metrics: Output[Metrics]):
    """``ikd.steps.prepare``: ``source`` is a data folder visible to the pod or a Hugging Face hub id."""
    from ikd.kubeflow import run_component

    run_component("prepare", config, out=data, metrics=metrics, source=source)
