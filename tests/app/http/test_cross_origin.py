"""Pages of other origins (CORS, `cors_origins`): preflights answered, answers (errors too)
readable by an allowed origin only, nothing of it where no origin is named. A real browser
calling across origins: test_cross_origin_browser.py."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.settings import Settings
from load_tests import samples
from tests.app.conftest import serving
from tests.conftest import MODELS

PAGE = "https://app.example.com"
KEY = "page-key-1"
INFER = "/v2/models/fashion-cnn/infer"


def preflight(origin: str, headers: str = "authorization, content-type") -> dict[str, str]:
    return {"origin": origin, "access-control-request-method": "POST", "access-control-request-headers": headers}


async def test_an_allowed_origins_preflight_and_call_are_answered_for_it() -> None:
    body = samples.v2_json(1, MODELS)
    async with serving(cors_origins=[PAGE, "http://127.0.0.1:5173"], api_keys=[KEY]) as client:
        asked = await client.options(INFER, headers=preflight(
            PAGE, "authorization, content-type, inference-header-content-length, traceparent"))
        called = await client.post(INFER, content=body, headers={
            "origin": PAGE, "authorization": f"Bearer {KEY}", "content-type": "application/json"})
        refused = await client.post(INFER, content=body, headers={"origin": PAGE, "content-type": "application/json"})
        unknown = await client.post("/v2/models/nope/infer", content=body, headers={
            "origin": PAGE, "authorization": f"Bearer {KEY}"})
    assert asked.status_code == 200
    assert asked.headers["access-control-allow-origin"] == PAGE
    assert {m.strip() for m in asked.headers["access-control-allow-methods"].split(",")} == {"GET", "POST"}
    allowed = {h.strip().lower() for h in asked.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "inference-header-content-length", "traceparent"} <= allowed
    assert "access-control-allow-credentials" not in asked.headers  # bearer keys, not cookies
    assert called.status_code == 200, called.text
    assert called.headers["access-control-allow-origin"] == PAGE
    exposed = {h.strip() for h in called.headers["access-control-expose-headers"].split(",")}
    assert {"x-request-id", "inference-header-content-length", "retry-after"} <= exposed
    assert called.headers["x-request-id"]
    # a page can read why it failed, not only that it did
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == PAGE
    assert unknown.status_code == 404
    assert unknown.headers["access-control-allow-origin"] == PAGE
    assert "nope" in unknown.json()["error"]


async def test_other_origins_and_headers_are_not_allowed() -> None:
    body = samples.v2_json(1, MODELS)
    async with serving(cors_origins=[PAGE]) as client:
        other = await client.options(INFER, headers=preflight("https://evil.example"))
        odd_header = await client.options(INFER, headers=preflight(PAGE, "x-something-else"))
        deleting = await client.options(INFER, headers={"origin": PAGE, "access-control-request-method": "DELETE"})
        called = await client.post(INFER, content=body, headers={"origin": "https://evil.example"})
        same_origin = await client.post(INFER, content=body)  # no Origin: not a cross-origin call at all
    assert other.status_code == odd_header.status_code == deleting.status_code == 400
    assert "access-control-allow-origin" not in other.headers
    # why, as every other error: JSON that names what was refused and what is allowed
    assert "origin 'https://evil.example' is not one of cors_origins" in other.json()["error"]
    assert "--cors-origins" in other.json()["error"]
    assert "header 'x-something-else' not allowed (allowed: authorization, content-type" in odd_header.json()["error"]
    assert "origin" not in odd_header.json()["error"].split(":", 1)[1]  # the page's origin is allowed
    assert "method 'DELETE' is not one of GET, POST" in deleting.json()["error"]
    assert deleting.headers["content-type"] == "application/json"
    # served (a browser withholds the answer from the page), but not marked readable for it
    assert called.status_code == 200
    assert "access-control-allow-origin" not in called.headers
    assert same_origin.status_code == 200
    assert "access-control-allow-origin" not in same_origin.headers


async def test_any_origin_with_a_star() -> None:
    async with serving(cors_origins=["*"]) as client:
        asked = await client.options(INFER, headers=preflight("https://anywhere.example"))
        called = await client.get("/v2/models/fashion-cnn", headers={"origin": "https://anywhere.example"})
    assert asked.status_code == 200
    assert asked.headers["access-control-allow-origin"] == "*"
    assert called.status_code == 200
    assert called.headers["access-control-allow-origin"] == "*"


async def test_without_origins_nothing_answers_for_other_pages() -> None:
    async with serving() as client:
        asked = await client.options(INFER, headers=preflight(PAGE))
        called = await client.get("/v2/models/fashion-cnn", headers={"origin": PAGE})
    assert asked.status_code == 405
    assert not any(name.startswith("access-control-") for name in asked.headers)
    assert not any(name.startswith("access-control-") for name in called.headers)


@pytest.mark.parametrize("given", ["https://app.example.com/", "https://App.example.com", "app.example.com",
                                   "https://app.example.com:443", "http://app.example.com:80",
                                   "ftp://app.example.com", "*,https://app.example.com"])
def test_an_origin_no_browser_sends_is_refused_with_why(given: str) -> None:
    with pytest.raises(ValidationError, match="cors_origins"):
        Settings(cors_origins=given)


def test_origins_are_read_comma_separated_or_as_json() -> None:
    assert Settings(cors_origins="https://a.example, http://127.0.0.1:8080").cors_origins == [
        "https://a.example", "http://127.0.0.1:8080"]
    assert Settings(cors_origins='["http://[::1]:3000"]').cors_origins == ["http://[::1]:3000"]
    assert Settings(cors_origins="*").cors_origins == ["*"]
    assert Settings().cors_origins == []
