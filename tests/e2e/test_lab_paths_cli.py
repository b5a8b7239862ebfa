"""What `raven status`, `raven diagnose` and `raven graph` say of the pairs with a symmetric
NAT, run in the lab's nodes as an operator runs them, checked against `wg show` on the
gateways and the relay (issue 14, items 5 and 6; docs/gateway.md 4a, "Telemetry").

- nat-kinds (one public pool, so every NAT's mapping kind is unknown): a cone pool's pair with
  the symmetric pool is said to be relayed via the relay whose peer carries it, while a probe
  runs or not; the full-cone pool's direct path to the symmetric pool shows the endpoint its
  WireGuard peer talks to, which is not the port the relay sees ("per destination").
- acceptance-mesh (two public pools: the kinds are known): the port-restricted cone pool and
  the symmetric pool stop probing each other (no probe peer in `wg show`) and say why.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import paths_support as ps
import pytest
from overlay_support import overlay_lab

from raven.lab import cluster, runtime
from raven.lab.plan import LabPlan, PoolPlan

pytestmark = pytest.mark.root

DIRECT_TIMEOUT = 90.0


@pytest.fixture(scope="module")
def kinds() -> Iterator[LabPlan]:
    with overlay_lab("nat-kinds.yaml", "pathcli") as plan:
        yield plan


def cli(lab: LabPlan, node: str, *args: str, state: bool = True) -> str:
    """`raven ARGS` in the node's namespaces, with the lab's kubeconfig (and the node's
    agent state directory)."""
    argv = [*runtime.node_exec_argv(lab.name, node), sys.executable, "-m", "raven.cli", *args]
    if args[0] in ("diagnose", "graph"):
        argv += ["--kubeconfig", str(cluster.kubeconfig_path(lab.name))]
    if state and args[0] in ("status", "diagnose"):
        argv += ["--state-dir", str(cluster.state_dir(lab.name, node))]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"raven {' '.join(args)} on {node}: {proc.stderr}"
    return proc.stdout


def path_line(text: str, gateway: str) -> str:
    """The `raven status` line of one NAT'd pool's path ("  gw-x: ...")."""
    lines = [ln.strip() for ln in text.splitlines() if ln.startswith(f"  {gateway}: ")]
    assert len(lines) == 1, text
    return lines[0]


def carries(lab: LabPlan, node: str, peer_of: PoolPlan, subnets_of: PoolPlan) -> bool:
    """`wg show` on `node`: the peer of `peer_of`'s gateway holds `subnets_of`'s pod subnets."""
    peer = ps.peers(lab.name, node).get(ps.public_key(lab.name, ps.gateway(peer_of)))
    return peer is not None and {n.pod_cidr for n in subnets_of.nodes} <= set(peer.allowed_ips)


def test_a_cone_pools_pair_with_the_symmetric_pool_reads_relayed_via_the_relay(
        kinds: LabPlan) -> None:
    cone, sym, cloud = (ps.pool(kinds, n) for n in ("cone-a", "sym", "cloud"))
    relay = ps.gateway(cloud)
    for _ in range(5):  # whatever the pair's probe is doing at the moment of each look
        status = cli(kinds, ps.gateway(cone), "status")
        line = path_line(status, sym.gateway)
        # The kernel's view, read after the CLI's: the relay's peer carries sym's subnets on
        # cone-a's gateway, and the relay forwards them to sym's gateway.
        assert carries(kinds, ps.gateway(cone), cloud, sym), "cone-a does not relay to sym"
        assert carries(kinds, relay, sym, sym) and carries(kinds, relay, cone, cone)
        print(f"\n{line}")
        assert line.startswith(f"{sym.gateway}: relayed via {cloud.gateway}"), line
        time.sleep(3)
    diagnose = cli(kinds, ps.gateway(cone), "diagnose")
    assert f"to {sym.gateway}: relayed via {cloud.gateway}" in diagnose, diagnose
    graph = cli(kinds, ps.gateway(cone), "graph", state=False)
    assert (f'"{cone.gateway}/{ps.gateway(cone)}" -> "{sym.gateway}/{ps.gateway(sym)}" '
            f'[dir=both, style=dashed, color=gray40, label="relayed via {cloud.gateway}') \
        in graph, graph


def test_a_direct_path_to_the_symmetric_pool_shows_the_port_its_peer_talks_to(
        kinds: LabPlan) -> None:
    full, sym, cloud = (ps.pool(kinds, n) for n in ("full", "sym", "cloud"))
    ps.wait_for(lambda: ps.direct(kinds, sym, full), DIRECT_TIMEOUT, "sym <-> full direct")
    key = ps.public_key(kinds.name, ps.gateway(sym))

    def shown() -> tuple[str, str | None, str | None]:
        line = path_line(cli(kinds, ps.gateway(full), "status"), sym.gateway)
        return (line, ps.peers(kinds.name, ps.gateway(full))[key].endpoint,
                ps.peers(kinds.name, ps.gateway(cloud))[key].endpoint)

    # The status file is rewritten when the path changes: give the agent a moment to record
    # the direct path, then compare with the kernels.
    ps.wait_for(lambda: shown()[0].startswith(f"{sym.gateway}: direct"), 30,
                "full-1's status shows the direct path", poll=1.0)
    line, peer_endpoint, relay_view = shown()
    print(f"\n{line}\nfull-1's peer of sym-1: {peer_endpoint}; the relay's: {relay_view}")
    assert peer_endpoint and relay_view
    assert line.startswith(f"{sym.gateway}: direct to {peer_endpoint}"), line
    # The lab's symmetric NAT gave the direct path a port of its own: the status says so and
    # names the port the public gateways see, instead of showing that port as the path's.
    assert peer_endpoint != relay_view, "the symmetric NAT mapped one port for both"
    assert "maps per destination" in line and relay_view in line, line


@pytest.fixture(scope="module")
def mesh() -> Iterator[LabPlan]:
    with overlay_lab("acceptance-mesh.yaml", "pathcli") as plan:
        yield plan


def test_cone_and_symmetric_with_known_kinds_stop_probing(mesh: LabPlan) -> None:
    depot, truck, shop = (ps.pool(mesh, n) for n in ("depot", "truck", "shop"))
    key = {p.name: ps.public_key(mesh.name, ps.gateway(p)) for p in (depot, truck)}

    def probe_peers() -> list[str]:
        """Probe peers of the pair (a peer of the other gateway with no allowed IPs)."""
        out = []
        for me, other in ((depot, truck), (truck, depot)):
            peer = ps.peers(mesh.name, ps.gateway(me)).get(key[other.name])
            if peer is not None and not peer.allowed_ips:
                out.append(f"{ps.gateway(me)} -> {other.name} at {peer.endpoint}")
        return out

    def explained() -> bool:
        line = path_line(cli(mesh, ps.gateway(depot), "status"), truck.gateway)
        return "port-restricted" in line

    # Two probes fail (12 s each, a backoff slot between them), then the pair is explained.
    took = ps.wait_for(explained, 120, "depot's status explains the pair", poll=2.0)
    ps.wait_for(lambda: not probe_peers(), 30, "the probe peers removed", poll=0.5)
    seen = []
    end = time.monotonic() + 30  # longer than the backoff of a third try would be
    while time.monotonic() < end:
        seen += probe_peers()
        time.sleep(0.5)
    line = path_line(cli(mesh, ps.gateway(depot), "status"), truck.gateway)
    print(f"\nexplained {took:.0f}s after the test began (the lab up): {line}")
    assert seen == [], f"still probed: {sorted(set(seen))}"
    assert line.startswith(f"{truck.gateway}: relayed via "), line
    assert "per destination" in line
    # The control: depot still goes direct with the full-cone pool (whichever of shop's two
    # candidates is active): its status says so and its kernel's peer there holds subnets.
    def direct_to_shop() -> bool:
        text = path_line(cli(mesh, ps.gateway(depot), "status"), shop.gateway)
        return text.startswith(f"{shop.gateway}: direct to {shop.wan_ip}:") and any(
            p.endpoint and p.endpoint.startswith(f"{shop.wan_ip}:") and p.allowed_ips
            for p in ps.peers(mesh.name, ps.gateway(depot)).values())

    ps.wait_for(direct_to_shop, 60, "depot <-> shop direct", poll=1.0)
