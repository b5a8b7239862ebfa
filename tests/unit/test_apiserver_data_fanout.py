"""The watch fan-out on real socket pairs: watchers isolated, a loop that survives its own bugs,
bounded and released buffers, health. The oracle is the bytes read from the client end of each
socket (chunked watch lines), not the fan-out's own state.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kube_support import wait_for

from raven.apiserver.fanout import Subscription, WatchFanout
from raven.apiserver.store import StoredObject, WatchEvent, encode

KEY = ("", "configmaps")


def event(rv: int, name: str, kind: str = "ADDED", **fields: Any) -> WatchEvent:
    obj = {"metadata": {"name": name, "namespace": "ns", "resourceVersion": str(rv)}, **fields}
    return WatchEvent(kind, rv, KEY, "ns", None, obj, encode(obj))


def plain(ev: WatchEvent) -> bytes:
    return b'{"type":"' + ev.type.encode() + b'","object":' + encode(ev.new) + b"}\n"


def strict(ev: WatchEvent) -> bytes:
    """A formatter that cannot render objects whose data is not a map (like a Table view)."""
    data = ev.new.get("data", {})
    return plain(ev) if len(data.keys()) >= 0 else b""


def bookmark(rv: int, initial: bool) -> bytes:
    meta = {"resourceVersion": str(rv)}
    return encode({"type": "BOOKMARK", "object": {"metadata": meta}}) + b"\n"


class Client:
    """The client end of one watch: reads chunked frames, parses the JSON lines."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(10)
        self.buffer = b""
        self.ended = False

    def read_events(self, count: int) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        while len(events) < count and not self.ended:
            events.extend(self._frame())
        return events

    def read_to_end(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        while not self.ended:
            events.extend(self._frame())
        return events

    def _need(self, size: int) -> None:
        while len(self.buffer) < size:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("connection closed before the terminating chunk")
            self.buffer += data

    def _frame(self) -> list[dict[str, Any]]:
        while b"\r\n" not in self.buffer:
            self._need(len(self.buffer) + 1)
        head, _, self.buffer = self.buffer.partition(b"\r\n")
        size = int(head, 16)
        self._need(size + 2)
        body, self.buffer = self.buffer[:size], self.buffer[size + 2:]
        if size == 0:
            self.ended = True
            return []
        return [json.loads(line) for line in body.splitlines() if line]


@pytest.fixture
def fanout() -> Iterator[WatchFanout]:
    hub = WatchFanout(backlog_limit_bytes=64 << 10)
    try:
        yield hub
    finally:
        hub.stop()


def watch(hub: WatchFanout, backlog: list[Any], fmt: Any = plain, rv: int = 0,
          rcvbuf: int | None = None) -> tuple[Subscription, Client]:
    server_end, client_end = socket.socketpair()
    if rcvbuf is not None:
        client_end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        server_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, rcvbuf)
    sub = Subscription(key=KEY, namespace=None, sock=server_end, format_event=fmt,
                       format_bookmark=bookmark, deadline=time.monotonic() + 600,
                       bookmark_interval=None)
    hub.add(sub, backlog, rv)
    return sub, Client(client_end)


def test_a_bad_object_ends_only_the_watch_that_cannot_render_it(fanout: WatchFanout) -> None:
    picky, picky_client = watch(fanout, [], strict)
    other, other_client = watch(fanout, [], plain)
    fanout.publish(event(1, "good"))
    fanout.publish(event(2, "bad", data=5))  # strict() raises on it
    fanout.publish(event(3, "after"))
    seen = picky_client.read_to_end()
    assert [e["type"] for e in seen] == ["ADDED", "ERROR"]
    assert seen[1]["object"]["code"] == 500 and "'bad'" in seen[1]["object"]["message"]
    names = [e["object"]["metadata"]["name"] for e in other_client.read_events(3)]
    assert names == ["good", "bad", "after"]
    assert picky.done.wait(10) and picky.clean and not other.done.is_set()
    assert fanout.health().ok and fanout.count() == 1


def test_the_loop_survives_its_own_failure(fanout: WatchFanout) -> None:
    _, client = watch(fanout, [])
    fanout.publish(event(1, "before"))
    fanout.publish(object())  # not an event at all: fails outside any one watcher
    # Queued before the failure, delivered after the restart with nothing else to wake it.
    assert [e["object"]["metadata"]["name"] for e in client.read_events(1)] == ["before"]
    fanout.publish(event(2, "next"))
    assert [e["object"]["metadata"]["name"] for e in client.read_events(1)] == ["next"]
    health = fanout.health()
    assert health.ok and health.restarts == 1


def test_initial_list_streams_from_references_in_order(fanout: WatchFanout) -> None:
    stored = [StoredObject(e.new, e.raw or b"", e.rv)
              for e in (event(n, f"cm-{n:04d}", data={"x": "y" * 2000}) for n in range(1, 400))]
    _, client = watch(fanout, stored, rv=399)
    fanout.publish(event(400, "live"))
    seen = client.read_events(400)
    assert [e["object"]["metadata"]["name"] for e in seen] == (
        [f"cm-{n:04d}" for n in range(1, 400)] + ["live"])
    assert {e["type"] for e in seen} == {"ADDED"}


def test_a_client_that_does_not_read_gets_an_error_and_is_closed(fanout: WatchFanout) -> None:
    sub, client = watch(fanout, [], rcvbuf=4096)
    payload = "z" * 8000
    total = 300  # 2.4 MB: far more than the socket buffer plus the 64 KiB queue limit
    for rv in range(1, total + 1):
        fanout.publish(event(rv, f"cm-{rv}", data={"blob": payload}))
    wait_for(lambda: sub.closing, what="the slow watcher to be cut off")
    seen = client.read_to_end()
    assert seen[-1]["type"] == "ERROR"
    assert seen[-1]["object"]["code"] == 410 and "reads too slowly" in seen[-1]["object"]["message"]
    assert len(seen) - 1 < total  # events were dropped, not buffered without bound
    assert sub.done.wait(10)
    assert fanout.count() == 0 and fanout.held_bytes() == 0


def test_a_closed_watch_holds_nothing(fanout: WatchFanout) -> None:
    stored = [StoredObject(e.new, e.raw or b"", e.rv)
              for e in (event(n, f"cm-{n}", data={"x": "y" * 4000}) for n in range(1, 200))]
    subs = []
    for _ in range(50):
        sub, client = watch(fanout, stored, rv=199)
        client.read_events(1)
        client.sock.close()
        subs.append(sub)
    for sub in subs:
        assert sub.done.wait(10)
        assert not sub.out and not sub.pending and not sub.backlog
    wait_for(lambda: fanout.count() == 0, what="every reset watch to be dropped")
    assert fanout.held_bytes() == 0 and fanout.tracked() <= 64


def test_health_reports_a_stopped_fanout() -> None:
    hub = WatchFanout()
    assert hub.health().ok
    hub.stop()
    health = hub.health()
    assert not health.ok and "stopped" in health.message
