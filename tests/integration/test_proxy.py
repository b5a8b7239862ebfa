"""The proxy server and client with real sockets and real mutual TLS on loopback addresses:
a CONNECT through the server reaches an echo "kubelet" through the client's one multiplexed
connection; refusals; 503 without a client; reconnect after a server restart; certificate
rotation without a cut; many concurrent streams on one connection; nothing left running."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from raven.proxy import certs
from raven.proxy.component import ProxyComponent
from raven.proxy.dial import TunnelError, open_tunnel
from raven.proxy.metrics import ProxyMetrics
from raven.proxy.plan import CLIENT, SERVER, ProxyPlan, ServerAddress, View
from raven.settings import ProxySettings

SERVER_IP, CLIENT_IP, TARGET_IP, OTHER_IP = "127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((SERVER_IP, 0))
        return int(s.getsockname()[1])


class Echo:
    """A stand-in kubelet: echoes every byte back, closes when the peer does."""

    def __init__(self, host: str) -> None:
        self.sock = socket.create_server((host, 0))
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()


class AnswerThenHalfClose(Echo):
    """A stand-in kubelet that ends first, as a kubelet ends an exec or a `Connection: close`
    answer: it reads the request, sends `size` bytes, shuts down its sending side, then waits
    for the end of what it receives. `ended` is set when that end arrives (EOF, or a reset)."""

    def __init__(self, host: str, size: int) -> None:
        self.size = size
        self.ended = threading.Event()
        super().__init__(host)

    def _handle(self, conn: socket.socket) -> None:
        try:
            conn.recv(65536)
            conn.sendall(b"a" * self.size)
            conn.shutdown(socket.SHUT_WR)
            while conn.recv(65536):
                pass
        except OSError:
            pass
        self.ended.set()


def wait_for(check, what: str, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Cluster:
    def __init__(self, lifetime: float = 3600.0) -> None:
        self.ca = certs.make_ca("raven-proxy-test", 7200, time.time())
        self.echo = Echo(TARGET_IP)
        self.outside = Echo(OTHER_IP)
        self.first_to_end = AnswerThenHalfClose(TARGET_IP, 300_000)
        self.tunnel_port, self.user_port = free_port(), free_port()
        self.lifetime = lifetime
        ports = {"gw-edge": frozenset({self.echo.port, self.first_to_end.port})}
        self.server_view = View({TARGET_IP: ("gw-edge", "e2"), OTHER_IP: ("gw-edge", "e3")},
                                ports, {"e1": "gw-edge"})
        # The client's own allow-list lacks e3: the server's word is not enough at the edge.
        self.client_view = View({TARGET_IP: ("gw-edge", "e2")}, ports, {"e1": "gw-edge"})
        self.client = self.component("e1")
        self.client.apply(ProxyPlan(CLIENT, "e1", "gw-edge", CLIENT_IP, 0, (
            ServerAddress("c1", SERVER_IP, self.tunnel_port),), self.client_view))
        self.server = self.start_server()
        self.user = certs.context(self.ca, certs.issue(self.ca, "kube-apiserver", certs.ORG_USER,
                                                       3600, time.time()), server=False)

    def component(self, node: str) -> ProxyComponent:
        c = ProxyComponent(node, ProxySettings(server_port=self.user_port,
                                               cert_lifetime=self.lifetime, keepalive=1.0),
                           ProxyMetrics(), lambda: self.ca)
        c.start()
        return c

    def start_server(self) -> ProxyComponent:
        server = self.component("c1")
        server.apply(ProxyPlan(SERVER, "c1", "gw-cloud", SERVER_IP, self.tunnel_port, (),
                               self.server_view))
        wait_for(lambda: len(server.status().get("listen", [])) == 2, "the server to listen")
        return server

    def connected(self) -> bool:
        return self.server.status().get("clients", {}).get("gw-edge") == ["e1"]

    def tunnel(self, host: str = TARGET_IP, port: int | None = None) -> socket.socket:
        return open_tunnel((SERVER_IP, self.user_port), self.user, host,
                           self.echo.port if port is None else port, 10)

    def close(self) -> None:
        self.client.stop()
        self.server.stop()
        self.echo.close()
        self.outside.close()
        self.first_to_end.close()


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    before = {t.name for t in threading.enumerate()}
    c = Cluster()
    wait_for(c.connected, "the proxy client to connect")
    yield c
    c.close()
    assert not [t for t in threading.enumerate() if t.name == "proxy" and t.name not in before]


def roundtrip(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def test_connect_reaches_the_kubelet_through_the_client(cluster: Cluster) -> None:
    with cluster.tunnel() as sock:
        payload = bytes(range(256)) * 4096  # 1 MiB: beyond every flow-control window
        assert roundtrip(sock, payload) == payload
    metrics = cluster.server.metrics.registry
    assert metrics.get_sample_value("raven_proxy_requests_total",
                                    {"side": "server", "result": "ok"}) == 1.0


def test_a_kubelet_that_ends_first_sees_the_stream_end(cluster: Cluster) -> None:
    """The kubelet answers and ends its side first (an exec's end): the caller gets every
    byte and the end; the caller's TLS cannot half-close, so the proxy server must end the
    stream's other direction too, and the kubelet must then see its connection end (once the
    server left that stream half-open, the client kept the kubelet's socket open for good)."""
    with cluster.tunnel(TARGET_IP, cluster.first_to_end.port) as sock:
        sock.sendall(b"GET /exec HTTP/1.1\r\n\r\n")
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
    assert got == b"a" * 300_000
    assert cluster.first_to_end.ended.wait(30), "the kubelet's connection was never ended"


@pytest.mark.parametrize(("host", "port", "status"), [
    (TARGET_IP, 22, 403),        # not a kubelet port of the pool
    ("192.0.2.99", None, 403),   # not a node of a proxied pool
    ("localhost", None, 400),    # names are never resolved
])
def test_refusals(cluster: Cluster, host: str, port: int | None, status: int) -> None:
    with pytest.raises(TunnelError) as err:
        cluster.tunnel(host, port)
    assert err.value.status == status


def test_the_client_checks_its_own_allow_list(cluster: Cluster) -> None:
    with pytest.raises(TunnelError) as err:
        cluster.tunnel(OTHER_IP, cluster.echo.port)
    assert err.value.status == 502 and "403" in err.value.reason


def test_an_agent_certificate_cannot_use_the_server_facing_port(cluster: Cluster) -> None:
    agent = certs.context(cluster.ca, certs.issue(cluster.ca, "e1", certs.ORG_AGENT, 600,
                                                  time.time()), server=False)
    with pytest.raises(TunnelError) as err:
        open_tunnel((SERVER_IP, cluster.user_port), agent, TARGET_IP, cluster.echo.port, 10)
    assert err.value.status == 403


def test_a_certificate_from_another_ca_is_refused(cluster: Cluster) -> None:
    rogue = certs.make_ca("rogue", 600, time.time())
    ctx = certs.context(rogue, certs.issue(rogue, "x", certs.ORG_USER, 600, time.time()), False)
    with pytest.raises(OSError):
        open_tunnel((SERVER_IP, cluster.user_port), ctx, TARGET_IP, cluster.echo.port, 10)


def test_no_client_is_503_and_the_client_reconnects_after_a_server_restart(
        cluster: Cluster) -> None:
    cluster.server.stop()
    connects = cluster.client.client.connects if cluster.client.client else 0
    cluster.server = cluster.start_server()
    wait_for(lambda: cluster.client.client is not None
             and cluster.client.client.connects > connects, "the client to reconnect")
    wait_for(cluster.connected, "the server to see the client")
    with cluster.tunnel() as sock:
        assert roundtrip(sock, b"after restart") == b"after restart"


def test_503_while_no_client_is_connected() -> None:
    c = Cluster()
    try:
        c.client.stop()
        with pytest.raises(TunnelError) as err:
            c.tunnel()
        assert err.value.status == 503
    finally:
        c.close()


def test_many_concurrent_streams_share_one_connection(cluster: Cluster) -> None:
    count = 64
    socks = [cluster.tunnel() for _ in range(count)]
    try:
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(lambda i: roundtrip(socks[i], f"stream {i} ".encode() * 500),
                                    range(count)))
        assert results == [f"stream {i} ".encode() * 500 for i in range(count)]
        assert cluster.server.status()["clients"] == {"gw-edge": ["e1"]}  # one connection
        assert cluster.server.metrics.registry.get_sample_value(
            "raven_proxy_streams_open", {"side": "server"}) == count
    finally:
        for s in socks:
            s.close()
    wait_for(lambda: cluster.server.metrics.registry.get_sample_value(
        "raven_proxy_streams_open", {"side": "server"}) == 0, "the streams to close")


def test_certificates_rotate_before_expiry_without_cutting_a_stream() -> None:
    c = Cluster(lifetime=10.0)  # renewed at two thirds: about 6.7 s
    try:
        wait_for(c.connected, "the proxy client to connect")
        first = c.client.leaf
        assert first is not None
        sock = c.tunnel()
        assert roundtrip(sock, b"before") == b"before"
        wait_for(lambda: c.client.leaf is not None and c.client.leaf.serial != first.serial,
                 "the client certificate to rotate")
        wait_for(lambda: c.client.client is not None and c.client.client.connects >= 2,
                 "the client to reconnect with its new certificate")
        assert roundtrip(sock, b"during") == b"during"  # the old connection drains
        sock.close()
        with c.tunnel() as again:
            assert roundtrip(again, b"after") == b"after"
        assert c.client.leaf.not_after > first.not_after
    finally:
        c.close()


def test_the_server_drops_a_client_whose_certificate_expired(cluster: Cluster) -> None:
    """A client that never rotates (here: a hand-made one with a 2-second certificate) is cut
    when its certificate expires; TLS alone checks it only at the handshake."""
    import asyncio

    from raven.proxy.mux import Mux

    short = certs.context(cluster.ca, certs.issue(cluster.ca, "e1", certs.ORG_AGENT, 2.0,
                                                  time.time()), server=False)

    async def connect_and_wait() -> bool:
        reader, writer = await asyncio.open_connection(SERVER_IP, cluster.tunnel_port, ssl=short,
                                                       server_hostname=None)
        mux = Mux(reader, writer, opener=False, name="short-lived", keepalive=60)
        await mux.start()
        try:
            await asyncio.wait_for(mux.run(), 30)  # returns when the server closes
        except TimeoutError:
            return False
        return True

    assert asyncio.run(connect_and_wait())
    wait_for(cluster.connected, "the real client to be the only one again")


def test_a_peer_without_a_valid_certificate_is_refused_and_logged(
        cluster: Cluster, caplog: pytest.LogCaptureFixture) -> None:
    with socket.create_connection((SERVER_IP, cluster.tunnel_port), 5) as raw:
        raw.sendall(b"GET / HTTP/1.0\r\n\r\n")  # not TLS at all
        raw.settimeout(10)
        assert raw.recv(100) == b""  # closed without an answer
    rogue = certs.make_ca("rogue", 600, time.time())
    ctx = certs.context(rogue, certs.issue(rogue, "e1", certs.ORG_AGENT, 600, time.time()), False)
    raw = socket.create_connection((SERVER_IP, cluster.tunnel_port), 5)
    with pytest.raises(OSError), ctx.wrap_socket(raw) as tls:
        tls.recv(1)  # the server rejects the certificate during or right after the handshake
    raw.close()
    wait_for(lambda: cluster.server.metrics.registry.get_sample_value(
        "raven_proxy_requests_total", {"side": "server", "result": "refused-tls"}) == 2.0,
        "both refusals to be counted")
    refusals = [r.getMessage() for r in caplog.records if "TLS handshake failed" in r.getMessage()]
    assert len(refusals) == 2 and all("on the client port" in m for m in refusals)
    assert cluster.connected()  # the real client is untouched
