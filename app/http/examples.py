"""Request examples of the OpenAPI document: complete, so that Swagger UI's "Try it out"
sends them as they are and gets an answer (tests/app/http/test_openapi.py runs each one)."""

from __future__ import annotations

from typing import Any

ANKLE_BOOT_PNG_B64 = (  # samples/ankle-boot.png: the first Ankle boot of the Fashion-MNIST test set
    "iVBORw0KGgoAAAANSUhEUgAAABwAAAAcCAAAAABXZoBIAAABUUlEQVR4nN2RPUvDUBiFz3tzm/QmaayE2lrBj6EU"
    "FXESxeImuouLg4td/AH+L8HByV/g6CS4KCq2RVPbJLVt7odDQdBZHHzG83DOcoB/jUWAgxrAvsXEMHfoKQOMcPBT"
    "QmOn0QSAmeMY4N8H5cZyu3YeiYcwePrRZNI7pHyBGK1mXf4lCYxgaZy2WyLfVjod24E3kQQDbSyFo0orKb51Mp4D"
    "82oTacA4QeFk/TEsin5BDzIy2AcHGAxpDVQPxJ3vhGPjQo1UqhvgltKAQWmxPjvuF4Ocoxdy75lmH1a8yhXKC54n"
    "ltwsYVNCuoOR/TLldv3ptBJy7FZlyVIy9ivkdJlvpUlvBuhq4Ui+17x9idnYotjWBRI6Vymv2AypO0w6/HprrQEZ"
    "R1HPprDuBmb95n7XMZDP/QIB8Dfr26XAI6Oj26vLIXAx/xrHcnT2i0//AZ9ign3/9ZgRIQAAAABJRU5ErkJggg=="
)

V1_EXAMPLES: dict[str, dict[str, Any]] = {
    # Keyed by the model each one is for: the path's {name}.
    "sst2-lstm": {"summary": "sst2-lstm: two sentences",
                  "value": {"instances": ["a gripping, beautifully acted film", "a dull, lifeless mess"]}},
    "fashion-cnn": {"summary": "fashion-cnn: a base64 PNG (an ankle boot)",
                    "value": {"instances": [{"b64": ANKLE_BOOT_PNG_B64}]}},
}

V2_EXAMPLES: dict[str, dict[str, Any]] = {
    "sst2-lstm": {"summary": "sst2-lstm: one sentence of three token ids", "value": {"inputs": [
        {"name": "token_ids", "shape": [1, 3], "datatype": "INT64", "data": [5, 6, 7]},
        {"name": "lengths", "shape": [1], "datatype": "INT64", "data": [3]}]}},
    "fashion-cnn": {"summary": "fashion-cnn: one image, already scaled as the manifest says",
                    "value": {"inputs": [{"name": "pixels", "shape": [1, 1, 28, 28], "datatype": "FP32",
                                          "data": [0.0] * 784}]}},
}
