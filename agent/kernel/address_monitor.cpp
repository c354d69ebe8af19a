#include "agent/kernel/address_monitor.h"

#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <sys/socket.h>

#include <array>
#include <cerrno>
#include <cstring>

namespace tapsec::kernel {

Result<AddressMonitor> AddressMonitor::open() {
  core::UniqueFd fd(::socket(AF_NETLINK, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, NETLINK_ROUTE));
  if (!fd) return Result<AddressMonitor>::failure("rtnetlink socket: " + describe_errno(errno), errno);
  sockaddr_nl address{};
  address.nl_family = AF_NETLINK;
  address.nl_groups = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE;
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&address), sizeof address) < 0)
    return Result<AddressMonitor>::failure("rtnetlink subscribe: " + describe_errno(errno), errno);
  return Result<AddressMonitor>::success(AddressMonitor(std::move(fd)));
}

bool holds_path_change(std::span<const std::uint8_t> datagram) {
  bool changed = false;
  std::size_t offset = 0;
  while (datagram.size() - offset >= sizeof(nlmsghdr)) {
    nlmsghdr header;  // copied: the bytes need not be aligned
    std::memcpy(&header, datagram.data() + offset, sizeof header);
    if (header.nlmsg_len < sizeof header || header.nlmsg_len > datagram.size() - offset) break;
    switch (header.nlmsg_type) {
      case RTM_NEWADDR: case RTM_DELADDR: case RTM_NEWROUTE: case RTM_DELROUTE: case RTM_NEWLINK: case RTM_DELLINK:
        changed = true;
        break;
      default:
        break;
    }
    const std::size_t step = NLMSG_ALIGN(header.nlmsg_len);
    if (step >= datagram.size() - offset) break;
    offset += step;
  }
  return changed;
}

bool AddressMonitor::drain() {
  bool changed = false;
  std::array<std::uint8_t, 16384> buffer;
  for (;;) {
    ssize_t n = ::recv(fd_.get(), buffer.data(), buffer.size(), MSG_DONTWAIT);
    if (n < 0) {
      // ENOBUFS: the kernel dropped notifications; assume the worst.
      if (errno == ENOBUFS) changed = true;
      if (errno == EINTR || errno == ENOBUFS) continue;
      return changed;
    }
    if (holds_path_change(std::span(buffer.data(), static_cast<std::size_t>(n)))) changed = true;
  }
}

}  // namespace tapsec::kernel
