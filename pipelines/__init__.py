"""Kubeflow pipelines (importable as ``ikd.pipelines``): the ikd DAG, the same steps as ``dvc.yaml``.

Compile, run locally, submit or schedule it with ``ikd pipeline ...`` (see docs/kubeflow.md)."""
