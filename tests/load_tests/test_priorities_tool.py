"""load_tests/priorities.py run for real, briefly: its repository serves fashion-cnn with two
priority levels, and a round of bulk load beside interactive requests at each level ends
with every request answered and both rows printed. Not a speed test: what the levels buy is
the benchmark's to measure (docs/benchmarks.md)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from load_tests import priorities
from load_tests.server import ServerProcess

pytestmark = pytest.mark.server


def test_the_repository_gives_fashion_cnn_two_levels(tmp_path: Path) -> None:
    priorities.repository(tmp_path)
    with ServerProcess(["--model-dir", str(tmp_path), "--workers", "1"]) as server:
        config = httpx.get(f"{server.url}/v2/models/{priorities.MODEL}/config", timeout=30).json()
        urgent = priorities.interactive(1)
        answer = httpx.post(server.url + urgent.path, content=urgent.body, headers=urgent.headers, timeout=30)
    dynamic = config["dynamic_batching"]
    assert (dynamic["priority_levels"], dynamic["default_priority_level"]) == (2, 2)
    assert answer.status_code == 200, answer.text


def test_a_round_each_way_answers_every_request(capsys: pytest.CaptureFixture[str]) -> None:
    assert priorities.main(["--rounds", "1", "--duration", "1", "--bulk-concurrency", "4", "--bulk-images", "8"]) == 0
    table = capsys.readouterr().out.split("| interactive requests at")[1]
    assert "| priority 1 |" in table
    assert "| default level |" in table
