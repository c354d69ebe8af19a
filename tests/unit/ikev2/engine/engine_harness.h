// Two IkeEngines joined by a little in-memory network with a fake clock:
// SendDatagram events travel between them (FIFO), optionally through a
// NAT in front of "a", a drop filter, and a recorder of everything else.
#pragma once

#include <gtest/gtest.h>

#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "agent/engines/ikev2/ike_engine.h"
#include "tests/unit/ikev2/engine/engine_configs.h"

namespace tapsec::ikev2::test {

struct Node {
  std::string name;
  IpAddress address;
  std::shared_ptr<FixedSelector> selector = std::make_shared<FixedSelector>();
  std::uint32_t next_spi = 0;
  bool spis_exhausted = false;
  std::unique_ptr<IkeEngine> engine;
  std::vector<Event> events;  // everything but SendDatagram, in order
  std::vector<SendDatagram> sent;

  void create(IkeEngine::Options options = {}) {
    options.selector = selector;
    options.allocate_spi = [this](const Endpoint&, const Endpoint&) -> std::optional<std::uint32_t> {
      if (spis_exhausted) return std::nullopt;
      return next_spi++;
    };
    engine = std::make_unique<IkeEngine>(std::move(options));
  }
  Endpoint endpoint(std::uint16_t port = 500) const { return Endpoint{address, port}; }

  template <typename T>
  std::vector<T> all() const {
    std::vector<T> out;
    for (const Event& e : events)
      if (const T* t = std::get_if<T>(&e)) out.push_back(*t);
    return out;
  }
  template <typename T>
  std::size_t count() const {
    return all<T>().size();
  }
  // How many SA pairs were installed (an outbound SA installed later is
  // part of its pair).
  std::size_t pairs_installed() const {
    std::size_t n = 0;
    for (const auto& install : all<ChildSaInstall>()) n += install.part != InstallPart::Outbound;
    return n;
  }
  // The SA pairs installed now: installs minus removes, by inbound SPI. A
  // pair whose outbound SA is still held has empty outbound keys.
  std::map<std::uint32_t, ChildSaInstall> installed() const {
    std::map<std::uint32_t, ChildSaInstall> out;
    for (const Event& e : events) {
      if (const auto* install = std::get_if<ChildSaInstall>(&e)) {
        if (install->part != InstallPart::Outbound) {
          out[install->inbound_spi] = *install;
        } else if (auto it = out.find(install->inbound_spi); it != out.end()) {
          it->second.outbound_encryption = install->outbound_encryption;
          it->second.outbound_integrity = install->outbound_integrity;
        } else {
          ADD_FAILURE() << name << " installed the outbound SA " << install->outbound_spi
                        << " of a pair it does not have";
        }
      }
      if (const auto* remove = std::get_if<ChildSaRemove>(&e)) out.erase(remove->inbound_spi);
    }
    return out;
  }

  // A model of the kernel's SAs, kept up by Network::collect.
  std::set<std::uint32_t> inbound_sas;
  std::vector<std::pair<ChildSaId, std::uint32_t>> outbound_sas;  // oldest first
  std::set<ChildSaId> carried_traffic;  // children whose outbound SA the peer could read

  void apply(const Event& e) {
    if (const auto* install = std::get_if<ChildSaInstall>(&e)) {
      if (install->part != InstallPart::Outbound) inbound_sas.insert(install->inbound_spi);
      if (install->part != InstallPart::Inbound) outbound_sas.emplace_back(install->child, install->outbound_spi);
    }
    if (const auto* remove = std::get_if<ChildSaRemove>(&e)) {
      inbound_sas.erase(remove->inbound_spi);
      std::erase(outbound_sas, std::pair{remove->child, remove->outbound_spi});
    }
  }
  // The SA the kernel sends a child's traffic with: the newest (XFRM
  // prefers the most recently added SA of a policy's template).
  std::map<ChildSaId, std::uint32_t> sending() const {
    std::map<ChildSaId, std::uint32_t> out;
    for (const auto& [child, spi] : outbound_sas) out[child] = spi;
    return out;
  }
  std::vector<std::string> down_reasons() const {
    std::vector<std::string> out;
    for (const auto& down : all<IkeSaDown>()) out.push_back(down.reason);
    return out;
  }
  void clear() {
    events.clear();
    sent.clear();
  }
};

struct InFlight {
  int from = 0;  // 0 = a, 1 = b
  Endpoint source, destination;
  Bytes data;
};

class Network {
 public:
  TimePoint now = TimePoint{} + std::chrono::hours(1000);
  Node a, b;
  std::deque<InFlight> wire;
  // Returns true to lose the datagram.
  std::function<bool(const InFlight&)> drop;
  // Returns how many copies to deliver (duplication tests).
  std::function<int(const InFlight&)> copies;
  // Tests that break the peer on purpose turn off check_traffic_flows.
  bool check_traffic = true;
  std::set<std::uint32_t> closing_spis;  // SAs of children one end closed
  std::size_t delivered = 0;
  // Told before a datagram or a timer run reaches node 0 or 1 (the engine
  // fuzz target's seed recorder gives each engine its own random stream and
  // writes down what one engine is given).
  std::function<void(int node, const InFlight& packet)> before_receive;
  std::function<void(int node)> before_timer;

  // A NAT in front of "a": its sources become nat_public:<mapped port>.
  bool nat = false;
  IpAddress nat_public = ip("198.51.100.7");
  std::uint16_t nat_next_port = 40000;
  std::map<Endpoint, Endpoint> nat_out, nat_in;  // private -> public, public -> private

  Network() {
    a.name = "a";
    a.address = ip("192.0.2.1");
    a.next_spi = 0xa0000001;
    b.name = "b";
    b.address = ip("192.0.2.2");
    b.next_spi = 0xb0000001;
  }

  Node& node(int index) { return index == 0 ? a : b; }

  void collect() {
    for (int i = 0; i < 2; ++i) {
      Node& n = node(i);
      if (!n.engine) continue;
      for (Event& e : n.engine->take_events()) {
        if (auto* send = std::get_if<SendDatagram>(&e)) {
          n.sent.push_back(*send);
          wire.push_back(InFlight{i, send->local, send->remote, send->data});
        } else {
          n.apply(e);
          if (const auto* remove = std::get_if<ChildSaRemove>(&e); remove && remove->child_closed) {
            closing_spis.insert(remove->inbound_spi);
            closing_spis.insert(remove->outbound_spi);
          }
          n.events.push_back(std::move(e));
        }
      }
    }
    check_traffic_flows();
  }

  // Once a child's traffic has crossed, every rekey keeps it crossing: each
  // end sends only with SAs the other end already reads. (A brand-new
  // child's responder may send before the initiator has its SAs; nothing
  // of that child has flowed yet.)
  void check_traffic_flows() {
    if (!check_traffic) return;
    for (int i = 0; i < 2; ++i) {
      Node& from = node(i);
      const Node& to = node(1 - i);
      for (const auto& [child, spi] : from.sending()) {
        if (closing_spis.contains(spi)) continue;  // its child is being closed
        const bool readable = to.inbound_sas.contains(spi);
        if (readable) {
          from.carried_traffic.insert(child);
        } else if (from.carried_traffic.contains(child)) {
          ADD_FAILURE() << from.name << " sends child " << child << "'s traffic with SPI " << spi << ", which "
                        << to.name << " cannot read";
          from.carried_traffic.erase(child);  // report each break once
        }
      }
    }
  }

  // Delivers one datagram; false when the wire is empty.
  bool step() {
    collect();
    if (wire.empty()) return false;
    InFlight packet = std::move(wire.front());
    wire.pop_front();
    if (drop && drop(packet)) return true;
    if (nat && packet.from == 0) {
      auto it = nat_out.find(packet.source);
      if (it == nat_out.end()) {
        Endpoint mapped{nat_public, nat_next_port++};
        it = nat_out.emplace(packet.source, mapped).first;
        nat_in.emplace(mapped, packet.source);
      }
      packet.source = it->second;
    }
    int to;
    if (packet.destination.address == b.address) {
      to = 1;
    } else if (packet.destination.address == a.address) {
      to = 0;
    } else if (nat && packet.destination.address == nat_public) {
      auto it = nat_in.find(packet.destination);
      if (it == nat_in.end()) return true;  // no mapping: the NAT drops it
      packet.destination = it->second;
      to = 0;
    } else {
      return true;  // nobody there
    }
    const int n = copies ? copies(packet) : 1;
    for (int i = 0; i < n; ++i) {
      if (before_receive) before_receive(to, packet);
      node(to).engine->receive(packet.destination, packet.source, packet.data, now);
      ++delivered;
    }
    return true;
  }

  void run(int limit = 100000) {
    while (limit-- > 0 && step()) {
    }
    collect();
  }

  std::optional<TimePoint> next_deadline() const {
    std::optional<TimePoint> out;
    for (const Node* n : {&a, &b}) {
      if (!n->engine) continue;
      auto d = n->engine->next_deadline();
      if (d && (!out || *d < *out)) out = d;
    }
    return out;
  }

  void fire_timers() {
    for (int i = 0; i < 2; ++i) {
      if (!node(i).engine) continue;
      if (before_timer) before_timer(i);
      node(i).engine->on_timer(now);
    }
  }

  // Lets `span` of fake time pass, firing every timer on the way.
  void elapse(std::chrono::milliseconds span) {
    const TimePoint end = now + span;
    for (int guard = 0; guard < 100000; ++guard) {
      run();
      auto deadline = next_deadline();
      if (!deadline || *deadline > end) break;
      now = std::max(now, *deadline);
      fire_timers();
    }
    now = end;
    fire_timers();
    run();
  }
};

// Keys and SPIs of the two ends' installed pairs mirror each other.
inline void expect_mirrored(const Node& x, const Node& y) {
  auto xs = x.installed(), ys = y.installed();
  ASSERT_EQ(xs.size(), ys.size()) << x.name << " and " << y.name << " have different numbers of SA pairs";
  for (const auto& [inbound, install] : xs) {
    auto it = ys.find(install.outbound_spi);
    ASSERT_NE(it, ys.end()) << "no pair on " << y.name << " with inbound SPI " << install.outbound_spi;
    const ChildSaInstall& other = it->second;
    EXPECT_EQ(other.outbound_spi, install.inbound_spi);
    EXPECT_TRUE(other.inbound_encryption == install.outbound_encryption);
    EXPECT_TRUE(other.inbound_integrity == install.outbound_integrity);
    EXPECT_TRUE(other.outbound_encryption == install.inbound_encryption);
    EXPECT_TRUE(other.outbound_integrity == install.inbound_integrity);
    EXPECT_FALSE(install.inbound_encryption == install.outbound_encryption);
    EXPECT_EQ(other.suite, install.suite);
    EXPECT_EQ(other.local_ts, install.remote_ts);
    EXPECT_EQ(other.remote_ts, install.local_ts);
    EXPECT_EQ(other.mode, install.mode);
    EXPECT_EQ(other.udp_encapsulation, install.udp_encapsulation);
    EXPECT_EQ(install.inbound_encryption.size(), install.suite.encryption_key_size());
  }
}

}  // namespace tapsec::ikev2::test
