// SK payload protection: every suite seals and opens, every tampered byte
// is caught, protected messages and fragments decode back to their payloads.
#include <gtest/gtest.h>
#include <openssl/evp.h>

#include "agent/engines/ikev2/crypto.h"
#include "agent/engines/ikev2/message.h"

namespace tapsec::ikev2 {
namespace {

struct NamedSuite {
  const char* name;
  AlgorithmSuite suite;
};

std::vector<NamedSuite> all_suites() {
  std::vector<NamedSuite> suites;
  for (std::uint16_t bits : {128, 256}) {
    AlgorithmSuite gcm;
    gcm.encryption = encr::kAesGcm16;
    gcm.encryption_key_bits = bits;
    suites.push_back({bits == 128 ? "aes128gcm16" : "aes256gcm16", gcm});
  }
  AlgorithmSuite chacha;
  chacha.encryption = encr::kChaCha20Poly1305;
  chacha.encryption_key_bits = 256;
  suites.push_back({"chacha20poly1305", chacha});
  for (std::uint16_t bits : {128, 256}) {
    for (std::uint16_t integrity : {integ::kHmacSha256_128, integ::kHmacSha384_192, integ::kHmacSha512_256}) {
      AlgorithmSuite cbc;
      cbc.encryption = encr::kAesCbc;
      cbc.encryption_key_bits = bits;
      cbc.integrity = integrity;
      suites.push_back({"aes-cbc+hmac", cbc});
    }
  }
  return suites;
}

SkCipher cipher_for(const AlgorithmSuite& suite, std::uint8_t seed = 1) {
  Bytes encryption(suite.encryption_key_size()), integrity(suite.integrity_key_size());
  for (std::size_t i = 0; i < encryption.size(); ++i) encryption[i] = static_cast<std::uint8_t>(seed + i);
  for (std::size_t i = 0; i < integrity.size(); ++i) integrity[i] = static_cast<std::uint8_t>(seed * 3 + i);
  return SkCipher(suite, SecretBytes(encryption), SecretBytes(integrity));
}

TEST(SkCipher, SealOpenRoundTripForEverySuiteAndSize) {
  for (const auto& [name, suite] : all_suites()) {
    SCOPED_TRACE(suite.to_string());
    SkCipher cipher = cipher_for(suite);
    EXPECT_EQ(cipher.icv_size(), suite.icv_size());
    EXPECT_EQ(cipher.iv_size(), suite.is_aead() ? 8u : 16u);
    for (std::size_t size : {0, 1, 15, 16, 17, 31, 100}) {
      const Bytes aad = random_bytes(32);
      const Bytes plaintext = random_bytes(size);
      Bytes body = cipher.seal(aad, plaintext);
      EXPECT_EQ(body.size(), cipher.sealed_size(size));
      EXPECT_EQ((body.size() - cipher.iv_size() - cipher.icv_size()) % cipher.block_size(), 0u);
      auto opened = cipher.open(aad, body);
      ASSERT_TRUE(opened);
      EXPECT_EQ(*opened, plaintext);
    }
  }
}

// strongSwan pads AEAD payloads to one byte, not to the cipher's block:
// a body whose ciphertext is no multiple of 16 must open.
TEST(SkCipher, OpensAeadBodiesPaddedToOneByte) {
  AlgorithmSuite gcm;
  gcm.encryption = encr::kAesGcm16;
  gcm.encryption_key_bits = 256;
  Bytes key(gcm.encryption_key_size());
  for (std::size_t i = 0; i < key.size(); ++i) key[i] = static_cast<std::uint8_t>(7 * i);
  SkCipher cipher(gcm, SecretBytes(key), SecretBytes());
  const Bytes aad = random_bytes(32);
  Bytes padded = {'s', 't', 'r', 'o', 'n', 'g', 's', 'w', 'a', 'n', 0x00};  // pad length 0
  const Bytes iv = {1, 2, 3, 4, 5, 6, 7, 8};
  Bytes nonce(key.end() - 4, key.end());
  nonce.insert(nonce.end(), iv.begin(), iv.end());

  EVP_CIPHER_CTX* context = EVP_CIPHER_CTX_new();
  Bytes ciphertext(padded.size());
  Bytes tag(16);
  int length = 0;
  ASSERT_EQ(EVP_EncryptInit_ex2(context, EVP_aes_256_gcm(), nullptr, nullptr, nullptr), 1);
  ASSERT_EQ(EVP_CIPHER_CTX_ctrl(context, EVP_CTRL_AEAD_SET_IVLEN, 12, nullptr), 1);
  ASSERT_EQ(EVP_EncryptInit_ex2(context, nullptr, key.data(), nonce.data(), nullptr), 1);
  ASSERT_EQ(EVP_EncryptUpdate(context, nullptr, &length, aad.data(), static_cast<int>(aad.size())), 1);
  ASSERT_EQ(EVP_EncryptUpdate(context, ciphertext.data(), &length, padded.data(), static_cast<int>(padded.size())), 1);
  ASSERT_EQ(EVP_EncryptFinal_ex(context, ciphertext.data() + length, &length), 1);
  ASSERT_EQ(EVP_CIPHER_CTX_ctrl(context, EVP_CTRL_AEAD_GET_TAG, 16, tag.data()), 1);
  EVP_CIPHER_CTX_free(context);

  Bytes body = iv;
  body.insert(body.end(), ciphertext.begin(), ciphertext.end());
  body.insert(body.end(), tag.begin(), tag.end());
  auto opened = cipher.open(aad, body);
  ASSERT_TRUE(opened);
  EXPECT_EQ(*opened, Bytes(padded.begin(), padded.end() - 1));
}

TEST(SkCipher, EveryTamperedByteAndWrongKeyFail) {
  for (const auto& [name, suite] : all_suites()) {
    SCOPED_TRACE(suite.to_string());
    SkCipher cipher = cipher_for(suite);
    const Bytes aad = random_bytes(32);
    const Bytes plaintext = random_bytes(37);
    const Bytes body = cipher.seal(aad, plaintext);
    for (std::size_t i = 0; i < aad.size(); ++i) {
      Bytes changed = aad;
      changed[i] ^= 0x01;
      EXPECT_FALSE(cipher.open(changed, body)) << "aad byte " << i;
    }
    for (std::size_t i = 0; i < body.size(); ++i) {
      Bytes changed = body;
      changed[i] ^= 0x80;
      EXPECT_FALSE(cipher.open(aad, changed)) << "body byte " << i;
    }
    EXPECT_FALSE(cipher.open(aad, Bytes(body.begin(), body.end() - 1)));
    EXPECT_FALSE(cipher.open(aad, Bytes(body.begin(), body.begin() + 8)));
    EXPECT_FALSE(cipher.open(aad, Bytes{}));
    EXPECT_FALSE(cipher_for(suite, 2).open(aad, body));
  }
}

TEST(SkCipher, RandomIvsMakeDifferentCiphertexts) {
  SkCipher cipher = cipher_for(all_suites().front().suite);
  const Bytes aad(28, 0), plaintext(20, 7);
  EXPECT_NE(cipher.seal(aad, plaintext), cipher.seal(aad, plaintext));
}

TEST(SkCipher, RefusesWrongKeySizes) {
  AlgorithmSuite gcm = all_suites().front().suite;
  EXPECT_THROW(SkCipher(gcm, SecretBytes(16), SecretBytes()), std::invalid_argument);
  AlgorithmSuite cbc = all_suites().back().suite;
  EXPECT_THROW(SkCipher(cbc, SecretBytes(cbc.encryption_key_size()), SecretBytes()), std::invalid_argument);
}

Header sample_header() {
  Header header;
  header.initiator_spi = 0x0102030405060708ull;
  header.responder_spi = 0x1112131415161718ull;
  header.exchange = ExchangeType::IkeAuth;
  header.flags = header_flags::kInitiator;
  header.message_id = 1;
  return header;
}

std::vector<Payload> sample_inner(std::size_t vendor_size) {
  std::vector<Payload> inner;
  inner.push_back(Payload{PayloadType::Nonce, false, NoncePayload{Bytes(32, 0x5a)}});
  inner.push_back(make_notify(notify::kInitialContact));
  Bytes vendor(vendor_size);
  for (std::size_t i = 0; i < vendor.size(); ++i) vendor[i] = static_cast<std::uint8_t>(i * 7);
  inner.push_back(Payload{PayloadType::VendorId, false, VendorIdPayload{vendor}});
  return inner;
}

Bytes encoded(const std::vector<Payload>& payloads) {
  Bytes out;
  encode_payloads(payloads, out);
  return out;
}

TEST(ProtectedMessage, EncodeDecodeOpen) {
  for (const auto& [name, suite] : all_suites()) {
    SCOPED_TRACE(suite.to_string());
    SkCipher cipher = cipher_for(suite);
    const auto inner = sample_inner(50);
    Bytes datagram = encode_protected(sample_header(), inner, cipher);

    auto decoded = decode_message(datagram);
    ASSERT_TRUE(std::holds_alternative<Message>(decoded)) << std::get<DecodeError>(decoded).message;
    const Message& message = std::get<Message>(decoded);
    EXPECT_EQ(message.header.length, datagram.size());
    EXPECT_EQ(message.header.next_payload, PayloadType::Encrypted);
    EXPECT_EQ(message.header.message_id, 1u);
    EXPECT_EQ(message.header.initiator_spi, 0x0102030405060708ull);
    ASSERT_EQ(message.payloads.size(), 1u);
    const auto& sk = std::get<EncryptedPayload>(message.payloads[0].body);
    EXPECT_EQ(sk.first_inner, PayloadType::Nonce);

    auto opened = open_protected(message, datagram, cipher);
    ASSERT_TRUE(std::holds_alternative<std::vector<Payload>>(opened)) << std::get<DecodeError>(opened).message;
    EXPECT_EQ(encoded(std::get<std::vector<Payload>>(opened)), encoded(inner));

    // A flipped header byte (the message ID) breaks the integrity check.
    Bytes tampered = datagram;
    tampered[23] ^= 1;
    auto tampered_message = decode_message(tampered);
    ASSERT_TRUE(std::holds_alternative<Message>(tampered_message));
    auto refused = open_protected(std::get<Message>(tampered_message), tampered, cipher);
    ASSERT_TRUE(std::holds_alternative<DecodeError>(refused));
    EXPECT_EQ(std::get<DecodeError>(refused).notify_type, 0);
    EXPECT_TRUE(std::holds_alternative<DecodeError>(open_protected(message, datagram, cipher_for(suite, 9))));
  }
}

TEST(ProtectedMessage, SmallMessageIsNotFragmented) {
  SkCipher cipher = cipher_for(all_suites().front().suite);
  auto datagrams = encode_protected_fragments(sample_header(), sample_inner(10), cipher, 1280);
  ASSERT_EQ(datagrams.size(), 1u);
  auto decoded = decode_message(datagrams[0]);
  ASSERT_TRUE(std::holds_alternative<Message>(decoded));
  EXPECT_EQ(std::get<Message>(decoded).header.next_payload, PayloadType::Encrypted);
}

TEST(ProtectedMessage, FragmentsReassembleToTheSamePayloads) {
  for (const auto& [name, suite] : all_suites()) {
    SCOPED_TRACE(suite.to_string());
    SkCipher cipher = cipher_for(suite);
    const auto inner = sample_inner(1500);
    const std::size_t limit = 300;
    auto datagrams = encode_protected_fragments(sample_header(), inner, cipher, limit);
    ASSERT_GT(datagrams.size(), 4u);

    Bytes reassembled;
    PayloadType first_inner = PayloadType::None;
    for (std::size_t i = 0; i < datagrams.size(); ++i) {
      const Bytes& datagram = datagrams[i];
      EXPECT_LE(datagram.size(), limit);
      auto decoded = decode_message(datagram);
      ASSERT_TRUE(std::holds_alternative<Message>(decoded)) << std::get<DecodeError>(decoded).message;
      const Message& message = std::get<Message>(decoded);
      EXPECT_EQ(message.header.next_payload, PayloadType::EncryptedFragment);
      EXPECT_EQ(message.header.length, datagram.size());
      const auto& skf = std::get<EncryptedFragmentPayload>(message.payloads.back().body);
      EXPECT_EQ(skf.number, i + 1);
      EXPECT_EQ(skf.total, datagrams.size());
      if (i == 0) first_inner = skf.first_inner;
      auto piece = open_fragment(message, datagram, cipher);
      ASSERT_TRUE(piece);
      reassembled.insert(reassembled.end(), piece->begin(), piece->end());

      Bytes tampered = datagram;
      tampered[tampered.size() / 2] ^= 4;
      auto tampered_message = decode_message(tampered);
      ASSERT_TRUE(std::holds_alternative<Message>(tampered_message));  // the flip is inside the body
      EXPECT_FALSE(open_fragment(std::get<Message>(tampered_message), tampered, cipher));
    }
    EXPECT_EQ(first_inner, PayloadType::Nonce);
    auto payloads = decode_payloads(first_inner, reassembled);
    ASSERT_TRUE(std::holds_alternative<std::vector<Payload>>(payloads));
    EXPECT_EQ(encoded(std::get<std::vector<Payload>>(payloads)), encoded(inner));
  }
}

TEST(ProtectedMessage, FragmentLimitTooSmall) {
  SkCipher cipher = cipher_for(all_suites().back().suite);
  EXPECT_THROW(encode_protected_fragments(sample_header(), sample_inner(500), cipher, 60), std::length_error);
}

}  // namespace
}  // namespace tapsec::ikev2
