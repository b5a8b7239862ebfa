"""The lab's package data works from a real installed wheel, not only from the source tree.

Builds the wheel from a clean copy of the working tree, installs it (not editable) into a fresh
virtualenv, and runs `raven lab plan <bundled topology> --manifests` from a directory outside the
repository: that needs the bundled topology and the Gateway CRD, both read through
importlib.resources; and `raven lab vagrantfile`, which finds the source tree the machines install
through importlib.resources too (from a wheel there is none: it asks for --project). The venv
gets the project's dependencies by a path entry to the project's own site-packages (no
download); `raven` itself must come from the wheel, which is checked.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _copy_tree(dest: Path) -> None:
    """Tracked and new files of the working tree, symlinks kept as symlinks."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src, dst = ROOT / name, dest / name
        if not src.is_symlink() and not src.exists():
            continue  # deleted in the working tree
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            dst.symlink_to(os.readlink(src))
        elif src.is_file():
            shutil.copy2(src, dst)


def test_wheel_ships_crd_and_topologies_and_runs_outside_the_repo(tmp_path: Path) -> None:
    source = tmp_path / "src"
    _copy_tree(source)
    dist = tmp_path / "dist"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                            str(dist), str(source)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    (wheel,) = dist.glob("raven_overlay-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        crd = zf.read("raven/lab/data/gateway-crd.yaml")
    assert crd == (ROOT / "gateway" / "crd.yaml").read_bytes()  # the same single source
    bundled = {p.name for p in (ROOT / "test-topologies").glob("*.yaml")}
    assert bundled and {f"raven/lab/topologies/{n}" for n in bundled} <= names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps",
                              "--no-index", str(wheel)], capture_output=True, text=True,
                             timeout=300)
    assert install.returncode == 0, install.stderr
    # Dependencies (pyyaml, kubernetes, ...) from the project's interpreter, as a plain path
    # entry: .pth files there (the editable install of raven) are not processed.
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; "
                                "print(sysconfig.get_paths()['purelib'])"], capture_output=True,
                               text=True, check=True).stdout.strip())
    (site / "zz_project_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    where = subprocess.run([str(python), "-c", "import raven; print(raven.__file__)"],
                           cwd=outside, env=env, capture_output=True, text=True, check=True)
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout

    plan = subprocess.run([str(venv / "bin" / "raven"), "lab", "plan", "three-pools",
                           "--manifests"], cwd=outside, env=env, capture_output=True, text=True,
                          timeout=120)
    assert plan.returncode == 0, plan.stderr
    docs = list(yaml.safe_load_all(plan.stdout))
    assert docs[0]["kind"] == "CustomResourceDefinition"
    assert docs[0]["metadata"]["name"] == "gateways.raven.openyurt.io"
    three_pools = yaml.safe_load((ROOT / "test-topologies" / "three-pools.yaml").read_text())
    assert [d["metadata"]["name"] for d in docs[1:]] == [p["gateway"]
                                                         for p in three_pools["pools"]]

    missing = subprocess.run([str(venv / "bin" / "raven"), "lab", "plan", "no-such-topology"],
                             cwd=outside, env=env, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2
    assert "three-pools" in missing.stderr and "Traceback" not in missing.stderr

    # The Vagrantfile's machines install raven from a source tree: the wheel has none (the
    # package's directory is site-packages), so the command asks for one instead of syncing
    # site-packages; given one, it syncs that.
    vagrantfile = [str(venv / "bin" / "raven"), "lab", "vagrantfile", "three-pools", "-"]
    refused = subprocess.run(vagrantfile, cwd=outside, env=env, capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode != 0 and refused.stdout == ""
    assert "--project DIR" in refused.stderr and "installed from a wheel" in refused.stderr
    assert "Traceback" not in refused.stderr
    given = subprocess.run([*vagrantfile, "--project", str(source)], cwd=outside, env=env,
                           capture_output=True, text=True, timeout=120)
    assert given.returncode == 0, given.stderr
    assert f'synced_folder "{source.resolve()}", "/opt/raven-src"' in given.stdout
