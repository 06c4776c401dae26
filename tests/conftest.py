"""Shared fixtures: tiny config, small data folders, a CLI runner. No test touches the network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(autouse=True, scope="session")
def _cache(tmp_path_factory):
    # one ikd cache for the session (unpacked model packs, sha256 stamps, teacher scores), never the user's home;
    # session-scoped so that module-scoped fixtures (which run before function-scoped ones) see it too
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IKD_CACHE", str(tmp_path_factory.getbasetemp() / "ikd-cache"))
        yield


@pytest.fixture
def tiny_cfg():
    from ikd.config import Config

    return Config.load(ROOT / "configs" / "tiny.yaml")


def shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} not present (development layout: ../shared/data beside the repo)")
    return path


@pytest.fixture
def sst2() -> Path:
    return shared("sst2")


def write_tsv(folder: Path, name: str, rows: list[list[str]], header: list[str] | None = ("sentence", "label")):
    folder.mkdir(parents=True, exist_ok=True)
    lines = (["\t".join(header)] if header else []) + ["\t".join(r) for r in rows]
    (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder / name


POS = ["a fine film", "great acting", "a joy to watch", "wonderful and moving", "smart , funny", "loved it"]
NEG = ["a dull mess", "boring", "badly written", "i hated it", "a waste of time", "tedious and flat"]


@pytest.fixture
def small_data(tmp_path) -> Path:
    """A small valid SST-2-like folder: 48 train rows, 12 dev rows."""
    folder = tmp_path / "data"
    train = [[f"{t} {i}", "1"] for i, t in enumerate(POS * 4)] + [[f"{t} {i}", "0"] for i, t in enumerate(NEG * 4)]
    dev = [[t, "1"] for t in POS] + [[t, "0"] for t in NEG]
    write_tsv(folder, "train.tsv", train)
    write_tsv(folder, "dev.tsv", dev)
    return folder


#: Figures that measure the machine or the moment, not the result: left out when two runs are compared.
VOLATILE = {
    "wall_seconds",
    "step_time_ms",
    "samples_per_second",
    "peak_memory_bytes",
    "sentences_per_second",
    "latency_ms_batch1",
    "speedup",
    "rows_per_second",
    "seconds",
    "eval_seconds",
    "finished_at",
    "path",
    "size_bytes",
}


def strip(d):
    """``d`` without its :data:`VOLATILE` keys, at any depth."""
    return {k: strip(v) for k, v in d.items() if k not in VOLATILE} if isinstance(d, dict) else d


@pytest.fixture
def cli(capsys):
    """Run `ikd ARGS...` in-process. Returns (exit code, stdout, stderr)."""
    from ikd.cli import main

    def run(*args: str):
        code = main([str(a) for a in args])
        cap = capsys.readouterr()
        return code, cap.out, cap.err

    return run


# ---- DVC ---------------------------------------------------------------------------------------------------
BIN = Path(__import__("sys").executable).parent


def run_tool(*args, cwd: Path, check: bool = True):
    """Run a command (``dvc``, ``git``, ``ikd``) with this environment's bin first on PATH and DVC analytics off.
    Returns the CompletedProcess; with ``check`` a non-zero exit fails the test with its output."""
    import subprocess

    env = {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        shown = " ".join(map(str, args))
        pytest.fail(f"{shown} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture
def dvc_registry(tmp_path, small_data):
    """A git + DVC repository holding ``small_data`` as the DVC-tracked folder ``data/reviews`` (tag ``v1``), pushed
    to a local remote. Returns (repo path, data path in it, remote folder)."""
    pytest.importorskip("dvc")
    import shutil

    repo, remote = tmp_path / "registry", tmp_path / "registry-store"
    (repo / "data").mkdir(parents=True)
    shutil.copytree(small_data, repo / "data" / "reviews")
    run_tool("git", "init", "-q", cwd=repo)
    run_tool("dvc", "init", "-q", cwd=repo)
    run_tool("dvc", "remote", "add", "-q", "-d", "store", remote, cwd=repo)
    run_tool("dvc", "add", "-q", "data/reviews", cwd=repo)
    run_tool("dvc", "push", "-q", cwd=repo)
    run_tool("git", "add", "-A", cwd=repo)
    run_tool("git", "commit", "-q", "-m", "reviews", cwd=repo)
    run_tool("git", "tag", "v1", cwd=repo)
    return repo, "data/reviews", remote


def tool(name: str) -> str:
    """Path of a binary the monitoring tests run (`prometheus`, `promtool`, `prometheus-pushgateway`): on PATH or
    fetched into .tools/ by `.ci/prometheus-tools`. Missing: skipped, unless IKD_REQUIRE_TOOLS=1 (as in .ci/run),
    where a missing binary fails the test instead of hiding it."""
    import shutil

    found = shutil.which(name) or shutil.which(name, path=str(ROOT / ".tools" / "usr" / "bin"))
    if found:
        return found
    if os.environ.get("IKD_REQUIRE_TOOLS") == "1":
        pytest.fail(f"{name} not found on PATH or in .tools/usr/bin (run .ci/prometheus-tools)")
    pytest.skip(f"{name} not installed (run .ci/prometheus-tools to fetch Debian's binary into .tools/)")
