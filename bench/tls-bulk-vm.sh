#!/usr/bin/env bash
# tapsec-vm: timeout=600
# tls-bulk-bench in a guest with kTLS: relayed sockets (the default) against
# programs holding the kTLS socket themselves, same agent, same run.
set -euo pipefail
exec "${TAPSEC_BUILD_DIR:?}/bench/tls-bulk-bench" "${BENCH_MIB:-64}" "${BENCH_REPETITIONS:-3}"
