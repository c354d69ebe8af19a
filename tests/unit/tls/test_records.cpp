#include "tests/unit/tls/test_records.h"

#include <openssl/evp.h>

#include <stdexcept>

namespace tapsec::tls::testing {
namespace {

const EVP_CIPHER* cipher_of(const TrafficKeys& keys) {
  switch (keys.cipher) {
    case RecordCipher::AesGcm128: return EVP_aes_128_gcm();
    case RecordCipher::AesGcm256: return EVP_aes_256_gcm();
    case RecordCipher::Chacha20Poly1305: return EVP_chacha20_poly1305();
  }
  return nullptr;
}

// One AEAD operation; the 16-byte tag is appended on sealing and expected
// at the end on opening.
std::optional<std::vector<std::uint8_t>> aead(bool seal, const TrafficKeys& keys, const std::uint8_t* nonce,
                                              std::span<const std::uint8_t> aad, std::span<const std::uint8_t> input) {
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  std::optional<std::vector<std::uint8_t>> result;
  int length = 0;
  do {
    if (EVP_CipherInit_ex(ctx, cipher_of(keys), nullptr, keys.key.data(), nonce, seal ? 1 : 0) != 1) break;
    std::span<const std::uint8_t> body = input;
    if (!seal) {
      if (input.size() < 16) break;
      body = input.first(input.size() - 16);
      std::vector<std::uint8_t> tag(input.end() - 16, input.end());
      if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, 16, tag.data()) != 1) break;
    }
    if (EVP_CipherUpdate(ctx, nullptr, &length, aad.data(), static_cast<int>(aad.size())) != 1) break;
    std::vector<std::uint8_t> out(body.size() + 16);
    int written = 0;
    if (!body.empty() && EVP_CipherUpdate(ctx, out.data(), &written, body.data(), static_cast<int>(body.size())) != 1)
      break;
    if (EVP_CipherFinal_ex(ctx, out.data() + written, &length) != 1) break;
    if (seal) {
      if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, 16, out.data() + body.size()) != 1) break;
    } else {
      out.resize(body.size());
    }
    result = std::move(out);
  } while (false);
  EVP_CIPHER_CTX_free(ctx);
  return result;
}

std::array<std::uint8_t, 12> xor_nonce(const TrafficKeys& keys, std::uint64_t seq) {
  auto nonce = keys.iv;
  for (int i = 0; i < 8; ++i) nonce[4 + i] ^= static_cast<std::uint8_t>(seq >> (56 - 8 * i));
  return nonce;
}

void put_u64(std::vector<std::uint8_t>& out, std::uint64_t value) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<std::uint8_t>(value >> (56 - 8 * i)));
}

std::vector<std::uint8_t> header(std::uint8_t type, std::size_t length) {
  return {type, 3, 3, static_cast<std::uint8_t>(length >> 8), static_cast<std::uint8_t>(length & 0xff)};
}

bool tls12_gcm(const TrafficKeys& keys) { return keys.version == 0x0303 && keys.cipher != RecordCipher::Chacha20Poly1305; }

}  // namespace

std::vector<std::uint8_t> seal_record(const TrafficKeys& keys, std::uint64_t seq, std::uint8_t type,
                                      std::span<const std::uint8_t> content) {
  if (keys.version == 0x0304) {
    std::vector<std::uint8_t> inner(content.begin(), content.end());
    inner.push_back(type);
    auto record = header(23, inner.size() + 16);
    const auto nonce = xor_nonce(keys, seq);
    auto body = aead(true, keys, nonce.data(), record, inner);
    if (!body) throw std::runtime_error("seal failed");
    record.insert(record.end(), body->begin(), body->end());
    return record;
  }
  // TLS 1.2: additional_data = seq_num + type + version + length.
  std::vector<std::uint8_t> aad;
  put_u64(aad, seq);
  aad.insert(aad.end(), {type, 3, 3, static_cast<std::uint8_t>(content.size() >> 8),
                         static_cast<std::uint8_t>(content.size() & 0xff)});
  std::array<std::uint8_t, 12> nonce{};
  std::vector<std::uint8_t> explicit_nonce;
  if (tls12_gcm(keys)) {
    std::copy(keys.iv.begin(), keys.iv.begin() + 4, nonce.begin());
    put_u64(explicit_nonce, seq);
    std::copy(explicit_nonce.begin(), explicit_nonce.end(), nonce.begin() + 4);
  } else {
    nonce = xor_nonce(keys, seq);
  }
  auto body = aead(true, keys, nonce.data(), aad, content);
  if (!body) throw std::runtime_error("seal failed");
  auto record = header(type, explicit_nonce.size() + body->size());
  record.insert(record.end(), explicit_nonce.begin(), explicit_nonce.end());
  record.insert(record.end(), body->begin(), body->end());
  return record;
}

std::optional<OpenedRecord> open_record(const TrafficKeys& keys, std::uint64_t seq,
                                        std::span<const std::uint8_t> record) {
  if (record.size() < 5 + 16) return std::nullopt;
  const auto head = record.first(5);
  auto body = record.subspan(5);
  if (keys.version == 0x0304) {
    const auto nonce = xor_nonce(keys, seq);
    auto inner = aead(false, keys, nonce.data(), head, body);
    if (!inner) return std::nullopt;
    while (!inner->empty() && inner->back() == 0) inner->pop_back();
    if (inner->empty()) return std::nullopt;
    OpenedRecord opened{inner->back(), {}};
    inner->pop_back();
    opened.content = std::move(*inner);
    return opened;
  }
  std::array<std::uint8_t, 12> nonce{};
  if (tls12_gcm(keys)) {
    std::copy(keys.iv.begin(), keys.iv.begin() + 4, nonce.begin());
    std::copy(body.begin(), body.begin() + 8, nonce.begin() + 4);
    body = body.subspan(8);
  } else {
    nonce = xor_nonce(keys, seq);
  }
  const std::size_t plain_length = body.size() - 16;
  std::vector<std::uint8_t> aad;
  put_u64(aad, seq);
  aad.insert(aad.end(), {record[0], 3, 3, static_cast<std::uint8_t>(plain_length >> 8),
                         static_cast<std::uint8_t>(plain_length & 0xff)});
  auto plain = aead(false, keys, nonce.data(), aad, body);
  if (!plain) return std::nullopt;
  return OpenedRecord{record[0], std::move(*plain)};
}

std::vector<std::vector<std::uint8_t>> split_records(std::span<const std::uint8_t> bytes) {
  std::vector<std::vector<std::uint8_t>> records;
  while (bytes.size() >= 5) {
    const std::size_t length = 5 + ((std::size_t{bytes[3]} << 8) | bytes[4]);
    if (bytes.size() < length) throw std::runtime_error("partial record in output");
    records.emplace_back(bytes.begin(), bytes.begin() + length);
    bytes = bytes.subspan(length);
  }
  if (!bytes.empty()) throw std::runtime_error("trailing bytes in output");
  return records;
}

}  // namespace tapsec::tls::testing
