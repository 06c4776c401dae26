"""Serving: :mod:`ikd.serve.predictor` (ONNX Runtime + tokenizer, no torch), :mod:`ikd.serve.batching` (dynamic
batching), :mod:`ikd.serve.protocol` (Open Inference Protocol v2 bodies), :mod:`ikd.serve.dataplane` (each endpoint's
answer as a plain method), :mod:`ikd.serve.errors` (error types and their HTTP statuses, one table),
:mod:`ikd.serve.metrics` (Prometheus) and :mod:`ikd.serve.app` (the HTTP adapter: Starlette routes)."""
