"""Watches through real clients: a bad stored object ends no watch, reset watches free their
memory, a client that does not read is cut off with an ERROR event.

Oracles: the official kubernetes client's watch, kubectl (Table views), raw TLS sockets that read
the chunked stream themselves, and the process's resident memory from /proc/self/status.
"""

from __future__ import annotations

import http.client
import json
import socket
import sqlite3
import ssl
import struct
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kube_support import wait_for
from kubernetes import client, config

from raven.apiserver.server import RunningApiServer, start
from raven.apiserver.settings import ApiServerSettings


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def core_api(server: RunningApiServer) -> client.CoreV1Api:
    return client.CoreV1Api(config.new_client_from_config(config_file=str(server.kubeconfig)))


def open_watch(server: RunningApiServer, path: str, rcvbuf: int | None = None) -> ssl.SSLSocket:
    """A raw TLS watch request; returns once the response headers are read."""
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    if rcvbuf is not None:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    context = ssl.create_default_context(cafile=str(server.ca_cert))
    sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 f"Authorization: Bearer {server.token}\r\nAccept: application/json\r\n\r\n"
                 .encode())
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(1)
        assert data, "connection closed before the response headers"
        head += data
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock


def read_stream(sock: ssl.SSLSocket,
                stop: Callable[[dict[str, Any]], bool] | None = None) -> list[dict[str, Any]]:
    """Every watch line until the terminating chunk (or until `stop` is true for an event)."""
    buffer, events, checked = b"", [], 0
    while True:
        if stop is not None:
            while checked < len(events):
                checked += 1
                if stop(events[checked - 1]):
                    return events
        while b"\r\n" not in buffer:
            data = sock.recv(65536)
            assert data, "connection closed before the terminating chunk"
            buffer += data
        head, _, buffer = buffer.partition(b"\r\n")
        size = int(head, 16)
        while len(buffer) < size + 2:
            data = sock.recv(65536)
            assert data, "connection closed inside a chunk"
            buffer += data
        body, buffer = buffer[:size], buffer[size + 2:]
        if size == 0:
            return events
        events.extend(json.loads(line) for line in body.splitlines() if line)
    return events


def reset(sock: ssl.SSLSocket) -> None:
    """Close with a TCP RST, as a client that crashes or times out does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# --------------------------------------------------------------------- a bad stored object


@pytest.fixture
def server_with_bad_configmap(tmp_path: Path) -> Iterator[RunningApiServer]:
    """A server whose store holds a ConfigMap with "data": 5 (written by an older version)."""
    data_dir = tmp_path / "api"
    start(ApiServerSettings(data_dir=data_dir, port=0)).stop()
    with sqlite3.connect(data_dir / "store.sqlite") as db:
        rv = int(db.execute("SELECT value FROM meta WHERE key='rv'").fetchone()[0]) + 1
        bad = {"apiVersion": "v1", "kind": "ConfigMap", "data": 5,
               "metadata": {"name": "bad", "namespace": "default", "uid": str(uuid.uuid4()),
                            "resourceVersion": str(rv),
                            "creationTimestamp": "2026-01-01T00:00:00Z"}}
        db.execute("INSERT INTO objects VALUES ('/configmaps', 'default', 'bad', ?, ?)",
                   (rv, json.dumps(bad)))
        db.execute("REPLACE INTO meta (key, value) VALUES ('rv', ?)", (str(rv),))
    running = start(ApiServerSettings(data_dir=data_dir, port=0))
    try:
        yield running
    finally:
        running.stop()


def test_an_object_the_table_cannot_render_ends_no_watch(
    server_with_bad_configmap: RunningApiServer,
) -> None:
    server = server_with_bad_configmap
    core = core_api(server)
    kubectl = ["kubectl", "--kubeconfig", str(server.kubeconfig)]
    plain_watch = open_watch(server, "/api/v1/namespaces/default/configmaps?watch=true")
    seen: list[str] = []

    def follow() -> None:
        def record(event: dict[str, Any]) -> bool:
            seen.append(event["object"]["metadata"]["name"])
            return seen[-1] == "after"

        read_stream(plain_watch, record)

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    table_watch = subprocess.Popen([*kubectl, "get", "configmaps", "-n", "default", "-w"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert table_watch.stdout is not None
        first = [table_watch.stdout.readline() for _ in range(2)]
        assert first[0].split()[:3] == ["NAME", "DATA", "AGE"], first
        assert first[1].split()[0] == "bad", first
        wait_for(lambda: "bad" in seen, what="the plain watch to list the bad ConfigMap")
        listing = subprocess.run([*kubectl, "get", "configmaps", "-n", "default"],
                                 capture_output=True, text=True, timeout=60)
        assert listing.returncode == 0, listing.stderr
        assert listing.stdout.splitlines()[1].split()[:2] == ["bad", "<invalid>"]
        core.create_namespaced_config_map("default", client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="after"), data={"k": "v"}))
        line = table_watch.stdout.readline()
        assert line.split()[:2] == ["after", "1"], line
        follower.join(timeout=30)
        assert not follower.is_alive() and seen[-1] == "after"
    finally:
        table_watch.kill()
        table_watch.wait(timeout=10)
        plain_watch.close()
    health = server.server.fanout.health()
    assert health.ok and health.restarts == 0


# --------------------------------------------------------------------- memory


def test_reset_watches_free_their_buffers(server: RunningApiServer) -> None:
    core = core_api(server)
    blob = "x" * 20_000
    count = 300  # a 6 MB initial list: more than the kernel buffers of one connection
    for n in range(count):
        core.create_namespaced_config_map("default", client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name=f"cm-{n:03d}"), data={"blob": blob}))
    fanout = server.server.fanout
    before = rss_bytes()
    for _ in range(2):
        # Fixed receive buffers, as a client on a slow link has: the list cannot all be sent.
        socks = [open_watch(server, "/api/v1/namespaces/default/configmaps?watch=true",
                            rcvbuf=256 << 10) for _ in range(50)]
        for sock in socks:
            sock.recv(1)  # the stream has started
        for sock in socks:
            reset(sock)
        wait_for(lambda: fanout.count() == 0, timeout=60, what="the reset watches to end")
    grown = rss_bytes() - before
    # Holding what each of the 100 watches was not sent would take 100-400 MB.
    assert grown < 48 << 20, f"resident memory grew by {grown >> 20} MiB"
    assert fanout.held_bytes() == 0 and fanout.tracked() <= 64
    # A watch opened now still gets the whole list, in order.
    sock = open_watch(server, "/api/v1/namespaces/default/configmaps?watch=true"
                              "&timeoutSeconds=2")
    names = [e["object"]["metadata"]["name"] for e in read_stream(sock)]
    sock.close()
    assert names == [f"cm-{n:03d}" for n in range(count)]


def test_a_watcher_that_does_not_read_is_closed_with_an_error(tmp_path: Path) -> None:
    running = start(ApiServerSettings(data_dir=tmp_path / "api", port=0,
                                      watcher_backlog_bytes=256 << 10))
    try:
        core = core_api(running)
        # A fixed receive buffer (no autotuning up to tens of MB), larger than loopback's MSS.
        sock = open_watch(running, "/api/v1/namespaces/default/configmaps?watch=true",
                          rcvbuf=256 << 10)
        blob = "y" * 200_000
        core.create_namespaced_config_map("default", client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="big"), data={"blob": blob}))
        writes = 1
        for n in range(60):  # 12 MB: more than the kernel's buffers (< 5 MB) plus 256 KiB
            core.patch_namespaced_config_map("big", "default", {"data": {"n": str(n)}})
            writes += 1
        events = read_stream(sock)
        sock.close()
        assert events[-1]["type"] == "ERROR", [e["type"] for e in events]
        assert events[-1]["object"]["code"] == 410
        assert "reads too slowly" in events[-1]["object"]["message"]
        assert len(events) - 1 < writes  # cut off, not buffered without bound
        wait_for(lambda: running.server.fanout.count() == 0, what="the watch to be dropped")
    finally:
        running.stop()


def test_health_reports_the_watch_fanout(server: RunningApiServer) -> None:
    def health(path: str) -> tuple[int, str]:
        context = ssl.create_default_context(cafile=str(server.ca_cert))
        conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=context,
                                           timeout=30)
        try:
            conn.request("GET", path, headers={"Authorization": f"Bearer {server.token}"})
            response = conn.getresponse()
            return response.status, response.read().decode()
        finally:
            conn.close()

    for path in ("/healthz", "/livez", "/readyz"):
        assert health(path) == (200, "ok")
    server.server.fanout.stop()  # as if its thread had died: watches would hang
    for path in ("/healthz", "/livez", "/readyz"):
        code, text = health(path)
        assert code == 500 and "[-]watch-fanout failed" in text, (path, code, text)
