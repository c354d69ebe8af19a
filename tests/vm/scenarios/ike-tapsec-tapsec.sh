#!/bin/bash
# tapsec-vm: timeout=180
# tapsecd on both hosts, no strongSwan: alpha initiates (PSK, then ECDSA
# certificates), beta responds; both agents list matching IKE and ESP
# associations (each one's inbound SPI is the other's outbound), traffic
# crosses and a terminate on one side clears both.
set -u
lib=${TAPSEC_SOURCE_DIR:-.}/tests/vm
source "$lib/lib/ipsec-hosts.sh"; source "$lib/lib/strongswan.sh"; source "$lib/lib/ike-lab.sh"
ike_need_tapsec
ike_lab two
ike_lab_certs ecdsa
pki=$IKE_WORK/pki
tapsec_policy_tunnel "$IKE_WORK/alpha" psk-to-beta Peer=192.0.2.2 LocalId=alpha.example RemoteId=beta.example \
  LocalTS=10.1.0.0/24 RemoteTS=10.2.0.0/24
tapsec_policy_tunnel "$IKE_WORK/beta" psk-from-alpha Peer=192.0.2.1 LocalId=beta.example RemoteId=alpha.example \
  LocalTS=10.2.0.0/24 RemoteTS=10.1.0.0/24
tapsec_policy_tunnel "$IKE_WORK/alpha" cert-to-beta Peer=192.0.2.2 LocalId=alpha.example RemoteId=beta.example \
  LocalTS=10.1.0.0/24 RemoteTS=10.2.0.0/24 Auth=certificate \
  cert="$pki/alpha.cert.pem" key="$pki/alpha.key.pem" ca="$pki/ca.cert.pem"
tapsec_policy_tunnel "$IKE_WORK/beta" cert-from-alpha Peer=192.0.2.1 LocalId=beta.example RemoteId=alpha.example \
  LocalTS=10.2.0.0/24 RemoteTS=10.1.0.0/24 Auth=certificate \
  cert="$pki/beta.cert.pem" key="$pki/beta.key.pem" ca="$pki/ca.cert.pem"
tapsec_start alpha "$IKE_WORK/alpha" && tapsec_start beta "$IKE_WORK/beta" || ike_fail "agents did not start"

for tunnel in psk-to-beta cert-to-beta; do
  tapsec_ctl alpha tunnel up "$tunnel" || ike_fail "tunnel up $tunnel"
  tapsec_wait_assoc alpha esp established 30 && tapsec_wait_assoc beta esp established 10 || ike_fail "$tunnel: no ESP"
  a_in=$(tapsec_assoc_field alpha esp inbound_spi established) b_out=$(tapsec_assoc_field beta esp outbound_spi established)
  [[ ${a_in,,} == "${b_out,,}" ]] || ike_fail "$tunnel: alpha inbound SPI $a_in, beta outbound $b_out"
  before=$(xfrm_bytes "$NS_BETA")
  ike_ping_ok 3 || ike_fail "$tunnel: ping"
  ike_xfrm_moved "$NS_BETA" "$before" || ike_fail "$tunnel: ESP counters"
  tapsec_ctl alpha terminate "$(tapsec_assoc_field alpha ikev2 id established)" || ike_fail "$tunnel: terminate"
  both_clear() { (($(tapsec_assoc_count alpha esp established) + $(tapsec_assoc_count beta esp established) == 0 &&
                   $(xfrm_state_count "$NS_ALPHA") + $(xfrm_state_count "$NS_BETA") == 0)); }
  charon_wait 20 both_clear || ike_fail "$tunnel: state left after terminate"
  ike_step "$tunnel: up, traffic, SPIs agree, terminated on both"
done
echo "PASS: tapsec <-> tapsec"
