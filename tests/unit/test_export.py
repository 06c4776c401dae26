import numpy as np
import pytest
import torch

from ikd.config import ModelConfig
from ikd.core import models
from ikd.errors import ExportMismatchError
from ikd.steps import export_onnx as export
from ikd.steps import onnx_checks as checks
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
    mask[0, seq // 2 :] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def test_dynamic_batch_and_sequence_match_torch(exported):
    import onnx

    model, names, path = exported
    assert onnx.load(str(path)).ir_version <= export.MAX_IR_VERSION
    sess = checks.session(path)
    batches = [{"student": _side(b, s, i)} for i, (b, s) in enumerate([(1, 3), (5, 33), (2, 60)])]
    check = checks.parity(model, sess, names, batches)
    assert check["max_abs_diff"] < 1e-5 and check["argmax_agreement"] == 1.0 and check["rows"] == 8


def test_a_different_graph_is_caught(exported, tmp_path):
    model, names, _ = exported
    other, _ = models.build(ModelConfig(name="t", init="random", tokenizer="char", arch=TINY), 3, 1)
    path = tmp_path / "other.onnx"
    export.to_onnx(other.eval(), names, {n: torch.ones(2, 6, dtype=torch.long) for n in names}, path, 18)
    check = checks.parity(model, checks.session(path), names, [{"student": _side(4, 9)}])
    assert check["max_abs_diff"] > 1e-3


def test_export_student_raises_mismatch_past_atol(tiny_cfg, tmp_path, monkeypatch, small_data):
    from ikd import steps

    cfg = tiny_cfg.model_copy(
        update={
            "data": tiny_cfg.data.model_copy(
                update={"preset": None, "text_fields": ["sentence"], "label_field": "label", "quiz_rows": 4}
            )
        }
    )
    steps.prepare(cfg, str(small_data), tmp_path / "prep")
    steps.distill(
        cfg.model_copy(update={"distill": cfg.distill.model_copy(update={"strategy": "finetune"})}),
        tmp_path / "prep",
        None,
        tmp_path / "student",
    )
    real = checks.parity
    monkeypatch.setattr(checks, "parity", lambda *a: {**real(*a), "max_abs_diff": 0.5})
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("earlier output")
    with pytest.raises(ExportMismatchError, match="'logits' differs from PyTorch by 0.5"):
        steps.export(cfg, tmp_path / "prep", tmp_path / "student", tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "earlier output"  # previous output intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "out", "prep", "student"]  # no temporary left behind


def test_int8_schemes_write_dynamic_int8_graphs_and_exclusions_stay_fp32(exported, tmp_path):
    import onnx

    model, names, path = exported
    side = _side(4, 10)
    with torch.no_grad():
        ref = model(*(side[n] for n in names)).numpy()
    for scheme in ("per_channel", "per_tensor"):
        dst = tmp_path / f"{scheme}.onnx"
        assert int8.quantize(path, dst, scheme) == []
        ops = {n.op_type for n in onnx.load(str(dst)).graph.node}
        assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops
        got = checks.session(dst).run(["logits"], {n: side[n].numpy() for n in names})[0]
        assert got.shape == ref.shape and np.abs(got - ref).max() < 0.5  # int8 is close, not equal
    kept = int8.quantize(path, tmp_path / "x.onnx", "per_channel", [r"^node_MatMul_\d+$"])
    float_matmuls = {n.name for n in onnx.load(str(tmp_path / "x.onnx")).graph.node if n.op_type == "MatMul"}
    assert len(kept) >= 4 and set(kept) <= float_matmuls  # excluded nodes are still fp32 MatMuls


def test_torchscript_export_is_fused_by_the_transformer_optimizer(tmp_path):
    model, _ = models.build(ModelConfig(name="t", init="random", tokenizer="char", arch=TINY), 3, 0)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    path, opt = tmp_path / "m.onnx", tmp_path / "m.opt.onnx"
    export.to_onnx(model, names, {n: torch.ones(2, 6, dtype=torch.long) for n in names}, path, 18, "torchscript")
    fused = export.optimize(path, opt, model)
    assert fused.get("Attention") == 2 and fused.get("SkipLayerNormalization", 0) >= 2  # 2 layers
    batches = [{"student": _side(b, s, i)} for i, (b, s) in enumerate([(1, 3), (5, 33), (3, 17)])]
    for f in (path, opt):
        check = checks.parity(model.eval(), checks.session(f), names, batches)
        assert check["max_abs_diff"] < 1e-5 and check["rows"] == 9


def test_serve_variant_prefers_int8_then_optimized_and_names_a_missing_one():
    assert export.serve_variant("auto", {"fp32", "optimized", "int8"}) == "int8"
    assert export.serve_variant("auto", {"fp32", "optimized"}) == "optimized"
    assert export.serve_variant("auto", {"fp32"}) == "fp32"
    assert export.serve_variant("fp32", {"fp32", "int8"}) == "fp32"
    with pytest.raises(ExportMismatchError, match="export.serve: int8, but no int8 model was written"):
        export.serve_variant("int8", {"fp32", "optimized"})


def test_a_served_file_whose_option_is_off_is_a_config_error():
    from ikd.config import Config
    from ikd.errors import ConfigError

    with pytest.raises(ConfigError, match=r"export.*serve: optimized needs export.optimize: true"):
        Config.load(None, ["export.serve=optimized"])
    with pytest.raises(ConfigError, match=r"serve: int8 needs export.quantize: true"):
        Config.load(None, ["export.serve=int8", "export.optimize=true"])
    assert Config.load(None, ["export.serve=int8", "export.quantize=true"]).export.serve == "int8"


def _int8_cfg(tiny_cfg, **export_keys):
    return tiny_cfg.model_copy(update={"export": tiny_cfg.export.model_copy(update=export_keys)})


def test_triton_repository_layout_matches_the_onnx_graph(exported, tmp_path, tiny_cfg):
    import re

    import onnx

    _model, names, path = exported
    cfg = tiny_cfg.model_copy(
        update={
            "export": tiny_cfg.export.model_copy(
                update={
                    "triton": True,
                    "triton_name": "sst2-student",
                    "triton_max_batch_size": 16,
                    "triton_max_delay_us": 2000,
                }
            )
        }
    )
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


def test_export_writes_checked_optimized_and_int8_files_that_the_predictor_verifies(tiny_cfg, tmp_path, small_data):
    import hashlib
    import json

    from ikd import steps
    from ikd.errors import ModelError
    from ikd.serve.predictor import Predictor

    cfg = tiny_cfg.model_copy(
        update={
            "data": tiny_cfg.data.model_copy(
                update={"preset": None, "text_fields": ["sentence"], "label_field": "label", "quiz_rows": 4}
            )
        }
    )
    cfg = _int8_cfg(
        cfg,
        exporter="torchscript",
        optimize=True,
        quantize=True,
        int8_max_loss=100.0,
        int8_min_agreement=0.0,  # a random tiny model: any int8 answer will do here (tests/unit/test_int8_guard.py)
        speed_rows=32,
    )
    steps.prepare(cfg, str(small_data), tmp_path / "prep")
    steps.distill(
        cfg.model_copy(update={"distill": cfg.distill.model_copy(update={"strategy": "finetune"})}),
        tmp_path / "prep",
        None,
        tmp_path / "student",
    )
    result = steps.export(cfg, tmp_path / "prep", tmp_path / "student", tmp_path / "out").metrics
    out = tmp_path / "out"
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["model_file"] == result["served"] == "model.int8.onnx"  # export.serve=auto
    assert set(meta["files"]) == {"model.onnx", "model.opt.onnx", "model.int8.onnx"}
    for name, record in meta["files"].items():
        assert record["sha256"] == hashlib.sha256((out / name).read_bytes()).hexdigest()
        assert set(record["rows_per_second"]) == {"batch_1", "batch_32_sorted"}
        assert record["agreement"]["calib"]["rows"] == 8 and set(record["calib"]) == {"accuracy"}
    assert meta["judged_on"] == "calib" and meta["int8_guard"]["kept"] == result["int8"]["candidate"]
    assert result["optimized"]["fused_ops"]["Attention"] >= 1 and result["optimized"]["max_abs_diff"] < 1e-4
    assert result["int8"]["source"] == "model.opt.onnx" and set(result["int8"]["speedup"]) == {
        "vs_fp32",
        "vs_optimized",
    }
    rows = [("a fine film",), ("dull",)]
    answers = {n: Predictor.load(out, model_file=n).predict(rows) for n in meta["files"]}
    assert all(len(a) == 2 for a in answers.values())
    fp32 = np.array([p.logits for p in answers["model.onnx"]])
    assert np.abs(np.array([p.logits for p in answers["model.opt.onnx"]]) - fp32).max() < 1e-4
    with open(out / "model.opt.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ModelError, match="model.opt.onnx: sha256 .* does not match metadata.json"):
        Predictor.load(out, model_file="model.opt.onnx")
    with pytest.raises(ModelError, match="not one of the files metadata.json vouches for"):
        Predictor.load(out, model_file="labels.json")
