"""Kubelet stand-in of a lab: registers every lab node as a Kubernetes Node and keeps its status.

There is no kubelet in the lab, so this daemon (one per lab, supervised in the control-plane
namespace, where it reaches the API server) does what kubelets plus the node lifecycle
controller would do for the facts the overlay reads:
- registers each node with its InternalIP (underlay address), Hostname, podCIDR(s) and the pool
  label `raven.openyurt.io/gateway=<gateway>` (what `--node-labels` would set);
- keeps the Ready condition: True while the node "posts status", i.e. its host is running
  (mount-namespace holder alive), it is not powered off by a fault (`faults/down/<node>`) and
  its pool still reaches the control plane (`faults/disconnected/<pool>`); after `grace`
  seconds without posting, Ready turns Unknown (NodeStatusUnknown), like the node lifecycle
  controller's 40 s node-monitor-grace-period.
Rules kept:
- it writes only on change (registration, a Ready transition): a steady lab makes no API
  writes, so watchers see no churn;
- it never touches labels or annotations it did not set (agents publish their keys there);
- the lab's fault markers are plain files under the run directory, written by raven.lab.faults;
- the grace deadline runs on the monotonic clock (a wall-clock step never marks a node down or
  keeps it up); the wall clock only stamps the condition's times.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from raven import constants
from raven.kube.client import JSON, NODES, Kube, KubeSettings
from raven.kube.errors import AlreadyExists, KubeError, NotFound
from raven.lab import runtime
from raven.lab.plan import LabPlan, NodePlan, PoolPlan
from raven.settings import DEFAULT_NODE_GRACE
from raven.timefmt import to_time

log = logging.getLogger("raven.lab.kubelet")

DEFAULT_GRACE = DEFAULT_NODE_GRACE  # the lab section of the settings root (raven.settings)
DEFAULT_PERIOD = 1.0  # how often the stand-in looks at the nodes


def faults_dir(lab: str) -> Path:
    return runtime.run_dir(lab) / "faults"


def down_marker(lab: str, node: str) -> Path:
    return faults_dir(lab) / "down" / node


def disconnected_marker(lab: str, pool: str) -> Path:
    return faults_dir(lab) / "disconnected" / pool


def node_object(pool: PoolPlan, node: NodePlan) -> JSON:
    """The Node a kubelet would register for a lab node (status Ready)."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node.name,
            "labels": {
                constants.GATEWAY_LABEL: pool.gateway,
                "kubernetes.io/hostname": node.name,
                "kubernetes.io/os": "linux",
                "raven.openyurt.io/lab-pool": pool.name,
            },
        },
        # podCIDR is podCIDRs[0], as the node IPAM controller keeps them (dual-stack: both).
        "spec": {"podCIDR": node.pod_cidr, "podCIDRs": list(node.cidrs())},
        "status": {
            # One InternalIP per underlay family, the one the overlay uses (IPv4 unless the
            # pool's underlay is IPv6 only) first, as a dual-stack kubelet reports them.
            "addresses": [*({"type": "InternalIP", "address": a} for a in node.underlay_ips()),
                          {"type": "Hostname", "address": node.name}],
            "conditions": [ready_condition(True, time.time())],
        },
    }


def ready_condition(ready: bool, now: float, since: float | None = None) -> JSON:
    stamp = to_time(now)
    changed = to_time(since if since is not None else now)
    if ready:
        return {"type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "lab node is up (raven lab kubelet stand-in)",
                "lastHeartbeatTime": stamp, "lastTransitionTime": changed}
    return {"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
            "message": "Kubelet stopped posting node status.",
            "lastHeartbeatTime": stamp, "lastTransitionTime": changed}


@dataclass
class NodeTrack:
    pool: PoolPlan
    node: NodePlan
    last_post: float  # monotonic time the node last "posted status" (was up and connected)
    ready: bool | None = None  # what we last wrote; None = not written yet


class Kubelet:
    def __init__(self, lab: str, plan: LabPlan, kube: Kube, grace: float = DEFAULT_GRACE,
                 all_running: bool = False) -> None:
        self.lab, self.plan, self.kube, self.grace = lab, plan, kube, grace
        self.all_running = all_running  # outside a lab (Vagrant): no holders to look at
        now = time.monotonic()
        self.tracks = {n.name: NodeTrack(p, n, now) for p, n in plan.nodes()}

    def posting(self, track: NodeTrack) -> bool:
        """Would this node's kubelet reach the API server right now?"""
        if down_marker(self.lab, track.node.name).exists():
            return False
        if disconnected_marker(self.lab, track.pool.name).exists():
            return False
        return self.all_running or runtime.process_running(self.lab, track.node.name,
                                                           runtime.HOLDER)

    def register(self) -> None:
        for track in self.tracks.values():
            obj = node_object(track.pool, track.node)
            try:
                self.kube.create(NODES, obj)
                track.ready = True
                log.info("registered node %s", track.node.name)
            except AlreadyExists:
                self._ensure_facts(track)

    def _ensure_facts(self, track: NodeTrack) -> None:
        """An existing Node (restart of the stand-in): put back labels/addresses we own."""
        want = node_object(track.pool, track.node)
        patch = {"metadata": {"labels": want["metadata"]["labels"]}, "spec": want["spec"]}
        self.kube.merge_patch(NODES, track.node.name, patch)
        track.ready = None  # rewrite the condition on the next turn

    def turn(self, now: float, wall: float) -> None:
        """`now`: monotonic seconds (the grace deadline); `wall`: unix seconds, for the
        condition's timestamps only."""
        for track in self.tracks.values():
            if self.posting(track):
                track.last_post = now
            want = now - track.last_post <= self.grace
            if want != track.ready:
                # the wall-clock time of the last post: `wall` minus the monotonic time since
                self._write_ready(track, want, wall, wall - (now - track.last_post))

    def _write_ready(self, track: NodeTrack, ready: bool, now: float, last_post: float) -> None:
        try:
            current = self.kube.get(NODES, track.node.name)
        except NotFound:
            self.kube.create(NODES, node_object(track.pool, track.node))
            track.ready = True
            return
        status = current.setdefault("status", {})
        others = [c for c in status.get("conditions") or [] if c.get("type") != "Ready"]
        since = now if not ready else last_post
        status["conditions"] = [*others, ready_condition(ready, now, since)]
        self.kube.replace_status(NODES, current)
        track.ready = ready
        log.info("node %s: Ready=%s", track.node.name, "True" if ready else "Unknown")

    def run(self, stop: threading.Event, period: float = DEFAULT_PERIOD) -> None:
        registered = False
        while not stop.is_set():
            try:
                if not registered:
                    self.register()
                    registered = True
                self.turn(time.monotonic(), time.time())
            except KubeError as exc:  # API down or a conflict: look again next turn
                log.warning("API: %s", exc)
            stop.wait(period)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m raven.lab.kubelet",
                                     description="kubelet stand-in of a raven lab")
    parser.add_argument("lab")
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--grace", type=float, default=DEFAULT_GRACE,
                        help="seconds without status before Ready turns Unknown (default "
                        f"{DEFAULT_GRACE:g})")
    parser.add_argument("--period", type=float, default=DEFAULT_PERIOD)
    parser.add_argument("--all-running", action="store_true",
                        help="count every node as running (machines outside a lab, e.g. the "
                        "Vagrantfile of `raven lab vagrantfile`, have no holder process)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    plan = runtime.load_plan(args.lab)
    kube = Kube(KubeSettings(kubeconfig=args.kubeconfig, user_agent="raven-lab-kubelet"))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    Kubelet(args.lab, plan, kube, args.grace, args.all_running).run(stop, args.period)
    return 0


if __name__ == "__main__":
    sys.exit(main())
