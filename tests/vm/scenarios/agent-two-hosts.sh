#!/usr/bin/env bash
# tapsec-vm: timeout=180
# Two hosts in network namespaces inside the guest, each with its own bus
# and tapsecd; an unmodified client and server exchange data over kTLS.
set -euo pipefail
build=${TAPSEC_BUILD_DIR:?}
[[ -r /proc/net/tls_stat ]] || { echo "FAIL: no kTLS in this guest kernel" >&2; exit 1; }
exec "${TAPSEC_SOURCE_DIR:-.}/tests/integration/two-hosts.sh" "$build"
