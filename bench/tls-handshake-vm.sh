#!/usr/bin/env bash
# tapsec-vm: timeout=600
# tls-handshake-bench in a guest with kTLS: handshakes through tapsecd
# (relayed kTLS) against OpenSSL clients, same server, same run.
set -euo pipefail
exec "${TAPSEC_BUILD_DIR:?}/bench/tls-handshake-bench" "${BENCH_SECONDS:-4}"
