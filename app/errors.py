"""The service's error types: each names what is wrong and carries its HTTP status.

No FastAPI objects here: the batcher and runtime raise these; app/http/errors.py renders them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


class ServingError(Exception):
    status_code = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def headers(self) -> dict[str, str]:
        return {}


class InvalidInput(ServingError):
    status_code = 400


class ModelRefusedInput(InvalidInput):
    """The model itself refused a request's values (ONNX Runtime's INVALID_ARGUMENT on a
    request that passed every declared check: an index out of a table's range, say; or a
    kernel's failure where the model still answers its warm-up inputs). The client's
    mistake: a 400 for that request alone, never a fault of the model's."""


class ParseElsewhere(InvalidInput):
    """A body too slow to parse on the event loop (NaN or Infinity in a mid-sized body:
    app/protocol/values.py). The inference path (app/inference.py) parses it on a decode
    thread; to any other caller, the 400 it is."""


class UnprocessableInput(InvalidInput):
    status_code = 422


class Unauthorized(ServingError):
    status_code = 401

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class Forbidden(ServingError):
    status_code = 403


class MethodNotAllowed(ServingError):
    status_code = 405

    def __init__(self, message: str, allow: str) -> None:
        super().__init__(message)
        self.allow = allow

    @property
    def headers(self) -> dict[str, str]:
        return {"Allow": self.allow}


class RequestTimeout(ServingError):
    """The body did not arrive in time; the connection is closed."""

    status_code = 408

    @property
    def headers(self) -> dict[str, str]:
        return {"Connection": "close"}


class ClientGone(ServingError):
    """The client hung up before its request ran (nginx's 499: nobody reads the answer)."""

    status_code = 499


class NotFound(ServingError):
    """Nothing at this path (a file the console does not have, the console while it is off)."""

    status_code = 404


class ModelNotFound(NotFound):
    pass


class ModelNotReady(ServingError):
    status_code = 503


class PayloadTooLarge(ServingError):
    status_code = 413


class UnsupportedMediaType(ServingError):
    """A body in a form the server does not read (a Content-Encoding other than gzip or deflate)."""

    status_code = 415


class QueueFull(ServingError):
    status_code = 503

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class DeadlineExceeded(ServingError):
    status_code = 504


class InferenceFailed(ServingError):
    """The model itself failed on a validated batch: a server-side fault."""

    status_code = 500


class StartRefused(RuntimeError):
    """A start the server refuses on purpose, with why: the log shows its message alone, not
    the traceback the framework would print (app/observability/log.py)."""


class NoModelsFound(StartRefused):
    """Nothing to serve in the model directories (control mode none), with what was found instead."""


class StrictModelsRefused(StartRefused):
    """--strict-models and a model failed to load: the server does not start."""

    def __init__(self, failures: list[str]) -> None:
        super().__init__("--strict-models: refusing to start: " + "; ".join(failures))
        self.failures = failures


def validation_errors(errors: Iterable[Mapping[str, Any]], whole: str = "body", limit: int = 5) -> str:
    """pydantic's errors (ValidationError.errors()) as one line: each `location: why`, the
    location dotted, `whole` where the error is the object's as a whole (an empty `whole`:
    the reason alone). The first `limit` errors."""
    parts = []
    for error in list(errors)[:limit]:
        where = ".".join(str(p) for p in error["loc"]) or whole
        parts.append(f"{where}: {reason(error)}" if where else reason(error))
    return "; ".join(parts)


def reason(error: Mapping[str, Any]) -> str:
    """One pydantic error's message, without the "Value error, " pydantic puts before what a
    validator of ours raised: that is a whole sentence of its own."""
    message = str(error["msg"])
    return message.removeprefix("Value error, ")
