"""Shutdown that a load balancer can see: on SIGTERM, readiness turns 503 at once while
the listener keeps accepting for `drain_delay_s`; only then does uvicorn's own handler
close the listener and let accepted requests finish within the grace period. The gRPC
server (`closing`) stops taking calls at that same moment.

Without the delay the listener closes as the signal arrives, and a load balancer that
polls readiness sees refused connections, not a 503, for the requests it still sends.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

logger = logging.getLogger(__name__)


def delay_sigterm(mark_draining: Callable[[], None], delay_s: float,
                  closing: Callable[[], None] | None = None) -> None:
    """Put a drain in front of the SIGTERM handler in place (uvicorn's, installed by the
    time the app's lifespan starts); `closing` runs on the loop as that handler is called.
    A second SIGTERM goes straight through."""
    if (delay_s <= 0 and closing is None) or threading.current_thread() is not threading.main_thread():
        return  # nothing to put in front, or a server run in a thread (tests): signals are not ours
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous):
        return
    loop = asyncio.get_running_loop()
    draining = False

    def forward(sig: int) -> None:
        if closing is not None:
            closing()
        previous(sig, None)

    def on_sigterm(sig: int, frame: FrameType | None) -> None:
        nonlocal draining
        if draining:
            previous(sig, frame)
            return
        draining = True
        mark_draining()
        if delay_s > 0:
            logger.info("SIGTERM: readiness answers 503; the listener closes in %g s", delay_s)
        loop.call_soon_threadsafe(loop.call_later, delay_s, forward, sig)

    signal.signal(signal.SIGTERM, on_sigterm)
