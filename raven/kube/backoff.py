"""Retry and backoff settings for API calls and watch loops.

Rules kept: delays grow exponentially from `initial` to `maximum` with full jitter, so a fleet of
agents that lost the API server at the same instant does not come back in lock step; the clock and
the random source are parameters, so the sequence is testable.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import TypeVar

from raven.kube.errors import KubeError
from raven.settings import BackoffSettings  # defined once, in the settings root

T = TypeVar("T")


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
        delay = self.settings.delay(self.attempt, random.random)
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
