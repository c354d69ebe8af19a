#!/bin/bash
# tapsec-vm: timeout=150
# The kernel unit tests whose cases skip on a kernel without kTLS, ESP or
# WireGuard run here, where the kernel has all three: the only cases that
# may skip are those about a kernel lacking something ("this kernel has ...").
set -u
build=${TAPSEC_BUILD_DIR:?TAPSEC_BUILD_DIR is not set}
modprobe -a tls esp4 wireguard 2>/dev/null
status=0
for test in kernel_unit_tests kernel_xfrm_test kernel_wireguard_test; do
  binary=$build/tests/unit/kernel/$test
  [[ -x $binary ]] || { echo "SKIP: $binary is not built" >&2; exit 77; }
  out=$("$binary" --gtest_brief=1 2>&1)
  rc=$?
  echo "$out" | tail -n 5
  if ((rc != 0)); then
    echo "FAILED: $test"
    status=1
  elif reasons=$(awk '/: Skipped$/ { getline; print }' <<<"$out" | grep -v '^this kernel has'); [[ -n $reasons ]]; then
    echo "FAILED: $test skipped cases on a kernel that has what they need:"
    echo "$reasons"
    status=1
  else
    echo "ok $test: $(grep -o '[0-9]* tests\? from [0-9]* test suites\? ran' <<<"$out" | head -1)"
  fi
done
((status == 0)) && echo "PASS: every kernel unit test case ran and passed"
exit "$status"
