#!/bin/bash
# tapsec-vm: timeout=200
# tapsec against a peer configured only with `wg` (no agent there): the
# tunnel takes the peer's public key from policy, the peer takes tapsec's
# from `tapsecctl wg pubkey`; the peer association says "connecting" until a
# real handshake, then "established". The peer's address changes: the agent
# sees the new endpoint and signals PathChanged. A policy with a malformed
# key is refused with a clear error and the kernel's state stays as it was.
# The PSK is imported by name (PSKI) on tapsec's side and given to wg.
set -u
modprobe wireguard 2>/dev/null
[[ -d /sys/module/wireguard ]] || { echo "FAILED: the guest kernel has no wireguard module"; exit 1; }
build=${TAPSEC_BUILD_DIR:?TAPSEC_BUILD_DIR is not set}
[[ -x $build/agent/tapsecd ]] || { echo "SKIP: tapsecd is not built under $build" >&2; exit 77; }
source "${TAPSEC_SOURCE_DIR:-.}/tests/integration/lib/hosts.sh"
trap hosts_down EXIT
fail() {
  echo "FAIL: $*"
  echo "--- tapsecd log of alpha:"; tail -n 30 "$HOSTS_DIR/alpha/tapsecd.log"
  on_host alpha wg show all 2>&1; on_host beta wg show all 2>&1
  exit 1
}
ctl() { local h=$1; shift; on_host "$h" "$build/dbus/tapsecctl/tapsecctl" --bus "unix:path=$HOSTS_DIR/$h/bus" "$@"; }
ping_on() { local h=$1; shift; if command -v ping >/dev/null; then on_host "$h" ping "$@"; else on_host "$h" busybox ping "$@"; fi; }
# One field of the (single) peer in `tapsecctl --json wg`: "key":value.
peer_field() { ctl alpha --json wg | tr ',' '\n' | grep "\"$1\"" | tail -1 | sed 's/^[^:]*: *//; s/"//g; s/[]}]//g'; }
hosts_up "$build"
beta_dev="${HOSTS_PREFIX:0:8}b"

# The plain peer: wireguard-tools only.
alpha_public=$(ctl alpha wg pubkey wg-alpha) || fail "tapsecctl wg pubkey"
beta_private=$(wg genkey)
beta_public=$(wg pubkey <<<"$beta_private")
on_host beta ip link add wg-plain type wireguard
(umask 077; echo "$beta_private" >"$HOSTS_DIR/beta/plain.key")
# A PSK imported by name on tapsec's side, the same 32 bytes given to wg.
psk_hex=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
# shellcheck disable=SC2059 # the hex digits become \xHH escapes on purpose
(umask 077; printf "$(sed 's/../\\x&/g' <<<"$psk_hex")" | base64 >"$HOSTS_DIR/beta/plain.psk")
on_host beta wg set wg-plain private-key "$HOSTS_DIR/beta/plain.key" listen-port 51900 \
  peer "$alpha_public" allowed-ips 10.7.0.1/32 endpoint 192.0.2.1:51901 preshared-key "$HOSTS_DIR/beta/plain.psk"
on_host beta ip addr add 10.7.0.2/24 dev wg-plain
on_host beta ip link set wg-plain up

cat >"$HOSTS_DIR/alpha/policy.d/36-plain.policy" <<POLICY
[PSK plain-psk]
Key=hex:$psk_hex

[Tunnel]
Name=plain
Protocol=wireguard
Interface=wg-plain
WireGuardKey=wg-alpha
ListenPort=51901
Peer=192.0.2.2
Port=51900
PeerPublicKey=$beta_public
Address=10.7.0.1/24
AllowedIPs=10.7.0.2/32
PSK=plain-psk

[Rule plain]
MatchTunnel=plain
Protocols=wireguard
PSKs=plain-psk
Action=allow
POLICY
chmod 600 "$HOSTS_DIR/alpha/policy.d/36-plain.policy"
kill -HUP "$(cat "$HOSTS_DIR/alpha/tapsecd.pid")"
sleep 1
ctl alpha tunnel up plain --protocol wireguard || fail "tunnel up plain"
sleep 1.5
[[ $(peer_field state) == connecting ]] || fail "before any traffic the peer should be connecting, is $(peer_field state)"
ping_on alpha -c 5 -i 0.2 -W 2 10.7.0.2 >/dev/null || fail "no ping to the plain peer"
sleep 1.5
[[ $(peer_field state) == established ]] || fail "after a handshake the peer should be established: $(ctl alpha --json wg)"
[[ $(peer_field offload) == kernel ]] || fail "offload should be kernel"
[[ $(on_host alpha wg show wg-plain preshared-keys | awk '{print $2}') == "$(cat "$HOSTS_DIR/beta/plain.psk")" ]] ||
  fail "the imported PSK is not the one in the kernel"
echo "plain peer: connecting before traffic, established after, ping crosses, imported PSK in use"

# The peer moves to 192.0.2.12: its packets now come from there.
# Signals go only to connections the agent knows: tapsecctl monitor is one,
# and dbus-monitor sees the copies sent to it.
ctl alpha monitor >/dev/null 2>&1 &
watcher=$!
dbus-monitor --address "unix:path=$HOSTS_DIR/alpha/bus" "type='signal',member='PathChanged'" >"$HOSTS_DIR/paths.out" 2>&1 &
monitor=$!
sleep 0.5
# 192.0.2.12 is a secondary address until .2 goes: keep it then.
on_host beta sysctl -qw "net.ipv4.conf.$beta_dev.promote_secondaries=1"
on_host beta ip addr add 192.0.2.12/24 dev "$beta_dev"
on_host beta ip addr del 192.0.2.2/24 dev "$beta_dev"
ping_on beta -c 5 -i 0.2 -W 2 10.7.0.1 >/dev/null || fail "no ping from the moved peer"
deadline=$((SECONDS + 10))
until [[ $(peer_field endpoint) == 192.0.2.12:51900 ]]; do
  ((SECONDS < deadline)) || fail "the agent did not see the new endpoint: $(peer_field endpoint)"
  sleep 0.3
done
sleep 0.5
kill "$monitor" "$watcher"; wait "$monitor" "$watcher" 2>/dev/null
grep -q '192.0.2.1 -> 192.0.2.12:51900' "$HOSTS_DIR/paths.out" || fail "no PathChanged to the new endpoint: $(cat "$HOSTS_DIR/paths.out")"
echo "endpoint change: 192.0.2.2:51900 -> 192.0.2.12:51900, PathChanged signalled"

# Bad input changes nothing: a malformed key in policy, an unknown identity.
before=$(on_host alpha wg show wg-plain dump)
cp "$HOSTS_DIR/alpha/policy.d/36-plain.policy" "$HOSTS_DIR/36-plain.good"
sed -i 's|^PeerPublicKey=.*|PeerPublicKey=not-a-key|' "$HOSTS_DIR/alpha/policy.d/36-plain.policy"
kill -HUP "$(cat "$HOSTS_DIR/alpha/tapsecd.pid")"
sleep 1
grep -q "PeerPublicKey=: 'not-a-key' is not a WireGuard key" "$HOSTS_DIR/alpha/tapsecd.log" ||
  fail "the agent did not name the malformed key: $(tail -n 5 "$HOSTS_DIR/alpha/tapsecd.log")"
out=$(ctl alpha policy check --tunnel plain 2>&1) && fail "policy check accepted the malformed key"
[[ $(on_host alpha wg show wg-plain dump) == "$before" ]] || fail "the kernel's WireGuard state changed after a refused policy"
out=$(ctl alpha wg pubkey no-such-identity 2>&1) && fail "an unknown identity gave a key: $out"
grep -q "no-such-identity" <<<"$out" || fail "unclear error for an unknown identity: $out"
ping_on alpha -c 3 -i 0.2 -W 2 10.7.0.2 >/dev/null || fail "the tunnel stopped working after the refused policy"
echo "bad input: malformed key refused, kernel unchanged, unknown identity named"
echo "PASS: tapsec with a wg-only peer, honest state, endpoint change, bad input"
