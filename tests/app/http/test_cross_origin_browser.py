"""A web page of another origin calling the server from a real browser (Debian's headless
chromium driven by Playwright, as the console's tests): with `cors_origins` naming the page's
origin, its fetch with an API key and Triton's binary-tensor header gets the answer and
reads its headers; a page of an origin not named gets nothing. The pages are served by small
servers on other ports of 127.0.0.1, so that page and API differ in origin as on two hosts
(and share the loopback address space, which chromium's local network checks want of a page
that calls 127.0.0.1; a page fulfilled by Playwright's routing has no address and is refused).
.ci/run installs chromium; elsewhere: apt-get install chromium.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from load_tests.server import ServerProcess
from tests.app.conftest import CHROMIUM
from tests.conftest import MODELS

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt-get install chromium; CI installs it)")

KEY = "browser-page-key"

# What a page does: a V2 inference call with its key, the answer's JSON and one of its headers.
CALL = """async ([url, key]) => {
  const pixels = Array(784).fill(0.5);
  try {
    const answer = await fetch(url + "/v2/models/fashion-cnn/infer", {
      method: "POST",
      headers: {"Authorization": "Bearer " + key, "Content-Type": "application/json"},
      body: JSON.stringify({inputs: [{name: "pixels", shape: [1, 1, 28, 28], datatype: "FP32", data: pixels}]}),
    });
    return {status: answer.status, requestId: answer.headers.get("x-request-id"), body: await answer.json()};
  } catch (e) {
    return {failed: String(e)};
  }
}"""


class _BlankPage(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = b"<!doctype html><title>a page of another origin</title>"
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        pass


@pytest.fixture(scope="module")
def pages() -> Iterator[tuple[str, str]]:
    """Two page origins on 127.0.0.1: the one the server allows, and another."""
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), _BlankPage) for _ in range(2)]
    for page_server in servers:
        threading.Thread(target=page_server.serve_forever, daemon=True).start()
    try:
        allowed, other = (f"http://127.0.0.1:{page_server.server_address[1]}" for page_server in servers)
        yield allowed, other
    finally:
        for page_server in servers:
            page_server.shutdown()
            page_server.server_close()


@pytest.fixture(scope="module")
def server(pages: tuple[str, str]) -> Iterator[ServerProcess]:
    allowed, _ = pages
    with ServerProcess(["--model-dir", str(MODELS), "--no-warmup", "--workers", "1", "--cors-origins", allowed],
                       env={"ORTSERVE_API_KEYS": f'["{KEY}"]'}) as running:
        yield running


def page_of(browser: object, origin: str) -> object:
    page = browser.new_page()  # type: ignore[attr-defined]
    page.goto(f"{origin}/index.html")
    return page


def test_a_page_of_an_allowed_origin_gets_its_answer_and_reads_its_headers(
        server: ServerProcess, browser: object, pages: tuple[str, str]) -> None:
    page = page_of(browser, pages[0])
    result = page.evaluate(CALL, [server.url, KEY])  # type: ignore[attr-defined]
    assert result.get("failed") is None, result
    assert result["status"] == 200
    assert result["requestId"]  # an exposed header: the page may read it
    assert result["body"]["model_name"] == "fashion-cnn"
    assert len(result["body"]["outputs"][0]["data"]) == 10
    wrong_key = page.evaluate(CALL, [server.url, "not-the-key"])  # type: ignore[attr-defined]
    assert wrong_key["status"] == 401
    assert "error" in wrong_key["body"]  # the page can read why


def test_a_page_of_another_origin_gets_nothing(server: ServerProcess, browser: object,
                                               pages: tuple[str, str]) -> None:
    page = page_of(browser, pages[1])
    result = page.evaluate(CALL, [server.url, KEY])  # type: ignore[attr-defined]
    assert "Failed to fetch" in result.get("failed", ""), result
