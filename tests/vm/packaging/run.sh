#!/usr/bin/env bash
# vm.packaging: tapsec's Debian packages on a freshly booted Debian 12.
#   run.sh [KERNEL...]     (default: bookworm trixie-bpo)
#   TAPSEC_PACKAGING_DEBS=DIR run.sh ...   the packages already built in DIR
#                                          (by packaging/build-debs DIR), to re-run the checks
#
# 1. builds the packages from this tree (packaging/build-debs, lintian);
# 2. bootstraps a minimal Debian 12 root with debootstrap, cached as a
#    tarball under $TAPSEC_VM_CACHE/system (the first time takes about a
#    minute and needs the mirror);
# 3. unpacks it for this run, installs the packages with
#    `apt-get install ./tapsec_*.deb` in it as an administrator would, adds
#    the users alice (group tapsec) and mallory, a test CA in the system
#    trust store, a strongSwan peer's configuration (its service moved into
#    the network namespace "peer" that check.sh makes) and the PSK both
#    sides share, the example program libtapsec-dev ships compiled against
#    the package as installed in that root, and check.sh as a unit that
#    runs once the system is up;
# 4. boots that root with each kernel, systemd as PID 1 (tapsec-vm boot),
#    and check.sh reports (tests/vm/packaging/check.sh says what it checks).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source=$(cd "$here/../../.." && pwd)
vm=$source/tests/vm/tapsec-vm
source "$source/tests/integration/lib/test-pki.sh"
kernels=("$@")
((${#kernels[@]})) || kernels=(bookworm trixie-bpo)

skip() { echo "SKIPPED: $*" >&2; exit 77; }
[[ $(id -u) -eq 0 ]] || skip "needs root (debootstrap, chroot)"
for tool in debootstrap dpkg-buildpackage dh lintian zstd qemu-system-x86_64 dpkg-scanpackages pkg-config cc; do
  command -v $tool >/dev/null || skip "$tool is not installed (scripts/install-deps)"
done

cache=${TAPSEC_VM_CACHE:-$HOME/.cache/tapsec/vm}/system
mkdir -p "$cache"
work=$(mktemp -d "$cache/run.XXXXXX")
root=$work/root
mounted=()
cleanup() {
  local m job
  for job in $(jobs -p); do kill "$job" 2>/dev/null; done  # guests still booting (their QEMU dies with them)
  for m in "${mounted[@]}"; do umount -l "$m" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
step() { echo "== $* ($((SECONDS))s)"; }

# 1. The packages.
if [[ -n ${TAPSEC_PACKAGING_DEBS:-} ]]; then
  step "the packages in $TAPSEC_PACKAGING_DEBS"
  mkdir -p "$work/debs" && cp "$TAPSEC_PACKAGING_DEBS"/*.deb "$work/debs/" || fail "no packages in $TAPSEC_PACKAGING_DEBS"
else
  step "building the packages"
  "$source/packaging/build-debs" "$work/debs" >"$work/build.log" 2>&1 ||
    { tail -n 60 "$work/build.log"; fail "packaging/build-debs failed"; }
  sed -n '/^build-debs: packages/,$p' "$work/build.log"
fi

# 2. The base system, cached by what it holds and where it came from.
mirror=$(awk '$1 == "URIs:" {print $2; exit} $1 == "deb" {print $2; exit}' \
  /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null)
mirror=${TAPSEC_VM_MIRROR:-${mirror:-http://deb.debian.org/debian}}
include=systemd,systemd-sysv,dbus,iproute2,openssl,kmod,procps,libnl-3-200,libnl-route-3-200,libnl-xfrm-3-200
include+=,libnl-genl-3-200,liburing2,libssl3
# The IKEv2 peer: Debian's strongSwan, as its packages install it.
include+=,charon-systemd,strongswan-swanctl,libstrongswan-standard-plugins,iputils-ping
# tapsec recommends wireguard-tools, which recommends a kernel providing
# wireguard-modules: on this root without a kernel package apt would fetch
# and install linux-image-rt-amd64 and build its initramfs each run (about a
# minute). A real system has its kernel; this one has wireguard-tools.
include+=,wireguard-tools
key=$(printf '%s %s' "$include" "$mirror" | sha256sum | cut -c1-12)
base=$cache/bookworm-minbase-$key.tar.zst
if [[ ! -f $base ]]; then
  step "debootstrap bookworm from $mirror (cached afterwards as $(basename "$base"))"
  debootstrap --variant=minbase --include="$include" bookworm "$work/base" "$mirror" >"$work/debootstrap.log" 2>&1 ||
    { tail -n 30 "$work/debootstrap.log"; fail "debootstrap failed"; }
  tar -C "$work/base" --zstd -cf "$base.new" . && mv "$base.new" "$base" || fail "cannot write $base"
  rm -rf "$work/base"
fi

# 3. This run's system: the packages installed as an administrator would.
step "installing the packages into a fresh root"
mkdir "$root" && tar -C "$root" --zstd -xf "$base" || fail "cannot unpack $base"
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive "$@"; }
mount -t proc proc "$root/proc" && mounted+=("$root/proc")
mount --bind /dev "$root/dev" && mounted+=("$root/dev")
cp /etc/resolv.conf "$root/etc/resolv.conf"
mkdir -p "$root/root/debs"
cp "$work"/debs/tapsec_*.deb "$work"/debs/libtapsec0_*.deb "$work"/debs/libtapsec-dev_*.deb "$root/root/debs/"
(cd "$root/root/debs" && in_root sh -c 'cd /root/debs && apt-get install -y -q ./tapsec_*.deb ./libtapsec0_*.deb') \
  >"$work/install.log" 2>&1 || { tail -n 40 "$work/install.log"; fail "apt-get install ./tapsec_*.deb failed"; }
grep -E "^(Setting up|Unpacking) (lib)?tapsec" "$work/install.log"

# libtapsec-dev, with what it depends on from a local repository that holds
# only libsystemd-dev (its pkg-config file requires libsystemd): a missing
# Depends shows as a failed install or a failed pkg-config below.
systemd_version=$(dpkg-query --admindir="$root/var/lib/dpkg" -W -f '${Version}' libsystemd0)
systemd_dev=$cache/debs/libsystemd-dev_${systemd_version//:/%3a}_amd64.deb
if [[ ! -f $systemd_dev ]]; then
  mkdir -p "$cache/debs"
  (cd "$cache/debs" && apt-get download -q "libsystemd-dev=$systemd_version") >"$work/download.log" 2>&1 ||
    { cat "$work/download.log"; fail "cannot download libsystemd-dev $systemd_version for the root's libsystemd0"; }
fi
mkdir -p "$root/root/localrepo"
cp "$systemd_dev" "$root/root/localrepo/"
(cd "$root/root/localrepo" && dpkg-scanpackages --multiversion . >Packages 2>/dev/null) || fail "dpkg-scanpackages"
echo "deb [trusted=yes] file:/root/localrepo ./" >"$root/root/localrepo.list"
local_apt=(-o Dir::Etc::SourceList=/root/localrepo.list -o Dir::Etc::SourceParts=/nonexistent)
in_root apt-get "${local_apt[@]}" update -q >"$work/install-dev.log" 2>&1 &&
  in_root sh -c "cd /root/debs && apt-get ${local_apt[*]} install -y -q ./libtapsec-dev_*.deb" >>"$work/install-dev.log" 2>&1 ||
  { tail -n 30 "$work/install-dev.log"; fail "apt-get install ./libtapsec-dev_*.deb failed"; }
rm -rf "$root/root/localrepo" "$root/root/localrepo.list" "$root"/var/lib/apt/lists/_root_localrepo_*
grep -E "^Setting up (libtapsec-dev|libsystemd-dev)" "$work/install-dev.log"

step "compiling the example libtapsec-dev ships, as installed"
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH)
example=$root/usr/share/doc/libtapsec-dev/examples/tls-client.c
[[ -f $example ]] || fail "libtapsec-dev has no examples/tls-client.c"
# pkg-config of the root only: what the installed package says, nothing of the host's.
dev_flags=$(PKG_CONFIG_SYSROOT_DIR=$root PKG_CONFIG_LIBDIR=$root/usr/lib/$multiarch/pkgconfig:$root/usr/share/pkgconfig \
  pkg-config --cflags --libs tapsec 2>&1) || fail "pkg-config tapsec in the installed root: $dev_flags"
# shellcheck disable=SC2086
cc -Wall -Wextra -Werror -o "$root/usr/local/bin/tapsec-tls-client" "$example" $dev_flags \
  -Wl,--unresolved-symbols=report-all || fail "cannot compile $example against libtapsec-dev: cc ... $dev_flags"
echo "compiled the installed examples/tls-client.c with: $dev_flags"

in_root useradd --create-home --groups tapsec alice || fail "useradd alice"
in_root useradd --create-home mallory || fail "useradd mallory"

# A test CA in the system trust store and a server certificate it signed.
pki=$root/root/pki
{ test_pki_ca "$pki" tapsec-packaging-ca && test_pki_cert "$pki" server.test DNS:server.test; } ||
  fail "cannot make the test certificates"
cp "$pki/ca.pem" "$root/etc/ssl/certs/tapsec-packaging-ca.pem"
in_root openssl rehash /etc/ssl/certs || fail "openssl rehash"

# The IKEv2 peer: Debian's strongSwan service, moved into the network
# namespace check.sh makes (and started by it, not at boot: port 500 of the
# system's own namespace is tapsecd's), and the PSK both sides share, in
# /etc/tapsec/private as the agent's user owns it.
psk=$(openssl rand -hex 32)
mkdir -p "$root/etc/systemd/system/strongswan.service.d"
cat >"$root/etc/systemd/system/strongswan.service.d/peer-namespace.conf" <<'UNIT'
[Service]
NetworkNamespacePath=/run/netns/peer
UNIT
in_root systemctl disable strongswan.service >/dev/null 2>&1 || fail "cannot disable strongswan.service"
cat >"$root/etc/swanctl/conf.d/from-guest.conf" <<SWANCTL
connections {
  from-guest {
    version = 2
    local_addrs = 192.0.2.2
    remote_addrs = 192.0.2.1
    proposals = aes256gcm16-prfsha384-x25519
    local {
      auth = psk
      id = peer.example
    }
    remote {
      auth = psk
      id = guest.example
    }
    children {
      from-guest {
        local_ts = 10.2.0.0/24
        remote_ts = 10.1.0.0/24
        esp_proposals = aes256gcm16
      }
    }
  }
}
secrets {
  ike-guest {
    id-1 = peer.example
    id-2 = guest.example
    secret = 0x$psk
  }
}
SWANCTL
chmod 0600 "$root/etc/swanctl/conf.d/from-guest.conf"
printf '%s\n' "$psk" >"$root/etc/tapsec/private/peer.psk"
in_root chown tapsec:tapsec /etc/tapsec/private/peer.psk && chmod 0600 "$root/etc/tapsec/private/peer.psk" ||
  fail "cannot give the PSK file to tapsec"

# The checks run once the system is up; the serial console is theirs.
install -m 0755 "$here/check.sh" "$root/usr/local/sbin/tapsec-vm-check"
cat >"$root/etc/systemd/system/tapsec-vm-check.service" <<'UNIT'
[Unit]
Description=tapsec packaging checks
After=multi-user.target tapsecd.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/tapsec-vm-check
StandardOutput=tty
StandardError=tty
TTYPath=/dev/console

[Install]
WantedBy=multi-user.target
UNIT
in_root systemctl enable tapsec-vm-check.service >/dev/null 2>&1 || fail "cannot enable the check unit"
in_root systemctl mask serial-getty@ttyS0.service >/dev/null 2>&1
echo tapsec-guest >"$root/etc/hostname"
rm -f "$root/etc/resolv.conf"
for m in "${mounted[@]}"; do umount "$m" || fail "cannot unmount $m"; done
mounted=()

# 4. Boot it, once per kernel, both at once (a TCG guest keeps about one core
# busy); each boot starts from the same root, which stays read-only under
# the guest's overlay. Each boot's console is printed when it is done.
declare -A boots=()
for kernel in "${kernels[@]}"; do
  step "booting the installed system on $kernel"
  "$vm" boot --kernel "$kernel" --root "$root" --name packaging --timeout 300 >"$work/boot-$kernel.log" 2>&1 &
  boots[$kernel]=$!
done
status=0 skipped=()
for kernel in "${kernels[@]}"; do
  wait "${boots[$kernel]}"
  rc=$?
  step "the system on $kernel (exit $rc)"
  grep -v "^plugin '.*failed to load" "$work/boot-$kernel.log"
  ((rc == 77)) && skipped+=("$kernel")
  ((rc == 0 || rc == 77)) || status=1
done
step "done"
((status == 0 && ${#skipped[@]})) && skip "kernel(s) ${skipped[*]} not fetched (tests/vm/tapsec-vm fetch)"
exit $status
