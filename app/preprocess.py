"""Preprocessing shared by training and serving: pixel scaling, image decoding, tokenizing.

Torch-free on purpose: training imports these functions so that a model is fed
exactly what the service will feed it. All constants come from the manifest's
preprocessing spec, never from code.
"""

from __future__ import annotations

import base64
import binascii
import functools
import io
import re
import struct
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.manifest import ImagePreprocessing, TextPreprocessing


class PreprocessError(ValueError):
    """The client's input cannot be turned into a model input; the message says why."""


# --- images ---------------------------------------------------------------------------


def normalize_pixels(pixels: np.ndarray, spec: ImagePreprocessing) -> np.ndarray:
    """(N, H, W) or (N, C, H, W) raw pixels 0-255 -> float32 (N, C, H, W) model input."""
    x = np.asarray(pixels)
    if x.dtype != np.uint8:  # uint8 is in range by construction; anything else is checked
        x = x.astype(np.float32, copy=False)
    if x.ndim == 3:
        x = x[:, None, :, :]
    expected = (spec.channels, spec.height, spec.width)
    if x.ndim != 4 or x.shape[1:] != expected:
        want = f"(N, {spec.height}, {spec.width})" if spec.channels == 1 else f"(N, {', '.join(map(str, expected))})"
        raise PreprocessError(f"pixels must have shape {want}, got {x.shape}")
    # One min and one max: NaN fails both comparisons, so it is caught here too.
    if x.dtype != np.uint8 and x.size and not (x.min() >= 0 and x.max() <= 255):
        raise PreprocessError("pixels must be finite numbers in [0, 255]")
    if not isinstance(spec.mean, list) and not isinstance(spec.std, list):  # every channel alike
        if x.dtype == np.uint8:
            # One table look-up per pixel: a single numpy call, which matters on the request path.
            return _pixel_table(spec.scale, spec.mean, spec.std).take(x)
        return _scaled(x, spec.scale, spec.mean, spec.std)
    # Per channel: the multiply-add, uint8 pixels too (a look-up per channel, by fancy
    # indexing, took six times as long for a 224x224 image: 441 against 71-76 µs).
    mean, std = spec.per_channel("mean"), spec.per_channel("std")
    return _scaled(x, spec.scale, np.reshape(mean, (-1, 1, 1)), np.reshape(std, (-1, 1, 1)))


def match_background(pixels: np.ndarray, spec: ImagePreprocessing) -> np.ndarray:
    """Raw (N, H, W) pixels with each image whose border is on the other side of mid-grey
    from the model's training background inverted (255 - p).

    Fashion-MNIST shows light objects on black; a product photo shows a dark object on
    white, and a model fed one unchanged answers confidently and wrongly. The outermost
    rows and columns are background in both, so their mean tells the two apart.
    """
    x = pixels
    if spec.background == "any" or x.ndim != 3 or x.shape[1] < 2 or x.shape[2] < 2:  # (N, C, H, W): colour
        return pixels
    h, w = x.shape[1:]
    # First and last rows and columns, as strided views (no copies): two numpy calls, not
    # eight, on the request path. Corners count twice, which a threshold does not mind.
    border = np.add.reduce(x[:, :: h - 1], (1, 2)) + np.add.reduce(x[:, :, :: w - 1], (1, 2))
    light = border > 127.5 * (2 * h + 2 * w)
    invert = light if spec.background == "dark" else ~light
    if not invert.any():
        return pixels
    out = pixels.copy()
    out[invert] = 255 - out[invert]
    return out


def _scaled(x: np.ndarray, scale: float, mean: Any, std: Any) -> np.ndarray:
    """(p * scale - mean) / std folded into one multiply-add; mean and std numbers, or arrays
    that broadcast over the channel axis. float32 factors keep the result float32, from uint8
    and float32 pixels alike."""
    return x * np.float32(scale / std) + np.float32(-mean / std)


@functools.lru_cache(maxsize=16)
def _pixel_table(scale: float, mean: float, std: float) -> np.ndarray:
    """The model input for each uint8 pixel value, by the same multiply-add as any pixel."""
    table = _scaled(np.arange(256, dtype=np.uint8), scale, mean, std)
    table.flags.writeable = False
    return table


MAX_TEXT_CHARS = 2048
"""Characters of a text kept before normalisation and tokenisation, unless told otherwise
(the max_text_chars setting)."""


@dataclass(frozen=True)
class ImageLimits:
    """What an encoded image may be: decoded only if it passes both. These defaults are
    the max_image_pixels and image_formats settings' too."""

    max_pixels: int = 4_000_000
    """A few KB of PNG can claim gigapixels: refused from the header, before decoding."""
    formats: tuple[str, ...] = ("PNG", "JPEG")


def decode_image(data: bytes, spec: ImagePreprocessing, limits: ImageLimits = ImageLimits()) -> np.ndarray:
    """PNG/JPEG bytes -> uint8 (H, W) or (C, H, W) pixels, converted and resized.

    Every mode becomes 8-bit before anything else: 16- and 32-bit integer greyscale is
    scaled from its full range, float greyscale from [0, 1]; palette images are expanded.
    Transparent pixels are composited onto black, the background of the training images.
    Colour becomes greyscale (ITU-R 601 luma) for 1-channel models; other sizes are
    resized to the model's size.
    """
    from PIL import Image, UnidentifiedImageError  # imported lazily: only image models need it

    try:
        image: Image.Image = Image.open(io.BytesIO(data), formats=list(limits.formats))  # the header only
    except UnidentifiedImageError:
        raise PreprocessError(f"cannot decode image: not one of the accepted formats "
                              f"({', '.join(limits.formats)}), or damaged") from None
    except Image.DecompressionBombError:  # Pillow's own limit, far above ours
        raise PreprocessError(f"image is larger than the {limits.max_pixels:,} pixels accepted") from None
    except (OSError, ValueError, SyntaxError, EOFError, struct.error) as e:  # a damaged header
        raise PreprocessError(f"cannot decode image: {_without_reprs(e)}") from e
    if image.width * image.height > limits.max_pixels:
        raise PreprocessError(f"image of {image.width}x{image.height} pixels is larger than "
                              f"the {limits.max_pixels:,} pixels accepted")
    try:
        image.load()
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError) as e:
        raise PreprocessError(f"cannot decode {image.format} image: {_without_reprs(e)}") from e
    image = _as_8_bit(image)
    if "A" in image.mode or "a" in image.mode or "transparency" in image.info:
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image)
    image = image.convert("L" if spec.channels == 1 else "RGB")
    if image.size != (spec.width, spec.height):
        resample = Image.Resampling.BILINEAR if spec.resize == "bilinear" else Image.Resampling.NEAREST
        image = image.resize((spec.width, spec.height), resample)
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels if spec.channels == 1 else pixels.transpose(2, 0, 1)


def _without_reprs(error: Exception) -> str:
    """A decoder's message without the object reprs some include (`<_io.BytesIO object at 0x...>`)."""
    return re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", str(error)).strip() or type(error).__name__


def _as_8_bit(image: Any) -> Any:
    """Wide greyscale modes scaled to 8 bits; Pillow's own conversion would clip them."""
    from PIL import Image

    if image.mode.startswith("I;16") or image.mode == "I":
        wide = np.asarray(image).astype(np.float64)
        full = 65535.0 if image.mode.startswith("I;16") or wide.max() <= 65535 else float(2**31 - 1)
        return Image.fromarray(np.clip(np.rint(wide * (255.0 / full)), 0, 255).astype(np.uint8), mode="L")
    if image.mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0)
        return Image.fromarray(np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8), mode="L")
    if image.mode in ("P", "PA"):
        return image.convert("RGBA" if "transparency" in image.info or image.mode == "PA" else "RGB")
    if image.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        return image.convert("RGB")
    return image


_DATA_URL = re.compile(r"data:image/[\w.+-]+;base64,", re.IGNORECASE)


def decode_base64_image(text: str, spec: ImagePreprocessing, limits: ImageLimits = ImageLimits()) -> np.ndarray:
    """Base64 PNG/JPEG, bare or as a data URL (`data:image/png;base64,...`, what a browser's
    FileReader and canvas give)."""
    if text[:5].lower() == "data:":
        prefix = _DATA_URL.match(text)
        if prefix is None:
            raise PreprocessError("'b64' starts like a data URL but not 'data:image/<type>;base64,'")
        text = text[prefix.end():]
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise PreprocessError(f"'b64' is not valid base64: {e}") from e
    return decode_image(data, spec, limits)


# --- text -----------------------------------------------------------------------------

# Penn-Treebank-style words, matching how SST-2 was tokenised: "doesn't" -> "does n't",
# "film's" -> "film 's", punctuation split off, hyphenated words kept whole.
_TOKEN = re.compile(r"n't\b|'(?:s|re|ve|ll|d|m)\b|\w+(?=n't\b)|\w+(?:-\w+)*|[^\w\s]")
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "`": "'"})


def tokenize(text: str, *, lowercase: bool = True) -> list[str]:
    text = unicodedata.normalize("NFKC", text).translate(_QUOTES)
    if lowercase:
        text = text.lower()
    return _TOKEN.findall(text)


class Tokenizer:
    """Words -> ids with a fixed vocabulary; id 0 pads and id 1 stands for unknown words."""

    def __init__(self, vocabulary: Sequence[str], spec: TextPreprocessing) -> None:
        if list(vocabulary[:2]) != [spec.pad_token, spec.unknown_token]:
            raise ValueError(
                f"vocabulary must start with {spec.pad_token!r}, {spec.unknown_token!r}"
            )
        self.spec = spec
        self.vocabulary = list(vocabulary)
        self._ids = {word: i for i, word in enumerate(self.vocabulary)}
        if len(self._ids) != len(self.vocabulary):
            raise ValueError("vocabulary has duplicate entries")
        self.unknown_id = 1

    @classmethod
    def from_file(cls, path: Path, spec: TextPreprocessing) -> Tokenizer:
        return cls.from_bytes(path.read_bytes(), spec)

    @classmethod
    def from_bytes(cls, data: bytes, spec: TextPreprocessing) -> Tokenizer:
        """A vocabulary file's content: one word per line, in id order."""
        return cls([w for w in data.decode("utf-8").split("\n") if w], spec)

    @classmethod
    def build(cls, texts: Iterable[str], spec: TextPreprocessing, *, min_count: int = 1) -> Tokenizer:
        """A vocabulary of every word seen at least `min_count` times, most frequent first."""
        counts = Counter(tok for text in texts for tok in tokenize(text, lowercase=spec.lowercase))
        words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls([spec.pad_token, spec.unknown_token, *words], spec)

    def save(self, path: Path) -> None:
        path.write_text("\n".join(self.vocabulary) + "\n", encoding="utf-8")

    def encode(self, text: str) -> list[int]:
        """Token ids, truncated to max_length; an empty text becomes one unknown token
        so that every sequence has at least one step to classify."""
        words = tokenize(text, lowercase=self.spec.lowercase)[: self.spec.max_length]
        ids = [self._ids.get(w, self.unknown_id) for w in words]
        return ids or [self.unknown_id]

    def encode_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Texts -> (token_ids int64 (N, T) padded with 0 to the longest, lengths int64 (N,))."""
        encoded = [self.encode(t) for t in texts]
        return pad_sequences(encoded)


def pad_sequences(sequences: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    width = int(lengths.max()) if len(sequences) else 1
    ids = np.zeros((len(sequences), width), dtype=np.int64)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = seq
    return ids, lengths
