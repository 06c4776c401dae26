"""Batches: prepared splits as padded batches (seeded, length-grouped), the epochs a resumed run replays, and the
matching batched inference (:func:`predict_outputs`)."""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ikd import progress
from ikd.core.data import collate
from ikd.core.tensors import model_inputs, to_device


def make_loader(
    ds,
    pad_ids: dict[str, int],
    batch_size: int,
    shuffle: bool,
    seed: int,
    group_by_length: bool = False,
    sort_by_length: bool = False,
) -> DataLoader:
    """Batches of a prepared split, padded per batch.

    shuffle + group_by_length: seeded random batches of rows of similar length (less padding, same
    randomness across epochs as a plain shuffle would give per chunk). sort_by_length (inference):
    longest rows first; ``loader.batch_sampler.order`` maps batch positions back to rows.
    """
    side = next(iter(pad_ids))
    rows = Rows(ds.with_format(None))
    collate_fn = partial(collate, pad_ids=pad_ids)
    if (shuffle and group_by_length) or sort_by_length:
        lengths = np.fromiter((len(x) for x in ds[f"{side}_input_ids"]), dtype=np.int64, count=len(ds))
        sampler = LengthGroupedSampler(lengths, batch_size, seed, shuffle=shuffle)
        return DataLoader(rows, batch_sampler=sampler, collate_fn=collate_fn)
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(rows, batch_size=batch_size, shuffle=shuffle, generator=gen, collate_fn=collate_fn)


class LengthGroupedSampler(torch.utils.data.Sampler):
    """Batches of similar-length rows. shuffle: a new seeded permutation each epoch, sorted by length
    within chunks of 50 batches, batch order shuffled; otherwise all rows longest first (``order``)."""

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int, shuffle: bool):
        self.lengths, self.batch_size, self.seed, self.shuffle = lengths, batch_size, seed, shuffle
        self.epoch = 0
        self.order = np.argsort(-lengths, kind="stable")

    def __len__(self) -> int:
        return (len(self.lengths) + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        bs = self.batch_size
        if not self.shuffle:
            yield from (self.order[i : i + bs].tolist() for i in range(0, len(self.order), bs))
            return
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        perm = rng.permutation(len(self.lengths))
        chunk = bs * 50
        for i in range(0, len(perm), chunk):
            part = perm[i : i + chunk]
            perm[i : i + chunk] = part[np.argsort(-self.lengths[part], kind="stable")]
        batches = [perm[i : i + bs] for i in range(0, len(perm), bs)]
        for j in rng.permutation(len(batches)):
            yield batches[j].tolist()


class Rows(torch.utils.data.Dataset):
    """A prepared split as a map-style dataset of dicts, each with its row ``index``."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**self.ds[int(i)], "index": int(i)}


def with_upcoming(batches):
    """(batch, next batch of the same pass or None) pairs."""
    it = iter(batches)
    current = next(it, None)
    while current is not None:
        following = next(it, None)
        yield current, following
        current = following


class Epochs:
    """The row-index batches of each epoch of a training loader, drawn from its batch sampler (the same seeded
    order the loader itself would give), so that a resumed run can start inside an epoch: epochs before it are
    drawn and dropped (index lists only, no rows read), then the epoch's batches from a position on are read."""

    def __init__(self, loader: DataLoader):
        self.loader, self.drawn = loader, 0
        assert loader.batch_sampler is not None  # a loader with a batch size (all of make_loader's) has one
        self.batch_sampler = loader.batch_sampler

    def order(self, epoch: int) -> list[list[int]]:
        """Batches of ``epoch`` (1-based; called with increasing epochs)."""
        while self.drawn < epoch - 1:
            for _ in self.batch_sampler:
                pass
            self.drawn += 1
        self.drawn += 1
        return [list(b) for b in self.batch_sampler]

    def read(self, order: list[list[int]]):
        ds, collate_fn = self.loader.dataset, self.loader.collate_fn
        for idx in order:
            yield collate_fn([ds[i] for i in idx])


@torch.no_grad()
def predict_outputs(
    model: torch.nn.Module,
    loader: DataLoader,
    side: str,
    device: torch.device,
    layers: tuple[int, ...] = (),
    features: bool = False,
    desc: str | None = None,
) -> dict[str, torch.Tensor]:
    """Row-ordered outputs of a classifier over ``loader``: "logits" [N, C], "features" [N, H] (pooled last
    state) when asked, and "hidden.<i>" [N, H] pooled states for each hidden-state index in ``layers``."""
    model.eval()
    out: dict[str, list[torch.Tensor]] = {}
    index = []
    for batch in progress.bar(
        loader, desc=desc, unit="batch", disable=desc is None, dynamic_ncols=True, mininterval=1.0
    ):
        inputs = model_inputs(to_device(batch, device)[side])
        want = tuple(layers) + ((model.num_layers,) if features else ())
        if want:
            logits, states = model(**inputs, pooled_layers=want)
            named = {f"hidden.{i}": s for i, s in zip(layers, states, strict=False)}
            if features:
                named["features"] = states[-1]
        else:
            logits, named = model(**inputs), {}
        for k, v in {"logits": logits, **named}.items():
            out.setdefault(k, []).append(v.float().cpu())
        index.append(batch["index"])
    if not index:
        return {"logits": torch.empty(0)}
    order = torch.cat(index)
    result = {}
    for k, parts in out.items():
        values = torch.cat(parts)
        result[k] = torch.empty_like(values)
        result[k][order] = values  # back to row order, whatever order the loader used
    return result
