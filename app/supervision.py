"""A served model's health from its batches: stalled batches, and a breaker that stops
sending requests to a model whose batches keep failing.

- A batch running longer than `inference_timeout_s` marks the model not ready until a
  batch completes again (the watchdog in app/repository.py calls `check_stalled`).
- After `failure_threshold` failed batches in a row the breaker opens: requests are
  answered 503 at once, with the reason, for `cooldown_s`; then requests go through again,
  and the next batch either closes the breaker or opens it for another cool-down.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from app.errors import ModelNotReady


@dataclass
class BatchHealth:
    name: str
    failure_threshold: int
    cooldown_s: float
    inference_timeout_s: float
    consecutive_failures: int = 0
    open_until: float = 0.0  # monotonic time; 0: closed
    stalled: bool = False
    last_failure: str = ""
    _running_since: dict[int, float] = field(default_factory=dict)

    def check(self) -> None:
        """Raise 503, with the reason, while the model should not be sent work."""
        problem = self.problem()
        if problem:
            raise ModelNotReady(f"model {self.name} is not ready: {problem}")

    def problem(self) -> str:
        """Why the model is not healthy; empty when it is."""
        if self.stalled:
            return f"a batch has run longer than the inference timeout ({self.inference_timeout_s:g} s)"
        if self.open_until and time.monotonic() < self.open_until:
            return (f"its last {self.consecutive_failures} batches failed (last: {self.last_failure}); "
                    f"it is tried again in {self.open_until - time.monotonic():.1f} s")
        return ""

    @property
    def healthy(self) -> bool:
        return not self.problem()

    def batch_started(self, batch_id: int) -> None:
        self._running_since[batch_id] = time.monotonic()

    def batch_ended(self, batch_id: int, ok: bool, error: str = "", counts: bool = True) -> None:
        """`counts`: False where the batch says nothing of the model's health (a request's
        input the model refused)."""
        self._running_since.pop(batch_id, None)
        if not counts:
            return
        if ok:
            self.consecutive_failures = 0
            self.open_until = 0.0
            self.stalled = False
            return
        self.consecutive_failures += 1
        self.last_failure = error
        if self.consecutive_failures >= self.failure_threshold:
            self.open_until = time.monotonic() + self.cooldown_s

    def check_stalled(self) -> bool:
        """Whether a batch has run past the inference timeout; marks the model so."""
        now = time.monotonic()
        if any(now - started > self.inference_timeout_s for started in self._running_since.values()):
            self.stalled = True
        return self.stalled
