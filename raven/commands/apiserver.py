"""`raven apiserver`: run the embedded Kubernetes-compatible API server.

Prints one line `listening on <url> kubeconfig <path>` on stdout once the port is bound (tests and
the lab read it to learn a port chosen with :0); logs go to stderr.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from raven.errors import CommandError
from raven.settings import ApiServerSettings, default_of, help_for

# Defaults and help texts are the settings root's (raven.settings.ApiServerSettings), written
# once there.


def _default(name: str) -> object:
    return default_of(ApiServerSettings, name)


def _help(name: str) -> str:
    return help_for(ApiServerSettings, name)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "apiserver", help="run the embedded Kubernetes-compatible API server",
        description="Serve a Kubernetes-compatible API (nodes, namespaces, configmaps, secrets, "
        "events, leases, Gateways, CRDs, ...) stored in SQLite under --data-dir. Writes "
        "DIR/admin.kubeconfig with the CA and a bearer token.",
    )
    parser.add_argument("--data-dir", required=True, type=Path,
                        help=help_for(ApiServerSettings, "data_dir", show_default=False))
    listen = f"{_default('host')}:{_default('port')}"
    parser.add_argument("--listen", default=listen, metavar="HOST:PORT",
                        help=f"address to listen on; port 0 picks a free port (default {listen})")
    parser.add_argument("--plain-http", action="store_true",
                        help="serve plain HTTP instead of TLS (only allowed on loopback)")
    parser.add_argument("--tls-san", action="append", default=[], metavar="NAME_OR_IP",
                        help="extra name or address for the serving certificate (repeatable)")
    parser.add_argument("--watch-history", type=int, default=_default("watch_history"),
                        metavar="EVENTS", help=_help("watch_history"))
    parser.add_argument("--bookmark-interval", type=float,
                        default=_default("bookmark_interval"), metavar="SECONDS",
                        help=_help("bookmark_interval"))
    parser.add_argument("--max-request-body-bytes", type=int, default=_default("max_body_bytes"),
                        metavar="BYTES", help=_help("max_body_bytes"))
    parser.add_argument("--max-connections", type=int, default=_default("max_connections"),
                        metavar="N", help=_help("max_connections"))
    parser.add_argument("--idle-timeout", type=float, default=_default("idle_timeout"),
                        metavar="SECONDS", help=_help("idle_timeout"))
    kubelets = parser.add_argument_group(
        "kubelets", "how pods/log, pods/exec and nodes/proxy reach a node's kubelet (its "
        "InternalIP and status.daemonEndpoints.kubeletEndpoint.Port, default 10250)")
    kubelets.add_argument("--kubelet-certificate-authority", type=Path, metavar="FILE",
                          help="CA for kubelet serving certificates (default: DATA_DIR/ca.crt)")
    kubelets.add_argument("--kubelet-client-certificate", type=Path, metavar="FILE",
                          help="client certificate for kubelets and egress proxies (default: "
                          "DATA_DIR/apiserver-kubelet-client.crt, made from the CA)")
    kubelets.add_argument("--kubelet-client-key", type=Path, metavar="FILE",
                          help="its key")
    kubelets.add_argument("--kubelet-network", action="append", default=[], metavar="CIDR",
                          help="node addresses outside these networks are refused (403); "
                          "repeatable (default: any unicast address but link-local)")
    kubelets.add_argument("--kubelet-timeout", type=float, default=_default("kubelet_timeout"),
                          metavar="SECONDS", help=_help("kubelet_timeout"))
    kubelets.add_argument("--egress-proxy", action="append", default=[], metavar="HOST:PORT",
                          help="HTTP CONNECT proxy over TLS to reach the nodes --egress-selector "
                          "selects (kube-apiserver's egress selector); repeatable, tried in order")
    kubelets.add_argument("--egress-selector", default="", metavar="LABEL_SELECTOR",
                          help="Nodes reached through --egress-proxy (default: every node), e.g. "
                          "'raven.openyurt.io/gateway in (gw-edge)'")
    kubelets.add_argument("--egress-proxy-ca", type=Path, metavar="FILE",
                          help="CA for the egress proxies' certificates (default: DATA_DIR/ca.crt)")
    kubelets.add_argument("--raven-proxy-ca", type=Path, metavar="FILE",
                          help="reach nodes of NAT'd pools through Raven's proxy servers named "
                          "by the Gateway status, with a client certificate issued from this CA "
                          "(docs/proxy.md); needs --raven-proxy-ca-key")
    kubelets.add_argument("--raven-proxy-ca-key", type=Path, metavar="FILE",
                          help="the key of --raven-proxy-ca")
    kubelets.add_argument("--raven-proxy-port", type=int, default=_default("raven_proxy_port"),
                          metavar="PORT", help=_help("raven_proxy_port"))
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log every request (-v) and connection details (-vv)")
    parser.set_defaults(func=run)


# Settings named in ApiServerError messages -> the options that set them (longest first).
SETTING_OPTIONS = (
    ("max_body_bytes", "--max-request-body-bytes"), ("max_connections", "--max-connections"),
    ("idle_timeout", "--idle-timeout"), ("raven_proxy_ca_key", "--raven-proxy-ca-key"),
    ("raven_proxy_ca", "--raven-proxy-ca"), ("raven_proxy_port", "--raven-proxy-port"),
    ("kubelet_timeout", "--kubelet-timeout"), ("kubelet_networks", "--kubelet-network"),
    ("watch_history", "--watch-history"), ("bookmark_interval", "--bookmark-interval"),
)


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise CommandError(
            f"--listen {text!r} is not HOST:PORT; use e.g. 127.0.0.1:6443 or 127.0.0.1:0"
        )
    return host.strip("[]") or "0.0.0.0", int(port)


def run(args: argparse.Namespace) -> int:
    from raven.apiserver.errors import ApiServerError
    from raven.apiserver.server import serve

    host, port = parse_listen(args.listen)
    level = logging.WARNING if args.verbose == 0 else logging.INFO
    if args.verbose > 1:
        level = logging.DEBUG
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("raven.apiserver").setLevel(level)

    def ready(server: object) -> None:
        print(f"listening on {server.url} kubeconfig {server.kubeconfig}", flush=True)  # type: ignore[attr-defined]

    try:
        settings = ApiServerSettings(
            data_dir=args.data_dir, host=host, port=port, plain_http=args.plain_http,
            extra_sans=tuple(args.tls_san), watch_history=args.watch_history,
            bookmark_interval=args.bookmark_interval,
            max_body_bytes=args.max_request_body_bytes, max_connections=args.max_connections,
            idle_timeout=args.idle_timeout,
            kubelet_ca=args.kubelet_certificate_authority,
            kubelet_client_cert=args.kubelet_client_certificate,
            kubelet_client_key=args.kubelet_client_key,
            kubelet_networks=tuple(args.kubelet_network), kubelet_timeout=args.kubelet_timeout,
            egress_proxies=tuple(args.egress_proxy), egress_selector=args.egress_selector,
            egress_proxy_ca=args.egress_proxy_ca, raven_proxy_ca=args.raven_proxy_ca,
            raven_proxy_ca_key=args.raven_proxy_ca_key, raven_proxy_port=args.raven_proxy_port,
        )
        return serve(settings, on_ready=ready)
    except ApiServerError as exc:
        # --option names for the settings the CLI exposes
        message = str(exc)
        for setting, option in SETTING_OPTIONS:
            message = message.replace(setting, option)
        raise CommandError(message) from exc

