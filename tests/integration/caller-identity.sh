#!/usr/bin/env bash
# Caller identity as an attacker tries to fake it (dbus/API.md, "How tapsec
# identifies you"). A real tapsecd on a private dbus-daemon, a policy that
# allows only members of group shadow and the unit nginx.service, and a
# local user (nobody) who is neither:
#
#  1. connects to the bus, then execs a setgid-shadow program while a child
#     of it sends Connect on the same connection: must be PolicyDenied;
#  2. connects, lets its process exit while a child keeps the connection,
#     and waits until a process of nginx.service (uid 33) has taken the
#     pid: must be PolicyDenied.
#
# A real nginx.service process (uid 33 in that cgroup) is allowed, which
# shows that MatchUnit still works. Everything runs in a private pid
# namespace, where the reused pid can be chosen (ns_last_pid).
#   caller-identity.sh BUILD_DIR
set -uo pipefail
build=${1:?build dir}
here=$(cd "$(dirname "$0")" && pwd)
[[ $(id -u) -eq 0 ]] || { echo "SKIPPED: needs root (pid namespace, setuid, cgroups)" >&2; exit 77; }
if [[ ${TAPSEC_IN_PIDNS:-} != 1 ]]; then
  exec env TAPSEC_IN_PIDNS=1 unshare --pid --fork --mount-proc "$0" "$@"
fi
source "$here/lib/private-bus.sh"

attacker=65534 nginx_uid=33  # nobody, www-data: accounts the bus daemon knows
shadow=$(getent group shadow | cut -d: -f3)
[[ -n $shadow ]] || { echo "FAIL: no group shadow on this system" >&2; exit 1; }
dir=$(mktemp -d /var/tmp/tapsec-identity.XXXXXX)
chmod 755 "$dir"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  [[ -n ${KEEP:-} ]] && { echo "kept $dir"; return; }
  [[ -f $dir/bus.pid ]] && kill "$(cat "$dir/bus.pid")" 2>/dev/null
  for cg in "${cgroups[@]}"; do rmdir "$cg" 2>/dev/null; done
  rm -rf "$dir"
}
cgroups=()
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; echo "--- tapsecd log:"; cat "$dir/tapsecd.log"; exit 1; }

# The unit's cgroup, in every hierarchy sd-bus may read the unit from.
for root in /sys/fs/cgroup/unified /sys/fs/cgroup/systemd /sys/fs/cgroup; do
  [[ $(stat -f -c %T "$root" 2>/dev/null) == cgroup2fs || -f $root/cgroup.procs && -e $root/release_agent ]] || continue
  mkdir -p "$root/system.slice/nginx.service" 2>/dev/null && cgroups+=("$root/system.slice/nginx.service")
done
((${#cgroups[@]})) || { echo "SKIPPED: no writable cgroup hierarchy to place a process in nginx.service" >&2; exit 77; }
into_nginx_unit() { local cg; for cg in "${cgroups[@]}"; do echo "$1" >"$cg/cgroup.procs" || return 1; done; }

mkdir -m 700 "$dir/policy"
cat >"$dir/policy/50-test.policy" <<'POLICY'
[Rule shadow-members]
MatchGroup=shadow
Action=allow
Fallback=yes

[Rule nginx]
MatchUnit=nginx.service
Action=allow
Fallback=yes
POLICY
# A setgid-shadow program that stays running.
cp /bin/sleep "$dir/sleep-shadow"
chgrp shadow "$dir/sleep-shadow"
chmod 2755 "$dir/sleep-shadow"

private_bus_start "$dir" "$here/../../dbus/system.d/org.tapsec1.conf" || fail "dbus-daemon did not start"
"$build/agent/tapsecd" --bus "unix:path=$dir/bus" --policy-dir "$dir/policy" --ike-port 0 \
  --wg-exchange-port 0 --log-level debug >"$dir/tapsecd.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do grep -q "tapsecd ready" "$dir/tapsecd.log" && break; sleep 0.1; done
grep -q "tapsecd ready" "$dir/tapsecd.log" || fail "tapsecd did not start"

# Runs the Python program on stdin as UID, with rawbus.py importable.
py_as() {
  local uid=$1; shift
  setpriv --reuid="$uid" --regid="$uid" --clear-groups env PYTHONPATH="$here/lib" python3 - "$@"
}
# Waits for a line in FILE; prints it.
await_line() { for _ in $(seq 100); do [[ -s $1 ]] && { head -n1 "$1"; return 0; }; sleep 0.05; done; return 1; }

# Closed on purpose: a caller that gets past policy sees the connection refused.
port=1

# --- control: a process that really is in nginx.service is allowed.
py_as $nginx_uid "$dir/bus" "$dir/go-control" $port >"$dir/control.out" 2>&1 <<'PY' &
import os, sys, time, rawbus
bus, go, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
print(os.getpid(), flush=True)
while not os.path.exists(go):
    time.sleep(0.02)
sock = rawbus.connect(bus)
rawbus.send_connect(sock, 2, "127.0.0.1", port)
print(rawbus.read_reply(sock, 2)[1] or "allowed", flush=True)
PY
control=$!
control_pid=$(await_line "$dir/control.out") || fail "the control client did not start"
into_nginx_unit "$control_pid" || fail "cannot move the control process ($control_pid) into nginx.service"
touch "$dir/go-control"
wait $control
answer=$(sed -n 2p "$dir/control.out")
[[ $answer == org.tapsec1.Error.HandshakeFailed ]] ||
  fail "a process of nginx.service should pass policy and fail to connect, got: $answer"

# --- attack 1: connect, then exec a setgid-shadow program.
py_as $attacker "$dir/bus" "$dir/sleep-shadow" "$shadow" $port >"$dir/setgid.out" 2>&1 <<'PY' &
import os, sys, time, rawbus
bus, program, shadow, port = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
sock = rawbus.connect(bus)
pid = os.getpid()
if os.fork() == 0:
    for _ in range(500):
        status = open("/proc/%d/status" % pid).read()
        egid = int(next(l for l in status.splitlines() if l.startswith("Gid:")).split()[2])
        if egid == shadow:
            break
        time.sleep(0.01)
    else:
        print("the setgid program never ran", flush=True)
        os._exit(1)
    rawbus.send_connect(sock, 2, "127.0.0.1", port)
    print(rawbus.read_reply(sock, 2)[1] or "allowed", flush=True)
    os.kill(pid, 9)
    os._exit(0)
os.execv(program, [program, "30"])
PY
pids+=($!)
answer=$(await_line "$dir/setgid.out") || fail "the setgid attack produced no answer"
[[ $answer == org.tapsec1.Error.PolicyDenied ]] ||
  fail "a caller that execs a setgid-shadow program after connecting must not match MatchGroup=shadow; got: $answer"

# --- attack 2: the connection outlives its process; nginx.service takes the pid.
py_as $attacker "$dir/bus" "$dir/go-reuse" $port >"$dir/reuse.out" 2>&1 <<'PY' &
import os, sys, time, rawbus
bus, go, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
sock = rawbus.connect(bus)
print(os.getpid(), flush=True)
if os.fork() == 0:
    while not os.path.exists(go):
        time.sleep(0.02)
    rawbus.send_connect(sock, 2, "127.0.0.1", port)
    print(rawbus.read_reply(sock, 2)[1] or "allowed", flush=True)
    os._exit(0)
os._exit(0)
PY
first=$!
wait $first  # its pid is free from here on
recorded=$(head -n1 "$dir/reuse.out")
echo $((recorded - 1)) >/proc/sys/kernel/ns_last_pid
# A simple command, so that the forked pid is the one that runs as nginx.
setpriv --reuid=$nginx_uid --regid=$nginx_uid --clear-groups sleep 30 &
impostor=$!
pids+=($impostor)
[[ $impostor == "$recorded" ]] || fail "could not reuse pid $recorded (got $impostor)"
into_nginx_unit "$impostor" || fail "cannot move pid $impostor into nginx.service"
touch "$dir/go-reuse"
for _ in $(seq 100); do [[ $(wc -l <"$dir/reuse.out") -ge 2 ]] && break; sleep 0.05; done
answer=$(sed -n 2p "$dir/reuse.out")
[[ $answer == org.tapsec1.Error.PolicyDenied ]] ||
  fail "a connection whose pid now belongs to nginx.service must not match MatchUnit=nginx.service; got: $answer"
grep -q "MatchUnit and MatchCgroup rules will not match" "$dir/tapsecd.log" ||
  fail "the log does not say why the unit was not used"

echo "caller-identity: nginx.service allowed; setgid exec and reused pid both PolicyDenied"
