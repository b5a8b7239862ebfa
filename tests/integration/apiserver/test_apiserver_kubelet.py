"""pods/log, pods/exec and nodes/proxy through the embedded API server to a real kubelet
stand-in process (raven.lab.kubelet_api, TLS both ways), with kubectl and the official client.

The API server runs with `--kubelet-network 127.0.0.0/8`: node addresses elsewhere are refused.
"""

from __future__ import annotations

import json
import selectors
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from apiserver_support import ApiServerProcess, start_apiserver_process
from kubelet_support import (
    KubeletProcess,
    node_object,
    pod_entry,
    pod_object,
    start_kubelet_process,
)
from kubernetes import client
from kubernetes.stream import stream

from raven.lab.kubelet_api import log_line


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[ApiServerProcess, KubeletProcess, Path]]:
    """An API server, one kubelet (node n1) with pod web-0 (container main), and the objects."""
    folder = tmp_path_factory.mktemp("kubelet")
    server = start_apiserver_process(folder / "api", "--kubelet-network", "127.0.0.0/8")
    kubelet = None
    try:
        kubelet = start_kubelet_process(server.data_dir, folder, "n1",
                                        [pod_entry("web-0", folder)])
        objects = [kubelet.node_object(), pod_object("web-0", "n1"),
                   pod_object("two-0", "n1") | {"spec": {"nodeName": "n1", "containers": [
                       {"name": "a"}, {"name": "b"}]}},
                   pod_object("lost-0", "nowhere"),
                   pod_object("unscheduled-0", "") | {"spec": {"containers": [{"name": "x"}]}},
                   node_object("far", "10.1.2.3", 10250),
                   node_object("metadata", "169.254.169.254", 80),
                   node_object("down", "127.0.0.1", _closed_port())]
        server.kubectl("create", "-f", "-", input="\n".join(json.dumps(o) for o in objects))
        yield server, kubelet, folder
    finally:
        if kubelet is not None:
            kubelet.stop()
        server.stop()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def api(cluster: tuple[ApiServerProcess, KubeletProcess, Path]) -> Iterator[Any]:
    api_client = cluster[0].api_client()
    try:
        yield api_client
    finally:
        api_client.close()


def kubectl(cluster: tuple[ApiServerProcess, KubeletProcess, Path], *args: str,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
    return cluster[0].kubectl(*args, input=input, check=False)


# --- nodes/proxy ------------------------------------------------------------------------------

def test_node_proxy_healthz_and_metrics_with_kubectl(cluster: Any) -> None:
    assert kubectl(cluster, "get", "--raw", "/api/v1/nodes/n1/proxy/healthz").stdout == "ok"
    metrics = kubectl(cluster, "get", "--raw", "/api/v1/nodes/n1/proxy/metrics").stdout
    assert "kubelet_running_pods 1.0" in metrics
    assert 'kubelet_http_requests_total{path="/healthz"}' in metrics


def test_node_proxy_with_the_python_client(api: Any, cluster: Any) -> None:
    core = client.CoreV1Api(api)
    assert core.connect_get_node_proxy_with_path("n1", "healthz") == "ok"
    # NODE:PORT naming the kubelet's own port is allowed (kube's name form)
    port = cluster[1].port
    assert core.connect_get_node_proxy_with_path(f"n1:{port}", "healthz") == "ok"
    pods = json.loads(core.connect_get_node_proxy_with_path(
        "n1", "pods", _preload_content=False).data)
    assert [p["metadata"]["name"] for p in pods["items"]] == ["web-0"]


@pytest.mark.parametrize(("path", "code", "words"), [
    ("/api/v1/nodes/n1:22/proxy/", 403, "only the node's kubelet port"),
    ("/api/v1/nodes/8.8.8.8/proxy/healthz", 403, "8.8.8.8 is not a node of this cluster"),
    ("/api/v1/nodes/far/proxy/healthz", 403, "outside the allowed node networks"),
    ("/api/v1/nodes/metadata/proxy/healthz", 403, "link-local"),
    ("/api/v1/nodes/nosuch/proxy/healthz", 404, 'nodes "nosuch" not found'),
    ("/api/v1/nodes/ftp:n1:21/proxy/", 400, "https only"),
    ("/api/v1/nodes/n1/proxy/a/%2E%2E/healthz", 400, "not allowed"),
])
def test_node_proxy_refusals_are_clear_statuses(cluster: Any, path: str, code: int,
                                                words: str) -> None:
    status = _raw(cluster[0], "GET", path)
    assert status["code"] == code, status
    assert words in status["message"]


def test_a_kubelet_that_is_down_is_a_503_and_the_server_keeps_serving(cluster: Any) -> None:
    status = _raw(cluster[0], "GET", "/api/v1/nodes/down/proxy/healthz")
    assert status["code"] == 503
    assert "cannot be reached" in status["message"] and "node 'down'" in status["message"]
    assert kubectl(cluster, "get", "nodes", "-o", "name").stdout.split() == [
        "node/down", "node/far", "node/metadata", "node/n1"]
    assert kubectl(cluster, "get", "--raw", "/api/v1/nodes/n1/proxy/healthz").stdout == "ok"


def test_the_kubelet_refuses_clients_without_a_cluster_certificate(cluster: Any) -> None:
    server, kubelet, _ = cluster
    context = ssl.create_default_context(cafile=str(server.data_dir / "ca.crt"))
    with socket.create_connection(("127.0.0.1", kubelet.port), timeout=10) as raw, \
            pytest.raises((ssl.SSLError, ConnectionError)), \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        if not tls.recv(100):  # TLS 1.3: the refusal arrives with the first read
            raise ConnectionError("closed")


# --- pods/log -----------------------------------------------------------------------------------

def test_kubectl_logs_tail_and_timestamps(cluster: Any) -> None:
    _, _, folder = cluster
    with open(folder / "web-0.log", "a") as handle:
        handle.write(log_line("second line", time.time()))
    out = kubectl(cluster, "logs", "web-0").stdout.splitlines()
    assert out[0].startswith("pod default/web-0 started on node n1")
    assert out[-1] == "second line"
    stamped = kubectl(cluster, "logs", "web-0", "--tail=1", "--timestamps").stdout.splitlines()
    assert len(stamped) == 1 and stamped[0].endswith("Z second line")
    assert kubectl(cluster, "logs", "web-0", "--limit-bytes=3").stdout == "pod"


def test_logs_with_the_python_client(api: Any) -> None:
    text = client.CoreV1Api(api).read_namespaced_pod_log("web-0", "default", tail_lines=1)
    assert text.endswith("\n") and len(text.splitlines()) == 1


def test_kubectl_logs_follow_streams_new_lines_and_ends_with_its_client(cluster: Any) -> None:
    server, kubelet, folder = cluster
    proc = subprocess.Popen(["kubectl", "--kubeconfig", str(server.kubeconfig), "logs", "-f",
                             "web-0", "--tail=0"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        _wait_for(lambda: _established(kubelet.port) >= 1, "the follow stream to open")
        # The kubelet may still be reading the file's end (--tail=0 drops what is there), so
        # lines are appended until one arrives; a bounded wait on each, never a blocking read.
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            for attempt in range(60):
                with open(folder / "web-0.log", "a") as handle:
                    handle.write(log_line(f"followed line {attempt}", time.time()))
                if selector.select(timeout=1.0):
                    break
            else:
                raise AssertionError("kubectl logs -f showed none of 60 appended lines")
        assert proc.stdout.readline().startswith("followed line ")
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
    # The relay and the kubelet's follow loop both end: no connection stays open.
    _wait_for(lambda: _established(kubelet.port) == 0, "the kubelet connection to close")


@pytest.mark.parametrize(("args", "words"), [
    (("logs", "web-0", "-c", "nope"), "container nope is not valid for pod web-0"),
    (("logs", "lost-0"), 'runs on node "nowhere", which is not registered'),
    (("logs", "unscheduled-0"), "does not have a host assigned"),
])
def test_log_refusals(cluster: Any, args: tuple[str, ...], words: str) -> None:
    result = kubectl(cluster, *args)
    assert result.returncode != 0
    assert words in result.stderr


def test_a_pod_with_several_containers_needs_a_container_name(cluster: Any) -> None:
    status = _raw(cluster[0], "GET", "/api/v1/namespaces/default/pods/two-0/log")
    assert status["code"] == 400
    assert status["message"] == ("a container name must be specified for pod two-0, choose one "
                                 "of: [a b]")


def test_log_parameters_are_checked(cluster: Any) -> None:
    status = _raw(cluster[0], "GET", "/api/v1/namespaces/default/pods/web-0/log?tailLines=-1")
    assert status["code"] == 400 and "tailLines" in status["message"]


# --- pods/exec ----------------------------------------------------------------------------------

@pytest.mark.root  # the command gets a UTS namespace of its own named after the pod
def test_kubectl_exec_stdout_stderr_and_exit_code(cluster: Any) -> None:
    assert kubectl(cluster, "exec", "web-0", "--", "hostname").stdout == "web-0\n"
    result = kubectl(cluster, "exec", "web-0", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert result.returncode == 3
    assert result.stdout == "out\n"
    assert result.stderr.startswith("err\n")
    assert "command terminated with exit code 3" in result.stderr
    missing = kubectl(cluster, "exec", "web-0", "--", "no-such-command")
    assert missing.returncode == 127 and "no-such-command" in missing.stderr


@pytest.mark.root
def test_kubectl_exec_with_stdin(cluster: Any) -> None:
    result = kubectl(cluster, "exec", "-i", "web-0", "--", "sh", "-c", "tr a-z A-Z",
                     input="hello\n")
    assert (result.returncode, result.stdout) == (0, "HELLO\n"), result.stderr


@pytest.mark.root
def test_exec_with_the_python_client(api: Any) -> None:
    core = client.CoreV1Api(api)
    resp = stream(core.connect_get_namespaced_pod_exec, "web-0", "default",
                  command=["sh", "-c", "hostname; echo e >&2; exit 4"], stderr=True, stdin=False,
                  stdout=True, tty=False, _preload_content=False)
    resp.run_forever(timeout=30)
    assert resp.read_stdout() == "web-0\n"
    assert resp.read_stderr() == "e\n"
    assert resp.returncode == 4
    resp.close()


@pytest.mark.root
def test_exec_with_a_terminal_and_a_resize(api: Any) -> None:
    core = client.CoreV1Api(api)
    resp = stream(core.connect_get_namespaced_pod_exec, "web-0", "default",
                  command=["sh", "-c", "read line; stty size; tty"], stdin=True, stdout=True,
                  stderr=True, tty=True, _preload_content=False)
    resp.write_channel(4, json.dumps({"Width": 100, "Height": 40}))  # before the line: no race
    resp.write_stdin("go\n")
    resp.run_forever(timeout=30)
    out = resp.read_stdout()
    assert "40 100" in out and "/dev/pts/" in out
    assert resp.returncode == 0
    resp.close()


def test_exec_refusals(cluster: Any) -> None:
    base = "/api/v1/namespaces/default/pods"
    no_command = _raw(cluster[0], "GET", f"{base}/web-0/exec?stdout=true", upgrade=True)
    assert no_command["code"] == 400 and "at least 1 command" in no_command["message"]
    no_stream = _raw(cluster[0], "GET", f"{base}/web-0/exec?command=true", upgrade=True)
    assert no_stream["code"] == 400 and "stdin, stdout, stderr" in no_stream["message"]
    plain = _raw(cluster[0], "GET", f"{base}/web-0/exec?command=true&stdout=true")
    assert plain["code"] == 400 and "Upgrade" in plain["message"]
    assert _raw(cluster[0], "GET", f"{base}/nosuch/exec?command=x&stdout=1",
                upgrade=True)["code"] == 404


# --- helpers -------------------------------------------------------------------------------------

def _raw(server: ApiServerProcess, method: str, path: str, upgrade: bool = False
         ) -> dict[str, Any]:
    """One request with the token; the Status of a refusal (or {'code': 200})."""
    import http.client

    context = ssl.create_default_context(cafile=str(server.data_dir / "ca.crt"))
    conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=context, timeout=30)
    headers = {"Authorization": f"Bearer {server.token}"}
    if upgrade:
        headers |= {"Connection": "Upgrade", "Upgrade": "websocket",
                    "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                    "Sec-WebSocket-Protocol": "v4.channel.k8s.io"}
    try:
        conn.request(method, path, headers=headers)
        response = conn.getresponse()
        body = response.read(1 << 16)
        if response.status < 300 or response.status == 101:
            return {"code": response.status}
        return json.loads(body)
    finally:
        conn.close()


def _established(port: int) -> int:
    out = subprocess.run(["ss", "-Htn", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True, check=True).stdout
    return len(out.splitlines())


def _wait_for(condition: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
