// A private dbus-daemon for one test process: its own config in a temporary
// directory, stopped (by pid) when the object goes away.
#pragma once

#include <sys/types.h>

#include <string>

namespace tapsec::test {

class PrivateBus {
 public:
  // `extra_config` is inserted into <busconfig> after the permissive default
  // policy (e.g. <include> lines). Check ok() / error() afterwards.
  explicit PrivateBus(const std::string& extra_config = "", bool permissive_default_policy = true);
  ~PrivateBus();
  PrivateBus(const PrivateBus&) = delete;
  PrivateBus& operator=(const PrivateBus&) = delete;

  bool ok() const { return !address_.empty(); }
  const std::string& error() const { return error_; }
  const std::string& address() const { return address_; }
  const std::string& directory() const { return directory_; }

 private:
  std::string directory_;
  std::string address_;
  std::string error_;
  pid_t pid_ = -1;
};

}  // namespace tapsec::test
