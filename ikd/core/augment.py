"""Augmented transfer rows: seeded token-level variants of the labeled train rows, for tasks with little unlabeled
text. They carry no label: the teacher scores them like any transfer row, so an edit that changes the meaning
(a dropped "not") is labeled by what the teacher then says, not by the row it came from.

Edits work on whitespace words (no model, no vocabulary, nothing to download):

- ``delete``: drop each word with probability 0.15 (at least one word, never all),
- ``swap``: exchange two words, once per ten words (at least once),
- ``crop``: keep one contiguous span of 50-90 % of the words (SST-2's own phrases are spans of its sentences).

A sentence pair has each of its texts edited independently.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ikd.core.sources import Split

OPS = ("delete", "swap", "crop")


def edit(text: str, op: str, rng: np.random.Generator) -> str:
    """One edit ``op`` of ``text`` (texts of fewer than three words are returned unchanged)."""
    words = text.split()
    n = len(words)
    if n < 3:
        return text
    if op == "delete":
        keep = rng.random(n) >= 0.15
        if keep.all():
            keep[rng.integers(n)] = False
        return " ".join(w for w, k in zip(words, keep, strict=True) if k)
    if op == "swap":
        for _ in range(max(1, n // 10)):
            i, j = rng.choice(n, size=2, replace=False)
            words[i], words[j] = words[j], words[i]
        return " ".join(words)
    if op == "crop":
        length = max(2, round(n * rng.uniform(0.5, 0.9)))
        start = int(rng.integers(0, n - length + 1))
        return " ".join(words[start : start + length])
    raise ValueError(f"unknown augmentation op {op!r}; known: {', '.join(OPS)}")


def augment(split: Split, copies: int, ops: Sequence[str], seed: int) -> Split:
    """``copies`` edited variants of every row of ``split`` (one op each, drawn from ``ops``), seeded: the same
    ``seed`` gives the same rows. A variant equal to its source row is dropped. Labels are ""."""
    rng = np.random.default_rng(seed)
    texts, origin, rows = [], [], []
    for t, o, r in zip(split.texts, split.origin, split.source_rows, strict=True):
        for _ in range(copies):
            op = ops[int(rng.integers(len(ops)))]
            new = tuple(edit(x, op, rng) for x in t)
            if new != tuple(t):
                texts.append(new)
                origin.append(f"{o}+{op}")
                rows.append(r)
    return Split(texts, [""] * len(texts), origin, rows)
