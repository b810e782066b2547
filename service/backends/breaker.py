"""A circuit breaker: fail fast while the upstream is down, probe it again after a pause.

closed -> (``failures`` consecutive failures) -> open -> (``reset_s`` later, one call is let
through as a probe) -> half_open -> success: closed | failure: open again. Pure; the clock is
injectable so tests can drive it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from enum import IntEnum


class BreakerState(IntEnum):
    """The value exported by guard_upstream_breaker_state."""

    closed = 0
    half_open = 1
    open = 2


class BreakerOpen(Exception):
    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"circuit breaker open; next probe in {retry_after_s:.1f} s")
        self.retry_after_s = retry_after_s


class CircuitBreaker:
    def __init__(
        self,
        failures: int,
        reset_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[BreakerState], None] | None = None,
    ) -> None:
        self.failures = failures
        self.reset_s = reset_s
        self._clock = clock
        self._on_change = on_change
        self._state = BreakerState.closed
        self._consecutive = 0
        self._opened_at = 0.0
        self._probe_in_flight = False

    @property
    def state(self) -> BreakerState:
        return self._state

    def _set(self, state: BreakerState) -> None:
        if state is not self._state:
            self._state = state
            if self._on_change is not None:
                self._on_change(state)

    def before_call(self) -> None:
        """Raise BreakerOpen when the call must not go out; else let it (maybe as the probe)."""
        if self._state is BreakerState.closed:
            return
        waited = self._clock() - self._opened_at
        if self._state is BreakerState.open and waited >= self.reset_s:
            self._set(BreakerState.half_open)
        if self._state is BreakerState.half_open and not self._probe_in_flight:
            self._probe_in_flight = True
            return
        raise BreakerOpen(max(0.0, self.reset_s - waited) if waited < self.reset_s else 0.0)

    def retry_after(self) -> int:
        """Whole seconds until the next probe may go out (at least 1)."""
        remaining = self.reset_s - (self._clock() - self._opened_at)
        return max(1, math.ceil(remaining))

    def record_success(self) -> None:
        self._consecutive = 0
        self._probe_in_flight = False
        self._set(BreakerState.closed)

    def record_failure(self) -> None:
        self._consecutive += 1
        was_probe = self._probe_in_flight
        self._probe_in_flight = False
        if (
            was_probe
            or self._state is BreakerState.half_open
            or (self._consecutive >= self.failures)
        ):
            self._opened_at = self._clock()
            self._set(BreakerState.open)

    def release_probe(self) -> None:
        """A probe that ended without telling anything (a cancelled caller): allow another."""
        self._probe_in_flight = False
