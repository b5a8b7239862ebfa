"""`raven version`: print the version and the tool backends found on this machine."""

from __future__ import annotations

import argparse
import shutil

from raven import __version__


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("version", help="print the version and the tools found")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print(f"raven {__version__}")
    for tool in ("ip", "nft", "wg", "wireguard-go", "iperf3", "kubectl"):
        print(f"  {tool:13} {shutil.which(tool) or 'not found'}")
    return 0
