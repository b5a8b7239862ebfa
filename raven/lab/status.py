"""Human and JSON views of a lab (status, list); read-only."""

from __future__ import annotations

from raven.lab import netns as nsutil
from raven.lab import runtime
from raven.lab.plan import LabPlan, plan_to_json


def status_json(plan: LabPlan) -> dict:
    """`status --json`: the plan (agreed shape) plus phase, live namespaces and processes."""
    data = plan_to_json(plan)
    state = runtime.read_state(plan.name) or {}
    existing = set(nsutil.list_netns())
    data["phase"] = state.get("phase", "unknown")
    data["missingNamespaces"] = [n for n in plan.netns_names() if n not in existing]
    data["processes"] = [
        {"target": r.get("target"), "name": r.get("name"), "pid": r.get("pid"),
         "running": r["running"],
         "log": str(runtime.log_path(plan.name, r.get("target", ""), r.get("name", "")))}
        for r in runtime.supervised(plan.name)
    ]
    data["runDir"] = str(runtime.run_dir(plan.name))
    return data


def format_status(plan: LabPlan) -> str:
    cp = plan.control_plane
    lines = [f"lab {plan.name}  (tunnel {plan.tunnel}; run dir {runtime.run_dir(plan.name)})",
             "  internet        probes 203.0.113.1 203.0.113.2",
             f"  control-plane   {cp.ip}  (on {'pool ' + cp.pool if cp.pool else 'the internet'})"]
    if cp.ip6 and cp.ip6 != cp.ip:
        lines[-1] += f", {cp.ip6}"
    for pool in plan.pools:
        lan = ", ".join(dict.fromkeys(a for a in (pool.lan, pool.lan6) if a))
        public = pool.wan_ip if pool.nat != 'none' else pool.lan
        underlay = f"underlay {pool.underlay}, " if pool.underlay != "ipv4" else ""
        lines.append(f"  pool {pool.name}: gateway {pool.gateway}, nat {pool.nat}, "
                     f"{underlay}LAN {lan}, public {public}")
        for node in pool.nodes:
            pods = ", ".join(f"{p.name} {','.join(p.addresses())}" for p in node.pods) or \
                "no pods"
            star = " (gateway candidate)" if node.gateway_candidate else ""
            lines.append(f"    {node.name:<16} {','.join(node.underlay_ips()):<15} podCIDR "
                         f"{','.join(node.cidrs()):<18} {pods}{star}")
    procs = runtime.supervised(plan.name)
    daemons = [r for r in procs if r.get("name") != runtime.HOLDER]
    if daemons:
        lines.append("  processes:")
        for r in daemons:
            state = "running" if r["running"] else "stopped"
            lines.append(f"    {r.get('target')}/{r.get('name')}  pid {r.get('pid')}  {state}")
    return "\n".join(lines)
