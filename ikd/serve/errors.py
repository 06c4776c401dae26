"""The server's errors and the one table that turns them into HTTP answers.

Handlers raise an error type; :data:`STATUS` names its HTTP status and :func:`error_body` writes the Open Inference
Protocol's error body ``{"error": "<message>"}``. Any exception the table does not name is a bug: 500 with the
exception's type and message in the body (the server stays up). No web framework here, so the table can be
tested on its own.
"""

from __future__ import annotations

import json

from ikd.errors import IkdError, InvalidInput


class NotFound(IkdError):
    """An unknown model, version or path."""


class MethodNotAllowed(IkdError):
    """A known path asked with a method it does not answer."""


class PayloadTooLarge(IkdError):
    """A request body past ``--max-body-bytes``."""


class ClientClosed(IkdError):
    """The client hung up before the end of its body: nobody is left to answer; counted as 499 in the metrics."""


class NotReady(IkdError):
    """The model cannot answer yet (the batcher is not running: before start-up, or after shutdown)."""


class InferenceTimeout(IkdError):
    """Inference took longer than ``--timeout-s``."""


#: Error type -> HTTP status. A subclass answers its nearest listed base's status; anything unlisted is 500.
STATUS: dict[type[BaseException], int] = {
    InvalidInput: 400,  # malformed request: JSON, tensors, values, limits on rows and text
    NotFound: 404,
    MethodNotAllowed: 405,
    PayloadTooLarge: 413,
    ClientClosed: 499,  # nginx's code for a client that closed the request
    NotReady: 503,
    InferenceTimeout: 504,
}
INTERNAL = 500


def status_of(exc: BaseException) -> int:
    """The HTTP status of ``exc`` by :data:`STATUS` (500 for an error it does not list)."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return INTERNAL


def error_message(exc: BaseException) -> str:
    """The message a client sees: the error's own for a listed type, the type and message of anything else."""
    if status_of(exc) == INTERNAL:
        return f"internal error: {type(exc).__name__}: {exc}"
    return str(exc)


def error_body(exc: BaseException) -> tuple[int, bytes]:
    """(status, body) of the answer to ``exc``. The body is ASCII JSON: a message quoting a request's text (which
    may hold a lone surrogate) can always be encoded."""
    return status_of(exc), json.dumps({"error": error_message(exc)}).encode("ascii")
