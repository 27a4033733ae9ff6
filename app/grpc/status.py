"""The service's errors as gRPC status codes, the way Triton's gRPC front end maps its own:
a client's mistake is INVALID_ARGUMENT with the message the HTTP 400 carries, and so on."""

from __future__ import annotations

import grpc

from app.errors import ModelNotReady, QueueFull, ServingError

_BY_HTTP_STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,  # over a limit: gRPC's own code for a message too large
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    499: grpc.StatusCode.CANCELLED,
    500: grpc.StatusCode.INTERNAL,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def code_of(error: ServingError) -> grpc.StatusCode:
    """503 is two things over HTTP: a full queue (try again soon) and a model not served."""
    if isinstance(error, QueueFull):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if isinstance(error, ModelNotReady):
        return grpc.StatusCode.UNAVAILABLE
    return _BY_HTTP_STATUS.get(error.status_code, grpc.StatusCode.UNKNOWN)
