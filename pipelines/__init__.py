"""The Kubeflow front door (importable as ``ikd.pipelines``): the ikd DAG, the same steps as ``dvc.yaml``, and the
commands that compile it, run it locally, submit and schedule it.

- ``ikd_pipeline``: the DAG (components from ``components/``, placement and cache keys from the library).
- ``runner``: build, compile, run offline with kfp.local.
- ``cluster``: the KFP API client, submit, schedule.
- ``cli``: ``ikd-pipeline compile|run|submit|schedule``, also ``ikd pipeline ...`` (entry-point group
  ``ikd.commands``). See docs/kubeflow.md.

This package imports the library ``ikd``; the library never imports it."""
