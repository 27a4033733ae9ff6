"""Request bodies built from the bundled samples of real test images and sentences."""

from __future__ import annotations

import csv
import json
from functools import cache
from pathlib import Path

import numpy as np
import orjson

from app.manifest import ImagePreprocessing, Manifest, load_manifest
from app.preprocess import normalize_pixels

SAMPLES = Path(__file__).parent / "samples"


@cache
def images() -> np.ndarray:
    raw = json.loads((SAMPLES / "fashion_test_images.json").read_text())
    return np.asarray(raw["images"], dtype=np.uint8).reshape(-1, 28, 28)


@cache
def sentences() -> list[str]:
    with (SAMPLES / "sst2_test_sentences.tsv").open(encoding="utf-8") as f:
        return [row["sentence"] for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]


@cache
def latest(model_dir: Path, name: str) -> tuple[Path, Manifest]:
    """The highest version folder of a model and its manifest (versions compare as numbers)."""
    folder = max((p.parent for p in (model_dir / name).glob("*/manifest.json") if p.parent.name.isdigit()),
                 key=lambda p: int(p.name))
    return folder, load_manifest(folder, verify_files=False)


def v1_images(n: int = 1, offset: int = 0) -> bytes:
    picks = [images()[(offset + i) % len(images())].tolist() for i in range(n)]
    return orjson.dumps({"instances": picks})


def v1_texts(n: int = 1, offset: int = 0) -> bytes:
    return orjson.dumps({"instances": [sentences()[(offset + i) % len(sentences())] for i in range(n)]})


def normalized(n: int, model_dir: Path, offset: int = 0) -> np.ndarray:
    """Images scaled as the manifest says, (n, 1, 28, 28) float32: what V2 clients send."""
    spec = latest(model_dir, "fashion-cnn")[1].preprocessing
    assert isinstance(spec, ImagePreprocessing)
    idx = [(offset + i) % len(images()) for i in range(n)]
    return normalize_pixels(images()[idx], spec)


def v2_json(n: int, model_dir: Path) -> bytes:
    x = normalized(n, model_dir)
    return orjson.dumps({"inputs": [{"name": "pixels", "shape": list(x.shape), "datatype": "FP32",
                                     "data": x.ravel().tolist()}]})


def v2_binary(n: int, model_dir: Path) -> tuple[bytes, dict[str, str]]:
    x = normalized(n, model_dir)
    raw = x.astype("<f4").tobytes()
    header = orjson.dumps({"inputs": [{"name": "pixels", "shape": list(x.shape), "datatype": "FP32",
                                       "parameters": {"binary_data_size": len(raw)}}],
                           "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]})
    return header + raw, {"Inference-Header-Content-Length": str(len(header)),
                          "Content-Type": "application/octet-stream"}
