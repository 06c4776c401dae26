"""Dynamic batching: concurrent requests merged into ONNX Runtime batches.

Rows wait in a pool. Whenever a session is free, the batcher plans the pool: the rows are sorted by length and cut
by :func:`plan`, the cut that minimises padded tokens plus a fixed cost per batch (``batch_overhead_tokens``), and
the one batch that holds the **oldest** waiting row runs next. Rows that arrive meanwhile join the pool, and the
next batch is planned again from all that wait. So 32 concurrent one-sentence requests of mixed lengths run as a
few batches of similar lengths instead of one batch padded to the longest, and no row waits for long behind rows
that came after it, which keeps the tail of the latency near its median.

Up to ``instances`` batches run at once, each in a worker thread on its own session (ONNX Runtime releases the
GIL), so the event loop keeps accepting requests and a short batch need not wait for a long one. A server with no
batch running may hold a lone request up to ``max_delay_ms`` for company (up to ``max_batch_size`` rows); a busy
one never holds rows back: its pool fills while batches run.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: How many batches' worth of the oldest waiting rows one plan considers (bounds its cost under overload).
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


def next_batch(lengths: list[int], max_batch_size: int, overhead_tokens: float) -> list[int]:
    """Which rows run next, given waiting rows' ``lengths`` in arrival order (oldest first): the batch of the
    length-sorted :func:`plan` over the first ``LOOKAHEAD x max_batch_size`` of them that holds row 0. Returns
    indices into ``lengths``."""
    window = min(len(lengths), LOOKAHEAD * max_batch_size)
    order = sorted(range(window), key=lambda k: (lengths[k], k))  # equal lengths: older first
    start = 0
    for end in plan([lengths[k] for k in order], max_batch_size, overhead_tokens):
        if 0 in order[start:end]:
            return sorted(order[start:end])
        start = end
    return []


@dataclass
class _Request:
    ids: list[list[int]]
    types: list[list[int]] | None
    future: asyncio.Future
    logits: list[np.ndarray | None] = field(default_factory=list)
    left: int = 0
    queued_at: float = 0.0  # perf_counter() when it entered the queue; 0.0 once its wait is observed


class Batcher:
    """Merges :meth:`infer` calls into batches for ``predictor`` (an :class:`~ikd.serve.predictor.Predictor`,
    whose ``logits`` must be safe to call from ``instances`` threads at once).

    ``observe(batch_rows, seconds)`` is called after every batch, ``queue_depth(rows)`` whenever the number of
    rows waiting for a batch changes and ``queue_wait(seconds)`` once per request, when the first batch holding
    its rows starts (the server's metrics)."""

    def __init__(
        self,
        predictor,
        max_batch_size: int = 32,
        max_delay_ms: float = 0.0,
        observe=None,
        queue_depth=None,
        batch_overhead_tokens: float = 16.0,
        queue_wait=None,
        instances: int = 1,
    ):
        self.predictor = predictor
        self.batch_overhead_tokens = batch_overhead_tokens
        self.max_batch_size = max_batch_size
        self.max_delay = max_delay_ms / 1000.0
        self.instances = instances
        self.observe = observe or (lambda rows, seconds: None)
        self.queue_depth = queue_depth or (lambda rows: None)
        self.queue_wait = queue_wait or (lambda seconds: None)
        self._queue: asyncio.Queue[_Request] = asyncio.Queue()
        self._queued_rows = 0  # rows not yet in a batch: in the queue or in the pool
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

    async def _company(self, pool: list[tuple[_Request, int]]) -> None:
        """No batch running: wait at most ``max_delay`` for more requests, up to one batch of rows."""
        deadline = time.perf_counter() + self.max_delay
        while len(pool) < self.max_batch_size:
            wait = deadline - time.perf_counter()
            if wait <= 0:
                break
            try:
                req = await asyncio.wait_for(self._queue.get(), wait)
            except TimeoutError:
                break
            pool.extend((req, i) for i in range(len(req.ids)))

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        pool: list[tuple[_Request, int]] = []  # (request, row) waiting for a batch, oldest first
        running: set[asyncio.Task] = set()
        getter = loop.create_task(self._queue.get())  # the one pending read of the queue
        try:
            while True:
                if getter.done():
                    req = getter.result()
                    pool.extend((req, i) for i in range(len(req.ids)))
                    while not self._queue.empty():  # whatever else arrived meanwhile
                        req = self._queue.get_nowait()
                        pool.extend((req, i) for i in range(len(req.ids)))
                    if not running and self.max_delay > 0:
                        await self._company(pool)
                    getter = loop.create_task(self._queue.get())
                if pool and len(running) < self.instances:
                    picked = next_batch(
                        [len(r.ids[i]) for r, i in pool], self.max_batch_size, self.batch_overhead_tokens
                    )
                    taken = set(picked)
                    chunk = [pool[k] for k in picked]
                    pool = [row for k, row in enumerate(pool) if k not in taken]
                    self._queued_rows -= len(chunk)
                    self.queue_depth(self._queued_rows)
                    running.add(loop.create_task(self._batch(chunk)))
                    continue
                done, _ = await asyncio.wait({getter, *running}, return_when=asyncio.FIRST_COMPLETED)
                running -= done
        finally:
            getter.cancel()
            for task in running:
                task.cancel()

    async def _batch(self, chunk: list[tuple[_Request, int]]) -> None:
        """Run one batch and answer the requests it completes; its failure fails the requests it holds rows of."""
        tick = time.perf_counter()
        try:
            for r, _ in chunk:
                if r.queued_at:
                    self.queue_wait(tick - r.queued_at)
                    r.queued_at = 0.0
            ids = [r.ids[i] for r, i in chunk]
            types = [r.types[i] if r.types is not None else [0] * len(r.ids[i]) for r, i in chunk]
            logits = await asyncio.get_running_loop().run_in_executor(None, self._run, ids, types)
            self.observe(len(chunk), time.perf_counter() - tick)
        except Exception as exc:
            for r, _ in chunk:
                if not r.future.done():
                    r.future.set_exception(exc)
            return
        for (r, i), row in zip(chunk, logits, strict=True):
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
            "instances": self.instances,
        }
