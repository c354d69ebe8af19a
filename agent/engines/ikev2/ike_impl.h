// IkeEngine::Impl: the engine's state and the operations the ike_*.cpp
// files share. ike_engine.cpp: dispatch, timers, cookies, commands;
// ike_sa.cpp: windows, protection, fragments, retransmits, task queue;
// ike_exchanges.cpp: IKE_SA_INIT and IKE_AUTH; ike_child.cpp: Child SA
// negotiation (CREATE_CHILD_SA, traffic selectors); ike_rekey.cpp: IKE SA
// rekeying; ike_informational.cpp: Delete, liveness, MOBIKE.
#pragma once

#include <algorithm>
#include <array>
#include <chrono>
#include <span>
#include <string>
#include <vector>

#include "agent/engines/ikev2/ike_engine.h"
#include "agent/engines/ikev2/ike_state.h"

namespace tapsec::ikev2 {

// How long an SA the peer is expected to delete (a rekeyed-away pair, a
// retired IKE SA) stays before we delete it ourselves: twice the longest a
// peer may retransmit, and a second more.
inline std::chrono::milliseconds retired_grace(const RetransmitSettings& settings) {
  double total = 0, timeout = static_cast<double>(settings.initial_timeout.count());
  for (unsigned i = 0; i <= settings.tries; ++i) {
    total += timeout;
    timeout *= std::max(1.0, settings.backoff);
  }
  return std::chrono::milliseconds{static_cast<std::int64_t>(2 * total) + 1000};
}

struct NatDetection {
  bool present = false;  // the peer sent NAT_DETECTION_*_IP
  bool local = false;    // we are behind a NAT
  bool remote = false;   // the peer is behind a NAT
};

// A responder's verdict on a proposed Child SA.
struct ChildNegotiation {
  std::uint16_t error = 0;  // notify to answer with; 0 = accepted
  Bytes error_data;         // INVALID_KE_PAYLOAD: the group we want
  std::string reason;
  ChildConfig config;
  Mode mode = Mode::Tunnel;
  ChosenProposal chosen;
  std::uint32_t inbound_spi = 0, outbound_spi = 0;
  std::vector<TrafficSelector> tsi, tsr;  // narrowed, as TSi/TSr of the exchange
  std::shared_ptr<KeyExchange> kex;       // ours, when the peer asked for PFS
  std::optional<SecretBytes> shared_secret;
};

struct IkeEngine::Impl {
  explicit Impl(Options opts) : options(std::move(opts)) {}

  Options options;
  std::vector<Event> events;
  EngineCounters counters;
  std::map<std::uint64_t, std::unique_ptr<detail::IkeSa>> sas;  // by our SPI
  std::map<IkeSaId, std::unique_ptr<detail::Association>> associations;
  std::map<std::pair<Endpoint, std::uint64_t>, std::uint64_t> half_open_index;  // (peer, SPIi) -> our SPI
  std::vector<std::unique_ptr<detail::Association>> graveyard;  // freed at the end of each call
  IkeSaId next_ike_id = 1;
  ChildSaId next_child_id = 1;

  // Stateless cookies (RFC 7296 §2.6): the current and the previous secret.
  std::array<Bytes, 2> cookie_secrets;
  std::uint8_t cookie_version = 0;
  TimePoint cookie_secret_born{};

  // ---- ike_engine.cpp ----
  void receive(const Endpoint& local, const Endpoint& remote, std::span<const std::uint8_t> datagram, TimePoint now);
  void on_timer(TimePoint now);
  std::optional<TimePoint> next_deadline() const;
  void drop(const std::string& reason, const Endpoint& remote, std::uint64_t EngineCounters::*counter);
  std::uint64_t new_spi() const;
  detail::IkeSa& add_sa(std::unique_ptr<detail::IkeSa> sa);
  detail::Association& add_association(std::shared_ptr<const IkeConfig> config);
  detail::IkeSa* find_sa(std::uint64_t local_spi);
  detail::Association* find_association(IkeSaId id);
  // An association that can take commands now (established, not closing).
  detail::Association* established_association(IkeSaId id);
  // Ends an association: ChildSaRemove for every installed pair, IkeSaDown.
  void tear_down(detail::Association& assoc, bool failed, const std::string& reason, TimePoint now);
  // Forgets an association and its keyed SAs without reporting anything.
  void discard(detail::Association& assoc, TimePoint now);
  // Keeps a keyed SA a little to answer retransmits, then forgets it.
  void bury(detail::IkeSa& sa, TimePoint now);
  void forget_half_open(detail::IkeSa& sa);
  void sweep(TimePoint now);
  std::size_t half_open_count() const;
  Bytes make_cookie(const Bytes& nonce_i, const IpAddress& peer, std::uint64_t spi_i, std::uint8_t version) const;
  bool cookie_valid(const Bytes& cookie, const Bytes& nonce_i, const IpAddress& peer, std::uint64_t spi_i) const;
  void rotate_cookie_secret(TimePoint now);
  void schedule_child(detail::Child& child, TimePoint now) const;
  void schedule_ike(detail::Association& assoc, TimePoint now) const;
  void fill_state(const detail::Association& assoc, IkeSaState& state) const;

  // ---- ike_sa.cpp ----
  Header header_for(const detail::IkeSa& sa, ExchangeType exchange, bool response, std::uint32_t id) const;
  bool fragmenting(const detail::IkeSa& sa) const;
  std::vector<Bytes> protect(const detail::IkeSa& sa, const Header& header, const std::vector<Payload>& inner) const;
  void transmit(const std::vector<Bytes>& datagrams, const Endpoint& local, const Endpoint& remote);
  const RetransmitSettings& retransmit_settings(const detail::IkeSa& sa) const;
  void send_request(detail::IkeSa& sa, ExchangeType exchange, const std::vector<Payload>& inner, detail::Flight flight,
                    TimePoint now);
  void send_response(detail::IkeSa& sa, ExchangeType exchange, std::uint32_t id, const std::vector<Payload>& inner,
                     const Endpoint& local, const Endpoint& remote);
  void receive_protected(detail::IkeSa& sa, const Endpoint& local, const Endpoint& remote, const Message& message,
                         std::span<const std::uint8_t> datagram, TimePoint now);
  void process_request(detail::IkeSa& sa, const Header& header, const std::vector<Payload>& inner,
                       const Endpoint& local, const Endpoint& remote, TimePoint now);
  void process_response(detail::IkeSa& sa, const Header& header, const std::vector<Payload>& inner,
                        const Endpoint& local, const Endpoint& remote, TimePoint now);
  void follow_peer_address(detail::IkeSa& sa, const Endpoint& local, const Endpoint& remote, ExchangeType exchange,
                           const std::vector<Payload>& inner, TimePoint now);
  void service_retransmit(detail::IkeSa& sa, TimePoint now);
  void request_failed(detail::IkeSa& sa, detail::Flight& flight, TimePoint now);
  void pump(detail::Association& assoc, TimePoint now);
  void start_task(detail::Association& assoc, detail::IkeSa& sa, detail::Task task, TimePoint now);
  std::vector<Payload> nat_detection_payloads(std::uint64_t spi_i, std::uint64_t spi_r, const Endpoint& local,
                                              const Endpoint& remote, bool fake_source) const;
  NatDetection detect_nat(const std::vector<Payload>& payloads, std::uint64_t spi_i, std::uint64_t spi_r,
                          const Endpoint& local, const Endpoint& remote) const;

  // ---- ike_exchanges.cpp ----
  IkeSaId initiate(std::shared_ptr<const IkeConfig> config, const Endpoint& local, const Endpoint& remote,
                   TimePoint now, std::optional<TrafficSelector> trigger_local,
                   std::optional<TrafficSelector> trigger_remote);
  void send_init_request(detail::IkeSa& sa, TimePoint now);
  void handle_init_request(const Endpoint& local, const Endpoint& remote, const Message& message,
                           std::span<const std::uint8_t> datagram, TimePoint now);
  void answer_init_unprotected(const Endpoint& local, const Endpoint& remote, const Header& request,
                               std::vector<Payload> payloads);
  void handle_init_response(detail::IkeSa& sa, const Message& message, std::span<const std::uint8_t> datagram,
                            TimePoint now);
  void send_auth_request(detail::IkeSa& sa, TimePoint now);
  // The responder's config at IKE_AUTH: the selector's candidates for the
  // peer's ID, preferring the one for the peer's authentication method.
  std::shared_ptr<const IkeConfig> choose_auth_config(const Endpoint& local, const Endpoint& remote,
                                                      const Identification& peer_id,
                                                      const AuthenticationPayload& auth);
  std::vector<Payload> handle_auth_request(detail::IkeSa& sa, const std::vector<Payload>& inner,
                                           const Endpoint& local, const Endpoint& remote, TimePoint now);
  void handle_auth_response(detail::IkeSa& sa, const std::vector<Payload>& inner, detail::flight::Auth& flight,
                            TimePoint now);
  void report_up(detail::Association& assoc, bool initiator);
  void derive_ike_sa_keys(detail::IkeSa& sa, const SecretBytes& shared_secret, const SecretBytes* old_sk_d,
                          std::uint16_t old_prf);

  // ---- ike_child.cpp ----
  std::optional<detail::PendingChild> prepare_child(detail::Association& assoc, detail::IkeSa& sa,
                                                    const ChildConfig& config, std::uint16_t group,
                                                    const std::optional<TrafficSelector>& trigger_local,
                                                    const std::optional<TrafficSelector>& trigger_remote);
  std::vector<Payload> child_request_payloads(const detail::PendingChild& pending, bool with_nonce) const;
  ChildNegotiation negotiate_child(detail::Association& assoc, detail::IkeSa& sa, const std::vector<Payload>& request,
                                   const detail::Child* rekeyed, bool in_ike_auth);
  std::vector<Payload> child_response_payloads(const ChildNegotiation& result, const Bytes& nonce_r) const;
  // The peer accepted a child we proposed: checks its answer and returns the
  // new pair, or an error text.
  std::variant<detail::SaPair, std::string> accept_child_response(detail::IkeSa& sa,
                                                                  detail::PendingChild& pending,
                                                                  const std::vector<Payload>& response,
                                                                  const Bytes& nonce_i, const Bytes& nonce_r,
                                                                  std::vector<TrafficSelector>& tsi,
                                                                  std::vector<TrafficSelector>& tsr,
                                                                  ChildKeys& keys);
  // What becomes of the outbound SA of a pair: installed now, held until
  // the peer deletes the old pair, or never (our rekey lost a collision).
  enum class Outbound { Now, Held, Never };
  void install(detail::Association& assoc, detail::Child& child, const detail::SaPair& pair, const ChildKeys& keys,
               bool exchange_initiator, bool is_rekey, Outbound outbound = Outbound::Now);
  // Installs the held outbound SA if its pair is the child's current one;
  // a held SA of a pair that lost its place is dropped.
  void release_outbound(detail::Association& assoc, detail::Child& child);
  void remove_pair(detail::Association& assoc, ChildSaId child, const detail::SaPair& pair, bool child_closed,
                   const std::string& reason);
  detail::Child& add_child(detail::Association& assoc, const ChildConfig& config, Mode mode,
                           std::vector<TrafficSelector> local_ts, std::vector<TrafficSelector> remote_ts,
                           const detail::SaPair& pair, TimePoint now);
  void start_create_child(detail::Association& assoc, detail::IkeSa& sa, detail::task::CreateChild& task,
                          TimePoint now);
  void start_rekey_child(detail::Association& assoc, detail::IkeSa& sa, const detail::task::RekeyChild& task,
                         TimePoint now);
  std::vector<Payload> handle_create_child_request(detail::IkeSa& sa, const std::vector<Payload>& inner,
                                                   TimePoint now);
  void handle_create_child_response(detail::IkeSa& sa, const std::vector<Payload>& inner,
                                    detail::flight::CreateChild& flight, TimePoint now);
  detail::Child* child_by_outbound_spi(detail::Association& assoc, std::uint32_t spi);

  // ---- ike_rekey.cpp ----
  void start_rekey_ike(detail::Association& assoc, detail::IkeSa& sa, const detail::task::RekeyIke& task,
                       TimePoint now);
  std::vector<Payload> handle_rekey_ike_request(detail::IkeSa& sa, const std::vector<Payload>& inner, TimePoint now);
  void handle_rekey_ike_response(detail::IkeSa& sa, const std::vector<Payload>& inner,
                                 detail::flight::RekeyIke& flight, TimePoint now);
  // Makes `next` the association's IKE SA; `old` waits for its Delete.
  void switch_ike_sa(detail::Association& assoc, detail::IkeSa& old, detail::IkeSa& next, bool we_delete_old,
                     TimePoint now);
  void retire(detail::IkeSa& sa, bool we_delete, TimePoint now);

  // ---- ike_informational.cpp ----
  void start_delete_child(detail::Association& assoc, detail::IkeSa& sa, const detail::task::DeleteChild& task,
                          TimePoint now);
  void start_delete_pair(detail::Association& assoc, detail::IkeSa& sa, const detail::task::DeletePair& task,
                         TimePoint now);
  void start_delete_ike(detail::Association& assoc, detail::IkeSa& sa, TimePoint now);
  void start_update_addresses(detail::Association& assoc, detail::IkeSa& sa,
                              const detail::task::UpdateAddresses& task, TimePoint now);
  std::vector<Payload> handle_informational_request(detail::IkeSa& sa, const std::vector<Payload>& inner,
                                                    const Endpoint& local, const Endpoint& remote, TimePoint now);
  void handle_informational_response(detail::IkeSa& sa, const std::vector<Payload>& inner, detail::Flight& flight,
                                     TimePoint now);
  void move_to_nat_port(detail::IkeSa& sa);
};

}  // namespace tapsec::ikev2
