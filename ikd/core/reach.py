"""Whether a data source can exist, decided before anything heavy is imported: a local path that is not there and
is no hub id fails at once, and so does a hub id when the hub cannot be reached (one short connection attempt,
not the retries of a download). Imports no torch, transformers or datasets."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from ikd.errors import DataError

#: What to do instead, in every error here.
HINT = "give a local folder with train and dev files: `ikd run --data <folder>` or `make run DATA=<folder>`"
#: Seconds one connection attempt to the hub may take.
CONNECT_TIMEOUT_S = 3.0
_TRUE = {"1", "true", "yes", "on"}


def is_hub_id(source: str) -> bool:
    """``owner/name``: what a Hugging Face hub dataset id looks like (a path that is not on disk otherwise)."""
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not source.startswith((".", "~")) and "\\" not in source


def hub_offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def hub_reachable(timeout_s: float = CONNECT_TIMEOUT_S) -> bool:
    """One TCP connection to the hub's endpoint (``HF_ENDPOINT``, default huggingface.co). Behind a proxy
    (``HTTPS_PROXY`` / ``ALL_PROXY``) the hub is taken as reachable: only the download can tell."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def check_source(source: str) -> None:
    """DataError unless ``source`` is an existing local folder, or a hub id with the hub in reach (offline, the
    datasets cache may still hold it: that is left to the download)."""
    if os.path.exists(source):
        if not os.path.isdir(source):
            raise DataError(f"{source}: not a folder (a data source is a folder holding train and dev files)")
        return
    if not is_hub_id(source):
        raise DataError(f"{source}: no such data folder (and not a hub id of the form owner/name); {HINT}")
    if not hub_offline() and not hub_reachable():
        raise DataError(
            f"{source}: not a local folder, and the Hugging Face hub cannot be reached (no connection within "
            f"{CONNECT_TIMEOUT_S:.0f} s); {HINT}"
        )
