"""Nodes selected by --egress-selector are reached through an HTTP CONNECT proxy over TLS
(kube-apiserver's egress selector, HTTPConnect mode), against a minimal CONNECT proxy here.

The proxy requires a client certificate from the cluster CA, records every CONNECT target and
answers by target port: the kubelet's port is relayed, port 1 is refused (403), port 2 has no
route (503). The API server lists a dead proxy first: it must fall through to the live one.
"""

from __future__ import annotations

import contextlib
import json
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from apiserver_support import ApiServerProcess, start_apiserver_process
from kubelet_support import (
    KubeletProcess,
    node_object,
    pod_entry,
    pod_object,
    start_kubelet_process,
)

from raven.apiserver import nodedial, security


class ConnectProxy:
    """A TLS HTTP CONNECT proxy (one thread per tunnel) for the test."""

    def __init__(self, data_dir: Path, folder: Path) -> None:
        cert, key = folder / "proxy.crt", folder / "proxy.key"
        security.issue_certificate(data_dir, cert, key, "proxy", ["127.0.0.1"])
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(cert), str(key))
        self.context.load_verify_locations(str(data_dir / security.CA_CERT))
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.targets: list[str] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                sock, _ = self.listener.accept()
                threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        with contextlib.suppress(OSError), self.context.wrap_socket(raw, server_side=True) as tls:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = tls.recv(1)
                if not chunk:
                    return
                head += chunk
            method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ")
            self.targets.append(target)
            host, port = target.rsplit(":", 1)
            if method != "CONNECT" or port == "1":
                tls.sendall(b"HTTP/1.1 403 Forbidden\r\n\r\n")
                return
            if port == "2":
                tls.sendall(b"HTTP/1.1 503 Service Unavailable\r\n\r\n")
                return
            with socket.create_connection((host, int(port)), timeout=10) as upstream:
                tls.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                _pipe(tls, upstream)

    def close(self) -> None:
        with contextlib.suppress(OSError):  # wakes the thread blocked in accept()
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(timeout=10)


def _pipe(a: ssl.SSLSocket, b: socket.socket) -> None:
    with selectors.DefaultSelector() as selector:
        selector.register(a, selectors.EVENT_READ)
        selector.register(b, selectors.EVENT_READ)
        while True:
            ready = [a] if a.pending() else [k.fileobj for k, _ in selector.select(30)]
            if not ready:
                return
            for source in ready:
                data = source.recv(1 << 16)  # type: ignore[union-attr]
                if not data:
                    return
                (b if source is a else a).sendall(data)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


Cluster = tuple[ApiServerProcess, KubeletProcess, ConnectProxy]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    folder = tmp_path_factory.mktemp("egress")
    data_dir = folder / "api"
    data_dir.mkdir(mode=0o700)
    proxy = ConnectProxy(data_dir, folder)  # its certificate makes the cluster CA first
    server = start_apiserver_process(
        data_dir, "--kubelet-network", "127.0.0.0/8",
        "--egress-proxy", f"127.0.0.1:{_closed_port()}",
        "--egress-proxy", f"127.0.0.1:{proxy.port}",
        "--egress-selector", "pool=edge")
    kubelet = None
    try:
        kubelet = start_kubelet_process(data_dir, folder, "edge-1", [pod_entry("edge-pod", folder)])
        edge = {"pool": "edge"}
        objects = [kubelet.node_object(edge), pod_object("edge-pod", "edge-1"),
                   node_object("cloud-1", "127.0.0.1", kubelet.port),
                   node_object("edge-refused", "127.0.0.1", 1, edge),
                   node_object("edge-noroute", "127.0.0.1", 2, edge)]
        server.kubectl("create", "-f", "-", input="\n".join(json.dumps(o) for o in objects))
        yield server, kubelet, proxy
    finally:
        if kubelet is not None:
            kubelet.stop()
        server.stop()
        proxy.close()


def test_a_selected_node_is_reached_through_the_proxy(cluster: Cluster) -> None:
    server, kubelet, proxy = cluster
    before = len(proxy.targets)
    out = server.kubectl("get", "--raw", "/api/v1/nodes/edge-1/proxy/healthz").stdout
    assert out == "ok"
    assert proxy.targets[before:] == [f"127.0.0.1:{kubelet.port}"]


def test_other_nodes_are_dialled_directly(cluster: Cluster) -> None:
    server, _, proxy = cluster
    before = len(proxy.targets)
    assert server.kubectl("get", "--raw", "/api/v1/nodes/cloud-1/proxy/healthz").stdout == "ok"
    assert proxy.targets[before:] == []


def test_logs_through_the_proxy(cluster: Cluster) -> None:
    server, _, _ = cluster
    assert "pod default/edge-pod started" in server.kubectl("logs", "edge-pod").stdout


@pytest.mark.root  # exec gives the command a UTS namespace named after the pod
def test_exec_through_the_proxy(cluster: Cluster) -> None:
    server, _, _ = cluster
    assert server.kubectl("exec", "edge-pod", "--", "hostname").stdout == "edge-pod\n"


def test_a_proxy_refusal_is_a_403_and_no_route_a_503(cluster: Cluster) -> None:
    server, _, _ = cluster
    refused = server.kubectl("get", "--raw", "/api/v1/nodes/edge-refused/proxy/healthz",
                             check=False)
    assert "Forbidden" in refused.stderr and "refused the connection to 127.0.0.1:1" in \
        refused.stderr
    noroute = server.kubectl("get", "--raw", "/api/v1/nodes/edge-noroute/proxy/healthz",
                             check=False)
    assert "ServiceUnavailable" in noroute.stderr or "503" in noroute.stderr
    assert "cannot reach 127.0.0.1:2" in noroute.stderr


def test_no_proxy_up_is_a_503_and_the_server_keeps_serving(cluster: Cluster) -> None:
    server, _, proxy = cluster
    proxy.close()
    result = server.kubectl("get", "--raw", "/api/v1/nodes/edge-1/proxy/healthz", check=False)
    assert result.returncode != 0
    assert "reached through an egress proxy and none could connect" in result.stderr
    assert server.kubectl("get", "--raw", "/api/v1/nodes/cloud-1/proxy/healthz").stdout == "ok"
    assert "edge-1" in server.kubectl("get", "nodes").stdout



class BulkKubelet:
    """A TLS server that answers every connection with `size` bytes, then closes."""

    def __init__(self, data_dir: Path, folder: Path, size: int) -> None:
        cert, key = folder / "bulk.crt", folder / "bulk.key"
        security.issue_certificate(data_dir, cert, key, "kubelet-bulk", ["127.0.0.1"])
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(cert), str(key))
        self.size = size
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            raw, _ = self.listener.accept()
            with self.context.wrap_socket(raw, server_side=True) as tls:
                tls.sendall(b"x" * self.size)


def test_a_tunnelled_reader_may_pause_longer_than_the_dial_timeout(tmp_path: Path) -> None:
    """A reader that stops reading (`kubectl logs POD | less`) for longer than the dial timeout
    while megabytes are in flight through a proxy tunnel still gets every byte: the splice
    between the tunnel and the kubelet's TLS waits as long as the relay does (its write
    timeout), not the dial timeout it once used, which cut the stream with no error."""
    data_dir = tmp_path / "api"
    data_dir.mkdir(mode=0o700)
    proxy = ConnectProxy(data_dir, tmp_path)
    kubelet = BulkKubelet(data_dir, tmp_path, 16 << 20)
    cert, key = security.ensure_kubelet_client(data_dir)
    tls = nodedial.client_context(str(data_dir / security.CA_CERT), str(cert), str(key))
    dialer = nodedial.NodeDialer(tls, tls, (nodedial.EgressProxy("127.0.0.1", proxy.port),),
                                 lambda _node: True, timeout=0.5)
    node = node_object("edge-1", "127.0.0.1", kubelet.port)
    sock = dialer.dial(node, nodedial.KubeletEndpoint("edge-1", "127.0.0.1", kubelet.port))
    try:
        time.sleep(2.0)  # the paused reader: 4x the dial timeout with the tunnel full
        sock.settimeout(30)
        got = 0
        while chunk := sock.recv(1 << 16):
            got += len(chunk)
    finally:
        sock.close()
        proxy.close()
        kubelet.listener.close()
    assert got == 16 << 20
