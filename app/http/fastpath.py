"""The hot routes (app/http/hot_routes.py) dispatched in front of the framework.

At high request rates the event loop is the bottleneck, and FastAPI's per-request layers
(telemetry checks, exception middlewares, exit stacks, dependency solving, the route
scan) cost about a third of its time per request (docs/benchmarks.md). Requests for the
hot routes are served here directly; everything else, and the lifespan, goes on to the
framework. Errors are rendered by the app's own exception handlers.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from app.http.hot_routes import Endpoint, HotRoute

MATCHES_KEPT = 1024
"""Paths whose match FastPath remembers; past this it forgets them all and starts again."""


class FastPath:
    def __init__(self, app: ASGIApp, routes: Sequence[HotRoute], owner: Starlette) -> None:
        self.app = app
        # Starlette's Route does the path matching: the same regex and converters FastAPI uses.
        self.routes = [Route(r.path, r.endpoint, methods=[r.method]) for r in routes]
        self.owner = owner  # what request.app is for the hot routes, and whose handlers render errors

        # Each (method, path) is matched once: the same few paths come again and again, and
        # a scan of every route's pattern costs more than the lookup. Bounded, as clients
        # choose the paths.
        self._matched: dict[tuple[str, str, str], tuple[Route, dict[str, object]] | None] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            key = (scope["method"], scope["path"], scope.get("root_path", ""))
            try:
                found = self._matched[key]
            except KeyError:
                found = self._match(scope)
                if len(self._matched) >= MATCHES_KEPT:
                    self._matched.clear()
                self._matched[key] = found
            if found is not None:
                route, params = found
                scope["endpoint"] = route.endpoint
                scope["path_params"] = {**scope.get("path_params", {}), **params}
                scope["app"] = self.owner
                scope["route"] = route  # as Starlette's router sets it: the access log reads its template
                await self._serve(route.endpoint, scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _match(self, scope: Scope) -> tuple[Route, dict[str, object]] | None:
        for route in self.routes:
            match, child = route.matches({**scope, "path_params": {}})
            if match is Match.FULL:
                return route, child["path_params"]
        return None

    async def _serve(self, endpoint: Endpoint, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            response = await endpoint(request, **scope["path_params"])
        except Exception as exc:
            response = await self._render(request, exc)
        await response(scope, receive, send)

    async def _render(self, request: Request, exc: Exception) -> Response:
        handlers = self.owner.exception_handlers
        for kind in type(exc).__mro__:
            handler = handlers.get(kind)
            if handler is not None:
                response = handler(request, exc)
                return await response if inspect.isawaitable(response) else response
        raise exc
