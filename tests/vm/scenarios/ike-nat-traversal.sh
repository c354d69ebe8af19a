#!/bin/bash
# tapsec-vm: timeout=170
# NAT traversal: tapsecd (alpha, 172.16.0.2) sits behind a masquerading
# router (outside 192.0.2.1); charon (beta) responds. Both detect the NAT,
# move to UDP 4500, the kernel SAs use espinudp encapsulation, and traffic
# crosses. The router's NAT is nft/iptables MASQUERADE where available, else
# tc's stateless nat action (see lib/ipsec-hosts.sh).
set -u
lib=${TAPSEC_SOURCE_DIR:-.}/tests/vm
source "$lib/lib/ipsec-hosts.sh"; source "$lib/lib/strongswan.sh"; source "$lib/lib/ike-lab.sh"
ike_need_tapsec
ike_lab nat
ike_step "NAT by $IPSEC_NAT_METHOD"

tapsec_policy_tunnel "$IKE_WORK/alpha" to-beta Peer=192.0.2.2 LocalId=alpha.example RemoteId=beta.example \
  LocalTS=10.1.0.0/24 RemoteTS=10.2.0.0/24
tapsec_start alpha "$IKE_WORK/alpha" || ike_fail "tapsecd did not start"
charon_start "$NS_BETA" "$IKE_WORK/beta" || ike_fail "charon did not start"
# The peer's address is whatever the NAT makes of it.
swan_conn "$IKE_WORK/beta" from-alpha local_addrs=192.0.2.2 local_id=beta.example remote_id=alpha.example \
  local_ts=10.2.0.0/24 remote_ts=10.1.0.0/24 psk="0x$(ike_psk_hex)"
charon_load "$IKE_WORK/beta" || ike_fail "loading beta"
tapsec_ctl alpha tunnel up to-beta && tapsec_wait_assoc alpha esp established 30 || ike_fail "tunnel up through the NAT"

[[ $(charon_sa_value "$IKE_WORK/beta" 'from-alpha\.nat-remote') == yes ]] || ike_fail "charon did not see alpha behind a NAT"
[[ $(charon_sa_value "$IKE_WORK/beta" 'from-alpha\.remote-port') == 4500 ]] || ike_fail "IKE did not float to port 4500"
[[ $(charon_sa_value "$IKE_WORK/beta" 'from-alpha\.child-sas\.[^.]+\.encap') == yes ]] || ike_fail "ESP not UDP-encapsulated"
ip -n "$NS_ALPHA" xfrm state | grep -q 'encap type espinudp' || ike_fail "alpha's SAs lack espinudp encapsulation"
before=$(xfrm_bytes "$NS_BETA")
ike_ping_ok 5 || ike_fail "ping through the NAT"
ike_xfrm_moved "$NS_BETA" "$before" || ike_fail "beta's ESP counters did not move"
# Not checked here: that the mapping outlives a quiet spell. tapsecd sends
# no NAT-T keepalives (RFC 3948 section 4) yet, so nothing would hold it.
echo "PASS: NAT traversal"
