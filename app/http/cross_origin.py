"""Calls from web pages of other origins (CORS), for the origins `cors_origins` names.

Starlette's CORSMiddleware, outermost: it answers browsers' preflights (OPTIONS) itself and
adds the allow-origin header to every answer of an allowed origin, errors included, so that
a page can read why a request failed. The lists below are what the service's own clients
send and what a page needs to read back; nothing more is allowed. No credentials mode: the
API keys are bearer tokens a page sends itself, not cookies a browser adds.

A preflight it refuses is answered as the service's other errors are, a JSON `error` that
says what was not allowed and what is (Starlette's own says "Disallowed CORS origin" in
plain text): a browser keeps it from the page, but whoever reads the network panel, or
tries the call with curl, sees why.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp

METHODS = ("GET", "POST")
REQUEST_HEADERS = ("authorization", "content-type", "content-encoding", "inference-header-content-length",
                   "x-request-id", "traceparent", "tracestate")
"""A bearer key, a body's type and coding, Triton's binary tensors, request ids and traces."""
ANSWER_HEADERS = ("x-request-id", "x-trace-id", "inference-header-content-length", "retry-after")
"""Read by a page: the request and trace ids, Triton's binary answers, when to retry a 503."""
PREFLIGHT_CACHE_S = 600


def cross_origin(app: ASGIApp, origins: list[str]) -> ASGIApp:
    """`app` answering pages of `origins` (`*`: any)."""
    return CrossOrigin(app, allow_origins=origins, allow_methods=METHODS, allow_headers=REQUEST_HEADERS,
                       expose_headers=ANSWER_HEADERS, max_age=PREFLIGHT_CACHE_S)


class CrossOrigin(CORSMiddleware):
    """Starlette's, with refusals that say why."""

    def preflight_response(self, request_headers: Headers) -> Response:
        answer = super().preflight_response(request_headers)
        if answer.status_code != 400:
            return answer
        # Starlette decided, and said what in its text ("Disallowed CORS origin, headers"): each
        # of those, put in words that name the request's values and what is allowed
        failed = bytes(answer.body).decode().removeprefix("Disallowed CORS ").split(", ")
        headers = {name: value for name, value in answer.headers.items()
                   if name.lower() not in ("content-type", "content-length")}
        reasons = [self._why(failure, request_headers) for failure in failed]
        return JSONResponse({"error": "cross-origin call refused: " + "; ".join(reasons)}, 400, headers)

    def _why(self, failure: str, request_headers: Headers) -> str:
        if failure == "origin":
            return (f"origin {request_headers['origin']!r} is not one of cors_origins (--cors-origins or "
                    "ORTSERVE_CORS_ORIGINS)")
        if failure == "method":
            return f"method {request_headers['access-control-request-method']!r} is not one of {', '.join(METHODS)}"
        if failure == "headers":
            asked = request_headers.get("access-control-request-headers", "").lower().split(",")
            others = [h.strip() for h in asked if h.strip() and h.strip() not in self.allow_headers]
            return (f"header{'s' if len(others) > 1 else ''} {', '.join(map(repr, others))} not allowed "
                    f"(allowed: {', '.join(REQUEST_HEADERS)})")
        if failure == "private-network":
            return "calls from a public page to a private network address are not allowed"
        return f"{failure} not allowed"
