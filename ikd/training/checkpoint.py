"""Training checkpoints: written atomically, verified on load, refused when they belong to another run.

A checkpoint is a folder ``step-<NNNNNNNN>/`` under the step's checkpoint directory (default: ``<out>.checkpoints``
beside the step's output folder, so that DVC, which deletes a stage's outputs before running it, leaves it alone):

- ``weights.safetensors``: every tensor of the models being trained (student, trainable teacher parameters, added
  modules) and tensor-valued strategy state;
- ``state.pt``: optimizers, schedulers, RNG states, the loop's position and curves; plain containers of tensors and
  numbers only, read back with ``torch.load(weights_only=True)``;
- ``checkpoint.json``: the step number, what run it belongs to (the step's key: its config sections and inputs), and
  the sha256 of both files, written last.

Each checkpoint is written into a temporary sibling, every file fsynced, then renamed into place (and the parent
folder fsynced), so a kill at any moment leaves either the previous checkpoints or a new complete one. A checkpoint
whose files do not match their sha256 or whose run differs from the current one raises :class:`CheckpointError`
(exit 2) naming the folder; it is never loaded, and never deleted, silently.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from ikd.core.packs import file_sha256
from ikd.errors import CheckpointError

log = logging.getLogger("ikd")

FORMAT = 1
_PREFIX = "step-"


@dataclass
class Loaded:
    step: int
    path: Path
    tensors: dict[str, Any]
    state: dict[str, Any]


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def describe_difference(saved: dict[str, Any], now: dict[str, Any]) -> str:
    """The config keys (dotted) whose values differ between two section dicts, as 'key: saved -> now' parts."""
    a, b = _flat(saved), _flat(now)
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k, "<unset>") != b.get(k, "<unset>"))
    shown = [f"{k}: {a.get(k, '<unset>')!r} -> {b.get(k, '<unset>')!r}" for k in keys[:5]]
    return "; ".join(shown) + (f" (and {len(keys) - 5} more)" if len(keys) > 5 else "")


class Checkpoints:
    """The checkpoints of one training step in ``folder``: every ``every`` steps and at the end, the newest
    ``keep`` kept. ``identity``: what makes a checkpoint belong to this run ({"step", "key", "sections",
    "inputs"}); only the key is compared, the rest names what differs."""

    def __init__(self, folder: Path | str, every: int, keep: int, identity: dict[str, Any]):
        self.folder = Path(folder)
        self.every, self.keep, self.identity = every, keep, identity
        self.save_seconds = 0.0
        self._verified: Path | None = None

    def due(self, step: int, total: int) -> bool:
        return self.every > 0 and (step % self.every == 0 or step == total)

    # ---- finding -----------------------------------------------------------------------------------
    def _finished(self) -> list[tuple[int, Path]]:
        if not self.folder.is_dir():
            return []
        found = []
        for p in self.folder.iterdir():
            if p.is_dir() and p.name.startswith(_PREFIX) and p.name[len(_PREFIX) :].isdigit():
                found.append((int(p.name[len(_PREFIX) :]), p))
        return sorted(found)

    def clear(self) -> None:
        """Remove every checkpoint (``--restart``, and after the step's output is written)."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def check(self) -> int:
        """Verify the newest checkpoint now (before a step's expensive set-up); returns its step, 0 if none."""
        found = self._finished()
        if not found:
            return 0
        self._verify(found[-1][1])
        self._verified = found[-1][1]
        return found[-1][0]

    def latest(self) -> Loaded | None:
        """The newest checkpoint, verified; None when there is none. Raises CheckpointError when the newest one is
        corrupt or belongs to another run. Incomplete temporary folders (a kill while writing) are removed."""
        if self.folder.is_dir():
            for p in self.folder.glob(f".{_PREFIX}*.tmp-*"):
                shutil.rmtree(p, ignore_errors=True)
        found = self._finished()
        if not found:
            return None
        step, path = found[-1]
        meta = self._verify(path) if path != self._verified else json.loads((path / "checkpoint.json").read_text())
        import torch
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path / "weights.safetensors"))
            state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(
                f"{path}: cannot be read ({type(exc).__name__}: {exc}); delete it or run with --restart"
            ) from None
        log.info("resuming from %s (step %d of a run started %s)", path, step, meta.get("started_at", "?"))
        return Loaded(step, path, tensors, state)

    def _verify(self, path: Path) -> dict[str, Any]:
        hint = f"delete {path} (or every checkpoint: --restart) to go on without it"
        try:
            meta = json.loads((path / "checkpoint.json").read_text())
            files = dict(meta["files"])
            saved = meta["identity"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{path}/checkpoint.json: unreadable or incomplete ({exc}); {hint}") from None
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"{path}: checkpoint format {meta.get('format')!r}, this ikd reads {FORMAT}; {hint}")
        for name, digest in files.items():
            f = path / name
            if not f.is_file():
                raise CheckpointError(f"{f}: missing from the checkpoint; {hint}")
            if file_sha256(f) != digest:
                raise CheckpointError(f"{f}: sha256 does not match checkpoint.json (corrupt or modified); {hint}")
        if saved.get("key") != self.identity.get("key"):
            diff = describe_difference(saved.get("sections", {}), self.identity.get("sections", {}))
            inputs = "" if saved.get("inputs") == self.identity.get("inputs") else "; its inputs differ too"
            raise CheckpointError(
                f"{path}: written by a run with a different config or inputs"
                f"{(' (' + diff + ')') if diff else ''}{inputs}; it is not resumed. Run again with the config "
                f"it was written with, or discard it with --restart"
            )
        return meta

    # ---- writing -----------------------------------------------------------------------------------
    def save(self, step: int, tensors: dict[str, Any], state: dict[str, Any]) -> Path:
        """Write checkpoint ``step`` atomically; drop the oldest beyond ``keep``. Returns its folder."""
        import tempfile

        import torch
        from safetensors.torch import save_file

        tick = time.perf_counter()
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.folder / f"{_PREFIX}{step:08d}"
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=self.folder))
        try:
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / "weights.safetensors"))
            torch.save(state, tmp / "state.pt")
            files = {}
            for name in ("weights.safetensors", "state.pt"):
                _fsync(tmp / name)
                files[name] = file_sha256(tmp / name)
            meta = {
                "format": FORMAT,
                "step": step,
                "identity": self.identity,
                "files": files,
                "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "started_at": state.get("loop", {}).get("started_at"),
            }
            (tmp / "checkpoint.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
            _fsync(tmp / "checkpoint.json")
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync(self.folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        for _, old in self._finished()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        self.save_seconds += time.perf_counter() - tick
        return final


# ---- RNG state as weights_only-loadable containers -------------------------------------------------
def rng_state() -> dict[str, Any]:
    import random

    import numpy as np
    import torch

    # the legacy tuple (get_state's default, for the global MT19937); numpy's stubs give the call a dict result
    kind, keys, pos, has_gauss, gauss = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    state = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np
    import torch

    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
