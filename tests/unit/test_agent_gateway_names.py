"""`raven status` lists a pool's active gateways from the agent's status file
(`activeGateways`, GatewayStatus.tunnel_names): each tunnel gateway once, not the proxy
endpoint's entry too (a node that is also the pool's proxy endpoint has a second active
entry, one per type)."""

from __future__ import annotations

from raven.model import PROXY, TUNNEL, Endpoint, Gateway, GatewayStatus


def test_a_gateway_that_is_also_the_proxy_endpoint_is_listed_once() -> None:
    gw = Gateway("gw-shop", status=GatewayStatus(active_endpoints=(
        Endpoint("shop-2", TUNNEL), Endpoint("shop-2", PROXY))))
    assert list(gw.status.tunnel_names) == ["shop-2"]


def test_active_active_gateways_are_listed_in_order() -> None:
    gw = Gateway("gw-farm", status=GatewayStatus(active_endpoints=(
        Endpoint("farm-a", TUNNEL), Endpoint("farm-c", TUNNEL), Endpoint("farm-a", PROXY))))
    assert list(gw.status.tunnel_names) == ["farm-a", "farm-c"]
