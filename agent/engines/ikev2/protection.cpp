// Protection of the SK and SKF payloads: AES-GCM-16 (RFC 5282),
// ChaCha20-Poly1305 (RFC 7634) and AES-CBC with HMAC-SHA2 (RFC 7296 §3.14),
// whole protected messages and their fragments (RFC 7383).
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <algorithm>
#include <stdexcept>

#include "agent/engines/ikev2/crypto.h"

namespace tapsec::ikev2 {
namespace {

struct CipherCtxFree {
  void operator()(EVP_CIPHER_CTX* context) const { EVP_CIPHER_CTX_free(context); }
};
using CipherCtxPtr = std::unique_ptr<EVP_CIPHER_CTX, CipherCtxFree>;
struct MacCtxFree {
  void operator()(EVP_MAC_CTX* context) const { EVP_MAC_CTX_free(context); }
};
using MacCtxPtr = std::unique_ptr<EVP_MAC_CTX, MacCtxFree>;

constexpr std::size_t kAeadSaltSize = 4;
constexpr std::size_t kAeadIvSize = 8;
constexpr std::size_t kAeadTagSize = 16;
constexpr std::size_t kGenericHeaderSize = 4;
constexpr std::size_t kFragmentHeaderSize = 8;  // generic header + fragment number + total

const EVP_CIPHER* cipher_for(const AlgorithmSuite& suite) {
  switch (suite.encryption) {
    case encr::kAesGcm16: return suite.encryption_key_bits == 128 ? EVP_aes_128_gcm() : EVP_aes_256_gcm();
    case encr::kChaCha20Poly1305: return EVP_chacha20_poly1305();
    case encr::kAesCbc: return suite.encryption_key_bits == 128 ? EVP_aes_128_cbc() : EVP_aes_256_cbc();
    default: return nullptr;
  }
}

const char* integrity_digest(std::uint16_t integrity) {
  switch (integrity) {
    case integ::kHmacSha256_128: return "SHA256";
    case integ::kHmacSha384_192: return "SHA384";
    case integ::kHmacSha512_256: return "SHA512";
    default: return nullptr;
  }
}

// HMAC over the concatenation of `parts`, truncated to `size` bytes.
Bytes truncated_hmac(const char* digest, std::span<const std::uint8_t> key,
                     std::initializer_list<std::span<const std::uint8_t>> parts, std::size_t size) {
  static EVP_MAC* const mac = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
  MacCtxPtr context(mac != nullptr ? EVP_MAC_CTX_new(mac) : nullptr);
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, const_cast<char*>(digest), 0),
      OSSL_PARAM_construct_end(),
  };
  if (!context || EVP_MAC_init(context.get(), key.data(), key.size(), params) != 1)
    throw std::runtime_error("HMAC initialisation failed");
  for (const auto& part : parts)
    if (!part.empty() && EVP_MAC_update(context.get(), part.data(), part.size()) != 1)
      throw std::runtime_error("HMAC update failed");
  Bytes full(EVP_MAC_CTX_get_mac_size(context.get()));
  std::size_t written = 0;
  if (EVP_MAC_final(context.get(), full.data(), &written, full.size()) != 1 || written < size)
    throw std::runtime_error("HMAC final failed");
  full.resize(size);
  return full;
}

void put_u16(Bytes& out, std::uint16_t value) {
  out.push_back(static_cast<std::uint8_t>(value >> 8));
  out.push_back(static_cast<std::uint8_t>(value));
}

void put_u32(Bytes& out, std::uint32_t value) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<std::uint8_t>(value >> shift));
}

void put_u64(Bytes& out, std::uint64_t value) {
  for (int shift = 56; shift >= 0; shift -= 8) out.push_back(static_cast<std::uint8_t>(value >> shift));
}

// The fixed IKE header (RFC 7296 §3.1) with a given first payload and length.
Bytes header_bytes(const Header& header, PayloadType next_payload, std::size_t length) {
  if (length > 0xffffffffu) throw std::length_error("IKE message too long");
  Bytes out;
  out.reserve(length);
  put_u64(out, header.initiator_spi);
  put_u64(out, header.responder_spi);
  out.push_back(static_cast<std::uint8_t>(next_payload));
  out.push_back(header.version);
  out.push_back(static_cast<std::uint8_t>(header.exchange));
  out.push_back(header.flags);
  put_u32(out, header.message_id);
  put_u32(out, static_cast<std::uint32_t>(length));
  return out;
}

// Where the SK/SKF body sits in the datagram: it is the last payload, so its
// body ends where the IKE message (header length) ends.
std::optional<std::size_t> body_offset(const Message& message, std::span<const std::uint8_t> datagram,
                                       const Bytes& body) {
  const std::size_t end = message.header.length;
  if (end > datagram.size() || end < kHeaderSize + body.size()) return std::nullopt;
  const std::size_t offset = end - body.size();
  if (!std::equal(body.begin(), body.end(), datagram.begin() + static_cast<std::ptrdiff_t>(offset)))
    return std::nullopt;  // the message does not come from this datagram
  return offset;
}

}  // namespace

SkCipher::SkCipher(const AlgorithmSuite& suite, SecretBytes encryption_key, SecretBytes integrity_key)
    : suite_(suite), encryption_key_(std::move(encryption_key)), integrity_key_(std::move(integrity_key)) {
  if (cipher_for(suite_) == nullptr) throw std::invalid_argument("unsupported encryption algorithm");
  if (encryption_key_.size() != suite_.encryption_key_size()) throw std::invalid_argument("wrong encryption key size");
  if (!suite_.is_aead() &&
      (integrity_digest(suite_.integrity) == nullptr || integrity_key_.size() != suite_.integrity_key_size()))
    throw std::invalid_argument("CBC needs an HMAC-SHA2 integrity algorithm and key");
}

std::size_t SkCipher::iv_size() const { return suite_.is_aead() ? kAeadIvSize : 16; }
std::size_t SkCipher::icv_size() const { return suite_.icv_size(); }
std::size_t SkCipher::block_size() const { return suite_.encryption == encr::kChaCha20Poly1305 ? 1 : 16; }

std::size_t SkCipher::sealed_size(std::size_t plaintext_size) const {
  const std::size_t block = block_size();
  const std::size_t padded = (plaintext_size + 1 + block - 1) / block * block;  // + pad length byte
  return iv_size() + padded + icv_size();
}

Bytes SkCipher::seal(std::span<const std::uint8_t> aad, std::span<const std::uint8_t> plaintext) const {
  const std::size_t block = block_size();
  const std::size_t padded_size = (plaintext.size() + 1 + block - 1) / block * block;
  const std::size_t pad_length = padded_size - plaintext.size() - 1;

  // Inner payloads || zero padding || pad length, wiped after use.
  SecretBytes padded(padded_size);
  std::copy(plaintext.begin(), plaintext.end(), padded.data());
  padded.data()[padded_size - 1] = static_cast<std::uint8_t>(pad_length);

  Bytes body = random_bytes(iv_size());
  body.resize(iv_size() + padded_size + icv_size());
  std::uint8_t* ciphertext = body.data() + iv_size();

  CipherCtxPtr context(EVP_CIPHER_CTX_new());
  if (!context) throw std::runtime_error("EVP_CIPHER_CTX_new failed");
  const EVP_CIPHER* cipher = cipher_for(suite_);
  int length = 0;
  if (suite_.is_aead()) {
    const std::size_t key_size = encryption_key_.size() - kAeadSaltSize;
    std::uint8_t nonce[kAeadSaltSize + kAeadIvSize];  // salt || IV (RFC 5282 §4, RFC 7634 §2)
    std::copy(encryption_key_.data() + key_size, encryption_key_.data() + encryption_key_.size(), nonce);
    std::copy(body.begin(), body.begin() + kAeadIvSize, nonce + kAeadSaltSize);
    if (EVP_EncryptInit_ex2(context.get(), cipher, nullptr, nullptr, nullptr) != 1 ||
        EVP_CIPHER_CTX_ctrl(context.get(), EVP_CTRL_AEAD_SET_IVLEN, sizeof nonce, nullptr) != 1 ||
        EVP_EncryptInit_ex2(context.get(), nullptr, encryption_key_.data(), nonce, nullptr) != 1 ||
        EVP_EncryptUpdate(context.get(), nullptr, &length, aad.data(), static_cast<int>(aad.size())) != 1 ||
        EVP_EncryptUpdate(context.get(), ciphertext, &length, padded.data(), static_cast<int>(padded_size)) != 1 ||
        EVP_EncryptFinal_ex(context.get(), ciphertext + length, &length) != 1 ||
        EVP_CIPHER_CTX_ctrl(context.get(), EVP_CTRL_AEAD_GET_TAG, kAeadTagSize, ciphertext + padded_size) != 1)
      throw std::runtime_error("AEAD encryption failed");
    return body;
  }

  if (EVP_EncryptInit_ex2(context.get(), cipher, encryption_key_.data(), body.data(), nullptr) != 1 ||
      EVP_CIPHER_CTX_set_padding(context.get(), 0) != 1 ||
      EVP_EncryptUpdate(context.get(), ciphertext, &length, padded.data(), static_cast<int>(padded_size)) != 1 ||
      EVP_EncryptFinal_ex(context.get(), ciphertext + length, &length) != 1)
    throw std::runtime_error("AES-CBC encryption failed");
  // RFC 7296 §3.14: the ICV covers the message from the IKE header through the
  // encrypted pad length, i.e. aad || IV || ciphertext.
  const std::span<const std::uint8_t> covered(body.data(), iv_size() + padded_size);
  Bytes icv = truncated_hmac(integrity_digest(suite_.integrity), integrity_key_.span(), {aad, covered}, icv_size());
  std::copy(icv.begin(), icv.end(), body.begin() + static_cast<std::ptrdiff_t>(iv_size() + padded_size));
  return body;
}

std::optional<Bytes> SkCipher::open(std::span<const std::uint8_t> aad, std::span<const std::uint8_t> body) const {
  const std::size_t block = block_size();
  if (body.size() < iv_size() + icv_size() + 1) return std::nullopt;
  const std::size_t ciphertext_size = body.size() - iv_size() - icv_size();
  // Peers pad AEAD payloads as they like (strongSwan aligns to 1 byte):
  // only CBC needs whole blocks.
  if (!suite_.is_aead() && ciphertext_size % block != 0) return std::nullopt;
  const std::uint8_t* iv = body.data();
  const std::uint8_t* ciphertext = body.data() + iv_size();
  const std::uint8_t* icv = ciphertext + ciphertext_size;

  SecretBytes padded(ciphertext_size);
  CipherCtxPtr context(EVP_CIPHER_CTX_new());
  if (!context) return std::nullopt;
  const EVP_CIPHER* cipher = cipher_for(suite_);
  int length = 0;
  if (suite_.is_aead()) {
    const std::size_t key_size = encryption_key_.size() - kAeadSaltSize;
    std::uint8_t nonce[kAeadSaltSize + kAeadIvSize];
    std::copy(encryption_key_.data() + key_size, encryption_key_.data() + encryption_key_.size(), nonce);
    std::copy(iv, iv + kAeadIvSize, nonce + kAeadSaltSize);
    std::uint8_t tag[kAeadTagSize];
    std::copy(icv, icv + kAeadTagSize, tag);
    // The tag check in EVP_DecryptFinal_ex is constant time.
    if (EVP_DecryptInit_ex2(context.get(), cipher, nullptr, nullptr, nullptr) != 1 ||
        EVP_CIPHER_CTX_ctrl(context.get(), EVP_CTRL_AEAD_SET_IVLEN, sizeof nonce, nullptr) != 1 ||
        EVP_DecryptInit_ex2(context.get(), nullptr, encryption_key_.data(), nonce, nullptr) != 1 ||
        EVP_DecryptUpdate(context.get(), nullptr, &length, aad.data(), static_cast<int>(aad.size())) != 1 ||
        EVP_DecryptUpdate(context.get(), padded.data(), &length, ciphertext, static_cast<int>(ciphertext_size)) != 1 ||
        EVP_CIPHER_CTX_ctrl(context.get(), EVP_CTRL_AEAD_SET_TAG, kAeadTagSize, tag) != 1 ||
        EVP_DecryptFinal_ex(context.get(), padded.data() + length, &length) != 1)
      return std::nullopt;
  } else {
    const std::span<const std::uint8_t> covered(body.data(), iv_size() + ciphertext_size);
    Bytes expected =
        truncated_hmac(integrity_digest(suite_.integrity), integrity_key_.span(), {aad, covered}, icv_size());
    if (CRYPTO_memcmp(expected.data(), icv, icv_size()) != 0) return std::nullopt;
    if (EVP_DecryptInit_ex2(context.get(), cipher, encryption_key_.data(), iv, nullptr) != 1 ||
        EVP_CIPHER_CTX_set_padding(context.get(), 0) != 1 ||
        EVP_DecryptUpdate(context.get(), padded.data(), &length, ciphertext, static_cast<int>(ciphertext_size)) != 1 ||
        EVP_DecryptFinal_ex(context.get(), padded.data() + length, &length) != 1)
      return std::nullopt;
  }
  const std::size_t pad_length = padded.data()[ciphertext_size - 1];
  if (pad_length + 1 > ciphertext_size) return std::nullopt;
  return Bytes(padded.data(), padded.data() + (ciphertext_size - pad_length - 1));
}

Bytes encode_protected(const Header& header, const std::vector<Payload>& inner, const SkCipher& cipher) {
  Bytes plaintext;
  const PayloadType first_inner = encode_payloads(inner, plaintext);
  const std::size_t sk_length = kGenericHeaderSize + cipher.sealed_size(plaintext.size());
  if (sk_length > 0xffff) throw std::length_error("SK payload longer than 65535 bytes");

  Bytes message = header_bytes(header, PayloadType::Encrypted, kHeaderSize + sk_length);
  message.push_back(static_cast<std::uint8_t>(first_inner));
  message.push_back(0);  // not critical
  put_u16(message, static_cast<std::uint16_t>(sk_length));
  Bytes body = cipher.seal(message, plaintext);
  OPENSSL_cleanse(plaintext.data(), plaintext.size());
  message.insert(message.end(), body.begin(), body.end());
  return message;
}

std::vector<Bytes> encode_protected_fragments(const Header& header, const std::vector<Payload>& inner,
                                              const SkCipher& cipher, std::size_t max_datagram) {
  Bytes plaintext;
  const PayloadType first_inner = encode_payloads(inner, plaintext);
  if (kHeaderSize + kGenericHeaderSize + cipher.sealed_size(plaintext.size()) <= max_datagram) {
    OPENSSL_cleanse(plaintext.data(), plaintext.size());
    return {encode_protected(header, inner, cipher)};
  }

  // Largest content per fragment such that the padded ciphertext still fits.
  const std::size_t overhead = kHeaderSize + kFragmentHeaderSize + cipher.iv_size() + cipher.icv_size();
  if (max_datagram <= overhead + cipher.block_size()) throw std::length_error("datagram limit too small to fragment");
  const std::size_t room = max_datagram - overhead;
  const std::size_t chunk = room / cipher.block_size() * cipher.block_size() - 1;
  const std::size_t total = (plaintext.size() + chunk - 1) / chunk;
  if (total > 0xffff) throw std::length_error("too many fragments");

  std::vector<Bytes> datagrams;
  for (std::size_t index = 0; index < total; ++index) {
    const std::size_t offset = index * chunk;
    const std::span<const std::uint8_t> piece =
        std::span<const std::uint8_t>(plaintext).subspan(offset, std::min(chunk, plaintext.size() - offset));
    const std::size_t skf_length = kFragmentHeaderSize + cipher.sealed_size(piece.size());
    Bytes datagram = header_bytes(header, PayloadType::EncryptedFragment, kHeaderSize + skf_length);
    // RFC 7383 §2.5: Next Payload is the first inner payload in fragment 1, zero otherwise.
    datagram.push_back(index == 0 ? static_cast<std::uint8_t>(first_inner) : 0);
    datagram.push_back(0);
    put_u16(datagram, static_cast<std::uint16_t>(skf_length));
    put_u16(datagram, static_cast<std::uint16_t>(index + 1));
    put_u16(datagram, static_cast<std::uint16_t>(total));
    Bytes body = cipher.seal(datagram, piece);
    datagram.insert(datagram.end(), body.begin(), body.end());
    datagrams.push_back(std::move(datagram));
  }
  OPENSSL_cleanse(plaintext.data(), plaintext.size());
  return datagrams;
}

Decoded<std::vector<Payload>> open_protected(const Message& message, std::span<const std::uint8_t> datagram,
                                             const SkCipher& cipher) {
  if (message.payloads.empty() || message.payloads.back().type != PayloadType::Encrypted)
    return DecodeError{"no SK payload", notify::kInvalidSyntax};
  const auto* sk = std::get_if<EncryptedPayload>(&message.payloads.back().body);
  if (sk == nullptr) return DecodeError{"no SK payload", notify::kInvalidSyntax};
  auto offset = body_offset(message, datagram, sk->body);
  if (!offset) return DecodeError{"SK payload does not match the datagram", 0};
  auto plaintext = cipher.open(datagram.first(*offset), sk->body);
  // An unauthenticated message is dropped silently (RFC 7296 §2.21.2).
  if (!plaintext) return DecodeError{"SK payload failed its integrity check", 0};
  auto decoded = decode_payloads(sk->first_inner, *plaintext);
  OPENSSL_cleanse(plaintext->data(), plaintext->size());
  return decoded;
}

std::optional<Bytes> open_fragment(const Message& message, std::span<const std::uint8_t> datagram,
                                   const SkCipher& cipher) {
  if (message.payloads.empty() || message.payloads.back().type != PayloadType::EncryptedFragment)
    return std::nullopt;
  const auto* skf = std::get_if<EncryptedFragmentPayload>(&message.payloads.back().body);
  if (skf == nullptr || skf->number == 0 || skf->number > skf->total) return std::nullopt;
  auto offset = body_offset(message, datagram, skf->body);
  if (!offset) return std::nullopt;
  return cipher.open(datagram.first(*offset), skf->body);
}

}  // namespace tapsec::ikev2
