#!/bin/bash
# tapsec-vm: timeout=200
# ESP rekeying in both directions under a 20 packets/s ping loses nothing:
# tapsec starts one (update-keys), then charon (swanctl --rekey); after each
# the SPIs are new, the key epoch grew and one ESP association is left.
# Neither kernel drops an ESP packet for want of its SA (XfrmInNoStates):
# each end sends with a new SA only once the other reads it.
set -u
_one_charon_child() { (($(charon_child_count "$IKE_WORK/beta") == 1)); }
lib=${TAPSEC_SOURCE_DIR:-.}/tests/vm
source "$lib/lib/ipsec-hosts.sh"; source "$lib/lib/strongswan.sh"; source "$lib/lib/ike-lab.sh"
ike_need_tapsec
ike_lab two

ike_tunnel_to_charon

rekey_under_ping() {  # WHO: tapsec | charon
  local old_spi old_epoch
  old_spi=$(tapsec_assoc_field alpha esp inbound_spi established)
  old_epoch=$(tapsec_assoc_field alpha esp key_epoch established)
  local -A no_state
  for host in alpha beta; do no_state[$host]=$(ipsec_xfrm_stat $host XfrmInNoStates); done
  ipsec_ping alpha -c 100 -i 0.05 -W 2 -I 10.1.0.1 10.2.0.1 >"$IKE_WORK/ping-$1.out" 2>&1 &
  local ping=$!
  sleep 1
  if [[ $1 == tapsec ]]; then
    tapsec_ctl alpha update-keys "$(tapsec_assoc_field alpha esp id established)" || ike_fail "update-keys"
  else
    charon_rekey "$IKE_WORK/beta" child from-alpha || ike_fail "swanctl --rekey"
  fi
  tapsec_wait_rekeyed alpha esp "$old_spi" 30 || ike_fail "$1 rekey: the ESP SA was not replaced"
  wait "$ping"
  local summary
  summary=$(ike_ping_all_received "$IKE_WORK/ping-$1.out" 100) || ike_fail "$1 rekey lost packets: $summary"
  for host in alpha beta; do
    [[ -n ${no_state[$host]} ]] || ike_fail "$host: the kernel keeps no XFRM statistics (/proc/net/xfrm_stat)"
    local dropped=$(($(ipsec_xfrm_stat $host XfrmInNoStates) - no_state[$host]))
    ((dropped == 0)) || ike_fail "$1 rekey: $host's kernel dropped $dropped ESP packets with no SA for them"
  done
  (($(tapsec_assoc_field alpha esp key_epoch established) > old_epoch)) || ike_fail "$1 rekey: key_epoch did not grow"
  [[ $(charon_child_state "$IKE_WORK/beta" from-alpha from-alpha) == INSTALLED ]] || ike_fail "charon after $1 rekey"
  # The old pair goes once its DELETE exchange is through.
  charon_wait 10 _one_charon_child || ike_fail "charon keeps the old CHILD_SA after the $1 rekey"
  ike_step "$1-initiated rekey under traffic: $summary"
}
rekey_under_ping tapsec
rekey_under_ping charon
echo "PASS: rekeying in both directions loses no packets"
