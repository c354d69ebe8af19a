#!/bin/bash
# tapsec-vm: timeout=600
# WireGuard configuration speed: 10,000 peers (each a public key, a PSK, an
# endpoint and one /32) with a private key, applied to a fresh kernel link
# by tapsec's KernelDevice::configure and by `wg setconf` (the same peers as
# a wg conf file), in the same guest run, alternating which goes first.
# Prints one line per repetition and a summary:
#   BENCH rep=I peers=N tapsec_ms=T wg_ms=W ratio=X
#   BENCH summary peers=N reps=R tapsec_median_ms=T wg_median_ms=W ... ratio_tapsec_over_wg=X
# BENCH_PEERS (default 10000) and BENCH_REPS (default 3) change the load;
# BENCH_MAX_RATIO, when set, fails the run if tapsec's median time exceeds
# that multiple of wg's.
set -u
bench=${TAPSEC_BUILD_DIR:?TAPSEC_BUILD_DIR is not set}/bench/wg-config-bench
if [[ ! -x $bench ]]; then
    echo "missing $bench: build the wg-config-bench target" >&2
    exit 77
fi
modprobe wireguard 2>/dev/null
echo "kernel $(uname -r)"
# Deleting a link with 10,000 peers takes minutes under TCG (6.1 waits an
# RCU grace period per peer; newer kernels stop a thread per peer): the links
# stay, the guest is thrown away. Newer kernels start a thread per peer, so
# run this with a large guest there: TAPSEC_VM_MEMORY=12G tests/vm/tapsec-vm ...
keep=(--keep-links)
# Each of those threads takes a PID: the default limit of 32,768 is reached
# by the third 10,000-peer link.
sysctl -qw kernel.pid_max=4194304 kernel.threads-max=4194304 2>/dev/null
"$bench" --peers "${BENCH_PEERS:-10000}" --repetitions "${BENCH_REPS:-3}" "${keep[@]}" | tee /tmp/wg-config-bench.out
status=${PIPESTATUS[0]}
((status == 0)) || { echo "FAILED: wg-config-bench exit $status"; exit 1; }
ratio=$(sed -n 's/.*ratio_tapsec_over_wg=\([0-9.]*\).*/\1/p' /tmp/wg-config-bench.out)
if [[ -n ${BENCH_MAX_RATIO:-} ]] && awk -v r="$ratio" -v m="$BENCH_MAX_RATIO" 'BEGIN { exit !(r > m) }'; then
    echo "FAIL: tapsec takes $ratio times wg's time, above $BENCH_MAX_RATIO"
    exit 1
fi
