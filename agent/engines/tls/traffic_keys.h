// The key material of one direction of an established TLS connection, in the
// form a record layer (the kernel's kTLS, or the agent's own) needs it.
#pragma once

#include <array>
#include <cstdint>
#include <string_view>
#include <vector>

namespace tapsec::tls {

enum class RecordCipher { AesGcm128, AesGcm256, Chacha20Poly1305 };

std::string_view to_string(RecordCipher cipher);

struct TrafficKeys {
  std::uint16_t version = 0;  // 0x0303 (TLS 1.2) or 0x0304 (TLS 1.3)
  RecordCipher cipher = RecordCipher::AesGcm128;
  std::vector<std::uint8_t> key;  // 16 or 32 bytes
  // TLS 1.3 and ChaCha20-Poly1305: the 12-byte write IV (RFC 8446 §5.3).
  // TLS 1.2 AES-GCM: bytes 0..3 are the implicit salt, bytes 4..11 the
  // explicit nonce of the next record; tapsec sends seq as explicit nonce.
  std::array<std::uint8_t, 12> iv{};
  std::uint64_t seq = 0;  // sequence number of the next record
  // Cleared on destruction: secrets must not linger in freed memory.
  ~TrafficKeys();
  TrafficKeys() = default;
  TrafficKeys(const TrafficKeys&) = default;
  TrafficKeys& operator=(const TrafficKeys&) = default;
  TrafficKeys(TrafficKeys&&) = default;
  TrafficKeys& operator=(TrafficKeys&&) = default;
};

}  // namespace tapsec::tls
