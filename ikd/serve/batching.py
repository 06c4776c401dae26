"""Dynamic batching: concurrent requests merged into ONNX Runtime batches.

A request's rows wait at most ``max_delay_ms`` for company, up to ``max_batch_size`` rows. When more is queued
than one batch holds (a busy server), the batcher takes up to four batches' worth at once. The rows taken are
sorted by length and cut into batches by :func:`plan`: the cut that minimises padded tokens plus a fixed cost
per batch (``batch_overhead_tokens``), so 32 concurrent one-sentence requests of mixed lengths become a few
batches of similar lengths instead of one batch padded to the longest. Each batch is padded to its own longest
row and runs in a worker thread (ONNX Runtime releases the GIL), so the event loop keeps accepting requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: How many batches' worth of queued rows one round may take and regroup by length.
LOOKAHEAD = 4


def plan(lengths: list[int], max_batch_size: int, overhead_tokens: float) -> list[int]:
    """Cut points for rows of ascending ``lengths``: batches of at most ``max_batch_size`` rows minimising
    sum(rows x longest row + overhead_tokens) over batches (dynamic programming, O(n x max_batch_size)). Returns
    the end index of each batch."""
    n = len(lengths)
    best = [0.0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        for start in range(max(0, end - max_batch_size), end):
            cost = best[start] + overhead_tokens + (end - start) * lengths[end - 1]
            if cost < best[end]:
                best[end], cut[end] = cost, start
    ends, end = [], n
    while end > 0:
        ends.append(end)
        end = cut[end]
    return ends[::-1]


@dataclass
class _Request:
    ids: list[list[int]]
    types: list[list[int]] | None
    future: asyncio.Future
    logits: list[np.ndarray | None] = field(default_factory=list)
    left: int = 0
    queued_at: float = 0.0  # perf_counter() when it entered the queue; 0.0 once its wait is observed


class Batcher:
    """Merges :meth:`infer` calls into batches for ``predictor`` (an :class:`~ikd.serve.predictor.Predictor`).

    ``observe(batch_rows, seconds)`` is called after every batch, ``queue_depth(rows)`` whenever the queue
    changes and ``queue_wait(seconds)`` once per request, when the first batch holding its rows starts (the
    server's metrics)."""

    def __init__(
        self,
        predictor,
        max_batch_size: int = 32,
        max_delay_ms: float = 5.0,
        observe=None,
        queue_depth=None,
        batch_overhead_tokens: float = 16.0,
        queue_wait=None,
    ):
        self.predictor = predictor
        self.batch_overhead_tokens = batch_overhead_tokens
        self.max_batch_size = max_batch_size
        self.max_delay = max_delay_ms / 1000.0
        self.observe = observe or (lambda rows, seconds: None)
        self.queue_depth = queue_depth or (lambda rows: None)
        self.queue_wait = queue_wait or (lambda seconds: None)
        self._queue: asyncio.Queue[_Request] = asyncio.Queue()
        self._queued_rows = 0
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def infer(self, ids: list[list[int]], types: list[list[int]] | None = None) -> np.ndarray:
        """Logits [N, C] for the rows ``ids`` (token ids, unpadded), computed in whatever batches form."""
        loop = asyncio.get_running_loop()
        req = _Request(ids, types, loop.create_future(), [None] * len(ids), len(ids), time.perf_counter())
        self._queued_rows += len(ids)
        self.queue_depth(self._queued_rows)
        await self._queue.put(req)
        return await req.future

    async def _collect(self) -> list[_Request]:
        first = await self._queue.get()
        taken, rows = [first], len(first.ids)
        deadline = time.perf_counter() + self.max_delay
        while rows < self.max_batch_size:
            wait = deadline - time.perf_counter()
            if wait <= 0:
                break
            try:
                req = await asyncio.wait_for(self._queue.get(), wait)
            except TimeoutError:
                break
            taken.append(req)
            rows += len(req.ids)
        while rows < LOOKAHEAD * self.max_batch_size and not self._queue.empty():  # busy: regroup more by length
            req = self._queue.get_nowait()
            taken.append(req)
            rows += len(req.ids)
        self._queued_rows -= rows
        self.queue_depth(self._queued_rows)
        return taken

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            taken = await self._collect()
            rows = [(len(ids), r, i) for r in taken for i, ids in enumerate(r.ids)]
            rows.sort(key=lambda x: x[0])  # similar lengths together: each batch pads to its own longest row
            start = 0
            for end in plan([n for n, _, _ in rows], self.max_batch_size, self.batch_overhead_tokens):
                chunk, start = rows[start:end], end
                ids = [r.ids[i] for _, r, i in chunk]
                types = [r.types[i] if r.types is not None else [0] * len(r.ids[i]) for _, r, i in chunk]
                tick = time.perf_counter()
                for _, r, _ in chunk:
                    if r.queued_at:
                        self.queue_wait(tick - r.queued_at)
                        r.queued_at = 0.0
                try:
                    logits = await loop.run_in_executor(None, self._run, ids, types)
                except Exception as exc:
                    for _, r, _ in chunk:
                        if not r.future.done():
                            r.future.set_exception(exc)
                    continue
                self.observe(len(chunk), time.perf_counter() - tick)
                for (_, r, i), row in zip(chunk, logits, strict=True):
                    r.logits[i] = row
                    r.left -= 1
                    if r.left == 0 and not r.future.done():
                        r.future.set_result(np.stack([x for x in r.logits if x is not None]))  # all set

    def _run(self, ids: list[list[int]], types: list[list[int]]) -> np.ndarray:
        return self.predictor.logits(self.predictor.feeds(ids, types))

    def stats(self) -> dict[str, Any]:
        return {
            "queued_rows": self._queued_rows,
            "max_batch_size": self.max_batch_size,
            "max_delay_ms": self.max_delay * 1000.0,
            "batch_overhead_tokens": self.batch_overhead_tokens,
        }
