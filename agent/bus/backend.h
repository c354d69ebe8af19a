// The seam between the D-Bus layer (agent/bus) and the agent's state
// (agent/state). The bus layer parses and type-checks calls, reads the
// caller's credentials and maps results to D-Bus replies and errors; the
// backend decides and does the work. Events flow back through Publisher.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "agent/core/unique_fd.h"

namespace tapsec::bus {

// From sd_bus_query_sender_creds: who is calling.
struct CallerCredentials {
  std::string unique_name;  // ":1.42"
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> supplementary_gids;
  pid_t pid = 0;
  std::string unit;    // systemd unit, "" if not known
  std::string cgroup;  // "" if not known
  // Set by the backend from policy (MatchOperation=manage): may update the
  // keys of and terminate other users' associations.
  bool manages_others = false;
};

// The a{sv} props of SecureSocket/Connect, type-checked (see dbus/API.md).
struct SecurityProperties {
  std::vector<std::string> protocols;  // empty = ["tls"]
  std::string identity;
  std::string psk;
  std::map<std::string, std::vector<std::string>> algorithms;
  std::vector<std::string> versions;
  std::vector<std::string> alpn;
  std::string server_name;
  bool session_cache = true;
  std::string peer_validation = "system";
  std::vector<std::string> peer_pins;
  std::string validator;  // object path on the caller's connection, "" = none
  bool require_peer_certificate = false;
  bool wants_export = false;
  std::string offload = "preferred";
  // Kernel offload: hand the application the kTLS socket itself rather
  // than a relayed socketpair end (records that are not data then reach it).
  bool direct_socket = false;
  std::uint32_t timeout_ms = 10000;
};

// A named D-Bus error: name is the full error name, e.g.
// "org.tapsec1.Error.PolicyDenied"; message is for a person.
struct BusError {
  std::string name;
  std::string message;
};

inline constexpr const char* kErrorPrefix = "org.tapsec1.Error.";

struct SecuredSocket {
  core::UniqueFd fd;
  std::uint64_t association_id = 0;
};
using SecureResult = std::variant<SecuredSocket, BusError>;
using SecureCompletion = std::function<void(SecureResult)>;

// Everything org.tapsec1.Association exposes as properties.
struct AssociationInfo {
  std::uint64_t id = 0;
  std::string protocol, version, cipher, group, role;
  std::string local_identity, peer_identity, server_name, alpn;
  bool resumed = false;
  std::string offload;  // "kernel" | "userspace"
  std::uint64_t key_epoch = 0;
  std::uint64_t bytes_sent = 0, bytes_received = 0;
  std::uint64_t records_sent = 0, records_received = 0;
  std::uint64_t expires_at_usec = 0;
  std::string state;  // "established" | "terminated"
  std::string local_address, peer_address;
  uid_t owner_uid = 0;
  std::uint64_t created_at_usec = 0;
  // IPsec (empty for TLS): an IKE SA is the parent of its Child SAs.
  std::uint64_t parent_id = 0;  // 0 = none
  std::string tunnel_name;
  std::string mode;             // "tunnel" | "transport"
  std::vector<std::string> local_traffic_selectors, remote_traffic_selectors;
  std::string inbound_spi, outbound_spi;  // hex, "0xc2a3e1f0" (IKE: 16 hex digits each)
  std::string encapsulation;              // "" | "udp"
  std::uint64_t packets_sent = 0, packets_received = 0;
  // WireGuard (empty for TLS and IPsec): a link ("interface") is the parent
  // of its peers ("peer").
  std::string interface_name;
  std::string public_key, peer_public_key;  // base64
  std::uint16_t listen_port = 0;
  std::uint64_t last_handshake_usec = 0;  // 0 = never
  std::string preshared_key;  // a peer's PSK: "exchanged" | "static" | "none"
};

// The a{sv} props of EstablishTunnel (see dbus/API.md).
struct TunnelProperties {
  std::vector<std::string> protocols;  // empty = ["ikev2"]
  std::string identity, psk;
  std::string local_id, remote_id;
  std::vector<std::string> local_ts, remote_ts;
  std::string mode;  // "" = the tunnel's or "tunnel"
  std::map<std::string, std::vector<std::string>> algorithms;  // "ike", "esp"
  std::uint32_t timeout_ms = 30000;
};

// A tunnel defined in policy, for ListTunnels.
struct TunnelInfo {
  std::string name, protocol, peer, start;
  std::string state;          // "down" | "connecting" | "up" | "trap"
  std::uint64_t association_id = 0;  // the IKE SA, 0 when down
};

struct ManagerInfo {
  std::string version;
  std::vector<std::string> kernel_features;
  std::uint32_t session_cache_entries = 0;
  std::uint32_t session_cache_capacity = 0;
  // Counters an operator watches, e.g. "ike-dropped-malformed".
  std::map<std::string, std::uint64_t> statistics;
};

// Implemented by the bus layer; the backend calls it to publish events and
// to reach back into applications.
class Publisher {
 public:
  virtual ~Publisher() = default;
  virtual void association_added(std::uint64_t id) = 0;
  virtual void association_removed(std::uint64_t id) = 0;
  virtual void key_expiring(std::uint64_t id, std::uint64_t remaining_records) = 0;
  virtual void keys_updated(std::uint64_t id, std::uint64_t epoch) = 0;
  virtual void path_changed(std::uint64_t id, const std::string& old_path, const std::string& new_path) = 0;
  virtual void terminated(std::uint64_t id, const std::string& reason) = 0;
  // Calls org.tapsec1.PeerValidator.ValidatePeer on `object_path` of the
  // application `unique_name`; done(accept, reason) runs on the loop. A
  // failed or timed-out call is a rejection with a reason.
  virtual void validate_peer(const std::string& unique_name, const std::string& object_path,
                             const std::string& protocol, const std::string& server_name,
                             const std::vector<std::vector<std::uint8_t>>& chain_der,
                             std::function<void(bool accept, std::string reason)> done) = 0;
};

// Implemented by agent/state.
class Backend {
 public:
  virtual ~Backend() = default;
  virtual void set_publisher(Publisher* publisher) = 0;

  virtual void secure_socket(const CallerCredentials& caller, core::UniqueFd fd, const std::string& role,
                             SecurityProperties props, SecureCompletion done) = 0;
  virtual void connect(const CallerCredentials& caller, const std::string& host, std::uint16_t port,
                       SecurityProperties props, SecureCompletion done) = 0;

  virtual std::vector<std::uint64_t> association_ids() const = 0;
  virtual std::optional<AssociationInfo> association(std::uint64_t id) const = 0;

  virtual std::optional<BusError> update_keys(const CallerCredentials& caller, std::uint64_t id,
                                              bool request_peer) = 0;
  virtual std::variant<std::vector<std::uint8_t>, BusError> export_keying_material(
      const CallerCredentials& caller, std::uint64_t id, const std::string& label,
      const std::vector<std::uint8_t>& context, std::uint32_t length) = 0;
  virtual std::optional<BusError> terminate(const CallerCredentials& caller, std::uint64_t id) = 0;

  // Starts a tunnel (policy name, or a peer address with props) and calls
  // done with the IKE SA's association id once it is established.
  using TunnelResult = std::variant<std::uint64_t, BusError>;
  virtual void establish_tunnel(const CallerCredentials& caller, const std::string& peer, TunnelProperties props,
                                std::function<void(TunnelResult)> done) {
    done(BusError{std::string(kErrorPrefix) + "NotSupported", "this agent runs no tunnels"});
  }
  virtual std::vector<TunnelInfo> tunnels() const { return {}; }
  // The base64 public key of a WireGuard identity (GetPublicKey).
  virtual std::variant<std::string, BusError> public_key(const std::string& identity) {
    return BusError{std::string(kErrorPrefix) + "NoSuchIdentity", "no WireGuard identity named \"" + identity + "\""};
  }

  // Whether `caller` may see an association that `owner` made: its object,
  // its properties and its signals. The owner and root may; a backend with
  // a policy may grant it to others (dbus/API.md, "Who sees what").
  virtual bool may_observe(const CallerCredentials& caller, uid_t owner) const {
    return caller.uid == 0 || caller.uid == owner;
  }

  virtual std::uint32_t flush_session_cache(const CallerCredentials& caller) = 0;
  // The writable Manager property SessionCacheCapacity; the bus layer lets
  // only root get here. Backends without a resizable cache keep the default.
  virtual std::optional<BusError> set_session_cache_capacity(const CallerCredentials& caller,
                                                             std::uint32_t capacity) {
    return BusError{std::string(kErrorPrefix) + "NotSupported", "the session cache capacity cannot be changed"};
  }
  virtual ManagerInfo manager_info() const = 0;
};

}  // namespace tapsec::bus
