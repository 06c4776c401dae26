"""The task's rows on their way to the models: labels, the quiz split and transfer rows, tokenization, batches,
and the prepared data folder that downstream steps read.

Local files and hub datasets are read by :mod:`ikd.core.sources` (its names are importable from here too); rows
then become ``datasets.Dataset`` objects (Arrow, memory-mapped once saved).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ikd.core.sources import (
    PRESETS,
    SUFFIXES,
    Schema,
    Split,
    find_file,
    load_source,
    read_split,
    schema_dict,
    source_files,
    source_fingerprint,
)
from ikd.errors import DataError

# Names importable from here as before ikd.core.sources was split off.
__all__ = [
    "PRESETS",
    "SUFFIXES",
    "Prepared",
    "Schema",
    "Split",
    "carve_heldout",
    "carve_quiz",
    "collate",
    "encode_labels",
    "find_file",
    "label_names",
    "load_source",
    "read_split",
    "schema_dict",
    "source_files",
    "source_fingerprint",
    "stratified_sample",
    "tokenize",
    "transfer_rows",
]


# ---- labels and splits -----------------------------------------------------------------------------
def label_names(schema: Schema, train: Split) -> list[str]:
    """Label values in class order: the config's list, else sorted values seen in train."""
    if schema.label_names:
        return list(schema.label_names)
    seen = set(train.labels)
    try:
        return sorted(seen, key=float)
    except ValueError:
        return sorted(seen)


def encode_labels(split: Split, names: list[str], what: str) -> np.ndarray:
    index = {n: i for i, n in enumerate(names)}
    out = np.empty(len(split.labels), dtype=np.int64)
    for i, lab in enumerate(split.labels):
        if lab not in index:
            raise DataError(f"{split.origin[i]}: label '{lab}' is not a {what} label ({', '.join(names)})")
        out[i] = index[lab]
    return out


def stratified_sample(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``n`` rows drawn without replacement, class shares kept (largest remainder)."""
    n = min(n, len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts / counts.sum() * n
    take = np.floor(exact).astype(int)
    for j in np.argsort(-(exact - take), kind="stable")[: n - take.sum()]:
        take[j] += 1
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take, strict=True)]
    return np.sort(np.concatenate(chosen)) if chosen else np.empty(0, dtype=int)


def carve_quiz(train: Split, train_y: np.ndarray, dev: Split, rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split train row indices into (remaining train, quiz). Quiz rows never repeat a dev text."""
    dev_texts = set(dev.texts)
    eligible = np.array([i for i, t in enumerate(train.texts) if t not in dev_texts], dtype=int)
    rng = np.random.default_rng(seed)
    quiz = eligible[stratified_sample(train_y[eligible], rows, rng)] if rows else np.empty(0, dtype=int)
    rest = np.setdiff1d(np.arange(len(train.texts)), quiz)
    return rest, quiz


def carve_heldout(
    train: Split, train_y: np.ndarray, pool: np.ndarray, avoid: set[tuple[str, ...]], rows: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split the train row indices ``pool`` into (remaining, held out): ``rows`` stratified rows whose text is not
    in ``avoid`` (dev and quiz texts), and with every other copy of a chosen text also left out of the remaining
    rows, so that no text the student trains on is ever in the held-out split."""
    if not rows or not len(pool):
        return pool, np.empty(0, dtype=int)
    eligible = np.array([i for i in pool if train.texts[i] not in avoid], dtype=int)
    if not len(eligible):
        return pool, np.empty(0, dtype=int)
    held = eligible[stratified_sample(train_y[eligible], rows, np.random.default_rng(seed))]
    held_texts = {train.texts[i] for i in held}
    remaining = np.array([i for i in pool if train.texts[i] not in held_texts], dtype=int)
    return remaining, held


def transfer_rows(
    train: Split,
    left_out: np.ndarray,
    extra: Split | None,
    avoid: set[tuple[str, ...]],
    limit: int | None,
    seed: int,
) -> Split:
    """Unlabeled rows for distillation: train rows ``left_out`` of the labeled subsample plus ``extra`` rows,
    each text once, minus any text in ``avoid`` (dev, quiz, calibration and the labeled train texts); a seeded
    sample of ``limit`` rows when set. Labels are ""."""
    parts = [train.take(left_out)] if len(left_out) else []
    if extra is not None:
        parts.append(extra)
    seen = set(avoid)
    texts, origin, rows = [], [], []
    for part in parts:
        for t, o, r in zip(part.texts, part.origin, part.source_rows, strict=True):
            if t not in seen:
                seen.add(t)
                texts.append(t)
                origin.append(o)
                rows.append(r)
    idx = np.arange(len(texts))
    if limit is not None and limit < len(idx):
        idx = np.sort(np.random.default_rng(seed).permutation(len(idx))[:limit])
    return Split([texts[i] for i in idx], [""] * len(idx), [origin[i] for i in idx], [rows[i] for i in idx])


# ---- tokenization and batches ----------------------------------------------------------------------
def tokenize(tokenizer, texts: list[tuple[str, ...]], max_length: int) -> dict[str, list[list[int]]]:
    """Token ids (and token type ids where the tokenizer makes them), unpadded."""
    if not texts:  # an empty split (e.g. no transfer rows): the same columns, no rows
        return {k: [] for k in ("input_ids", "token_type_ids") if k in tokenizer.model_input_names}
    first = [t[0] for t in texts]
    second = [t[1] for t in texts] if texts and len(texts[0]) > 1 else None
    enc = tokenizer(first, second, truncation=True, max_length=max_length, padding=False)
    out = {"input_ids": enc["input_ids"]}
    if "token_type_ids" in enc and "token_type_ids" in tokenizer.model_input_names:
        out["token_type_ids"] = enc["token_type_ids"]
    return out


def collate(rows: list[dict[str, Any]], pad_ids: dict[str, int]) -> dict[str, Any]:
    """Pad each side to the longest row in the batch.

    Returns {"labels": LongTensor[B], "index": LongTensor[B], "<side>": {"input_ids": [B, T],
    "attention_mask": [B, T], ("token_type_ids": [B, T])}} for each side present in the rows.
    """
    import torch

    batch: dict[str, Any] = {
        "labels": torch.tensor([r["label"] for r in rows], dtype=torch.long),
        "index": torch.tensor([r["index"] for r in rows], dtype=torch.long),
    }
    for side, pad in pad_ids.items():
        key = f"{side}_input_ids"
        if key not in rows[0]:
            continue
        length = max(len(r[key]) for r in rows)
        ids = torch.full((len(rows), length), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        tti = f"{side}_token_type_ids"
        types = torch.zeros((len(rows), length), dtype=torch.long) if tti in rows[0] else None
        for i, r in enumerate(rows):
            n = len(r[key])
            ids[i, :n] = torch.tensor(r[key])
            mask[i, :n] = 1
            if types is not None:
                types[i, :n] = torch.tensor(r[tti])
        batch[side] = {"input_ids": ids, "attention_mask": mask}
        if types is not None:
            batch[side]["token_type_ids"] = types
    return batch


@dataclass
class Prepared:
    """A prepared data folder: the Arrow splits plus the schema facts downstream steps need."""

    path: Path
    info: dict[str, Any]
    splits: dict[str, Any]  # name -> datasets.Dataset

    @property
    def num_labels(self) -> int:
        return len(self.info["label_names"])

    @classmethod
    def load(cls, path: Path) -> Prepared:
        import datasets

        info_path = Path(path) / "schema.json"
        if not info_path.is_file():
            raise DataError(f"{path}: not a prepared data folder (no schema.json); run `ikd prepare` first")
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise DataError(f"{info_path}: unreadable ({exc}); run `ikd prepare` again") from None
        missing = (
            [k for k in ("label_names", "metrics", "pad_ids", "task") if k not in info]
            if isinstance(info, dict)
            else ["mapping"]
        )
        if missing:
            raise DataError(f"{info_path}: not a prepared data schema (no {missing[0]}); run `ikd prepare` again")
        try:
            dd = datasets.load_from_disk(str(Path(path) / "data"))
        except (OSError, ValueError) as exc:  # FileNotFoundError, or an Arrow file cut short
            raise DataError(
                f"{Path(path) / 'data'}: the prepared splits cannot be read "
                f"({' '.join(str(exc).split())[:200]}); run `ikd prepare` again"
            ) from None
        splits = {k: dd[k] for k in dd}
        for name in ("quiz", "calib", "transfer"):  # written only when not empty
            if name not in splits:
                train = splits["train"]
                splits[name] = datasets.Dataset.from_dict({c: [] for c in train.column_names}, features=train.features)
        return cls(Path(path), info, splits)

    def tokenizer_dir(self, side: str) -> Path:
        return self.path / "tokenizers" / side
