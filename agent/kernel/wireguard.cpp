// The parts of wireguard.h that need no kernel: keys, allowed IPs and
// endpoints as text. No netlink here (the fuzzer links this file alone).
#include "agent/kernel/wireguard.h"

#include <netinet/in.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <memory>
#include <stdexcept>

namespace tapsec::kernel::wireguard {
namespace {

constexpr std::string_view kBase64Alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
// 32 bytes = 256 bits: 42 full sextets, one sextet holding the last 4 bits
// (its 2 low bits zero), and one '='.
constexpr std::size_t kBase64KeyLength = 44;

int base64_value(char character) {
  if (character >= 'A' && character <= 'Z') return character - 'A';
  if (character >= 'a' && character <= 'z') return character - 'a' + 26;
  if (character >= '0' && character <= '9') return character - '0' + 52;
  if (character == '+') return 62;
  if (character == '/') return 63;
  return -1;
}

struct PkeyFree {
  void operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
};

// The prefix length at the end of "address/length": digits only, no sign,
// no leading zeros beyond a lone "0".
std::optional<unsigned> parse_prefix_length(std::string_view digits) {
  if (digits.empty() || digits.size() > 3) return std::nullopt;
  if (digits.size() > 1 && digits.front() == '0') return std::nullopt;
  unsigned value = 0;
  for (char digit : digits) {
    if (digit < '0' || digit > '9') return std::nullopt;
    value = value * 10 + static_cast<unsigned>(digit - '0');
  }
  return value;
}

bool host_bits_zero(const IpAddress& address, unsigned prefix_length) {
  const std::size_t bits = address.size() * 8;
  for (std::size_t bit = prefix_length; bit < bits; ++bit) {
    if (address.bytes[bit / 8] & (0x80u >> (bit % 8))) return false;
  }
  return true;
}

}  // namespace

Key public_key_of(const Key& private_key) {
  // X25519 clamps the scalar itself, exactly as WireGuard does.
  std::unique_ptr<EVP_PKEY, PkeyFree> key(
      EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, nullptr, private_key.data(), private_key.size()));
  if (!key) throw std::runtime_error("X25519 private key rejected by OpenSSL");
  Key public_key{};
  std::size_t length = public_key.size();
  if (EVP_PKEY_get_raw_public_key(key.get(), public_key.data(), &length) != 1 || length != public_key.size()) {
    throw std::runtime_error("X25519 public key derivation failed");
  }
  return public_key;
}

std::string key_to_base64(const Key& key) {
  std::string text;
  text.reserve(kBase64KeyLength);
  std::size_t index = 0;
  for (; index + 3 <= key.size(); index += 3) {
    const std::uint32_t group = (std::uint32_t{key[index]} << 16) | (std::uint32_t{key[index + 1]} << 8) | key[index + 2];
    for (int shift = 18; shift >= 0; shift -= 6) text.push_back(kBase64Alphabet[(group >> shift) & 0x3f]);
  }
  // Two bytes remain (32 = 3 * 10 + 2).
  const std::uint32_t tail = (std::uint32_t{key[index]} << 16) | (std::uint32_t{key[index + 1]} << 8);
  text.push_back(kBase64Alphabet[(tail >> 18) & 0x3f]);
  text.push_back(kBase64Alphabet[(tail >> 12) & 0x3f]);
  text.push_back(kBase64Alphabet[(tail >> 6) & 0x3f]);
  text.push_back('=');
  return text;
}

std::optional<Key> key_from_base64(std::string_view text) {
  if (text.size() != kBase64KeyLength || text.back() != '=') return std::nullopt;
  int values[kBase64KeyLength - 1];
  for (std::size_t i = 0; i + 1 < kBase64KeyLength; ++i) {
    values[i] = base64_value(text[i]);
    if (values[i] < 0) return std::nullopt;
  }
  // The last sextet carries 4 bits of key; its 2 low bits must be zero or
  // several texts would name the same key.
  if (values[kBase64KeyLength - 2] & 0x3) return std::nullopt;
  Key key{};
  std::size_t out = 0;
  for (std::size_t i = 0; i + 4 <= kBase64KeyLength - 1; i += 4) {
    const std::uint32_t group = (std::uint32_t(values[i]) << 18) | (std::uint32_t(values[i + 1]) << 12) |
                                (std::uint32_t(values[i + 2]) << 6) | std::uint32_t(values[i + 3]);
    key[out++] = static_cast<std::uint8_t>(group >> 16);
    key[out++] = static_cast<std::uint8_t>(group >> 8);
    key[out++] = static_cast<std::uint8_t>(group);
  }
  const std::uint32_t tail = (std::uint32_t(values[40]) << 18) | (std::uint32_t(values[41]) << 12) |
                             (std::uint32_t(values[42]) << 6);
  key[out++] = static_cast<std::uint8_t>(tail >> 16);
  key[out++] = static_cast<std::uint8_t>(tail >> 8);
  OPENSSL_cleanse(values, sizeof values);
  return key;
}

std::string AllowedIp::to_string() const {
  return address.to_string() + "/" + std::to_string(prefix_length);
}

std::optional<AllowedIp> AllowedIp::parse(std::string_view text) {
  const std::size_t slash = text.find('/');
  const auto address = IpAddress::parse(text.substr(0, slash));
  if (!address) return std::nullopt;
  const unsigned full_length = static_cast<unsigned>(address->size() * 8);
  unsigned prefix_length = full_length;  // a bare address is a host route, as wg reads it
  if (slash != std::string_view::npos) {
    const auto parsed = parse_prefix_length(text.substr(slash + 1));
    if (!parsed || *parsed > full_length) return std::nullopt;
    prefix_length = *parsed;
  }
  if (!host_bits_zero(*address, prefix_length)) return std::nullopt;
  return AllowedIp{*address, static_cast<std::uint8_t>(prefix_length)};
}

std::string Endpoint::to_string() const {
  std::string text;
  if (address.family == AF_INET6) {
    text.push_back('[');
    text += address.to_string();
    text.push_back(']');
  } else {
    text = address.to_string();
  }
  text += ':';
  text += std::to_string(port);
  return text;
}

}  // namespace tapsec::kernel::wireguard
