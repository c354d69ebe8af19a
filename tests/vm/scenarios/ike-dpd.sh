#!/bin/bash
# tapsec-vm: timeout=190
# Dead peer detection: charon (beta) is killed with SIGKILL, so it sends no
# DELETE; tapsecd (alpha, DPD=5) notices within a few retransmissions, ends
# the IKE and ESP associations and removes their SAs and policies.
set -u
lib=${TAPSEC_SOURCE_DIR:-.}/tests/vm
source "$lib/lib/ipsec-hosts.sh"; source "$lib/lib/strongswan.sh"; source "$lib/lib/ike-lab.sh"
ike_need_tapsec
ike_lab two

tapsec_policy_tunnel "$IKE_WORK/alpha" to-beta Peer=192.0.2.2 LocalId=alpha.example RemoteId=beta.example \
  LocalTS=10.1.0.0/24 RemoteTS=10.2.0.0/24 DPD=5
tapsec_start alpha "$IKE_WORK/alpha" || ike_fail "tapsecd did not start"
charon_start "$NS_BETA" "$IKE_WORK/beta" || ike_fail "charon did not start"
swan_peer "$IKE_WORK/beta" from-alpha 192.0.2.2 192.0.2.1 10.2.0.0/24 10.1.0.0/24 beta.example alpha.example
charon_load "$IKE_WORK/beta" || ike_fail "loading beta"
tapsec_ctl alpha tunnel up to-beta && tapsec_wait_assoc alpha esp established 30 || ike_fail "tunnel up"
ike_ping_ok 2 || ike_fail "ping"

charon_kill "$IKE_WORK/beta"
ip -n "$NS_BETA" xfrm state flush; ip -n "$NS_BETA" xfrm policy flush   # the peer's kernel forgets too
killed=$SECONDS
# DPD every 5 s, then strongSwan-like retransmissions: allow two minutes.
gone() { (($(tapsec_assoc_count alpha ikev2 established) == 0 && $(xfrm_state_count "$NS_ALPHA") == 0)); }
charon_wait 120 gone || ike_fail "tapsecd still holds the tunnel $((SECONDS - killed)) s after the peer died"
(($(xfrm_policy_count "$NS_ALPHA") == 0)) || ike_fail "policies left after DPD"
tapsec_alive alpha || ike_fail "tapsecd exited"
ike_step "peer death noticed after $((SECONDS - killed)) s"
echo "PASS: dead peer detection"
