"""Each model version's state (Triton's: READY, UNAVAILABLE, LOADING, UNLOADING) and why,
as the index lists it, the model_state metric shows it and the log tells each change."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum

from app.observability.metrics import Metrics

# The repository's name, as before its split: log filters and collectors key on it.
logger = logging.getLogger("app.repository")


class State(StrEnum):
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"
    LOADING = "LOADING"
    UNLOADING = "UNLOADING"


@dataclass(frozen=True)
class VersionStatus:
    state: State
    reason: str = ""


class VersionStates:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._status: dict[tuple[str, int], VersionStatus] = {}

    def set(self, name: str, version: int, state: State, reason: str = "", level: int = logging.INFO) -> None:
        before = self._status.get((name, version))
        if before is not None and before.state is state and before.reason == reason:
            return
        self._status[(name, version)] = VersionStatus(state, reason)
        self.metrics.set_state(name, str(version), str(state))
        logger.log(level, "model %s version %s: %s%s", name, version, state, f" ({reason})" if reason else "",
                   extra={"fields": {"event": "model_state", "model": name, "version": str(version),
                                     "state": str(state), "reason": reason}})

    def get(self, name: str, version: int) -> VersionStatus | None:
        return self._status.get((name, version))

    def of(self, name: str) -> dict[int, VersionStatus]:
        """Every version of `name` ever found or loaded, by number."""
        return {v: s for (n, v), s in sorted(self._status.items()) if n == name}

    def known(self, name: str) -> bool:
        return any(n == name for n, _ in self._status)

    def all(self) -> dict[tuple[str, int], VersionStatus]:
        return dict(self._status)
