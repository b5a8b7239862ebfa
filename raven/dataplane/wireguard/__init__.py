"""WireGuard device `raven-wg0` behind one interface, with a kernel and a userspace backend."""
