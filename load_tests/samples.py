"""Request bodies built from the bundled samples of real test images and sentences."""

from __future__ import annotations

import csv
import json
from functools import cache
from pathlib import Path

import numpy as np
import orjson

from app.manifest import ImagePreprocessing, Manifest, latest_version, load_manifest
from app.preprocess import normalize_pixels

SAMPLES = Path(__file__).parent / "samples"


@cache
def flat_images() -> np.ndarray:
    """The bundled Fashion-MNIST test images, one flat row of pixels each."""
    raw = json.loads((SAMPLES / "fashion_test_images.json").read_text())
    return np.asarray(raw["images"], dtype=np.uint8)


def images(spec: ImagePreprocessing) -> np.ndarray:
    """The bundled images as (N, height, width) pixels of the model that `spec` describes."""
    return flat_images().reshape(-1, spec.height, spec.width)


@cache
def sentences() -> list[str]:
    with (SAMPLES / "sst2_test_sentences.tsv").open(encoding="utf-8") as f:
        return [row["sentence"] for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]


@cache
def latest(model_dir: Path, name: str) -> tuple[Path, Manifest]:
    """The newest version folder of a model and its manifest."""
    folder = latest_version(model_dir / name)
    if folder is None:
        raise FileNotFoundError(f"no version of {name} under {model_dir}")
    return folder, load_manifest(folder, verify_files=False)


def image_spec(model_dir: Path) -> ImagePreprocessing:
    spec = latest(model_dir, "fashion-cnn")[1].preprocessing
    assert isinstance(spec, ImagePreprocessing)
    return spec


def v1_images(model_dir: Path, n: int = 1, offset: int = 0) -> bytes:
    pictures = images(image_spec(model_dir))
    picks = [pictures[(offset + i) % len(pictures)].tolist() for i in range(n)]
    return orjson.dumps({"instances": picks})


def v1_texts(n: int = 1, offset: int = 0) -> bytes:
    return orjson.dumps({"instances": [sentences()[(offset + i) % len(sentences())] for i in range(n)]})


def normalized(n: int, model_dir: Path, offset: int = 0) -> np.ndarray:
    """Images scaled as the manifest says, (n, C, H, W) float32: what V2 clients send."""
    spec = image_spec(model_dir)
    pictures = images(spec)
    idx = [(offset + i) % len(pictures) for i in range(n)]
    return normalize_pixels(pictures[idx], spec)


def image_input(model_dir: Path) -> tuple[str, str]:
    """(input name, output name) of the image model, from its manifest."""
    manifest = latest(model_dir, "fashion-cnn")[1]
    return manifest.inputs[0].name, manifest.outputs[0].name


def v2_json(n: int, model_dir: Path) -> bytes:
    x = normalized(n, model_dir)
    name, _ = image_input(model_dir)
    return orjson.dumps({"inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32",
                                     "data": x.ravel().tolist()}]})


def v2_binary(n: int, model_dir: Path) -> tuple[bytes, dict[str, str]]:
    x = normalized(n, model_dir)
    raw = x.astype("<f4").tobytes()
    name, logits = image_input(model_dir)
    header = orjson.dumps({"inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32",
                                       "parameters": {"binary_data_size": len(raw)}}],
                           "outputs": [{"name": logits, "parameters": {"binary_data": True}}]})
    return header + raw, {"Inference-Header-Content-Length": str(len(header)),
                          "Content-Type": "application/octet-stream"}
