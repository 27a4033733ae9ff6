"""The task-level V1 protocol (KServe V1 / TF-Serving style): `{"instances": [...]}` of raw
images or texts in, `{"predictions": [...]}` of labels out."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from app.codecs import Codec, predictions, predictions_bytes_bound
from app.errors import InvalidInput, UnprocessableInput
from app.manifest import Manifest
from app.protocol.values import json_object
from app.sequences import SequenceFlags


def parse_instances(body: bytes) -> list[Any]:
    instances = json_object(body, '{"instances": [...]}').get("instances")
    if not isinstance(instances, list):
        raise UnprocessableInput('request body must be a JSON object {"instances": [...]}')
    if not instances:
        raise InvalidInput("'instances' is empty: send at least one instance")
    return instances


class V1Exchange:
    """One V1 request through the inference path (app/inference.py `Exchange`). Nothing of
    the request is kept for its answer, which needs only the labels."""

    __slots__ = ()

    def parse(self, body: bytes) -> list[Any]:
        return parse_instances(body)

    def heavy(self, instances: list[Any], codec: Codec) -> bool:
        return codec.heavy(instances)  # images to decode, long texts

    def decode(self, instances: list[Any], manifest: Manifest, codec: Codec) -> tuple[None, dict[str, np.ndarray]]:
        return None, codec.instances_to_inputs(instances)

    def timeout_s(self, kept: None) -> float | None:
        return None  # V1 asks for one with a header, which the transport reads

    def priority(self, kept: None) -> int:
        return 0  # V1 has no way to ask for one: the model's default level

    def sequence(self, kept: None) -> SequenceFlags | None:
        return None  # V1 has no way to name one: a stateful model refuses its requests, saying why

    def answer_bytes(self, kept: None, manifest: Manifest, rows: int,
                     outputs: dict[str, np.ndarray] | None = None) -> int:
        return predictions_bytes_bound(rows, manifest.labels)

    def answer(self, kept: None, manifest: Manifest, outputs: dict[str, np.ndarray]) -> bytes:
        return orjson.dumps({"predictions": predictions(outputs, manifest.labels),
                             "model_name": manifest.name, "model_version": str(manifest.version)},
                            option=orjson.OPT_SERIALIZE_NUMPY)


V1 = V1Exchange()
