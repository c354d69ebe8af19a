// The agent's face on the bus: org.tapsec1.Manager at /org/tapsec1, one
// org.tapsec1.Association object per association, the ObjectManager, the
// signals, and calls back into applications (org.tapsec1.PeerValidator).
//
// BusService parses and type-checks every call, reads the caller's
// credentials from the bus and hands the request to a Backend; it turns the
// Backend's results into replies and named errors (dbus/API.md). It never
// blocks the loop except for the credential query to the bus daemon.
// All methods run on the thread that processes `bus`.
#pragma once

#include <systemd/sd-bus.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <initializer_list>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <variant>
#include <vector>

#include "agent/bus/backend.h"
#include "agent/bus/caller_identity.h"
#include "agent/bus/sd_bus_ref.h"

namespace tapsec::bus {

inline constexpr const char* kBusName = "org.tapsec1";
inline constexpr const char* kManagerPath = "/org/tapsec1";
inline constexpr const char* kManagerInterface = "org.tapsec1.Manager";
inline constexpr const char* kAssociationPrefix = "/org/tapsec1/association";
inline constexpr const char* kAssociationInterface = "org.tapsec1.Association";
inline constexpr const char* kPeerValidatorInterface = "org.tapsec1.PeerValidator";

// "/org/tapsec1/association/<id>".
std::string association_path(std::uint64_t id);
// The id in an association object path, or nullopt if `path` is not one.
std::optional<std::uint64_t> association_id_from_path(std::string_view path);

class BusService : public Publisher {
 public:
  struct Options {
    // Request the well-known name org.tapsec1 in start(). Off when the name
    // is taken elsewhere (e.g. by the caller before start()).
    bool request_name = true;
    // How long an application's PeerValidator may take to answer.
    std::chrono::microseconds validator_timeout = std::chrono::seconds(5);
  };
  // Called once the bus daemon answered the name request: acquired is false
  // and error says why if the name could not be had.
  using NameCallback = std::function<void(bool acquired, const std::string& error)>;

  BusService(sd_bus* bus, Backend& backend);
  BusService(sd_bus* bus, Backend& backend, Options options);
  ~BusService() override;
  BusService(const BusService&) = delete;
  BusService& operator=(const BusService&) = delete;

  // Registers the objects and (asynchronously) requests the bus name; also
  // makes this the backend's publisher. Returns 0 or a negative errno.
  int start();
  void on_name_result(NameCallback callback) { name_callback_ = std::move(callback); }

  // Publisher
  void association_added(std::uint64_t id) override;
  void association_removed(std::uint64_t id) override;
  void key_expiring(std::uint64_t id, std::uint64_t remaining_records) override;
  void keys_updated(std::uint64_t id, std::uint64_t epoch) override;
  void path_changed(std::uint64_t id, const std::string& old_path, const std::string& new_path) override;
  void terminated(std::uint64_t id, const std::string& reason) override;
  void validate_peer(const std::string& unique_name, const std::string& object_path, const std::string& protocol,
                     const std::string& server_name, const std::vector<std::vector<std::uint8_t>>& chain_der,
                     std::function<void(bool accept, std::string reason)> done) override;

  // Number of PeerValidator calls waiting for an answer (for tests).
  std::size_t pending_validations() const { return pending_validations_.size(); }

 private:
  struct PendingValidation;
  struct Handlers;  // the sd-bus callbacks (bus_service.cpp)
  friend struct Handlers;

  void finish_validation(std::uint64_t token, bool accept, std::string reason);
  std::variant<CallerCredentials, BusError> caller_credentials(sd_bus_message* m);
  // Whether the caller of the message being handled may see associations
  // of `owner`; false when the caller cannot be identified.
  bool current_caller_may_observe(sd_bus* bus, uid_t owner);
  std::optional<uid_t> owner_of(std::uint64_t id);
  // Sends one signal about association `id` to each connection that has
  // called the agent and may see it, never as a broadcast: who may not see
  // an association gets nothing of its signals either.
  void send_to_watchers(std::uint64_t id, const char* path, const char* interface, const char* member,
                        const std::function<int(sd_bus_message*)>& append);
  void forget_caller(const std::string& unique_name);
  void emit_properties_changed(std::uint64_t id, std::initializer_list<const char*> properties);

  static constexpr std::size_t kCallerCacheCapacity = 4096;
  std::unordered_map<std::string, CallerRecord> callers_;  // by unique name; also the watchers
  std::deque<std::string> caller_order_;                        // oldest first (may hold departed ones)
  std::unordered_map<std::uint64_t, uid_t> owners_;            // of the announced associations

  BusRef bus_;
  Backend& backend_;
  Options options_;
  NameCallback name_callback_;
  bool started_ = false;
  std::vector<SlotRef> slots_;
  SlotRef name_slot_;
  std::uint64_t next_validation_token_ = 1;
  std::map<std::uint64_t, std::unique_ptr<PendingValidation>> pending_validations_;

  // sd-bus asks for each property on its own, also when it builds one
  // GetAll reply or InterfacesAdded signal; the association is read once
  // per message being built (reading it may mean netlink queries).
  struct InfoCache {
    const sd_bus_message* message = nullptr;
    std::uint64_t id = 0;
    std::chrono::steady_clock::time_point read_at{};
    std::optional<AssociationInfo> info;
  };
  const std::optional<AssociationInfo>& association_for(const sd_bus_message* message, std::uint64_t id);
  InfoCache info_cache_;
};

}  // namespace tapsec::bus
