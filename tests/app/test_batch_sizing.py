"""Batching chosen by measurement (app/batch_sizing.py): the choice from measured costs,
and the measuring itself on a model whose cost is known."""

from __future__ import annotations

import numpy as np
import pytest

from app.batch_sizing import DELAY_BOUNDS_MS, LARGEST_MEASURED, SERVER_COST_PER_BATCH_S, choose, measure_costs
from app.codecs import PROBABILITIES, classify_batch

US = 1e-6


@pytest.mark.parametrize(("model_us_per_batch", "chosen"), [
    # a model whose batch costs the same at any size: each doubling halves an item's cost
    ({n: 50 for n in (1, 2, 4, 8, 16, 32, 64)}, 64),
    # a model whose cost grows with the rows alone: batching pays only the server's share,
    # which at 8 rows is within a tenth of what it is at 64
    ({n: 400 * n for n in (1, 2, 4, 8, 16, 32, 64)}, 8),
    # the shipped CNN's shape: the model alone flat beyond 16 rows, its server's share not yet
    ({1: 250, 2: 190, 4: 270, 8: 500, 16: 960, 32: 2000, 64: 4200}, 32),
])
def test_the_smallest_size_within_a_tenth_of_the_cheapest_is_chosen(model_us_per_batch: dict[int, float],
                                                                   chosen: int) -> None:
    costs = {n: t * US / n for n, t in model_us_per_batch.items()}
    batching = choose(costs)
    assert batching.max_batch_size == chosen
    served = {n: costs[n] + SERVER_COST_PER_BATCH_S / n for n in costs}
    assert 0.9 * served[chosen] <= min(served.values())
    smaller = [n for n in costs if n < chosen]
    assert all(0.9 * served[n] > min(served.values()) for n in smaller)
    # the delay is twice the chosen batch's (given, not timed) cost, within the bounds: the
    # lower bound for the cheap model, the upper for the two whose chosen batch takes 2 ms or more
    low, high = DELAY_BOUNDS_MS
    assert batching.max_queue_delay_ms == min(max(2 * model_us_per_batch[chosen] / 1000, low), high)
    assert set(batching.cost_per_item_ms) == set(costs)
    assert f"{chosen} is the smallest size" in batching.reason


def test_measuring_times_every_size_up_to_the_largest() -> None:
    seen: list[int] = []

    def run(inputs: dict[str, np.ndarray]) -> None:
        seen.append(len(inputs["x"]))

    costs = measure_costs(run, lambda rows: {"x": np.zeros((rows, 2), np.float32)})
    assert sorted(costs) == [2**k for k in range(7)] == sorted(set(seen))
    assert max(costs) == LARGEST_MEASURED
    assert all(c > 0 for c in costs.values())


def test_scores_that_are_probabilities_are_not_softmaxed_again() -> None:
    scores = np.array([[0.2, 0.8], [0.6, 0.4]], np.float32)
    as_logits = classify_batch({"s": scores.copy()}, "s")[PROBABILITIES]
    as_probabilities = classify_batch({"s": scores.copy()}, "s", softmax=False)[PROBABILITIES]
    np.testing.assert_allclose(as_probabilities, scores, atol=1e-6)
    assert not np.allclose(as_logits, scores, atol=1e-3)
