#!/usr/bin/env bash
# WireGuard between two agents in network namespaces, on this kernel's
# fallback (wireguard-go over TUN) or on kernel WireGuard where it exists:
# the agents authenticate each other over TLS, exchange WireGuard keys and a
# PSK, traffic crosses, the PSK rotates under continuous traffic with no
# loss and stays equal on both ends, a crashed agent leaves no wireguard-go
# behind and comes back (fallback only), and a peer that fails
# authentication leaves nothing behind.
#   wireguard-hosts.sh BUILD_DIR
set -uo pipefail
build=${1:?build dir}
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib/wireguard.sh"
wireguard_require
offload=$WG_OFFLOAD
export WG_PSK_ROTATION=3
export TAPSECD_ARGS="--wg-stale-after 4"
source "$here/lib/hosts.sh"
# `ip netns exec` shows /etc/netns/NAME/hosts as /etc/hosts: alpha's own
# name for the plain peer below. Where /etc is read-only (a VM sharing this
# machine's root) that part is skipped, loudly.
alpha_etc=/etc/netns/${HOSTS_PREFIX}-alpha
if mkdir -p "$alpha_etc" 2>/dev/null; then
  echo "192.0.2.2 plain-peer.test" >"$alpha_etc/hosts"
else
  alpha_etc=""
fi
cleanup() { hosts_down; [[ -n $alpha_etc ]] && rm -rf "$alpha_etc"; }
trap cleanup EXIT
fail() { hosts_fail "$@"; }
ctl() { host_ctl "$build" "$@"; }
# iputils ping where installed, else busybox's (the same summary line).
ping_on() { local h=$1; shift; if command -v ping >/dev/null; then on_host "$h" ping "$@"; else on_host "$h" busybox ping "$@"; fi; }
psk_of() { on_host "$1" wg show "$2" preshared-keys | awk '{print $2}'; }
# The two ends' PSKs, once they agree: a rotation in flight (one round trip
# between the responder installing and the initiator) may be caught, so
# look again a few times. Prints "alpha's beta's" and fails if they never agree.
agreed_psks() {
  local a b i
  for i in 1 2 3 4 5 6 7 8 9 10; do
    a=$(psk_of alpha wg-beta) b=$(psk_of beta wg-alpha)
    [[ -n $a && $a != "(none)" && $a == "$b" ]] && { echo "$a"; return 0; }
    sleep 0.2
  done
  echo "$a / $b"
  return 1
}
# alpha_policy FILE: writes stdin as alpha's policy file FILE and has the
# agent read its policy again.
alpha_policy() {
  local file=$HOSTS_DIR/alpha/policy.d/$1
  cat >"$file"
  chmod 600 "$file"
  kill -HUP "$(cat "$HOSTS_DIR/alpha/tapsecd.pid")"
  sleep 1
}
peer_count() { on_host "$1" wg show "$2" peers 2>/dev/null | grep -c .; }

hosts_up "$build"

# Bring-up: the exchange runs, then the first PSK is in place on both ends.
ctl alpha tunnel up wg-to-beta --protocol wireguard || fail "tunnel up wg-to-beta"
ping_on alpha -c 5 -i 0.2 -W 2 10.9.0.2 >/dev/null || fail "no ping across the WireGuard tunnel"
sleep 1.5  # the agent reads WireGuard once a second
json=$(ctl alpha --json wg) || fail "tapsecctl wg"
grep -q "\"offload\": *\"$offload\"" <<<"$json" || fail "alpha's link does not say offload $offload: $json"
grep -q '"state": *"established"' <<<"$json" || fail "alpha's peer is not established after traffic: $json $(ctl alpha status)"
ctl beta wg | grep -q "latest handshake" || fail "beta's tapsecctl wg shows no handshake"
psk_a=$(agreed_psks) || fail "the two ends hold different PSKs ($psk_a)"
echo "up: ping crosses, offload $offload, PSK equal on both ends"

# Rotation every 3 s under a 10/s ping for 12 s: nothing lost, PSK changed
# and still equal, epoch grew.
epoch_before=$(ctl alpha --json wg | grep -o '"psk_epoch": *[0-9]*' | grep -o '[0-9]*$')
ping_on alpha -c 120 -i 0.1 -W 2 10.9.0.2 >"$HOSTS_DIR/ping.out" 2>&1
summary=$(grep 'packets transmitted' "$HOSTS_DIR/ping.out")
[[ $(awk '{print $1 "/" $4}' <<<"$summary") == 120/120 ]] || fail "rotation lost packets: $summary"
epoch_after=$(ctl alpha --json wg | grep -o '"psk_epoch": *[0-9]*' | grep -o '[0-9]*$')
((epoch_after >= epoch_before + 2)) || fail "PSK epoch went only from $epoch_before to $epoch_after in 12 s"
psk_a2=$(agreed_psks) || fail "after rotation the ends differ ($psk_a2)"
[[ $psk_a2 != "$psk_a" ]] || fail "the PSK did not change"
echo "rotation: epoch $epoch_before -> $epoch_after, $summary"

# alpha's agent crashes (wireguard-go only): its wireguard-go goes with it,
# and the restarted agent brings the tunnel up again under the same name.
# A kernel link outlives a crash and is adopted, not owned, by the next
# agent, which would change the teardown checks below.
if [[ $offload == userspace ]]; then
  kill -KILL "$(cat "$HOSTS_DIR/alpha/tapsecd.pid")"
  wait "$(cat "$HOSTS_DIR/alpha/tapsecd.pid")" 2>/dev/null
  deadline=$((SECONDS + 5))
  while on_host alpha pgrep -f "wireguard-go -f wg-beta\$" >/dev/null; do
    ((SECONDS < deadline)) || fail "wireguard-go for wg-beta outlived alpha's agent"
    sleep 0.1
  done
  host_agent_start "$build" alpha
  host_agent_wait "$build" alpha || fail "alpha's agent did not come back"
  ctl alpha tunnel up wg-to-beta --protocol wireguard || fail "tunnel up wg-to-beta after alpha's agent restarted"
  ping_on alpha -c 5 -i 0.2 -W 2 10.9.0.2 >/dev/null || fail "no ping across the tunnel after alpha's agent restarted"
  echo "crash: alpha's agent killed, its wireguard-go gone with it, tunnel up again after a restart"
fi

# The public key of an agent-held identity, for a peer configured by hand.
ctl alpha wg pubkey wg-alpha | grep -qE '^[A-Za-z0-9+/]{43}=$' || fail "wg pubkey"

# A peer that fails authentication: beta expects alpha.test; an alpha tunnel
# presenting beta's certificate is refused and leaves no link behind.
alpha_policy 35-impostor.policy <<POLICY
[Identity wg-impostor]
Type=wireguard
PrivateKey=$HOSTS_DIR/alpha/impostor.key

[Identity beta-stolen]
Certificate=$HOSTS_DIR/pki/beta.pem
PrivateKey=$HOSTS_DIR/pki/beta.key

[Tunnel]
Name=impostor
Protocol=wireguard
Interface=wg-impostor
ListenPort=51830
WireGuardKey=wg-impostor
Peer=192.0.2.2
Identity=beta-stolen
TrustStore=demo-ca
RemoteId=other.test
Address=10.8.0.1/24
AllowedIPs=10.8.0.2/32
Fallback=yes

[Rule impostor]
MatchTunnel=impostor
Protocols=wireguard
Action=allow
POLICY
out=$(ctl alpha tunnel up impostor --protocol wireguard 2>&1) && fail "a peer with the wrong name was accepted: $out"
grep -qE "PeerNotValidated|validation failed|is not \"" <<<"$out" || fail "expected a validation error, got: $out"
sleep 1
on_host alpha ip link show wg-impostor >/dev/null 2>&1 && fail "the refused tunnel left its link behind"
(($(peer_count beta wg-alpha) == 1)) || fail "beta's link changed after the refused exchange"
echo "refused: $out"

# Without WireGuard in the kernel and without Fallback=yes: a clear error,
# and no link.
if [[ $offload == userspace ]]; then
  alpha_policy 34-no-fallback.policy <<POLICY
[Tunnel]
Name=no-fallback
Protocol=wireguard
Interface=wg-nofb
WireGuardKey=wg-alpha
ListenPort=51840
PeerPublicKey=$(wg pubkey <<<"$(wg genkey)")
AllowedIPs=10.6.0.2/32

[Rule no-fallback]
MatchTunnel=no-fallback
Protocols=wireguard
Action=allow
POLICY
  out=$(ctl alpha tunnel up no-fallback --protocol wireguard 2>&1) && fail "no-fallback came up without WireGuard"
  grep -q "kernel lacks WireGuard: load module wireguard or allow fallback" <<<"$out" || fail "unclear error: $out"
  on_host alpha ip link show wg-nofb >/dev/null 2>&1 && fail "the refused tunnel left a link"
  echo "no fallback: $out"
fi

link_path=$(ctl alpha --json wg | grep -o '"association": *"[^"]*"' | head -1 | cut -d'"' -f4)
ctl alpha terminate "$link_path" || fail "terminating $link_path"
sleep 1
on_host alpha ip link show wg-beta >/dev/null 2>&1 && fail "wg-beta is still there after the tunnel went down"

# A peer named by host name, configured only with wg, moves; its name now
# points elsewhere. Once the handshake is stale (4 s here) the agent looks
# the name up again and WireGuard follows.
if [[ -z $alpha_etc ]]; then
  echo "SKIPPED PART: host name re-resolution needs a writable /etc/netns" >&2
  moved="host-name re-resolution SKIPPED"
else
  beta_private=$(wg genkey)
  beta_public=$(wg pubkey <<<"$beta_private")
  (umask 077; echo "$beta_private" >"$HOSTS_DIR/beta/plain.key")
  alpha_public=$(ctl alpha wg pubkey wg-alpha)
  # The peer knows no endpoint for alpha: it only answers.
  plain_peer_up() {
    if [[ $offload == kernel ]]; then
      on_host beta ip link add wg-plain-b type wireguard
    else
      on_host beta wireguard-go wg-plain-b 2>/dev/null || fail "starting wireguard-go for the plain peer"
    fi
    on_host beta wg set wg-plain-b private-key "$HOSTS_DIR/beta/plain.key" listen-port 51900 \
      peer "$alpha_public" allowed-ips 10.7.0.1/32 || fail "configuring the plain peer"
    on_host beta ip addr add 10.7.0.2/24 dev wg-plain-b
    on_host beta ip link set wg-plain-b up
  }
  plain_peer_up
  alpha_policy 36-plain.policy <<POLICY
[Tunnel]
Name=plain
Protocol=wireguard
Interface=wg-plainpeer
WireGuardKey=wg-alpha
ListenPort=51901
Peer=plain-peer.test
Port=51900
PeerPublicKey=$beta_public
Address=10.7.0.1/24
AllowedIPs=10.7.0.2/32
Fallback=yes

[Rule plain]
MatchTunnel=plain
Protocols=wireguard
Action=allow
POLICY
  ctl alpha tunnel up plain --protocol wireguard >/dev/null || fail "tunnel up plain"
  ping_on alpha -c 3 -i 0.2 -W 2 10.7.0.2 >/dev/null || fail "no ping to the plain peer by host name"
  beta_dev="${HOSTS_PREFIX:0:8}b"
  on_host beta sysctl -qw "net.ipv4.conf.$beta_dev.promote_secondaries=1"
  on_host beta ip addr add 192.0.2.12/24 dev "$beta_dev"
  on_host beta ip addr del 192.0.2.2/24 dev "$beta_dev"
  # It restarts there and has forgotten alpha: nothing comes from it until
  # alpha finds it under its name.
  on_host beta ip link del wg-plain-b
  sleep 0.5
  plain_peer_up
  echo "192.0.2.12 plain-peer.test" >"$alpha_etc/hosts"
  deadline=$((SECONDS + 60))
  until ping_on alpha -c 1 -W 1 10.7.0.2 >/dev/null 2>&1; do
    ((SECONDS < deadline)) || fail "the agent did not follow plain-peer.test to 192.0.2.12"
    sleep 1
  done
  grep -q "WireGuard peer re-resolved.*192.0.2.12" "$HOSTS_DIR/alpha/tapsecd.log" ||
    fail "the tunnel works again, but not because the agent re-resolved the name"
  # Beta's own move is a local address change for its agent's link to alpha.
  grep -q 'WireGuard path changed tunnel=wg-to-alpha from="192.0.2.2 -> 192.0.2.1:51820" to="192.0.2.12 -> 192.0.2.1:51820"' \
    "$HOSTS_DIR/beta/tapsecd.log" || fail "beta's agent did not see its own address change"
  moved="plain-peer.test re-resolved to 192.0.2.12 after a stale handshake, beta's local move seen"

  echo "$moved"
fi

# The agents stop cleanly (their links go with them) and, in a sanitizer
# build, without a report.
for h in alpha beta; do
  pid=$(cat "$HOSTS_DIR/$h/tapsecd.pid")
  kill -TERM "$pid"
  wait "$pid"
  status=$?
  ((status == 0)) || fail "tapsecd on $h exited with status $status"
  ! grep -q "Sanitizer" "$HOSTS_DIR/$h/tapsecd.log" || fail "sanitizer report from tapsecd on $h"
done
on_host alpha ip link show wg-plainpeer >/dev/null 2>&1 && fail "wg-plainpeer outlived the agent"
echo "wireguard-hosts: exchange, traffic, rotation without loss, impostor refused, clean teardown, $moved ($offload)"
