#!/bin/bash
# tapsec-vm: timeout=200
# Two agents on kernel WireGuard: the same checks as the host test
# (tests/integration/wireguard-hosts.sh), which there run on wireguard-go:
# the agents authenticate each other, exchange keys and a PSK, a ping
# crosses, the PSK rotates every 3 s under a 10/s ping with nothing lost
# and equal on both ends, an impostor is refused and leaves no link, and
# the tunnel comes down cleanly. Here the links must say offload kernel.
set -u
modprobe wireguard 2>/dev/null
[[ -d /sys/module/wireguard ]] || { echo "FAILED: the guest kernel has no wireguard module"; exit 1; }
build=${TAPSEC_BUILD_DIR:?TAPSEC_BUILD_DIR is not set}
[[ -x $build/agent/tapsecd ]] || { echo "SKIP: tapsecd is not built under $build" >&2; exit 77; }
out=$(bash "${TAPSEC_SOURCE_DIR:-.}/tests/integration/wireguard-hosts.sh" "$build" 2>&1)
status=$?
echo "$out"
((status == 0)) || exit "$status"
grep -q "(kernel)$" <<<"$out" || { echo "FAILED: the tunnel did not run on kernel WireGuard"; exit 1; }
echo "PASS: tapsec to tapsec on kernel WireGuard"
