#!/bin/bash
# Inside a freshly booted Debian 12 on which the tapsec packages were
# installed with apt (tests/vm/packaging/run.sh made the root): run by
# tapsec-vm-check.service once the system is up, it checks the packages as
# an administrator and users would meet them, reports on the console as
# tapsec-vm expects, and powers off.
#   - tapsecd.service is active, as the user tapsec, and no unit failed;
#   - alice (group tapsec) gets TLS with kTLS through tapsec-exec against
#     openssl s_server, under the shipped default policy and the system
#     trust store, over the system bus;
#   - mallory (not in the group) is denied, before any connection;
#   - systemctl reload takes a policy change (a rule for mallory);
#   - kill -9 of the agent: systemd restarts it, and it serves again;
#   - systemctl stop leaves no tapsec process, SA, policy or link behind;
#   - apt purge removes what the package made.
name=packaging
exec >/dev/console 2>&1
echo "TAPSEC-VM-BEGIN scenario=$name"

finish() {
  echo "TAPSEC-VM-RESULT scenario=$name status=$1"
  systemctl poweroff --force --force
  sleep 30
}
fail() {
  echo "FAIL: $*"
  echo "--- journal of tapsecd:"
  journalctl -u tapsecd --no-pager -o cat | tail -n 40
  finish 1
}
wait_until() {  # wait_until SECONDS COMMAND...: until COMMAND succeeds
  local deadline=$((SECONDS + $1))
  shift
  until "$@"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}
main_pid() { systemctl show -p MainPID --value tapsecd; }

echo "kernel $(uname -r), $(. /etc/os-release && echo "$PRETTY_NAME"), tapsec $(dpkg-query -W -f '${Version}' tapsec)"

# 1. The service, as the package installed it.
wait_until 60 systemctl is-active -q tapsecd || fail "tapsecd is not active: $(systemctl status tapsecd --no-pager)"
pid=$(main_pid)
[[ $(ps -o user= -p "$pid") == tapsec ]] || fail "tapsecd runs as $(ps -o user= -p "$pid"), not tapsec"
failed=$(systemctl --failed --no-legend --plain)
[[ -z $failed ]] || fail "failed units: $failed"
tapsecctl status >/tmp/status || fail "tapsecctl status: $(cat /tmp/status)"
grep -q ktls /tmp/status || fail "the agent reports no kTLS: $(cat /tmp/status)"
grep -q 'ESP unavailable\|modules for this kernel are not installed' <(journalctl -u tapsecd -o cat) &&
  fail "the agent found kernel modules missing: $(journalctl -u tapsecd -o cat | grep -m2 'unavailable\|not installed')"
echo "tapsecd active as tapsec (pid $pid), no failed units, $(grep -m1 'Kernel offload' /tmp/status)"

# 2. A member of group tapsec, under the default policy, with kTLS.
openssl s_server -accept 127.0.0.1:4433 -cert /root/pki/server.test.pem -key /root/pki/server.test.key -rev -quiet \
  >/dev/null 2>/tmp/s_server.log &
server=$!
wait_until 10 bash -c 'exec 3<>/dev/tcp/127.0.0.1/4433' 2>/dev/null || fail "openssl s_server did not listen"
secure_as() {  # secure_as USER: a line through tapsec-exec; its reply and the verbose line in /tmp/USER.out
  runuser -u "$1" -- tapsec-exec --verbose --connect 127.0.0.1:4433 --server-name server.test -- \
    sh -c 'echo packaged; read reply; echo "reply=$reply" >&2' >/dev/null 2>"/tmp/$1.out"
}
secure_as alice || fail "alice: tapsec-exec failed: $(cat /tmp/alice.out)"
grep -q 'reply=degakcap' /tmp/alice.out || fail "alice: no reply through the connection: $(cat /tmp/alice.out)"
grep -q 'Offload=kernel' /tmp/alice.out || fail "alice: the keys are not in the kernel: $(cat /tmp/alice.out)"
echo "alice: $(grep -o 'Version=.*' /tmp/alice.out)"

# 3. Someone outside the group: denied by policy, no connection made.
secure_as mallory && fail "mallory was given a connection: $(cat /tmp/mallory.out)"
grep -q PolicyDenied /tmp/mallory.out || fail "mallory: not a policy denial: $(cat /tmp/mallory.out)"
echo "mallory denied: $(head -c 200 /tmp/mallory.out)"

# 4. A policy change, taken by systemctl reload.
cat >/etc/tapsec/policy.d/50-mallory.policy <<'POLICY'
[Rule mallory]
MatchUser=mallory
MatchRole=client
Protocols=tls
PeerValidation=system
Action=allow
POLICY
chmod 0644 /etc/tapsec/policy.d/50-mallory.policy
systemctl reload tapsecd || fail "systemctl reload tapsecd failed"
wait_until 10 bash -c 'journalctl -u tapsecd -o cat | grep -q "policy reloaded"' || fail "no reload in the journal"
[[ $(main_pid) == "$pid" ]] || fail "the reload restarted the agent"
secure_as mallory || fail "mallory after the reload: $(cat /tmp/mallory.out)"
grep -q 'reply=degakcap' /tmp/mallory.out || fail "mallory: no reply after the reload: $(cat /tmp/mallory.out)"
echo "reload: mallory allowed by the new rule, same agent (pid $pid)"

# 5. The agent killed: systemd brings it back, and it serves.
kill -9 "$pid"
wait_until 30 bash -c '[[ $(systemctl show -p MainPID --value tapsecd) != '"$pid"' ]] && systemctl is-active -q tapsecd' ||
  fail "tapsecd did not come back after kill -9: $(systemctl status tapsecd --no-pager)"
[[ $(systemctl show -p NRestarts --value tapsecd) == 1 ]] || fail "NRestarts is $(systemctl show -p NRestarts --value tapsecd)"
wait_until 10 tapsecctl status >/dev/null 2>&1 || fail "the restarted agent does not answer"
secure_as alice || fail "alice after the restart: $(cat /tmp/alice.out)"
echo "kill -9: restarted (pid $(main_pid)), serving"
kill "$server" 2>/dev/null

# 6. Stopped: nothing of it left in the kernel.
systemctl stop tapsecd || fail "systemctl stop failed"
pgrep -x tapsecd >/dev/null && fail "a tapsecd process is left"
[[ -z $(ip xfrm state) ]] || fail "XFRM states are left: $(ip xfrm state)"
[[ -z $(ip xfrm policy) ]] || fail "XFRM policies are left: $(ip xfrm policy)"
[[ -z $(ip -o link show type wireguard) ]] || fail "WireGuard links are left: $(ip -o link show type wireguard)"
echo "stopped: no process, SA, policy or link left"

# 7. Purged: what the package made is gone (the administrator's policy stays).
DEBIAN_FRONTEND=noninteractive apt-get purge -y -q tapsec libtapsec0 >/tmp/purge.log 2>&1 ||
  fail "apt-get purge: $(tail -20 /tmp/purge.log)"
for path in /usr/sbin/tapsecd /usr/bin/tapsecctl /usr/bin/tapsec-exec /lib/systemd/system/tapsecd.service \
  /usr/share/dbus-1/system.d/org.tapsec1.conf /usr/share/dbus-1/system-services/org.tapsec1.service \
  /etc/tapsec/policy.d/99-default.policy /etc/tapsec/private /etc/tapsec/wireguard \
  /etc/systemd/system/multi-user.target.wants/tapsecd.service; do
  [[ -e $path || -L $path ]] && fail "left after purge: $path"
done
[[ -f /etc/tapsec/policy.d/50-mallory.policy ]] || fail "purge removed the administrator's own policy file"
systemctl list-unit-files tapsecd.service --no-legend | grep -q tapsecd && fail "the unit is still known after purge"
echo "purged: binaries, unit, bus files, default policy and the agent's directories gone; 50-mallory.policy kept"

finish 0
