"""load_tests/protocols.py: a perf_analyzer run that failed for the moment (its client could not
connect, its measurement would not settle, or it did not end in time)."""

from __future__ import annotations

import subprocess
from types import SimpleNamespace
from typing import Any

import pytest

from load_tests import protocols

FAILED = ("perf_analyzer -i grpc failed:\nThread [5] had error: failed to connect to all addresses; last error: "
          "UNKNOWN: ipv4:127.0.0.1:45167: No such file or directory\n")
UNSTABLE = ("perf_analyzer -i grpc-stream failed:\nRequest concurrency: 64\nFailed to obtain stable measurement within 6 "
            "measurement windows for concurrency 64. Please try to increase the --measurement-interval.\n")


def _runs(monkeypatch: pytest.MonkeyPatch, outcomes: list[Exception | dict[str, float]]) -> list[tuple[Any, ...]]:
    """protocols.measure with perf_analyzer's runs replaced by `outcomes`, in turn; the runs made."""
    made: list[tuple[Any, ...]] = []

    def measured(*args: Any) -> dict[str, float]:
        made.append(args)
        outcome = outcomes[len(made) - 1]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(protocols, "_measured", measured)
    return made


def test_a_run_that_could_not_connect_is_said_and_measured_once_more(monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    made = _runs(monkeypatch, [RuntimeError(FAILED), {"infer_per_s": 2000.0}])
    assert protocols.measure("pa", None, "grpc", "data", 1, 64, 3000) == {"infer_per_s": 2000.0}  # type: ignore[arg-type]
    assert len(made) == 2
    assert "perf_analyzer -i grpc could not connect (Thread [5] had error: failed to connect" in capsys.readouterr().err


def test_a_run_that_would_not_settle_is_said_and_measured_once_more(monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    made = _runs(monkeypatch, [RuntimeError(UNSTABLE), {"infer_per_s": 2000.0}])
    assert protocols.measure("pa", None, "grpc-stream", "data", 1, 64, 3000) == {"infer_per_s": 2000.0}  # type: ignore[arg-type]
    assert len(made) == 2
    assert ("perf_analyzer -i grpc-stream could not make its measurement stable (Failed to obtain stable measurement "
            "within 6 measurement windows") in capsys.readouterr().err


def test_only_once_and_only_for_those(monkeypatch: pytest.MonkeyPatch) -> None:
    made = _runs(monkeypatch, [RuntimeError(FAILED), RuntimeError(UNSTABLE)])
    with pytest.raises(RuntimeError, match="stable measurement"):
        protocols.measure("pa", None, "grpc", "data", 1, 64, 3000)  # type: ignore[arg-type]
    assert len(made) == 2
    made = _runs(monkeypatch, [RuntimeError("perf_analyzer -i http failed:\nInference failed: model not found")])
    with pytest.raises(RuntimeError, match="model not found"):
        protocols.measure("pa", None, "http", "data", 1, 64, 3000)  # type: ignore[arg-type]
    assert len(made) == 1


def test_a_run_past_its_time_is_said_and_measured_once_more(monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """perf_analyzer's own hang (once, --streaming against the gRPC ceiling) ends its run, not the table."""
    runs: list[tuple[Any, ...]] = []

    def perf_analyzer_run(*args: Any, **options: Any) -> subprocess.CompletedProcess[str]:
        runs.append(args)
        if len(runs) == 1:
            raise subprocess.TimeoutExpired(["perf_analyzer"], 300)
        return subprocess.CompletedProcess([], 0, "Throughput: 2000 infer/sec\n", "")

    answered = iter([0, 0, 64])  # before the run that hung, before the one after it, after that one
    monkeypatch.setattr(protocols.perf_analyzer, "run", perf_analyzer_run)
    monkeypatch.setattr(protocols, "images_answered", lambda server: next(answered))
    monkeypatch.setattr(protocols, "STATISTICS_SETTLE_S", 0)
    server = SimpleNamespace(cpu_seconds=lambda: 1.0, cpu_by_thread=lambda: {})
    found = protocols.measure("pa", server, "grpc-stream", "data", 1, 64, 3000)  # type: ignore[arg-type]
    assert found["infer_per_s"] == 2000.0
    assert len(runs) == 2
    assert "perf_analyzer -i grpc-stream did not finish (perf_analyzer did not finish within 300 s)" in capsys.readouterr().err
