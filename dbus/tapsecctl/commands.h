// tapsecctl's subcommands.
#pragma once

#include <ostream>

#include "dbus/tapsecctl/args.h"

namespace tapsec::ctl {

constexpr int kExitSuccess = 0;
constexpr int kExitFailure = 1;  // the command failed (or: policy denied)
constexpr int kExitUsage = 2;    // bad command line (or: policy check error)

// Runs one parsed invocation; normal output to out, diagnostics to err.
int run(const Invocation& invocation, std::ostream& out, std::ostream& err);

// `policy check`: evaluates the policy locally. 0 allowed, 1 denied, 2 error.
int run_policy_check(const PolicyCheckOptions& options, bool json, std::ostream& out, std::ostream& err);

}  // namespace tapsec::ctl
