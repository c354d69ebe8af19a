#include "agent/state/ike_sockets.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>

#include "agent/core/log.h"
#include "agent/kernel/xfrm.h"

namespace tapsec::state {
namespace {

ikev2::Endpoint endpoint_of(const sockaddr_in& sa) {
  ikev2::Endpoint e;
  e.address.family = AF_INET;
  std::memcpy(e.address.bytes.data(), &sa.sin_addr, 4);
  e.port = ntohs(sa.sin_port);
  return e;
}

sockaddr_in sockaddr_of(const ikev2::Endpoint& e) {
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(e.port);
  std::memcpy(&sa.sin_addr, e.address.bytes.data(), 4);
  return sa;
}

core::UniqueFd bind_udp(std::uint16_t port, std::string* error) {
  core::UniqueFd fd(::socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) {
    *error = std::string("socket: ") + std::strerror(errno);
    return {};
  }
  int one = 1;
  setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  setsockopt(fd.get(), IPPROTO_IP, IP_PKTINFO, &one, sizeof one);
  // IKE must never be caught by the SAs it negotiates.
  if (auto bypass = kernel::xfrm::bypass_socket_policy(fd.get(), AF_INET); !bypass)
    core::log::warning("IKE socket cannot bypass IPsec policies", {{"error", bypass.error()}});
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(port);
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) < 0) {
    *error = "cannot bind UDP port " + std::to_string(port) + ": " + std::strerror(errno);
    return {};
  }
  return fd;
}

}  // namespace

IkeSockets::IkeSockets(core::Reactor& reactor, Receiver receiver)
    : reactor_(reactor), receiver_(std::move(receiver)) {}

IkeSockets::~IkeSockets() {
  reactor_.unwatch(ike_watch_);
  reactor_.unwatch(nat_t_watch_);
}

bool IkeSockets::open(std::uint16_t ike_port, std::uint16_t nat_t_port, bool esp_in_udp, std::string* error) {
  ike_fd_ = bind_udp(ike_port, error);
  if (!ike_fd_) return false;
  nat_t_fd_ = bind_udp(nat_t_port, error);
  if (!nat_t_fd_) return false;
  if (esp_in_udp) {
    if (auto encap = kernel::xfrm::enable_esp_in_udp(nat_t_fd_.get()); !encap)
      core::log::warning("NAT-T socket cannot pass ESP in UDP to the kernel", {{"error", encap.error()}});
  }
  ike_port_ = ike_port;
  nat_t_port_ = nat_t_port;
  ike_watch_ = reactor_.watch(ike_fd_.get(), POLLIN, [this](std::uint32_t) { drain(ike_fd_.get(), false); });
  nat_t_watch_ = reactor_.watch(nat_t_fd_.get(), POLLIN, [this](std::uint32_t) { drain(nat_t_fd_.get(), true); });
  return true;
}

void IkeSockets::drain(int fd, bool nat_t) {
  // IKE messages are small, but IKE_AUTH with certificates may reach
  // several KiB unfragmented.
  std::array<std::uint8_t, 65536> buffer;
  for (int budget = 64; budget > 0; --budget) {
    sockaddr_in from{};
    alignas(cmsghdr) std::array<char, CMSG_SPACE(sizeof(in_pktinfo))> control{};
    iovec iov{buffer.data(), buffer.size()};
    msghdr msg{};
    msg.msg_name = &from;
    msg.msg_namelen = sizeof from;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    ssize_t n = ::recvmsg(fd, &msg, MSG_DONTWAIT);
    if (n < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
        core::log::warning("IKE socket read failed", {{"errno", std::strerror(errno)}});
      return;
    }
    ikev2::Endpoint local;
    local.address.family = AF_INET;
    local.port = nat_t ? nat_t_port_ : ike_port_;
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c))
      if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO) {
        in_pktinfo info{};
        std::memcpy(&info, CMSG_DATA(c), sizeof info);
        std::memcpy(local.address.bytes.data(), &info.ipi_addr, 4);
      }
    std::span<const std::uint8_t> datagram(buffer.data(), static_cast<std::size_t>(n));
    if (nat_t) {
      // A single 0xff is a NAT keepalive; IKE carries four zero bytes
      // (the non-ESP marker) in front.
      if (datagram.size() == 1 && datagram[0] == 0xff) continue;
      if (datagram.size() < 4 || datagram[0] || datagram[1] || datagram[2] || datagram[3]) {
        ++received_not_ike_;
        continue;
      }
      datagram = datagram.subspan(4);
    }
    receiver_(local, endpoint_of(from), datagram);
  }
}

void IkeSockets::send(const ikev2::Endpoint& local, const ikev2::Endpoint& remote,
                      std::span<const std::uint8_t> datagram) {
  bool nat_t = local.port == nat_t_port_;
  int fd = nat_t ? nat_t_fd_.get() : ike_fd_.get();
  if (fd < 0 || remote.address.family != AF_INET) return;
  static constexpr std::uint8_t kNonEspMarker[4] = {0, 0, 0, 0};
  std::array<iovec, 2> iov{};
  std::size_t count = 0;
  if (nat_t) iov[count++] = {const_cast<std::uint8_t*>(kNonEspMarker), sizeof kNonEspMarker};
  iov[count++] = {const_cast<std::uint8_t*>(datagram.data()), datagram.size()};
  sockaddr_in to = sockaddr_of(remote);
  alignas(cmsghdr) std::array<char, CMSG_SPACE(sizeof(in_pktinfo))> control{};
  msghdr msg{};
  msg.msg_name = &to;
  msg.msg_namelen = sizeof to;
  msg.msg_iov = iov.data();
  msg.msg_iovlen = count;
  bool any_local = std::all_of(local.address.bytes.begin(), local.address.bytes.begin() + 4,
                               [](std::uint8_t b) { return b == 0; });
  if (!any_local) {
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = IPPROTO_IP;
    c->cmsg_type = IP_PKTINFO;
    c->cmsg_len = CMSG_LEN(sizeof(in_pktinfo));
    in_pktinfo info{};
    std::memcpy(&info.ipi_spec_dst, local.address.bytes.data(), 4);
    std::memcpy(CMSG_DATA(c), &info, sizeof info);
  }
  if (::sendmsg(fd, &msg, MSG_DONTWAIT) < 0)
    core::log::warning("IKE send failed",
                       {{"to", remote.to_string()}, {"from", local.to_string()}, {"errno", std::strerror(errno)}});
}

std::optional<ikev2::IpAddress> route_source_address(const ikev2::IpAddress& remote) {
  if (remote.family != AF_INET) return std::nullopt;
  core::UniqueFd fd(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!fd) return std::nullopt;
  sockaddr_in to = sockaddr_of({remote, 500});
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&to), sizeof to) < 0) return std::nullopt;
  sockaddr_in local{};
  socklen_t length = sizeof local;
  if (::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&local), &length) < 0) return std::nullopt;
  return endpoint_of(local).address;
}

std::optional<ikev2::IpAddress> address_of(const sockaddr_storage& address) {
  ikev2::IpAddress ip;
  ip.family = address.ss_family;
  if (address.ss_family == AF_INET) {
    std::memcpy(ip.bytes.data(), &reinterpret_cast<const sockaddr_in&>(address).sin_addr, 4);
  } else if (address.ss_family == AF_INET6) {
    std::memcpy(ip.bytes.data(), &reinterpret_cast<const sockaddr_in6&>(address).sin6_addr, 16);
  } else {
    return std::nullopt;
  }
  return ip;
}

}  // namespace tapsec::state
