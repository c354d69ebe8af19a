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
#   - the example libtapsec-dev ships (run.sh compiled it against the
#     installed package) gets the same, as alice;
#   - mallory (not in the group) is denied, before any connection;
#   - systemctl reload takes a policy change (a rule for mallory);
#   - an IKEv2 tunnel to Debian's strongSwan in a second network namespace
#     (so UDP port 500 works under the unit), from a tunnel the reloaded
#     policy starts (Start=boot), traffic through it;
#   - kill -9 of the agent: systemd restarts it, it serves again, removes
#     the SAs and policies the killed one left and brings the tunnel back;
#   - systemctl stop leaves no tapsec process, SA, policy or link behind;
#   - apt purge removes what the packages made.
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

# The same through libtapsec-dev's example, built against the installed package.
runuser -u alice -- tapsec-tls-client --server-name server.test 127.0.0.1 4433 devpackage >/tmp/tls-client.out 2>&1 ||
  fail "alice: the libtapsec-dev example failed: $(cat /tmp/tls-client.out)"
grep -q '^egakcapved' /tmp/tls-client.out || fail "the libtapsec-dev example: no reply: $(cat /tmp/tls-client.out)"
grep -q 'Offload: kernel' /tmp/tls-client.out || fail "the libtapsec-dev example: not kTLS: $(cat /tmp/tls-client.out)"
echo "libtapsec-dev example: $(head -n 1 /tmp/tls-client.out), $(grep -m1 -o 'Offload[^,]*' /tmp/tls-client.out)"

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

# 5. An IKEv2 tunnel to strongSwan in the namespace "peer": 192.0.2.1 here,
# 192.0.2.2 there, tunnelling 10.1.0.0/24 <-> 10.2.0.0/24. run.sh wrote the
# peer's configuration and the PSK file; the tunnel comes with a reload.
ip netns add peer || fail "ip netns add peer"
ip link add ike-out type veth peer name ike-in && ip link set ike-in netns peer || fail "veth pair"
ip addr add 192.0.2.1/24 dev ike-out && ip link set ike-out up && ip addr add 10.1.0.1/32 dev lo || fail "guest addresses"
ip -n peer link set lo up && ip -n peer addr add 192.0.2.2/24 dev ike-in && ip -n peer link set ike-in up &&
  ip -n peer addr add 10.2.0.1/32 dev lo || fail "peer addresses"
ip route add 10.2.0.0/24 dev ike-out src 10.1.0.1 && ip -n peer route add 10.1.0.0/24 dev ike-in src 10.2.0.1 ||
  fail "routes"
systemctl start strongswan.service || fail "strongswan.service: $(systemctl status strongswan --no-pager)"
cat >/etc/tapsec/policy.d/40-peer.policy <<'POLICY'
[PSK peer]
KeyFile=/etc/tapsec/private/peer.psk

[Tunnel]
Name=to-peer
Protocol=ikev2
Peer=192.0.2.2
LocalId=guest.example
RemoteId=peer.example
Auth=psk
PSK=peer
LocalTS=10.1.0.0/24
RemoteTS=10.2.0.0/24
Mode=tunnel
IKEProposals=aes256gcm16-prfsha384-x25519
ESPProposals=aes256gcm16
Start=boot

[Rule to-peer]
MatchTunnel=to-peer
Protocols=ikev2
PSKs=peer
Action=allow
POLICY
chmod 0644 /etc/tapsec/policy.d/40-peer.policy
reloads=$(journalctl -u tapsecd -o cat | grep -c "policy reloaded")
systemctl reload tapsecd || fail "systemctl reload tapsecd (tunnel) failed"
wait_until 10 bash -c '(($(journalctl -u tapsecd -o cat | grep -c "policy reloaded") > '"$reloads"'))' ||
  fail "the tunnel's policy was not reloaded"
# Up: the tunnel's two ESP SAs and its policies are in the kernel; traffic
# crosses when a ping is answered and the SAs' byte counters moved (a route
# alone would carry it in clear).
tunnel_up() { (($(ip xfrm state | grep -c 'mode tunnel') == 2 && $(ip xfrm policy | grep -c '^src') >= 3)); }
esp_bytes() { ip -s xfrm state | awk '/\(bytes\)/ { sub(/\(bytes\),?/, "", $1); total += $1 } END { print total + 0 }'; }
through_tunnel() {
  local before
  before=$(esp_bytes)
  ping -q -c 1 -W 2 -I 10.1.0.1 10.2.0.1 >/dev/null 2>&1 && (($(esp_bytes) > before))
}
wait_until 40 tunnel_up || fail "the tunnel did not come up: $(ip xfrm state; ip xfrm policy; swanctl --list-sas 2>/dev/null)"
wait_until 10 through_tunnel || fail "no traffic through the tunnel: $(ip -s xfrm state)"
swanctl --list-sas 2>/dev/null | grep -q 'from-guest.*ESTABLISHED' || fail "strongSwan has no IKE SA: $(swanctl --list-sas 2>/dev/null)"
echo "IKEv2: tunnel to strongSwan up on UDP 500 under the unit, ping crosses through ESP ($(esp_bytes) bytes)"

# 6. The agent killed: systemd brings it back, it serves, and the tunnel
# returns with no SA or policy of the killed agent left behind.
kill -9 "$pid"
wait_until 30 bash -c '[[ $(systemctl show -p MainPID --value tapsecd) != '"$pid"' ]] && systemctl is-active -q tapsecd' ||
  fail "tapsecd did not come back after kill -9: $(systemctl status tapsecd --no-pager)"
[[ $(systemctl show -p NRestarts --value tapsecd) == 1 ]] || fail "NRestarts is $(systemctl show -p NRestarts --value tapsecd)"
wait_until 10 tapsecctl status >/dev/null 2>&1 || fail "the restarted agent does not answer"
secure_as alice || fail "alice after the restart: $(cat /tmp/alice.out)"
left=$(journalctl -u tapsecd -o cat | grep -m1 "removed what an earlier run left") ||
  fail "the restarted agent did not remove what the killed one left: $(ip xfrm state; ip xfrm policy)"
wait_until 40 tunnel_up || fail "the tunnel did not come back: $(ip xfrm state; ip xfrm policy)"
wait_until 10 through_tunnel || fail "no traffic through the tunnel after the restart: $(ip -s xfrm state)"
echo "kill -9: restarted (pid $(main_pid)), serving; $left; tunnel back (2 ESP SAs, none of the killed agent's), traffic crosses"
kill "$server" 2>/dev/null

# 7. Stopped: nothing of it left in the kernel.
systemctl stop tapsecd || fail "systemctl stop failed"
pgrep -x tapsecd >/dev/null && fail "a tapsecd process is left"
[[ -z $(ip xfrm state) ]] || fail "XFRM states are left: $(ip xfrm state)"
[[ -z $(ip xfrm policy) ]] || fail "XFRM policies are left: $(ip xfrm policy)"
[[ -z $(ip -o link show type wireguard) ]] || fail "WireGuard links are left: $(ip -o link show type wireguard)"
echo "stopped: no process, SA, policy or link left"

# 8. Purged: what the packages made is gone (the administrator's policy stays).
DEBIAN_FRONTEND=noninteractive apt-get purge -y -q tapsec libtapsec0 libtapsec-dev >/tmp/purge.log 2>&1 ||
  fail "apt-get purge: $(tail -20 /tmp/purge.log)"
for path in /usr/sbin/tapsecd /usr/bin/tapsecctl /usr/bin/tapsec-exec /lib/systemd/system/tapsecd.service \
  /usr/share/dbus-1/system.d/org.tapsec1.conf /usr/share/dbus-1/system-services/org.tapsec1.service \
  /etc/tapsec/policy.d/99-default.policy /etc/tapsec/wireguard /usr/include/tapsec \
  /etc/systemd/system/multi-user.target.wants/tapsecd.service; do
  [[ -e $path || -L $path ]] && fail "left after purge: $path"
done
[[ -f /etc/tapsec/policy.d/50-mallory.policy ]] || fail "purge removed the administrator's own policy file"
[[ -f /etc/tapsec/private/peer.psk ]] || fail "purge removed the administrator's PSK file"
systemctl list-unit-files tapsecd.service --no-legend | grep -q tapsecd && fail "the unit is still known after purge"
echo "purged: binaries, headers, unit, bus files, default policy and the agent's directories gone; the administrator's policy and PSK kept"

finish 0
