#!/bin/bash
# tapsec-vm: timeout=300
# kTLS through tapsec's installer, one cipher and TLS version at a time:
# ktls-selftest checks that the kernel's records open in userspace with the
# installed key layout, that bulk data crosses intact both ways, that
# /proc/net/tls_stat counts it, that alerts go through recv_record, and
# whether the kernel re-keys. Debian 12's 6.1 must refuse a re-key; 7.x must
# accept it.
set -u

selftest=${TAPSEC_BUILD_DIR:?TAPSEC_BUILD_DIR is not set}/agent/kernel/ktls-selftest
if [[ ! -x $selftest ]]; then
    echo "missing $selftest: build the ktls-selftest target" >&2
    exit 1
fi
megabytes=${TAPSEC_KTLS_MEGABYTES:-16}  # about a thousand full records each way

release=$(uname -r)
case $release in
    6.1.*) expect_rekey=no ;;
    [7-9].*) expect_rekey=yes ;;
    *) expect_rekey=auto ;;
esac
echo "kernel $release: expecting re-key ${expect_rekey}"

failures=0
for version in 1.3 1.2; do
    for cipher in aes-gcm-128 aes-gcm-256 chacha20-poly1305; do
        echo "=== TLS $version $cipher"
        "$selftest" --version "$version" --cipher "$cipher" --megabytes "$megabytes" \
            --expect-rekey "$expect_rekey"
        status=$?
        case $status in
            0) ;;
            77) echo "kTLS unavailable on $release"; exit 1 ;;  # the guest must have it
            *) echo "FAILED: TLS $version $cipher (exit $status)"; failures=$((failures + 1)) ;;
        esac
    done
done

if ((failures)); then
    echo "$failures combination(s) failed"
    exit 1
fi
echo "all kTLS combinations passed"
