// The agent's IKE sockets: UDP on the IKE port and on the NAT-T port, both
// bypassing IPsec policies; the NAT-T socket also hands ESP in UDP to the
// kernel. Datagrams carry the local address they arrived on (IP_PKTINFO)
// and leave from the local address the engine chose. IPv4 for now.
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>

#include "agent/core/reactor.h"
#include "agent/core/unique_fd.h"
#include "agent/engines/ikev2/types.h"

namespace tapsec::state {

class IkeSockets {
 public:
  using Receiver = std::function<void(const ikev2::Endpoint& local, const ikev2::Endpoint& remote,
                                      std::span<const std::uint8_t> datagram)>;

  IkeSockets(core::Reactor& reactor, Receiver receiver);
  ~IkeSockets();
  IkeSockets(const IkeSockets&) = delete;
  IkeSockets& operator=(const IkeSockets&) = delete;

  // Binds both ports on every IPv4 address. esp_in_udp: let the kernel take
  // ESP off the NAT-T socket (needs ESP in the kernel).
  bool open(std::uint16_t ike_port, std::uint16_t nat_t_port, bool esp_in_udp, std::string* error);
  // Sends from local (its port picks the socket; the NAT-T socket adds the
  // non-ESP marker). Failures are logged, as UDP loss would be.
  void send(const ikev2::Endpoint& local, const ikev2::Endpoint& remote, std::span<const std::uint8_t> datagram);

  std::uint16_t ike_port() const { return ike_port_; }
  std::uint16_t nat_t_port() const { return nat_t_port_; }
  std::uint64_t received_not_ike() const { return received_not_ike_; }

 private:
  void drain(int fd, bool nat_t);

  core::Reactor& reactor_;
  Receiver receiver_;
  core::UniqueFd ike_fd_, nat_t_fd_;
  core::Reactor::Id ike_watch_ = 0, nat_t_watch_ = 0;
  std::uint16_t ike_port_ = 0, nat_t_port_ = 0;
  std::uint64_t received_not_ike_ = 0;
};

// The local address the routing table would use to reach `remote`.
std::optional<ikev2::IpAddress> route_source_address(const ikev2::IpAddress& remote);

// The IPv4 or IPv6 address of a resolved socket address (port dropped).
std::optional<ikev2::IpAddress> address_of(const sockaddr_storage& address);

}  // namespace tapsec::state
