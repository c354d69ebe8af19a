#!/usr/bin/env bash
# Runs inside the VM (see tests/vm/): the demo on a kernel with kTLS.
set -euo pipefail
cd "${TAPSEC_SOURCE_DIR:-$(dirname "$0")/..}"
TAPSEC_BUILD_DIR=${TAPSEC_BUILD_DIR:-$PWD/build/release} exec ./scripts/demo --inside
