"""load_tests/sequences.py run for real, briefly: both ways of serving a stateful model answer
every step with the right running total, and the table has both rows. Not a speed test: what
the server's keeping of state costs is the benchmark's to measure (docs/benchmarks.md)."""

from __future__ import annotations

import pytest

from load_tests import sequences

pytestmark = pytest.mark.server


def test_a_round_each_way_keeps_every_total_right(capsys: pytest.CaptureFixture[str]) -> None:
    # main raises SystemExit on an error or a wrong total
    assert sequences.main(["--sequences", "3", "--rounds", "1", "--duration", "1"]) == 0
    table = capsys.readouterr().out.split("| 3 sequences")[1]
    assert "| sequence batching (server keeps the state) |" in table
    assert "| no sequences (client sends it) |" in table
