"""Request bodies sent compressed (Content-Encoding gzip or deflate, as tritonclient's
request compression sends them): unpacked before they are read, bounded unpacked by
max_body_bytes, and a clear 4xx for a body that is not what its header says.
tritonclient itself is run against a server in tests/app/grpc/test_grpc_clients.py."""

from __future__ import annotations

import gzip
import zlib
from typing import Any

import numpy as np
import orjson
import pytest

from app.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from app.http.encodings import PACK_ANSWERS_FROM, answer_coding, coding_of, unpacked
from app.offload import HEAVY_BODY_BYTES
from load_tests import samples
from tests.app.conftest import serving
from tests.conftest import MODELS

LIMIT = 256 * 1024


def raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


@pytest.mark.parametrize(("coding", "pack"), [
    ("gzip", gzip.compress), ("x-gzip", gzip.compress), ("deflate", zlib.compress), ("deflate", raw_deflate),
    ("gzip", lambda data: gzip.compress(data[:10]) + gzip.compress(data[10:])),  # two gzip members: one body
])
def test_each_coding_unpacks_to_the_body_sent(coding: str, pack: Any) -> None:
    body = samples.v2_json(2, MODELS)
    assert unpacked(pack(body), coding, LIMIT) == body


def test_a_body_is_bounded_unpacked_as_well_as_packed() -> None:
    bomb = gzip.compress(bytes(LIMIT + 1))
    assert len(bomb) < 1024
    assert unpacked(gzip.compress(bytes(LIMIT)), "gzip", LIMIT) == bytes(LIMIT)  # exactly the limit: read
    with pytest.raises(PayloadTooLarge, match="unpacks past the limit of 262144 bytes"):
        unpacked(bomb, "gzip", LIMIT)
    with pytest.raises(PayloadTooLarge):  # the limit counts every member together
        unpacked(gzip.compress(bytes(LIMIT // 2 + 1)) * 2, "gzip", LIMIT)


@pytest.mark.parametrize(("body", "coding", "message"), [
    (b"{\"inputs\": []}", "gzip", "not valid gzip"),
    (gzip.compress(b"{\"inputs\": []}")[:-12], "gzip", "ends before its compressed data does"),
    (zlib.compress(b"{}") + b"more", "deflate", "bytes after its compressed data"),
    (b"", "deflate", "ends before its compressed data does"),
])
def test_a_body_that_is_not_what_its_header_says_is_a_400(body: bytes, coding: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        unpacked(body, coding, LIMIT)


def test_codings_from_the_header() -> None:
    assert coding_of(None) is None
    assert coding_of("identity") is None
    assert coding_of("GZIP") == "gzip"
    assert coding_of(" deflate ") == "deflate"
    for header in ("br", "zstd", "gzip, deflate", "compress"):
        with pytest.raises(UnsupportedMediaType, match="compressed once with gzip or deflate"):
            coding_of(header)


async def test_compressed_bodies_through_every_route_that_reads_one() -> None:
    body, limit, apps = samples.v2_json(3, MODELS), 1024 * 1024, []
    large = np.full((128, 1, 28, 28), 0.5, np.float32)  # unpacks past the size a body is held as large from
    large_body = orjson.dumps({"inputs": [{"name": "pixels", "shape": list(large.shape), "datatype": "FP32",
                                           "data": large.ravel().tolist()}]})
    assert HEAVY_BODY_BYTES < len(large_body) < limit
    async with serving(apps.append, max_body_bytes=limit) as client:
        plain = await client.post("/v2/models/fashion-cnn/infer", content=body)
        packed = await client.post("/v2/models/fashion-cnn/infer", content=gzip.compress(body),
                                   headers={"Content-Encoding": "gzip"})
        v1 = await client.post("/v1/models/sst2-lstm:predict", content=zlib.compress(b'{"instances": ["good"]}'),
                               headers={"Content-Encoding": "deflate"})
        bomb = await client.post("/v2/models/fashion-cnn/infer", content=gzip.compress(body + bytes(limit)),
                                 headers={"Content-Encoding": "gzip"})
        not_gzip = await client.post("/v2/models/fashion-cnn/infer", content=body,
                                     headers={"Content-Encoding": "gzip"})
        brotli = await client.post("/v2/models/fashion-cnn/infer", content=body, headers={"Content-Encoding": "br"})
        big = await client.post("/v2/models/fashion-cnn/infer", content=gzip.compress(large_body),
                                headers={"Content-Encoding": "gzip"})
        held = apps[0].services.budget.large_bodies.held
    assert plain.status_code == 200, plain.text
    assert packed.status_code == 200, packed.text
    assert packed.json()["outputs"] == plain.json()["outputs"]
    assert v1.status_code == 200, v1.text
    assert v1.json()["predictions"][0]["label"] in ("positive", "negative")
    assert bomb.status_code == 413
    assert "unpacks past the limit" in bomb.json()["error"]
    assert not_gzip.status_code == 400
    assert "not valid gzip" in not_gzip.json()["error"]
    assert brotli.status_code == 415
    assert "Content-Encoding 'br' is not supported" in brotli.json()["error"]
    assert big.status_code == 200, big.text
    assert len(big.json()["outputs"][0]["data"]) == 128 * 10
    assert held == 0  # the unpacked large body given back once answered


@pytest.mark.parametrize(("header", "coding"), [
    (None, None), ("", None), ("identity", None), ("br", None), ("gzip", "gzip"), ("deflate", "deflate"),
    ("br, deflate, gzip", "gzip"), ("GZIP;Q=0.5", "gzip"), ("gzip;q=0, deflate", "deflate"), ("gzip;q=0", None),
    ("*", "gzip"), ("*;q=0", None), ("*, gzip;q=0", "deflate"), ("gzip;q=high", None),
])
def test_the_coding_an_answer_is_packed_in(header: str | None, coding: str | None) -> None:
    assert answer_coding(header) == coding


async def test_large_answers_are_packed_where_the_client_accepts_it() -> None:
    """tritonclient's response_compression_algorithm asks with Accept-Encoding; Triton packs
    its answers then. Here answers over PACK_ANSWERS_FROM are (JSON and binary tensors, whose
    header length is the unpacked answer's), small ones go as they are."""
    binary, headers = samples.v2_binary(7000, MODELS)  # 7,000 rows of logits: 280 KB as binary tensors
    as_json = orjson.loads(binary[:int(headers["Inference-Header-Content-Length"])])
    as_json["outputs"] = [{"name": "logits"}]
    json_header = orjson.dumps(as_json)
    json_answer = json_header + binary[int(headers["Inference-Header-Content-Length"]):]
    json_headers = {**headers, "Inference-Header-Content-Length": str(len(json_header))}
    async with serving(max_body_bytes=32 * 1024 * 1024, max_queue_size=8192) as client:
        answers = {}
        for name, body, sent in (("binary", binary, headers), ("json", json_answer, json_headers)):
            for coding in ("gzip", "deflate", None):
                accept = {"Accept-Encoding": coding} if coding else {"Accept-Encoding": "identity"}
                answers[name, coding] = await client.post("/v2/models/fashion-cnn/infer", content=body,
                                                          headers={**sent, **accept})
        small = await client.post("/v2/models/fashion-cnn/infer", content=samples.v2_json(1, MODELS),
                                  headers={"Accept-Encoding": "gzip"})
    for (name, coding), answer in answers.items():
        assert answer.status_code == 200, answer.text
        assert answer.headers.get("content-encoding") == coding, (name, coding)
        assert answer.content == answers[name, None].content  # httpx unpacks: the same bytes
        assert len(answer.content) > PACK_ANSWERS_FROM
        if coding:
            assert answer.headers["vary"] == "Accept-Encoding"
            assert int(answer.headers["content-length"]) < len(answer.content) * 0.95
    assert answers["binary", "gzip"].headers["inference-header-content-length"] == \
        answers["binary", None].headers["inference-header-content-length"]
    assert "content-encoding" not in small.headers
