"""`raven status` lists a pool's active gateways from the agent's status file
(raven.agent.gateway_names): each tunnel gateway once, not the proxy endpoint's entry too."""

from __future__ import annotations

from raven.agent import gateway_names
from raven.model import PROXY, TUNNEL, Endpoint, Gateway, GatewayStatus


def test_a_gateway_that_is_also_the_proxy_endpoint_is_listed_once() -> None:
    gw = Gateway("gw-shop", status=GatewayStatus(active_endpoints=(
        Endpoint("shop-2", TUNNEL), Endpoint("shop-2", PROXY))))
    assert gateway_names(gw) == ["shop-2"]


def test_active_active_gateways_are_listed_in_order() -> None:
    gw = Gateway("gw-farm", status=GatewayStatus(active_endpoints=(
        Endpoint("farm-a", TUNNEL), Endpoint("farm-c", TUNNEL), Endpoint("farm-a", PROXY))))
    assert gateway_names(gw) == ["farm-a", "farm-c"]
