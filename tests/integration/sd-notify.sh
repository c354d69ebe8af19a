#!/usr/bin/env bash
# tapsecd speaks systemd's notify protocol as tapsecd.service (Type=notify,
# WatchdogSec=) needs, checked on a notify socket of the test's own:
#   - READY=1 once it serves org.tapsec1;
#   - WATCHDOG=1 at half the watchdog interval, from the event loop: with
#     WATCHDOG_USEC=400000 at least 4 in 1.5 s, and none while the loop is
#     stopped (SIGSTOP), so the watchdog would fire on a stuck agent;
#   - on SIGHUP (systemctl reload): RELOADING=1, then READY=1; a broken
#     policy keeps the old one and still answers READY=1;
#   - STOPPING=1 on SIGTERM.
#   sd-notify.sh BUILD_DIR
set -uo pipefail
build=${1:?build dir}
here=$(cd "$(dirname "$0")" && pwd)
for tool in dbus-daemon python3; do
  command -v $tool >/dev/null || { echo "SKIPPED: $tool is not installed" >&2; exit 77; }
done
source "$here/lib/private-bus.sh"

dir=$(mktemp -d /tmp/tapsec-notify.XXXXXX)
agent= listener=
cleanup() {
  [[ -n $agent ]] && kill -CONT "$agent" 2>/dev/null && kill "$agent" 2>/dev/null && wait "$agent" 2>/dev/null
  [[ -n $listener ]] && kill "$listener" 2>/dev/null
  [[ -s $dir/bus.pid ]] && kill "$(cat "$dir/bus.pid")" 2>/dev/null
  rm -rf "$dir"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; echo "--- notifications:" >&2; cat "$dir/notify.log" >&2; echo "--- tapsecd log:" >&2; cat "$dir/tapsecd.log" >&2; exit 1; }

private_bus_start "$dir" || fail "the private bus did not start"
mkdir "$dir/policy.d"
printf '[Rule root]\nMatchUser=root\nProtocols=tls\nAction=allow\n' >"$dir/policy.d/50-root.policy"
chmod 0600 "$dir/policy.d/50-root.policy"

# Each datagram on its own line, with the time it came (seconds).
python3 -u - "$dir/notify" >"$dir/notify.log" <<'PY' &
import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
start = time.monotonic()
while True:
    data = s.recv(4096).decode(errors="replace")
    for line in data.split("\n"):
        if line:
            print(f"{time.monotonic() - start:.3f} {line}")
PY
listener=$!
for _ in $(seq 50); do [[ -S $dir/notify ]] && break; sleep 0.1; done
[[ -S $dir/notify ]] || fail "the notify listener did not start"

NOTIFY_SOCKET=$dir/notify WATCHDOG_USEC=400000 "$build/agent/tapsecd" --bus "unix:path=$dir/bus" \
  --policy-dir "$dir/policy.d" --ike-port 0 --wg-exchange-port 0 2>"$dir/tapsecd.log" &
agent=$!
# WATCHDOG_PID unset: sd_watchdog_enabled() takes the variable for any pid.
count() { grep -c " $1\$" "$dir/notify.log"; }
wait_for() {  # wait_for LINE N: until LINE came N times, 10 s at most
  for _ in $(seq 100); do (($(count "$1") >= $2)) && return 0; sleep 0.1; done
  return 1
}
wait_for READY=1 1 || fail "no READY=1"
ready_at=$(awk '$2 == "READY=1" {print $1; exit}' "$dir/notify.log")
sleep 1.5
pets=$(awk -v t="$ready_at" '$2 == "WATCHDOG=1" && $1 > t' "$dir/notify.log" | wc -l)
((pets >= 4)) || fail "$pets WATCHDOG=1 in 1.5 s after READY=1 with WATCHDOG_USEC=400000 (want >= 4)"
echo "watchdog: $pets WATCHDOG=1 in 1.5 s (interval 200 ms)"

# A stopped loop stops answering.
kill -STOP "$agent"
sleep 0.3
before=$(count WATCHDOG=1)
sleep 1
after=$(count WATCHDOG=1)
kill -CONT "$agent"
((after == before)) || fail "WATCHDOG=1 came while the agent was stopped ($before -> $after)"
wait_for WATCHDOG=1 $((after + 2)) || fail "no WATCHDOG=1 after the agent went on"
echo "watchdog: none while stopped, again after"

# Reload, good and broken.
kill -HUP "$agent"
wait_for RELOADING=1 1 || fail "no RELOADING=1 on SIGHUP"
wait_for READY=1 2 || fail "no READY=1 after the reload"
grep -q "policy reloaded" "$dir/tapsecd.log" || fail "the reload was not logged"
printf '[Rule broken]\nNoSuchKey=1\n' >"$dir/policy.d/60-broken.policy"
chmod 0600 "$dir/policy.d/60-broken.policy"
kill -HUP "$agent"
wait_for RELOADING=1 2 || fail "no RELOADING=1 on the second SIGHUP"
wait_for READY=1 3 || fail "no READY=1 after a failed reload"
grep -q "STATUS=.*the last policy reload failed" "$dir/notify.log" || fail "the failed reload is not in STATUS="
echo "reload: RELOADING=1 then READY=1, twice (the second policy broken, the old one kept)"

kill "$agent"
wait "$agent"
status=$?
agent=
((status == 0)) || fail "tapsecd exited $status on SIGTERM"
wait_for STOPPING=1 1 || fail "no STOPPING=1"
echo "PASS"
