"""The Kubeflow front door: `ikd pipeline run` (= `ikd-pipeline run`) runs the compiled DAG offline with kfp.local
and leaves the same step outputs and metrics as `ikd run` on the same config and data."""

import json

import pytest
from conftest import ROOT, strip

TINY = ROOT / "configs" / "tiny.yaml"


def files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.mark.timeout(900)
def test_local_pipeline_matches_ikd_run(cli, sst2, tmp_path):
    code, out, err = cli("pipeline", "run", "--params", TINY, "--data", sst2, "--out", tmp_path / "kfp")
    assert code == 0, err
    local = json.loads(out)
    code, out, err = cli("run", "--params", TINY, "--data", sst2, "--out", tmp_path / "cli")
    assert code == 0, err
    ref = json.loads(out)
    assert strip(local) == strip(ref)
    for step in ("prepare", "adapt", "distill", "evaluate", "export"):
        a, b = tmp_path / "kfp" / step, tmp_path / "cli" / step
        assert a.is_symlink() and (a / "step.json").is_file()
        assert files(a) == files(b), step
        ma, mb = (json.loads((x / "metrics.json").read_text()) for x in (a, b))
        assert strip(ma) == strip(mb), step
        ka, kb = (json.loads((x / "step.json").read_text())["key"] for x in (a, b))
        assert ka == kb, step  # same config sections, same inputs, same code: the same result key
    # the KFP Metrics / ClassificationMetrics artifacts of evaluate hold the figures of its metrics.json
    run_dir = (tmp_path / "kfp" / "evaluate").resolve().parent
    ev = json.loads((tmp_path / "kfp" / "evaluate" / "metrics.json").read_text())
    arts = json.loads((run_dir / "executor_output.json").read_text())["artifacts"]
    logged = arts["metrics"]["artifacts"][0]["metadata"]
    assert logged["student.accuracy"] == ev["student"]["accuracy"] and logged["dev_rows"] == ev["dev_rows"]
    rows = arts["confusion"]["artifacts"][0]["metadata"]["confusionMatrix"]["rows"]
    conf = json.loads((tmp_path / "kfp" / "evaluate" / "confusion.json").read_text())
    assert [r["row"] for r in rows] == conf["student"]
    assert (run_dir / "report").read_text() == (tmp_path / "kfp" / "evaluate" / "report.md").read_text()
    assert (run_dir / "report_html").read_text() == (tmp_path / "kfp" / "evaluate" / "report.html").read_text()
    # the promote task after export: nothing served yet, so the first model promotes; its decision is a JSON file
    # in the decision artifact, a Markdown artifact and Metrics
    decision = json.loads((tmp_path / "kfp" / "promote" / "decision.json").read_text())
    assert decision["decision"] == "promote" and decision["current"] is None and decision["split"] == "calib"
    arts = json.loads((run_dir.parent / "promote" / "executor_output.json").read_text())["artifacts"]
    assert arts["metrics"]["artifacts"][0]["metadata"]["promoted"] == 1.0
    assert (run_dir.parent / "promote" / "report").read_text().startswith("# Promotion: promote")
    # a failing task is one clear error (exit 2) and the earlier good run stays as it was
    before = (tmp_path / "kfp" / "metrics.json").read_text()
    code, out, err = cli("pipeline", "run", "--params", TINY, "--data", tmp_path / "missing", "--out", tmp_path / "kfp")
    assert code == 2 and "Inner task failed: 'prepare'" in err and "\x1b[" not in err.splitlines()[-1]
    assert (tmp_path / "kfp" / "metrics.json").read_text() == before and (tmp_path / "kfp" / "export").is_dir()


@pytest.mark.timeout(900)
def test_local_pipeline_reads_a_dvc_source_and_pushes_the_models(cli, dvc_registry, tmp_path):
    from conftest import run_tool

    repo, path, _ = dvc_registry
    store = tmp_path / "model-store"
    code, _, err = cli(
        "pipeline",
        "run",
        "--params",
        TINY,
        "--data",
        path,
        "--dvc-repo",
        repo,
        "--dvc-rev",
        "v1",
        "--dvc-remote",
        store,
        "--out",
        tmp_path / "kfp",
        "--set",
        "promote.latency_budget_ms=0.000001",  # no model answers that fast: the gate refuses, the run succeeds
    )
    assert code == 0, err
    decision = json.loads((tmp_path / "kfp" / "promote" / "decision.json").read_text())
    assert decision["decision"] == "refuse" and decision["reasons"][0].startswith("refused: new p50")
    run_dir = (tmp_path / "kfp" / "prepare").resolve().parents[1]
    # prepare's Dataset artifact carries the data's lineage: repository, revision, commit, DVC md5
    meta = json.loads((run_dir / "prepare" / "executor_output.json").read_text())["artifacts"]["data"]
    src = meta["artifacts"][0]["metadata"]["lineage"]["data"]["dvc_source"]
    head = run_tool("git", "rev-parse", "HEAD", cwd=repo).stdout.strip()
    assert (src["repo"], src["rev"], src["commit"], src["path"]) == (str(repo), "v1", head, path)
    # the same source through `ikd run`: the same step keys
    code, _, err = cli(
        "run", "--params", TINY, "--data", path, "--dvc-repo", repo, "--dvc-rev", "v1", "--out", tmp_path / "cli"
    )
    assert code == 0, err
    for step in ("prepare", "adapt", "distill", "evaluate", "export"):
        ka, kb = (json.loads((x / step / "step.json").read_text())["key"] for x in (tmp_path / "kfp", tmp_path / "cli"))
        assert ka == kb, step
    # the push task left .dvc files that pull teacher, student and ONNX model back from the remote
    dvc_files = next(run_dir.rglob("push/dvc_files"))
    assert sorted(p.name for p in dvc_files.iterdir()) == ["onnx.dvc", "student.dvc", "teacher.dvc"]
    other = tmp_path / "consumer"
    other.mkdir()
    run_tool("dvc", "init", "-q", "--no-scm", cwd=other)
    run_tool("dvc", "remote", "add", "-q", "-d", "store", store, cwd=other)
    for f in dvc_files.iterdir():
        (other / f.name).write_text(f.read_text())
    run_tool("dvc", "pull", "-q", cwd=other)
    for name, step in (("teacher", "adapt"), ("student", "distill"), ("onnx", "export")):
        assert files(other / name) == files(tmp_path / "kfp" / step), name
        assert (other / name / "step.json").read_bytes() == (tmp_path / "kfp" / step / "step.json").read_bytes()
