"""Calls from web pages of other origins (CORS), for the origins `cors_origins` names.

Starlette's CORSMiddleware, outermost: it answers browsers' preflights (OPTIONS) itself and
adds the allow-origin header to every answer of an allowed origin, errors included, so that
a page can read why a request failed. The lists below are what the service's own clients
send and what a page needs to read back; nothing more is allowed. No credentials mode: the
API keys are bearer tokens a page sends itself, not cookies a browser adds.
"""

from __future__ import annotations

from starlette.middleware.cors import CORSMiddleware
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
    return CORSMiddleware(app, allow_origins=origins, allow_methods=METHODS, allow_headers=REQUEST_HEADERS,
                          expose_headers=ANSWER_HEADERS, max_age=PREFLIGHT_CACHE_S)
