#!/bin/bash
# Put the active gateways of a running two-pools lab (cloud-1, edge-1) into one of two routing
# shapes, by hand, for measuring what the lookup 9028 rule costs (docs/benchmarks.md,
# "Gateways' tunnel routes in main"). Not a product tool: it edits live kernel state behind
# the agents' back, so stop the agents first (`python -c "from raven.lab import cluster;
# cluster.stop_agent(LAB, NODE)"` per node), or their drift repair undoes every change.
#
#   bench/gateway_shape.sh LAB rule   routes into the tunnel in table 9028 behind `lookup 9028`
#                                     (the shipped shape before 2026-12-03), then the delivery
#                                     rule `iif raven-wg0 lookup 9027`, in that order
#   bench/gateway_shape.sh LAB main   the same routes in main (protocol 82, metric 9027), only
#                                     the delivery rule (the shipped shape since, where main
#                                     does not contest them)
# The routes into the tunnel are `dev raven-wg0` with no other attribute (raven.topology); the
# script reads their prefixes from wherever they are, so it starts from either shape.
# Used as `bench/throughput_ab.py LAB LAB CLIENT SERVER --setup-a "bench/gateway_shape.sh LAB
# rule" --setup-b "bench/gateway_shape.sh LAB main"`.
set -eu
lab=$1 shape=$2
case $shape in rule|main) ;; *) echo "usage: $0 LAB rule|main" >&2; exit 2 ;; esac
for node in cloud-1 edge-1; do
  ns=$lab.$node
  dsts=$( (ip -n "$ns" route show table 9028 2>/dev/null; ip -n "$ns" route show table main \
           proto 82 dev raven-wg0) | awk '{print $1}' | sort -u)
  while ip -n "$ns" rule del priority 100 2>/dev/null; do :; done
  ip -n "$ns" route flush table main proto 82
  ip -n "$ns" route flush table 9028 2>/dev/null || true
  for dst in $dsts; do
    if [ "$shape" = rule ]; then
      ip -n "$ns" route replace "$dst" dev raven-wg0 table 9028 proto 82
    else
      ip -n "$ns" route replace "$dst" dev raven-wg0 table main proto 82 metric 9027
    fi
  done
  if [ "$shape" = rule ]; then
    ip -n "$ns" rule add priority 100 lookup 9028 proto 82
  fi
  ip -n "$ns" rule add priority 100 iif raven-wg0 lookup 9027 proto 82
done
