"""Serving must never import torch, onnx tooling or the training package."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

PROBE = """
import sys
sys.modules["torch"] = None  # any `import torch` now fails
import app.main, app.__main__
app.main.create_app()
leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("training", "onnx", "onnxconverter_common"))
assert not leaked, leaked
print("ok")
"""


def test_app_imports_without_torch() -> None:
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
