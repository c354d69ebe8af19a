#!/bin/bash
# tapsec-vm: timeout=180
# SSKE: two agents with Export=yes derive the same keying material from
# their IKE SA (prf+ of SK_d), another label gives other keys, and a Child
# SA exports nothing.
set -u
lib=${TAPSEC_SOURCE_DIR:-.}/tests/vm
source "$lib/lib/ipsec-hosts.sh"; source "$lib/lib/strongswan.sh"; source "$lib/lib/ike-lab.sh"
ike_need_tapsec
ike_lab two

write_policy() {  # HOST NAME PEER LOCAL_ID REMOTE_ID EXPORT
  mkdir -p "$IKE_WORK/$1/policy.d"
  cat >"$IKE_WORK/$1/policy.d/50-$2.policy" <<POLICY
[PSK lab]
Key=hex:$IKE_PSK_HEX

[Tunnel]
Name=$2
Peer=$3
LocalId=$4
RemoteId=$5
Auth=psk
PSK=lab
Mode=transport
Export=$6

[Rule $2]
MatchTunnel=$2
Protocols=ikev2
PSKs=lab
Export=yes
Action=allow
POLICY
  chmod 600 "$IKE_WORK/$1/policy.d/50-$2.policy"
}
write_policy alpha to-beta 192.0.2.2 alpha.example beta.example yes
write_policy beta from-alpha 192.0.2.1 beta.example alpha.example yes
tapsec_start alpha "$IKE_WORK/alpha" && tapsec_start beta "$IKE_WORK/beta" || ike_fail "agents did not start"
tapsec_ctl alpha tunnel up to-beta || ike_fail "tunnel up"
tapsec_wait_assoc beta ikev2 established 10 || ike_fail "beta has no IKE SA"

a=$(tapsec_ctl alpha export "$(tapsec_assoc_field alpha ikev2 id established)" --label app-key --length 32) ||
  ike_fail "export on alpha"
b=$(tapsec_ctl beta export "$(tapsec_assoc_field beta ikev2 id established)" --label app-key --length 32) ||
  ike_fail "export on beta"
[[ ${#a} == 64 && $a == "$b" ]] || ike_fail "exports differ: alpha $a, beta $b"
c=$(tapsec_ctl alpha export "$(tapsec_assoc_field alpha ikev2 id established)" --label other --length 32)
[[ $c != "$a" ]] || ike_fail "another label gave the same key"
ike_step "both agents export $a"

# A Child SA exports nothing: keys come from the IKE SA only.
if out=$(tapsec_ctl alpha export "$(tapsec_assoc_field alpha esp id established)" --label app-key --length 32 2>&1); then
  ike_fail "a Child SA exported keys: $out"
fi
echo "PASS: SSKE export from SK_d agrees on both ends"
