"""Components ``score`` and ``merge_scores``: the frozen teacher's outputs over the distillation rows.

``score`` scores the row range ``shard`` ("I/N": the I-th of N contiguous ranges; "0/1": all rows). With
``kubeflow.score_shards`` > 1 the pipeline runs one ``score`` task per range in a ``ParallelFor`` (each on a node
of its own, so that scoring a large transfer set scales with nodes) and ``merge_scores`` joins them into the one
artifact ``distill`` reads.
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from ikd.integrations.kubeflow import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def score(
    config: str,
    data: Input[Dataset],
    teacher: Input[Model],
    shard: str,
    scores: Output[Dataset],
    metrics: Output[Metrics],
):
    """``ikd.steps.score`` for the row range ``shard`` ("I/N")."""
    from ikd.integrations.kubeflow import run_component

    run_component("score", config, out=scores, metrics=metrics, data=data, teacher=teacher, shard=shard)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def merge_scores(config: str, shards: Input[list[Dataset]], scores: Output[Dataset], metrics: Output[Metrics]):
    """``ikd score --merge``: the shards' row ranges joined, in row order, into one scores artifact."""
    from ikd.integrations.kubeflow import run_merge_component

    run_merge_component(config, shards=shards, out=scores, metrics=metrics)
