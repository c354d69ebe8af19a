// The IKEv2 engine alone: IKE SA + Child SA establishments per second
// between two in-process engines (PSK, X25519, AES-GCM-256), no kernel and
// no sockets. Both ends run on this thread, so the figure is for one
// initiator plus one responder. Use it to profile the engine
// (valgrind --tool=callgrind bench/ike-engine-bench 200).
//
//   ike-engine-bench [COUNT]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <memory>

#include "agent/engines/ikev2/ike_engine.h"

using namespace tapsec::ikev2;

namespace {

std::shared_ptr<IkeConfig> config(const char* self, const char* peer, const char* local_ts, const char* remote_ts) {
  auto c = std::make_shared<IkeConfig>();
  c->name = "bench";
  c->ike_proposals = {std::get<Proposal>(parse_proposal("aes256gcm16-prfsha384-x25519", ProtocolId::Ike))};
  c->local_id = *Identification::parse(self);
  c->peer.expected_id = *Identification::parse(peer);
  SecretBytes psk(std::vector<std::uint8_t>(32, 0x5a));
  c->local_credentials.psk = psk;
  c->peer.psk = psk;
  ChildConfig child;
  child.name = "bench";
  child.esp_proposals = {std::get<Proposal>(parse_proposal("aes256gcm16", ProtocolId::Esp))};
  child.local_ts = {*TrafficSelector::parse(local_ts)};
  child.remote_ts = {*TrafficSelector::parse(remote_ts)};
  c->children.push_back(child);
  return c;
}

struct Selector : ConfigSelector {
  std::shared_ptr<const IkeConfig> config;
  std::shared_ptr<const IkeConfig> select(const Endpoint&, const Endpoint&, const Identification*) override {
    return config;
  }
};

}  // namespace

int main(int argc, char** argv) {
  const int count = argc > 1 ? std::atoi(argv[1]) : 1000;
  std::uint32_t next_spi = 0xc0000000;
  auto spis = [&](const Endpoint&, const Endpoint&) -> std::optional<std::uint32_t> { return next_spi++; };
  auto responder_selector = std::make_shared<Selector>();
  responder_selector->config = config("beta.example", "alpha.example", "10.2.0.0/16", "10.1.0.0/16");
  IkeEngine initiator({nullptr, spis, 1u << 30, std::chrono::seconds(30)});
  IkeEngine responder({responder_selector, spis, 1u << 30, std::chrono::seconds(30)});
  auto initiator_config = config("alpha.example", "beta.example", "10.1.0.0/16", "10.2.0.0/16");
  const Endpoint a{*IpAddress::parse("192.0.2.1"), 500}, b{*IpAddress::parse("192.0.2.2"), 500};

  int established = 0;
  auto now = Clock::now();
  auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < count; ++i) initiator.initiate(initiator_config, a, b, now);
  // Carry datagrams both ways until nothing moves.
  for (bool moved = true; moved;) {
    moved = false;
    for (auto* from : {&initiator, &responder}) {
      IkeEngine* to = from == &initiator ? &responder : &initiator;
      for (auto& event : from->take_events()) {
        if (auto* send = std::get_if<SendDatagram>(&event)) {
          to->receive(send->remote, send->local, send->data, now);
          moved = true;
        } else if (from == &initiator && std::holds_alternative<ChildSaInstall>(event)) {
          ++established;
        }
      }
    }
  }
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("BENCH ike-engine pairs=%d established=%d seconds=%.3f rate=%.1f/s (initiator and responder on one core)\n",
              count, established, seconds, established / seconds);
  return established == count ? 0 : 1;
}
