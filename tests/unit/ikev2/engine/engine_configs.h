// The engine tests' configs and value helpers, without GoogleTest: PSK ends
// a (10.1.0.0/16) and b (10.2.0.0/16) and a selector that always answers
// with one config. Also used by the engine fuzz target (tests/fuzz/ikev2).
#pragma once

#include <memory>
#include <string>

#include "agent/engines/ikev2/ike_engine.h"

namespace tapsec::ikev2::test {

inline IpAddress ip(const char* text) { return *IpAddress::parse(text); }
inline TrafficSelector ts(const char* text) { return *TrafficSelector::parse(text); }
inline Identification id(const char* text) { return *Identification::parse(text); }
inline Proposal proposal(const char* text, ProtocolId protocol) {
  return std::get<Proposal>(parse_proposal(text, protocol));
}

class FixedSelector : public ConfigSelector {
 public:
  std::shared_ptr<const IkeConfig> config;
  int init_calls = 0, auth_calls = 0;
  std::shared_ptr<const IkeConfig> select(const Endpoint&, const Endpoint&, const Identification* peer_id) override {
    ++(peer_id ? auth_calls : init_calls);
    return config;
  }
};

inline ChildConfig child(const char* name, const char* local_ts, const char* remote_ts) {
  ChildConfig config;
  config.name = name;
  config.local_ts = {ts(local_ts)};
  config.remote_ts = {ts(remote_ts)};
  return config;
}

inline std::shared_ptr<IkeConfig> psk_config(const char* local_id, const char* peer_id, const char* psk) {
  auto config = std::make_shared<IkeConfig>();
  config->name = "link";
  config->local_id = id(local_id);
  const std::string secret(psk);
  config->local_credentials.method = LocalCredentials::Method::SharedKey;
  config->local_credentials.psk =
      SecretBytes(std::span(reinterpret_cast<const std::uint8_t*>(secret.data()), secret.size()));
  config->peer.method = PeerRequirements::Method::SharedKey;
  config->peer.psk = config->local_credentials.psk;
  config->peer.expected_id = id(peer_id);
  return config;
}

struct Ends {
  std::shared_ptr<IkeConfig> a, b;
};

// a (10.1.0.0/16) and b (10.2.0.0/16) with a shared key and one child each.
inline Ends psk_ends(const char* psk = "correct horse battery staple") {
  Ends ends{psk_config("a.example", "b.example", psk), psk_config("b.example", "a.example", psk)};
  ends.a->children = {child("net", "10.1.0.0/16", "10.2.0.0/16")};
  ends.b->children = {child("net", "10.2.0.0/16", "10.1.0.0/16")};
  return ends;
}

}  // namespace tapsec::ikev2::test
