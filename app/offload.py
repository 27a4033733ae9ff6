"""Request work too heavy for the event loop (decoding images, parsing large bodies), run
in a small pool of threads.

The event loop serves every request and health check; a 16 MB JSON body or a
few-megapixel PNG would hold it for tens of milliseconds. The pool's size bounds how many
requests decode at once; the rest wait in its queue, off the loop. Pillow, numpy and
orjson do most of this work in C, much of it without the GIL.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from app.tuning import name_os_thread

T = TypeVar("T")

HEAVY_BODY_BYTES = 256 * 1024
"""Bodies larger than this are parsed and decoded off the event loop."""


class Offload:
    def __init__(self, threads: int) -> None:
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="decode", initializer=name_os_thread)

    async def run(self, work: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, work, *args)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
