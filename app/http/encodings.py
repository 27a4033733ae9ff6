"""Request bodies sent compressed: `Content-Encoding: gzip` or `deflate`, as Triton's HTTP
clients send them (tritonclient's `request_compression_algorithm`) and Triton reads them.

A body is unpacked whole before it is parsed, and bounded unpacked as well as packed: a few
kilobytes of zeros unpack to gigabytes, so unpacking stops one byte past max_body_bytes
(413). Binary tensors' Inference-Header-Content-Length counts the unpacked body, as
tritonclient computes it before compressing.
"""

from __future__ import annotations

import zlib

from app.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType

# zlib's window bits for each coding: gzip with its header and trailer; "deflate" as HTTP
# defines it, zlib's wrapper around deflate (RFC 9110, 8.4.1.2). Raw deflate, which some
# clients send under that name, is read too.
_WINDOW_BITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
_RAW_DEFLATE = -zlib.MAX_WBITS


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
