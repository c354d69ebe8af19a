// The kernel's kTLS counters, /proc/net/tls_stat: one "Name value" per line
// (TlsCurrTxSw, TlsTxSw, TlsRxSw, TlsDecryptError, TlsRxNoPadViolation,
// TlsTxRekeyOk, ... — the set grows with the kernel, so all are kept by
// name). The file exists only while the tls module is loaded, and counts
// per network namespace.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <string>
#include <string_view>

#include "agent/kernel/result.h"

namespace tapsec::kernel {

struct TlsStats {
  std::map<std::string, std::uint64_t, std::less<>> counters;

  // 0 for a counter this kernel does not have.
  std::uint64_t get(std::string_view name) const;
  bool has(std::string_view name) const { return counters.find(name) != counters.end(); }
};

Result<TlsStats> parse_tls_stat(std::string_view text);

// This process's network namespace.
Result<TlsStats> read_tls_stat(const std::string& path = "/proc/net/tls_stat");

// The namespace of a process (reads /proc/<pid>/net/tls_stat).
Result<TlsStats> read_tls_stat_of_pid(pid_t pid);

// A namespace named by a path such as /run/netns/<name> or
// /proc/<pid>/ns/net. Enters it on a short-lived thread (setns changes only
// the calling thread), so it needs CAP_SYS_ADMIN.
Result<TlsStats> read_tls_stat_in_netns(const std::string& netns_path);

}  // namespace tapsec::kernel
