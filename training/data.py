"""The datasets for training: their readers (app/datasets.py, shared with the load tests)
and what only training does with them, downloading and recording their checksums."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from app.datasets import (
    FASHION_MNIST_FILES,
    FASHION_MNIST_LABELS,
    FASHION_MNIST_URL,
    SST2_LABELLED_TEST,
    SST2_LABELS,
    SST2_URL,
    ImageSplit,
    TextSplit,
    find_dataset_folder,
    load_fashion_mnist,
    load_sst2,
    read_glue_tsv,
    read_idx,
)
from app.manifest import sha256_of

__all__ = ["FASHION_MNIST_FILES", "FASHION_MNIST_LABELS", "FASHION_MNIST_URL", "SST2_LABELLED_TEST", "SST2_LABELS",
           "SST2_URL", "ImageSplit", "TextSplit", "download_fashion_mnist", "file_checksums", "find_dataset_folder",
           "load_fashion_mnist", "load_sst2", "read_glue_tsv", "read_idx"]


def file_checksums(paths: list[Path]) -> dict[str, str]:
    return {p.name: sha256_of(p) for p in paths}


def download_fashion_mnist(dest: Path) -> None:
    """Fetch the four files and check each against its published sha256."""
    dest.mkdir(parents=True, exist_ok=True)
    for name, expected in FASHION_MNIST_FILES.items():
        target = dest / name
        if not target.exists():
            urllib.request.urlretrieve(FASHION_MNIST_URL + name, target)  # noqa: S310
        actual = sha256_of(target)
        if actual != expected:
            target.unlink()
            raise ValueError(f"{name}: sha256 {actual} != published {expected}; removed it")
