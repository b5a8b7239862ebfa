#!/usr/bin/env bash
# Experiment, not a product tool: give one gateway of a hand-built twin (bench/twin.py) the
# "tunnel namespace" shape proposed for issue 10 item 9 (docs/tunnel-namespace.md; figures in
# docs/benchmarks.md, "Where the last 8 % goes, and a tunnel namespace on gateways"), to
# measure it before building it into the agent:
#   - raven-wg0 and raven0 move into a namespace of their own, LAB.NODE-tun; their UDP sockets
#     stay in the node's namespace (a moved VXLAN device keeps the socket of the namespace it
#     was created in, and wireguard-go keeps its UDP socket and its TUN file descriptor), so
#     the tunnels' outer packets still leave and arrive on the node's eth0;
#   - a veth pair (rvt0 in the node, rvt1 in LAB.NODE-tun, 169.254.77.0/30) joins the two;
#   - LAB.NODE-tun routes the remote pools into raven-wg0, the members' pod subnets to their
#     VTEPs over raven0, and everything else (the gateway's own pods, the node) back over the
#     veth; the node routes the remote pools into the veth (`mtu lock` raven-wg0's MTU)
#     and its members' pod subnets back to the CNI's route (the twin had put them on raven0);
#   - neither namespace has a policy rule, so neither is in the kernel's policy-routing mode
#     (fib_has_custom_rules), which the overlay's delivery rule `iif raven-wg0 lookup 9027`
#     keeps a gateway in today.
# The twin must never have had a rule on that node (the mode is never switched off again).
# `raven lab down LAB` removes LAB.NODE-tun with the lab's other namespaces (and with it the
# moved devices); `down` removes it alone (the node then lacks its tunnel devices).
#
#   bench/tunnel_netns.sh LAB NODE up|down
# Measured as `bench/throughput_ab.py TWIN_WITH_TUN TWIN CLIENT SERVER --perf` with the
# overlay lab's control processes stopped for both sides.
set -euo pipefail
[ $# -eq 3 ] || { echo "usage: $0 LAB NODE up|down" >&2; exit 2; }
G=$1.$2 TN=$1.$2-tun
case $3 in
  down) ip netns del "$TN" 2>/dev/null || true; exit 0 ;;
  up) ;;
  *) echo "usage: $0 LAB NODE up|down" >&2; exit 2 ;;
esac
ip netns list | grep -qx "$TN" && { echo "$TN exists already" >&2; exit 1; }
# what moves with the devices is read first (addresses, routes, neighbours and FDB entries
# are the node namespace's and are lost in the move)
VADDR=$(ip -n "$G" -j addr show dev raven0 \
        | jq -r '.[0].addr_info[] | select(.family=="inet") | "\(.local)/\(.prefixlen)"')
WGR=$(ip -n "$G" -j route show dev raven-wg0 | jq -r '.[].dst')
WGMTU=$(ip -n "$G" -j link show dev raven-wg0 | jq -r '.[0].mtu')
VXR=$(ip -n "$G" -j route show dev raven0 | jq -r '.[] | select(.gateway) | "\(.dst) \(.gateway)"')
NEI=$(ip -n "$G" -j neigh show dev raven0 | jq -r '.[] | select(.lladdr) | "\(.dst) \(.lladdr)"')
FDB=$(ip netns exec "$G" bridge -j fdb show dev raven0 | jq -r '.[] | select(.dst) | "\(.mac) \(.dst)"')
ip netns add "$TN"
ip -n "$TN" link set lo up
ip netns exec "$TN" sysctl -qw net.ipv4.ip_forward=1
ip -n "$G" link add rvt0 type veth peer name rvt1 netns "$TN"
ip -n "$G" addr add 169.254.77.1/30 dev rvt0
ip -n "$G" link set rvt0 up
ip -n "$TN" addr add 169.254.77.2/30 dev rvt1
ip -n "$TN" link set rvt1 up
ip -n "$G" link set raven-wg0 netns "$TN"
ip -n "$G" link set raven0 netns "$TN"
ip -n "$TN" addr add "$VADDR" dev raven0
ip -n "$TN" link set raven0 up
ip -n "$TN" link set raven-wg0 up
# an empty list (a gateway without members) is one empty line: skipped
while read -r dst mac; do
  [ -n "$dst" ] || continue
  ip -n "$TN" neigh replace "$dst" lladdr "$mac" dev raven0 nud permanent
done <<< "$NEI"
while read -r mac dst; do
  [ -n "$mac" ] || continue
  ip netns exec "$TN" bridge fdb replace "$mac" dev raven0 dst "$dst" self permanent
done <<< "$FDB"
for dst in $WGR; do
  ip -n "$TN" route replace "$dst" dev raven-wg0
  ip -n "$G" route replace "$dst" via 169.254.77.2 dev rvt0 mtu lock "$WGMTU"
done
while read -r dst gw; do
  [ -n "$dst" ] || continue
  ip -n "$TN" route replace "$dst" via "$gw" dev raven0 onlink
  # the node's own traffic to that member goes back to the CNI's route (the member's node)
  mac=$(awk -v d="$gw" '$1 == d {print $2}' <<< "$NEI")
  node=$(awk -v m="$mac" '$1 == m {print $2}' <<< "$FDB")
  ip -n "$G" route replace "$dst" via "$node" dev eth0
done <<< "$VXR"
ip -n "$TN" route replace default via 169.254.77.1 dev rvt1
echo "$G: raven-wg0 and raven0 now in $TN"
