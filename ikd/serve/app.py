"""HTTP front of the predictor: the Open Inference Protocol (v2) REST API, a plain-JSON ``/predict`` and ``/metrics``.

Built on Starlette (ASGI) served by uvicorn: a small, well-kept stack with no model-server framework around it,
so the image needs no torch and the batching and limits below are ours (KServe's Python server would bring its own
process model and dependencies; KServe can still front this server as a custom predictor, see manifests/).

Every client error is a 4xx with the protocol's error body ``{"error": "<message>"}``; the server never crashes on
input. Endpoints: ``GET /v2/health/live``, ``GET /v2/health/ready``, ``GET /v2``, ``GET /v2/models/{name}``,
``GET /v2/models/{name}/ready``, ``POST /v2/models/{name}[/versions/1]/infer``, ``POST /predict``, ``GET /metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

import ikd
from ikd.errors import InvalidInput
from ikd.serve.batching import Batcher


@dataclass(frozen=True)
class Limits:
    """What one request may ask for. ``on_long_text``: ``truncate`` long texts to ``max_chars`` or ``reject`` them."""

    max_body_bytes: int = 1 << 20
    max_rows: int = 256
    max_chars: int = 10_000
    on_long_text: str = "truncate"
    timeout_s: float = 30.0


class HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class Metrics:
    """The server's Prometheus metrics, in their own registry (``/metrics`` shows only these and the process)."""

    def __init__(self, predictor):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)
        self.requests = Counter("ikd_requests_total", "HTTP requests", ["model", "endpoint", "code"], registry=r)
        latency = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
        self.request_seconds = Histogram("ikd_request_duration_seconds", "Request latency, receive to answer",
                                         ["model", "endpoint"], buckets=latency, registry=r)
        self.inference_seconds = Histogram("ikd_inference_duration_seconds", "ONNX Runtime time per batch",
                                           ["model"], buckets=latency, registry=r)
        self.batch_size = Histogram("ikd_batch_size", "Rows per ONNX Runtime batch", ["model"],
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.queue = Gauge("ikd_queue_depth", "Rows waiting for a batch", ["model"], registry=r)
        info = Gauge("ikd_model_info", "The loaded model (value 1)", ["model", "sha256", "opset", "task", "strategy",
                                                                      "ikd_version"], registry=r)
        meta = predictor.metadata
        info.labels(predictor.name, meta.get("sha256", ""), str(meta.get("opset", "")), str(meta.get("task", "")),
                    str(meta.get("strategy", "")), ikd.__version__).set(1)
        Gauge("ikd_model_load_seconds", "Time to load the model", ["model"], registry=r).labels(
            predictor.name).set(predictor.load_seconds)
        self.model = predictor.name

    def observe_batch(self, rows: int, seconds: float) -> None:
        self.batch_size.labels(self.model).observe(rows)
        self.inference_seconds.labels(self.model).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


# ---- request parsing ---------------------------------------------------------------------------------------------
INT64 = (-(1 << 63), 1 << 63)


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
    return [flat[i * width:(i + 1) * width] for i in range(n)]


def _texts(rows: list[list[Any]], limits: Limits, name: str) -> list[tuple[str, ...]]:
    out = []
    for i, row in enumerate(rows):
        texts = []
        for t in row:
            if not isinstance(t, str):
                raise InvalidInput(f"input '{name}': row {i} holds {type(t).__name__}, not text")
            if not _unicode(t):
                raise InvalidInput(f"input '{name}': row {i} is not valid Unicode (a lone surrogate)")
            if not t.strip():
                raise InvalidInput(f"input '{name}': row {i} is empty text")
            if len(t) > limits.max_chars:
                if limits.on_long_text == "reject":
                    raise InvalidInput(f"input '{name}': row {i} has {len(t)} characters, more than {limits.max_chars}")
                t = t[:limits.max_chars]
            texts.append(t)
        out.append(tuple(texts))
    return out


def parse_infer(body: dict[str, Any], predictor, limits: Limits) -> tuple[list[list[int]], list[list[int]] | None]:
    """Token ids (and type ids) per row from a v2 inference request: a BYTES ``text`` tensor, or INT64
    ``input_ids`` with ``attention_mask`` (and ``token_type_ids``)."""
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
    unknown = sorted(_shown(n) for n in by_name if n not in ("text", "input_ids", "attention_mask", "token_type_ids"))
    if unknown:
        raise InvalidInput(f"unknown input(s) {', '.join(unknown)}; send 'text' (BYTES) or 'input_ids' + "
                           "'attention_mask' (INT64)")
    if "text" in by_name:
        if len(by_name) > 1:
            raise InvalidInput("send either 'text' or token ids, not both")
        t = by_name["text"]
        if t.get("datatype") != "BYTES":
            raise InvalidInput(f"input 'text': datatype must be BYTES, got {_shown(t.get('datatype'))}")
        rows = _shape_rows(t, 2 if predictor.pair else 1)
        _check_rows(len(rows), limits)
        return predictor.encode(_texts(rows, limits, "text"))
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
    shapes = {a.shape for a in arrays.values()}
    if len(shapes) != 1:
        shown = ", ".join(f"{k} {list(v.shape)}" for k, v in arrays.items())
        raise InvalidInput(f"token inputs differ in shape: {shown}")
    ids, mask = arrays["input_ids"], arrays["attention_mask"]
    vocab = predictor.tokenizer.get_vocab_size()
    if ids.size and (ids.min() < 0 or ids.max() >= vocab):
        raise InvalidInput(f"input 'input_ids': ids must lie in [0, {vocab})")
    if ids.shape[1] > predictor.max_length:
        raise InvalidInput(f"input 'input_ids': {ids.shape[1]} tokens per row, the model takes at most "
                           f"{predictor.max_length}")
    if not np.isin(mask, (0, 1)).all() or (mask[:, 1:] > mask[:, :-1]).any():
        raise InvalidInput("input 'attention_mask': each row must be ones then zeros (tokens, then right padding)")
    lengths = mask.sum(axis=1)
    if (lengths == 0).any():
        raise InvalidInput("input 'attention_mask': a row has no tokens")
    types = arrays.get("token_type_ids")
    if types is not None and not np.isin(types, (0, 1)).all():
        raise InvalidInput("input 'token_type_ids': values must be 0 (first text) or 1 (second text of a pair)")
    return ([ids[i, :n].tolist() for i, n in enumerate(lengths)],
            [types[i, :n].tolist() for i, n in enumerate(lengths)] if types is not None else None)


def _check_rows(n: int, limits: Limits) -> None:
    if n == 0:
        raise InvalidInput("the request holds no rows")
    if n > limits.max_rows:
        raise InvalidInput(f"{n} rows in one request; the limit is {limits.max_rows}")


def error(status: int, message: str):
    """The protocol's error body ``{"error": message}``, in ASCII JSON: a message quoting a request's text (which may
    hold a lone surrogate) can always be encoded."""
    from starlette.responses import Response

    return Response(json.dumps({"error": message}), status_code=status, media_type="application/json")


def infer_response(predictor, logits: np.ndarray, request_id: Any, wanted: list[str] | None) -> dict[str, Any]:
    preds = predictor.answer(logits)
    n, c = logits.shape
    tensors = {
        "logits": {"name": "logits", "datatype": "FP32", "shape": [n, c], "data": [x for p in preds for x in p.logits]},
        "probabilities": {"name": "probabilities", "datatype": "FP32", "shape": [n, c],
                          "data": [x for p in preds for x in p.probabilities]},
        "label": {"name": "label", "datatype": "BYTES", "shape": [n], "data": [p.label for p in preds]},
    }
    out = {"model_name": predictor.name, "model_version": "1", "outputs": [tensors[k] for k in (wanted or tensors)]}
    if request_id is not None:
        out["id"] = request_id
    return out


# ---- the ASGI app ------------------------------------------------------------------------------------------------
def create_app(predictor, limits: Limits | None = None, max_batch_size: int = 32, max_delay_ms: float = 5.0,
               batch_overhead_tokens: float = 16.0):
    """The Starlette app serving ``predictor`` (loaded before the app starts: ready once the batcher runs)."""
    from starlette.applications import Starlette
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    limits = limits or Limits()
    metrics = Metrics(predictor)
    batcher = Batcher(predictor, max_batch_size, max_delay_ms, observe=metrics.observe_batch,
                      queue_depth=lambda rows: metrics.queue.labels(predictor.name).set(rows),
                      batch_overhead_tokens=batch_overhead_tokens)
    state = {"ready": False}

    async def body_json(request: Request) -> Any:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
            raise HttpError(413, f"request body of {declared} bytes is over the limit of {limits.max_body_bytes}")
        raw = b""
        try:
            async for chunk in request.stream():
                raw += chunk
                if len(raw) > limits.max_body_bytes:
                    raise HttpError(413, f"request body is over the limit of {limits.max_body_bytes} bytes")
        except ClientDisconnect:  # a body cut short (or malformed chunking): nobody is left to answer; 499 in metrics
            raise HttpError(499, "the client closed the connection before the end of the body") from None
        try:
            return json.loads(raw)
        except RecursionError:
            raise HttpError(400, "the body's JSON nests too deeply") from None
        except ValueError as exc:  # bad JSON or encoding, or an integer past Python's digit limit
            raise HttpError(400, f"the body is not valid JSON ({exc})") from None

    def model_or_404(name: str) -> None:
        if name != predictor.name:
            raise HttpError(404, f"unknown model '{name}'; this server serves '{predictor.name}'")

    async def run(ids, types) -> np.ndarray:
        if not state["ready"]:
            raise HttpError(503, f"model '{predictor.name}' is not ready")
        try:
            return await asyncio.wait_for(batcher.infer(ids, types), limits.timeout_s)
        except TimeoutError:
            raise HttpError(504, f"inference took longer than {limits.timeout_s} s") from None

    def endpoint(name: str, handler):
        async def wrapped(request: Request) -> Response:
            start = time.perf_counter()
            try:
                result = await handler(request)
                response = result if isinstance(result, Response) else JSONResponse(result)
            except InvalidInput as exc:
                response = error(400, str(exc))
            except HttpError as exc:
                response = error(exc.status, exc.message)
            except Exception as exc:  # noqa: BLE001 - a bug answers 500 with a body; the server stays up
                response = error(500, f"internal error: {type(exc).__name__}: {exc}")
            metrics.requests.labels(predictor.name, name, str(response.status_code)).inc()
            metrics.request_seconds.labels(predictor.name, name).observe(time.perf_counter() - start)
            return response

        return wrapped

    async def live(request):
        return {"live": True}

    async def ready(request):
        if not state["ready"]:
            raise HttpError(503, "not ready")
        return {"ready": True}

    async def server_meta(request):
        return {"name": "ikd", "version": ikd.__version__, "extensions": []}

    async def model_meta(request):
        model_or_404(request.path_params["name"])
        return predictor.describe()

    async def model_ready(request):
        model_or_404(request.path_params["name"])
        if not state["ready"]:
            raise HttpError(503, f"model '{predictor.name}' is not ready")
        return {"name": predictor.name, "ready": True}

    async def infer(request):
        model_or_404(request.path_params["name"])
        if request.path_params.get("version", "1") != "1":
            raise HttpError(404, f"model '{predictor.name}' has only version 1")
        body = await body_json(request)
        ids, types = parse_infer(body, predictor, limits)
        wanted, outputs = None, body.get("outputs")
        if outputs is not None:
            if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
                raise InvalidInput("'outputs' must be a list of objects such as {\"name\": \"label\"}")
            wanted = [o.get("name") for o in outputs]
            bad = [_shown(w) for w in wanted if w not in ("logits", "probabilities", "label")]
            if bad:
                raise InvalidInput(f"unknown output(s) {', '.join(bad)}; outputs are logits, probabilities, label")
        return infer_response(predictor, await run(ids, types), body.get("id"), wanted)

    async def predict(request):
        body = await body_json(request)
        texts = body.get("texts") if isinstance(body, dict) else None
        if not isinstance(texts, list):
            raise InvalidInput('send {"texts": ["...", ...]} (pairs: [["first", "second"], ...])')
        rows = [t if isinstance(t, list) else [t] for t in texts]
        per_row = 2 if predictor.pair else 1
        if any(len(r) != per_row for r in rows):
            raise InvalidInput(f"this model takes {per_row} text(s) per row")
        _check_rows(len(rows), limits)
        ids, types = predictor.encode(_texts(rows, limits, "texts"))
        preds = predictor.answer(await run(ids, types))
        return {"model": predictor.name, "predictions": [{"label": p.label, "probabilities": dict(
            zip(predictor.labels, p.probabilities, strict=True))} for p in preds]}

    async def prometheus(request):
        data, content_type = metrics.render()
        return Response(data, media_type=content_type)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher.start()
        state["ready"] = True
        yield
        state["ready"] = False
        await batcher.stop()

    async def not_found(request, exc):  # unknown paths and methods: the protocol's error body too
        return error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")

    routes = [Route("/v2/health/live", endpoint("live", live)), Route("/v2/health/ready", endpoint("ready", ready)),
              Route("/v2", endpoint("server", server_meta)),
              Route("/v2/models/{name}", endpoint("model", model_meta)),
              Route("/v2/models/{name}/ready", endpoint("model_ready", model_ready)),
              Route("/v2/models/{name}/infer", endpoint("infer", infer), methods=["POST"]),
              Route("/v2/models/{name}/versions/{version}/infer", endpoint("infer", infer), methods=["POST"]),
              Route("/predict", endpoint("predict", predict), methods=["POST"]),
              Route("/metrics", prometheus)]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={404: not_found, 405: not_found})
    app.state.batcher, app.state.metrics = batcher, metrics
    return app
