"""Dual-stack pods and IPv6 underlays, through the `raven lab` verbs an operator uses.

Two bundled topologies, each brought up with `raven lab up` (the whole overlay):
- three-pools-dualstack: cloud, cone-NAT and symmetric-NAT pools over IPv4 tunnels, every pod
  with an IPv4 and an IPv6 address (one node IPv6-primary, one pool IPv4-only underneath);
- ipv6-underlay: IPv6-only pool networks (VXLAN over IPv6, gateways dialled at [address]:port),
  a dual-stack edge pool, one IPv6-only node; NAT'd pools behind a stateful IPv6 firewall.
Oracles: ICMP and ICMPv6 actually crossing the lab (`raven lab ping`, `ping -M do`), the
kernel's own view (`ip -json` addresses, VXLAN attributes, route cache), the Node and Gateway
objects from the API server (kubectl), never the lab's own bookkeeping alone.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest
from overlay_support import TOPOLOGIES, lab_ping_until, raven, unique_lab_name

from raven import constants
from raven.lab import cluster, runtime, teardown
from raven.lab import netns as nsutil
from raven.lab.plan import LabPlan

pytestmark = [pytest.mark.root, pytest.mark.slow]

IP_HEADER = {"ipv4": 20, "ipv6": 40}
ICMP_HEADER = 8


@pytest.fixture(scope="module", params=["three-pools-dualstack", "ipv6-underlay"])
def lab(request: pytest.FixtureRequest) -> Iterator[LabPlan]:
    name = unique_lab_name("ds")
    try:
        up = raven("lab", "up", str(TOPOLOGIES / f"{request.param}.yaml"), "--name", name,
                   timeout=400)
        assert up.returncode == 0, up.stderr[-3000:]
        yield runtime.load_plan(name)
    finally:
        teardown.down(name)


def families(addresses: tuple[str, ...]) -> set[str]:
    return {"ipv6" if ":" in a else "ipv4" for a in addresses}


def test_every_pair_answers_over_every_family_both_pods_have(lab: LabPlan) -> None:
    ping = lab_ping_until(lab.name)
    assert ping.returncode == 0, ping.stdout[-3000:]
    pairs = json.loads(ping.stdout)["pairs"]
    pods = [p for _, _, p in lab.pods()]
    want = {(a.name, b.name, f) for a in pods for b in pods if a is not b
            for f in families(a.addresses()) & families(b.addresses())}
    got = {(p["src"], p["dst"], p["family"]) for p in pairs}
    assert got == want and len(pairs) == len(want)
    assert all(p["ok"] for p in pairs)
    assert {p["family"] for p in pairs} == {"ipv4", "ipv6"}
    cross = {(p["src_pool"], p["family"]) for p in pairs if p["src_pool"] != p["dst_pool"]}
    assert {(pool.name, f) for pool in lab.pools for f in ("ipv4", "ipv6")} <= cross


def test_status_lists_every_pod_address_as_the_kernel_has_it(lab: LabPlan) -> None:
    status = raven("lab", "status", lab.name, "--json")
    assert status.returncode == 0, status.stderr
    for pool in json.loads(status.stdout)["pools"]:
        for node in pool["nodes"]:
            for pod in node["pods"]:
                live = [a["local"] for link in nsutil.ip_json(pod["netns"], "address", "show",
                                                              "dev", "eth0")
                        for a in link.get("addr_info", []) if a.get("scope") == "global"]
                assert sorted(pod["ips"]) == sorted(live), pod["name"]
                assert pod["ip"] == pod["ips"][0]
                assert len(pod["ips"]) == len(node["podCIDRs"])


def test_nodes_publish_their_pod_networks_and_underlay_addresses(lab: LabPlan) -> None:
    nodes = {n["metadata"]["name"]: n for n in
             cluster.kubectl_json(lab.name, "get", "nodes")["items"]}
    for _, node in lab.nodes():
        obj = nodes[node.name]
        assert obj["spec"]["podCIDRs"] == list(node.cidrs())
        assert obj["spec"]["podCIDR"] == node.cidrs()[0]
        internal = [a["address"] for a in obj["status"]["addresses"] if a["type"] == "InternalIP"]
        assert internal == list(node.underlay_ips())
        # The kernel has exactly these underlay addresses (an IPv6-only node has no IPv4).
        live = {a["local"] for link in nsutil.ip_json(node.netns, "address", "show", "dev",
                                                       "eth0")
                for a in link.get("addr_info", []) if a.get("scope") == "global"}
        assert live == set(node.underlay_ips()), node.name


def test_ipv6_underlay_pools_run_vxlan_and_wireguard_over_ipv6(lab: LabPlan) -> None:
    v6_pools = [p for p in lab.pools if p.underlay == "ipv6"]
    if not v6_pools:
        pytest.skip("no IPv6-only underlay in this topology")
    for pool in v6_pools:
        for node in pool.nodes:
            out = subprocess.run([*runtime.devices_exec_argv(lab.name, node.name), "ip", "-j", "-d",
                                  "link", "show", "raven0"], capture_output=True, text=True)
            info = json.loads(out.stdout)[0]["linkinfo"]["info_data"]
            assert info.get("local6") == node.underlay_ip6 and "local" not in info, node.name
    # Every public gateway is dialled at an IPv6 address.
    gateways = cluster.kubectl_json(lab.name, "get", "gateways.raven.openyurt.io")["items"]
    public = {p.gateway for p in lab.pools if p.public}
    for gw in gateways:
        for ep in gw.get("status", {}).get("activeEndpoints", []):
            if gw["metadata"]["name"] in public:
                assert ":" in ep["publicIP"], gw["metadata"]["name"]


def test_ipv6_behind_a_nat_router_is_firewalled_not_translated(lab: LabPlan) -> None:
    """A NAT'd pool's nodes reach the cloud over IPv6 with their own addresses, and nothing
    from outside reaches them unsolicited (as a NAT'd IPv4 LAN)."""
    nat6 = [p for p in lab.pools if p.nat != "none" and p.has_v6]
    cloud = next(p for p in lab.pools if p.public)
    if not nat6 or not cloud.has_v6:
        pytest.skip("no NAT'd pool with IPv6 underneath")
    for pool in nat6:
        node = pool.nodes[-1]
        out = nsutil.icmp_probe(node.netns, [cloud.nodes[-1].underlay_ip6], tries=2)
        assert all(v is not None for v in out.values()), out
        inbound = nsutil.icmp_probe(cloud.nodes[-1].netns, [node.underlay_ip6], tries=2)
        assert all(v is None for v in inbound.values()), inbound


def _pmtu_probe(lab: LabPlan, src: str, dst: str, size: int) -> tuple[int, int | None]:
    """(exit status of a DF ping with `size` payload bytes, the path MTU the source's kernel
    then holds for `dst` (`ip -j route get`), None when it learned none)."""
    ping = subprocess.run([*runtime.exec_argv(lab.name, src), "ping", "-n", "-c", "2", "-i",
                           "0.3", "-W", "2", "-M", "do", "-s", str(size), dst],
                          capture_output=True, text=True, timeout=30)
    route = subprocess.run([*runtime.exec_argv(lab.name, src), "ip", "-j", "route", "get", dst],
                           capture_output=True, text=True)
    metrics = json.loads(route.stdout)[0].get("metrics", [])
    mtu = next((m["mtu"] for m in metrics if isinstance(m, dict) and "mtu" in m), None)
    return ping.returncode, mtu


def test_full_size_df_pings_pass_and_one_byte_more_fails_with_the_path_mtu(lab: LabPlan) -> None:
    """Across pools the path MTU is the WireGuard MTU (underlay - 80) for both families; the
    largest unfragmented ICMP payload is 20 bytes smaller for IPv6 (its header is longer)."""
    src_pool, dst_pool = lab.pools[0], lab.pools[-1]
    src = next(p for n in src_pool.nodes if not n.gateway_candidate for p in n.pods)
    dst = next(p for n in dst_pool.nodes for p in n.pods if families(p.addresses()) ==
               {"ipv4", "ipv6"})
    mtu = min(src_pool.mtu, dst_pool.mtu) - constants.WIREGUARD_OVERHEAD
    tried = 0
    for address in dst.addresses():
        family = "ipv6" if ":" in address else "ipv4"
        if family not in families(src.addresses()):
            continue
        tried += 1
        payload = mtu - IP_HEADER[family] - ICMP_HEADER
        status, _ = _pmtu_probe(lab, src.name, address, payload)
        assert status == 0, f"{family}: a {payload}-byte DF ping did not pass"
        status, learned = _pmtu_probe(lab, src.name, address, payload + 1)
        assert status != 0, f"{family}: a {payload + 1}-byte DF ping passed"
        assert learned == mtu, f"{family}: the source learned path MTU {learned}, not {mtu}"
    assert tried == 2
