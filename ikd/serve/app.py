"""HTTP front of the predictor: the Open Inference Protocol (v2) REST API, a plain-JSON ``/predict`` and ``/metrics``.

Built on Starlette (ASGI) served by uvicorn: a small, well-kept stack with no model-server framework around it,
so the image needs no torch and the batching and limits are ours (KServe's Python server would bring its own
process model and dependencies; KServe can still front this server as a custom predictor, see manifests/).

The layers: :mod:`ikd.serve.protocol` parses and validates request bodies and builds responses,
:class:`~ikd.serve.dataplane.DataPlane` answers each endpoint as a plain method, :mod:`ikd.serve.errors` maps
error types to status codes (one table). This module only adapts HTTP to them: it reads the body within its
size limit, calls the data plane, and answers JSON or the error the table names, counting every request.

Inference requests and answers may also take the binary tensor data extension (:mod:`ikd.serve.binary`): a JSON
header of ``Inference-Header-Content-Length`` bytes, then the tensors' raw bytes. With ``grpc_address`` the
protocol's gRPC service (:mod:`ikd.serve.grpc_server`) runs beside the routes, in the same event loop.

Every client error is a 4xx with the protocol's error body ``{"error": "<message>"}``; the server never crashes on
input. Endpoints: ``GET /v2/health/live``, ``GET /v2/health/ready``, ``GET /v2``, ``GET /v2/models/{name}``,
``GET /v2/models/{name}/ready`` (both also under ``/versions/1``), ``POST /v2/models/{name}[/versions/1]/infer``,
``POST /predict``, ``GET /metrics``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ikd.serve import binary
from ikd.serve.binary import binary_outputs, decode_request, encode_response
from ikd.serve.dataplane import DataPlane
from ikd.serve.errors import ClientClosed, MethodNotAllowed, NotFound, PayloadTooLarge, error_body
from ikd.serve.protocol import Limits, decode_json

__all__ = ["Limits", "create_app"]

Handler = Callable[[Request], Awaitable[Any]]


def error_response(exc: BaseException) -> Response:
    """The answer to ``exc``: the status :data:`ikd.serve.errors.STATUS` names, the protocol's ASCII JSON body."""
    status, body = error_body(exc)
    return Response(body, status_code=status, media_type="application/json")


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refused (:class:`PayloadTooLarge`) as soon as it is known to be past ``max_bytes``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"request body of {declared} bytes is over the limit of {max_bytes}")
    raw = b""
    try:
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > max_bytes:
                raise PayloadTooLarge(f"request body is over the limit of {max_bytes} bytes")
    except ClientDisconnect:  # a body cut short (or malformed chunking): nobody is left to answer; 499 in metrics
        raise ClientClosed("the client closed the connection before the end of the body") from None
    return raw


def _plane(request: Request) -> DataPlane:
    return request.app.state.plane


async def _json_body(request: Request) -> Any:
    return decode_json(await read_body(request, _plane(request).limits.max_body_bytes))


def counted(endpoint: str, handler: Handler) -> Handler:
    """``handler`` (returning a JSON value) as a route endpoint: its answer as JSON or any error through the table,
    the request counted in ``ikd_requests_total`` and timed in ``ikd_request_duration_seconds``."""

    async def wrapped(request: Request) -> Response:
        start = time.perf_counter()
        response: Response
        try:
            answer = await handler(request)
            response = answer if isinstance(answer, Response) else JSONResponse(answer)
        except Exception as exc:
            response = error_response(exc)
        _plane(request).metrics.observe_request(endpoint, response.status_code, time.perf_counter() - start)
        return response

    return wrapped


# ---- adapters: HTTP in, a data plane call, a JSON value out ------------------------------------------------------
async def live(request: Request) -> Any:
    return _plane(request).live()


async def ready(request: Request) -> Any:
    return _plane(request).ready()


async def server_metadata(request: Request) -> Any:
    return _plane(request).server_metadata()


async def model_metadata(request: Request) -> Any:
    return _plane(request).model_metadata(request.path_params["name"], request.path_params.get("version", "1"))


async def model_ready(request: Request) -> Any:
    return _plane(request).model_ready(request.path_params["name"], request.path_params.get("version", "1"))


async def infer(request: Request) -> Any:
    plane, name, version = _plane(request), request.path_params["name"], request.path_params.get("version", "1")
    plane.check_model(name, version)  # before the body is read: an unknown model is a 404 whatever the body
    raw = await read_body(request, plane.limits.max_body_bytes)
    body = decode_request(raw, request.headers.get(binary.HEADER))  # JSON, or the binary extension's form
    wanted = binary_outputs(body) if isinstance(body, dict) else set()
    answer = await plane.infer(name, body, version)
    if not wanted:
        return answer
    data, header_length = encode_response(answer, wanted)
    return Response(
        data, media_type="application/octet-stream", headers={"Inference-Header-Content-Length": str(header_length)}
    )


async def predict(request: Request) -> Any:
    return await _plane(request).predict(await _json_body(request))


async def prometheus(request: Request) -> Response:
    data, content_type = _plane(request).metrics.render()
    return Response(data, media_type=content_type)


#: Starlette's own refusals (no route for the path, a method the route does not take) as the server's errors.
ROUTING_ERRORS = {404: NotFound, 405: MethodNotAllowed}


async def routing_error(request: Request, exc: Exception) -> Response:
    # registered for 404 and 405 only, which Starlette raises as HTTPException (its handler type says Exception)
    http = cast(HTTPException, exc)
    return error_response(ROUTING_ERRORS[http.status_code](f"{request.method} {request.url.path}: {http.detail}"))


ROUTES = [
    Route("/v2/health/live", counted("live", live)),
    Route("/v2/health/ready", counted("ready", ready)),
    Route("/v2", counted("server", server_metadata)),
    Route("/v2/models/{name}", counted("model", model_metadata)),
    Route("/v2/models/{name}/ready", counted("model_ready", model_ready)),
    Route("/v2/models/{name}/versions/{version}", counted("model", model_metadata)),
    Route("/v2/models/{name}/versions/{version}/ready", counted("model_ready", model_ready)),
    Route("/v2/models/{name}/infer", counted("infer", infer), methods=["POST"]),
    Route("/v2/models/{name}/versions/{version}/infer", counted("infer", infer), methods=["POST"]),
    Route("/predict", counted("predict", predict), methods=["POST"]),
    Route("/metrics", prometheus),
]


@contextlib.asynccontextmanager
async def lifespan(app: Starlette):
    plane: DataPlane = app.state.plane
    plane.start()
    grpc_server = None
    if app.state.grpc_address is not None:  # the v2 gRPC service, in this event loop, on the same data plane
        from ikd.serve import grpc_server as v2_grpc

        grpc_server = await v2_grpc.start(plane, *app.state.grpc_address)
    yield
    if grpc_server is not None:
        await grpc_server.stop(grace=1.0)
    await plane.stop()


def create_app(
    predictor,
    limits: Limits | None = None,
    max_batch_size: int = 32,
    max_delay_ms: float = 0.0,
    batch_overhead_tokens: float = 16.0,
    grpc_address: tuple[str, int] | None = None,
) -> Starlette:
    """The Starlette app serving ``predictor`` (loaded before the app starts: ready once the batcher runs), and
    with ``grpc_address`` (host, port) the v2 gRPC service beside it, started and stopped with the app."""
    plane = DataPlane(predictor, limits, max_batch_size, max_delay_ms, batch_overhead_tokens)
    app = Starlette(routes=ROUTES, lifespan=lifespan, exception_handlers={404: routing_error, 405: routing_error})
    app.state.plane, app.state.batcher, app.state.metrics = plane, plane.batcher, plane.metrics
    app.state.grpc_address = grpc_address
    return app
