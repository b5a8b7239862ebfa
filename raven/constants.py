"""Names and defaults shared by every part of Raven overlay.

The wire-level names (API group, label, annotations, lease names) are a contract with existing
clusters and with other components: change them only together with a migration.
Numeric defaults follow OpenYurt Raven so that mixed clusters behave the same; every one of them
is configurable through the settings dataclasses that carry it.
"""

from __future__ import annotations

# Kubernetes API contract (OpenYurt Raven compatible).
API_GROUP = "raven.openyurt.io"
API_VERSION = "v1beta1"
API_VERSION_ALPHA = "v1alpha1"
GATEWAY_KIND = "Gateway"
GATEWAY_PLURAL = "gateways"
GATEWAY_LABEL = "raven.openyurt.io/gateway"  # node label: <gateway name> = pool membership

# Per-node facts are published by each agent on its own Node object (never in the Gateway spec).
ANNOTATION_PUBLIC_KEY = "raven.openyurt.io/wireguard-public-key"
ANNOTATION_PUBLIC_ADDRESS = "raven.openyurt.io/public-address"
# The gateway this node's pool uses as the agent decided it from data-path probes (our
# addition): the controller adopts the pool's majority when it hears from the pool again.
ANNOTATION_POOL_GATEWAY = "raven.openyurt.io/pool-gateway"
# "true" when the agent could not publish that decision at its first attempt: the pool decided
# while cut off from the control plane (the failover's cause is then "partition").
ANNOTATION_POOL_GATEWAY_OFFLINE = "raven.openyurt.io/pool-gateway-offline"
# The whole active set the agent votes for (our addition, beside the single name above, which
# stays as it was for controllers that read only that one): node names in order, comma
# separated, the first equal to ANNOTATION_POOL_GATEWAY. An active-active pool's controller
# drops an active gateway that the pool's majority leaves out (raven.pool_decision.adopt_set).
# Written in the same patch as the two above, so the offline flag covers it too.
ANNOTATION_POOL_GATEWAYS = "raven.openyurt.io/pool-gateways"

# Heartbeats and leader election: coordination.k8s.io/v1 Leases.
RAVEN_NAMESPACE = "kube-system"
AGENT_LEASE_PREFIX = "raven-agent-"  # + node name; renewed by gateway-candidate agents
CONTROLLER_LEASE_NAME = "raven-gateway-controller"

# Endpoint.config key where the controller copies the elected node's WireGuard public key.
ENDPOINT_CONFIG_PUBLIC_KEY = "public-key"

# Data-plane defaults (Raven's).
VXLAN_DEVICE = "raven0"
VXLAN_VNI = 200
VXLAN_PORT = 4472
VXLAN_TABLE = 9027
WIREGUARD_DEVICE = "raven-wg0"
WIREGUARD_PORT = 4500
WIREGUARD_TABLE = 9028
RULE_PRIORITY = 100
# A member's routes to the remote pools go in the kernel's main table (no policy rule) where no
# other route there contests them (raven.route_placement); there, only routes of our protocol
# (ROUTE_PROTOCOL, on every route we write) are ours, and they carry this metric so that any other
# route for the same prefix (a CNI's, usually metric 0) wins and is never refused.
ROUTE_PROTOCOL = 82  # 'R'; unassigned in /etc/iproute2/rt_protos
MAIN_TABLE = 254
MAIN_ROUTE_METRIC = 9027
FWMARK = 0x40
# The tunnel namespace's name, the agent's default (--tunnel-netns; "" keeps the devices in the
# node's namespace).
TUNNEL_NETNS = "raven-tun"
# The tunnel-namespace shape of a gateway (docs/tunnel-namespace.md): the veth pair joining the
# node's namespace (TUNNEL_VETH) to the tunnel namespace (TUNNEL_VETH_PEER), and its /30 in
# IPv4 link-local space (the same on every node: it never leaves the node; clear of
# 169.254.169.254, the clouds' metadata address).
TUNNEL_VETH = "raven-tun0"
TUNNEL_VETH_PEER = "raven-tun1"
TUNNEL_VETH_SUBNET = "169.254.77.0/30"
NFT_TABLE = "raven"  # inet family; the only nftables table we ever write
VXLAN_OVERHEAD = 50
WIREGUARD_OVERHEAD = 80
DEFAULT_UNDERLAY_MTU = 1500
DEFAULT_KEEPALIVE_SECONDS = 25
