"""Accuracy of fashion-cnn on the Fashion-MNIST test set as clients send images, through the
service's own image codec (app/codecs.py, what /v1/models/fashion-cnn:predict runs), with
and without the rules that keep a misleading input from being answered wrongly:

    python -m load_tests.image_inputs --data-dir ../shared/data [--limit 2000]

Rows: raw 0-255 arrays (the reference); the same images inverted; product-style photos made from the test images
(inverted to dark on white, enlarged to 112x112 RGB PNG) as served before background
matching and as served now; pixels scaled to 0..1 as served before (read as 0-255) and now
(refused, with a message).
"""

from __future__ import annotations

import argparse
import base64
import io
from pathlib import Path

import numpy as np
import onnxruntime as ort

import app.datasets as data
from app.codecs import ImageCodec, InputLimits
from app.errors import InvalidInput
from app.manifest import ImagePreprocessing, latest_version, load_manifest
from app.preprocess import decode_base64_image, normalize_pixels
from load_tests.server import ROOT


def product_photo(image: np.ndarray) -> str:
    """A Fashion-MNIST image as a catalogue photo: dark object on white, 112x112, RGB, PNG."""
    from PIL import Image

    photo = Image.fromarray(255 - image, mode="L").resize((112, 112), Image.Resampling.BILINEAR).convert("RGB")
    buffer = io.BytesIO()
    photo.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.image_inputs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--limit", type=int, default=10_000, help="test images used (default: all)")
    args = parser.parse_args(argv)
    folder = latest_version(args.model_dir / "fashion-cnn")
    assert folder is not None, f"no fashion-cnn under {args.model_dir}"
    manifest = load_manifest(folder)
    spec = manifest.preprocessing
    assert isinstance(spec, ImagePreprocessing)
    variant = manifest.preferred_variant.get("cpu", "fp32")
    session = ort.InferenceSession(str(folder / manifest.variants[variant].file), providers=["CPUExecutionProvider"])
    codec = ImageCodec(manifest, InputLimits())
    _, test = data.load_fashion_mnist(args.data_dir)
    images, labels = test.images[: args.limit], test.labels[: args.limit]

    def accuracy(pixels: np.ndarray) -> float:
        logits = np.concatenate([session.run(None, {"pixels": pixels[i : i + 1000]})[0]
                                 for i in range(0, len(pixels), 1000)])
        return float((logits.argmax(1) == labels).mean())

    photos = [product_photo(image) for image in images]
    photos_before = np.stack([decode_base64_image(p, spec) for p in photos])  # decoded, not matched
    refused = 0
    for image in images[:200]:
        try:
            codec.instances_to_inputs([(image / 255.0).tolist()])
        except InvalidInput:
            refused += 1
    rows = [
        ("raw pixels 0-255 (reference)", accuracy(codec.instances_to_inputs([i.tolist() for i in images])["pixels"])),
        ("the images inverted (dark on white), 28x28 arrays, served before", accuracy(
            normalize_pixels(255 - images, spec))),
        ("the images inverted (dark on white), 28x28 arrays, served now", accuracy(
            codec.instances_to_inputs([(255 - i).tolist() for i in images])["pixels"])),
        ("product photos, served before (no background matching)", accuracy(normalize_pixels(photos_before, spec))),
        ("product photos, served now", accuracy(np.concatenate(
            [codec.instances_to_inputs([{"b64": p} for p in photos[i : i + 500]])["pixels"]
             for i in range(0, len(photos), 500)]))),
        ("pixels scaled to 0..1, served before (read as 0-255)", accuracy(normalize_pixels(images / 255.0, spec))),
    ]
    print(f"fashion-cnn v{manifest.version} ({variant}), {len(images):,} Fashion-MNIST test images\n")
    print("| input | accuracy |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {100 * value:.2f}% |")
    print(f"| pixels scaled to 0..1, served now | refused with a 400 ({refused} of 200 tried) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
