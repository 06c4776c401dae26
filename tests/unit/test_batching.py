import asyncio

import numpy as np
import pytest

from ikd.serve.batching import Batcher, plan


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
