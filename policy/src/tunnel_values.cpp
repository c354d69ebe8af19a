#include "policy/src/tunnel_values.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <limits>

#include "policy/src/values.h"

namespace tapsec::policy::detail {
namespace {

std::optional<std::uint64_t> decimal(std::string_view text) {
  if (text.empty() || text.size() > 19) return std::nullopt;
  std::uint64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return value;
}

enum class TokenClass { AeadCipher, Cipher, Integrity, Prf, KeyExchange, Esn };

struct Token {
  std::string_view name;
  TokenClass kind;
};

constexpr Token kTokens[] = {
    {"aes128", TokenClass::Cipher},           {"aes256", TokenClass::Cipher},
    {"aes128gcm16", TokenClass::AeadCipher},  {"aes256gcm16", TokenClass::AeadCipher},
    {"chacha20poly1305", TokenClass::AeadCipher}, {"sha256", TokenClass::Integrity},
    {"sha384", TokenClass::Integrity},        {"sha512", TokenClass::Integrity},
    {"prfsha256", TokenClass::Prf},           {"prfsha384", TokenClass::Prf},
    {"prfsha512", TokenClass::Prf},           {"x25519", TokenClass::KeyExchange},
    {"curve25519", TokenClass::KeyExchange},  {"ecp256", TokenClass::KeyExchange},
    {"ecp384", TokenClass::KeyExchange},      {"modp2048", TokenClass::KeyExchange},
    {"esn", TokenClass::Esn},                 {"noesn", TokenClass::Esn},
};

const Token* find_token(std::string_view name) {
  for (const Token& token : kTokens)
    if (token.name == name) return &token;
  return nullptr;
}

bool valid_protocol_name(std::string_view protocol) {
  static constexpr std::string_view kNames[] = {"tcp", "udp", "sctp", "icmp", "icmpv6", "ipv6-icmp", "any"};
  if (std::find(std::begin(kNames), std::end(kNames), protocol) != std::end(kNames)) return true;
  const auto number = decimal(protocol);
  return number && *number <= 255;
}

bool protocol_has_ports(std::string_view protocol) {
  return protocol == "tcp" || protocol == "udp" || protocol == "sctp" || decimal(protocol).has_value();
}

}  // namespace

std::optional<std::uint32_t> parse_duration(std::string_view value, std::string& why) {
  std::uint64_t unit = 1;
  std::string_view digits = value;
  if (!digits.empty()) {
    switch (digits.back()) {
      case 's': unit = 1; digits.remove_suffix(1); break;
      case 'm': unit = 60; digits.remove_suffix(1); break;
      case 'h': unit = 3600; digits.remove_suffix(1); break;
      default: break;
    }
  }
  const auto number = decimal(digits);
  if (!number) {
    why = "'" + std::string(value) + "' is not a duration (seconds, or a number with s, m or h: 90, 30m, 8h)";
    return std::nullopt;
  }
  if (*number > std::numeric_limits<std::uint32_t>::max() / unit) {
    why = "'" + std::string(value) + "' is too long a duration";
    return std::nullopt;
  }
  return static_cast<std::uint32_t>(*number * unit);
}

std::optional<std::uint64_t> parse_count(std::string_view value, std::string& why) {
  const auto number = decimal(value);
  if (!number) why = "'" + std::string(value) + "' is not a number";
  return number;
}

std::optional<TrafficSelectorSpec> parse_traffic_selector(std::string_view value, std::string& why) {
  TrafficSelectorSpec selector;
  selector.text = std::string(value);
  std::string_view prefix_text = value;
  const std::size_t bracket = value.find('[');
  if (bracket != std::string_view::npos) {
    prefix_text = value.substr(0, bracket);
    std::string_view suffix = value.substr(bracket);
    if (suffix.size() < 3 || suffix.back() != ']') {
      why = "'" + std::string(value) + "' has a malformed protocol/port suffix (e.g. 10.1.0.0/24[tcp/443])";
      return std::nullopt;
    }
    suffix = suffix.substr(1, suffix.size() - 2);
    const std::size_t slash = suffix.find('/');
    const std::string_view protocol = suffix.substr(0, slash);
    if (!valid_protocol_name(protocol)) {
      why = "'" + std::string(value) + "': unknown protocol '" + std::string(protocol) +
            "' (tcp, udp, sctp, icmp, icmpv6, any, or a number 0-255)";
      return std::nullopt;
    }
    if (slash != std::string_view::npos) {
      if (!protocol_has_ports(protocol)) {
        why = "'" + std::string(value) + "': protocol " + std::string(protocol) + " has no ports";
        return std::nullopt;
      }
      std::string port_why;
      if (!parse_port_range(suffix.substr(slash + 1), port_why)) {
        why = "'" + std::string(value) + "': " + port_why;
        return std::nullopt;
      }
    }
  }
  std::string cidr_why;
  auto prefix = parse_cidr(prefix_text, cidr_why);
  if (!prefix) {
    why = "'" + std::string(value) + "' is not a traffic selector (a prefix or address such as 10.1.0.0/24, "
          "2001:db8::/64 or 192.0.2.7, optionally with [tcp/443])";
    if (prefix_text.find('/') != std::string_view::npos) why += ": " + cidr_why;
    return std::nullopt;
  }
  selector.is_host = prefix->prefix_length == (prefix->is_v6 ? 128u : 32u);
  selector.prefix = std::move(*prefix);
  return selector;
}

bool check_proposal(std::string_view proposal, ProposalKind kind, std::string& why) {
  const std::string quoted = "proposal '" + std::string(proposal) + "'";
  bool aead = false, cipher = false, integrity = false, key_exchange = false;
  std::size_t start = 0;
  while (start <= proposal.size()) {
    std::size_t dash = proposal.find('-', start);
    if (dash == std::string_view::npos) dash = proposal.size();
    const std::string_view name = proposal.substr(start, dash - start);
    start = dash + 1;
    if (name.empty()) {
      why = quoted + " has an empty algorithm (two '-' in a row, or one at an end)";
      return false;
    }
    const Token* token = find_token(name);
    if (!token) {
      why = "unknown algorithm '" + std::string(name) + "' in " + quoted + " (known: " +
            join(known_proposal_tokens(), " ") + ")";
      return false;
    }
    switch (token->kind) {
      case TokenClass::AeadCipher: aead = true; break;
      case TokenClass::Cipher: cipher = true; break;
      case TokenClass::Integrity: integrity = true; break;
      case TokenClass::KeyExchange: key_exchange = true; break;
      case TokenClass::Prf:
        if (kind == ProposalKind::Esp) {
          why = "'" + std::string(name) + "' in " + quoted + " is a PRF, which only IKE proposals have";
          return false;
        }
        break;
      case TokenClass::Esn:
        if (kind == ProposalKind::Ike) {
          why = "'" + std::string(name) + "' in " + quoted + " applies to ESP proposals only";
          return false;
        }
        break;
    }
  }
  if (!aead && !cipher) {
    why = quoted + " has no encryption algorithm (e.g. aes256gcm16 or aes256)";
    return false;
  }
  if (cipher && !integrity) {
    why = quoted + ": aes128/aes256 need an integrity algorithm (e.g. aes256-sha256), or use aes256gcm16";
    return false;
  }
  // In ESP an AEAD cipher protects integrity itself; a second algorithm is a
  // mistake the kernel would refuse.
  if (kind == ProposalKind::Esp && aead && integrity) {
    why = quoted + ": an AEAD cipher (gcm16, chacha20poly1305) takes no integrity algorithm in ESP";
    return false;
  }
  if (kind == ProposalKind::Ike && !key_exchange) {
    why = quoted + " has no key exchange group (e.g. x25519, ecp256, modp2048)";
    return false;
  }
  return true;
}

const std::vector<std::string>& known_proposal_tokens() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> all;
    for (const Token& token : kTokens) all.emplace_back(token.name);
    return all;
  }();
  return names;
}

const std::vector<std::string>& known_key_exchange_groups() {
  static const std::vector<std::string> groups = {"x25519", "curve25519", "ecp256", "ecp384", "modp2048"};
  return groups;
}

bool is_valid_peer(std::string_view value) {
  if (value == "%any") return true;
  if (parse_address(value)) return true;
  if (value.empty() || value.size() > 253 || value.front() == '.' || value.front() == '-') return false;
  std::size_t label = 0;
  for (char c : value) {
    if (c == '.') {
      if (label == 0) return false;
      label = 0;
      continue;
    }
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-') return false;
    if (++label > 63) return false;
  }
  return true;
}

}  // namespace tapsec::policy::detail
