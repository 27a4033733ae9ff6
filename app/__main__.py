"""`python -m app [--flags]`: run the service with uvicorn. Flags mirror ORTSERVE_* variables."""

from __future__ import annotations

import sys

import uvicorn

from app.log import configure_logging
from app.settings import Settings


def main(argv: list[str] | None = None) -> None:
    settings = Settings(_cli_parse_args=sys.argv[1:] if argv is None else argv,  # type: ignore[call-arg]
                        _cli_kebab_case=True, _cli_prog_name="python -m app")
    log_config = configure_logging(settings.log_format, settings.log_level)
    common = {"host": settings.host, "port": settings.port, "log_config": log_config,
              "access_log": settings.access_log, "timeout_graceful_shutdown": int(settings.shutdown_grace_s),
              "loop": "uvloop", "http": "httptools"}
    if settings.workers > 1:
        # Workers are separate processes: each builds its own Settings from the environment,
        # so pass the resolved values on through it.
        import os
        for name, value in settings.model_dump(exclude_unset=False).items():
            if value is not None:
                os.environ[f"ORTSERVE_{name.upper()}"] = value if isinstance(value, str) else _env(value)
        uvicorn.run("app.main:app", workers=settings.workers, **common)  # type: ignore[arg-type]
    else:
        from app.main import create_app
        uvicorn.run(create_app(settings), **common)  # type: ignore[arg-type]


def _env(value: object) -> str:
    import json
    from pathlib import Path
    return str(value) if isinstance(value, Path | int | float | bool) else json.dumps(value)


if __name__ == "__main__":
    main()
