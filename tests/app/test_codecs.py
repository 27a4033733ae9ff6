"""The codecs alone: instances to tensors, checks of raw tensors, logits to predictions."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.codecs import (
    PREDICTED,
    PROBABILITIES,
    Codec,
    InputLimits,
    classify_batch,
    make_codec,
    predictions,
    predictions_bytes_bound,
)
from app.errors import InvalidInput
from app.manifest import ImagePreprocessing, Manifest, TensorSpec, load_manifest, read_verified
from tests.app.conftest import b64_png, sample_images
from tests.conftest import model_folder


def codec_of(name: str, limits: InputLimits | None = None) -> tuple[Manifest, Codec]:
    limits = limits or InputLimits()
    folder = model_folder(name)
    manifest = load_manifest(folder)
    files = {file: read_verified(folder, file, digest.sha256) for file, digest in manifest.extra_files.items()}
    return manifest, make_codec(manifest, files, limits)


def test_an_image_as_rows_a_flat_list_or_a_png_gives_one_tensor() -> None:
    manifest, codec = codec_of("fashion-cnn")
    image = sample_images(1)[0]
    name = manifest.inputs[0].name
    as_rows = codec.instances_to_inputs([image.tolist()])[name]
    as_flat = codec.instances_to_inputs([image.ravel().tolist()])[name]
    as_png = codec.instances_to_inputs([{"b64": b64_png(image)}])[name]
    assert as_rows.shape == (1, 1, 28, 28)
    assert as_rows.dtype == np.float32
    np.testing.assert_array_equal(as_rows, as_flat)
    np.testing.assert_allclose(as_rows, as_png, atol=1e-6)


def test_encoded_images_are_heavy_and_pixel_lists_are_not() -> None:
    _, codec = codec_of("fashion-cnn")
    image = sample_images(1)[0]
    assert not codec.heavy([image.tolist()])
    assert codec.heavy([image.tolist(), {"b64": b64_png(image)}])


def test_a_bad_instance_is_a_400_that_names_it() -> None:
    _, codec = codec_of("fashion-cnn")
    good = sample_images(1)[0].tolist()
    with pytest.raises(InvalidInput, match="instance 1"):
        codec.instances_to_inputs([good, [[1, 2], [3]]])


def test_texts_are_tokenised_and_cut_at_max_text_chars() -> None:
    manifest, codec = codec_of("sst2-lstm", InputLimits(max_text_chars=5))
    ids_name, lengths_name = (spec.name for spec in manifest.inputs)
    inputs = codec.instances_to_inputs(["great", "great film, truly great"])
    assert inputs[ids_name].shape[0] == 2
    np.testing.assert_array_equal(inputs[lengths_name], [1, 1])  # both cut to "great"
    with pytest.raises(InvalidInput, match="instance 0"):
        codec.instances_to_inputs([3])


def test_raw_token_tensors_are_checked_before_they_are_queued() -> None:
    manifest, codec = codec_of("sst2-lstm")
    ids_name, lengths_name = (spec.name for spec in manifest.inputs)
    ids = np.ones((1, 4), dtype=np.int64)
    codec.check_tensors({ids_name: ids, lengths_name: np.array([4])})
    with pytest.raises(InvalidInput, match="between 1 and the padded width 4"):
        codec.check_tensors({ids_name: ids, lengths_name: np.array([5])})
    with pytest.raises(InvalidInput, match="must hold ids in"):
        codec.check_tensors({ids_name: ids * 10**9, lengths_name: np.array([4])})
    with pytest.raises(InvalidInput, match="tokens wide"):
        codec.check_shapes({ids_name: [1, 10**6]})


def test_classify_batch_adds_probabilities_and_the_best_class() -> None:
    logits = np.array([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]], dtype=np.float32)
    out = classify_batch({"logits": logits}, "logits")
    np.testing.assert_array_equal(out[PREDICTED], [1, 0])
    np.testing.assert_allclose(out[PROBABILITIES].sum(axis=1), 1.0, atol=1e-5)
    assert out[PROBABILITIES][0].argmax() == 1


def test_the_predictions_bound_holds_for_the_longest_labels() -> None:
    labels = ["\u00e9" * 40, "\u2603" * 40, "x"]  # escaped or multi-byte: the bound's worst cases
    rows = 50
    logits = np.random.default_rng(0).normal(size=(rows, 3)).astype(np.float32) * 30
    outputs = classify_batch({"logits": logits}, "logits")
    encoded = orjson.dumps({"predictions": predictions(outputs, labels), "model_name": "m", "model_version": "1"})
    assert len(encoded) <= predictions_bytes_bound(rows, labels)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_raw_image_tensors_with_nan_or_infinity_are_refused_and_large_finite_ones_are_not(bad: float) -> None:
    manifest, codec = codec_of("fashion-cnn")
    name = manifest.inputs[0].name
    huge = np.full((2, 1, 28, 28), 3e38, dtype=np.float32)  # finite, but their sum overflows
    codec.check_tensors({name: huge})
    huge[1, 0, 5, 5] = bad
    with pytest.raises(InvalidInput, match="NaN or infinite"):
        codec.check_tensors({name: huge})


def _rgb_codec() -> Codec:
    """A 4x4 RGB classifier's codec, ImageNet's normalisation per channel."""
    manifest = Manifest(name="colours", version=1, task="image-classification", labels=["a", "b"],
                        inputs=[TensorSpec(name="pixels", datatype="FP32", shape=[-1, 3, 4, 4])],
                        outputs=[TensorSpec(name="scores", datatype="FP32", shape=[-1, 2])],
                        preprocessing=ImagePreprocessing(height=4, width=4, channels=3, scale=1 / 255,
                                                         mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
                        variants={"fp32": {"file": "model.onnx", "sha256": "0" * 64, "size_bytes": 1}},
                        batching={"max_batch_size": 8, "max_queue_delay_ms": 1})
    return make_codec(manifest, {}, InputLimits())


_JSON = st.recursive(st.none() | st.booleans() | st.integers(-300, 300) | st.floats(allow_nan=False) | st.text(max_size=3),
                     lambda children: st.lists(children, max_size=5), max_leaves=60)
_PIXEL = st.integers(0, 255) | st.floats(0, 255)
_RGB_ISH = st.lists(st.lists(st.lists(_PIXEL | _JSON, min_size=2, max_size=4), min_size=4, max_size=4),
                    min_size=4, max_size=4)  # images that are nearly 4x4x3: a pixel of 2 or 4 values, a bad value




def _with(image: list[Any], row: int, column: int, pixel: Any) -> list[Any]:
    image[row][column] = pixel
    return image


_ONE_BAD_PIXEL = st.builds(_with, st.lists(st.lists(st.lists(_PIXEL, min_size=3, max_size=3), min_size=4, max_size=4),
                                           min_size=4, max_size=4),
                           st.integers(0, 3), st.integers(0, 3), _JSON)  # a good image but for one pixel anywhere


@settings(max_examples=300, deadline=None)
@given(instance=_JSON | _RGB_ISH | _ONE_BAD_PIXEL | st.lists(_PIXEL | _JSON, min_size=48, max_size=48))
def test_any_instance_for_a_colour_model_is_pixels_or_a_400(instance: Any) -> None:
    codec = _rgb_codec()
    try:
        pixels = codec.instances_to_inputs([instance])["pixels"]
    except InvalidInput:
        return
    assert pixels.shape == (1, 3, 4, 4)
    assert pixels.dtype == np.float32
    assert np.isfinite(pixels).all()


def test_a_colour_models_pixels_are_normalised_per_channel_however_they_are_sent() -> None:
    codec = _rgb_codec()
    rgb = np.random.default_rng(5).integers(0, 256, (4, 4, 3))
    want = (rgb / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    for sent in (rgb.tolist(), rgb.ravel().tolist(), {"b64": b64_png(rgb.astype(np.uint8), "RGB")}):
        got = codec.instances_to_inputs([sent])["pixels"][0]
        np.testing.assert_allclose(got, want.transpose(2, 0, 1), atol=1e-5)
    grey = codec.instances_to_inputs([rgb[:, :, 1].tolist()])["pixels"][0]
    np.testing.assert_allclose(grey, ((rgb[:, :, 1:2] / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225])
                               .transpose(2, 0, 1), atol=1e-5)
