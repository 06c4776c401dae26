"""Progress bars, and the one switch that silences them: ``-q`` (``ikd -q <command>`` or ``ikd <command> -q``).

Every bar ikd draws comes from :func:`bar`; the CLI turns bars off for a quiet command with :func:`set_quiet`
(:func:`ikd.cli.run_command`). tqdm is imported when a bar is made, so importing this module costs nothing (the
serving install has no tqdm).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

_state = {"quiet": False}


def set_quiet(quiet: bool) -> bool:
    """Turn every later bar off (``quiet``) or back to tqdm's own choice; returns the previous setting."""
    before = _state["quiet"]
    _state["quiet"] = quiet
    return before


def is_quiet() -> bool:
    return _state["quiet"]


def bar(iterable: Iterable | None = None, **kwargs: Any) -> Any:
    """A ``tqdm.auto`` bar over ``iterable`` with ``kwargs``; disabled while quiet, whatever ``disable`` says."""
    from tqdm.auto import tqdm

    if _state["quiet"]:
        kwargs["disable"] = True
    return tqdm(iterable, **kwargs)
