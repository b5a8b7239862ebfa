"""Data-path probes: the socket side of `raven.failover` (UDP echoes over raven0 and raven-wg0).

`wire` is the message format (pure); `prober.Prober` runs the probe loop on one thread of the
agent and keeps each target's `raven.failover.Health`; `responder` is the echo responder, a
process of its own that outlives agent restarts (like wireguard-go).
"""
