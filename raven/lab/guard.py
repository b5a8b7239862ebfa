"""Keep `raven lab up` / `demo` clean when their output pipe closes or a signal stops them.

Rules kept:
- A closed output pipe (`raven lab up ... 2>&1 | head -2`) aborts the command once with
  OutputClosed (exit 141, as if killed by SIGPIPE); from then on every write is silently dropped
  and fds 1 and 2 point to /dev/null, so the error path tears the lab down instead of dying on
  its next progress line, and the interpreter's last flush cannot fail either.
- SIGINT, SIGTERM and SIGHUP raise Interrupted (exit 128 + signal) in the main thread, once;
  later signals are ignored, so the teardown that follows runs to the end.
- `deferred()` marks a few statements a signal must not split (start a process, then record its
  pid): a signal arriving inside is raised when the block ends.
Process-wide by nature (signal handlers and fds are), so the state lives in this module.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import sys
from collections.abc import Iterator
from types import FrameType
from typing import TextIO

from raven.errors import CommandError

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class OutputClosed(CommandError):
    """The reader of our output went away."""

    def __init__(self) -> None:
        super().__init__("output pipe closed; stopped", exit_code=128 + signal.SIGPIPE)


class Interrupted(BaseException):
    """A stop signal arrived (like KeyboardInterrupt, which SIGINT would otherwise raise)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _silence_stdio() -> None:
    """Point fds 1 and 2 at /dev/null: nothing we still write can fail or reach a reader."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in (1, 2):
            with contextlib.suppress(OSError):
                os.dup2(devnull, fd)
    finally:
        os.close(devnull)


class GuardedStream(io.TextIOBase):
    """A text stream that turns the first broken pipe into OutputClosed and then goes quiet."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self._stream = stream
        self.broken = False

    def _broke(self) -> None:
        first = not self.broken
        self.broken = True
        _silence_stdio()
        if first:
            raise OutputClosed()

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                self._stream.write(text)
            except BrokenPipeError:
                self._broke()
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._broke()

    def writable(self) -> bool:
        return True


_stop = {"signum": 0, "raised": False, "deferring": 0}


def _handler(signum: int, _frame: FrameType | None) -> None:
    if _stop["raised"]:
        return  # tearing down already: let it finish
    _stop["signum"] = signum
    if _stop["deferring"]:
        return
    _stop["raised"] = True
    raise Interrupted(signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """While inside, SIGINT/SIGTERM/SIGHUP raise Interrupted once (see the module rules)."""
    previous = {s: signal.signal(s, _handler) for s in SIGNALS}
    _stop.update(signum=0, raised=False, deferring=0)
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A stop signal arriving inside the block is raised when the block ends."""
    _stop["deferring"] += 1
    try:
        yield
    finally:
        _stop["deferring"] -= 1
        if not _stop["deferring"] and _stop["signum"] and not _stop["raised"] \
                and signal.getsignal(signal.SIGTERM) is _handler:
            _stop["raised"] = True
            raise Interrupted(int(_stop["signum"]))


def guarded_stdio() -> tuple[GuardedStream, GuardedStream]:
    """(stdout, stderr) wrapped so a closed pipe aborts once (see GuardedStream)."""
    return GuardedStream(sys.stdout), GuardedStream(sys.stderr)
