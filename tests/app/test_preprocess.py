"""Shared preprocessing: the tokenizer's edge cases, pixel scaling, image decoding."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.manifest import ImagePreprocessing, TextPreprocessing
from app.preprocess import (
    ImageLimits,
    PreprocessError,
    Tokenizer,
    decode_base64_image,
    decode_image,
    normalize_pixels,
    tokenize,
)
from tests.app.conftest import b64_png, png_bytes

SPEC = TextPreprocessing(max_length=5)
IMAGE = ImagePreprocessing(height=28, width=28, scale=1 / 255, mean=0.25, std=0.5)


@pytest.mark.parametrize(("text", "tokens"), [
    ("It's a GREAT film!", ["it", "'s", "a", "great", "film", "!"]),
    ("doesn't work", ["does", "n't", "work"]),
    ("does n't work", ["does", "n't", "work"]),  # SST-2's own tokenisation is a fixed point
    ("well-made , funny", ["well-made", ",", "funny"]),
    ("don\u2019t", ["do", "n't"]),  # curly apostrophe
    ("crème brûlée", ["crème", "brûlée"]),
    ("", []),
    ("   \t\n", []),
    ("?!...", ["?", "!", ".", ".", "."]),
])
def test_tokenize(text: str, tokens: list[str]) -> None:
    assert tokenize(text) == tokens


def test_encode_unknown_empty_and_long_text() -> None:
    tok = Tokenizer(["<pad>", "<unk>", "good", "film"], SPEC)
    assert tok.encode("good film") == [2, 3]
    assert tok.encode("good zebra") == [2, 1]
    assert tok.encode("") == [1]  # never an empty sequence
    assert tok.encode("good " * 100) == [2] * 5  # truncated to max_length
    ids, lengths = tok.encode_batch(["good", "good film film"])
    assert ids.tolist() == [[2, 0, 0], [2, 3, 3]]
    assert lengths.tolist() == [1, 3]


def test_build_orders_by_frequency_and_round_trips(tmp_path) -> None:  # type: ignore[no-untyped-def]
    tok = Tokenizer.build(["b a", "a c", "a b"], SPEC)
    assert tok.vocabulary == ["<pad>", "<unk>", "a", "b", "c"]
    tok.save(tmp_path / "v.txt")
    assert Tokenizer.from_file(tmp_path / "v.txt", SPEC).vocabulary == tok.vocabulary
    with pytest.raises(ValueError, match="must start with"):
        Tokenizer(["a", "b"], SPEC)


@given(st.text(max_size=200))
def test_any_text_encodes_to_valid_ids(text: str) -> None:
    tok = Tokenizer(["<pad>", "<unk>", "a"], SPEC)
    ids = tok.encode(text)
    assert 1 <= len(ids) <= SPEC.max_length
    assert all(0 < i < 3 for i in ids)


def test_normalize_pixels() -> None:
    out = normalize_pixels(np.array([[[0.0] * 28] * 28, [[255.0] * 28] * 28]), IMAGE)
    assert out.shape == (2, 1, 28, 28)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0].max(), (0 - 0.25) / 0.5)
    np.testing.assert_allclose(out[1].max(), (1 - 0.25) / 0.5, rtol=1e-6)
    with pytest.raises(PreprocessError, match=r"\[0, 255\]"):
        normalize_pixels(np.full((1, 28, 28), 256.0), IMAGE)
    with pytest.raises(PreprocessError, match="finite numbers"):
        normalize_pixels(np.full((1, 28, 28), np.nan), IMAGE)
    with pytest.raises(PreprocessError, match="shape"):
        normalize_pixels(np.zeros((1, 27, 28)), IMAGE)


def test_uint8_and_float_pixels_normalize_alike() -> None:
    pixels = np.random.default_rng(0).permutation(np.resize(np.arange(256), 3 * 28 * 28)).reshape(3, 28, 28)
    from_uint8 = normalize_pixels(pixels.astype(np.uint8), IMAGE)
    assert from_uint8.dtype == np.float32
    np.testing.assert_array_equal(from_uint8, normalize_pixels(pixels.astype(np.float64), IMAGE))


def test_decode_image_converts_size_and_colour() -> None:
    grey = np.full((56, 40), 200, np.uint8)
    assert decode_image(png_bytes(grey), IMAGE).shape == (28, 28)
    rgb = np.zeros((28, 28, 3), np.uint8)
    rgb[..., 0] = 255
    assert decode_image(png_bytes(rgb, "RGB"), IMAGE).max() == 76  # ITU-R 601 luma of pure red
    assert decode_base64_image(b64_png(grey), IMAGE).shape == (28, 28)
    with pytest.raises(PreprocessError, match="cannot decode"):
        decode_image(b"GIF89a-not-really", IMAGE)
    with pytest.raises(PreprocessError, match="base64"):
        decode_base64_image("***", IMAGE)


def test_oversized_images_are_refused_before_decoding() -> None:
    import struct
    import zlib

    # Valid PNG headers claiming huge sizes, with almost no data behind them.
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    def png(side: int) -> bytes:
        header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b""))
                + chunk(b"IEND", b""))

    with pytest.raises(PreprocessError, match="2100x2100 pixels is larger than the 4,000,000 pixels accepted"):
        decode_image(png(2100), IMAGE)
    with pytest.raises(PreprocessError, match="larger than the 4,000,000 pixels"):  # past Pillow's own limit too
        decode_image(png(20000), IMAGE)
    with pytest.raises(PreprocessError, match="larger than the 100 pixels accepted"):  # the limit is a setting
        decode_image(png(11), IMAGE, ImageLimits(max_pixels=100))


def _png(array: np.ndarray, mode: str | None = None, **save: object) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    image = Image.fromarray(array, mode=mode) if mode else Image.fromarray(array)
    image.save(buffer, format="PNG", **save)
    return buffer.getvalue()


def test_16_bit_and_8_bit_pngs_of_one_picture_decode_alike() -> None:
    """Pillow's own conversion of 16-bit greyscale clips everything above 255 to white."""
    picture = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint16)
    eight = decode_image(_png(picture.astype(np.uint8)), IMAGE)
    sixteen = decode_image(_png(picture * 257), IMAGE)  # uint16: saved as a 16-bit PNG
    np.testing.assert_array_equal(eight, sixteen)


def test_float_palette_and_transparent_images_are_converted_not_clipped() -> None:
    from PIL import Image

    picture = np.random.default_rng(1).integers(0, 256, (28, 28), dtype=np.uint8)
    palette = Image.fromarray(picture).convert("P")  # greyscale palette: exact
    import io
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG")
    np.testing.assert_array_equal(decode_image(buffer.getvalue(), IMAGE), picture)
    # Transparent pixels become the training images' black background; opaque ones keep their value.
    rgba = np.zeros((28, 28, 4), dtype=np.uint8)
    rgba[..., :3] = picture[..., None]
    rgba[..., 3] = 255
    rgba[:14, :, 3] = 0
    decoded = decode_image(_png(rgba, "RGBA"), IMAGE)
    assert (decoded[:14] == 0).all()
    np.testing.assert_array_equal(decoded[14:], picture[14:])
    # Float greyscale (e.g. TIFF) is read as 0..1.
    tiff = io.BytesIO()
    Image.fromarray((picture / 255.0).astype(np.float32), mode="F").save(tiff, format="TIFF")
    np.testing.assert_array_equal(decode_image(tiff.getvalue(), IMAGE, ImageLimits(formats=("TIFF",))), picture)


def test_only_the_allowed_formats_are_decoded() -> None:
    import io

    from PIL import Image

    gif = io.BytesIO()
    Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(gif, format="GIF")
    with pytest.raises(PreprocessError, match=r"not one of the accepted formats \(PNG, JPEG\)"):
        decode_image(gif.getvalue(), IMAGE)
    assert decode_image(gif.getvalue(), IMAGE, ImageLimits(formats=("GIF",))).shape == (28, 28)


@pytest.mark.parametrize("data", [b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR\x00", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"])
def test_a_damaged_header_is_a_preprocess_error(data: bytes) -> None:
    """Found by the fuzz tests (tests/app/http/test_fuzz.py): a truncated PNG header raised OSError."""
    with pytest.raises(PreprocessError, match="cannot decode image"):
        decode_image(data, IMAGE)
