"""load_tests/ensemble.py's repository served for real: fashion-cnn behind the preprocessing
step it builds answers as fashion-cnn does on the pixels a client scaled itself (the same
arithmetic as app/preprocess.py), and its configuration reads as an ensemble. Not a speed test."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from load_tests import ensemble
from load_tests.server import ServerProcess

pytestmark = pytest.mark.server


def test_the_ensemble_tool_serves_a_pipeline_that_agrees_with_the_model(tmp_path: Path) -> None:
    ensemble.repository(tmp_path)
    with ServerProcess(["--model-dir", str(tmp_path), "--workers", "1"]) as server:
        difference = ensemble.agree(server.url, ensemble.bodies())
        config = httpx.get(f"{server.url}/v2/models/{ensemble.ENSEMBLE}/config", timeout=30).json()
    assert difference < 1e-4
    assert [s["model_name"] for s in config["ensemble_scheduling"]["step"]] == [ensemble.STEP, ensemble.MODEL]
