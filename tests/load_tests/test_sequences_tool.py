"""load_tests/sequences.py run for real, briefly: both ways of serving a stateful model answer
every step with the right running total, and the table has both rows. Not a speed test: what
the server's keeping of state costs is the benchmark's to measure (docs/benchmarks.md)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from load_tests import perf_analyzer, sequences
from load_tests.server import ServerProcess

pytestmark = pytest.mark.server


def test_a_round_each_way_keeps_every_total_right(capsys: pytest.CaptureFixture[str]) -> None:
    # main raises SystemExit on an error or a wrong total
    assert sequences.main(["--sequences", "3", "--rounds", "1", "--duration", "1"]) == 0
    table = capsys.readouterr().out.split("| 3 sequences")[1]
    assert "| sequence batching (server keeps the state) |" in table
    assert "| no sequences (client sends it) |" in table


def test_with_two_workers_steps_spread_over_connections_against_one_per_sequence(
        capsys: pytest.CaptureFixture[str]) -> None:
    """Steps spread over connections reach either worker: every total right all the same, and
    the table says how many ran in another worker (none over a connection per sequence). Sixteen
    connections: all on one worker has odds of 2 in 65,536."""
    assert sequences.main(["--sequences", "16", "--rounds", "1", "--duration", "1", "--workers", "2",
                           "--compare-connections"]) == 0
    rows = {line.split(" | ")[1]: line.split(" | ")[-1].strip(" |")
            for line in capsys.readouterr().out.split("| 16 sequences")[1].splitlines()
            if line.startswith("| sequence batching")}
    assert rows["per-sequence"] == "0%"
    assert rows["spread"] != "0%"


def test_tritons_perf_analyzer_runs_sequences_against_a_stateful_model(tmp_path: Path, perf_analyzer_tool: str) -> None:
    """perf_analyzer reads the model's configuration, finds its sequence_batching, and sends
    sequences of its own (sequence_id, start and end) over both protocols: no failed request.
    Two workers: each of its connections lands on either."""
    sequences.repository(tmp_path)
    with ServerProcess(["--model-dir", str(tmp_path), "--workers", "2"]) as server:
        runs = {protocol: perf_analyzer.run(perf_analyzer_tool, sequences.SERVED, server, protocol, 4,
                                            "--sequence-length", "10", *perf_analyzer.QUICK_CHECK)
                for protocol in ("http", "grpc")}
        stats = httpx.get(f"{server.url}/v2/models/{sequences.SERVED}/stats", timeout=30).json()["model_stats"][0]
    for protocol, run in runs.items():
        assert run.returncode == 0, (protocol, run.stdout[-2000:], run.stderr[-2000:])
        assert "Sequence count:" in run.stdout  # it ran sequences
        assert perf_analyzer.figures(run.stdout)["infer_per_s"] > 0
    assert stats["inference_stats"]["fail"]["count"] == 0
