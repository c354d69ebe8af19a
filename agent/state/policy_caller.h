// The policy's view of a bus caller.
#pragma once

#include "agent/bus/backend.h"
#include "tapsec/policy.h"

namespace tapsec::state {

inline policy::Caller policy_caller(const bus::CallerCredentials& caller) {
  return policy::Caller{caller.uid, caller.gid, caller.supplementary_gids, caller.pid, caller.unit, caller.cgroup};
}

}  // namespace tapsec::state
