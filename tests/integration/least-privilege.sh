#!/usr/bin/env bash
# tapsecd as its own system user "tapsec" with only ambient capabilities, on
# a private bus that denies by default and includes the shipped bus policy
# (dbus/system.d/org.tapsec1.conf), as packaging/systemd/tapsecd.service
# runs it:
#   - it owns org.tapsec1 and serves (tapsecctl status, a TLS connection
#     with its trust store to a test server);
#   - it holds exactly the capabilities it was given (CapEff = CapAmb);
#   - it is not dumpable: no core file (RLIMIT_CORE 0), and a process of
#     its own uid can neither read /proc/<pid>/environ nor ptrace it;
#   - without CAP_NET_BIND_SERVICE it says IKE is off and why (in its log and
#     to a caller of tunnel up), and serves;
#   - a policy file owned by another user stops it with the command to run.
# Creates the system user "tapsec" if it is missing, and removes it again.
#   least-privilege.sh BUILD_DIR
set -uo pipefail
build=${1:?build dir}
here=$(cd "$(dirname "$0")" && pwd)
source=$(cd "$here/../.." && pwd)
[[ $(id -u) -eq 0 ]] || { echo "SKIPPED: needs root (creates a user, changes owners)" >&2; exit 77; }
for tool in setpriv useradd unshare nsenter strace dbus-daemon openssl busctl; do
  command -v $tool >/dev/null || { echo "SKIPPED: $tool is not installed" >&2; exit 77; }
done
source "$here/lib/private-bus.sh"
source "$here/lib/test-pki.sh"

dir=$(mktemp -d /tmp/tapsec-privilege.XXXXXX)
chmod 0755 "$dir"  # the agent's user reaches its policy and the bus below it
created_user=no
agent=
cleanup() {
  [[ -n $agent ]] && kill "$agent" 2>/dev/null && wait "$agent" 2>/dev/null
  [[ -s $dir/bus.pid ]] && kill "$(cat "$dir/bus.pid")" 2>/dev/null
  [[ $created_user == yes ]] && userdel tapsec 2>/dev/null
  rm -rf "$dir"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; echo "--- tapsecd log:" >&2; cat "$dir/tapsecd.log" >&2 2>/dev/null; exit 1; }

if ! getent passwd tapsec >/dev/null; then
  useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin --user-group tapsec ||
    fail "cannot create the system user tapsec"
  created_user=yes
fi
uid=$(id -u tapsec)

private_bus_start "$dir" "$source/dbus/system.d/org.tapsec1.conf" || fail "the private bus did not start"
bus="unix:path=$dir/bus"
ctl() { "$build/dbus/tapsecctl/tapsecctl" --bus "$bus" "$@"; }

# A test CA and a server certificate (root's, public; the server's key is
# the test server's, not the agent's).
{ test_pki_ca "$dir/pki" tapsec-privilege-ca && test_pki_cert "$dir/pki" server.test DNS:server.test; } ||
  fail "cannot make the test certificates"
chmod 0644 "$dir/pki/ca.pem"

# A policy the agent's user owns: a rule for TLS with the test CA, and a
# PSK held inline (0600).
mkdir "$dir/policy.d"
printf '[TrustStore test-ca]\nFile=%s\nIncludeSystem=no\n\n[Rule local]\nMatchUser=root\nProtocols=tls\nTrustStore=test-ca\nFallback=yes\nAction=allow\n' \
  "$dir/pki/ca.pem" >"$dir/policy.d/50-rule.policy"
printf '[PSK link]\nKey=hex:%s\n' "$(printf link | sha256sum | cut -d' ' -f1)" >"$dir/policy.d/40-psk.policy"
chmod 0644 "$dir/policy.d/50-rule.policy"
chmod 0600 "$dir/policy.d/40-psk.policy"
chown -R tapsec:tapsec "$dir/policy.d"

# start_agent CAPS: tapsecd as tapsec with CAPS ambient, in a network
# namespace of its own (so IKE's ports are its own); sets $agent.
# CAPS "none": no capability at all.
start_agent() {
  local caps=(--inh-caps="$1" --ambient-caps="$1")
  [[ $1 == none ]] && caps=(--inh-caps=-all)
  unshare --net sh -c 'ip link set lo up && exec "$@"' sh \
    setpriv --reuid=tapsec --regid=tapsec --clear-groups "${caps[@]}" -- \
    "$build/agent/tapsecd" --bus "$bus" --policy-dir "$dir/policy.d" --log-level info 2>"$dir/tapsecd.log" &
  agent=$!
}
wait_serving() {
  for _ in $(seq 100); do
    ctl status >/dev/null 2>&1 && return 0
    kill -0 "$agent" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}
stop_agent() { kill "$agent" 2>/dev/null; wait "$agent" 2>/dev/null; agent=; }
capability_set() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$agent/status"; }

# 1. As tapsec with CAP_NET_ADMIN and CAP_NET_BIND_SERVICE.
start_agent +net_admin,+net_bind_service
wait_serving || fail "tapsecd as user tapsec did not serve org.tapsec1"
ctl status || fail "tapsecctl status"
[[ $(awk '$1 == "Uid:" {print $3}' "/proc/$agent/status") == "$uid" ]] || fail "tapsecd does not run as uid $uid"
for set in CapEff CapPrm CapAmb; do
  [[ $(capability_set $set) == 0000000000001400 ]] ||
    fail "$set is $(capability_set $set), not 0000000000001400 (net_admin, net_bind_service)"
done
grep -q 'capabilities=cap_net_bind_service,cap_net_admin' "$dir/tapsecd.log" || fail "tapsecd did not log its capabilities"
grep -q 'IKE is off' "$dir/tapsecd.log" && fail "IKE is off although tapsecd may bind its ports"
echo "capabilities: $(grep -o 'capabilities=[^ ]*' "$dir/tapsecd.log")"
# A TLS connection the agent secures (userspace fallback where the kernel
# lacks kTLS) to a test server in the agent's network namespace.
in_agent_netns() { nsenter --net="/proc/$agent/ns/net" "$@"; }
in_agent_netns openssl s_server -accept 127.0.0.1:4433 -cert "$dir/pki/server.test.pem" -key "$dir/pki/server.test.key" \
  -rev -quiet -naccept 1 >/dev/null 2>"$dir/server.log" &
server=$!
# Listening, seen without connecting (the server takes one connection only).
for _ in $(seq 100); do
  [[ -n $(in_agent_netns ss -Hltn 'sport = :4433') ]] && break
  sleep 0.1
done
in_agent_netns "$build/dbus/exec/tapsec-exec" --bus "$bus" --connect 127.0.0.1:4433 --server-name server.test -- \
  sh -c 'echo privileged; read reply; echo "$reply" >&2' 2>"$dir/reply" ||
  { kill $server 2>/dev/null; fail "tapsec-exec --connect through the agent failed: $(cat "$dir/reply")"; }
wait $server 2>/dev/null
grep -q degelivirp "$dir/reply" || fail "no reply through the secured connection: $(cat "$dir/reply")"
echo "TLS through the agent: $(tail -1 "$dir/reply")"

# Without CAP_SYS_PTRACE, direct-socket (the application keeping the kTLS
# socket, which the agent would have to take back from it) is refused with
# the reason once policy allowed the request, before any connection is made.
# (SecureSocket takes the same check; busctl cannot pass a descriptor.)
direct=$(busctl --address="$bus" call org.tapsec1 /org/tapsec1 org.tapsec1.Manager Connect 'sqa{sv}' 127.0.0.1 4433 1 \
  direct-socket b true 2>&1) && fail "Connect with direct-socket succeeded: $direct"
[[ $direct == *"direct-socket needs CAP_SYS_PTRACE"* ]] || fail "Connect with direct-socket: $direct"
echo "direct-socket refused: $direct"

# 2. Not dumpable, with capabilities and without: the kernel itself makes a
# process that gained capabilities at exec non-dumpable, so the run without
# any is the one that shows tapsecd does it on its own.
check_not_dumpable() {
  grep -Eq '^Max core file size +0 +0 ' "/proc/$agent/limits" ||
    fail "RLIMIT_CORE is not 0: $(grep core "/proc/$agent/limits")"
  same_uid() { setpriv --reuid=tapsec --regid=tapsec --clear-groups --inh-caps=-all -- "$@"; }
  if same_uid cat "/proc/$agent/environ" >/dev/null 2>&1; then fail "a process of uid $uid reads /proc/$agent/environ"; fi
  local trace
  trace=$(same_uid timeout 3 strace -qq -e trace=none -p "$agent" 2>&1)
  [[ $trace == *"Operation not permitted"* ]] || fail "a process of uid $uid may ptrace tapsecd: ${trace:-attached}"
}
check_not_dumpable
stop_agent
start_agent none
wait_serving || fail "tapsecd without capabilities did not serve"
[[ $(capability_set CapEff) == 0000000000000000 ]] || fail "CapEff is $(capability_set CapEff), not empty"
grep -q 'IKE is off: installing XFRM states and policies needs CAP_NET_ADMIN' "$dir/tapsecd.log" ||
  fail "tapsecd without CAP_NET_ADMIN did not say why IKE is off"
check_not_dumpable
echo "not dumpable: core size 0, environ and ptrace refused to uid $uid"
stop_agent

# 3. Without CAP_NET_BIND_SERVICE: IKE is off with its reason; the rest serves.
start_agent +net_admin
wait_serving || fail "tapsecd without CAP_NET_BIND_SERVICE did not serve"
grep -q 'IKE is off: binding UDP 500 needs CAP_NET_BIND_SERVICE' "$dir/tapsecd.log" ||
  fail "tapsecd did not say why IKE is off"
# A caller asking for a tunnel is told the same reason, not "--ike-port 0".
tunnel_error=$(ctl tunnel up 192.0.2.1 --psk link 2>&1) && fail "tunnel up succeeded with IKE off"
[[ $tunnel_error == *"IKE is off: binding UDP 500 needs CAP_NET_BIND_SERVICE"* ]] ||
  fail "tunnel up did not say why IKE is off: $tunnel_error"
echo "tunnel up refused: $tunnel_error"
[[ $(capability_set CapEff) == 0000000000001000 ]] || fail "CapEff is $(capability_set CapEff), not net_admin alone"
stop_agent

# 4. A policy file another user owns: tapsecd refuses to start and says what to run.
cp "$dir/policy.d/50-rule.policy" "$dir/policy.d/60-theirs.policy"
chown 4242:4242 "$dir/policy.d/60-theirs.policy"
start_agent +net_admin,+net_bind_service
for _ in $(seq 50); do kill -0 "$agent" 2>/dev/null || break; sleep 0.1; done
kill -0 "$agent" 2>/dev/null && fail "tapsecd started with a policy file owned by uid 4242"
wait "$agent"
status=$?
agent=
[[ $status -ne 0 ]] || fail "tapsecd exited 0 on a policy file owned by uid 4242"
expected="policy file $dir/policy.d/60-theirs.policy is owned by uid 4242: run \"chown root:root $dir/policy.d/60-theirs.policy\""
grep -qF "$expected" "$dir/tapsecd.log" || fail "tapsecd did not say: $expected"
echo "refused: $expected"
echo "PASS"
