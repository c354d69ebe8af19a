// IKE_SA_INIT (proposals, key exchange, nonces, NAT detection, cookies,
// INVALID_KE_PAYLOAD) and IKE_AUTH (identities, certificates, AUTH, the
// first Child SA), as initiator and as responder.
#include <algorithm>

#include "agent/engines/ikev2/ike_impl.h"

namespace tapsec::ikev2 {

using namespace detail;

namespace {

constexpr unsigned kMaxInitRetries = 4;  // cookie and INVALID_KE_PAYLOAD round trips

std::vector<Proposal> without_spi(const std::vector<Proposal>& proposals) {
  std::vector<Proposal> out = proposals;
  for (Proposal& p : out) p.spi.clear();
  return out;
}

std::vector<Proposal> ike_offers(const SecurityAssociationPayload& sa) {
  std::vector<Proposal> out;
  for (const Proposal& p : sa.proposals)
    if (p.protocol == ProtocolId::Ike) out.push_back(p);
  return out;
}

std::optional<std::uint16_t> group_of_notify(const NotifyPayload& n) {
  if (n.data.size() != 2) return std::nullopt;
  return static_cast<std::uint16_t>(n.data[0] << 8 | n.data[1]);
}

Bytes group_bytes(std::uint16_t group) {
  return {static_cast<std::uint8_t>(group >> 8), static_cast<std::uint8_t>(group)};
}

std::vector<Bytes> certificate_chain(const std::vector<Payload>& payloads) {
  std::vector<Bytes> chain;
  for (const Payload& payload : payloads)
    if (const auto* cert = body_of<CertificatePayload>(payload))
      if (cert->encoding == cert_encoding::kX509Signature) chain.push_back(cert->data);
  return chain;
}

void append_credentials(std::vector<Payload>& out, const LocalCredentials& credentials) {
  if (credentials.method != LocalCredentials::Method::Signature) return;
  for (const Bytes& der : credentials.certificate_chain)
    out.push_back(make_payload(PayloadType::Certificate, CertificatePayload{cert_encoding::kX509Signature, der}));
}

}  // namespace

void IkeEngine::Impl::derive_ike_sa_keys(IkeSa& sa, const SecretBytes& shared_secret, const SecretBytes* old_sk_d,
                                         std::uint16_t old_prf) {
  sa.keys = derive_ike_keys(sa.suite, shared_secret.span(), sa.nonce_i, sa.nonce_r, sa.spi_i, sa.spi_r, old_sk_d,
                            old_prf);
  const IkeKeys& k = sa.keys;
  if (sa.initiator) {
    sa.outbound.emplace(sa.suite, k.sk_ei, k.sk_ai);
    sa.inbound.emplace(sa.suite, k.sk_er, k.sk_ar);
  } else {
    sa.outbound.emplace(sa.suite, k.sk_er, k.sk_ar);
    sa.inbound.emplace(sa.suite, k.sk_ei, k.sk_ai);
  }
}

void IkeEngine::Impl::report_up(Association& assoc, bool initiator) {
  const IkeSa& sa = *assoc.current;
  IkeSaUp up;
  up.ike_sa = assoc.id;
  up.config_name = assoc.config->name;
  up.initiator = initiator;
  up.suite = sa.suite;
  up.local_id = assoc.local_id;
  up.peer_id = assoc.peer_id;
  up.peer_description = assoc.peer_description;
  up.local = sa.local;
  up.remote = sa.remote;
  up.nat_detected_local = assoc.nat_local;
  up.nat_detected_remote = assoc.nat_remote;
  up.mobike = assoc.peer_mobike;
  up.epoch = assoc.epoch;
  assoc.up = true;
  events.push_back(std::move(up));
}

void IkeEngine::Impl::move_to_nat_port(IkeSa& sa) {
  if (sa.remote.port == kIkePort) sa.remote.port = kNatTraversalPort;
  if (sa.local.port == kIkePort) sa.local.port = kNatTraversalPort;
}

// ---------------------------------------------------------------- initiator

IkeSaId IkeEngine::Impl::initiate(std::shared_ptr<const IkeConfig> config, const Endpoint& local,
                                  const Endpoint& remote, TimePoint now, std::optional<TrafficSelector> trigger_local,
                                  std::optional<TrafficSelector> trigger_remote) {
  if (!config) return 0;
  Association& assoc = add_association(config);
  assoc.trigger_local = std::move(trigger_local);
  assoc.trigger_remote = std::move(trigger_remote);

  auto sa = std::make_unique<IkeSa>();
  sa->assoc = &assoc;
  sa->phase = Phase::InitSent;
  sa->initiator = true;
  sa->spi_i = new_spi();
  sa->local = local;
  sa->remote = remote;
  sa->created = now;
  sa->fragment_size = config->fragment_size;
  sa->retransmit = config->retransmit;
  sa->nonce_i = random_bytes(kNonceSize);
  std::unique_ptr<KeyExchange> kex = KeyExchange::generate(first_group(config->ike_proposals));
  IkeSa& ref = add_sa(std::move(sa));
  assoc.current = &ref;
  if (!kex) {
    tear_down(assoc, true, "NO_PROPOSAL_CHOSEN: no supported key exchange group in the IKE proposals", now);
    return assoc.id;
  }
  ref.kex = std::move(kex);
  send_init_request(ref, now);
  return assoc.id;
}

void IkeEngine::Impl::send_init_request(IkeSa& sa, TimePoint now) {
  const IkeConfig& config = *sa.assoc->config;
  std::vector<Payload> payloads;
  if (!sa.cookie.empty()) payloads.push_back(make_notify(notify::kCookie, sa.cookie));
  payloads.push_back(make_payload(PayloadType::SecurityAssociation,
                                  SecurityAssociationPayload{without_spi(config.ike_proposals)}));
  payloads.push_back(
      make_payload(PayloadType::KeyExchange, KeyExchangePayload{sa.kex->group(), sa.kex->public_value()}));
  payloads.push_back(make_payload(PayloadType::Nonce, NoncePayload{sa.nonce_i}));
  for (Payload& p : nat_detection_payloads(sa.spi_i, 0, sa.local, sa.remote, config.force_udp_encapsulation))
    payloads.push_back(std::move(p));
  if (config.fragmentation) payloads.push_back(make_notify(notify::kIkeFragmentationSupported));
  payloads.push_back(make_notify(notify::kSignatureHashAlgorithms, supported_signature_hashes()));

  sa.spi_r = 0;
  Bytes datagram = encode_message(header_for(sa, ExchangeType::IkeSaInit, false, 0), payloads);
  sa.init_request = datagram;
  Outstanding out;
  out.message_id = 0;
  out.exchange = ExchangeType::IkeSaInit;
  out.datagrams = {std::move(datagram)};
  out.timeout = sa.retransmit.initial_timeout;
  out.next_send = now + out.timeout;
  out.flight = flight::Init{};
  transmit(out.datagrams, sa.local, sa.remote);
  sa.outstanding = std::move(out);
  sa.next_message_id = 1;
}

void IkeEngine::Impl::handle_init_response(IkeSa& sa, const Message& message, std::span<const std::uint8_t> datagram,
                                           TimePoint now) {
  Association* assoc_ptr = sa.assoc;
  if (!assoc_ptr || !sa.outstanding || message.header.message_id != 0) {
    drop("unexpected IKE_SA_INIT response", sa.remote, &EngineCounters::dropped_malformed);
    return;
  }
  Association& assoc = *assoc_ptr;
  const IkeConfig& config = *assoc.config;
  const std::vector<Payload>& payloads = message.payloads;

  if (const NotifyPayload* cookie = find_notify(payloads, notify::kCookie)) {
    if (cookie->data.empty() || cookie->data.size() > 64 || ++sa.init_retries > kMaxInitRetries) {
      drop("unusable COOKIE in IKE_SA_INIT response", sa.remote, &EngineCounters::dropped_malformed);
      return;
    }
    sa.cookie = cookie->data;
    sa.outstanding.reset();
    send_init_request(sa, now);
    return;
  }
  if (const NotifyPayload* invalid_ke = find_notify(payloads, notify::kInvalidKePayload)) {
    const auto group = group_of_notify(*invalid_ke);
    if (!group || !offers_group(config.ike_proposals, *group) || *group == sa.kex->group() ||
        ++sa.init_retries > kMaxInitRetries) {
      tear_down(assoc, true,
                "INVALID_KE_PAYLOAD: the peer asks for group " + (group ? std::to_string(*group) : "?") +
                    ", which we do not offer",
                now);
      return;
    }
    std::unique_ptr<KeyExchange> kex = KeyExchange::generate(*group);
    if (!kex) {
      tear_down(assoc, true, "INVALID_KE_PAYLOAD: group " + std::to_string(*group) + " is not supported", now);
      return;
    }
    sa.kex = std::move(kex);
    sa.outstanding.reset();
    send_init_request(sa, now);
    return;
  }
  if (const NotifyPayload* error = find_error(payloads)) {
    tear_down(assoc, true, notify_name(error->type) + " (IKE_SA_INIT refused by the peer)", now);
    return;
  }

  const auto* sa_payload = find_body<SecurityAssociationPayload>(payloads, PayloadType::SecurityAssociation);
  const auto* ke = find_body<KeyExchangePayload>(payloads, PayloadType::KeyExchange);
  const auto* nonce = find_body<NoncePayload>(payloads, PayloadType::Nonce);
  if (!sa_payload || !ke || !nonce || sa_payload->proposals.size() != 1 || message.header.responder_spi == 0 ||
      !nonce_size_ok(nonce->data)) {
    drop("IKE_SA_INIT response without SA, KE or Nonce", sa.remote, &EngineCounters::dropped_malformed);
    return;
  }
  const auto suite = suite_of(sa_payload->proposals.front(), config.ike_proposals);
  if (!suite || suite->key_exchange != sa.kex->group() || ke->group != sa.kex->group()) {
    tear_down(assoc, true, "NO_PROPOSAL_CHOSEN: the peer chose a proposal we did not offer", now);
    return;
  }
  const auto shared = sa.kex->shared_secret(ke->data);
  if (!shared) {
    tear_down(assoc, true, "INVALID_SYNTAX: the peer's key exchange value is invalid", now);
    return;
  }
  sa.spi_r = message.header.responder_spi;
  sa.suite = *suite;
  sa.nonce_r = nonce->data;
  sa.init_response.assign(datagram.begin(), datagram.end());
  sa.kex.reset();
  derive_ike_sa_keys(sa, *shared, nullptr, 0);

  const NatDetection nat = detect_nat(payloads, sa.spi_i, sa.spi_r, sa.local, sa.remote);
  assoc.nat_local = nat.local;
  assoc.nat_remote = nat.remote;
  sa.peer_fragmentation = config.fragmentation && find_notify(payloads, notify::kIkeFragmentationSupported);
  if (const NotifyPayload* hashes = find_notify(payloads, notify::kSignatureHashAlgorithms))
    sa.peer_signature_hashes = hashes->data;
  sa.outstanding.reset();
  if (nat.present && assoc.udp_encapsulation()) move_to_nat_port(sa);
  send_auth_request(sa, now);
}

void IkeEngine::Impl::send_auth_request(IkeSa& sa, TimePoint now) {
  Association& assoc = *sa.assoc;
  const IkeConfig& config = *assoc.config;
  std::vector<Payload> inner;
  const IdentificationPayload idi{config.local_id.type, config.local_id.data};
  inner.push_back(make_payload(PayloadType::IdInitiator, idi));
  append_credentials(inner, config.local_credentials);

  // INITIAL_CONTACT when no other IKE SA of this config to this peer exists.
  const bool first_contact = std::none_of(associations.begin(), associations.end(), [&](const auto& entry) {
    const Association& other = *entry.second;
    return &other != &assoc && other.up && other.config->name == config.name && other.current &&
           other.current->remote.address == sa.remote.address;
  });
  if (first_contact) inner.push_back(make_notify(notify::kInitialContact));
  if (config.peer.method == PeerRequirements::Method::Signature)
    inner.push_back(make_payload(PayloadType::CertificateRequest, CertificateRequestPayload{}));
  if (config.peer.expected_id)
    inner.push_back(make_payload(PayloadType::IdResponder,
                                 IdentificationPayload{config.peer.expected_id->type, config.peer.expected_id->data}));

  const Prf prf(sa.suite.prf);
  const Bytes octets = signed_octets(sa.init_request, sa.nonce_r, prf, sa.keys.sk_pi, idi);
  auto auth = make_auth(config.local_credentials, prf, octets, sa.peer_signature_hashes);
  if (const auto* error = std::get_if<std::string>(&auth)) {
    tear_down(assoc, true, "cannot create our AUTH payload: " + *error, now);
    return;
  }
  inner.push_back(make_payload(PayloadType::Authentication, std::get<AuthenticationPayload>(auth)));
  if (config.mobike) inner.push_back(make_notify(notify::kMobikeSupported));

  flight::Auth flight;
  if (!config.children.empty()) {
    auto pending = prepare_child(assoc, sa, config.children.front(), group::kNone, assoc.trigger_local,
                                 assoc.trigger_remote);
    if (!pending) {
      tear_down(assoc, true, "NO_ADDITIONAL_SAS: no inbound SPI available for the first Child SA", now);
      return;
    }
    for (Payload& p : child_request_payloads(*pending, false)) inner.push_back(std::move(p));
    flight.child = std::move(*pending);
  }
  sa.phase = Phase::AuthSent;
  send_request(sa, ExchangeType::IkeAuth, inner, std::move(flight), now);
}

void IkeEngine::Impl::handle_auth_response(IkeSa& sa, const std::vector<Payload>& inner, flight::Auth& flight,
                                           TimePoint now) {
  Association& assoc = *sa.assoc;
  const IkeConfig& config = *assoc.config;
  const auto* auth = find_body<AuthenticationPayload>(inner, PayloadType::Authentication);
  const auto* idr = find_body<IdentificationPayload>(inner, PayloadType::IdResponder);
  if (!auth || !idr) {
    const NotifyPayload* error = find_error(inner);
    tear_down(assoc, true,
              error ? notify_name(error->type) + " (IKE_AUTH refused by the peer)"
                    : std::string("INVALID_SYNTAX: IKE_AUTH response without IDr or AUTH"),
              now);
    return;
  }
  const Identification peer_id{idr->id_type, idr->data};
  const Prf prf(sa.suite.prf);
  const Bytes octets = signed_octets(sa.init_response, sa.nonce_i, prf, sa.keys.sk_pr, *idr);
  PeerAuthResult verdict = verify_auth(config.peer, peer_id, *auth, certificate_chain(inner), prf, octets);
  if (verdict.ok && config.peer.expected_id && *config.peer.expected_id != peer_id) {
    verdict.ok = false;
    verdict.failure = "peer identity " + peer_id.to_string() + " is not the expected " +
                      config.peer.expected_id->to_string();
  }
  if (!verdict.ok) {
    // RFC 7296 §2.21.2: tell the responder in a separate INFORMATIONAL.
    const std::uint32_t id = sa.next_message_id++;
    transmit(protect(sa, header_for(sa, ExchangeType::Informational, false, id),
                     {make_notify(notify::kAuthenticationFailed)}),
             sa.local, sa.remote);
    tear_down(assoc, true, "AUTHENTICATION_FAILED: " + verdict.failure, now);
    return;
  }
  assoc.peer_id = peer_id;
  assoc.peer_description = verdict.peer_description;
  assoc.peer_mobike = config.mobike && find_notify(inner, notify::kMobikeSupported);
  sa.phase = Phase::Established;
  assoc.established = now;
  assoc.last_heard = now;
  schedule_ike(assoc, now);

  if (flight.child) {
    std::vector<TrafficSelector> tsi, tsr;
    ChildKeys keys;
    std::string failure;
    if (const NotifyPayload* error = find_error(inner)) {
      failure = notify_name(error->type) + " (the peer refused the first Child SA)";
    } else {
      auto accepted = accept_child_response(sa, *flight.child, inner, sa.nonce_i, sa.nonce_r, tsi, tsr, keys);
      if (auto* reason = std::get_if<std::string>(&accepted)) {
        failure = *reason;
      } else {
        report_up(assoc, true);
        Child& child = add_child(assoc, flight.child->config, flight.child->mode, tsi, tsr,
                                 std::get<SaPair>(accepted), now);
        install(assoc, child, child.current, keys, true, false);
      }
    }
    if (!failure.empty()) {
      // Without its first Child SA the connection is useless: close the IKE SA.
      const std::uint32_t id = sa.next_message_id++;
      transmit(protect(sa, header_for(sa, ExchangeType::Informational, false, id),
                       {make_payload(PayloadType::Delete, DeletePayload{ProtocolId::Ike, 0, {}})}),
               sa.local, sa.remote);
      tear_down(assoc, true, failure, now);
      return;
    }
  } else {
    report_up(assoc, true);
  }
  for (std::size_t i = 1; i < config.children.size(); ++i)
    assoc.queue.push_back(task::CreateChild{config.children[i], std::nullopt, std::nullopt});
}

// ---------------------------------------------------------------- responder

void IkeEngine::Impl::answer_init_unprotected(const Endpoint& local, const Endpoint& remote, const Header& request,
                                              std::vector<Payload> payloads) {
  Header header;
  header.initiator_spi = request.initiator_spi;
  header.responder_spi = 0;
  header.exchange = ExchangeType::IkeSaInit;
  header.flags = header_flags::kResponse;
  header.message_id = 0;
  transmit({encode_message(header, payloads)}, local, remote);
}

void IkeEngine::Impl::handle_init_request(const Endpoint& local, const Endpoint& remote, const Message& message,
                                          std::span<const std::uint8_t> datagram, TimePoint now) {
  const Header& header = message.header;
  if (header.message_id != 0 || !header.from_initiator()) {
    drop("IKE_SA_INIT request with bad header", remote, &EngineCounters::dropped_malformed);
    return;
  }
  // A retransmission of a request we answered gets the same answer.
  if (auto it = half_open_index.find({remote, header.initiator_spi}); it != half_open_index.end()) {
    if (IkeSa* sa = find_sa(it->second);
        sa && sa->cached_response_id == 0u && std::ranges::equal(datagram, sa->init_request)) {
      ++counters.retransmitted;
      transmit(sa->cached_response, local, remote);
    }
    return;
  }
  if (!options.selector) {
    drop("IKE_SA_INIT request, but this engine does not respond", remote, &EngineCounters::dropped_unknown_spi);
    return;
  }
  const std::vector<Payload>& payloads = message.payloads;
  const auto* sa_payload = find_body<SecurityAssociationPayload>(payloads, PayloadType::SecurityAssociation);
  const auto* ke = find_body<KeyExchangePayload>(payloads, PayloadType::KeyExchange);
  const auto* nonce = find_body<NoncePayload>(payloads, PayloadType::Nonce);
  if (!sa_payload || !ke || !nonce || !nonce_size_ok(nonce->data)) {
    drop("IKE_SA_INIT request without SA, KE or Nonce", remote, &EngineCounters::dropped_malformed);
    return;
  }

  // Source address validation under load (RFC 7296 §2.6).
  if (half_open_count() >= options.cookie_threshold) {
    const NotifyPayload* cookie = find_notify(payloads, notify::kCookie);
    if (!cookie || !cookie_valid(cookie->data, nonce->data, remote.address, header.initiator_spi)) {
      answer_init_unprotected(
          local, remote, header,
          {make_notify(notify::kCookie, make_cookie(nonce->data, remote.address, header.initiator_spi,
                                                    cookie_version))});
      ++counters.cookies_sent;
      return;
    }
  }

  std::shared_ptr<const IkeConfig> config = options.selector->select(local, remote, nullptr);
  if (!config) {
    answer_init_unprotected(local, remote, header, {make_notify(notify::kNoProposalChosen)});
    drop("no config for " + remote.to_string(), remote, nullptr);
    return;
  }
  const auto chosen = choose_preferring_group(ike_offers(*sa_payload), config->ike_proposals, ke->group);
  if (!chosen) {
    answer_init_unprotected(local, remote, header, {make_notify(notify::kNoProposalChosen)});
    return;
  }
  if (chosen->suite.key_exchange != ke->group) {
    answer_init_unprotected(local, remote, header,
                            {make_notify(notify::kInvalidKePayload, group_bytes(chosen->suite.key_exchange))});
    return;
  }
  std::unique_ptr<KeyExchange> kex = KeyExchange::generate(ke->group);
  const auto shared = kex ? kex->shared_secret(ke->data) : std::nullopt;
  if (!shared) {
    drop("invalid key exchange value in IKE_SA_INIT", remote, &EngineCounters::dropped_malformed);
    return;
  }

  Association& assoc = add_association(config);
  auto sa = std::make_unique<IkeSa>();
  sa->assoc = &assoc;
  sa->phase = Phase::HalfOpen;
  sa->initiator = false;
  sa->spi_i = header.initiator_spi;
  sa->spi_r = new_spi();
  sa->local = local;
  sa->remote = remote;
  sa->suite = chosen->suite;
  sa->nonce_i = nonce->data;
  sa->nonce_r = random_bytes(kNonceSize);
  sa->init_request.assign(datagram.begin(), datagram.end());
  sa->peer_fragmentation = config->fragmentation && find_notify(payloads, notify::kIkeFragmentationSupported);
  sa->fragment_size = config->fragment_size;
  sa->retransmit = config->retransmit;
  sa->created = now;
  sa->expire = now + options.half_open_timeout;
  const NotifyPayload* peer_hashes = find_notify(payloads, notify::kSignatureHashAlgorithms);
  if (peer_hashes) sa->peer_signature_hashes = peer_hashes->data;
  derive_ike_sa_keys(*sa, *shared, nullptr, 0);

  const NatDetection nat = detect_nat(payloads, sa->spi_i, 0, local, remote);
  assoc.nat_local = nat.local;
  assoc.nat_remote = nat.remote;

  std::vector<Payload> response;
  Proposal proposal = chosen->proposal;
  proposal.spi.clear();
  response.push_back(make_payload(PayloadType::SecurityAssociation, SecurityAssociationPayload{{proposal}}));
  response.push_back(make_payload(PayloadType::KeyExchange, KeyExchangePayload{kex->group(), kex->public_value()}));
  response.push_back(make_payload(PayloadType::Nonce, NoncePayload{sa->nonce_r}));
  if (nat.present)
    for (Payload& p : nat_detection_payloads(sa->spi_i, sa->spi_r, local, remote, config->force_udp_encapsulation))
      response.push_back(std::move(p));
  if (sa->peer_fragmentation) response.push_back(make_notify(notify::kIkeFragmentationSupported));
  if (peer_hashes) response.push_back(make_notify(notify::kSignatureHashAlgorithms, supported_signature_hashes()));
  if (config->peer.method == PeerRequirements::Method::Signature)
    response.push_back(make_payload(PayloadType::CertificateRequest, CertificateRequestPayload{}));

  Bytes reply = encode_message(header_for(*sa, ExchangeType::IkeSaInit, true, 0), response);
  sa->init_response = reply;
  sa->cached_response = {reply};
  sa->cached_response_id = 0;
  sa->expected_request_id = 1;
  sa->next_message_id = 0;
  transmit(sa->cached_response, local, remote);
  const std::uint64_t spi_r = sa->spi_r;
  IkeSa& ref = add_sa(std::move(sa));
  assoc.current = &ref;
  half_open_index[{remote, header.initiator_spi}] = spi_r;
}

std::shared_ptr<const IkeConfig> IkeEngine::Impl::choose_auth_config(const Endpoint& local, const Endpoint& remote,
                                                                      const Identification& peer_id,
                                                                      const AuthenticationPayload& auth) {
  const auto candidates = options.selector->candidates(local, remote, peer_id);
  const auto method = auth.method == auth_method::kSharedKey ? PeerRequirements::Method::SharedKey
                                                              : PeerRequirements::Method::Signature;
  for (const auto& candidate : candidates)
    if (candidate && candidate->peer.method == method) return candidate;
  return candidates.empty() ? nullptr : candidates.front();
}

std::vector<Payload> IkeEngine::Impl::handle_auth_request(IkeSa& sa, const std::vector<Payload>& inner,
                                                          const Endpoint& local, const Endpoint& remote,
                                                          TimePoint now) {
  Association& assoc = *sa.assoc;
  auto fail = [&](std::uint16_t notify_type, const std::string& reason) {
    tear_down(assoc, true, reason, now);
    return std::vector<Payload>{make_notify(notify_type)};
  };
  const auto* idi = find_body<IdentificationPayload>(inner, PayloadType::IdInitiator);
  const auto* auth = find_body<AuthenticationPayload>(inner, PayloadType::Authentication);
  if (!idi || !auth) return fail(notify::kInvalidSyntax, "INVALID_SYNTAX: IKE_AUTH request without IDi or AUTH");
  const Identification peer_id{idi->id_type, idi->data};

  std::shared_ptr<const IkeConfig> config = choose_auth_config(local, remote, peer_id, *auth);
  if (!config)
    return fail(notify::kAuthenticationFailed, "AUTHENTICATION_FAILED: no config for peer " + peer_id.to_string());
  assoc.config = config;
  assoc.local_id = config->local_id;
  sa.retransmit = config->retransmit;
  sa.fragment_size = config->fragment_size;
  if (const auto* idr = find_body<IdentificationPayload>(inner, PayloadType::IdResponder)) {
    const Identification wanted{idr->id_type, idr->data};
    if (wanted != config->local_id)
      return fail(notify::kAuthenticationFailed,
                  "AUTHENTICATION_FAILED: the peer wants to talk to " + wanted.to_string() + ", we are " +
                      config->local_id.to_string());
  }

  const Prf prf(sa.suite.prf);
  const Bytes octets = signed_octets(sa.init_request, sa.nonce_r, prf, sa.keys.sk_pi, *idi);
  PeerAuthResult verdict = verify_auth(config->peer, peer_id, *auth, certificate_chain(inner), prf, octets);
  if (verdict.ok && config->peer.expected_id && *config->peer.expected_id != peer_id) {
    verdict.ok = false;
    verdict.failure = "peer identity " + peer_id.to_string() + " is not the expected " +
                      config->peer.expected_id->to_string();
  }
  if (!verdict.ok) return fail(notify::kAuthenticationFailed, "AUTHENTICATION_FAILED: " + verdict.failure);
  assoc.peer_id = peer_id;
  assoc.peer_description = verdict.peer_description;

  std::vector<Payload> response;
  const IdentificationPayload idr{config->local_id.type, config->local_id.data};
  response.push_back(make_payload(PayloadType::IdResponder, idr));
  append_credentials(response, config->local_credentials);
  const Bytes our_octets = signed_octets(sa.init_response, sa.nonce_i, prf, sa.keys.sk_pr, idr);
  auto our_auth = make_auth(config->local_credentials, prf, our_octets, sa.peer_signature_hashes);
  if (const auto* error = std::get_if<std::string>(&our_auth))
    return fail(notify::kAuthenticationFailed, "cannot create our AUTH payload: " + *error);
  response.push_back(make_payload(PayloadType::Authentication, std::get<AuthenticationPayload>(our_auth)));
  assoc.peer_mobike = config->mobike && find_notify(inner, notify::kMobikeSupported);
  if (assoc.peer_mobike) response.push_back(make_notify(notify::kMobikeSupported));

  std::optional<ChildNegotiation> child;
  if (find_body<SecurityAssociationPayload>(inner, PayloadType::SecurityAssociation)) {
    child = negotiate_child(assoc, sa, inner, nullptr, true);
    if (child->error) {
      // The IKE SA would be up without the Child SA the peer asked for; as
      // the initiator closes it anyway, report the failure on both ends.
      response.push_back(make_notify(child->error, child->error_data));
      tear_down(assoc, true, notify_name(child->error) + ": " + child->reason, now);
      return response;
    }
    for (Payload& p : child_response_payloads(*child, {})) response.push_back(std::move(p));
  }

  forget_half_open(sa);
  sa.phase = Phase::Established;
  sa.expire = kNever;
  assoc.established = now;
  assoc.last_heard = now;
  schedule_ike(assoc, now);
  report_up(assoc, false);
  if (child) {
    const ChildKeys keys =
        derive_child_keys(child->chosen.suite, sa.suite.prf, sa.keys.sk_d, sa.nonce_i, sa.nonce_r);
    SaPair pair{child->inbound_spi, child->outbound_spi, child->chosen.suite, 0, now};
    Child& installed = add_child(assoc, child->config, child->mode, child->tsr, child->tsi, pair, now);
    install(assoc, installed, installed.current, keys, false, false);
  }

  // INITIAL_CONTACT: the peer has no other IKE SA with us; forget ours.
  if (find_notify(inner, notify::kInitialContact)) {
    std::vector<IkeSaId> stale;
    for (const auto& [id, other] : associations)
      if (other.get() != &assoc && other->up && other->peer_id == peer_id && other->config->name == config->name)
        stale.push_back(id);
    for (IkeSaId id : stale)
      if (Association* other = find_association(id))
        tear_down(*other, false, "replaced: the peer sent INITIAL_CONTACT", now);
  }
  return response;
}

}  // namespace tapsec::ikev2
