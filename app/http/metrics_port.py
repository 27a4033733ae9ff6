"""The metrics port (`--metrics-port`, Triton's 8002): the app's own GET /metrics on a port of
its own, for scrape configurations written for Triton. uvicorn serves the one app on every
socket it listens on; on this one, any other path is a 404 that says where the API is."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from app.http.responses import JSONResponse


class MetricsPort:
    """In front of the app: requests that came in on `port` reach it only for /metrics."""

    def __init__(self, app: ASGIApp, port: int, api_port: int) -> None:
        self.app = app
        self.port = port
        self.api_port = api_port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server")
        if scope["type"] == "http" and server is not None and server[1] == self.port and scope["path"] != "/metrics":
            refused = JSONResponse({"error": f"port {self.port} serves GET /metrics only; the API is on port "
                                             f"{self.api_port}"}, 404)
            await refused(scope, receive, send)
            return
        await self.app(scope, receive, send)
