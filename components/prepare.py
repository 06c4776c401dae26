"""Component ``prepare``: read the data source, split (train / quiz / dev), tokenize for teacher and student."""

from kfp import dsl
from kfp.dsl import Dataset, Metrics, Output

from ikd.integrations.kubeflow import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def prepare(
    config: str, source: str, data: Output[Dataset], metrics: Output[Metrics], dvc_repo: str = "", dvc_rev: str = ""
):
    """``ikd.steps.prepare``: ``source`` is a data folder visible to the pod or a Hugging Face hub id; with
    ``dvc_repo`` (a git URL) it is a path in that DVC repository at ``dvc_rev``, downloaded first (``dvc get``).
    The data's lineage (DVC md5, commit) lands in ``data``'s metadata."""
    from ikd.integrations.kubeflow import run_component

    run_component("prepare", config, out=data, metrics=metrics, source=source, dvc_repo=dvc_repo, dvc_rev=dvc_rev)
