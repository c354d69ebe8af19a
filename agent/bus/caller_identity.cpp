#include "agent/bus/caller_identity.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string_view>

#include "agent/bus/errors.h"
#include "agent/bus/sd_bus_ref.h"
#include "agent/core/log.h"
#include "tapsec/policy.h"

namespace tapsec::bus {
namespace {

struct DaemonCredentials {
  bool has_uid = false;
  uid_t uid = 0;
  pid_t pid = 0;
  bool has_groups = false;
  std::vector<gid_t> groups;
  core::UniqueFd process_fd;  // ProcessFD, where the daemon offers it
};

// Reads the a{sv} of GetConnectionCredentials; unknown keys are skipped.
int read_daemon_credentials(sd_bus_message* reply, DaemonCredentials& out) {
  int r = sd_bus_message_enter_container(reply, 'a', "{sv}");
  if (r < 0) return r;
  while ((r = sd_bus_message_enter_container(reply, 'e', "sv")) > 0) {
    const char* key = nullptr;
    if ((r = sd_bus_message_read_basic(reply, 's', &key)) < 0) return r;
    std::string_view name = key;
    if (name == "UnixUserID" || name == "ProcessID") {
      std::uint32_t value = 0;
      if ((r = sd_bus_message_read(reply, "v", "u", &value)) < 0) return r;
      if (name == "UnixUserID") {
        out.has_uid = true;
        out.uid = value;
      } else {
        out.pid = static_cast<pid_t>(value);
      }
    } else if (name == "UnixGroupIDs") {
      if ((r = sd_bus_message_enter_container(reply, 'v', "au")) < 0) return r;
      const void* data = nullptr;
      std::size_t size = 0;
      if ((r = sd_bus_message_read_array(reply, 'u', &data, &size)) < 0) return r;
      const auto* gids = static_cast<const std::uint32_t*>(data);
      out.groups.assign(gids, gids + size / sizeof(std::uint32_t));
      out.has_groups = true;
      if ((r = sd_bus_message_exit_container(reply)) < 0) return r;
    } else if (name == "ProcessFD") {
      int fd = -1;
      if ((r = sd_bus_message_read(reply, "v", "h", &fd)) < 0) return r;
      out.process_fd.reset(::fcntl(fd, F_DUPFD_CLOEXEC, 3));
    } else {
      if ((r = sd_bus_message_skip(reply, "v")) < 0) return r;
    }
    if ((r = sd_bus_message_exit_container(reply)) < 0) return r;
  }
  if (r < 0) return r;
  return sd_bus_message_exit_container(reply);
}

bool process_exited(int pidfd) {
  pollfd p{pidfd, POLLIN, 0};
  return ::poll(&p, 1, 0) != 0;  // readable (or an error) once it has exited
}

// The pid a pidfd names, from its fdinfo ("Pid:\t1234"); 0 if unknown.
pid_t pid_of(int pidfd) {
  std::ifstream info("/proc/self/fdinfo/" + std::to_string(pidfd));
  std::string line;
  while (std::getline(info, line)) {
    if (line.rfind("Pid:", 0) == 0) return static_cast<pid_t>(std::atoi(line.c_str() + 4));
  }
  return 0;
}

// Field 22 of /proc/PID/stat: when the process started; 0 if it is gone.
std::uint64_t start_time_of(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  auto end_of_name = text.rfind(')');  // the name may hold spaces and ')'
  if (end_of_name == std::string::npos) return 0;
  std::istringstream fields(text.substr(end_of_name + 2));
  std::string field;
  for (int i = 3; i <= 22 && fields >> field; ++i) {
    if (i == 22) return std::strtoull(field.c_str(), nullptr, 10);
  }
  return 0;
}

// Unit and cgroup of the pinned process, or why they cannot be trusted.
std::string read_unit_and_cgroup(int pidfd, pid_t pid, uid_t bus_uid, CallerRecord& record) {
  CallerCredentials& caller = record.credentials;
  std::uint64_t started = start_time_of(pid);
  CredsRef creds;
  int r = sd_bus_creds_new_from_pid(creds.out(), pid,
                                    SD_BUS_CREDS_UID | SD_BUS_CREDS_EUID | SD_BUS_CREDS_SUID | SD_BUS_CREDS_FSUID |
                                        SD_BUS_CREDS_UNIT | SD_BUS_CREDS_CGROUP);
  if (r < 0) return std::string("cannot read the process: ") + std::strerror(-r);
  // Only now is it known that the pid still named the pinned process while
  // /proc was read.
  if (process_exited(pidfd) || started == 0) return "the connection's process has exited";
  uid_t ids[4] = {};
  int got[4] = {sd_bus_creds_get_uid(creds.get(), &ids[0]), sd_bus_creds_get_euid(creds.get(), &ids[1]),
                sd_bus_creds_get_suid(creds.get(), &ids[2]), sd_bus_creds_get_fsuid(creds.get(), &ids[3])};
  for (int i = 0; i < 4; ++i) {
    if (got[i] < 0) return "cannot read the process's user ids";
    if (ids[i] != bus_uid)
      return "pid " + std::to_string(pid) + " runs as uid " + std::to_string(ids[i]) + ", not the connection's uid " +
             std::to_string(bus_uid) + " (its process is gone and the pid reused, or it runs a setuid program)";
  }
  const char* text = nullptr;
  std::string unit, cgroup;
  if (sd_bus_creds_get_unit(creds.get(), &text) >= 0 && text) unit = text;
  if (sd_bus_creds_get_cgroup(creds.get(), &text) >= 0 && text) cgroup = text;
  caller.unit = std::move(unit);
  caller.cgroup = std::move(cgroup);
  record.process = pid;
  record.process_start = started;
  return {};
}

}  // namespace

std::variant<CallerRecord, BusError> identify_caller(sd_bus* bus, const std::string& unique_name) {
  MessageRef reply;
  sd_bus_error failure = SD_BUS_ERROR_NULL;
  int r = sd_bus_call_method(bus, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                             "GetConnectionCredentials", &failure, reply.out(), "s", unique_name.c_str());
  std::string why = failure.message ? failure.message : std::strerror(-r);
  sd_bus_error_free(&failure);
  if (r < 0)
    return error::make(error::kPolicyDenied, "refused: the bus daemon did not say who the caller is (" + why + ")");
  DaemonCredentials daemon;
  if ((r = read_daemon_credentials(reply.get(), daemon)) < 0 || !daemon.has_uid)
    return error::make(error::kPolicyDenied, "refused: the bus daemon reported no uid for the caller");

  CallerRecord record;
  CallerCredentials& caller = record.credentials;
  caller.unique_name = unique_name;
  caller.uid = daemon.uid;
  caller.gid = policy::kNoPrimaryGroup;
  caller.supplementary_gids = std::move(daemon.groups);
  if (!daemon.has_groups)
    core::log::notice("the bus daemon records no groups for callers; MatchGroup rules will not match",
                      {{"caller", unique_name}});

  std::string unknown;
  core::UniqueFd pidfd;
  if (daemon.process_fd) {
    pidfd = std::move(daemon.process_fd);
    caller.pid = pid_of(pidfd.get());
  } else if (daemon.pid > 0) {
    caller.pid = daemon.pid;
    pidfd.reset(static_cast<int>(::syscall(SYS_pidfd_open, daemon.pid, 0)));
    if (!pidfd) unknown = std::string("cannot pin its process: ") + std::strerror(errno);
  } else {
    unknown = "the bus daemon reported no process";
  }
  if (unknown.empty() && caller.pid <= 0) unknown = "the bus daemon's process descriptor names no process";
  if (unknown.empty()) unknown = read_unit_and_cgroup(pidfd.get(), caller.pid, caller.uid, record);
  if (!unknown.empty()) {
    core::log::notice("caller's unit and cgroup are unknown; MatchUnit and MatchCgroup rules will not match it",
                      {{"caller", unique_name}, {"uid", std::to_string(caller.uid)}, {"reason", unknown}});
  }
  return record;
}

void recheck_caller(CallerRecord& record) {
  if (record.process == 0 || start_time_of(record.process) == record.process_start) return;
  record.process = 0;
  if (record.credentials.unit.empty() && record.credentials.cgroup.empty()) return;
  core::log::notice("caller's process has exited; its unit and cgroup no longer count",
                    {{"caller", record.credentials.unique_name}, {"unit", record.credentials.unit}});
  record.credentials.unit.clear();
  record.credentials.cgroup.clear();
}

}  // namespace tapsec::bus
