// Per keyed IKE SA: message-ID windows (size 1 each way), SK protection and
// RFC 7383 fragments, the response cache, retransmits and the task queue.
#include <algorithm>
#include <cmath>

#include "agent/engines/ikev2/ike_impl.h"

namespace tapsec::ikev2 {

using namespace detail;

namespace {

constexpr std::uint16_t kMaxFragments = 128;
constexpr std::size_t kMaxReassemblyBytes = 64 * 1024;
constexpr std::chrono::seconds kReassemblyTimeout{30};

}  // namespace

Header IkeEngine::Impl::header_for(const IkeSa& sa, ExchangeType exchange, bool response, std::uint32_t id) const {
  Header header;
  header.initiator_spi = sa.spi_i;
  header.responder_spi = sa.spi_r;
  header.exchange = exchange;
  header.flags = static_cast<std::uint8_t>((sa.initiator ? header_flags::kInitiator : 0) |
                                           (response ? header_flags::kResponse : 0));
  header.message_id = id;
  return header;
}

bool IkeEngine::Impl::fragmenting(const IkeSa& sa) const { return sa.peer_fragmentation; }

std::vector<Bytes> IkeEngine::Impl::protect(const IkeSa& sa, const Header& header,
                                            const std::vector<Payload>& inner) const {
  if (fragmenting(sa)) return encode_protected_fragments(header, inner, *sa.outbound, sa.fragment_size);
  return {encode_protected(header, inner, *sa.outbound)};
}

void IkeEngine::Impl::transmit(const std::vector<Bytes>& datagrams, const Endpoint& local, const Endpoint& remote) {
  for (const Bytes& datagram : datagrams) {
    events.push_back(SendDatagram{local, remote, datagram});
    ++counters.sent;
  }
}

const RetransmitSettings& IkeEngine::Impl::retransmit_settings(const IkeSa& sa) const { return sa.retransmit; }

void IkeEngine::Impl::send_request(IkeSa& sa, ExchangeType exchange, const std::vector<Payload>& inner, Flight flight,
                                   TimePoint now) {
  Outstanding out;
  out.message_id = sa.next_message_id++;
  out.exchange = exchange;
  out.datagrams = protect(sa, header_for(sa, exchange, false, out.message_id), inner);
  out.timeout = retransmit_settings(sa).initial_timeout;
  out.next_send = now + out.timeout;
  out.flight = std::move(flight);
  transmit(out.datagrams, sa.local, sa.remote);
  sa.outstanding = std::move(out);
}

void IkeEngine::Impl::send_response(IkeSa& sa, ExchangeType exchange, std::uint32_t id,
                                    const std::vector<Payload>& inner, const Endpoint& local,
                                    const Endpoint& remote) {
  sa.cached_response = protect(sa, header_for(sa, exchange, true, id), inner);
  sa.cached_response_id = id;
  sa.expected_request_id = id + 1;
  transmit(sa.cached_response, local, remote);
}

void IkeEngine::Impl::receive_protected(IkeSa& sa, const Endpoint& local, const Endpoint& remote,
                                        const Message& message, std::span<const std::uint8_t> datagram,
                                        TimePoint now) {
  const Header& header = message.header;
  if (message.payloads.empty() || !sa.inbound) {
    drop("message without an SK payload", remote, &EngineCounters::dropped_malformed);
    return;
  }
  const Payload& last = message.payloads.back();
  const auto* fragment = body_of<EncryptedFragmentPayload>(last);
  if (last.type != PayloadType::Encrypted && !fragment) {
    drop("unprotected " + to_string(header.exchange) + " message", remote, &EngineCounters::dropped_malformed);
    return;
  }

  if (header.is_response()) {
    if (!sa.outstanding || sa.outstanding->message_id != header.message_id ||
        sa.outstanding->exchange != header.exchange) {
      drop("response that matches no outstanding request", remote, &EngineCounters::dropped_malformed);
      return;
    }
  } else {
    if (sa.cached_response_id && header.message_id == *sa.cached_response_id) {
      // A retransmitted request: answer from the cache without processing it
      // again (for a fragmented request, once: on its first fragment). Only
      // an exact copy of what we processed is answered, so nothing forged
      // gets a reply.
      const bool first = !fragment || fragment->number == 1;
      if (first && std::ranges::equal(datagram, sa.cached_request)) {
        ++counters.retransmitted;
        transmit(sa.cached_response, local, remote);
      }
      return;
    }
    if (sa.phase == Phase::Dead || header.message_id != sa.expected_request_id) {
      drop("request outside the message-ID window", remote, &EngineCounters::dropped_malformed);
      return;
    }
  }

  std::vector<Payload> inner;
  Bytes request_copy;  // kept with the response for retransmit detection
  if (!fragment) {
    auto opened = open_protected(message, datagram, *sa.inbound);
    if (const auto* error = std::get_if<DecodeError>(&opened)) {
      drop("SK payload rejected: " + error->message, remote, &EngineCounters::dropped_authentication);
      return;
    }
    inner = std::move(std::get<std::vector<Payload>>(opened));
    if (!header.is_response()) request_copy.assign(datagram.begin(), datagram.end());
  } else {
    if (fragment->number == 0 || fragment->total == 0 || fragment->number > fragment->total ||
        fragment->total > kMaxFragments) {
      drop("bad fragment numbering", remote, &EngineCounters::dropped_malformed);
      return;
    }
    auto content = open_fragment(message, datagram, *sa.inbound);
    if (!content) {
      drop("SKF fragment failed integrity", remote, &EngineCounters::dropped_authentication);
      return;
    }
    Reassembly* reassembly = sa.reassembly ? &*sa.reassembly : nullptr;
    if (!reassembly || reassembly->message_id != header.message_id ||
        reassembly->response != header.is_response() || reassembly->total != fragment->total) {
      // A new message, or the sender re-fragmented it (RFC 7383 §2.6.2): start over.
      sa.reassembly.emplace();
      reassembly = &*sa.reassembly;
      reassembly->message_id = header.message_id;
      reassembly->response = header.is_response();
      reassembly->exchange = header.exchange;
      reassembly->total = fragment->total;
      reassembly->deadline = now + kReassemblyTimeout;
    }
    if (reassembly->pieces.contains(fragment->number)) return;  // a duplicate
    if (reassembly->bytes + content->size() > kMaxReassemblyBytes) {
      sa.reassembly.reset();
      drop("fragmented message too large", remote, &EngineCounters::dropped_malformed);
      return;
    }
    if (fragment->number == 1) {
      reassembly->first_inner = fragment->first_inner;
      reassembly->first_datagram.assign(datagram.begin(), datagram.end());
    }
    reassembly->bytes += content->size();
    reassembly->pieces.emplace(fragment->number, std::move(*content));
    if (reassembly->pieces.size() < reassembly->total) return;
    Bytes whole;
    whole.reserve(reassembly->bytes);
    for (const auto& [number, piece] : reassembly->pieces) whole.insert(whole.end(), piece.begin(), piece.end());
    const PayloadType first = reassembly->first_inner;
    request_copy = std::move(reassembly->first_datagram);
    sa.reassembly.reset();
    auto decoded = decode_payloads(first, whole);
    if (const auto* error = std::get_if<DecodeError>(&decoded)) {
      drop("malformed reassembled message: " + error->message, remote, &EngineCounters::dropped_malformed);
      return;
    }
    inner = std::move(std::get<std::vector<Payload>>(decoded));
  }

  // Authenticated from here on.
  if (sa.assoc) sa.assoc->last_heard = now;
  if (header.is_response()) {
    process_response(sa, header, inner, local, remote, now);
  } else {
    process_request(sa, header, inner, local, remote, now);
    if (sa.cached_response_id == header.message_id) sa.cached_request = std::move(request_copy);
  }
}

void IkeEngine::Impl::process_request(IkeSa& sa, const Header& header, const std::vector<Payload>& inner,
                                      const Endpoint& local, const Endpoint& remote, TimePoint now) {
  // An unknown critical payload is refused (RFC 7296 §2.5).
  for (const Payload& payload : inner) {
    if (const auto* unknown = body_of<UnknownPayload>(payload); unknown && payload.critical) {
      Bytes type{unknown->type};
      send_response(sa, header.exchange, header.message_id,
                    {make_notify(notify::kUnsupportedCriticalPayload, type)}, local, remote);
      return;
    }
  }
  follow_peer_address(sa, local, remote, header.exchange, inner, now);
  std::vector<Payload> response;
  switch (header.exchange) {
    case ExchangeType::IkeAuth:
      if (sa.phase != Phase::HalfOpen || !sa.assoc) {
        drop("IKE_AUTH request on an established IKE SA", remote, &EngineCounters::dropped_malformed);
        return;
      }
      response = handle_auth_request(sa, inner, local, remote, now);
      break;
    case ExchangeType::CreateChildSa:
      if (!sa.assoc || (sa.phase != Phase::Established && sa.phase != Phase::Retired)) {
        drop("CREATE_CHILD_SA before IKE_AUTH", remote, &EngineCounters::dropped_malformed);
        return;
      }
      response = handle_create_child_request(sa, inner, now);
      break;
    case ExchangeType::Informational:
      if (!sa.assoc || sa.phase == Phase::HalfOpen) {
        drop("INFORMATIONAL before IKE_AUTH", remote, &EngineCounters::dropped_malformed);
        return;
      }
      response = handle_informational_request(sa, inner, local, remote, now);
      break;
    default:
      drop("unknown exchange type", remote, &EngineCounters::dropped_malformed);
      return;
  }
  send_response(sa, header.exchange, header.message_id, response, local, remote);
  if (sa.assoc) pump(*sa.assoc, now);
}

void IkeEngine::Impl::process_response(IkeSa& sa, const Header& header, const std::vector<Payload>& inner,
                                       const Endpoint&, const Endpoint&, TimePoint now) {
  (void)header;
  Flight flight = std::move(sa.outstanding->flight);
  sa.outstanding.reset();
  Association* assoc = sa.assoc;
  if (auto* auth = std::get_if<flight::Auth>(&flight))
    handle_auth_response(sa, inner, *auth, now);
  else if (auto* child = std::get_if<flight::CreateChild>(&flight))
    handle_create_child_response(sa, inner, *child, now);
  else if (auto* rekey = std::get_if<flight::RekeyIke>(&flight))
    handle_rekey_ike_response(sa, inner, *rekey, now);
  else
    handle_informational_response(sa, inner, flight, now);
  // The association may be gone (graveyard) but is not freed before the call returns.
  if (assoc && associations.contains(assoc->id) && associations.at(assoc->id).get() == assoc) pump(*assoc, now);
}

void IkeEngine::Impl::follow_peer_address(IkeSa& sa, const Endpoint& local, const Endpoint& remote,
                                          ExchangeType exchange, const std::vector<Payload>& inner, TimePoint) {
  if (local == sa.local && remote == sa.remote) return;
  if (sa.phase == Phase::HalfOpen && exchange == ExchangeType::IkeAuth) {
    // NAT traversal: the initiator moved to port 4500 (RFC 7296 §2.23).
    forget_half_open(sa);
    sa.local = local;
    sa.remote = remote;
    return;
  }
  Association* assoc = sa.assoc;
  if (!assoc || sa.phase != Phase::Established || assoc->current != &sa) return;
  if (find_notify(inner, notify::kUpdateSaAddresses)) return;  // MOBIKE: the handler moves the SA
  // With MOBIKE only UPDATE_SA_ADDRESSES moves an SA (RFC 4555 §3.5);
  // without it, a peer behind a NAT may change its mapping (RFC 7296 §2.23).
  if (assoc->peer_mobike || !assoc->nat_remote) return;
  PathChange change{assoc->id, sa.local, sa.remote, local, remote, assoc->udp_encapsulation()};
  sa.local = local;
  sa.remote = remote;
  events.push_back(change);
}

void IkeEngine::Impl::service_retransmit(IkeSa& sa, TimePoint now) {
  if (!sa.outstanding || now < sa.outstanding->next_send) return;
  Outstanding& out = *sa.outstanding;
  const RetransmitSettings& settings = retransmit_settings(sa);
  if (out.retransmits >= settings.tries) {
    Flight flight = std::move(out.flight);
    sa.outstanding.reset();
    request_failed(sa, flight, now);
    return;
  }
  ++out.retransmits;
  ++counters.retransmitted;
  transmit(out.datagrams, sa.local, sa.remote);
  const double next = static_cast<double>(out.timeout.count()) * std::max(1.0, settings.backoff);
  out.timeout = std::chrono::milliseconds{static_cast<std::int64_t>(std::llround(next))};
  out.next_send = now + out.timeout;
}

void IkeEngine::Impl::request_failed(IkeSa& sa, Flight& flight, TimePoint now) {
  Association* assoc = sa.assoc;
  if (!assoc) return;
  if (&sa != assoc->current) {
    // An old or losing IKE SA of a rekey: its Delete went unanswered.
    bury(sa, now);
    return;
  }
  if (std::holds_alternative<flight::DeleteIke>(flight)) {
    tear_down(*assoc, false, "closed (the peer did not confirm the Delete)", now);
    return;
  }
  tear_down(*assoc, true, "peer not responding", now);
}

void IkeEngine::Impl::pump(Association& assoc, TimePoint now) {
  for (;;) {
    IkeSa* sa = assoc.current;
    if (!sa || sa->assoc != &assoc || sa->phase != Phase::Established || sa->outstanding || assoc.queue.empty())
      return;
    Task next = std::move(assoc.queue.front());
    assoc.queue.pop_front();
    start_task(assoc, *sa, std::move(next), now);
  }
}

void IkeEngine::Impl::start_task(Association& assoc, IkeSa& sa, Task task, TimePoint now) {
  if (assoc.deleting && !std::holds_alternative<task::DeleteIke>(task)) return;  // all ends with the IKE SA
  std::visit(
      [&](auto& t) {
        using T = std::decay_t<decltype(t)>;
        if constexpr (std::is_same_v<T, task::CreateChild>)
          start_create_child(assoc, sa, t, now);
        else if constexpr (std::is_same_v<T, task::RekeyChild>)
          start_rekey_child(assoc, sa, t, now);
        else if constexpr (std::is_same_v<T, task::DeleteChild>)
          start_delete_child(assoc, sa, t, now);
        else if constexpr (std::is_same_v<T, task::DeletePair>)
          start_delete_pair(assoc, sa, t, now);
        else if constexpr (std::is_same_v<T, task::RekeyIke>)
          start_rekey_ike(assoc, sa, t, now);
        else if constexpr (std::is_same_v<T, task::DeleteIke>)
          start_delete_ike(assoc, sa, now);
        else if constexpr (std::is_same_v<T, task::Liveness>)
          send_request(sa, ExchangeType::Informational, {}, flight::Liveness{}, now);
        else if constexpr (std::is_same_v<T, task::UpdateAddresses>)
          start_update_addresses(assoc, sa, t, now);
      },
      task);
}

std::vector<Payload> IkeEngine::Impl::nat_detection_payloads(std::uint64_t spi_i, std::uint64_t spi_r,
                                                             const Endpoint& local, const Endpoint& remote,
                                                             bool fake_source) const {
  // A source hash that cannot match makes the peer see a NAT: how UDP
  // encapsulation is forced (as strongSwan's encap=yes does).
  Bytes source = fake_source ? random_bytes(20) : nat_detection_hash(spi_i, spi_r, local);
  return {make_notify(notify::kNatDetectionSourceIp, std::move(source)),
          make_notify(notify::kNatDetectionDestinationIp, nat_detection_hash(spi_i, spi_r, remote))};
}

NatDetection IkeEngine::Impl::detect_nat(const std::vector<Payload>& payloads, std::uint64_t spi_i,
                                         std::uint64_t spi_r, const Endpoint& local, const Endpoint& remote) const {
  const Bytes expected_source = nat_detection_hash(spi_i, spi_r, remote);
  const Bytes expected_destination = nat_detection_hash(spi_i, spi_r, local);
  bool any_source = false, source_match = false, any_destination = false, destination_match = false;
  for (const Payload& payload : payloads) {
    const auto* n = body_of<NotifyPayload>(payload);
    if (!n) continue;
    if (n->type == notify::kNatDetectionSourceIp) {
      any_source = true;
      source_match |= n->data == expected_source;
    } else if (n->type == notify::kNatDetectionDestinationIp) {
      any_destination = true;
      destination_match |= n->data == expected_destination;
    }
  }
  NatDetection result;
  result.present = any_source && any_destination;
  result.remote = result.present && !source_match;
  result.local = result.present && !destination_match;
  return result;
}

}  // namespace tapsec::ikev2
