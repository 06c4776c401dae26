"""The binary tensor data extension's encoding, on its own: raw tensor bytes to values and back, which outputs a
request asks in binary, and the response's layout (header length, binary_data_size, bytes in output order)."""

import json
import struct

import numpy as np
import pytest

from ikd.errors import InvalidInput
from ikd.serve.binary import binary_outputs, decode_request, encode_response, tensor_bytes, tensor_values


def test_values_and_bytes_round_trip():
    texts = ["a film", "é😀", ""]
    raw = tensor_bytes("BYTES", texts)
    assert raw[:4] == struct.pack("<I", 6) and tensor_values("text", "BYTES", raw) == texts
    assert tensor_values("ids", "INT64", np.array([1, -2, 3], "<i8").tobytes()) == [1, -2, 3]
    assert tensor_values("ids", "INT32", tensor_bytes("INT32", [7, 8])) == [7, 8]
    assert np.frombuffer(tensor_bytes("FP32", [0.5, -1.25]), "<f4").tolist() == [0.5, -1.25]
    with pytest.raises(InvalidInput, match="binary data of datatype 'STRING' is not supported"):
        tensor_values("x", "STRING", b"")


def test_which_outputs_are_binary():
    assert binary_outputs({}) == set()
    assert binary_outputs({"parameters": {"binary_data_output": True}}) == {"*"}
    outputs = [{"name": "label", "parameters": {"binary_data": False}}, {"name": "logits"}]
    assert binary_outputs({"parameters": {"binary_data_output": True}, "outputs": outputs}) == {"logits"}
    assert binary_outputs(
        {"outputs": [{"name": "logits", "parameters": {"binary_data": True}}, {"name": "label"}]}
    ) == {"logits"}
    with pytest.raises(InvalidInput, match="binary_data must be true or false"):
        binary_outputs({"outputs": [{"name": "logits", "parameters": {"binary_data": 1}}]})


def test_response_layout_and_request_decoding():
    response = {
        "model_name": "m",
        "outputs": [
            {"name": "logits", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]},
            {"name": "label", "datatype": "BYTES", "shape": [1], "data": ["positive"]},
        ],
    }
    body, n = encode_response(response, {"logits"})
    head = json.loads(body[:n])
    assert head["outputs"][0] == {
        "name": "logits",
        "datatype": "FP32",
        "shape": [1, 2],
        "parameters": {"binary_data_size": 8},
    }
    assert head["outputs"][1]["data"] == ["positive"] and body[n:] == np.array([1, 2], "<f4").tobytes()
    header = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 8}}]}
    raw = json.dumps(header).encode()
    decoded = decode_request(raw + tensor_bytes("BYTES", ["good"]), str(len(raw)))
    assert decoded["inputs"][0]["data"] == ["good"]
    assert decode_request(b'{"inputs": []}', None) == {"inputs": []}  # no header: plain JSON
    header["inputs"][0]["data"] = ["good"]
    raw = json.dumps(header).encode()
    with pytest.raises(InvalidInput, match="both 'data' and binary_data_size"):
        decode_request(raw + tensor_bytes("BYTES", ["good"]), str(len(raw)))
