"""/docs and /redoc in a real headless browser (Debian's chromium), on a machine without
internet access: the pages render every operation from assets the service serves itself.
.ci/run installs chromium; elsewhere: apt-get install chromium."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator

import pytest

from app.main import create_app
from load_tests.server import ServerProcess
from tests.conftest import MODELS

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(BROWSER is None, reason="needs chromium (apt-get install chromium; CI installs it)")


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess(["--model-dir", str(MODELS), "--no-warmup"]) as running:
        yield running


def rendered(url: str) -> str:
    """The page's DOM after its scripts ran."""
    assert BROWSER is not None
    result = subprocess.run([BROWSER, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             "--virtual-time-budget=10000", "--dump-dom", url],
                            capture_output=True, text=True, timeout=120)
    return result.stdout


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_api_pages_render_every_operation_offline(page: str, server: ServerProcess) -> None:
    dom = rendered(server.url + page)
    spec = create_app().openapi()
    summaries = [op["summary"] for ops in spec["paths"].values() for op in ops.values()]
    assert len(summaries) > 15
    missing = [s for s in summaries if s and s.split(":")[0] not in dom]
    assert not missing, f"{page} did not render: {missing}"
