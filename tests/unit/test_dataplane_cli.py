"""`raven agent` parses both its run mode and `raven agent cleanup` (no root needed)."""

from __future__ import annotations

from pathlib import Path

from raven.cli import build_parser
from raven.commands.agent import run_cleanup


def test_cleanup_subcommand_parses_its_options() -> None:
    args = build_parser().parse_args(
        ["agent", "cleanup", "--netns", "rvt-dp-x", "--state-dir", "/tmp/rvt-dp-x"])
    assert args.func is run_cleanup
    assert (args.netns, args.state_dir) == ("rvt-dp-x", Path("/tmp/rvt-dp-x"))


def test_run_mode_without_subcommand_goes_to_the_agent() -> None:
    args = build_parser().parse_args(["agent", "--node", "n1"])
    assert args.func is not run_cleanup and args.node == "n1"
    assert getattr(args, "agent_command", None) is None


def test_cleanup_of_a_missing_namespace_is_a_clear_error(capsys) -> None:
    from raven.cli import main

    code = main(["agent", "cleanup", "--netns", "rvt-dp-absent", "--state-dir", "/tmp/rvt-dp-x"])
    err = capsys.readouterr().err
    assert code == 1
    assert "network namespace 'rvt-dp-absent' does not exist" in err and "Traceback" not in err
