"""The inference routes, each declared once: one table gives both FastAPI's route (OpenAPI,
and the path every request takes when the fast dispatch is off) and the fast dispatch's
match (app/http/fastpath.py).

An endpoint is `async def endpoint(request, **path_params) -> Response`, with each path
parameter in its signature, so FastAPI documents it and both paths call it alike.

What the fast dispatch does not give a hot route, compared with FastAPI's own routing:
- Dependencies: a route's or router's `dependencies=` are not run, nor are parameters
  other than the request and the path parameters solved. App-level dependencies
  (`FastAPI(dependencies=...)`) and any middleware added with `add_middleware` turn the
  fast dispatch off as a whole (`fast_dispatch_possible`), so they never skip a route.
- Validation: nothing is validated by FastAPI; the endpoint reads and checks its own
  body (it must: the bodies are raw JSON or Triton's binary tensors).
- Exception middlewares: an exception is rendered by the handler the app registered for
  its class (looked up along its MRO, as Starlette does), without the debug traceback page.
- FastAPI's per-request OpenTelemetry look-up in `FastAPI.__call__`; mounts and
  `root_path` prefixes are not matched.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, FastAPI, Response

from app.http.routes.common import INFER_ERRORS

Endpoint = Callable[..., Awaitable[Response]]


@dataclass(frozen=True)
class HotRoute:
    method: str
    path: str
    endpoint: Endpoint
    summary: str
    description: str
    openapi_extra: dict[str, Any] = field(default_factory=dict)


def add_hot_routes(router: APIRouter, routes: Sequence[HotRoute]) -> None:
    """Register each hot route with FastAPI, where OpenAPI and the slow path find it."""
    for route in routes:
        router.add_api_route(route.path, route.endpoint, methods=[route.method], summary=route.summary,
                             description=route.description, responses=INFER_ERRORS,
                             openapi_extra=route.openapi_extra or None)


def fast_dispatch_possible(app: FastAPI) -> str | None:
    """None when the fast dispatch loses nothing the app asked for, else why it is off."""
    if app.user_middleware:
        names = ", ".join(getattr(m.cls, "__name__", str(m.cls)) for m in app.user_middleware)
        return f"middleware added to the app ({names})"
    if app.router.dependencies:
        return "app-level dependencies"
    return None
