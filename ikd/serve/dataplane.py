"""The server's data plane: every answer of the API as a plain method, with no HTTP in sight.

:class:`DataPlane` holds the predictor, the batcher, the request limits and the metrics. Its methods take what a
request carries (a model name, a version, a parsed JSON body) and return the answer's JSON value, or raise an error
that :data:`ikd.serve.errors.STATUS` turns into a status code. :mod:`ikd.serve.app` only adapts HTTP to it, so the
methods can be called and tested without a server.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

import ikd
from ikd.serve.batching import Batcher
from ikd.serve.errors import InferenceTimeout, NotFound, NotReady
from ikd.serve.metrics import Metrics, TextCounts
from ikd.serve.protocol import Limits, infer_response, parse_infer, parse_outputs, parse_predict, predict_response


class DataPlane:
    """The answers for ``predictor`` (loaded before): ready once :meth:`start` runs the batcher (inside the event
    loop), not ready again after :meth:`stop`."""

    def __init__(
        self,
        predictor,
        limits: Limits | None = None,
        max_batch_size: int = 32,
        max_delay_ms: float = 0.0,
        batch_overhead_tokens: float = 16.0,
    ):
        self.predictor = predictor
        self.limits = limits or Limits()
        self.metrics = Metrics(predictor)
        self.batcher = Batcher(
            predictor,
            max_batch_size,
            max_delay_ms,
            observe=self.metrics.observe_batch,
            queue_depth=self.metrics.queue_depth,
            queue_wait=self.metrics.observe_queue_wait,
            batch_overhead_tokens=batch_overhead_tokens,
            instances=getattr(predictor, "instances", 1),  # one batch per session at a time
        )
        self.is_ready = False

    def start(self) -> None:
        self.batcher.start()
        self.is_ready = True

    async def stop(self) -> None:
        self.is_ready = False
        await self.batcher.stop()

    # ---- health and metadata ---------------------------------------------------------------------------------------
    def live(self) -> dict[str, Any]:
        return {"live": True}

    def ready(self) -> dict[str, Any]:
        if not self.is_ready:
            raise NotReady("not ready")
        return {"ready": True}

    def server_metadata(self) -> dict[str, Any]:
        return {"name": "ikd", "version": ikd.__version__, "extensions": ["binary_tensor_data"]}

    def check_model(self, name: str, version: str = "1") -> None:
        """Refuse a model name other than the served one, or a version other than 1 (:class:`NotFound`)."""
        if name != self.predictor.name:
            raise NotFound(f"unknown model '{name}'; this server serves '{self.predictor.name}'")
        if version != "1":
            raise NotFound(f"model '{self.predictor.name}' has only version 1")

    def model_metadata(self, name: str, version: str = "1") -> dict[str, Any]:
        self.check_model(name, version)
        return self.predictor.describe()

    def model_ready(self, name: str, version: str = "1") -> dict[str, Any]:
        self.check_model(name, version)
        if not self.is_ready:
            raise NotReady(f"model '{self.predictor.name}' is not ready")
        return {"name": self.predictor.name, "ready": True}

    # ---- inference -------------------------------------------------------------------------------------------------
    async def infer(self, name: str, body: Any, version: str = "1") -> dict[str, Any]:
        """The v2 inference response to ``body`` (a parsed JSON value) for model ``name``, version ``version``."""
        self.check_model(name, version)
        counts = TextCounts()
        ids, types = parse_infer(body, self.predictor, self.limits, counts)
        self.metrics.observe_texts(counts)
        wanted = parse_outputs(body)
        return infer_response(self.predictor, await self._logits(ids, types), body.get("id"), wanted)

    async def predict(self, body: Any) -> dict[str, Any]:
        """The ``/predict`` answer to ``body`` (a parsed JSON value, ``{"texts": [...]}``)."""
        counts = TextCounts()
        ids, types = parse_predict(body, self.predictor, self.limits, counts)
        self.metrics.observe_texts(counts)
        return predict_response(self.predictor, await self._logits(ids, types))

    async def _logits(self, ids: list[list[int]], types: list[list[int]] | None) -> np.ndarray:
        """Logits of the rows through the batcher, within the request timeout (rows and predictions counted)."""
        if not self.is_ready:
            raise NotReady(f"model '{self.predictor.name}' is not ready")
        self.metrics.observe_rows(len(ids))
        try:
            logits = await asyncio.wait_for(self.batcher.infer(ids, types), self.limits.timeout_s)
        except TimeoutError:
            raise InferenceTimeout(f"inference took longer than {self.limits.timeout_s} s") from None
        self.metrics.observe_predictions(logits)
        return logits
