"""The console in a real browser: Debian's headless chromium driven by Playwright (its own
browser builds are never downloaded), against a running server with tracing on.

The page loads without a console error; a bundled image, an uploaded one and a typed
sentence get their right labels; the charts move after a burst of requests; a slow request
opens into its spans; it works from the keyboard, every control has a name, and nothing
is wider than a phone. Screenshots of both views are written to ORTSERVE_SCREENSHOTS
(`make screenshots` writes the README's into docs/images), else to a temporary folder.
.ci/run installs chromium; elsewhere: apt-get install chromium.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from load_tests import samples
from load_tests.server import ServerProcess
from tests.app.conftest import CHROMIUM
from tests.app.onnx_models import mlp, save
from tests.conftest import MODELS, ROOT

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt-get install chromium; CI installs it)")

playwright_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (the dev extra)")
expect = playwright_api.expect
WAIT_MS = 20_000  # a busy CI machine: generous waits, never a timed assertion


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The shipped models and a drop-in ONNX file of a user's own (a tensors model)."""
    home = tmp_path_factory.mktemp("console") / "models"
    shutil.copytree(MODELS, home)
    save(home, "my-mlp", mlp())
    with ServerProcess(["--model-dir", str(home), "--no-warmup", "--tracing"]) as running:
        yield running


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("ORTSERVE_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class Console:
    """One page of the console, with every error the page reported."""

    def __init__(self, browser: object, url: str, width: int = 1280, height: int = 900) -> None:
        self.page = browser.new_page(viewport={"width": width, "height": height})  # type: ignore[attr-defined]
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(url + "/console")
        expect(self.page.locator("#model")).to_contain_text("fashion-cnn", timeout=WAIT_MS)

    def label(self, text: str) -> None:
        expect(self.page.locator("#label")).to_have_text(text, timeout=WAIT_MS)

    def figure(self, model: str, key: str) -> object:
        return self.page.locator(f'[data-model="{model}"] [data-figure="{key}"]')


def test_trying_the_models_labels_an_image_and_a_sentence(server: ServerProcess, browser: object,
                                                          shots: Path) -> None:
    console = Console(browser, server.url)
    page = console.page
    page.select_option("#sample", "sandal.png")
    console.label("Sandal")
    page.set_input_files("#upload", str(ROOT / "samples" / "trouser.png"))
    console.label("Trouser")
    expect(page.locator("#bars li.chosen")).to_contain_text("Trouser (chosen)")
    expect(page.locator("#bars li")).to_have_count(10)
    expect(page.locator("#answer-version")).to_have_text(re.compile(r"^\d+$"))
    expect(page.locator("#trace-id")).to_have_text(re.compile(r"^[0-9a-f]{32}$"))
    expect(page.locator("#latency")).to_have_text(re.compile(r"^\d+\.\d ms$"))
    page.screenshot(path=str(shots / "console-try.png"), full_page=True)

    page.select_option("#model", "sst2-lstm")
    expect(page.locator("#text")).to_be_visible()
    page.locator("#text").press_sequentially("a wonderful, moving film", delay=20)
    console.label("positive")
    page.locator("#text").fill("")
    page.locator("#text").press_sequentially("dull, tedious and far too long", delay=20)
    console.label("negative")
    assert console.errors == []


def test_a_model_of_ones_own_gets_a_tensor_editor_prefilled_from_its_metadata(server: ServerProcess,
                                                                               browser: object) -> None:
    console = Console(browser, server.url)
    page = console.page
    page.select_option("#model", "my-mlp")
    editor = page.get_by_label("Request body (KServe V2 JSON), prefilled from the model's metadata")
    expect(editor).to_be_visible()
    expect(editor).to_have_value(re.compile(r'"datatype": ?"FP32"'))
    expect(page.get_by_label("Version", exact=True)).to_be_enabled()
    page.get_by_role("button", name="Run").click()
    expect(page.locator("#status")).to_have_text("Answered.", timeout=WAIT_MS)
    expect(page.locator("#outputs")).to_contain_text("FP32 [1, ")
    expect(page.locator("#answer-version")).to_have_text("1")
    editor.fill('{"inputs": [{"name": "nope", "datatype": "FP32", "shape": [1], "data": [1]}]}')
    page.get_by_role("button", name="Run").click()
    expect(page.locator("#status")).to_contain_text("Error 400", timeout=WAIT_MS)
    console.errors = [e for e in console.errors if "400" not in e]  # the browser reports the refused call
    assert console.errors == []


def test_drawing_on_the_pad_is_answered_as_one_draws(server: ServerProcess, browser: object) -> None:
    console = Console(browser, server.url)
    page = console.page
    pad = page.locator("#pad")
    expect(pad).to_be_visible(timeout=WAIT_MS)  # shown once the model's metadata is in: a box only then
    box = pad.bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + 140, box["y"] + 40)
    page.mouse.down()
    page.mouse.move(box["x"] + 140, box["y"] + 240, steps=12)  # one tall stroke
    page.mouse.up()
    expect(page.locator("#label")).not_to_have_text("none yet", timeout=WAIT_MS)
    expect(page.locator("#bars li")).to_have_count(10)
    assert console.errors == []


def test_watching_the_server_charts_a_burst_and_opens_a_slow_request(server: ServerProcess, browser: object,
                                                                     shots: Path) -> None:
    console = Console(browser, server.url)
    page = console.page
    page.click("#tab-watch")
    requests = console.figure("fashion-cnn", "rps")
    expect(requests).to_be_visible(timeout=WAIT_MS)  # two summaries in: the first point
    before = requests.get_attribute("data-now")
    body = samples.v2_json(4, MODELS)
    with httpx.Client(base_url=server.url) as client:
        for _ in range(150):
            assert client.post("/v2/models/fashion-cnn/infer", content=body).status_code == 200
    expect(requests).not_to_have_attribute("data-now", before or "0", timeout=WAIT_MS)
    expect(requests.locator("figcaption")).to_have_text(re.compile(r"^Requests/s: [1-9]"), timeout=WAIT_MS)
    expect(console.figure("fashion-cnn", "batch").locator("figcaption")).to_have_text(
        re.compile(r"^Mean batch size: [1-9]"), timeout=WAIT_MS)
    # The slowest inference answered: the console's own metadata calls are traced too (an
    # inference of 4 images now often answers faster), and so are the refused calls of the
    # tests before, which never reach the model.
    answered = page.locator("#traces tbody tr").filter(has_text="/infer").filter(
        has=page.locator("td:nth-child(3)", has_text=re.compile(r"^200$")))
    slow = answered.first.locator("button")
    expect(slow).to_be_visible(timeout=WAIT_MS)
    slow.click()
    spans = page.locator("#spans li")
    expect(spans.filter(has_text="compute")).to_have_count(1)
    expect(spans.filter(has_text="queue")).to_have_count(1)
    expect(spans.filter(has_text="batch.rows")).not_to_have_count(0)
    expect(page.locator("#trace-title")).to_contain_text("trace ")
    page.screenshot(path=str(shots / "console-watch.png"), full_page=True)
    assert console.errors == []


def test_keyboard_names_and_phone_width(server: ServerProcess, browser: object) -> None:
    console = Console(browser, server.url, width=360, height=740)
    page = console.page
    page.locator("#tab-try").focus()
    page.keyboard.press("ArrowRight")
    expect(page.locator("#tab-watch")).to_be_focused()
    expect(page.locator("#tab-watch")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#watch")).to_be_visible()
    page.keyboard.press("ArrowLeft")
    expect(page.locator("#try")).to_be_visible()
    page.keyboard.press("Tab")  # from the tabs into the panel: the model chooser first
    expect(page.get_by_label("Model", exact=True)).to_be_focused()
    for name in ("Model", "Version", "Upload an image", "Bundled test image"):
        expect(page.get_by_label(name, exact=True)).to_have_count(1)
    page.select_option("#model", "sst2-lstm")
    expect(page.get_by_label("Sentence", exact=True)).to_be_visible()
    unnamed = page.evaluate("""() => [...document.querySelectorAll('button, select, input, textarea')]
        .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim())
        .map(e => e.id)""")
    assert unnamed == []
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 360
    assert console.errors == []
