"""Both models on the same held-out rows: task metric, argmax agreement, p50 latency; the decision and why.

The rows are the prepared data's ``calib`` split (labeled, carved from train, nothing trains on it; the int8
guard judges on it too), or ``dev`` when the data has none. Both exports run through the serving predictor
(:class:`ikd.serve.predictor.Predictor`: the file metadata.json names, its sha256 checked), so a figure here is
what the server would answer. Latency is measured here, batch after batch alternating between the two models, so
that a busy machine slows both alike: its ratio means something, its absolute value only on this machine.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ikd.core.metrics import METRICS, read_json
from ikd.errors import DataError, ModelError
from ikd.opsconfig import PromoteConfig
from ikd.serve.predictor import Predictor


@dataclass
class HeldOut:
    """Held-out rows: texts (one or two per row), label indices, label names, and which split they came from."""

    split: str
    texts: list[tuple[str, ...]]
    labels: np.ndarray
    label_names: list[str]
    metrics: list[str]


def read_heldout(data: Path, max_rows: int) -> HeldOut:
    """The ``calib`` split of a prepared data folder (``dev`` when calib is empty), its first ``max_rows`` rows.
    Read with pyarrow alone (no datasets, no torch)."""
    data = Path(data)
    schema_file = data / "schema.json"
    if not schema_file.is_file():
        raise DataError(f"{data}: not a prepared data folder (no schema.json); give the output of `ikd prepare`")
    info = read_json(schema_file)
    for split in ("calib", "dev"):
        files = sorted((data / "data" / split).glob("*.arrow"))
        if files:
            break
    else:
        raise DataError(f"{data / 'data'}: neither a calib nor a dev split to compare the models on")
    try:
        import pyarrow as pa
    except ImportError:
        raise DataError("ikd promote reads the prepared splits with pyarrow: pip install pyarrow") from None
    tables = []
    for f in files:
        try:
            with pa.memory_map(str(f)) as source:
                tables.append(pa.ipc.open_stream(source).read_all())
        except (OSError, pa.ArrowInvalid) as exc:
            raise DataError(f"{f}: unreadable Arrow file ({exc}); run `ikd prepare` again") from None
    table = pa.concat_tables(tables).slice(0, max_rows)
    cols = ["text_a", "text_b"] if "text_b" in table.column_names else ["text_a"]
    columns = [table.column(c).to_pylist() for c in cols]
    labels = np.asarray(table.column("label").to_pylist(), dtype=np.int64)
    if not len(labels):
        raise DataError(f"{data}: the {split} split has no rows")
    return HeldOut(
        split,
        [tuple(t) for t in zip(*columns, strict=True)],
        labels,
        list(info["label_names"]),
        list(info.get("metrics") or ["accuracy"]),
    )


@dataclass
class Side:
    """One model's figures on the held-out rows."""

    folder: str
    model_file: str
    sha256: str
    metrics: dict[str, float]
    p50_ms: float
    preds: np.ndarray = field(repr=False)

    def summary(self) -> dict[str, Any]:
        return {
            "folder": self.folder,
            "model_file": self.model_file,
            "sha256": self.sha256,
            "metrics": {k: round(v, 6) for k, v in self.metrics.items()},
            "p50_ms": round(self.p50_ms, 3),
        }


def load(folder: Path, what: str) -> Predictor:
    """The export in ``folder`` as the server would load it; errors name ``what`` (new / current)."""
    folder = Path(folder)
    if not (folder / "metadata.json").is_file():
        raise ModelError(f"{what} model {folder}: not an exported model folder (no metadata.json; run `ikd export`)")
    try:
        return Predictor.load(folder, threads=1)
    except (KeyError, ValueError) as exc:  # metadata.json unreadable or missing a key
        raise ModelError(f"{what} model {folder}/metadata.json: unreadable ({exc!r})") from None


def _predict(p: Predictor, rows: list[tuple[str, ...]], batch: int) -> np.ndarray:
    ids, types = p.encode(rows)
    out = []
    for i in range(0, len(rows), batch):
        out.append(p.logits(p.feeds(ids[i : i + batch], types[i : i + batch])).argmax(axis=1))
    return np.concatenate(out)


def measure(predictors: list[Predictor], rows: list[tuple[str, ...]], batch: int, repeats: int) -> list[list[float]]:
    """Milliseconds per batch of the first ``batch`` rows, ``repeats`` times per predictor, interleaved (one
    warm-up batch each first)."""
    sample = rows[:batch]
    feeds = []
    for p in predictors:
        ids, types = p.encode(sample)
        feeds.append(p.feeds(ids, types))
        p.logits(feeds[-1])
    times: list[list[float]] = [[] for _ in predictors]
    for _ in range(repeats):
        for i, p in enumerate(predictors):
            start = time.perf_counter()
            p.logits(feeds[i])
            times[i].append((time.perf_counter() - start) * 1000)
    return times


def score(new: Predictor, current: Predictor | None, rows: HeldOut, cfg: PromoteConfig) -> tuple[Side, Side | None]:
    """Both models' metrics, predictions and p50 latency on ``rows``."""
    for p in (new, current):
        # the data's label values, as the export recorded them (`labels` may be served names: negative/positive)
        values = list(p.metadata.get("label_names") or p.labels) if p is not None else None
        if p is not None and values != rows.label_names:
            raise ModelError(
                f"{p.folder}: labels {values} are not the data's {rows.label_names}; compare models of one task"
            )
    predictors = [p for p in (new, current) if p is not None]
    times = measure(predictors, rows.texts, cfg.latency_batch, cfg.latency_repeats)
    sides = []
    for p, t in zip(predictors, times, strict=True):
        preds = _predict(p, rows.texts, cfg.latency_batch)
        metrics = {m: METRICS[m](rows.labels, preds) for m in rows.metrics}
        meta = p.metadata
        file = meta["model_file"]
        sha = (meta.get("files") or {}).get(file, {}).get("sha256") or meta.get("sha256", "")
        sides.append(Side(str(p.folder), file, sha, metrics, statistics.median(t), preds))
    return sides[0], (sides[1] if current is not None else None)


@dataclass
class Decision:
    promote: bool
    reasons: list[str]
    metric: str
    figures: dict[str, Any]


def decide(new: Side, current: Side | None, rows: HeldOut, cfg: PromoteConfig) -> Decision:
    """Promote only when every rule holds; ``reasons`` says, rule by rule, what held and what did not."""
    metric = cfg.metric or rows.metrics[0]
    if metric not in new.metrics:
        new.metrics[metric] = METRICS[metric](rows.labels, new.preds)
        if current is not None:
            current.metrics[metric] = METRICS[metric](rows.labels, current.preds)
    figures: dict[str, Any] = {"rows": len(rows.labels), "split": rows.split, "metric": metric, "new": new.summary()}
    ok: list[bool] = []
    reasons: list[str] = []

    def rule(passed: bool, text: str) -> None:
        ok.append(passed)
        reasons.append(("ok: " if passed else "refused: ") + text)

    if cfg.latency_budget_ms is not None:
        rule(
            new.p50_ms <= cfg.latency_budget_ms,
            f"new p50 {new.p50_ms:.2f} ms per batch of {cfg.latency_batch} vs budget {cfg.latency_budget_ms:g} ms",
        )
    if current is None:
        rule(True, "nothing is served yet: the first model promotes on its own figures")
        figures["current"] = None
        return Decision(all(ok), reasons, metric, figures)
    figures["current"] = current.summary()
    if new.sha256 and new.sha256 == current.sha256:
        rule(False, f"the new model file is the one served (sha256 {new.sha256[:12]}…)")
    gain = new.metrics[metric] - current.metrics[metric]
    figures["gain"] = round(gain, 6)
    rule(
        gain >= cfg.min_gain,
        f"{metric} on {len(rows.labels)} {rows.split} rows: new {new.metrics[metric]:.4f} vs current "
        f"{current.metrics[metric]:.4f} (gain {gain:+.4f}, needed {cfg.min_gain:+.4f})",
    )
    agreement = float((new.preds == current.preds).mean())
    figures["agreement"] = round(agreement, 6)
    if cfg.min_agreement > 0:
        rule(agreement >= cfg.min_agreement, f"argmax agreement {agreement:.4f} vs minimum {cfg.min_agreement:g}")
    ratio = new.p50_ms / current.p50_ms if current.p50_ms > 0 else 1.0
    figures["latency_ratio"] = round(ratio, 4)
    if cfg.max_latency_ratio > 0:
        rule(
            ratio <= cfg.max_latency_ratio,
            f"p50 latency new {new.p50_ms:.2f} ms vs current {current.p50_ms:.2f} ms (ratio {ratio:.2f}, "
            f"allowed {cfg.max_latency_ratio:g})",
        )
    return Decision(all(ok), reasons, metric, figures)
