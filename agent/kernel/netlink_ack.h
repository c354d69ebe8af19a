// Netlink acknowledgements shared by the XFRM and WireGuard channels.
// Private to agent/kernel.
#pragma once

#include <linux/netlink.h>

#include <string>

namespace tapsec::kernel {

// The kernel's own words in an error acknowledgement (the extended ACK's
// NLMSGERR_ATTR_MSG), or "" when it sent none.
std::string extended_ack_text(const nlmsghdr* header);

}  // namespace tapsec::kernel
