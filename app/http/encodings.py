"""Bodies compressed with gzip or deflate, as Triton's HTTP clients send and ask for them
(tritonclient's `request_compression_algorithm` and `response_compression_algorithm`).

A request body (`Content-Encoding`) is unpacked whole before it is parsed, and bounded
unpacked as well as packed: a few kilobytes of zeros unpack to gigabytes, so unpacking stops
one byte past max_body_bytes (413). An answer is packed where the client accepts it
(`Accept-Encoding`) and it is large (PACK_ANSWERS_FROM): a small one would cost the event
loop more than its bytes cost the network. Binary tensors' Inference-Header-Content-Length
counts the unpacked body both ways, as tritonclient and Triton count it.
"""

from __future__ import annotations

import gzip
import zlib

from app.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType

# zlib's window bits for each coding: gzip with its header and trailer; "deflate" as HTTP
# defines it, zlib's wrapper around deflate (RFC 9110, 8.4.1.2). Raw deflate, which some
# clients send under that name, is read too.
_WINDOW_BITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
_RAW_DEFLATE = -zlib.MAX_WBITS
PACK_ANSWERS_FROM = 256 * 1024
"""Answers of more bytes than this are packed where the client accepts it, on a decode
thread: gzip at level 1 takes 7.7 µs for a single image's JSON answer (316 bytes to 230) and
74 µs for 32 images' (docs/benchmarks.md), which the loop would pay for little."""


def coding_of(content_encoding: str | None) -> str | None:
    """The coding a body was sent in (None: as it is), from its Content-Encoding header; a
    415 for any other, or for more than one applied in turn."""
    if content_encoding is None:
        return None
    codings = [c.strip().lower() for c in content_encoding.split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if not codings:
        return None
    if len(codings) > 1 or codings[0] not in _WINDOW_BITS:
        raise UnsupportedMediaType(f"Content-Encoding {content_encoding!r} is not supported: send the body as it "
                                   "is, or compressed once with gzip or deflate")
    return codings[0]


def unpacked(body: bytes, coding: str, limit: int) -> bytes:
    """`body` unpacked, at most `limit` bytes (else 413); a 400 for a body that is not
    valid in its coding."""
    try:
        return _unpack(body, _WINDOW_BITS[coding], coding, limit)
    except zlib.error as e:
        if coding == "deflate":
            try:
                return _unpack(body, _RAW_DEFLATE, coding, limit)
            except zlib.error:
                pass
        raise InvalidInput(f"the request body is not valid {coding} (its Content-Encoding): {e}") from None


def _unpack(body: bytes, window_bits: int, coding: str, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    rest = body
    while True:  # gzip allows several members one after another (RFC 1952): one body
        unpacker = zlib.decompressobj(window_bits)
        part = unpacker.decompress(rest, limit - size + 1)
        size += len(part)
        if size > limit:
            del part, parts  # up to `limit` bytes: not kept alive by the exception's traceback
            raise PayloadTooLarge(f"the {coding} request body unpacks past the limit of {limit} bytes")
        if not unpacker.eof:
            raise InvalidInput(f"the {coding} request body ends before its compressed data does")
        parts.append(part)
        rest = unpacker.unused_data
        if not rest:
            return parts[0] if len(parts) == 1 else b"".join(parts)
        if window_bits != _WINDOW_BITS["gzip"]:
            raise InvalidInput(f"the {coding} request body has {len(rest)} bytes after its compressed data")


def answer_coding(accept_encoding: str | None) -> str | None:
    """The coding to pack an answer in, of those the client accepts (`Accept-Encoding`, its
    q-values read: `gzip;q=0` refuses gzip): gzip, else deflate; None: as it is."""
    if not accept_encoding:
        return None
    accepted: dict[str, float] = {}
    for item in accept_encoding.split(","):
        name, _, parameters = item.partition(";")
        quality = 1.0
        for parameter in parameters.split(";"):
            key, _, value = parameter.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0  # a q-value that is no number accepts nothing
        accepted[name.strip().lower()] = quality
    anything = accepted.get("*", 0.0)
    for coding in ("gzip", "deflate"):
        if accepted.get(coding, anything) > 0:
            return coding
    return None


def packed(body: bytes, coding: str) -> bytes:
    """An answer packed in `coding` (answer_coding's): level 1, the fastest, for most of the
    bytes saved."""
    return gzip.compress(body, compresslevel=1, mtime=0) if coding == "gzip" else zlib.compress(body, 1)
