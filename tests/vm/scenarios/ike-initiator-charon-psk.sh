#!/bin/bash
# tapsec-vm: timeout=180
# tapsecd (alpha) initiates an IKEv2 tunnel with a pre-shared key to a charon
# responder (beta): both see the IKE SA and the ESP SA, the SPIs agree, ping
# crosses 10.1.0.0/24 <-> 10.2.0.0/24 and the kernel's ESP counters move on
# both sides.
set -u
lib=${TAPSEC_SOURCE_DIR:-.}/tests/vm
source "$lib/lib/ipsec-hosts.sh"; source "$lib/lib/strongswan.sh"; source "$lib/lib/ike-lab.sh"
ike_need_tapsec
ike_lab two

tapsec_policy_tunnel "$IKE_WORK/alpha" to-beta Peer=192.0.2.2 LocalId=alpha.example RemoteId=beta.example \
  LocalTS=10.1.0.0/24 RemoteTS=10.2.0.0/24
tapsec_start alpha "$IKE_WORK/alpha" || ike_fail "tapsecd did not start in alpha"
charon_start "$NS_BETA" "$IKE_WORK/beta" || ike_fail "charon did not start in beta"
swan_peer "$IKE_WORK/beta" from-alpha 192.0.2.2 192.0.2.1 10.2.0.0/24 10.1.0.0/24 beta.example alpha.example
charon_load "$IKE_WORK/beta" || ike_fail "loading beta"

tapsec_ctl alpha tunnel up to-beta || ike_fail "tapsecctl tunnel up to-beta"
tapsec_wait_assoc alpha esp established 30 || ike_fail "no established ESP association on alpha"
[[ $(tapsec_assoc_field alpha ikev2 peer_identity established) == *beta.example* ]] ||
  ike_fail "alpha's IKE SA peer is not beta.example"
[[ $(charon_ike_state "$IKE_WORK/beta" from-alpha) == ESTABLISHED ]] || ike_fail "charon's IKE_SA is not ESTABLISHED"
[[ $(charon_child_state "$IKE_WORK/beta" from-alpha from-alpha) == INSTALLED ]] || ike_fail "charon's CHILD_SA is not INSTALLED"
# SPIs: what tapsec receives on is what charon sends to, and back.
tapsec_in=$(tapsec_assoc_field alpha esp inbound_spi established)
charon_out=$(charon_sa_value "$IKE_WORK/beta" 'from-alpha\.child-sas\.[^.]+\.spi-out')
((16#${tapsec_in#0x} == 16#$charon_out)) || ike_fail "SPI mismatch: tapsec inbound $tapsec_in, charon outbound $charon_out"
ike_step "tunnel up, SPIs agree"

before_a=$(xfrm_bytes "$NS_ALPHA") before_b=$(xfrm_bytes "$NS_BETA")
ike_ping_ok 5 || ike_fail "ping 10.1.0.1 -> 10.2.0.1 through the tunnel"
ike_xfrm_moved "$NS_ALPHA" "$before_a" && ike_xfrm_moved "$NS_BETA" "$before_b" ||
  ike_fail "ESP byte counters did not move"
(($(tapsec_assoc_field alpha esp bytes_sent established) > 0)) || ike_fail "tapsec reports no bytes sent"
echo "PASS: tapsec initiator <-> charon responder, PSK"
