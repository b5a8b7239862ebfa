"""Proxy pieces without sockets: certificates (issue, identity, renewal time, CA checks) and the
OpenYurt compatibility objects the controller keeps (raven.proxy.compat), and the status line."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from raven import constants
from raven.commands.status import _proxy_lines
from raven.model import Gateway, Node
from raven.proxy import certs
from raven.proxy.compat import compat_objects

NOW = 1_700_000_000.0


@pytest.fixture(scope="module")
def ca() -> certs.CA:
    return certs.make_ca("test", 3600, time.time())


def test_leaf_identity_lifetime_and_renewal(ca: certs.CA) -> None:
    leaf = certs.issue(ca, "edge-1", certs.ORG_AGENT, 300, time.time(), ["198.18.2.10", "bad"])
    cert = x509.load_pem_x509_certificate(leaf.cert_pem)
    der = cert.public_bytes(serialization.Encoding.DER)
    assert certs.peer_identity(der) == ("edge-1", certs.ORG_AGENT)
    assert leaf.not_after - leaf.issued_at == pytest.approx(300, abs=1)
    # renewed at two thirds of the lifetime counted from issue (not the skew-backdated start)
    assert leaf.renew_at() == pytest.approx(leaf.issued_at + 200, abs=1)
    never_beyond_ca = certs.issue(ca, "x", certs.ORG_AGENT, 10 ** 7, time.time())
    assert never_beyond_ca.not_after <= ca.cert.not_valid_after_utc.timestamp()


def test_peer_identity_without_a_certificate() -> None:
    assert certs.peer_identity(None) == ("", "")


def test_ca_checks_name_the_source(ca: certs.CA, tmp_path: Path) -> None:
    leaf = certs.issue(ca, "n", certs.ORG_AGENT, 60, time.time())
    with pytest.raises(certs.CertError, match="not a CA"):
        certs.load_ca(leaf.cert_pem, leaf.key_pem, "here")
    other = certs.make_ca("other", 60, time.time())
    with pytest.raises(certs.CertError, match="does not belong"):
        certs.load_ca(ca.cert_pem, other.key_pem, "here")
    with pytest.raises(certs.CertError, match="here: not a PEM"):
        certs.load_ca(b"junk", b"junk", "here")
    with pytest.raises(certs.CertError, match="No such file"):
        certs.load_ca_files(tmp_path / "a", tmp_path / "b")
    secret = certs.ca_secret(ca)
    assert certs.ca_from_secret(secret) == ca
    secret["data"]["tls.key"] = "!!"
    with pytest.raises(certs.CertError, match="Secret kube-system/raven-proxy-ca"):
        certs.ca_from_secret(secret)
    assert base64.b64decode(certs.ca_secret(ca)["data"]["tls.crt"]) == ca.cert_pem


def _node(name: str, ip: str, pool: str) -> Node:
    return Node.from_k8s({"apiVersion": "v1", "kind": "Node",
                          "metadata": {"name": name, "labels": {constants.GATEWAY_LABEL: pool}},
                          "status": {"addresses": [{"type": "InternalIP", "address": ip}]}})


def _gw(name: str, nat: bool, members: dict[str, str], proxy: str | None,
        ports: dict[str, str] | None = None) -> Gateway:
    return Gateway.from_k8s({
        "apiVersion": "raven.openyurt.io/v1beta1", "kind": "Gateway", "metadata": {"name": name},
        "spec": {"proxyConfig": {"Replicas": 1, **(ports or {})},
                 "endpoints": [{"nodeName": n, "type": "proxy", "underNAT": nat}
                               for n in members]},
        "status": {"nodes": [{"nodeName": n, "privateIP": ip} for n, ip in members.items()],
                   "activeEndpoints": [{"nodeName": proxy, "type": "proxy", "underNAT": nat}]
                   if proxy else []}})


NODES = {"c1": _node("c1", "198.18.1.10", "gw-c"), "c2": _node("c2", "198.18.1.11", "gw-c"),
         "e1": _node("e1", "198.18.2.10", "gw-e"), "e2": _node("e2", "198.18.2.11", "gw-e")}


def test_compat_objects_point_at_the_proxy_servers() -> None:
    gws = [_gw("gw-c", False, {"c1": "198.18.1.10", "c2": "198.18.1.11"}, "c1",
               {"proxyHTTPSPort": "10250, 9445", "proxyHTTPPort": "10255"}),
           _gw("gw-e", True, {"e1": "198.18.2.10", "e2": "198.18.2.11"}, "e1")]
    want = compat_objects(gws, NODES, 10263)
    svc = want.service()
    assert [(p["name"], p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [
        ("http-10255", 10255, 10263), ("https-10250", 10250, 10263), ("https-9445", 9445, 10263)]
    assert want.endpoints()["subsets"][0]["addresses"] == [{"ip": "198.18.1.10",
                                                            "nodeName": "c1"}]
    assert want.dns_records(NODES, "").splitlines() == [
        "198.18.1.10\tc1", "198.18.1.10\te1", "198.18.1.10\te2", "198.18.1.11\tc2"]
    assert "10.96.0.9\te2" in want.dns_records(NODES, "10.96.0.9")
    # An existing object keeps what is not ours (labels, resourceVersion).
    old = {"metadata": {"name": "x-raven-proxy-internal-svc", "namespace": "kube-system",
                        "resourceVersion": "5", "labels": {"team": "a"}},
           "spec": {"clusterIP": "10.96.0.9", "selector": {"app": "x"}}}
    merged = want.service(old)
    assert merged["metadata"]["resourceVersion"] == "5"
    assert merged["metadata"]["labels"]["team"] == "a"
    assert merged["spec"]["clusterIP"] == "10.96.0.9" and "selector" not in merged["spec"]


def test_without_a_proxy_server_every_node_resolves_to_itself() -> None:
    gws = [_gw("gw-c", False, {"c1": "198.18.1.10"}, None),
           _gw("gw-e", True, {"e1": "198.18.2.10"}, "e1")]
    want = compat_objects(gws, NODES, 10263)
    assert want.addresses == ()
    assert "198.18.2.10\te1" in want.dns_records(NODES, "")


def test_status_lines_show_the_proxy_role() -> None:
    assert _proxy_lines({"role": "server", "listen": ["0.0.0.0:10262", "198.18.1.10:10263"],
                         "clients": {"gw-e": ["e1"]}}) == [
        "proxy:          server on 0.0.0.0:10262, 198.18.1.10:10263; clients gw-e: e1"]
    lines = _proxy_lines({"role": "client", "pool": "gw-e", "servers": ["c1 1.2.3.4:10262"],
                          "connected": [], "lastError": "proxy certificate: no CA"})
    assert lines == ["proxy:          client of pool gw-e; connected to 0/1 server(s): none",
                     "proxy error:    proxy certificate: no CA"]
    assert _proxy_lines(None) == [] and _proxy_lines("junk") == []
