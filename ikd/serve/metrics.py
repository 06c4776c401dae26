"""The server's Prometheus metrics (``/metrics``), in their own registry.

Every transport (the HTTP routes, any other front of :class:`~ikd.serve.dataplane.DataPlane`) records through the
methods of :class:`Metrics`; the names, types and labels are listed in docs/serving.md ("Metrics"), and
manifests/monitoring/ holds the dashboard and alerts that read them. No ``_created`` series: they double the series
count and nothing here reads them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import ikd

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
#: The ``limit`` label of ``ikd_texts_truncated_total``: the request limit ``max_chars`` (characters, cut before
#: tokenizing) or the model's ``max_length`` (tokens, cut by the tokenizer).
TRUNCATION_LIMITS = ("max_chars", "max_length")


@dataclass
class TextCounts:
    """What reading one request's texts saw, filled in while it is parsed and tokenized: texts read, texts cut to
    ``max_chars`` characters, texts (or pairs) cut to the model's ``max_length`` tokens."""

    texts: int = 0
    cut_chars: int = 0
    cut_tokens: int = 0


class Metrics:
    """The server's Prometheus metrics, in their own registry (``/metrics`` shows only these and the process)."""

    def __init__(self, predictor):
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Gauge,
            Histogram,
            ProcessCollector,
            disable_created_metrics,
        )

        disable_created_metrics()  # process-wide: no <counter>_created / <histogram>_created series
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)
        self.model = model = predictor.name
        self.labels = list(predictor.labels)
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
            "ikd_batch_size_rows", "Rows per ONNX Runtime batch", ["model"], buckets=BATCH_BUCKETS, registry=r
        )
        self.queue = Gauge("ikd_queue_depth_rows", "Rows waiting for a batch", ["model"], registry=r)
        self.queue_wait = Histogram(
            "ikd_queue_wait_seconds",
            "Time a request's rows wait in the batcher's queue before their first batch runs",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rows = Counter("ikd_rows_total", "Rows sent to inference (text or token input)", ["model"], registry=r)
        self.texts = Counter("ikd_texts_total", "Texts tokenized (a pair row counts two)", ["model"], registry=r)
        self.truncated = Counter(
            "ikd_texts_truncated_total",
            "Texts cut silently before inference: to max_chars characters, or to the model's max_length tokens",
            ["model", "limit"],
            registry=r,
        )
        self.predictions = Counter(
            "ikd_predictions_total", "Rows answered, by predicted label", ["model", "label"], registry=r
        )
        for name in TRUNCATION_LIMITS:  # every series present from the start (rate() needs a first sample)
            self.truncated.labels(model, name)
        self._per_label = [self.predictions.labels(model, label) for label in self.labels]
        info = Gauge(
            "ikd_model_info",
            "The loaded model (value 1)",
            ["model", "sha256", "opset", "task", "strategy", "ikd_version"],
            registry=r,
        )
        meta = predictor.metadata
        info.labels(
            model,
            meta.get("sha256", ""),
            str(meta.get("opset", "")),
            str(meta.get("task", "")),
            str(meta.get("strategy", "")),
            ikd.__version__,
        ).set(1)
        Gauge("ikd_model_load_seconds", "Time to load the model", ["model"], registry=r).labels(model).set(
            predictor.load_seconds
        )

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(self.model, endpoint, str(status)).inc()
        self.request_seconds.labels(self.model, endpoint).observe(seconds)

    def observe_batch(self, rows: int, seconds: float) -> None:
        self.batch_size.labels(self.model).observe(rows)
        self.inference_seconds.labels(self.model).observe(seconds)

    def queue_depth(self, rows: int) -> None:
        self.queue.labels(self.model).set(rows)

    def observe_queue_wait(self, seconds: float) -> None:
        self.queue_wait.labels(self.model).observe(seconds)

    def observe_texts(self, counts: TextCounts) -> None:
        """One request's texts, after parsing (nothing for token input, whose texts the server never saw)."""
        if counts.texts:
            self.texts.labels(self.model).inc(counts.texts)
        if counts.cut_chars:
            self.truncated.labels(self.model, "max_chars").inc(counts.cut_chars)
        if counts.cut_tokens:
            self.truncated.labels(self.model, "max_length").inc(counts.cut_tokens)

    def observe_rows(self, rows: int) -> None:
        self.rows.labels(self.model).inc(rows)

    def observe_predictions(self, logits: np.ndarray) -> None:
        """The predicted label of each row of ``logits`` [N, C] (its argmax), counted per label."""
        for index, n in enumerate(np.bincount(logits.argmax(axis=1), minlength=len(self._per_label)).tolist()):
            if n:
                self._per_label[index].inc(n)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
