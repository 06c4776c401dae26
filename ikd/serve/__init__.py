"""Serving: :mod:`ikd.serve.predictor` (ONNX Runtime + tokenizer, no torch), :mod:`ikd.serve.batching` (dynamic
batching) and :mod:`ikd.serve.app` (Open Inference Protocol v2 over HTTP, Prometheus metrics)."""
