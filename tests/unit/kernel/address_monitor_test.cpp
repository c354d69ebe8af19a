// The address monitor's reading of rtnetlink datagrams (no socket needed).
#include <gtest/gtest.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "agent/kernel/address_monitor.h"

namespace {

using tapsec::kernel::holds_path_change;

// Appends one message of `type` with `body` payload bytes, padded as the kernel pads.
void append(std::vector<std::uint8_t>& datagram, std::uint16_t type, std::size_t body = 8) {
  nlmsghdr header{};
  header.nlmsg_len = static_cast<std::uint32_t>(NLMSG_LENGTH(body));
  header.nlmsg_type = type;
  const std::size_t at = datagram.size();
  datagram.resize(at + NLMSG_SPACE(body), 0);
  std::memcpy(datagram.data() + at, &header, sizeof header);
}

TEST(AddressMonitorParsing, EveryAddressRouteAndLinkChangeCounts) {
  for (std::uint16_t type : {RTM_NEWADDR, RTM_DELADDR, RTM_NEWROUTE, RTM_DELROUTE, RTM_NEWLINK, RTM_DELLINK}) {
    std::vector<std::uint8_t> datagram;
    append(datagram, type);
    EXPECT_TRUE(holds_path_change(datagram)) << "type " << type;
  }
}

TEST(AddressMonitorParsing, OtherMessagesDoNot) {
  std::vector<std::uint8_t> datagram;
  append(datagram, RTM_NEWNEIGH);
  append(datagram, NLMSG_DONE);
  EXPECT_FALSE(holds_path_change(datagram));
  EXPECT_FALSE(holds_path_change({}));
}

TEST(AddressMonitorParsing, AChangeAfterOtherMessagesCounts) {
  std::vector<std::uint8_t> datagram;
  append(datagram, RTM_NEWNEIGH, 13);  // unaligned length: the next message starts padded
  append(datagram, RTM_DELROUTE);
  EXPECT_TRUE(holds_path_change(datagram));
}

TEST(AddressMonitorParsing, TruncatedOrMalformedTailsEndTheWalk) {
  std::vector<std::uint8_t> datagram;
  append(datagram, RTM_NEWADDR);
  datagram.resize(datagram.size() - 1);  // its length now runs past the datagram
  EXPECT_FALSE(holds_path_change(datagram));

  std::vector<std::uint8_t> zero_length;
  append(zero_length, RTM_NEWNEIGH);
  append(zero_length, RTM_NEWADDR);
  zero_length[0] = zero_length[1] = zero_length[2] = zero_length[3] = 0;  // the first claims length 0
  EXPECT_FALSE(holds_path_change(zero_length));
}

}  // namespace
