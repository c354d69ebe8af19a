// Child SAs: traffic selector narrowing (RFC 7296 §2.9), ESP proposals,
// key material into ChildSaInstall, and CREATE_CHILD_SA for new and
// rekeyed Child SAs, including rekey collisions (§2.8.1, §2.25).
#include <algorithm>

#include "agent/engines/ikev2/ike_impl.h"

namespace tapsec::ikev2 {

using namespace detail;

namespace detail {

Bytes spi_bytes32(std::uint32_t spi) {
  return {static_cast<std::uint8_t>(spi >> 24), static_cast<std::uint8_t>(spi >> 16),
          static_cast<std::uint8_t>(spi >> 8), static_cast<std::uint8_t>(spi)};
}

Bytes spi_bytes64(std::uint64_t spi) {
  Bytes out;
  for (int shift = 56; shift >= 0; shift -= 8) out.push_back(static_cast<std::uint8_t>(spi >> shift));
  return out;
}

std::optional<std::uint32_t> spi_value32(const Bytes& bytes) {
  if (bytes.size() != 4) return std::nullopt;
  return static_cast<std::uint32_t>(bytes[0]) << 24 | static_cast<std::uint32_t>(bytes[1]) << 16 |
         static_cast<std::uint32_t>(bytes[2]) << 8 | bytes[3];
}

std::optional<std::uint64_t> spi_value64(const Bytes& bytes) {
  if (bytes.size() != 8) return std::nullopt;
  std::uint64_t value = 0;
  for (std::uint8_t b : bytes) value = value << 8 | b;
  return value;
}

std::optional<TrafficSelector> intersect(const TrafficSelector& a, const TrafficSelector& b) {
  if (a.start.family != b.start.family || a.end.family != a.start.family || b.end.family != b.start.family)
    return std::nullopt;
  TrafficSelector out;
  if (a.ip_protocol == 0)
    out.ip_protocol = b.ip_protocol;
  else if (b.ip_protocol == 0 || b.ip_protocol == a.ip_protocol)
    out.ip_protocol = a.ip_protocol;
  else
    return std::nullopt;
  out.start_port = std::max(a.start_port, b.start_port);
  out.end_port = std::min(a.end_port, b.end_port);
  if (out.start_port > out.end_port) return std::nullopt;
  out.start = std::max(a.start, b.start);
  out.end = std::min(a.end, b.end);
  if (out.end < out.start) return std::nullopt;
  return out;
}

std::vector<TrafficSelector> narrow(const std::vector<TrafficSelector>& theirs,
                                    const std::vector<TrafficSelector>& ours) {
  std::vector<TrafficSelector> out;
  for (const TrafficSelector& t : theirs)
    for (const TrafficSelector& o : ours)
      if (auto both = intersect(t, o); both && std::find(out.begin(), out.end(), *both) == out.end())
        out.push_back(*both);
  return out;
}

bool within(const std::vector<TrafficSelector>& selectors, const std::vector<TrafficSelector>& allowed) {
  return std::all_of(selectors.begin(), selectors.end(), [&](const TrafficSelector& s) {
    return std::any_of(allowed.begin(), allowed.end(), [&](const TrafficSelector& a) {
      auto both = intersect(s, a);
      return both && *both == s;
    });
  });
}

std::vector<Proposal> with_spi_and_group(const std::vector<Proposal>& proposals, const Bytes& spi,
                                         std::uint16_t group) {
  std::vector<Proposal> out;
  for (Proposal p : proposals) {
    p.spi = spi;
    std::erase_if(p.transforms, [](const Transform& t) { return t.type == TransformType::KeyExchange; });
    if (group != group::kNone) p.transforms.push_back(Transform{TransformType::KeyExchange, group, std::nullopt});
    out.push_back(std::move(p));
  }
  return out;
}

std::uint16_t first_group(const std::vector<Proposal>& proposals) {
  for (const Proposal& p : proposals)
    for (const Transform& t : p.transforms)
      if (t.type == TransformType::KeyExchange && group_supported(t.id)) return t.id;
  return group::kNone;
}

bool offers_group(const std::vector<Proposal>& proposals, std::uint16_t group) {
  for (const Proposal& p : proposals)
    for (const Transform& t : p.transforms)
      if (t.type == TransformType::KeyExchange && t.id == group) return true;
  return false;
}

std::optional<ChosenProposal> choose_preferring_group(const std::vector<Proposal>& offered,
                                                      const std::vector<Proposal>& supported,
                                                      std::uint16_t ke_group) {
  if (ke_group != group::kNone) {
    std::vector<Proposal> with_group;
    for (const Proposal& p : offered) {
      if (!offers_group({p}, ke_group)) continue;
      Proposal only = p;
      std::erase_if(only.transforms,
                    [&](const Transform& t) { return t.type == TransformType::KeyExchange && t.id != ke_group; });
      with_group.push_back(std::move(only));
    }
    if (!with_group.empty())
      if (auto chosen = choose_proposal(with_group, supported)) return chosen;
  }
  return choose_proposal(offered, supported);
}

const NotifyPayload* find_notify(const std::vector<Payload>& payloads, std::uint16_t type) {
  for (const Payload& payload : payloads)
    if (const auto* n = body_of<NotifyPayload>(payload); n && n->type == type) return n;
  return nullptr;
}

const NotifyPayload* find_error(const std::vector<Payload>& payloads) {
  for (const Payload& payload : payloads)
    if (const auto* n = body_of<NotifyPayload>(payload); n && n->is_error()) return n;
  return nullptr;
}

bool nonce_size_ok(const Bytes& nonce) { return nonce.size() >= 16 && nonce.size() <= 256; }

bool nonce_less(const Bytes& a, const Bytes& b) {
  if (a.size() != b.size()) return a.size() < b.size();  // as numbers without leading zeros
  return std::lexicographical_compare(a.begin(), a.end(), b.begin(), b.end());
}

const Bytes& lower_nonce(const Bytes& a, const Bytes& b) { return nonce_less(b, a) ? b : a; }

}  // namespace detail

namespace {

std::vector<TrafficSelector> selectors_or_host(const std::vector<TrafficSelector>& configured,
                                               const IpAddress& address) {
  if (!configured.empty()) return configured;
  return {TrafficSelector::host(address)};
}

// For a responder: what it accepts of ESP proposals, given whether the peer
// sent a KE payload (PFS) and in which group.
std::vector<Proposal> acceptable_esp(const ChildConfig& config, const KeyExchangePayload* ke) {
  std::vector<Proposal> out;
  for (Proposal p : config.esp_proposals) {
    std::erase_if(p.transforms, [](const Transform& t) { return t.type == TransformType::KeyExchange; });
    if (ke) {
      if (config.rekey_group != group::kNone && config.rekey_group != ke->group)
        p.transforms.push_back(Transform{TransformType::KeyExchange, config.rekey_group, std::nullopt});
      if (group_supported(ke->group))
        p.transforms.push_back(Transform{TransformType::KeyExchange, ke->group, std::nullopt});
    }
    out.push_back(std::move(p));
  }
  return out;
}

std::vector<Proposal> esp_offers(const SecurityAssociationPayload& sa, bool keep_groups) {
  std::vector<Proposal> out;
  for (Proposal p : sa.proposals) {
    if (p.protocol != ProtocolId::Esp) continue;
    if (!keep_groups)
      std::erase_if(p.transforms, [](const Transform& t) { return t.type == TransformType::KeyExchange; });
    out.push_back(std::move(p));
  }
  return out;
}

std::chrono::milliseconds retry_delay() { return std::chrono::milliseconds{2000 + random_u64() % 3000}; }


}  // namespace

// ---------------------------------------------------------------- proposing

std::optional<PendingChild> IkeEngine::Impl::prepare_child(Association&, IkeSa& sa, const ChildConfig& config,
                                                           std::uint16_t group,
                                                           const std::optional<TrafficSelector>& trigger_local,
                                                           const std::optional<TrafficSelector>& trigger_remote) {
  const auto spi = options.allocate_spi ? options.allocate_spi(sa.local, sa.remote) : std::nullopt;
  if (!spi) return std::nullopt;
  PendingChild pending;
  pending.config = config;
  pending.mode = config.mode;
  pending.inbound_spi = *spi;
  pending.proposals = with_spi_and_group(config.esp_proposals, spi_bytes32(*spi), group);
  // RFC 7296 §2.9: the packet that triggered the SA comes first.
  if (trigger_local) pending.tsi.push_back(*trigger_local);
  if (trigger_remote) pending.tsr.push_back(*trigger_remote);
  for (const auto& ts : selectors_or_host(config.local_ts, sa.local.address)) pending.tsi.push_back(ts);
  for (const auto& ts : selectors_or_host(config.remote_ts, sa.remote.address)) pending.tsr.push_back(ts);
  pending.nonce = random_bytes(kNonceSize);
  if (group != group::kNone) {
    std::unique_ptr<KeyExchange> kex = KeyExchange::generate(group);
    if (!kex) return std::nullopt;
    pending.kex = std::move(kex);
  }
  return pending;
}

std::vector<Payload> IkeEngine::Impl::child_request_payloads(const PendingChild& pending, bool with_nonce) const {
  std::vector<Payload> out;
  if (pending.mode == Mode::Transport) out.push_back(make_notify(notify::kUseTransportMode));
  out.push_back(make_payload(PayloadType::SecurityAssociation, SecurityAssociationPayload{pending.proposals}));
  if (with_nonce) {
    out.push_back(make_payload(PayloadType::Nonce, NoncePayload{pending.nonce}));
    if (pending.kex)
      out.push_back(make_payload(PayloadType::KeyExchange,
                                 KeyExchangePayload{pending.kex->group(), pending.kex->public_value()}));
  }
  out.push_back(make_payload(PayloadType::TsInitiator, TrafficSelectorPayload{pending.tsi}));
  out.push_back(make_payload(PayloadType::TsResponder, TrafficSelectorPayload{pending.tsr}));
  return out;
}

std::variant<SaPair, std::string> IkeEngine::Impl::accept_child_response(
    IkeSa& sa, PendingChild& pending, const std::vector<Payload>& response, const Bytes& nonce_i,
    const Bytes& nonce_r, std::vector<TrafficSelector>& tsi, std::vector<TrafficSelector>& tsr, ChildKeys& keys) {
  const auto* sa_payload = find_body<SecurityAssociationPayload>(response, PayloadType::SecurityAssociation);
  const auto* tsi_payload = find_body<TrafficSelectorPayload>(response, PayloadType::TsInitiator);
  const auto* tsr_payload = find_body<TrafficSelectorPayload>(response, PayloadType::TsResponder);
  if (!sa_payload || !tsi_payload || !tsr_payload || sa_payload->proposals.size() != 1)
    return std::string("INVALID_SYNTAX: Child SA response without SA, TSi or TSr");
  const Proposal& chosen = sa_payload->proposals.front();
  const auto suite = suite_of(chosen, pending.proposals);
  const auto outbound_spi = spi_value32(chosen.spi);
  if (!suite || !outbound_spi || chosen.protocol != ProtocolId::Esp)
    return std::string("NO_PROPOSAL_CHOSEN: the peer chose an ESP proposal we did not offer");
  if (tsi_payload->selectors.empty() || tsr_payload->selectors.empty() ||
      !within(tsi_payload->selectors, pending.tsi) || !within(tsr_payload->selectors, pending.tsr))
    return std::string("TS_UNACCEPTABLE: the peer's traffic selectors are not within ours");
  std::optional<SecretBytes> shared;
  if (pending.kex) {
    const auto* ke = find_body<KeyExchangePayload>(response, PayloadType::KeyExchange);
    if (!ke || ke->group != pending.kex->group() || suite->key_exchange != pending.kex->group())
      return std::string("INVALID_KE_PAYLOAD: the peer answered without our PFS group");
    shared = pending.kex->shared_secret(ke->data);
    if (!shared) return std::string("INVALID_SYNTAX: the peer's key exchange value is invalid");
  }
  const bool transport = pending.mode == Mode::Transport && find_notify(response, notify::kUseTransportMode);
  pending.mode = transport ? Mode::Transport : Mode::Tunnel;
  tsi = tsi_payload->selectors;
  tsr = tsr_payload->selectors;
  keys = derive_child_keys(*suite, sa.suite.prf, sa.keys.sk_d, nonce_i, nonce_r, shared ? &*shared : nullptr);
  return SaPair{pending.inbound_spi, *outbound_spi, *suite, 0, {}};
}

// ---------------------------------------------------------------- responding

ChildNegotiation IkeEngine::Impl::negotiate_child(Association& assoc, IkeSa& sa, const std::vector<Payload>& request,
                                                  const Child* rekeyed, bool in_ike_auth) {
  ChildNegotiation result;
  auto refuse = [&](std::uint16_t type, std::string reason) {
    result.error = type;
    result.reason = std::move(reason);
    return result;
  };
  const auto* sa_payload = find_body<SecurityAssociationPayload>(request, PayloadType::SecurityAssociation);
  const auto* tsi = find_body<TrafficSelectorPayload>(request, PayloadType::TsInitiator);
  const auto* tsr = find_body<TrafficSelectorPayload>(request, PayloadType::TsResponder);
  if (!sa_payload || !tsi || !tsr) return refuse(notify::kInvalidSyntax, "Child SA request without SA, TSi or TSr");
  const KeyExchangePayload* ke =
      in_ike_auth ? nullptr : find_body<KeyExchangePayload>(request, PayloadType::KeyExchange);
  const bool transport_requested = find_notify(request, notify::kUseTransportMode) != nullptr;

  // The child config whose selectors overlap the peer's; TSi is the peer's side.
  const ChildConfig* config = nullptr;
  std::vector<const ChildConfig*> candidates;
  if (rekeyed)
    candidates.push_back(&rekeyed->config);
  else
    for (const ChildConfig& c : assoc.config->children) candidates.push_back(&c);
  // Configs whose mode matches the request first.
  std::stable_partition(candidates.begin(), candidates.end(), [&](const ChildConfig* c) {
    return (c->mode == Mode::Transport) == transport_requested;
  });
  for (const ChildConfig* candidate : candidates) {
    const auto ours_remote = rekeyed ? rekeyed->remote_ts : selectors_or_host(candidate->remote_ts, sa.remote.address);
    const auto ours_local = rekeyed ? rekeyed->local_ts : selectors_or_host(candidate->local_ts, sa.local.address);
    auto narrowed_i = narrow(tsi->selectors, ours_remote);
    auto narrowed_r = narrow(tsr->selectors, ours_local);
    if (!narrowed_i.empty() && !narrowed_r.empty()) {
      config = candidate;
      result.tsi = std::move(narrowed_i);
      result.tsr = std::move(narrowed_r);
      break;
    }
  }
  if (!config) return refuse(notify::kTsUnacceptable, "no Child SA config covers the peer's traffic selectors");

  const auto chosen = choose_preferring_group(esp_offers(*sa_payload, ke != nullptr), acceptable_esp(*config, ke),
                                              ke ? ke->group : group::kNone);
  if (!chosen) return refuse(notify::kNoProposalChosen, "no acceptable ESP proposal");
  if (ke && chosen->suite.key_exchange != ke->group) {
    result.error_data = {static_cast<std::uint8_t>(chosen->suite.key_exchange >> 8),
                         static_cast<std::uint8_t>(chosen->suite.key_exchange)};
    return refuse(notify::kInvalidKePayload, "the peer's PFS group is not the one we chose");
  }
  const auto outbound = spi_value32(chosen->proposal.spi);
  if (!outbound) return refuse(notify::kInvalidSyntax, "ESP proposal without a 4-byte SPI");
  if (ke) {
    std::unique_ptr<KeyExchange> kex = KeyExchange::generate(ke->group);
    auto shared = kex ? kex->shared_secret(ke->data) : std::nullopt;
    if (!shared) return refuse(notify::kInvalidSyntax, "the peer's key exchange value is invalid");
    result.kex = std::move(kex);
    result.shared_secret = std::move(shared);
  }
  const auto inbound = options.allocate_spi ? options.allocate_spi(sa.local, sa.remote) : std::nullopt;
  if (!inbound) return refuse(notify::kNoAdditionalSas, "no inbound SPI available");
  result.config = *config;
  result.mode = transport_requested && config->mode == Mode::Transport ? Mode::Transport : Mode::Tunnel;
  result.chosen = *chosen;
  result.chosen.proposal.spi = spi_bytes32(*inbound);
  result.inbound_spi = *inbound;
  result.outbound_spi = *outbound;
  return result;
}

std::vector<Payload> IkeEngine::Impl::child_response_payloads(const ChildNegotiation& result,
                                                              const Bytes& nonce_r) const {
  std::vector<Payload> out;
  if (result.mode == Mode::Transport) out.push_back(make_notify(notify::kUseTransportMode));
  out.push_back(
      make_payload(PayloadType::SecurityAssociation, SecurityAssociationPayload{{result.chosen.proposal}}));
  if (!nonce_r.empty()) out.push_back(make_payload(PayloadType::Nonce, NoncePayload{nonce_r}));
  if (result.kex)
    out.push_back(make_payload(PayloadType::KeyExchange,
                               KeyExchangePayload{result.kex->group(), result.kex->public_value()}));
  out.push_back(make_payload(PayloadType::TsInitiator, TrafficSelectorPayload{result.tsi}));
  out.push_back(make_payload(PayloadType::TsResponder, TrafficSelectorPayload{result.tsr}));
  return out;
}

// ---------------------------------------------------------------- installing

Child& IkeEngine::Impl::add_child(Association& assoc, const ChildConfig& config, Mode mode,
                                  std::vector<TrafficSelector> local_ts, std::vector<TrafficSelector> remote_ts,
                                  const SaPair& pair, TimePoint now) {
  Child child;
  child.id = next_child_id++;
  child.config = config;
  child.mode = mode;
  child.local_ts = std::move(local_ts);
  child.remote_ts = std::move(remote_ts);
  child.current = pair;
  child.current.established = now;
  schedule_child(child, now);
  auto [it, inserted] = assoc.children.emplace(child.id, std::move(child));
  return it->second;
}

void IkeEngine::Impl::install(Association& assoc, Child& child, const SaPair& pair, const ChildKeys& keys,
                              bool exchange_initiator, bool is_rekey, Outbound outbound) {
  ChildSaInstall event;
  event.ike_sa = assoc.id;
  event.child = child.id;
  event.config_name = child.config.name;
  event.mode = child.mode;
  event.inbound_spi = pair.inbound_spi;
  event.outbound_spi = pair.outbound_spi;
  event.suite = pair.suite;
  // KEYMAT: initiator-to-responder keys first (RFC 7296 §2.17).
  if (exchange_initiator) {
    event.outbound_encryption = keys.encryption_i;
    event.outbound_integrity = keys.integrity_i;
    event.inbound_encryption = keys.encryption_r;
    event.inbound_integrity = keys.integrity_r;
  } else {
    event.outbound_encryption = keys.encryption_r;
    event.outbound_integrity = keys.integrity_r;
    event.inbound_encryption = keys.encryption_i;
    event.inbound_integrity = keys.integrity_i;
  }
  event.local_ts = child.local_ts;
  event.remote_ts = child.remote_ts;
  event.local = assoc.current->local;
  event.remote = assoc.current->remote;
  event.udp_encapsulation = assoc.udp_encapsulation();
  event.lifetime = child.config.lifetime;
  event.replay_window = child.config.replay_window;
  event.is_rekey = is_rekey;
  event.epoch = pair.epoch;
  event.current = outbound != Outbound::Never;
  if (outbound != Outbound::Now) {
    event.part = InstallPart::Inbound;
    if (outbound == Outbound::Held) {
      ChildSaInstall held = event;
      held.part = InstallPart::Outbound;
      held.inbound_encryption = held.inbound_integrity = {};
      child.held_outbound = std::move(held);
    }
    event.outbound_encryption = event.outbound_integrity = {};
  }
  events.push_back(std::move(event));
}

void IkeEngine::Impl::release_outbound(Association& assoc, Child& child) {
  if (!child.held_outbound) return;
  ChildSaInstall event = std::move(*child.held_outbound);
  child.held_outbound.reset();
  if (event.outbound_spi != child.current.outbound_spi) return;
  // The path may have moved since the pair was negotiated.
  event.local = assoc.current->local;
  event.remote = assoc.current->remote;
  event.udp_encapsulation = assoc.udp_encapsulation();
  events.push_back(std::move(event));
}

void IkeEngine::Impl::remove_pair(Association& assoc, ChildSaId child, const SaPair& pair, bool child_closed,
                                  const std::string& reason) {
  ChildSaRemove event;
  event.ike_sa = assoc.id;
  event.child = child;
  event.inbound_spi = pair.inbound_spi;
  event.outbound_spi = pair.outbound_spi;
  if (assoc.current) {
    event.local = assoc.current->local;
    event.remote = assoc.current->remote;
  }
  event.child_closed = child_closed;
  event.reason = reason;
  events.push_back(std::move(event));
}

Child* IkeEngine::Impl::child_by_outbound_spi(Association& assoc, std::uint32_t spi) {
  for (auto& [id, child] : assoc.children)
    if (child.current.outbound_spi == spi) return &child;
  return nullptr;
}

// ---------------------------------------------------------------- CREATE_CHILD_SA

void IkeEngine::Impl::start_create_child(Association& assoc, IkeSa& sa, task::CreateChild& task, TimePoint now) {
  auto pending =
      prepare_child(assoc, sa, task.config, task.config.rekey_group, task.trigger_local, task.trigger_remote);
  if (!pending) {
    drop("no inbound SPI for Child SA " + task.config.name, sa.remote, nullptr);
    return;
  }
  std::vector<Payload> payloads = child_request_payloads(*pending, true);
  send_request(sa, ExchangeType::CreateChildSa, payloads, flight::CreateChild{std::move(*pending)}, now);
}

void IkeEngine::Impl::start_rekey_child(Association& assoc, IkeSa& sa, const task::RekeyChild& task, TimePoint now) {
  auto it = assoc.children.find(task.child);
  if (it == assoc.children.end()) return;
  Child& child = it->second;
  if (child.deleting || child.current.inbound_spi != task.inbound_spi) {
    child.rekeying = false;  // rekeyed by the peer meanwhile, or closing
    return;
  }
  const std::uint16_t group = task.group_override ? task.group_override : child.config.rekey_group;
  auto pending = prepare_child(assoc, sa, child.config, group, std::nullopt, std::nullopt);
  if (!pending) {
    child.rekeying = false;
    child.rekey_at = now + retry_delay();
    return;
  }
  pending->id = child.id;
  pending->mode = child.mode;
  pending->tsi = child.local_ts;
  pending->tsr = child.remote_ts;
  pending->rekeyed_inbound_spi = child.current.inbound_spi;
  std::vector<Payload> payloads{
      make_notify(notify::kRekeySa, {}, ProtocolId::Esp, spi_bytes32(child.current.inbound_spi))};
  for (Payload& p : child_request_payloads(*pending, true)) payloads.push_back(std::move(p));
  send_request(sa, ExchangeType::CreateChildSa, payloads, flight::CreateChild{std::move(*pending)}, now);
}

std::vector<Payload> IkeEngine::Impl::handle_create_child_request(IkeSa& sa, const std::vector<Payload>& inner,
                                                                  TimePoint now) {
  Association& assoc = *sa.assoc;
  const auto* sa_payload = find_body<SecurityAssociationPayload>(inner, PayloadType::SecurityAssociation);
  if (!sa_payload || sa_payload->proposals.empty()) return {make_notify(notify::kInvalidSyntax)};
  if (sa_payload->proposals.front().protocol == ProtocolId::Ike) return handle_rekey_ike_request(sa, inner, now);

  // Not while this IKE SA is being replaced or closed (RFC 7296 §2.25).
  const bool ike_rekey_in_flight = sa.outstanding && std::holds_alternative<flight::RekeyIke>(sa.outstanding->flight);
  if (&sa != assoc.current || sa.phase != Phase::Established || assoc.deleting || ike_rekey_in_flight)
    return {make_notify(notify::kTemporaryFailure)};
  const auto* nonce = find_body<NoncePayload>(inner, PayloadType::Nonce);
  if (!nonce || !nonce_size_ok(nonce->data)) return {make_notify(notify::kInvalidSyntax)};

  Child* rekeyed = nullptr;
  if (const NotifyPayload* rekey = find_notify(inner, notify::kRekeySa)) {
    const auto spi = spi_value32(rekey->spi);
    if (!spi || rekey->protocol != ProtocolId::Esp) return {make_notify(notify::kInvalidSyntax)};
    rekeyed = child_by_outbound_spi(assoc, *spi);
    if (!rekeyed) {
      const bool being_deleted = std::any_of(assoc.retired.begin(), assoc.retired.end(),
                                             [&](const RetiredPair& r) { return r.pair.outbound_spi == *spi; });
      if (being_deleted) return {make_notify(notify::kTemporaryFailure)};
      return {make_notify(notify::kChildSaNotFound, {}, ProtocolId::Esp, rekey->spi)};
    }
    if (rekeyed->deleting) return {make_notify(notify::kTemporaryFailure)};
  }

  ChildNegotiation result = negotiate_child(assoc, sa, inner, rekeyed, false);
  if (result.error) return {make_notify(result.error, result.error_data)};
  const Bytes nonce_r = random_bytes(kNonceSize);
  const ChildKeys keys = derive_child_keys(result.chosen.suite, sa.suite.prf, sa.keys.sk_d, nonce->data, nonce_r,
                                           result.shared_secret ? &*result.shared_secret : nullptr);
  std::vector<Payload> response = child_response_payloads(result, nonce_r);

  if (!rekeyed) {
    SaPair pair{result.inbound_spi, result.outbound_spi, result.chosen.suite, 0, now};
    Child& child = add_child(assoc, result.config, result.mode, result.tsr, result.tsi, pair, now);
    install(assoc, child, child.current, keys, false, false);
    return response;
  }

  SaPair pair{result.inbound_spi, result.outbound_spi, result.chosen.suite, rekeyed->current.epoch + 1, now};
  install(assoc, *rekeyed, pair, keys, false, true, Outbound::Held);
  const auto* ours = sa.outstanding ? std::get_if<flight::CreateChild>(&sa.outstanding->flight) : nullptr;
  const bool crossed = ours && ours->child.id == rekeyed->id &&
                       ours->child.rekeyed_inbound_spi == rekeyed->current.inbound_spi;
  if (crossed) {
    // Both ends rekey this child: decided when our response arrives.
    rekeyed->collided = CollidedRekey{pair, nonce->data, nonce_r};
  } else {
    assoc.retired.push_back(RetiredPair{rekeyed->id, rekeyed->current, false, false, now + retired_grace(sa.retransmit)});
    rekeyed->current = pair;
    rekeyed->rekeying = false;
    schedule_child(*rekeyed, now);
  }
  return response;
}

void IkeEngine::Impl::handle_create_child_response(IkeSa& sa, const std::vector<Payload>& inner,
                                                   flight::CreateChild& flight, TimePoint now) {
  Association& assoc = *sa.assoc;
  PendingChild& pending = flight.child;
  auto it = pending.id ? assoc.children.find(pending.id) : assoc.children.end();
  Child* child = it == assoc.children.end() ? nullptr : &it->second;

  auto adopt_collided = [&](Child& c) {
    // The peer's rekey is the only one: its pair replaces ours, and the
    // peer deletes the old pair.
    assoc.retired.push_back(RetiredPair{c.id, c.current, false, false, now + retired_grace(sa.retransmit)});
    c.current = c.collided->pair;
    c.collided.reset();
    schedule_child(c, now);
  };

  if (const NotifyPayload* error = find_error(inner)) {
    if (!pending.id) {
      drop(notify_name(error->type) + ": the peer refused Child SA " + pending.config.name, sa.remote, nullptr);
      return;
    }
    if (!child) return;
    child->rekeying = false;
    if (error->type == notify::kInvalidKePayload && error->data.size() == 2) {
      const std::uint16_t wanted = static_cast<std::uint16_t>(error->data[0] << 8 | error->data[1]);
      if (group_supported(wanted) && (!pending.kex || pending.kex->group() != wanted)) {
        child->rekeying = true;
        assoc.queue.push_front(task::RekeyChild{child->id, child->current.inbound_spi, wanted});
        return;
      }
    }
    if (child->collided) {
      adopt_collided(*child);
    } else if (error->type == notify::kChildSaNotFound) {
      remove_pair(assoc, child->id, child->current, true, "CHILD_SA_NOT_FOUND: the peer no longer has it");
      assoc.children.erase(it);
    } else if (error->type == notify::kTemporaryFailure) {
      child->rekey_at = now + retry_delay();
    } else {
      child->rekey_at = kNever;  // it lives until its hard lifetime
    }
    return;
  }

  const auto* nonce_r = find_body<NoncePayload>(inner, PayloadType::Nonce);
  std::vector<TrafficSelector> tsi, tsr;
  ChildKeys keys;
  std::variant<SaPair, std::string> accepted = std::string("INVALID_SYNTAX: CREATE_CHILD_SA response without Nonce");
  if (nonce_r && nonce_size_ok(nonce_r->data))
    accepted = accept_child_response(sa, pending, inner, pending.nonce, nonce_r->data, tsi, tsr, keys);
  if (auto* reason = std::get_if<std::string>(&accepted)) {
    drop(*reason, sa.remote, nullptr);
    if (child) {
      child->rekeying = false;
      child->rekey_at = kNever;
      if (child->collided) adopt_collided(*child);
    }
    // The peer may have installed what it answered: have it removed.
    if (find_body<SecurityAssociationPayload>(inner, PayloadType::SecurityAssociation))
      assoc.queue.push_front(task::DeletePair{pending.inbound_spi});
    return;
  }
  SaPair pair = std::get<SaPair>(accepted);
  pair.established = now;

  if (!pending.id) {
    Child& created = add_child(assoc, pending.config, pending.mode, tsi, tsr, pair, now);
    install(assoc, created, created.current, keys, true, false);
    return;
  }
  if (!child) {
    // Deleted while we rekeyed it: the peer must drop the pair it made.
    assoc.queue.push_front(task::DeletePair{pair.inbound_spi});
    return;
  }
  child->rekeying = false;
  pair.epoch = child->current.epoch + 1;
  // Lost: the peer's rekey of the same pair has the lowest nonce (RFC 7296
  // §2.8.1), or it already replaced the pair we rekeyed.
  bool lost = child->current.inbound_spi != pending.rekeyed_inbound_spi;
  if (child->collided) {
    const Bytes& our_lowest = lower_nonce(pending.nonce, nonce_r->data);
    const Bytes& their_lowest = lower_nonce(child->collided->nonce_i, child->collided->nonce_r);
    lost = nonce_less(our_lowest, their_lowest);
  }
  // A losing pair only receives, until the peer has our Delete.
  install(assoc, *child, pair, keys, true, true, lost ? Outbound::Never : Outbound::Now);
  if (lost) {
    assoc.retired.push_back(RetiredPair{child->id, pair, true, false, kNever});
    if (child->collided) adopt_collided(*child);
    assoc.queue.push_front(task::DeletePair{pair.inbound_spi});
    return;
  }
  const std::uint32_t old_inbound = child->current.inbound_spi;
  assoc.retired.push_back(RetiredPair{child->id, child->current, true, false, kNever});
  if (child->collided) {
    // The peer deletes its losing pair.
    assoc.retired.push_back(
        RetiredPair{child->id, child->collided->pair, false, false, now + retired_grace(sa.retransmit)});
    child->collided.reset();
  }
  child->current = pair;
  release_outbound(assoc, *child);  // drops the held SA of the peer's losing pair
  schedule_child(*child, now);
  assoc.queue.push_front(task::DeletePair{old_inbound});
}

}  // namespace tapsec::ikev2
