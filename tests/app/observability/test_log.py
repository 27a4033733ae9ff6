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


async def test_each_model_state_change_is_one_structured_log_line(model_root, caplog) -> None:  # type: ignore[no-untyped-def]
    from tests.app.conftest import serving
    from tests.conftest import model_folder

    caplog.set_level("INFO", logger="app.repository")
    async with serving(model_dir=model_root, model_control_mode="explicit", load_model=["sst2-lstm"]):
        pass
    events = [(r.fields["state"], r.fields["model"], r.fields["version"])  # type: ignore[attr-defined]
              for r in caplog.records if getattr(r, "fields", None)]
    v = model_folder("sst2-lstm").name  # the fixture copies the newest version
    assert events == [("LOADING", "sst2-lstm", v), ("READY", "sst2-lstm", v),
                      ("UNLOADING", "sst2-lstm", v), ("UNAVAILABLE", "sst2-lstm", v)]
    line = JsonFormatter().format(next(r for r in caplog.records if getattr(r, "fields", None)))
    assert json.loads(line) | {"time": ""} == {
        "time": "", "level": "info", "logger": "app.repository", "message": f"model sst2-lstm version {v}: LOADING",
        "event": "model_state", "model": "sst2-lstm", "version": v, "state": "LOADING", "reason": ""}
