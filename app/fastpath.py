"""The inference routes served in front of the framework.

At high request rates the event loop is the bottleneck, and FastAPI's per-request layers
(telemetry checks, exception middlewares, exit stacks, dependency solving, the route
scan) cost about a third of its time per request (py-spy at concurrency 64). Requests
for the hot routes are dispatched here directly; everything else, and the lifespan, goes
to the framework. Errors are rendered by the same functions as the app's exception
handlers use.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import ServingError
from app.routes.body import error_response, internal_error_response


class FastPath:
    def __init__(self, app: ASGIApp, routes: list[Route], owner: Starlette) -> None:
        self.app = app
        self.routes = routes
        self.owner = owner  # what request.app is for the hot routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for route in self.routes:
                match, child = route.matches(scope)
                if match is Match.FULL:
                    scope.update(child)
                    scope["app"] = self.owner
                    await self._serve(route, scope, receive, send)
                    return
        await self.app(scope, receive, send)

    @staticmethod
    async def _serve(route: Route, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            response = await route.endpoint(request)
        except ServingError as e:
            response = error_response(e)
        except Exception:
            response = internal_error_response(request.method, request.url.path)
        await response(scope, receive, send)
