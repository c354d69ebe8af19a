#!/usr/bin/env bash
# tapsec-vm: timeout=480
# tapsecd end to end with kTLS: the host suite's cases (agent <-> agent,
# OpenSSL s_server and s_client, TLS 1.2, resumption, ALPN, pins, an
# application validator, 64 MiB each way, bad input) on a kernel that has
# kTLS, where every association must say Offload=kernel, the sockets must
# carry the "tls" ULP and /proc/net/tls_stat must count the keys. Then
# unmodified readers (a read() loop, cat, sha256sum) against an OpenSSL
# server of the test's own: tickets after a HelloRetryRequest, late and
# never, a KeyUpdate mid-stream, close_notify at the end.
set -euo pipefail
build=${TAPSEC_BUILD_DIR:?}
if [[ ! -r /proc/net/tls_stat ]]; then
  echo "FAIL: this guest kernel has no kTLS (module tls did not load)" >&2
  exit 1
fi
status=0
"$build/tests/integration/agent/agent_e2e_test" --gtest_color=no || status=1
"$build/tests/integration/agent/agent_peer_test" --gtest_color=no || status=1
exit $status
