"""Shared fixtures. Async tests run on asyncio without a plugin: see pytest_pyfunc_call."""

from __future__ import annotations

import asyncio
import inspect
import os
from pathlib import Path

import pytest

from app.manifest import latest_version

ROOT = Path(__file__).resolve().parent.parent
MODELS = Path(os.environ.get("TESTS_MODEL_DIR", ROOT / "models"))
# Every server a test starts serves gRPC (on by default) on a port the system chooses, not
# Triton's 8001: many run at once, and this machine may hold 8001. Tests that talk gRPC give
# their server a free port of their own (load_tests/server.py does for each ServerProcess).
os.environ.setdefault("ORTSERVE_GRPC_PORT", "0")
# One worker process per server unless a test asks for more (workers auto starts one per CPU:
# tests/app/test_workers.py checks that default): dozens of servers start in a run, and most
# tests look at one process's counters.
os.environ.setdefault("ORTSERVE_WORKERS", "1")


@pytest.fixture
def perf_analyzer_tool() -> str:
    """Triton's perf_analyzer (load_tests/perf_analyzer.py `find`). Skipped only where it is not
    on the machine: .ci/run sets the shared copy up and fails if it cannot, so in CI these run."""
    from load_tests import perf_analyzer

    tool = perf_analyzer.find()
    if tool is None:
        pytest.skip("perf_analyzer is not on this machine (../shared/tools/perf_analyzer, run as root, or "
                    "ORTSERVE_PERF_ANALYZER); .ci/run sets it up and fails if it cannot")
    return tool


def model_folder(name: str) -> Path:
    """The newest committed version of a shipped model: the one the service serves by default."""
    folder = latest_version(MODELS / name)
    assert folder is not None, f"no committed version of {name} under {MODELS}"
    return folder


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if inspect.iscoroutinefunction(pyfuncitem.obj):
        names = inspect.signature(pyfuncitem.obj).parameters
        kwargs = {name: pyfuncitem.funcargs[name] for name in names}
        asyncio.run(asyncio.wait_for(pyfuncitem.obj(**kwargs), timeout=60))
        return True
    return None
