// Value types of [Tunnel] sections: durations, traffic selectors and IKEv2/ESP
// proposals in strongSwan syntax. Parsers return std::nullopt (or false) and
// set `why` to a one-line reason on bad input. Internal to tapsec_policy.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "policy/src/model.h"

namespace tapsec::policy::detail {

// Plain seconds, or a number with the suffix s, m or h ("90", "30m", "8h").
std::optional<std::uint32_t> parse_duration(std::string_view value, std::string& why);

// A decimal count without sign or suffix.
std::optional<std::uint64_t> parse_count(std::string_view value, std::string& why);

// A traffic selector: a prefix or host address, optionally followed by
// "[protocol]" or "[protocol/port]" ("10.1.0.0/24", "192.0.2.7[tcp/443]",
// "2001:db8::/64[udp/5000-5100]").
struct TrafficSelectorSpec {
  Cidr prefix;
  bool is_host = false;  // a /32 or /128
  std::string text;      // as written
};
std::optional<TrafficSelectorSpec> parse_traffic_selector(std::string_view value, std::string& why);

enum class ProposalKind { Ike, Esp };
// Checks one proposal ("aes256gcm16-prfsha384-x25519"): every token known,
// an encryption algorithm present, integrity for non-AEAD ciphers, a key
// exchange group for IKE, esn/noesn only for ESP, PRFs only for IKE.
bool check_proposal(std::string_view proposal, ProposalKind kind, std::string& why);
const std::vector<std::string>& known_proposal_tokens();
// The key exchange groups RekeyGroup= accepts.
const std::vector<std::string>& known_key_exchange_groups();

// An IP literal, a DNS host name, or "%any".
bool is_valid_peer(std::string_view value);

}  // namespace tapsec::policy::detail
