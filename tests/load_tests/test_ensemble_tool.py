"""load_tests/ensemble.py's repository served for real: fashion-cnn behind the preprocessing
step it builds answers as fashion-cnn does on the pixels a client scaled itself (the same
arithmetic as app/preprocess.py), its configuration reads as an ensemble, and Triton's
perf_analyzer measures it over both protocols, its composing models' statistics beside its
own, as it does against Triton. Not a speed test."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from load_tests import ensemble, perf_analyzer
from load_tests.server import ServerProcess

pytestmark = pytest.mark.server


def test_the_ensemble_tool_serves_a_pipeline_that_agrees_with_the_model(tmp_path: Path,
                                                                          perf_analyzer_tool: str) -> None:
    ensemble.repository(tmp_path)
    with ServerProcess(["--model-dir", str(tmp_path), "--workers", "1"]) as server:
        difference = ensemble.agree(server.url, ensemble.bodies())
        config = httpx.get(f"{server.url}/v2/models/{ensemble.ENSEMBLE}/config", timeout=30).json()
        measured = {protocol: perf_analyzer.run(perf_analyzer_tool, ensemble.ENSEMBLE, server, protocol, 2,
                                                *perf_analyzer.QUICK_CHECK) for protocol in ("http", "grpc")}
    assert difference < 1e-4
    assert [s["model_name"] for s in config["ensemble_scheduling"]["step"]] == [ensemble.STEP, ensemble.MODEL]
    for protocol, run in measured.items():
        assert run.returncode == 0, (protocol, run.stdout[-2000:], run.stderr[-2000:])
        assert perf_analyzer.figures(run.stdout)["infer_per_s"] > 0
        # its statistics, then each step's model's, found by the version whose queue count grew
        assert "Composing models:" in run.stdout
        assert f"{ensemble.STEP}, version: 1" in run.stdout
