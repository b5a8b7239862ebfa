"""`raven lab plan` (no root): bundled topologies by name, the CRD from package data, clear
errors; every verb of the lab lives in raven/commands/lab.py."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

from raven.commands import lab as lab_commands
from raven.lab.plan import plan_lab, plan_to_json
from raven.lab.topology import load_topology

ROOT = Path(__file__).resolve().parents[2]


def raven(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "raven.cli", *args], capture_output=True,
                          text=True, timeout=60, cwd=cwd)


def test_plan_of_a_bundled_topology_is_the_plan_of_its_file(tmp_path: Path) -> None:
    result = raven("lab", "plan", "two-pools", cwd=tmp_path)  # outside the repository
    assert result.returncode == 0, result.stderr
    path = ROOT / "test-topologies" / "two-pools.yaml"
    want = plan_to_json(plan_lab(load_topology(path), "two-pools"))
    got = json.loads(result.stdout)
    assert {k: v for k, v in got.items() if k != "source"} == \
        {k: v for k, v in want.items() if k != "source"}


def test_manifests_are_the_crd_and_one_gateway_per_pool() -> None:
    result = raven("lab", "plan", "three-pools.yaml", "--manifests")
    assert result.returncode == 0, result.stderr
    docs = list(yaml.safe_load_all(result.stdout))
    assert docs[0] == yaml.safe_load((ROOT / "gateway" / "crd.yaml").read_text())
    assert [d["kind"] for d in docs[1:]] == ["Gateway"] * 3


def test_unknown_topology_names_the_bundled_ones() -> None:
    result = raven("lab", "plan", "four-pools")
    assert result.returncode == 2
    assert "no bundled topology of that name" in result.stderr
    assert "three-pools" in result.stderr and "Traceback" not in result.stderr


def test_invalid_topology_file_is_reported_not_raised(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("pools:\n  - name: x\n    nodes: *nope\n")
    result = raven("lab", "plan", str(bad))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "aliases" in result.stderr


def test_every_lab_verb_is_registered_by_the_one_cli_module() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    lab_commands.register(sub)
    (action,) = [a for a in sub.choices["lab"]._actions
                 if isinstance(a, argparse._SubParsersAction)]
    verbs = action.choices
    assert {"up", "plan", "down", "status", "list", "logs", "exec", "ping", "demo", "kubeconfig",
            "agent-restart", "node-down", "node-up", "disconnect", "reconnect", "gateway-fail",
            "control-plane-stop", "control-plane-start", "gateways"} <= set(verbs)
    for verb, parser in verbs.items():
        assert parser.get_default("func").__module__ == lab_commands.__name__, verb
    assert not (ROOT / "raven" / "lab" / "overlay_cli.py").exists()


def test_agent_readiness_file_is_the_one_the_agent_writes() -> None:
    from raven import agent
    from raven.lab import cluster

    assert cluster.AGENT_STATUS_FILE == agent.STATUS_FILE
