#!/usr/bin/env bash
# The WireGuard exchange port (TCP 51821) is open only while the policy has
# a WireGuard tunnel whose PSK the agents exchange: not with no WireGuard
# tunnel, not with a peer given by its public key alone, and it opens and
# closes as the policy is read again (SIGHUP). A real tapsecd on a private
# D-Bus daemon, in a network namespace; no WireGuard link is made.
#   wireguard-exchange-port.sh BUILD_DIR
set -uo pipefail
build=${1:?build dir}
here=$(cd "$(dirname "$0")" && pwd)
[[ $(id -u) -eq 0 ]] || { echo "SKIPPED: needs root for network namespaces" >&2; exit 77; }
command -v ss >/dev/null || { echo "SKIPPED: ss (iproute2) is not installed" >&2; exit 77; }
command -v wg >/dev/null || { echo "SKIPPED: wg (wireguard-tools) is not installed" >&2; exit 77; }
source "$here/lib/private-bus.sh"
ns=tapsec$$-port
dir=$(mktemp -d /tmp/tapsec-port.XXXXXX)
cleanup() {
  [[ -f $dir/tapsecd.pid ]] && kill "$(cat "$dir/tapsecd.pid")" 2>/dev/null
  [[ -f $dir/bus.pid ]] && kill "$(cat "$dir/bus.pid")" 2>/dev/null
  wait 2>/dev/null
  ip netns del "$ns" 2>/dev/null
  rm -rf "$dir"
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*" >&2
  echo "--- tapsecd log:"
  tail -n 30 "$dir/tapsecd.log"
  exit 1
}
in_ns() { ip netns exec "$ns" "$@"; }
ctl() { in_ns "$build/dbus/tapsecctl/tapsecctl" --bus "unix:path=$dir/bus" "$@"; }
listening() { in_ns ss -ltnH "sport = :${1:-51821}" | grep -q .; }
reload() {
  kill -HUP "$(cat "$dir/tapsecd.pid")"
  sleep 1
}

ip netns add "$ns"
in_ns ip link set lo up
mkdir -p "$dir/policy.d"
# A certificate for the exchange tunnel (the agent loads it when the policy does).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$dir/host.key" -out "$dir/host.pem" \
  -days 2 -subj /CN=host.test 2>/dev/null || fail "openssl req"
chmod 600 "$dir/host.key"
cat >"$dir/policy.d/50-tls.policy" <<POLICY
[Rule tls]
Protocols=tls
Action=allow
POLICY
private_bus_start "$dir"
ip netns exec "$ns" "$build/agent/tapsecd" --bus "unix:path=$dir/bus" --policy-dir "$dir/policy.d" 2>>"$dir/tapsecd.log" &
echo $! >"$dir/tapsecd.pid"
for _ in $(seq 100); do ctl status >/dev/null 2>&1 && break; sleep 0.1; done
ctl status >/dev/null || fail "the agent did not come up"

# No WireGuard tunnel: nothing listens.
listening && fail "the agent listens on 51821 with no WireGuard tunnel in its policy"
echo "no WireGuard tunnel: nothing on 51821"

# A peer given by its public key (no agent there): still nothing.
cat >"$dir/policy.d/30-static.policy" <<POLICY
[Identity wg-host]
Type=wireguard
PrivateKey=$dir/wireguard.key

[Tunnel]
Name=static-peer
Protocol=wireguard
WireGuardKey=wg-host
Peer=192.0.2.9
PeerPublicKey=$(wg pubkey <<<"$(wg genkey)")
AllowedIPs=10.5.0.2/32
POLICY
chmod 600 "$dir/policy.d/30-static.policy"
reload
grep -q "policy reloaded" "$dir/tapsecd.log" || fail "the static-peer policy was not loaded"
listening && fail "the agent listens on 51821 for a tunnel whose peer is given by its public key"
echo "static peer only: nothing on 51821"

# A tunnel whose PSK the agents exchange: the port opens on reload.
cat >"$dir/policy.d/31-exchange.policy" <<POLICY
[Identity host]
Certificate=$dir/host.pem
PrivateKey=$dir/host.key

[Tunnel]
Name=exchanged
Protocol=wireguard
Interface=wg-exch
ListenPort=51830
WireGuardKey=wg-host
Identity=host
AllowedIPs=10.5.1.2/32
POLICY
chmod 600 "$dir/policy.d/31-exchange.policy"
reload
listening || fail "the agent does not listen on 51821 once a tunnel exchanges its PSK"
grep -q "WireGuard exchange listening" "$dir/tapsecd.log" || fail "no log line for the port opening"
echo "exchange tunnel: 51821 open"

# The tunnel goes from the policy: the port closes.
rm "$dir/policy.d/31-exchange.policy"
reload
listening && fail "the agent still listens on 51821 after the exchange tunnel left the policy"
grep -q "WireGuard exchange closed" "$dir/tapsecd.log" || fail "no log line for the port closing"
echo "exchange tunnel removed: 51821 closed"

# --help names the exchange port's limits; a bad limit is refused.
help=$("$build/agent/tapsecd" --help)
for option in --wg-exchange-max-pending --wg-exchange-max-per-source --wg-exchange-handshake-timeout \
  --wg-exchange-max-buffered; do
  grep -q -- "$option" <<<"$help" || fail "tapsecd --help does not describe $option"
done
"$build/agent/tapsecd" --wg-exchange-max-pending 0 --version >/dev/null 2>&1 &&
  fail "tapsecd took --wg-exchange-max-pending 0"
echo "wireguard-exchange-port: the port follows the policy"
