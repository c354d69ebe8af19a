# shellcheck shell=bash disable=SC2034
# IPsec test hosts as network namespaces inside a test guest. Sourced.
#
#   ipsec_hosts_two            alpha 192.0.2.1/24 <-> beta 192.0.2.2/24 on a veth pair;
#                              inner subnets 10.1.0.1/24 (alpha), 10.2.0.1/24 (beta)
#   ipsec_hosts_nat            alpha 172.16.0.2/24 behind router "nat" (inside 172.16.0.1,
#                              outside 192.0.2.1) that masquerades towards beta 192.0.2.2
#   ipsec_path_add             a second link alpha 198.51.100.1 <-> beta 198.51.100.2
#   ipsec_path_switch          alpha leaves 192.0.2.1 and reaches beta over the second link
#   ipsec_ns HOST              the namespace name of HOST (alpha, beta, nat)
#   IPSEC_ADDRESS[alpha]       alpha's current outer address (changes with NAT and path switch)
#   ipsec_on HOST CMD...       runs CMD inside HOST
#   ipsec_ping HOST ARGS...    ping from HOST (iputils ping, else busybox's)
#   ipsec_hosts_down           removes every namespace created here (also run on EXIT)
#   ipsec_at_exit CMD...       runs CMD when the script exits (last registered first)
#
# Inner subnets: 10.1.0.0/24 <-> 10.2.0.0/24 is routed out of the outer link
# with the inner address as source, so tunnel-mode policies match traffic
# sent without -I. Nothing here installs any IPsec state.
#
# Addresses are from RFC 5737 / RFC 1918 and exist only in these namespaces.

IPSEC_PREFIX=${IPSEC_PREFIX:-ts$$}
IPSEC_HOSTS=()
IPSEC_NAT_METHOD=""   # nft, iptables or tc-nat, set by ipsec_hosts_nat

declare -A IPSEC_ADDRESS=([alpha]=192.0.2.1 [beta]=192.0.2.2)
declare -A IPSEC_INNER=([alpha]=10.1.0.1 [beta]=10.2.0.1)

ipsec_ns() { echo "${IPSEC_PREFIX}-$1"; }

ipsec_on() {
  local host=$1
  shift
  ip netns exec "$(ipsec_ns "$host")" "$@"
}

# This machine may lack iputils' ping; busybox's takes the same -c -i -I -W -q.
ipsec_ping() {
  local host=$1
  shift
  if command -v ping >/dev/null; then
    ipsec_on "$host" ping "$@"
  else
    ipsec_on "$host" busybox ping "$@"
  fi
}

# ipsec_xfrm_stat HOST NAME: the kernel's XFRM counter NAME (e.g.
# XfrmInNoStates) in HOST, from /proc/net/xfrm_stat; empty if not counted.
ipsec_xfrm_stat() { ipsec_on "$1" awk -v name="$2" '$1 == name {print $2}' /proc/net/xfrm_stat 2>/dev/null; }

# Link names are per namespace, so the same short names serve every host.
_ipsec_new_host() {
  local host=$1 ns
  ns=$(ipsec_ns "$host")
  ip netns add "$ns" || return 1
  IPSEC_HOSTS+=("$host")
  ip -n "$ns" link set lo up
  # Strict reverse-path filtering would drop traffic after a path switch.
  ip netns exec "$ns" sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
}

# veth pair HOST_A/DEV_A <-> HOST_B/DEV_B
_ipsec_link() {
  ip link add "$2" netns "$(ipsec_ns "$1")" type veth peer name "$4" netns "$(ipsec_ns "$3")" || return 1
  ip -n "$(ipsec_ns "$1")" link set "$2" up
  ip -n "$(ipsec_ns "$3")" link set "$4" up
}

# The inner subnet lives on a dummy link (on lo when the kernel has no dummy
# driver; a /32 there, since a /24 on lo would make the whole subnet local).
_ipsec_inner_subnet() {
  local host=$1 ns
  ns=$(ipsec_ns "$host")
  if ip -n "$ns" link add inner type dummy 2>/dev/null; then
    ip -n "$ns" addr add "${IPSEC_INNER[$host]}/24" dev inner
    ip -n "$ns" link set inner up
  else
    ip -n "$ns" addr add "${IPSEC_INNER[$host]}/32" dev lo
  fi
}

ipsec_hosts_two() {
  ipsec_at_exit ipsec_hosts_down
  _ipsec_new_host alpha && _ipsec_new_host beta || return 1
  _ipsec_link alpha eth0 beta eth0 || return 1
  ip -n "$(ipsec_ns alpha)" addr add 192.0.2.1/24 dev eth0
  ip -n "$(ipsec_ns beta)" addr add 192.0.2.2/24 dev eth0
  _ipsec_inner_subnet alpha
  _ipsec_inner_subnet beta
  ip -n "$(ipsec_ns alpha)" route add 10.2.0.0/24 via 192.0.2.2 dev eth0 src 10.1.0.1
  ip -n "$(ipsec_ns beta)" route add 10.1.0.0/24 via 192.0.2.1 dev eth0 src 10.2.0.1
  IPSEC_ADDRESS[alpha]=192.0.2.1
  _ipsec_wait_links
}

# Source NAT with a connection-tracking MASQUERADE when the machine has nft
# or iptables and the kernel the NAT modules; otherwise (or with IPSEC_NAT=tc-nat)
# a stateless one-to-one rewrite with tc's nat action, which changes addresses
# but never ports. IPSEC_NAT_METHOD tells which one is in place.
_ipsec_masquerade() {
  local ns out=$1
  ns=$(ipsec_ns nat)
  if [[ ${IPSEC_NAT:-} != tc-nat ]] && command -v nft >/dev/null &&
      ip netns exec "$ns" nft -f - 2>/dev/null <<NFT
table ip tapsec_nat {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "$out" masquerade
  }
}
NFT
  then
    IPSEC_NAT_METHOD=nft
    return 0
  fi
  local ipt
  [[ ${IPSEC_NAT:-} == tc-nat ]] ||
  for ipt in iptables-nft iptables-legacy iptables; do
    command -v "$ipt" >/dev/null || continue
    if ip netns exec "$ns" "$ipt" -t nat -A POSTROUTING -o "$out" -j MASQUERADE 2>/dev/null; then
      IPSEC_NAT_METHOD=$ipt
      return 0
    fi
  done
  modprobe -q act_nat 2>/dev/null
  modprobe -q sch_ingress 2>/dev/null
  if ip -n "$ns" link show "$out" >/dev/null &&
      tc -n "$ns" qdisc add dev "$out" clsact 2>/dev/null &&
      tc -n "$ns" filter add dev "$out" egress protocol ip matchall \
        action nat egress 172.16.0.2/32 192.0.2.1 2>/dev/null &&
      tc -n "$ns" filter add dev "$out" ingress protocol ip matchall \
        action nat ingress 192.0.2.1/32 172.16.0.2 2>/dev/null; then
    IPSEC_NAT_METHOD=tc-nat
    return 0
  fi
  echo "ipsec-hosts: no NAT available (no nft/iptables with nf_nat, no tc nat action)" >&2
  return 1
}

ipsec_hosts_nat() {
  ipsec_at_exit ipsec_hosts_down
  _ipsec_new_host alpha && _ipsec_new_host nat && _ipsec_new_host beta || return 1
  _ipsec_link alpha eth0 nat inside || return 1
  _ipsec_link nat outside beta eth0 || return 1
  ip -n "$(ipsec_ns alpha)" addr add 172.16.0.2/24 dev eth0
  ip -n "$(ipsec_ns nat)" addr add 172.16.0.1/24 dev inside
  ip -n "$(ipsec_ns nat)" addr add 192.0.2.1/24 dev outside
  ip -n "$(ipsec_ns beta)" addr add 192.0.2.2/24 dev eth0
  ip netns exec "$(ipsec_ns nat)" sysctl -qw net.ipv4.ip_forward=1
  _ipsec_inner_subnet alpha
  _ipsec_inner_subnet beta
  ip -n "$(ipsec_ns alpha)" route add default via 172.16.0.1 dev eth0
  ip -n "$(ipsec_ns alpha)" route add 10.2.0.0/24 via 172.16.0.1 dev eth0 src 10.1.0.1
  ip -n "$(ipsec_ns beta)" route add 10.1.0.0/24 via 192.0.2.1 dev eth0 src 10.2.0.1
  IPSEC_ADDRESS[alpha]=172.16.0.2
  _ipsec_masquerade outside || return 1
  _ipsec_wait_links
}

# A second, parallel link for address changes (MOBIKE): alpha 198.51.100.1,
# beta 198.51.100.2. Alpha keeps using its first address until ipsec_path_switch.
ipsec_path_add() {
  _ipsec_link alpha eth1 beta eth1 || return 1
  ip -n "$(ipsec_ns alpha)" addr add 198.51.100.1/24 dev eth1
  ip -n "$(ipsec_ns beta)" addr add 198.51.100.2/24 dev eth1
  _ipsec_wait_links
}

# Alpha loses 192.0.2.1 and reaches beta (192.0.2.2 and its inner subnet)
# over the second link; beta answers 198.51.100.1 there.
ipsec_path_switch() {
  local a b
  a=$(ipsec_ns alpha) b=$(ipsec_ns beta)
  ip -n "$a" route replace 192.0.2.2/32 via 198.51.100.2 dev eth1 src 198.51.100.1 || return 1
  ip -n "$a" route replace 10.2.0.0/24 via 198.51.100.2 dev eth1 src 10.1.0.1 || return 1
  ip -n "$b" route replace 10.1.0.0/24 via 198.51.100.1 dev eth1 src 10.2.0.1 || return 1
  ip -n "$a" addr del 192.0.2.1/24 dev eth0 || return 1
  IPSEC_ADDRESS[alpha]=198.51.100.1
}

# A veth pair has carrier once both ends are up; wait for it rather than
# lose the first packets of a test.
_ipsec_wait_links() {
  local host i
  for host in "${IPSEC_HOSTS[@]}"; do
    for i in $(seq 50); do
      ip -n "$(ipsec_ns "$host")" -o link show | grep -q NO-CARRIER || break
      sleep 0.05
    done
  done
}

# Cleanup that runs when the script exits, last registered first.
IPSEC_AT_EXIT=()
ipsec_at_exit() {
  IPSEC_AT_EXIT=("$*" "${IPSEC_AT_EXIT[@]}")
  trap _ipsec_run_at_exit EXIT
}
_ipsec_run_at_exit() {
  local status=$? command
  for command in "${IPSEC_AT_EXIT[@]}"; do
    eval "$command" || true
  done
  IPSEC_AT_EXIT=()
  return $status
}

ipsec_hosts_down() {
  local host ns
  for host in "${IPSEC_HOSTS[@]}"; do
    ns=$(ipsec_ns "$host")
    ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null
  done
  for host in "${IPSEC_HOSTS[@]}"; do
    ip netns del "$(ipsec_ns "$host")" 2>/dev/null
  done
  IPSEC_HOSTS=()
}
