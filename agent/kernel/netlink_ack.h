// Netlink acknowledgements shared by the XFRM and WireGuard channels.
// Private to agent/kernel.
#pragma once

#include <linux/netlink.h>

#include <string>

namespace tapsec::kernel {

// What an NLMSG_ERROR message says: 0 (acknowledged) or the errno, and the
// kernel's words. A message too short for its nlmsgerr, or with an error
// code that is no negated errno, reads as EPROTO.
struct Acknowledgement {
  int error_number = 0;
  std::string kernel_message;
};
Acknowledgement read_acknowledgement(const nlmsghdr* header);

// The kernel's own words in an error acknowledgement (the extended ACK's
// NLMSGERR_ATTR_MSG), or "" when it sent none.
std::string extended_ack_text(const nlmsghdr* header);

}  // namespace tapsec::kernel
