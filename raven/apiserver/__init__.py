"""Embedded Kubernetes-compatible API server for one-machine clusters, labs and tests.

Rules kept by this package:
- It speaks HTTP(S) and JSON only; it never imports the `kubernetes` client (only raven.kube does).
- SQLite (WAL) under the data directory is the durable store; resourceVersions are decimal
  integers that strictly increase, also across restarts.
- Semantics follow the Kubernetes API conventions closely enough that the official Python client
  and kubectl work unchanged: discovery, list/watch with resume, optimistic concurrency, status
  subresources, metav1.Status errors.

Entry points: `raven.apiserver.server.serve(settings)` (blocking) and
`raven.apiserver.server.start(settings) -> RunningApiServer` (background thread, port 0 allowed).
"""
