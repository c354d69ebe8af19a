#!/bin/bash
# tapsec-vm: timeout=180
# charon (alpha) initiates; tapsecd (beta) responds with a PSK tunnel its
# policy defines (Start=none: a responder accepts without being brought up).
# Both sides install, traffic crosses, counters move.
set -u
lib=${TAPSEC_SOURCE_DIR:-.}/tests/vm
source "$lib/lib/ipsec-hosts.sh"; source "$lib/lib/strongswan.sh"; source "$lib/lib/ike-lab.sh"
ike_need_tapsec
ike_lab two

tapsec_policy_tunnel "$IKE_WORK/beta" from-alpha Peer=192.0.2.1 LocalId=beta.example RemoteId=alpha.example \
  LocalTS=10.2.0.0/24 RemoteTS=10.1.0.0/24
tapsec_start beta "$IKE_WORK/beta" || ike_fail "tapsecd did not start in beta"
charon_start "$NS_ALPHA" "$IKE_WORK/alpha" || ike_fail "charon did not start in alpha"
swan_peer "$IKE_WORK/alpha" to-beta 192.0.2.1 192.0.2.2 10.1.0.0/24 10.2.0.0/24 alpha.example beta.example
charon_load "$IKE_WORK/alpha" || ike_fail "loading alpha"

charon_initiate "$IKE_WORK/alpha" to-beta || ike_fail "charon could not bring the tunnel up with tapsecd"
tapsec_wait_assoc beta esp established 10 || ike_fail "tapsecd shows no established ESP association"
[[ $(tapsec_assoc_field beta ikev2 peer_identity established) == *alpha.example* ]] || ike_fail "peer is not alpha.example"
before_a=$(xfrm_bytes "$NS_ALPHA") before_b=$(xfrm_bytes "$NS_BETA")
ike_ping_ok 5 || ike_fail "ping through the tunnel"
ike_xfrm_moved "$NS_ALPHA" "$before_a" && ike_xfrm_moved "$NS_BETA" "$before_b" || ike_fail "ESP counters did not move"
(($(tapsec_assoc_field beta esp bytes_received established) > 0)) || ike_fail "tapsec reports no bytes received"
echo "PASS: charon initiator <-> tapsec responder"
