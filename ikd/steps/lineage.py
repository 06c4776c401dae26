"""Lineage: what a step's output was made from, in its ``step.json`` under ``"lineage"``.

``{"data": ..., "models": {"teacher": ..., "student": ...}, "code": ...}``. ``prepare`` records the data (file
sha256s, the DVC md5 and the file that tracks it when the folder is DVC-tracked, or the DVC repository, revision
and commit it was fetched from); ``adapt`` and ``distill`` record the model they started from (name, revision,
weights sha256); every step records the code (ikd version, git revision of ikd and of the project it ran in) and
carries its inputs' data and models forward, so the last step's ``step.json`` names everything upstream.
"""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path
from typing import Any

import ikd
from ikd.core.metrics import read_json


def _git(*args: str, cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, cwd=cwd)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@functools.cache
def git(path: str) -> dict[str, Any] | None:
    """``{"revision", "dirty", "root"}`` of the git work tree holding ``path``; None outside one (or no git)."""
    root = _git("rev-parse", "--show-toplevel", cwd=Path(path))
    if not root:
        return None
    status = _git("status", "--porcelain", "--untracked-files=no", cwd=Path(path))
    return {"revision": _git("rev-parse", "HEAD", cwd=Path(path)), "dirty": bool(status), "root": root}


def git_revision() -> str | None:
    """The git revision of the ikd code being run (None for an installed wheel)."""
    info = git(str(Path(ikd.__file__).parent))
    return info["revision"] if info else None


def code() -> dict[str, Any]:
    """The code that ran: ikd's version and git revision, and the git revision of the project (the working
    directory: the DVC project or CI checkout) when that is another repository."""
    pkg = git(str(Path(ikd.__file__).parent))
    out: dict[str, Any] = {
        "ikd_version": ikd.__version__,
        "git_revision": pkg and pkg["revision"],
        "git_dirty": pkg and pkg["dirty"],
    }
    here = git(os.getcwd())
    if here and (not pkg or here["root"] != pkg["root"]):
        out["project"] = {"git_revision": here["revision"], "git_dirty": here["dirty"], "root": here["root"]}
    return out


def local_data(folder: Path, files: dict[str, str]) -> dict[str, Any]:
    """Lineage of a local data folder: its path, the sha256 of the files read, and DVC's view of it."""
    from ikd.integrations import dvc

    out: dict[str, Any] = {"source": str(folder), "sha256": files}
    tracked = dvc.tracking(Path(folder))
    if tracked is not None:
        out["dvc"] = tracked
    return out


def model(cfg) -> dict[str, Any]:
    """Name and revision a model config asks for (before any weights are loaded)."""
    return {"name": cfg.name, "revision": cfg.revision, "init": cfg.init}


def inherited(*folders: Path | None) -> dict[str, Any]:
    """The ``data`` and ``models`` lineage of finished step folders, merged (later folders win per model)."""
    out: dict[str, Any] = {}
    for folder in folders:
        if folder is None or not (Path(folder) / "step.json").is_file():
            continue
        lin = read_json(Path(folder) / "step.json").get("lineage") or {}
        if "data" in lin:
            out.setdefault("data", lin["data"])
        for role, m in (lin.get("models") or {}).items():
            out.setdefault("models", {})[role] = m
    return out
