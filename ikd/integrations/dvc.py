"""DVC: data fingerprints the way DVC computes them, data sources in other DVC repositories, pushing outputs.

Needs the ``dvc`` extra (``pip install 'ikd[dvc]'``); every function says so in a ConfigError when it is missing.
The DVC project itself (``dvc.yaml``, ``params.yaml``, ``data/raw.dvc``) needs no code here: its stages call the
``ikd`` CLI.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from ikd.errors import ConfigError, DataError


def _require() -> None:
    try:
        import dvc  # noqa: F401
    except ImportError:
        raise ConfigError("this needs DVC: pip install 'ikd[dvc]'") from None


def available() -> bool:
    try:
        import dvc_data  # noqa: F401
    except ImportError:
        return False
    return True


def folder_md5(path: Path) -> str:
    """The md5 DVC gives ``path`` (a folder: ``<md5>.dir``; a file: its md5), as ``dvc add`` writes it."""
    _require()
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem

    fs = LocalFileSystem()
    with tempfile.TemporaryDirectory() as tmp:
        _, _, obj = build(HashFileDB(fs, tmp), str(Path(path).resolve()), fs, "md5")
    md5 = obj.hash_info.value
    assert md5 is not None  # build() hashed it (HashInfo.value is None only for an object not yet hashed)
    return md5


def repo_root(path: Path) -> Path | None:
    """The DVC repository (a folder holding ``.dvc/``) that contains ``path``, if any."""
    p = Path(path).resolve()
    for folder in (p, *p.parents):
        if (folder / ".dvc").is_dir():
            return folder
    return None


def tracking(path: Path) -> dict[str, Any] | None:
    """How DVC tracks the local ``path``: ``{"md5": now, "tracked_by": file, "recorded_md5": ..., "matches": ...}``
    when a ``.dvc`` file or a ``dvc.lock`` output names it, ``{"md5": now}`` when it merely sits in a DVC
    repository, None outside one (or without the dvc extra)."""
    root = repo_root(path)
    if root is None or not available():
        return None
    path = Path(path).resolve()
    info: dict[str, Any] = {"md5": folder_md5(path)}
    for file, md5 in _recorded(root, path):
        info |= {"tracked_by": str(file.relative_to(root)), "recorded_md5": md5, "matches": md5 == info["md5"]}
        break
    return info


def _recorded(root: Path, path: Path):
    """(file, md5) pairs: the ``.dvc`` file beside ``path`` and any ``dvc.lock`` stage output naming it."""
    candidates = [(path.with_name(path.name + ".dvc"), path.parent)]
    candidates += [(lock, lock.parent) for lock in (root / "dvc.lock",) if lock.is_file()]
    for file, base in candidates:
        if not file.is_file():
            continue
        try:
            doc = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError:
            continue
        outs = list(doc.get("outs") or [])
        for stage in (doc.get("stages") or {}).values():
            outs += list(stage.get("outs") or [])
        for out in outs:
            if isinstance(out, dict) and (base / str(out.get("path", ""))).resolve() == path and out.get("md5"):
                yield file, out["md5"]


# ---- data in another DVC repository -------------------------------------------------------------------------
def _open(repo: str, rev: str | None):
    _require()
    from dvc.api import DVCFileSystem

    return DVCFileSystem(repo, rev=rev or None)  # lazy: errors surface in _describe


def _describe(fs, repo: str, path: str, rev: str | None) -> dict[str, Any]:
    where = f"DVC repository {repo}{f' at {rev}' if rev else ''}"
    try:
        info = fs.info(path)
        commit = fs.repo.scm.get_rev()
    except FileNotFoundError:
        raise DataError(f"{where}: no path '{path}'") from None
    except Exception as exc:  # git cannot clone it, unknown revision, not a DVC repository, ...
        raise DataError(f"{where}: cannot open it ({type(exc).__name__}: {exc})") from None
    return {
        "repo": repo,
        "rev": rev,
        "commit": commit,
        "path": path,
        "md5": info.get("md5") or (info.get("dvc_info") or {}).get("md5"),
    }


def resolve(repo: str, path: str, rev: str | None = None) -> dict[str, Any]:
    """Where ``path`` of the DVC repository ``repo`` at ``rev`` points, without downloading it:
    ``{"repo", "rev", "commit", "path", "md5"}``."""
    fs = _open(repo, rev)
    try:
        return _describe(fs, repo, path, rev)
    finally:
        fs.close()


def fetch(repo: str, path: str, rev: str | None, dest: Path) -> dict[str, Any]:
    """Download ``path`` (a folder or a file) of the DVC repository ``repo`` at ``rev`` into the folder ``dest``
    (``dvc get`` through the Python API). Returns :func:`resolve`'s record."""
    fs = _open(repo, rev)
    try:
        record = _describe(fs, repo, path, rev)
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        try:
            if fs.isdir(path):
                fs.get(path.rstrip("/") + "/", str(dest), recursive=True)
            else:
                fs.get(path, str(dest / Path(path).name))
        except Exception as exc:  # missing from every remote, no credentials, ...
            raise DataError(
                f"DVC repository {repo}: cannot download '{path}' ({type(exc).__name__}: {exc}); "
                "is it pushed to the repository's default remote, and are its credentials set?"
            ) from None
    finally:
        fs.close()
    return record


# ---- pushing outputs ---------------------------------------------------------------------------------------
def push(outputs: dict[str, Path], remote: str, dest: Path) -> dict[str, dict[str, Any]]:
    """Push each folder of ``outputs`` (name -> folder) to the DVC remote ``remote`` (a URL or a local folder).

    Writes ``dest/<name>.dvc`` for each: put one in a DVC repository that uses the same remote and ``dvc pull``
    restores the folder as ``<name>/`` beside it. Returns ``{name: {"md5", "size", "nfiles"}}``.
    """
    _require()
    from dvc.repo import Repo

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    result: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="ikd-dvc-push-") as tmp:
        with contextlib.redirect_stdout(io.StringIO()):  # "Initialized DVC repository."
            repo = Repo.init(tmp, no_scm=True)
        try:
            with repo.config.edit() as conf:
                conf["remote"]["out"] = {"url": remote}
                conf["core"]["remote"] = "out"
            for name, src in outputs.items():
                if not Path(src).is_dir():
                    raise DataError(f"{src}: nothing to push as '{name}' (not a folder)")
                shutil.copytree(src, Path(tmp) / name, symlinks=False)
            repo.add([str(Path(tmp) / name) for name in outputs])
            try:
                repo.push(remote="out")
            except Exception as exc:  # unreachable remote, credentials, missing plugin (dvc-s3, dvc-gs)
                raise DataError(f"dvc push to {remote} failed ({type(exc).__name__}: {exc})") from None
        finally:
            repo.close()
        for name in outputs:
            text = (Path(tmp) / f"{name}.dvc").read_text()
            (dest / f"{name}.dvc").write_text(text)
            out = yaml.safe_load(text)["outs"][0]
            result[name] = {k: out.get(k) for k in ("md5", "size", "nfiles")}
    return result
