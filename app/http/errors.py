"""Errors as HTTP responses: `{"error": "<what is wrong>"}` with the status the error names.

The one renderer for every route, installed as the app's exception handlers; the fast
dispatch (app/http/fastpath.py) looks handlers up in the same table, so a handler added
to the app applies to both paths.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import ServingError, validation_errors
from app.http.responses import JSONResponse

logger = logging.getLogger(__name__)


async def render_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, ServingError):
        if exc.status_code >= 500 and exc.status_code not in (503, 504):
            logger.error("server error: %s", exc.message)
        return JSONResponse({"error": exc.message}, exc.status_code, exc.headers)
    if isinstance(exc, RequestValidationError):
        return JSONResponse({"error": validation_errors(exc.errors(), limit=1) or "invalid request"}, 422)
    if isinstance(exc, StarletteHTTPException):
        if exc.status_code == 404 and exc.detail == "Not Found":  # the router's: no route has this path
            return JSONResponse({"error": no_endpoint(request.method, request.url.path)}, 404)
        return JSONResponse({"error": str(exc.detail)}, exc.status_code, dict(exc.headers or {}))
    # Nobody expected it: logged with its traceback, answered without internals.
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"error": "internal server error"}, 500)


_NOT_SERVED = {  # Triton's extensions a client may try, and what to do instead
    "/v2/cudasharedmemory": "Triton's CUDA shared-memory extension is not served: send the tensors in the request "
                            "(JSON or binary tensors), or in system shared memory (--shared-memory)",
}


def no_endpoint(method: str, path: str) -> str:
    """The 404 for a path no route has: which, and where the endpoints are listed (a path a
    client chose, cut short)."""
    shown = path if len(path) <= 200 else path[:200] + "..."
    hint = next((why for prefix, why in _NOT_SERVED.items() if path.startswith(prefix)), None)
    return f"no endpoint {method} {shown}: " + (hint or "the server's endpoints are listed at /docs "
                                                       "(OpenAPI: /openapi.json)")


RENDERED = (ServingError, RequestValidationError, StarletteHTTPException, Exception)


def install_error_handlers(app: FastAPI) -> None:
    for kind in RENDERED:
        app.add_exception_handler(kind, render_error)
