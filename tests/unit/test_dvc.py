"""ikd.integrations.dvc and ikd.steps.lineage: DVC's md5 of a folder, how a folder is tracked, data from another
DVC repository, pushing outputs to a remote and pulling them back, and the lineage each step records."""

import json
import shutil

import pytest
import yaml
from conftest import ROOT, run_tool

from ikd.errors import DataError
from ikd.integrations import dvc
from ikd.steps import lineage

pytest.importorskip("dvc")
TINY = ROOT / "configs" / "tiny.yaml"


def test_folder_md5_is_what_dvc_add_records(dvc_registry):
    repo, path, _ = dvc_registry
    recorded = yaml.safe_load((repo / "data" / "reviews.dvc").read_text())["outs"][0]["md5"]
    assert dvc.folder_md5(repo / path) == recorded and recorded.endswith(".dir")


def test_tracking_names_the_dvc_file_and_notices_changes(dvc_registry, tmp_path, small_data):
    repo, path, _ = dvc_registry
    info = dvc.tracking(repo / path)
    assert info["tracked_by"] == "data/reviews.dvc" and info["matches"] is True
    with open(repo / path / "train.tsv", "a") as f:
        f.write("one more\t1\n")
    changed = dvc.tracking(repo / path)
    assert changed["matches"] is False and changed["md5"] != changed["recorded_md5"] == info["md5"]
    assert dvc.tracking(small_data) is None  # not inside a DVC repository


def test_fetch_and_resolve_from_another_repository(dvc_registry, tmp_path):
    repo, path, _ = dvc_registry
    record = dvc.fetch(str(repo), path, "v1", tmp_path / "got")
    assert sorted(p.name for p in (tmp_path / "got").iterdir()) == ["dev.tsv", "train.tsv"]
    head = run_tool("git", "rev-parse", "HEAD", cwd=repo).stdout.strip()
    assert (
        record
        == {"repo": str(repo), "rev": "v1", "commit": head, "path": path, "md5": dvc.folder_md5(repo / path)}
        == dvc.resolve(str(repo), path, "v1")
    )
    with pytest.raises(DataError, match="no path 'data/nope'"):
        dvc.resolve(str(repo), "data/nope", "v1")
    with pytest.raises(DataError, match="at v9: cannot open it .*unknown Git revision"):
        dvc.resolve(str(repo), path, "v9")
    with pytest.raises(DataError, match=f"DVC repository {tmp_path / 'nowhere'}"):
        dvc.resolve(str(tmp_path / "nowhere"), path)


def test_push_writes_dvc_files_that_pull_the_folders_back(tmp_path, small_data):
    remote = tmp_path / "store"
    pushed = dvc.push({"student": small_data}, str(remote), tmp_path / "dvc-files")
    assert pushed["student"]["nfiles"] == 2 and pushed["student"]["md5"] == dvc.folder_md5(small_data)
    other = tmp_path / "other"
    other.mkdir()
    run_tool("dvc", "init", "-q", "--no-scm", cwd=other)
    run_tool("dvc", "remote", "add", "-q", "-d", "store", remote, cwd=other)
    shutil.copy(tmp_path / "dvc-files" / "student.dvc", other / "student.dvc")
    run_tool("dvc", "pull", "-q", cwd=other)
    for f in ("train.tsv", "dev.tsv"):
        assert (other / "student" / f).read_bytes() == (small_data / f).read_bytes()
    with pytest.raises(DataError, match="nothing to push as 'x'"):
        dvc.push({"x": tmp_path / "missing"}, str(remote), tmp_path / "dvc-files")


def test_prepare_from_a_dvc_repository_records_where_the_data_came_from(cli, dvc_registry, tmp_path):
    repo, path, _ = dvc_registry
    out, live = tmp_path / "run", tmp_path / "dvclive"
    code, _, err = cli(
        "run", "--params", TINY, "--data", path, "--dvc-repo", repo, "--dvc-rev", "v1", "--out", out, "--live", live
    )
    assert code == 0, err
    # --live DIR: each step logs into DIR/<step> as `ikd <step> --live DIR/<step>` does (dvc.yaml's layout)
    for name in ("prepare", "adapt", "distill", "evaluate", "export"):
        assert json.loads((live / name / "metrics.json").read_text()), name
    assert (live / "distill" / "plots" / "metrics" / "train" / "loss.tsv").is_file()
    step = json.loads((out / "prepare" / "step.json").read_text())
    src = step["lineage"]["data"]["dvc_source"]
    assert src["repo"] == str(repo) and src["rev"] == "v1" and src["md5"] == dvc.folder_md5(repo / path)
    assert json.loads((out / "prepare" / "schema.json").read_text())["source"] == f"{repo}:{path}@{src['commit']}"
    # the last step carries the data's lineage and the code's
    last = json.loads((out / "export" / "step.json").read_text())["lineage"]
    assert last["data"] == step["lineage"]["data"] and last["code"]["ikd_version"]
    assert set(last["models"]) == {"teacher", "student"}
    # the key of a DVC source is its md5: asking again skips every step
    code, _, err = cli("run", "--params", TINY, "--data", path, "--dvc-repo", repo, "--dvc-rev", "v1", "--out", out)
    steps = json.loads((out / "metrics.json").read_text())["steps"]
    assert code == 0 and {s["status"] for s in steps.values()} == {"skipped"}, err
    code, _, err = cli("prepare", "--params", TINY, "--data", "data/none", "--dvc-repo", repo, "--out", tmp_path / "p")
    assert code == 2 and "no path 'data/none'" in err and not (tmp_path / "p").exists()


def test_lineage_of_a_local_dvc_tracked_folder(dvc_registry):
    repo, path, _ = dvc_registry
    lin = lineage.local_data(repo / path, {"train.tsv": "x"})
    assert lin["dvc"]["tracked_by"] == "data/reviews.dvc" and lin["dvc"]["matches"] is True
    code = lineage.code()
    assert code["ikd_version"] and (code["git_revision"] is None or len(code["git_revision"]) == 40)
