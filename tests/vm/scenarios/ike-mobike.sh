#!/bin/bash
# tapsec-vm: timeout=180
# MOBIKE (RFC 4555): tapsecd (alpha) loses 192.0.2.1 and reaches charon
# (beta) over a second link as 198.51.100.1; it sends UPDATE_SA_ADDRESSES,
# both sides move the SAs, and traffic crosses again without a new IKE SA.
set -u
lib=${TAPSEC_SOURCE_DIR:-.}/tests/vm
source "$lib/lib/ipsec-hosts.sh"; source "$lib/lib/strongswan.sh"; source "$lib/lib/ike-lab.sh"
ike_need_tapsec
ike_lab two
ipsec_path_add || ike_fail "second link"

tapsec_policy_tunnel "$IKE_WORK/alpha" to-beta Peer=192.0.2.2 LocalId=alpha.example RemoteId=beta.example \
  LocalTS=10.1.0.0/24 RemoteTS=10.2.0.0/24 MOBIKE=yes
tapsec_start alpha "$IKE_WORK/alpha" || ike_fail "tapsecd did not start"
# charon would otherwise offer its inner address as an additional path.
charon_start "$NS_BETA" "$IKE_WORK/beta" "interfaces_ignore = inner" || ike_fail "charon did not start"
swan_peer "$IKE_WORK/beta" from-alpha 192.0.2.2 %any 10.2.0.0/24 10.1.0.0/24 beta.example alpha.example mobike=yes
charon_load "$IKE_WORK/beta" || ike_fail "loading beta"
tapsec_ctl alpha tunnel up to-beta && tapsec_wait_assoc alpha esp established 30 || ike_fail "tunnel up"
ike_ping_ok 2 || ike_fail "ping before the move"
ike_id=$(tapsec_assoc_field alpha ikev2 id established)

ipsec_path_switch || ike_fail "switching alpha to the second link"
moved() { [[ $(charon_sa_value "$IKE_WORK/beta" 'from-alpha\.remote-host') == 198.51.100.1 ]]; }
charon_wait 30 moved || ike_fail "charon did not learn alpha's new address"
ip -n "$NS_BETA" xfrm state | grep -q 'dst 198.51.100.1' || ike_fail "beta's outbound SA still points at the old address"
ip -n "$NS_ALPHA" xfrm state | grep -q 'src 198.51.100.1' || ike_fail "alpha's outbound SA still uses the old address"
ike_ping_ok 3 || ike_fail "ping after the move"
[[ $(tapsec_assoc_field alpha ikev2 id established) == "$ike_id" ]] || ike_fail "a new IKE SA replaced the moved one"
echo "PASS: MOBIKE address change"
