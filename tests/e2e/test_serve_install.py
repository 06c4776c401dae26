"""The serving install is torch-free: a clean virtual environment with only `pip install ".[serve]"` has no torch,
transformers or datasets, serves the exported tiny model with the same answers as this environment's predictor,
runs `ikd predict`, and refuses a training command with the one line that says which extra it needs.

It installs from the package index pip is configured with (PyPI or a mirror), about a minute."""

import json
import subprocess
import sys
import venv

import numpy as np
import pytest
from conftest import ROOT
from serve_helpers import MODEL, SENTENCES, call, export_tiny, start, stop, texts_request

from ikd.serve.predictor import Predictor


@pytest.fixture(scope="module")
def serve_env(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve-venv") / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(folder)
    python = str(folder / "bin" / "python")
    done = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", f"{ROOT}[serve]"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return python


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return export_tiny(tmp_path_factory) / "export"


def test_the_serving_install_has_no_training_dependencies(serve_env):
    names = ["torch", "transformers", "datasets", "onnxruntime", "tokenizers", "ikd"]
    probe = f"import importlib.util as u, json; print(json.dumps({{m: bool(u.find_spec(m)) for m in {names!r}}}))"
    found = json.loads(subprocess.run([serve_env, "-c", probe], capture_output=True, text=True, check=True).stdout)
    assert found == {"torch": False, "transformers": False, "datasets": False, "onnxruntime": True,
                     "tokenizers": True, "ikd": True}  # fmt: skip


def test_it_serves_and_predicts_like_the_full_install_and_names_the_extra_for_training(serve_env, exported, tmp_path):
    want = Predictor.load(exported).predict([(t,) for t in SENTENCES])
    proc, url = start(exported, "--name", MODEL, python=serve_env)
    try:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        status, body = call(url, "POST", f"/v2/models/{MODEL}/infer", texts_request(SENTENCES))
        assert status == 200, body
        outputs = {o["name"]: o for o in body["outputs"]}
        assert outputs["label"]["data"] == [w.label for w in want]
        got = np.asarray(outputs["probabilities"]["data"]).reshape(len(SENTENCES), -1)
        np.testing.assert_allclose(got, [w.probabilities for w in want], atol=1e-5)
    finally:
        stop(proc)
    src = tmp_path / "texts.jsonl"
    src.write_text("".join(json.dumps({"sentence": t}) + "\n" for t in SENTENCES))
    done = subprocess.run(
        [serve_env, "-m", "ikd", "predict", "--model-dir", str(exported), "--input", str(src)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert [json.loads(x)["label"] for x in done.stdout.splitlines()] == [w.label for w in want]
    run = subprocess.run(
        [serve_env, "-m", "ikd", "run", "--params", str(ROOT / "configs" / "tiny.yaml"), "--data", "x", "--out", "y"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert run.returncode == 2 and "needs the train extra" in run.stderr and "Traceback" not in run.stderr
    assert sys.executable != serve_env
