"""`raven apiserver` as an operator runs it: flags, refusals without tracebacks, plain HTTP,
certificate names, graceful stop."""

from __future__ import annotations

import ipaddress
import socket
import subprocess
import sys
from pathlib import Path

import yaml
from apiserver_support import ROOT, start_apiserver_process
from cryptography import x509
from kubernetes import client


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "raven.cli", "apiserver", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_plain_http_is_refused_off_loopback(tmp_path: Path) -> None:
    result = run_cli("--data-dir", str(tmp_path / "d"), "--listen", "192.0.2.1:8080",
                     "--plain-http")
    assert result.returncode == 1
    assert "only allowed on loopback" in result.stderr and "Traceback" not in result.stderr


def test_bad_listen_and_busy_port_are_clear_errors(tmp_path: Path) -> None:
    bad = run_cli("--data-dir", str(tmp_path / "d"), "--listen", "nonsense")
    assert bad.returncode == 1 and "HOST:PORT" in bad.stderr and "Traceback" not in bad.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("--data-dir", str(tmp_path / "d"), "--listen", f"127.0.0.1:{port}")
    assert result.returncode == 1 and "cannot listen" in result.stderr
    assert "Traceback" not in result.stderr


def test_plain_http_on_loopback_with_token(tmp_path: Path) -> None:
    server = start_apiserver_process(tmp_path / "plain", "--plain-http")
    try:
        assert server.url.startswith("http://127.0.0.1:")
        config = yaml.safe_load(server.kubeconfig.read_text())
        assert config["users"][0]["user"]["token"] == server.token
        api_client = server.api_client()
        names = {n.metadata.name for n in client.CoreV1Api(api_client).list_namespace().items}
        assert "kube-node-lease" in names
        api_client.close()
    finally:
        assert server.stop() == 0


def test_serving_certificate_names_and_kubeconfig(tmp_path: Path) -> None:
    server = start_apiserver_process(tmp_path / "tls", "--tls-san", "raven.example")
    try:
        cert = x509.load_pem_x509_certificate((server.data_dir / "apiserver.crt").read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
        assert {"localhost", "raven.example"} <= set(san.get_values_for_type(x509.DNSName))
        config = yaml.safe_load(server.kubeconfig.read_text())
        cluster = config["clusters"][0]["cluster"]
        assert cluster["server"] == server.url and cluster["certificate-authority-data"]
        for name in ("token", "ca.key", "apiserver.key", "admin.kubeconfig"):
            assert (server.data_dir / name).stat().st_mode & 0o077 == 0, name
        assert server.kubectl("get", "namespaces", "-o", "name").stdout.count("namespace/") >= 4
    finally:
        assert server.stop() == 0  # SIGTERM: graceful, exit code 0
    assert "Traceback" not in server.log()
