"""Dataset readers: Fashion-MNIST in IDX gz format and SST-2 in GLUE-style TSV.

Shared by training (which downloads them, training/data.py) and the load tests (which
measure the served models' accuracy on them); no torch. Readers return numpy arrays and
plain lists; the torch side wraps them in tensors.
"""

from __future__ import annotations

import csv
import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FASHION_MNIST_URL = "https://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}
FASHION_MNIST_LABELS = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
SST2_URL = "https://dl.fbaipublicfiles.com/glue/data/SST-2.zip"
SST2_LABELS = ["negative", "positive"]

_WHERE_FASHION = (
    "Get Fashion-MNIST from {url} (the four *-ubyte.gz files), or "
    "`apt-get install dataset-fashion-mnist` (files in /usr/share/datasets/fashion-mnist/), "
    "or run with --download."
)
_WHERE_SST2 = (
    "Get SST-2's train.tsv and dev.tsv from the GLUE benchmark ({url}), and a labelled test.tsv: "
    "GLUE's own test.tsv has no labels. " + "{labelled}" + " Each file needs a header naming the "
    "'label' and 'sentence' (or 'content') columns."
)
SST2_LABELLED_TEST = (
    "The labelled binary test split (1,821 sentences) is the Stanford Sentiment Treebank's test set "
    "without its neutral sentences (https://nlp.stanford.edu/sentiment/), also published ready-made, "
    "e.g. as the test split of the Hugging Face dataset SetFit/sst2."
)


@dataclass(frozen=True)
class ImageSplit:
    images: np.ndarray  # (N, 28, 28) uint8
    labels: np.ndarray  # (N,) int64


@dataclass(frozen=True)
class TextSplit:
    texts: list[str]
    labels: np.ndarray  # (N,) int64


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzip'd) as a numpy array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4:
        raise ValueError(f"{path}: too short to be an IDX file")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {data[:4].hex()})")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape} but holds {body.size} bytes")
    return body.reshape(shape)


def load_fashion_mnist(data_dir: Path) -> tuple[ImageSplit, ImageSplit]:
    """(train, test) from `data_dir` or its `fashion-mnist/` subfolder."""
    folder = find_dataset_folder(data_dir, "fashion-mnist", "train-images-idx3-ubyte.gz")
    missing = [f for f in FASHION_MNIST_FILES if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST files {missing} not found in {folder}. "
            + _WHERE_FASHION.format(url=FASHION_MNIST_URL)
        )

    def split(prefix: str) -> ImageSplit:
        images = read_idx(folder / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
        if len(images) != len(labels):
            raise ValueError(f"{folder}: {len(images)} {prefix} images but {len(labels)} labels")
        return ImageSplit(images, labels)

    return split("train"), split("t10k")


def read_glue_tsv(path: Path) -> TextSplit:
    """A GLUE-style TSV with a header; columns are found by name, not position."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found. " + _WHERE_SST2.format(url=SST2_URL, labelled=SST2_LABELLED_TEST))
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty file")
        columns = {name.strip().lower(): i for i, name in enumerate(header)}
        text_col = next((columns[c] for c in ("sentence", "content", "text") if c in columns), None)
        if text_col is not None and "label" not in columns and path.stem == "test":
            raise ValueError(f"{path} has no 'label' column (header {header}): GLUE's test split is "
                             f"unlabelled. {SST2_LABELLED_TEST}")
        if text_col is None or "label" not in columns:
            raise ValueError(f"{path}: header {header} needs a 'label' and a 'sentence' column")
        label_col = columns["label"]
        texts, labels = [], []
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                labels.append(int(row[label_col]))
                texts.append(row[text_col])
            except (IndexError, ValueError) as e:
                raise ValueError(f"{path}:{line_no}: bad row {row!r}") from e
    return TextSplit(texts, np.asarray(labels, dtype=np.int64))


def load_sst2(data_dir: Path) -> tuple[TextSplit, TextSplit, TextSplit]:
    """(train, dev, test) from `data_dir` or its `sst2/` subfolder."""
    folder = find_dataset_folder(data_dir, "sst2", "train.tsv")
    return tuple(read_glue_tsv(folder / f"{s}.tsv") for s in ("train", "dev", "test"))  # type: ignore[return-value]


def find_dataset_folder(data_dir: Path, subfolder: str, marker: str) -> Path:
    """`data_dir/subfolder` or `data_dir` itself, whichever holds `marker`."""
    for folder in (data_dir / subfolder, data_dir):
        if (folder / marker).is_file():
            return folder
    return data_dir / subfolder
