"""Structured logs: JSON lines carrying the request id of the request being served."""

from __future__ import annotations

import io
import json
import logging

from app.observability.log import JsonFormatter, _RequestIdFilter, request_id


def test_json_lines_carry_the_request_id() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.json")
    logger.addHandler(handler)
    logger.propagate = False
    token = request_id.set("req-7")
    try:
        logger.warning("queue %s is full", "m")
    finally:
        request_id.reset(token)
    logger.warning("outside a request")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "queue m is full"
    assert first["request_id"] == "req-7"
    assert first["level"] == "warning"
    assert first["logger"] == "test.json"
    assert "request_id" not in second
