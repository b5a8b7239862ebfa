"""Active-active gateways with a direct (hole-punched) path, on
test-topologies/acceptance-replicas.yaml (docs/gateway.md §3b and §4a): pool `farm` (cone NAT)
has two active gateways, `mill` (cone NAT) one, `core` is the public relay. Once farm's first
active gateway and mill-a are direct, every pod pair still answers: the direct peer at mill-a
holds only that gateway's share of farm's subnets, the other share stays on the relay peer
(core-a), which gives it to the gateway that carries it. Read from the kernels only
(`wg show raven-wg0 dump`/`allowed-ips`, `ip -j route` through raven.lab.gateway_load, pings
through `raven lab ping`), never from the agents. Before the fix, mill-a's direct peer held all
of farm's subnets and farm-a's share could not reach mill (98/110 pairs).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest
from overlay_support import lab_ping_until, overlay_lab
from paths_support import peers, pool, wait_for

from raven.lab import cluster, runtime
from raven.lab import gateway_load as gl
from raven.lab.plan import LabPlan

pytestmark = [pytest.mark.root, pytest.mark.slow]

@pytest.fixture(scope="module")
def lab() -> Iterator[LabPlan]:
    with overlay_lab("acceptance-replicas.yaml", area="aad") as plan:
        yield plan


def subnets(plan: LabPlan, pool_name: str) -> dict[str, str]:
    """node -> its pod subnet."""
    return {n.name: str(n.pod_cidr) for n in pool(plan, pool_name).nodes}


def direct_farm_gateway(plan: LabPlan, keys: dict[str, str]) -> str | None:
    """The farm gateway mill-a is direct with (both ends: each one's peer for the other aims at
    the other NAT's public address and holds pod subnets of the other pool), or None."""
    farm, mill = pool(plan, "farm"), pool(plan, "mill")
    at_mill = peers(plan.name, "mill-a")
    for gw, key in keys.items():
        peer = at_mill.get(key)
        if peer is None or not peer.allowed_ips or not (peer.endpoint or "").startswith(
                farm.wan_ip + ":"):
            continue
        back = peers(plan.name, gw).get(keys["mill-a"])
        if (back is not None and (back.endpoint or "").startswith(mill.wan_ip + ":")
                and set(subnets(plan, "mill").values()) <= set(back.allowed_ips)):
            return gw
    return None


def test_a_direct_path_to_an_active_active_pool_keeps_every_pair_answering(lab: LabPlan) -> None:
    # The lab is up once every pair answers, which one active gateway can do: wait (a
    # liveness bound) until both carry a share and every node is in one.
    carrier: dict[str, str] = {}

    def two_shares() -> bool:
        carrier.clear()
        carrier.update(gl.gateway_of_nodes(lab, "farm"))
        actives = set(carrier.values())
        return len(actives) == 2 and "" not in actives

    try:
        wait_for(two_shares, 60.0, "both farm gateways carrying a share", poll=0.5)
    except AssertionError as e:
        raise AssertionError(f"{e}; farm nodes send via {carrier}") from None
    actives = sorted(set(carrier.values()))
    keys = {g: gl.public_key(lab.name, g) for g in (*actives, "mill-a", "core-a")}
    found: list[str] = []

    def went_direct() -> bool:
        gw = direct_farm_gateway(lab, {g: keys[g] for g in (*actives, "mill-a")})
        found[:] = [gw] if gw else []
        return gw is not None

    wait_for(went_direct, 180.0, "a farm gateway direct with mill-a", poll=0.5)
    direct_gw = found[0]
    other = next(g for g in actives if g != direct_gw)

    proc = lab_ping_until(lab.name)
    pairs = json.loads(proc.stdout)["pairs"]
    failed = [p for p in pairs if not p["ok"]]
    assert pairs and not failed, failed
    print(f"\n{len(pairs)} pod pairs answer with {direct_gw} direct to mill-a")
    # The path is still direct after the pings (they did not pass through a fallback).
    assert direct_farm_gateway(lab, {g: keys[g] for g in (*actives, "mill-a")}) == direct_gw

    # No subnet on two peers of any gateway (WireGuard would take it from the first).
    for node in (*actives, "mill-a", "core-a", "rig-a"):
        seen: dict[str, str] = {}
        for key, ips in gl.peer_subnets(lab.name, node).items():
            for ip in ips:
                assert ip not in seen, f"{ip} on two peers of {node}: {seen[ip]}, {key}"
                seen[ip] = key

    farm = subnets(lab, "farm")
    at_mill = gl.peer_subnets(lab.name, "mill-a")
    at_core = gl.peer_subnets(lab.name, "core-a")
    for node, subnet in farm.items():
        gw = carrier[node]
        # core-a (the relay) gives each share to the gateway that carries it ...
        assert subnet in at_core.get(keys[gw], set()), (node, gw, at_core)
        # ... and mill-a holds the direct gateway's share on the direct peer, the other
        # share on the relay peer, which reaches its own gateway.
        expected = keys[gw] if gw == direct_gw else keys["core-a"]
        assert subnet in at_mill.get(expected, set()), (node, gw, direct_gw, at_mill)
    # The reverse: the direct gateway sends to mill directly, the other one through the relay.
    for subnet in subnets(lab, "mill").values():
        assert subnet in gl.peer_subnets(lab.name, direct_gw).get(keys["mill-a"], set())
        assert subnet in gl.peer_subnets(lab.name, other).get(keys["core-a"], set())

    # The other active gateway says why its share stays relayed (`raven diagnose` on it).
    texts: list[str] = []

    def explained() -> bool:
        diagnose = subprocess.run(
            [*runtime.node_exec_argv(lab.name, other), sys.executable, "-m", "raven.cli",
             "diagnose", "--kubeconfig", str(cluster.kubeconfig_path(lab.name)),
             "--state-dir", str(cluster.state_dir(lab.name, other))],
            capture_output=True, text=True, timeout=60)
        texts[:] = [diagnose.stdout + diagnose.stderr]
        line = next((ln for ln in diagnose.stdout.splitlines() if "to gw-mill: " in ln), "")
        why = f"active-active pool gw-farm: only its first active gateway {direct_gw}"
        return "relayed via gw-core" in line and why in line

    try:
        wait_for(explained, 60.0, f"raven diagnose on {other} explains the relayed share",
                 poll=1.0)
    finally:
        print("\n" + "".join(texts))
