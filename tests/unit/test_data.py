from pathlib import Path

import numpy as np
import pytest
from conftest import NEG, POS, shared, write_tsv

from ikd.config import DataConfig
from ikd.core import data
from ikd.core.sources import served_label_names
from ikd.errors import DataError


def schema(**kw):
    return data.Schema.from_config(DataConfig(**kw))


@pytest.mark.parametrize(
    ("name", "preset", "rows", "fields", "labels"),
    [
        ("sst2", "glue-sst2", (67349, 872), 1, ["0", "1"]),
        ("mrpc", "glue-mrpc", (3668, 408), 2, ["0", "1"]),
        ("cola", "glue-cola", (8551, 1043), 1, ["0", "1"]),
    ],
)
def test_glue_folders_read_by_config_alone(name, preset, rows, fields, labels):
    folder = shared(name)
    s = schema(preset=preset)
    train, dev = data.load_source(str(folder), s)
    fp = data.source_fingerprint(DataConfig(preset=preset), str(folder))
    assert (len(train.texts), len(dev.texts)) == rows
    assert len(train.texts[0]) == fields
    assert data.label_names(s, train) == labels
    assert set(fp) == {"train.tsv", "dev.tsv"} and all(len(v) == 64 for v in fp.values())


def test_mrpc_keeps_quotes_inside_text():
    train, _ = data.load_source(str(shared("mrpc")), schema(preset="glue-mrpc"))
    assert any('"' in t[0] for t in train.texts)  # QUOTE_NONE: a raw quote is text, not a delimiter


def test_stratified_sample_keeps_shares_and_is_seeded():
    y = np.array([0] * 300 + [1] * 700)
    a = data.stratified_sample(y, 100, np.random.default_rng(1))
    b = data.stratified_sample(y, 100, np.random.default_rng(1))
    c = data.stratified_sample(y, 100, np.random.default_rng(2))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert len(a) == 100 and (y[a] == 0).sum() == 30 and len(set(a)) == 100


def test_quiz_is_stratified_disjoint_and_never_a_dev_text(small_data):
    s = schema(text_fields=["sentence"], label_field="label")
    train, dev = data.load_source(str(small_data), s)
    # plant a dev text into train: it must never land in the quiz
    train.texts[0] = dev.texts[0]
    y = data.encode_labels(train, ["0", "1"], "train")
    rest, quiz = data.carve_quiz(train, y, dev, 12, seed=3)
    assert len(quiz) == 12 and not set(rest) & set(quiz) and len(rest) + len(quiz) == len(train.texts)
    assert 0 not in quiz
    assert not {train.texts[i] for i in quiz} & set(dev.texts)
    assert abs((y[quiz] == 1).mean() - (y == 1).mean()) < 0.1
    _rest2, quiz2 = data.carve_quiz(train, y, dev, 12, seed=3)
    assert np.array_equal(quiz, quiz2)


def test_csv_jsonl_parquet(tmp_path):
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"text": "good", "y": "pos"}, {"text": "bad", "y": "neg"}]
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "train.csv").write_text('text,y\n"good, really",pos\nbad,neg\n')
    (tmp_path / "c" / "dev.csv").write_text("text,y\nfine,pos\n")
    (tmp_path / "j").mkdir()
    for n in ("train", "dev"):
        (tmp_path / "j" / f"{n}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "p").mkdir()
    for n in ("train", "validation"):
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p" / f"{n}.parquet")
    s = schema(text_fields=["text"], label_field="y")
    for sub in "cjp":
        train, dev = data.load_source(str(tmp_path / sub), s)
        assert data.label_names(s, train) == ["neg", "pos"]
        assert len(dev.texts) >= 1
    train, _ = data.load_source(str(tmp_path / "c"), s)
    assert train.texts[0] == ("good, really",)


@pytest.mark.parametrize(
    ("case", "setup", "message"),
    [
        ("no train file", lambda d: (d / "train.tsv").unlink(), "no 'train' file"),
        ("empty file", lambda d: (d / "dev.tsv").write_text(""), "dev.tsv: the file is empty"),
        (
            "missing label column",
            lambda d: write_tsv(d, "train.tsv", [["x", "1"]], header=["sentence", "lbl"]),
            "train.tsv:2: no column 'label'",
        ),
        (
            "unseen dev label",
            lambda d: write_tsv(d, "dev.tsv", [["x", "1"], ["y", "7"]]),
            "dev.tsv:3: label '7' is not a train label",
        ),
        (
            "wrong field count",
            lambda d: (d / "dev.tsv").write_text("sentence\tlabel\nok\t1\nbad row\n"),
            "dev.tsv:3: expected 2 TSV fields",
        ),
        (
            "non-utf8",
            lambda d: (d / "train.tsv").write_bytes(b"sentence\tlabel\nok\t1\n\xff\xfe\t0\n"),
            "train.tsv:3: not UTF-8",
        ),
        ("empty text", lambda d: write_tsv(d, "train.tsv", [["ok", "1"], [" ", "0"]]), "train.tsv:3: empty text"),
        (
            "empty line",
            lambda d: (d / "train.tsv").write_text("sentence\tlabel\nok\t1\n\nno\t0\n"),
            "train.tsv:3: empty line",
        ),
    ],
)
def test_bad_input_names_file_and_line(small_data, case, setup, message):
    setup(small_data)
    s = schema(text_fields=["sentence"], label_field="label")

    def read():
        train, dev = data.load_source(str(small_data), s)
        data.encode_labels(dev, data.label_names(s, train), "train")

    with pytest.raises(DataError, match=message.replace("(", r"\(")):
        read()


def test_schema_requires_fields_without_preset():
    with pytest.raises(DataError, match="data.text_fields is required"):
        schema()
    with pytest.raises(DataError, match="data.columns"):
        schema(text_fields=["a"], label_field="b", header=False)


def test_collate_pads_each_side_to_its_longest_row():
    rows = [
        {"label": 1, "index": 0, "student_input_ids": [1, 2, 3], "teacher_input_ids": [5, 6]},
        {"label": 0, "index": 1, "student_input_ids": [4], "teacher_input_ids": [7, 8, 9, 10]},
    ]
    b = data.collate(rows, {"student": 0, "teacher": 1})
    assert b["student"]["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert b["student"]["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert b["teacher"]["input_ids"].tolist() == [[5, 6, 1, 1], [7, 8, 9, 10]]
    assert b["labels"].tolist() == [1, 0] and b["index"].tolist() == [0, 1]


def test_a_glue_preset_reads_parquet_exported_from_the_hub(tmp_path):
    """What docs/dvc.md tells users to put in data/raw from a hub id: splits saved as parquet, labels as ints."""
    import datasets

    sst2 = shared("sst2")
    schema = data.Schema.from_config(DataConfig(preset="glue-sst2"))
    for name in ("train", "dev"):
        split = data.read_split(sst2 / f"{name}.tsv", schema)
        rows = {"sentence": [t[0] for t in split.texts], "label": [int(y) for y in split.labels]}
        datasets.Dataset.from_dict(rows).to_parquet(str(tmp_path / f"{name}.parquet"))
    train, dev = data.load_source(str(tmp_path), schema)
    ref_train, ref_dev = data.load_source(str(sst2), schema)
    assert train.texts == ref_train.texts and train.labels == ref_train.labels and dev.labels == ref_dev.labels


def test_the_fingerprint_covers_exactly_the_files_prepare_reads(small_data):
    # one function decides which files a folder's data are, for reading and for the key alike
    (small_data / "dev.tsv").rename(small_data / "validation.tsv")  # the default stem 'dev' falls back to it
    cfg = DataConfig(text_fields=["sentence"], label_field="label")
    files = data.source_files(small_data, data.Schema.from_config(cfg))
    assert {k: p.name for k, p in files.items()} == {"train": "train.tsv", "dev": "validation.tsv"}
    assert set(data.source_fingerprint(cfg, str(small_data))) == {"train.tsv", "validation.tsv"}
    _, dev = data.load_source(str(small_data), data.Schema.from_config(cfg))
    assert len(dev.texts) == 12
    # a dev file named in the config has no fallback: reading and fingerprinting both refuse the folder
    named = DataConfig(text_fields=["sentence"], label_field="label", dev_file="heldout")
    with pytest.raises(DataError, match="heldout"):
        data.source_fingerprint(named, str(small_data))
    with pytest.raises(DataError, match="heldout"):
        data.load_source(str(small_data), data.Schema.from_config(named))


def test_calibration_split_never_meets_dev_quiz_train_or_transfer(tmp_path):
    """The rows the int8 guard and `ikd tune` judge on: labeled, carved from train, and no text in them is in dev,
    the quiz, the labeled train rows or the transfer rows (a user's transfer file repeating them included)."""
    import datasets

    from ikd.config import Config
    from ikd.steps.prepare_data import build

    folder = tmp_path / "data"
    pos = [f"{t} {i}" for i, t in enumerate(POS * 20)]
    neg = [f"{t} {i}" for i, t in enumerate(NEG * 20)]
    train = [[t, "1"] for t in pos] + [[t, "0"] for t in neg]
    train += [[pos[0], "1"], [neg[0], "0"]] * 3  # repeated texts: a copy must not stay behind in another split
    dev = [[t, "1"] for t in POS] + [[t, "0"] for t in NEG]
    write_tsv(folder, "train.tsv", [*train, dev[0]])  # a dev text in train too
    write_tsv(folder, "dev.tsv", dev)
    write_tsv(folder, "extra.tsv", [[t, ""] for t in [*pos[:40], POS[1], "new text", "new text"]])
    cfg = Config.load(
        Path(__file__).parents[2] / "configs" / "tiny.yaml",
        [
            "data.preset=null",
            "data.text_fields=[sentence]",
            "data.label_field=label",
            "data.max_train_rows=60",
            "data.max_dev_rows=null",
            "data.quiz_rows=12",
            "data.calib_rows=30",
            "data.transfer=rest",
            "data.transfer_file=extra.tsv",
        ],
    )
    out = tmp_path / "prep"
    metrics, _ = build(cfg, str(folder), out, "data")
    dd = datasets.load_from_disk(str(out / "data"))
    texts = {k: set(dd[k]["text_a"]) for k in dd}
    assert metrics["calib_rows"] == 30 and len(dd["calib"]) == 30
    assert sorted(set(dd["calib"]["label"])) == [0, 1]  # labeled, stratified
    for other in ("train", "quiz", "dev", "transfer"):
        assert not texts["calib"] & texts[other], other
    assert not texts["transfer"] & (texts["dev"] | texts["quiz"] | texts["train"])
    assert len(dd["transfer"]) == len(texts["transfer"])  # each transfer text once
    assert "new text" in texts["transfer"]
    again = tmp_path / "prep2"
    build(cfg, str(folder), again, "data")
    assert datasets.load_from_disk(str(again / "data"))["calib"]["text_a"] == dd["calib"]["text_a"]  # seeded


def test_augmentation_is_seeded_reproducible_and_never_a_held_out_text(tmp_path):
    from ikd.core.augment import augment, edit
    from ikd.core.sources import Split

    rows = Split(
        [("a b c d e f g h i j",), ("one two three four five",), ("tiny",)],
        ["1", "0", "1"],
        ["f:2", "f:3", "f:4"],
        [0, 1, 2],
    )
    a = augment(rows, 4, ["delete", "swap", "crop"], seed=3)
    b = augment(rows, 4, ["delete", "swap", "crop"], seed=3)
    c = augment(rows, 4, ["delete", "swap", "crop"], seed=4)
    assert a == b and a.texts != c.texts
    assert len(a.texts) <= 8 and all(t != ("tiny",) for t in a.texts)  # a one-word row has no variant
    assert all(o.split("+")[1] in ("delete", "swap", "crop") for o in a.origin) and set(a.labels) == {""}
    rng = np.random.default_rng(0)
    words = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"]
    assert sorted(edit(" ".join(words), "swap", rng).split()) == sorted(words)
    cropped = edit(" ".join(words), "crop", rng)
    assert cropped in " ".join(words) and 5 <= len(cropped.split()) <= 9
    deleted = edit(" ".join(words), "delete", rng).split()
    assert 0 < len(deleted) < 10 and all(w in words for w in deleted)

    # in prepare: variants of the labeled rows become transfer rows, the same ones on every run with the seed
    import datasets

    from ikd.config import Config
    from ikd.steps.prepare_data import build

    folder = tmp_path / "data"
    train = [[f"{t} {i} and more words here", "1"] for i, t in enumerate(POS * 5)]
    train += [[f"{t} {i} and more words here", "0"] for i, t in enumerate(NEG * 5)]
    write_tsv(folder, "train.tsv", train)
    write_tsv(folder, "dev.tsv", [[t, "1"] for t in POS] + [[t, "0"] for t in NEG])
    over = ["data.preset=null", "data.text_fields=[sentence]", "data.label_field=label", "data.max_dev_rows=null"]
    over += ["data.quiz_rows=6", "data.calib_rows=6", "data.augment=2"]
    cfg = Config.load(Path(__file__).parents[2] / "configs" / "tiny.yaml", over)
    outs = []
    for name in ("p1", "p2"):
        build(cfg, str(folder), tmp_path / name, "data")
        outs.append(datasets.load_from_disk(str(tmp_path / name / "data")))
    transfer = outs[0]["transfer"]
    assert 0 < len(transfer) <= 2 * len(outs[0]["train"]) and set(transfer["label"]) == {-1}
    assert transfer["text_a"] == outs[1]["transfer"]["text_a"]
    held = set(outs[0]["calib"]["text_a"]) | set(outs[0]["dev"]["text_a"]) | set(outs[0]["quiz"]["text_a"])
    assert not held & set(transfer["text_a"])


def test_glue_label_values_are_served_by_their_meaning():
    assert served_label_names("sst2", ["0", "1"]) == ["negative", "positive"]
    assert served_label_names("mrpc", ["0", "1"]) == ["not_equivalent", "equivalent"]
    assert served_label_names("cola", ["0", "1"]) == ["unacceptable", "acceptable"]
    assert served_label_names("mnli", ["0", "1", "2"]) == ["entailment", "neutral", "contradiction"]
    # values the task does not define (RTE's own TSV spells its labels out), or another task: kept as they are
    assert served_label_names("rte", ["entailment", "not_entailment"]) == ["entailment", "not_entailment"]
    assert served_label_names("sst2", ["0", "1", "2"]) == ["0", "1", "2"]
    assert served_label_names("custom", ["0", "1"]) == ["0", "1"]
