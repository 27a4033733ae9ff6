"""The README's one results table: written by the bench runner between two markers, with
the date and commit it was measured at."""

from __future__ import annotations

import re
from pathlib import Path

from load_tests.bench import (
    README_END,
    README_START,
    Row,
    provenance_line,
    readme_results,
    write_readme_results,
)
from tests.conftest import ROOT


def row(scenario: str, concurrency: int, requests_per_s: float) -> Row:
    summary = {"p50_ms": 1.5, "p99_ms": 4.25}
    return Row(scenario, concurrency, 1, summary, requests_per_s, requests_per_s, 1.0, 1.0, mean_batch_size=3.5)


def test_the_runner_replaces_only_what_lies_between_the_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{README_START}; keep this -->\nold table\n{README_END}\nafter\n")
    block = readme_results([row("v1-fashion-cnn", 64, 9876.4)], [], [("a / b", "1.23")],
                           [{"label": "x / y", "concurrency": 64, "rounds": [{"requests_ratio": 1.1}],
                             "median_requests_ratio": 1.1, "median_p99_ratio": 0.9}], "Measured then.")
    write_readme_results(readme, block)
    text = readme.read_text()
    assert text.startswith(f"before\n{README_START}; keep this -->\nMeasured then.\n")
    assert "old table" not in text
    assert "| v1-fashion-cnn | 64 | 1 | 9,876 | 9,876 | 1.50 | 4.25 | 3.5 |" in text
    assert "| a / b | 1.23 |" in text
    assert "| x / y, paired rounds at c64 (req/s: 1.10) | 1.10 (p99 0.90) |" in text
    assert text.endswith(f"{README_END}\nafter\n")


def test_the_provenance_line_names_the_date_commit_and_command() -> None:
    line = provenance_line(["--rounds", "5"], "wrk", 8.0)
    assert re.match(r"Measured \d{4}-\d{2}-\d{2} at commit [0-9a-f]{7,}(-dirty)? on \d+ CPUs", line), line
    assert "`python -m load_tests.bench --rounds 5`" in line


def test_the_readme_holds_one_results_table_with_its_provenance() -> None:
    text = (ROOT / "README.md").read_text()
    assert text.count(README_START) == 1
    block = text[text.index(README_START):text.index(README_END)]
    assert re.search(r"^Measured \d{4}-\d{2}-\d{2} at commit [0-9a-f]{7,}", block, re.M), (
        "README.md's results table has no provenance line: rerun python -m load_tests.bench --readme")
    assert "| v1-fashion-cnn | 64 |" in block
