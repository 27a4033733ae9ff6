"""The idle-gap diagnostic runs and prints one row per gap. Not a speed test."""

from __future__ import annotations

import pytest

from load_tests import idle_gaps
from tests.conftest import MODELS


def test_prints_one_row_per_gap_relative_to_back_to_back(capsys: pytest.CaptureFixture[str]) -> None:
    code = idle_gaps.main(["--model-dir", str(MODELS), "--runs", "3", "--rounds", "1", "--gaps-ms", "0", "0.5"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "ms |" in line]
    assert code == 0
    assert [row.split("|")[1].strip() for row in rows] == ["0 ms", "0.5 ms"]
    assert rows[0].rstrip().endswith("| 1.00x |")  # the reference row is the back-to-back one
