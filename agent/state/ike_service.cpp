#include "agent/state/ike_service.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <limits>

#include "agent/bus/errors.h"
#include "agent/core/log.h"
#include "agent/engines/ikev2/ike_engine.h"
#include "agent/kernel/address_monitor.h"
#include "agent/kernel/xfrm.h"
#include "agent/state/ike_sockets.h"
#include "agent/state/ike_tunnel_config.h"
#include "agent/state/policy_caller.h"

namespace tapsec::state {
namespace {

namespace xfrm = kernel::xfrm;
using ikev2::Endpoint;
using ikev2::IpAddress;

bus::BusError make_error(const char* short_name, std::string message) {
  return bus::error::named(short_name, std::move(message));
}

std::uint64_t wall_usec() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string hex_spi(std::uint64_t spi, int digits) {
  char text[24];
  std::snprintf(text, sizeof text, "0x%0*" PRIx64, digits, spi);
  return text;
}

std::vector<std::string> texts(const std::vector<ikev2::TrafficSelector>& selectors) {
  std::vector<std::string> out;
  for (const auto& ts : selectors) out.push_back(ts.to_string());
  return out;
}

std::string group_name(std::uint16_t group) {
  switch (group) {
    case ikev2::group::kCurve25519: return "X25519";
    case ikev2::group::kEcp256: return "ECP-256";
    case ikev2::group::kEcp384: return "ECP-384";
    case ikev2::group::kModp2048: return "MODP-2048";
    default: return group ? std::to_string(group) : "";
  }
}

// The kernel's names for an ESP suite.
void set_algorithms(xfrm::SaSpec& spec, const ikev2::AlgorithmSuite& suite) {
  switch (suite.encryption) {
    case ikev2::encr::kAesGcm16:
      spec.aead_algorithm = "rfc4106(gcm(aes))";
      spec.aead_icv_bits = 128;
      return;
    case ikev2::encr::kChaCha20Poly1305:
      spec.aead_algorithm = "rfc7539esp(chacha20,poly1305)";
      spec.aead_icv_bits = 128;
      return;
    default:
      spec.encryption_algorithm = "cbc(aes)";
      break;
  }
  switch (suite.integrity) {
    case ikev2::integ::kHmacSha384_192:
      spec.integrity_algorithm = "hmac(sha384)";
      spec.integrity_truncation_bits = 192;
      break;
    case ikev2::integ::kHmacSha512_256:
      spec.integrity_algorithm = "hmac(sha512)";
      spec.integrity_truncation_bits = 256;
      break;
    default:
      spec.integrity_algorithm = "hmac(sha256)";
      spec.integrity_truncation_bits = 128;
      break;
  }
}

std::vector<std::uint8_t> copy(const ikev2::SecretBytes& secret) {
  return std::vector<std::uint8_t>(secret.data(), secret.data() + secret.size());
}

bool is_any(const std::string& peer) { return peer.empty() || peer == "%any"; }

}  // namespace

// --------------------------------------------------------------------------

struct IkeService::Impl : ikev2::ConfigSelector {
  struct ChildRecord {
    std::uint64_t association_id = 0;
    std::uint32_t reqid = 0;
    ikev2::ChildSaInstall current;  // keys cleared; what is installed now
    bool installed = false;
    bool outbound_held = false;  // current's outbound SA waits for the peer (InstallPart)
    std::uint64_t created_at = 0;
  };
  struct SaRecord {
    std::uint64_t association_id = 0;
    std::string tunnel;
    uid_t owner_uid = 0;
    bool export_allowed = false;
    bool up = false;
    std::uint64_t created_at = 0;
    std::vector<std::function<void(bus::Backend::TunnelResult)>> waiting;
    core::Reactor::Id timeout_timer = 0;
    std::map<ikev2::ChildSaId, ChildRecord> children;
  };
  struct TunnelEntry {
    policy::Tunnel tunnel;
    std::shared_ptr<ikev2::IkeConfig> config;  // null when it failed to build
    std::string config_error;
    std::uint32_t trap_reqid = 0;  // non-zero while trap policies are installed
    std::vector<std::pair<ikev2::TrafficSelector, ikev2::TrafficSelector>> trap_selectors;
    IpAddress local, remote;
    // Peer= is a host name: its lookup, and the calls waiting for it.
    std::optional<IpAddress> looked_up;
    core::Resolver::Lookup lookup;
    std::vector<std::function<void()>> after_lookup;
  };

  core::Reactor& reactor;
  core::Resolver& resolver;
  IkeOptions options;
  kernel::KernelCapabilities capabilities;
  IdAllocator allocate_id;
  bus::Publisher* publisher = nullptr;
  const policy::Policy* policy = nullptr;

  IkeSockets sockets;
  // Mutable: reading an SA's counters (from const association()) sends a
  // query and advances the socket's sequence number, nothing else.
  mutable std::optional<xfrm::XfrmSocket> kernel;
  std::optional<xfrm::XfrmEvents> kernel_events;
  core::Reactor::Id events_watch = 0;
  std::optional<kernel::AddressMonitor> address_monitor;
  core::Reactor::Id address_watch = 0, path_check_timer = 0;
  std::unique_ptr<ikev2::IkeEngine> engine;
  core::Reactor::Id engine_timer = 0;
  bool started = false;
  std::string not_running_reason =
      options.off_reason.empty() ? "IKE is off (tapsecd --ike-port 0)" : "IKE is off: " + options.off_reason;

  std::map<std::string, TunnelEntry> tunnels;
  std::vector<std::string> tunnel_order;  // as the policy lists them
  std::map<ikev2::IkeSaId, SaRecord> sas;
  std::map<std::uint64_t, std::pair<ikev2::IkeSaId, ikev2::ChildSaId>> by_association;  // child 0 = the IKE SA
  std::uint32_t next_reqid = kernel::xfrm::kAgentReqidFirst;

  // Reqids stay in the agent's range (kernel/xfrm.h), which marks its state.
  std::uint32_t allocate_reqid() {
    const std::uint32_t reqid = next_reqid;
    next_reqid = reqid == kernel::xfrm::kAgentReqidLast ? kernel::xfrm::kAgentReqidFirst : reqid + 1;
    return reqid;
  }

  Impl(core::Reactor& r, core::Resolver& n, IkeOptions o, kernel::KernelCapabilities c, IdAllocator ids)
      : reactor(r),
        resolver(n),
        options(o),
        capabilities(std::move(c)),
        allocate_id(std::move(ids)),
        sockets(r, [this](const Endpoint& local, const Endpoint& remote, std::span<const std::uint8_t> d) {
          engine->receive(local, remote, d, ikev2::Clock::now());
          pump();
        }) {}

  ~Impl() override {
    reactor.unwatch(events_watch);
    reactor.unwatch(address_watch);
    reactor.cancel_timer(path_check_timer);
    reactor.cancel_timer(engine_timer);
    for (auto& [id, sa] : sas) reactor.cancel_timer(sa.timeout_timer);
  }

  // ---- ConfigSelector: which tunnel answers a peer

  // Tunnels that may answer this peer: those naming its ID first, then
  // those accepting any ID, each group in policy order.
  std::vector<std::shared_ptr<const ikev2::IkeConfig>> candidates(const Endpoint& local, const Endpoint& remote,
                                                                   const ikev2::Identification* peer_id) const {
    std::vector<std::shared_ptr<const ikev2::IkeConfig>> named, any_id;
    for (const auto& name : tunnel_order) {
      const TunnelEntry& entry = tunnels.at(name);
      if (!entry.config) continue;
      const auto& t = entry.tunnel;
      if (!is_any(t.peer) && !(entry.remote.family && entry.remote == remote.address)) continue;
      if (!t.local_address.empty() && !(entry.local == local.address)) continue;
      const auto& expected = entry.config->peer.expected_id;
      if (!expected) any_id.push_back(entry.config);
      else if (!peer_id || *expected == *peer_id) named.push_back(entry.config);
    }
    named.insert(named.end(), any_id.begin(), any_id.end());
    return named;
  }

  std::shared_ptr<const ikev2::IkeConfig> select(const Endpoint& local, const Endpoint& remote,
                                                 const ikev2::Identification* peer_id) override {
    auto found = candidates(local, remote, peer_id);
    return found.empty() ? nullptr : found.front();
  }

  std::vector<std::shared_ptr<const ikev2::IkeConfig>> candidates(const Endpoint& local, const Endpoint& remote,
                                                                   const ikev2::Identification& peer_id) override {
    return candidates(local, remote, &peer_id);
  }

  // ---- engine plumbing

  void pump() {
    std::vector<std::function<void()>> after;
    for (;;) {
      auto events = engine->take_events();
      if (events.empty()) break;
      for (auto& event : events) std::visit([&](auto& e) { handle(e, after); }, event);
    }
    for (auto& f : after) f();
    reschedule();
  }

  void reschedule() {
    reactor.cancel_timer(engine_timer);
    engine_timer = 0;
    if (auto deadline = engine->next_deadline()) {
      engine_timer = reactor.add_timer_at(*deadline, [this] {
        engine_timer = 0;
        engine->on_timer(ikev2::Clock::now());
        pump();
      });
    }
  }

  void handle(ikev2::SendDatagram& e, std::vector<std::function<void()>>&) { sockets.send(e.local, e.remote, e.data); }

  void handle(ikev2::Dropped& e, std::vector<std::function<void()>>&) {
    core::log::debug("IKE datagram dropped", {{"from", e.remote.to_string()}, {"reason", e.reason}});
  }

  void handle(ikev2::IkeSaUp& e, std::vector<std::function<void()>>& after) {
    SaRecord& sa = sas[e.ike_sa];
    bool is_new = sa.association_id == 0;
    if (is_new) {
      sa.association_id = allocate_id();
      sa.tunnel = e.config_name;
      sa.created_at = wall_usec();
      by_association[sa.association_id] = {e.ike_sa, 0};
      // A request we initiated carried its own policy decision; an SA the
      // peer started follows its tunnel's.
      if (auto it = tunnels.find(e.config_name); !e.initiator && it != tunnels.end())
        sa.export_allowed = it->second.tunnel.export_allowed;
    }
    sa.up = true;
    core::log::info(e.epoch ? "IKE SA rekeyed" : "IKE SA established",
                    {{"id", std::to_string(sa.association_id)}, {"tunnel", e.config_name},
                     {"peer", e.peer_id.to_string()}, {"remote", e.remote.to_string()},
                     {"suite", e.suite.to_string()}});
    std::uint64_t id = sa.association_id;
    auto waiting = std::move(sa.waiting);
    sa.waiting.clear();
    reactor.cancel_timer(sa.timeout_timer);
    sa.timeout_timer = 0;
    after.push_back([this, id, is_new, epoch = e.epoch, waiting = std::move(waiting)] {
      if (publisher) {
        if (is_new) publisher->association_added(id);
        else publisher->keys_updated(id, epoch);
      }
      for (auto& done : waiting) done(id);
    });
  }

  void handle(ikev2::IkeSaDown& e, std::vector<std::function<void()>>& after) {
    auto it = sas.find(e.ike_sa);
    if (it == sas.end()) return;
    SaRecord sa = std::move(it->second);
    sas.erase(it);
    reactor.cancel_timer(sa.timeout_timer);
    core::log::info(e.failed ? "IKE SA failed" : "IKE SA closed",
                    {{"id", std::to_string(sa.association_id)}, {"tunnel", sa.tunnel}, {"reason", e.reason}});
    for (auto& [child_id, child] : sa.children) remove_child_state(child, /*closed=*/true, sa.tunnel);
    std::vector<std::uint64_t> removed;
    for (auto& [child_id, child] : sa.children) removed.push_back(child.association_id);
    if (sa.association_id) removed.push_back(sa.association_id);
    for (auto id : removed) by_association.erase(id);
    after.push_back([this, removed, reason = e.reason, waiting = std::move(sa.waiting)] {
      for (auto& done : waiting) done(make_error("HandshakeFailed", reason));
      if (!publisher) return;
      for (auto id : removed) {
        publisher->terminated(id, reason);
        publisher->association_removed(id);
      }
    });
  }

  void handle(ikev2::ChildSaInstall& e, std::vector<std::function<void()>>& after) {
    SaRecord& sa = sas[e.ike_sa];
    if (e.part == ikev2::InstallPart::Outbound) {
      install_held_outbound(sa, e);
      return;
    }
    if (!e.current) {
      install_losing_pair(sa, e);
      return;
    }
    ChildRecord& child = sa.children[e.child];
    bool is_new = child.association_id == 0;
    if (is_new) {
      child.association_id = allocate_id();
      child.created_at = wall_usec();
      by_association[child.association_id] = {e.ike_sa, e.child};
      auto tunnel = tunnels.find(e.config_name);
      child.reqid = tunnel != tunnels.end() && tunnel->second.trap_reqid ? tunnel->second.trap_reqid : allocate_reqid();
    }
    std::string failure = install(e, child.reqid, /*policies=*/is_new);
    // Keys stay in the kernel only.
    ikev2::ChildSaInstall kept = e;
    kept.inbound_encryption = kept.inbound_integrity = {};
    kept.outbound_encryption = kept.outbound_integrity = {};
    child.current = std::move(kept);
    child.installed = failure.empty();
    child.outbound_held = e.part == ikev2::InstallPart::Inbound;
    if (!failure.empty()) {
      core::log::error("Child SA not installed", {{"tunnel", e.config_name}, {"error", failure}});
      engine->delete_child(e.ike_sa, e.child, ikev2::Clock::now());
      return;
    }
    core::log::info(e.is_rekey ? "Child SA rekeyed" : "Child SA installed",
                    {{"id", std::to_string(child.association_id)}, {"tunnel", e.config_name},
                     {"in", hex_spi(e.inbound_spi, 8)}, {"out", hex_spi(e.outbound_spi, 8)},
                     {"local_ts", e.local_ts.empty() ? "" : e.local_ts.front().to_string()},
                     {"remote_ts", e.remote_ts.empty() ? "" : e.remote_ts.front().to_string()}});
    std::uint64_t id = child.association_id;
    after.push_back([this, id, is_new, epoch = e.epoch] {
      if (!publisher) return;
      if (is_new) publisher->association_added(id);
      else publisher->keys_updated(id, epoch);
    });
  }

  // Our side of a rekey collision we lost: it only receives until the
  // engine deletes it; the child's record stays on the peer's pair.
  void install_losing_pair(SaRecord& sa, const ikev2::ChildSaInstall& e) {
    auto child = sa.children.find(e.child);
    if (child == sa.children.end() || !child->second.installed) return;
    if (std::string failure = install(e, child->second.reqid, /*policies=*/false); !failure.empty())
      core::log::warning("inbound SA of a losing rekey not installed",
                         {{"tunnel", e.config_name}, {"in", hex_spi(e.inbound_spi, 8)}, {"error", failure}});
  }

  // The second half of a rekey we answered: the peer now reads the new pair.
  void install_held_outbound(SaRecord& sa, const ikev2::ChildSaInstall& e) {
    auto child = sa.children.find(e.child);
    if (child == sa.children.end() || !child->second.installed) return;
    std::string failure = install(e, child->second.reqid, /*policies=*/false);
    if (!failure.empty()) {
      core::log::error("outbound SA of a rekeyed Child SA not installed",
                       {{"tunnel", e.config_name}, {"out", hex_spi(e.outbound_spi, 8)}, {"error", failure}});
      engine->delete_child(e.ike_sa, e.child, ikev2::Clock::now());
      return;
    }
    child->second.current.local = e.local;
    child->second.current.remote = e.remote;
    child->second.current.udp_encapsulation = e.udp_encapsulation;
    child->second.outbound_held = false;
    core::log::debug("outbound SA of the rekeyed Child SA in use",
                     {{"id", std::to_string(child->second.association_id)}, {"out", hex_spi(e.outbound_spi, 8)}});
  }

  void handle(ikev2::ChildSaRemove& e, std::vector<std::function<void()>>& after) {
    auto sa = sas.find(e.ike_sa);
    if (sa == sas.end()) return;
    auto child = sa->second.children.find(e.child);
    if (child == sa->second.children.end()) return;
    delete_sa_pair(e.local, e.remote, e.inbound_spi, e.outbound_spi);
    if (!e.child_closed) return;  // a rekey retired the old pair
    remove_policies(child->second, sa->second.tunnel);
    std::uint64_t id = child->second.association_id;
    by_association.erase(id);
    sa->second.children.erase(child);
    after.push_back([this, id, reason = e.reason] {
      if (!publisher) return;
      publisher->terminated(id, reason);
      publisher->association_removed(id);
    });
  }

  void handle(ikev2::PathChange& e, std::vector<std::function<void()>>& after) {
    auto sa = sas.find(e.ike_sa);
    if (sa == sas.end()) return;
    std::optional<xfrm::Encapsulation> encap;
    if (e.udp_encapsulation) encap = xfrm::Encapsulation{e.new_local.port, e.new_remote.port};
    std::vector<std::uint64_t> ids{sa->second.association_id};
    for (auto& [child_id, child] : sa->second.children) {
      if (kernel && child.installed) {
        auto& c = child.current;
        auto in = kernel->update_sa_addresses(c.local.address, c.inbound_spi, e.new_remote.address,
                                              e.new_local.address, encap);
        if (!in) core::log::error("could not move a Child SA", {{"error", in.error()}});
        // A held outbound SA is installed on the new path when released.
        if (!child.outbound_held)
          if (auto out = kernel->update_sa_addresses(c.remote.address, c.outbound_spi, e.new_local.address,
                                                     e.new_remote.address, encap);
              !out)
            core::log::error("could not move a Child SA", {{"error", out.error()}});
        c.local = e.new_local;
        c.remote = e.new_remote;
        c.udp_encapsulation = e.udp_encapsulation;
        if (c.mode == ikev2::Mode::Tunnel) install_policies(c, child.reqid, /*update=*/true);
      }
      ids.push_back(child.association_id);
    }
    std::string old_path = e.old_local.to_string() + " - " + e.old_remote.to_string();
    std::string new_path = e.new_local.to_string() + " - " + e.new_remote.to_string();
    core::log::info("IKE SA moved", {{"tunnel", sa->second.tunnel}, {"from", old_path}, {"to", new_path}});
    after.push_back([this, ids, old_path, new_path] {
      if (publisher)
        for (auto id : ids) publisher->path_changed(id, old_path, new_path);
    });
  }

  // ---- kernel state

  std::string install(const ikev2::ChildSaInstall& e, std::uint32_t reqid, bool with_policies) {
    if (!kernel) return "kernel lacks XFRM netlink";
    auto spec_for = [&](bool inbound) {
      xfrm::SaSpec spec;
      spec.source = inbound ? e.remote.address : e.local.address;
      spec.destination = inbound ? e.local.address : e.remote.address;
      spec.spi = inbound ? e.inbound_spi : e.outbound_spi;
      spec.mode = e.mode == ikev2::Mode::Tunnel ? xfrm::Mode::Tunnel : xfrm::Mode::Transport;
      spec.reqid = reqid;
      set_algorithms(spec, e.suite);
      spec.encryption_key = copy(inbound ? e.inbound_encryption : e.outbound_encryption);
      spec.integrity_key = copy(inbound ? e.inbound_integrity : e.outbound_integrity);
      spec.extended_sequence_numbers = e.suite.extended_sequence_numbers;
      spec.replay_window = inbound ? e.replay_window : 0;
      // Time-based rekeying is the engine's; the kernel counts volume and
      // enforces the hard limits.
      spec.lifetime.soft_bytes = e.lifetime.rekey_bytes;
      spec.lifetime.hard_bytes = e.lifetime.life_bytes;
      spec.lifetime.soft_packets = e.lifetime.rekey_packets;
      spec.lifetime.hard_packets = e.lifetime.life_packets;
      spec.lifetime.hard_add_seconds = e.lifetime.life_seconds;
      if (e.udp_encapsulation)
        spec.encapsulation = inbound ? xfrm::Encapsulation{e.remote.port, e.local.port}
                                     : xfrm::Encapsulation{e.local.port, e.remote.port};
      if (e.mode == ikev2::Mode::Transport) {
        spec.selector_source = ikev2::TrafficSelector::host(spec.source);
        spec.selector_destination = ikev2::TrafficSelector::host(spec.destination);
      }
      return spec;
    };
    const bool inbound = e.part != ikev2::InstallPart::Outbound;
    const bool outbound = e.part != ikev2::InstallPart::Inbound;
    // The inbound SPI came from ALLOCSPI: fill in that larval SA.
    if (inbound)
      if (auto r = kernel->add_sa(spec_for(true), /*update=*/true); !r) return r.error();
    if (outbound)
      if (auto r = kernel->add_sa(spec_for(false)); !r) {
        if (inbound) kernel->delete_sa(e.local.address, e.inbound_spi);
        return r.error();
      }
    if (with_policies) {
      std::string failure = install_policies(e, reqid, /*update=*/true);
      if (!failure.empty()) {
        delete_sa_pair(e.local, e.remote, e.inbound_spi, e.outbound_spi);
        return failure;
      }
    }
    return {};
  }

  // Selector pairs of a child: tunnel mode as negotiated, transport mode
  // the two hosts.
  static std::vector<std::pair<ikev2::TrafficSelector, ikev2::TrafficSelector>> selector_pairs(
      const ikev2::ChildSaInstall& c) {
    std::vector<std::pair<ikev2::TrafficSelector, ikev2::TrafficSelector>> pairs;
    if (c.mode == ikev2::Mode::Transport) {
      pairs.emplace_back(ikev2::TrafficSelector::host(c.local.address), ikev2::TrafficSelector::host(c.remote.address));
      return pairs;
    }
    for (const auto& l : c.local_ts)
      for (const auto& r : c.remote_ts)
        if (l.start.family == r.start.family) pairs.emplace_back(l, r);
    return pairs;
  }

  std::string install_policies(const ikev2::ChildSaInstall& c, std::uint32_t reqid, bool update) {
    auto mode = c.mode == ikev2::Mode::Tunnel ? xfrm::Mode::Tunnel : xfrm::Mode::Transport;
    for (const auto& [local_ts, remote_ts] : selector_pairs(c)) {
      if (!local_ts.prefix_length() || !remote_ts.prefix_length())
        return "traffic selectors " + local_ts.to_string() + " / " + remote_ts.to_string() +
               " are not prefixes; the kernel's policies need prefixes";
      xfrm::PolicySpec out;
      out.source = local_ts;
      out.destination = remote_ts;
      out.direction = xfrm::Direction::Out;
      out.mode = mode;
      out.template_source = c.local.address;
      out.template_destination = c.remote.address;
      out.reqid = reqid;
      xfrm::PolicySpec in = out;
      in.source = remote_ts;
      in.destination = local_ts;
      in.direction = xfrm::Direction::In;
      in.template_source = c.remote.address;
      in.template_destination = c.local.address;
      if (auto r = kernel->add_policy(out, update); !r) return r.error();
      if (auto r = kernel->add_policy(in, update); !r) return r.error();
      if (mode == xfrm::Mode::Tunnel) {
        xfrm::PolicySpec fwd = in;
        fwd.direction = xfrm::Direction::Forward;
        if (auto r = kernel->add_policy(fwd, update); !r) return r.error();
      }
    }
    return {};
  }

  void delete_sa_pair(const Endpoint& local, const Endpoint& remote, std::uint32_t in, std::uint32_t out) {
    if (!kernel) return;
    if (auto r = kernel->delete_sa(local.address, in); !r && r.error_number() != ENOENT && r.error_number() != ESRCH)
      core::log::warning("could not delete an inbound SA", {{"error", r.error()}});
    if (auto r = kernel->delete_sa(remote.address, out); !r && r.error_number() != ENOENT && r.error_number() != ESRCH)
      core::log::warning("could not delete an outbound SA", {{"error", r.error()}});
  }

  void remove_policies(const ChildRecord& child, const std::string& tunnel_name) {
    if (!kernel || !child.installed) return;
    for (const auto& [local_ts, remote_ts] : selector_pairs(child.current)) {
      kernel->delete_policy(remote_ts, local_ts, xfrm::Direction::In);
      if (child.current.mode == ikev2::Mode::Tunnel)
        kernel->delete_policy(remote_ts, local_ts, xfrm::Direction::Forward);
      kernel->delete_policy(local_ts, remote_ts, xfrm::Direction::Out);
    }
    // A trap tunnel goes back to waiting for traffic.
    if (auto it = tunnels.find(tunnel_name); it != tunnels.end() && it->second.trap_reqid) install_trap(it->second);
  }

  void remove_child_state(ChildRecord& child, bool closed, const std::string& tunnel_name) {
    if (!child.installed) return;
    delete_sa_pair(child.current.local, child.current.remote, child.current.inbound_spi, child.current.outbound_spi);
    if (closed) remove_policies(child, tunnel_name);
  }

  // Trap policies: outbound traffic of the tunnel with no SA yet makes the
  // kernel send ACQUIRE, which starts the tunnel.
  void install_trap(TunnelEntry& entry) {
    if (!kernel || !entry.config || entry.tunnel.start != "trap") return;
    if (!entry.trap_reqid) entry.trap_reqid = allocate_reqid();
    const auto& child = entry.config->children.front();
    entry.trap_selectors.clear();
    if (child.mode == ikev2::Mode::Transport) {
      entry.trap_selectors.emplace_back(ikev2::TrafficSelector::host(entry.local),
                                        ikev2::TrafficSelector::host(entry.remote));
    } else {
      for (const auto& l : child.local_ts)
        for (const auto& r : child.remote_ts) entry.trap_selectors.emplace_back(l, r);
    }
    for (const auto& [l, r] : entry.trap_selectors) {
      xfrm::PolicySpec out;
      out.source = l;
      out.destination = r;
      out.direction = xfrm::Direction::Out;
      out.mode = child.mode == ikev2::Mode::Tunnel ? xfrm::Mode::Tunnel : xfrm::Mode::Transport;
      out.template_source = entry.local;
      out.template_destination = entry.remote;
      out.reqid = entry.trap_reqid;
      if (auto result = kernel->add_policy(out, /*update=*/true); !result)
        core::log::error("could not install a trap policy", {{"tunnel", entry.tunnel.name}, {"error", result.error()}});
    }
  }

  void remove_trap(TunnelEntry& entry) {
    if (!kernel || !entry.trap_reqid) return;
    for (const auto& [l, r] : entry.trap_selectors) kernel->delete_policy(l, r, xfrm::Direction::Out);
    entry.trap_reqid = 0;
    entry.trap_selectors.clear();
  }

  // KeyExpiring for a Child SA counts ESP packets; with no packet limit
  // (only a time limit) what remains is unbounded, 2^64-1.
  void announce_key_expiring(ikev2::IkeSaId sa_id, ikev2::ChildSaId child_id, const xfrm::ExpireEvent& expire) {
    auto sa = sas.find(sa_id);
    if (!publisher || sa == sas.end()) return;
    auto child = sa->second.children.find(child_id);
    if (child == sa->second.children.end() || child->second.association_id == 0) return;
    std::uint64_t remaining = std::numeric_limits<std::uint64_t>::max();
    if (expire.hard_packet_limit != 0)
      remaining = expire.hard_packet_limit > expire.packets ? expire.hard_packet_limit - expire.packets : 0;
    publisher->key_expiring(child->second.association_id, remaining);
  }

  void on_kernel_events() {
    auto events = kernel_events->read();
    if (!events) {
      core::log::warning("XFRM events unreadable", {{"error", events.error()}});
      return;
    }
    auto now = ikev2::Clock::now();
    for (const auto& event : events.value()) {
      if (auto* expire = std::get_if<xfrm::ExpireEvent>(&event)) {
        auto found = engine->find_child_by_spi(expire->spi);
        if (!found) continue;
        if (expire->hard) {
          engine->delete_child(found->first, found->second, now);
        } else {
          announce_key_expiring(found->first, found->second, *expire);
          engine->rekey_child(found->first, found->second, now);
        }
      } else if (auto* acquire = std::get_if<xfrm::AcquireEvent>(&event)) {
        for (auto& [name, entry] : tunnels) {
          if (!entry.trap_reqid || entry.trap_reqid != acquire->reqid) continue;
          if (tunnel_active(name)) break;
          core::log::info("traffic starts a tunnel", {{"tunnel", name}, {"packet_to", acquire->destination.to_string()}});
          start_tunnel(entry, 0, acquire->source, acquire->destination);
          break;
        }
      }
    }
    pump();
  }

  // Addresses or routes changed: an SA whose path now leaves from another
  // local address moves there (MOBIKE; the engine refuses if the peer did
  // not agree to MOBIKE). Changes come in bursts: look once they settle.
  void on_address_change() {
    if (!address_monitor->drain() || path_check_timer) return;
    path_check_timer = reactor.add_timer(std::chrono::milliseconds(200), [this] {
      path_check_timer = 0;
      check_paths();
    });
  }

  void check_paths() {
    auto now = ikev2::Clock::now();
    for (const auto& state : engine->sas()) {
      if (state.state != "established") continue;
      auto source = route_source_address(state.remote.address);
      if (!source || *source == state.local.address) continue;
      Endpoint moved{*source, state.local.port};
      bool accepted = engine->update_local_address(state.id, moved, now);
      core::log::info(accepted ? "local address changed: moving the IKE SA" : "local address changed; the IKE SA cannot move (no MOBIKE)",
                      {{"tunnel", state.config_name}, {"from", state.local.to_string()}, {"to", moved.to_string()}});
    }
    pump();
  }

  bool tunnel_active(const std::string& name) const {
    for (const auto& [id, sa] : sas)
      if (sa.tunnel == name) return true;
    return false;
  }

  ikev2::IkeSaId start_tunnel(TunnelEntry& entry, uid_t owner, std::optional<ikev2::TrafficSelector> trigger_local = {},
                              std::optional<ikev2::TrafficSelector> trigger_remote = {}) {
    Endpoint local{entry.local, sockets.ike_port()};
    Endpoint remote{entry.remote, entry.tunnel.port};
    auto id = engine->initiate(entry.config, local, remote, ikev2::Clock::now(), trigger_local, trigger_remote);
    SaRecord& sa = sas[id];
    sa.tunnel = entry.tunnel.name;
    sa.owner_uid = owner;
    sa.export_allowed = entry.tunnel.export_allowed;
    return id;
  }

  // Resolves a tunnel's addresses; "" on success. A Peer= host name must
  // have been looked up (look_up_peer) first.
  std::string resolve(TunnelEntry& entry) {
    entry.remote = {};
    entry.local = {};
    if (!is_any(entry.tunnel.peer)) {
      auto remote = entry.looked_up ? entry.looked_up : IpAddress::parse(entry.tunnel.peer);
      if (!remote) return "Peer \"" + entry.tunnel.peer + "\" is not an address and was not looked up";
      entry.remote = *remote;
    }
    if (!entry.tunnel.local_address.empty()) {
      auto local = IpAddress::parse(entry.tunnel.local_address);
      if (!local) return "LocalAddress \"" + entry.tunnel.local_address + "\" is not an address";
      entry.local = *local;
    } else if (entry.remote.family) {
      auto local = route_source_address(entry.remote);
      if (!local) return "no route to " + entry.remote.to_string();
      entry.local = *local;
    } else {
      entry.local = IpAddress::any(AF_INET);
    }
    return {};
  }

  static bool names_a_host(const std::string& peer) { return !is_any(peer) && !IpAddress::parse(peer); }

  // Addresses and configuration of a tunnel whose peer address is known.
  void prepare(TunnelEntry& entry) {
    entry.config_error = resolve(entry);
    if (entry.config_error.empty()) {
      auto built = build_ike_config(*policy, entry.tunnel, entry.local);
      if (auto* e = std::get_if<std::string>(&built)) {
        entry.config_error = *e;
      } else {
        entry.config = std::get<std::shared_ptr<ikev2::IkeConfig>>(built);
        entry.config->retransmit = options.retransmit;
      }
    }
    if (!entry.config_error.empty())
      core::log::error("tunnel unusable",
                       {{"tunnel", entry.tunnel.name}, {"at", entry.tunnel.location}, {"error", entry.config_error}});
  }

  // Trap policies or the boot start of a tunnel that just became usable.
  void activate(TunnelEntry& entry) {
    if (!started || !entry.config) return;
    if (entry.tunnel.start == "trap") install_trap(entry);
    if (entry.tunnel.start == "boot" && !tunnel_active(entry.tunnel.name)) start_tunnel(entry, 0);
  }

  // Peer= names a host: looked up through the agent's resolver. Until the
  // answer the tunnel is unusable, and EstablishTunnel waits for it.
  void look_up_peer(TunnelEntry& entry) {
    entry.config_error = "its peer " + entry.tunnel.peer + " is still being looked up";
    const std::string name = entry.tunnel.name;
    auto started_lookup = resolver.lookup(entry.tunnel.peer, 0, SOCK_DGRAM, [this, name](core::Resolver::Result result) {
      auto it = tunnels.find(name);
      if (it == tunnels.end()) return;
      TunnelEntry& entry = it->second;
      entry.lookup = {};
      if (auto* error = std::get_if<std::string>(&result)) {
        entry.config_error = *error;
        core::log::error("tunnel unusable", {{"tunnel", name}, {"at", entry.tunnel.location}, {"error", *error}});
      } else {
        // The IKE sockets are IPv4: the first IPv4 address it has.
        for (const auto& address : std::get<core::Resolver::Addresses>(result)) {
          if (address.ss_family == AF_INET) {
            entry.looked_up = address_of(address);
            break;
          }
        }
        if (entry.looked_up) {
          prepare(entry);
          activate(entry);
        } else {
          entry.config_error = "its peer " + entry.tunnel.peer + " has no IPv4 address (IKE runs over IPv4 here)";
        }
      }
      auto waiting = std::move(entry.after_lookup);
      for (auto& retry : waiting) retry();
      pump();
    });
    if (auto* error = std::get_if<std::string>(&started_lookup)) entry.config_error = *error;
    else entry.lookup = std::move(std::get<core::Resolver::Lookup>(started_lookup));
  }

  std::optional<bus::BusError> check_ready() const {
    if (!started) return make_error("NotSupported", "IKE is not running: " + not_running_reason);
    if (!capabilities.esp)
      return make_error("KernelUnsupported", "kernel lacks ESP: load module esp4 (IPsec needs the kernel's ESP)");
    return std::nullopt;
  }
};

// --------------------------------------------------------------------------

IkeService::IkeService(core::Reactor& reactor, core::Resolver& resolver, IkeOptions options,
                       kernel::KernelCapabilities capabilities, IdAllocator allocate_id)
    : impl_(std::make_unique<Impl>(reactor, resolver, options, std::move(capabilities), std::move(allocate_id))) {}

IkeService::~IkeService() { shutdown(); }

bool IkeService::start(std::string* error) {
  Impl& s = *impl_;
  if (s.options.ike_port == 0) return false;
  if (auto opened = kernel::xfrm::XfrmSocket::open()) s.kernel.emplace(std::move(opened.value()));
  else core::log::warning("XFRM netlink unavailable", {{"error", opened.error()}});
  if (auto events = kernel::xfrm::XfrmEvents::open()) {
    s.kernel_events.emplace(std::move(events.value()));
    s.events_watch = s.reactor.watch(s.kernel_events->fd(), POLLIN, [&s](std::uint32_t) { s.on_kernel_events(); });
  }

  if (auto monitor = kernel::AddressMonitor::open()) {
    s.address_monitor.emplace(std::move(monitor.value()));
    s.address_watch = s.reactor.watch(s.address_monitor->fd(), POLLIN, [&s](std::uint32_t) { s.on_address_change(); });
  } else {
    core::log::warning("address changes will go unnoticed", {{"error", monitor.error()}});
  }

  ikev2::IkeEngine::Options engine_options;
  engine_options.selector = std::shared_ptr<ikev2::ConfigSelector>(&s, [](ikev2::ConfigSelector*) {});
  engine_options.allocate_spi = [&s](const Endpoint& local, const Endpoint& remote) -> std::optional<std::uint32_t> {
    if (!s.kernel) return std::nullopt;
    auto spi = s.kernel->allocate_spi(remote.address, local.address, 0);
    if (!spi) {
      core::log::warning("no inbound SPI from the kernel", {{"error", spi.error()}});
      return std::nullopt;
    }
    return spi.value();
  };
  s.engine = std::make_unique<ikev2::IkeEngine>(std::move(engine_options));

  if (!s.sockets.open(s.options.ike_port, s.options.nat_t_port, s.capabilities.esp, error)) {
    s.not_running_reason = *error;
    s.engine.reset();
    return false;
  }
  s.started = true;
  // Holding the IKE port makes this agent the one of its network namespace:
  // what a previous run left (it was killed or crashed) is its to remove.
  if (s.kernel) {
    if (auto removed = s.kernel->remove_leftovers(); !removed) {
      core::log::warning("cannot remove what an earlier run left in the kernel", {{"error", removed.error()}});
    } else if (removed->sas || removed->policies) {
      core::log::notice("removed what an earlier run left in the kernel",
                        {{"sas", std::to_string(removed->sas)}, {"policies", std::to_string(removed->policies)}});
    }
  }
  core::log::info("IKE listening", {{"port", std::to_string(s.options.ike_port)},
                                    {"nat_t_port", std::to_string(s.options.nat_t_port)},
                                    {"esp", s.capabilities.esp ? "yes" : "no"}});
  return true;
}

bool IkeService::running() const { return impl_->started; }

void IkeService::set_publisher(bus::Publisher* publisher) { impl_->publisher = publisher; }

void IkeService::apply_policy(const policy::Policy& policy) {
  Impl& s = *impl_;
  s.policy = &policy;
  for (auto& [name, entry] : s.tunnels) s.remove_trap(entry);
  s.tunnels.clear();
  s.tunnel_order.clear();
  for (const auto& name : policy.tunnel_names()) {
    const policy::Tunnel* tunnel = policy.tunnel(name);
    if (!tunnel || tunnel->protocol != "ikev2") continue;
    Impl::TunnelEntry& entry = s.tunnels[name];
    entry.tunnel = *tunnel;
    s.tunnel_order.push_back(name);
    if (Impl::names_a_host(tunnel->peer)) s.look_up_peer(entry);
    else s.prepare(entry);
  }
  if (!s.started) return;
  for (auto& [name, entry] : s.tunnels) s.activate(entry);
  s.pump();
}

void IkeService::shutdown() {
  Impl& s = *impl_;
  if (!s.started) return;
  auto now = ikev2::Clock::now();
  std::vector<ikev2::IkeSaId> ids;
  for (const auto& [id, sa] : s.sas) ids.push_back(id);
  for (auto id : ids) s.engine->close(id, now);
  // Send the deletes; the kernel state goes now, whatever the peer says.
  for (auto& event : s.engine->take_events())
    if (auto* send = std::get_if<ikev2::SendDatagram>(&event)) s.sockets.send(send->local, send->remote, send->data);
  for (auto& [id, sa] : s.sas)
    for (auto& [child_id, child] : sa.children) s.remove_child_state(child, true, "");
  for (auto& [name, entry] : s.tunnels) s.remove_trap(entry);
  s.sas.clear();
  s.by_association.clear();
  s.started = false;
}

void IkeService::establish_tunnel(const bus::CallerCredentials& caller, const std::string& peer,
                                  bus::TunnelProperties props, std::function<void(bus::Backend::TunnelResult)> done) {
  Impl& s = *impl_;
  if (!s.started) return done(make_error("NotSupported", "IKE is not running: " + s.not_running_reason));
  for (const auto& p : props.protocols)
    if (p != "ikev2") return done(make_error("NotSupported", "protocol \"" + p + "\" is not a tunnel protocol tapsec runs here; use \"ikev2\""));
  if (!s.policy) return done(make_error("PolicyDenied", "no policy is loaded"));

  auto named = s.tunnels.find(peer);
  Impl::TunnelEntry adhoc;
  Impl::TunnelEntry* entry = nullptr;
  if (named != s.tunnels.end()) {
    if (!props.identity.empty() || !props.psk.empty() || !props.local_ts.empty() || !props.remote_ts.empty() ||
        !props.mode.empty() || !props.local_id.empty() || !props.remote_id.empty() || !props.algorithms.empty())
      return done(make_error("InvalidArgument", "tunnel \"" + peer +
                                                    "\" is defined in the policy; its settings come from there "
                                                    "(pass only 'protocols' and 'timeout-ms')"));
    entry = &named->second;
    if (entry->lookup) {  // its peer's address is on its way: decide then
      entry->after_lookup.push_back([this, caller, peer, props = std::move(props), done = std::move(done)]() mutable {
        establish_tunnel(caller, peer, std::move(props), std::move(done));
      });
      return;
    }
  } else {
    if (!IpAddress::parse(peer))
      return done(make_error("InvalidArgument", "\"" + peer + "\" is neither a tunnel of the policy nor an address"));
    adhoc.tunnel.name = peer;
    adhoc.tunnel.peer = peer;
    adhoc.tunnel.local_id = props.local_id;
    adhoc.tunnel.remote_id = props.remote_id;
    adhoc.tunnel.local_ts = props.local_ts;
    adhoc.tunnel.remote_ts = props.remote_ts;
    if (!props.mode.empty()) adhoc.tunnel.mode = props.mode;
    if (auto it = props.algorithms.find("ike"); it != props.algorithms.end()) adhoc.tunnel.ike_proposals = it->second;
    if (auto it = props.algorithms.find("esp"); it != props.algorithms.end()) adhoc.tunnel.esp_proposals = it->second;
    entry = &adhoc;
  }

  const policy::Caller who = policy_caller(caller);
  policy::Request request;
  request.protocols = {"ikev2"};
  request.role = "client";
  request.host = entry->tunnel.peer;
  request.address = entry->remote.family ? entry->remote.to_string() : entry->tunnel.peer;
  request.port = entry->tunnel.port;
  request.identity = props.identity;
  request.psk = props.psk;
  request.tunnel = named != s.tunnels.end() ? peer : "";
  request.wants_export = entry->tunnel.export_allowed;
  policy::Decision decision = s.policy->evaluate(who, request);
  if (!decision.allowed) return done(make_error("PolicyDenied", decision.denial_reason));

  if (entry == &adhoc) {
    if (!decision.identity.empty()) {
      adhoc.tunnel.auth = "certificate";
      adhoc.tunnel.identity = decision.identity;
      adhoc.tunnel.trust_store = decision.trust_store;
    } else if (!decision.psk.empty()) {
      adhoc.tunnel.auth = "psk";
      adhoc.tunnel.psk = decision.psk;
    } else {
      return done(make_error("InvalidArgument", "a tunnel needs 'psk' or 'identity' (none given, and the rule names none)"));
    }
    if (!s.policy->identity(adhoc.tunnel.identity) && adhoc.tunnel.auth == "certificate")
      return done(make_error("NoSuchIdentity", "no identity \"" + adhoc.tunnel.identity + "\""));
    if (!s.policy->psk(adhoc.tunnel.psk) && adhoc.tunnel.auth == "psk")
      return done(make_error("NoSuchIdentity", "no PSK \"" + adhoc.tunnel.psk + "\""));
    if (auto e = s.resolve(adhoc); !e.empty()) return done(make_error("InvalidArgument", e));
    auto built = build_ike_config(*s.policy, adhoc.tunnel, adhoc.local);
    if (auto* e = std::get_if<std::string>(&built)) return done(make_error("InvalidArgument", *e));
    adhoc.config = std::get<std::shared_ptr<ikev2::IkeConfig>>(built);
    adhoc.config->retransmit = s.options.retransmit;
  }
  if (!entry->config) return done(make_error("InvalidArgument", "tunnel \"" + peer + "\" is unusable: " + entry->config_error));
  if (auto e = s.check_ready()) return done(*e);

  // Already up (or on its way): join it.
  for (auto& [id, sa] : s.sas) {
    if (sa.tunnel != entry->tunnel.name) continue;
    if (sa.up) return done(sa.association_id);
    sa.waiting.push_back(std::move(done));
    return;
  }
  ikev2::IkeSaId id = s.start_tunnel(*entry, caller.uid);
  Impl::SaRecord& sa = s.sas[id];
  sa.export_allowed = entry->tunnel.export_allowed && decision.export_allowed;
  sa.waiting.push_back(std::move(done));
  sa.timeout_timer = s.reactor.add_timer(std::chrono::milliseconds(props.timeout_ms), [&s, id, timeout = props.timeout_ms] {
    auto it = s.sas.find(id);
    if (it == s.sas.end()) return;
    it->second.timeout_timer = 0;
    auto waiting = std::move(it->second.waiting);
    it->second.waiting.clear();
    for (auto& d : waiting)
      d(make_error("Timeout", "the tunnel was not up within " + std::to_string(timeout) + " ms (the agent keeps trying)"));
  });
  s.pump();
}

std::vector<bus::TunnelInfo> IkeService::tunnels() const {
  const Impl& s = *impl_;
  std::vector<bus::TunnelInfo> out;
  for (const auto& [name, entry] : s.tunnels) {
    bus::TunnelInfo info{name, entry.tunnel.protocol, entry.tunnel.peer.empty() ? "%any" : entry.tunnel.peer,
                         entry.tunnel.start, entry.trap_reqid ? "trap" : "down", 0};
    for (const auto& [id, sa] : s.sas) {
      if (sa.tunnel != name) continue;
      info.state = sa.up ? "up" : "connecting";
      info.association_id = sa.association_id;
    }
    out.push_back(std::move(info));
  }
  return out;
}

std::map<std::string, std::uint64_t> IkeService::statistics() const {
  const Impl& s = *impl_;
  if (!s.engine) return {};
  auto c = s.engine->counters();
  std::uint64_t children = 0;
  for (const auto& [id, sa] : s.sas) children += sa.children.size();
  return {{"ike-received", c.received},
          {"ike-sent", c.sent},
          {"ike-retransmitted", c.retransmitted},
          {"ike-dropped-malformed", c.dropped_malformed},
          {"ike-dropped-unknown-spi", c.dropped_unknown_spi},
          {"ike-dropped-authentication", c.dropped_authentication},
          {"ike-cookies-sent", c.cookies_sent},
          {"ike-half-open", c.half_open},
          {"ike-sas", s.sas.size()},
          {"esp-child-sas", children},
          {"udp-not-ike", s.sockets.received_not_ike()}};
}

bool IkeService::owns(std::uint64_t id) const { return impl_->by_association.count(id) != 0; }

std::vector<std::uint64_t> IkeService::association_ids() const {
  std::vector<std::uint64_t> ids;
  for (const auto& [id, where] : impl_->by_association) ids.push_back(id);
  return ids;
}

std::optional<bus::AssociationInfo> IkeService::association(std::uint64_t id) const {
  const Impl& s = *impl_;
  auto where = s.by_association.find(id);
  if (where == s.by_association.end()) return std::nullopt;
  auto sa_it = s.sas.find(where->second.first);
  if (sa_it == s.sas.end()) return std::nullopt;
  const Impl::SaRecord& sa = sa_it->second;
  auto state = s.engine->sa(where->second.first);
  if (!state) return std::nullopt;

  bus::AssociationInfo info;
  info.id = id;
  info.offload = "kernel";
  info.owner_uid = sa.owner_uid;
  info.tunnel_name = sa.tunnel;
  info.local_identity = state->local_id.to_string();
  info.peer_identity = state->peer_description.empty() ? state->peer_id.to_string() : state->peer_description;
  info.role = state->initiator ? "initiator" : "responder";
  info.local_address = state->local.to_string();
  info.peer_address = state->remote.to_string();
  info.state = state->state;
  if (where->second.second == 0) {
    info.protocol = "ikev2";
    info.version = "IKEv2";
    info.cipher = state->suite.to_string();
    info.group = group_name(state->suite.key_exchange);
    info.key_epoch = state->epoch;
    info.created_at_usec = sa.created_at;
    info.inbound_spi = hex_spi(state->initiator ? state->initiator_spi : state->responder_spi, 16);
    info.outbound_spi = hex_spi(state->initiator ? state->responder_spi : state->initiator_spi, 16);
    return info;
  }
  auto child_it = sa.children.find(where->second.second);
  if (child_it == sa.children.end()) return std::nullopt;
  const Impl::ChildRecord& child = child_it->second;
  const auto& c = child.current;
  info.protocol = "esp";
  info.version = "ESP";
  info.parent_id = sa.association_id;
  info.cipher = c.suite.to_string();
  info.group = group_name(c.suite.key_exchange);
  info.mode = c.mode == ikev2::Mode::Tunnel ? "tunnel" : "transport";
  info.local_traffic_selectors = texts(c.local_ts);
  info.remote_traffic_selectors = texts(c.remote_ts);
  info.inbound_spi = hex_spi(c.inbound_spi, 8);
  info.outbound_spi = hex_spi(c.outbound_spi, 8);
  info.encapsulation = c.udp_encapsulation ? "udp" : "";
  info.local_address = c.local.to_string();
  info.peer_address = c.remote.to_string();
  info.key_epoch = c.epoch;
  info.created_at_usec = child.created_at;
  if (c.lifetime.life_seconds)
    info.expires_at_usec = child.created_at + std::uint64_t(c.lifetime.life_seconds) * 1000000;
  info.state = child.installed ? "established" : "failed";
  if (s.kernel && child.installed) {
    auto& k = *s.kernel;
    if (auto in = k.query_sa(c.local.address, c.inbound_spi)) {
      info.bytes_received = in.value().bytes;
      info.packets_received = in.value().packets;
    }
    if (auto out = k.query_sa(c.remote.address, c.outbound_spi)) {
      info.bytes_sent = out.value().bytes;
      info.packets_sent = out.value().packets;
    }
  }
  return info;
}

using bus::error::check_owner;

std::optional<bus::BusError> IkeService::update_keys(const bus::CallerCredentials& caller, std::uint64_t id) {
  Impl& s = *impl_;
  auto where = s.by_association.find(id);
  if (where == s.by_association.end()) return make_error("NoSuchAssociation", "no association " + std::to_string(id));
  auto [sa_id, child_id] = where->second;
  if (auto denied = check_owner(caller, s.sas[sa_id].owner_uid, id, "rekey")) return denied;
  auto now = ikev2::Clock::now();
  bool accepted = child_id ? s.engine->rekey_child(sa_id, child_id, now) : s.engine->rekey_ike(sa_id, now);
  s.pump();
  if (!accepted) return make_error("NotSupported", "association " + std::to_string(id) + " cannot be rekeyed right now (an exchange is in progress)");
  return std::nullopt;
}

std::variant<std::vector<std::uint8_t>, bus::BusError> IkeService::export_keying_material(
    const bus::CallerCredentials& caller, std::uint64_t id, const std::string& label,
    const std::vector<std::uint8_t>& context, std::uint32_t length) {
  Impl& s = *impl_;
  auto where = s.by_association.find(id);
  if (where == s.by_association.end()) return make_error("NoSuchAssociation", "no association " + std::to_string(id));
  auto [sa_id, child_id] = where->second;
  const Impl::SaRecord& sa = s.sas[sa_id];
  if (auto denied = check_owner(caller, sa.owner_uid, id, "export keys of")) return *denied;
  if (child_id) return make_error("NotSupported", "keys are exported from the IKE SA, not from its Child SAs");
  if (!context.empty()) return make_error("InvalidArgument", "IKE exports take no context (pass an empty one)");
  if (length == 0 || length > 1024) return make_error("InvalidArgument", "length must be between 1 and 1024");
  if (!sa.export_allowed)
    return make_error("ExportDenied", "the policy does not allow exports from tunnel \"" + sa.tunnel + "\" (Export=yes)");
  auto secret = s.engine->export_keying_material(sa_id, label, length);
  if (!secret) return make_error("ExportDenied", "the IKE SA refuses the export");
  return std::vector<std::uint8_t>(secret->data(), secret->data() + secret->size());
}

std::optional<bus::BusError> IkeService::terminate(const bus::CallerCredentials& caller, std::uint64_t id) {
  Impl& s = *impl_;
  auto where = s.by_association.find(id);
  if (where == s.by_association.end()) return make_error("NoSuchAssociation", "no association " + std::to_string(id));
  auto [sa_id, child_id] = where->second;
  if (auto denied = check_owner(caller, s.sas[sa_id].owner_uid, id, "terminate")) return denied;
  auto now = ikev2::Clock::now();
  bool accepted = child_id ? s.engine->delete_child(sa_id, child_id, now) : s.engine->close(sa_id, now);
  s.pump();
  if (!accepted) return make_error("NotSupported", "association " + std::to_string(id) + " cannot be deleted right now");
  return std::nullopt;
}

}  // namespace tapsec::state
