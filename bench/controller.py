"""Benchmark: the gateway controller at scale.

1. Pure: one full reconcile computation (parse, fleet checks, pool membership, election, status
   for every Gateway) for --gateways Gateways of --nodes-per-pool Nodes each (default 1,000 x 10
   = 10,000 Nodes), the work an event costs the leader.
2. Through the API (embedded API server, in-process, official client): --api-gateways Gateways
   and their Nodes and heartbeat Leases are stored first; then a controller starts and we time
   until every Gateway has its status (the cold start of a new leader), and then one Node
   relabel -> the one affected Gateway's status updated (a steady-state change), with the
   number of status writes it caused (the "write only on change" rule: expected 1).
Prints figures only; `--json` prints a JSON summary as the last line.

    .venv/bin/python bench/controller.py [--gateways 1000] [--nodes-per-pool 10]
                                         [--api-gateways 200] [--json]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from raven import constants
from raven.apiserver.server import start
from raven.apiserver.settings import ApiServerSettings
from raven.controller import (
    ControllerSettings,
    GatewayController,
    compute_status,
    members_by_pool,
)
from raven.kube.client import GATEWAYS, NODES, Kube, KubeSettings
from raven.kube.lease import Heartbeat, LeaderSettings
from raven.model import Gateway, Node, fleet_problems

KEY = "A" * 43 + "="


def node_obj(pool: str, g: int, n: int, per_pool: int) -> dict[str, Any]:
    i = g * per_pool + n
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": f"n-{g:04d}-{n}",
                         "labels": {constants.GATEWAY_LABEL: pool},
                         "annotations": {constants.ANNOTATION_PUBLIC_KEY: KEY}},
            "spec": {"podCIDR": f"10.{i // 256 % 256}.{i % 256}.0/24"},
            "status": {"addresses": [{"type": "InternalIP",
                                      "address": f"172.16.{i // 256 % 256}.{i % 256}"}],
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def gateway_obj(g: int) -> dict[str, Any]:
    return {"apiVersion": "raven.openyurt.io/v1beta1", "kind": "Gateway",
            "metadata": {"name": f"gw-{g:04d}"},
            "spec": {"endpoints": [{"nodeName": f"n-{g:04d}-0", "type": "tunnel"},
                                   {"nodeName": f"n-{g:04d}-1", "type": "tunnel"}]}}


def pure(gateways: int, per_pool: int) -> float:
    objs = [gateway_obj(g) for g in range(gateways)]
    nodes = {}
    for g in range(gateways):
        for n in range(per_pool):
            node = Node.from_k8s(node_obj(f"gw-{g:04d}", g, n, per_pool))
            nodes[node.name] = node
    now = time.time()
    beats = dict.fromkeys(nodes, now)
    start_t = time.perf_counter()
    parsed = [Gateway.from_k8s(o) for o in objs]
    fleet = fleet_problems(parsed, list(nodes.values()))
    pools = members_by_pool(nodes)
    for obj in objs:
        compute_status(obj, nodes, beats, now, fleet, None, pools)
    return time.perf_counter() - start_t


def through_api(gateways: int, per_pool: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="rvb-ctl-") as tmp:
        server = start(ApiServerSettings(data_dir=Path(tmp), port=0))
        kube = Kube(KubeSettings(kubeconfig=server.kubeconfig))
        try:
            for g in range(gateways):
                for n in range(per_pool):
                    kube.create(NODES, node_obj(f"gw-{g:04d}", g, n, per_pool))
                    if n < 2:
                        Heartbeat(kube, f"n-{g:04d}-{n}").renew(time.time() + 3600)
                kube.create(GATEWAYS, gateway_obj(g))
            controller = GatewayController(ControllerSettings(
                kube=KubeSettings(kubeconfig=server.kubeconfig),
                leader=LeaderSettings(lease_duration=15, renew_period=5, retry_period=1),
                resync_period=30.0))
            stop = threading.Event()
            started = time.monotonic()
            thread = threading.Thread(target=controller.run, args=(stop,), daemon=True)
            thread.start()
            while controller.writes < gateways and time.monotonic() - started < 300:
                time.sleep(0.01)
            cold = time.monotonic() - started
            writes_before = controller.writes
            # One member moves to another pool: exactly two Gateways change.
            moved = time.monotonic()
            kube.merge_patch(NODES, "n-0000-5", {"metadata": {"labels": {
                constants.GATEWAY_LABEL: "gw-0001"}}})
            while controller.writes < writes_before + 2 and time.monotonic() - moved < 60:
                time.sleep(0.005)
            change = time.monotonic() - moved
            time.sleep(1.0)
            extra = controller.writes - writes_before
            stop.set()
            thread.join(timeout=30)
            return {"cold_start_s": round(cold, 2), "node_move_s": round(change, 3),
                    "writes_for_the_move": extra, "status_writes_cold": writes_before}
        finally:
            kube.close()
            server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gateways", type=int, default=1000)
    parser.add_argument("--nodes-per-pool", type=int, default=10)
    parser.add_argument("--api-gateways", type=int, default=200)
    parser.add_argument("--json", action="store_true", help="print a JSON summary last")
    args = parser.parse_args()
    seconds = pure(args.gateways, args.nodes_per_pool)
    print(f"pure full reconcile: {args.gateways} Gateways, "
          f"{args.gateways * args.nodes_per_pool} Nodes: {seconds * 1000:.0f} ms", flush=True)
    api = through_api(args.api_gateways, args.nodes_per_pool)
    print(f"through the API ({args.api_gateways} Gateways, "
          f"{args.api_gateways * args.nodes_per_pool} Nodes): new leader writes every status in "
          f"{api['cold_start_s']} s ({api['status_writes_cold']} writes); a Node moving pools "
          f"-> both Gateways updated in {api['node_move_s'] * 1000:.0f} ms with "
          f"{api['writes_for_the_move']} status writes")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process (API server + controller + data): {rss:.0f} MiB")
    if args.json:
        print(json.dumps({"pure_ms": round(seconds * 1000, 1), **api, "peak_rss_mib": rss}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
