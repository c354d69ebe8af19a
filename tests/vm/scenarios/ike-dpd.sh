#!/bin/bash
# tapsec-vm: timeout=180
# Dead peer detection: charon (beta) is killed with SIGKILL, so it sends no
# DELETE; tapsecd (alpha, DPD=5) notices within a few retransmissions, ends
# the IKE and ESP associations and removes their SAs and policies.
set -u
lib=${TAPSEC_SOURCE_DIR:-.}/tests/vm
source "$lib/lib/ipsec-hosts.sh"; source "$lib/lib/strongswan.sh"; source "$lib/lib/ike-lab.sh"
ike_need_tapsec
# Resends after 0.5, 0.9, 1.6 s (then dead, 2.9 s later): the check below
# waits for DPD and these, not for the default five resends over 41 s.
export TAPSEC_AGENT_ARGS="--ike-retransmit-timeout-ms 500 --ike-retransmits 3"
ike_lab two

ike_tunnel_to_charon DPD=5
ike_ping_ok 2 || ike_fail "ping"

charon_kill "$IKE_WORK/beta"
ip -n "$NS_BETA" xfrm state flush; ip -n "$NS_BETA" xfrm policy flush   # the peer's kernel forgets too
killed=$SECONDS
# DPD every 5 s, then three resends in about 6 s: allow 30 s.
gone() { (($(tapsec_assoc_count alpha ikev2 established) == 0 && $(xfrm_state_count "$NS_ALPHA") == 0)); }
charon_wait 30 gone || ike_fail "tapsecd still holds the tunnel $((SECONDS - killed)) s after the peer died"
(($(xfrm_policy_count "$NS_ALPHA") == 0)) || ike_fail "policies left after DPD"
tapsec_alive alpha || ike_fail "tapsecd exited"
ike_step "peer death noticed after $((SECONDS - killed)) s"
echo "PASS: dead peer detection"
