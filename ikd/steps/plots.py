"""The pictures of a report: training curves, dev confusion matrices, metric against throughput.

Each ``*_series`` function picks the values to draw out of what the steps wrote (``history.json``,
``confusion.json``, ``metrics.json``, the export's ``metadata.json``) and each ``*_figure`` function draws exactly
those values, so :func:`save` can record them beside the images (``plots.json``) and a test can hold both against
their sources. matplotlib (the train extra) is imported inside the functions, with the Agg backend: importing this
module costs nothing and ``ikd serve`` never loads it. PNGs carry no timestamp or version (the same figures, the same
bytes, as DVC hashes them); margins are fixed rather than computed (a layout engine doubles the drawing time).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ikd.core.metrics import write_json

#: Keys of a history record that are not curves: the x axis, and values on another scale than the loss.
_NOT_LOSS = ("step", "epoch", "lr")
DPI = 100


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _points(records: list[dict[str, Any]], x: str, y: str) -> list[list[float]]:
    return [
        [r[x], r[y]]
        for r in records
        if isinstance(r.get(y), int | float) and not isinstance(r[y], bool) and math.isfinite(r[y])
    ]


def curve_series(history: dict[str, Any]) -> dict[str, Any]:
    """What the training-curves figure draws from a step's ``history.json``: ``loss`` (the loss and its terms,
    name -> [[step, value], ...]), ``lr`` ([[step, lr], ...]) and ``dev`` (metric -> [[x, value], ...], x the
    epoch when there is one dev record per epoch, else the step; ``dev_x`` says which)."""
    train, dev = history.get("train", []), history.get("dev", [])
    names: list[str] = []
    for r in train:
        names += [k for k in r if k not in _NOT_LOSS and "norm" not in k and k not in names]
    loss = {n: _points(train, "step", n) for n in names}
    epochs = [r.get("epoch") for r in dev]
    dev_x = "epoch" if dev and None not in epochs and len(set(epochs)) == len(epochs) else "step"
    metrics: list[str] = []
    for r in dev:
        metrics += [k for k in r if k not in ("step", "epoch") and k not in metrics]
    return {
        "loss": {n: p for n, p in loss.items() if p},
        "lr": _points(train, "step", "lr"),
        "dev_x": dev_x,
        "dev": {m: _points(dev, dev_x, m) for m in metrics},
    }


def curves_figure(series: dict[str, Any], title: str):
    """Three panels: training loss (and its terms), learning rate, dev metrics."""
    plt = _pyplot()
    fig, (loss, lr, dev) = plt.subplots(1, 3, figsize=(12, 3.4))
    fig.suptitle(title)
    for name, pts in series["loss"].items():
        loss.plot(*zip(*pts, strict=True), label=name, linewidth=1.5 if name == "loss" else 1.0)
    loss.set(title="training loss", xlabel="optimizer step")
    if len(series["loss"]) > 1:
        loss.legend(fontsize="small")
    if series["lr"]:
        lr.plot(*zip(*series["lr"], strict=True), label="lr")
    lr.set(title="learning rate", xlabel="optimizer step")
    lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    for name, pts in series["dev"].items():
        if pts:
            dev.plot(*zip(*pts, strict=True), marker="o", label=name)
    dev.set(title="dev metric", xlabel=series["dev_x"])
    if series["dev_x"] == "epoch" and series["dev"]:
        dev.set_xticks(sorted({x for pts in series["dev"].values() for x, _ in pts}))
    if series["dev"]:
        dev.legend(fontsize="small")
    else:
        dev.text(0.5, 0.5, "no dev evaluation\n(eval_every: never)", ha="center", va="center", transform=dev.transAxes)
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.16, top=0.8, wspace=0.25)
    return fig


def confusion_series(confusion: dict[str, Any]) -> dict[str, Any]:
    """What the confusion figure draws from ``confusion.json``: the labels and each model's matrix (rows: the
    true label, columns: the predicted one)."""
    return {"labels": [str(x) for x in confusion["labels"]]} | {
        role: confusion[role] for role in ("teacher", "student") if role in confusion
    }


def confusion_figure(series: dict[str, Any], title: str):
    """One panel per model: the counts, shaded by their share of the true label's row."""
    plt = _pyplot()
    roles = [r for r in ("teacher", "student") if r in series]
    labels = series["labels"]
    side = max(2.8, 0.45 * len(labels) + 1.6)
    fig, axes = plt.subplots(1, len(roles), figsize=(side * len(roles), side), squeeze=False)
    fig.suptitle(title)
    for ax, role in zip(axes[0], roles, strict=True):
        counts = series[role]
        ax.imshow(counts, cmap="Blues", vmin=0, vmax=max(1, max(max(row) for row in counts)))
        for i, row in enumerate(counts):
            for j, n in enumerate(row):
                dark = n > 0.6 * max(max(r) for r in counts)
                ax.text(j, i, str(n), ha="center", va="center", color="white" if dark else "black")
        ax.set(title=role, xlabel="predicted", ylabel="true", xticks=range(len(labels)), yticks=range(len(labels)))
        ax.set_xticklabels(labels, rotation=45 if max(map(len, labels)) > 3 else 0)
        ax.set_yticklabels(labels)
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.2, top=0.8, wspace=0.35)
    return fig


def tradeoff_series(evaluation: dict[str, Any], export_meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the trade-off figure draws: per model (the torch teacher and student of ``evaluate``'s metrics.json,
    then every ONNX file of the export's ``metadata.json``) its dev primary metric and sentences per second at
    batch 1 and batched (torch: ``evaluate.latency_batch_size`` rows a batch; ONNX: 32 rows a batch, sorted by
    length; both as the steps measured them, batch 1 for torch from its ms per sentence)."""
    metric = evaluation["primary_metric"]
    points = []
    for role in ("teacher", "student"):
        if role in evaluation:
            r = evaluation[role]
            points.append(
                {
                    "model": f"{role} (torch)",
                    "metric": r[metric],
                    "batch_1": round(1000 / r["latency_ms_batch1"], 2),
                    "batched": r["sentences_per_second"],
                }
            )
    for name, f in (export_meta or {}).get("files", {}).items():
        speed = f.get("rows_per_second", {})
        batched = [k for k in speed if k != "batch_1"]
        if metric not in f.get("dev", {}) or "batch_1" not in speed:  # export.speed_rows: 0 measures nothing
            continue
        points.append(
            {
                "model": f"student {f['variant']} ({name})",
                "metric": f["dev"][metric],
                "batch_1": speed["batch_1"],
                "batched": speed[batched[0]] if batched else None,
            }
        )
    return {"metric": metric, "points": points}


def tradeoff_figure(series: dict[str, Any], title: str):
    """Two panels (batch 1, batched): one marker per model, dev metric up, sentences per second right."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4), sharey=True)
    fig.suptitle(title)
    markers = "os^Dvp*hX"
    for ax, key, label in zip(axes, ("batch_1", "batched"), ("batch 1", "batched"), strict=True):
        for i, p in enumerate(series["points"]):
            if p[key] is not None:
                ax.plot([p[key]], [p["metric"]], marker=markers[i % len(markers)], linestyle="none", label=p["model"])
        ax.set(title=label, xlabel="sentences / s")
        ax.set_xlim(left=0)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel(f"dev {series['metric']}")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize="small")
    fig.subplots_adjust(left=0.06, right=0.77, bottom=0.14, top=0.85, wspace=0.06)
    return fig


#: kind -> the function that draws it: what :func:`save` can draw.
FIGURES = {"curves": curves_figure, "confusion": confusion_figure, "tradeoff": tradeoff_figure}


def save(folder: Path, figures: list[tuple[str, str, str, dict[str, Any]]]) -> list[tuple[str, str]]:
    """Draw each ``(file stem, kind, title, series)`` (kind a key of :data:`FIGURES`) into ``folder/<stem>.png``
    and record every series in ``folder/plots.json``. Returns (title, file name) per image, in order."""
    plt = _pyplot()
    folder.mkdir(parents=True, exist_ok=True)
    written, record = [], {}
    for stem, kind, title, series in figures:
        fig = FIGURES[kind](series, title)
        try:
            fig.savefig(folder / f"{stem}.png", dpi=DPI, metadata={"Software": None})
        finally:
            plt.close(fig)
        written.append((title, f"{stem}.png"))
        record[stem] = {"kind": kind, "title": title, "series": series}
    write_json(folder / "plots.json", record)
    return written
