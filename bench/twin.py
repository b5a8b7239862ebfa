"""The overlay's data path rebuilt by hand on a twin lab that carries no overlay state.

Used by bench/throughput.py. Given a lab running the overlay and a twin lab built from the same
topology with `--network-only` (same names, same underlay and pod addresses, no API server, no
agents), `mirror` reads the overlay's devices from the kernel (`ip -d -j link`, addresses,
neighbours, FDB, the routes of the overlay's tables, `wg show dump`) and builds the same devices
in the twin with `ip` and `wg`:
  - every node: the VXLAN device with the same attributes (VNI, port, MAC, MTU, VTEP address,
    static neighbour and FDB entries);
  - each node with the WireGuard device (active gateways and warm standby candidates): a
    wireguard-go device of the same name, started as a supervised lab process (a session
    of its own, as the agent starts its own), same listen port and peers (new keys), same
    allowed IPs, endpoint of the public side, keepalive;
  - the routes of the overlay's tables, and its routes in main (a member's), copied into the
    main table, attributes unchanged (via, onlink, `mtu lock`, `src`), with `ip route
    replace`: a gateway's table 9027 (its members' pod subnets via their VTEPs, which the
    overlay takes only for packets from the tunnel) replaces the lab's own route to them, so
    traffic from the tunnel reaches the members over VXLAN in the twin too (so does,
    unmeasured, the gateway's own traffic to them).
What the twin does NOT get is exactly the overlay's policy state: no nftables table (no marks,
no identity SNAT, hence no conntrack in the nodes), no rules, no sysctl changes.
`compare` then diffs the two labs' devices (`ip -d -j link` and the offload features
`ethtool -k` would print) and wg settings (and, for information, the sysctls
that differ) so the bench can show that both paths use equal devices.

A bench script may drive ip/wg directly (docs/benchmarks.md); raven/dataplane is not used so the
reference shares no code with the system under test.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from raven import constants
from raven.lab import runtime
from raven.lab.gateway_load import TUNNEL_ROUTES
from raven.lab.plan import LabPlan, NodePlan

WG_ENV = "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD"
OVERLAY_TABLES = (constants.VXLAN_TABLE, constants.WIREGUARD_TABLE)
# `ip -d -j link` keys that name an instance rather than describe the device.
LINK_IGNORE = {"ifindex", "link_index", "link_netnsid", "link", "ifalias", "stats", "stats64",
               "operstate", "parentbus", "parentdev", "altnames"}
DEVICES = (constants.VXLAN_DEVICE, constants.WIREGUARD_DEVICE, "eth0")
VETHS = {constants.TUNNEL_VETH, constants.TUNNEL_VETH_PEER}  # a tunnel namespace's pair
SYSCTL_DEVICES = ("all", "default", *DEVICES)


def run(argv: list[str], stdin: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60,
                          env={**os.environ, WG_ENV: "1"})
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
    return proc.stdout


def on(lab: str, node: str, *argv: str, stdin: str | None = None, check: bool = True) -> str:
    """Run in a lab node: its network namespace and private mount namespace (wg socket)."""
    return run([*runtime.node_exec_argv(lab, node), *argv], stdin=stdin, check=check)


def links(lab: str, node: str) -> dict[str, dict]:
    return {link["ifname"]: link for link in json.loads(on(lab, node, "ip", "-d", "-j", "link"))}


@functools.cache
def device_netns(lab: str, node: str) -> str | None:
    """The namespace that holds the node's raven0 and raven-wg0 (raven.lab.runtime), asked
    once per node and run (every read of a node's devices asks)."""
    return runtime.device_netns(lab, node)


def dev_ip(lab: str, node: str, *argv: str, check: bool = True) -> str:
    """`ip` (or `bridge`, argv[0] == "bridge") in the namespace of the node's devices."""
    tool = "bridge" if argv[:1] == ("bridge",) else "ip"
    rest = argv[1:] if tool == "bridge" else argv
    where = device_netns(lab, node)
    return on(lab, node, tool, *(["-n", where] if where else []), *rest, check=check)


def device_links(lab: str, node: str) -> dict[str, dict]:
    """The node's links, its devices from the namespace that holds them (`device_netns`)."""
    out = links(lab, node)
    if device_netns(lab, node) is not None:
        moved = {link["ifname"]: link for link in json.loads(dev_ip(lab, node, "-d", "-j",
                                                                     "link"))}
        out.update({d: moved[d] for d in (constants.VXLAN_DEVICE, constants.WIREGUARD_DEVICE)
                    if d in moved})
    return out


def wireguard_nodes(lab: str, plan: LabPlan) -> dict[str, NodePlan]:
    """node name -> node, for every node with the WireGuard device: the active gateways and
    the warm standby candidates (raven.standby gives them the device and probe peers)."""
    return {node.name: node for pool in plan.pools for node in pool.nodes
            if constants.WIREGUARD_DEVICE in device_links(lab, node.name)}


def active_gateways(lab: str, plan: LabPlan) -> dict[str, NodePlan]:
    """pool name -> the elected gateway: the node whose WireGuard device carries the routes of
    the remote pools (table 9028 or main: gateway_load.TUNNEL_ROUTES; a standby's has none)."""
    out = {}
    for pool in plan.pools:
        for node in pool.nodes:
            if constants.WIREGUARD_DEVICE in device_links(lab, node.name) and any(
                    on(lab, node.name, "ip", "route", "show", *where, check=False).strip()
                    for where in TUNNEL_ROUTES):
                out[pool.name] = node
    return out


# Offload features (what `ethtool -k` prints; ethtool is not installed here) of a node's
# devices, read inside the node's namespace with pyroute2's ethtool netlink client.
FEATURES_SCRIPT = """
import json, sys
from pyroute2.ethtool import Ethtool
out = {}
with Ethtool() as e:
    for name in sys.argv[1:]:
        try:
            out[name] = {k: v.enable for k, v in e.get_features(name).features.items() if k}
        except Exception as exc:  # a device that does not exist on this node
            out[name] = repr(exc)
print(json.dumps(out))
"""


def features(lab: str, node: str, devices: list[str]) -> dict[str, object]:
    """device -> {offload feature: on/off} (GSO, GRO, checksum and segmentation offloads)."""
    out = json.loads(on(lab, node, sys.executable, "-c", FEATURES_SCRIPT, *devices))
    where = device_netns(lab, node)
    moved = [d for d in devices if d in (constants.VXLAN_DEVICE, constants.WIREGUARD_DEVICE)]
    if where is not None and moved:
        out.update(json.loads(on(lab, node, "nsenter", f"--net=/run/netns/{where}", "--",
                                 sys.executable, "-c", FEATURES_SCRIPT, *moved)))
    return out


def wg_dump(lab: str, node: str) -> tuple[list[str], list[list[str]]]:
    where = device_netns(lab, node)  # the kernel backend answers only where its device is
    lines = [line.split("\t") for line in
             on(lab, node, *(["ip", "netns", "exec", where] if where else []), "wg", "show",
                constants.WIREGUARD_DEVICE, "dump").splitlines()]
    return lines[0], lines[1:]


def _vxlan_script(link: dict) -> list[str]:
    data = link["linkinfo"]["info_data"]
    name = link["ifname"]
    add = (f"link add {name} address {link['address']} mtu {link['mtu']} type vxlan "
           f"id {data['id']} local {data['local']} dstport {data['port']}")
    add += "" if data.get("learning", True) else " nolearning"
    if data.get("ttl"):
        add += f" ttl {data['ttl']}"
    return [add, f"link set {name} up"]


def mirror(overlay: str, twin: str, plan: LabPlan) -> dict[str, NodePlan]:
    """Build the overlay's devices and routes by hand in `twin`; return the active gateways."""
    gateways = active_gateways(overlay, plan)
    wg_nodes = wireguard_nodes(overlay, plan)
    keys: dict[str, tuple[str, str]] = {}
    for node in wg_nodes.values():
        private = run(["wg", "genkey"]).strip()
        keys[node.name] = (private, run(["wg", "pubkey"], stdin=private + "\n").strip())
    pool_of = {node.name: pool for pool in plan.pools for node in pool.nodes}
    for pool in plan.pools:
        for node in pool.nodes:
            live = device_links(overlay, node.name)
            lines: list[str] = []
            vx = live.get(constants.VXLAN_DEVICE)
            if vx is not None:
                lines += _vxlan_script(vx)
                for addr in json.loads(dev_ip(overlay, node.name, "-j", "addr", "show",
                                              "dev", vx["ifname"])):
                    for info in addr.get("addr_info", []):
                        if info.get("family") == "inet":
                            lines.append(f"address add {info['local']}/{info['prefixlen']} "
                                         f"dev {vx['ifname']}")
                for neigh in json.loads(dev_ip(overlay, node.name, "-j", "neigh", "show",
                                               "dev", vx["ifname"])):
                    lines.append(f"neigh replace {neigh['dst']} lladdr {neigh['lladdr']} "
                                 f"dev {vx['ifname']} nud permanent")
            if constants.WIREGUARD_DEVICE in live:
                _wireguard(overlay, twin, plan, node, keys, wg_nodes, pool_of)
                wg = live[constants.WIREGUARD_DEVICE]
                lines.append(f"link set {wg['ifname']} mtu {wg['mtu']} txqueuelen "
                             f"{wg['txqlen']} up")
            if lines:
                on(twin, node.name, "ip", "-batch", "-", stdin="\n".join(lines) + "\n")
            if vx is not None:
                for fdb in json.loads(dev_ip(overlay, node.name, "bridge", "-j", "fdb",
                                             "show", "dev", vx["ifname"])):
                    if fdb.get("dst"):
                        on(twin, node.name, "bridge", "fdb", "append", fdb["mac"], "dev",
                           vx["ifname"], "dst", fdb["dst"], "self", "permanent")
            routes = []
            # Our tables, and our protocol's routes in main (a member's where nothing else
            # routes the remote pools: raven.route_placement); with a tunnel namespace, its
            # routes (into raven-wg0, to the members over raven0), not those over the veth
            # that joins it to the node's: the twin's devices are all in the node's.
            for table in (*map(str, OVERLAY_TABLES), f"main proto {constants.ROUTE_PROTOCOL}"):
                # a table that does not exist (a gateway has no 9027 routes) is not an error
                for line in dev_ip(overlay, node.name, "route", "show", "table",
                                   *table.split(), check=False).splitlines():
                    words = line.split()
                    if VETHS & set(words):
                        continue
                    kept: list[str] = []
                    skip = 0
                    for word in words:  # drop table, protocol, metric: main, no owner
                        if skip:
                            skip -= 1
                            continue
                        # and the metric: ours in main carry 9027 (route_placement), and the
                        # twin's must replace the lab's own route of the same prefix (metric
                        # 0), as a gateway's delivery to its members does, not sit behind it
                        if word in ("table", "proto", "metric"):
                            skip = 1
                            continue
                        kept.append(word)
                    routes.append("route replace " + " ".join(kept))
            if routes:
                on(twin, node.name, "ip", "-batch", "-", stdin="\n".join(routes) + "\n")
    return gateways


def mirror_rules(overlay: str, twin: str, plan: LabPlan) -> list[str]:
    """For experiments (bench/throughput_attr.sh): give the twin the overlay's policy rules
    and its tables 9027/9028 too (the routes stay in main as well; the rules find them in
    the tables first, as in the overlay). Irreversible for the namespace: once it had a rule,
    the kernel walks the rule list on every route lookup (`fib_has_custom_rules` is never
    reset). Returns the rules added, `node: rule`."""
    added = []
    for pool in plan.pools:
        for node in pool.nodes:
            lines = []
            for rule in json.loads(on(overlay, node.name, "ip", "-j", "rule", "show")):
                if rule.get("priority") not in (constants.RULE_PRIORITY,):
                    continue
                words = [f"priority {rule['priority']}"]
                if rule.get("iif"):
                    words.append(f"iif {rule['iif']}")
                if rule.get("fwmark"):
                    words.append(f"fwmark {rule['fwmark']}")
                words.append(f"lookup {rule['table']}")
                lines.append("rule add " + " ".join(words))
            for table in OVERLAY_TABLES:
                for line in on(overlay, node.name, "ip", "route", "show", "table",
                               str(table), check=False).splitlines():
                    words = line.split()
                    if "proto" in words:
                        i = words.index("proto")
                        del words[i:i + 2]
                    lines.append("route replace " + " ".join(words) + f" table {table}")
            if lines:
                on(twin, node.name, "ip", "-batch", "-", stdin="\n".join(lines) + "\n")
                added += [f"{node.name}: {x}" for x in lines if x.startswith("rule")]
    return added


def _wireguard(overlay: str, twin: str, plan: LabPlan, node: NodePlan,
               keys: dict[str, tuple[str, str]], wg_nodes: dict[str, NodePlan],
               pool_of: dict) -> None:
    """wireguard-go as a supervised lab process: its own session, like the agent's daemon."""
    name = constants.WIREGUARD_DEVICE
    runtime.start_process(twin, node.name, "hand-wireguard-go",
                          ["env", f"{WG_ENV}=1", "wireguard-go", "-f", name])
    sock = runtime.host_dir(twin, node.name) / "wireguard" / f"{name}.sock"
    deadline = time.monotonic() + 10
    while not sock.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{twin}/{node.name}: wireguard-go made no socket {sock}")
        time.sleep(0.05)
    (_priv, _pub, port, fwmark), peers = wg_dump(overlay, node.name)
    overlay_keys = {wg_dump(overlay, g.name)[0][1]: g for g in wg_nodes.values()}
    key_file = Path(f"/tmp/{twin}-{node.name}.key")
    key_file.write_text(keys[node.name][0])
    key_file.chmod(0o600)
    argv = ["wg", "set", name, "listen-port", port, "private-key", str(key_file)]
    if fwmark != "off":
        argv += ["fwmark", fwmark]
    for public, _psk, endpoint, allowed, _hs, _rx, _tx, keepalive in peers:
        other = overlay_keys[public]
        argv += ["peer", keys[other.name][1], "allowed-ips", allowed]
        if pool_of[other.name].nat == "none" and endpoint != "(none)":
            # dial the public side; a NAT'd side is learned from its handshakes, as the agent does
            argv += ["endpoint", endpoint]
        if keepalive != "off":
            argv += ["persistent-keepalive", keepalive]
    try:
        on(twin, node.name, *argv)
    finally:
        key_file.unlink()


# --- equality check ------------------------------------------------------------------------------

def _diff(prefix: str, a: object, b: object, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        veth = (a.get("linkinfo") or {}).get("info_kind") == "veth"
        for key in sorted(set(a) | set(b)):
            if key in LINK_IGNORE or (veth and key == "address"):  # the lab's random MACs
                continue
            _diff(f"{prefix}.{key}", a.get(key), b.get(key), out)
    elif a != b:
        out.append(f"{prefix}: overlay {a!r} hand {b!r}")


def sysctls(lab: str, node: str) -> dict[str, str]:
    """net.ipv4.conf.<dev>.* and a few globals (read from the node's own /proc/sys)."""
    script = ("for d in " + " ".join(SYSCTL_DEVICES) + "; do [ -d /proc/sys/net/ipv4/conf/$d ] "
              "&& grep -H . /proc/sys/net/ipv4/conf/$d/* 2>/dev/null; done; "
              "grep -H . /proc/sys/net/ipv4/ip_forward /proc/sys/net/core/*mem* "
              "/proc/sys/net/ipv4/tcp_*mem 2>/dev/null; true")
    out = {}
    where = device_netns(lab, node)
    moved = (f".{constants.VXLAN_DEVICE}.", f".{constants.WIREGUARD_DEVICE}.")
    for inside in (False, True) if where is not None else (False,):
        # a tunnel namespace's devices: their settings are read there (all others here)
        prefix = ["nsenter", f"--net=/run/netns/{where}", "--"] if inside else []
        for line in on(lab, node, *prefix, "sh", "-c", script).splitlines():
            path, _, value = line.partition(":")
            key = path.removeprefix("/proc/sys/").replace("/", ".")
            if inside == any(m in key for m in moved):
                out[key] = value
    return out


@dataclass(frozen=True)
class Comparison:
    devices: list[str]  # differences of devices and wg settings: should be empty
    sysctls: list[str]  # sysctls that differ: overlay policy state, for information
    firewall: list[str]  # nftables tables / ip rules only the overlay has, for information


def compare(overlay: str, twin: str, plan: LabPlan) -> Comparison:
    devices: list[str] = []
    sysctl_diff: list[str] = []
    firewall: list[str] = []
    for pool in plan.pools:
        for node in pool.nodes:
            a, b = device_links(overlay, node.name), links(twin, node.name)
            for dev in DEVICES:
                _diff(f"{node.name} {dev}", a.get(dev), b.get(dev), devices)
            for pod in node.pods:
                _diff(f"{node.name} {pod.node_ifname}", a.get(pod.node_ifname),
                      b.get(pod.node_ifname), devices)
            names = [d for d in (*DEVICES, *(p.node_ifname for p in node.pods)) if d in a]
            _diff(f"{node.name} offloads", features(overlay, node.name, names),
                  features(twin, node.name, names), devices)
            if constants.WIREGUARD_DEVICE in a and constants.WIREGUARD_DEVICE in b:
                (_, _, port_a, mark_a), peers_a = wg_dump(overlay, node.name)
                (_, _, port_b, mark_b), peers_b = wg_dump(twin, node.name)
                if (port_a, mark_a) != (port_b, mark_b):
                    devices.append(f"{node.name} wg listen-port/fwmark: overlay {port_a}/"
                                   f"{mark_a} hand {port_b}/{mark_b}")
                # allowed ips and keepalive per peer (keys differ by construction; endpoints
                # of NAT'd peers are learned and may show another port)
                shape_a = sorted((p[3], p[7]) for p in peers_a)
                shape_b = sorted((p[3], p[7]) for p in peers_b)
                if shape_a != shape_b:
                    devices.append(f"{node.name} wg peers (allowed-ips, keepalive): overlay "
                                   f"{shape_a} hand {shape_b}")
            sa, sb = sysctls(overlay, node.name), sysctls(twin, node.name)
            for key in sorted(set(sa) | set(sb)):
                if sa.get(key) != sb.get(key):
                    sysctl_diff.append(f"{node.name} {key}: overlay {sa.get(key)} hand "
                                       f"{sb.get(key)}")
            for what, argv in (("nft", ["nft", "list", "tables"]), ("rule", ["ip", "rule"])):
                la = set(on(overlay, node.name, *argv).splitlines())
                lb = set(on(twin, node.name, *argv).splitlines())
                firewall += [f"{node.name} {what} only in overlay: {x.strip()}"
                             for x in sorted(la - lb)]
                firewall += [f"{node.name} {what} only in hand: {x.strip()}"
                             for x in sorted(lb - la)]
    return Comparison(devices, sysctl_diff, firewall)


if __name__ == "__main__":
    # `python bench/twin.py rules OVERLAY_LAB TWIN_LAB`: mirror_rules by hand, for experiments
    from raven.lab.runtime import load_plan

    if len(sys.argv) != 4 or sys.argv[1] != "rules":
        sys.exit("usage: twin.py rules OVERLAY_LAB TWIN_LAB")
    for added in mirror_rules(sys.argv[2], sys.argv[3], load_plan(sys.argv[2])):
        print(added)
