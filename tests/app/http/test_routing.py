"""Hot routes declared once: OpenAPI, FastAPI and the fast dispatch agree, and what is added
through FastAPI (middleware, exception handlers) is not skipped. Metric labels name only
models that exist."""

from __future__ import annotations

import re

import httpx
import pytest
from fastapi import Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.middleware.base import BaseHTTPMiddleware

from app.errors import InvalidInput
from app.http import fastpath
from app.http.routes import v1, v2
from app.main import HOT_ROUTES, create_app
from app.settings import Settings
from tests.app.conftest import serving
from tests.conftest import MODELS


def test_each_hot_route_is_one_fastapi_route_with_the_same_endpoint() -> None:
    app = create_app(Settings(model_dir=MODELS))
    routes = {(r.path, m): r for router in (v1.router, v2.router) for r in router.routes
              if isinstance(r, APIRoute) for m in r.methods}
    spec = app.openapi()
    for hot in HOT_ROUTES:
        route = routes[(hot.path, hot.method)]
        assert route.endpoint is hot.endpoint, hot.path  # FastAPI runs the very same function
        documented = spec["paths"][hot.path][hot.method.lower()]
        assert documented["summary"] == hot.summary
        assert documented["description"] == hot.description
        assert {p["name"] for p in documented["parameters"]} == set(re.findall(r"{(\w+)}", hot.path))


async def _predict_through(app_changes: object) -> httpx.Response:
    async with serving(app_changes=app_changes) as client:
        return await client.post("/v1/models/sst2-lstm:predict", json={"instances": ["a fine film"]})


async def test_middleware_added_to_the_app_also_runs_on_hot_routes() -> None:
    async def stamp(request: Request, call_next):  # type: ignore[no-untyped-def]
        response = await call_next(request)
        response.headers["x-stamped"] = "yes"
        return response

    def change(app):  # type: ignore[no-untyped-def]
        app.add_middleware(BaseHTTPMiddleware, dispatch=stamp)

    response = await _predict_through(change)
    assert response.status_code == 200, response.text
    assert response.headers["x-stamped"] == "yes"
    assert response.headers["x-request-id"]  # the service's own context still wraps it


@pytest.mark.parametrize("fast_dispatch", [True, False])
async def test_an_exception_handler_added_to_the_app_renders_hot_route_errors(fast_dispatch: bool) -> None:
    async def teapot(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": f"teapot: {exc}"}, status_code=418)

    def change(app):  # type: ignore[no-untyped-def]
        app.add_exception_handler(InvalidInput, teapot)
        if not fast_dispatch:
            app.add_middleware(BaseHTTPMiddleware, dispatch=lambda request, call_next: call_next(request))

    async with serving(app_changes=change) as client:
        response = await client.post("/v1/models/sst2-lstm:predict", content=b"{not json")
    assert response.status_code == 418
    assert response.json()["error"].startswith("teapot: request body is not valid JSON")


async def test_client_strings_on_templated_routes_never_become_metric_labels() -> None:
    def series(text: str) -> set[str]:
        return {line.split(" ")[0] for line in text.splitlines() if line.startswith("ortserve_requests_total")}

    async with serving() as client:
        async def hostile(start: int) -> set[str]:
            for i in range(start, start + 50):
                name = f"client-{i}"
                statuses = [
                    (await client.get(f"/v2/models/{name}/infer")).status_code,  # wrong method
                    (await client.post(f"/v2/models/{name}/infer", json={"inputs": []})).status_code,
                    (await client.post(f"/v1/models/{name}:predict", json={"instances": [1]})).status_code,
                    (await client.get(f"/v2/models/{name}/versions/{i}/ready")).status_code,
                ]
                assert statuses == [405, 404, 404, 404]
            return series((await client.get("/metrics")).text)

        # the scrape's own series exists before the first count
        assert (await client.get("/metrics")).status_code == 200
        first = await hostile(0)
        second = await hostile(50)
    assert not any("client-" in s for s in second)
    assert first == second  # 50 more such requests added no series
    assert any('status="405"' in s for s in second)  # they were counted, without the name


async def test_remembered_route_matches_keep_each_paths_own_parameters_and_stay_bounded(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fastpath, "MATCHES_KEPT", 4)
    kept: list[int] = []
    original = fastpath.FastPath._match

    def counting(self: fastpath.FastPath, scope: dict[str, object]) -> object:
        kept.append(len(self._matched))
        return original(self, scope)

    monkeypatch.setattr(fastpath.FastPath, "_match", counting)
    body = {"inputs": [{"name": "pixels", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}]}
    async with serving() as client:
        for _ in range(2):  # the second round finds its paths forgotten and matches them again
            for i in range(6):
                missing = await client.post(f"/v2/models/model-{i}/infer", json=body)
                assert missing.status_code == 404
                assert f"'model-{i}'" in missing.json()["error"]  # this request's name, not a remembered one's
                # the same path by another method goes on to the framework, every time
                assert (await client.get(f"/v2/models/model-{i}/infer")).status_code == 405
            served = await client.post("/v2/models/fashion-cnn/infer", json=body)
            assert served.status_code == 200, served.text
            assert served.json()["model_name"] == "fashion-cnn"
        again = len(kept)
        for _ in range(3):  # a remembered path is not matched again
            assert (await client.post("/v2/models/fashion-cnn/infer", json=body)).status_code == 200
    assert len(kept) == again
    assert max(kept) <= 4  # never more remembered than the bound
    assert len(kept) == 2 * 13  # each (method, path) matched once per round: forgotten only past the bound


async def test_a_path_no_route_has_is_a_404_that_says_so() -> None:
    async with serving() as client:
        unknown = await client.get("/v2/nothing/here")
        shared_memory = await client.get("/v2/cudasharedmemory/status")
        long = await client.get("/" + "x" * 5000)
        model = await client.get("/v2/models/no-such-model")
    assert unknown.status_code == 404
    assert unknown.json()["error"] == ("no endpoint GET /v2/nothing/here: the server's endpoints are listed at /docs "
                                       "(OpenAPI: /openapi.json)")
    assert "CUDA shared-memory extension is not served" in shared_memory.json()["error"]
    assert long.status_code == 404
    assert len(long.json()["error"]) < 300  # a path a client chose is not echoed whole
    assert "no-such-model" in model.json()["error"]  # a route's own 404 keeps its message
