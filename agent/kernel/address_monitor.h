// Tells when this host's addresses or routes change (rtnetlink multicast),
// so the agent can move IKE SAs to a new path (MOBIKE). It reports that
// something changed, not what: the agent then asks the routing table.
#pragma once

#include <cstdint>
#include <span>

#include "agent/core/unique_fd.h"
#include "agent/kernel/result.h"

namespace tapsec::kernel {

// True if one datagram of the subscription holds an address, route or link
// change. The kernel's bytes are walked as netlink messages; a truncated or
// malformed tail ends the walk (what came before it still counts).
bool holds_path_change(std::span<const std::uint8_t> datagram);

class AddressMonitor {
 public:
  // Subscribes to IPv4/IPv6 address and route changes and link state.
  static Result<AddressMonitor> open();
  int fd() const { return fd_.get(); }
  // Reads everything queued without blocking; true if any of it was an
  // address, route or link change (an overrun counts as a change).
  bool drain();

 private:
  explicit AddressMonitor(core::UniqueFd fd) : fd_(std::move(fd)) {}
  core::UniqueFd fd_;
};

}  // namespace tapsec::kernel
