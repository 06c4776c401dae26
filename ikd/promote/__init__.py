"""The promotion gate (``ikd promote``): a new export against the served model on the same held-out rows, and,
when the new one wins, its registration (Kubeflow Model Registry) and rollout (KServe InferenceService or the
serving Deployment, rolled back when the new revision never becomes ready). docs/promote.md.

- :mod:`~ikd.promote.compare`: held-out rows, both models scored and timed, the decision and its reasons;
- :mod:`~ikd.promote.registry`: the RegisteredModel / ModelVersion / ModelArtifact of a promoted export;
- :mod:`~ikd.promote.rollout`: patch, wait for readiness, roll back;
- :mod:`~ikd.promote.command`: ``ikd promote`` and the body of the KFP ``promote`` task.

Torch-free: ONNX Runtime (the serving predictor) and pyarrow (the prepared splits) are all it runs models with.
"""
