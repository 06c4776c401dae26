"""Teacher scores as an artifact of their own: shared across output folders and strategies, keyed by teacher,
data and outputs, sharded and merged, and refused when they are of another teacher."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

TINY = ROOT / "configs" / "tiny.yaml"
TRANSFER = ["--set", "data.transfer=rest", "--set", "data.max_transfer_rows=40"]


def cache_folders() -> list[Path]:
    from ikd.steps import scoring

    root = scoring.cache_root()
    return sorted(p for p in root.iterdir() if (p / "scores.json").is_file()) if root.is_dir() else []


@pytest.fixture
def base(tmp_path, sst2, cli, monkeypatch):
    monkeypatch.setenv("IKD_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    for step, extra in (("prepare", ["--data", sst2]), ("adapt", ["--data", out / "prepare"])):
        code, _, err = cli(step, "--params", TINY, *TRANSFER, *extra, "--out", out / step)
        assert code == 0, err
    return out


def test_scores_are_reused_across_output_folders_and_strategies(base, cli, capsys):
    common = ["--params", TINY, *TRANSFER, "--data", base / "prepare", "--teacher", base / "adapt"]
    code, _, err = cli("distill", *common, "--out", base / "kd-a")
    assert code == 0, err
    assert len(cache_folders()) == 1
    first = json.loads((base / "kd-a" / "teacher_scores.json").read_text())
    prepared = json.loads((base / "prepare" / "metrics.json").read_text())
    assert first["of"]["rows"] == [0, prepared["train_rows"] + prepared["transfer_rows"]]
    scored = cache_folders()[0] / "logits.npy"
    mtime = scored.stat().st_mtime_ns
    # another output folder, another seed, another student learning rate: the teacher's outputs are those of the
    # first run, read from the shared cache
    code, _, err = cli("distill", *common, "--set", "distill.lr=0.01", "--set", "seed=5", "--out", base / "kd-b")
    assert code == 0, err
    assert "reusing" in err and scored.stat().st_mtime_ns == mtime and len(cache_folders()) == 1
    second = json.loads((base / "kd-b" / "teacher_scores.json").read_text())
    assert second["digest"] == first["digest"]
    code, _, err = cli("distill", *common, "--set", "distill.strategy=finetune", "--out", base / "ft")
    assert code == 0 and not (base / "ft" / "teacher_scores.json").exists()  # no teacher: nothing scored


def test_scores_are_recomputed_when_teacher_or_data_change(base, cli, sst2):
    common = ["--params", TINY, *TRANSFER]
    code, _, err = cli(
        "distill", *common, "--data", base / "prepare", "--teacher", base / "adapt", "--out", base / "d1"
    )
    assert code == 0, err
    assert len(cache_folders()) == 1
    # another teacher (adapted with another learning rate): new scores
    code, _, err = cli(
        "adapt", *common, "--set", "adapt.lr=0.002", "--data", base / "prepare", "--out", base / "adapt2"
    )
    assert code == 0, err
    code, _, err = cli(
        "distill", *common, "--data", base / "prepare", "--teacher", base / "adapt2", "--out", base / "d2"
    )
    assert code == 0, err
    assert len(cache_folders()) == 2
    # other data (more transfer rows), same teacher folder: new scores again
    more = ["--params", TINY, "--set", "data.transfer=rest", "--set", "data.max_transfer_rows=60"]
    code, _, err = cli("prepare", *more, "--data", sst2, "--out", base / "prep2")
    assert code == 0, err
    code, _, err = cli("distill", *more, "--data", base / "prep2", "--teacher", base / "adapt", "--out", base / "d3")
    assert code == 0, err
    folders = cache_folders()
    assert len(folders) == 3
    rows = sorted(json.loads((f / "scores.json").read_text())["rows"] for f in folders)
    assert rows[-1] == rows[0] + 20


def test_sharded_scores_merge_into_the_unsharded_ones(base, cli, monkeypatch, tmp_path):
    common = ["--params", TINY, *TRANSFER, "--data", base / "prepare", "--teacher", base / "adapt"]
    code, _, err = cli("score", *common, "--out", base / "whole")
    assert code == 0, err
    monkeypatch.setenv("IKD_CACHE", str(tmp_path / "cache-shards"))  # shards are really scored, not copied
    for i in range(3):
        code, _, err = cli("score", *common, "--shard", f"{i}/3", "--out", base / f"part{i}")
        assert code == 0, err
    code, _, err = cli("score", *common, "--merge", *(base / f"part{i}" for i in (2, 0, 1)), "--out", base / "merged")
    assert code == 0, err
    whole = np.load(base / "whole" / "scores" / "logits.npy")
    merged = np.load(base / "merged" / "scores" / "logits.npy")
    assert merged.shape == whole.shape and np.allclose(merged, whole, atol=1e-5)
    ranges = [json.loads((base / f"part{i}" / "metrics.json").read_text())["row_range"] for i in range(3)]
    assert ranges[0][0] == 0 and ranges[0][1] == ranges[1][0] and ranges[2][1] == len(whole)
    code, _, err = cli("distill", *common, "--scores", base / "merged", "--out", base / "d")
    assert code == 0, err
    used = json.loads((base / "d" / "teacher_scores.json").read_text())
    assert used["folder"] == str(base / "merged" / "scores")
    # a missing shard is refused by name
    code, _, err = cli("score", *common, "--merge", base / "part0", base / "part2", "--out", base / "gap")
    assert code == 2 and "starts at row" in err and not (base / "gap").exists()
    code, _, err = cli("score", *common, "--shard", "3/3", "--out", base / "bad")
    assert code == 2 and "--shard" in err


def test_scores_of_another_teacher_are_refused(base, cli):
    common = ["--params", TINY, *TRANSFER, "--data", base / "prepare"]
    code, _, err = cli("adapt", *common, "--set", "adapt.lr=0.002", "--out", base / "adapt2")
    assert code == 0, err
    code, _, err = cli("score", *common, "--teacher", base / "adapt2", "--out", base / "other")
    assert code == 0, err
    code, _, err = cli("distill", *common, "--teacher", base / "adapt", "--scores", base / "other", "--out", base / "d")
    assert code == 2 and "teacher scores of another teacher" in err and "Traceback" not in err
    assert not (base / "d").exists()
