"""Data-path probes: the socket side of `raven.failover` (UDP echoes over raven0 and raven-wg0).

`wire` is the message format (pure); `prober.Prober` runs the echo responder and the probe
loop on one thread and keeps each target's `raven.failover.Health`."""
