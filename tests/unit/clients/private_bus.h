// A private dbus-daemon for one test program, in a temporary directory.
#pragma once

#include <sys/types.h>

#include <string>

namespace tapsec::testing {

class PrivateBus {
 public:
  PrivateBus() = default;
  PrivateBus(const PrivateBus&) = delete;
  PrivateBus& operator=(const PrivateBus&) = delete;
  ~PrivateBus();

  // Starts dbus-daemon; false (with why()) when it cannot run here.
  bool start();
  const std::string& address() const { return address_; }
  const std::string& why() const { return why_; }

 private:
  std::string dir_;
  std::string address_;
  std::string why_;
  pid_t pid_ = -1;
};

}  // namespace tapsec::testing
