"""The serving front door: `ikd serve` started for real on a loopback port, spoken to over HTTP. Every Open
Inference Protocol v2 endpoint, answers equal to the PyTorch student, dynamic batching of concurrent requests,
/metrics, malformed requests (each a 4xx with an error body, the server unharmed), and refusals at start-up."""

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import ROOT

TINY = ROOT / "configs" / "tiny.yaml"
MODEL = "sst2-tiny"


@pytest.fixture(scope="module")
def exported(tmp_path_factory, sst2_module):
    from ikd.cli import main

    out = tmp_path_factory.mktemp("serve") / "run"
    assert main(["-q", "run", "--params", str(TINY), "--data", str(sst2_module), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def sst2_module():
    from conftest import shared

    return shared("sst2")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(model_dir, *args):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ikd", "serve", "--model-dir", str(model_dir), "--port", str(port),
                             *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        if proc.poll() is not None:
            return proc, url
        try:
            if call(url, "GET", "/v2/health/ready")[0] == 200:
                return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    pytest.fail("the server did not become ready")


def call(url, method, path, body=None, raw=None, headers=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url + path, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            text = r.read().decode()
            return r.status, (json.loads(text) if r.headers.get_content_type() == "application/json" else text)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read().decode())


@pytest.fixture(scope="module")
def server(exported):
    proc, url = start(exported / "export", "--name", MODEL, "--max-delay-ms", 50, "--max-batch-size", 16,
                      "--max-rows", 8, "--max-chars", 200, "--on-long-text", "reject", "--max-body-bytes", 20000)
    assert proc.poll() is None, proc.stderr.read()
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def texts_request(texts, **extra):
    return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}], **extra}


SENTENCES = ["a fine film", "boring and flat", "i loved every minute of it", "a waste of time", "smart , funny",
             "tedious", "wonderful", "not good"]


def test_every_v2_endpoint(server):
    assert call(server, "GET", "/v2/health/live") == (200, {"live": True})
    assert call(server, "GET", "/v2/health/ready") == (200, {"ready": True})
    code, meta = call(server, "GET", "/v2")
    assert code == 200 and meta["name"] == "ikd" and meta["version"]
    code, model = call(server, "GET", f"/v2/models/{MODEL}")
    assert code == 200 and model["name"] == MODEL and {i["name"] for i in model["inputs"]} >= {"text", "input_ids"}
    assert call(server, "GET", f"/v2/models/{MODEL}/ready") == (200, {"name": MODEL, "ready": True})
    code, out = call(server, "POST", f"/v2/models/{MODEL}/infer", texts_request(SENTENCES[:3], id="r1"))
    assert code == 200 and out["id"] == "r1" and out["model_name"] == MODEL
    by = {o["name"]: o for o in out["outputs"]}
    assert by["logits"]["shape"] == [3, 2] and len(by["logits"]["data"]) == 6 and by["label"]["shape"] == [3]
    probs = by["probabilities"]["data"]
    assert all(abs(probs[2 * i] + probs[2 * i + 1] - 1) < 1e-5 for i in range(3))
    code, v1 = call(server, "POST", f"/v2/models/{MODEL}/versions/1/infer",
                    texts_request(SENTENCES[:3], outputs=[{"name": "label"}]))
    assert code == 200 and [o["name"] for o in v1["outputs"]] == ["label"] and v1["outputs"][0] == by["label"]
    code, plain = call(server, "POST", "/predict", {"texts": SENTENCES[:3]})
    assert code == 200 and [p["label"] for p in plain["predictions"]] == by["label"]["data"]


def test_answers_equal_the_pytorch_student_and_token_ids_work(server, exported):
    import numpy as np
    import torch

    from ikd import data, models

    model, tokenizer, _ = models.load(exported / "distill" / "model")
    enc = data.tokenize(tokenizer, [(s,) for s in SENTENCES], 32)
    ids = [list(r) for r in enc["input_ids"]]
    longest = max(map(len, ids))
    pad = lambda rows: [r + [0] * (longest - len(r)) for r in rows]  # noqa: E731
    mask = [[1] * len(r) for r in ids]
    with torch.no_grad():
        ref = model(input_ids=torch.tensor(pad(ids)), attention_mask=torch.tensor(pad(mask))).numpy()
    code, out = call(server, "POST", f"/v2/models/{MODEL}/infer", texts_request(SENTENCES))
    got = np.array(out["outputs"][0]["data"]).reshape(len(SENTENCES), 2)
    assert code == 200 and np.abs(got - ref).max() < 1e-4  # the server's tokenizer and session match training
    tokens = {"inputs": [{"name": "input_ids", "datatype": "INT64", "shape": [len(ids), longest], "data": pad(ids)},
                         {"name": "attention_mask", "datatype": "INT64", "shape": [len(ids), longest],
                          "data": pad(mask)}]}
    code, out = call(server, "POST", f"/v2/models/{MODEL}/infer", tokens)
    assert code == 200 and np.abs(np.array(out["outputs"][0]["data"]).reshape(-1, 2) - ref).max() < 1e-4


def test_concurrent_requests_are_merged_and_answered_correctly(server):
    single = {s: call(server, "POST", "/predict", {"texts": [s]})[1]["predictions"][0] for s in SENTENCES}
    before = metric(server, "ikd_batch_size_count"), metric(server, "ikd_batch_size_sum")
    jobs = [SENTENCES[i % len(SENTENCES)] for i in range(24)]
    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(lambda s: call(server, "POST", "/predict", {"texts": [s]}), jobs))
    for s, (code, out) in zip(jobs, answers, strict=True):
        p = out["predictions"][0]
        assert code == 200 and p["label"] == single[s]["label"]
        assert all(abs(p["probabilities"][k] - v) < 1e-5 for k, v in single[s]["probabilities"].items())
    batches = metric(server, "ikd_batch_size_count") - before[0]
    rows = metric(server, "ikd_batch_size_sum") - before[1]
    assert rows == 24 and batches < 24  # 24 one-row requests ran in fewer batches


def metric(url, name):
    text = call(url, "GET", "/metrics")[1]
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def test_metrics_endpoint_exposes_the_contract(server):
    call(server, "POST", "/predict", {"texts": ["fine"]})
    text = call(server, "GET", "/metrics")[1]
    for name in ("ikd_requests_total", "ikd_request_duration_seconds_bucket", "ikd_inference_duration_seconds_bucket",
                 "ikd_batch_size_bucket", "ikd_queue_depth", "ikd_model_info", "ikd_model_load_seconds"):
        assert f"\n{name}{{" in text, name
    assert f'ikd_requests_total{{code="200",endpoint="predict",model="{MODEL}"}}' in text


MALFORMED = [
    ("bad json", "POST", f"/v2/models/{MODEL}/infer", None, b"{not json", 400),
    ("body not an object", "POST", f"/v2/models/{MODEL}/infer", [1, 2], None, 400),
    ("no inputs", "POST", f"/v2/models/{MODEL}/infer", {}, None, 400),
    ("empty inputs", "POST", f"/v2/models/{MODEL}/infer", {"inputs": []}, None, 400),
    ("wrong datatype", "POST", f"/v2/models/{MODEL}/infer",
     {"inputs": [{"name": "text", "datatype": "FP32", "shape": [1], "data": [1.0]}]}, None, 400),
    ("wrong shape", "POST", f"/v2/models/{MODEL}/infer",
     {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [3], "data": ["a", "b"]}]}, None, 400),
    ("pair for a single-text model", "POST", f"/v2/models/{MODEL}/infer",
     {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 2], "data": ["a", "b"]}]}, None, 400),
    ("text is a number", "POST", f"/v2/models/{MODEL}/infer",
     {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [5]}]}, None, 400),
    ("unknown input", "POST", f"/v2/models/{MODEL}/infer",
     {"inputs": [{"name": "pixels", "datatype": "BYTES", "shape": [1], "data": ["a"]}]}, None, 400),
    ("missing attention mask", "POST", f"/v2/models/{MODEL}/infer",
     {"inputs": [{"name": "input_ids", "datatype": "INT64", "shape": [1, 3], "data": [2, 40, 3]}]}, None, 400),
    ("token id out of vocabulary", "POST", f"/v2/models/{MODEL}/infer",
     {"inputs": [{"name": "input_ids", "datatype": "INT64", "shape": [1, 2], "data": [2, 99999]},
                 {"name": "attention_mask", "datatype": "INT64", "shape": [1, 2], "data": [1, 1]}]}, None, 400),
    ("unknown model", "POST", "/v2/models/nope/infer", {"inputs": []}, None, 404),
    ("unknown version", "POST", f"/v2/models/{MODEL}/versions/7/infer", texts_request(["a"]), None, 404),
    ("unknown model metadata", "GET", "/v2/models/nope", None, None, 404),
    ("empty text list", "POST", "/predict", {"texts": []}, None, 400),
    ("empty text", "POST", "/predict", {"texts": ["  "]}, None, 400),
    ("too many rows", "POST", "/predict", {"texts": ["a"] * 9}, None, 400),
    ("text too long", "POST", "/predict", {"texts": ["a" * 201]}, None, 400),
    ("oversize body", "POST", "/predict", {"texts": ["a" * 30000]}, None, 413),
    ("unknown output", "POST", f"/v2/models/{MODEL}/infer", texts_request(["a"], outputs=[{"name": "x"}]), None, 400),
    ("wrong method", "GET", f"/v2/models/{MODEL}/infer", None, None, 405),
    ("unknown path", "GET", "/v3", None, None, 404),
]


@pytest.mark.parametrize("case", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_requests_get_a_4xx_with_an_error_body(server, case):
    _, method, path, body, raw, status = case
    code, out = call(server, method, path, body, raw)
    assert code == status and isinstance(out, dict) and isinstance(out["error"], str) and out["error"]
    assert call(server, "GET", "/v2/health/live") == (200, {"live": True})  # still up


def test_start_up_refuses_a_damaged_model_or_a_missing_gpu(exported, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(exported / "export", damaged)
    with open(damaged / "model.onnx", "ab") as f:
        f.write(b"\0")
    proc = subprocess.run([sys.executable, "-m", "ikd", "serve", "--model-dir", str(damaged)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "does not match metadata.json" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "ikd", "serve", "--model-dir", str(exported / "export"),
                           "--providers", "CUDAExecutionProvider,CPUExecutionProvider"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "CUDAExecutionProvider" in proc.stderr and "not available" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "ikd", "serve", "--model-dir", str(exported / "export"),
                           "--batch-overhead-tokens", "-1"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--batch-overhead-tokens must be at least 0" in proc.stderr


def test_the_serving_path_imports_no_torch():
    code = "import sys, ikd.cli, ikd.serve.app, ikd.serve.predictor; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
