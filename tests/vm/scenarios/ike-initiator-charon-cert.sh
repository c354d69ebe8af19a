#!/bin/bash
# tapsec-vm: timeout=180
# tapsecd (alpha) initiates to a charon responder (beta) with certificates:
# ECDSA P-256 first, then RSA 2048, from one test CA each; each tunnel carries
# traffic and charon sees alpha.example authenticated by its certificate.
set -u
lib=${TAPSEC_SOURCE_DIR:-.}/tests/vm
source "$lib/lib/ipsec-hosts.sh"; source "$lib/lib/strongswan.sh"; source "$lib/lib/ike-lab.sh"
ike_need_tapsec
ike_lab two
charon_start "$NS_BETA" "$IKE_WORK/beta" || ike_fail "charon did not start in beta"

for type in ecdsa rsa; do
  pki=$IKE_WORK/pki-$type
  swan_pki_ca "$pki" "$type" && swan_pki_host "$pki" alpha "$type" alpha.example 192.0.2.1 &&
    swan_pki_host "$pki" beta "$type" beta.example 192.0.2.2 || ike_fail "pki ($type)"
  rm -f "$IKE_WORK/alpha/policy.d/"*.policy "$IKE_WORK/beta/swanctl/conf.d/"*.conf
  tapsec_policy_tunnel "$IKE_WORK/alpha" "to-beta-$type" Peer=192.0.2.2 LocalId=alpha.example RemoteId=beta.example \
    LocalTS=10.1.0.0/24 RemoteTS=10.2.0.0/24 Auth=certificate \
    cert="$pki/alpha.cert.pem" key="$pki/alpha.key.pem" ca="$pki/ca.cert.pem"
  swan_install_identity "$IKE_WORK/beta" "$pki" beta
  swan_peer "$IKE_WORK/beta" from-alpha 192.0.2.2 192.0.2.1 10.2.0.0/24 10.1.0.0/24 beta.example alpha.example \
    auth=pubkey cert=beta.pem
  charon_load "$IKE_WORK/beta" || ike_fail "loading beta ($type)"
  if [[ $type == ecdsa ]]; then
    tapsec_start alpha "$IKE_WORK/alpha" || ike_fail "tapsecd did not start in alpha"
  else
    tapsec_ctl alpha reload >/dev/null 2>&1 || { _tapsec_stop "$IKE_WORK/alpha"; sleep 0.5; tapsec_start alpha "$IKE_WORK/alpha"; }
  fi
  # Only this round's log lines: the ECDSA round's success must not pass the RSA one.
  log_start=$(($(wc -l <"$IKE_WORK/beta/charon.log") + 1))
  tapsec_ctl alpha tunnel up "to-beta-$type" || ike_fail "tunnel up ($type)"
  tapsec_wait_assoc alpha esp established 30 || ike_fail "no ESP association ($type)"
  # "with ECDSA_WITH_SHA256_DER", "with RSA_EMSA_PSS", "with ECDSA-256 signature", ...
  tail -n "+$log_start" "$IKE_WORK/beta/charon.log" | grep -q "authentication of 'alpha.example' with ${type^^}.* successful" ||
    ike_fail "charon did not log a successful ${type^^} authentication of alpha.example"
  ike_ping_ok 3 || ike_fail "ping through the $type tunnel"
  id=$(tapsec_assoc_field alpha ikev2 id established)
  tapsec_ctl alpha terminate "$id" || ike_fail "terminate ($type)"
  charon_wait 20 eval '(($(charon_ike_count "$IKE_WORK/beta") == 0))' || ike_fail "charon kept the IKE_SA ($type)"
  ike_step "$type certificates: tunnel up, traffic, terminated"
done
echo "PASS: tapsec initiator <-> charon responder, ECDSA and RSA certificates"
