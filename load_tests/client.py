"""An asyncio HTTP load client (aiohttp, one keep-alive connection per worker).

Closed loop: N workers each send the next request when the last one answered.
Open loop: requests start on a fixed schedule whatever the server's speed, so queueing
shows up in the latencies instead of slowing the offered load (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp

from load_tests.stats import NOT_SENT, Sample

JSON = {"Content-Type": "application/json"}
"""The header of every JSON payload."""


@dataclass(frozen=True)
class Payload:
    path: str
    body: bytes
    headers: dict[str, str]
    items: int = 1


async def _send(session: aiohttp.ClientSession, url: str, payload: Payload) -> Sample:
    start = time.perf_counter()
    try:
        async with session.post(url, data=payload.body, headers=payload.headers) as response:
            await response.read()
            status = response.status
    except (TimeoutError, aiohttp.ClientError):
        status = 0
    return Sample(time.perf_counter() - start, status)


def _session(concurrency: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30))


async def closed_loop(base_url: str, payload: Payload, concurrency: int, duration_s: float,
                      warmup_s: float = 1.0) -> tuple[list[Sample], float]:
    """(samples after warm-up, measured seconds)."""
    url = base_url + payload.path
    samples: list[Sample] = []
    async with _session(concurrency) as session:
        start = time.perf_counter()
        measure_from = start + warmup_s
        stop_at = measure_from + duration_s

        async def worker() -> None:
            while time.perf_counter() < stop_at:
                began = time.perf_counter()
                sample = await _send(session, url, payload)
                if began >= measure_from:
                    samples.append(sample)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return samples, duration_s


async def open_loop(base_url: str, payload: Payload, rate_per_s: float, duration_s: float,
                    max_outstanding: int = 1024) -> tuple[list[Sample], float]:
    """Requests at a fixed rate for `duration_s`; those over `max_outstanding` count as errors."""
    url = base_url + payload.path
    samples: list[Sample] = []
    async with _session(max_outstanding) as session:
        tasks: set[asyncio.Task[Sample]] = set()
        start = time.perf_counter()
        total = int(rate_per_s * duration_s)
        for i in range(total):
            delay = start + i / rate_per_s - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(tasks) >= max_outstanding:
                samples.append(Sample(0.0, NOT_SENT))
                continue
            task = asyncio.create_task(_send(session, url, payload))
            tasks.add(task)
            task.add_done_callback(lambda t: (tasks.discard(t), samples.append(t.result())))
        await asyncio.gather(*list(tasks))
    return samples, duration_s
