"""The CLI front door: `ikd run` and every step subcommand on tiny random models, and the bad-input contract."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, write_tsv

TINY = ROOT / "configs" / "tiny.yaml"
CUSTOM = [
    "--set",
    "data.preset=null",
    "--set",
    "data.text_fields=[sentence]",
    "--set",
    "data.label_field=label",
    "--set",
    "data.quiz_rows=4",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from ikd.cli import main

    shared = ROOT.parent / "shared" / "data" / "sst2"
    if not shared.is_dir():
        pytest.skip("../shared/data/sst2 not present")
    out = tmp_path_factory.mktemp("run")
    assert main(["run", "--params", str(TINY), "--data", str(shared), "--out", str(out)]) == 0
    return shared, out


def test_run_writes_every_step_and_the_metrics_contract(tiny_run):
    shared, out = tiny_run
    m = json.loads((out / "metrics.json").read_text())
    assert m["task"] == "sst2" and set(m["teacher"]) == {"accuracy"} and set(m["student"]) == {"accuracy"}
    assert 0.0 <= m["student"]["accuracy"] <= 1.0
    assert m["export"]["max_abs_diff"] <= 1e-4 and Path(m["export"]["path"]).is_file()
    for step in ("prepare", "adapt", "score", "distill", "evaluate", "export"):
        assert (out / step / "step.json").is_file() and (out / step / "config.yaml").is_file()
        assert (out / step / "metrics.json").is_file()
    meta = json.loads((out / "export" / "metadata.json").read_text())
    from ikd.core.models import sha256_file

    assert meta["sha256"] == sha256_file(out / "export" / "model.onnx")
    assert meta["label_names"] == ["0", "1"] and (out / "export" / "tokenizer.json").is_file()
    # the model folders name SST-2's classes as the server answers them, for the transformers ecosystem
    for step in ("adapt", "distill"):
        conf = json.loads((out / step / "model" / "config.json").read_text())
        assert conf["id2label"] == {"0": "negative", "1": "positive"} and conf["label2id"] == {
            "negative": 0,
            "positive": 1,
        }
    # the model cards (README.md, front matter parsed back) carry what each step recorded
    from ikd.steps.model_card import read_card

    dev = {s: json.loads((out / s / "metrics.json").read_text())["train"]["dev"] for s in ("adapt", "distill")}
    cards = {s: read_card(out / s / "model") for s in ("adapt", "distill")} | {"export": read_card(out / "export")}
    assert cards["adapt"]["teacher"]["dev"] == dev["adapt"] == cards["export"]["teacher"]["dev"]
    assert cards["distill"]["student"]["dev"] == dev["distill"] == cards["export"]["student"]["dev"]
    assert cards["export"]["onnx"]["files"] == meta["files"] and cards["export"]["onnx"]["served"] == "model.onnx"
    assert (
        f"| `model.onnx` | fp32 | {meta['files']['model.onnx']['dev']['accuracy']:.4f} |"
        in (out / "export" / "README.md").read_text()
    )
    report = (out / "evaluate" / "report.md").read_text()
    assert "| teacher (tiny-teacher) |" in report
    # the majority-class baseline beside the retention: train's most frequent label answered everywhere on dev
    from ikd.core.data import Prepared

    prep = Prepared.load(out / "prepare")
    counts = np.bincount(np.asarray(prep.splits["train"]["label"]))
    dev_y = np.asarray(prep.splits["dev"]["label"])
    assert m["majority"]["accuracy"] == pytest.approx(float(np.mean(dev_y == counts.argmax())))
    assert f"| majority class ('{counts.argmax()}' everywhere) | {m['majority']['accuracy']:.4f} |" in report
    assert "above the majority class" in report
    # the student folder in the ecosystem's own loader: pipeline() truncates as ikd did and scores what evaluate did
    from transformers import pipeline

    clf = pipeline("text-classification", model=str(out / "distill" / "model"), trust_remote_code=True)
    labels = ["negative", "positive"]  # config.json's id2label: what SST-2's 0 / 1 mean
    got = [labels.index(p["label"]) for p in clf(list(prep.splits["dev"]["text_a"]), batch_size=16, truncation=True)]
    assert float(np.mean(np.asarray(got) == dev_y)) == pytest.approx(m["student"]["accuracy"])
    assert (out / "score" / "scores" / "logits.npy").is_file()
    used = json.loads((out / "distill" / "teacher_scores.json").read_text())
    assert used["folder"] == str(out / "score" / "scores")  # ikd run hands the score step's folder to distill
    # the run's log: the command, one line per dev evaluation, the export's phases
    log = (out / "ikd.log").read_text()
    assert log.startswith("---- ") and f"ikd run --params {TINY} --data {shared}" in log.splitlines()[0]
    dev = json.loads((out / "distill" / "history.json").read_text())["dev"]
    assert len(dev) >= 1 and log.count("distill[kd]: step ") == len(dev)
    assert f"(epoch {dev[-1]['epoch']}) dev accuracy={dev[-1]['accuracy']:.4f}" in log
    assert "export: torch -> model.onnx" in log and "export: model.onnx matches PyTorch" in log


def test_run_and_evaluate_reports_draw_the_values_of_the_json_files(tiny_run):
    _, out = tiny_run
    read = lambda p: json.loads(p.read_text())  # noqa: E731
    ev, meta = read(out / "evaluate" / "metrics.json"), read(out / "export" / "metadata.json")
    for folder, pictures in (
        (out, ["curves-adapt", "curves-distill", "confusion", "tradeoff"]),
        (out / "evaluate", ["curves-adapt", "curves-distill", "confusion", "tradeoff"]),
    ):
        md = (folder / "report.md").read_text()
        links = re.findall(r"^!\[[^\]]*\]\(([^)]+)\)$", md, re.M)
        assert links == [f"plots/{p}.png" for p in pictures] and all((folder / x).is_file() for x in links)
        page = (folder / "report.html").read_text()
        assert page.count('src="data:image/png;base64,') == len(links) and "<script" not in page
        drawn = read(folder / "plots" / "plots.json")
        for step in ("adapt", "distill"):
            hist, s = read(out / step / "history.json"), drawn[f"curves-{step}"]["series"]
            assert s["loss"]["loss"] == [[r["step"], r["loss"]] for r in hist["train"]]
            assert s["lr"] == [[r["step"], r["lr"]] for r in hist["train"]]
            assert s["dev"]["accuracy"] == [[r[s["dev_x"]], r["accuracy"]] for r in hist["dev"]] and hist["dev"]
        conf = read(out / "evaluate" / "confusion.json")
        assert {k: drawn["confusion"]["series"][k] for k in ("teacher", "student")} == {
            k: conf[k] for k in ("teacher", "student")
        }
        points = {p["model"]: p for p in drawn["tradeoff"]["series"]["points"]}
        for role in ("teacher", "student"):
            p = points.pop(f"{role} (torch)")
            assert p["metric"] == ev[role]["accuracy"] and p["batched"] == ev[role]["sentences_per_second"]
        # the run's picture has every ONNX file the export wrote; evaluate's (before export) none
        want = {f"student {f['variant']} ({n})": f for n, f in meta["files"].items()} if folder == out else {}
        assert set(points) == set(want) and (folder != out or want)
        for name, f in want.items():
            assert points[name]["metric"] == f["dev"]["accuracy"]
            assert points[name]["batch_1"] == f["rows_per_second"]["batch_1"]
    assert all(f"| {name}" in (out / "report.md").read_text() for name in meta["files"])


def test_run_takes_live_like_the_step_commands(cli, monkeypatch, tmp_path, capsys):
    from ikd.cli import build_parser
    from ikd.steps import runner, table

    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    assert "--live DIR" in capsys.readouterr().out
    seen = {}

    def fake_step(cfg, name, given, folder, force, job, live):
        folder.parent.mkdir(parents=True, exist_ok=True)
        seen[name] = live
        return {"status": "skipped"}

    monkeypatch.setattr(runner, "run_step", fake_step)
    monkeypatch.setattr(runner, "summarize", lambda *a: {"task": "t", "teacher": {}, "student": {}, "export": {}})
    monkeypatch.setattr(runner.report, "run_report", lambda out, *a: out / "report.md")
    run = ["run", "--params", TINY, "--data", tmp_path, "--out", tmp_path / "run"]
    code, _, err = cli(*run, "--live", tmp_path / "live")
    assert code == 0, err
    assert seen == {name: tmp_path / "live" / name for name in table.NAMES}  # DIR/<step>, as dvc.yaml's stages
    assert cli(*run)[0] == 0 and set(seen.values()) == {None}


def test_rerun_skips_complete_steps_and_reruns_changed_ones(tiny_run, cli):
    shared, out = tiny_run
    code, _, err = cli("run", "--params", TINY, "--data", shared, "--out", out)
    assert code == 0 and err.count("up to date") == 6
    code, _, err = cli("run", "--params", TINY, "--data", shared, "--out", out, "--set", "export.atol=0.001")
    assert code == 0 and err.count("up to date") == 5 and "export: running" in err
    code, _, err = cli("run", "--params", TINY, "--data", shared, "--out", out, "--set", "distill.lr=0.002")
    assert "prepare: up to date" in err and "adapt: up to date" in err and "distill: running" in err
    assert "evaluate: running" in err and "export: running" in err


def test_each_step_is_its_own_subcommand(cli, small_data, tmp_path):
    p = ["--params", TINY, *CUSTOM]
    assert cli("prepare", *p, "--data", small_data, "--out", tmp_path / "prep")[0] == 0
    assert cli("adapt", *p, "--data", tmp_path / "prep", "--out", tmp_path / "teacher")[0] == 0
    code, _, err = cli(
        "distill", *p, "--data", tmp_path / "prep", "--teacher", tmp_path / "teacher", "--out", tmp_path / "student"
    )
    assert code == 0 and "distill[kd]: step " in err and " dev accuracy=" in err  # the dev line of each evaluation
    assert (
        cli(
            "evaluate",
            *p,
            "--data",
            tmp_path / "prep",
            "--teacher",
            tmp_path / "teacher",
            "--student",
            tmp_path / "student",
            "--out",
            tmp_path / "eval",
        )[0]
        == 0
    )
    assert (
        cli("export", *p, "--data", tmp_path / "prep", "--student", tmp_path / "student", "--out", tmp_path / "onnx")[0]
        == 0
    )
    assert (tmp_path / "onnx" / "model.onnx").is_file()
    # finetune needs no teacher; -q after the subcommand: no progress bar, no progress or dev lines
    code, _, err = cli(
        "distill", *p, "--set", "distill.strategy=finetune", "--data", tmp_path / "prep", "--out", tmp_path / "ft", "-q"
    )
    assert code == 0 and "distill[finetune]" not in err and "step/s" not in err and "wrote" not in err, err
    code, out, _ = cli("config", "--params", TINY, "--set", "distill.lr=0.01")
    assert code == 0 and "lr: 0.01" in out


def _break(kind):
    return {
        "missing label column": lambda d: write_tsv(d, "train.tsv", [["good", "1"], ["bad", "0"]], ["sentence", "y"]),
        "missing text column": lambda d: write_tsv(d, "dev.tsv", [["good", "1"]], ["text", "label"]),
        "dev label unseen in train": lambda d: write_tsv(d, "dev.tsv", [["good", "1"], ["meh", "2"]]),
        "empty file": lambda d: (d / "train.tsv").write_text(""),
        "no train file": lambda d: (d / "train.tsv").rename(d / "training_rows.txt"),
    }[kind]


BAD = [
    ("missing label column", [], "no column 'label'"),
    ("missing text column", [], "no column 'sentence'"),
    ("dev label unseen in train", [], "dev.tsv:3: label '2' is not a train label"),
    ("empty file", [], "train.tsv: the file is empty"),
    ("no train file", [], "no 'train' file"),
    (None, ["--set", "distill.temprature=3"], "unknown key 'distill.temprature' (did you mean 'distill.temperature'?)"),
    (
        None,
        ["--set", "student.init=pretrained", "--set", "student.name=nobody/no-such-model"],
        "model 'nobody/no-such-model' resolves nowhere",
    ),
    (None, ["--set", "distill.lr=-1"], "distill.lr: Input should be greater than 0"),
]


@pytest.mark.parametrize(("kind", "extra", "message"), BAD, ids=[b[2][:40] for b in BAD])
def test_bad_input_exit_2_one_line_outputs_intact(cli, small_data, tmp_path, kind, extra, message):
    out = tmp_path / "prep"
    code, _, err = cli("prepare", "--params", TINY, *CUSTOM, "--data", small_data, "--out", out)
    assert code == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    if kind:
        _break(kind)(small_data)
    code, _stdout, err = cli("prepare", "--params", TINY, *CUSTOM, *extra, "--data", small_data, "--out", out)
    lines = [ln for ln in err.splitlines() if ln.startswith("ikd: error")]
    assert code == 2 and len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "prep"]  # no temporary left behind


def test_missing_inputs_are_clear_errors(cli, tmp_path):
    code, _, err = cli("adapt", "--params", TINY, "--data", tmp_path / "nope", "--out", tmp_path / "o")
    assert code == 2 and "prepared data folder not found" in err
    code, _, err = cli("prepare", "--params", tmp_path / "missing.yaml", "--data", tmp_path, "--out", tmp_path / "o")
    assert code == 2 and "missing.yaml: file not found" in err
    code, _, err = cli("prepare", "--params", TINY, "--data", tmp_path / "nodir", "--out", tmp_path / "o")
    assert code == 2 and "no such data folder" in err
