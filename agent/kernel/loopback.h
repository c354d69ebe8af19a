// A connected TCP pair over the loopback interface, for probing what the
// kernel's TCP stack accepts without touching any real connection.
#pragma once

#include "agent/core/unique_fd.h"
#include "agent/kernel/result.h"

namespace tapsec::kernel {

struct TcpPair {
  core::UniqueFd client;
  core::UniqueFd server;
};

// 127.0.0.1 first, then ::1. Fails when the loopback device is down.
Result<TcpPair> make_loopback_tcp_pair();

}  // namespace tapsec::kernel
