// A Backend that records what the bus layer hands it and answers as a test
// tells it to. Its methods run on the server's loop thread; the test thread
// reads the records under the mutex.
#pragma once

#include <sys/socket.h>
#include <sys/stat.h>

#include <map>
#include <mutex>
#include <optional>

#include "agent/bus/backend.h"
#include "agent/core/reactor.h"

namespace tapsec::test {

class FakeBackend : public bus::Backend {
 public:
  enum class SecureMode {
    kReturnSocket,     // complete at once with the received socket
    kReturnLater,      // complete from a later loop iteration
    kFail,             // complete with `failure`
    kDrop,             // never call the completion
    kAskValidator,     // call Publisher::validate_peer first
  };

  struct Received {
    bus::CallerCredentials caller;
    std::string role;
    std::string host;
    std::uint16_t port = 0;
    bus::SecurityProperties props;
    ino_t socket_inode = 0;
    int secure_calls = 0;
    int connect_calls = 0;
    std::optional<std::pair<bool, std::string>> validation;  // what validate_peer answered
    std::vector<std::string> method_log;                     // "UpdateKeys 1 true", ...
    std::uint32_t capacity = 1024;
    std::string tunnel_peer;
    bus::TunnelProperties tunnel_props;
    int tunnel_calls = 0;
  };

  mutable std::mutex mutex;
  SecureMode mode = SecureMode::kReturnSocket;
  bus::BusError failure{"org.tapsec1.Error.PolicyDenied", "policy forbids it"};
  std::vector<std::vector<std::uint8_t>> chain_to_validate = {{0x30, 0x82, 0x01}, {0x30, 0x03}};
  core::Reactor* reactor = nullptr;  // for kReturnLater
  Received received;
  mutable int association_reads = 0;  // Backend::association calls (they may be costly)

  bus::Publisher* publisher() {
    std::lock_guard lock(mutex);
    return publisher_;
  }
  std::size_t association_count() {
    std::lock_guard lock(mutex);
    return associations_.size();
  }
  Received snapshot() {
    std::lock_guard lock(mutex);
    return received;
  }

  // Adds an association as a handshake would; returns its id. Loop thread.
  std::uint64_t add_association(uid_t owner, const std::string& role) {
    std::uint64_t id;
    bus::Publisher* publisher;
    {
      std::lock_guard lock(mutex);
      id = next_id_++;
      bus::AssociationInfo info;
      info.id = id;
      info.protocol = "tls";
      info.version = "TLSv1.3";
      info.cipher = "TLS_AES_128_GCM_SHA256";
      info.group = "X25519";
      info.role = role;
      info.local_identity = "web";
      info.peer_identity = "CN=peer.example";
      info.server_name = "peer.example";
      info.alpn = "h2";
      info.resumed = true;
      info.offload = "userspace";
      info.key_epoch = 0;
      info.bytes_sent = 1000 + id;
      info.bytes_received = 2000 + id;
      info.records_sent = 3;
      info.records_received = 4;
      info.expires_at_usec = 5555;
      info.state = "established";
      info.local_address = "127.0.0.1:1000";
      info.peer_address = "127.0.0.1:2000";
      info.owner_uid = owner;
      info.created_at_usec = 1234567;
      associations_[id] = info;
      publisher = publisher_;
    }
    if (publisher) publisher->association_added(id);
    return id;
  }

  // EstablishTunnel answers with association 77, or with `failure` for the
  // peer "fail"; ListTunnels lists one tunnel that is up and one that is down.
  void establish_tunnel(const bus::CallerCredentials&, const std::string& peer, bus::TunnelProperties props,
                        std::function<void(TunnelResult)> done) override {
    {
      std::lock_guard lock(mutex);
      received.tunnel_peer = peer;
      received.tunnel_props = props;
      ++received.tunnel_calls;
    }
    if (peer == "fail") return done(failure);
    done(std::uint64_t{77});
  }
  std::vector<bus::TunnelInfo> tunnels() const override {
    return {{"to-beta", "ikev2", "192.0.2.2", "boot", "up", 77}, {"anyone", "ikev2", "%any", "none", "down", 0}};
  }

  // Backend
  void set_publisher(bus::Publisher* publisher) override {
    std::lock_guard lock(mutex);
    publisher_ = publisher;
  }

  void secure_socket(const bus::CallerCredentials& caller, core::UniqueFd fd, const std::string& role,
                     bus::SecurityProperties props, bus::SecureCompletion done) override {
    SecureMode current;
    {
      std::lock_guard lock(mutex);
      received.caller = caller;
      received.role = role;
      received.props = props;
      struct stat st{};
      received.socket_inode = fstat(fd.get(), &st) == 0 ? st.st_ino : 0;
      ++received.secure_calls;
      current = mode;
    }
    complete(current, caller, std::move(fd), role, props, std::move(done));
  }

  void connect(const bus::CallerCredentials& caller, const std::string& host, std::uint16_t port,
               bus::SecurityProperties props, bus::SecureCompletion done) override {
    SecureMode current;
    {
      std::lock_guard lock(mutex);
      received.caller = caller;
      received.host = host;
      received.port = port;
      received.props = props;
      ++received.connect_calls;
      current = mode;
    }
    // The agent would connect to host:port; a socketpair end stands in.
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) < 0) {
      done(bus::BusError{"org.tapsec1.Error.Internal", "socketpair failed"});
      return;
    }
    core::UniqueFd ours(pair[0]);
    connect_peer_.reset(pair[1]);
    complete(current, caller, std::move(ours), "client", props, std::move(done));
  }

  std::vector<std::uint64_t> association_ids() const override {
    std::lock_guard lock(mutex);
    std::vector<std::uint64_t> ids;
    for (const auto& [id, info] : associations_) ids.push_back(id);
    return ids;
  }

  std::optional<bus::AssociationInfo> association(std::uint64_t id) const override {
    std::lock_guard lock(mutex);
    ++association_reads;
    auto it = associations_.find(id);
    if (it == associations_.end()) return std::nullopt;
    return it->second;
  }

  std::optional<bus::BusError> update_keys(const bus::CallerCredentials& caller, std::uint64_t id,
                                           bool request_peer) override {
    std::uint64_t epoch;
    bus::Publisher* publisher;
    {
      std::lock_guard lock(mutex);
      received.caller = caller;
      received.method_log.push_back("UpdateKeys " + std::to_string(id) + (request_peer ? " true" : " false"));
      auto it = associations_.find(id);
      if (it == associations_.end()) return bus::BusError{"org.tapsec1.Error.NoSuchAssociation", "gone"};
      epoch = ++it->second.key_epoch;
      publisher = publisher_;
    }
    if (publisher) publisher->keys_updated(id, epoch);
    return std::nullopt;
  }

  std::variant<std::vector<std::uint8_t>, bus::BusError> export_keying_material(
      const bus::CallerCredentials& caller, std::uint64_t id, const std::string& label,
      const std::vector<std::uint8_t>& context, std::uint32_t length) override {
    std::lock_guard lock(mutex);
    received.caller = caller;
    received.method_log.push_back("Export " + std::to_string(id) + " " + label + " " +
                                  std::to_string(context.size()) + " " + std::to_string(length));
    if (label == "denied") return bus::BusError{"org.tapsec1.Error.ExportDenied", "export was not requested"};
    std::vector<std::uint8_t> material(length);
    for (std::uint32_t i = 0; i < length; ++i) material[i] = static_cast<std::uint8_t>(i + context.size());
    return material;
  }

  std::optional<bus::BusError> terminate(const bus::CallerCredentials& caller, std::uint64_t id) override {
    bus::Publisher* publisher;
    {
      std::lock_guard lock(mutex);
      received.caller = caller;
      received.method_log.push_back("Terminate " + std::to_string(id));
      if (!associations_.erase(id)) return bus::BusError{"org.tapsec1.Error.NoSuchAssociation", "gone"};
      publisher = publisher_;
    }
    if (publisher) {
      publisher->terminated(id, "terminated by the application");
      publisher->association_removed(id);
    }
    return std::nullopt;
  }

  std::uint32_t flush_session_cache(const bus::CallerCredentials& caller) override {
    std::lock_guard lock(mutex);
    received.caller = caller;
    received.method_log.push_back("Flush");
    return 7;
  }

  bus::ManagerInfo manager_info() const override {
    std::lock_guard lock(mutex);
    return bus::ManagerInfo{"0.1.0-test", {"ktls", "ktls-rekey"}, 3, received.capacity};
  }

  std::optional<bus::BusError> set_session_cache_capacity(const bus::CallerCredentials& caller,
                                                          std::uint32_t capacity) override {
    std::lock_guard lock(mutex);
    received.capacity = capacity;
    return std::nullopt;
  }

 private:
  void complete(SecureMode current, const bus::CallerCredentials& caller, core::UniqueFd fd,
                const std::string& role, const bus::SecurityProperties& props, bus::SecureCompletion done) {
    switch (current) {
      case SecureMode::kReturnSocket: {
        std::uint64_t id = add_association(caller.uid, role);
        done(bus::SecuredSocket{std::move(fd), id});
        return;
      }
      case SecureMode::kReturnLater: {
        auto shared_fd = std::make_shared<core::UniqueFd>(std::move(fd));
        reactor->post([this, shared_fd, done, uid = caller.uid, role] {
          std::uint64_t id = add_association(uid, role);
          done(bus::SecuredSocket{std::move(*shared_fd), id});
        });
        return;
      }
      case SecureMode::kFail: {
        bus::BusError e;
        {
          std::lock_guard lock(mutex);
          e = failure;
        }
        done(e);
        return;
      }
      case SecureMode::kDrop:
        return;
      case SecureMode::kAskValidator: {
        std::vector<std::vector<std::uint8_t>> chain;
        {
          std::lock_guard lock(mutex);
          chain = chain_to_validate;
        }
        auto shared_fd = std::make_shared<core::UniqueFd>(std::move(fd));
        publisher()->validate_peer(
            caller.unique_name, props.validator, "tls", props.server_name, chain,
            [this, shared_fd, done, uid = caller.uid, role](bool accept, std::string reason) {
              {
                std::lock_guard lock(mutex);
                received.validation = std::make_pair(accept, reason);
              }
              if (!accept) {
                done(bus::BusError{"org.tapsec1.Error.PeerNotValidated", "the application rejected the peer: " + reason});
                return;
              }
              std::uint64_t id = add_association(uid, role);
              done(bus::SecuredSocket{std::move(*shared_fd), id});
            });
        return;
      }
    }
  }

  bus::Publisher* publisher_ = nullptr;
  std::map<std::uint64_t, bus::AssociationInfo> associations_;
  std::uint64_t next_id_ = 1;
  core::UniqueFd connect_peer_;
};

}  // namespace tapsec::test
