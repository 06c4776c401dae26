"""`ikd tune` end to end on tiny random models and a small data folder: 3 trials write a best-params.yaml that
`ikd config` and `ikd run` accept, with values inside the space; the objective is the calibration split (dev is
never read); a re-run adds trials to the same study; bad spaces and failing trials are errors, not crashes; with
student.layers in the space the latency frontier and --min-quality choose the student."""

import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, write_tsv
from katib_schema import problems

from ikd.config import Config

TINY = ROOT / "configs" / "tiny.yaml"
POS = ["a fine film", "great acting", "a joy to watch", "wonderful and moving", "smart , funny", "loved it"]
NEG = ["a dull mess", "boring", "badly written", "i hated it", "a waste of time", "tedious and flat"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """240 train rows (so that the calibration split has 44), 12 dev rows."""
    folder = tmp_path_factory.mktemp("tune-data")
    write_tsv(
        folder,
        "train.tsv",
        [[f"{t} {i}", "1"] for i in range(20) for t in POS] + [[f"{t} {i}", "0"] for i in range(20) for t in NEG],
    )
    write_tsv(folder, "dev.tsv", [[t, "1"] for t in POS] + [[t, "0"] for t in NEG])
    return folder


@pytest.fixture(scope="module")
def tuned(data, tmp_path_factory):
    from ikd.cli import main

    out = tmp_path_factory.mktemp("tune") / "out"
    assert main(["tune", "--params", str(TINY), "--data", str(data), "--trials", "3", "--out", str(out)]) == 0
    return out


def trials(out):
    return json.loads((out / "trials.json").read_text())


def test_three_trials_write_a_best_config_that_ikd_accepts(tuned, cli):
    t = trials(tuned)
    assert [r["trial"] for r in t["trials"]] == [0, 1, 2] and {r["state"] for r in t["trials"]} == {"complete"}
    best = Config.load(tuned / "best-params.yaml")
    code, printed, err = cli("config", "--params", tuned / "best-params.yaml")
    assert code == 0, err
    assert Config.from_text(printed) == best
    [chosen] = [r for r in t["trials"] if r["value"] == max(r["value"] for r in t["trials"])][:1]
    for key, spec in t["space"].items():
        section, name = key.split(".")
        value = getattr(getattr(best, section), name)
        assert spec["low"] <= value <= spec["high"], key
        assert value == chosen["values"][key]
    # only the searched keys differ from the input config
    base = Config.load(TINY).to_dict()
    diff = {
        f"{s}.{k}" for s in base if isinstance(base[s], dict) for k in base[s] if base[s][k] != best.to_dict()[s][k]
    }
    assert diff <= set(t["space"])
    table = (tuned / "trials.md").read_text()
    assert "| trial | overrides | calib accuracy | wall s | state |" in table and table.count("| complete |") == 3
    assert problems(yaml.safe_load((tuned / "katib-experiment.yaml").read_text())) == []
    assert Config.load(tuned / "base-params.yaml") == Config.load(TINY)


def test_prepare_and_adapt_are_made_once_and_teacher_outputs_shared(tuned):
    for step in ("prepare", "adapt"):
        assert json.loads((tuned / step / "step.json").read_text())["step"] == step
    used = json.loads((tuned / "trial" / "teacher_scores.json").read_text())  # the shared cache's folder
    assert Path(used["folder"]).name == used["digest"] and (Path(used["folder"]) / "logits.npy").is_file()
    assert json.loads((tuned / "trial" / "metrics.json").read_text())["calib"]["rows"] == 44


def test_the_objective_reads_calib_never_dev_and_a_rerun_adds_to_the_study(tuned, data, tmp_path, monkeypatch, cli):
    from ikd.core.data import Prepared
    from ikd.steps import fit, scoring

    out = tmp_path / "out"
    shutil.copytree(tuned, out)
    shutil.rmtree(out / "trial")  # the teacher outputs in the shared cache are what the new trials reuse
    scored = []
    real = fit.split_metrics

    def split_metrics(model, prep, side, device, split, batch_size=64):
        scored.append((split, len(prep.splits[split])))
        return real(model, prep, side, device, split, batch_size)

    def dev_metrics(*args, **kwargs):
        raise AssertionError("dev was read")

    monkeypatch.setattr(fit, "split_metrics", split_metrics)
    monkeypatch.setattr(fit, "dev_metrics", dev_metrics)
    scorings = []
    real_score = scoring.score

    def score(*args, **kwargs):
        scorings.append(args)
        return real_score(*args, **kwargs)

    monkeypatch.setattr(scoring, "score", score)
    code, printed, err = cli("tune", "--params", TINY, "--data", data, "--trials", "2", "--out", out)
    assert code == 0, err
    assert "prepare: up to date" in err and "adapt: up to date" in err
    assert not scorings  # the teacher was scored once, by the first run, into the shared cache
    calib = len(Prepared.load(out / "prepare").splits["calib"])
    assert scored and set(scored) == {("calib", calib)}
    t = trials(out)
    assert t["study"] == trials(tuned)["study"] == json.loads(printed)["study"]
    assert [r["trial"] for r in t["trials"]] == [0, 1, 2, 3, 4] and t["calib_rows"] == calib
    assert all(r["calib"]["rows"] == calib for r in t["trials"])
    assert "3 trials so far" in err and err.count("tune: trial ") == 2 and "best " in err


def test_a_bad_space_key_is_an_error_naming_it(tmp_path, data, cli):
    space = tmp_path / "space.yaml"
    space.write_text(
        "distill.alpha: {type: float, low: 0, high: 1}\ndistill.temprature: {type: float, low: 1, high: 4}\n"
    )
    code, _, err = cli(
        "tune", "--params", TINY, "--data", data, "--trials", "1", "--out", tmp_path / "o", "--space", space
    )
    assert code == 2 and "Traceback" not in err
    assert f"{space}: line 2: unknown key 'distill.temprature' (did you mean 'distill.temperature'?)" in err
    assert not (tmp_path / "o" / "prepare").exists()  # checked before anything runs


def test_trials_that_cannot_run_fail_one_by_one_and_the_command_says_so(tuned, tmp_path, cli):
    out = tmp_path / "out"
    out.mkdir()
    shutil.copytree(tuned / "adapt", out / "adapt")
    space = tmp_path / "space.yaml"
    space.write_text("student.layers: {type: int, low: 2, high: 3}\n")  # the tiny student has 1 layer
    code, _, err = cli(
        "tune", "--params", TINY, "--data", tuned / "prepare", "--trials", "2", "--out", out, "--space", space
    )
    assert code == 2 and "no trial finished" in err and "Traceback" not in err
    assert "adapt: up to date" in err and "is prepared data" in err
    t = trials(out)
    assert [r["state"] for r in t["trials"]] == ["fail", "fail"]
    assert all("exceeds the model's 1 layers" in r["error"] for r in t["trials"])
    assert "| fail: " in (out / "trials.md").read_text()


def test_student_layers_give_a_latency_frontier_and_min_quality_picks_the_fastest(tuned, tmp_path, cli):
    out = tmp_path / "out"
    out.mkdir()
    shutil.copytree(tuned / "adapt", out / "adapt")
    space = tmp_path / "space.yaml"
    space.write_text("student.layers: {type: categorical, choices: [1, 4]}\ndistill.lr: 0.001\n")
    code, printed, err = cli(
        "tune",
        "--params",
        TINY,
        "--data",
        tuned / "prepare",
        "--trials",
        "3",
        "--out",
        out,
        "--space",
        space,
        "--set",
        "student.arch.num_hidden_layers=4",
        "--min-quality",
        "0",
    )
    assert code == 0, err
    t = trials(out)
    done = [r for r in t["trials"] if r["state"] == "complete"]
    assert done and all(
        r["latency"]["ms_per_sentence"] > 0 and r["latency"]["layers"] == r["values"]["student.layers"] for r in done
    )
    front = json.loads((out / "frontier.json").read_text())["frontier"]
    assert front and front == sorted(front, key=lambda r: r["latency"]["ms_per_sentence"])
    fastest = min(done, key=lambda r: r["latency"]["ms_per_sentence"])
    summary = json.loads(printed)
    assert summary["chosen"]["trial"] == fastest["trial"] and "fastest" in summary["why"]
    best = Config.load(out / "best-params.yaml")
    assert best.student.layers == fastest["values"]["student.layers"] and best.distill.lr == 0.001
    assert "| trial | layers | parameters |" in (out / "frontier.md").read_text()


def test_a_katib_trial_runs_here_and_prints_the_metric_its_collector_reads(tuned, tmp_path, cli):
    """The Experiment's trial command, with the volume replaced by the tune folder and each parameter at its lower
    bound, is an `ikd distill` whose stdout holds the objective metric in the collector's format."""
    import re

    exp = yaml.safe_load((tuned / "katib-experiment.yaml").read_text())
    template = exp["spec"]["trialTemplate"]
    [c] = template["trialSpec"]["spec"]["template"]["spec"]["containers"]
    params = {p["name"]: p["feasibleSpace"] for p in exp["spec"]["parameters"]}
    values = {"trialName": "trial-a"}
    for tp in template["trialParameters"][1:]:
        values[tp["name"]] = params[tp["reference"]].get("min") or params[tp["reference"]]["list"][0]
    workspace = f"/workspace/{exp['metadata']['name']}"
    cmd = [re.sub(r"\$\{trialParameters\.([^}]+)\}", lambda m: values[m.group(1)], a) for a in c["command"]]
    cmd = [a.replace(f"{workspace}/trials", str(tmp_path)).replace(workspace, str(tuned)) for a in cmd]
    code, printed, err = cli(*cmd[1:])
    assert code == 0, err
    [fmt] = exp["spec"]["metricsCollectorSpec"]["source"]["filter"]["metricsFormat"]
    found = dict(re.findall(fmt, printed))
    calib = json.loads((tmp_path / "trial-a" / "metrics.json").read_text())["calib"]
    assert float(found[exp["spec"]["objective"]["objectiveMetricName"]]) == pytest.approx(calib["accuracy"], abs=1e-6)
    assert Config.load(tmp_path / "trial-a" / "config.yaml").distill.temperature == float(values["distill-temperature"])
