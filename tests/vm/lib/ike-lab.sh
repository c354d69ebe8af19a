# shellcheck shell=bash
# Shared by the IKEv2 scenarios (../scenarios/ike-*.sh) and the IKE
# responder benchmark (bench/ike-responder-vm.sh): tapsecd
# hosts in the namespaces of ../lib/ipsec-hosts.sh, next to or instead of
# charon (../lib/strongswan.sh). Sourced after both libraries.
#
#   ike_need_tapsec                  exit 77 unless tapsecd and tapsecctl are built
#   tapsec_start HOST DIR            private dbus-daemon + tapsecd in HOST's namespace
#                                    (with $TAPSEC_AGENT_ARGS, if set)
#   tapsec_ctl HOST ARGS...          tapsecctl against HOST's agent
#   tapsec_policy_tunnel DIR NAME key=value...   policy file with [Tunnel], [PSK] or identity, [Rule]
#   tapsec_assocs HOST               associations, one line each (see below)
#   tapsec_assoc_field HOST PROTOCOL FIELD [STATE]   a field of the newest matching association
#   tapsec_wait_assoc HOST PROTOCOL STATE SECONDS
#   ike_psk_hex                      the lab's pre-shared key, hex (32 bytes)
#   ike_tunnel_to_charon [KEY=VALUE...]   tapsec (alpha) to charon (beta), up with a Child SA

source "$(dirname "${BASH_SOURCE[0]}")/../../integration/lib/private-bus.sh"
IKE_BUILD=${TAPSEC_BUILD_DIR:-}
TAPSECD=$IKE_BUILD/agent/tapsecd
TAPSECCTL=$IKE_BUILD/dbus/tapsecctl/tapsecctl
declare -A TAPSEC_DIR=()
IKE_PSK_HEX=5f0a3c9e71d24b86a0e3f2c4d5b6a7980112233445566778899aabbccddeeff0

ike_psk_hex() { echo "$IKE_PSK_HEX"; }

ike_need_tapsec() {
  [[ -x $TAPSECD && -x $TAPSECCTL ]] ||
    { echo "SKIP: tapsecd or tapsecctl not built under '$IKE_BUILD'" >&2; exit 77; }
  command -v python3 >/dev/null || { echo "SKIP: python3 is needed to read tapsecctl's JSON" >&2; exit 77; }
}

# tapsec_start HOST DIR: the agent reads DIR/policy.d; its bus is DIR/bus.
tapsec_start() {
  local host=$1 dir=$2 i
  mkdir -p "$dir/policy.d"
  chmod 700 "$dir/policy.d"
  private_bus_start "$dir" || return 1
  # TAPSEC_AGENT_ARGS: more options for every agent of the lab (words).
  # shellcheck disable=SC2086
  ipsec_on "$host" "$TAPSECD" --bus "unix:path=$dir/bus" --policy-dir "$dir/policy.d" --log-level "${TAPSEC_LOG_LEVEL:-debug}" \
    ${TAPSEC_AGENT_ARGS:-} 2>"$dir/tapsecd.log" &
  echo $! >"$dir/tapsecd.pid"
  TAPSEC_DIR[$host]=$dir
  ipsec_at_exit _tapsec_stop "$dir"
  for i in $(seq 200); do
    tapsec_ctl "$host" status >/dev/null 2>&1 && return 0
    kill -0 "$(cat "$dir/tapsecd.pid")" 2>/dev/null ||
      { echo "tapsecd on $host exited while starting:" >&2; tail -n 20 "$dir/tapsecd.log" >&2; return 1; }
    sleep 0.1
  done
  echo "tapsecd on $host did not answer on its bus" >&2
  return 1
}

_tapsec_stop() {
  local dir=$1
  [[ -f $dir/tapsecd.pid ]] && kill "$(cat "$dir/tapsecd.pid")" 2>/dev/null
  [[ -f $dir/bus.pid ]] && kill "$(cat "$dir/bus.pid")" 2>/dev/null
  return 0
}

# tapsec_alive HOST: the agent process still runs.
tapsec_alive() { kill -0 "$(cat "${TAPSEC_DIR[$1]}/tapsecd.pid")" 2>/dev/null; }

tapsec_ctl() {
  local host=$1
  shift
  ipsec_on "$host" "$TAPSECCTL" --bus "unix:path=${TAPSEC_DIR[$host]}/bus" "$@"
}

# tapsec_policy_tunnel DIR NAME key=value...: DIR/policy.d/50-NAME.policy with
# one [Tunnel] and the [Rule] allowing it. Keys are the [Tunnel] keys
# (Peer=, LocalId=, RemoteId=, LocalTS=, ...); defaults: Protocol=ikev2,
# Auth=psk with the lab PSK, Mode=tunnel, aes256gcm16-prfsha384-x25519 /
# aes256gcm16, Start=none. Auth=certificate also needs
#   cert=PEM key=PEM ca=PEM     written as [Identity NAME-id] and [TrustStore NAME-ca]
swan_policy_order=(Name Protocol Peer LocalAddress Port LocalId RemoteId Auth PSK Identity TrustStore LocalTS
                   RemoteTS Mode IKEProposals ESPProposals RekeyGroup Start RekeyTime LifeTime RekeyBytes
                   LifeBytes RekeyPackets LifePackets IKERekeyTime DPD MOBIKE Fragmentation ForceEncapsulation
                   ReplayWindow)
tapsec_policy_tunnel() {
  local dir=$1 name=$2
  shift 2
  local -A t=([Name]=$name [Protocol]=ikev2 [Auth]=psk [Mode]=tunnel
              [IKEProposals]=aes256gcm16-prfsha384-x25519 [ESPProposals]=aes256gcm16 [Start]=none)
  local kv cert="" key="" ca=""
  for kv in "$@"; do
    case ${kv%%=*} in
      cert) cert=${kv#*=} ;;
      key) key=${kv#*=} ;;
      ca) ca=${kv#*=} ;;
      *) [[ " ${swan_policy_order[*]} " == *" ${kv%%=*} "* ]] || ike_fail "tapsec_policy_tunnel: unknown key ${kv%%=*}"
         t[${kv%%=*}]=${kv#*=} ;;
    esac
  done
  local file=$dir/policy.d/50-$name.policy grants
  mkdir -p "$dir/policy.d"
  {
    if [[ ${t[Auth]} == psk ]]; then
      t[PSK]=${t[PSK]:-$name-psk}
      printf '[PSK %s]\nKey=hex:%s\n\n' "${t[PSK]}" "$IKE_PSK_HEX"
      grants="PSKs=${t[PSK]}"
    else
      t[Identity]=${t[Identity]:-$name-id} t[TrustStore]=${t[TrustStore]:-$name-ca}
      printf '[Identity %s]\nCertificate=%s\nPrivateKey=%s\n\n' "${t[Identity]}" "$cert" "$key"
      printf '[TrustStore %s]\nFile=%s\nIncludeSystem=no\n\n' "${t[TrustStore]}" "$ca"
      grants="Identities=${t[Identity]}"$'\n'"TrustStore=${t[TrustStore]}"
    fi
    printf '[Tunnel]\n'
    local k
    for k in "${swan_policy_order[@]}"; do
      [[ -n ${t[$k]:-} ]] && printf '%s=%s\n' "$k" "${t[$k]}"
    done
    printf '\n[Rule %s]\nMatchTunnel=%s\nProtocols=ikev2\n%s\nAction=allow\n' "$name" "$name" "$grants"
  } >"$file"
  chmod 600 "$file"
}

# ike_tunnel_to_charon [KEY=VALUE...]: the common lab: tapsec on alpha with
# tunnel "to-beta" (10.1.0.0/24 <-> 10.2.0.0/24, PSK; extra tunnel keys as
# given) up to charon on beta ("from-alpha"), with its first Child SA.
ike_tunnel_to_charon() {
  tapsec_policy_tunnel "$IKE_WORK/alpha" to-beta Peer=192.0.2.2 LocalId=alpha.example RemoteId=beta.example \
    LocalTS=10.1.0.0/24 RemoteTS=10.2.0.0/24 "$@"
  tapsec_start alpha "$IKE_WORK/alpha" || ike_fail "tapsecd did not start"
  charon_start "$NS_BETA" "$IKE_WORK/beta" || ike_fail "charon did not start"
  swan_peer "$IKE_WORK/beta" from-alpha 192.0.2.2 192.0.2.1 10.2.0.0/24 10.1.0.0/24 beta.example alpha.example
  charon_load "$IKE_WORK/beta" || ike_fail "loading beta"
  tapsec_ctl alpha tunnel up to-beta && tapsec_wait_assoc alpha esp established 30 || ike_fail "tunnel up"
}

# tapsec_assocs HOST: one line per association, fields separated by tabs:
# id protocol state parent inbound_spi outbound_spi bytes_sent bytes_received key_epoch peer_identity
# tapsecctl --json prints an array or one object per line; both are read.
tapsec_assocs() {
  tapsec_ctl "$1" associations --json 2>/dev/null | python3 -c '
import json, sys
text = sys.stdin.read().strip()
items = []
try:
    doc = json.loads(text)
    items = doc if isinstance(doc, list) else doc.get("associations", [doc])
except ValueError:
    items = [json.loads(line) for line in text.splitlines() if line.strip()]
fields = ("id", "protocol", "state", "parent", "inbound_spi", "outbound_spi",
          "bytes_sent", "bytes_received", "key_epoch", "peer_identity")
for item in items:
    print("\t".join(str(item.get(f, "")) for f in fields))
'
}

# tapsec_assoc_field HOST PROTOCOL FIELD [STATE]: FIELD (a name from the list
# above) of the newest association of PROTOCOL ("ikev2", "esp") in STATE.
tapsec_assoc_field() {
  local host=$1 protocol=$2 field=$3 state=${4:-}
  local -A column=([id]=1 [protocol]=2 [state]=3 [parent]=4 [inbound_spi]=5 [outbound_spi]=6
                   [bytes_sent]=7 [bytes_received]=8 [key_epoch]=9 [peer_identity]=10)
  tapsec_assocs "$host" | awk -F'\t' -v p="$protocol" -v s="$state" -v c="${column[$field]}" \
    '$2 == p && (s == "" || $3 == s) && $1 + 0 >= best { best = $1 + 0; v = $c } END { if (best != "") print v }'
}

# tapsec_assoc_count HOST PROTOCOL [STATE]
tapsec_assoc_count() {
  tapsec_assocs "$1" | awk -F'\t' -v p="$2" -v s="${3:-}" '$2 == p && (s == "" || $3 == s) { n++ } END { print n + 0 }'
}

tapsec_wait_assoc() {  # HOST PROTOCOL STATE SECONDS
  local deadline=$((SECONDS + $4))
  until [[ -n $(tapsec_assoc_field "$1" "$2" id "$3") ]]; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

# Source ports of malformed-ike.sh's garbage (40000 + 500, 40000 + 4500): the
# agent logs one "IKE datagram dropped" line per datagram from them, which
# ike_fail leaves out of the log tail.
IKE_GARBAGE_PORTS="40500|44500"

# ike_fail MESSAGE: prints MESSAGE, the agents' and charons' logs, and exits 1.
ike_fail() {
  echo "FAIL: $*"
  local host dir log noise
  noise="IKE datagram dropped from=[^ ]*:($IKE_GARBAGE_PORTS) "
  for host in "${!TAPSEC_DIR[@]}"; do
    echo "--- tapsecd on $host: associations"
    tapsec_assocs "$host" 2>&1 | sed 's/^/    /'
    log=${TAPSEC_DIR[$host]}/tapsecd.log
    echo "--- tapsecd on $host: log tail ($(grep -cE "$noise" "$log" 2>/dev/null) lines on garbage datagrams left out)"
    grep -vE "$noise" "$log" 2>/dev/null | tail -n 40 | sed 's/^/    /'
  done
  for dir in "${SWAN_INSTANCES[@]}"; do
    echo "--- charon $dir: SAs"
    swan_ctl "$dir" --list-sas 2>&1 | sed 's/^/    /'
    echo "--- charon $dir: log tail"
    if [[ -s $dir/charon.log ]]; then
      tail -n 40 "$dir/charon.log" | sed 's/^/    /'
    else
      echo "    (no $dir/charon.log; charon's own output:)"
      tail -n 20 "$dir/charon.stdout" 2>&1 | sed 's/^/    /'
    fi
  done
  exit 1
}

ike_step() { echo "[$SECONDS s] $*"; }

# ike_ping_all_received FILE COUNT: the ping whose output is FILE (- for
# standard input) sent COUNT echo requests and got them all back. Prints its
# summary line either way.
ike_ping_all_received() {
  local summary
  summary=$(grep 'packets transmitted' "$1")
  echo "$summary"
  [[ $(awk '{print $1 "/" $4}' <<<"$summary") == "$2/$2" ]]
}

# ike_ping_ok [COUNT] [INTERVAL]: alpha's inner address reaches beta's, no loss.
ike_ping_ok() {
  local count=${1:-3} interval=${2:-0.2} out
  out=$(ipsec_ping alpha -q -c "$count" -i "$interval" -W 2 -I 10.1.0.1 10.2.0.1 2>&1)
  ike_ping_all_received - "$count" <<<"$out" >/dev/null || { echo "$out"; return 1; }
}

# tapsec_wait_rekeyed HOST PROTOCOL OLD_SPI SECONDS: until HOST has one
# established PROTOCOL association and its inbound SPI is no longer OLD_SPI.
tapsec_wait_rekeyed() {
  local host=$1 protocol=$2 old=$3 deadline=$((SECONDS + $4))
  until [[ $(tapsec_assoc_field "$host" "$protocol" inbound_spi established) != "$old" &&
           $(tapsec_assoc_count "$host" "$protocol" established) == 1 ]]; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

# The charon peer of a tapsec host: beta-side (or alpha-side) configuration
# matching tapsec_policy_tunnel's defaults. swan_peer DIR NAME SELF PEER SELF_NET PEER_NET SELF_ID PEER_ID extra...
swan_peer() {
  local dir=$1 name=$2 self=$3 peer=$4 self_net=$5 peer_net=$6 self_id=$7 peer_id=$8
  shift 8
  swan_conn "$dir" "$name" local_addrs="$self" remote_addrs="$peer" local_id="$self_id" remote_id="$peer_id" \
    local_ts="$self_net" remote_ts="$peer_net" psk="0x$IKE_PSK_HEX" "$@"
}

# ike_lab [two|nat]: namespaces, a work directory ($IKE_WORK) and the exit
# trap; $NS_ALPHA and $NS_BETA name the namespaces.
ike_lab() {
  local kind=${1:-two}
  command -v charon-systemd >/dev/null && command -v swanctl >/dev/null ||
    { echo "SKIP: strongSwan (charon-systemd, swanctl) is not installed" >&2; exit 77; }
  IKE_WORK=$(mktemp -d /tmp/ike-lab.XXXXXX)
  ipsec_at_exit charon_stop_all
  if [[ $kind == nat ]]; then ipsec_hosts_nat; else ipsec_hosts_two; fi || ike_fail "cannot build the namespaces"
  NS_ALPHA=$(ipsec_ns alpha) NS_BETA=$(ipsec_ns beta)
}

# ike_lab_certs TYPE: CA and host certificates (alpha.example, beta.example)
# under $IKE_WORK/pki, TYPE ecdsa or rsa.
ike_lab_certs() {
  swan_pki_ca "$IKE_WORK/pki" "$1" &&
    swan_pki_host "$IKE_WORK/pki" alpha "$1" alpha.example 192.0.2.1 &&
    swan_pki_host "$IKE_WORK/pki" beta "$1" beta.example 192.0.2.2 || ike_fail "pki"
}

# ike_xfrm_moved NETNS BEFORE: the namespace's ESP byte counters exceed BEFORE.
ike_xfrm_moved() { (($(xfrm_bytes "$1") > $2)); }
