"""Triton's logging extension: the log's settings read and changed while the server runs
(GET and POST /v2/logging, gRPC's LogSettings; tritonclient's `get_log_settings` and
`update_log_settings`), in every worker.

Triton's settings are a switch per severity (`log_info`, `log_warnings`, `log_errors`) and a
verbose level; Python's logging has a threshold per logger. The root logger's threshold (and
uvicorn's loggers') is the least severe switched on, and a filter on the one handler
(app/observability/log.py) drops the severities switched off above it. A verbose level
above 0 is DEBUG: this server has one verbose level. `log_file` and `log_format` stay what
the server started with (lines go to stderr, a container's log, in `--log-format`); asking
to change either is a 400, never ignored. The access log has its own switch
(`--access-log`) and is not among these.

With several workers the settings are written to the control folder (`LOG_SETTINGS`) and
every worker applies them (app/observability/shared_settings.py).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from app.errors import InvalidInput
from app.observability.shared_settings import SharedSettings
from app.processes import LOG_SETTINGS, LOG_SETTINGS_LOCK

_SWITCHES = {"log_info": "info", "log_warnings": "warnings", "log_errors": "errors"}
_UINT32_MAX = 2**32 - 1
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


@dataclass(frozen=True)
class LogSettings:
    info: bool = True
    warnings: bool = True
    errors: bool = True
    verbose_level: int = 0
    log_format: str = "text"

    @classmethod
    def at_level(cls, level: str, log_format: str) -> LogSettings:
        """The settings of a server started with `--log-level level`."""
        return cls(info=level in ("debug", "info"), warnings=level != "error", errors=True,
                   verbose_level=1 if level == "debug" else 0, log_format=log_format)

    def as_triton(self) -> dict[str, str | bool | int]:
        """Every setting, by Triton's names, as its GET /v2/logging answers them."""
        return {"log_file": "", "log_info": self.info, "log_warnings": self.warnings, "log_errors": self.errors,
                "log_verbose_level": self.verbose_level, "log_format": self.log_format}

    def changed(self, asked: Mapping[str, object]) -> LogSettings:
        """These settings with the ones `asked` names changed (Triton's names and types);
        InvalidInput naming the first that cannot be, and nothing changed then."""
        updates: dict[str, object] = {}
        for name, value in asked.items():
            if name in _SWITCHES:
                if not isinstance(value, bool):
                    raise InvalidInput(f"{name} must be true or false, got {value!r}")
                updates[_SWITCHES[name]] = value
            elif name == "log_verbose_level":
                if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _UINT32_MAX:
                    raise InvalidInput(f"log_verbose_level must be a whole number from 0 (above 0: debug lines), "
                                       f"got {value!r}")
                updates["verbose_level"] = value
            elif name == "log_file":
                if value != "":
                    raise InvalidInput("log_file cannot be set: the server writes its log to stderr (a container's "
                                       "log; redirect it to keep a file)")
            elif name == "log_format":
                if value != self.log_format:
                    raise InvalidInput(f"log_format is {self.log_format!r}, chosen at start (--log-format text or "
                                       f"json), and does not change while the server runs; got {value!r}")
            else:
                raise InvalidInput(f"unknown log setting {name!r}; the settings are {sorted(self.as_triton())}")
        return replace(self, **updates)  # type: ignore[arg-type]  # names and types checked above

    def threshold(self) -> int:
        """The least severe level switched on (above CRITICAL where none is)."""
        on = [level for level, switched in ((logging.DEBUG, self.verbose_level > 0), (logging.INFO, self.info),
                                            (logging.WARNING, self.warnings), (logging.ERROR, self.errors))
              if switched]
        return min(on, default=logging.CRITICAL + 10)

    def allows(self, level: int) -> bool:
        """Whether a record of `level` is written (CRITICAL goes with the errors)."""
        if level < logging.INFO:
            return self.verbose_level > 0
        if level < logging.WARNING:
            return self.info
        if level < logging.ERROR:
            return self.warnings
        return self.errors


class SeveritySwitches(logging.Filter):
    """On the log's handler: drops the severities switched off above the threshold (Triton's
    switches are per severity: warnings off with info on is a setting)."""

    def __init__(self) -> None:
        super().__init__()
        self.settings = LogSettings()

    def filter(self, record: logging.LogRecord) -> bool:
        return self.settings.allows(record.levelno)


SWITCHES = SeveritySwitches()
"""The one filter, on the handler configure_logging makes (app/observability/log.py)."""


def apply(settings: LogSettings) -> None:
    """Into logging: the thresholds of the root logger and uvicorn's, and the handler's switches."""
    SWITCHES.settings = settings
    threshold = settings.threshold()
    logging.getLogger().setLevel(threshold)
    for name in UVICORN_LOGGERS:
        logging.getLogger(name).setLevel(threshold)


class SharedLogSettings(SharedSettings[LogSettings]):
    """This process's log settings, and with a control folder every worker's
    (app/observability/shared_settings.py)."""

    def __init__(self, initial: LogSettings, folder: Path | None = None) -> None:
        super().__init__("log settings", initial, apply, folder / LOG_SETTINGS if folder is not None else None,
                         folder / LOG_SETTINGS_LOCK if folder is not None else None)
