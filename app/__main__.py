"""`python -m app [--flags]`: run the service with uvicorn. Flags mirror ORTSERVE_* variables."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from app.main import create_app
from app.observability.log import configure_logging
from app.settings import Settings


def main(argv: list[str] | None = None) -> None:
    settings = Settings(_cli_parse_args=sys.argv[1:] if argv is None else argv,  # type: ignore[call-arg]
                        _cli_kebab_case=True, _cli_prog_name="python -m app")
    log_config = configure_logging(settings.log_format, settings.log_level)
    common: dict[str, Any] = {
        "host": settings.host, "port": settings.port, "log_config": log_config,
        "access_log": settings.access_log, "timeout_graceful_shutdown": int(settings.shutdown_grace_s),
        "loop": "uvloop", "http": "httptools",
        # Beyond this many connections and requests at once, uvicorn answers 503 itself.
        "limit_concurrency": settings.max_connections,
    }
    # uvicorn drains on SIGTERM, then raises the signal again under the handler that was in
    # place before it: with Python's default, a drained server would still exit 143.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    if settings.workers == 1:
        uvicorn.run(create_app(settings), **common)
        return
    # Worker processes import app.main:app and build their Settings from the environment,
    # so hand the resolved settings (flags included) on through it.
    for name, value in settings.model_dump().items():
        if value is not None:
            os.environ[f"ORTSERVE_{name.upper()}"] = _as_env(value)
    uvicorn.run("app.main:app", workers=settings.workers, **common)


def _exit_cleanly(sig: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def _as_env(value: object) -> str:
    if isinstance(value, str | Path | int | float | bool):
        return str(value)
    return json.dumps(value)  # lists: pydantic-settings parses complex values as JSON


if __name__ == "__main__":
    main()
