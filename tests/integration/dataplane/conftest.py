"""Fixtures for data-plane tests: throwaway namespaces and independent oracles.

Every namespace is `rvt-dp-<6 hex>`; every fixture removes what it made, also after a failure:
data planes are cleaned up (links, routes, rules, nft table, wireguard-go), then namespaces and
temporary directories deleted. wireguard-go runs with `wireguard_run_dir` set, i.e. in a private
mount namespace with its own /var/run/wireguard, and the `wg` oracle is run the same way, so no
other user of /var/run/wireguard on this machine is ever disturbed.
The oracles are the standard tools (`ip -json`, `bridge -json`, `nft -j`, `wg`), never our code.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from raven.dataplane import Dataplane, DataplaneSettings


def run(*argv: str, check: bool = True,
        input: str | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, input=input, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr}")
    return proc


class Node:
    """One throwaway network namespace, with oracles that read it."""

    def __init__(self, name: str, tmp: Path) -> None:
        self.ns = name
        self.state_dir = tmp / name
        self.state_dir.mkdir(parents=True)
        self.run_dir = self.state_dir / "run"
        self._dataplanes: list[Dataplane] = []
        run("ip", "netns", "add", name)
        self.ip("link", "set", "lo", "up")

    def settings(self, **overrides: Any) -> DataplaneSettings:
        values: dict[str, Any] = {"netns": self.ns, "state_dir": self.state_dir,
                                  "wireguard_run_dir": self.run_dir,
                                  "wireguard_backend": "userspace"}
        values.update(overrides)
        return DataplaneSettings(**values)

    def dataplane(self, **overrides: Any) -> Dataplane:
        dp = Dataplane(self.settings(**overrides))
        self._dataplanes.append(dp)
        return dp

    # --- oracles ------------------------------------------------------------------------------

    def ip(self, *args: str, check: bool = True) -> str:
        return run("ip", "-n", self.ns, *args, check=check).stdout

    def ip_json(self, *args: str) -> Any:
        out = run("ip", "-n", self.ns, "-json", *args).stdout.strip()
        return json.loads(out) if out else []

    def link(self, name: str) -> dict[str, Any] | None:
        proc = run("ip", "-n", self.ns, "-json", "-details", "link", "show", name, check=False)
        return json.loads(proc.stdout)[0] if proc.returncode == 0 else None

    def routes(self, table: int) -> list[dict[str, Any]]:
        proc = run("ip", "-n", self.ns, "-json", "route", "show", "table", str(table), check=False)
        if proc.returncode != 0 and "table does not exist" in proc.stderr:
            return []  # the kernel drops an empty table
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout or "[]")

    def rules(self) -> list[dict[str, Any]]:
        return self.ip_json("rule", "show")

    def fdb(self, dev: str) -> list[dict[str, Any]]:
        out = run("bridge", "-n", self.ns, "-json", "fdb", "show", "dev", dev).stdout.strip()
        return [e for e in json.loads(out or "[]") if e.get("dst")]

    def neighbours(self, dev: str) -> list[dict[str, Any]]:
        return self.ip_json("neigh", "show", "dev", dev, "nud", "permanent")

    def nft(self, *args: str) -> list[dict[str, Any]]:
        out = run("ip", "netns", "exec", self.ns, "nft", "-j", *args).stdout
        return json.loads(out)["nftables"]

    def nft_tables(self) -> set[tuple[str, str]]:
        return {(o["table"]["family"], o["table"]["name"]) for o in self.nft("list", "tables")
                if "table" in o}

    def sysctl(self, key: str) -> str:
        return run("ip", "netns", "exec", self.ns, "sysctl", "-n", key).stdout.strip()

    def wg(self, *args: str) -> str:
        """`wg` against this node's wireguard-go (its private /var/run/wireguard)."""
        script = 'mount --bind "$0" /var/run/wireguard && exec "$@"'
        return run("unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                   str(self.run_dir), "wg", *args).stdout

    def wg_dump(self, dev: str = "raven-wg0") -> dict[str, dict[str, str]]:
        """Peers from `wg show DEV dump`: public key -> fields."""
        lines = self.wg("show", dev, "dump").strip().splitlines()[1:]
        peers = {}
        for line in lines:
            key, psk, endpoint, allowed, handshake, rx, tx, keepalive = line.split("\t")
            peers[key] = {"psk": psk, "endpoint": endpoint, "allowed_ips": allowed,
                          "handshake": handshake, "rx": rx, "tx": tx, "keepalive": keepalive}
        return peers

    def exec(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run("ip", "netns", "exec", self.ns, *argv, check=check)

    def close(self) -> None:
        for dp in self._dataplanes:
            dp.close()
        try:
            # A fresh data plane removes everything of ours (also what the CLI or a closed data
            # plane left): links, routes, rules, the nft table and the recorded wireguard-go.
            with Dataplane(self.settings()) as dp:
                dp.cleanup()
        finally:
            run("ip", "netns", "del", self.ns, check=False)


@pytest.fixture
def make_node() -> Iterator[Callable[[], Node]]:
    tmp = Path(tempfile.mkdtemp(prefix="rvt-dp-"))
    nodes: list[Node] = []

    def factory() -> Node:
        node = Node(f"rvt-dp-{secrets.token_hex(3)}", tmp)
        nodes.append(node)
        return node

    try:
        yield factory
    finally:
        errors = []
        for node in nodes:
            try:
                node.close()
            except Exception as exc:  # keep closing the others
                errors.append(exc)
        shutil.rmtree(tmp, ignore_errors=True)
        if errors:
            raise errors[0]


@pytest.fixture
def node(make_node: Callable[[], Node]) -> Node:
    return make_node()


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    """Poll with a generous bound (a correctness check, not a performance threshold)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.fixture
def wait() -> Callable[..., bool]:
    return wait_for
