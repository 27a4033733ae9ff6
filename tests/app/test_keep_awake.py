"""The keep-awake helper (app/keep_awake.py): when it spins, that it sleeps and is woken,
runs at idle priority, leaves with the server, and hears of every HTTP and gRPC request."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
from pydantic import ValidationError

import app.keep_awake
import app.main
from app.keep_awake import AUTO_WINDOW_S, KeepAwake, window_from_setting
from app.settings import Settings
from tests.app.conftest import grpc_image_request, sample_images, serving_grpc
from tests.conftest import ROOT

LIVENESS_S = 30
"""How long a test waits for the helper to do something it must do (not a speed bound)."""


def eventually(condition: Callable[[], bool], what: str) -> None:
    waited_until = time.monotonic() + LIVENESS_S
    while not condition():
        if time.monotonic() > waited_until:
            raise AssertionError(f"not within {LIVENESS_S} s: {what}")
        time.sleep(0.01)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_auto_keeps_a_cpu_awake_for_two_ms_except_under_a_cpu_quota(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app.keep_awake, "cgroup_cpu_quota", lambda: None)
    assert window_from_setting("auto") == AUTO_WINDOW_S == 0.002
    monkeypatch.setattr(app.keep_awake, "cgroup_cpu_quota", lambda: 1.5)  # a container's --cpus 1.5
    assert window_from_setting("auto") == 0
    assert window_from_setting(5) == 0.005  # given: kept, quota or not
    assert window_from_setting(0) == 0


def test_the_setting_takes_auto_or_milliseconds_not_below_zero() -> None:
    assert Settings().keep_awake_ms == "auto"
    assert Settings(keep_awake_ms="3.5").keep_awake_ms == 3.5
    with pytest.raises(ValidationError):
        Settings(keep_awake_ms=-1)
    with pytest.raises(ValidationError):
        Settings(keep_awake_ms="always")


def test_a_lone_request_spins_a_second_in_flight_stops_it_and_the_last_answered_spins_again() -> None:
    awake = KeepAwake(10.0, busy_hold_s=0.0)  # the helper need not run: this is what the server tells it
    try:
        before = time.monotonic()
        awake.began()
        first = awake.spins_until
        assert first >= before + 10.0
        awake.began()
        assert awake.spins_until == 0.0
        assert awake.in_flight == 2
        awake.ended()
        assert awake.spins_until == 0.0  # one still in flight: the server is busy
        awake.ended()
        assert awake.spins_until >= first
        assert awake.in_flight == 0
    finally:
        awake.stop()


def test_after_two_in_flight_the_server_counts_as_busy_for_the_hold_not_as_a_lone_client() -> None:
    """Calls that reach the loop one at a time (gRPC's, from many clients) leave one or none
    in flight between them; once two were in flight, neither the last answered nor the next
    lone arrival spins the helper until busy_hold_s has passed with at most one in flight."""
    for hold in (3600.0, 0.05):  # the first never passes during the test, the second does
        awake = KeepAwake(10.0, busy_hold_s=hold)
        try:
            awake.began()
            assert awake.spins_until > 0  # a lone client, as ever
            awake.began()
            assert awake.spins_until == 0.0
            awake.ended()
            awake.ended()
            if hold > 1:
                assert awake.spins_until == 0.0  # down to none, but two were in flight just now
                awake.began()
                assert awake.spins_until == 0.0  # the next call alone: still the busy server's
                awake.ended()
                assert awake.spins_until == 0.0
            else:
                time.sleep(2 * hold)  # the hold passes with none in flight: a lone client again
                before = time.monotonic()
                awake.began()
                assert awake.spins_until >= before + 10.0
                awake.ended()
            assert awake.in_flight == 0
        finally:
            awake.stop()


def test_a_call_that_does_not_spin_is_counted_but_never_starts_the_helper() -> None:
    """gRPC's calls: alone they leave the helper still; beside an HTTP request they make two
    in flight, which stops it as any second request does."""
    awake = KeepAwake(10.0, busy_hold_s=0.0)
    try:
        awake.began(spins=False)
        awake.ended(spins=False)
        assert awake.spins_until == 0.0  # never told to spin
        awake.began()  # an HTTP request alone: spins
        assert awake.spins_until > 0
        awake.began(spins=False)  # a gRPC call beside it: two in flight
        assert awake.spins_until == 0.0
        assert awake.in_flight == 2
        awake.ended()
        awake.ended(spins=False)  # the last answered is a gRPC call: no spin
        assert awake.spins_until == 0.0
        assert awake.in_flight == 0
    finally:
        awake.stop()


def test_the_helper_runs_at_idle_priority_sleeps_is_woken_and_leaves_when_stopped() -> None:
    # It looks at the deadline only when woken (an hour between checks otherwise): seeing it
    # fall asleep again after a request means the request's write to the pipe woke it.
    awake = KeepAwake(0.05, sleep_check_s=3600)
    awake.start()
    pid = awake.pid
    assert pid is not None
    try:
        if hasattr(os, "sched_getscheduler"):
            eventually(lambda: os.sched_getscheduler(pid) == os.SCHED_IDLE, "the helper runs under SCHED_IDLE")
        eventually(lambda: awake.helper_asleep, "the helper, told nothing, sleeps")
        awake.began()
        assert not awake.helper_asleep  # the server marks it woken as it writes to the pipe
        eventually(lambda: awake.helper_asleep, "the woken helper spins its window, then sleeps again")
        awake.ended()
        eventually(lambda: awake.helper_asleep, "and again after the request is answered")
    finally:
        awake.stop()
    assert not alive(pid)


def test_the_helper_leaves_with_a_server_that_dies() -> None:
    # A server killed outright cannot stop its helper: the pipe it held closes, and that is
    # the helper's signal to go.
    script = ("import os, sys\nfrom app.keep_awake import KeepAwake\n"
              "a = KeepAwake(0.002, sleep_check_s=3600)\na.start()\nprint(a.pid, flush=True)\nos._exit(0)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          check=True)
    helper = int(done.stdout.split()[0])
    eventually(lambda: not alive(helper), f"the orphaned helper {helper} exits")


def test_a_killed_helper_is_reaped_and_replaced_at_most_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    awake = KeepAwake(0.05, sleep_check_s=3600, replace_after_s=3600)
    awake.start()
    first = awake.pid
    assert first is not None
    try:
        assert not awake.replace_if_gone()  # alive: left alone
        assert awake.pid == first
        os.kill(first, signal.SIGKILL)
        eventually(awake.replace_if_gone, "the killed helper is replaced")
        second = awake.pid
        assert second is not None
        assert second != first
        assert not os.path.exists(f"/proc/{first}")  # reaped, not left a zombie
        assert f"keep-awake helper (pid {first}) exited with status -9: starting another" in caplog.text
        # The new helper is told of requests through its own pipe: it sleeps, is woken, sleeps.
        eventually(lambda: awake.helper_asleep, "the new helper sleeps")
        awake.began()
        assert not awake.helper_asleep
        eventually(lambda: awake.helper_asleep, "the new helper was woken, spun its window and sleeps again")
        awake.ended()
        os.kill(second, signal.SIGKILL)
        eventually(lambda: not alive(second), "the second helper is killed")
        assert not awake.replace_if_gone()  # within replace_after_s of the last: not again yet
        assert awake.pid == second
    finally:
        awake.stop()
    assert not alive(second)


def test_a_helper_that_cannot_be_replaced_is_tried_again_later(monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    awake = KeepAwake(0.05, sleep_check_s=3600, replace_after_s=0)
    awake.start()
    first = awake.pid
    assert first is not None
    try:
        os.kill(first, signal.SIGKILL)
        eventually(lambda: not alive(first), "the helper is killed")
        started = subprocess.Popen

        def no_process(*args: object, **kwargs: object) -> None:
            raise OSError("Resource temporarily unavailable")

        monkeypatch.setattr(app.keep_awake.subprocess, "Popen", no_process)
        assert not awake.replace_if_gone()
        with pytest.raises(BrokenPipeError):  # the read end made for the helper closed with the failed try
            os.write(awake._wake, b"\0")
        assert "keep-awake helper not started again (next try in 0 s): Resource temporarily unavailable" in caplog.text
        awake.began()  # the server goes on telling a helper that is not there: no error
        awake.ended()
        monkeypatch.setattr(app.keep_awake.subprocess, "Popen", started)
        assert awake.replace_if_gone()
        assert awake.pid not in (None, first)
        eventually(lambda: awake.helper_asleep, "the helper started at the next try sleeps")
    finally:
        awake.stop()


async def test_the_server_replaces_a_helper_that_was_killed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app.main, "KEEP_AWAKE_CHECK_S", 0.05)
    async with serving_grpc(keep_awake_ms=1) as (client, _, served):
        awake = served.keep_awake
        assert isinstance(awake, KeepAwake)
        first = awake.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + LIVENESS_S
        while awake.pid == first and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        replaced = awake.pid
        assert replaced is not None
        assert replaced != first
        assert alive(replaced)
        assert (await client.get("/v2/health/ready")).status_code == 200
    assert not alive(replaced)  # the lifespan stopped the new one as well


async def test_every_http_request_and_grpc_inference_call_is_counted_in_and_out() -> None:
    calls: list[str] = []
    async with serving_grpc(keep_awake_ms=1) as (client, stub, served):
        awake = served.keep_awake
        assert isinstance(awake, KeepAwake)
        helper = awake.pid
        assert helper is not None
        assert alive(helper)

        def counted(name: str, method: Callable[..., None]) -> Callable[..., None]:
            def call(spins: bool = True) -> None:
                calls.append(f"{name}{'' if spins else ' (no spin)'}")
                method(spins)
            return call

        awake.began = counted("began", awake.began)  # type: ignore[method-assign]
        awake.ended = counted("ended", awake.ended)  # type: ignore[method-assign]
        pixels = sample_images(1)[0].tolist()
        assert (await client.post("/v1/models/fashion-cnn:predict", json={"instances": [pixels]})).status_code == 200
        assert (await client.get("/v2/models/nope")).status_code == 404  # errors end too
        assert awake.spins_until > 0  # the last HTTP request answered
        await stub.ModelInfer(grpc_image_request())
        # gRPC calls are counted, but never start the helper
        assert calls == ["began", "ended"] * 2 + ["began (no spin)", "ended (no spin)"]
        assert awake.in_flight == 0
    assert not alive(helper)  # the lifespan stopped it


async def test_a_helper_that_cannot_start_leaves_the_server_serving(monkeypatch: pytest.MonkeyPatch,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    def no_process(*args: object, **kwargs: object) -> None:
        raise OSError("Resource temporarily unavailable")

    monkeypatch.setattr(app.keep_awake.subprocess, "Popen", no_process)
    async with serving_grpc(keep_awake_ms=1) as (client, _, served):
        assert served.keep_awake is None
        assert (await client.get("/v2/health/ready")).status_code == 200
    assert "serving without the keep-awake helper: Resource temporarily unavailable" in caplog.text


async def test_off_starts_no_helper() -> None:
    async with serving_grpc(keep_awake_ms=0) as (client, _, served):
        assert served.keep_awake is None
        assert (await client.get("/v2/health/ready")).status_code == 200
