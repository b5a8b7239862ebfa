"""Cloud-to-edge proxy: a proxy server on the active proxy endpoints of public pools, proxy
clients on the active proxy endpoints of NAT'd pools, one multiplexed TLS connection between
them (docs/proxy.md)."""
