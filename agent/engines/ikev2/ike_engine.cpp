// IkeEngine: datagram dispatch by SPI, timers, stateless cookies, commands
// and state reporting. The exchanges themselves live in the other ike_*.cpp.
#include "agent/engines/ikev2/ike_engine.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <algorithm>

#include "agent/engines/ikev2/ike_impl.h"

namespace tapsec::ikev2 {

using namespace detail;

namespace {

constexpr std::chrono::seconds kCookieSecretLifetime{120};
constexpr std::size_t kCookieHashSize = 32;  // SHA-256

std::chrono::milliseconds jitter_below(std::chrono::seconds period) {
  // Up to 5 % (at most 30 s) early, so both ends rarely rekey at once.
  const std::uint64_t span_ms = std::min<std::uint64_t>(period.count() * 50, 30000);
  if (span_ms == 0) return std::chrono::milliseconds{0};
  return std::chrono::milliseconds{random_u64() % (span_ms + 1)};
}

void append_u64(Bytes& out, std::uint64_t value) {
  for (int shift = 56; shift >= 0; shift -= 8) out.push_back(static_cast<std::uint8_t>(value >> shift));
}

}  // namespace

// ---------------------------------------------------------------- bookkeeping

void IkeEngine::Impl::drop(const std::string& reason, const Endpoint& remote,
                           std::uint64_t EngineCounters::*counter) {
  if (counter) ++(counters.*counter);
  events.push_back(Dropped{reason, remote});
}

std::uint64_t IkeEngine::Impl::new_spi() const {
  for (;;) {
    const std::uint64_t spi = random_u64();
    if (spi != 0 && !sas.contains(spi)) return spi;
  }
}

IkeSa& IkeEngine::Impl::add_sa(std::unique_ptr<IkeSa> sa) {
  const std::uint64_t key = sa->local_spi();
  auto [it, inserted] = sas.emplace(key, std::move(sa));
  return *it->second;
}

Association& IkeEngine::Impl::add_association(std::shared_ptr<const IkeConfig> config) {
  auto assoc = std::make_unique<Association>();
  assoc->id = next_ike_id++;
  assoc->config = std::move(config);
  assoc->local_id = assoc->config->local_id;
  Association& ref = *assoc;
  associations.emplace(ref.id, std::move(assoc));
  return ref;
}

IkeSa* IkeEngine::Impl::find_sa(std::uint64_t local_spi) {
  auto it = sas.find(local_spi);
  return it == sas.end() ? nullptr : it->second.get();
}

Association* IkeEngine::Impl::find_association(IkeSaId id) {
  auto it = associations.find(id);
  return it == associations.end() ? nullptr : it->second.get();
}

void IkeEngine::Impl::forget_half_open(IkeSa& sa) {
  if (sa.initiator) return;
  auto it = half_open_index.find({sa.remote, sa.spi_i});
  if (it != half_open_index.end() && it->second == sa.spi_r) half_open_index.erase(it);
  // The peer may have moved to port 4500 since; look the entry up by SPI too.
  std::erase_if(half_open_index, [&](const auto& entry) { return entry.second == sa.spi_r; });
}

std::size_t IkeEngine::Impl::half_open_count() const { return half_open_index.size(); }

void IkeEngine::Impl::bury(IkeSa& sa, TimePoint now) {
  forget_half_open(sa);
  if (sa.assoc && sa.assoc->collided == &sa) sa.assoc->collided = nullptr;
  sa.assoc = nullptr;
  sa.phase = Phase::Dead;
  sa.outstanding.reset();
  sa.reassembly.reset();
  sa.kex.reset();
  // Long enough for the peer's retransmits of a request we answered last.
  sa.expire = now + std::chrono::seconds{30};
}

void IkeEngine::Impl::tear_down(Association& assoc, bool failed, const std::string& reason, TimePoint now) {
  for (auto& [id, child] : assoc.children) {
    if (child.collided) remove_pair(assoc, id, child.collided->pair, false, reason);
    remove_pair(assoc, id, child.current, true, reason);
  }
  for (const RetiredPair& retired : assoc.retired) remove_pair(assoc, retired.child, retired.pair, false, reason);
  assoc.children.clear();
  assoc.retired.clear();
  events.push_back(IkeSaDown{assoc.id, failed, reason});
  discard(assoc, now);
}

void IkeEngine::Impl::discard(Association& assoc, TimePoint now) {
  for (auto& [spi, sa] : sas)
    if (sa->assoc == &assoc) bury(*sa, now);
  auto it = associations.find(assoc.id);
  if (it != associations.end()) {
    graveyard.push_back(std::move(it->second));
    associations.erase(it);
  }
}

void IkeEngine::Impl::sweep(TimePoint now) {
  std::erase_if(sas, [&](const auto& entry) { return entry.second->phase == Phase::Dead && entry.second->expire <= now; });
}

void IkeEngine::Impl::schedule_child(Child& child, TimePoint now) const {
  const Lifetime& life = child.config.lifetime;
  child.rekey_at = kNever;
  child.expire_at = kNever;
  if (life.rekey_seconds) {
    const std::chrono::seconds period{life.rekey_seconds};
    child.rekey_at = now + period - jitter_below(period);
  }
  if (life.life_seconds) child.expire_at = now + std::chrono::seconds{life.life_seconds};
}

void IkeEngine::Impl::schedule_ike(Association& assoc, TimePoint now) const {
  const Lifetime& life = assoc.config->ike_lifetime;
  assoc.rekey_at = kNever;
  assoc.expire_at = kNever;
  if (life.rekey_seconds) {
    const std::chrono::seconds period{life.rekey_seconds};
    assoc.rekey_at = now + period - jitter_below(period);
  }
  if (life.life_seconds) assoc.expire_at = now + std::chrono::seconds{life.life_seconds};
}

// ---------------------------------------------------------------- cookies

void IkeEngine::Impl::rotate_cookie_secret(TimePoint now) {
  if (!cookie_secrets[cookie_version & 1].empty() && now - cookie_secret_born < kCookieSecretLifetime) return;
  ++cookie_version;
  cookie_secrets[cookie_version & 1] = random_bytes(32);
  cookie_secret_born = now;
}

// cookie = version | SHA-256(Ni | IPi | SPIi | secret) (RFC 7296 §2.6).
Bytes IkeEngine::Impl::make_cookie(const Bytes& nonce_i, const IpAddress& peer, std::uint64_t spi_i,
                                   std::uint8_t version) const {
  const Bytes& secret = cookie_secrets[version & 1];
  Bytes input = nonce_i;
  input.insert(input.end(), peer.bytes.begin(), peer.bytes.begin() + peer.size());
  append_u64(input, spi_i);
  input.insert(input.end(), secret.begin(), secret.end());
  Bytes cookie(1 + kCookieHashSize);
  cookie[0] = version;
  unsigned int length = 0;
  if (EVP_Digest(input.data(), input.size(), cookie.data() + 1, &length, EVP_sha256(), nullptr) != 1 ||
      length != kCookieHashSize)
    cookie.assign(1 + kCookieHashSize, 0);
  return cookie;
}

bool IkeEngine::Impl::cookie_valid(const Bytes& cookie, const Bytes& nonce_i, const IpAddress& peer,
                                   std::uint64_t spi_i) const {
  if (cookie.size() != 1 + kCookieHashSize) return false;
  const std::uint8_t version = cookie[0];
  const bool known = version == cookie_version || version == static_cast<std::uint8_t>(cookie_version - 1);
  if (!known || cookie_secrets[version & 1].empty()) return false;
  const Bytes expected = make_cookie(nonce_i, peer, spi_i, version);
  return CRYPTO_memcmp(expected.data(), cookie.data(), cookie.size()) == 0;
}

// ---------------------------------------------------------------- dispatch

void IkeEngine::Impl::receive(const Endpoint& local, const Endpoint& remote, std::span<const std::uint8_t> datagram,
                              TimePoint now) {
  ++counters.received;
  rotate_cookie_secret(now);
  auto header_result = decode_header(datagram);
  if (const auto* error = std::get_if<DecodeError>(&header_result)) {
    drop("malformed IKE header: " + error->message, remote, &EngineCounters::dropped_malformed);
    return;
  }
  const Header header = std::get<Header>(header_result);
  if ((header.version >> 4) != (kIkeVersion >> 4)) {
    drop("unsupported IKE major version", remote, &EngineCounters::dropped_malformed);
    return;
  }

  if (header.exchange == ExchangeType::IkeSaInit && !header.is_response()) {
    if (header.responder_spi != 0 || header.initiator_spi == 0) {
      drop("IKE_SA_INIT request with bad SPIs", remote, &EngineCounters::dropped_malformed);
      return;
    }
    auto decoded = decode_message(datagram);
    if (const auto* error = std::get_if<DecodeError>(&decoded)) {
      drop("malformed IKE_SA_INIT request: " + error->message, remote, &EngineCounters::dropped_malformed);
      return;
    }
    handle_init_request(local, remote, std::get<Message>(decoded), datagram, now);
    return;
  }

  // Our SPI is the responder's when the initiator sent it, else the initiator's.
  const std::uint64_t our_spi = header.from_initiator() ? header.responder_spi : header.initiator_spi;
  IkeSa* sa = find_sa(our_spi);
  const bool roles_match = sa && sa->initiator != header.from_initiator();
  const bool spis_match = sa && header.initiator_spi == sa->spi_i &&
                          (sa->phase == Phase::InitSent || header.responder_spi == sa->spi_r);
  if (!roles_match || !spis_match) {
    drop("unknown IKE SPI", remote, &EngineCounters::dropped_unknown_spi);
    return;
  }
  auto decoded = decode_message(datagram);
  if (const auto* error = std::get_if<DecodeError>(&decoded)) {
    drop("malformed IKE message: " + error->message, remote, &EngineCounters::dropped_malformed);
    return;
  }
  const Message& message = std::get<Message>(decoded);
  if (header.exchange == ExchangeType::IkeSaInit) {
    if (sa->phase == Phase::InitSent && header.is_response())
      handle_init_response(*sa, message, datagram, now);
    else
      drop("unexpected IKE_SA_INIT message", remote, &EngineCounters::dropped_malformed);
    return;
  }
  if (sa->phase == Phase::InitSent) {
    drop("protected message before IKE_SA_INIT completed", remote, &EngineCounters::dropped_malformed);
    return;
  }
  receive_protected(*sa, local, remote, message, datagram, now);
}

// ---------------------------------------------------------------- timers

void IkeEngine::Impl::on_timer(TimePoint now) {
  rotate_cookie_secret(now);

  std::vector<std::uint64_t> keys;
  keys.reserve(sas.size());
  for (const auto& [spi, sa] : sas) keys.push_back(spi);
  for (std::uint64_t key : keys) {
    IkeSa* sa = find_sa(key);
    if (!sa) continue;
    if (sa->reassembly && sa->reassembly->deadline <= now) sa->reassembly.reset();
    if (sa->phase == Phase::HalfOpen && sa->expire <= now) {
      // Never authenticated and never reported: forgotten without events.
      if (sa->assoc) discard(*sa->assoc, now);
      bury(*sa, now);
      continue;
    }
    if (sa->phase == Phase::Retired && sa->expire <= now) {
      bury(*sa, now);  // the peer never deleted it
      continue;
    }
    service_retransmit(*sa, now);
  }

  std::vector<IkeSaId> ids;
  for (const auto& [id, assoc] : associations) ids.push_back(id);
  for (IkeSaId id : ids) {
    Association* assoc = find_association(id);
    if (!assoc || !assoc->current || assoc->current->phase != Phase::Established) continue;
    if (assoc->expire_at <= now && !assoc->deleting) {
      assoc->expire_at = kNever;
      assoc->deleting = true;
      assoc->queue.push_front(task::DeleteIke{});
    }
    if (assoc->rekey_at <= now && !assoc->ike_rekeying && !assoc->deleting) {
      assoc->rekey_at = kNever;
      assoc->ike_rekeying = true;
      assoc->queue.push_back(task::RekeyIke{});
    }
    for (auto& [child_id, child] : assoc->children) {
      if (child.expire_at <= now && !child.deleting) {
        child.expire_at = kNever;
        child.deleting = true;
        assoc->queue.push_back(task::DeleteChild{child_id});
      } else if (child.rekey_at <= now && !child.rekeying && !child.deleting) {
        child.rekey_at = kNever;
        child.rekeying = true;
        assoc->queue.push_back(task::RekeyChild{child_id, child.current.inbound_spi, 0});
      }
    }
    for (RetiredPair& retired : assoc->retired) {
      if (!retired.delete_sent && retired.give_up <= now) {
        retired.give_up = kNever;
        retired.we_delete = true;
        if (auto child = assoc->children.find(retired.child); child != assoc->children.end())
          release_outbound(*assoc, child->second);
        assoc->queue.push_back(task::DeletePair{retired.pair.inbound_spi});
      }
    }
    const auto dpd = assoc->config->dpd_interval;
    if (dpd.count() > 0 && !assoc->current->outstanding && assoc->queue.empty() && now - assoc->last_heard >= dpd)
      assoc->queue.push_back(task::Liveness{});
    pump(*assoc, now);
  }
  sweep(now);
}

std::optional<TimePoint> IkeEngine::Impl::next_deadline() const {
  TimePoint earliest = kNever;
  auto consider = [&](TimePoint t) { earliest = std::min(earliest, t); };
  for (const auto& [spi, sa] : sas) {
    if (sa->outstanding) consider(sa->outstanding->next_send);
    if (sa->reassembly) consider(sa->reassembly->deadline);
    if (sa->phase == Phase::HalfOpen || sa->phase == Phase::Retired || sa->phase == Phase::Dead) consider(sa->expire);
  }
  for (const auto& [id, assoc] : associations) {
    if (!assoc->current || assoc->current->phase != Phase::Established) continue;
    if (!assoc->deleting) consider(assoc->expire_at);
    if (!assoc->ike_rekeying && !assoc->deleting) consider(assoc->rekey_at);
    for (const auto& [child_id, child] : assoc->children) {
      if (!child.deleting) consider(child.expire_at);
      if (!child.rekeying && !child.deleting) consider(child.rekey_at);
    }
    for (const RetiredPair& retired : assoc->retired)
      if (!retired.delete_sent) consider(retired.give_up);
    const auto dpd = assoc->config->dpd_interval;
    if (dpd.count() > 0 && !assoc->current->outstanding && assoc->queue.empty()) consider(assoc->last_heard + dpd);
  }
  if (earliest == kNever) return std::nullopt;
  return earliest;
}

// ---------------------------------------------------------------- state

void IkeEngine::Impl::fill_state(const Association& assoc, IkeSaState& state) const {
  const IkeSa* sa = assoc.current;
  state.id = assoc.id;
  state.config_name = assoc.config->name;
  state.initiator = sa && sa->initiator;
  if (!sa || sa->phase == Phase::InitSent || sa->phase == Phase::HalfOpen || sa->phase == Phase::AuthSent)
    state.state = "connecting";
  else if (assoc.deleting)
    state.state = "deleting";
  else if (assoc.ike_rekeying)
    state.state = "rekeying";
  else
    state.state = "established";
  if (sa) {
    state.initiator_spi = sa->spi_i;
    state.responder_spi = sa->spi_r;
    state.suite = sa->suite;
    state.local = sa->local;
    state.remote = sa->remote;
  }
  state.local_id = assoc.local_id;
  state.peer_id = assoc.peer_id;
  state.peer_description = assoc.peer_description;
  state.epoch = assoc.epoch;
  state.established = assoc.established;
  for (const auto& [id, child] : assoc.children) {
    ChildSaState c;
    c.id = id;
    c.config_name = child.config.name;
    c.mode = child.mode;
    c.inbound_spi = child.current.inbound_spi;
    c.outbound_spi = child.current.outbound_spi;
    c.suite = child.current.suite;
    c.local_ts = child.local_ts;
    c.remote_ts = child.remote_ts;
    c.epoch = child.current.epoch;
    c.established = child.current.established;
    c.rekeying = child.rekeying;
    state.children.push_back(std::move(c));
  }
}

// ---------------------------------------------------------------- IkeEngine

IkeEngine::IkeEngine(Options options) : impl_(std::make_unique<Impl>(std::move(options))) {}
IkeEngine::~IkeEngine() = default;

void IkeEngine::receive(const Endpoint& local, const Endpoint& remote, std::span<const std::uint8_t> datagram,
                        TimePoint now) {
  impl_->receive(local, remote, datagram, now);
  impl_->graveyard.clear();
}

void IkeEngine::on_timer(TimePoint now) {
  impl_->on_timer(now);
  impl_->graveyard.clear();
}

std::optional<TimePoint> IkeEngine::next_deadline() const { return impl_->next_deadline(); }

std::vector<Event> IkeEngine::take_events() {
  std::vector<Event> out;
  out.swap(impl_->events);
  return out;
}

IkeSaId IkeEngine::initiate(std::shared_ptr<const IkeConfig> config, const Endpoint& local, const Endpoint& remote,
                            TimePoint now, std::optional<TrafficSelector> trigger_local,
                            std::optional<TrafficSelector> trigger_remote) {
  const IkeSaId id = impl_->initiate(std::move(config), local, remote, now, std::move(trigger_local),
                                     std::move(trigger_remote));
  impl_->graveyard.clear();
  return id;
}

Association* IkeEngine::Impl::established_association(IkeSaId id) {
  Association* assoc = find_association(id);
  if (!assoc || !assoc->current || assoc->current->phase != Phase::Established || assoc->deleting) return nullptr;
  return assoc;
}

bool IkeEngine::rekey_child(IkeSaId sa, ChildSaId child, TimePoint now) {
  Association* assoc = impl_->established_association(sa);
  if (!assoc) return false;
  auto it = assoc->children.find(child);
  if (it == assoc->children.end() || it->second.rekeying || it->second.deleting) return false;
  it->second.rekeying = true;
  assoc->queue.push_back(task::RekeyChild{child, it->second.current.inbound_spi, 0});
  impl_->pump(*assoc, now);
  impl_->graveyard.clear();
  return true;
}

bool IkeEngine::delete_child(IkeSaId sa, ChildSaId child, TimePoint now) {
  Association* assoc = impl_->established_association(sa);
  if (!assoc) return false;
  auto it = assoc->children.find(child);
  if (it == assoc->children.end() || it->second.deleting) return false;
  it->second.deleting = true;
  assoc->queue.push_back(task::DeleteChild{child});
  impl_->pump(*assoc, now);
  impl_->graveyard.clear();
  return true;
}

bool IkeEngine::rekey_ike(IkeSaId sa, TimePoint now) {
  Association* assoc = impl_->established_association(sa);
  if (!assoc || assoc->ike_rekeying) return false;
  assoc->ike_rekeying = true;
  assoc->queue.push_back(task::RekeyIke{});
  impl_->pump(*assoc, now);
  impl_->graveyard.clear();
  return true;
}

bool IkeEngine::close(IkeSaId sa, TimePoint now) {
  Association* assoc = impl_->find_association(sa);
  if (!assoc || assoc->deleting) return false;
  if (!assoc->current || assoc->current->phase != Phase::Established) {
    impl_->tear_down(*assoc, false, "closed before it was established", now);
  } else {
    assoc->deleting = true;
    assoc->queue.push_front(task::DeleteIke{});
    impl_->pump(*assoc, now);
  }
  impl_->graveyard.clear();
  return true;
}

bool IkeEngine::check_liveness(IkeSaId sa, TimePoint now) {
  Association* assoc = impl_->established_association(sa);
  if (!assoc) return false;
  assoc->queue.push_back(task::Liveness{});
  impl_->pump(*assoc, now);
  impl_->graveyard.clear();
  return true;
}

bool IkeEngine::update_local_address(IkeSaId sa, const Endpoint& new_local, TimePoint now) {
  Association* assoc = impl_->established_association(sa);
  if (!assoc || !assoc->peer_mobike) return false;
  IkeSa& current = *assoc->current;
  task::UpdateAddresses update{current.local, current.remote};
  // Outstanding requests are retransmitted from the new address too (RFC 4555 §3.5).
  current.local = new_local;
  if (current.local.port == kIkePort && update.old_local.port == kNatTraversalPort)
    current.local.port = kNatTraversalPort;
  assoc->queue.push_front(update);
  impl_->pump(*assoc, now);
  impl_->graveyard.clear();
  return true;
}

std::optional<std::pair<IkeSaId, ChildSaId>> IkeEngine::find_child_by_spi(std::uint32_t spi) const {
  for (const auto& [id, assoc] : impl_->associations) {
    for (const auto& [child_id, child] : assoc->children) {
      if (child.current.inbound_spi == spi || child.current.outbound_spi == spi) return std::pair{id, child_id};
      if (child.collided && (child.collided->pair.inbound_spi == spi || child.collided->pair.outbound_spi == spi))
        return std::pair{id, child_id};
    }
    for (const RetiredPair& retired : assoc->retired)
      if (retired.pair.inbound_spi == spi || retired.pair.outbound_spi == spi) return std::pair{id, retired.child};
  }
  return std::nullopt;
}

std::optional<SecretBytes> IkeEngine::export_keying_material(IkeSaId sa, std::string_view label,
                                                             std::size_t length) const {
  auto it = impl_->associations.find(sa);
  if (it == impl_->associations.end()) return std::nullopt;
  const Association& assoc = *it->second;
  if (!assoc.config->allow_export || !assoc.current || assoc.current->phase != Phase::Established)
    return std::nullopt;
  const IkeSa& current = *assoc.current;
  return derive_export(current.suite.prf, current.keys.sk_d, label, current.nonce_i, current.nonce_r, length);
}

std::vector<IkeSaState> IkeEngine::sas() const {
  std::vector<IkeSaState> out;
  for (const auto& [id, assoc] : impl_->associations) {
    IkeSaState state;
    impl_->fill_state(*assoc, state);
    out.push_back(std::move(state));
  }
  return out;
}

std::optional<IkeSaState> IkeEngine::sa(IkeSaId id) const {
  auto it = impl_->associations.find(id);
  if (it == impl_->associations.end()) return std::nullopt;
  IkeSaState state;
  impl_->fill_state(*it->second, state);
  return state;
}

EngineCounters IkeEngine::counters() const {
  EngineCounters out = impl_->counters;
  out.half_open = impl_->half_open_count();
  return out;
}

}  // namespace tapsec::ikev2
