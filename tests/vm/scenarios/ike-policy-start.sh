#!/bin/bash
# tapsec-vm: timeout=180
# Tunnels the policy starts by itself, towards a charon responder: with
# Start=boot the tunnel is up as soon as the agent runs; with Start=trap
# nothing is negotiated until a packet for the tunnel makes the kernel ask
# (XFRM ACQUIRE) and the agent negotiates on demand.
set -u
lib=${TAPSEC_SOURCE_DIR:-.}/tests/vm
source "$lib/lib/ipsec-hosts.sh"; source "$lib/lib/strongswan.sh"; source "$lib/lib/ike-lab.sh"
ike_need_tapsec
ike_lab two
_no_tapsec_sas() { (($(tapsec_assoc_count alpha ikev2) == 0)); }
_stop_alpha_agent() {  # and its bus, whose socket the next one reuses
  kill "$(cat "$IKE_WORK/alpha/tapsecd.pid")" "$(cat "$IKE_WORK/alpha/bus.pid")" 2>/dev/null
  local i
  for i in $(seq 50); do kill -0 "$(cat "$IKE_WORK/alpha/tapsecd.pid")" 2>/dev/null || break; sleep 0.1; done
  rm -f "$IKE_WORK/alpha/bus"
}

# 1. Start=boot: the agent on alpha brings the tunnel up without being asked.
tapsec_policy_tunnel "$IKE_WORK/alpha" at-boot Peer=192.0.2.2 LocalId=alpha.example RemoteId=beta.example \
  LocalTS=10.1.0.0/24 RemoteTS=10.2.0.0/24 Start=boot
charon_start "$NS_BETA" "$IKE_WORK/beta" || ike_fail "charon did not start in beta"
swan_peer "$IKE_WORK/beta" from-alpha 192.0.2.2 192.0.2.1 10.2.0.0/24 10.1.0.0/24 beta.example alpha.example
charon_load "$IKE_WORK/beta" || ike_fail "loading beta"
tapsec_start alpha "$IKE_WORK/alpha" || ike_fail "tapsecd did not start in alpha"
tapsec_wait_assoc alpha esp established 30 || ike_fail "Start=boot: no ESP association without a request"
[[ $(tapsec_ctl alpha tunnels --json) == *'"up"'* ]] || ike_fail "Start=boot: tapsecctl tunnels does not say up"
ike_ping_ok 3 || ike_fail "Start=boot: ping through the tunnel"
ike_step "Start=boot: up on its own, traffic crosses"
tapsec_ctl alpha terminate "$(tapsec_assoc_field alpha ikev2 id established)" || ike_fail "terminate"
charon_wait 20 _no_tapsec_sas || ike_fail "the boot tunnel did not go away"
_stop_alpha_agent

# 2. Start=trap: nothing is negotiated until traffic wants the tunnel.
rm -f "$IKE_WORK/alpha/policy.d/"*.policy
tapsec_policy_tunnel "$IKE_WORK/alpha" on-demand Peer=192.0.2.2 LocalId=alpha.example RemoteId=beta.example \
  LocalTS=10.1.0.0/24 RemoteTS=10.2.0.0/24 Start=trap
tapsec_start alpha "$IKE_WORK/alpha" || ike_fail "tapsecd did not restart in alpha"
sleep 2
(($(tapsec_assoc_count alpha ikev2) == 0)) || ike_fail "Start=trap: a tunnel came up without traffic"
[[ $(tapsec_ctl alpha tunnels --json) == *'"trap"'* ]] || ike_fail "Start=trap: tapsecctl tunnels does not say trap"
(($(xfrm_policy_count "$NS_ALPHA") >= 1)) || ike_fail "Start=trap: no trap policy in the kernel"
# The first packets trigger the negotiation (and are dropped meanwhile).
ipsec_ping alpha -q -c 2 -W 1 -I 10.1.0.1 10.2.0.1 >/dev/null 2>&1
tapsec_wait_assoc alpha esp established 30 || ike_fail "Start=trap: traffic did not start the tunnel"
ike_ping_ok 3 || ike_fail "Start=trap: ping after the on-demand negotiation"
[[ $(charon_child_state "$IKE_WORK/beta" from-alpha from-alpha) == INSTALLED ]] || ike_fail "charon: no CHILD_SA"
ike_step "Start=trap: traffic started the tunnel, traffic crosses"
echo "PASS: tunnels start from policy (boot, trap)"
