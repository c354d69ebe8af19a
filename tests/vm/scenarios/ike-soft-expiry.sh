#!/bin/bash
# tapsec-vm: timeout=180
# The kernel's soft packet limit drives a Child SA rekey against charon: the
# agent announces KeyExpiring with the packets left before the hard limit,
# rekeys make-before-break and a ping across it loses nothing.
set -u
lib=${TAPSEC_SOURCE_DIR:-.}/tests/vm
source "$lib/lib/ipsec-hosts.sh"; source "$lib/lib/strongswan.sh"; source "$lib/lib/ike-lab.sh"
ike_need_tapsec
ike_lab two

ike_tunnel_to_charon RekeyPackets=200 LifePackets=100000

old_spi=$(tapsec_assoc_field alpha esp inbound_spi established)
esp_id=$(tapsec_assoc_field alpha esp id established)
# The agent sends signals only to connections that may see the association
# and have introduced themselves; tapsecctl monitor is one, and dbus-monitor
# sees the copies sent to it.
tapsec_ctl alpha monitor >/dev/null 2>&1 &
watcher=$!
dbus-monitor --address "unix:path=${TAPSEC_DIR[alpha]}/bus" "type='signal',member='KeyExpiring'" \
  >"$IKE_WORK/signals.out" 2>&1 &
monitor=$!
sleep 1
# 300 echo requests: each SA of the pair passes its 200-packet soft limit once.
ipsec_ping alpha -c 300 -i 0.02 -W 2 -I 10.1.0.1 10.2.0.1 >"$IKE_WORK/ping.out" 2>&1 ||
  ike_fail "ping across the soft expiry: $(tail -n 2 "$IKE_WORK/ping.out")"
summary=$(ike_ping_all_received "$IKE_WORK/ping.out" 300) || ike_fail "the soft-expiry rekey lost packets: $summary"

tapsec_wait_rekeyed alpha esp "$old_spi" 20 || ike_fail "the soft limit did not replace the ESP SA"
sleep 1
kill "$monitor" "$watcher" 2>/dev/null
wait "$monitor" "$watcher" 2>/dev/null
# The association's path ends in its id; the count is 100000 - 200 or a little less.
grep -A1 "path=/org/tapsec1/association/$esp_id;.*member=KeyExpiring" "$IKE_WORK/signals.out" >"$IKE_WORK/expiring.out"
remaining=$(awk '/uint64/ {print $2; exit}' "$IKE_WORK/expiring.out")
[[ -n $remaining ]] || ike_fail "no KeyExpiring on association $esp_id: $(cat "$IKE_WORK/signals.out")"
((remaining > 99000 && remaining <= 99800)) || ike_fail "KeyExpiring says $remaining packets remain, expected about 99800"
(($(tapsec_assoc_field alpha esp key_epoch established) == 1)) || ike_fail "key_epoch is not 1 after one rekey"
[[ $(charon_child_state "$IKE_WORK/beta" from-alpha from-alpha) == INSTALLED ]] || ike_fail "charon after the rekey"
ike_step "soft expiry: KeyExpiring($remaining), rekeyed, ping $summary"
echo "PASS: the kernel's soft limit starts a lossless rekey and KeyExpiring announces it"
