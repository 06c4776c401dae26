"""The report's pictures draw the values of the steps' JSON files, and the HTML report is one self-contained file.

Inputs are recorded JSON in the shape the steps write (history.json, confusion.json, evaluate's metrics.json,
export's metadata.json); the figures are read back from matplotlib, not from what the plotting code says it drew.
"""

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest

from ikd.steps import plots, report

HISTORY = {
    "train": [
        {"step": 5, "epoch": 1, "lr": 4e-05, "loss": 0.69, "kl": 0.2, "ce": 0.7, "teacher_grad_norm": 3.0},
        {"step": 10, "epoch": 1, "lr": 3e-05, "loss": 0.55, "kl": 0.15, "ce": 0.6, "teacher_grad_norm": 2.5},
        {"step": 15, "epoch": 2, "lr": 2e-05, "loss": 0.41, "kl": 0.1, "ce": 0.45},
        {"step": 20, "epoch": 2, "lr": 0.0, "loss": 0.38, "kl": 0.08, "ce": 0.42},
    ],
    "dev": [
        {"step": 10, "epoch": 1, "accuracy": 0.71, "f1": 0.7},
        {"step": 20, "epoch": 2, "accuracy": 0.78, "f1": 0.8},
    ],
}
CONFUSION = {
    "labels": ["neg", "pos", "mixed"],
    "teacher": [[9, 1, 0], [2, 7, 1], [0, 3, 5]],
    "student": [[8, 2, 0], [3, 6, 1], [1, 2, 5]],
}
EVALUATION = {
    "task": "toy",
    "primary_metric": "f1",
    "dev_rows": 28,
    "device": "cpu",
    "teacher": {"f1": 0.81, "accuracy": 0.8, "parameters": 1000, "size_bytes": 4000, "layers": 2, "model": "t",
                "sentences_per_second": 40.5, "latency_ms_batch1": 25.0},
    "student": {"f1": 0.74, "accuracy": 0.7, "parameters": 200, "size_bytes": 800, "layers": 1, "model": "s",
                "sentences_per_second": 310.2, "latency_ms_batch1": 4.0},
}  # fmt: skip
SPEED = {"fp32": (400.0, 900.0), "optimized": (450.0, 950.0), "int8": (700.0, 1500.0)}
EXPORT_META = {
    "model_file": "model.int8.onnx",
    "files": {
        name: {"variant": v, "dev": {"f1": 0.73 if v == "int8" else 0.74},
               "rows_per_second": {"batch_1": SPEED[v][0], "batch_32_sorted": SPEED[v][1]}}
        for name, v in (("model.onnx", "fp32"), ("model.opt.onnx", "optimized"), ("model.int8.onnx", "int8"))
    },
}  # fmt: skip
EXPORT_META["files"]["model.int8.onnx"] |= {"agreement": {"dev": {"argmax": 0.964, "rows": 28}}, "size_bytes": 210}


def drawn(ax) -> dict[str, list[list[float]]]:
    return {line.get_label(): line.get_xydata().tolist() for line in ax.get_lines()}


def test_training_curves_draw_the_history():
    series = plots.curve_series(HISTORY)
    fig = plots.curves_figure(series, "distill")
    loss, lr, dev = fig.axes
    # the loss and every term, at their steps; a gradient norm is not on the loss scale and is left out
    assert drawn(loss) == {k: [[r["step"], r[k]] for r in HISTORY["train"]] for k in ("loss", "kl", "ce")}
    assert drawn(lr) == {"lr": [[r["step"], r["lr"]] for r in HISTORY["train"]]}
    # one dev record per epoch: the dev metrics per epoch
    assert drawn(dev) == {m: [[r["epoch"], r[m]] for r in HISTORY["dev"]] for m in ("accuracy", "f1")}
    assert dev.get_xlabel() == "epoch"
    # several dev records in one epoch (eval_every: N steps): plotted by step
    steps = {**HISTORY, "dev": [{**r, "epoch": 1} for r in HISTORY["dev"]]}
    s = plots.curve_series(steps)
    assert s["dev_x"] == "step" and s["dev"]["f1"] == [[r["step"], r["f1"]] for r in HISTORY["dev"]]


def test_confusion_figure_shows_each_models_matrix():
    fig = plots.confusion_figure(plots.confusion_series(CONFUSION), "dev")
    assert [ax.get_title() for ax in fig.axes] == ["teacher", "student"]
    for ax, role in zip(fig.axes, ("teacher", "student"), strict=True):
        assert np.array_equal(ax.images[0].get_array(), np.asarray(CONFUSION[role]))
        assert sorted(int(t.get_text()) for t in ax.texts) == sorted(np.asarray(CONFUSION[role]).ravel().tolist())
        assert [t.get_text() for t in ax.get_xticklabels()] == CONFUSION["labels"]


def test_tradeoff_has_the_torch_models_and_every_onnx_file():
    series = plots.tradeoff_series(EVALUATION, EXPORT_META)
    fig = plots.tradeoff_figure(series, "trade-off")
    batch1, batched = fig.axes
    want1 = {
        f"{r} (torch)": [[1000 / EVALUATION[r]["latency_ms_batch1"], EVALUATION[r]["f1"]]]
        for r in ("teacher", "student")
    }
    wantn = {
        f"{r} (torch)": [[EVALUATION[r]["sentences_per_second"], EVALUATION[r]["f1"]]] for r in ("teacher", "student")
    }
    for name, f in EXPORT_META["files"].items():
        want1[f"student {f['variant']} ({name})"] = [[f["rows_per_second"]["batch_1"], f["dev"]["f1"]]]
        wantn[f"student {f['variant']} ({name})"] = [[f["rows_per_second"]["batch_32_sorted"], f["dev"]["f1"]]]
    for ax, want in ((batch1, want1), (batched, wantn)):
        got = drawn(ax)
        assert list(got) == list(want)  # in order: teacher, student, then the files as metadata.json lists them
        for name, pts in want.items():
            assert np.asarray(got[name]) == pytest.approx(np.asarray(pts), abs=0.005), name
    assert batch1.get_ylabel() == "dev f1"
    # evaluate alone: the torch models only
    assert [p["model"] for p in plots.tradeoff_series(EVALUATION)["points"]] == ["teacher (torch)", "student (torch)"]


def test_report_embeds_its_pictures_and_the_html_stands_alone(tmp_path):
    hist = tmp_path / "history.json"
    hist.write_text(json.dumps(HISTORY))
    figs = report.figures(EVALUATION, CONFUSION, {"distill": hist, "adapt": tmp_path / "none.json"}, EXPORT_META)
    text = report.evaluation_markdown(EVALUATION, ["f1", "accuracy"]) + report.export_markdown(EXPORT_META, "f1")
    report.write(tmp_path, text, figs)
    md = (tmp_path / "report.md").read_text()
    links = re.findall(r"^!\[[^\]]*\]\((plots/[^)]+\.png)\)$", md, re.M)
    assert links == ["plots/curves-distill.png", "plots/confusion.png", "plots/tradeoff.png"]  # no adapt history
    assert "| model.int8.onnx (served) | int8 | 0.7300 | 0.9640 | 700.0 | 1500.0 | 0.0 |" in md
    assert "| model.opt.onnx | optimized | 0.7400 |  | 450.0 | 950.0 |  |" in md
    # plots.json: the series each picture drew, the same values as the JSON they came from
    recorded = json.loads((tmp_path / "plots" / "plots.json").read_text())
    assert recorded["curves-distill"]["series"]["loss"]["loss"] == [[r["step"], r["loss"]] for r in HISTORY["train"]]
    assert recorded["confusion"]["series"]["student"] == CONFUSION["student"]
    points = {p["model"]: p for p in recorded["tradeoff"]["series"]["points"]}
    assert points["student int8 (model.int8.onnx)"]["batched"] == 1500.0
    page = (tmp_path / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert [base64.b64decode(x) for x in images] == [(tmp_path / link).read_bytes() for link in links]
    assert not re.search(r"(src|href)=\"(?!data:)", page) and "<script" not in page
    assert "<th>f1</th>" in page and "<td>0.8100</td>" in page
    # the same inputs give the same bytes (DVC hashes the outputs)
    before = [(tmp_path / link).read_bytes() for link in links]
    report.write(tmp_path, text, figs)
    assert [(tmp_path / link).read_bytes() for link in links] == before


def test_html_escapes_text_and_keeps_odd_lines():
    page = report.to_html(
        "# a <b>\n\n#5 is not a heading\nnext line\n\n| x |\n|---|\n| `y` & z |\n", Path("/nonexistent")
    )
    assert "<h1>a &lt;b&gt;</h1>" in page and "<p>#5 is not a heading next line</p>" in page
    assert "<td><code>y</code> &amp; z</td>" in page
