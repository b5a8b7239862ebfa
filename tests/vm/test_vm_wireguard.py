"""The kernel WireGuard backend, live in a real kernel (Debian's 6.1 in qemu via virtme-ng).

One boot for this module: guest_wireguard.py performs every check inside the VM with the
kernel's own tools as oracles (`wg show`, `wg showconf`, `ip -json`, ping) and reports JSON;
the tests below assert on it. Slow by nature (software emulation): see docs/dataplane.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import vmrun

from raven.dataplane.wireguard import genl
from raven.dataplane.wireguard.model import DeviceWrite, PeerWrite

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "guest_wireguard.py"

pytestmark = [pytest.mark.vm, pytest.mark.root]

# What the driver imports, bundled for the guest (see vmrun.py): the data plane, the
# integration helpers it reuses, and pytest (the integration test module imports it).
BUNDLE = ["raven.dataplane", "raven.desired", "pytest", "json", "hashlib", "secrets",
          "tempfile", "threading", "traceback", "vmrun"]


@pytest.fixture(scope="module")
def vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    reason = vmrun.unavailable()
    if reason:
        pytest.skip(reason)
    bundle = vmrun.build_bundle(tmp_path_factory.mktemp("vm") / "bundle.zip", BUNDLE)
    run = vmrun.run_in_vm(vmrun.guest_python(bundle, DRIVER), timeout=1200)
    # Figures for the record (not pass/fail): shown with -rA / -s, kept next to the bundle
    # and, with RAVEN_VM_RESULTS=FILE, where pytest does not clean up.
    for path in (bundle.parent / "results.json", os.environ.get("RAVEN_VM_RESULTS")):
        if path:
            Path(path).write_text(json.dumps(run.results, indent=1))
    sys.stderr.write(
        f"\n[vm] vng total {run.seconds:.0f}s; guest uptime at shell "
        f"{run.results.get('shell_uptime_s')}s, python {run.results.get('python_uptime_s')}s, "
        f"imports done {run.results.get('guest', {}).get('imports_done_uptime_s')}s; "
        + ", ".join(f"{k} {v.get('seconds')}s" for k, v in run.results.items()
                    if isinstance(v, dict) and "seconds" in v)
        + f"; results in {bundle.parent / 'results.json'}\n")
    assert run.done, run.explain()
    yield {**run.results, "_run": run}


def result(vm: dict[str, Any], name: str) -> dict[str, Any]:
    out = vm[name]
    assert "error" not in out, f"{name} failed in the guest:\n{out.get('traceback')}"
    return out


def digest(items: set[str] | frozenset[str] | tuple[str, ...]) -> str:
    return hashlib.sha256("\n".join(sorted(items)).encode()).hexdigest()


def big_allowed_ips() -> tuple[str, ...]:
    # The same list the driver applies, computed here independently of the guest.
    return tuple(sorted(["10.2.0.0/16",
                         *(f"10.{64 + i // 256}.{i % 256}.0/24" for i in range(9_999))]))


def test_guest_runs_a_kernel_with_wireguard(vm: dict[str, Any]) -> None:
    guest = vm["guest"]
    assert guest["kernel"].startswith("6.")
    assert vmrun.kernel_has_wireguard(guest["kernel"])


def test_integration_kernel_backend_test_passes_in_the_vm(vm: dict[str, Any]) -> None:
    """tests/integration/dataplane::test_kernel_backend skips on this host (no module)."""
    out = result(vm, "integration_kernel_backend")
    assert out["outcome"] == "passed", out


NOTHING = {"wg_set": 0, "rtnl": 0, "nft_batches": 0}


def saw(tapped: dict[str, Any]) -> dict[str, int]:
    """What the kernel's netlink tap (nlmon) saw written during one apply."""
    return {k: tapped["kernel_saw"][k] for k in NOTHING}


def set_messages(allowed: tuple[str, ...], **device: Any) -> int:
    """How many WG_CMD_SET_DEVICE messages our encoder makes of one new peer with `allowed`."""
    peer = PeerWrite(public_key="A" * 43 + "=", endpoint="198.51.100.2:4500", keepalive=25,
                     replace_allowed_ips=True, allowed_ips=allowed)
    return len(genl.encode_set("raven-wg0", DeviceWrite(peers=(peer,), **device)))


def test_one_peer_with_10000_allowed_ips(vm: dict[str, Any]) -> None:
    out = result(vm, "tunnel_10000_allowed_ips")
    big = big_allowed_ips()
    # The kernel received the first apply as several SET messages, as many as we meant.
    assert out["tap_dropped"] == [0, 0]  # the tap saw every netlink message
    first = out["first"]
    assert first["kernel_saw"]["wg_set"] == set_messages(
        big, private_key="A" * 43 + "=", listen_port=4500) > 1, first
    # The tap sees the other writes of a first apply too (link, route, rule; nft table).
    assert first["kernel_saw"]["rtnl"] >= 3 and first["kernel_saw"]["nft_batches"] >= 1, first
    assert out["kind"] == "wireguard"
    assert out["allowed"] == {"count": 10_000, "digest": digest(big), "missing": [],
                              "extra": []}
    assert out["ping"], "no traffic through the tunnel"
    # One removal is a replace of 9,999 IPs over several messages; then one addition.
    fewer = tuple(ip for ip in big if ip != "10.64.7.0/24")
    assert out["removal"]["ours"] == 1 and out["readd"]["ours"] == 1
    assert out["removal"]["kernel_saw"]["wg_set"] > 1  # 9,999 replaced over several messages
    assert saw(out["readd"]) == {"wg_set": 1, "rtnl": 0, "nft_batches": 0}
    assert out["after_removal"] == {"count": 9_999, "digest": digest(fewer), "missing": [],
                                    "extra": []}
    assert out["ping_after_removal"]
    assert out["after_readd"]["count"] == 10_000 and out["after_readd"]["digest"] == digest(big)


def test_second_identical_apply_writes_nothing_and_keeps_the_handshake(
        vm: dict[str, Any]) -> None:
    out = result(vm, "tunnel_10000_allowed_ips")
    # Nothing written: by our count, and by the kernel's netlink tap on both gateways.
    assert out["tap_dropped"] == [0, 0]
    assert [t["ours"] for t in out["second"]] == [0, 0]
    assert [saw(t) for t in out["second"]] == [NOTHING, NOTHING]
    assert out["showconf_unchanged"] == [True, True]
    before, after = out["handshake"]
    assert before != "0" and after == before, out["handshake"]
    assert out["b_learned_endpoint"] == "198.51.100.1:4500"  # learned, and not overwritten
    assert out["ping_after"] == [True, True]


def test_1000_peers(vm: dict[str, Any]) -> None:
    out = result(vm, "thousand_peers")
    assert (out["peer_count"], out["peers_missing"], out["peers_extra"]) == (1000, [], [])
    assert (out["peers_wrong_count"], out["peers_wrong"]) == (0, [])
    assert out["tap_dropped"] == 0  # the tap saw every netlink message
    assert out["first"]["kernel_saw"]["wg_set"] > 1  # 1,000 peers do not fit one message
    assert out["second"]["ours"] == 0 and saw(out["second"]) == NOTHING
    assert out["showconf_unchanged"]
    assert out["change"]["ours"] == 1 and out["change"]["kernel_saw"]["wg_set"] >= 1
    assert out["after_change_peer_count"] == 900 and out["after_change_equal"]


def test_kernel_backend_with_only_the_agent_capabilities(vm: dict[str, Any]) -> None:
    """NET_ADMIN and NET_RAW, the rest dropped, are enough for an agent that keeps its devices
    in the node's namespace (--tunnel-netns ''); the default tunnel namespace needs
    CAP_SYS_ADMIN too (agent/daemonset.yaml runs privileged)."""
    out = result(vm, "privileges")["kernel"]
    assert result(vm, "privileges")["module_loaded_after"]
    # CAP_NET_ADMIN is bit 12, CAP_NET_RAW bit 13: nothing else in any set.
    assert int(out["caps"]["CapEff"], 16) == (1 << 12) | (1 << 13), out["caps"]
    assert int(out["caps"]["CapBnd"], 16) == (1 << 12) | (1 << 13), out["caps"]
    assert out["ok"], out.get("error")
    assert out["second_writes"] == 0
    assert out["link_kind"] == "wireguard"
    assert out["oracle_listen_port"] == "4500"
    assert {v["allowed_ips"] for v in out["oracle_peers"].values()} == {"10.2.0.0/16"}


def test_userspace_backend_with_only_the_agent_capabilities(vm: dict[str, Any]) -> None:
    out = result(vm, "privileges")["userspace"]
    assert int(out["caps"]["CapEff"], 16) == (1 << 12) | (1 << 13), out["caps"]
    assert out["ok"], out.get("error")
    assert out["link_kind"] == "tun"
    assert {v["allowed_ips"] for v in out["oracle_peers"].values()} == {"10.2.0.0/16"}
    assert out["userspace_stopped"]
