// IKEv2 in the agent: the IKE sockets (UDP 500 and 4500, bypassing IPsec,
// 4500 also taking ESP in UDP), the pure IKE engine, the XFRM installer and
// its events, tunnels from policy (started at boot, on demand through trap
// policies, or by EstablishTunnel), and one association per IKE SA and per
// Child SA for the bus.
#pragma once

#include <sys/types.h>

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
#include "agent/engines/ikev2/ike_engine.h"
#include "agent/kernel/capability.h"
#include "tapsec/policy.h"

namespace tapsec::state {

struct IkeOptions {
  std::uint16_t ike_port = 500;    // 0: IKE is off
  std::uint16_t nat_t_port = 4500;
  // Why IKE is off when the agent turned it off itself (ike_port 0 for lack
  // of a capability); callers of EstablishTunnel are told this.
  std::string off_reason;
  // When an unanswered request is sent again, and how often before the
  // peer counts as dead (tapsecd --ike-retransmit-timeout-ms, --ike-retransmits).
  ikev2::RetransmitSettings retransmit;
};

class IkeService {
 public:
  // Allocates association ids shared with the rest of the agent.
  using IdAllocator = std::function<std::uint64_t()>;

  // Peer= host names are looked up through `resolver`, which must outlive
  // the service.
  IkeService(core::Reactor& reactor, core::Resolver& resolver, IkeOptions options,
             kernel::KernelCapabilities capabilities, IdAllocator allocate_id);
  ~IkeService();
  IkeService(const IkeService&) = delete;
  IkeService& operator=(const IkeService&) = delete;

  // Opens the sockets and the XFRM channels. On failure IKE stays off and
  // every request says why (the rest of the agent runs on).
  bool start(std::string* error);
  bool running() const;
  void set_publisher(bus::Publisher* publisher);
  // A new policy: configs are rebuilt, boot tunnels started, trap policies
  // installed or removed. Running SAs keep their config until they end.
  void apply_policy(const policy::Policy& policy);
  // Deletes every IKE SA (INFORMATIONAL Delete) and removes the kernel state.
  void shutdown();

  void establish_tunnel(const bus::CallerCredentials& caller, const std::string& peer, bus::TunnelProperties props,
                        std::function<void(bus::Backend::TunnelResult)> done);
  std::vector<bus::TunnelInfo> tunnels() const;

  // "ike-received", "ike-sent", "ike-retransmitted", "ike-dropped-malformed",
  // "ike-dropped-unknown-spi", "ike-dropped-authentication", "ike-cookies-sent",
  // "ike-half-open", "ike-sas", "esp-child-sas", "udp-not-ike".
  std::map<std::string, std::uint64_t> statistics() const;

  bool owns(std::uint64_t association_id) const;
  std::vector<std::uint64_t> association_ids() const;
  std::optional<bus::AssociationInfo> association(std::uint64_t id) const;
  std::optional<bus::BusError> update_keys(const bus::CallerCredentials& caller, std::uint64_t id);
  std::variant<std::vector<std::uint8_t>, bus::BusError> export_keying_material(
      const bus::CallerCredentials& caller, std::uint64_t id, const std::string& label,
      const std::vector<std::uint8_t>& context, std::uint32_t length);
  std::optional<bus::BusError> terminate(const bus::CallerCredentials& caller, std::uint64_t id);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tapsec::state
