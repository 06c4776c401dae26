"""Kubeflow Pipelines components, one per step (importable as ``ikd.components``).

Each is a lightweight Python component that runs in the project image (``ikd.integrations.kubeflow.IMAGE``,
tagged with the package version), installs nothing when its pod starts (``install_kfp_package=False``, no
``packages_to_install``) and makes one call into :func:`ikd.integrations.kubeflow.run_component`, which rebuilds
the config with the CLI's validator and calls the same ``ikd.steps`` function as ``ikd <step>``.
"""

from ikd.components.adapt import adapt
from ikd.components.distill import distill
from ikd.components.distill_trainjob import distill as distill_trainjob
from ikd.components.evaluate import evaluate
from ikd.components.export import export
from ikd.components.prepare import prepare
from ikd.components.promote import promote
from ikd.components.push import push
from ikd.components.score import merge_scores, score

#: step name -> component; the same names as ``ikd.steps.STEPS``, the CLI commands and the DVC stages.
COMPONENTS = {
    "prepare": prepare,
    "adapt": adapt,
    "score": score,
    "distill": distill,
    "evaluate": evaluate,
    "export": export,
}
#: Joins the ``score`` tasks of a ``ParallelFor`` over row ranges (``kubeflow.score_shards`` > 1).
MERGE_SCORES = merge_scores
#: ``distill`` on several nodes (a TrainJob launcher), used when ``kubeflow.distill_nodes`` > 1.
DISTILL_TRAINJOB = distill_trainjob
#: The optional last task (not a step): the models to a DVC remote, when the pipeline's ``dvc_remote`` is set.
PUSH = push
#: The gate after export (not a step of the table): the new export against the served model (docs/promote.md).
PROMOTE = promote

__all__ = [
    "COMPONENTS",
    "DISTILL_TRAINJOB",
    "MERGE_SCORES",
    "PROMOTE",
    "PUSH",
    "adapt",
    "distill",
    "evaluate",
    "export",
    "merge_scores",
    "prepare",
    "promote",
    "push",
    "score",
]
