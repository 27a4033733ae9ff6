"""Triton's logging extension: the log's settings read and changed while the server runs,
over HTTP and gRPC as tritonclient calls them, in every worker, and what each setting does
to the lines written."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http

from app.errors import InvalidInput
from app.observability.log_settings import SWITCHES, LogSettings, SharedLogSettings, apply
from load_tests.server import ServerProcess
from tests.app.conftest import serving, wait_for
from tests.conftest import MODELS

TOKEN = "log-admin"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def written() -> Iterator[io.StringIO]:
    """What a logger of its own writes through a handler with the switches, as the server's
    handler has them; the settings put back afterwards (they are the process's)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(SWITCHES)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log = logging.getLogger("tests.log_settings")
    log.addHandler(handler)
    log.propagate = False
    try:
        yield stream
    finally:
        log.removeHandler(handler)
        apply(LogSettings())


def _each_level() -> None:
    log = logging.getLogger("tests.log_settings")
    for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR):
        log.log(level, "line")


@pytest.mark.parametrize(("settings", "lines"), [
    (LogSettings.at_level("debug", "text"), ["DEBUG", "INFO", "WARNING", "ERROR"]),
    (LogSettings.at_level("info", "text"), ["INFO", "WARNING", "ERROR"]),
    (LogSettings.at_level("warning", "text"), ["WARNING", "ERROR"]),
    (LogSettings.at_level("error", "text"), ["ERROR"]),
    (LogSettings(info=True, warnings=False, errors=True), ["INFO", "ERROR"]),  # a switch, not a threshold
    (LogSettings(info=False, warnings=False, errors=False), []),
])
def test_each_setting_is_what_is_written(written: io.StringIO, settings: LogSettings, lines: list[str]) -> None:
    apply(settings)
    _each_level()
    assert [line.split()[0] for line in written.getvalue().splitlines()] == lines


@pytest.mark.parametrize(("asked", "message"), [
    ({"log_info": 1}, "log_info must be true or false"),
    ({"log_verbose_level": -1}, "log_verbose_level must be a whole number"),
    ({"log_verbose_level": True}, "log_verbose_level must be a whole number"),
    ({"log_verbose_level": 2**32}, "log_verbose_level must be a whole number"),
    ({"log_file": "/tmp/server.log"}, "log_file cannot be set"),
    ({"log_format": "ISO8601"}, "log_format is 'text', chosen at start"),
    ({"log_level": "debug"}, "unknown log setting 'log_level'"),
])
def test_what_cannot_be_changed_is_a_400_naming_it(asked: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)):
        LogSettings().changed(asked)


def test_only_what_is_named_changes() -> None:
    changed = LogSettings().changed({"log_verbose_level": 2, "log_warnings": False, "log_file": "",
                                     "log_format": "text"})
    assert changed == LogSettings(verbose_level=2, warnings=False)


def test_workers_follow_each_others_changes_and_none_is_lost(tmp_path: Path, written: io.StringIO) -> None:
    first, second = SharedLogSettings(LogSettings(), tmp_path), SharedLogSettings(LogSettings(), tmp_path)
    first.change({"log_verbose_level": 1})
    # second has not looked yet: its change is made on top of first's, not of what it last saw
    assert second.change({"log_info": False}) == LogSettings(info=False, verbose_level=1)
    first.follow()
    assert first.current == second.current == LogSettings(info=False, verbose_level=1)
    later = SharedLogSettings(LogSettings(), tmp_path)  # a worker that starts (or restarts) now
    assert later.current == LogSettings(info=False, verbose_level=1)


async def test_over_http_reading_is_open_and_changing_takes_the_admin_token() -> None:
    async with serving(admin_token=TOKEN) as client:
        read = await client.get("/v2/logging")
        anonymous = await client.post("/v2/logging", json={"log_verbose_level": 1})
        wrong = await client.post("/v2/logging", json={"log_verbose_level": 1},
                                  headers={"Authorization": "Bearer nope"})
        bad = await client.post("/v2/logging", json={"log_file": "x.log"}, headers=ADMIN)
        not_an_object = await client.post("/v2/logging", content=b"[1]", headers=ADMIN)
        changed = await client.post("/v2/logging", json={"log_verbose_level": 1}, headers=ADMIN)
        debugging = logging.getLogger("app").isEnabledFor(logging.DEBUG)
        metadata = (await client.get("/v2")).json()
    async with serving() as client:  # no admin token configured: changing is off
        off = await client.post("/v2/logging", json={"log_verbose_level": 1})
    assert read.json() == {"log_file": "", "log_info": True, "log_warnings": True, "log_errors": True,
                           "log_verbose_level": 0, "log_format": "text"}
    assert anonymous.status_code == 401
    assert wrong.status_code == 401
    assert bad.status_code == 400
    assert "log_file cannot be set" in bad.json()["error"]
    assert not_an_object.status_code == 422
    assert changed.status_code == 200
    assert changed.json()["log_verbose_level"] == 1
    assert debugging
    assert "logging" in metadata["extensions"]
    assert off.status_code == 403
    assert "changing the log settings is off: configure an admin token" in off.json()["error"]


def test_tritonclient_changes_them_in_every_worker(tmp_path: Path) -> None:
    """Two workers: a change through one (HTTP) and one through whichever answers (gRPC)
    both hold in each, and each says so in the log."""
    args = ["--model-dir", str(MODELS), "--workers", "2", "--control-dir", str(tmp_path), "--no-warmup",
            "--log-level", "info"]
    with ServerProcess(args, env={"ORTSERVE_ADMIN_TOKEN": TOKEN}) as server:
        wait_for(lambda: server.log.read_text().count("gRPC (KServe V2, health, reflection) on") == 2)
        http = triton_http.InferenceServerClient(f"127.0.0.1:{server.port}")
        grpc = triton_grpc.InferenceServerClient(server.grpc_target)
        assert grpc.get_log_settings(as_json=True)["settings"]["log_info"] == {"bool_param": True}
        http.update_log_settings({"log_verbose_level": 1}, headers=ADMIN)
        answer = grpc.update_log_settings({"log_info": False}, headers={"authorization": f"Bearer {TOKEN}"},
                                          as_json=True)
        final = {"log_file": "", "log_info": False, "log_warnings": True, "log_errors": True,
                 "log_verbose_level": 1, "log_format": "text"}
        assert answer["settings"]["log_verbose_level"] == {"uint32_param": 1}  # on top of the first change

        def applied_by_both() -> bool:
            said = re.findall(r"worker (\d+): log settings now (.*)", server.log.read_text())
            return len({pid for pid, now in said if now == str(final)}) == 2

        wait_for(applied_by_both)
        # fresh connections, which the kernel spreads over both workers
        assert all(httpx.get(f"{server.url}/v2/logging").json() == final for _ in range(16))
