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
