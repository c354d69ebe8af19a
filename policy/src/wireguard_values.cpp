#include "policy/src/wireguard_values.h"

#include <algorithm>
#include <cctype>
#include <charconv>

#include "policy/src/values.h"

namespace tapsec::policy::detail {
namespace {

// The value of one base64 digit (RFC 4648 §4), or -1.
int base64_digit(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

std::optional<unsigned> prefix_length(std::string_view text, unsigned max_length) {
  unsigned length = 0;
  if (text.empty() || text.size() > 3) return std::nullopt;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), length);
  if (ec != std::errc() || end != text.data() + text.size() || length > max_length) return std::nullopt;
  return length;
}

}  // namespace

bool is_valid_interface_name(std::string_view name, std::string& why) {
  const bool allowed_characters = std::all_of(name.begin(), name.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '-';
  });
  if (name.empty() || name.size() > kMaxInterfaceNameLength || !allowed_characters || name == "." || name == "..") {
    why = "'" + std::string(name) + "' is not an interface name (1-15 letters, digits, '_', '.', '-'; not . or ..)";
    return false;
  }
  return true;
}

std::string default_interface_name(std::string_view tunnel_name) {
  std::string name = "wg-" + std::string(tunnel_name);
  if (name.size() > kMaxInterfaceNameLength) name.resize(kMaxInterfaceNameLength);
  return name;
}

std::optional<std::array<std::uint8_t, kWireGuardKeyBytes>> parse_wireguard_key(std::string_view base64,
                                                                                 std::string& why) {
  // 32 bytes are 43 base64 digits (256 bits and 2 zero bits) and one '='.
  constexpr std::size_t kDigits = 43;
  const auto reject = [&] {
    why = "'" + std::string(base64) + "' is not a WireGuard key (the base64 of 32 bytes: 44 characters ending in "
          "one '=', as `wg pubkey` prints it)";
    return std::nullopt;
  };
  if (base64.size() != kDigits + 1 || base64.back() != '=') return reject();
  std::array<std::uint8_t, kWireGuardKeyBytes> key{};
  std::uint32_t bits = 0;
  unsigned bit_count = 0;
  std::size_t out = 0;
  for (std::size_t i = 0; i < kDigits; ++i) {
    const int digit = base64_digit(base64[i]);
    if (digit < 0) return reject();
    bits = (bits << 6) | static_cast<std::uint32_t>(digit);
    bit_count += 6;
    if (bit_count >= 8) {
      bit_count -= 8;
      key[out++] = static_cast<std::uint8_t>(bits >> bit_count);
      bits &= (1u << bit_count) - 1;
    }
  }
  // The two bits left over must be zero, or the text is not how the key is written.
  if (out != kWireGuardKeyBytes || bits != 0) return reject();
  return key;
}

std::optional<std::string> parse_interface_address(std::string_view value, std::string& why) {
  const std::size_t slash = value.find('/');
  const std::string_view address_text = value.substr(0, slash);
  std::string address_why;
  const auto address = slash == 0 ? std::nullopt : parse_cidr(address_text, address_why);
  if (!address) {
    why = "'" + std::string(value) + "' is not an interface address (an address with its prefix length, e.g. "
          "10.9.0.1/24 or fd00:9::1/64)";
    return std::nullopt;
  }
  const unsigned max_length = address->is_v6 ? 128 : 32;
  if (slash == std::string_view::npos) return std::string(value) + "/" + std::to_string(max_length);
  if (!prefix_length(value.substr(slash + 1), max_length)) {
    why = "'" + std::string(value) + "' has a bad prefix length (0-" + std::to_string(max_length) + ")";
    return std::nullopt;
  }
  return std::string(value);
}

std::optional<std::string> parse_allowed_ip(std::string_view value, std::string& why) {
  const auto prefix = parse_cidr(value, why);
  if (!prefix) return std::nullopt;
  if (value.find('/') == std::string_view::npos) return std::string(value) + "/" + std::to_string(prefix->prefix_length);
  return std::string(value);
}

std::optional<std::uint32_t> parse_fwmark(std::string_view value, std::string& why) {
  std::string_view digits = value;
  int base = 10;
  if (digits.size() > 2 && digits[0] == '0' && (digits[1] == 'x' || digits[1] == 'X')) {
    digits.remove_prefix(2);
    base = 16;
  }
  std::uint32_t mark = 0;
  const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), mark, base);
  if (digits.empty() || ec != std::errc() || end != digits.data() + digits.size()) {
    why = "'" + std::string(value) + "' is not a firewall mark (a 32-bit number, decimal or 0x hex)";
    return std::nullopt;
  }
  return mark;
}

}  // namespace tapsec::policy::detail
