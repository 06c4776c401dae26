"""adapt.mode: import: a classifier fine-tuned elsewhere (transformers' BertForSequenceClassification, or a model
folder ikd wrote) is the teacher as it is, head kept; the pipeline downstream runs unchanged."""

import json

import pytest
import torch
from conftest import ROOT

from ikd.config import Config
from ikd.core import foreign, models
from ikd.errors import ConfigError, ModelError
from ikd.steps import table

TINY = ROOT / "configs" / "tiny.yaml"
CUSTOM = ["data.preset=null", "data.text_fields=[sentence]", "data.label_field=label", "data.quiz_rows=4"]
TEXTS = ["a joy to watch", "i hated it , really", "x"]


def hf_classifier(folder, seed=0, id2label=None):
    """A tiny random BertForSequenceClassification saved with transformers, beside ikd's character tokenizer."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    conf = BertConfig(
        vocab_size=200,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        num_labels=2,
        **({"id2label": id2label, "label2id": {v: k for k, v in id2label.items()}} if id2label else {}),
    )
    model = BertForSequenceClassification(conf).eval()
    model.save_pretrained(str(folder))
    models.char_tokenizer().save_pretrained(str(folder))
    return model


def overrides(teacher, *more):
    return [
        *CUSTOM,
        "adapt.mode=import",
        f"teacher.name={teacher}",
        "teacher.init=pretrained",
        "teacher.tokenizer=null",
        *more,
    ]


def config(teacher, *more):
    return Config.load(TINY, overrides(teacher, *more))


@pytest.fixture(scope="module")
def imported_run(tmp_path_factory):
    from conftest import NEG, POS, write_tsv

    from ikd.cli import main

    base = tmp_path_factory.mktemp("import")
    data = base / "data"
    write_tsv(
        data,
        "train.tsv",
        [[f"{t} {i}", "1"] for i, t in enumerate(POS * 4)] + [[f"{t} {i}", "0"] for i, t in enumerate(NEG * 4)],
    )
    write_tsv(data, "dev.tsv", [[t, "1"] for t in POS] + [[t, "0"] for t in NEG])
    original = hf_classifier(base / "hf")
    out = base / "run"
    assert (
        main(
            [
                "run",
                "--params",
                str(TINY),
                "--data",
                str(data),
                "--out",
                str(out),
                *[a for s in overrides(base / "hf") for a in ("--set", s)],
            ]
        )
        == 0
    )
    return base, original, out


def test_the_imported_teacher_answers_as_the_transformers_model_with_its_head(imported_run):
    _, original, out = imported_run
    folder = out / "adapt" / "model"
    meta = json.loads((folder / models.META_FILE).read_text())
    assert meta["format"] == "transformers" and meta["label_names"] == ["0", "1"] and meta["source"]["imported"]
    teacher, tok, _ = models.load(folder)
    assert isinstance(teacher, foreign.ForeignClassifier)
    enc = tok(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.equal(teacher(**enc), original(**enc).logits)
    kept = teacher.model.state_dict()
    for name in ("classifier.weight", "classifier.bias", "bert.pooler.dense.weight"):
        assert torch.equal(kept[name], original.state_dict()[name])
    adapt = json.loads((out / "adapt" / "metrics.json").read_text())
    assert "train" not in adapt and 0.0 <= adapt["imported"]["dev"]["accuracy"] <= 1.0
    report = json.loads((out / "metrics.json").read_text())  # the evaluate step measured it on dev
    assert report["teacher"]["accuracy"] == adapt["imported"]["dev"]["accuracy"]
    from ikd.core.packs import UNKNOWN_LICENSE
    from ikd.steps.model_card import read_card

    card = read_card(folder)["teacher"]  # its model card: imported, its dev figure, no license known for hf/
    assert card["dev"] == adapt["imported"]["dev"] and "adapt.mode: import" in card["how"]
    assert card["license"] == UNKNOWN_LICENSE


def test_the_step_key_follows_the_weights(imported_run, tmp_path):
    base, _, out = imported_run
    data = {"data": out / "prepare"}
    cfg = config(base / "hf")
    before = table.step_key(cfg, "adapt", table.input_keys(cfg, "adapt", data))
    assert before == json.loads((out / "adapt" / "step.json").read_text())["key"]
    hf_classifier(base / "hf", seed=1)  # other weights at the same path
    after = table.step_key(cfg, "adapt", table.input_keys(cfg, "adapt", data))
    assert after != before
    hf_classifier(base / "hf", seed=0)
    assert table.step_key(cfg, "adapt", table.input_keys(cfg, "adapt", data)) == before


def test_labels_that_are_not_the_datas_are_refused_naming_both(imported_run, tmp_path):
    _, _, out = imported_run
    hf_classifier(tmp_path / "named", id2label={0: "NEGATIVE", 1: "POSITIVE"})
    with pytest.raises(ModelError, match=r"id2label: .*labels \['NEGATIVE', 'POSITIVE'\].*the data has \['0', '1'\]"):
        table.call(config(tmp_path / "named"), "adapt", {"data": out / "prepare"}, tmp_path / "adapt")
    assert not (tmp_path / "adapt").exists()


def test_label_names_compare_case_insensitively_generic_ones_by_position(monkeypatch):
    warned = []
    monkeypatch.setattr(foreign.log, "warning", lambda msg, *a: warned.append(msg % a))
    foreign.match_labels(["NEGATIVE", "Positive"], ["negative", "positive"], "m")
    assert not warned
    foreign.match_labels(["LABEL_0", "LABEL_1"], ["neg", "pos"], "m")
    assert warned == ["m: generic labels ['LABEL_0', 'LABEL_1'] taken to be the data's ['neg', 'pos'], in this order"]
    with pytest.raises(ModelError, match=r"another order: set data.label_names to \['pos', 'neg'\]"):
        foreign.match_labels(["pos", "neg"], ["neg", "pos"], "m")
    with pytest.raises(ModelError, match="3 classes"):
        foreign.match_labels(["a", "b", "c"], ["a", "b"], "m")
    # a model named with the classes' meanings (an SST-2 model's NEGATIVE/POSITIVE) fits data labeled 0/1, in order
    foreign.match_labels(["NEGATIVE", "POSITIVE"], ["0", "1"], "m", ["negative", "positive"])
    with pytest.raises(ModelError, match=r"labels \['POSITIVE', 'NEGATIVE'\]"):
        foreign.match_labels(["POSITIVE", "NEGATIVE"], ["0", "1"], "m", ["negative", "positive"])
    assert len(warned) == 1


def test_a_bare_encoder_is_no_classifier_to_import(imported_run, tmp_path):
    from transformers import BertModel

    _, original, out = imported_run
    BertModel(original.config).save_pretrained(str(tmp_path / "bare"))
    models.char_tokenizer().save_pretrained(str(tmp_path / "bare"))
    with pytest.raises(ModelError, match=r"missing \(e.g. classifier\.\w+\): not a fine-tuned sequence classifier"):
        table.call(config(tmp_path / "bare"), "adapt", {"data": out / "prepare"}, tmp_path / "adapt")


def test_an_ikd_folder_imports_exactly_and_strategies_that_need_a_head_are_refused_on_a_foreign_one(
    imported_run, tmp_path
):
    _, _, out = imported_run
    student = out / "distill" / "model"  # a model folder ikd wrote, trained for these labels
    table.call(config(student), "adapt", {"data": out / "prepare"}, tmp_path / "adapt")
    got, tok, meta = models.load(tmp_path / "adapt" / "model")
    want, _, _ = models.load(student)
    assert "format" not in meta and meta["source"]["imported"]
    enc = tok(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.equal(got(**enc), want(**enc))
    for strategy, does in (("prokt", "trains"), ("talking", "runs the layers of")):
        cfg = config(student, f"distill.strategy={strategy}")
        with pytest.raises(
            ConfigError, match=f"{strategy} {does} the teacher, .* imported BertForSequenceClassification"
        ):
            table.call(cfg, "distill", {"data": out / "prepare", "teacher": out / "adapt"}, tmp_path / strategy)
    cfg = config(student, "distill.score_backend=onnx")
    with pytest.raises(ConfigError, match="score_backend: onnx exports ikd's classifier only"):
        table.call(cfg, "score", {"data": out / "prepare", "teacher": out / "adapt"}, tmp_path / "scores")
    teacher, _, _ = models.load(out / "adapt" / "model")
    with pytest.raises(ModelError, match="imported BertForSequenceClassification .* not a linear head"):
        teacher.head  # noqa: B018 (what prokt, metadistil and ikd reach for)
