"""An agent that cannot make its tunnel namespace (no CAP_SYS_ADMIN: a container from before the
tunnel namespace was the default) keeps the devices in the node's namespace and says why,
instead of failing every apply (docs/tunnel-namespace.md, "Privileges")."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import raven.dataplane
from raven.agent_command import _with_tunnel_namespace_if_allowed
from raven.dataplane.netns import privilege_problem
from raven.errors import CommandError
from raven.settings import AgentSettings, OverlaySettings

STATUS = "Name:\tpython3\nCapInh:\t0000000000000000\nCapEff:\t{caps}\nCapBnd:\t000001ffffffffff\n"


def status(tmp_path: Path, caps: str) -> Path:
    path = tmp_path / "status"
    path.write_text(STATUS.format(caps=caps))
    return path


def test_root_has_the_privilege(tmp_path: Path) -> None:
    assert privilege_problem(status(tmp_path, "000001ffffffffff"), tmp_path / "netns") is None


def test_net_admin_and_net_raw_alone_are_not_enough(tmp_path: Path) -> None:
    # CAP_NET_ADMIN (12) and CAP_NET_RAW (13): the DaemonSet before the tunnel namespace
    problem = privilege_problem(status(tmp_path, f"{(1 << 12) | (1 << 13):016x}"))
    assert problem is not None and "CAP_SYS_ADMIN" in problem and "privileged" in problem


def test_an_unreadable_status_is_a_problem(tmp_path: Path) -> None:
    assert "unreadable" in (privilege_problem(tmp_path / "missing") or "")


def test_the_agent_falls_back_to_the_node_namespace(monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture,
                                                      tmp_path: Path) -> None:
    monkeypatch.setattr(raven.dataplane, "tunnel_namespace_problem",
                        lambda: "no CAP_SYS_ADMIN: ...")
    on = AgentSettings(node="n", state_dir=tmp_path, tunnel_netns="raven-tun",
                       overlay=OverlaySettings(tunnel_namespace=True))  # nothing recorded
    with caplog.at_level(logging.WARNING):
        got = _with_tunnel_namespace_if_allowed(on, logging.getLogger("test"))
    assert got.tunnel_netns is None and not got.overlay.tunnel_namespace
    assert "raven-tun" in caplog.text and "no CAP_SYS_ADMIN" in caplog.text


def test_the_agent_keeps_the_namespace_when_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(raven.dataplane, "tunnel_namespace_problem", lambda: None)
    on = AgentSettings(node="n", tunnel_netns="raven-tun",
                       overlay=OverlaySettings(tunnel_namespace=True))
    assert _with_tunnel_namespace_if_allowed(on, logging.getLogger("test")) == on


def test_the_agent_default_is_the_tunnel_namespace() -> None:
    assert AgentSettings().tunnel_netns == "raven-tun"


def test_a_namespace_an_earlier_agent_made_is_not_stranded(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    """An earlier, privileged agent made `raven-tun` (recorded in the state directory): this
    one cannot use or remove it, and its devices hold raven0's VNI and the WireGuard port, so a
    fallback would fail every apply. It refuses to start, naming the namespace and the fix."""
    monkeypatch.setattr(raven.dataplane, "tunnel_namespace_problem",
                        lambda: "no CAP_SYS_ADMIN: ...")
    (tmp_path / "tunnel-netns").write_text("raven-tun\n")
    on = AgentSettings(node="n", state_dir=tmp_path, tunnel_netns="raven-tun",
                       overlay=OverlaySettings(tunnel_namespace=True))
    with pytest.raises(CommandError, match="tunnel namespace 'raven-tun', made by an earlier") \
            as refused:
        _with_tunnel_namespace_if_allowed(on, logging.getLogger("test"))
    assert "ip netns delete raven-tun" in str(refused.value)
    assert str(tmp_path / "tunnel-netns") in str(refused.value)
