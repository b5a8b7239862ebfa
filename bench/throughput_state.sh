#!/bin/sh
# Put the overlay's policy state on the nodes of a running lab into one of several shapes, by
# hand, for bisecting what the data path costs (docs/benchmarks.md, "Where the overlay loses
# throughput"). Not a product tool: it edits live kernel state behind the agents' back, so stop
# the agents first (`python -c "from raven.lab import cluster; cluster.stop_agent(LAB, NODE)"`
# per node), or their drift repair undoes every change within milliseconds.
#
#   bench/throughput_state.sh LAB save            # remember the agents' state (once, first)
#   bench/throughput_state.sh LAB MARKS NAT RP    # then switch at will
#     MARKS on   the shipped shape: nft mark chains + `fwmark 0x40 lookup T` + routes in T
#           nft  the nft mark chains only; routes in main, no rule
#           to   no nft marks; one `to <remote subnet> lookup T` rule (priority 100) per remote
#                subnet, routes in T
#           all  no nft marks; one selector-less `lookup T` rule (priority 100), routes in T:
#                a lookup that finds nothing in T falls through to main (the proposed fix)
#           off  no marks, no rule, routes in main (what the hand-built twin has)
#     NAT   on|off  the identity SNAT chain (postrouting, srcnat - 10), hence conntrack
#     RP    on|off  rp_filter=2 on raven0 and src_valid_mark=1 on raven0/raven-wg0, or 0
# Saved state lives in /run/raven-lab/LAB/throughput-state (removed by `raven lab down`).
set -u
L=$1
S=/run/raven-lab/$L/throughput-state
if [ "$2" = save ]; then
  for ns in $(ip netns list | awk '{print $1}' | grep "^$L\."); do
    n=${ns#$L.}
    ip netns exec $ns nft list table inet raven >/dev/null 2>&1 || continue
    mkdir -p $S/$n
    ip netns exec $ns nft list table inet raven > $S/$n/nft
    ip netns exec $ns ip rule show priority 100 > $S/$n/rule
    for t in 9027 9028; do
      ip netns exec $ns ip route show table $t 2>/dev/null | sed 's/ proto [0-9a-z]*//' | sed "s/\$/ table $t/"
    done > $S/$n/routes
  done
  ls $S
  exit 0
fi
MARKS=$2; NAT=$3; RP=$4
for n in $(ls $S); do
  X="ip netns exec $L.$n"
  T=$(awk '{for(i=1;i<NF;i++) if($i=="lookup") print $(i+1)}' $S/$n/rule)
  if [ $MARKS = to ] || [ $MARKS = all ]; then
    for c in prerouting output; do $X nft list chain inet raven $c >/dev/null 2>&1 && $X nft delete chain inet raven $c; done
    while $X ip rule del priority 100 2>/dev/null; do :; done
    if [ $MARKS = all ]; then
      $X ip rule add priority 100 lookup $T
    else
      for r in $(grep -o "^[0-9./]*" $S/$n/routes); do $X ip rule add priority 100 to $r lookup $T; done
    fi
    while read r; do r2=$(echo "$r" | sed 's/ table [0-9]*//'); $X ip route del $r2 2>/dev/null; $X ip route replace $r; done < $S/$n/routes
  elif [ $MARKS = nft ]; then
    $X nft list chain inet raven prerouting >/dev/null 2>&1 || $X nft -f - <<NFT
$(sed '/chain postrouting/,/^\t}/d' $S/$n/nft)
NFT
    while read r; do r2=$(echo "$r" | sed 's/ table [0-9]*//'); $X ip route del $r 2>/dev/null; $X ip route replace $r2; done < $S/$n/routes
    while $X ip rule del priority 100 2>/dev/null; do :; done
  elif [ $MARKS = on ]; then
    $X ip rule show priority 100 | grep -qv fwmark && while $X ip rule del priority 100 2>/dev/null; do :; done
    $X nft list chain inet raven prerouting >/dev/null 2>&1 || $X nft -f - <<NFT
$(sed '/chain postrouting/,/^\t}/d' $S/$n/nft)
NFT
    $X ip rule show priority 100 | grep -q fwmark || $X ip rule add priority 100 fwmark 0x40/0x40 lookup $T
    while read r; do r2=$(echo "$r" | sed 's/ table [0-9]*//'); $X ip route del $r2 2>/dev/null; $X ip route replace $r; done < $S/$n/routes
  else
    while read r; do r2=$(echo "$r" | sed 's/ table [0-9]*//'); $X ip route del $r 2>/dev/null; $X ip route replace $r2; done < $S/$n/routes
    while $X ip rule del priority 100 2>/dev/null; do :; done
  fi
  if [ $NAT = on ]; then
    $X nft list table inet raven >/dev/null 2>&1 || $X nft add table inet raven
    $X nft list set inet raven remote4 >/dev/null 2>&1 || $X nft -f - <<NFT
table inet raven { $(sed -n '/set remote4/,/^\t}/p' $S/$n/nft) }
NFT
    $X nft list chain inet raven postrouting >/dev/null 2>&1 || { $X nft add chain inet raven postrouting '{ type nat hook postrouting priority srcnat - 10; policy accept; }' && $X nft add rule inet raven postrouting ip daddr @remote4 snat ip to ip saddr; }
  else
    $X nft list chain inet raven postrouting >/dev/null 2>&1 && $X nft delete chain inet raven postrouting
  fi
  if [ $MARKS = off ] || [ $MARKS = to ] || [ $MARKS = all ]; then
    for c in prerouting output; do $X nft list chain inet raven $c >/dev/null 2>&1 && $X nft delete chain inet raven $c; done
    [ $NAT = off ] && $X nft delete table inet raven 2>/dev/null
  fi
  for d in raven0 raven-wg0; do
    [ -d /proc/sys/net/ipv4/conf/$d ] || $X test -e /sys/class/net/$d || continue
    if [ $RP = on ]; then v=1; r=2; else v=0; r=0; fi
    $X sh -c "[ -e /proc/sys/net/ipv4/conf/$d ] && sysctl -qw net.ipv4.conf.$d.src_valid_mark=$v && { [ $d = raven0 ] && sysctl -qw net.ipv4.conf.$d.rp_filter=$r || true; }; true"
  done
done
