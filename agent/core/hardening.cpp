#include "agent/core/hardening.h"

#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>

namespace tapsec::core {

namespace {

// The kernel's names (capabilities(7)) of those up to CAP_CHECKPOINT_RESTORE.
constexpr const char* kCapabilityNames[] = {
    "cap_chown",           "cap_dac_override",   "cap_dac_read_search", "cap_fowner",
    "cap_fsetid",          "cap_kill",           "cap_setgid",          "cap_setuid",
    "cap_setpcap",         "cap_linux_immutable", "cap_net_bind_service", "cap_net_broadcast",
    "cap_net_admin",       "cap_net_raw",        "cap_ipc_lock",        "cap_ipc_owner",
    "cap_sys_module",      "cap_sys_rawio",      "cap_sys_chroot",      "cap_sys_ptrace",
    "cap_sys_pacct",       "cap_sys_admin",      "cap_sys_boot",        "cap_sys_nice",
    "cap_sys_resource",    "cap_sys_time",       "cap_sys_tty_config",  "cap_mknod",
    "cap_lease",           "cap_audit_write",    "cap_audit_control",   "cap_setfcap",
    "cap_mac_override",    "cap_mac_admin",      "cap_syslog",          "cap_wake_alarm",
    "cap_block_suspend",   "cap_audit_read",     "cap_perfmon",         "cap_bpf",
    "cap_checkpoint_restore"};
constexpr int kKnownCapabilities = sizeof kCapabilityNames / sizeof kCapabilityNames[0];

// The highest capability this kernel knows.
int last_capability() {
  std::ifstream in("/proc/sys/kernel/cap_last_cap");
  int last = -1;
  if (in >> last && last >= 0 && last < 64) return last;
  return kKnownCapabilities - 1;
}

}  // namespace

std::string forbid_core_dumps() {
  std::string problems;
  const rlimit no_core{0, 0};
  if (::setrlimit(RLIMIT_CORE, &no_core) != 0) problems = std::string("RLIMIT_CORE 0: ") + std::strerror(errno);
  if (::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0)
    problems += (problems.empty() ? "" : "; ") + std::string("PR_SET_DUMPABLE 0: ") + std::strerror(errno);
  return problems;
}

std::string Privileges::effective_names() const {
  const auto name_of = [](int c) -> std::string { return c < kKnownCapabilities ? kCapabilityNames[c] : "cap_" + std::to_string(c); };
  const int last = last_capability();
  std::string held, missing;
  int held_count = 0;
  for (int c = 0; c <= last; ++c) {
    std::string& list = has(c) ? held : missing;
    if (has(c)) ++held_count;
    list += (list.empty() ? "" : ",") + name_of(c);
  }
  if (held.empty()) return "none";
  // Root's set is long; what it lacks says more.
  if (missing.empty()) return "all";
  if (held_count > last + 1 - held_count) return "all except " + missing;
  return held;
}

Privileges current_privileges() {
  Privileges p;
  p.uid = ::getuid();
  p.euid = ::geteuid();
  p.gid = ::getgid();
  p.egid = ::getegid();
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3] = {};
  if (::syscall(SYS_capget, &header, data) == 0) {
    p.effective = data[0].effective | (std::uint64_t{data[1].effective} << 32);
    p.permitted = data[0].permitted | (std::uint64_t{data[1].permitted} << 32);
  }
  for (int c = 0; c <= last_capability(); ++c)
    if (::prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, c, 0, 0) == 1) p.ambient |= 1ULL << c;
  return p;
}

unsigned unprivileged_port_start() {
  std::ifstream in("/proc/sys/net/ipv4/ip_unprivileged_port_start");
  unsigned start = 1024;
  if (!(in >> start)) return 1024;
  return start;
}

}  // namespace tapsec::core
