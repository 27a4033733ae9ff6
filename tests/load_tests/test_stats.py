"""The benchmark's statistics: percentiles, rates and error accounting."""

from __future__ import annotations

import math

import pytest

from load_tests.stats import NOT_SENT, Sample, histogram_totals, percentile, summarize


def test_percentile_interpolates_between_ranks() -> None:
    values = [10.0, 20.0, 30.0, 40.0]
    assert percentile(values, 0) == 10.0
    assert percentile(values, 100) == 40.0
    assert percentile(values, 50) == 25.0
    assert percentile(values, 90) == pytest.approx(37.0)
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError, match="outside"):
        percentile(values, 101)


def test_summary_counts_errors_by_status_and_excludes_them_from_latency() -> None:
    samples = [Sample(0.001 * i, 200) for i in range(1, 101)]
    samples += [Sample(5.0, 503), Sample(9.0, 503), Sample(0.0, 0), Sample(0.2, 400), Sample(0.0, NOT_SENT)]
    s = summarize(samples, duration_s=2.0, items_per_request=4)
    assert s.requests == 105
    assert s.ok == 100
    assert s.errors == {"400": 1, "503": 2, "connection": 1, "not-sent": 1}
    assert s.requests_per_s == 50.0
    assert s.items_per_s == 200.0
    assert s.p50_ms == pytest.approx(50.5)
    assert s.p99_ms == pytest.approx(99.01)
    assert s.max_ms == pytest.approx(100.0)  # the 9 s error is not a latency


def test_summary_of_nothing_is_nan_not_a_crash() -> None:
    s = summarize([Sample(0.1, 500)], duration_s=1.0)
    assert s.ok == 0
    assert s.requests_per_s == 0.0
    assert math.isnan(s.p50_ms)


def test_histogram_totals_read_prometheus_text() -> None:
    text = "\n".join([
        'ortserve_batch_size_sum{model="a"} 120.0', 'ortserve_batch_size_count{model="a"} 10.0',
        'ortserve_batch_size_sum{model="b"} 5.0', 'ortserve_batch_size_count{model="b"} 5.0',
    ])
    assert histogram_totals(text, "ortserve_batch_size", "a") == (120.0, 10.0)
    assert histogram_totals(text, "ortserve_batch_size", "c") == (0.0, 0.0)
