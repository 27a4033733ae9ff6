"""Structured pruning: which widths are kept, and that the kept units are the strongest."""

from __future__ import annotations

import pytest

pytest.importorskip("torch", reason="needs the train extra: pip install '.[train]'")

import torch

from training.models import FashionCNN
from training.prune import kept_width, prune_cnn_structured

pytestmark = pytest.mark.training


@pytest.mark.parametrize(("width", "keep", "multiple", "expected"), [
    (32, 0.65, 1, 21),   # no rounding: the plain fraction
    (32, 0.65, 16, 16),  # 20.8 -> nearest multiple of 16
    (64, 0.65, 16, 48),  # 41.6 -> 48
    (128, 0.75, 16, 96),
    (64, 0.1, 16, 16),   # never below one multiple
    (64, 0.99, 16, 64),  # never above the width
    (12, 0.5, 16, 12),   # narrower than one multiple: kept whole
])
def test_kept_width_rounds_to_the_multiple(width: int, keep: float, multiple: int, expected: int) -> None:
    assert kept_width(width, keep, multiple) == expected


def test_pruned_cnn_has_rounded_widths_and_keeps_the_strongest_filters() -> None:
    torch.manual_seed(0)
    model = FashionCNN((32, 64), 128, 10, dropout=0.2).eval()
    with torch.no_grad():  # make conv1's filters 3, 7 and 30 the strongest by far
        model.conv1.weight[[3, 7, 30]] *= 100
    small = prune_cnn_structured(model, 0.65, 0.75, multiple=16).eval()
    assert small.widths == {"conv1": 16, "conv2": 48, "hidden": 96}
    kept = {i for i in range(32) for j in range(16)
            if torch.equal(model.conv1.weight[i], small.conv1.weight[j])}
    assert {3, 7, 30} <= kept
    assert small(torch.rand(2, 1, 28, 28)).shape == (2, 10)
