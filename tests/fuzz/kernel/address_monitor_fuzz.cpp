// libFuzzer target for the address monitor's reading of rtnetlink
// notifications (agent/kernel/address_monitor.h): the input is one datagram
// of the subscription. Besides memory errors, the answer must agree with the
// kernel's own walk of netlink messages (NLMSG_OK / NLMSG_NEXT).
#include <linux/rtnetlink.h>

#include <cstdint>
#include <cstdlib>
#include <algorithm>
#include <span>
#include <vector>

#include "agent/kernel/address_monitor.h"
#include "tests/fuzz/kernel/netlink_walk.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::uint8_t> datagram(data, size);
  bool expected = false;
  tapsec::fuzz::for_each_netlink_message(datagram, [&](const nlmsghdr* header) {
    switch (header->nlmsg_type) {
      case RTM_NEWADDR: case RTM_DELADDR: case RTM_NEWROUTE: case RTM_DELROUTE: case RTM_NEWLINK: case RTM_DELLINK:
        expected = true;
        break;
      default:
        break;
    }
  });
  if (tapsec::kernel::holds_path_change(datagram) != expected) abort();
  // The same bytes at an odd address: the kernel's buffer is aligned, ours
  // need not be.
  std::vector<std::uint8_t> shifted(size + 1);
  std::copy(datagram.begin(), datagram.end(), shifted.begin() + 1);
  if (tapsec::kernel::holds_path_change(std::span(shifted).subspan(1)) != expected) abort();
  return 0;
}
