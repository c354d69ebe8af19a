#!/bin/bash
# tapsec-vm: timeout=200
# IKE SA rekeying against charon in both directions under a 20 packets/s
# ping: tapsec starts one (update-keys on the IKE SA), then charon
# (swanctl --rekey --ike). After each the IKE SPIs are new, the IKE SA's key
# epoch grew, the Child SA moved over unchanged (same association) and keeps
# carrying traffic with no loss, and each side keeps exactly one IKE SA.
set -u
_one_charon_ike() { (($(charon_ike_count "$IKE_WORK/beta") == 1)); }
lib=${TAPSEC_SOURCE_DIR:-.}/tests/vm
source "$lib/lib/ipsec-hosts.sh"; source "$lib/lib/strongswan.sh"; source "$lib/lib/ike-lab.sh"
ike_need_tapsec
ike_lab two

ike_tunnel_to_charon
esp_id=$(tapsec_assoc_field alpha esp id established)

rekey_ike_under_ping() {  # WHO: tapsec | charon
  local old_spi old_epoch ike_id
  ike_id=$(tapsec_assoc_field alpha ikev2 id established)
  old_spi=$(tapsec_assoc_field alpha ikev2 inbound_spi established)
  old_epoch=$(tapsec_assoc_field alpha ikev2 key_epoch established)
  ipsec_ping alpha -c 100 -i 0.05 -W 2 -I 10.1.0.1 10.2.0.1 >"$IKE_WORK/ping-$1.out" 2>&1 &
  local ping=$!
  sleep 1
  if [[ $1 == tapsec ]]; then
    tapsec_ctl alpha update-keys "$ike_id" || ike_fail "update-keys on the IKE SA"
  else
    charon_rekey "$IKE_WORK/beta" ike from-alpha || ike_fail "swanctl --rekey --ike"
  fi
  tapsec_wait_rekeyed alpha ikev2 "$old_spi" 30 || ike_fail "$1 IKE rekey: the IKE SA was not replaced"
  wait "$ping"
  local summary
  summary=$(ike_ping_all_received "$IKE_WORK/ping-$1.out" 100) || ike_fail "$1 IKE rekey lost packets: $summary"
  (($(tapsec_assoc_field alpha ikev2 key_epoch established) > old_epoch)) || ike_fail "$1 IKE rekey: key_epoch did not grow"
  [[ $(tapsec_assoc_field alpha esp id established) == "$esp_id" ]] || ike_fail "$1 IKE rekey replaced the Child SA's association"
  charon_wait 10 _one_charon_ike || ike_fail "charon keeps the old IKE_SA after the $1 rekey"
  [[ $(charon_ike_state "$IKE_WORK/beta" from-alpha) == ESTABLISHED ]] || ike_fail "charon's IKE SA after the $1 rekey"
  # The new IKE SA carries exchanges: a Child SA rekey over it works.
  local child_spi
  child_spi=$(tapsec_assoc_field alpha esp inbound_spi established)
  tapsec_ctl alpha update-keys "$esp_id" || ike_fail "Child SA rekey over the new IKE SA"
  local deadline=$((SECONDS + 20))
  until [[ $(tapsec_assoc_field alpha esp inbound_spi established) != "$child_spi" ]]; do
    ((SECONDS < deadline)) || ike_fail "no Child SA rekey over the IKE SA rekeyed by $1"
    sleep 0.2
  done
  ike_ping_ok || ike_fail "no traffic after the Child SA rekey over the new IKE SA"
  ike_step "$1-initiated IKE SA rekey under traffic: $summary"
}
rekey_ike_under_ping tapsec
rekey_ike_under_ping charon
echo "PASS: IKE SA rekeying in both directions keeps the Child SA and loses no packets"
