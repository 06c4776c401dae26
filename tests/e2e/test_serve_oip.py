"""The Open Inference Protocol as its common clients speak it, through a real v2 client library (tritonclient):
the binary tensor data extension over HTTP (the client's default) and the gRPC service beside it must answer what
the JSON request answers; malformed binary bodies are 400s that say what is wrong, invalid gRPC requests get the
matching gRPC status, and gRPC requests share the server's batches, limits and metrics."""

import json
import struct
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from serve_helpers import MODEL, SENTENCES, call, export_tiny, free_port, metric, start, stop, texts_request

httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")
GRPC_PORT = free_port()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    model = export_tiny(tmp_path_factory) / "export"
    args = ["--name", MODEL, "--grpc-port", GRPC_PORT, "--max-delay-ms", 20, "--max-rows", 8, "--max-body-bytes", 20000]
    proc, url = start(model, *args)
    assert proc.poll() is None, proc.stdout.read()
    yield url
    stop(proc)


@pytest.fixture(scope="module")
def by_json(served):
    """The JSON answer to SENTENCES: output name -> (shape, data)."""
    code, out = call(served, "POST", f"/v2/models/{MODEL}/infer", texts_request(SENTENCES))
    assert code == 200
    return {o["name"]: (o["shape"], o["data"]) for o in out["outputs"]}


def text_input(binary: bool):
    inp = httpclient.InferInput("text", [len(SENTENCES)], "BYTES")
    inp.set_data_from_numpy(np.array(SENTENCES, dtype=object), binary_data=binary)
    return inp


def test_a_v2_client_in_binary_gets_what_json_gets(served, by_json):
    client = httpclient.InferenceServerClient(served.removeprefix("http://"))
    try:
        assert client.is_server_ready() and client.is_model_ready(MODEL) and client.is_model_ready(MODEL, "1")
        assert not client.is_model_ready(MODEL, "2")
        assert client.get_model_metadata(MODEL, "1")["versions"] == ["1"]
        assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
        # binary inputs, and (no outputs named) every output in binary: the client's defaults
        result = client.infer(MODEL, [text_input(True)], request_id="b1")
        assert result.get_response()["id"] == "b1"
        assert all(
            "data" not in o and o["parameters"]["binary_data_size"] > 0 for o in result.get_response()["outputs"]
        )
        for name in ("logits", "probabilities"):
            shape, data = by_json[name]
            got = result.as_numpy(name)
            assert got.dtype == np.float32 and list(got.shape) == shape
            np.testing.assert_allclose(got.ravel(), data, rtol=1e-6)
        assert [x.decode() for x in result.as_numpy("label")] == by_json["label"][1]
        # JSON input, one output asked in binary and one in JSON
        outputs = [
            httpclient.InferRequestedOutput("label", binary_data=False),
            httpclient.InferRequestedOutput("logits"),
        ]
        mixed = client.infer(MODEL, [text_input(False)], outputs=outputs, model_version="1")
        label, logits = mixed.get_response()["outputs"]
        assert label["data"] == by_json["label"][1] and "data" not in logits
        np.testing.assert_allclose(mixed.as_numpy("logits").ravel(), by_json["logits"][1], rtol=1e-6)
    finally:
        client.close()


def binary_body(header: dict, *tensors: bytes) -> tuple[bytes, str]:
    """(body, its Inference-Header-Content-Length) of ``header`` followed by the ``tensors``' bytes."""
    head = json.dumps(header).encode()
    return head + b"".join(tensors), str(len(head))


def post(url, body: bytes, header_length: str):
    return call(
        url, "POST", f"/v2/models/{MODEL}/infer", raw=body, headers={"Inference-Header-Content-Length": header_length}
    )


def strings(*texts: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(t)) + t for t in texts)


def text_header(size: int, n: int = 2, **extra) -> dict:
    tensor = {"name": "text", "datatype": "BYTES", "shape": [n], "parameters": {"binary_data_size": size}}
    return {"inputs": [tensor], **extra}


def test_hand_built_binary_bodies_and_their_errors(served, by_json):
    texts = [s.encode() for s in SENTENCES[:2]]
    code, out = post(
        served, *binary_body(text_header(len(strings(*texts))), strings(*texts))
    )  # binary in, JSON out (nothing asked binary)
    assert code == 200 and out["outputs"][0]["data"] == by_json["logits"][1][:4]
    ids = np.array([[2, 30, 40, 3], [2, 31, 3, 0]], dtype=np.int64)
    mask = (ids > 0).astype(np.int64)
    tokens = {
        "inputs": [
            {"name": n, "datatype": "INT64", "shape": [2, 4], "parameters": {"binary_data_size": 64}}
            for n in ("input_ids", "attention_mask")
        ]
    }
    code, by_bytes = post(served, *binary_body(tokens, ids.tobytes(), mask.tobytes()))
    code_json, by_list = call(
        served,
        "POST",
        f"/v2/models/{MODEL}/infer",
        {
            "inputs": [
                {"name": "input_ids", "datatype": "INT64", "shape": [2, 4], "data": ids.tolist()},
                {"name": "attention_mask", "datatype": "INT64", "shape": [2, 4], "data": mask.tolist()},
            ]
        },
    )
    assert code == code_json == 200 and by_bytes["outputs"] == by_list["outputs"]

    size = len(strings(*texts))
    bad = {
        "header length past the body": (
            binary_body(text_header(size), strings(*texts))[0],
            "999999",
            "Inference-Header-Content-Length is 999999, but the body has only",
        ),
        "header length not a number": (
            binary_body(text_header(size), strings(*texts))[0],
            "12x",
            "must be a byte count",
        ),
        "binary_data_size past the body": (*binary_body(text_header(size + 5), strings(*texts)), "runs past the body"),
        "bytes nobody claims": (*binary_body(text_header(size), strings(*texts), b"xyz"), "3 bytes after the header"),
        "a cut BYTES element": (*binary_body(text_header(6), struct.pack("<I", 9) + b"ab"), "runs past its 6 bytes"),
        "not UTF-8": (*binary_body(text_header(6, n=1), strings(b"\xff\xfe")), "not valid UTF-8"),
        "ragged INT64": (
            *binary_body({"inputs": [{**tokens["inputs"][0], "parameters": {"binary_data_size": 5}}]}, b"12345"),
            "not a whole number of INT64",
        ),
        "bad flag": (
            *binary_body(text_header(size, parameters={"binary_data_output": "yes"}), strings(*texts)),
            "binary_data_output must be true or false",
        ),
    }
    for case, (body, length, message) in bad.items():
        code, out = post(served, body, length)
        assert code == 400 and message in out["error"], (case, out)


def requests_counted(url, endpoint, code):
    """``ikd_requests_total`` of ``endpoint`` answered ``code``."""
    text = call(url, "GET", "/metrics")[1]
    want = f'endpoint="{endpoint}"'
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("ikd_requests_total{") and want in line and f'code="{code}"' in line
    )


def grpc_text(texts):
    inp = grpcclient.InferInput("text", [len(texts)], "BYTES")
    inp.set_data_from_numpy(np.array(texts, dtype=object))
    return inp


def test_a_v2_grpc_client_gets_what_json_gets(served, by_json):
    before = requests_counted(served, "grpc_infer", 200)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{GRPC_PORT}")
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL, "1")
        assert "binary_tensor_data" in client.get_server_metadata().extensions
        meta = client.get_model_metadata(MODEL, as_json=True)
        assert meta["name"] == MODEL and meta["versions"] == ["1"]
        assert {"name": "text", "datatype": "BYTES", "shape": ["-1"]} in meta["inputs"]
        result = client.infer(MODEL, [grpc_text(SENTENCES)], request_id="g1")
        assert result.get_response().id == "g1" and result.get_response().model_name == MODEL
        for name in ("logits", "probabilities"):
            shape, data = by_json[name]
            assert list(result.as_numpy(name).shape) == shape
            np.testing.assert_allclose(result.as_numpy(name).ravel(), data, rtol=1e-6)
        assert [x.decode() for x in result.as_numpy("label")] == by_json["label"][1]
        # one output asked for: that one only
        some = client.infer(MODEL, [grpc_text(SENTENCES)], outputs=[grpcclient.InferRequestedOutput("label")])
        assert [o.name for o in some.get_response().outputs] == ["label"]
        # concurrent gRPC requests merge into the server's batches, as HTTP ones do
        batches = metric(served, "ikd_batch_size_count")
        jobs = [SENTENCES[i % len(SENTENCES)] for i in range(16)]
        with ThreadPoolExecutor(16) as pool:
            labels = list(pool.map(lambda s: client.infer(MODEL, [grpc_text([s])]).as_numpy("label")[0], jobs))
        assert [x.decode() for x in labels] == [by_json["label"][1][SENTENCES.index(s)] for s in jobs]
        assert metric(served, "ikd_batch_size_count") - batches < 16
    finally:
        client.close()
    assert requests_counted(served, "grpc_infer", 200) == before + 18  # the gRPC path counts in /metrics


def test_invalid_grpc_requests_get_the_matching_status(served):
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{GRPC_PORT}")
    before = requests_counted(served, "grpc_infer", 400)

    def status(call):
        with pytest.raises(grpcclient.InferenceServerException) as caught:
            call()
        return caught.value.status(), caught.value.message()

    try:
        assert status(lambda: client.infer("nope", [grpc_text(["a"])])) == (
            "StatusCode.NOT_FOUND",
            f"unknown model 'nope'; this server serves '{MODEL}'",
        )
        assert status(lambda: client.get_model_metadata(MODEL, "2"))[0] == "StatusCode.NOT_FOUND"
        assert status(lambda: client.is_model_ready(MODEL, "2"))[0] == "StatusCode.NOT_FOUND"
        too_many = status(lambda: client.infer(MODEL, [grpc_text(["good"] * 9)]))  # --max-rows 8, as over HTTP
        assert too_many == ("StatusCode.INVALID_ARGUMENT", "9 rows in one request; the limit is 8")
        ints = grpcclient.InferInput("text", [1], "INT64")
        ints.set_data_from_numpy(np.array([3], dtype=np.int64))
        assert status(lambda: client.infer(MODEL, [ints]))[0] == "StatusCode.INVALID_ARGUMENT"
        big = status(lambda: client.infer(MODEL, [grpc_text(["word " * 5000])]))  # past --max-body-bytes
        assert big[0] == "StatusCode.RESOURCE_EXHAUSTED"
    finally:
        client.close()
    assert requests_counted(served, "grpc_infer", 400) == before + 2


def test_a_taken_grpc_port_stops_the_server_with_one_line(tmp_path_factory):
    import socket
    import subprocess
    import sys

    model = export_tiny(tmp_path_factory) / "export"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["serve", "--model-dir", str(model), "--port", str(free_port()), "--grpc-port", str(port)]
        out = subprocess.run([sys.executable, "-m", "ikd", *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and f"--grpc-port: cannot listen on 127.0.0.1:{port}" in out.stderr, out.stderr
