// Key schedule pieces and record protection the engine computes itself, so
// that keys handed to the kernel do not depend on OpenSSL internals.
// Internal to agent/engines/tls.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "agent/engines/tls/traffic_keys.h"

namespace tapsec::tls::detail {

// Byte buffer for secrets: cleared when it is destroyed or reassigned.
class SecretBytes {
 public:
  SecretBytes() = default;
  explicit SecretBytes(std::span<const std::uint8_t> bytes) : bytes_(bytes.begin(), bytes.end()) {}
  SecretBytes(const SecretBytes&) = default;
  SecretBytes(SecretBytes&& other) noexcept : bytes_(std::move(other.bytes_)) { other.bytes_.clear(); }
  SecretBytes& operator=(const SecretBytes& other);
  SecretBytes& operator=(SecretBytes&& other) noexcept;
  ~SecretBytes();

  std::span<const std::uint8_t> span() const { return bytes_; }
  std::uint8_t* data() { return bytes_.data(); }
  std::size_t size() const { return bytes_.size(); }
  bool empty() const { return bytes_.empty(); }
  void resize(std::size_t size) { bytes_.resize(size); }
  void clear();

 private:
  std::vector<std::uint8_t> bytes_;
};

// RFC 8446 §7.1 HKDF-Expand-Label with SHA-256 or SHA-384 ("SHA256"/"SHA384").
// Returns nullopt only if OpenSSL fails.
std::optional<SecretBytes> hkdf_expand_label(std::string_view digest, std::span<const std::uint8_t> secret,
                                             std::string_view label, std::span<const std::uint8_t> context,
                                             std::size_t length);

// RFC 5246 §5 PRF: PRF(secret, label, seed) with the given digest.
std::optional<SecretBytes> tls12_prf(std::string_view digest, std::span<const std::uint8_t> secret,
                                     std::string_view label, std::span<const std::uint8_t> seed,
                                     std::size_t length);

// AEAD over one record body. seal returns ciphertext || 16-byte tag; open
// returns the plaintext, or nullopt when authentication fails.
std::optional<std::vector<std::uint8_t>> aead_seal(RecordCipher cipher, std::span<const std::uint8_t> key,
                                                   std::span<const std::uint8_t, 12> nonce,
                                                   std::span<const std::uint8_t> aad,
                                                   std::span<const std::uint8_t> plaintext);
std::optional<std::vector<std::uint8_t>> aead_open(RecordCipher cipher, std::span<const std::uint8_t> key,
                                                   std::span<const std::uint8_t, 12> nonce,
                                                   std::span<const std::uint8_t> aad,
                                                   std::span<const std::uint8_t> ciphertext_and_tag);

// RFC 8446 §5.3 per-record nonce: the IV XOR the left-padded sequence number.
std::array<std::uint8_t, 12> tls13_nonce(const std::array<std::uint8_t, 12>& iv, std::uint64_t seq);

// A whole TLS 1.3 record (header included) protecting `content` of `type`.
std::optional<std::vector<std::uint8_t>> tls13_seal_record(const TrafficKeys& keys, std::uint8_t type,
                                                           std::span<const std::uint8_t> content);
// Opens a whole TLS 1.3 record: inner plaintext with padding removed and the
// inner content type, or nullopt.
struct InnerPlaintext {
  std::uint8_t type = 0;
  std::vector<std::uint8_t> content;
};
std::optional<InnerPlaintext> tls13_open_record(const TrafficKeys& keys, std::span<const std::uint8_t> record);

}  // namespace tapsec::tls::detail
