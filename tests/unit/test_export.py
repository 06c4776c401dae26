import numpy as np
import pytest
import torch

from ikd import export, models
from ikd.config import ModelConfig
from ikd.errors import ExportMismatchError

TINY = {"model_type": "bert", "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 32, "vocab_size": 200, "max_position_embeddings": 64}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model, _ = models.build(ModelConfig(name="t", init="random", tokenizer="char", arch=TINY), 3, 0)
    model.eval()
    names = ["input_ids", "attention_mask", "token_type_ids"]
    example = {n: torch.ones(2, 6, dtype=torch.long) for n in names}
    path = tmp_path_factory.mktemp("onnx") / "m.onnx"
    export.to_onnx(model, names, example, path, opset=18)
    return model, names, path


def _side(batch, seq, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 190, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[0, seq // 2:] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def test_dynamic_batch_and_sequence_match_torch(exported):
    import onnx

    model, names, path = exported
    assert onnx.load(str(path)).ir_version <= export.MAX_IR_VERSION
    sess = export.session(path)
    batches = [{"student": _side(b, s, i)} for i, (b, s) in enumerate([(1, 3), (5, 33), (2, 60)])]
    check = export.parity(model, sess, names, batches)
    assert check["max_abs_diff"] < 1e-5 and check["argmax_agreement"] == 1.0 and check["rows"] == 8


def test_a_different_graph_is_caught(exported, tmp_path):
    model, names, _ = exported
    other, _ = models.build(ModelConfig(name="t", init="random", tokenizer="char", arch=TINY), 3, 1)
    path = tmp_path / "other.onnx"
    export.to_onnx(other.eval(), names, {n: torch.ones(2, 6, dtype=torch.long) for n in names}, path, 18)
    check = export.parity(model, export.session(path), names, [{"student": _side(4, 9)}])
    assert check["max_abs_diff"] > 1e-3


def test_export_student_raises_mismatch_past_atol(tiny_cfg, tmp_path, monkeypatch, small_data):
    from ikd import steps

    cfg = tiny_cfg.model_copy(update={"data": tiny_cfg.data.model_copy(update={
        "preset": None, "text_fields": ["sentence"], "label_field": "label", "quiz_rows": 4})})
    steps.prepare(cfg, str(small_data), tmp_path / "prep")
    steps.distill(cfg.model_copy(update={"distill": cfg.distill.model_copy(update={"strategy": "finetune"})}),
                  tmp_path / "prep", None, tmp_path / "student")
    real = export.parity
    monkeypatch.setattr(export, "parity", lambda *a: {**real(*a), "max_abs_diff": 0.5})
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("earlier output")
    with pytest.raises(ExportMismatchError, match="'logits' differs from PyTorch by 0.5"):
        steps.export(cfg, tmp_path / "prep", tmp_path / "student", tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "earlier output"  # previous output intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "out", "prep", "student"]  # no temporary left behind


def test_int8_quantization_reports_its_own_figures(exported, tmp_path):
    model, names, path = exported
    batches = [{"student": _side(4, 10), "labels": torch.tensor([0, 1, 2, 0])}]
    out = export.quantize(path, tmp_path / "q.onnx", model, names, batches, batches, ["accuracy"], None)
    assert out["path"] == "q.onnx" and out["rows"] == 4 and np.isfinite(out["max_abs_diff"])
    assert 0.0 <= out["dev"]["accuracy"] <= 1.0 and len(out["sha256"]) == 64


def test_triton_repository_layout_matches_the_onnx_graph(exported, tmp_path, tiny_cfg):
    import re

    import onnx

    model, names, path = exported
    cfg = tiny_cfg.model_copy(update={"export": tiny_cfg.export.model_copy(update={
        "triton": True, "triton_name": "sst2-student", "triton_max_batch_size": 16, "triton_max_delay_us": 2000})})
    record = export.triton_repository(cfg, path, tmp_path / "triton", names, 3)
    folder = tmp_path / "triton" / "sst2-student"
    assert record == {"path": "triton/sst2-student", "max_batch_size": 16}
    assert (folder / "1" / "model.onnx").read_bytes() == path.read_bytes()
    text = (folder / "config.pbtxt").read_text()
    assert re.search(r'^name: "sst2-student"$', text, re.M) and 'platform: "onnxruntime_onnx"' in text
    assert "max_batch_size: 16" in text and "max_queue_delay_microseconds: 2000" in text
    graph = onnx.load(str(folder / "1" / "model.onnx")).graph
    declared = re.findall(r'\{ name: "(\w+)" data_type: TYPE_INT64 dims: \[ -1 \] \}', text)
    assert declared == [i.name for i in graph.input] == names  # Triton matches inputs by name
    out = re.search(r'\{ name: "(\w+)" data_type: TYPE_FP32 dims: \[ (\d+) \] \}', text)
    assert out.group(1) == graph.output[0].name == "logits" and int(out.group(2)) == 3
    assert text.count("{") == text.count("}")
