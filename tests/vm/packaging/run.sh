#!/usr/bin/env bash
# vm.packaging: tapsec's Debian packages on a freshly booted Debian 12.
#   run.sh [KERNEL...]     (default: bookworm trixie-bpo)
#
# 1. builds the packages from this tree (packaging/build-debs, lintian);
# 2. bootstraps a minimal Debian 12 root with debootstrap, cached as a
#    tarball under $TAPSEC_VM_CACHE/system (the first time takes about a
#    minute and needs the mirror);
# 3. unpacks it for this run, installs the packages with
#    `apt-get install ./tapsec_*.deb` in it as an administrator would, adds
#    the users alice (group tapsec) and mallory, a test CA in the system
#    trust store, and check.sh as a unit that runs once the system is up;
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
for tool in debootstrap dpkg-buildpackage dh lintian zstd qemu-system-x86_64; do
  command -v $tool >/dev/null || skip "$tool is not installed (scripts/install-deps)"
done

cache=${TAPSEC_VM_CACHE:-$HOME/.cache/tapsec/vm}/system
mkdir -p "$cache"
work=$(mktemp -d "$cache/run.XXXXXX")
root=$work/root
mounted=()
cleanup() {
  local m
  for m in "${mounted[@]}"; do umount -l "$m" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
step() { echo "== $* ($((SECONDS))s)"; }

# 1. The packages.
step "building the packages"
"$source/packaging/build-debs" "$work/debs" >"$work/build.log" 2>&1 ||
  { tail -n 60 "$work/build.log"; fail "packaging/build-debs failed"; }
sed -n '/^build-debs: packages/,$p' "$work/build.log"

# 2. The base system, cached by what it holds and where it came from.
mirror=$(awk '$1 == "URIs:" {print $2; exit} $1 == "deb" {print $2; exit}' \
  /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null)
mirror=${TAPSEC_VM_MIRROR:-${mirror:-http://deb.debian.org/debian}}
include=systemd,systemd-sysv,dbus,iproute2,openssl,kmod,procps,libnl-3-200,libnl-route-3-200,libnl-xfrm-3-200
include+=,libnl-genl-3-200,liburing2,libssl3
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
cp "$work"/debs/tapsec_*.deb "$work"/debs/libtapsec0_*.deb "$root/root/debs/"
(cd "$root/root/debs" && in_root sh -c 'cd /root/debs && apt-get install -y -q ./tapsec_*.deb ./libtapsec0_*.deb') \
  >"$work/install.log" 2>&1 || { tail -n 40 "$work/install.log"; fail "apt-get install ./tapsec_*.deb failed"; }
grep -E "^(Setting up|Unpacking) (lib)?tapsec" "$work/install.log"
in_root useradd --create-home --groups tapsec alice || fail "useradd alice"
in_root useradd --create-home mallory || fail "useradd mallory"

# A test CA in the system trust store and a server certificate it signed.
pki=$root/root/pki
{ test_pki_ca "$pki" tapsec-packaging-ca && test_pki_cert "$pki" server.test DNS:server.test; } ||
  fail "cannot make the test certificates"
cp "$pki/ca.pem" "$root/etc/ssl/certs/tapsec-packaging-ca.pem"
in_root openssl rehash /etc/ssl/certs || fail "openssl rehash"

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

# 4. Boot it, once per kernel; each boot starts from the same root.
status=0
for kernel in "${kernels[@]}"; do
  step "booting the installed system on $kernel"
  "$vm" boot --kernel "$kernel" --root "$root" --name packaging --timeout 300
  rc=$?
  ((rc == 77)) && skip "kernel $kernel not fetched (tests/vm/tapsec-vm fetch)"
  ((rc == 0)) || status=1
done
step "done"
exit $status
