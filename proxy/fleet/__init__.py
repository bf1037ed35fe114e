"""A fleet of sidecars behind one load balancer, sharing state through Redis (README, "A fleet
of sidecars").

Pure modules decide what is shared: `journal` (what this sidecar learnt since the last
exchange, bounded), `exchange` (what goes out each tick, what comes in merged into the local
memories) and `peers` (the peers seen and their mode hints). One I/O module, `link`, runs the
exchange with Redis as its own task, never on a request's path; it is imported only when
`fleet.redis` is configured.
"""
