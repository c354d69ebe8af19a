// Process hardening for tapsecd: no core dumps, no ptrace by other
// processes of its uid, and a report of the capabilities it holds.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>

namespace tapsec::core {

// Makes the process non-dumpable (PR_SET_DUMPABLE 0: no core file, and
// /proc/<pid>/mem, environ and ptrace are closed to processes of the same
// uid that lack CAP_SYS_PTRACE) and sets RLIMIT_CORE to 0. Call it first in
// main, before any key is read. Returns a message when either fails.
std::string forbid_core_dumps();

// The process's credentials and capability sets, as the kernel reports them.
struct Privileges {
  uid_t uid = 0, euid = 0;
  gid_t gid = 0, egid = 0;
  std::uint64_t effective = 0, permitted = 0, ambient = 0;

  bool has(int capability) const { return capability >= 0 && capability < 64 && (effective >> capability) & 1; }
  // "cap_net_bind_service,cap_net_admin"; "all", or "all except cap_x,..."
  // when most are held; "none".
  std::string effective_names() const;
};

Privileges current_privileges();

// The lowest port an unprivileged process may bind in this network
// namespace (net.ipv4.ip_unprivileged_port_start; 1024 when unreadable).
unsigned unprivileged_port_start();

}  // namespace tapsec::core
