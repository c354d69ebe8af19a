#!/usr/bin/env bash
# Two hosts in network namespaces, each with its own bus and tapsecd: an
# unmodified client and server (run by tapsec-exec) exchange a line and
# 16 MiB through agent-secured TLS. On a kernel without kTLS the
# associations must say Offload=userspace; with kTLS, kernel.
#   two-hosts.sh BUILD_DIR
set -uo pipefail
build=${1:?build dir}
here=$(cd "$(dirname "$0")" && pwd)
[[ $(id -u) -eq 0 ]] || { echo "SKIPPED: needs root for network namespaces" >&2; exit 77; }
source "$here/lib/hosts.sh"
trap hosts_down EXIT
fail() { echo "FAIL: $*" >&2; for h in alpha beta; do echo "--- tapsecd log of $h:"; cat "$HOSTS_DIR/$h/tapsecd.log"; done; exit 1; }
ctl() { local h=$1; shift; on_host "$h" "$build/dbus/tapsecctl/tapsecctl" --bus "unix:path=$HOSTS_DIR/$h/bus" "$@"; }
exec_tls() { local h=$1; shift; on_host "$h" "$build/dbus/exec/tapsec-exec" --bus "unix:path=$HOSTS_DIR/$h/bus" "$@"; }

hosts_up "$build"
ctl alpha status >/dev/null || fail "tapsecctl status on alpha"
expected=userspace
[[ -r /proc/net/tls_stat ]] && expected=kernel

# A line exchange, with the associations inspected while it is open.
exec_tls beta --listen 192.0.2.2:4433 --identity beta --once -- \
  sh -c 'read name; sleep 1; echo "hello $name"' &
server=$!
host_listening beta 4433 || hosts_fail "nothing listens on beta:4433"
exec_tls alpha --connect 192.0.2.2:4433 --server-name beta.test -- \
  sh -c 'echo alpha; read r; echo "$r" >&2' 2>"$HOSTS_DIR/reply" &
client=$!
sleep 0.6
json=$(ctl alpha --json associations) || fail "tapsecctl associations"
echo "$json"
grep -q "\"$expected\"" <<<"$json" || fail "alpha's association does not say Offload=$expected"
wait $client || fail "client failed"
wait $server || fail "server failed"
grep -q "hello alpha" "$HOSTS_DIR/reply" || fail "the client did not receive the server's line: $(cat "$HOSTS_DIR/reply")"

# Bulk data, checked end to end.
payload=$HOSTS_DIR/payload
head -c $((16 << 20)) /dev/urandom >"$payload"
exec_tls beta --listen 192.0.2.2:4434 --identity beta --once -- cat "$payload" &
server=$!
host_listening beta 4434 || hosts_fail "nothing listens on beta:4434"
# The program's stdout is the socket: the digest goes to stderr.
got=$(exec_tls alpha --connect 192.0.2.2:4434 --server-name beta.test -- sh -c 'sha256sum >&2' 2>&1 | cut -d' ' -f1)
wait $server || fail "bulk server failed"
want=$(sha256sum <"$payload" | cut -d' ' -f1)
[[ $got == "$want" ]] || fail "16 MiB arrived corrupted ($got != $want)"

# A client that names the wrong server is refused before any data flows.

exec_tls beta --listen 192.0.2.2:4435 --identity beta --once -- true &
server=$!
host_listening beta 4435 || hosts_fail "nothing listens on beta:4435"
out=$(exec_tls alpha --connect 192.0.2.2:4435 --server-name wrong.test -- true 2>&1) && fail "wrong server name accepted"
grep -q PeerNotValidated <<<"$out" || fail "expected PeerNotValidated, got: $out"
wait $server && fail "the server side should have seen the handshake fail"
echo "two-hosts: line exchange, 16 MiB intact, Offload=$expected, wrong name refused"
