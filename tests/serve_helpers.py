"""Helpers for the tests that start `ikd serve` for real: a tiny exported model, a free loopback port, start and
stop, one HTTP call. Shared by tests/e2e/test_serve.py, test_serve_robustness.py and test_prometheus_scrape.py."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT, shared

TINY = ROOT / "configs" / "tiny.yaml"
MODEL = "sst2-tiny"
SENTENCES = [
    "a fine film",
    "boring and flat",
    "i loved every minute of it",
    "a waste of time",
    "smart , funny",
    "tedious",
    "wonderful",
    "not good",
]


def export_tiny(tmp_path_factory) -> Path:
    """`ikd run` of configs/tiny.yaml on ../shared/data/sst2 (skipped where absent), built once per test session and
    shared by the serving test modules, which only read it. Returns the run folder; the exported model is its
    ``export/``, the student its ``distill/model``."""
    from ikd.cli import main

    data = shared("sst2")
    out = tmp_path_factory.getbasetemp() / "serve-tiny-run"
    if not (out / "export" / "metadata.json").is_file():
        building = tmp_path_factory.mktemp("serve") / "run"
        assert main(["-q", "run", "--params", str(TINY), "--data", str(data), "--out", str(building)]) == 0
        building.rename(out)  # complete or absent: a failed build is never reused
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(model_dir, *args, log: Path | None = None, python: str = sys.executable):
    """Start `ikd serve` on a free loopback port; wait until /v2/health/ready answers 200 (or the process exits).
    ``log``: a file for its stdout and stderr (for long runs, where a full pipe would block the server); by default
    they are pipes. ``python``: the interpreter whose ikd runs (another virtual environment's). Returns (process,
    base url)."""
    port = free_port()
    out = open(log, "w") if log is not None else subprocess.PIPE  # noqa: SIM115 - the child holds it open; closed here below
    proc = subprocess.Popen(
        [python, "-m", "ikd", "serve", "--model-dir", str(model_dir), "--port", str(port), *map(str, args)],
        stdout=out,
        stderr=subprocess.STDOUT if log is not None else out,
        text=True,
    )
    if log is not None:
        out.close()
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        if proc.poll() is not None:
            return proc, url
        try:
            if call(url, "GET", "/v2/health/ready")[0] == 200:
                return proc, url
        except OSError:
            time.sleep(0.1)
    stop(proc)
    pytest.fail("the server did not become ready")


def stop(proc: subprocess.Popen, timeout: float = 10) -> int:
    """Terminate ``proc`` (kill it if it does not exit within ``timeout`` s). Returns its exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)
    return proc.returncode


def call(url, method, path, body=None, raw=None, headers=None):
    """One request. Returns (status, the JSON body parsed, or the text of any other content type)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url + path, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            text = r.read().decode()
            return r.status, (json.loads(text) if r.headers.get_content_type() == "application/json" else text)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read().decode())


def texts_request(texts, **extra):
    return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}], **extra}


def metric(url, name):
    """The sum of every sample of ``name`` (any labels) on the server's /metrics."""
    text = call(url, "GET", "/metrics")[1]
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))
