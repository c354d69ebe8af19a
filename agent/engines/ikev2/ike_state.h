// Internal state of IkeEngine, shared by the ike_*.cpp files.
//
// An Association is what the agent sees as one IKE SA: its id, config,
// identities and Child SAs survive IKE SA rekeys. Each keyed IKE SA (SPIs,
// keys, message-ID windows) is an IkeSa; an Association has one current
// IkeSa, and superseded ones live on as "retired" until their Delete
// exchange is over. IkeSas are indexed by our own SPI.
#pragma once

#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "agent/engines/ikev2/ike_engine.h"

namespace tapsec::ikev2::detail {

inline constexpr TimePoint kNever = TimePoint::max();
inline constexpr std::size_t kNonceSize = 32;
inline constexpr std::uint16_t kIkePort = 500;
inline constexpr std::uint16_t kNatTraversalPort = 4500;

struct Association;

// One ESP SA pair (inbound and outbound) of a Child SA.
struct SaPair {
  std::uint32_t inbound_spi = 0, outbound_spi = 0;
  AlgorithmSuite suite;
  std::uint64_t epoch = 0;
  TimePoint established{};
};

// The peer's rekey of a child that crossed ours (RFC 7296 §2.8.1); which one
// survives is decided when our own rekey's response arrives.
struct CollidedRekey {
  SaPair pair;
  Bytes nonce_i, nonce_r;  // the peer's Ni, our Nr
};

struct Child {
  ChildSaId id = 0;
  ChildConfig config;
  Mode mode = Mode::Tunnel;
  std::vector<TrafficSelector> local_ts, remote_ts;  // as narrowed
  SaPair current;
  TimePoint rekey_at = kNever, expire_at = kNever;
  bool rekeying = false;  // a rekey of `current` is queued or in flight
  bool deleting = false;  // our Delete of the child is queued or in flight
  std::optional<CollidedRekey> collided;
  // A rekey we answered: the outbound SA of that pair, installed once the
  // peer deletes the old pair (see InstallPart).
  std::optional<ChildSaInstall> held_outbound;
};

// A pair superseded by a rekey: still installed until its Delete exchange
// (make-before-break). `we_delete`: we send the Delete, else the peer does.
struct RetiredPair {
  ChildSaId child = 0;
  SaPair pair;
  bool we_delete = false;
  bool delete_sent = false;
  TimePoint give_up = kNever;  // the peer never deleted it: we do
};

// Work queued on an Association; each needs our request window.
namespace task {
struct CreateChild { ChildConfig config; std::optional<TrafficSelector> trigger_local, trigger_remote; };
struct RekeyChild { ChildSaId child = 0; std::uint32_t inbound_spi = 0; std::uint16_t group_override = 0; };
struct DeleteChild { ChildSaId child = 0; };
struct DeletePair { std::uint32_t inbound_spi = 0; };
struct RekeyIke { std::uint16_t group_override = 0; };
struct DeleteIke {};
struct Liveness {};
struct UpdateAddresses { Endpoint old_local, old_remote; };
}  // namespace task
using Task = std::variant<task::CreateChild, task::RekeyChild, task::DeleteChild, task::DeletePair, task::RekeyIke,
                          task::DeleteIke, task::Liveness, task::UpdateAddresses>;

// A Child SA we proposed and whose response we wait for.
struct PendingChild {
  ChildSaId id = 0;  // 0: a new child; else the child being rekeyed
  ChildConfig config;
  Mode mode = Mode::Tunnel;
  std::uint32_t inbound_spi = 0;
  std::vector<Proposal> proposals;
  std::vector<TrafficSelector> tsi, tsr;  // as we proposed them (ours are TSi)
  std::uint32_t rekeyed_inbound_spi = 0;  // a rekey: the pair it replaces
  Bytes nonce;                            // our Ni (CREATE_CHILD_SA only)
  std::shared_ptr<KeyExchange> kex;       // PFS
};

// What an outstanding request was for.
namespace flight {
struct Init {};
struct Auth { std::optional<PendingChild> child; };
struct CreateChild { PendingChild child; };
struct RekeyIke { std::uint64_t new_spi = 0; Bytes nonce; std::shared_ptr<KeyExchange> kex; std::vector<Proposal> proposals; };
struct DeletePairs { ChildSaId child = 0; std::vector<std::uint32_t> inbound_spis; bool closes_child = false; };
struct DeleteIke {};
struct Liveness {};
struct UpdateAddresses { Endpoint old_local, old_remote; Bytes cookie2; };
}  // namespace flight
using Flight = std::variant<flight::Init, flight::Auth, flight::CreateChild, flight::RekeyIke, flight::DeletePairs,
                            flight::DeleteIke, flight::Liveness, flight::UpdateAddresses>;

struct Outstanding {
  std::uint32_t message_id = 0;
  ExchangeType exchange = ExchangeType::Informational;
  std::vector<Bytes> datagrams;  // several when fragmented
  unsigned retransmits = 0;
  std::chrono::milliseconds timeout{0};
  TimePoint next_send = kNever;
  Flight flight;
};

// RFC 7383 reassembly of one message (window size 1: one per direction).
struct Reassembly {
  std::uint32_t message_id = 0;
  bool response = false;
  ExchangeType exchange = ExchangeType::IkeAuth;
  std::uint16_t total = 0;
  PayloadType first_inner = PayloadType::None;
  std::map<std::uint16_t, Bytes> pieces;
  std::size_t bytes = 0;
  Bytes first_datagram;  // fragment 1 as received, for retransmit detection
  TimePoint deadline = kNever;
};

enum class Phase {
  InitSent,     // initiator: IKE_SA_INIT request out
  HalfOpen,     // responder: IKE_SA_INIT answered, IKE_AUTH awaited
  AuthSent,     // initiator: IKE_AUTH request out
  Established,
  Retired,      // replaced by an IKE SA rekey; waits for its Delete
  Dead,         // gone; kept a little to answer retransmitted requests
};

struct IkeSa {
  Association* assoc = nullptr;  // null once the association is gone
  Phase phase = Phase::InitSent;
  bool initiator = false;  // the original initiator of this keyed IKE SA
  std::uint64_t spi_i = 0, spi_r = 0;
  Endpoint local, remote;
  AlgorithmSuite suite;
  IkeKeys keys;
  std::optional<SkCipher> outbound, inbound;
  Bytes nonce_i, nonce_r;

  // IKE_SA_INIT state.
  std::shared_ptr<KeyExchange> kex;
  Bytes init_request, init_response;  // as sent/received, for the AUTH octets
  Bytes cookie;
  unsigned init_retries = 0;
  Bytes peer_signature_hashes;
  bool peer_fragmentation = false;
  std::size_t fragment_size = 1280;  // used when peer_fragmentation (ours enabled too)
  RetransmitSettings retransmit;

  // Message-ID windows (size 1 each way).
  std::uint32_t next_message_id = 0;
  std::optional<Outstanding> outstanding;
  std::uint32_t expected_request_id = 0;
  std::optional<std::uint32_t> cached_response_id;
  std::vector<Bytes> cached_response;
  Bytes cached_request;  // its request (first fragment): only an exact repeat is answered
  std::optional<Reassembly> reassembly;

  TimePoint expire = kNever;  // half-open, retired or dead
  TimePoint created{};

  std::uint64_t local_spi() const { return initiator ? spi_i : spi_r; }
};

struct Association {
  IkeSaId id = 0;
  std::shared_ptr<const IkeConfig> config;
  IkeSa* current = nullptr;
  std::map<ChildSaId, Child> children;
  std::vector<RetiredPair> retired;
  Identification local_id, peer_id;
  std::string peer_description;
  bool peer_mobike = false, nat_local = false, nat_remote = false;
  bool up = false;  // IkeSaUp was reported
  std::uint64_t epoch = 0;
  TimePoint established{}, rekey_at = kNever, expire_at = kNever, last_heard{};
  std::deque<Task> queue;
  bool ike_rekeying = false;
  bool deleting = false;
  // The peer's IKE SA rekey that crossed ours (the new IkeSa, not yet current).
  IkeSa* collided = nullptr;
  Bytes collided_nonce_i, collided_nonce_r;
  std::optional<TrafficSelector> trigger_local, trigger_remote;

  bool udp_encapsulation() const { return nat_local || nat_remote || (config && config->force_udp_encapsulation); }
};

// ---- functions without engine state (ike_child.cpp, ike_sa.cpp) ----

Bytes spi_bytes32(std::uint32_t spi);
Bytes spi_bytes64(std::uint64_t spi);
std::optional<std::uint32_t> spi_value32(const Bytes& bytes);
std::optional<std::uint64_t> spi_value64(const Bytes& bytes);

// RFC 7296 §2.9: the part of `a` also in `b` (nullopt when none).
std::optional<TrafficSelector> intersect(const TrafficSelector& a, const TrafficSelector& b);
// Every intersection of one of theirs with one of ours, without duplicates.
std::vector<TrafficSelector> narrow(const std::vector<TrafficSelector>& theirs,
                                    const std::vector<TrafficSelector>& ours);
// Each of `selectors` lies inside one of `allowed`.
bool within(const std::vector<TrafficSelector>& selectors, const std::vector<TrafficSelector>& allowed);

// Proposals with our SPI and the key exchange group (0 = none) set.
std::vector<Proposal> with_spi_and_group(const std::vector<Proposal>& proposals, const Bytes& spi,
                                         std::uint16_t group);
// The first key exchange group of a proposal list (0 when none).
std::uint16_t first_group(const std::vector<Proposal>& proposals);
// Whether a group is offered anywhere in the list.
bool offers_group(const std::vector<Proposal>& proposals, std::uint16_t group);
// choose_proposal that prefers proposals containing `ke_group` (the group of
// the peer's KE payload) so no INVALID_KE_PAYLOAD round trip is needed.
std::optional<ChosenProposal> choose_preferring_group(const std::vector<Proposal>& offered,
                                                      const std::vector<Proposal>& supported,
                                                      std::uint16_t ke_group);

template <typename T>
const T* body_of(const Payload& payload) {
  return std::get_if<T>(&payload.body);
}
template <typename T>
const T* find_body(const std::vector<Payload>& payloads, PayloadType type) {
  for (const auto& payload : payloads)
    if (payload.type == type)
      if (const T* body = std::get_if<T>(&payload.body)) return body;
  return nullptr;
}
const NotifyPayload* find_notify(const std::vector<Payload>& payloads, std::uint16_t type);
// The first error notify (type < 16384), if any.
const NotifyPayload* find_error(const std::vector<Payload>& payloads);
bool nonce_size_ok(const Bytes& nonce);
// The smallest of two nonces (as unsigned big-endian numbers).
const Bytes& lower_nonce(const Bytes& a, const Bytes& b);
bool nonce_less(const Bytes& a, const Bytes& b);

template <typename T>
Payload make_payload(PayloadType type, T body) {
  Payload payload;
  payload.type = type;
  payload.body = std::move(body);
  return payload;
}

}  // namespace tapsec::ikev2::detail
