#!/bin/bash
# tapsec-vm: timeout=200
# Two strongSwan daemons in network namespaces build IKEv2 tunnels whose ESP
# SAs the guest kernel carries: PSK, then ECDSA certificates, a CHILD_SA
# rekeying under a running ping that loses nothing, and a clean teardown.
# This proves the interop harness (tests/vm/lib) and the kernel's ESP path,
# with no tapsec code involved.
set -u
source "${TAPSEC_SOURCE_DIR:-.}/tests/vm/lib/ipsec-hosts.sh"
source "${TAPSEC_SOURCE_DIR:-.}/tests/vm/lib/strongswan.sh"

command -v charon-systemd >/dev/null && command -v swanctl >/dev/null && command -v pki >/dev/null ||
  { echo "SKIP: strongSwan (charon-systemd, swanctl, pki) is not installed" >&2; exit 77; }

work=$(mktemp -d /tmp/swan-sanity.XXXXXX)
alpha=$work/alpha beta=$work/beta
started=$SECONDS
step() { echo "[$((SECONDS - started))s] $*"; }
fail() {
  echo "FAIL: $*"
  local d
  for d in "$alpha" "$beta"; do
    echo "--- $(basename "$d"): swanctl --list-sas"
    swan_ctl "$d" --list-sas 2>&1 | sed 's/^/    /'
    echo "--- $(basename "$d"): last lines of charon.log"
    tail -n 25 "$d/charon.log" 2>/dev/null | sed 's/^/    /'
  done
  exit 1
}
ipsec_at_exit charon_stop_all

ipsec_hosts_two || fail "cannot create the namespaces"
ns_alpha=$(ipsec_ns alpha) ns_beta=$(ipsec_ns beta)
step "hosts up"

charon_start "$ns_alpha" "$alpha" || fail "charon did not start in alpha"
charon_start "$ns_beta" "$beta" || fail "charon did not start in beta"
step "both daemons answer"

# Certificates now, so both connections load at once.
swan_pki_ca "$work/pki" ecdsa &&
  swan_pki_host "$work/pki" alpha ecdsa alpha.example 192.0.2.1 &&
  swan_pki_host "$work/pki" beta ecdsa beta.example 192.0.2.2 || fail "pki could not make certificates"
swan_install_identity "$alpha" "$work/pki" alpha
swan_install_identity "$beta" "$work/pki" beta
step "ECDSA CA and host certificates made"

tunnel_side() {  # DIR NAME SELF PEER SELF_NET PEER_NET SELF_ID PEER_ID extra...
  local dir=$1 name=$2 self=$3 peer=$4 self_net=$5 peer_net=$6 self_id=$7 peer_id=$8
  shift 8
  swan_conn "$dir" "$name" local_addrs="$self" remote_addrs="$peer" local_id="$self_id" remote_id="$peer_id" \
    local_ts="$self_net" remote_ts="$peer_net" mode=tunnel \
    proposals=aes256gcm16-prfsha384-x25519 esp_proposals=aes256gcm16 "$@"
}
psk=psk=interop-sanity-shared-secret-0123456789
tunnel_side "$alpha" psk 192.0.2.1 192.0.2.2 10.1.0.0/24 10.2.0.0/24 alpha.example beta.example auth=psk "$psk"
tunnel_side "$beta" psk 192.0.2.2 192.0.2.1 10.2.0.0/24 10.1.0.0/24 beta.example alpha.example auth=psk "$psk"
tunnel_side "$alpha" cert 192.0.2.1 192.0.2.2 10.1.0.0/24 10.2.0.0/24 alpha.example beta.example \
  auth=pubkey cert=alpha.pem
tunnel_side "$beta" cert 192.0.2.2 192.0.2.1 10.2.0.0/24 10.1.0.0/24 beta.example alpha.example \
  auth=pubkey cert=beta.pem
charon_load "$alpha" && charon_load "$beta" || fail "swanctl --load-all"
step "connections loaded"

# Both sides: IKE_SA ESTABLISHED and CHILD_SA INSTALLED, ESP states present.
expect_established() {  # NAME
  local d
  for d in "$alpha" "$beta"; do
    [[ $(charon_ike_state "$d" "$1") == ESTABLISHED ]] ||
      fail "$(basename "$d"): IKE_SA $1 is '$(charon_ike_state "$d" "$1")', expected ESTABLISHED"
    [[ $(charon_child_state "$d" "$1" "$1") == INSTALLED ]] ||
      fail "$(basename "$d"): CHILD_SA $1 is '$(charon_child_state "$d" "$1" "$1")', expected INSTALLED"
  done
  local n
  for n in "$ns_alpha" "$ns_beta"; do
    (($(xfrm_state_count "$n") >= 2)) || fail "$n: expected an inbound and an outbound ESP state"
  done
}

# Pings from alpha's inner address to beta's and checks the ESP byte counters
# moved in both namespaces.
expect_traffic_crosses() {
  local before_alpha before_beta
  before_alpha=$(xfrm_bytes "$ns_alpha") before_beta=$(xfrm_bytes "$ns_beta")
  ipsec_ping alpha -q -c 3 -i 0.2 -W 2 -I 10.1.0.1 10.2.0.1 >"$work/ping.out" 2>&1 ||
    { cat "$work/ping.out"; fail "10.1.0.1 cannot reach 10.2.0.1 through the tunnel"; }
  local after_alpha after_beta
  after_alpha=$(xfrm_bytes "$ns_alpha") after_beta=$(xfrm_bytes "$ns_beta")
  ((after_alpha > before_alpha)) || fail "alpha's ESP byte counters did not move ($before_alpha -> $after_alpha)"
  ((after_beta > before_beta)) || fail "beta's ESP byte counters did not move ($before_beta -> $after_beta)"
  step "  ping crossed; ESP bytes alpha $before_alpha->$after_alpha, beta $before_beta->$after_beta"
}

charon_initiate "$alpha" psk || fail "PSK tunnel did not come up"
step "PSK tunnel initiated"
expect_established psk
expect_traffic_crosses
charon_terminate "$alpha" ike psk || fail "terminating the PSK IKE_SA"
beta_has_no_ike_sa() { (($(charon_ike_count "$beta") == 0)); }
charon_wait 20 beta_has_no_ike_sa || fail "beta kept the PSK IKE_SA"
step "PSK tunnel terminated"

charon_initiate "$alpha" cert || fail "certificate tunnel did not come up"
step "ECDSA certificate tunnel initiated"
expect_established cert
[[ $(charon_sa_value "$alpha" 'cert\.remote-id') == beta.example ]] || fail "alpha does not see beta.example as its peer"
expect_traffic_crosses

# A CHILD_SA rekeying while a ping runs every 50 ms: no packet may be lost.
old_spi=$(charon_sa_value "$alpha" 'cert\.child-sas\.[^.]+\.spi-in')
ipsec_ping alpha -c 80 -i 0.05 -W 2 -I 10.1.0.1 10.2.0.1 >"$work/rekey-ping.out" 2>&1 &
ping_pid=$!
sleep 1
charon_rekey "$alpha" child cert || fail "swanctl --rekey"
rekeyed() {
  local spi
  spi=$(charon_sas "$alpha" | awk -F= '/^cert\.child-sas\.[^.]+\.state=INSTALLED$/ { sub(/\.state$/, "", $1); k = $1 }
                                        k != "" && $1 == k ".spi-in" { print $2; exit }')
  [[ -n $spi && $spi != "$old_spi" ]] && (($(charon_child_count "$alpha") == 1))
}
charon_wait 30 rekeyed || fail "the CHILD_SA was not replaced by a new one (old inbound SPI $old_spi)"
wait "$ping_pid"
ping_status=$?
summary=$(grep 'packets transmitted' "$work/rekey-ping.out")
transmitted=$(awk '/packets transmitted/ {print $1}' <<<"$summary")
received=$(awk '/packets transmitted/ {print $4}' <<<"$summary")
((ping_status == 0 && transmitted == 80 && received == 80)) ||
  { cat "$work/rekey-ping.out"; fail "rekeying under traffic lost packets: $summary"; }
[[ $(charon_child_state "$beta" cert cert) == INSTALLED ]] || fail "beta has no installed CHILD_SA after the rekeying"
step "CHILD_SA rekeyed under a 20/s ping: $summary"
expect_traffic_crosses

charon_terminate "$alpha" ike cert || fail "terminating the certificate IKE_SA"
no_sas_left() {
  local d n
  for d in "$alpha" "$beta"; do (($(charon_ike_count "$d") == 0)) || return 1; done
  for n in "$ns_alpha" "$ns_beta"; do
    (($(xfrm_state_count "$n") == 0 && $(xfrm_policy_count "$n") == 0)) || return 1
  done
}
charon_wait 20 no_sas_left ||
  { ip -n "$ns_alpha" xfrm state; ip -n "$ns_beta" xfrm state; fail "SAs or policies left after terminating"; }
step "terminated: no IKE_SAs, ESP states or policies left on either side"
echo "PASS: strongSwan interop harness on $(uname -r)"
