"""load_tests/padding.py end to end on a tiny encoder: the padded model serves requests of
other lengths in shared batches, and the tool reads its figures. Not a speed test."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from load_tests import padding, perf_analyzer
from load_tests.server import ServerProcess

pytestmark = pytest.mark.server


def test_the_padding_tool_measures_a_padded_encoder(tmp_path: Path, perf_analyzer_tool: str) -> None:
    tool = perf_analyzer_tool
    model = tmp_path / "encoder.onnx"
    padding.build_encoder(model, layers=1, width=16, longest=16)
    inputs, named = perf_analyzer.input_folder(tool)
    inputs.mkdir(parents=True, exist_ok=True)
    (inputs / "padding-test.json").write_text(json.dumps(padding.input_data(4, 16, count=8)))
    with ServerProcess(["--model-dir", str(padding.repository(tmp_path, model, pad=True)), "--workers", "1",
                        "--no-idle-dispatch", "--max-queue-delay-ms", "20"]) as server:
        config = httpx.get(f"{server.url}/v2/models/{padding.MODEL}/config").json()
        rate, rows = padding.measure(tool, server, f"{named}/padding-test.json", 8, *perf_analyzer.QUICK_CHECK)
    assert "requests of other lengths batch together" in config["parameters"]["batching"]["string_value"]
    assert rate > 0
    assert rows > 1  # eight clients' requests of 4-16 tokens shared batches
