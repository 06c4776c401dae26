"""The server's data plane and its error table, called directly: no server, no HTTP client, no torch.

A real (tiny) ONNX model behind the real :class:`~ikd.serve.predictor.Predictor`: a word-level tokenizer and a graph
that sums a per-word [negative, positive] score over the attention mask, built here in milliseconds (the e2e tests
serve the distilled student over HTTP). Each call's answer is read as the HTTP adapter sends it: a JSON value with
200, or the status and ``{"error": ...}`` body that :data:`ikd.serve.errors.STATUS` gives its exception.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import inspect
import json

import numpy as np
import pytest

from ikd.errors import IkdError, InvalidInput, ModelError
from ikd.serve.dataplane import DataPlane
from ikd.serve.errors import (
    STATUS,
    ClientClosed,
    InferenceTimeout,
    MethodNotAllowed,
    NotFound,
    NotReady,
    PayloadTooLarge,
    error_body,
    status_of,
)
from ikd.serve.protocol import Limits, decode_json

MODEL = "tiny"
#: word -> (negative, positive) score; the model's logits are the sums over a row's words.
SCORES = {
    "good": (0.0, 2.0),
    "fine": (0.0, 1.0),
    "great": (0.0, 3.0),
    "bad": (2.0, 0.0),
    "dull": (1.5, 0.0),
    "film": (0.1, 0.1),
    "a": (0.0, 0.0),
}
VOCAB = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, **{w: 4 + i for i, w in enumerate(SCORES)}}


def build_tiny_model(folder):
    """An exported model folder as `ikd export` writes it (model.onnx, tokenizer.json, metadata.json)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    table = np.zeros((len(VOCAB), 2), dtype=np.float32)
    for word, score in SCORES.items():
        table[VOCAB[word]] = score
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["emb"]),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "axis2"], ["mask3"]),
        helper.make_node("Mul", ["emb", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["logits"], keepdims=0),
    ]
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["N", "L"]) for n in ("input_ids", "attention_mask")]
    consts = [
        numpy_helper.from_array(table, "table"),
        numpy_helper.from_array(np.array([2], np.int64), "axis2"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
    ]
    graph = helper.make_graph(
        nodes, "tiny", inputs, [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])], consts
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(data)
    tok = Tokenizer(models.WordLevel(VOCAB, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tok.save(str(folder / "tokenizer.json"))
    meta = {
        "model_file": "model.onnx",
        "sha256": hashlib.sha256(data).hexdigest(),
        "max_length": 8,
        "label_names": ["negative", "positive"],
        "inputs": ["input_ids", "attention_mask"],
        "text_fields": ["sentence"],
        "opset": 17,
        "task": "sst2",
        "strategy": "finetune",
    }
    (folder / "metadata.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    from ikd.serve.predictor import Predictor

    return Predictor.load(build_tiny_model(tmp_path_factory.mktemp("tiny") / "export"), name=MODEL)


async def answer(call):
    """(status, JSON body) of ``call()`` as the HTTP adapter would send it."""
    try:
        result = call()
        if inspect.isawaitable(result):
            result = await result
        return 200, result
    except Exception as exc:
        status, body = error_body(exc)
        return status, json.loads(body.decode("ascii"))


def served(plane: DataPlane, *calls, start: bool = True):
    """The answers to ``calls`` (functions of no argument), made in one event loop with ``plane`` started."""

    async def go():
        if start:
            plane.start()
        try:
            return [await answer(c) for c in calls]
        finally:
            await plane.stop()

    return asyncio.run(go())


def texts(rows, **extra):
    return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(rows)], "data": rows}], **extra}


def tokens(ids, mask, shape=None):
    return {
        "inputs": [
            {"name": n, "datatype": "INT64", "shape": shape or [len(v), len(v[0])], "data": v}
            for n, v in (("input_ids", ids), ("attention_mask", mask))
        ]
    }


# ---- the table ---------------------------------------------------------------------------------------------------
def test_the_table_names_a_status_for_each_error_type_and_500_for_anything_else():
    assert {cls: status_of(cls("x")) for cls in STATUS} == {
        InvalidInput: 400,
        NotFound: 404,
        MethodNotAllowed: 405,
        PayloadTooLarge: 413,
        ClientClosed: 499,
        NotReady: 503,
        InferenceTimeout: 504,
    }

    class Narrower(InvalidInput):
        pass

    assert status_of(Narrower("x")) == 400  # a subclass answers as its listed base
    for bug in (RuntimeError("boom"), ModelError("not a request error"), IkdError("base"), KeyError("k")):
        assert status_of(bug) == 500
    assert error_body(RuntimeError("boom")) == (500, b'{"error": "internal error: RuntimeError: boom"}')
    assert error_body(NotFound("unknown model 'x'")) == (404, b'{"error": "unknown model \'x\'"}')


def test_error_bodies_are_ascii_json_even_for_a_lone_surrogate():
    status, body = error_body(InvalidInput("unknown input(s) '\udfff' \u00e9"))
    assert status == 400 and body.isascii()
    assert json.loads(body) == {"error": "unknown input(s) '\udfff' \u00e9"}
    status, body = error_body(RuntimeError("\ud800"))
    assert status == 500 and body.isascii() and json.loads(body)["error"] == "internal error: RuntimeError: \ud800"


def test_starlettes_own_refusals_go_through_the_table():
    from ikd.serve.app import ROUTING_ERRORS

    assert {code: status_of(cls("x")) for code, cls in ROUTING_ERRORS.items()} == {404: 404, 405: 405}


# ---- health and metadata -----------------------------------------------------------------------------------------
def test_readiness_before_start_after_start_and_after_stop(predictor):
    plane = DataPlane(predictor)
    before = served(
        plane,
        plane.live,
        plane.ready,
        lambda: plane.model_ready(MODEL),
        lambda: plane.infer(MODEL, texts(["a good film"])),
        lambda: plane.predict({"texts": ["fine"]}),
        start=False,
    )
    assert before == [
        (200, {"live": True}),
        (503, {"error": "not ready"}),
        (503, {"error": f"model '{MODEL}' is not ready"}),
        (503, {"error": f"model '{MODEL}' is not ready"}),
        (503, {"error": f"model '{MODEL}' is not ready"}),
    ]
    after = served(plane, plane.live, plane.ready, lambda: plane.model_ready(MODEL))
    assert after == [(200, {"live": True}), (200, {"ready": True}), (200, {"name": MODEL, "ready": True})]
    assert not plane.is_ready and served(plane, plane.ready, start=False) == [(503, {"error": "not ready"})]


def test_server_and_model_metadata(predictor):
    import ikd

    plane = DataPlane(predictor)
    server, model, unknown, unknown_ready = served(
        plane,
        plane.server_metadata,
        lambda: plane.model_metadata(MODEL),
        lambda: plane.model_metadata("nope"),
        lambda: plane.model_ready("nope"),
        start=False,
    )
    assert server == (200, {"name": "ikd", "version": ikd.__version__, "extensions": ["binary_tensor_data"]})
    assert model[0] == 200 and model[1]["name"] == MODEL and model[1]["versions"] == ["1"]
    assert [i["name"] for i in model[1]["inputs"]] == ["text", "input_ids", "attention_mask"]
    assert [o["name"] for o in model[1]["outputs"]] == ["logits", "probabilities", "label"]
    assert unknown == unknown_ready == (404, {"error": f"unknown model 'nope'; this server serves '{MODEL}'"})


def test_version_paths_answer_the_served_version_only(predictor):
    plane = DataPlane(predictor)
    meta, ready, other, other_ready = served(
        plane,
        lambda: plane.model_metadata(MODEL, "1"),
        lambda: plane.model_ready(MODEL, "1"),
        lambda: plane.model_metadata(MODEL, "2"),
        lambda: plane.model_ready(MODEL, "latest"),
    )
    assert meta == (200, predictor.describe()) and ready == (200, {"name": MODEL, "ready": True})
    assert other == other_ready == (404, {"error": f"model '{MODEL}' has only version 1"})
    # the text input is declared as the docs say: [N] texts, or [N, 2] for pair tasks
    assert meta[1]["inputs"][0] == {"name": "text", "datatype": "BYTES", "shape": [-1]}


def test_the_default_name_and_label_names_come_from_the_export(tmp_path):
    from ikd.serve.predictor import Predictor

    folder = build_tiny_model(tmp_path / "export")
    assert Predictor.load(folder).name == "export"  # an export that records no name: the folder's
    meta = json.loads((folder / "metadata.json").read_text())
    meta.update(name="sst2-student", label_names=["0", "1"], labels=["neg", "pos"])
    (folder / "metadata.json").write_text(json.dumps(meta))
    loaded = Predictor.load(folder)
    assert loaded.name == "sst2-student" and loaded.labels == ["neg", "pos"]
    assert Predictor.load(folder, name="other").name == "other"


def test_instances_are_separate_sessions_that_answer_alike_from_concurrent_threads(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from ikd.serve.predictor import Predictor

    folder = build_tiny_model(tmp_path / "export")
    one, two = Predictor.load(folder), Predictor.load(folder, instances=2)
    assert two.instances == 2 and two._free is not None and two._free.qsize() == 2
    rows = [[2, VOCAB["a"], VOCAB["good"], VOCAB["film"], 3], [2, VOCAB["dull"], 3]]
    want = one.logits(one.feeds(rows))
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda _: two.logits(two.feeds(rows)), range(40)))
    assert all(np.array_equal(g, want) for g in got)
    assert two._free.qsize() == 2  # every session went back
    seen = {id(two._free.get()), id(two._free.get())}
    assert len(seen) == 2 and id(two.session) in seen
    with pytest.raises(ModelError, match="instances 0"):
        Predictor.load(folder, instances=0)


# ---- inference ---------------------------------------------------------------------------------------------------
def test_a_valid_infer_answers_the_model_and_token_ids_agree_with_text(predictor):
    plane = DataPlane(predictor, max_delay_ms=1)
    ids = [[2, VOCAB["a"], VOCAB["good"], VOCAB["film"], 3], [2, VOCAB["dull"], 3, 0, 0]]
    mask = [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    full, some, by_tokens, plain = served(
        plane,
        lambda: plane.infer(MODEL, texts(["a good film", "dull"], id="r1")),
        lambda: plane.infer(MODEL, texts(["great"], outputs=[{"name": "label"}]), version="1"),
        lambda: plane.infer(MODEL, tokens(ids, mask)),
        lambda: plane.predict({"texts": ["a good film", "dull"]}),
    )
    assert full[0] == 200 and full[1]["model_name"] == MODEL and full[1]["id"] == "r1"
    out = {o["name"]: o for o in full[1]["outputs"]}
    assert list(out) == ["logits", "probabilities", "label"]
    assert out["logits"]["shape"] == [2, 2] and out["label"] == {
        "name": "label",
        "datatype": "BYTES",
        "shape": [2],
        "data": ["positive", "negative"],
    }
    assert np.allclose(out["logits"]["data"], [0.1, 2.1, 1.5, 0.0])  # the word scores summed over the mask
    probs = np.array(out["probabilities"]["data"]).reshape(2, 2)
    assert np.allclose(probs.sum(axis=1), 1.0)
    assert some == (
        200,
        {
            "model_name": MODEL,
            "model_version": "1",
            "outputs": [{"name": "label", "datatype": "BYTES", "shape": [1], "data": ["positive"]}],
        },
    )
    assert by_tokens[0] == 200 and by_tokens[1]["outputs"][0] == out["logits"]
    assert plain[0] == 200 and [p["label"] for p in plain[1]["predictions"]] == ["positive", "negative"]
    assert plain[1]["predictions"][0]["probabilities"] == pytest.approx(
        dict(zip(["negative", "positive"], probs[0].tolist(), strict=True))
    )
    batches = plane.metrics.registry.get_sample_value("ikd_batch_size_rows_count", {"model": MODEL})
    assert batches >= 4  # every call ran through the batcher, observed in the metrics


def test_metrics_count_rows_texts_cuts_predicted_labels_and_queue_waits(predictor):
    plane = DataPlane(predictor, Limits(max_chars=40))
    answers = served(
        plane,
        lambda: plane.infer(MODEL, texts(["a good film", "bad dull film"])),  # 2 rows, 2 texts: +, -
        lambda: plane.predict({"texts": ["good " * 7]}),  # 35 characters, 9 tokens: cut to max_length 8
        lambda: plane.predict({"texts": ["bad " * 20]}),  # 80 characters: cut to 40, then to 8 tokens
        lambda: plane.infer(MODEL, tokens([[2, VOCAB["great"], 3]], [[1, 1, 1]])),  # a row, no text
        lambda: plane.predict({"texts": [" "]}),  # refused: nothing counted
    )
    assert [status for status, _ in answers] == [200, 200, 200, 200, 400]
    value = plane.metrics.registry.get_sample_value
    assert value("ikd_rows_total", {"model": MODEL}) == 5
    assert value("ikd_texts_total", {"model": MODEL}) == 4
    assert value("ikd_texts_truncated_total", {"model": MODEL, "limit": "max_chars"}) == 1
    assert value("ikd_texts_truncated_total", {"model": MODEL, "limit": "max_length"}) == 2
    assert value("ikd_predictions_total", {"model": MODEL, "label": "positive"}) == 3
    assert value("ikd_predictions_total", {"model": MODEL, "label": "negative"}) == 2
    assert value("ikd_queue_wait_seconds_count", {"model": MODEL}) == 4  # once per request that reached the batcher
    assert value("ikd_batch_size_rows_sum", {"model": MODEL}) == 5
    text = plane.metrics.render()[0].decode()
    assert "_created" not in text and "\nikd_queue_depth_rows{" in text


def test_long_text_is_truncated_by_default(predictor):
    plane = DataPlane(predictor, Limits(max_chars=10))
    [(status, out)] = served(plane, lambda: plane.predict({"texts": ["great " + "dull " * 50]}))
    assert status == 200 and out["predictions"][0]["label"] == "positive"  # "great dull" after 10 characters


INVALID = [  # (case, data plane call, status, start of the error message)
    ("body not an object", lambda p: p.infer(MODEL, [1, 2]), 400, "the request body must be a JSON object"),
    ("empty inputs", lambda p: p.infer(MODEL, {"inputs": []}), 400, "'inputs' must be a non-empty list"),
    (
        "wrong datatype",
        lambda p: p.infer(MODEL, {"inputs": [{"name": "text", "datatype": "FP32", "shape": [1], "data": [1.0]}]}),
        400,
        "input 'text': datatype",
    ),
    (
        "shape and data disagree",
        lambda p: p.infer(MODEL, {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [3], "data": ["a", "b"]}]}),
        400,
        "input 'text': shape [3] needs 3 values",
    ),
    ("lone surrogate", lambda p: p.infer(MODEL, texts(["ok \ud800"])), 400, "input 'text': row 0 is not valid"),
    ("unknown output", lambda p: p.infer(MODEL, texts(["a"], outputs=[{"name": "x"}])), 400, "unknown output(s)"),
    ("id not a string", lambda p: p.infer(MODEL, texts(["a"], id=5)), 400, "'id' must be a string"),
    (
        "token id outside the vocabulary",
        lambda p: p.infer(MODEL, tokens([[2, 99]], [[1, 1]])),
        400,
        f"input 'input_ids': ids must lie in [0, {len(VOCAB)})",
    ),
    (
        "left-padded mask",
        lambda p: p.infer(MODEL, tokens([[0, 4, 3]], [[0, 1, 1]])),
        400,
        "input 'attention_mask': each row must be ones then zeros",
    ),
    ("too many rows", lambda p: p.predict({"texts": ["a"] * 5}), 400, "5 rows in one request; the limit is 4"),
    ("text too long", lambda p: p.predict({"texts": ["a" * 21]}), 400, "input 'texts': row 0 has 21 characters"),
    ("empty text", lambda p: p.predict({"texts": [" "]}), 400, "input 'texts': row 0 is empty text"),
    ("predict body", lambda p: p.predict({"text": ["a"]}), 400, 'send {"texts":'),
    ("unknown model, checked before the body", lambda p: p.infer("nope", [1]), 404, "unknown model 'nope'"),
    (
        "unknown version",
        lambda p: p.infer(MODEL, texts(["a"]), version="7"),
        404,
        f"model '{MODEL}' has only version 1",
    ),
]


@pytest.mark.parametrize("case", INVALID, ids=[c[0] for c in INVALID])
def test_invalid_requests_get_the_status_of_their_error(predictor, case):
    _, call, status, message = case
    plane = DataPlane(predictor, Limits(max_rows=4, max_chars=20, on_long_text="reject"))
    [(got, body)] = served(plane, lambda: call(plane))
    assert got == status and set(body) == {"error"} and body["error"].startswith(message), body


def test_bodies_that_are_not_json_are_invalid_input():
    for raw, message in (
        (b"{not json", "the body is not valid JSON"),
        (b"[" * 15000, "the body's JSON nests too"),
        (b'{"texts": ' + b"1" * 5000 + b"}", "the body is not valid JSON"),
        (b"\xff\xfe", "the body"),
    ):
        with pytest.raises(InvalidInput) as err:
            decode_json(raw)
        assert status_of(err.value) == 400 and str(err.value).startswith(message)
    assert decode_json(b'{"texts": ["a"]}') == {"texts": ["a"]}


def test_a_slow_inference_is_a_timeout_and_a_failing_one_an_internal_error(predictor):
    plane = DataPlane(predictor, Limits(timeout_s=0.0))
    assert served(plane, lambda: plane.predict({"texts": ["fine"]})) == [
        (504, {"error": "inference took longer than 0.0 s"})
    ]
    broken = dataclasses.replace(predictor)

    def fail(feeds):
        raise RuntimeError("session failed")

    broken.logits = fail
    plane = DataPlane(broken)
    assert served(plane, lambda: plane.infer(MODEL, texts(["fine"]))) == [
        (500, {"error": "internal error: RuntimeError: session failed"})
    ]


# ---- the HTTP adapter's own part: the body within its limit, errors through the table, every request counted ------
def _request(app, body_events, headers=()):
    from starlette.requests import Request

    events = list(body_events)

    async def receive():
        return events.pop(0)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/predict",
        "headers": list(headers),
        "query_string": b"",
        "app": app,
        "path_params": {},
    }
    return Request(scope, receive)


def test_read_body_refuses_a_large_body_and_reports_a_client_that_left(predictor):
    from ikd.serve.app import read_body

    def outcome(events, headers=()):
        async def go():
            try:
                return await read_body(_request(None, events, headers), 10)
            except Exception as exc:
                return error_body(exc)

        return asyncio.run(go())

    chunk = lambda data, more=False: {"type": "http.request", "body": data, "more_body": more}  # noqa: E731
    assert outcome([chunk(b"12345", True), chunk(b"678")]) == b"12345678"
    assert outcome([chunk(b"{}")], [(b"content-length", b"999")]) == (
        413,
        b'{"error": "request body of 999 bytes is over the limit of 10"}',
    )
    assert outcome([chunk(b"123456", True), chunk(b"789012")]) == (
        413,
        b'{"error": "request body is over the limit of 10 bytes"}',
    )
    assert outcome([chunk(b"{", True), {"type": "http.disconnect"}]) == (
        499,
        b'{"error": "the client closed the connection before the end of the body"}',
    )


def test_a_route_answers_errors_through_the_table_and_counts_every_request(predictor):
    from ikd.serve.app import counted, create_app

    app = create_app(predictor)
    plane = app.state.plane

    async def unknown_model(request):
        return plane.model_metadata("nope")

    async def fine(request):
        return plane.live()

    async def go():
        bad = await counted("model", unknown_model)(_request(app, []))
        good = await counted("live", fine)(_request(app, []))
        return bad, good

    bad, good = asyncio.run(go())
    assert bad.status_code == 404 and bad.media_type == "application/json"
    assert json.loads(bad.body) == {"error": f"unknown model 'nope'; this server serves '{MODEL}'"}
    assert good.status_code == 200 and json.loads(good.body) == {"live": True}
    count = plane.metrics.registry.get_sample_value
    assert count("ikd_requests_total", {"model": MODEL, "endpoint": "model", "code": "404"}) == 1
    assert count("ikd_requests_total", {"model": MODEL, "endpoint": "live", "code": "200"}) == 1
