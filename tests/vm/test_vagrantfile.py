"""`raven lab vagrantfile`: the Vagrantfile it writes is valid for Vagrant itself.

Oracle: `vagrant validate --ignore-provider` (Debian's vagrant, installed by scripts/setup.sh),
which loads the file with Vagrant's own Ruby and checks every machine's configuration; no
hypervisor or box is needed. Skips, saying why, only where vagrant is not installed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RAVEN = [sys.executable, "-m", "raven.cli"]


def vagrant() -> str:
    found = shutil.which("vagrant")
    if found is None:
        pytest.skip("vagrant is not installed (scripts/setup.sh installs Debian's vagrant)")
    return found


@pytest.mark.parametrize("topology", ["mixed-vm", "three-pools"])
def test_vagrantfile_validates(tmp_path: Path, topology: str) -> None:
    tool = vagrant()
    out = tmp_path / "Vagrantfile"
    written = subprocess.run([*RAVEN, "lab", "vagrantfile", topology, str(out)],
                             capture_output=True, text=True, timeout=60)
    assert written.returncode == 0, written.stderr
    text = out.read_text()
    plan = subprocess.run([*RAVEN, "lab", "plan", topology], capture_output=True, text=True,
                          check=True, timeout=60)
    import json

    planned = json.loads(plan.stdout)
    # Every router, node and the control plane is a machine with its planned LAN address.
    for pool in planned["pools"]:
        assert f'config.vm.define "router-{pool["name"]}"' in text
        for node in pool["nodes"]:
            assert f'config.vm.define "{node["name"]}"' in text
            assert f'ip: "{node["underlayIP"]}"' in text
            assert f'"--node", "{node["name"]}"' in text or f"--node {node['name']}" in text
    assert 'config.vm.define "control-plane"' in text
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin:/usr/sbin:/sbin",
           "VAGRANT_CHECKPOINT_DISABLE": "1"}
    result = subprocess.run([tool, "validate", "--ignore-provider"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "validated successfully" in result.stdout


def test_vagrant_validate_rejects_a_broken_file(tmp_path: Path) -> None:
    """The oracle can fail: a machine with an unknown setting is refused."""
    tool = vagrant()
    (tmp_path / "Vagrantfile").write_text(
        'Vagrant.configure("2") do |config|\n  config.vm.box = "debian/bookworm64"\n'
        '  config.vm.no_such_setting = 1\nend\n')
    result = subprocess.run([tool, "validate", "--ignore-provider"], cwd=tmp_path,
                            env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0


def test_vagrantfile_refuses_an_invalid_topology(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("pools:\n  - name: a\n    nodes:\n      - {name: n1, podCIDR: 10.0.0.0/24, "
                   "kind: kvm}\n")
    result = subprocess.run([*RAVEN, "lab", "vagrantfile", str(bad), str(tmp_path / "V"),
                             "--name", "x"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "field 'kind': 'kvm' is not one of netns, vm" in result.stderr
    assert not (tmp_path / "V").exists()
