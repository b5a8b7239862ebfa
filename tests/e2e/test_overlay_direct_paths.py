"""Direct paths between NAT'd pools on the nat-kinds lab (cloud, two cone pools, a full-cone pool,
a symmetric pool), with the whole overlay running. Oracles: `wg show dump` in the gateways
(paths_support), ping sequence numbers, iperf3's byte counts.

The lab is made by `raven lab up` run as an operator runs it; a watch of the gateways'
devices starts as soon as the lab's nodes exist, so the time from `lab up` to direct is read
from the kernel while `lab up` still runs (docs/gateway.md, 4a, "From `lab up` to direct").
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator

import paths_support as ps
import pytest
from overlay_support import TOPOLOGIES, unique_lab_name

from raven.lab import cluster, faults, nat, runtime, teardown
from raven.lab.plan import LabPlan

pytestmark = pytest.mark.root

DIRECT_TIMEOUT = 60.0  # generous: the machine is shared; the figure is printed
# The requirement (issue 14, item 6): the cone pairs (port-restricted and full cone) are
# direct within 10 s of the start of `raven lab up`. The suite holds no wall-clock threshold
# (a loaded CI machine would turn it into a flake): this test proves the pairs go direct and
# prints the time; `bench/paths.py` reports the figure against the 10 s.
UP_TO_DIRECT = 10.0
CONE_PAIRS = (("cone-a", "cone-b"), ("cone-a", "full"), ("cone-b", "full"))


@pytest.fixture(scope="module")
def lab() -> Iterator[LabPlan]:
    name = unique_lab_name("paths")
    up = ps.LabUp(TOPOLOGIES / "nat-kinds.yaml", name)
    watch = None
    try:
        plan = up.plan()
        watch = ps.DirectWatch(plan, [(ps.pool(plan, a), ps.pool(plan, b))
                                      for a, b in CONE_PAIRS])
        up.wait()
        lab_up[name] = (up, watch)
        yield plan
    finally:
        up.stop()
        if watch is not None:
            watch.stop()
        teardown.down(name)


lab_up: dict[str, tuple[ps.LabUp, ps.DirectWatch]] = {}


def pools(plan: LabPlan, *names: str):
    return [ps.pool(plan, n) for n in names]


def test_cone_pairs_go_direct_after_lab_up(lab: LabPlan) -> None:
    up, watch = lab_up[lab.name]
    first = watch.wait(DIRECT_TIMEOUT)
    took = {f"{a}<->{b}": round(first[(a, b)] - up.started, 2)
            for a, b in CONE_PAIRS if (a, b) in first}
    ready = next((f"{at - up.started_wall:.2f}s" for at, line in up.lines
                  if "overlay ready" in line), "(no line)")
    slow = {pair: t for pair, t in took.items() if t > UP_TO_DIRECT}
    print(f"\ndirect after the start of `raven lab up` (s; upper bounds: a pair is stamped "
          f"after the read that saw it direct): {took}; over {UP_TO_DIRECT:g} s: {slow or 'none'}; "
          f"lab up reported ready after {ready}; lab up's steps:\n"
          + "\n".join(f"  {at - up.started_wall:6.2f} {line}" for at, line in up.lines))
    assert len(took) == len(CONE_PAIRS), f"not direct after {DIRECT_TIMEOUT:g}s: {took}"
    # The kernel agrees now, read afresh.
    for a, b in CONE_PAIRS:
        assert ps.direct(lab, ps.pool(lab, a), ps.pool(lab, b)), f"{a} <-> {b} not direct"


def test_symmetric_reaches_full_cone_directly(lab: LabPlan) -> None:
    # The symmetric side's packet leaves from a port nobody predicted, but a full-cone NAT lets
    # any host in; the full-cone side answers wherever it came from (WireGuard roaming).
    sym, full = pools(lab, "sym", "full")
    took = ps.wait_for(lambda: ps.direct(lab, sym, full), DIRECT_TIMEOUT,
                       "sym <-> full direct")
    print(f"\nsymmetric <-> full-cone direct after {took:.1f}s more")


def test_bulk_traffic_does_not_cross_the_relay(lab: LabPlan) -> None:
    a, b, cloud = pools(lab, "cone-a", "cone-b", "cloud")
    ps.wait_for(lambda: ps.direct(lab, a, b), DIRECT_TIMEOUT, "cone-a <-> cone-b direct")
    # The reference: what the relay's peers of the pair carry idle (the data-path probes of
    # issue 12 to and from the relay's gateway), over as long as the bulk transfer takes.
    started, idle_before = time.monotonic(), ps.relay_bytes(lab, cloud, [a, b])
    time.sleep(3)
    idle_rate = (ps.relay_bytes(lab, cloud, [a, b]) - idle_before) / (time.monotonic() - started)
    relay_before = ps.relay_bytes(lab, cloud, [a, b])
    key_b = ps.public_key(lab.name, ps.gateway(b))
    direct_before = ps.peers(lab.name, ps.gateway(a))[key_b].tx
    started = time.monotonic()
    moved = ps.iperf(lab, a, b, seconds=3)
    relay_growth = ps.relay_bytes(lab, cloud, [a, b]) - relay_before
    background = idle_rate * (time.monotonic() - started)
    direct_growth = ps.peers(lab.name, ps.gateway(a))[key_b].tx - direct_before
    print(f"\niperf3 moved {moved} B; relay peers grew {relay_growth} B (idle rate "
          f"{idle_rate:.0f} B/s: {background:.0f} B expected); direct peer tx grew "
          f"{direct_growth} B")
    assert moved > 1_000_000
    assert direct_growth >= moved  # the bytes went through the direct peer (plus headers)
    assert relay_growth < moved / 100  # keepalives only, not the bulk
    # Beyond its idle rate the relay carried not even a thousandth of the bulk (the floor
    # covers the idle rate's own wobble: RTT echoes every 10 s, keepalives).
    assert relay_growth - background < max(moved / 1000, 64 * 1024)


def test_upgrade_from_relay_loses_no_packet(lab: LabPlan) -> None:
    a, b, cloud = pools(lab, "cone-a", "cone-b", "cloud")
    ps.wait_for(lambda: ps.direct(lab, a, b), DIRECT_TIMEOUT, "cone-a <-> cone-b direct")
    ps.block(lab, a, b)
    try:
        ps.wait_for(lambda: ps.relayed(lab, a, b, cloud), 10, "fall back to the relay")
        pinger = ps.Pinger(ps.pod(lab, a).netns, ps.pod(lab, b).ip)
        time.sleep(1)
    finally:
        ps.unblock(lab)
    took = ps.wait_for(lambda: ps.direct(lab, a, b), DIRECT_TIMEOUT, "direct again")
    time.sleep(1)
    missing, stamps = pinger.stop()
    print(f"\nrelay -> direct {took:.1f}s after the block was lifted; {len(stamps)} replies, "
          f"lost {missing}")
    assert len(stamps) > 100
    # Both gateways move the subnets at one scheduled instant; a write more than ~10 ms late
    # on a loaded machine can cost one packet in flight (docs/gateway.md, Direct paths).
    assert len(missing) <= 1, missing


def test_nat_rebind_recovers(lab: LabPlan) -> None:
    a, b = pools(lab, "cone-a", "cone-b")
    ps.wait_for(lambda: ps.direct(lab, a, b), DIRECT_TIMEOUT, "cone-a <-> cone-b direct")
    pinger = ps.Pinger(ps.pod(lab, a).netns, ps.pod(lab, b).ip)
    time.sleep(1)
    rebound = time.time()
    nat.rebind(lab.name, a.name)
    time.sleep(6)
    missing, stamps = pinger.stop()
    gap = ps.longest_gap(stamps, rebound)
    print(f"\nafter nat-rebind: longest gap between replies {gap:.2f}s; lost {len(missing)}")
    assert stamps and stamps[-1] > rebound + 4, "traffic did not recover after nat-rebind"
    assert gap < 6
    ps.wait_for(lambda: ps.direct(lab, a, b), DIRECT_TIMEOUT, "direct again after nat-rebind")


def test_symmetric_pairs_stay_relayed_and_reachable(lab: LabPlan) -> None:
    a, b, sym, cloud = pools(lab, "cone-a", "cone-b", "sym", "cloud")
    for other in (a, b):
        assert ps.relayed(lab, sym, other, cloud), f"sym <-> {other.name} not via the relay"
        pinger = ps.Pinger(ps.pod(lab, sym).netns, ps.pod(lab, other).ip)
        time.sleep(1)
        missing, stamps = pinger.stop()
        assert len(stamps) > 30 and missing == [], (other.name, missing)
        assert ps.relayed(lab, sym, other, cloud)


def test_telemetry_gateway_status_graph_and_diagnose(lab: LabPlan) -> None:
    a, b = pools(lab, "cone-a", "cone-b")
    ps.wait_for(lambda: ps.direct(lab, a, b), DIRECT_TIMEOUT, "cone-a <-> cone-b direct")

    def status_paths() -> dict:
        gws = {g["metadata"]["name"]: g for g in cluster.gateways(lab.name)}
        return {p["gateway"]: p for p in (gws[a.gateway].get("status") or {}).get("paths", [])}

    ps.wait_for(lambda: status_paths().get(b.gateway, {}).get("path") == "direct", 30,
                "status.paths of gw-cone-a says direct", poll=0.5)
    assert status_paths()["gw-sym"]["path"] in ("relayed", "probing")
    # The figures of the direct path: handshake and bytes with the change, the RTT through
    # the tunnel with its first measurement after it (measured at once on a change).
    ps.wait_for(lambda: "rttMs" in status_paths().get(b.gateway, {}), 30,
                "status.paths of gw-cone-a carries the direct path's RTT", poll=0.5)
    entry = status_paths()[b.gateway]
    print(f"\nstatus.paths entry for {b.gateway}: {entry}")
    assert entry["path"] == "direct" and 0 < entry["rttMs"] < 1000 and entry["loss"] < 1
    assert entry["lastHandshake"].endswith("Z") and entry["rxBytes"] > 0
    node = ps.gateway(a)
    kubeconfig = str(cluster.kubeconfig_path(lab.name))
    graph = subprocess.run([*runtime.node_exec_argv(lab.name, node), sys.executable, "-m",
                            "raven.cli", "graph", "--kubeconfig", kubeconfig],
                           capture_output=True, text=True, timeout=60)
    assert graph.returncode == 0, graph.stderr
    assert re.search(r'"gw-cone-a/cona-1" -> "gw-cone-b/conb-1" \[dir=both, color=darkgreen',
                     graph.stdout), graph.stdout
    diagnose = subprocess.run([*runtime.node_exec_argv(lab.name, node), sys.executable, "-m",
                               "raven.cli", "diagnose", "--kubeconfig", kubeconfig,
                               "--state-dir", str(cluster.state_dir(lab.name, node))],
                              capture_output=True, text=True, timeout=60)
    assert diagnose.returncode == 0, diagnose.stderr
    text = diagnose.stdout
    print("\n" + text)
    assert "is published on Node cona-1" in text
    assert f"public gateways see it at {a.wan_ip}:" in text
    assert "to gw-cone-b: direct" in text
    assert "answers over UDP" in text


def test_agent_restart_keeps_the_direct_path(lab: LabPlan) -> None:
    a, b, cloud = pools(lab, "cone-a", "cone-b", "cloud")
    ps.wait_for(lambda: ps.direct(lab, a, b), DIRECT_TIMEOUT, "cone-a <-> cone-b direct")
    relay_before = ps.relay_bytes(lab, cloud, [a, b])
    # 1000-byte pings: the relay's counters also carry the gateways' data-path probes to the
    # cloud (about 8 KB/s, docs/gateway.md 3a), so the ping stream must stand well above them.
    pinger = ps.Pinger(ps.pod(lab, a).netns, ps.pod(lab, b).ip, size=1000)
    time.sleep(1)
    faults.agent_restart(lab.name, ps.gateway(a))
    time.sleep(3)  # longer than the far side's 1.5 s silence limit
    missing, stamps = pinger.stop()
    assert ps.direct(lab, a, b), "the restart sent the pair back to the relay"
    assert len(stamps) > 100 and missing == [], missing
    # The relay saw keepalives and probes at most, not the ping stream (4+ s at 50 pps both
    # ways, 1028-byte packets).
    assert ps.relay_bytes(lab, cloud, [a, b]) - relay_before < 50 * 4 * 2 * 1028
