"""Deadlines: pending futures fail at their deadline; answered ones are left alone."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from app.deadlines import Deadlines


def watch(deadlines: Deadlines, future: Any, timeout_s: float) -> None:
    """Due `timeout_s` from now, as a request arriving now."""
    deadlines.watch(future, time.monotonic() + timeout_s, timeout_s)


class Expired(Exception):
    pass


def expire_with_timeout(future: asyncio.Future[Any], timeout_s: float) -> None:
    future.set_exception(Expired(timeout_s))


async def test_a_pending_future_fails_at_its_deadline_and_an_answered_one_does_not() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(expire_with_timeout)
    slow, fast = loop.create_future(), loop.create_future()
    started = loop.time()
    watch(deadlines, slow, 0.05)
    watch(deadlines, fast, 0.05)
    fast.set_result("answer")
    with pytest.raises(Expired) as raised:
        await slow
    assert raised.value.args == (0.05,)
    assert loop.time() - started >= 0.049
    assert fast.result() == "answer"


async def test_an_earlier_deadline_watched_later_still_expires_first() -> None:
    """A short timeout watched after a long one still expires first."""
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(expire_with_timeout)
    long, short = loop.create_future(), loop.create_future()
    watch(deadlines, long, 5.0)
    watch(deadlines, short, 0.02)
    await asyncio.wait([short], timeout=1.0)
    assert isinstance(short.exception(), Expired)
    assert not long.done()
    deadlines.close()


async def test_futures_expire_in_arrival_order_and_the_timer_follows_the_queue() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(expire_with_timeout)
    expired: list[int] = []
    futures = []
    for i in range(3):
        future = loop.create_future()
        future.add_done_callback(lambda _, i=i: expired.append(i))
        watch(deadlines, future, 0.05)
        futures.append(future)
        await asyncio.sleep(0.01)
    futures[1].cancel()  # a client that went away, before the first deadline
    await asyncio.wait(futures, timeout=1.0)
    assert expired == [1, 0, 2]
    assert isinstance(futures[0].exception(), Expired)
    assert isinstance(futures[2].exception(), Expired)
    assert futures[1].cancelled()


async def test_close_stops_the_timers() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(expire_with_timeout)
    future = loop.create_future()
    watch(deadlines, future, 0.01)
    deadlines.close()
    await asyncio.sleep(0.03)
    assert not future.done()


async def test_a_deadline_counts_from_arrival_not_from_when_it_is_watched() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(expire_with_timeout)
    future = loop.create_future()
    arrived = time.monotonic() - 0.2  # it arrived 200 ms ago: its 0.1 s are already spent
    deadlines.watch(future, arrived + 0.1, 0.1)
    await asyncio.wait([future], timeout=1.0)
    assert isinstance(future.exception(), Expired)
