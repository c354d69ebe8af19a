# Two test hosts in network namespaces, each with its own private D-Bus
# daemon and tapsecd, joined by a veth pair. Sourced by scripts/demo and the
# host integration tests.
#
#   hosts_up BUILD_DIR        creates hosts "alpha" (192.0.2.1) and "beta" (192.0.2.2)
#   on_host NAME CMD...       runs CMD inside host NAME with TAPSEC_BUS set
#   host_ctl BUILD NAME ARGS  tapsecctl against host NAME's agent
#   hosts_fail MESSAGE        fails the test, showing both agents' logs
#   host_listening NAME PORT  waits (up to 10 s) until a TCP socket listens on PORT in NAME
#   hosts_down                stops everything and removes the namespaces
#
# TAPSECD_ARGS adds options to both agents.
#
# The addresses are from TEST-NET-1 (RFC 5737) and exist only inside the
# namespaces these functions create.

source "$(dirname "${BASH_SOURCE[0]}")/private-bus.sh"

HOSTS_PREFIX=${HOSTS_PREFIX:-tapsec$$}
HOSTS_DIR=${HOSTS_DIR:-$(mktemp -d /tmp/tapsec-hosts.XXXXXX)}
declare -A HOST_ADDRESS=([alpha]=192.0.2.1 [beta]=192.0.2.2)

hosts_make_pki() {  # certificates for both hosts, from one test CA
  local d=$HOSTS_DIR/pki
  mkdir -p "$d"
  (
    cd "$d" || exit 1
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem \
      -days 2 -subj /CN=tapsec-demo-ca 2>/dev/null
    for h in alpha beta; do
      openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout $h.key -out $h.csr \
        -subj "/CN=$h.test" 2>/dev/null
      printf 'subjectAltName=DNS:%s.test,IP:%s\n' $h "${HOST_ADDRESS[$h]}" >$h.ext
      openssl x509 -req -in $h.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out $h.pem -days 2 \
        -extfile $h.ext 2>/dev/null
    done
    chmod 600 ./*.key
  )
}

hosts_write_policy() {  # HOST: a policy that lets local users use TLS with the host's identity
  local h=$1 d=$HOSTS_DIR/$1/policy.d
  mkdir -p "$d"
  cat >"$d/50-demo.policy" <<POLICY
[Identity $h]
Certificate=$HOSTS_DIR/pki/$h.pem
PrivateKey=$HOSTS_DIR/pki/$h.key

[TrustStore demo-ca]
File=$HOSTS_DIR/pki/ca.pem
IncludeSystem=no

[Rule demo]
Protocols=tls
Identities=$h
TrustStore=demo-ca
Fallback=${TAPSEC_FALLBACK:-yes}
Export=yes
Action=allow
POLICY
  # An IKEv2 tunnel to the other host (transport mode, PSK), started on
  # request: `tapsecctl tunnel up to-<other>`.
  local other=beta
  [[ $h == beta ]] && other=alpha
  cat >"$d/40-tunnel.policy" <<POLICY
[PSK demo-link]
Key=hex:$(printf demo-link-key | sha256sum | cut -d' ' -f1)

[Tunnel]
Name=to-$other
Peer=${HOST_ADDRESS[$other]}
LocalId=$h.test
RemoteId=$other.test
Auth=psk
PSK=demo-link
Mode=transport

[Rule demo-tunnel]
MatchTunnel=to-$other
Protocols=ikev2
PSKs=demo-link
Action=allow
POLICY
  chmod 600 "$d/40-tunnel.policy"
  # A WireGuard tunnel to the other host: alpha starts the agents' exchange,
  # beta answers it. wireguard-go carries it where the kernel has no
  # WireGuard. Addresses 10.9.0.1 (alpha) and 10.9.0.2 (beta).
  local number=1 other_number=2 peer_line="Peer=${HOST_ADDRESS[$other]}"
  [[ $h == beta ]] && number=2 other_number=1 peer_line=""
  cat >"$d/30-wireguard.policy" <<POLICY
[Identity wg-$h]
Type=wireguard
PrivateKey=$HOSTS_DIR/$h/wireguard.key

[Tunnel]
Name=wg-to-$other
Protocol=wireguard
Interface=wg-$other
WireGuardKey=wg-$h
$peer_line
Identity=$h
TrustStore=demo-ca
RemoteId=$other.test
Address=10.9.0.$number/24
AllowedIPs=10.9.0.$other_number/32
PSKRotation=${WG_PSK_ROTATION:-120}
Fallback=${TAPSEC_FALLBACK:-yes}

[Rule demo-wireguard]
MatchTunnel=wg-to-$other
Protocols=wireguard
Action=allow
POLICY
}

hosts_up() {
  local build=$1 h
  hosts_make_pki
  ip netns add "${HOSTS_PREFIX}-alpha"
  ip netns add "${HOSTS_PREFIX}-beta"
  ip link add "${HOSTS_PREFIX:0:8}a" netns "${HOSTS_PREFIX}-alpha" type veth peer name "${HOSTS_PREFIX:0:8}b" \
    netns "${HOSTS_PREFIX}-beta"
  for h in alpha beta; do
    local ns="${HOSTS_PREFIX}-$h" dev
    [[ $h == alpha ]] && dev="${HOSTS_PREFIX:0:8}a" || dev="${HOSTS_PREFIX:0:8}b"
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "${HOST_ADDRESS[$h]}/24" dev "$dev"
    ip -n "$ns" link set "$dev" up
    mkdir -p "$HOSTS_DIR/$h"
    hosts_write_policy "$h"
    private_bus_start "$HOSTS_DIR/$h"
    host_agent_start "$build" "$h"
  done
  for h in alpha beta; do host_agent_wait "$build" "$h"; done
}

# host_agent_start BUILD HOST: tapsecd in HOST, in the background of the
# calling shell (so it can `wait` for it); its log goes to HOST/tapsecd.log.
host_agent_start() {
  local build=$1 h=$2
  # shellcheck disable=SC2086 # TAPSECD_ARGS is a list of options
  ip netns exec "${HOSTS_PREFIX}-$h" "$build/agent/tapsecd" --bus "unix:path=$HOSTS_DIR/$h/bus" ${TAPSECD_ARGS:-} \
    --policy-dir "$HOSTS_DIR/$h/policy.d" 2>>"$HOSTS_DIR/$h/tapsecd.log" &
  echo $! >"$HOSTS_DIR/$h/tapsecd.pid"
}

# host_agent_wait BUILD HOST: until HOST's agent owns its bus name (10 s).
host_agent_wait() {
  local build=$1 h=$2 i
  for i in $(seq 100); do
    on_host "$h" "$build/dbus/tapsecctl/tapsecctl" --bus "unix:path=$HOSTS_DIR/$h/bus" status >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  return 1
}

# host_ctl BUILD HOST ARGS...: tapsecctl against HOST's agent.
host_ctl() {
  local build=$1 h=$2
  shift 2
  on_host "$h" "$build/dbus/tapsecctl/tapsecctl" --bus "unix:path=$HOSTS_DIR/$h/bus" "$@"
}

# hosts_fail MESSAGE: says the test failed, shows the end of both agents'
# logs and exits 1.
hosts_fail() {
  echo "FAIL: $*" >&2
  for h in alpha beta; do echo "--- tapsecd log of $h:"; tail -n 40 "$HOSTS_DIR/$h/tapsecd.log"; done
  exit 1
}

on_host() {
  local h=$1
  shift
  TAPSEC_BUS="unix:path=$HOSTS_DIR/$h/bus" ip netns exec "${HOSTS_PREFIX}-$h" "$@"
}

host_listening() {
  local h=$1 port=$2 _
  for _ in $(seq 100); do
    [[ -n $(ip netns exec "${HOSTS_PREFIX}-$h" ss -Hltn "sport = :$port") ]] && return 0
    sleep 0.1
  done
  return 1
}

hosts_down() {
  local h
  for h in alpha beta; do
    [[ -f $HOSTS_DIR/$h/tapsecd.pid ]] && kill "$(cat "$HOSTS_DIR/$h/tapsecd.pid")" 2>/dev/null
    [[ -f $HOSTS_DIR/$h/bus.pid ]] && kill "$(cat "$HOSTS_DIR/$h/bus.pid")" 2>/dev/null
    ip netns pids "${HOSTS_PREFIX}-$h" 2>/dev/null | xargs -r kill 2>/dev/null || true  # some may be gone already
    ip netns del "${HOSTS_PREFIX}-$h" 2>/dev/null
  done
  wait 2>/dev/null
  [[ -n ${TAPSEC_KEEP_HOSTS_DIR:-} ]] || rm -rf "$HOSTS_DIR"
}
