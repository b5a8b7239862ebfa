"""The thin runner of one `raven.publisher` schedule on a thread of its own.

The agent's periodic writes (heartbeat Lease, pool-gateway annotation, observed paths) each
run one; a slow or unreachable API server never delays a reconcile, and a long reconcile never
delays a heartbeat. Kept apart from `raven.agent` so the path thread (`raven.path_agent`) uses
it without importing the agent (an import cycle before).

Rules kept: the monotonic clock and the jitter draw are read here, the decisions are the pure
schedule's; an attempt that raises counts as a failure (logged), never ends the thread.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable

from raven import publisher

log = logging.getLogger("raven.agent")


def run_schedule(stop: threading.Event, wake: threading.Event, schedule: publisher.Schedule,
                 attempt: Callable[[], bool], active: Callable[[], bool] = lambda: True) -> None:
    """The runner of one `raven.publisher` schedule, on a thread of its own: a slow or
    unreachable API server never delays a reconcile, and a long reconcile never delays a
    heartbeat. `wake` says there is something new (or that `active` changed, or stop)."""
    state = publisher.PublishState()
    while not stop.is_set():
        now = time.monotonic()
        if wake.is_set():
            wake.clear()
            state = publisher.ask(state, now)
        go, deadline = publisher.poll(state, now, active())
        if go:
            try:
                ok = attempt()
            except Exception:  # never fatal: the thread would stop writing for good
                log.exception("%s failed", threading.current_thread().name)
                ok = False
            state = publisher.result(state, ok, time.monotonic(), schedule, random.random())
        else:
            wake.wait(None if deadline is None else max(0.0, deadline - now))
