"""Routing of the kubelet subresources (pure) and the nodes/proxy name forms."""

from __future__ import annotations

import pytest

from raven.apiserver.nodedial import address_problem, kubelet_endpoint, split_node_name
from raven.apiserver.resources import Registry
from raven.apiserver.routing import route
from raven.apiserver.status import ApiError

REGISTRY = Registry()


def test_node_proxy_keeps_the_kubelet_path() -> None:
    target = route("GET", "/api/v1/nodes/n1/proxy/metrics/cadvisor", REGISTRY)
    assert target.resource is not None
    assert (target.resource.name, target.resource.subresource,
            target.resource.proxy_segments) == ("n1", "proxy", ("metrics", "cadvisor"))


@pytest.mark.parametrize("sub", ["log", "exec", "attach"])
def test_pod_connect_subresources_route(sub: str) -> None:
    target = route("GET", f"/api/v1/namespaces/default/pods/web-0/{sub}", REGISTRY)
    assert target.resource is not None and target.resource.subresource == sub


@pytest.mark.parametrize("path", [
    "/api/v1/namespaces/default/pods/web-0/log/extra",  # only nodes/proxy goes deeper
    "/api/v1/namespaces/default/pods/web-0/proxy",
    "/api/v1/nodes/n1/exec",
    "/api/v1/watch/namespaces/default/pods/web-0/log",
    "/api/v1/namespaces/default/configmaps/x/log",
])
def test_other_subresources_are_not_found(path: str) -> None:
    with pytest.raises(ApiError) as err:
        route("GET", path, REGISTRY)
    assert err.value.code == 404


@pytest.mark.parametrize(("text", "expected"), [
    ("n1", ("n1", None)), ("n1:10250", ("n1", 10250)), ("https:n1:10250", ("n1", 10250)),
    ("https:n1:", ("n1", None)),
])
def test_node_name_forms(text: str, expected: tuple[str, int | None]) -> None:
    assert split_node_name(text) == expected


@pytest.mark.parametrize("text", ["http:n1:80", "n1:port", "n1:99999", "a:b:c:d"])
def test_bad_node_name_forms_are_400(text: str) -> None:
    with pytest.raises(ApiError) as err:
        split_node_name(text)
    assert err.value.code == 400


def node(address: str, port: int | None = None) -> dict:
    status: dict = {"addresses": [{"type": "Hostname", "address": "n1"},
                                  {"type": "InternalIP", "address": address}]}
    if port is not None:
        status["daemonEndpoints"] = {"kubeletEndpoint": {"Port": port}}
    return {"metadata": {"name": "n1"}, "status": status}


def test_kubelet_endpoint_defaults_to_10250_and_the_internal_ip() -> None:
    endpoint = kubelet_endpoint(node("198.18.1.11"), None, ())
    assert (endpoint.host, endpoint.port) == ("198.18.1.11", 10250)
    assert kubelet_endpoint(node("198.18.1.11", 10350), 10350, ()).port == 10350


def test_another_port_than_the_kubelets_is_403() -> None:
    with pytest.raises(ApiError) as err:
        kubelet_endpoint(node("198.18.1.11"), 22, ())
    assert err.value.code == 403 and "kubelet port 10250" in err.value.message


@pytest.mark.parametrize(("address", "bad"), [
    ("169.254.169.254", True), ("224.0.0.1", True), ("0.0.0.0", True), ("fe80::1", True),
    ("not-an-ip", True), ("198.18.1.11", False), ("10.0.0.1", True),
])
def test_address_problems_inside_the_lab_networks(address: str, bad: bool) -> None:
    import ipaddress

    networks = (ipaddress.ip_network("198.18.0.0/15"),)
    assert (address_problem(address, networks) is not None) == bad


@pytest.mark.parametrize(("fields", "words"), [
    ({"kubelet_networks": ("198.18.0.0/15", "not-a-net")}, "'not-a-net' is not a network"),
    ({"raven_proxy_ca": "ca.crt"}, "raven_proxy_ca and raven_proxy_ca_key go together"),
    ({"kubelet_client_key": "k.key"}, "kubelet_client_cert and kubelet_client_key go together"),
    ({"kubelet_timeout": 0}, "kubelet_timeout must be more than 0"),
    ({"raven_proxy_port": 70000}, "raven_proxy_port must be a port number"),
])
def test_kubelet_settings_refuse_nonsense(tmp_path, fields: dict, words: str) -> None:
    from raven.apiserver.errors import ApiServerError
    from raven.apiserver.settings import ApiServerSettings

    with pytest.raises(ApiServerError) as err:
        ApiServerSettings(data_dir=tmp_path, **fields)
    assert words in str(err.value)


def test_a_bad_egress_selector_stops_the_start_with_its_message(tmp_path) -> None:
    from raven.apiserver.errors import ApiServerError
    from raven.apiserver.server import ApiServer
    from raven.apiserver.settings import ApiServerSettings

    server = ApiServer(ApiServerSettings(data_dir=tmp_path, port=0, egress_selector="a in (",
                                         egress_proxies=("127.0.0.1:1",)))
    try:
        with pytest.raises(ApiServerError) as err:
            server.bind()
        assert "egress settings" in str(err.value)
    finally:
        server.shutdown()
