"""The v2 protocol's binary tensor data extension: a JSON header, then each tensor's raw bytes.

A request in this form carries the header's length in ``Inference-Header-Content-Length``; an input whose
``parameters.binary_data_size`` is set has no ``data`` in the header, its values are the next that many bytes of the
body (little-endian numbers; a BYTES tensor is one 4-byte little-endian length and that many bytes per element).
:func:`decode_request` turns such a body back into the JSON form, so the rest of the server sees one kind of request.
The answer is binary for the outputs a request asks so (``parameters.binary_data`` per output, or
``binary_data_output`` in the request's parameters): :func:`encode_response` moves their values after the JSON
header and says how many bytes each takes. The gRPC service reads ``raw_input_contents`` with :func:`tensor_values`
and writes ``raw_output_contents`` with :func:`tensor_bytes`: the same layout.

Pure functions of bytes and JSON values, like :mod:`ikd.serve.protocol`; every problem is an
:class:`~ikd.errors.InvalidInput` (400).
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

from ikd.errors import InvalidInput
from ikd.serve.protocol import decode_json

HEADER = "inference-header-content-length"
#: v2 datatypes with a fixed width -> their little-endian numpy type.
DTYPES: dict[str, str] = {
    "BOOL": "?",
    "UINT8": "u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def split_body(raw: bytes, header_length: str) -> tuple[bytes, bytes]:
    """(JSON header, binary tail) of a body whose header is ``header_length`` bytes long (the HTTP header's value)."""
    if not header_length.strip().isdigit():
        raise InvalidInput(f"Inference-Header-Content-Length must be a byte count, got {_shown(header_length)}")
    n = int(header_length)
    if n > len(raw):
        raise InvalidInput(f"Inference-Header-Content-Length is {n}, but the body has only {len(raw)} bytes")
    return raw[:n], raw[n:]


def _binary_size(inp: dict[str, Any]) -> int | None:
    """The ``binary_data_size`` parameter of an input tensor, checked (None when the tensor is in JSON)."""
    params = inp.get("parameters")
    if params is None:
        return None
    if not isinstance(params, dict):
        raise InvalidInput(f"input {_shown(inp.get('name'))}: 'parameters' must be an object")
    size = params.get("binary_data_size")
    if size is None:
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidInput(f"input {_shown(inp.get('name'))}: binary_data_size must be a byte count")
    return size


def tensor_values(name: str, datatype: Any, raw: bytes) -> list[Any]:
    """The flat values of tensor ``name`` from its raw bytes: texts for BYTES (UTF-8), numbers otherwise."""
    if datatype == "BYTES":
        values, at = [], 0
        while at < len(raw):
            if at + 4 > len(raw):
                raise InvalidInput(f"input '{name}': a BYTES element's 4-byte length is cut off at byte {at}")
            (n,) = struct.unpack_from("<I", raw, at)
            at += 4
            if at + n > len(raw):
                raise InvalidInput(f"input '{name}': a BYTES element of {n} bytes runs past its {len(raw)} bytes")
            try:
                values.append(raw[at : at + n].decode("utf-8"))
            except UnicodeDecodeError:
                raise InvalidInput(f"input '{name}': element {len(values)} is not valid UTF-8 text") from None
            at += n
        return values
    if not isinstance(datatype, str) or datatype not in DTYPES:
        raise InvalidInput(f"input '{name}': binary data of datatype {_shown(datatype)} is not supported")
    width = np.dtype(DTYPES[datatype]).itemsize
    if len(raw) % width:
        raise InvalidInput(f"input '{name}': {len(raw)} bytes is not a whole number of {datatype} values")
    return np.frombuffer(raw, dtype=DTYPES[datatype]).tolist()


def decode_request(raw: bytes, header_length: str | None) -> Any:
    """The JSON value of a v2 request body, binary inputs read into their ``data`` (``header_length``: the
    ``Inference-Header-Content-Length`` header, None for a plain JSON body)."""
    if header_length is None:
        return decode_json(raw)
    head, tail = split_body(raw, header_length)
    body = decode_json(head)
    inputs = body.get("inputs") if isinstance(body, dict) else None
    at = 0
    for inp in inputs if isinstance(inputs, list) else []:
        if not isinstance(inp, dict):
            continue  # the request's own checks refuse it
        size = _binary_size(inp)
        if size is None:
            continue
        if "data" in inp:
            raise InvalidInput(f"input {_shown(inp.get('name'))}: both 'data' and binary_data_size")
        if at + size > len(tail):
            raise InvalidInput(
                f"input {_shown(inp.get('name'))}: binary_data_size {size} runs past the body "
                f"({len(tail) - at} bytes left after the header and the inputs before it)"
            )
        inp["data"] = tensor_values(str(inp.get("name")), inp.get("datatype"), tail[at : at + size])
        at += size
    if at != len(tail):
        raise InvalidInput(
            f"the body holds {len(tail) - at} bytes after the header that no input's binary_data_size claims"
        )
    return body


def _flag(params: Any, key: str, where: str) -> bool | None:
    if params is None:
        return None
    if not isinstance(params, dict):
        raise InvalidInput(f"{where}: 'parameters' must be an object")
    value = params.get(key)
    if value is not None and not isinstance(value, bool):
        raise InvalidInput(f"{where}: {key} must be true or false")
    return value


def binary_outputs(body: dict[str, Any]) -> set[str]:
    """The outputs to answer in binary: those whose ``parameters.binary_data`` is true, else (no flag on an
    output) all of them when the request's ``binary_data_output`` is true."""
    every = bool(_flag(body.get("parameters"), "binary_data_output", "the request"))
    outputs = body.get("outputs")
    if not isinstance(outputs, list):  # absent (all outputs) or refused by the request's own checks
        return {"*"} if every else set()
    wanted: set[str] = set()
    for out in outputs:
        if isinstance(out, dict):
            flag = _flag(out.get("parameters"), "binary_data", f"output {_shown(out.get('name'))}")
            if flag or (flag is None and every):
                wanted.add(str(out.get("name")))
    return wanted


def tensor_bytes(datatype: str, data: list[Any]) -> bytes:
    """The raw bytes of a tensor's flat ``data``: length-prefixed UTF-8 for BYTES, little-endian numbers else."""
    if datatype == "BYTES":
        parts = []
        for value in data:
            encoded = value.encode("utf-8") if isinstance(value, str) else bytes(value)
            parts.append(struct.pack("<I", len(encoded)) + encoded)
        return b"".join(parts)
    return np.asarray(data, dtype=DTYPES[datatype]).tobytes()


def encode_response(response: dict[str, Any], binary: set[str]) -> tuple[bytes, int]:
    """(body, JSON header length) of a v2 inference response with the ``binary`` outputs ("*": all) after the
    header: each without ``data``, its byte count in ``parameters.binary_data_size``."""
    tails = []
    outputs = []
    for out in response["outputs"]:
        if "*" in binary or out["name"] in binary:
            raw = tensor_bytes(out["datatype"], out["data"])
            tails.append(raw)
            out = {k: v for k, v in out.items() if k != "data"}
            out["parameters"] = {**out.get("parameters", {}), "binary_data_size": len(raw)}
        outputs.append(out)
    head = json.dumps({**response, "outputs": outputs}).encode("ascii")
    return head + b"".join(tails), len(head)
