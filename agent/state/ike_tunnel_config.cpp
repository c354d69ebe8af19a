#include "agent/state/ike_tunnel_config.h"

#include "agent/engines/ikev2/auth.h"
#include "agent/engines/ikev2/crypto.h"

namespace tapsec::state {
namespace {

using Error = std::string;

std::variant<std::vector<ikev2::Proposal>, Error> proposals(const std::vector<std::string>& texts,
                                                            ikev2::ProtocolId protocol, const char* key) {
  std::vector<ikev2::Proposal> out;
  std::uint8_t number = 1;
  for (const auto& text : texts) {
    auto parsed = ikev2::parse_proposal(text, protocol);
    if (auto* e = std::get_if<ikev2::ProposalParseError>(&parsed)) return std::string(key) + ": " + e->message;
    auto proposal = std::get<ikev2::Proposal>(parsed);
    proposal.number = number++;
    out.push_back(std::move(proposal));
  }
  return out;
}

std::variant<std::vector<ikev2::TrafficSelector>, Error> selectors(const std::vector<std::string>& texts,
                                                                   const char* key) {
  std::vector<ikev2::TrafficSelector> out;
  for (const auto& text : texts) {
    auto ts = ikev2::TrafficSelector::parse(text);
    if (!ts) return std::string(key) + ": \"" + text + "\" is not a traffic selector";
    out.push_back(*ts);
  }
  return out;
}

}  // namespace

std::uint16_t ike_group_by_name(std::string_view name) {
  if (name == "x25519" || name == "curve25519") return ikev2::group::kCurve25519;
  if (name == "ecp256") return ikev2::group::kEcp256;
  if (name == "ecp384") return ikev2::group::kEcp384;
  if (name == "modp2048") return ikev2::group::kModp2048;
  return 0;
}

std::variant<std::shared_ptr<ikev2::IkeConfig>, std::string> build_ike_config(const policy::Policy& policy,
                                                                             const policy::Tunnel& tunnel,
                                                                             const ikev2::IpAddress& local) {
  auto config = std::make_shared<ikev2::IkeConfig>();
  config->name = tunnel.name;

  if (!tunnel.ike_proposals.empty()) {
    auto p = proposals(tunnel.ike_proposals, ikev2::ProtocolId::Ike, "IKEProposals");
    if (auto* e = std::get_if<Error>(&p)) return *e;
    config->ike_proposals = std::move(std::get<0>(p));
  }

  // Our credentials and what the peer must prove.
  if (tunnel.auth == "certificate") {
    const policy::Identity* identity = policy.identity(tunnel.identity);
    if (!identity) return "no identity \"" + tunnel.identity + "\" in the policy";
    auto key = ikev2::load_private_key(identity->key_file);
    if (auto* e = std::get_if<std::string>(&key)) return "identity " + identity->name + ": " + *e;
    auto chain = ikev2::load_certificate_chain(identity->certificate_file);
    if (auto* e = std::get_if<std::string>(&chain)) return "identity " + identity->name + ": " + *e;
    config->local_credentials.method = ikev2::LocalCredentials::Method::Signature;
    config->local_credentials.private_key = std::get<ikev2::PrivateKey>(key);
    config->local_credentials.certificate_chain = std::get<std::vector<ikev2::Bytes>>(chain);

    std::vector<std::string> files;
    bool include_system = true;
    if (!tunnel.trust_store.empty()) {
      const policy::TrustStore* store = policy.trust_store(tunnel.trust_store);
      if (!store) return "no trust store \"" + tunnel.trust_store + "\" in the policy";
      files = store->files;
      include_system = store->include_system;
    }
    auto anchors = ikev2::load_trust_anchors(files, include_system);
    if (auto* e = std::get_if<std::string>(&anchors)) return "trust store: " + *e;
    config->peer.method = ikev2::PeerRequirements::Method::Signature;
    config->peer.anchors = std::get<ikev2::TrustAnchors>(anchors);
    if (tunnel.local_id.empty()) {
      auto subject = ikev2::subject_identification(config->local_credentials.certificate_chain.front());
      if (!subject) return "identity " + identity->name + ": cannot read the certificate's subject";
      config->local_id = *subject;
    }
  } else {
    const policy::Psk* psk = policy.psk(tunnel.psk);
    if (!psk) return "no PSK \"" + tunnel.psk + "\" in the policy";
    config->local_credentials.method = ikev2::LocalCredentials::Method::SharedKey;
    config->local_credentials.psk = ikev2::SecretBytes(psk->key);
    config->peer.method = ikev2::PeerRequirements::Method::SharedKey;
    config->peer.psk = ikev2::SecretBytes(psk->key);
  }

  if (!tunnel.local_id.empty()) {
    auto id = ikev2::Identification::parse(tunnel.local_id);
    if (!id) return "LocalId \"" + tunnel.local_id + "\" is not an identity";
    config->local_id = *id;
  } else if (config->local_id.data.empty()) {
    auto id = ikev2::Identification::parse(local.to_string());
    if (!id) return "cannot use the local address " + local.to_string() + " as identity";
    config->local_id = *id;
  }
  if (!tunnel.remote_id.empty()) {
    auto id = ikev2::Identification::parse(tunnel.remote_id);
    if (!id) return "RemoteId \"" + tunnel.remote_id + "\" is not an identity";
    config->peer.expected_id = *id;
  }

  ikev2::ChildConfig child;
  child.name = tunnel.name;
  child.mode = tunnel.mode == "transport" ? ikev2::Mode::Transport : ikev2::Mode::Tunnel;
  auto local_ts = selectors(tunnel.local_ts, "LocalTS");
  if (auto* e = std::get_if<Error>(&local_ts)) return *e;
  auto remote_ts = selectors(tunnel.remote_ts, "RemoteTS");
  if (auto* e = std::get_if<Error>(&remote_ts)) return *e;
  child.local_ts = std::move(std::get<0>(local_ts));
  child.remote_ts = std::move(std::get<0>(remote_ts));
  if (!tunnel.esp_proposals.empty()) {
    auto p = proposals(tunnel.esp_proposals, ikev2::ProtocolId::Esp, "ESPProposals");
    if (auto* e = std::get_if<Error>(&p)) return *e;
    child.esp_proposals = std::move(std::get<0>(p));
  }
  if (!tunnel.rekey_group.empty()) {
    child.rekey_group = ike_group_by_name(tunnel.rekey_group);
    if (!child.rekey_group) return "RekeyGroup \"" + tunnel.rekey_group + "\" is not a group tapsec knows";
  }
  child.lifetime.rekey_seconds = tunnel.rekey_seconds;
  child.lifetime.life_seconds =
      tunnel.life_seconds ? tunnel.life_seconds : tunnel.rekey_seconds + tunnel.rekey_seconds / 10;
  child.lifetime.rekey_bytes = tunnel.rekey_bytes;
  child.lifetime.life_bytes = tunnel.life_bytes;
  child.lifetime.rekey_packets = tunnel.rekey_packets;
  child.lifetime.life_packets = tunnel.life_packets;
  child.replay_window = tunnel.replay_window;
  config->children.push_back(std::move(child));

  config->ike_lifetime.rekey_seconds = tunnel.ike_rekey_seconds;
  config->dpd_interval = std::chrono::seconds(tunnel.dpd_seconds);
  config->mobike = tunnel.mobike;
  config->fragmentation = tunnel.fragmentation;
  config->force_udp_encapsulation = tunnel.force_encapsulation;
  config->allow_export = tunnel.export_allowed;
  return config;
}

}  // namespace tapsec::state
