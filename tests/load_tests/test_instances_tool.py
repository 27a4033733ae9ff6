"""load_tests/instances.py run for real, briefly: its repository gives every shipped model the
instances asked for, and a round against the shipped models prints its row. Not a speed
test: what instances buy is the benchmark's to measure (docs/benchmarks.md)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from load_tests import instances
from load_tests.server import ServerProcess

pytestmark = pytest.mark.server


def test_the_repository_gives_every_model_its_instances(tmp_path: Path) -> None:
    instances.repository(tmp_path, 3)
    with ServerProcess(["--model-dir", str(tmp_path), "--workers", "1"]) as server:
        counts = {name: httpx.get(f"{server.url}/v2/models/{name}/config", timeout=30).json()["instance_group"][0]
                  ["count"] for name in instances.MODELS}
    assert counts == dict.fromkeys(instances.MODELS, 3)


def test_a_round_prints_its_row(capsys: pytest.CaptureFixture[str]) -> None:
    assert instances.main(["--rounds", "1", "--duration", "1", "--concurrency", "4", "--only", "v1-fashion-cnn"]) == 0
    out = capsys.readouterr().out
    assert "this: 2 instances per model" in out
    assert "| v1-fashion-cnn c4 |" in out
