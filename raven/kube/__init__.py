"""All Kubernetes API access of Raven: the only package that imports `kubernetes`.

- `client`: `Kube` (generic JSON verbs over the official client), `KubeSettings`, resources;
- `errors`: typed errors (NotFound, Conflict, Expired, Unavailable, ...);
- `backoff`: retry settings and helpers;
- `informer`: list + watch + resume + relist on 410, for Gateways, Nodes, Leases and one Node;
- `lease`: agent heartbeats and leader election; `events`: Event recording;
- `cache`: the on-disk copy of the last good inputs (atomic writes).
"""
