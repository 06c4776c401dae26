"""`ikd predict`: a file of texts through the exported tiny model, in batches of similar length, to JSONL or CSV.
Answers equal the server's predictor on the same rows, in the input's order; bad input is one clear error that
names the file, line and column, and an earlier output file survives it."""

import csv
import json

import numpy as np
import pytest
from serve_helpers import export_tiny

from ikd.serve.predictor import Predictor


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return export_tiny(tmp_path_factory) / "export"


TEXTS = [
    "a gorgeous , witty , seductive movie .",
    "bad",
    "the plot is nothing but boilerplate clichés from start to finish , and the script assumes that not only "
    "would subtlety be lost on the target audience , but that it 's also too stupid to realize they 're being "
    "had .",
    "",
    "it 's a charming and often affecting journey .",
    "unfunny and lame",
    "an , odd , \t tab",
]


def test_predictions_equal_the_servers_in_input_order_as_jsonl_and_csv(model_dir, tmp_path, cli):
    src = tmp_path / "texts.jsonl"
    src.write_text("".join(json.dumps({"id": i, "sentence": t}) + "\n" for i, t in enumerate(TEXTS)))
    out = tmp_path / "preds.jsonl"
    code, _, err = cli("predict", "--model-dir", model_dir, "--input", src, "--out", out, "--batch-size", "3")
    assert code == 0, err
    got = [json.loads(line) for line in out.read_text().splitlines()]
    predictor = Predictor.load(model_dir)
    want = [predictor.predict([(t,)])[0] for t in TEXTS]  # what the server answers, row by row
    assert [g["row"] for g in got] == list(range(len(TEXTS)))
    assert [g["label"] for g in got] == [w.label for w in want]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose([g["probabilities"][n] for n in predictor.labels], w.probabilities, atol=1e-5)
    # the same rows as a TSV with a header, written as CSV: the same answers
    tsv = tmp_path / "texts.tsv"
    with tsv.open("w", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(["sentence", "label"])
        w.writerows([[t, "0"] for t in TEXTS])
    out_csv = tmp_path / "preds.csv"
    code, _, err = cli("predict", "--model-dir", model_dir, "--input", tsv, "--out", out_csv)
    assert code == 0, err
    rows = list(csv.DictReader(out_csv.open()))
    assert [r["label"] for r in rows] == [w.label for w in want]
    assert set(rows[0]) == {"row", "label", *(f"p_{n}" for n in predictor.labels)}
    # no --out: JSONL on stdout
    code, stdout, _ = cli("predict", "--model-dir", model_dir, "--input", src)
    assert code == 0 and [json.loads(x)["label"] for x in stdout.splitlines()] == [w.label for w in want]


def test_bad_input_names_file_line_and_column_and_keeps_the_earlier_output(model_dir, tmp_path, cli):
    out = tmp_path / "preds.jsonl"
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"sentence": "fine"}) + "\n")
    assert cli("predict", "--model-dir", model_dir, "--input", good, "--out", out)[0] == 0
    before = out.read_text()
    cases = {
        "broken.jsonl": ('{"sentence": "ok"}\n{"sentence": \n', "broken.jsonl:2: not a JSON object"),
        "field.jsonl": ('{"text": "ok"}\n', "field.jsonl:1: no field 'sentence'"),
        "number.jsonl": ('{"sentence": 3}\n', "field 'sentence' is int, not text"),
        "cols.tsv": ("text\tlabel\nok\t1\n", "cols.tsv: no column 'sentence' (columns: text, label)"),
        "ragged.tsv": ("sentence\tlabel\nok\t1\nextra\t1\t2\n", "ragged.tsv:3: 3 fields, the header has 2"),
        "empty.jsonl": ("\n", "empty.jsonl: no rows"),
        "rows.txt": ("hello\n", "unknown file type '.txt'"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        code, _, err = cli("predict", "--model-dir", model_dir, "--input", tmp_path / name, "--out", out)
        assert code == 2 and message in err, (name, err)
        assert out.read_text() == before, name
    # a headerless file with --columns, and another text column named with --text-fields
    (tmp_path / "bare.tsv").write_text("1\tgood fun\n0\tdreadful\n")
    code, stdout, err = cli(
        "predict", "--model-dir", model_dir, "--input", tmp_path / "bare.tsv", "--columns", "label,review",
        "--text-fields", "review",
    )  # fmt: skip
    assert code == 0, err
    assert len(stdout.splitlines()) == 2
