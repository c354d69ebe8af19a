# shellcheck shell=bash
# strongSwan (charon-systemd + swanctl) instances for interoperability tests,
# one per network namespace, each with its own configuration, vici socket,
# credentials and log in one directory. Sourced; see README.md beside this
# file for the whole interface.
#
# Layout of an instance directory DIR:
#   DIR/strongswan.conf     read by charon-systemd, swanctl and pki (STRONGSWAN_CONF)
#   DIR/charon.vici         the instance's vici socket
#   DIR/charon.log          its log (ike 2, knl 2, cfg 1)
#   DIR/charon.pid          its pid
#   DIR/swanctl/            SWANCTL_DIR: swanctl.conf, conf.d/*.conf, x509/, x509ca/, private/

# Plugins loaded explicitly: loading every installed plugin costs seconds
# under emulation and drags in ones (dhcp, farp, updown) that act on the host.
SWAN_CHARON_PLUGINS=${SWAN_CHARON_PLUGINS:-"random nonce openssl pem pkcs1 pkcs8 x509 pubkey constraints kdf kernel-netlink socket-default vici"}
SWAN_TOOL_PLUGINS="random nonce openssl pem pkcs1 pkcs8 x509 pubkey constraints"
SWAN_START_TIMEOUT=${SWAN_START_TIMEOUT:-60}   # seconds until the vici socket answers
SWAN_INSTANCES=()


# swanctl against instance DIR: swan_ctl DIR --COMMAND [options...]
# (swanctl wants the command first, --uri after it).
swan_ctl() {
  local dir=$1 command=$2
  shift 2
  env "STRONGSWAN_CONF=$dir/strongswan.conf" "SWANCTL_DIR=$dir/swanctl" swanctl "$command" --uri "unix://$dir/charon.vici" "$@"
}

# strongswan.conf for one instance. Extra lines (e.g. "keep_alive = 5s") go
# into the charon section.
_swan_write_conf() {
  local dir=$1
  shift
  local extra
  extra=$(printf '  %s\n' "$@")
  cat >"$dir/strongswan.conf" <<CONF
# charon-systemd reads the charon section as its fallback.
charon {
  load_modular = no
  load = $SWAN_CHARON_PLUGINS
  # Routes are the test's business (ipsec-hosts.sh), not the daemon's.
  install_routes = no
  install_virtual_ip = no
  port = 500
  port_nat_t = 4500
  plugins {
    vici {
      socket = unix://$dir/charon.vici
    }
  }
  journal {
    default = -1
  }
  filelog {
    instance {
      path = $dir/charon.log
      time_format = %T
      time_add_ms = yes
      ike_name = yes
      flush_line = yes
      default = ${SWAN_LOG_DEFAULT:-1}
      ike = ${SWAN_LOG_IKE:-2}
      knl = ${SWAN_LOG_KNL:-2}
      cfg = ${SWAN_LOG_CFG:-1}
    }
  }
$extra
}
libstrongswan {
  plugins {
    # A fresh guest has little entropy; /dev/urandom is seeded by then.
    random {
      random = /dev/urandom
      urandom = /dev/urandom
    }
  }
}
swanctl {
  load = $SWAN_TOOL_PLUGINS
}
pki {
  load = $SWAN_TOOL_PLUGINS
}
CONF
  mkdir -p "$dir"/swanctl/{conf.d,x509,x509ca,private,rsa,ecdsa,pkcs8}
  [[ -e $dir/swanctl/swanctl.conf ]] || printf 'include conf.d/*.conf\n' >"$dir/swanctl/swanctl.conf"
}

# charon_start NETNS DIR [charon setting lines...]: starts charon-systemd in
# NETNS with instance directory DIR and waits until its vici socket answers.
charon_start() {
  local netns=$1 dir=$2
  shift 2
  mkdir -p "$dir"
  _swan_write_conf "$dir" "$@"
  rm -f "$dir/charon.vici"
  # charon-systemd needs no systemd: without NOTIFY_SOCKET it just runs in
  # the foreground; journal logging is off above, the file log is on.
  env -u NOTIFY_SOCKET "STRONGSWAN_CONF=$dir/strongswan.conf" ip netns exec "$netns" charon-systemd \
    >"$dir/charon.stdout" 2>&1 </dev/null &
  echo $! >"$dir/charon.pid"
  SWAN_INSTANCES+=("$dir")
  local deadline=$((SECONDS + SWAN_START_TIMEOUT))
  while ((SECONDS < deadline)); do
    if ! _swan_alive "$dir"; then
      echo "charon in $netns exited while starting; its log:" >&2
      tail -n 20 "$dir/charon.log" "$dir/charon.stdout" >&2
      return 1
    fi
    if [[ -S $dir/charon.vici ]] && swan_ctl "$dir" --stats >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.1
  done
  echo "charon in $netns did not answer on $dir/charon.vici within ${SWAN_START_TIMEOUT}s" >&2
  return 1
}

_swan_alive() {  # the instance's process exists and is not a zombie
  local pid state
  pid=$(cat "$1/charon.pid" 2>/dev/null) || return 1
  state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
  [[ -n $state && $state != Z ]]
}

# charon_stop DIR: SIGTERM (charon then deletes its SAs and policies), SIGKILL
# after 10 s.
charon_stop() {
  local dir=$1 pid i
  pid=$(cat "$dir/charon.pid" 2>/dev/null) || return 0
  kill -TERM "$pid" 2>/dev/null
  for i in $(seq 100); do
    _swan_alive "$dir" || break
    sleep 0.1
  done
  _swan_alive "$dir" && kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  rm -f "$dir/charon.pid"
  return 0
}

# charon_kill DIR: SIGKILL, leaving SAs and policies in the kernel, as a crash
# or power loss would (for dead peer detection tests).
charon_kill() {
  local dir=$1 pid
  pid=$(cat "$dir/charon.pid" 2>/dev/null) || return 0
  kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  rm -f "$dir/charon.pid"
}

charon_stop_all() {
  local dir
  for dir in "${SWAN_INSTANCES[@]}"; do
    charon_stop "$dir"
  done
  SWAN_INSTANCES=()
}

# charon_load DIR: loads connections, secrets and credentials from DIR/swanctl.
charon_load() {
  swan_ctl "$1" --load-all --noprompt >"$1/load.out" 2>&1 ||
    { echo "swanctl --load-all failed for $1:" >&2; cat "$1/load.out" >&2; return 1; }
}

# charon_initiate DIR CHILD [TIMEOUT_S]: brings up CHILD (and its IKE_SA).
charon_initiate() {
  local dir=$1 child=$2 timeout=${3:-30}
  swan_ctl "$dir" --initiate --child "$child" --timeout "$timeout" >"$dir/initiate.out" 2>&1 ||
    { echo "initiating $child from $dir failed:" >&2; tail -n 30 "$dir/initiate.out" >&2; return 1; }
}

# charon_initiate_ike DIR IKE [TIMEOUT_S]: the IKE_SA only.
charon_initiate_ike() {
  local dir=$1 ike=$2 timeout=${3:-30}
  swan_ctl "$dir" --initiate --ike "$ike" --timeout "$timeout" >"$dir/initiate.out" 2>&1 ||
    { echo "initiating IKE_SA $ike from $dir failed:" >&2; tail -n 30 "$dir/initiate.out" >&2; return 1; }
}

# charon_rekey DIR child|ike NAME: starts a rekeying (does not wait for it).
charon_rekey() {
  swan_ctl "$1" --rekey "--$2" "$3" >/dev/null
}

# charon_terminate DIR child|ike NAME [TIMEOUT_S]
charon_terminate() {
  swan_ctl "$1" --terminate "--$2" "$3" --timeout "${4:-20}" >/dev/null
}

# charon_sas DIR: the instance's SAs, flattened to one "path=value" line per
# attribute, the path being IKE_NAME[.child-sas.CHILD_KEY].attribute, e.g.
#   psk.state=ESTABLISHED
#   psk.child-sas.psk-3.state=INSTALLED
#   psk.child-sas.psk-3.spi-in=c2a1b3f4
#   psk.child-sas.psk-3.local-ts=10.1.0.0/24
# Lists are joined with spaces. Read from `swanctl --list-sas --raw`.
charon_sas() {
  swan_ctl "$1" --list-sas --raw 2>/dev/null | _swan_flatten_raw
}

# vici's raw dump: `list-sa event {alpha {uniqueid=1 ... child-sas {c-1 {...}}}}`
# with lists as `key=[a b]`. Values never hold spaces or braces here.
_swan_flatten_raw() {
  awk '
    {
      line = $0
      sub(/^[^{]*\{/, "", line)           # drop "list-sa event {"
      depth = 0
      n = split(line, token, " ")
      for (i = 1; i <= n; i++) {
        t = token[i]
        if (t == "") continue
        if (token[i + 1] ~ /^\{/ && t !~ /=/) {            # "name" "{..."
          path[++depth] = t; token[i + 1] = substr(token[i + 1], 2)
          if (token[i + 1] == "") i++
          continue
        }
        if (t ~ /^\{/) { t = substr(t, 2) }
        closes = 0
        while (t ~ /\}$/) { t = substr(t, 1, length(t) - 1); closes++ }
        if (t ~ /=\[/) {                                   # list: key=[a b c]
          key = substr(t, 1, index(t, "=") - 1); value = substr(t, index(t, "=") + 2)
          while (value !~ /\]$/ && i < n) { i++; u = token[i]; while (u ~ /\}$/) { u = substr(u, 1, length(u) - 1); closes++ } value = value " " u }
          sub(/\]$/, "", value)
          emit(key, value)
        } else if (t ~ /=/) {
          emit(substr(t, 1, index(t, "=") - 1), substr(t, index(t, "=") + 1))
        }
        depth -= closes
        if (depth < 0) depth = 0
      }
    }
    function emit(key, value,    p, j) {
      p = ""
      for (j = 1; j <= depth; j++) p = p path[j] "."
      print p key "=" value
    }'
}

# charon_sa_value DIR PATH_REGEX: the first value whose path matches (extended
# regular expression anchored on both ends), e.g.
#   charon_sa_value "$dir" 'psk\.state'
#   charon_sa_value "$dir" 'psk\.child-sas\.[^.]+\.spi-in'
charon_sa_value() {
  charon_sas "$1" | awk -v re="^($2)=" '$0 ~ re { sub(/^[^=]*=/, ""); print; exit }'
}

# charon_ike_state DIR IKE: ESTABLISHED, CONNECTING, ... or nothing.
charon_ike_state() { charon_sa_value "$1" "$2\\.state"; }

# charon_child_state DIR IKE CHILD: INSTALLED, REKEYED, ... of the newest
# CHILD_SA named CHILD (highest unique id) or nothing.
charon_child_state() {
  charon_sas "$1" | awk -v ike="$2" -v child="$3" '
    index($0, ike ".child-sas.") == 1 {
      rest = substr($0, length(ike) + 12)
      key = substr(rest, 1, index(rest, ".") - 1)
      attr = substr(rest, length(key) + 2)
      if (attr ~ /^name=/) name[key] = substr(attr, 6)
      if (attr ~ /^uniqueid=/) uid[key] = substr(attr, 10) + 0
      if (attr ~ /^state=/) state[key] = substr(attr, 7)
    }
    END {
      best = -1
      for (k in name) if (name[k] == child && uid[k] > best) { best = uid[k]; s = state[k] }
      if (best >= 0) print s
    }'
}

# charon_child_count DIR [STATE]: CHILD_SAs (in STATE) over all IKE_SAs.
charon_child_count() {
  charon_sas "$1" | awk -v want="${2:-}" '/\.child-sas\.[^.]+\.state=/ { sub(/^[^=]*=/, ""); if (want == "" || $0 == want) n++ } END { print n + 0 }'
}

# charon_ike_count DIR [STATE]: IKE_SAs (in STATE).
charon_ike_count() {
  charon_sas "$1" | awk -v want="${2:-}" '/^[^.]+\.state=/ { sub(/^[^=]*=/, ""); if (want == "" || $0 == want) n++ } END { print n + 0 }'
}

# charon_wait SECONDS COMMAND...: polls COMMAND every 0.2 s until it succeeds.
charon_wait() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

# ----------------------------------------------------------------------------
# swanctl.conf generators

# swan_conn DIR NAME [key=value...]: writes DIR/swanctl/conf.d/NAME.conf with
# one connection NAME holding one CHILD_SA NAME. Keys (all optional):
#   local_addrs remote_addrs       (default: any)
#   local_id remote_id             identities (FQDN, address, DN)
#   auth=psk|pubkey                (default psk)
#   psk=SECRET                     the shared key; a secrets entry for both ids
#   cert=FILE                      local certificate in DIR/swanctl/x509 (auth=pubkey)
#   remote_cacert=FILE             CA in x509ca the peer must chain to (default: any loaded)
#   mode=tunnel|transport          (default tunnel)
#   local_ts remote_ts             (default: the addresses, i.e. dynamic)
#   proposals                      IKE (default aes256gcm16-prfsha384-x25519)
#   esp_proposals                  (default aes256gcm16)
#   ike_rekey_time ike_reauth_time ike_over_time
#   rekey_time life_time rand_time rekey_bytes rekey_packets   (CHILD_SA)
#   dpd_delay dpd_timeout dpd_action close_action start_action
#   mobike fragmentation encap     yes|no
#   keyingtries unique reauth_time
swan_conn() {
  local dir=$1 name=$2
  shift 2
  local -A o=([auth]=psk [mode]=tunnel [proposals]=aes256gcm16-prfsha384-x25519
              [esp_proposals]=aes256gcm16 [mobike]=no [fragmentation]=yes [encap]=no)
  local kv
  for kv in "$@"; do
    [[ $kv == *=* ]] || { echo "swan_conn: expected key=value, got '$kv'" >&2; return 2; }
    o[${kv%%=*}]=${kv#*=}
  done
  local ike_lines="" child_lines="" key
  for key in local_addrs remote_addrs proposals mobike fragmentation encap dpd_delay dpd_timeout \
             keyingtries unique; do
    [[ -n ${o[$key]:-} ]] && ike_lines+="    $key = ${o[$key]}"$'\n'
  done
  [[ -n ${o[ike_rekey_time]:-} ]] && ike_lines+="    rekey_time = ${o[ike_rekey_time]}"$'\n'
  [[ -n ${o[ike_reauth_time]:-} ]] && ike_lines+="    reauth_time = ${o[ike_reauth_time]}"$'\n'
  [[ -n ${o[ike_over_time]:-} ]] && ike_lines+="    over_time = ${o[ike_over_time]}"$'\n'
  for key in mode local_ts remote_ts esp_proposals rekey_time life_time rand_time rekey_bytes \
             rekey_packets dpd_action close_action start_action; do
    [[ -n ${o[$key]:-} ]] && child_lines+="        $key = ${o[$key]}"$'\n'
  done
  local local_auth="        auth = ${o[auth]}"$'\n' remote_auth="        auth = ${o[auth]}"$'\n'
  [[ -n ${o[local_id]:-} ]] && local_auth+="        id = ${o[local_id]}"$'\n'
  [[ -n ${o[remote_id]:-} ]] && remote_auth+="        id = ${o[remote_id]}"$'\n'
  [[ -n ${o[cert]:-} ]] && local_auth+="        certs = ${o[cert]}"$'\n'
  [[ -n ${o[remote_cacert]:-} ]] && remote_auth+="        cacerts = ${o[remote_cacert]}"$'\n'
  mkdir -p "$dir/swanctl/conf.d"
  {
    printf 'connections {\n  %s {\n    version = 2\n%s' "$name" "$ike_lines"
    printf '    local {\n%s    }\n    remote {\n%s    }\n' "$local_auth" "$remote_auth"
    printf '    children {\n      %s {\n%s      }\n    }\n  }\n}\n' "$name" "$child_lines"
    if [[ ${o[auth]} == psk ]]; then
      printf 'secrets {\n  ike-%s {\n' "$name"
      [[ -n ${o[local_id]:-} ]] && printf '    id-local = %s\n' "${o[local_id]}"
      [[ -n ${o[remote_id]:-} ]] && printf '    id-remote = %s\n' "${o[remote_id]}"
      printf '    secret = "%s"\n  }\n}\n' "${o[psk]:?swan_conn: auth=psk needs psk=}"
    fi
  } >"$dir/swanctl/conf.d/$name.conf"
  chmod 600 "$dir/swanctl/conf.d/$name.conf"
}

# swan_conn_remove DIR NAME: drops NAME's file (then charon_load, which
# unloads connections no longer configured).
swan_conn_remove() { rm -f "$1/swanctl/conf.d/$2.conf"; }

# ----------------------------------------------------------------------------
# Certificates, made with strongSwan's pki. All files PEM.

_swan_pki() {  # PKIDIR ARGS...: pki with a configuration loading few plugins
  local pkidir=$1
  shift
  [[ -f $pkidir/strongswan.conf ]] ||
    printf 'pki {\n  load = %s\n}\nlibstrongswan {\n  plugins {\n    random {\n      random = /dev/urandom\n    }\n  }\n}\n' \
      "$SWAN_TOOL_PLUGINS" >"$pkidir/strongswan.conf"
  STRONGSWAN_CONF=$pkidir/strongswan.conf pki "$@"
}

_swan_keygen() {  # PKIDIR TYPE OUT: TYPE is ecdsa (P-256), ecdsa384, rsa (2048)
  local pkidir=$1 type=$2 out=$3
  case $type in
    ecdsa) _swan_pki "$pkidir" --gen --type ecdsa --size 256 --outform pem >"$out" ;;
    ecdsa384) _swan_pki "$pkidir" --gen --type ecdsa --size 384 --outform pem >"$out" ;;
    rsa) _swan_pki "$pkidir" --gen --type rsa --size 2048 --outform pem >"$out" ;;
    *) echo "swan: unknown key type $type" >&2; return 2 ;;
  esac || return 1
  chmod 600 "$out"
}

_swan_pki_type() { [[ $1 == rsa ]] && echo rsa || echo ecdsa; }

# swan_pki_ca PKIDIR TYPE: PKIDIR/ca.key.pem and PKIDIR/ca.cert.pem (CN=tapsec test CA).
swan_pki_ca() {
  local pkidir=$1 type=$2
  mkdir -p "$pkidir"
  _swan_keygen "$pkidir" "$type" "$pkidir/ca.key.pem" || return 1
  _swan_pki "$pkidir" --self --ca --lifetime 2 --in "$pkidir/ca.key.pem" --type "$(_swan_pki_type "$type")" \
    --dn "CN=tapsec test CA" --outform pem >"$pkidir/ca.cert.pem"
}

# swan_pki_host PKIDIR NAME TYPE SAN...: PKIDIR/NAME.key.pem and
# PKIDIR/NAME.cert.pem issued by the CA, CN=first SAN, SANs as given (FQDNs,
# addresses). TYPE may differ from the CA's.
swan_pki_host() {
  local pkidir=$1 name=$2 type=$3
  shift 3
  local san_args=() san
  for san in "$@"; do san_args+=(--san "$san"); done
  _swan_keygen "$pkidir" "$type" "$pkidir/$name.key.pem" || return 1
  _swan_pki "$pkidir" --pub --in "$pkidir/$name.key.pem" --type "$(_swan_pki_type "$type")" >"$pkidir/$name.pub" &&
    _swan_pki "$pkidir" --issue --lifetime 2 --in "$pkidir/$name.pub" --type pub \
      --cacert "$pkidir/ca.cert.pem" --cakey "$pkidir/ca.key.pem" \
      --dn "CN=$1" "${san_args[@]}" --flag serverAuth --outform pem >"$pkidir/$name.cert.pem"
}

# swan_install_identity DIR PKIDIR NAME: NAME's certificate and key, and the
# CA, into instance DIR; use cert=NAME.pem in swan_conn.
swan_install_identity() {
  local dir=$1 pkidir=$2 name=$3
  mkdir -p "$dir"/swanctl/{x509,x509ca,private}
  cp "$pkidir/$name.cert.pem" "$dir/swanctl/x509/$name.pem"
  cp "$pkidir/$name.key.pem" "$dir/swanctl/private/$name.pem"
  chmod 600 "$dir/swanctl/private/$name.pem"
  cp "$pkidir/ca.cert.pem" "$dir/swanctl/x509ca/ca.pem"
}

# ----------------------------------------------------------------------------
# Kernel state (XFRM) inside a namespace

# xfrm_state_count NETNS: ESP states in NETNS.
xfrm_state_count() {
  ip -n "$1" xfrm state list 2>/dev/null | grep -c '^src '
}

# xfrm_policy_count NETNS: in/out/fwd policies in NETNS; the per-socket
# bypass policies charon sets on its IKE sockets ("socket in/out") are not counted.
xfrm_policy_count() {
  ip -n "$1" xfrm policy list 2>/dev/null | grep -cE '^[[:space:]]*dir (in|out|fwd)'
}

# xfrm_bytes NETNS: the sum of the byte counters of every SA in NETNS
# (`ip -s xfrm state`: "lifetime current: N(bytes), M(packets)").
xfrm_bytes() {
  ip -n "$1" -s xfrm state list 2>/dev/null |
    awk '/lifetime current:/ { getline; if (match($0, /[0-9]+\(bytes\)/)) n += substr($0, RSTART, RLENGTH - 7) + 0 } END { print n + 0 }'
}
