"""Batching chosen by measurement: what one item costs at batch sizes 1, 2, 4 ... and the
batch size where a larger one stops paying.

A model given no batching (a drop-in, or a config that leaves it out) is timed at load,
on generated inputs, before it serves; `python -m app import` writes the same figures
into the manifest it makes. A manifest's batching, or the settings, still win.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

from app.manifest import BatchingDefaults

LARGEST_MEASURED = 64
"""Batch sizes are tried up to this: beyond it a request waits behind too many others."""
PAYS = 0.9
"""A larger batch pays where one item costs less than this fraction of what it costs at the
chosen size: the chosen size is the smallest within that of the cheapest measured."""
ROUNDS = 15
"""Each size is timed once per round, in turn, and its fastest run counts: noise only adds
time, and a noisy moment then falls on every size alike rather than on one."""
TIME_LIMIT_S = 2.0
"""Measuring stops adding rounds (after the first three) once it has taken this long."""
SLOW_BATCH_S = 0.25
"""Sizes stop doubling once one batch takes this long: a slow model is not made to wait
for company."""
SERVER_COST_PER_BATCH_S = 300e-6
"""What the server spends on a batch besides the model: forming it, the hand-off to the
inference thread and back, delivering each request's rows. Counted into each size's cost
per item; measured on the 2-core machine at 0.29 ms (c64 req/s of a drop-in MLP with
max_batch_size 1 against 16, docs/benchmarks.md, "Batching chosen by measurement")."""
DELAY_BOUNDS_MS = (2.0, 4.0)
"""The queue delay is twice what a chosen batch takes to run, kept within these bounds: it
is how long a batch waits for company while the model is busy, and below 2 ms the
batches at c64 formed smaller than the shipped models' hand-tuned ones, costing their
throughput (docs/benchmarks.md, "Batching chosen by measurement")."""


def measure_costs(run: Callable[[dict[str, np.ndarray]], object],
                  make_inputs: Callable[[int], dict[str, np.ndarray]]) -> dict[int, float]:
    """Seconds per item at batch sizes 1, 2, 4 ... up to LARGEST_MEASURED (or the first
    whose batch takes SLOW_BATCH_S): the fastest of ROUNDS interleaved runs, after one
    untimed run of each size."""
    sizes, batches, size = [], {}, 1
    while size <= LARGEST_MEASURED:
        batches[size] = make_inputs(size)
        begun = time.perf_counter()
        run(batches[size])  # the first run of a shape: allocations and kernel choice, not the cost
        sizes.append(size)
        if time.perf_counter() - begun > SLOW_BATCH_S:
            break
        size *= 2
    best = dict.fromkeys(sizes, math.inf)
    started = time.perf_counter()
    for round_ in range(ROUNDS):
        for n in sizes:
            begun = time.perf_counter()
            run(batches[n])
            best[n] = min(best[n], time.perf_counter() - begun)
        if round_ >= 2 and time.perf_counter() - started > TIME_LIMIT_S:
            break
    return {n: best[n] / n for n in sizes}


def choose(costs: dict[int, float]) -> BatchingDefaults:
    """The smallest size whose cost per item, the server's share of each batch included, is
    within PAYS of the cheapest measured, and a queue delay of twice what that batch takes
    to run (within DELAY_BOUNDS_MS)."""
    sizes = sorted(costs)
    served = {n: costs[n] + SERVER_COST_PER_BATCH_S / n for n in sizes}
    cheapest = min(served.values())
    chosen = next(n for n in sizes if PAYS * served[n] <= cheapest)
    low, high = DELAY_BOUNDS_MS
    delay_ms = round(min(max(2 * costs[chosen] * chosen * 1000, low), high), 3)
    figures = ", ".join(f"{n}: {costs[n] * 1e6:.1f} µs" for n in sizes)
    return BatchingDefaults(
        max_batch_size=chosen, max_queue_delay_ms=delay_ms,
        reason=(f"measured: cost per item at batch sizes {figures}; {chosen} is the smallest size within "
                f"{1 - PAYS:.0%} of the cheapest, counting {SERVER_COST_PER_BATCH_S * 1e6:.0f} µs per batch for "
                "the server's own work"),
        cost_per_item_ms={n: round(costs[n] * 1000, 6) for n in sizes})
