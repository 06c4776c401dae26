"""The Open Inference Protocol (v2) and ``/predict`` bodies: request parsing and validation, response building.

Pure functions of JSON values and the predictor: no HTTP and no event loop. Every problem with a request raises
:class:`~ikd.errors.InvalidInput` (400 by :data:`ikd.serve.errors.STATUS`) with a message that names the input,
row and limit, quoting request values short.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ikd.errors import InvalidInput

if TYPE_CHECKING:
    from ikd.serve.metrics import TextCounts

INT64 = (-(1 << 63), 1 << 63)
TEXT_INPUTS = ("text",)
TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUTS = ("logits", "probabilities", "label")


@dataclass(frozen=True)
class Limits:
    """What one request may ask for. ``on_long_text``: ``truncate`` long texts to ``max_chars`` or ``reject`` them."""

    max_body_bytes: int = 1 << 20
    max_rows: int = 256
    max_chars: int = 10_000
    on_long_text: str = "truncate"
    timeout_s: float = 30.0


# ---- values ------------------------------------------------------------------------------------------------------
def _int64(x: Any, low: int = INT64[0]) -> bool:
    """Whether ``x`` is a JSON integer (not a boolean) in [low, 2**63)."""
    return isinstance(x, int) and not isinstance(x, bool) and low <= x < INT64[1]


def _shown(value: Any) -> str:
    """``value`` for an error message: a short repr of a string, the type name of anything else (a request's value
    may be a huge or deeply nested structure)."""
    text = repr(value) if isinstance(value, str) or value is None else type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def _unicode(text: str) -> bool:
    """Whether ``text`` is valid Unicode: JSON's ``\\ud800`` escapes can smuggle in lone surrogates, which no
    tokenizer or UTF-8 encoder accepts."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def decode_json(raw: bytes) -> Any:
    """The JSON value of a request body."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise InvalidInput("the body's JSON nests too deeply") from None
    except ValueError as exc:  # bad JSON or encoding, or an integer past Python's digit limit
        raise InvalidInput(f"the body is not valid JSON ({exc})") from None


# ---- rows of a tensor --------------------------------------------------------------------------------------------
def _shape_rows(inp: dict[str, Any], per_row: int | None) -> list[list[Any]]:
    """The flat or nested ``data`` of a v2 input tensor as rows, checked against its ``shape``."""
    name = inp["name"]
    shape, data = inp.get("shape"), inp.get("data")
    if not isinstance(shape, list) or not shape or not all(_int64(d, 0) for d in shape):
        raise InvalidInput(f"input '{name}': 'shape' must be a list of non-negative 64-bit integers")
    if len(shape) > 2:
        raise InvalidInput(f"input '{name}': shape {shape} has {len(shape)} dimensions; at most 2 are accepted")
    if not isinstance(data, list):
        raise InvalidInput(f"input '{name}': 'data' must be a list")
    flat = [x for row in data for x in row] if data and all(isinstance(r, list) for r in data) else data
    if any(isinstance(x, list) for x in flat):
        raise InvalidInput(f"input '{name}': 'data' nests deeper than its shape")
    n = shape[0]
    width = shape[1] if len(shape) == 2 else 1
    if len(flat) != n * width:
        raise InvalidInput(f"input '{name}': shape {shape} needs {n * width} values, 'data' has {len(flat)}")
    if per_row is not None and width != per_row:
        raise InvalidInput(f"input '{name}': this model takes {per_row} text(s) per row, shape {shape} gives {width}")
    return [flat[i * width : (i + 1) * width] for i in range(n)]


def _check_rows(n: int, limits: Limits) -> None:
    if n == 0:
        raise InvalidInput("the request holds no rows")
    if n > limits.max_rows:
        raise InvalidInput(f"{n} rows in one request; the limit is {limits.max_rows}")


def _text(t: Any, i: int, limits: Limits, name: str, counts: TextCounts | None = None) -> str:
    """One text of row ``i``, checked, and truncated to ``max_chars`` unless long texts are rejected (counted in
    ``counts``)."""
    if not isinstance(t, str):
        raise InvalidInput(f"input '{name}': row {i} holds {type(t).__name__}, not text")
    if not _unicode(t):
        raise InvalidInput(f"input '{name}': row {i} is not valid Unicode (a lone surrogate)")
    if not t.strip():
        raise InvalidInput(f"input '{name}': row {i} is empty text")
    if len(t) > limits.max_chars:
        if limits.on_long_text == "reject":
            raise InvalidInput(f"input '{name}': row {i} has {len(t)} characters, more than {limits.max_chars}")
        t = t[: limits.max_chars]
        if counts is not None:
            counts.cut_chars += 1
    return t


def _texts(rows: list[list[Any]], limits: Limits, name: str, counts: TextCounts | None = None) -> list[tuple[str, ...]]:
    return [tuple(_text(t, i, limits, name, counts) for t in row) for i, row in enumerate(rows)]


# ---- v2 inference request ----------------------------------------------------------------------------------------
Tokens = tuple[list[list[int]], list[list[int]] | None]


def _input_tensors(body: Any) -> dict[str, dict[str, Any]]:
    """The request's input tensors by name, after the checks every v2 body must pass."""
    if not isinstance(body, dict):
        raise InvalidInput("the request body must be a JSON object")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs or not all(isinstance(i, dict) for i in inputs):
        raise InvalidInput("'inputs' must be a non-empty list of tensors")
    if not all(isinstance(i.get("name"), str) for i in inputs):
        raise InvalidInput("every input tensor needs a 'name' string")
    if body.get("id") is not None and not (isinstance(body["id"], str) and _unicode(body["id"])):
        raise InvalidInput(f"'id' must be a string of valid Unicode, got {_shown(body['id'])}")
    by_name = {i.get("name"): i for i in inputs}
    if len(by_name) != len(inputs):
        raise InvalidInput("'inputs' names a tensor twice")
    unknown = sorted(_shown(n) for n in by_name if n not in TEXT_INPUTS + TOKEN_INPUTS)
    if unknown:
        raise InvalidInput(
            f"unknown input(s) {', '.join(unknown)}; send 'text' (BYTES) or 'input_ids' + 'attention_mask' (INT64)"
        )
    return by_name


def _text_input(by_name: dict[str, dict[str, Any]], predictor, limits: Limits, counts: TextCounts | None) -> Tokens:
    """Token ids of a BYTES ``text`` tensor, through the predictor's tokenizer."""
    if len(by_name) > 1:
        raise InvalidInput("send either 'text' or token ids, not both")
    t = by_name["text"]
    if t.get("datatype") != "BYTES":
        raise InvalidInput(f"input 'text': datatype must be BYTES, got {_shown(t.get('datatype'))}")
    rows = _shape_rows(t, 2 if predictor.pair else 1)
    _check_rows(len(rows), limits)
    return predictor.encode(_texts(rows, limits, "text", counts), counts)


def _token_arrays(by_name: dict[str, dict[str, Any]], limits: Limits) -> dict[str, np.ndarray]:
    """The INT64 token tensors as [N, L] arrays of one shape."""
    for need in ("input_ids", "attention_mask"):
        if need not in by_name:
            raise InvalidInput(f"missing input '{need}' (or send 'text')")
    arrays = {}
    for n, t in by_name.items():
        if t.get("datatype") not in ("INT64", "INT32"):
            raise InvalidInput(f"input '{n}': datatype must be INT64, got {_shown(t.get('datatype'))}")
        rows = _shape_rows(t, None)
        _check_rows(len(rows), limits)
        if not all(_int64(x) for r in rows for x in r):
            raise InvalidInput(f"input '{n}': values must be 64-bit integers")
        arrays[n] = np.asarray(rows, dtype=np.int64).reshape(len(rows), -1)
    if len({a.shape for a in arrays.values()}) != 1:
        shown = ", ".join(f"{k} {list(v.shape)}" for k, v in arrays.items())
        raise InvalidInput(f"token inputs differ in shape: {shown}")
    return arrays


def _token_input(by_name: dict[str, dict[str, Any]], predictor, limits: Limits) -> Tokens:
    """Rows of token ids (and type ids) from INT64 tensors, unpadded, checked against the model: vocabulary,
    maximum length, right-padded masks, type ids 0/1."""
    arrays = _token_arrays(by_name, limits)
    ids, mask = arrays["input_ids"], arrays["attention_mask"]
    vocab = predictor.tokenizer.get_vocab_size()
    if ids.size and (ids.min() < 0 or ids.max() >= vocab):
        raise InvalidInput(f"input 'input_ids': ids must lie in [0, {vocab})")
    if ids.shape[1] > predictor.max_length:
        raise InvalidInput(
            f"input 'input_ids': {ids.shape[1]} tokens per row, the model takes at most {predictor.max_length}"
        )
    if not np.isin(mask, (0, 1)).all() or (mask[:, 1:] > mask[:, :-1]).any():
        raise InvalidInput("input 'attention_mask': each row must be ones then zeros (tokens, then right padding)")
    lengths = mask.sum(axis=1)
    if (lengths == 0).any():
        raise InvalidInput("input 'attention_mask': a row has no tokens")
    types = arrays.get("token_type_ids")
    if types is not None and not np.isin(types, (0, 1)).all():
        raise InvalidInput("input 'token_type_ids': values must be 0 (first text) or 1 (second text of a pair)")
    return (
        [ids[i, :n].tolist() for i, n in enumerate(lengths)],
        [types[i, :n].tolist() for i, n in enumerate(lengths)] if types is not None else None,
    )


def parse_infer(body: Any, predictor, limits: Limits, counts: TextCounts | None = None) -> Tokens:
    """Token ids (and type ids) per row from a v2 inference request: a BYTES ``text`` tensor, or INT64
    ``input_ids`` with ``attention_mask`` (and ``token_type_ids``). ``counts``: texts read and cut, for metrics."""
    by_name = _input_tensors(body)
    if "text" in by_name:
        return _text_input(by_name, predictor, limits, counts)
    return _token_input(by_name, predictor, limits)


def parse_outputs(body: dict[str, Any]) -> list[str] | None:
    """The output names a v2 request asks for (None: all of :data:`OUTPUTS`)."""
    outputs = body.get("outputs")
    if outputs is None:
        return None
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise InvalidInput('\'outputs\' must be a list of objects such as {"name": "label"}')
    wanted = [o.get("name") for o in outputs]
    bad = [_shown(w) for w in wanted if w not in OUTPUTS]
    if bad:
        raise InvalidInput(f"unknown output(s) {', '.join(bad)}; outputs are {', '.join(OUTPUTS)}")
    return wanted


def infer_response(predictor, logits: np.ndarray, request_id: Any, wanted: list[str] | None) -> dict[str, Any]:
    """The v2 inference response for ``logits`` [N, C]: the ``wanted`` outputs (all by default), the request's id."""
    preds = predictor.answer(logits)
    n, c = logits.shape
    tensors = {
        "logits": {"name": "logits", "datatype": "FP32", "shape": [n, c], "data": [x for p in preds for x in p.logits]},
        "probabilities": {
            "name": "probabilities",
            "datatype": "FP32",
            "shape": [n, c],
            "data": [x for p in preds for x in p.probabilities],
        },
        "label": {"name": "label", "datatype": "BYTES", "shape": [n], "data": [p.label for p in preds]},
    }
    out = {"model_name": predictor.name, "model_version": "1", "outputs": [tensors[k] for k in (wanted or tensors)]}
    if request_id is not None:
        out["id"] = request_id
    return out


# ---- /predict ----------------------------------------------------------------------------------------------------
def parse_predict(body: Any, predictor, limits: Limits, counts: TextCounts | None = None) -> Tokens:
    """Token ids per row of a plain ``{"texts": [...]}`` body (pairs: ``[["first", "second"], ...]``). ``counts``:
    texts read and cut, for metrics."""
    texts = body.get("texts") if isinstance(body, dict) else None
    if not isinstance(texts, list):
        raise InvalidInput('send {"texts": ["...", ...]} (pairs: [["first", "second"], ...])')
    rows = [t if isinstance(t, list) else [t] for t in texts]
    per_row = 2 if predictor.pair else 1
    if any(len(r) != per_row for r in rows):
        raise InvalidInput(f"this model takes {per_row} text(s) per row")
    _check_rows(len(rows), limits)
    return predictor.encode(_texts(rows, limits, "texts", counts), counts)


def predict_response(predictor, logits: np.ndarray) -> dict[str, Any]:
    """The ``/predict`` answer: a label and a probability per label name for each row."""
    preds = predictor.answer(logits)
    return {
        "model": predictor.name,
        "predictions": [
            {"label": p.label, "probabilities": dict(zip(predictor.labels, p.probabilities, strict=True))}
            for p in preds
        ],
    }
