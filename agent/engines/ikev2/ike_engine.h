// The IKEv2 engine (RFC 7296 with RFC 4555 MOBIKE, RFC 7383 fragmentation,
// RFC 7427 signatures): every IKE SA the agent runs, as initiator and as
// responder. Pure: datagrams and commands go in with the current time,
// datagrams to send and events come out. No sockets, no clock, no kernel:
// Child SA keys leave as ChildSaInstall events for the XFRM installer, and
// inbound ESP SPIs come from an allocator the caller provides (the kernel's
// ALLOCSPI in the agent, a counter in tests).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include "agent/engines/ikev2/auth.h"
#include "agent/engines/ikev2/crypto.h"
#include "agent/engines/ikev2/message.h"
#include "agent/engines/ikev2/types.h"

namespace tapsec::ikev2 {

using Clock = std::chrono::steady_clock;
using TimePoint = Clock::time_point;

enum class Mode { Tunnel, Transport };

// Soft limits start a rekey, hard limits end the SA (0 = no limit).
struct Lifetime {
  std::uint32_t rekey_seconds = 0;
  std::uint32_t life_seconds = 0;
  std::uint64_t rekey_bytes = 0, life_bytes = 0;
  std::uint64_t rekey_packets = 0, life_packets = 0;
};

struct ChildConfig {
  std::string name;
  Mode mode = Mode::Tunnel;
  std::vector<TrafficSelector> local_ts, remote_ts;  // empty = our/their outer address
  std::vector<Proposal> esp_proposals = default_esp_proposals();
  // Group for PFS in CREATE_CHILD_SA (0 = none); the initial Child SA of
  // IKE_AUTH never has its own key exchange.
  std::uint16_t rekey_group = group::kNone;
  Lifetime lifetime{3600, 3960, 0, 0, 0, 0};  // rekey after 1 h, hard 1 h 6 min
  std::uint32_t replay_window = 32;
};

struct RetransmitSettings {
  std::chrono::milliseconds initial_timeout{1000};
  double backoff = 1.8;
  unsigned tries = 5;  // retransmits after the first send; then the IKE SA is dead
};

// One connection: how to set up an IKE SA with a peer and its Child SAs.
struct IkeConfig {
  std::string name;
  std::vector<Proposal> ike_proposals = default_ike_proposals();
  Identification local_id;
  LocalCredentials local_credentials;
  PeerRequirements peer;  // expected_id also selects the config as responder
  std::vector<ChildConfig> children;
  Lifetime ike_lifetime{14400, 0, 0, 0, 0, 0};  // IKE SA rekey after 4 h
  std::chrono::seconds dpd_interval{30};         // 0 = no liveness checks
  RetransmitSettings retransmit;
  bool mobike = true;
  bool fragmentation = true;
  std::size_t fragment_size = 1280;  // largest IKE datagram before fragmenting
  bool force_udp_encapsulation = false;
  bool allow_export = false;  // SSKE: export_keying_material() allowed
};

// Chooses configs when we respond: at IKE_SA_INIT only addresses are known
// (peer_id null); at IKE_AUTH the peer's ID picks the final config.
class ConfigSelector {
 public:
  virtual ~ConfigSelector() = default;
  virtual std::shared_ptr<const IkeConfig> select(const Endpoint& local, const Endpoint& remote,
                                                  const Identification* peer_id) = 0;
  // At IKE_AUTH: every config that may answer this peer and ID, best first.
  // A pre-shared key and a certificate config may share both, so the engine
  // takes the first whose PeerRequirements method is the one of the peer's
  // AUTH payload (else the first, whose check then says why it fails). By
  // default the one config select() gives.
  virtual std::vector<std::shared_ptr<const IkeConfig>> candidates(const Endpoint& local, const Endpoint& remote,
                                                                   const Identification& peer_id) {
    auto config = select(local, remote, &peer_id);
    if (!config) return {};
    return {std::move(config)};
  }
};

// Hands out inbound ESP SPIs that are unique on this host (nullopt = none left).
using SpiAllocator = std::function<std::optional<std::uint32_t>(const Endpoint& local, const Endpoint& remote)>;

using IkeSaId = std::uint64_t;    // stable across IKE SA rekeys
using ChildSaId = std::uint64_t;  // stable across Child SA rekeys

// ---- output ----

struct SendDatagram {
  Endpoint local, remote;
  Bytes data;  // an IKE message; on port 4500 the caller adds the 4-byte non-ESP marker
};

// Which SAs of a pair a ChildSaInstall puts in the kernel. The responder of
// a Child SA rekey installs the inbound SA at once and the outbound one only
// when the initiator deletes the old pair: by then the initiator reads the
// new SA, so no packet goes out under an SA the peer cannot read yet.
enum class InstallPart { Both, Inbound, Outbound };

// Install a Child SA pair in the kernel. For a rekey the old pair stays
// installed until ChildSaRemove for its SPIs (make-before-break). The keys
// of the part not installed are empty.
struct ChildSaInstall {
  IkeSaId ike_sa = 0;
  ChildSaId child = 0;
  std::string config_name;
  Mode mode = Mode::Tunnel;
  std::uint32_t inbound_spi = 0, outbound_spi = 0;
  AlgorithmSuite suite;
  SecretBytes inbound_encryption, inbound_integrity;
  SecretBytes outbound_encryption, outbound_integrity;
  std::vector<TrafficSelector> local_ts, remote_ts;  // as narrowed
  Endpoint local, remote;                            // outer addresses
  bool udp_encapsulation = false;                    // NAT-T: ESP in UDP (ports from local/remote)
  Lifetime lifetime;
  std::uint32_t replay_window = 32;
  bool is_rekey = false;
  std::uint64_t epoch = 0;  // 0 for the first SA pair of this child, +1 per rekey
  InstallPart part = InstallPart::Both;
  // false for the pair of our rekey that lost a collision: installed only to
  // read what the peer sends with it until our Delete; the child's current
  // pair stays the peer's.
  bool current = true;
};

struct ChildSaRemove {
  IkeSaId ike_sa = 0;
  ChildSaId child = 0;
  std::uint32_t inbound_spi = 0, outbound_spi = 0;
  Endpoint local, remote;
  bool child_closed = false;  // true: the logical child is gone, not just rekeyed away
  std::string reason;
};

struct IkeSaUp {
  IkeSaId ike_sa = 0;
  std::string config_name;
  bool initiator = false;
  AlgorithmSuite suite;
  Identification local_id, peer_id;
  std::string peer_description;  // from verify_auth
  Endpoint local, remote;
  bool nat_detected_local = false, nat_detected_remote = false;
  bool mobike = false;
  std::uint64_t epoch = 0;  // 0 first, +1 per IKE SA rekey (then it is a rekey, not a new SA)
};

struct IkeSaDown {
  IkeSaId ike_sa = 0;
  bool failed = false;  // false for an orderly DELETE
  std::string reason;   // "deleted by peer", "peer not responding", "AUTHENTICATION_FAILED", ...
};

// Our or the peer's addresses changed (MOBIKE UPDATE_SA_ADDRESSES or NAT
// mapping change): the caller moves the installed SAs and policies.
struct PathChange {
  IkeSaId ike_sa = 0;
  Endpoint old_local, old_remote, new_local, new_remote;
  bool udp_encapsulation = false;
};

// Something an operator would want to see counted (malformed input and
// the like). Not an error of any SA.
struct Dropped {
  std::string reason;
  Endpoint remote;
};

using Event = std::variant<SendDatagram, ChildSaInstall, ChildSaRemove, IkeSaUp, IkeSaDown, PathChange, Dropped>;

// ---- state, for the agent's association objects ----

struct ChildSaState {
  ChildSaId id = 0;
  std::string config_name;
  Mode mode = Mode::Tunnel;
  std::uint32_t inbound_spi = 0, outbound_spi = 0;
  AlgorithmSuite suite;
  std::vector<TrafficSelector> local_ts, remote_ts;
  std::uint64_t epoch = 0;
  TimePoint established{};
  bool rekeying = false;
};

struct IkeSaState {
  IkeSaId id = 0;
  std::string config_name;
  bool initiator = false;
  std::string state;  // "connecting", "established", "rekeying", "deleting"
  std::uint64_t initiator_spi = 0, responder_spi = 0;
  AlgorithmSuite suite;
  Identification local_id, peer_id;
  std::string peer_description;
  Endpoint local, remote;
  std::uint64_t epoch = 0;
  TimePoint established{};
  std::vector<ChildSaState> children;
};

struct EngineCounters {
  std::uint64_t received = 0, sent = 0, retransmitted = 0;
  std::uint64_t dropped_malformed = 0, dropped_unknown_spi = 0, dropped_authentication = 0;
  std::uint64_t cookies_sent = 0, half_open = 0;
};

class IkeEngine {
 public:
  struct Options {
    std::shared_ptr<ConfigSelector> selector;  // null: we never respond
    SpiAllocator allocate_spi;
    // Above this many half-open responder SAs, IKE_SA_INIT needs a cookie (SAV).
    std::size_t cookie_threshold = 64;
    std::chrono::seconds half_open_timeout{30};
  };
  explicit IkeEngine(Options options);
  ~IkeEngine();
  IkeEngine(const IkeEngine&) = delete;
  IkeEngine& operator=(const IkeEngine&) = delete;

  // A datagram that arrived on an IKE port (non-ESP marker already removed).
  void receive(const Endpoint& local, const Endpoint& remote, std::span<const std::uint8_t> datagram,
               TimePoint now);
  // Runs timers that are due; call at next_deadline() or later.
  void on_timer(TimePoint now);
  std::optional<TimePoint> next_deadline() const;
  std::vector<Event> take_events();

  // Starts an IKE SA with the config's children. `trigger` (from an XFRM
  // ACQUIRE) narrows the first child to the packet that triggered it.
  IkeSaId initiate(std::shared_ptr<const IkeConfig> config, const Endpoint& local, const Endpoint& remote,
                   TimePoint now, std::optional<TrafficSelector> trigger_local = std::nullopt,
                   std::optional<TrafficSelector> trigger_remote = std::nullopt);
  // Commands on existing SAs; false if the id is unknown or the SA cannot
  // do it right now (the command is then not queued).
  bool rekey_child(IkeSaId sa, ChildSaId child, TimePoint now);   // XFRM soft expire (KU)
  bool delete_child(IkeSaId sa, ChildSaId child, TimePoint now);  // XFRM hard expire / Terminate
  bool rekey_ike(IkeSaId sa, TimePoint now);
  bool close(IkeSaId sa, TimePoint now);              // INFORMATIONAL Delete of the IKE SA (CT)
  bool check_liveness(IkeSaId sa, TimePoint now);     // DPD now
  bool update_local_address(IkeSaId sa, const Endpoint& new_local, TimePoint now);  // MOBIKE (ME)
  // Finds the child by an SA's SPI (either direction), for XFRM EXPIRE.
  std::optional<std::pair<IkeSaId, ChildSaId>> find_child_by_spi(std::uint32_t spi) const;

  // SSKE: derive_export from SK_d; nullopt when the config forbids it.
  std::optional<SecretBytes> export_keying_material(IkeSaId sa, std::string_view label, std::size_t length) const;

  std::vector<IkeSaState> sas() const;
  std::optional<IkeSaState> sa(IkeSaId id) const;
  EngineCounters counters() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tapsec::ikev2
