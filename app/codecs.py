"""Codecs between what clients send and what models take: instances (images, texts) ->
tensors, and logits -> predictions.

One codec per manifest task. Each also checks raw V2 tensors for what the model needs
beyond dtype and shape (e.g. lengths within the padded width), so that a bad request is
refused before it is queued and can never fail the batch it would have joined.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from itertools import chain
from typing import Any, Protocol

import numpy as np

from app.errors import InvalidInput
from app.manifest import RESERVED_PREFIX, ImagePreprocessing, Manifest, TextPreprocessing
from app.preprocess import (
    MAX_TEXT_CHARS,
    ImageLimits,
    PreprocessError,
    Tokenizer,
    decode_base64_image,
    match_background,
    normalize_pixels,
)

# Work above this much is done off the event loop (app/offload.py): it would hold up every
# other request, health checks included, for milliseconds.
HEAVY_TEXT_CHARS = 32_768


@dataclass(frozen=True)
class InputLimits:
    """What one instance may cost to decode (the server's settings)."""

    max_text_chars: int = MAX_TEXT_CHARS
    image: ImageLimits = ImageLimits()


class Codec(Protocol):
    def instances_to_inputs(self, instances: list[Any]) -> dict[str, np.ndarray]: ...

    def heavy(self, instances: list[Any]) -> bool:
        """Whether decoding these instances is too much work for the event loop."""
        ...

    def check_shapes(self, shapes: Mapping[str, list[int]]) -> None:
        """Refuse, from the declared shapes alone, what the model cannot take, before any
        data is converted (a shape can promise far more work than its body holds)."""
        ...

    def check_tensors(self, inputs: dict[str, np.ndarray]) -> None: ...

    def describe_instance(self) -> str: ...


class ImageCodec:
    def __init__(self, manifest: Manifest, limits: InputLimits) -> None:
        assert isinstance(manifest.preprocessing, ImagePreprocessing)
        self.spec = manifest.preprocessing
        self.input_name = manifest.inputs[0].name
        self.limits = limits.image

    def heavy(self, instances: list[Any]) -> bool:
        return any(not isinstance(i, list) for i in instances)  # encoded images are decoded

    def describe_instance(self) -> str:
        s = self.spec
        encoded = '{"b64": "<base64 PNG or JPEG>"}'
        if s.channels == 3:
            return (f"a {s.height}x{s.width} RGB image as raw pixel values 0-255 (rows of [r, g, b] pixels, "
                    f"{s.height}x{s.width}x3, or one flat list of {s.height * s.width * 3}; greyscale "
                    f"{s.height}x{s.width} is repeated in each channel), or {encoded}; other sizes are resized, "
                    "greyscale becomes RGB, transparency is composited onto black")
        inverted = {"dark": "an image on a light background is inverted to match the model's dark one",
                    "light": "an image on a dark background is inverted to match the model's light one",
                    "any": "none is inverted"}[s.background]
        return (f"a {s.height}x{s.width} array of raw pixel values 0-255 (rows of columns, or one flat "
                f"list of {s.height * s.width}), or {encoded}; other sizes are resized, colour is converted "
                f"to greyscale, and {inverted}")

    def instances_to_inputs(self, instances: list[Any]) -> dict[str, np.ndarray]:
        pixels = np.stack([self._one(i, n) for n, i in enumerate(instances)]) if any(
            not isinstance(i, list) for i in instances) else self._raw(instances, 0)
        try:
            return {self.input_name: normalize_pixels(match_background(pixels, self.spec), self.spec)}
        except PreprocessError as e:
            raise InvalidInput(str(e)) from e

    def _one(self, instance: Any, index: int) -> np.ndarray:
        if isinstance(instance, dict) and set(instance) == {"b64"} and isinstance(instance["b64"], str):
            try:
                return decode_base64_image(instance["b64"], self.spec, self.limits)
            except PreprocessError as e:
                raise InvalidInput(f"instance {index}: {e}") from e
        if isinstance(instance, list):
            return self._raw([instance], index)[0]
        raise InvalidInput(f"instance {index}: expected {self.describe_instance()}; got {_received(instance)}")

    def _raw(self, images: list[Any], first_index: int) -> np.ndarray:
        """Raw pixel instances as the model's channels have them: (N, H, W) or (N, 3, H, W)."""
        return self._as_pixels(images, first_index) if self.spec.channels == 1 else self._as_rgb(images, first_index)

    def _as_rgb(self, images: list[Any], first_index: int) -> np.ndarray:
        """Raw RGB instances -> (N, 3, H, W): rows of [r, g, b] pixels (H x W x 3, as images are
        laid out), or one flat row-major list of H*W*3; greyscale (H x W, or H*W values) is
        repeated in each channel, as a greyscale PNG decoded for this model is."""
        h, w = self.spec.height, self.spec.width
        pixels = np.empty((len(images), 3, h, w), np.float32)
        for n, image in enumerate(images):
            received = _received(image)
            if received in (f"{h}x{w}x3 list", f"{h * w * 3} list"):
                layout: tuple[int, ...] = (h, w, 3)
            elif received in (f"{h}x{w} list", f"{h * w} list"):
                layout = (h, w, 1)
            else:
                raise InvalidInput(f"instance {first_index + n}: expected {self.describe_instance()}; got {received}")
            try:
                values = np.array(image)
            except ValueError:  # a row or pixel of another length further on (numpy: "inhomogeneous")
                raise InvalidInput(f"instance {first_index + n}: expected {self.describe_instance()}; got a "
                                   f"{received[:-5]} list with rows or pixels of different lengths") from None
            if values.dtype.kind not in "iuf":  # numpy would read "1" as 1 and True as 1
                kinds = {"b": "booleans", "U": "strings"}.get(values.dtype.kind, "nulls or other values")
                raise InvalidInput(f"instance {first_index + n}: pixel values must be numbers 0-255; got {kinds} "
                                   "among them")
            with np.errstate(over="ignore"):  # past float32's range is inf, which the range check refuses
                pixels[n] = values.astype(np.float32).reshape(layout).transpose(2, 0, 1)  # (1, h, w) fills all three
        _refuse_unit_scale(pixels, first_index)
        return pixels

    def _as_pixels(self, images: list[Any], first_index: int) -> np.ndarray:
        """Nested lists -> (N, H, W) pixels: uint8 when every value is an integer 0-255, as
        raw pixels are (bytes() converts and range-checks a row in C, the cheapest path
        from JSON numbers to an array), else float32, range-checked by normalize_pixels."""
        h, w = self.spec.height, self.spec.width
        rows_of = []
        for n, image in enumerate(images):
            # map() runs the checks in C: this is on the request path for every image
            if type(image) is list and len(image) == h and set(map(type, image)) == {list} and set(map(len, image)) == {w}:
                rows_of.append(image)
            elif type(image) is list and len(image) == h * w and set(map(type, image)) <= {int, float}:
                rows_of.append([image])  # one flat row-major list: unambiguous at this length
            elif type(image) is list and len(image) == h * w:
                kinds = sorted({type(v).__name__ for v in image} - {"int", "float"})
                raise InvalidInput(f"instance {first_index + n}: pixel values must be numbers 0-255; "
                                   f"got {', '.join(kinds)} among them")
            else:
                raise InvalidInput(f"instance {first_index + n}: expected {h}x{w} pixel values (rows of "
                                   f"columns, or one flat list of {h * w}); got {_received(image)}")
        try:
            data = b"".join([bytes(row) for rows in rows_of for row in rows])
            return np.frombuffer(data, dtype=np.uint8).reshape(len(images), h, w)
        except (ValueError, TypeError):
            pass  # fractions or out-of-range values: the general path converts or refuses them
        values = chain.from_iterable(chain.from_iterable(rows_of))
        try:
            flat = np.fromiter(values, dtype=np.float32, count=len(images) * h * w)
        except (ValueError, TypeError):
            for n, image in enumerate(images):  # the rows held lists (28x28x1) or non-numbers
                if (received := _received(image)) not in (f"{h}x{w} list", f"{h * w} list"):
                    raise InvalidInput(f"instance {first_index + n}: expected {h}x{w} pixel values; "
                                       f"got {received}") from None
            raise InvalidInput("pixel values must be numbers 0-255; got something else (a string, "
                               "a boolean or a null) among them") from None
        pixels = flat.reshape(len(images), h, w)
        _refuse_unit_scale(pixels, first_index)
        return pixels

    def check_shapes(self, shapes: Mapping[str, list[int]]) -> None:
        pass  # fixed shapes: the protocol layer checks them against the manifest

    def check_tensors(self, inputs: dict[str, np.ndarray]) -> None:
        x = inputs[self.input_name]
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise InvalidInput(f"input {self.input_name!r} holds NaN or infinite values")


def _refuse_unit_scale(pixels: np.ndarray, first_index: int) -> None:
    """Pixels scaled to 0..1 would be read as 0..1 out of 255: a black image, classified
    with confidence and wrongly. Fractions with nothing above 1 can only mean that."""
    for n, image in enumerate(pixels):
        if image.max() <= 1.0 and (image != np.floor(image)).any():
            raise InvalidInput(f"instance {first_index + n}: pixel values are fractions within 0..1 (max "
                               f"{float(image.max()):.3g}); send raw pixels 0-255, as the image's 8-bit values "
                               "(multiply by 255)")


def _received(value: Any) -> str:
    """What a client sent, by shape and type, for messages: '27x28 list', '28x28x1 list', 'str'."""
    dims = []
    while isinstance(value, list):
        dims.append(len(value))
        if not value:
            break
        if len({len(v) if isinstance(v, list) else -1 for v in value}) > 1:
            return "x".join(map(str, dims)) + " list with rows of different lengths or types"
        value = value[0]
    if not dims:
        return type(value).__name__ if not isinstance(value, dict) else f"an object with keys {sorted(value)[:5]}"
    return "x".join(map(str, dims)) + " list"


class TextCodec:
    def __init__(self, manifest: Manifest, files: Mapping[str, bytes], limits: InputLimits) -> None:
        assert isinstance(manifest.preprocessing, TextPreprocessing)
        self.tokenizer = Tokenizer.from_bytes(files[manifest.preprocessing.vocabulary_file], manifest.preprocessing)
        self.ids_name, self.lengths_name = manifest.inputs[0].name, manifest.inputs[1].name
        self.max_chars = limits.max_text_chars

    def describe_instance(self) -> str:
        return (f"a string; its first {self.max_chars} characters are tokenised and truncated to "
                f"{self.tokenizer.spec.max_length} tokens")

    def heavy(self, instances: list[Any]) -> bool:
        return sum(len(t) if isinstance(t, str) else 0 for t in instances) > HEAVY_TEXT_CHARS

    def instances_to_inputs(self, instances: list[Any]) -> dict[str, np.ndarray]:
        for n, text in enumerate(instances):
            if not isinstance(text, str):
                raise InvalidInput(f"instance {n}: expected {self.describe_instance()}, got {type(text).__name__}")
        # Cut before normalising: NFKC can expand a character many times over, and a model
        # reads only max_length tokens anyway.
        ids, lengths = self.tokenizer.encode_batch([text[: self.max_chars] for text in instances])
        return {self.ids_name: ids, self.lengths_name: lengths}

    def check_shapes(self, shapes: Mapping[str, list[int]]) -> None:
        shape = shapes.get(self.ids_name, [])
        max_length = self.tokenizer.spec.max_length
        if len(shape) == 2 and shape[1] > max_length:  # every request batched with it would be padded to it
            raise InvalidInput(f"{self.ids_name!r} is {shape[1]} tokens wide; this model reads at most "
                               f"{max_length} tokens per text")

    def check_tensors(self, inputs: dict[str, np.ndarray]) -> None:
        ids, lengths = inputs[self.ids_name], inputs[self.lengths_name]
        if len(ids) != len(lengths):
            raise InvalidInput(f"{self.ids_name!r} has {len(ids)} rows but {self.lengths_name!r} has {len(lengths)}")
        width = ids.shape[1]
        self.check_shapes({self.ids_name: list(ids.shape)})
        if width == 0 or lengths.min() < 1 or lengths.max() > width:
            raise InvalidInput(f"each of {self.lengths_name!r} must be between 1 and the padded width {width}")
        vocab = len(self.tokenizer.vocabulary)
        if ids.min() < 0 or ids.max() >= vocab:
            raise InvalidInput(f"{self.ids_name!r} must hold ids in [0, {vocab})")


class TensorCodec:
    """A tensors model's (a drop-in): no instances to decode, V2 tensors only, checked
    against the graph's declared shapes by the protocol."""

    def __init__(self, manifest: Manifest) -> None:
        self.name = manifest.name

    def describe_instance(self) -> str:
        return f"none: this model takes tensors, through the V2 protocol (POST /v2/models/{self.name}/infer)"

    def heavy(self, instances: list[Any]) -> bool:
        return False

    def instances_to_inputs(self, instances: list[Any]) -> dict[str, np.ndarray]:
        raise InvalidInput(f"model {self.name!r} takes tensors, not instances: send them with the V2 protocol "
                           f"(POST /v2/models/{self.name}/infer; GET /v2/models/{self.name} lists its inputs)")

    def check_shapes(self, shapes: Mapping[str, list[int]]) -> None:
        return None

    def check_tensors(self, inputs: dict[str, np.ndarray]) -> None:
        return None


def make_codec(manifest: Manifest, files: Mapping[str, bytes], limits: InputLimits = InputLimits()) -> Codec:
    """The codec of the manifest's task; `files` are the model's extra files, already verified."""
    if manifest.task == "image-classification":
        return ImageCodec(manifest, limits)
    if manifest.task == "text-classification":
        return TextCodec(manifest, files, limits)
    return TensorCodec(manifest)


PROBABILITIES = RESERVED_PREFIX + "probabilities"
PREDICTED = RESERVED_PREFIX + "predicted"
"""The outputs that `classify_batch` puts beside a classifier's logits."""


def classify_batch(outputs: dict[str, np.ndarray], logits_name: str, softmax: bool = True) -> dict[str, np.ndarray]:
    """Adds the predicted class (argmax of the scores) and the probabilities, rounded to 6
    places, to a batch's outputs: softmax of logits, or the scores where they are already
    probabilities (the manifest's `scores`).

    Called in the worker thread once per batch: one vectorised pass there instead of a
    handful of small numpy calls per request on the event loop, which is the bottleneck.
    """
    logits = outputs[logits_name].astype(np.float64)
    if softmax:
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        outputs[PROBABILITIES] = (e / e.sum(axis=1, keepdims=True)).round(6)
    else:
        outputs[PROBABILITIES] = logits.round(6)
    outputs[PREDICTED] = logits.argmax(axis=1)
    return outputs


def predictions_bytes_bound(rows: int, labels: list[str]) -> int:
    """The most bytes `predictions` for `rows` rows take as JSON: per row the longest label
    (6 bytes a UTF-8 byte at worst, escaped as \\uXXXX), its index and a probability per label
    (at most 25 bytes each), with the punctuation."""
    return 256 + rows * (64 + max(len(label.encode()) for label in labels) * 6 + 25 * len(labels))


def predictions(outputs: dict[str, np.ndarray], labels: list[str]) -> list[dict[str, Any]]:
    """One {label, index, probabilities} per row of outputs that `classify_batch` saw."""
    return [{"label": labels[best], "index": best, "probabilities": row}
            for best, row in zip(outputs[PREDICTED].tolist(), outputs[PROBABILITIES].tolist(), strict=True)]
