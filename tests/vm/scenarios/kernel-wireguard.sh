#!/bin/bash
# tapsec-vm: timeout=150
# Kernel WireGuard through tapsec's KernelDevice on a real kernel:
# wg-selftest builds two network namespaces joined by veth with one
# WireGuard link in each, configures them with fresh keys and PSKs, pings
# across, reads handshake times and counters, rotates the PSK with
# update_only (which must not create unknown peers), configures 2,000 peers
# with 3 allowed IPs each and one peer whose allowed IPs span several
# messages, reads everything back, removes peers and deletes the links.
# Then interop with wireguard-tools: a link configured by KernelDevice reads
# back identically with `wg show <if> dump`, and a link configured by
# `wg set` reads back identically through KernelDevice. The kernel cases of
# kernel_wireguard_test (skipped on kernels without WireGuard) run here too.
set -u

selftest=${TAPSEC_BUILD_DIR:?TAPSEC_BUILD_DIR is not set}/agent/kernel/wg-selftest
if [[ ! -x $selftest ]]; then
    echo "missing $selftest: build the wg-selftest target" >&2
    exit 77
fi
echo "kernel $(uname -r)"
modprobe wireguard 2>/dev/null
if [[ ! -d /sys/module/wireguard ]]; then
    echo "FAILED: the guest kernel has no wireguard module (both Debian kernels should)"
    exit 1
fi

"$selftest"
status=$?
case $status in
    0) ;;
    77) echo "FAILED: wg-selftest found no kernel WireGuard (the guest must have it)"; exit 1 ;;
    *) echo "FAILED: wg-selftest exit $status"; exit 1 ;;
esac

# The unit test's kernel cases, which skip on kernels without WireGuard, must
# run here.
unit=$TAPSEC_BUILD_DIR/tests/unit/kernel/kernel_wireguard_test
if [[ -x $unit ]]; then
    output=$("$unit" --gtest_filter='WireGuardKernel.*' 2>&1)
    status=$?
    if ((status != 0)) || grep -q SKIPPED <<<"$output" || ! grep -q PASSED <<<"$output"; then
        echo "$output"
        echo "FAILED: kernel_wireguard_test's kernel cases (exit $status)"
        exit 1
    fi
    echo "ok kernel_wireguard_test kernel cases"
else
    echo "kernel_wireguard_test not built: its kernel cases were not run" >&2
fi

# wg prints the private key first; tapsec's dump hides it. Compare the rest.
compare_with_wg() {  # IFNAME WHAT
    local expected seen
    expected=$(wg show "$1" dump | cut -f2-) || { echo "FAILED: wg show $1 dump"; exit 1; }
    seen=$("$selftest" --dump "$1" | cut -f2-) || { echo "FAILED: wg-selftest --dump $1"; exit 1; }
    if [[ "$expected" != "$seen" ]]; then
        echo "FAILED: $2: wg and KernelDevice disagree"
        echo "--- wg show $1 dump:"; echo "$expected"
        echo "--- KernelDevice:"; echo "$seen"
        exit 1
    fi
    echo "ok $2 ($(wc -l <<<"$seen") lines agree)"
}

ip link add wgi0 type wireguard || { echo "FAILED: ip link add wgi0 type wireguard"; exit 1; }
"$selftest" --configure-demo wgi0 || { echo "FAILED: configuring wgi0 through KernelDevice"; exit 1; }
compare_with_wg wgi0 "interop-kerneldevice-to-wg"

umask 077
psk=$(wg genpsk)
printf '%s\n' "$psk" > /tmp/wgi-psk
peer=$(wg genkey | wg pubkey)
wg genkey > /tmp/wgi-key
wg set wgi0 private-key /tmp/wgi-key listen-port 41000 fwmark 0x7 \
    peer "$peer" preshared-key /tmp/wgi-psk endpoint '[2001:db8::5]:1234' persistent-keepalive 9 \
    allowed-ips 10.77.0.0/16,fd00:77::/48 || { echo "FAILED: wg set"; exit 1; }
compare_with_wg wgi0 "interop-wg-to-kerneldevice"
ip link del wgi0
echo "all kernel WireGuard checks passed"
