"""Issue 12 case (c) for sources on a punched direct path, on acceptance-mesh: `shop`
(full-cone, candidates shop-1 and shop-2) is direct with `depot` (cone); the pool is cut off
the control plane, then its active gateway is powered off. The gateway of `depot` probes
shop's gateway over the direct path (raven.failover.probe_targets(direct=...)) and gives the
path up as soon as the probes see it DOWN, instead of after the path's silence timeout
(`PathSettings.dead_after`). Oracles: `wg show raven-wg0 dump` in depot-1 (the relay's peer
takes shop's pod networks back), a 50 pps `ping -D` from depot's member pod to shop's
member pod (and from a public pool's pod, for comparison), and depot-1's agent status for the
cause. No wall-clock threshold: the pauses are printed (bench/acceptance.py reports them).
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator

import paths_support as ps
import pytest
from overlay_support import overlay_lab

from raven.lab import cluster, faults, runtime
from raven.lab.plan import LabPlan, PoolPlan

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def lab() -> Iterator[LabPlan]:
    with overlay_lab("acceptance-mesh.yaml", area="dfo") as plan:
        yield plan


def member_pod(p: PoolPlan):
    return next(n for n in p.nodes if not n.gateway_candidate).pods[0]


def shop_peer(plan: LabPlan, observer: str) -> ps.WgPeer | None:
    """The peer of `observer`'s raven-wg0 that holds shop's pod networks."""
    shop = ps.pool(plan, "shop")
    cidrs = {n.pod_cidr for n in shop.nodes}
    return next((p for p in ps.peers(plan.name, observer).values()
                 if cidrs <= set(p.allowed_ips)), None)


def direct_to_shop(plan: LabPlan) -> bool:
    peer = shop_peer(plan, "depot-1")
    return (peer is not None and peer.endpoint is not None
            and peer.endpoint.startswith(ps.pool(plan, "shop").wan_ip + ":"))


def relayed_to_shop(plan: LabPlan) -> bool:
    """Shop's pod networks are on a peer that is not at shop's NAT (the relay's)."""
    peer = shop_peer(plan, "depot-1")
    return peer is not None and not direct_to_shop(plan)


def agent_log(plan: LabPlan, node: str) -> str:
    with contextlib.suppress(OSError):
        return runtime.log_path(plan.name, node, cluster.AGENT).read_text(errors="replace")
    return ""


def answers(pod, ip: str) -> bool:
    return subprocess.run(["ip", "netns", "exec", pod.netns, "ping", "-c", "1", "-W", "1", ip],
                          capture_output=True).returncode == 0


def test_a_direct_path_to_a_dead_gateway_goes_to_the_relay_on_the_probes(lab: LabPlan) -> None:
    shop, depot, east = (ps.pool(lab, n) for n in ("shop", "depot", "hub-east"))
    took = ps.wait_for(lambda: direct_to_shop(lab), 90.0, "depot <-> shop direct")
    print(f"\ndepot-1 direct to shop after {took:.1f}s")
    target = member_pod(shop)
    direct_src = ps.Pinger(member_pod(depot).netns, target.ip)
    public_src = ps.Pinger(member_pod(east).netns, target.ip)
    seen = len(agent_log(lab, "depot-1"))
    fault = 0.0
    try:
        faults.disconnect(lab.name, "shop")
        fault = time.time()  # the power-off comes just after: the pauses start later
        failed = faults.gateway_fail(lab.name, "shop")
        ps.wait_for(lambda: relayed_to_shop(lab), 30.0, "shop's networks back on the relay")
        ps.wait_for(lambda: GAVE_UP in agent_log(lab, "depot-1")[seen:], 30.0,
                    "depot-1 gives the path up on its probes")
        for pod in (member_pod(depot), member_pod(east)):
            ps.wait_for(lambda pod=pod: answers(pod, target.ip), 30.0, f"{pod.name} answered")
    finally:
        _, direct_stamps = direct_src.stop()
        _, public_stamps = public_src.stop()
        faults.reconnect(lab.name, "shop")
    later = agent_log(lab, "depot-1")[seen:]
    gap_direct = ps.longest_gap(direct_stamps, fault)
    gap_public = ps.longest_gap(public_stamps, fault)
    print(f"failed {failed}; pause in the 50 pps ping to {target.name}: from depot (direct "
          f"path) {gap_direct:.2f}s, from hub-east {gap_public:.2f}s")
    assert direct_stamps and direct_stamps[-1] > fault, "depot's ping did not recover"
    assert public_stamps and public_stamps[-1] > fault, "hub-east's ping did not recover"
    # The path gave up on the probes' verdict, before its silence timeout could.
    silent = later.find("direct path silent")
    assert silent == -1 or later.find(GAVE_UP) < silent, later[-2000:]


GAVE_UP = "stopped answering probes over the direct path"
