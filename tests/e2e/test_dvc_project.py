"""The DVC front door, run the way a user runs it: a fresh repository holding the project's DVC files, SST-2 in
data/raw and configs/tiny.yaml as params.yaml. `dvc repro` runs every stage and then nothing, `dvc status` is clean,
experiments, metrics and plots work, `dvc push` / `dvc pull` restore every output in another clone, and the
outputs are those of `ikd run` on the same config."""

import json
import shutil

import pytest
from conftest import ROOT, run_tool, strip

pytest.importorskip("dvc")
pytest.importorskip("dvclive")
STAGES = ("prepare", "adapt", "distill", "evaluate", "export")
OUTS = ("data/raw", "data/prepared", "models/teacher", "models/student", "reports/evaluate", "models/onnx")
# the project files a clone holds that DVC reads (ikd/ because the stages depend on its code)
PROJECT = (
    "dvc.yaml",
    ".dvcignore",
    ".dvc/config",
    ".dvc/.gitignore",
    "data/raw.dvc",
    "data/.gitignore",
    "models/.gitignore",
    "reports/.gitignore",
    "ikd",
)


def tree(folder):
    """relative path -> bytes of every file under ``folder``."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def project(tmp_path, sst2):
    repo = tmp_path / "project"
    for item in PROJECT:
        src, dst = ROOT / item, repo / item
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dst)
    shutil.copy(ROOT / "configs" / "tiny.yaml", repo / "params.yaml")
    shutil.copytree(sst2, repo / "data" / "raw")
    run_tool("git", "init", "-q", cwd=repo)
    run_tool("dvc", "remote", "modify", "--local", "local", "url", tmp_path / "store", cwd=repo)
    run_tool("git", "add", "-A", cwd=repo)
    run_tool("git", "commit", "-q", "-m", "project with tiny params", cwd=repo)
    return repo


@pytest.mark.timeout(1500)
def test_repro_status_metrics_plots_experiments_push_pull(project, tmp_path, cli):
    first = run_tool("dvc", "repro", cwd=project)
    assert [s for s in STAGES if f"Running stage '{s}'" in first.stdout] == list(STAGES), first.stdout
    again = run_tool("dvc", "repro", cwd=project)
    assert "Running stage" not in again.stdout and "Data and pipelines are up to date." in again.stdout
    assert run_tool("dvc", "status", cwd=project).stdout.strip() == "Data and pipelines are up to date."
    run_tool("git", "add", "-A", cwd=project)
    run_tool("git", "commit", "-q", "-m", "dvc repro", cwd=project)
    assert run_tool("git", "status", "--porcelain", cwd=project).stdout == ""  # everything DVC wrote is committed

    # metrics: teacher and student on dev, from the evaluate stage's DVCLive summary
    shown = json.loads(run_tool("dvc", "metrics", "show", "--json", cwd=project).stdout)
    files = next(iter(shown.values()))["data"]
    ev = files["dvclive/evaluate/metrics.json"]["data"]
    report = json.loads((project / "reports" / "evaluate" / "metrics.json").read_text())
    assert ev["teacher"]["accuracy"] == report["teacher"]["accuracy"]
    assert ev["student"]["accuracy"] == report["student"]["accuracy"]
    assert files["dvclive/export/metrics.json"]["data"]["max_abs_diff"] < 1e-4
    # plots: training curves, dev metric per step and the confusion matrices, as HTML
    run_tool("dvc", "plots", "show", "-o", tmp_path / "plots", cwd=project)
    html = (tmp_path / "plots" / "index.html").read_text()
    for name in (
        "dvclive/distill/plots/metrics/train/loss.tsv",
        "dvclive/distill/plots/metrics/dev/accuracy.tsv",
        "dvclive/adapt/plots/metrics/train/loss.tsv",
        "dvclive/evaluate/plots/sklearn/confusion/student.json",
    ):
        assert name in html, name
    dev_curve = (project / "dvclive" / "distill" / "plots" / "metrics" / "dev" / "accuracy.tsv").read_text()
    history = json.loads((project / "models" / "student" / "history.json").read_text())
    assert [int(r.split("\t")[0]) for r in dev_curve.splitlines()[1:]] == [r["step"] for r in history["dev"]]

    # push, then pull into another clone: every output comes back byte for byte
    run_tool("dvc", "push", cwd=project)
    clone = tmp_path / "clone"
    run_tool("git", "clone", "-q", project, clone, cwd=tmp_path)
    run_tool("dvc", "remote", "modify", "--local", "local", "url", tmp_path / "store", cwd=clone)
    run_tool("dvc", "pull", cwd=clone)
    for out in OUTS:
        assert tree(clone / out) == tree(project / out), out
    assert run_tool("dvc", "status", cwd=clone).stdout.strip() == "Data and pipelines are up to date."

    # the same config through `ikd run`: the same step keys and the same figures
    code, _, err = cli(
        "run", "--params", project / "params.yaml", "--data", project / "data" / "raw", "--out", tmp_path / "cli"
    )
    assert code == 0, err
    folders = dict(
        zip(
            STAGES,
            ("data/prepared", "models/teacher", "models/student", "reports/evaluate", "models/onnx"),
            strict=True,
        )
    )
    for step, folder in folders.items():
        a, b = (json.loads((d / "step.json").read_text()) for d in (project / folder, tmp_path / "cli" / step))
        assert a["key"] == b["key"], step
        ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (project / folder, tmp_path / "cli" / step))
        assert strip(ma) == strip(mb), step
    lineage = json.loads((project / "models" / "onnx" / "step.json").read_text())["lineage"]
    assert lineage["data"]["dvc"]["tracked_by"] == "data/raw.dvc" and lineage["data"]["dvc"]["matches"] is True

    # experiments: the acceptance command, then one that changes the strategy
    same = run_tool("dvc", "exp", "run", "-S", "distill.strategy=kd", cwd=project)
    assert "Running stage" not in same.stdout  # tiny.yaml already distills with kd: nothing to redo
    exp = run_tool("dvc", "exp", "run", "-n", "try-ikd", "-S", "distill.strategy=ikd", cwd=project)
    assert [s for s in STAGES if f"Running stage '{s}'" in exp.stdout] == ["distill", "evaluate", "export"]
    curves = project / "dvclive" / "distill" / "plots" / "metrics" / "train"
    assert (curves / "quiz_loss.tsv").is_file()  # the teacher's objective in ikd
    table = run_tool("dvc", "exp", "show", "--csv", cwd=project).stdout
    row = next(line for line in table.splitlines() if line.startswith("try-ikd"))
    assert ",ikd," in row
