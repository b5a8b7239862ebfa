"""Nodes of kind vm in topology files and lab plans (pure), and the guest's Python bundle.

The bundle test runs a program from a bundle on this machine with the flags the guest uses
(python -S: no site scan), which is how a VM node starts its agent (raven.lab.vmbundle).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from raven.errors import ValidationError
from raven.lab import vm, vmbundle
from raven.lab.plan import plan_from_json, plan_lab, plan_to_json
from raven.lab.topology import find_topology, load_topology, parse_topology


def doc(kind: object = "vm") -> dict:
    return {"name": "t", "pools": [
        {"name": "cloud", "nodes": [{"name": "c1", "podCIDR": "10.244.0.0/24",
                                     "gatewayCandidate": True}]},
        {"name": "edge", "nat": "cone", "nodes": [
            {"name": "e1", "podCIDR": "10.244.1.0/24", "gatewayCandidate": True,
             "kind": kind, "pods": 2}]}]}


def test_kind_defaults_to_netns_and_vm_is_accepted() -> None:
    topo = parse_topology(doc())
    assert [n.kind for p in topo.pools for n in p.nodes] == ["netns", "vm"]


@pytest.mark.parametrize("bad", ["kvm", "", 1, True, None])
def test_unknown_kind_is_a_problem_naming_the_node(bad: object) -> None:
    with pytest.raises(ValidationError) as err:
        parse_topology(doc(bad))
    assert any("pool 'edge' node 'e1': field 'kind'" in p and "netns, vm" in p
               for p in err.value.problems)


def test_plan_keeps_vm_pods_out_of_the_host_namespaces_and_round_trips() -> None:
    plan = plan_lab(parse_topology(doc()), "t")
    names = plan.netns_names()
    assert "t.e1" in names  # the VM's chassis namespace on the host
    assert not [n for n in names if n.startswith("t.e1-pod")]  # pods live in the guest
    assert {"e1-pod0", "e1-pod1"} <= set(plan.targets())  # but are targets all the same
    again = plan_from_json(plan_to_json(plan))
    assert again == plan
    assert [n.is_vm for _, n in again.nodes()] == [False, True]
    old = plan_to_json(plan)  # a state.json written before `kind` existed
    for pool in old["pools"]:
        for node in pool["nodes"]:
            del node["kind"]
    assert not any(n.is_vm for _, n in plan_from_json(old).nodes())


def test_vm_targets_and_addresses() -> None:
    plan = plan_lab(parse_topology(doc()), "t")
    assert vm.node_of(plan, "e1").name == "e1"
    assert vm.node_of(plan, "e1-pod1").name == "e1"
    assert vm.node_of(plan, "c1") is None and vm.node_of(plan, "c1-pod0") is None
    node = dict((n.name, n) for _, n in plan.nodes())["e1"]
    assert vm.mac(0x54, node.underlay_ip) == "52:54:c6:12:02:0a"  # 198.18.2.10
    assert vm.mac(0x54, node.underlay_ip) != vm.mac(0x55, node.underlay_ip)


def test_bundled_mixed_topology_has_one_vm_gateway_in_a_nat_pool() -> None:
    topo = load_topology(find_topology("mixed-vm"))
    vms = [(p, n) for p in topo.pools for n in p.nodes if n.kind == "vm"]
    assert len(vms) == 1
    pool, node = vms[0]
    assert pool.nat != "none" and node.gateway_candidate
    assert {p.nat for p in topo.pools} == {"none", "cone", "symmetric"}


def test_bundle_starts_the_agent_cli_and_finds_lazy_modules(tmp_path: Path) -> None:
    bundle = vmbundle.build(tmp_path / "bundle.zip", ["raven.cli", "raven.commands.agent",
                                                        "raven.agent"])
    # raven.kube.client is imported lazily by the agent and is not in this bundle: the
    # fallback must find it in its package's folder although raven.kube's __path__ is the zip.
    argv = vmbundle.python_argv(bundle, "raven.cli", ["agent", "--help"])
    assert argv[1:4] == ["-S", "-E", "-B"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--node" in proc.stdout
    boot = argv[5].split("runpy.run_module")[0] + (
        "import raven.cli, raven.kube.client, certifi, raven.lab.vm\n"
        "print(raven.kube.__file__); print(raven.kube.client.__file__); print(certifi.where())")
    probe = [*argv[:5], boot]
    out = subprocess.run(probe, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    kube, client, cacert = out.stdout.split()
    assert kube.startswith(str(bundle))  # the package from the zip ...
    assert client.endswith("raven/kube/client.py")  # ... its lazy module from the filesystem
    assert Path(cacert).is_file()  # a package with data files is left on the filesystem
