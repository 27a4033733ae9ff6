"""The OpenAPI document a person reads at /docs: valid, described, honest about status codes,
usable offline, and with examples that work as they are."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate

from tests.app.conftest import serving

ADMIN_TOKEN = "docs-token"
AS_ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}


async def document() -> dict[str, Any]:
    async with serving() as client:
        return (await client.get("/openapi.json")).json()


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, ops in spec["paths"].items() for method, op in ops.items()]


async def test_the_document_is_valid_openapi_with_a_description_for_every_operation() -> None:
    spec = await document()
    validate(spec)
    for path, method, op in operations(spec):
        assert op.get("summary"), (method, path)
        assert len(op.get("description", "")) > 30, (method, path)
        assert "HOT_ROUTES" not in op["description"], (method, path)  # for users, not about internals


async def test_only_the_status_codes_an_operation_can_answer_are_listed() -> None:
    spec = await document()
    codes = {(path, method): set(op["responses"]) for path, method, op in operations(spec)}
    assert codes[("/v2/health/live", "get")] == {"200"}
    assert codes[("/v2/models/{name}/config", "get")] == {"200", "404", "503"}
    assert codes[("/v2/models/stats", "get")] == {"200"}
    assert "413" not in codes[("/v2/models/{name}", "get")]
    assert {"400", "408", "413", "503", "504"} <= codes[("/v2/models/{name}/infer", "post")]
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    for path, method, op in operations(spec):
        for code, response in op["responses"].items():
            assert response.get("description"), (method, path, code)


async def test_metrics_are_documented_as_prometheus_text() -> None:
    spec = await document()
    assert set(spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}


async def test_the_docs_pages_load_their_assets_from_the_service_itself() -> None:
    async with serving() as client:
        for page in ("/docs", "/redoc"):
            html = (await client.get(page)).text
            urls = re.findall(r'(?:src|href)="([^"]+)"', html) + re.findall(r"url: '([^']+)'", html)
            assert urls, page
            assert not [u for u in urls if u.startswith(("http:", "https:", "//"))], (page, urls)
            for url in urls:
                asset = await client.get(url)
                assert asset.status_code == 200, url
                assert len(asset.content) > 100, url


async def test_every_operation_works_with_its_documented_examples(tmp_path: Path) -> None:
    """Each operation is called with its path parameters' examples and, for each request
    body example (keyed by the model or region it is for), with that body: every call gets a
    200 (the shared-memory calls with the example's object where the server finds it)."""
    (tmp_path / "ortserve_input0").write_bytes(bytes(3136))
    async with serving(admin_token=ADMIN_TOKEN, model_control_mode="explicit", load_model=["*"],
                       shared_memory=True, shared_memory_dir=tmp_path) as client:
        spec = (await client.get("/openapi.json")).json()
        called = 0
        for path, method, op in operations(spec):
            params = {p["name"]: p["schema"]["examples"][0] for p in op.get("parameters", [])}
            content = op.get("requestBody", {}).get("content", {}).get("application/json", {})
            bodies = [(name, example["value"]) for name, example in content.get("examples", {}).items()]
            for model, body in bodies or [(None, None)]:
                values = params | ({"name": model} if model else {})
                if model and model != params.get("name") and "version" in params:
                    # the documented version is the example model's; the others' are in their metadata
                    values["version"] = (await client.get(f"/v2/models/{model}")).json()["versions"][-1]
                url = re.sub(r"\{(\w+)\}", lambda m, v=values: str(v[m.group(1)]), path)  # type: ignore[misc]
                response = await client.request(method, url, json=body, headers=AS_ADMIN)
                assert response.status_code == 200, (method, url, response.text[:300])
                called += 1
        assert called >= len(operations(spec)) + 2  # two models' examples on each inference route


@pytest.mark.parametrize("path", ["/v1/models/{name}:predict", "/v2/models/{name}/infer"])
async def test_the_inference_examples_cover_every_model(path: str) -> None:
    spec = await document()
    examples = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["examples"]
    assert set(examples) == {"fashion-cnn", "sst2-lstm"}
