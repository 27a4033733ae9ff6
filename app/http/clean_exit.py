"""How `python -m app`'s processes end on SIGTERM: exit status 0, with their exit hooks run.

uvicorn drains on SIGTERM, then puts back the handler that was in place before its own and
raises the signal again. Under Python's default a drained server would exit 143, and die
by the signal without its exit hooks: the log lines still with the log's writing thread
(app/observability/log_stream.py) were lost with it, a worker's last ones ("Application
shutdown complete" among them) every time. So the parent takes SIGTERM with
`exit_cleanly` before uvicorn starts, and every worker process does too (`WorkerConfig`).
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import NoReturn

import uvicorn


def exit_cleanly(sig: int, frame: FrameType | None) -> NoReturn:
    raise SystemExit(0)


class WorkerConfig(uvicorn.Config):
    """uvicorn's Config for worker processes: uvicorn calls configure_logging in each worker
    before its server puts its own SIGTERM handler in front, so `exit_cleanly` is the one
    it puts back. (Defined here, not in app/__main__.py: uvicorn hands the Config to each
    worker by pickling it, and a class of `python -m app`'s main module cannot be found
    there.)"""

    def configure_logging(self) -> None:
        super().configure_logging()
        signal.signal(signal.SIGTERM, exit_cleanly)
