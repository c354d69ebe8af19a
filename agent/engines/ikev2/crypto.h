// IKEv2 cryptography on OpenSSL 3: PRF and prf+ (RFC 7296 §2.13), key
// exchange groups, the IKE SA and Child SA key schedules (§2.14, §2.17),
// and protection of SK payloads with AEAD (RFC 5282, RFC 7634) or AES-CBC +
// HMAC-SHA2. Secrets live in SecretBytes, which is wiped when freed.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "agent/engines/ikev2/message.h"
#include "agent/engines/ikev2/types.h"

namespace tapsec::ikev2 {

// Key material: cleared (OPENSSL_cleanse) on destruction and reassignment.
class SecretBytes {
 public:
  SecretBytes() = default;
  explicit SecretBytes(std::span<const std::uint8_t> bytes);
  explicit SecretBytes(std::size_t size);  // zero-filled
  SecretBytes(const SecretBytes&);
  SecretBytes& operator=(const SecretBytes&);
  SecretBytes(SecretBytes&&) noexcept;
  SecretBytes& operator=(SecretBytes&&) noexcept;
  ~SecretBytes();

  std::uint8_t* data() { return bytes_.data(); }
  const std::uint8_t* data() const { return bytes_.data(); }
  std::size_t size() const { return bytes_.size(); }
  bool empty() const { return bytes_.empty(); }
  std::span<const std::uint8_t> span() const { return bytes_; }
  SecretBytes slice(std::size_t offset, std::size_t length) const;
  bool operator==(const SecretBytes& other) const;  // constant time

 private:
  std::vector<std::uint8_t> bytes_;
};

// A negotiated IKE or ESP transform set, with the sizes that follow from it.
struct AlgorithmSuite {
  std::uint16_t encryption = 0;           // encr::*
  std::uint16_t encryption_key_bits = 0;  // 128 / 256 (ChaCha20: 256)
  std::uint16_t integrity = integ::kNone; // none for AEAD
  std::uint16_t prf = 0;                  // IKE only
  std::uint16_t key_exchange = group::kNone;
  bool extended_sequence_numbers = false; // ESP only

  bool is_aead() const;
  // Bytes of keying material per direction: encryption key (+ 4-byte salt
  // for AES-GCM and ChaCha20-Poly1305) and integrity key.
  std::size_t encryption_key_size() const;
  std::size_t integrity_key_size() const;
  std::size_t icv_size() const;
  // "AES_GCM_16_256/PRF_HMAC_SHA2_256/CURVE_25519" in strongSwan-like names.
  std::string to_string() const;
  bool operator==(const AlgorithmSuite&) const = default;
};

// Picks the first proposal of `offered` (the peer's order for a responder)
// whose transforms are all acceptable to `supported`; proposal numbers and
// SPI are taken from the offer. nullopt = NO_PROPOSAL_CHOSEN.
struct ChosenProposal {
  Proposal proposal;  // exactly one transform of each type, as sent back
  AlgorithmSuite suite;
};
std::optional<ChosenProposal> choose_proposal(const std::vector<Proposal>& offered,
                                              const std::vector<Proposal>& supported);
// Reads a proposal that a peer chose back into a suite; nullopt when it is
// malformed or not one of ours.
std::optional<AlgorithmSuite> suite_of(const Proposal& chosen, const std::vector<Proposal>& ours);

// Proposals from strongSwan-style strings: "aes256gcm16-prfsha384-x25519",
// "aes128-sha256-modp2048", "chacha20poly1305-esn". One string = one
// proposal. Errors name the unknown token.
struct ProposalParseError { std::string message; };
std::variant<Proposal, ProposalParseError> parse_proposal(std::string_view text, ProtocolId protocol);
// tapsec's defaults (AEAD first, X25519 first).
std::vector<Proposal> default_ike_proposals();
std::vector<Proposal> default_esp_proposals();

class Prf {
 public:
  explicit Prf(std::uint16_t prf_id);
  std::size_t output_size() const;
  std::size_t preferred_key_size() const;
  SecretBytes compute(std::span<const std::uint8_t> key, std::span<const std::uint8_t> data) const;
  // prf+ (RFC 7296 §2.13): `length` bytes of T1 | T2 | ...
  SecretBytes plus(std::span<const std::uint8_t> key, std::span<const std::uint8_t> seed, std::size_t length) const;

 private:
  std::uint16_t id_;
};

// One side of a Diffie-Hellman / ECDH / X25519 exchange.
class KeyExchange {
 public:
  // nullptr for an unsupported group.
  static std::unique_ptr<KeyExchange> generate(std::uint16_t group_id);
  // A fixed private key (known-answer tests; RFC 7748 scalar for X25519,
  // big-endian scalar for ECP and MODP); nullptr when it is not valid.
  static std::unique_ptr<KeyExchange> from_private_key(std::uint16_t group_id,
                                                       std::span<const std::uint8_t> private_key);
  virtual ~KeyExchange() = default;
  virtual std::uint16_t group() const = 0;
  // Our KE payload data (RFC 7296 §3.4 / RFC 5903 §7 / RFC 8031 §2).
  virtual Bytes public_value() const = 0;
  // The shared secret g^ir; nullopt when the peer's value is malformed or
  // invalid (wrong length, not on the curve, all-zero X25519 result).
  virtual std::optional<SecretBytes> shared_secret(std::span<const std::uint8_t> peer_public) const = 0;
};
bool group_supported(std::uint16_t group_id);

// The IKE SA's keys (§2.14).
struct IkeKeys {
  SecretBytes sk_d, sk_ai, sk_ar, sk_ei, sk_er, sk_pi, sk_pr;
};
// SKEYSEED = prf(Ni | Nr, g^ir) for a new IKE SA, or
// prf(SK_d(old), g^ir (new) | Ni | Nr) for a rekey (old_sk_d non-null).
IkeKeys derive_ike_keys(const AlgorithmSuite& suite, std::span<const std::uint8_t> shared_secret,
                        std::span<const std::uint8_t> nonce_i, std::span<const std::uint8_t> nonce_r,
                        std::uint64_t spi_i, std::uint64_t spi_r, const SecretBytes* old_sk_d = nullptr,
                        std::uint16_t old_prf = 0);

// A Child SA's keys (§2.17): KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr),
// taken as initiator-to-responder encryption+integrity, then the reverse.
struct ChildKeys {
  SecretBytes encryption_i, integrity_i;  // initiator -> responder
  SecretBytes encryption_r, integrity_r;  // responder -> initiator
};
ChildKeys derive_child_keys(const AlgorithmSuite& esp_suite, std::uint16_t ike_prf, const SecretBytes& sk_d,
                            std::span<const std::uint8_t> nonce_i, std::span<const std::uint8_t> nonce_r,
                            const SecretBytes* shared_secret = nullptr);

// SSKE: an export from SK_d, prf+(SK_d, "tapsec export" | label | Ni | Nr).
SecretBytes derive_export(std::uint16_t ike_prf, const SecretBytes& sk_d, std::string_view label,
                          std::span<const std::uint8_t> nonce_i, std::span<const std::uint8_t> nonce_r,
                          std::size_t length);

// Protects and unprotects the SK payload of one direction.
class SkCipher {
 public:
  // encryption_key includes the salt for AEAD suites; integrity_key is
  // empty for AEAD.
  SkCipher(const AlgorithmSuite& suite, SecretBytes encryption_key, SecretBytes integrity_key);
  std::size_t iv_size() const;
  std::size_t icv_size() const;
  std::size_t block_size() const;  // padding alignment (1 for ChaCha20, 16 for AES)
  // Body length for `plaintext_size` bytes of inner payloads (IV, padding,
  // pad length byte and ICV included).
  std::size_t sealed_size(std::size_t plaintext_size) const;
  // aad = every byte of the message before the SK body (IKE header with the
  // final length, outer payloads, SK generic header). Returns IV || C || ICV.
  Bytes seal(std::span<const std::uint8_t> aad, std::span<const std::uint8_t> plaintext) const;
  // nullopt when authentication fails or the padding is malformed; returns
  // the inner payload bytes without padding.
  std::optional<Bytes> open(std::span<const std::uint8_t> aad, std::span<const std::uint8_t> body) const;

 private:
  AlgorithmSuite suite_;
  SecretBytes encryption_key_, integrity_key_;
};

// Builds a whole protected message: header + SK{inner} with lengths set.
Bytes encode_protected(const Header& header, const std::vector<Payload>& inner, const SkCipher& cipher);
// Splits a protected message into SKF fragments (RFC 7383 §2.5) so that no
// datagram exceeds max_datagram bytes; one element when it fits unfragmented.
std::vector<Bytes> encode_protected_fragments(const Header& header, const std::vector<Payload>& inner,
                                              const SkCipher& cipher, std::size_t max_datagram);
// Opens the SK payload of a decoded message and decodes the inner chain.
// `datagram` is the exact bytes `message` was decoded from.
Decoded<std::vector<Payload>> open_protected(const Message& message, std::span<const std::uint8_t> datagram,
                                             const SkCipher& cipher);
// Opens one SKF fragment (integrity checked per fragment, RFC 7383 §2.6);
// returns its decrypted content.
std::optional<Bytes> open_fragment(const Message& message, std::span<const std::uint8_t> datagram,
                                   const SkCipher& cipher);

// NAT detection hash (§2.23): SHA-1(SPIi | SPIr | IP | port).
Bytes nat_detection_hash(std::uint64_t spi_i, std::uint64_t spi_r, const Endpoint& endpoint);

// Random bytes from OpenSSL's CSPRNG.
Bytes random_bytes(std::size_t size);
std::uint64_t random_u64();

}  // namespace tapsec::ikev2
