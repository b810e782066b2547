"""The circuit breaker, on a fake clock."""

from __future__ import annotations

import pytest

from service.backends.breaker import BreakerOpen, BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_consecutive_failures_and_probes_after_the_pause() -> None:
    clock, seen = Clock(), []
    breaker = CircuitBreaker(3, 5.0, clock=clock, on_change=seen.append)
    for _ in range(2):
        breaker.before_call()
        breaker.record_failure()
    breaker.before_call()
    breaker.record_success()  # a success resets the count
    for _ in range(3):
        breaker.before_call()
        breaker.record_failure()
    assert breaker.state is BreakerState.open
    with pytest.raises(BreakerOpen):
        breaker.before_call()
    assert breaker.retry_after() == 5
    clock.now += 5.0
    breaker.before_call()  # the probe
    assert breaker.state is BreakerState.half_open
    with pytest.raises(BreakerOpen):
        breaker.before_call()  # only one probe at a time
    breaker.record_failure()  # the probe failed: open again, for another pause
    assert breaker.state is BreakerState.open
    with pytest.raises(BreakerOpen):
        breaker.before_call()
    clock.now += 5.0
    breaker.before_call()
    breaker.record_success()
    assert breaker.state is BreakerState.closed
    breaker.before_call()
    assert seen == [
        BreakerState.open,
        BreakerState.half_open,
        BreakerState.open,
        BreakerState.half_open,
        BreakerState.closed,
    ]


def test_a_released_probe_lets_another_through() -> None:
    clock = Clock()
    breaker = CircuitBreaker(1, 1.0, clock=clock)
    breaker.before_call()
    breaker.record_failure()
    clock.now += 1.0
    breaker.before_call()
    breaker.release_probe()  # the caller went away
    breaker.before_call()
    assert breaker.state is BreakerState.half_open
