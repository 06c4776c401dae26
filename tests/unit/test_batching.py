import asyncio
import threading

import numpy as np
import pytest

from ikd.serve.batching import LOOKAHEAD, Batcher, next_batch, plan


def _cost(lengths, ends, overhead):
    start, total = 0, 0.0
    for end in ends:
        total += overhead + (end - start) * lengths[end - 1]
        start = end
    return total


def test_plan_splits_mixed_lengths_and_keeps_uniform_ones_together():
    mixed = [5] * 16 + [60] * 16
    assert plan(mixed, 32, 16) == [16, 32]  # 16*5 + 16*60 + 32 < 32*60 + 16
    assert plan([20] * 32, 32, 16) == [32]
    ends = plan([20] * 70, 32, 16)
    assert len(ends) == 3 and ends[-1] == 70 and max(np.diff([0, *ends])) <= 32  # fewest batches within the cap
    assert plan([3, 4], 32, 1e9) == [2]  # a huge per-batch cost: never split
    assert plan([], 32, 16) == []


@pytest.mark.parametrize("seed", range(5))
def test_plan_is_optimal_against_brute_force(seed):
    import itertools

    rng = np.random.default_rng(seed)
    lengths = sorted(rng.integers(3, 64, size=9).tolist())
    got = _cost(lengths, plan(lengths, 4, 10), 10)
    best = float("inf")
    for mask in itertools.product([0, 1], repeat=len(lengths) - 1):
        ends = [i + 1 for i, m in enumerate(mask) if m] + [len(lengths)]
        sizes = np.diff([0, *ends])
        if sizes.max() <= 4:
            best = min(best, _cost(lengths, ends, 10))
    assert got == pytest.approx(best)


class _Echo:
    """A predictor whose logits are [row length, first id]: shows which rows ran in which batch."""

    def __init__(self):
        self.shapes = []

    def feeds(self, ids, types):
        longest = max(len(r) for r in ids)
        self.shapes.append((len(ids), longest))
        return ids

    def logits(self, ids):
        return np.array([[len(r), r[0]] for r in ids], dtype=np.float32)


def test_concurrent_rows_of_mixed_lengths_run_in_length_groups_and_answer_in_order():
    echo = _Echo()

    async def go():
        b = Batcher(echo, max_batch_size=32, max_delay_ms=50)
        b.start()
        rows = [[i] * (4 if i % 2 else 50) for i in range(32)]  # alternating short and long, one per request
        out = await asyncio.gather(*(b.infer([r]) for r in rows))
        await b.stop()
        return rows, out

    rows, out = asyncio.run(go())
    for r, logits in zip(rows, out, strict=True):
        assert logits.tolist() == [[len(r), r[0]]]  # each request gets its own row back
    assert sorted(echo.shapes) == [(16, 4), (16, 50)]  # not one batch of 32 padded to 50


def test_the_next_batch_always_holds_the_oldest_row_and_groups_it_with_rows_of_its_length():
    # arrival order: a long row first, then short ones, then more long ones
    lengths = [50, 4, 5, 4, 52, 49, 6]
    picked = next_batch(lengths, 32, 16)
    assert 0 in picked and sorted(picked) == picked
    assert {lengths[k] >= 49 for k in picked} == {True}  # the long group, although shorter rows wait too
    assert next_batch([7], 32, 16) == [0]
    assert next_batch([], 32, 16) == []
    for seed in range(20):  # random pools: the oldest row always runs next, never more rows than a batch holds
        rng = np.random.default_rng(seed)
        pool = rng.integers(3, 64, size=int(rng.integers(1, 200))).tolist()
        picked = next_batch(pool, 8, 16)
        assert 0 in picked and 1 <= len(picked) <= 8 and max(picked) < LOOKAHEAD * 8


class _Gate(_Echo):
    """An echo predictor whose calls wait until ``width`` of them run at once (or time out)."""

    def __init__(self, width):
        super().__init__()
        self.barrier = threading.Barrier(width, timeout=5)

    def logits(self, ids):
        self.barrier.wait()
        return super().logits(ids)


def test_instances_run_batches_at_once_and_a_lone_client_is_never_left_waiting():
    async def concurrent():
        b = Batcher(_Gate(2), max_batch_size=1, instances=2)  # one row per batch: two batches must overlap
        b.start()
        out = await asyncio.wait_for(asyncio.gather(b.infer([[1, 2]]), b.infer([[3]])), 10)
        await b.stop()
        return out

    first, second = asyncio.run(concurrent())
    assert first.tolist() == [[2, 1]] and second.tolist() == [[1, 3]]

    async def one_after_another():  # one client, each request after the last answer: none may hang
        b = Batcher(_Echo(), instances=2)
        b.start()
        got = [(await asyncio.wait_for(b.infer([[k] * (k + 1)]), 2)).tolist() for k in range(30)]
        await b.stop()
        return got

    assert asyncio.run(one_after_another()) == [[[k + 1, k]] for k in range(30)]


def test_a_failing_batch_fails_its_requests_and_the_batcher_goes_on():
    class Flaky(_Echo):
        def logits(self, ids):
            if ids[0][0] == 13:
                raise RuntimeError("session failed")
            return super().logits(ids)

    async def go():
        b = Batcher(Flaky(), instances=2)
        b.start()
        with pytest.raises(RuntimeError, match="session failed"):
            await asyncio.wait_for(b.infer([[13]]), 2)
        ok = await asyncio.wait_for(b.infer([[5, 6]]), 2)
        await b.stop()
        return ok

    assert asyncio.run(go()).tolist() == [[2, 5]]
