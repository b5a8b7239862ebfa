"""The NAT routers of a lab: one nftables table per NAT'd pool router, and the nat-rebind fault.

Kinds (RFC 4787 terms; `nat:` in a topology file):
- `cone`: endpoint-independent mapping, address-and-port-dependent filtering ("port-restricted
  cone"): every destination sees the same public port; only a host:port the LAN already sent to
  may answer. Generation 0 preserves the source port (plain masquerade).
- `full-cone`: endpoint-independent mapping AND filtering: once a LAN socket sent anything, any
  internet host may send to its public port (a dynamic map public port -> LAN address:port,
  filled after source NAT from the connection's original tuple, read by a DNAT in prerouting).
- `symmetric`: `masquerade fully-random`: a new random public port per destination.
Rules kept:
- unsolicited packets from the WAN are dropped in FORWARD and in INPUT (for the router's own
  address), before conntrack confirms them: an unconfirmed entry would otherwise claim the
  public port and push the LAN's next mapping to another port, which no real cone NAT does;
- `nat-rebind` (`rebind`) makes the pool's NAT forget every mapping: the conntrack table of the
  router is flushed and the generation goes up; from generation 1 on, cone kinds map UDP ports
  by a hash of (LAN address, LAN port) seeded with the generation, so the next packets leave
  with NEW public ports while the mapping stays endpoint-independent;
- the generation is kept in the run directory (faults/nat-rebind/<pool>), so a rebuilt ruleset
  and `status` agree.
"""

from __future__ import annotations

from pathlib import Path

from raven.errors import CommandError
from raven.lab import netns as nsutil
from raven.lab import runtime
from raven.lab.plan import PoolPlan

TABLE = "raven_lab_nat"
MAPPING_TIMEOUT_S = 180  # how long a full-cone mapping stays open without traffic
HASH_PORTS = (20000, 30000)  # (offset, count): public UDP ports of a rebound cone NAT


def ruleset(pool: PoolPlan, generation: int = 0) -> str:
    """nftables ruleset of a pool router (empty for a public pool)."""
    if pool.public:
        return ""
    lan, wan_ip = pool.lan, pool.wan_ip
    postrouting = []
    if pool.nat == "symmetric":
        postrouting.append(f'oifname "wan" ip saddr {lan} masquerade fully-random')
    else:
        if generation > 0:
            offset, count = HASH_PORTS
            postrouting.append(
                f'oifname "wan" ip saddr {lan} meta l4proto udp snat ip to {wan_ip} : '
                f"jhash ip saddr . udp sport mod {count} seed {generation:#x} offset {offset}")
        postrouting.append(f'oifname "wan" ip saddr {lan} masquerade')
    full_cone = pool.nat == "full-cone"
    lines = [f"table ip {TABLE} {{"]
    if full_cone:
        lines += [
            "  map mappings {",
            "    type inet_service : ipv4_addr . inet_service; flags dynamic,timeout;",
            f"    timeout {MAPPING_TIMEOUT_S}s;",
            "  }",
            # After source NAT (priority srcnat + 10): the public port is in the header, the
            # LAN address and port in the connection's original tuple.
            "  chain learn {",
            "    type filter hook postrouting priority srcnat + 10; policy accept;",
            '    oifname "wan" meta l4proto udp ct status snat update @mappings '
            f"{{ udp sport timeout {MAPPING_TIMEOUT_S}s : ct original ip saddr . "
            "ct original proto-src }",
            "  }",
            "  chain prerouting {",
            "    type nat hook prerouting priority dstnat; policy accept;",
            '    iifname "wan" meta l4proto udp dnat ip to udp dport map @mappings',
            "  }",
        ]
    lines += [
        "  chain postrouting {",
        "    type nat hook postrouting priority srcnat; policy accept;",
        *(f"    {rule}" for rule in postrouting),
        "  }",
        "  chain forward {",
        "    type filter hook forward priority filter; policy accept;",
        '    iifname "wan" ct state established,related accept',
        *(['    iifname "wan" ct status dnat accept'] if full_cone else []),
        '    iifname "wan" drop',
        "  }",
        "  chain input {",
        "    type filter hook input priority filter; policy accept;",
        '    iifname "wan" ct state established,related accept',
        '    iifname "wan" drop',
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def apply(pool: PoolPlan, generation: int = 0) -> None:
    """Load (or replace, in one transaction) the NAT table of a pool router."""
    text = ruleset(pool, generation)
    if not text:
        return
    # "table ... {}" then "delete": replaces an existing table and works when there is none.
    nsutil.nft_apply(pool.netns, f"table ip {TABLE} {{}}\ndelete table ip {TABLE}\n{text}")


def generation_path(lab: str, pool: str) -> Path:
    return runtime.run_dir(lab) / "faults" / "nat-rebind" / pool


def generation(lab: str, pool: str) -> int:
    try:
        return int(generation_path(lab, pool).read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def rebind(lab: str, pool_name: str) -> int:
    """The pool's NAT forgets its mappings; returns the new generation. CommandError for a
    public pool (it has no NAT)."""
    plan = runtime.load_plan(lab)
    pool = next((p for p in plan.pools if pool_name in (p.name, p.gateway)), None)
    if pool is None:
        raise CommandError(f"lab {lab!r} has no pool {pool_name!r}; pools: "
                           f"{', '.join(p.name for p in plan.pools)}")
    if pool.public:
        raise CommandError(f"lab {lab!r}: pool {pool.name!r} has nat: none; there are no "
                           "mappings to forget")
    if not pool.has_v4:
        raise CommandError(f"lab {lab!r}: pool {pool.name!r} has an IPv6-only underlay: IPv6 "
                           "is never translated, there are no mappings to forget")
    new = generation(lab, pool.name) + 1
    apply(pool, new)
    nsutil.conntrack_flush(pool.netns)
    path = generation_path(lab, pool.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{new}\n")
    return new
