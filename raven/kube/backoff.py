"""Retry and backoff settings for API calls and watch loops.

Rules kept: delays grow exponentially from `initial` to `maximum` with full jitter, so a fleet of
agents that lost the API server at the same instant does not come back in lock step; the clock and
the random source are parameters, so the sequence is testable.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from raven.kube.errors import KubeError

T = TypeVar("T")


@dataclass(frozen=True)
class BackoffSettings:
    initial: float = 0.2  # seconds before the first retry
    maximum: float = 10.0  # never wait longer than this between two attempts
    factor: float = 2.0
    jitter: float = 0.5  # fraction of the delay that is randomised (0 = none)

    def delay(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        """Delay before retry number `attempt` (0-based)."""
        base = min(self.maximum, self.initial * (self.factor ** max(0, attempt)))
        return base * (1.0 - self.jitter) + base * self.jitter * rng()


class Backoff:
    """Stateful helper for loops: `wait()` after a failure, `reset()` after a success."""

    def __init__(self, settings: BackoffSettings, stop: threading.Event | None = None) -> None:
        self.settings = settings
        self.attempt = 0
        self.stop = stop or threading.Event()

    def reset(self) -> None:
        self.attempt = 0

    def wait(self) -> bool:
        """Sleep the next delay; False when stop was set meanwhile."""
        delay = self.settings.delay(self.attempt)
        self.attempt += 1
        return not self.stop.wait(delay)


def retry(
    call: Callable[[], T],
    settings: BackoffSettings,
    attempts: int = 5,
    stop: threading.Event | None = None,
) -> T:
    """Run `call`, retrying retryable KubeErrors up to `attempts` times in all."""
    backoff = Backoff(settings, stop)
    while True:
        try:
            return call()
        except KubeError as exc:
            if not exc.retryable or backoff.attempt + 1 >= attempts or not backoff.wait():
                raise
