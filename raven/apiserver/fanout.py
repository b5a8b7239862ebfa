"""Watch fan-out: one thread writes every watch stream, with non-blocking sockets.

Why: with a thread per watch, every write wakes every watcher thread, and 200 threads fighting
for the GIL cost far more than the writes themselves. Here the request thread sends the response
headers, hands its socket to the fan-out thread and sleeps until the watch ends; the fan-out
thread formats each event once per (type, version) and appends it to each watcher's buffer.

Rules kept:
- Ordering: subscriptions and events enter one queue under the store lock, so a watcher sees
  exactly the events after its starting resourceVersion, in order, after its backlog.
- A watcher that does not read (buffer above the limit) is disconnected; it re-watches or
  re-lists, as with kube-apiserver.
- The stream ends with the terminating chunk at timeoutSeconds, at server stop, or when the client
  goes away; the request thread then resumes (keep-alive) or closes the connection.
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import logging
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("raven.apiserver")

TERMINATOR = b"0\r\n\r\n"


@dataclass(eq=False)
class Subscription:
    """One watch stream, owned by the fan-out thread once added."""

    key: tuple[str, str]
    namespace: str | None
    sock: socket.socket
    # event -> watch line(s) (None when the event is filtered out); rv -> bookmark line
    format_event: Callable[[Any], bytes | None]
    format_bookmark: Callable[[int, bool], bytes]
    deadline: float
    bookmark_interval: float | None  # None: the client did not ask for bookmarks
    initial_end_bookmark: bool = False
    out: bytearray = field(default_factory=bytearray)
    pending: list[bytes] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    clean: bool = False  # ended with the terminating chunk fully sent
    ended: bool = False
    next_bookmark: float = 0.0
    want_write: bool = False


class WatchFanout:
    def __init__(self, backlog_limit_bytes: int = 64 << 20) -> None:
        self.backlog_limit_bytes = backlog_limit_bytes
        self._queue: collections.deque[tuple[str, Any, Any]] = collections.deque()
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._subs: dict[tuple[str, str], set[Subscription]] = {}
        self._deadlines: list[tuple[float, int, Subscription]] = []
        self._counter = 0
        self._last_rv = 0
        self._running = True
        self._wake_pending = False
        self._thread = threading.Thread(target=self._run, name="raven-apiserver-watch",
                                        daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ producer side

    def add(self, sub: Subscription, backlog: list[Any], current_rv: int) -> None:
        """Called under the store lock, so that events after `current_rv` follow in order."""
        self._queue.append(("add", sub, (backlog, current_rv)))
        self._wake()

    def publish(self, event: Any) -> None:
        """Called under the store lock for every write."""
        self._queue.append(("event", event, None))
        self._wake()

    def stop(self) -> None:
        self._queue.append(("stop", None, None))
        self._wake()
        self._thread.join(timeout=10)

    def count(self) -> int:
        return sum(len(s) for s in self._subs.values())

    def _wake(self) -> None:
        if self._wake_pending:
            return
        self._wake_pending = True
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"x")

    # ------------------------------------------------------------------ fan-out thread

    def _run(self) -> None:
        try:
            while self._running:
                timeout = 1.0
                if self._deadlines:
                    timeout = max(0.0, min(timeout, self._deadlines[0][0] - time.monotonic()))
                for key, mask in self._selector.select(timeout):
                    sub = key.data
                    if sub is None:
                        self._drain_wakeups()
                        continue
                    if mask & selectors.EVENT_READ and self._client_gone(sub):
                        self._end(sub, gone=True)
                        continue
                    if mask & selectors.EVENT_WRITE:
                        self._send(sub)
                self._process_queue()
                self._expire()
        except Exception:  # never leave request threads waiting forever
            log.exception("watch fan-out failed; ending every watch")
        finally:
            for subs in list(self._subs.values()):
                for sub in list(subs):
                    self._end(sub, gone=False)
            self._selector.close()
            self._wake_r.close()
            self._wake_w.close()

    def _drain_wakeups(self) -> None:
        # Drain first, then clear the flag: a producer that saw the flag still set has its item
        # in the queue already, and the queue is processed after this.
        with contextlib.suppress(BlockingIOError, OSError):
            while self._wake_r.recv(4096):
                pass
        self._wake_pending = False

    def _process_queue(self) -> None:
        touched: set[Subscription] = set()
        while self._queue:
            kind, item, extra = self._queue.popleft()
            if kind == "event":
                self._last_rv = item.rv
                for sub in self._subs.get(item.key, ()):
                    if sub.namespace is not None and sub.namespace != item.namespace:
                        continue
                    line = sub.format_event(item)
                    if line:
                        sub.pending.append(line)
                        touched.add(sub)
            elif kind == "add":
                backlog, current_rv = extra
                self._last_rv = max(self._last_rv, current_rv)
                self._start(item, backlog, current_rv)
                touched.add(item)
            elif kind == "stop":
                self._running = False
                for subs in list(self._subs.values()):
                    for sub in list(subs):
                        self._end(sub, gone=False)
                return
        for sub in touched:
            if not sub.ended:
                self._frame(sub)
                self._send(sub)

    def _start(self, sub: Subscription, backlog: list[Any], current_rv: int) -> None:
        try:
            sub.sock.setblocking(False)
            self._selector.register(sub.sock, selectors.EVENT_READ, sub)
        except (OSError, ValueError):
            sub.done.set()
            return
        self._subs.setdefault(sub.key, set()).add(sub)
        for event in backlog:
            line = sub.format_event(event)
            if line:
                sub.pending.append(line)
        if sub.initial_end_bookmark:
            sub.pending.append(sub.format_bookmark(current_rv, True))
        self._counter += 1
        heapq.heappush(self._deadlines, (sub.deadline, self._counter, sub))
        if sub.bookmark_interval is not None:
            sub.next_bookmark = time.monotonic() + sub.bookmark_interval
            self._counter += 1
            heapq.heappush(self._deadlines, (sub.next_bookmark, self._counter, sub))

    def _expire(self) -> None:
        now = time.monotonic()
        while self._deadlines and self._deadlines[0][0] <= now:
            when, _, sub = heapq.heappop(self._deadlines)
            if sub.ended:
                continue
            if when >= sub.deadline:
                self._end(sub, gone=False)
            elif sub.bookmark_interval is not None and when >= sub.next_bookmark:
                # Every event up to _last_rv is already in this watcher's buffer.
                sub.pending.append(sub.format_bookmark(self._last_rv, False))
                self._frame(sub)
                self._send(sub)
                sub.next_bookmark = now + sub.bookmark_interval
                self._counter += 1
                heapq.heappush(self._deadlines, (sub.next_bookmark, self._counter, sub))

    @staticmethod
    def _frame(sub: Subscription) -> None:
        if not sub.pending:
            return
        data = b"".join(sub.pending)
        sub.pending.clear()
        sub.out += f"{len(data):x}\r\n".encode() + data + b"\r\n"

    def _send(self, sub: Subscription) -> None:
        if sub.ended:
            return
        while sub.out:
            try:
                sent = sub.sock.send(sub.out)
            except (ssl.SSLWantWriteError, BlockingIOError, ssl.SSLWantReadError):
                break
            except (OSError, ValueError):
                self._end(sub, gone=True)
                return
            del sub.out[:sent]
        if len(sub.out) > self.backlog_limit_bytes:
            log.warning("disconnecting a watch of %s that is %d bytes behind", sub.key,
                        len(sub.out))
            self._end(sub, gone=True)
            return
        want_write = bool(sub.out)
        if want_write != sub.want_write:
            sub.want_write = want_write
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if want_write else 0)
            try:
                self._selector.modify(sub.sock, events, sub)
            except (OSError, ValueError, KeyError):
                self._end(sub, gone=True)

    @staticmethod
    def _client_gone(sub: Subscription) -> bool:
        try:
            data = sub.sock.recv(4096)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return False
        except (OSError, ValueError):
            return True
        return not data

    def _end(self, sub: Subscription, gone: bool) -> None:
        if sub.ended:
            return
        if not gone:
            self._frame(sub)
            sub.out += TERMINATOR
            self._send(sub)
        sub.ended = True
        sub.clean = not gone and not sub.out
        self._subs.get(sub.key, set()).discard(sub)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.unregister(sub.sock)
        sub.done.set()
