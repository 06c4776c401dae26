"""The Open Inference Protocol as its common clients speak it: the binary tensor data extension over HTTP, sent
and read by a real v2 client library (tritonclient, which sends binary by default), must answer what the JSON
request answers; malformed binary bodies are 400s that say what is wrong."""

import json
import struct

import numpy as np
import pytest
from serve_helpers import MODEL, SENTENCES, call, export_tiny, start, stop, texts_request

httpclient = pytest.importorskip("tritonclient.http")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    proc, url = start(export_tiny(tmp_path_factory) / "export", "--name", MODEL, "--max-delay-ms", 1)
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
