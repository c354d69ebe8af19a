#!/bin/bash
# tapsec-vm: timeout=180
# Deletion both ways: tapsecctl terminate sends an IKE DELETE that charon
# acts on (no SAs left on either side); then charon terminates a new tunnel
# and tapsecd ends its associations and removes the kernel state.
set -u
lib=${TAPSEC_SOURCE_DIR:-.}/tests/vm
source "$lib/lib/ipsec-hosts.sh"; source "$lib/lib/strongswan.sh"; source "$lib/lib/ike-lab.sh"
ike_need_tapsec
ike_lab two

all_clean() {
  (($(tapsec_assoc_count alpha ikev2 established) == 0 && $(tapsec_assoc_count alpha esp established) == 0)) &&
    (($(charon_ike_count "$IKE_WORK/beta") == 0)) &&
    (($(xfrm_state_count "$NS_ALPHA") + $(xfrm_state_count "$NS_BETA") == 0)) &&
    (($(xfrm_policy_count "$NS_ALPHA") + $(xfrm_policy_count "$NS_BETA") == 0))
}

ike_tunnel_to_charon
tapsec_ctl alpha terminate "$(tapsec_assoc_field alpha ikev2 id established)" || ike_fail "tapsecctl terminate"
charon_wait 20 all_clean || ike_fail "state left after tapsec's DELETE"
ike_step "tapsec-initiated delete: nothing left"

tapsec_ctl alpha tunnel up to-beta && tapsec_wait_assoc alpha esp established 30 || ike_fail "tunnel up again"
charon_terminate "$IKE_WORK/beta" ike from-alpha || ike_fail "swanctl --terminate"
charon_wait 20 all_clean || ike_fail "state left after charon's DELETE"
ike_step "charon-initiated delete: nothing left"
echo "PASS: IKE DELETE both ways"
