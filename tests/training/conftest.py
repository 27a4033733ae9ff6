"""Tiny generated datasets in the real on-disk formats: no download, no shared data.

Torch-free, like training/data.py: the tests that need torch import it themselves."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    fashion = root / "fashion-mnist"
    fashion.mkdir()
    for prefix, n in (("train", 192), ("t10k", 96)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 40, (n, 28, 28))
        for i, y in enumerate(labels):  # a class-specific bright band: learnable in a few steps
            images[i, 2 * y : 2 * y + 6] = 220
        write_idx(fashion / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(fashion / f"{prefix}-labels-idx1-ubyte.gz", labels)
    sst2 = root / "sst2"
    sst2.mkdir()
    pos, neg = ["a great film", "it 's wonderful", "loved it"], ["a dull mess", "it does n't work", "hated it"]
    for split, n, column in (("train", 60, "sentence"), ("dev", 12, "content"), ("test", 12, "content")):
        rows = [f"{i % 2}\t{(pos if i % 2 else neg)[i % 3]}" for i in range(n)]
        (sst2 / f"{split}.tsv").write_text(f"label\t{column}\n" + "\n".join(rows) + "\n")
    return root
