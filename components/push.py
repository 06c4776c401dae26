"""Component ``push`` (optional, last): teacher, student and ONNX model to a DVC remote."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Model, Output

from ikd.integrations.kubeflow import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def push(
    remote: str, teacher: Input[Model], student: Input[Model], onnx_model: Input[Model], dvc_files: Output[Artifact]
):
    """``ikd.integrations.dvc.push``: ``dvc_files`` receives ``teacher.dvc``, ``student.dvc`` and ``onnx.dvc``;
    commit them to a DVC repository that uses ``remote`` and ``dvc pull`` brings the models back. Credentials for
    the remote come from the pod's environment (e.g. ``AWS_*`` from a Kubernetes secret)."""
    from ikd.integrations.kubeflow import run_push_component

    run_push_component(remote, teacher=teacher, student=student, onnx_model=onnx_model, out=dvc_files)
