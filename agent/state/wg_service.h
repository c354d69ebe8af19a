// WireGuard in the agent: tunnels from policy ([Tunnel] Protocol=wireguard),
// one WireGuard link each (kernel WireGuard, or wireguard-go where the
// kernel lacks it and policy allows), peers either given by public key or
// learnt from the peer's agent over the authenticated PSK exchange, PSK
// rotation on a schedule, and the observation of handshakes, counters and
// endpoints. Every link and every peer is an association on the bus.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "agent/bus/backend.h"
#include "agent/core/reactor.h"
#include "agent/core/resolver.h"
#include "agent/kernel/capability.h"
#include "agent/state/wg_exchange_link.h"
#include "tapsec/policy.h"

namespace tapsec::state {

struct WgOptions {
  // TCP, for peer agents; open only while a tunnel of the policy exchanges
  // its PSK with the peer's agent. 0: never listen (initiate only).
  std::uint16_t exchange_port = 51821;
  WgExchangeLimits exchange_limits;
  std::string userspace_program = "wireguard-go";
  std::string userspace_socket_dir = "/var/run/wireguard";
  std::chrono::milliseconds poll_interval{1000};  // handshakes, counters, endpoints
  // A peer named by host name is looked up again once its last handshake is
  // this old (WireGuard renews sessions every 120 s of use; 135 s as wg-quick's
  // reresolve-dns does), at most every 30 s.
  std::chrono::seconds stale_after{135};
};

class WgService {
 public:
  using IdAllocator = std::function<std::uint64_t()>;

  // Peer= host names are looked up through `resolver`, which must outlive
  // the service. Every exchange limit must be above 0 (tapsecd bounds each
  // option); std::invalid_argument otherwise. The exchange listener is not
  // opened here: it follows the policy (apply_policy).
  WgService(core::Reactor& reactor, core::Resolver& resolver, WgOptions options,
            kernel::KernelCapabilities capabilities, IdAllocator allocate_id);
  ~WgService();
  WgService(const WgService&) = delete;
  WgService& operator=(const WgService&) = delete;

  void set_publisher(bus::Publisher* publisher);
  // Identities are (re)loaded, Start=boot tunnels brought up; tunnels that
  // are gone from the policy are taken down. The exchange port opens when a
  // tunnel needs it and closes when none does; each such tunnel's TLS
  // identity and trust store are read here, once, for all its connections.
  void apply_policy(const policy::Policy& policy);
  // Deletes every link the agent made.
  void shutdown();

  // `peer`: a WireGuard tunnel of the policy, by name or by its Peer=.
  // Completes once the link is configured and, with an agent exchange, the
  // first PSK is in place; the peer association says "connecting" until
  // WireGuard itself completes a handshake.
  void establish_tunnel(const bus::CallerCredentials& caller, const std::string& peer, bus::TunnelProperties props,
                        std::function<void(bus::Backend::TunnelResult)> done);
  std::vector<bus::TunnelInfo> tunnels() const;
  std::variant<std::string, bus::BusError> public_key(const std::string& identity);

  std::map<std::string, std::uint64_t> statistics() const;
  bool owns(std::uint64_t association_id) const;
  std::vector<std::uint64_t> association_ids() const;
  std::optional<bus::AssociationInfo> association(std::uint64_t id) const;
  std::optional<bus::BusError> update_keys(const bus::CallerCredentials& caller, std::uint64_t id);
  std::optional<bus::BusError> terminate(const bus::CallerCredentials& caller, std::uint64_t id);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tapsec::state
