// IKE SA rekeying with CREATE_CHILD_SA (RFC 7296 §1.3.2, §2.18): new SPIs,
// SKEYSEED from the old SK_d, Child SAs carried over, and simultaneous
// rekeys from both ends resolved by the lowest nonce (§2.8.2, §2.25.2).
#include "agent/engines/ikev2/ike_impl.h"

namespace tapsec::ikev2 {

using namespace detail;

namespace {

std::vector<Proposal> ike_offers_with_spi(const SecurityAssociationPayload& sa) {
  std::vector<Proposal> out;
  for (const Proposal& p : sa.proposals)
    if (p.protocol == ProtocolId::Ike && p.spi.size() == 8) out.push_back(p);
  return out;
}


// The IKE SA that replaces `old` (RFC 7296 §2.18): new SPIs, suite and
// nonces; path, fragmentation, retransmission and signature hashes carry
// over. Keys are derived by the caller.
std::unique_ptr<IkeSa> successor_of(const IkeSa& old, bool initiator, std::uint64_t spi_i, std::uint64_t spi_r,
                                    const AlgorithmSuite& suite, std::vector<std::uint8_t> nonce_i,
                                    std::vector<std::uint8_t> nonce_r, TimePoint now) {
  auto next = std::make_unique<IkeSa>();
  next->assoc = old.assoc;
  next->phase = Phase::Established;
  next->initiator = initiator;
  next->spi_i = spi_i;
  next->spi_r = spi_r;
  next->local = old.local;
  next->remote = old.remote;
  next->suite = suite;
  next->nonce_i = std::move(nonce_i);
  next->nonce_r = std::move(nonce_r);
  next->peer_fragmentation = old.peer_fragmentation;
  next->fragment_size = old.fragment_size;
  next->retransmit = old.retransmit;
  next->peer_signature_hashes = old.peer_signature_hashes;
  next->created = now;
  return next;
}

}  // namespace

void IkeEngine::Impl::start_rekey_ike(Association& assoc, IkeSa& sa, const task::RekeyIke& task, TimePoint now) {
  const std::uint16_t group = task.group_override ? task.group_override : sa.suite.key_exchange;
  std::unique_ptr<KeyExchange> kex = KeyExchange::generate(group);
  if (!kex) {
    assoc.ike_rekeying = false;
    return;
  }
  flight::RekeyIke flight;
  flight.new_spi = new_spi();
  flight.nonce = random_bytes(kNonceSize);
  flight.kex = std::move(kex);
  flight.proposals = assoc.config->ike_proposals;
  for (Proposal& p : flight.proposals) p.spi = spi_bytes64(flight.new_spi);
  std::vector<Payload> payloads{
      make_payload(PayloadType::SecurityAssociation, SecurityAssociationPayload{flight.proposals}),
      make_payload(PayloadType::Nonce, NoncePayload{flight.nonce}),
      make_payload(PayloadType::KeyExchange, KeyExchangePayload{flight.kex->group(), flight.kex->public_value()}),
  };
  send_request(sa, ExchangeType::CreateChildSa, payloads, std::move(flight), now);
}

void IkeEngine::Impl::retire(IkeSa& sa, bool we_delete, TimePoint now) {
  sa.phase = Phase::Retired;
  // Its Delete ends it; without one it goes after the peer's retransmits.
  sa.expire = we_delete ? kNever : now + retired_grace(sa.retransmit);
}

void IkeEngine::Impl::switch_ike_sa(Association& assoc, IkeSa& old, IkeSa& next, bool we_delete_old, TimePoint now) {
  assoc.current = &next;
  if (assoc.collided == &next) assoc.collided = nullptr;
  retire(old, we_delete_old, now);
  ++assoc.epoch;
  assoc.ike_rekeying = false;
  assoc.last_heard = now;
  schedule_ike(assoc, now);
  report_up(assoc, next.initiator);
  if (we_delete_old)
    send_request(old, ExchangeType::Informational,
                 {make_payload(PayloadType::Delete, DeletePayload{ProtocolId::Ike, 0, {}})}, flight::DeleteIke{},
                 now);
}

std::vector<Payload> IkeEngine::Impl::handle_rekey_ike_request(IkeSa& sa, const std::vector<Payload>& inner,
                                                               TimePoint now) {
  Association& assoc = *sa.assoc;
  const bool our_rekey_in_flight =
      sa.outstanding && std::holds_alternative<flight::RekeyIke>(sa.outstanding->flight);
  // Other exchanges in flight, or already replaced or closing: later (§2.25.2).
  if (&sa != assoc.current || sa.phase != Phase::Established || assoc.deleting || assoc.collided ||
      (sa.outstanding && !our_rekey_in_flight))
    return {make_notify(notify::kTemporaryFailure)};
  const auto* sa_payload = find_body<SecurityAssociationPayload>(inner, PayloadType::SecurityAssociation);
  const auto* nonce = find_body<NoncePayload>(inner, PayloadType::Nonce);
  const auto* ke = find_body<KeyExchangePayload>(inner, PayloadType::KeyExchange);
  if (!sa_payload || !nonce || !ke || !nonce_size_ok(nonce->data)) return {make_notify(notify::kInvalidSyntax)};
  auto chosen = choose_preferring_group(ike_offers_with_spi(*sa_payload), assoc.config->ike_proposals, ke->group);
  if (!chosen) return {make_notify(notify::kNoProposalChosen)};
  if (chosen->suite.key_exchange != ke->group)
    return {make_notify(notify::kInvalidKePayload, {static_cast<std::uint8_t>(chosen->suite.key_exchange >> 8),
                                                    static_cast<std::uint8_t>(chosen->suite.key_exchange)})};
  const auto peer_spi = spi_value64(chosen->proposal.spi);
  std::unique_ptr<KeyExchange> kex = KeyExchange::generate(ke->group);
  const auto shared = kex ? kex->shared_secret(ke->data) : std::nullopt;
  if (!peer_spi || *peer_spi == 0 || !shared) return {make_notify(notify::kInvalidSyntax)};

  // The rekey's initiator is the new IKE SA's initiator: here the peer.
  auto next = successor_of(sa, /*initiator=*/false, *peer_spi, new_spi(), chosen->suite, nonce->data,
                           random_bytes(kNonceSize), now);
  derive_ike_sa_keys(*next, *shared, &sa.keys.sk_d, sa.suite.prf);

  Proposal proposal = chosen->proposal;
  proposal.spi = spi_bytes64(next->spi_r);
  std::vector<Payload> response{
      make_payload(PayloadType::SecurityAssociation, SecurityAssociationPayload{{proposal}}),
      make_payload(PayloadType::Nonce, NoncePayload{next->nonce_r}),
      make_payload(PayloadType::KeyExchange, KeyExchangePayload{kex->group(), kex->public_value()}),
  };
  IkeSa& added = add_sa(std::move(next));
  if (our_rekey_in_flight) {
    // Both ends rekey: decided when our response arrives.
    assoc.collided = &added;
    assoc.collided_nonce_i = added.nonce_i;
    assoc.collided_nonce_r = added.nonce_r;
  } else {
    switch_ike_sa(assoc, sa, added, false, now);
  }
  return response;
}

void IkeEngine::Impl::handle_rekey_ike_response(IkeSa& sa, const std::vector<Payload>& inner,
                                                flight::RekeyIke& flight, TimePoint now) {
  if (!sa.assoc) return;
  Association& assoc = *sa.assoc;
  assoc.ike_rekeying = false;

  auto give_up = [&](std::optional<std::chrono::milliseconds> retry) {
    if (assoc.collided) {
      // The peer's rekey stands alone; it deletes the old IKE SA.
      IkeSa& theirs = *assoc.collided;
      assoc.collided = nullptr;
      switch_ike_sa(assoc, sa, theirs, false, now);
      return;
    }
    assoc.rekey_at = retry ? now + *retry : kNever;
  };

  if (const NotifyPayload* error = find_error(inner)) {
    if (error->type == notify::kInvalidKePayload && error->data.size() == 2 && !assoc.collided) {
      const std::uint16_t wanted = static_cast<std::uint16_t>(error->data[0] << 8 | error->data[1]);
      if (offers_group(assoc.config->ike_proposals, wanted) && wanted != flight.kex->group()) {
        assoc.ike_rekeying = true;
        assoc.queue.push_front(task::RekeyIke{wanted});
        return;
      }
    }
    if (error->type == notify::kTemporaryFailure)
      give_up(std::chrono::milliseconds{2000 + random_u64() % 3000});
    else
      give_up(std::nullopt);
    return;
  }

  const auto* sa_payload = find_body<SecurityAssociationPayload>(inner, PayloadType::SecurityAssociation);
  const auto* nonce = find_body<NoncePayload>(inner, PayloadType::Nonce);
  const auto* ke = find_body<KeyExchangePayload>(inner, PayloadType::KeyExchange);
  std::optional<AlgorithmSuite> suite;
  std::optional<std::uint64_t> peer_spi;
  std::optional<SecretBytes> shared;
  if (sa_payload && sa_payload->proposals.size() == 1 && nonce && ke && nonce_size_ok(nonce->data)) {
    suite = suite_of(sa_payload->proposals.front(), flight.proposals);
    peer_spi = spi_value64(sa_payload->proposals.front().spi);
    if (suite && ke->group == flight.kex->group() && suite->key_exchange == ke->group)
      shared = flight.kex->shared_secret(ke->data);
  }
  if (!suite || !peer_spi || *peer_spi == 0 || !shared) {
    drop("unusable IKE SA rekey response", sa.remote, &EngineCounters::dropped_malformed);
    give_up(std::nullopt);
    return;
  }

  auto next = successor_of(sa, /*initiator=*/true, flight.new_spi, *peer_spi, *suite, flight.nonce, nonce->data, now);
  derive_ike_sa_keys(*next, *shared, &sa.keys.sk_d, sa.suite.prf);
  IkeSa& ours = add_sa(std::move(next));

  if (!assoc.collided) {
    switch_ike_sa(assoc, sa, ours, true, now);
    return;
  }
  IkeSa& theirs = *assoc.collided;
  assoc.collided = nullptr;
  const bool lost = nonce_less(lower_nonce(ours.nonce_i, ours.nonce_r),
                               lower_nonce(assoc.collided_nonce_i, assoc.collided_nonce_r));
  if (lost) {
    // Ours goes (we delete it); the peer deletes the old one.
    switch_ike_sa(assoc, sa, theirs, false, now);
    retire(ours, true, now);
    send_request(ours, ExchangeType::Informational,
                 {make_payload(PayloadType::Delete, DeletePayload{ProtocolId::Ike, 0, {}})}, flight::DeleteIke{},
                 now);
  } else {
    switch_ike_sa(assoc, sa, ours, true, now);
    retire(theirs, false, now);  // the peer deletes its losing IKE SA
  }
}

}  // namespace tapsec::ikev2
