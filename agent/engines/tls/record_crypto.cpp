#include "agent/engines/tls/record_crypto.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>

#include <algorithm>
#include <array>
#include <string>

#include "agent/engines/tls/openssl_ptr.h"

namespace tapsec::tls::detail {

SecretBytes& SecretBytes::operator=(const SecretBytes& other) {
  if (this != &other) {
    clear();
    bytes_ = other.bytes_;
  }
  return *this;
}

SecretBytes& SecretBytes::operator=(SecretBytes&& other) noexcept {
  if (this != &other) {
    clear();
    bytes_ = std::move(other.bytes_);
    other.bytes_.clear();
  }
  return *this;
}

SecretBytes::~SecretBytes() { clear(); }

void SecretBytes::clear() {
  if (!bytes_.empty()) OPENSSL_cleanse(bytes_.data(), bytes_.size());
  bytes_.clear();
}

namespace {

std::optional<SecretBytes> derive(const char* kdf_name, OSSL_PARAM* params, std::size_t length) {
  EvpKdfPtr kdf(EVP_KDF_fetch(nullptr, kdf_name, nullptr));
  if (!kdf) return std::nullopt;
  EvpKdfCtxPtr ctx(EVP_KDF_CTX_new(kdf.get()));
  if (!ctx) return std::nullopt;
  SecretBytes out;
  out.resize(length);
  if (EVP_KDF_derive(ctx.get(), out.data(), length, params) != 1) return std::nullopt;
  return out;
}

// OSSL_PARAM wants non-const pointers even for inputs.
void* mutable_bytes(std::span<const std::uint8_t> bytes) {
  return const_cast<std::uint8_t*>(bytes.data());
}

const EVP_CIPHER* evp_cipher(RecordCipher cipher) {
  switch (cipher) {
    case RecordCipher::AesGcm128: return EVP_aes_128_gcm();
    case RecordCipher::AesGcm256: return EVP_aes_256_gcm();
    case RecordCipher::Chacha20Poly1305: return EVP_chacha20_poly1305();
  }
  return nullptr;
}

std::size_t key_length(RecordCipher cipher) { return cipher == RecordCipher::AesGcm128 ? 16 : 32; }

constexpr std::size_t kTagLength = 16;
constexpr std::size_t kHeaderLength = 5;
constexpr std::size_t kMaxTls13Ciphertext = (1u << 14) + 256;

}  // namespace

std::optional<SecretBytes> hkdf_expand_label(std::string_view digest, std::span<const std::uint8_t> secret,
                                             std::string_view label, std::span<const std::uint8_t> context,
                                             std::size_t length) {
  const std::string full_label = "tls13 " + std::string(label);
  if (length > 0xffff || full_label.size() > 255 || context.size() > 255) return std::nullopt;
  // struct HkdfLabel { uint16 length; opaque label<7..255>; opaque context<0..255>; }
  std::vector<std::uint8_t> info;
  info.push_back(static_cast<std::uint8_t>(length >> 8));
  info.push_back(static_cast<std::uint8_t>(length));
  info.push_back(static_cast<std::uint8_t>(full_label.size()));
  info.insert(info.end(), full_label.begin(), full_label.end());
  info.push_back(static_cast<std::uint8_t>(context.size()));
  info.insert(info.end(), context.begin(), context.end());

  int mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY;
  std::string digest_name(digest);
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode),
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest_name.data(), 0),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, mutable_bytes(secret), secret.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info.data(), info.size()),
      OSSL_PARAM_construct_end(),
  };
  return derive("HKDF", params, length);
}

std::optional<SecretBytes> tls12_prf(std::string_view digest, std::span<const std::uint8_t> secret,
                                     std::string_view label, std::span<const std::uint8_t> seed,
                                     std::size_t length) {
  std::vector<std::uint8_t> label_and_seed(label.begin(), label.end());
  label_and_seed.insert(label_and_seed.end(), seed.begin(), seed.end());
  std::string digest_name(digest);
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest_name.data(), 0),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SECRET, mutable_bytes(secret), secret.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SEED, label_and_seed.data(), label_and_seed.size()),
      OSSL_PARAM_construct_end(),
  };
  return derive("TLS1-PRF", params, length);
}

std::optional<std::vector<std::uint8_t>> aead_seal(RecordCipher cipher, std::span<const std::uint8_t> key,
                                                   std::span<const std::uint8_t, 12> nonce,
                                                   std::span<const std::uint8_t> aad,
                                                   std::span<const std::uint8_t> plaintext) {
  if (key.size() != key_length(cipher)) return std::nullopt;
  EvpCipherCtxPtr ctx(EVP_CIPHER_CTX_new());
  if (!ctx || EVP_EncryptInit_ex(ctx.get(), evp_cipher(cipher), nullptr, nullptr, nullptr) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_AEAD_SET_IVLEN, 12, nullptr) != 1 ||
      EVP_EncryptInit_ex(ctx.get(), nullptr, nullptr, key.data(), nonce.data()) != 1)
    return std::nullopt;
  int length = 0;
  if (!aad.empty() && EVP_EncryptUpdate(ctx.get(), nullptr, &length, aad.data(), static_cast<int>(aad.size())) != 1)
    return std::nullopt;
  std::vector<std::uint8_t> out(plaintext.size() + kTagLength);
  int written = 0;
  if (!plaintext.empty() &&
      EVP_EncryptUpdate(ctx.get(), out.data(), &written, plaintext.data(), static_cast<int>(plaintext.size())) != 1)
    return std::nullopt;
  int final_length = 0;
  if (EVP_EncryptFinal_ex(ctx.get(), out.data() + written, &final_length) != 1) return std::nullopt;
  if (EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_AEAD_GET_TAG, kTagLength, out.data() + plaintext.size()) != 1)
    return std::nullopt;
  return out;
}

std::optional<std::vector<std::uint8_t>> aead_open(RecordCipher cipher, std::span<const std::uint8_t> key,
                                                   std::span<const std::uint8_t, 12> nonce,
                                                   std::span<const std::uint8_t> aad,
                                                   std::span<const std::uint8_t> ciphertext_and_tag) {
  if (key.size() != key_length(cipher) || ciphertext_and_tag.size() < kTagLength) return std::nullopt;
  const std::size_t ciphertext_length = ciphertext_and_tag.size() - kTagLength;
  EvpCipherCtxPtr ctx(EVP_CIPHER_CTX_new());
  if (!ctx || EVP_DecryptInit_ex(ctx.get(), evp_cipher(cipher), nullptr, nullptr, nullptr) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_AEAD_SET_IVLEN, 12, nullptr) != 1 ||
      EVP_DecryptInit_ex(ctx.get(), nullptr, nullptr, key.data(), nonce.data()) != 1)
    return std::nullopt;
  int length = 0;
  if (!aad.empty() && EVP_DecryptUpdate(ctx.get(), nullptr, &length, aad.data(), static_cast<int>(aad.size())) != 1)
    return std::nullopt;
  std::vector<std::uint8_t> out(ciphertext_length);
  int written = 0;
  if (ciphertext_length > 0 &&
      EVP_DecryptUpdate(ctx.get(), out.data(), &written, ciphertext_and_tag.data(),
                        static_cast<int>(ciphertext_length)) != 1)
    return std::nullopt;
  std::uint8_t tag[kTagLength];
  std::copy(ciphertext_and_tag.end() - kTagLength, ciphertext_and_tag.end(), tag);
  if (EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_AEAD_SET_TAG, kTagLength, tag) != 1) return std::nullopt;
  int final_length = 0;
  if (EVP_DecryptFinal_ex(ctx.get(), out.data() + written, &final_length) != 1) {
    OPENSSL_cleanse(out.data(), out.size());
    return std::nullopt;
  }
  return out;
}

std::array<std::uint8_t, 12> tls13_nonce(const std::array<std::uint8_t, 12>& iv, std::uint64_t seq) {
  std::array<std::uint8_t, 12> nonce = iv;
  for (int i = 0; i < 8; ++i) nonce[11 - i] ^= static_cast<std::uint8_t>(seq >> (8 * i));
  return nonce;
}

std::optional<std::vector<std::uint8_t>> tls13_seal_record(const TrafficKeys& keys, std::uint8_t type,
                                                           std::span<const std::uint8_t> content) {
  std::vector<std::uint8_t> inner(content.begin(), content.end());
  inner.push_back(type);
  const std::size_t body_length = inner.size() + kTagLength;
  if (body_length > kMaxTls13Ciphertext) return std::nullopt;
  std::vector<std::uint8_t> record = {23, 3, 3, static_cast<std::uint8_t>(body_length >> 8),
                                      static_cast<std::uint8_t>(body_length)};
  const auto nonce = tls13_nonce(keys.iv, keys.seq);
  auto body = aead_seal(keys.cipher, keys.key, nonce, std::span(record).first(kHeaderLength), inner);
  OPENSSL_cleanse(inner.data(), inner.size());
  if (!body) return std::nullopt;
  record.insert(record.end(), body->begin(), body->end());
  return record;
}

std::optional<InnerPlaintext> tls13_open_record(const TrafficKeys& keys, std::span<const std::uint8_t> record) {
  if (record.size() < kHeaderLength + kTagLength + 1 || record[0] != 23) return std::nullopt;
  const std::size_t body_length = (std::size_t{record[3]} << 8) | record[4];
  if (record.size() != kHeaderLength + body_length || body_length > kMaxTls13Ciphertext) return std::nullopt;
  const auto nonce = tls13_nonce(keys.iv, keys.seq);
  auto inner = aead_open(keys.cipher, keys.key, nonce, record.first(kHeaderLength), record.subspan(kHeaderLength));
  if (!inner) return std::nullopt;
  // RFC 8446 §5.4: the content type is the last non-zero byte; zeros after it are padding.
  while (!inner->empty() && inner->back() == 0) inner->pop_back();
  if (inner->empty()) return std::nullopt;
  InnerPlaintext result;
  result.type = inner->back();
  inner->pop_back();
  result.content = std::move(*inner);
  return result;
}

}  // namespace tapsec::tls::detail
