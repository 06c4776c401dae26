"""The int8 guard: candidates judged on the calib rows (argmax agreement with the PyTorch student and metric loss),
the fp32 tail retry, the fallback to an fp32 graph, and dev only for data prepared without calib rows."""

import json
import logging
import shutil

import pytest
import torch
from conftest import NEG, POS, write_tsv

from ikd.config import Config, ModelConfig
from ikd.core import models
from ikd.errors import ExportMismatchError
from ikd.steps import export_onnx as export
from ikd.steps import onnx_checks
from ikd.steps import onnx_int8 as int8

TINY = {
    "model_type": "bert",
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "vocab_size": 200,
    "max_position_embeddings": 64,
}
NAMES = ["input_ids", "attention_mask", "token_type_ids"]


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """A 2-layer random classifier as the dynamo graph, and as the torchscript graph fused by ONNX Runtime's
    transformer optimizer (what configs/quick.yaml quantizes)."""
    model, _ = models.build(ModelConfig(name="t", init="random", tokenizer="char", arch=TINY), 3, 0)
    model.eval()
    folder = tmp_path_factory.mktemp("graphs")
    example = {n: torch.ones(2, 6, dtype=torch.long) for n in NAMES}
    export.to_onnx(model, NAMES, example, folder / "dynamo.onnx", 18)
    export.to_onnx(model, NAMES, example, folder / "ts.onnx", 18, "torchscript")
    export.optimize(folder / "ts.onnx", folder / "opt.onnx", model)
    return folder


def _weights(path):
    """Names of the nodes that multiply by a weight (an initializer input), in graph order."""
    import onnx

    graph = onnx.load(str(path)).graph
    inits = {i.name for i in graph.initializer}
    return [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm", "Attention") and set(n.input) & inits]


def test_the_fp32_tail_is_the_head_and_the_last_layer(graphs):
    # dynamo graph: 6 weight matmuls per layer (q, k, v, attention output, intermediate, output) + the head's Gemm
    dyn = _weights(graphs / "dynamo.onnx")
    tail, what = int8.tail_nodes(graphs / "dynamo.onnx", 2)
    assert "last transformer layer (layer 1)" in what
    assert len(dyn) == 13 and [n for n in dyn if n in tail] == dyn[6:]  # layer 1 and the head, not layer 0
    # fused graph: one Attention node per layer; the tail holds layer 1's, not layer 0's
    import onnx

    nodes = onnx.load(str(graphs / "opt.onnx")).graph.node
    attention = [n.name for n in nodes if n.op_type == "Attention"]
    tail, _ = int8.tail_nodes(graphs / "opt.onnx", 2)
    assert len(attention) == 2 and attention[0] not in tail and attention[1] in tail
    assert [n for n in _weights(graphs / "opt.onnx") if n in tail] == _weights(graphs / "opt.onnx")[4:]
    # the wrong layer count: layer bounds unknown, the head alone
    head, what = int8.tail_nodes(graphs / "dynamo.onnx", 3)
    assert "head only" in what and head == dyn[-1:]


def test_kept_tail_nodes_stay_fp32_and_the_rest_is_int8(graphs, tmp_path):
    import onnx

    tail, _ = int8.tail_nodes(graphs / "opt.onnx", 2)
    excluded = int8.quantize(graphs / "opt.onnx", tmp_path / "q.onnx", "per_channel", keep=tail, reduce_range=True)
    assert excluded == tail
    nodes = {n.name: n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node}
    head = "/model/head/Gemm"
    assert tail[-1] == head and nodes[head + "_MatMul"] == "MatMul"  # the quantizer's rewrite of the Gemm, fp32
    assert all(nodes[n] in ("MatMul", "Attention") for n in tail[:-1])  # still fp32 operators
    assert "QAttention" in nodes.values() and "MatMulInteger" in nodes.values()  # layer 0 is int8


class _FakeChecks:
    """Stands in for onnx_checks.FileChecks: each candidate's figures are set by the test, by candidate name:
    {"calib": (agreement, accuracy), "dev": (agreement, accuracy), "speed": rows/s}. The student scores 0.900."""

    metric = "accuracy"

    def __init__(self, figures, judged_on="calib", calib_rows=512):
        self.figures, self.judged_on, self.calib_rows = figures, judged_on, calib_rows
        self.reference = {"calib": {"accuracy": 0.900}, "dev": {"accuracy": 0.900}}
        self.measured = []

    def measure(self, path):
        self.measured.append(path.stem)
        fig = self.figures[path.stem]
        rows = {"calib": self.calib_rows, "dev": 872}
        splits = ("dev",) if self.judged_on == "dev" else ("calib", "dev")
        return {
            "path": path.name,
            "max_abs_diff": 0.1,
            "argmax_agreement": 1.0,
            "rows": 4,
            **{s: {"accuracy": fig[s][1]} for s in splits},
            "agreement": {"reference": "torch student", **{s: {"argmax": fig[s][0], "rows": rows[s]} for s in splits}},
            "rows_per_second": {"batch_32_sorted": fig["speed"]},
            "size_bytes": 1,
            "sha256": "0" * 64,
        }


def _cfg(tiny_cfg, **export_keys):
    return tiny_cfg.model_copy(update={"export": tiny_cfg.export.model_copy(update=export_keys)})


GOOD, BAD = (0.995, 0.899), (0.95, 0.899)  # (agreement, accuracy): passes; agrees on too few rows


def test_the_fastest_candidate_passing_both_bars_is_kept(graphs, tmp_path, tiny_cfg):
    src = graphs / "opt.onnx"
    # per_tensor is faster but agrees on too few rows
    checks = _FakeChecks({"per_channel": {"calib": GOOD, "dev": GOOD, "speed": 100.0},
                          "per_tensor": {"calib": BAD, "dev": GOOD, "speed": 150.0}})  # fmt: skip
    record, guard = int8.choose_int8(_cfg(tiny_cfg), src, tmp_path / "model.int8.onnx", checks, 2)
    assert record["candidate"] == "per_channel" and record["path"] == "model.int8.onnx"
    assert (tmp_path / "model.int8.onnx").is_file() and sorted(p.name for p in tmp_path.iterdir()) == [
        "model.int8.onnx"
    ]  # candidates cleaned up
    assert checks.measured == ["per_channel", "per_tensor"]  # one passed: no fp32-tail retry
    verdicts = {c["name"]: c["verdict"] for c in guard["candidates"]}
    assert verdicts["per_channel"].startswith("kept")
    assert verdicts["per_tensor"] == "refused: argmax agreement 0.9500 < export.int8_min_agreement 0.99"
    assert guard["kept"] == "per_channel" and guard["judged_on"] == "calib" and guard["rows"] == 512
    # per_tensor faster but loses 2 points: refused for the loss
    checks = _FakeChecks({"per_channel": {"calib": GOOD, "dev": GOOD, "speed": 100.0},
                          "per_tensor": {"calib": (1.0, 0.880), "dev": GOOD, "speed": 150.0}})  # fmt: skip
    record, guard = int8.choose_int8(_cfg(tiny_cfg), src, tmp_path / "b.onnx", checks, 2)
    assert record["candidate"] == "per_channel" and record["loss_points"] == pytest.approx(0.1)
    assert "loses 2.00 points > export.int8_max_loss 0.5" in guard["candidates"][1]["verdict"]
    # both pass: the faster
    checks = _FakeChecks({"per_channel": {"calib": GOOD, "dev": GOOD, "speed": 100.0},
                          "per_tensor": {"calib": GOOD, "dev": GOOD, "speed": 150.0}})  # fmt: skip
    record, guard = int8.choose_int8(_cfg(tiny_cfg), src, tmp_path / "c.onnx", checks, 2)
    assert record["candidate"] == "per_tensor" and guard["candidates"][0]["verdict"] == "passed, slower than per_tensor"


def test_calib_decides_and_dev_never_does(graphs, tmp_path, tiny_cfg):
    src = graphs / "opt.onnx"
    terrible = (0.5, 0.5)
    # dev says refuse (half the rows disagree, 40 points lost), calib says keep: kept
    checks = _FakeChecks({"per_channel": {"calib": GOOD, "dev": terrible, "speed": 1.0},
                          "per_tensor": {"calib": GOOD, "dev": terrible, "speed": 1.0}})  # fmt: skip
    record, guard = int8.choose_int8(_cfg(tiny_cfg), src, tmp_path / "a.onnx", checks, 2)
    assert record is not None and record["judged_on"] == "calib" and guard["rows"] == 512
    assert guard["candidates"][0]["dev"] == {"accuracy": 0.5} and guard["candidates"][0]["dev_agreement"] == 0.5
    # dev says keep, calib says refuse: refused (int8_on_loss: skip, the default)
    checks = _FakeChecks({"per_channel": {"calib": BAD, "dev": GOOD, "speed": 1.0},
                          "per_tensor": {"calib": BAD, "dev": GOOD, "speed": 1.0},
                          "per_channel+fp32_tail": {"calib": BAD, "dev": GOOD, "speed": 1.0},
                          "per_tensor+fp32_tail": {"calib": BAD, "dev": GOOD, "speed": 1.0}})  # fmt: skip
    record, guard = int8.choose_int8(_cfg(tiny_cfg), src, tmp_path / "b.onnx", checks, 2)
    assert record is None and guard["kept"] is None and not (tmp_path / "b.onnx").exists()
    assert guard["reason"] == (
        "int8: no candidate kept argmax agreement >= 0.99 and accuracy loss <= 0.5 points on 512 calibration rows "
        "(per_channel 0.950 (loss +0.10), per_tensor 0.950 (loss +0.10), per_channel+fp32_tail 0.950 (loss +0.10), "
        "per_tensor+fp32_tail 0.950 (loss +0.10))"
    )


def test_the_fp32_tail_retry_rescues_int8_and_names_the_excluded_nodes(graphs, tmp_path, tiny_cfg):
    src = graphs / "opt.onnx"
    checks = _FakeChecks({"per_channel": {"calib": BAD, "dev": GOOD, "speed": 300.0},
                          "per_tensor": {"calib": BAD, "dev": GOOD, "speed": 350.0},
                          "per_channel+fp32_tail": {"calib": GOOD, "dev": GOOD, "speed": 250.0},
                          "per_tensor+fp32_tail": {"calib": (0.98, 0.9), "dev": GOOD, "speed": 280.0}})  # fmt: skip
    record, guard = int8.choose_int8(_cfg(tiny_cfg), src, tmp_path / "model.int8.onnx", checks, 2)
    tail, what = int8.tail_nodes(src, 2)
    assert record["candidate"] == "per_channel+fp32_tail" and record["scheme"] == "per_channel"
    assert record["excluded_nodes"] == tail and guard["fp32_tail"] == {"nodes": tail, "what": what}
    assert [c["verdict"].split(":")[0] for c in guard["candidates"]] == ["refused", "refused", "kept", "refused"]
    # switched off: no retry
    checks.measured.clear()
    record, guard = int8.choose_int8(_cfg(tiny_cfg, int8_retry_fp32_tail=False), src, tmp_path / "x.onnx", checks, 2)
    assert record is None and checks.measured == ["per_channel", "per_tensor"] and "fp32_tail" not in guard


def test_int8_on_loss_error_names_the_agreement_and_the_keys(graphs, tmp_path, tiny_cfg):
    checks = _FakeChecks({"per_channel": {"calib": (0.982, 0.9), "dev": GOOD, "speed": 1.0}}, calib_rows=500)
    cfg = _cfg(tiny_cfg, int8_on_loss="error", int8_schemes=["per_channel"], int8_retry_fp32_tail=False)
    with pytest.raises(
        ExportMismatchError,
        match=r"no candidate kept argmax agreement >= 0.99 .* on 500 calibration rows \(per_channel 0.982 "
        r"\(loss \+0.00\)\); lower export.int8_min_agreement .*export.int8_on_loss: skip",
    ):
        int8.choose_int8(cfg, graphs / "opt.onnx", tmp_path / "q.onnx", checks, 2)
    assert list(tmp_path.iterdir()) == []


# ---- the export step on a tiny run ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(config, prepared data with 8 calib rows, the same data as an old folder without calib, student)."""
    from conftest import ROOT

    from ikd import steps

    root = tmp_path_factory.mktemp("int8run")
    train = [[f"{t} {i}", "1"] for i, t in enumerate(POS * 4)] + [[f"{t} {i}", "0"] for i, t in enumerate(NEG * 4)]
    write_tsv(root / "data", "train.tsv", train)
    write_tsv(root / "data", "dev.tsv", [[t, "1"] for t in POS] + [[t, "0"] for t in NEG])
    cfg = Config.load(
        ROOT / "configs" / "tiny.yaml",
        [
            "data.preset=null",
            "data.text_fields=[sentence]",
            "data.label_field=label",
            "data.quiz_rows=4",
            "distill.strategy=finetune",
            "export.exporter=torchscript",
            "export.optimize=true",
            "export.quantize=true",
            "export.speed_rows=16",
        ],
    )
    steps.prepare(cfg, str(root / "data"), root / "prep")
    steps.distill(cfg, root / "prep", None, root / "student")
    old = root / "old-prep"  # as `ikd prepare` wrote it before the calib split existed
    shutil.copytree(root / "prep", old, ignore=shutil.ignore_patterns("data"))
    import datasets

    dd = datasets.load_from_disk(str(root / "prep" / "data"))
    datasets.DatasetDict({k: v for k, v in dd.items() if k != "calib"}).save_to_disk(str(old / "data"))
    return cfg, root / "prep", old, root / "student"


def _rig(monkeypatch, **change):
    """Make FileChecks.measure report int8 candidates (not model.onnx / model.opt.onnx) with ``change``:
    {split: (agreement, metric) or "student" (exactly the student's answers)}."""
    real = onnx_checks.FileChecks.measure

    def measure(self, path):
        record = real(self, path)
        if path.name not in (export.MODEL_FILE, export.OPT_FILE):
            for split, figures in change.items():
                agreement, metric = (1.0, self.reference[split][self.metric]) if figures == "student" else figures
                record["agreement"][split]["argmax"] = agreement
                record[split] = {**record[split], self.metric: metric}
        return record

    monkeypatch.setattr(onnx_checks.FileChecks, "measure", measure)


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture
def warned():
    """The warning lines of the ``ikd`` logger during the test (pytest's logging plugin is off here)."""
    keep = _Lines()
    logging.getLogger("ikd").addHandler(keep)
    yield lambda: list(keep.lines)
    logging.getLogger("ikd").removeHandler(keep)


def test_a_refused_int8_serves_the_optimized_graph_with_one_line_saying_why(run, tmp_path, monkeypatch, warned):
    from ikd import steps

    cfg, prep, _, student = run
    _rig(monkeypatch, calib=(0.875, 0.5))
    result = steps.export(cfg, prep, student, tmp_path / "out").metrics
    out = tmp_path / "out"
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["model_file"] == result["served"] == "model.opt.onnx" and not (out / "model.int8.onnx").exists()
    assert set(meta["files"]) == {"model.onnx", "model.opt.onnx"} and "int8" not in result
    [line] = warned()
    assert line.startswith("int8: no candidate kept argmax agreement >= 0.99 and accuracy loss <= 0.5 points on 8 ")
    assert "per_channel 0.875 (loss " in line and "per_tensor+fp32_tail 0.875" in line
    assert line.endswith("; serving model.opt.onnx (fp32)")
    guard = meta["int8_guard"]
    assert guard["kept"] is None and guard["served_instead"] == "model.opt.onnx" and line.startswith(guard["reason"])
    assert [c["name"] for c in guard["candidates"]] == [
        "per_channel",
        "per_tensor",
        "per_channel+fp32_tail",
        "per_tensor+fp32_tail",
    ]
    assert all(c["verdict"].startswith("refused: argmax agreement 0.8750 <") for c in guard["candidates"])
    assert guard["candidates"][2]["excluded_nodes"] == guard["fp32_tail"]["nodes"] != []
    assert result["int8_guard"] == guard and meta["judged_on"] == result["judged_on"] == "calib"


def test_int8_on_loss_error_fails_the_export_and_writes_nothing(run, tmp_path, monkeypatch):
    from ikd import steps

    cfg, prep, _, student = run
    _rig(monkeypatch, calib=(0.875, 0.5))
    cfg = cfg.model_copy(update={"export": cfg.export.model_copy(update={"int8_on_loss": "error"})})
    with pytest.raises(ExportMismatchError, match=r"argmax agreement >= 0.99 .*export.int8_min_agreement"):
        steps.export(cfg, prep, student, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_guard_reads_calib_rows_and_every_file_reports_both_splits(run, tmp_path, monkeypatch, warned):
    from ikd import steps
    from ikd.core.data import Prepared

    cfg, prep, _, student = run
    splits = Prepared.load(prep).splits
    calib, dev = len(splits["calib"]), len(splits["dev"])
    assert calib == 8 and dev == 12
    _rig(monkeypatch, calib="student", dev=(0.0, 0.0))  # int8 perfect on calib, hopeless on dev: kept
    result = steps.export(cfg, prep, student, tmp_path / "out").metrics
    meta = json.loads((tmp_path / "out" / "metadata.json").read_text())
    assert meta["model_file"] == "model.int8.onnx" and warned() == []
    assert meta["judged_on"] == "calib" and meta["int8_guard"]["judged_on"] == "calib"
    assert meta["int8_guard"]["rows"] == calib and result["int8"]["judged_on"] == "calib"
    assert meta["int8_guard"]["candidates"][0]["dev"]["accuracy"] == 0.0  # reported, not decisive
    for name, record in meta["files"].items():
        assert record["agreement"]["calib"]["rows"] == calib and record["agreement"]["dev"]["rows"] == dev, name
        assert set(record) >= {"calib", "dev", "rows_per_second", "sha256"}
    for name in ("model.onnx", "model.opt.onnx"):  # within atol of the student: the same answers
        assert meta["files"][name]["agreement"]["calib"]["argmax"] == 1.0


def test_data_prepared_without_calib_rows_is_judged_on_dev_with_one_warning(run, tmp_path, monkeypatch, warned):
    from ikd import steps
    from ikd.core.data import Prepared

    cfg, _, old, student = run
    assert len(Prepared.load(old).splits["calib"]) == 0
    _rig(monkeypatch, dev="student")
    result = steps.export(cfg, old, student, tmp_path / "out").metrics
    [line] = warned()
    assert "has no calibration rows" in line and "data.calib_rows" in line and "judges on dev rows" in line
    assert result["judged_on"] == "dev" and result["int8_guard"]["judged_on"] == "dev"
    assert result["int8_guard"]["rows"] == 12 and result["served"] == "model.int8.onnx"
    assert "calib" not in result and set(result["agreement"]) == {"reference", "dev"}
