#!/bin/bash
# tapsec-vm: timeout=120
# Deletion both ways: tapsecctl terminate sends an IKE DELETE that charon
# acts on (no SAs left on either side); then charon terminates a new tunnel
# and tapsecd ends its associations and removes the kernel state.
set -u
lib=${TAPSEC_SOURCE_DIR:-.}/tests/vm
source "$lib/lib/ipsec-hosts.sh"; source "$lib/lib/strongswan.sh"; source "$lib/lib/ike-lab.sh"
ike_need_tapsec
ike_lab two

tapsec_policy_tunnel "$IKE_WORK/alpha" to-beta Peer=192.0.2.2 LocalId=alpha.example RemoteId=beta.example \
  LocalTS=10.1.0.0/24 RemoteTS=10.2.0.0/24
tapsec_start alpha "$IKE_WORK/alpha" || ike_fail "tapsecd did not start"
charon_start "$NS_BETA" "$IKE_WORK/beta" || ike_fail "charon did not start"
swan_peer "$IKE_WORK/beta" from-alpha 192.0.2.2 192.0.2.1 10.2.0.0/24 10.1.0.0/24 beta.example alpha.example
charon_load "$IKE_WORK/beta" || ike_fail "loading beta"

all_clean() {
  (($(tapsec_assoc_count alpha ikev2 established) == 0 && $(tapsec_assoc_count alpha esp established) == 0)) &&
    (($(charon_ike_count "$IKE_WORK/beta") == 0)) &&
    (($(xfrm_state_count "$NS_ALPHA") + $(xfrm_state_count "$NS_BETA") == 0)) &&
    (($(xfrm_policy_count "$NS_ALPHA") + $(xfrm_policy_count "$NS_BETA") == 0))
}

tapsec_ctl alpha tunnel up to-beta && tapsec_wait_assoc alpha esp established 30 || ike_fail "tunnel up"
tapsec_ctl alpha terminate "$(tapsec_assoc_field alpha ikev2 id established)" || ike_fail "tapsecctl terminate"
charon_wait 20 all_clean || ike_fail "state left after tapsec's DELETE"
ike_step "tapsec-initiated delete: nothing left"

tapsec_ctl alpha tunnel up to-beta && tapsec_wait_assoc alpha esp established 30 || ike_fail "tunnel up again"
charon_terminate "$IKE_WORK/beta" ike from-alpha || ike_fail "swanctl --terminate"
charon_wait 20 all_clean || ike_fail "state left after charon's DELETE"
ike_step "charon-initiated delete: nothing left"
echo "PASS: IKE DELETE both ways"
