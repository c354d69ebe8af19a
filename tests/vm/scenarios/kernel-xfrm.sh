#!/bin/bash
# tapsec-vm: timeout=150
# ESP through tapsec's XFRM installer on a real kernel: xfrm-selftest builds
# two network namespaces joined by veth, installs a matching SA pair and
# policies in each (AES-GCM-128/256, ChaCha20-Poly1305, AES-CBC-256 +
# HMAC-SHA2-256; tunnel and transport; with and without ESN; one case in
# UDP encapsulation), sends UDP echoes across and checks that query_sa and
# `ip -s xfrm state` agree on the counters at both ends. Then: soft and hard
# packet lifetimes raise EXPIRE events (the hard one deletes the SA), a trap
# policy raises ACQUIRE, and update_sa_addresses moves a live SA pair.
set -u

selftest=${TAPSEC_BUILD_DIR:?TAPSEC_BUILD_DIR is not set}/agent/kernel/xfrm-selftest
if [[ ! -x $selftest ]]; then
    echo "missing $selftest: build the xfrm-selftest target" >&2
    exit 77
fi
echo "kernel $(uname -r)"

"$selftest" --case all
status=$?
case $status in
    0) echo "all XFRM cases passed" ;;
    77) echo "FAILED: the kernel refused ESP or a cipher (the guest must have them)"; exit 1 ;;
    *) echo "FAILED: xfrm-selftest exit $status"; exit 1 ;;
esac
