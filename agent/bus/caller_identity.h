// Who is calling, from what the caller cannot change after it connected
// (dbus/API.md, "How tapsec identifies you"):
//
// - uid and groups: what the bus daemon recorded when the connection was
//   made (GetConnectionCredentials: UnixUserID, UnixGroupIDs). A setgid
//   program the caller execs later changes none of it.
// - systemd unit and cgroup: read from /proc at the caller's first call,
//   through a pidfd of the connection's process that is checked to be still
//   alive after the read (so the pid named that process throughout). They
//   count only if that process runs as the bus's uid; once it has exited
//   (its start time no longer matches) they are forgotten, as its pid may
//   name a stranger next.
//
// The primary group is not among what the bus records, so it is never used.
#pragma once

#include <systemd/sd-bus.h>

#include <string>
#include <variant>

#include "agent/bus/backend.h"

namespace tapsec::bus {

struct CallerRecord {
  CallerCredentials credentials;
  // The process unit and cgroup were read from: its pid and start time
  // (clock ticks since boot), which together never name another process.
  // No descriptor is kept: a caller must not cost the agent one.
  pid_t process = 0;
  std::uint64_t process_start = 0;
};

// Asks the bus daemon about `unique_name` (one blocking round trip) and
// reads unit and cgroup through a pinned pidfd. A caller the daemon cannot
// name a uid for is refused.
std::variant<CallerRecord, BusError> identify_caller(sd_bus* bus, const std::string& unique_name);

// Before each use of a cached record: forgets unit and cgroup once that
// process has exited.
void recheck_caller(CallerRecord& record);

}  // namespace tapsec::bus
