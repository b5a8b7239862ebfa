"""Limits of the API server's HTTP layer, seen from real sockets and the kubernetes client.

Authentication before the body, a body limit for every framing, header/body/idle deadlines and
a bound on connections. The oracles are the bytes on the wire (status lines, the server closing
the connection) and, for the subprocess server, /proc/<pid>/status (threads, resident memory).
Negative checks wait for an event (the server closing a socket) with a generous bound.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import queue
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from apiserver_support import ROOT, ApiServerProcess, start_apiserver_process
from kubernetes import client, watch

from raven.apiserver.server import RunningApiServer, start
from raven.apiserver.settings import ApiServerSettings

WAIT = 30.0  # upper bound for an event to happen; the tests never wait for it to not happen
CONFIGMAPS = "/api/v1/namespaces/default/configmaps"
DEADLINE = 2.0  # the header/body/idle deadlines under test (a prompt client includes TLS)


def running(tmp_path: Path, **settings: Any) -> Iterator[RunningApiServer]:
    server = start(ApiServerSettings(data_dir=tmp_path / "api", port=0, plain_http=True,
                                     **settings))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def plain(tmp_path: Path) -> Iterator[RunningApiServer]:
    """Plain-HTTP loopback server with default limits."""
    yield from running(tmp_path)


@pytest.fixture
def small(tmp_path: Path) -> Iterator[RunningApiServer]:
    """64 KiB bodies, 2 s header/body/idle deadlines: short enough that the tests of the
    deadlines end soon, long enough that a prompt client on a loaded CI machine (2 cores, VM
    guests under emulation) is never cut off by a stalled server thread."""
    yield from running(tmp_path, max_body_bytes=64 << 10, header_timeout=DEADLINE,
                       body_timeout=DEADLINE, idle_timeout=DEADLINE)


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP response from the socket (http.client's parser as the oracle)."""
    response = http.client.HTTPResponse(sock)
    response.begin()
    body = response.read()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, body


def head(method: str, path: str, token: str | None, *headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    lines.extend(headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def closed_by_server(sock: socket.socket) -> bool:
    """Wait (bounded) for the server to close: True on EOF or reset."""
    sock.settimeout(WAIT)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def status_message(body: bytes) -> tuple[str, str]:
    status = json.loads(body)
    assert status["kind"] == "Status"
    return status["reason"], status["message"]


# --------------------------------------------------------------------------- bodies


def test_unauthenticated_requests_are_refused_before_the_body(plain: RunningApiServer) -> None:
    """200 MiB announced without a token: 401 arrives while not one body byte was sent."""
    for framing in ("Content-Length: 209715200", "Transfer-Encoding: chunked"):
        with connect(plain.port) as sock:
            sock.sendall(head("POST", CONFIGMAPS, None, framing,
                              "Content-Type: application/json"))
            code, headers, body = read_response(sock)
            assert code == 401 and status_message(body)[0] == "Unauthorized"
            assert headers.get("connection") == "close"
            assert closed_by_server(sock)


def test_expect_continue_is_only_answered_after_authentication(plain: RunningApiServer) -> None:
    with connect(plain.port) as sock:
        sock.sendall(head("POST", CONFIGMAPS, None, "Content-Length: 100",
                          "Expect: 100-continue"))
        code, _, _ = read_response(sock)
        assert code == 401  # not "100 Continue"
    with connect(plain.port) as sock:
        payload = json.dumps({"metadata": {"name": "continued"}}).encode()
        sock.sendall(head("POST", CONFIGMAPS, plain.token, f"Content-Length: {len(payload)}",
                          "Content-Type: application/json", "Expect: 100-continue"))
        assert sock.recv(25) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(payload)
        assert read_response(sock)[0] == 201


def test_body_limit_holds_for_every_framing(small: RunningApiServer) -> None:
    token = small.token
    # A declared length above the limit: 413 before the body is sent, then the server closes.
    with connect(small.port) as sock:
        sock.sendall(head("POST", CONFIGMAPS, token, f"Content-Length: {1 << 20}"))
        code, _, body = read_response(sock)
        assert code == 413 and str(64 << 10) in status_message(body)[1]
        assert closed_by_server(sock)
    # One chunk announced above the limit: 413 without its data.
    with connect(small.port) as sock:
        sock.sendall(head("POST", CONFIGMAPS, token, "Transfer-Encoding: chunked")
                     + f"{1 << 20:x}\r\n".encode())
        assert read_response(sock)[0] == 413
    # Small chunks that add up past the limit (no terminating chunk is ever sent).
    with connect(small.port) as sock:
        chunk = b"400\r\n" + b"x" * 1024 + b"\r\n"
        sock.sendall(head("POST", CONFIGMAPS, token, "Transfer-Encoding: chunked") + chunk * 65)
        assert read_response(sock)[0] == 413
    # Within the limit, chunked bodies still work.
    with connect(small.port) as sock:
        payload = json.dumps({"metadata": {"name": "chunked"}, "data": {"k": "v"}}).encode()
        sock.sendall(head("POST", CONFIGMAPS, token, "Transfer-Encoding: chunked",
                          "Content-Type: application/json")
                     + f"{len(payload):x}\r\n".encode() + payload + b"\r\n0\r\n\r\n")
        code, _, body = read_response(sock)
        assert code == 201 and json.loads(body)["data"] == {"k": "v"}


@pytest.mark.parametrize("framing", [
    ["Content-Length: -1"], ["Content-Length: abc"], ["Content-Length: ²"],
    ["Content-Length: 5", "Content-Length: 7"],
    ["Content-Length: 5", "Transfer-Encoding: chunked"], ["Transfer-Encoding: gzip"],
])
def test_bogus_framings_are_400(plain: RunningApiServer, framing: list[str]) -> None:
    with connect(plain.port) as sock:
        sock.sendall(head("POST", CONFIGMAPS, plain.token, *framing).replace(
            "²".encode(), "²".encode("latin-1")))
        code, _, body = read_response(sock)
        assert code == 400 and status_message(body)[0] == "BadRequest"


def test_unauthenticated_flood_leaves_memory_flat(tmp_path: Path) -> None:
    """A subprocess server; /proc/<pid>/status is the oracle for its resident memory."""
    server = start_apiserver_process(tmp_path / "api", "--plain-http")
    try:
        before = proc_status(server, "VmRSS")
        with connect(server.port) as sock:
            sock.sendall(head("POST", CONFIGMAPS, None, "Transfer-Encoding: chunked"))
            code, _, _ = read_response(sock)
            assert code == 401
            # Keep sending body after the answer: the server reads at most a bounded amount
            # (and throws it away), then closes.
            chunk = b"100000\r\n" + b"z" * (1 << 20) + b"\r\n"
            sent = 0
            with pytest.raises(OSError):
                for _ in range(200):
                    sock.sendall(chunk)
                    sent += 1
            assert sent < 200
        after = proc_status(server, "VmRSS")
        assert after - before < 32 << 10  # kB: far below the 200 MiB offered
    finally:
        server.stop()


def proc_status(server: ApiServerProcess, field: str) -> int:
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{server.process.pid}/status")


# --------------------------------------------------------------------------- deadlines


def test_slow_headers_are_cut_off(small: RunningApiServer) -> None:
    """A client trickling its headers one byte at a time is closed at the header deadline."""
    with connect(small.port) as sock:
        stop = threading.Event()

        def trickle() -> None:
            try:
                sock.sendall(b"GET /healthz HTTP/1.1\r\n")
                while not stop.wait(0.05):
                    sock.sendall(b"X")
            except OSError:
                pass

        sender = threading.Thread(target=trickle, daemon=True)
        sender.start()
        try:
            assert closed_by_server(sock)
        finally:
            stop.set()
            sender.join(timeout=WAIT)


def test_silent_tls_client_is_cut_off(tmp_path: Path) -> None:
    server = start(ApiServerSettings(data_dir=tmp_path / "api", port=0,
                                     header_timeout=DEADLINE))
    try:
        with connect(server.port) as sock:  # TCP only, never a ClientHello
            assert closed_by_server(sock)
        context = ssl.create_default_context(cafile=str(server.ca_cert))
        with connect(server.port) as raw, context.wrap_socket(raw,
                                                              server_hostname="127.0.0.1") as tls:
            tls.sendall(head("GET", "/healthz", server.token))
            assert read_response(tls)[0] == 200  # the deadline does not hurt a prompt client
    finally:
        server.stop()


def test_slow_body_is_answered_408_and_closed(small: RunningApiServer) -> None:
    with connect(small.port) as sock:
        sock.sendall(head("POST", CONFIGMAPS, small.token, "Content-Length: 100") + b'{"a"')
        code, _, body = read_response(sock)
        assert code == 408 and "body" in status_message(body)[1]
        assert closed_by_server(sock)


def test_idle_keepalive_connection_is_closed(small: RunningApiServer) -> None:
    with connect(small.port) as sock:
        sock.sendall(head("GET", "/healthz", small.token))
        code, headers, _ = read_response(sock)
        assert code == 200 and headers.get("connection") != "close"
        assert closed_by_server(sock)


def test_watch_is_not_idle(small: RunningApiServer) -> None:
    """A watch outlives several idle deadlines and still delivers events."""
    configuration = client.Configuration(host=small.url)
    configuration.api_key = {"authorization": "Bearer " + small.token}
    api = client.ApiClient(configuration)
    core = client.CoreV1Api(api)
    events: queue.Queue[tuple[str, str]] = queue.Queue()
    watcher = watch.Watch()

    finished = threading.Event()

    def stream() -> None:
        try:
            for event in watcher.stream(core.list_namespaced_config_map, "default",
                                        timeout_seconds=60):
                events.put((event["type"], event["object"].metadata.name))
        except Exception:
            if not finished.is_set():  # the server stopping after the test ends the stream
                raise

    thread = threading.Thread(target=stream, daemon=True)
    thread.start()
    try:
        # Let idle deadlines pass: each of these connections is closed by the server after one.
        for _ in range(3):
            with connect(small.port) as idle:
                assert closed_by_server(idle)
        core.create_namespaced_config_map("default", client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="after-idle")))
        deadline = time.monotonic() + WAIT
        seen: list[tuple[str, str]] = []
        while ("ADDED", "after-idle") not in seen and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                seen.append(events.get(timeout=1))
        assert ("ADDED", "after-idle") in seen
    finally:
        finished.set()
        watcher.stop()
        api.close()


# --------------------------------------------------------------------------- connections


def test_connections_beyond_the_bound_are_closed(tmp_path: Path) -> None:
    """Threads of the subprocess server (/proc) stay bounded with many idle connections."""
    server = start_apiserver_process(tmp_path / "api", "--plain-http", "--max-connections", "4")
    held: list[socket.socket] = []
    try:
        baseline = proc_status(server, "Threads")
        for _ in range(4):
            sock = connect(server.port)
            sock.sendall(b"GET /heal")  # an unfinished request line holds its thread
            held.append(sock)
        wait_for(lambda: proc_status(server, "Threads") >= baseline + 4)
        for _ in range(40):
            with connect(server.port) as extra:
                assert healthz_on(extra) == 0  # closed at accept, never answered
        assert proc_status(server, "Threads") <= baseline + 4
        for sock in held:
            sock.close()
        held.clear()
        # Slots come back once the held connections are gone.
        wait_for(lambda: healthz(server) == 401)
    finally:
        for sock in held:
            sock.close()
        server.stop()


def healthz_on(sock: socket.socket) -> int:
    """The status of GET /healthz on `sock`, or 0 when the server closed it instead."""
    try:
        sock.sendall(head("GET", "/healthz", None))
        return read_response(sock)[0]
    except (OSError, http.client.HTTPException):
        return 0


def healthz(server: ApiServerProcess) -> int:
    try:
        with connect(server.port) as sock:
            return healthz_on(sock)
    except OSError:
        return 0


def wait_for(condition: Any) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_cli_names_the_flag_of_a_bad_limit(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "raven.cli", "apiserver", "--data-dir", str(tmp_path / "d"),
         "--listen", "127.0.0.1:0", "--max-request-body-bytes", "0", "--max-connections", "-2"],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "--max-request-body-bytes must be at least 1" in result.stderr
    assert "--max-connections must be at least 1" in result.stderr
