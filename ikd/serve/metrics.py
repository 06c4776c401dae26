"""The server's Prometheus metrics (``/metrics``), in their own registry."""

from __future__ import annotations

import ikd

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """The server's Prometheus metrics, in their own registry (``/metrics`` shows only these and the process)."""

    def __init__(self, predictor):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)
        self.requests = Counter("ikd_requests_total", "HTTP requests", ["model", "endpoint", "code"], registry=r)
        self.request_seconds = Histogram(
            "ikd_request_duration_seconds",
            "Request latency, receive to answer",
            ["model", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "ikd_inference_duration_seconds",
            "ONNX Runtime time per batch",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "ikd_batch_size", "Rows per ONNX Runtime batch", ["model"], buckets=BATCH_BUCKETS, registry=r
        )
        self.queue = Gauge("ikd_queue_depth", "Rows waiting for a batch", ["model"], registry=r)
        info = Gauge(
            "ikd_model_info",
            "The loaded model (value 1)",
            ["model", "sha256", "opset", "task", "strategy", "ikd_version"],
            registry=r,
        )
        meta = predictor.metadata
        info.labels(
            predictor.name,
            meta.get("sha256", ""),
            str(meta.get("opset", "")),
            str(meta.get("task", "")),
            str(meta.get("strategy", "")),
            ikd.__version__,
        ).set(1)
        Gauge("ikd_model_load_seconds", "Time to load the model", ["model"], registry=r).labels(predictor.name).set(
            predictor.load_seconds
        )
        self.model = predictor.name

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(self.model, endpoint, str(status)).inc()
        self.request_seconds.labels(self.model, endpoint).observe(seconds)

    def observe_batch(self, rows: int, seconds: float) -> None:
        self.batch_size.labels(self.model).observe(rows)
        self.inference_seconds.labels(self.model).observe(seconds)

    def queue_depth(self, rows: int) -> None:
        self.queue.labels(self.model).set(rows)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
