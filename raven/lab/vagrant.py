"""`raven lab vagrantfile`: the same topology as real VMs, for operators with a hypervisor.

Pure: LabPlan -> the text of a Vagrantfile (libvirt provider). Nothing is run here; `vagrant
validate --ignore-provider` checks the output (tests/vm/test_vagrantfile.py).

What the Vagrantfile builds, mirroring raven.lab.build:
- one libvirt network per pool LAN (198.18.i.0/24, no DHCP, isolated) and one "internet"
  network joining the pool routers (each router keeps its planned public address
  198.19.0.(4i+2), with a /24 there instead of the lab's /30 links: one network, not one per
  pool);
- a router VM per pool: forwarding on, static routes to the public pools' LANs through their
  routers, and for `nat: cone|symmetric` the lab's own nftables ruleset
  (raven.lab.build.nat_ruleset) on its internet interface;
- the control plane VM (first public pool's LAN .254, else the internet network .254): the API
  server, the Gateway CRD and Gateways (the lab's manifests), the controller, and the lab's
  kubelet stand-in registering the Nodes (with `--all-running`: outside the lab there are no
  holders to watch); a trigger copies its admin.kubeconfig to the host's .raven/, which the
  nodes rsync to /etc/raven-lab when they come up (so: `vagrant up --no-parallel`, in the
  order the machines are defined);
- a VM per node: the pool's LAN address, routes to the lab underlay through its router, the
  in-pool pod routes, pods as network namespaces (the lab's `ip -batch` lines), and
  `raven agent` as a systemd service with its state directory /var/lib/raven.
Every machine installs the project from the synced source folder into /opt/raven (a venv).
Nodes of kind vm and netns become the same kind of machine here: real VMs.
Vagrant's own management network (eth0, DHCP from libvirt) stays for `vagrant ssh`; the lab's
addresses never get a default route, so nothing of the lab leaks out through it.
"""

from __future__ import annotations

import ipaddress
import json
import shlex
from importlib import resources
from pathlib import Path

from raven.lab import build, cluster
from raven.lab.plan import LabPlan, NodePlan, PoolPlan, plan_to_json
from raven.settings import DEFAULT_STATE_DIR

DEFAULT_BOX = "debian/bookworm64"
INTERNET_NET = "198.19.0.0/24"
CP_INTERNET_IP = "198.19.0.254"
SHARED = "/etc/raven-lab"  # nodes: the host's .raven/ (the kubeconfig), rsynced at their `up`
KUBECONFIG = "/var/lib/raven-apiserver/admin.kubeconfig"


def default_project() -> Path | None:
    """The directory that holds the `raven` package this process runs, found through
    importlib.resources like the lab's other data: a checkout (or an editable install of one)
    when it has a pyproject.toml; installed from a wheel it is site-packages, no source tree,
    and the caller asks for --project. None when the package is not a directory (a zip)."""
    package = resources.files("raven")
    return package.parent if isinstance(package, Path) else None


def _ruby(text: str) -> str:
    """A Ruby string literal (double quotes, escaped, no interpolation)."""
    return json.dumps(text).replace("#{", "\\#{")


def _heredoc(name: str, script: str) -> str:
    # <<~'X' is a literal heredoc in Ruby: no interpolation, no escapes.
    body = "\n".join(("    " + line) if line else "" for line in script.strip("\n").splitlines())
    return f"  {name} = <<~'RAVEN_SH'\n{body}\n  RAVEN_SH\n"


def _netname(lab: str, what: str) -> str:
    return f"{lab}-{what}"


def _network(ip: str, prefix: int, name: str, mtu: int | None = None) -> str:
    # libvirt gives the hypervisor an address on each network (default: the first one, which
    # is our router's): take the last usable one instead; forward mode none keeps it isolated.
    host_ip = str(ipaddress.IPv4Network(f"{ip}/{prefix}", strict=False).broadcast_address - 2)
    netmask = str(ipaddress.IPv4Network(f"0.0.0.0/{prefix}").netmask)
    extra = f", libvirt__mtu: {mtu}" if mtu else ""
    return (f"    m.vm.network :private_network, ip: {_ruby(ip)}, netmask: {_ruby(netmask)}, "
            f"libvirt__network_name: {_ruby(name)}, libvirt__dhcp_enabled: false, "
            f"libvirt__forward_mode: \"none\", libvirt__host_ip: {_ruby(host_ip)}{extra}, "
            "autostart: true\n")


def _dev_of(ip: str) -> str:
    return f"$(ip -o -4 addr show to {ip}/32 | awk '{{print $2}}')"


def install_script() -> str:
    return """
set -eu
export DEBIAN_FRONTEND=noninteractive
if [ ! -x /opt/raven/bin/raven ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends python3-venv iproute2 nftables \\
    wireguard-tools kubernetes-client >/dev/null
  python3 -m venv /opt/raven
  /opt/raven/bin/pip install -q /opt/raven-src
fi
sysctl -qw net.ipv4.ip_forward=1
"""


def router_script(plan: LabPlan, pool: PoolPlan) -> str:
    lines = ["set -eu", f"WAN={_dev_of(pool.wan_ip)}", f"LAN={_dev_of(pool.router_lan_ip)}",
             f"ip link set \"$LAN\" mtu {pool.mtu}"]
    for other in plan.pools:
        if other.public and other.name != pool.name:
            lines.append(f"ip route replace {other.lan} via {other.wan_ip} dev \"$WAN\"")
    ruleset = build.nat_ruleset(pool).replace('"wan"', '"$WAN"')
    if ruleset:
        lines += ["nft delete table ip raven_lab_nat 2>/dev/null || true",
                  f"nft -f - <<EOF\n{ruleset.strip()}\nEOF"]
    return "\n".join(lines) + "\n"


def _unit(name: str, command: list[str], env: dict[str, str] | None = None) -> str:
    environment = "".join(f"Environment={k}={v}\n" for k, v in (env or {}).items())
    return (f"cat > /etc/systemd/system/{name}.service <<'EOF'\n[Unit]\nDescription={name}\n"
            "After=network-online.target\n[Service]\n" + environment
            + f"ExecStart={shlex.join(command)}\nRestart=always\nRestartSec=2\n"
            "[Install]\nWantedBy=multi-user.target\nEOF\n")


def control_plane_script(plan: LabPlan) -> str:
    cp_ip = plan.control_plane.ip if plan.control_plane.pool else CP_INTERNET_IP
    kubeconfig = KUBECONFIG
    raven = "/opt/raven/bin/raven"
    state = json.dumps({"phase": "ready", "plan": plan_to_json(plan)})
    manifests = "\n---\n".join([cluster.gateway_crd().strip(),
                                *(json.dumps(g) for g in cluster.gateway_objects(plan))])
    lines = ["set -eu"]
    if plan.control_plane.pool:
        pool = next(p for p in plan.pools if p.name == plan.control_plane.pool)
        lines.append(f"ip route replace 198.18.0.0/15 via {pool.router_lan_ip} dev "
                     f"{_dev_of(cp_ip)}")
    else:
        lines.append(f"ip route replace 198.18.0.0/15 dev {_dev_of(cp_ip)}")
    lines += [
        f"mkdir -p /var/lib/raven-lab/{plan.name}",
        f"cat > /var/lib/raven-lab/{plan.name}/state.json <<'EOF'\n{state}\nEOF",
        _unit("raven-apiserver", [raven, "apiserver", "--data-dir", "/var/lib/raven-apiserver",
                                  "--listen", f"{cp_ip}:{cluster.APISERVER_PORT}"]),
        "systemctl daemon-reload && systemctl enable --now raven-apiserver",
        f"for i in $(seq 120); do [ -s {kubeconfig} ] && break; sleep 1; done",
        f"until kubectl --kubeconfig {kubeconfig} get --raw /readyz; do sleep 1; done",
        f"kubectl --kubeconfig {kubeconfig} apply -f - <<'EOF'\n{manifests}\nEOF",
        _unit("raven-controller", [raven, "controller", "--kubeconfig", kubeconfig]),
        _unit("raven-kubelet", ["/opt/raven/bin/python", "-m", "raven.lab.kubelet", plan.name,
                                "--kubeconfig", kubeconfig, "--all-running"],
              {"RAVEN_LAB_RUN_ROOT": "/var/lib/raven-lab"}),
        "systemctl daemon-reload && systemctl enable --now raven-controller raven-kubelet",
    ]
    return "\n".join(lines) + "\n"


def node_script(plan: LabPlan, pool: PoolPlan, node: NodePlan) -> str:
    lines = ["set -eu", f"LAN={_dev_of(node.underlay_ip)}", f"ip link set \"$LAN\" mtu {pool.mtu}",
             f"ip route replace 198.18.0.0/15 via {pool.router_lan_ip} dev \"$LAN\"",
             f"ip route replace 192.0.2.0/24 via {pool.router_lan_ip} dev \"$LAN\""]
    for other in pool.nodes:
        if other.name != node.name:
            lines += [f"ip route replace {cidr} {build._next_hop(pool, other, cidr)} "
                      "dev \"$LAN\"" for cidr in other.cidrs()]
    for pod in node.pods:
        node_side = [line for line in build._node_lines(plan, pool, node)
                     if f" {pod.node_ifname} " in f" {line} " or line.endswith(pod.node_ifname)]
        lines += [f"ip netns add {pod.netns} 2>/dev/null || true",
                  f"ip link del {pod.node_ifname} 2>/dev/null || true",
                  "ip -batch - <<'EOF'\n" + "\n".join(node_side) + "\nEOF",
                  f"ip -n {pod.netns} -batch - <<'EOF'\n"
                  + "\n".join(build._pod_lines(plan, node, pod)[1:]) + "\nEOF"]
    kubeconfig = f"{SHARED}/admin.kubeconfig"
    lines += [
        f"for i in $(seq 600); do [ -s {kubeconfig} ] && break; sleep 1; done",
        _unit("raven-agent", ["/opt/raven/bin/raven", "agent", "--node", node.name,
                              "--kubeconfig", kubeconfig, "--state-dir", str(DEFAULT_STATE_DIR),
                              "--underlay-mtu", str(pool.mtu)]),
        "systemctl daemon-reload && systemctl enable --now raven-agent",
    ]
    return "\n".join(lines) + "\n"


def _machine(name: str, networks: list[str], scripts: list[str], extra: str = "") -> str:
    out = [f"  config.vm.define {_ruby(name)} do |m|\n",
           f"    m.vm.hostname = {_ruby(name)}\n", *networks, extra]
    for script in scripts:
        out.append(f"    m.vm.provision \"shell\", name: {_ruby(script)}, inline: {script}\n")
    out.append("  end\n")
    return "".join(out)


def vagrantfile(plan: LabPlan, project: Path, box: str = DEFAULT_BOX, memory: int = 1024,
                cpus: int = 1) -> str:
    """The Vagrantfile of a lab plan; `project` is the source tree every machine installs.
    IPv4 underlays only (pod networks may be dual-stack); CommandError otherwise."""
    lab = plan.name
    v6 = [p.name for p in plan.pools if not p.has_v4]
    if v6:
        from raven.errors import CommandError

        raise CommandError(f"lab {lab!r}: pools {', '.join(v6)} have an IPv6-only underlay; "
                           "the Vagrantfile supports IPv4 (or dual) underlays only")
    out = [
        f"# Vagrantfile for raven lab {lab!r} (source: {plan.source or 'topology'}), written by\n"
        "# `raven lab vagrantfile`. Provider: libvirt (vagrant-libvirt). Box: override with\n"
        "# RAVEN_BOX=... . Bring it up in order (routers, control plane, nodes):\n"
        "#   vagrant up --provider libvirt --no-parallel\n",
        "# -*- mode: ruby -*-\n\n",
        "INSTALL_SH = <<~'RAVEN_SH'\n" + install_script().strip("\n") + "\nRAVEN_SH\n\n",
        'Vagrant.configure("2") do |config|\n',
        f"  config.vm.box = ENV.fetch(\"RAVEN_BOX\", {_ruby(box)})\n",
        '  config.vm.synced_folder ".", "/vagrant", disabled: true\n',
        f"  config.vm.synced_folder {_ruby(str(project))}, \"/opt/raven-src\", type: \"rsync\", "
        'rsync__exclude: [".git/", ".venv/", "*.egg-info/"]\n',
        "  config.vm.provider :libvirt do |lv|\n"
        f"    lv.memory = {memory}\n    lv.cpus = {cpus}\n  end\n",
        '  config.vm.provision "shell", name: "raven-install", inline: INSTALL_SH\n\n',
    ]
    internet = _netname(lab, "internet")
    scripts: list[str] = []
    machines: list[str] = []

    def script(name: str, text: str) -> str:
        var = name.lower().replace("-", "_") + "_sh"
        scripts.append(_heredoc(var, text))
        return var

    for pool in plan.pools:
        name = f"router-{pool.name}"
        machines.append(_machine(name, [
            _network(pool.router_lan_ip, 24, _netname(lab, pool.name), pool.mtu),
            _network(pool.wan_ip, 24, internet),
        ], [script(name, router_script(plan, pool))]))
    cp = plan.control_plane
    if cp.pool:
        cp_pool = next(p for p in plan.pools if p.name == cp.pool)
        cp_net = _network(cp.ip, 24, _netname(lab, cp.pool), cp_pool.mtu)
    else:
        cp_net = _network(CP_INTERNET_IP, 24, internet)
    # The API server writes its kubeconfig (CA + token) on the control plane; a trigger copies
    # it to the host's .raven/, which every node rsyncs to /etc/raven-lab when it comes up.
    fetch = (f"mkdir -p .raven && vagrant ssh control-plane -c 'sudo cat {KUBECONFIG}' "
             "> .raven/admin.kubeconfig")
    trigger = ("    m.trigger.after :up do |t|\n"
               "      t.info = \"raven: fetching the control plane's kubeconfig into .raven/\"\n"
               f"      t.run = {{inline: {_ruby(fetch)}}}\n"
               "    end\n")
    machines.append(_machine("control-plane", [cp_net],
                             [script("control-plane", control_plane_script(plan))], trigger))
    for pool in plan.pools:
        for node in pool.nodes:
            machines.append(_machine(node.name, [
                _network(node.underlay_ip, 24, _netname(lab, pool.name), pool.mtu)],
                [script(f"node-{node.name}", node_script(plan, pool, node))],
                f"    m.vm.synced_folder \".raven\", {_ruby(SHARED)}, type: \"rsync\", "
                "create: true\n"))
    out += scripts
    out.append("\n")
    out += machines
    out.append("end\n")
    return "".join(out)

