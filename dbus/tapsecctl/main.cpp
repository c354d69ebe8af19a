// tapsecctl: inspect and control tapsecd.
#include <iostream>
#include <string>
#include <vector>

#include "dbus/tapsecctl/args.h"
#include "dbus/tapsecctl/commands.h"

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  const tapsec::ctl::ParseResult parsed = tapsec::ctl::parse_arguments(args);
  if (!parsed.invocation) {
    std::cerr << "tapsecctl: " << parsed.error << "\n";
    return tapsec::ctl::kExitUsage;
  }
  return tapsec::ctl::run(*parsed.invocation, std::cout, std::cerr);
}
