"""Run inside a lab's control-plane namespace (where the API server runs): for each target
IP:PORT, find the proxy with `proxy_for` from the live Gateways, open a tunnel with the lab's
proxy CA (`user_context` + `open_tunnel`), speak HTTPS to the lab echo server through it, and
print one JSON line per target: {"target", "via", "status", "body"|"error"}."""

from __future__ import annotations

import json
import ssl
import sys
import time
from pathlib import Path

from raven.kube.client import GATEWAYS, Kube, KubeSettings
from raven.proxy.certs import user_context
from raven.proxy.dial import TunnelError, open_tunnel, proxy_for, wrap_tls


def https_get(sock: object) -> str:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the lab echo server's throwaway certificate
    tls = wrap_tls(sock, ctx, None)  # type: ignore[arg-type]
    tls.sendall(b"GET / HTTP/1.1\r\nHost: kubelet\r\nConnection: close\r\n\r\n")
    data = b""
    while chunk := tls.recv(65536):
        data += chunk
    return data.decode("utf-8", "replace").split("\r\n\r\n", 1)[-1]


def main() -> int:
    kubeconfig, ca_crt, ca_key, *targets = sys.argv[1:]
    kube = Kube(KubeSettings(kubeconfig=Path(kubeconfig)))
    gateways, _ = kube.list(GATEWAYS)
    ctx = user_context(Path(ca_crt), Path(ca_key), time.time())
    for target in targets:
        host, _, port = target.rpartition(":")
        proxies = proxy_for(gateways, host) or [(host, 0)]
        out: dict[str, object] = {"target": target, "via": None}
        for address in proxies:
            if address[1] == 0:
                out["error"] = "no proxy for this target"
                break
            out["via"] = f"{address[0]}:{address[1]}"
            try:
                sock = open_tunnel(address, ctx, host, int(port), 10)
            except TunnelError as exc:
                out.update(status=exc.status, error=exc.reason)
                continue
            except OSError as exc:
                out.update(status=0, error=str(exc))
                continue
            with sock:
                out.update(status=200, body=https_get(sock))
            break
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
