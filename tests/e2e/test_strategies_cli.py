"""Every strategy through `ikd distill` / `evaluate` / `export` on tiny random models, with a transfer set."""

import json

import numpy as np
import onnx
import pytest
from conftest import ROOT

TINY = ROOT / "configs" / "tiny.yaml"
# 64 labeled rows, the rest of a 200-row slice as unlabeled transfer rows
TRANSFER = ["--set", "data.transfer=rest", "--set", "data.max_transfer_rows=48"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from ikd.cli import main

    data = ROOT.parent / "shared" / "data" / "sst2"
    if not data.is_dir():
        pytest.skip("../shared/data/sst2 not present")
    out = tmp_path_factory.mktemp("strategies")
    args = ["--params", str(TINY), *TRANSFER]
    assert main(["prepare", *args, "--data", str(data), "--out", str(out / "prep")]) == 0
    assert main(["adapt", *args, "--data", str(out / "prep"), "--out", str(out / "teacher")]) == 0
    return out


def test_prepare_splits_never_overlap(prepared):
    from ikd.core.data import Prepared

    prep = Prepared.load(prepared / "prep")
    text = {k: set(v["text_a"]) for k, v in prep.splits.items()}
    rows = {k: set(v["source_row"]) for k, v in prep.splits.items() if k != "dev"}
    assert len(prep.splits["transfer"]) == 48 and set(prep.splits["transfer"]["label"]) == {-1}
    assert not text["quiz"] & text["dev"] and not text["transfer"] & text["dev"]
    assert not rows["quiz"] & rows["train"] and not rows["transfer"] & rows["train"]
    assert not rows["quiz"] & rows["transfer"]


@pytest.mark.parametrize("strategy", ["finetune", "kd", "prokt", "metadistil", "ikd", "talking"])
def test_each_strategy_distills_evaluates_and_exports(prepared, cli, strategy, tmp_path):
    args = ["--params", TINY, *TRANSFER, "--set", f"distill.strategy={strategy}"]
    if strategy == "kd":
        args += ["--set", "distill.hidden_weight=1.0"]
    student = tmp_path / "student"
    code, _, err = cli(
        "distill", *args, "--data", prepared / "prep", "--teacher", prepared / "teacher", "--out", student
    )
    assert code == 0, err
    m = json.loads((student / "metrics.json").read_text())
    assert m["strategy"] == strategy and np.isfinite(m["train"]["final_loss"])
    assert m["transfer_rows"] == (0 if strategy == "finetune" else 48)
    per_step = m["train"]["counts_per_step"]
    assert per_step["student_fwd"] >= 1 and m["train"]["step_time_ms"] > 0 and m["train"]["peak_memory_bytes"] > 0
    learns = strategy in ("prokt", "metadistil", "ikd")
    assert (student / "teacher" / "ikd_model.json").is_file() == learns
    assert (student / "strategy_state.safetensors").is_file() == (strategy in ("talking", "kd"))
    if learns:
        assert per_step["teacher_bwd"] > 0
    code, _, err = cli(
        "evaluate",
        *args,
        "--data",
        prepared / "prep",
        "--teacher",
        prepared / "teacher",
        "--student",
        student,
        "--out",
        tmp_path / "eval",
    )
    assert code == 0, err
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "Training cost" in report and f"| {strategy} |" in report
    code, _, err = cli("export", *args, "--data", prepared / "prep", "--student", student, "--out", tmp_path / "onnx")
    assert code == 0, err
    graph = onnx.load(str(tmp_path / "onnx" / "model.onnx")).graph
    n_onnx = sum(int(np.prod(t.dims)) for t in graph.initializer)
    from ikd.core.models import count_parameters, load

    n_student = count_parameters(load(student / "model")[0])
    assert n_onnx <= n_student  # the exported graph holds the student only (no talking modules, no projection)
    assert not any("messenger" in t.name or "enc_s" in t.name for t in graph.initializer)


def test_learning_teacher_refuses_cached_outputs(prepared, cli, tmp_path):
    code, _, err = cli(
        "distill",
        "--params",
        TINY,
        *TRANSFER,
        "--set",
        "distill.strategy=ikd",
        "--set",
        "distill.cache_teacher_outputs=true",
        "--data",
        prepared / "prep",
        "--teacher",
        prepared / "teacher",
        "--out",
        tmp_path / "s",
    )
    assert code == 2 and "cache_teacher_outputs" in err and "Traceback" not in err
    assert not (tmp_path / "s").exists()
