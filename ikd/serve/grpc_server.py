"""The Open Inference Protocol (v2) over gRPC: ``inference.GRPCInferenceService`` beside the REST API.

It runs in the same event loop as the HTTP server and answers through the same
:class:`~ikd.serve.dataplane.DataPlane`, so a gRPC request joins the same batches, meets the same limits (rows,
text length, timeout; a message past ``--max-body-bytes`` is refused by gRPC itself with RESOURCE_EXHAUSTED) and is
counted in the same metrics, as ``ikd_requests_total{endpoint="grpc_infer", code=...}`` and the request histogram
(``code`` is the HTTP status the REST API would have answered). A ``ModelInferRequest`` is turned into the JSON
form of a v2 request (values from ``raw_input_contents``, the binary extension's layout, or from ``contents``),
and the answer's outputs go back in ``raw_output_contents``, as Triton answers. An error answers the gRPC status
that :data:`CODES` gives its HTTP status, with the same message.

The messages are :mod:`ikd.serve.proto.inference_pb2` (generated from ``inference.proto``, written for ikd); the
service needs no generated stub: each method is registered by name with its messages' (de)serializers.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from ikd.errors import IkdError, InvalidInput
from ikd.serve.binary import tensor_bytes, tensor_values
from ikd.serve.dataplane import DataPlane
from ikd.serve.errors import error_message, status_of
from ikd.serve.proto import inference_pb2 as pb

SERVICE = "inference.GRPCInferenceService"

#: The HTTP status of an error (:data:`ikd.serve.errors.STATUS`) -> the gRPC status it answers (else INTERNAL).
CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}

#: v2 datatype -> the ``InferTensorContents`` field that holds its values.
CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


# ---- messages <-> the JSON form ----------------------------------------------------------------------------------
def _contents(tensor: Any) -> list[Any]:
    """The flat values of an input tensor given in ``contents`` (texts for BYTES)."""
    field = CONTENTS.get(tensor.datatype)
    if field is None:
        raise InvalidInput(f"input '{tensor.name}': datatype {tensor.datatype!r} has no contents field")
    values = list(getattr(tensor.contents, field))
    if tensor.datatype != "BYTES":
        return values
    try:
        return [v.decode("utf-8") for v in values]
    except UnicodeDecodeError:
        raise InvalidInput(f"input '{tensor.name}': an element is not valid UTF-8 text") from None


def infer_body(request: Any) -> dict[str, Any]:
    """The JSON form of a ``ModelInferRequest``, for :meth:`DataPlane.infer`."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs")
    inputs = [
        {
            "name": t.name,
            "datatype": t.datatype,
            "shape": list(t.shape),
            "data": tensor_values(t.name, t.datatype, raw[i]) if raw else _contents(t),
        }
        for i, t in enumerate(request.inputs)
    ]
    body: dict[str, Any] = {"inputs": inputs}
    if request.id:
        body["id"] = request.id
    if request.outputs:
        body["outputs"] = [{"name": o.name} for o in request.outputs]
    return body


def infer_response(answer: dict[str, Any]) -> Any:
    """A ``ModelInferResponse`` of a v2 answer, every output's values in ``raw_output_contents``."""
    response = pb.ModelInferResponse(
        model_name=answer["model_name"], model_version=answer["model_version"], id=answer.get("id", "")
    )
    for out in answer["outputs"]:
        response.outputs.add(name=out["name"], datatype=out["datatype"], shape=out["shape"])
        response.raw_output_contents.append(tensor_bytes(out["datatype"], out["data"]))
    return response


def model_metadata(meta: dict[str, Any]) -> Any:
    tensors = pb.ModelMetadataResponse.TensorMetadata
    return pb.ModelMetadataResponse(
        name=meta["name"],
        versions=meta["versions"],
        platform=meta["platform"],
        inputs=[tensors(**t) for t in meta["inputs"]],
        outputs=[tensors(**t) for t in meta["outputs"]],
    )


# ---- the service -------------------------------------------------------------------------------------------------
class Service:
    """The v2 gRPC methods over ``plane``: each counted in the plane's metrics, errors as gRPC statuses."""

    def __init__(self, plane: DataPlane):
        self.plane = plane

    async def _answer(self, endpoint: str, context: Any, answer: Callable[[], Any]) -> Any:
        start, status = time.perf_counter(), 200
        try:
            result = answer()
            return await result if isinstance(result, Awaitable) else result
        except Exception as exc:
            status = status_of(exc)
            await context.abort(CODES.get(status, grpc.StatusCode.INTERNAL), error_message(exc))
        finally:
            self.plane.metrics.observe_request(endpoint, status, time.perf_counter() - start)

    async def server_live(self, request: Any, context: Any) -> Any:
        return await self._answer("grpc_live", context, lambda: pb.ServerLiveResponse(live=self.plane.live()["live"]))

    async def server_ready(self, request: Any, context: Any) -> Any:
        return await self._answer("grpc_ready", context, lambda: pb.ServerReadyResponse(ready=self.plane.is_ready))

    async def model_ready(self, request: Any, context: Any) -> Any:
        def ready() -> Any:
            self.plane.check_model(request.name, request.version or "1")
            return pb.ModelReadyResponse(ready=self.plane.is_ready)

        return await self._answer("grpc_model_ready", context, ready)

    async def server_metadata(self, request: Any, context: Any) -> Any:
        return await self._answer(
            "grpc_server", context, lambda: pb.ServerMetadataResponse(**self.plane.server_metadata())
        )

    async def model_metadata(self, request: Any, context: Any) -> Any:
        return await self._answer(
            "grpc_model",
            context,
            lambda: model_metadata(self.plane.model_metadata(request.name, request.version or "1")),
        )

    async def model_infer(self, request: Any, context: Any) -> Any:
        async def infer() -> Any:
            version = request.model_version or "1"
            self.plane.check_model(request.model_name, version)
            answer = await self.plane.infer(request.model_name, infer_body(request), version)
            return infer_response(answer)

        return await self._answer("grpc_infer", context, infer)

    def handler(self) -> Any:
        """The generic handler of :data:`SERVICE`'s methods."""
        methods: dict[str, tuple[Any, Any, Any]] = {
            "ServerLive": (self.server_live, pb.ServerLiveRequest, pb.ServerLiveResponse),
            "ServerReady": (self.server_ready, pb.ServerReadyRequest, pb.ServerReadyResponse),
            "ModelReady": (self.model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse),
            "ServerMetadata": (self.server_metadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse),
            "ModelMetadata": (self.model_metadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse),
            "ModelInfer": (self.model_infer, pb.ModelInferRequest, pb.ModelInferResponse),
        }
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                name: grpc.unary_unary_rpc_method_handler(
                    call, request_deserializer=req.FromString, response_serializer=resp.SerializeToString
                )
                for name, (call, req, resp) in methods.items()
            },
        )


async def start(plane: DataPlane, host: str, port: int) -> Any:
    """A started ``grpc.aio`` server of :class:`Service` on ``host:port`` (in the running event loop)."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", plane.limits.max_body_bytes),
            ("grpc.so_reuseport", 0),  # a second server on a taken port is an error, not a silent share
        ]
    )
    server.add_generic_rpc_handlers((Service(plane).handler(),))
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as exc:
        raise IkdError(f"gRPC: cannot listen on {host}:{port} ({exc})") from None
    if bound == 0:
        raise IkdError(f"gRPC: cannot listen on {host}:{port}")
    await server.start()
    return server
