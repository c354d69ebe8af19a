// The agent's state and the work behind every D-Bus call: policy decisions,
// handshakes, handing keys to the kernel (or to the userspace fallback), and
// the associations that result.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "agent/bus/backend.h"
#include "agent/core/quota.h"
#include "agent/core/reactor.h"
#include "agent/core/resolver.h"
#include "agent/engines/tls/tls_engine.h"
#include "agent/kernel/capability.h"
#include "agent/kernel/socket_info.h"
#include "agent/kernel/socket_locator.h"
#include "agent/state/ike_service.h"
#include "agent/state/wg_service.h"
#include "agent/state/tls_handshake.h"
#include "agent/state/kernel_relay.h"
#include "agent/state/userspace_channel.h"
#include "tapsec/policy.h"

namespace tapsec::state {

struct AgentOptions {
  std::string policy_dir = "/etc/tapsec/policy.d";
  std::uint32_t session_cache_capacity = 1024;
  // How often kernel-offloaded associations are checked for having been
  // closed by their application.
  std::chrono::milliseconds liveness_interval{2000};
  IkeOptions ike;
  WgOptions wireguard;
  // Bounds on what callers may have in progress (dbus/API.md, "Limits").
  // Handshakes: TLS handshakes of SecureSocket and Connect. Connects: those
  // still looking the host up or connecting.
  core::Quota<uid_t>::Limits handshakes{.total = 256, .per_key = 32};
  core::Quota<uid_t>::Limits connects{.total = 128, .per_key = 16};
  core::Resolver::Limits resolver;
  // Whether the agent can take a socket back from the application that
  // holds it (pidfd_getfd, which needs CAP_SYS_PTRACE): without it,
  // direct-socket TLS is refused, since its key update, termination and key
  // expiry could not reach the socket.
  bool may_take_back_sockets = true;
};

class Agent : public bus::Backend {
 public:
  Agent(core::Reactor& reactor, AgentOptions options, kernel::KernelCapabilities capabilities);
  ~Agent() override;

  // Loads (or reloads) the policy; on error the previous policy stays.
  bool load_policy(std::string* error);

  // bus::Backend
  void set_publisher(bus::Publisher* publisher) override;
  void secure_socket(const bus::CallerCredentials& caller, core::UniqueFd fd, const std::string& role,
                     bus::SecurityProperties props, bus::SecureCompletion done) override;
  void connect(const bus::CallerCredentials& caller, const std::string& host, std::uint16_t port,
               bus::SecurityProperties props, bus::SecureCompletion done) override;
  std::vector<std::uint64_t> association_ids() const override;
  std::optional<bus::AssociationInfo> association(std::uint64_t id) const override;
  std::optional<bus::BusError> update_keys(const bus::CallerCredentials& caller, std::uint64_t id,
                                           bool request_peer) override;
  std::variant<std::vector<std::uint8_t>, bus::BusError> export_keying_material(
      const bus::CallerCredentials& caller, std::uint64_t id, const std::string& label,
      const std::vector<std::uint8_t>& context, std::uint32_t length) override;
  std::optional<bus::BusError> terminate(const bus::CallerCredentials& caller, std::uint64_t id) override;
  std::uint32_t flush_session_cache(const bus::CallerCredentials& caller) override;
  bool may_observe(const bus::CallerCredentials& caller, uid_t owner) const override;
  void establish_tunnel(const bus::CallerCredentials& caller, const std::string& peer, bus::TunnelProperties props,
                        std::function<void(TunnelResult)> done) override;
  std::vector<bus::TunnelInfo> tunnels() const override;
  std::variant<std::string, bus::BusError> public_key(const std::string& identity) override;
  bus::ManagerInfo manager_info() const override;

 private:
  struct Association;
  struct PendingHandshake;
  struct PendingConnect;

  // Everything needed to run a TLS handshake on a connected socket.
  using RequestQuota = core::Quota<uid_t>;

  struct TlsRequest {
    bus::CallerCredentials caller;
    core::UniqueFd fd;
    std::string role;
    bus::SecurityProperties props;
    std::string host;  // what the application named, or the peer address
    std::uint16_t port = 0;
    bus::SecureCompletion done;
    kernel::SocketInfo socket;  // addresses and inode of the TCP socket
    // Held from the moment the request is accepted until its handshake ends;
    // Connect takes it before it opens a connection it would then refuse.
    RequestQuota::Slot handshake_slot;
  };

  // Whether policy grants `caller` an administrative operation
  // (MatchOperation=).
  bool granted(const bus::CallerCredentials& caller, const char* operation) const;
  // The caller, with what policy lets it do to others' associations.
  bus::CallerCredentials with_grants(const bus::CallerCredentials& caller) const;
  std::optional<bus::BusError> refuse_unsupported_protocols(TlsRequest& request) const;
  // The policy's decision on a TLS request to `address` (an IP literal, or
  // "" with address_pending while the host is still a name).
  policy::Decision decide(const TlsRequest& request, const std::string& address, bool address_pending) const;
  void deny(TlsRequest& request, const policy::Decision& decision) const;
  std::optional<bus::BusError> refuse_over_limit(const std::optional<RequestQuota::Refusal>& refusal,
                                                 const RequestQuota& quota, uid_t uid, const char* what,
                                                 const char* option) const;
  // Takes a handshake slot for the request unless it holds one.
  std::optional<bus::BusError> reserve_handshake(TlsRequest& request);
  void start_tls(TlsRequest request);
  void connect_allowed_addresses(std::uint64_t id, core::Resolver::Addresses addresses);
  void connect_next_address(std::uint64_t id);
  void fail_connect(std::uint64_t id, const char* error_name, std::string message);
  void finish_handshake(std::uint64_t id, const HandshakeFailure* failure);
  std::variant<tls::Settings, bus::BusError> build_settings(const TlsRequest& request,
                                                            const policy::Decision& decision);
  // direct-socket without the means to take the socket back.
  std::optional<bus::BusError> refuse_direct_socket(const bus::SecurityProperties& props) const;
  std::optional<bus::BusError> check_offload_possible(const bus::SecurityProperties& props,
                                                      const policy::Decision& decision) const;
  void validate_with_application(const bus::CallerCredentials& caller, const std::string& validator,
                                 const std::string& server_name, std::vector<std::vector<std::uint8_t>> chain,
                                 std::function<void(bool, std::string)> done);
  std::optional<bus::BusError> authorize(const bus::CallerCredentials& caller, const Association& association,
                                         const char* action) const;
  // Follows a KeyUpdate the peer sent on a kTLS socket, if one is waiting
  // at the head of the stream or was already taken by the application.
  enum class PeerKeyUpdate { None, Followed, FollowedAndAsked };
  std::variant<PeerKeyUpdate, bus::BusError> follow_peer_key_update(Association& a, int fd);
  void remove_association(std::uint64_t id, const std::string& reason);
  // The kTLS socket of an association, found again in its holder's fd
  // table; follows it when the application handed it to another process.
  kernel::Result<core::UniqueFd> borrow_socket(Association& a) const;
  bool adopt_new_holder(Association& a) const;
  void check_liveness();

  core::Reactor& reactor_;
  AgentOptions options_;
  kernel::KernelCapabilities capabilities_;
  policy::Policy policy_;
  bus::Publisher* publisher_ = nullptr;

  std::map<std::string, std::shared_ptr<const tls::Credentials>> credentials_;
  std::shared_ptr<tls::SessionCache> session_cache_;
  std::shared_ptr<tls::TicketKeys> ticket_keys_;

  std::uint64_t next_id_ = 1;
  core::Resolver resolver_;  // before the requests that hold its lookups
  RequestQuota handshake_quota_;
  RequestQuota connect_quota_;
  std::map<std::uint64_t, std::unique_ptr<PendingHandshake>> handshakes_;
  std::map<std::uint64_t, std::unique_ptr<PendingConnect>> connects_;
  std::map<std::uint64_t, std::unique_ptr<Association>> associations_;
  core::Reactor::Id liveness_timer_ = 0;
  std::unique_ptr<IkeService> ike_;  // after next_id_: it allocates association ids
  std::unique_ptr<WgService> wireguard_;
};

}  // namespace tapsec::state
