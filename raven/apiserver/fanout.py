"""Watch fan-out: one thread writes every watch stream, with non-blocking sockets.

Why: with a thread per watch, every write wakes every watcher thread, and 200 threads fighting
for the GIL cost far more than the writes themselves. Here the request thread sends the response
headers, hands its socket to the fan-out thread and sleeps until the watch ends; the fan-out
thread formats each event once per (type, version) and queues it for each watcher.

Rules kept:
- Ordering: subscriptions and events enter one queue under the store lock, so a watcher sees
  exactly the events after its starting resourceVersion, in order, after its backlog.
- Watchers are isolated: an event one watcher cannot format (a bad object for its Table view,
  a conversion bug) ends that watch alone, with an ERROR event naming the object; the others go
  on. An unexpected error in the loop itself is logged and the loop restarts; `health()` says
  whether the loop is turning, for /healthz and /readyz.
- Memory is bounded per watcher: the initial list is a list of references to stored objects,
  encoded a little at a time as the socket drains (at most about `CHUNK_BYTES` unsent bytes of
  it); live events wait in a queue of at most `backlog_limit_bytes`. A watcher that does not read
  fast enough gets an ERROR event (410 Expired: list and watch again) and its watch is closed.
- A watch that ends frees everything it held at once: nothing of it stays until its deadline.
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from raven.apiserver.status import ApiError, watch_error_line
from raven.apiserver.store import StoredObject, WatchEvent

log = logging.getLogger("raven.apiserver")

TERMINATOR = b"0\r\n\r\n"
# Unsent bytes a watcher may hold before more of its initial list is encoded.
CHUNK_BYTES = 256 << 10
# How long a watch ended with an ERROR may take to deliver it before its socket is dropped.
ERROR_DRAIN_SECONDS = 10.0
# The loop wakes at least this often; health() calls it stuck after STALL_SECONDS without a turn.
TICK_SECONDS = 1.0
STALL_SECONDS = 15.0


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
    # Initial list (StoredObject) or replayed history (WatchEvent), sent before `pending`.
    backlog: Sequence[Any] = ()
    backlog_next: int = 0
    pending: collections.deque[bytes] = field(default_factory=collections.deque)
    pending_bytes: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    clean: bool = False  # ended with the terminating chunk fully sent
    ended: bool = False
    closing: bool = False  # an ERROR and the terminating chunk are queued; no more events
    next_bookmark: float = 0.0
    want_write: bool = False
    ident: int = 0

    def release(self) -> None:
        """Drop every buffer: an ended watch holds nothing."""
        self.out = bytearray()
        self.pending.clear()
        self.pending_bytes = 0
        self.backlog = ()
        self.backlog_next = 0


@dataclass(frozen=True)
class FanoutHealth:
    ok: bool
    message: str
    watchers: int
    restarts: int


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
        self._live: dict[int, Subscription] = {}
        # (when, counter, subscription id): ids, so that an ended watch is not kept alive here.
        self._deadlines: list[tuple[float, int, int]] = []
        self._counter = 0
        self._last_rv = 0
        self._running = True
        self._wake_pending = False
        self.restarts = 0
        self.last_error = ""
        self._last_turn = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="raven-apiserver-watch",
                                        daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ producer side

    def add(self, sub: Subscription, backlog: Sequence[Any], current_rv: int) -> None:
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
        return len(self._live)

    def held_bytes(self) -> int:
        """Bytes buffered for all live watchers (unsent output and queued events)."""
        return sum(len(s.out) + s.pending_bytes for s in list(self._live.values()))

    def tracked(self) -> int:
        """Entries the fan-out keeps (live watchers plus timer entries), for leak checks."""
        return len(self._live) + len(self._deadlines)

    def health(self) -> FanoutHealth:
        """Whether watches are being served: the loop thread is alive and turning."""
        watchers = len(self._live)
        if not self._thread.is_alive():
            if not self._running:
                return FanoutHealth(False, "watch fan-out stopped", watchers, self.restarts)
            return FanoutHealth(False, f"watch fan-out thread died: {self.last_error}",
                                watchers, self.restarts)
        stalled = time.monotonic() - self._last_turn
        if stalled > STALL_SECONDS:
            return FanoutHealth(False, f"watch fan-out has not turned for {stalled:.0f}s",
                                watchers, self.restarts)
        return FanoutHealth(True, "ok", watchers, self.restarts)

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
                try:
                    self._loop()
                except Exception as exc:  # a bug: keep serving every other watch
                    self.restarts += 1
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    log.exception("watch fan-out loop failed (restart %d); continuing",
                                  self.restarts)
                    time.sleep(0.05)  # no hot loop if the failure repeats
                    # Watchers queued for in the failed turn may have nothing else to wake them.
                    for sub in list(self._live.values()):
                        self._guard(sub, self._send, sub)
        finally:
            for sub in list(self._live.values()):
                with contextlib.suppress(Exception):
                    self._end(sub, gone=False)
            for sub in list(self._live.values()):
                sub.ended = True
                sub.release()
                sub.done.set()
            self._live.clear()
            self._selector.close()
            self._wake_r.close()
            self._wake_w.close()

    def _loop(self) -> None:
        while self._running:
            self._last_turn = time.monotonic()
            timeout = TICK_SECONDS
            if self._deadlines:
                timeout = max(0.0, min(timeout, self._deadlines[0][0] - time.monotonic()))
            for key, mask in self._selector.select(timeout):
                sub = key.data
                if sub is None:
                    self._drain_wakeups()
                    continue
                self._guard(sub, self._on_ready, sub, mask)
            self._process_queue()
            self._expire()
            self._compact_deadlines()

    def _guard(self, sub: Subscription, fn: Callable[..., Any], *args: Any) -> None:
        """Run `fn` for one watcher; an error ends that watch only."""
        try:
            fn(*args)
        except Exception as exc:
            log.exception("watch of %s failed; ending it", sub.key)
            self._fail(sub, ApiError(500, "InternalError",
                                     f"this watch of {_resource(sub.key)} ended: an internal "
                                     f"error ({type(exc).__name__}); watch again"))

    def _on_ready(self, sub: Subscription, mask: int) -> None:
        if mask & selectors.EVENT_READ and self._client_gone(sub):
            self._end(sub, gone=True)
            return
        if mask & selectors.EVENT_WRITE:
            self._send(sub)

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
                for sub in list(self._subs.get(item.key, ())):
                    if sub.namespace is not None and sub.namespace != item.namespace:
                        continue
                    self._guard(sub, self._queue_event, sub, item)
                    touched.add(sub)
            elif kind == "add":
                backlog, current_rv = extra
                self._last_rv = max(self._last_rv, current_rv)
                self._guard(item, self._start, item, backlog, current_rv)
                touched.add(item)
            elif kind == "stop":
                self._running = False
                for sub in list(self._live.values()):
                    self._end(sub, gone=False)
                return
        for sub in touched:
            if not sub.ended:
                self._guard(sub, self._send, sub)

    def _format(self, sub: Subscription, event: Any) -> bytes | None:
        """The watcher's line for `event`; on a bad object, ends this watch alone (None)."""
        try:
            return sub.format_event(event)
        except Exception as exc:
            name = (getattr(event, "new", None) or {}).get("metadata", {}).get("name", "?")
            log.error("watch of %s: cannot encode %s %r for this watcher (%s: %s); ending "
                      "this watch only", _resource(sub.key), getattr(event, "type", "?"), name,
                      type(exc).__name__, exc)
            self._fail(sub, ApiError(500, "InternalError",
                                     f"this watch of {_resource(sub.key)} ended: object "
                                     f"{name!r} cannot be shown in this view ({exc}); fix the "
                                     "object or watch without it"))
            return None

    def _queue_event(self, sub: Subscription, event: Any) -> None:
        if sub.ended or sub.closing:
            return
        line = self._format(sub, event)
        if not line:
            return
        sub.pending.append(line)
        sub.pending_bytes += len(line)
        if sub.pending_bytes > self.backlog_limit_bytes:
            log.warning("watch of %s is %d bytes behind; ending it", _resource(sub.key),
                        sub.pending_bytes)
            self._fail(sub, ApiError(410, "Expired",
                                     f"this watch of {_resource(sub.key)} fell more than "
                                     f"{self.backlog_limit_bytes} bytes behind (the client "
                                     "reads too slowly); list and watch again"),
                       keep_queued=False)

    def _start(self, sub: Subscription, backlog: Sequence[Any], current_rv: int) -> None:
        try:
            sub.sock.setblocking(False)
            self._selector.register(sub.sock, selectors.EVENT_READ, sub)
        except (OSError, ValueError):
            sub.ended = True
            sub.done.set()
            return
        self._counter += 1
        sub.ident = self._counter
        self._live[sub.ident] = sub
        self._subs.setdefault(sub.key, set()).add(sub)
        sub.backlog = backlog
        sub.backlog_next = 0
        if sub.initial_end_bookmark:
            line = sub.format_bookmark(current_rv, True)
            sub.pending.append(line)
            sub.pending_bytes += len(line)
        self._push_timer(sub.deadline, sub)
        if sub.bookmark_interval is not None:
            sub.next_bookmark = time.monotonic() + sub.bookmark_interval
            self._push_timer(sub.next_bookmark, sub)

    def _push_timer(self, when: float, sub: Subscription) -> None:
        self._counter += 1
        heapq.heappush(self._deadlines, (when, self._counter, sub.ident))

    def _compact_deadlines(self) -> None:
        """Drop timers of ended watches once they outnumber the live ones."""
        if len(self._deadlines) > 2 * len(self._live) + 64:
            self._deadlines = [d for d in self._deadlines if d[2] in self._live]
            heapq.heapify(self._deadlines)

    def _expire(self) -> None:
        now = time.monotonic()
        while self._deadlines and self._deadlines[0][0] <= now:
            when, _, ident = heapq.heappop(self._deadlines)
            sub = self._live.get(ident)
            if sub is None or sub.ended:
                continue
            if when >= sub.deadline:
                self._guard(sub, self._end, sub, sub.closing)
            elif not sub.closing and sub.bookmark_interval is not None \
                    and when >= sub.next_bookmark:
                self._guard(sub, self._bookmark, sub, now)

    def _bookmark(self, sub: Subscription, now: float) -> None:
        # Every event up to _last_rv is already queued for this watcher.
        line = sub.format_bookmark(self._last_rv, False)
        sub.pending.append(line)
        sub.pending_bytes += len(line)
        self._send(sub)
        sub.next_bookmark = now + sub.bookmark_interval  # type: ignore[operator]
        self._push_timer(sub.next_bookmark, sub)

    def _fill(self, sub: Subscription) -> None:
        """Frame more lines into `out` while it holds less than CHUNK_BYTES: the rest of the
        initial list first, then queued events."""
        if sub.closing or len(sub.out) >= CHUNK_BYTES:
            return
        lines: list[bytes] = []
        size = len(sub.out)
        backlog = sub.backlog
        while size < CHUNK_BYTES and sub.backlog_next < len(backlog):
            item = backlog[sub.backlog_next]
            sub.backlog_next += 1
            line = self._format(sub, _as_event(item, sub.key))
            if sub.closing:
                return
            if line:
                lines.append(line)
                size += len(line)
        if sub.backlog_next >= len(backlog):
            sub.backlog = ()
            sub.backlog_next = 0
            while size < CHUNK_BYTES and sub.pending:
                line = sub.pending.popleft()
                sub.pending_bytes -= len(line)
                lines.append(line)
                size += len(line)
        if lines:
            data = b"".join(lines)
            sub.out += f"{len(data):x}\r\n".encode() + data + b"\r\n"

    def _send(self, sub: Subscription) -> None:
        if sub.ended:
            return
        while True:
            self._fill(sub)
            if sub.ended:
                return
            if not sub.out:
                break
            try:
                sent = sub.sock.send(sub.out)
            except (ssl.SSLWantWriteError, BlockingIOError, ssl.SSLWantReadError):
                break
            except (OSError, ValueError):
                self._end(sub, gone=True)
                return
            del sub.out[:sent]
            if sub.out:
                break  # the socket is full; wait until it is writable
        if sub.closing and not sub.out:
            sub.clean = True
            self._finish(sub)
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

    def _fail(self, sub: Subscription, error: ApiError, keep_queued: bool = True) -> None:
        """End one watch with an ERROR event, and give the client ERROR_DRAIN_SECONDS to read
        it and the terminating chunk. Events queued before the failure are sent first when the
        initial list is complete (`keep_queued`); otherwise they are dropped."""
        if sub.ended or sub.closing:
            return
        sub.closing = True
        if keep_queued and sub.backlog_next >= len(sub.backlog) and sub.pending:
            data = b"".join(sub.pending)
            sub.out += f"{len(data):x}\r\n".encode() + data + b"\r\n"
        sub.pending.clear()
        sub.pending_bytes = 0
        sub.backlog = ()
        line = watch_error_line(error)
        sub.out += f"{len(line):x}\r\n".encode() + line + b"\r\n" + TERMINATOR
        sub.deadline = time.monotonic() + ERROR_DRAIN_SECONDS
        if sub.ident in self._live:
            self._push_timer(sub.deadline, sub)
            self._send(sub)
        else:  # not registered yet (failed while starting)
            self._finish(sub)

    def _end(self, sub: Subscription, gone: bool) -> None:
        if sub.ended:
            return
        if not gone and not sub.closing:
            # Deadline or stop: what is already framed goes first, then the terminating chunk.
            # The rest of the backlog and queue is dropped: the client resumes from the last
            # resourceVersion it saw.
            sub.closing = True
            sub.pending.clear()
            sub.pending_bytes = 0
            sub.backlog = ()
            sub.out += TERMINATOR
            with contextlib.suppress(ssl.SSLWantWriteError, BlockingIOError,
                                     ssl.SSLWantReadError, OSError, ValueError):
                while sub.out:
                    sent = sub.sock.send(sub.out)
                    if not sent:
                        break
                    del sub.out[:sent]
            sub.clean = not sub.out
        self._finish(sub)

    def _finish(self, sub: Subscription) -> None:
        sub.ended = True
        self._subs.get(sub.key, set()).discard(sub)
        if not self._subs.get(sub.key, True):
            self._subs.pop(sub.key, None)
        self._live.pop(sub.ident, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.unregister(sub.sock)
        sub.release()
        sub.done.set()


def _as_event(item: Any, key: tuple[str, str]) -> Any:
    """A backlog entry as a watch event: stored objects of an initial list are ADDED."""
    if isinstance(item, StoredObject):
        namespace = (item.obj.get("metadata") or {}).get("namespace", "")
        return WatchEvent("ADDED", item.rv, key, namespace, None, item.obj, item.raw)
    return item


def _resource(key: tuple[str, str]) -> str:
    group, plural = key
    return f"{plural}.{group}" if group else plural


def health_report(health: FanoutHealth) -> tuple[int, bytes]:
    """The answer of /healthz, /livez and /readyz for the watch fan-out, in kube-apiserver's
    format: 200 "ok", or 500 naming the failed check (watches would hang without it)."""
    if health.ok:
        return 200, b"ok"
    return 500, (f"[-]watch-fanout failed: {health.message}\n"
                 "healthz check failed").encode()
