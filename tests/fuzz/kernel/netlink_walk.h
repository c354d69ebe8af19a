// The walk every netlink reader in agent/kernel does over one received
// datagram (NLMSG_OK / NLMSG_NEXT), for the fuzz targets: the input is copied
// into an aligned buffer first, as recv() fills one.
#pragma once

#include <linux/netlink.h>

#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

namespace tapsec::fuzz {

template <typename Visit>
void for_each_netlink_message(std::span<const std::uint8_t> datagram, Visit&& visit) {
  std::vector<nlmsghdr> aligned(datagram.size() / sizeof(nlmsghdr) + 1);
  if (!datagram.empty()) std::memcpy(aligned.data(), datagram.data(), datagram.size());
  int remaining = static_cast<int>(datagram.size());
  for (auto* header = aligned.data(); NLMSG_OK(header, remaining); header = NLMSG_NEXT(header, remaining))
    visit(header);
}

}  // namespace tapsec::fuzz
