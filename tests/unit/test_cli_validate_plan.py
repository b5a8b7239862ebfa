"""`raven validate` and `raven plan`, run as real processes: exit codes, messages, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from raven import route_placement, standby
from raven.model import Gateway
from raven.settings import OverlaySettings
from raven.topology import plan_node

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "gateway" / "examples"


def raven(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "raven.cli", *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert "Traceback" not in result.stdout + result.stderr
    return result


GOOD = """\
apiVersion: raven.openyurt.io/v1beta1
kind: Gateway
metadata: {name: gw-a}
spec:
  endpoints:
  - {nodeName: a-1, type: tunnel}
status:
  nodes:
  - {nodeName: a-1, privateIP: 192.0.2.1, subnets: [10.244.0.0/24]}
"""


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_examples_and_lab_topologies_are_valid() -> None:
    files = sorted(str(p) for p in EXAMPLES.glob("*.yaml"))
    topologies = sorted(str(p) for p in (ROOT / "test-topologies").glob("*.yaml"))
    result = raven("validate", *files, *topologies)
    assert result.returncode == 0, result.stdout
    assert result.stdout.strip() == (f"valid: {len(files)} Gateway(s), {len(topologies)} lab "
                                     "topology file(s)")


def test_every_problem_of_every_document_is_listed(tmp_path: Path) -> None:
    bad = GOOD.replace("gw-a", "gw-b").replace("{nodeName: a-1, type: tunnel}",
                                               "{nodeName: a-1, type: vpn, publicIP: 1.2.3}")
    path = write(tmp_path, "gws.yaml", GOOD + "---\n" + bad)
    result = raven("validate", path)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert f'{path}:11: Gateway gw-b: spec.endpoints[0].publicIP: "1.2.3" is not an IP address; ' \
           "use an IPv4 or IPv6 address or leave it empty" in lines
    assert f'{path}:11: Gateway gw-b: spec.endpoints[0].type: "vpn" is not an endpoint type; use ' \
           "tunnel or proxy" in lines
    # The same node and subnet in two Gateways are problems across the fleet.
    assert any("node 'a-1' also belongs to Gateway gw-a" in line for line in lines)
    assert any("10.244.0.0/24 overlaps 10.244.0.0/24 of Gateway gw-a" in line for line in lines)
    assert lines[-1] == f"{len(lines) - 1} problem(s) found"


def test_malformed_yaml_is_reported_with_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "broken.yaml", GOOD + "  - {nodeName: a-2, privateIP: [\n  bad: x\n")
    result = raven("validate", path)
    assert result.returncode == 1
    assert result.stdout.startswith(f"{path}:")
    line = int(result.stdout.split(":")[1])
    assert line in (10, 11)
    assert "malformed YAML" in result.stdout


def test_tab_indentation_is_reported_with_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "tabs.yaml", "kind: Gateway\nmetadata:\n\tname: x\n")
    result = raven("validate", path)
    assert result.returncode == 1
    assert result.stdout.startswith(f"{path}:3:1: malformed YAML")


def test_unreadable_empty_and_foreign_files(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.yaml")
    empty = write(tmp_path, "empty.yaml", "# nothing\n")
    foreign = write(tmp_path, "cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    result = raven("validate", missing, empty, foreign, str(binary))
    assert result.returncode == 1
    out = result.stdout
    assert f"{missing}: cannot read it: No such file or directory" in out
    assert f"{empty}: no documents" in out
    assert f"{foreign}:1: kind 'ConfigMap' is neither a Gateway" in out
    assert f"{binary}: not a text file" in out


def test_list_documents_are_checked_item_by_item(tmp_path: Path) -> None:
    item = yaml.safe_load(GOOD)
    bad = yaml.safe_load(GOOD.replace("gw-a", "gw-z"))
    bad["spec"]["exposeType"] = "NodePort"
    bad["status"]["nodes"][0].update(nodeName="z-1", subnets=["10.9.0.0/24"])
    path = write(tmp_path, "list.yaml", yaml.safe_dump({"apiVersion": "v1", "kind": "List",
                                                         "items": [item, bad]}))
    result = raven("validate", path)
    assert result.returncode == 1
    assert f'{path}:1: items[1]: Gateway gw-z: spec.exposeType: "NodePort"' in result.stdout


def test_invalid_lab_topology_uses_the_lab_validator(tmp_path: Path) -> None:
    path = write(tmp_path, "lab.yaml", "name: x\npools:\n- name: p\n  nodes: []\n  colour: red\n")
    result = raven("validate", path)
    assert result.returncode == 1
    assert "colour" in result.stdout and result.stdout.startswith(f"{path}:1: ")


def test_vtep_collision_in_status_is_a_problem(tmp_path: Path) -> None:
    text = GOOD + "  - {nodeName: a-2, privateIP: 26.0.2.1, subnets: [10.244.1.0/24]}\n"
    text = text.replace("192.0.2.1", "10.0.2.1")
    result = raven("validate", write(tmp_path, "c.yaml", text))
    assert result.returncode == 1
    assert "VTEP address collision: a-1 (10.0.2.1), a-2 (26.0.2.1)" in result.stdout


# ---------------------------------------------------------------------------------------------
# raven plan

PLAN_GATEWAYS = str(EXAMPLES / "plan" / "gateways.yaml")
PLAN_NODES = str(EXAMPLES / "plan" / "nodes.yaml")


def test_plan_prints_the_member_state() -> None:
    result = raven("plan", "--gateways", PLAN_GATEWAYS, "--nodes", PLAN_NODES, "--node", "hz-2")
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert out[0] == "node hz-2: member of pool gw-hangzhou"
    # Nothing else in main routes them (no --main-route): main, no policy rule (the agent
    # reads the node's main table for this; raven.route_placement).
    assert ("  10.244.0.0/24 via 246.51.100.11 onlink dev raven0 table main metric 9027 "
            "mtu lock 1420 src 198.51.100.12") in out
    assert not any(line.startswith("rule ") for line in out)


def test_plan_keeps_the_member_rule_when_main_holds_a_route_that_would_win() -> None:
    result = raven("plan", "--gateways", PLAN_GATEWAYS, "--nodes", PLAN_NODES, "--node", "hz-2",
                   "--main-route", "10.244.0.128/25")
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert ("  10.244.0.0/24 via 246.51.100.11 onlink dev raven0 table 9027 mtu lock 1420 "
            "src 198.51.100.12") in out
    assert "rule ipv4 priority 100 lookup 9027" in out
    assert any("table main also routes 10.244.0.128/25 (ours 10.244.0.0/24)" in line
               for line in out)


def test_plan_prints_the_tunnel_namespace_of_an_active_gateway() -> None:
    """The agent's default shape (docs/tunnel-namespace.md): no rule, the routes into the veth,
    the devices and their routes in the tunnel namespace's part."""
    result = raven("plan", "--gateways", PLAN_GATEWAYS, "--nodes", PLAN_NODES, "--node", "hz-1")
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert not [line for line in out if line.strip().startswith("rule ")]
    assert ("  10.244.0.0/24 via 169.254.77.2 onlink dev raven-tun0 table main metric 9027 "
            "mtu lock 1420 src 198.51.100.11") in out
    assert ("veth raven-tun0 169.254.77.1/30 <-> raven-tun1 169.254.77.2 in the tunnel "
            "namespace: mtu 1500, gro on") in out
    inner = out[out.index("tunnel namespace:") + 1:]
    assert "    10.244.0.0/24 dev raven-wg0 table main metric 9027" in inner
    assert "    10.245.1.0/24 via 246.51.100.12 onlink dev raven0 table main metric 9027" in inner
    assert any(line.startswith("  wireguard raven-wg0: ") for line in inner)


def test_plan_prints_the_gateway_delivery_to_members() -> None:
    result = raven("plan", "--gateways", PLAN_GATEWAYS, "--nodes", PLAN_NODES, "--node", "hz-1",
                   "--no-tunnel-namespace")
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert "rule ipv4 priority 100 lookup 9028" not in out  # its routes are in main
    assert "  10.244.0.0/24 dev raven-wg0 table main metric 9027" in out
    assert "rule ipv4 priority 100 iif raven-wg0 lookup 9027" in out
    assert "  10.245.1.0/24 via 246.51.100.12 onlink dev raven0 table 9027" in out


def test_plan_keeps_a_contested_gateway_behind_its_rule() -> None:
    result = raven("plan", "--gateways", PLAN_GATEWAYS, "--nodes", PLAN_NODES, "--node", "hz-1",
                   "--main-route", "10.244.0.0/24", "--no-tunnel-namespace")
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert "rule ipv4 priority 100 lookup 9028" in out
    assert "rule ipv4 priority 100 iif raven-wg0 lookup 9027" in out
    assert "  10.244.0.0/24 dev raven-wg0 table 9028" in out


@pytest.mark.parametrize("node", ["cloud-1", "hz-1", "hz-2", "sh-1", "nobody"])
def test_plan_json_is_exactly_the_planner_output(node: str) -> None:
    result = raven("plan", "--gateways", PLAN_GATEWAYS, "--node", node, "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    gateways = [Gateway.from_k8s(d) for d in yaml.safe_load_all(Path(PLAN_GATEWAYS).read_text())]
    # The agent applies the plan with its warm standby additions (raven.standby).
    options = OverlaySettings(tunnel_namespace=True)  # as the agent plans by default
    expected = route_placement.place(standby.warm(plan_node(gateways, node, options), gateways,
                                                  node, options), (), options).to_json()
    assert out.pop("fleetProblems") == []
    assert out == expected


def test_plan_underlay_mtu() -> None:
    result = raven("plan", "--gateways", PLAN_GATEWAYS, "--node", "hz-1", "--json",
                   "--underlay-mtu", "9000")
    out = json.loads(result.stdout)
    devices = out["tunnel"]  # an active gateway's devices are in its tunnel namespace
    assert devices["vxlan"]["mtu"] == 8950 and devices["wireguard"]["mtu"] == 8920
    assert out["veth"]["mtu"] == 9000


def test_plan_refuses_invalid_gateways_with_every_problem(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.yaml", GOOD.replace("type: tunnel", "type: vpn, publicIP: x"))
    result = raven("plan", "--gateways", path, "--node", "a-1")
    assert result.returncode == 1
    assert '"vpn" is not an endpoint type' in result.stderr
    assert '"x" is not an IP address' in result.stderr


def test_plan_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    result = raven("plan", "--gateways", str(tmp_path / "nope.yaml"), "--node", "a")
    assert result.returncode == 1
    assert "nope.yaml: cannot read it" in result.stderr


def test_json_input_and_v1alpha1_are_accepted(tmp_path: Path) -> None:
    obj = {"apiVersion": "raven.openyurt.io/v1alpha1", "kind": "Gateway",
           "metadata": {"name": "gw-old"},
           "spec": {"endpoints": [{"nodeName": "o-1", "publicIP": "198.51.100.9"}]}}
    result = raven("validate", write(tmp_path, "old.json", json.dumps(obj)))
    assert result.returncode == 0, result.stdout
    assert result.stdout.strip() == "valid: 1 Gateway(s), 0 lab topology file(s)"


@pytest.mark.parametrize(("content", "message"), [
    ("a: 1\nb: \x00\n", "line 2: contains a NUL byte"),
    ("[" * 50_000, "nested more than"),
    ('a: &a ["x","x"]\nb: &b [*a,*a]\nc: [*b,*b]\n', r"YAML aliases (*a) are not accepted"),
])
@pytest.mark.parametrize("command", ["validate", "plan"])
def test_hostile_yaml_is_a_clear_error_without_traceback(
        tmp_path: Path, command: str, content: str, message: str) -> None:
    path = tmp_path / "hostile.yaml"
    path.write_text(content)
    args = [str(path)] if command == "validate" else ["--gateways", str(path), "--node", "a-1"]
    result = raven(command, *args)
    assert result.returncode == 1
    assert f"{path}: " in result.stdout + result.stderr
    assert message in result.stdout + result.stderr
