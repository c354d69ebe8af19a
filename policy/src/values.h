// Parsing and matching of the value types the policy language uses.
// Parsers return std::nullopt and set `why` to a one-line reason on bad input.
// Internal to tapsec_policy.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "policy/src/model.h"

namespace tapsec::policy::detail {

// Section, identity, PSK, trust store and rule names.
bool is_valid_name(std::string_view name);

std::vector<std::string_view> split_words(std::string_view value);
std::string_view trim(std::string_view text);

std::optional<bool> parse_bool(std::string_view value, std::string& why);
std::optional<PortRange> parse_port_range(std::string_view value, std::string& why);
std::optional<Cidr> parse_cidr(std::string_view value, std::string& why);
// Parses an IP literal (v4, v6, or v4-mapped v6, which becomes v4) as a
// full-length prefix; used for request addresses.
std::optional<Cidr> parse_address(std::string_view value);
bool cidr_contains(const Cidr& prefix, const Cidr& address);

// Hex digits (no prefix), at least kMinKeyBytes and at most kMaxKeyBytes bytes.
inline constexpr std::size_t kMinKeyBytes = 16;
inline constexpr std::size_t kMaxKeyBytes = 1024;
std::optional<std::vector<std::uint8_t>> parse_hex_key(std::string_view hex, std::string& why);

// Known names. Each returns the canonical spelling, or nullopt.
std::optional<std::string> canonical_protocol(std::string_view name);
std::optional<std::string> canonical_ciphersuite(std::string_view name);
std::optional<std::string> canonical_group(std::string_view name);
std::optional<std::string> canonical_signature_algorithm(std::string_view name);
const std::vector<std::string>& known_protocols();
const std::vector<std::string>& known_peer_validation_modes();

// Users and groups: a number, or a name resolved now with getpwnam/getgrnam.
std::optional<std::uint32_t> resolve_user(std::string_view value, std::string& why);
std::optional<std::uint32_t> resolve_group(std::string_view value, std::string& why);

// Shell-style glob (fnmatch), case-insensitive when asked.
bool glob_matches(const std::string& pattern, const std::string& text, bool ignore_case);

std::string join(const std::vector<std::string>& words, std::string_view separator);

}  // namespace tapsec::policy::detail
