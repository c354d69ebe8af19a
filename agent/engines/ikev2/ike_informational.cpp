// INFORMATIONAL exchanges: Delete of Child SAs and IKE SAs (RFC 7296 §1.4),
// liveness checks (empty requests), the AUTHENTICATION_FAILED notice, and
// MOBIKE address updates with NAT detection and COOKIE2 (RFC 4555 §3.5).
#include <algorithm>

#include "agent/engines/ikev2/ike_impl.h"

namespace tapsec::ikev2 {

using namespace detail;

namespace {

Payload esp_delete(const std::vector<std::uint32_t>& spis) {
  DeletePayload del{ProtocolId::Esp, 4, {}};
  for (std::uint32_t spi : spis) del.spis.push_back(spi_bytes32(spi));
  return make_payload(PayloadType::Delete, std::move(del));
}

}  // namespace

void IkeEngine::Impl::start_delete_child(Association& assoc, IkeSa& sa, const task::DeleteChild& task,
                                         TimePoint now) {
  auto it = assoc.children.find(task.child);
  if (it == assoc.children.end()) return;
  const Child& child = it->second;
  std::vector<std::uint32_t> spis{child.current.inbound_spi};
  if (child.collided) spis.push_back(child.collided->pair.inbound_spi);
  send_request(sa, ExchangeType::Informational, {esp_delete(spis)}, flight::DeletePairs{child.id, spis, true}, now);
}

void IkeEngine::Impl::start_delete_pair(Association& assoc, IkeSa& sa, const task::DeletePair& task, TimePoint now) {
  ChildSaId child = 0;
  for (RetiredPair& retired : assoc.retired) {
    if (retired.pair.inbound_spi != task.inbound_spi) continue;
    if (retired.delete_sent) return;
    retired.delete_sent = true;
    child = retired.child;
  }
  // Also sent for a pair we never installed, so the peer drops its half.
  send_request(sa, ExchangeType::Informational, {esp_delete({task.inbound_spi})},
               flight::DeletePairs{child, {task.inbound_spi}, false}, now);
}

void IkeEngine::Impl::start_delete_ike(Association&, IkeSa& sa, TimePoint now) {
  send_request(sa, ExchangeType::Informational,
               {make_payload(PayloadType::Delete, DeletePayload{ProtocolId::Ike, 0, {}})}, flight::DeleteIke{}, now);
}

void IkeEngine::Impl::start_update_addresses(Association& assoc, IkeSa& sa, const task::UpdateAddresses& task,
                                             TimePoint now) {
  flight::UpdateAddresses flight{task.old_local, task.old_remote, random_bytes(16)};
  std::vector<Payload> payloads{make_notify(notify::kUpdateSaAddresses)};
  for (Payload& p : nat_detection_payloads(sa.spi_i, sa.spi_r, sa.local, sa.remote,
                                           assoc.config->force_udp_encapsulation))
    payloads.push_back(std::move(p));
  payloads.push_back(make_notify(notify::kCookie2, flight.cookie2));
  send_request(sa, ExchangeType::Informational, payloads, std::move(flight), now);
}

std::vector<Payload> IkeEngine::Impl::handle_informational_request(IkeSa& sa, const std::vector<Payload>& inner,
                                                                   const Endpoint& local, const Endpoint& remote,
                                                                   TimePoint now) {
  Association& assoc = *sa.assoc;
  const bool current = &sa == assoc.current;

  if (find_notify(inner, notify::kAuthenticationFailed)) {
    // The initiator rejected our AUTH (RFC 7296 §2.21.2).
    if (current) tear_down(assoc, true, "AUTHENTICATION_FAILED: the peer rejected our authentication", now);
    return {};
  }

  bool ike_deleted = false;
  std::vector<std::uint32_t> answered;  // our inbound SPIs of the pairs the peer deleted
  for (const Payload& payload : inner) {
    const auto* del = body_of<DeletePayload>(payload);
    if (!del) continue;
    if (del->protocol == ProtocolId::Ike) {
      ike_deleted = true;
      continue;
    }
    if (del->protocol != ProtocolId::Esp) continue;
    for (const Bytes& raw : del->spis) {
      const auto spi = spi_value32(raw);  // the peer's inbound = our outbound SPI
      if (!spi) continue;
      bool found = false;
      for (auto it = assoc.children.begin(); it != assoc.children.end() && !found; ++it) {
        Child& child = it->second;
        if (child.current.outbound_spi == *spi) {
          found = true;
          if (child.collided) {
            // The peer's rekey won and replaced the pair we were rekeying too.
            remove_pair(assoc, child.id, child.current, false, "rekeyed");
            answered.push_back(child.current.inbound_spi);
            child.current = child.collided->pair;
            child.collided.reset();
            release_outbound(assoc, child);
            schedule_child(child, now);
            break;
          }
          // Both ends closing it at once: no Delete back (RFC 7296 §1.4.1).
          if (!child.deleting) answered.push_back(child.current.inbound_spi);
          remove_pair(assoc, child.id, child.current, true, "deleted by peer");
          assoc.children.erase(it);
          break;
        }
        if (child.collided && child.collided->pair.outbound_spi == *spi) {
          found = true;
          remove_pair(assoc, child.id, child.collided->pair, false, "the peer's rekey lost the collision");
          answered.push_back(child.collided->pair.inbound_spi);
          child.collided.reset();
          break;
        }
      }
      if (found) continue;
      auto retired = std::find_if(assoc.retired.begin(), assoc.retired.end(),
                                  [&](const RetiredPair& r) { return r.pair.outbound_spi == *spi; });
      if (retired != assoc.retired.end()) {
        // The peer reads the new pair now: send on it before the old goes.
        if (auto child = assoc.children.find(retired->child); child != assoc.children.end())
          release_outbound(assoc, child->second);
        remove_pair(assoc, retired->child, retired->pair, false, "rekeyed");
        if (!retired->delete_sent) answered.push_back(retired->pair.inbound_spi);
        assoc.retired.erase(retired);
      }
    }
  }

  if (ike_deleted) {
    if (!current) {
      // An IKE SA replaced by a rekey, or the peer's losing rekey.
      bury(sa, now);
      return {};
    }
    if (assoc.collided) {
      // The peer's crossing IKE rekey won and completed first.
      IkeSa& next = *assoc.collided;
      assoc.collided = nullptr;
      switch_ike_sa(assoc, sa, next, false, now);
      bury(sa, now);
      return {};
    }
    tear_down(assoc, false, "deleted by peer", now);
    return {};
  }

  std::vector<Payload> response;
  if (find_notify(inner, notify::kUpdateSaAddresses) && assoc.peer_mobike && current) {
    const Endpoint old_local = sa.local, old_remote = sa.remote;
    const NatDetection nat = detect_nat(inner, sa.spi_i, sa.spi_r, local, remote);
    if (nat.present) {
      assoc.nat_local = nat.local;
      assoc.nat_remote = nat.remote;
    }
    sa.local = local;
    sa.remote = remote;
    for (Payload& p : nat_detection_payloads(sa.spi_i, sa.spi_r, local, remote,
                                             assoc.config->force_udp_encapsulation))
      response.push_back(std::move(p));
    if (old_local != local || old_remote != remote)
      events.push_back(PathChange{assoc.id, old_local, old_remote, local, remote, assoc.udp_encapsulation()});
  }
  if (const NotifyPayload* cookie2 = find_notify(inner, notify::kCookie2))
    response.push_back(make_notify(notify::kCookie2, cookie2->data));
  if (!answered.empty()) response.push_back(esp_delete(answered));
  return response;
}

void IkeEngine::Impl::handle_informational_response(IkeSa& sa, const std::vector<Payload>& inner, Flight& flight,
                                                    TimePoint now) {
  Association* assoc = sa.assoc;
  if (!assoc) return;
  if (auto* deleted = std::get_if<flight::DeletePairs>(&flight)) {
    if (deleted->closes_child) {
      auto it = assoc->children.find(deleted->child);
      if (it != assoc->children.end()) {
        Child& child = it->second;
        if (child.collided) remove_pair(*assoc, child.id, child.collided->pair, false, "deleted");
        remove_pair(*assoc, child.id, child.current, true, "deleted");
        assoc->children.erase(it);
      }
      return;
    }
    for (std::uint32_t spi : deleted->inbound_spis) {
      auto retired = std::find_if(assoc->retired.begin(), assoc->retired.end(),
                                  [&](const RetiredPair& r) { return r.pair.inbound_spi == spi; });
      if (retired == assoc->retired.end()) continue;
      remove_pair(*assoc, retired->child, retired->pair, false, "rekeyed");
      assoc->retired.erase(retired);
    }
    return;
  }
  if (std::holds_alternative<flight::DeleteIke>(flight)) {
    if (&sa != assoc->current)
      bury(sa, now);
    else
      tear_down(*assoc, false, "closed", now);
    return;
  }
  if (auto* update = std::get_if<flight::UpdateAddresses>(&flight)) {
    const NotifyPayload* cookie2 = find_notify(inner, notify::kCookie2);
    if (!cookie2 || cookie2->data != update->cookie2) {
      drop("MOBIKE response without our COOKIE2", sa.remote, &EngineCounters::dropped_malformed);
      return;
    }
    const NatDetection nat = detect_nat(inner, sa.spi_i, sa.spi_r, sa.local, sa.remote);
    if (nat.present) {
      assoc->nat_local = nat.local;
      assoc->nat_remote = nat.remote;
    }
    events.push_back(
        PathChange{assoc->id, update->old_local, update->old_remote, sa.local, sa.remote, assoc->udp_encapsulation()});
  }
}

}  // namespace tapsec::ikev2
