// Built when the policy library is not part of the build.
#include "dbus/tapsecctl/commands.h"

namespace tapsec::ctl {

int run_policy_check(const PolicyCheckOptions&, bool, std::ostream&, std::ostream& err) {
  err << "tapsecctl: this build has no policy support (tapsec_policy was not built)\n";
  return kExitUsage;
}

}  // namespace tapsec::ctl
