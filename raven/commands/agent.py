"""`raven agent`: the node agent (run mode) and `raven agent cleanup`.

`raven agent cleanup [--netns NS] [--state-dir DIR]` removes every link, route, rule,
neighbour, nft table and process of ours from a node and nothing else (the WireGuard private key
in the state directory is kept: it is the node's identity).
Without a subcommand, `raven agent --node NAME ...` runs the agent; its arguments and entry point
live in raven/agent_command.py (`add_run_arguments(parser)`, `run_agent(args)`), so this module
only wires the two together.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from raven.errors import CommandError
from raven.settings import AgentSettings, default_of, help_for


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "agent", help="run the node agent, or clean up its data plane",
        description="Run the node agent (no subcommand) or `cleanup` its data plane.",
    )
    from raven import agent_command

    agent_command.add_run_arguments(parser)
    parser.set_defaults(func=agent_command.run_agent)
    verbs = parser.add_subparsers(dest="agent_command", metavar="SUBCOMMAND")  # optional
    cleanup = verbs.add_parser(
        "cleanup", help="remove every link, route, rule, neighbour, nft table and process of ours",
        description="Remove the agent's data plane from this node (or a network namespace): "
        "raven0, raven-wg0 and wireguard-go, routes in tables 9027/9028 and ours in main "
        "(protocol 82), the rules that look them up and the nftables table inet raven. "
        "Nothing else is touched; the private key is kept.",
    )
    cleanup.add_argument("--netns", default=None, help="network namespace (default: ours)")
    cleanup.add_argument("--state-dir", type=Path, default=default_of(AgentSettings, "state_dir"),
                         help=help_for(AgentSettings, "state_dir") + "; holds the wireguard-go "
                         "pid file")
    cleanup.add_argument("--tunnel-netns", default=None, metavar="NAME",
                         help="the tunnel namespace the agent ran with (--tunnel-netns): "
                         "deleted with everything in it")
    cleanup.add_argument("--wireguard-run-dir", type=Path, default=None,
                         help=argparse.SUPPRESS)  # labs/tests that give wireguard-go its own dir
    cleanup.set_defaults(func=run_cleanup)


def run_cleanup(args: argparse.Namespace) -> int:
    from raven.dataplane import Dataplane, DataplaneError, DataplaneSettings
    from raven.failover import ProbeSettings
    from raven.healthprobe import responder

    # The responders first: one in the tunnel namespace would keep it alive, unnamed.
    stopped = [f"probe responder stopped ({pid_file})"
               for pid_file in (responder.TUNNEL_PID_FILE, responder.PID_FILE)
               if responder.stop(args.state_dir, ProbeSettings().port, pid_file)]
    try:
        settings = DataplaneSettings(netns=args.netns, state_dir=args.state_dir,
                                     tunnel_netns=args.tunnel_netns,
                                     wireguard_run_dir=args.wireguard_run_dir)
        with Dataplane(settings) as dataplane:
            changes = dataplane.cleanup()
    except DataplaneError as exc:
        raise CommandError(f"agent cleanup: {exc}") from exc
    changes = [*stopped, *changes]
    for change in changes:
        print(change)
    print(f"cleanup: {len(changes)} objects removed" if changes
          else "cleanup: nothing of ours found")
    return 0
