"""Triton's trace extension: the traces' settings read and changed while the server runs
(GET and POST /v2/trace/setting, gRPC's TraceSetting; tritonclient's `get_trace_settings`
and `update_trace_settings`), in every worker (app/observability/shared_settings.py).

Triton's settings, as this server's traces (app/observability/tracing.py) can follow them:
`trace_level` ["OFF"] or ["TIMESTAMPS"] turns tracing off or on (the phases' moments are what
a trace holds; "TENSORS" is refused: tensors are never written into traces), `trace_rate` N
traces one request in N (the `trace_sample` setting's 1/N; a caller's traceparent flag still
decides for its own request). `trace_count` (-1: no end), `log_frequency`, `trace_file` ("":
traces go to the console and to OTLP, never a file) and `trace_mode` ("opentelemetry") are
answered as they are, and asking to change them is a 400, never ignored. Settings per model
are not kept: a model's settings are the server's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from app.errors import InvalidInput
from app.observability.shared_settings import SharedSettings
from app.processes import TRACE_SETTINGS, TRACE_SETTINGS_LOCK

_FIXED = {"trace_count": "-1", "log_frequency": "0", "trace_file": "", "trace_mode": "opentelemetry"}
_WHY_FIXED = {
    "trace_count": "traces have no count that runs out here (-1)",
    "log_frequency": "traces are never written to a file",
    "trace_file": "traces go to the console's slow requests and, where an OTLP endpoint is set, to it; never a file",
    "trace_mode": "traces are OpenTelemetry's (W3C traceparent, OTLP)",
}


@dataclass(frozen=True)
class TraceSettings:
    on: bool = False
    sample: float = 1.0
    """The fraction of requests traced (`trace_sample`); Triton's trace_rate is its inverse."""
    at_start: tuple[bool, float] = field(default=(False, 1.0), compare=False, repr=False)
    """(on, sample) as the server started: what a setting cleared (None) goes back to."""

    @classmethod
    def started(cls, on: bool, sample: float) -> TraceSettings:
        return cls(on=on, sample=sample, at_start=(on, sample))

    def as_triton(self) -> dict[str, Any]:
        """Every setting, by Triton's names, as its trace extension answers them (a fraction
        that is no whole number's inverse, as --trace-sample may give, to the nearest rate;
        0, which traces only the requests their callers flag, as 0)."""
        rate = max(1, round(1 / self.sample)) if self.sample > 0 else 0
        return {"trace_level": ["TIMESTAMPS" if self.on else "OFF"], "trace_rate": str(rate), **_FIXED}

    def changed(self, asked: Mapping[str, Any]) -> TraceSettings:
        """These settings with the ones `asked` names changed (Triton's names; a value is a
        string or a list of strings, as tritonclient sends them; None or an empty list: back
        to the server's start value); InvalidInput naming the first that cannot be."""
        updates: dict[str, Any] = {}
        for name, value in asked.items():
            if value is None or value == []:
                if name == "trace_level":
                    updates["on"] = self.at_start[0]
                elif name == "trace_rate":
                    updates["sample"] = self.at_start[1]
                elif name not in _FIXED:
                    raise InvalidInput(f"unknown trace setting {name!r}; the settings are {sorted(self.as_triton())}")
                continue
            values = value if isinstance(value, list) else [value]
            if not values or not all(isinstance(v, str) for v in values):
                raise InvalidInput(f"trace setting {name} takes a string or a list of strings, got {value!r}")
            if name == "trace_level":
                levels = set(values)
                if "TENSORS" in levels:
                    raise InvalidInput("trace_level TENSORS is not served: traces hold the phases' moments, never "
                                       "tensors; use TIMESTAMPS or OFF")
                if not levels <= {"OFF", "TIMESTAMPS"} or levels == {"OFF", "TIMESTAMPS"}:
                    raise InvalidInput(f"trace_level is [\"OFF\"] or [\"TIMESTAMPS\"], got {value!r}")
                updates["on"] = levels == {"TIMESTAMPS"}
            elif name == "trace_rate":
                rate = values[0]
                if len(values) != 1 or not (rate.isascii() and rate.isdigit()) or int(rate) < 1:
                    raise InvalidInput(f"trace_rate is a whole number of requests, 1 or more (one traced in so "
                                       f"many), got {value!r}")
                if rate != self.as_triton()["trace_rate"]:  # as shown: a --trace-sample of 0.3 stays 0.3
                    updates["sample"] = 1 / int(rate)
            elif name in _FIXED:
                if values != [_FIXED[name]]:
                    raise InvalidInput(f"{name} is {_FIXED[name]!r} and cannot change: {_WHY_FIXED[name]}; got {value!r}")
            else:
                raise InvalidInput(f"unknown trace setting {name!r}; the settings are {sorted(self.as_triton())}")
        return replace(self, **updates)


class SharedTraceSettings(SharedSettings[TraceSettings]):
    """This process's trace settings, and with a control folder every worker's; `apply`
    turns the process's tracing on, off or to another rate (app/main.py)."""

    def __init__(self, initial: TraceSettings, apply: Any, folder: Path | None = None) -> None:
        super().__init__("trace settings", initial, apply, folder / TRACE_SETTINGS if folder is not None else None,
                         folder / TRACE_SETTINGS_LOCK if folder is not None else None)

    def change_for(self, asked: Mapping[str, Any], model: bool) -> TraceSettings:
        """A change a client asks for, the server's or (`model`) one model's: a model's
        settings are the server's, so one that clears them changes nothing and one that sets
        any is InvalidInput. What every transport's call answers: the settings after it."""
        if model:
            per_model_change(asked)
            return self.current
        return self.change(asked)


def per_model_change(asked: Mapping[str, Any]) -> None:
    """A change of one model's settings: nothing to do where it clears them (they are the
    server's already), else InvalidInput."""
    if any(value is not None and value != [] for value in asked.values()):
        raise InvalidInput("trace settings are the server's for every model, not kept per model: change them at "
                           "/v2/trace/setting (or without a model name)")
