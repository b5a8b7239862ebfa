"""The agent's side of the tunnel-namespace shape (docs/tunnel-namespace.md), without root: what
reads the applied plan finds the devices in its tunnel part (`NodeState.devices`), the warm
standby additions go there, and the prober follows the devices into the tunnel namespace."""

from __future__ import annotations

import socket
from dataclasses import replace

from raven import standby
from raven.agent import warm
from raven.failover import ProbeSettings, Target
from raven.healthprobe.prober import Prober
from raven.settings import AgentSettings
from raven.topology import PlanOptions, plan_node
from tests.unit.test_topology import three_pools

ON = replace(PlanOptions(), tunnel_namespace=True)


def test_devices_are_the_tunnel_part_when_there_is_one() -> None:
    shaped = plan_node(three_pools(), "c1", ON)
    assert shaped.devices() is shaped.tunnel
    assert shaped.devices().wireguard is not None and shaped.wireguard is None
    plain = plan_node(three_pools(), "c1")
    assert plain.devices() is plain


def test_warm_standby_additions_go_into_the_tunnel_part() -> None:
    gateways = three_pools()
    shaped = plan_node(gateways, "c1", ON)
    settings = AgentSettings(node="c1", overlay=ON)
    warmed = warm(shaped, gateways, settings)
    assert warmed.tunnel == standby.warm(shaped.tunnel, gateways, "c1", ON)
    assert warmed.tunnel.wireguard is not None
    # the node's part is untouched: no device appears in the node's namespace
    assert replace(warmed, tunnel=None) == replace(shaped, tunnel=None)
    plain = plan_node(gateways, "c1")
    assert warm(plain, gateways, AgentSettings(node="c1")) == standby.warm(plain, gateways, "c1")


def test_prober_follows_the_devices_into_the_tunnel_namespace() -> None:
    prober = Prober(ProbeSettings(), lambda: None, netns=None)
    target = Target("gw-a", "n1", "127.0.0.1", "raven0")
    prober.set_targets([target], "127.0.0.1")
    assert prober.netns is None
    open_one = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    prober._socks["raven0"] = open_one  # a socket bound in the node's namespace
    prober.set_targets([target], "127.0.0.1", "lab.n1-tun")
    assert prober.netns == "lab.n1-tun"
    assert prober._socks == {} and open_one.fileno() == -1  # closed: it belongs to the old one
    prober.set_targets([target], "127.0.0.1")  # the plan lost its tunnel part
    assert prober.netns is None


def test_status_reads_the_devices_from_the_tunnel_part() -> None:
    """`raven status` and `raven diagnose` read an applied plan from the agent's status file
    (JSON): with a tunnel part, the peers and their relays are found there, not at the top."""
    from raven.commands import status

    shaped = plan_node(three_pools(), "c1", ON).to_json()
    plain = plan_node(three_pools(), "c1").to_json()
    assert shaped["wireguard"] is None  # what the commands used to read: no peers
    assert status.plan_devices(shaped)["wireguard"] == plain["wireguard"]
    assert status.plan_devices(plain) is plain
    assert status.relays({"plan": shaped}) == status.relays({"plan": plain})
