"""The console: one page, served by the service, to try the served models and watch the
server live (README, "See what it does").

Static files shipped in the package (app/http/static/console), no build step and nothing
from a CDN, so it works offline and in an air-gapped cluster. The page talks to the same
public endpoints a client uses (/v1/models, /v2/models/..., the predict and infer routes);
it adds two read-only ones: the live figures (from the collectors /metrics exposes) and
the slowest recent traced requests with their spans.

Behind the API keys where some are set: a browser cannot send a bearer token when a page is
opened, so these routes ask for the key with `WWW-Authenticate: Basic` (any user name, the
key as password), and the browser then sends it with the page's own calls too.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from fastapi import APIRouter, Request, Response

from app.access import check_api_key
from app.errors import NotFound, Unauthorized
from app.http.responses import JSONResponse, header
from app.http.services import Services, services
from app.observability.summary import summarize
from app.observability.worker_traces import SHOWN

router = APIRouter(tags=["console"])

STATIC = files("app.http") / "static" / "console"
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".png": "image/png", ".svg": "image/svg+xml"}
_FILES = {entry.name: entry for entry in STATIC.iterdir() if entry.is_file()} | {
    f"samples/{entry.name}": entry for entry in (STATIC / "samples").iterdir() if entry.is_file()}
_ASSETS = {name: (entry.read_bytes(), _TYPES.get("." + name.rpartition(".")[2], "application/octet-stream"))
           for name, entry in _FILES.items()}
"""Every file the console may be asked for, read once (27 KB in all), with its type: a
request names one of these or gets 404 (no path of a client's reaches the file system)."""
_HEADERS = {"cache-control": "no-cache", "x-content-type-options": "nosniff",
            # scripts and styles of its own only; images drawn and uploaded are data: URLs
            "content-security-policy": "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; "
                                       "base-uri 'none'; frame-ancestors 'none'"}


class SignIn(Unauthorized):
    """401 that makes a browser ask for the key."""

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Basic realm="ortserve", charset="UTF-8"'}


def _open(request: Request) -> Services:
    """The running service, where the console is on and the caller may see it."""
    found = services(request)
    if not found.settings.console:
        raise NotFound("the console is off (ORTSERVE_CONSOLE=false)")
    if found.api_keys:
        try:
            check_api_key(header(request, b"authorization"), found.api_keys)
        except Unauthorized as refused:
            raise SignIn(refused.message + ", or sign in with the key as password") from None
    return found


def _asset(name: str) -> Response:
    found = _ASSETS.get(name)
    if found is None:
        raise NotFound(f"the console has no file {name[:100]!r}")
    body, media_type = found
    return Response(body, media_type=media_type, headers=_HEADERS)


@router.get("/console", include_in_schema=False)
async def console_page(request: Request) -> Response:
    _open(request)
    return _asset("index.html")


@router.get("/console/assets/{file:path}", include_in_schema=False)
async def console_asset(request: Request, file: str) -> Response:
    # (not `name`: that path parameter is a model's, for the metrics and the access log)
    _open(request)
    return _asset(file)


@router.get("/console/summary", summary="The console's live figures, per model",
            description="Cumulative, per served model: requests and errors answered, the request latency "
                        "histogram's buckets, batches run and their rows, the queue depth now; with several "
                        "worker processes, all of them. From the collectors /metrics exposes.")
async def console_summary(request: Request) -> Response:
    found = _open(request)
    workers = found.worker_metrics
    families = workers.families() if workers is not None else found.metrics.registry.collect()
    return JSONResponse(summarize(families, found.settings.worker_processes))


@router.get("/console/traces", summary="The slowest recent traced requests, with their spans",
            description="From the in-memory rings of recently traced requests (tracing on), with several worker "
                        "processes every worker's: the slowest first, each with its spans' start and duration in ms.")
async def console_traces(request: Request) -> Response:
    found = _open(request)
    tracing = request.app.tracing
    body: dict[str, Any] = {"tracing": tracing is not None, "sample": found.settings.trace_sample,
                            "traces": []}
    if tracing is not None:
        own = [vars(record) for record in tracing.recent.slowest(SHOWN)]
        workers = found.worker_traces  # several worker processes: the slowest of all of them
        body["traces"] = workers.slowest(own, SHOWN) if workers is not None else own
    return JSONResponse(body)
