// PRF, prf+, key exchange groups, key schedules and NAT detection hashes,
// checked against RFC vectors and values computed independently with
// Python's hmac/hashlib.
#include <gtest/gtest.h>
#include <openssl/bn.h>

#include "agent/engines/ikev2/crypto.h"
#include "tests/unit/ikev2/crypto/test_util.h"

namespace tapsec::ikev2 {
namespace {

using test::from_hex;
using test::to_hex;

Bytes text_bytes(std::string_view text) { return Bytes(text.begin(), text.end()); }

TEST(Prf, PlusMatchesIndependentComputation) {
  // Expected values: python3 hmac, T(n) = HMAC(K, T(n-1) | S | n).
  const Bytes seed = text_bytes("seed data for prf plus");
  Bytes key32(32), key48(48);
  for (std::size_t i = 0; i < key48.size(); ++i) key48[i] = static_cast<std::uint8_t>(i);
  std::copy(key48.begin(), key48.begin() + 32, key32.begin());

  EXPECT_EQ(to_hex(Prf(prf::kHmacSha256).plus(key32, seed, 100).span()),
            "28e5337d179d196233e8da2b928999697f8222a7db76ee6205dcf0290a10f8aaaa7d581edaaca92c333ceed4754469bf96c0fd"
            "a7593fd6ac4b153b1ef3524ada0771ec8eafd742525bb3f2376270d01bc5dd3d56acfd75ea38362c31349b1148e474ec9f");
  EXPECT_EQ(to_hex(Prf(prf::kHmacSha384).plus(key48, seed, 130).span()),
            "a655cd050d121d66d8fb0d73035bae3f8a21c171f051adef15786ecf882797d8e82ecd4c1cb588303ecd60092b3f543908ef4d"
            "6b08288c6841c2423173ce148b7fbb2c49615ef8f9103b7a408af93f38d8f5bf940388e0a06e97b41b55ab148eba406f048b8d"
            "4a7010e40e10c043efeeeb345ccc64ec91cf9c15edf6d3da708ed21b");
  EXPECT_EQ(to_hex(Prf(prf::kHmacSha512).plus(text_bytes("short"), seed, 70).span()),
            "f2097f52dea4ce818cb15cb1eccffbb375290b880c271618bd89b36d0c535df70f82f8f8fdfb81f9b3554bb8551b0233122bd0"
            "e7299e02b69036d7904573f90ffd749f934783");
}

TEST(Prf, SizesAndRfc4231Vector) {
  EXPECT_EQ(Prf(prf::kHmacSha256).output_size(), 32u);
  EXPECT_EQ(Prf(prf::kHmacSha384).output_size(), 48u);
  EXPECT_EQ(Prf(prf::kHmacSha512).preferred_key_size(), 64u);
  EXPECT_THROW(Prf(2), std::invalid_argument);
  // python3: hmac.new(b"", b"x", sha256): an empty key is a valid HMAC key.
  EXPECT_EQ(to_hex(Prf(prf::kHmacSha256).compute({}, text_bytes("x")).span()),
            "4cbc96099a6467ce002461f10549b4898265ebe6188b45efacc44293516e62c4");
  // RFC 4231 test case 2.
  EXPECT_EQ(to_hex(Prf(prf::kHmacSha256).compute(text_bytes("Jefe"), text_bytes("what do ya want for nothing?")).span()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}

TEST(SecretBytes, CopiesSlicesAndCompares) {
  SecretBytes a(from_hex("00112233445566"));
  SecretBytes b = a;
  EXPECT_TRUE(a == b);
  EXPECT_EQ(to_hex(a.slice(2, 3).span()), "223344");
  EXPECT_THROW(a.slice(5, 3), std::out_of_range);
  SecretBytes moved = std::move(b);
  EXPECT_TRUE(b.empty());
  EXPECT_TRUE(moved == a);
  EXPECT_FALSE(moved == SecretBytes(from_hex("00112233445567")));
}

TEST(KeyExchange, X25519Rfc7748) {
  // RFC 7748 §6.1.
  auto alice = KeyExchange::from_private_key(
      group::kCurve25519, from_hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"));
  auto bob = KeyExchange::from_private_key(
      group::kCurve25519, from_hex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"));
  ASSERT_TRUE(alice && bob);
  EXPECT_EQ(to_hex(alice->public_value()), "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
  EXPECT_EQ(to_hex(bob->public_value()), "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f");
  auto shared = alice->shared_secret(bob->public_value());
  ASSERT_TRUE(shared);
  EXPECT_EQ(to_hex(shared->span()), "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
  EXPECT_TRUE(*bob->shared_secret(alice->public_value()) == *shared);
}

TEST(KeyExchange, X25519RefusesLowOrderAndBadLength) {
  auto ours = KeyExchange::generate(group::kCurve25519);
  ASSERT_TRUE(ours);
  EXPECT_EQ(ours->group(), group::kCurve25519);
  EXPECT_FALSE(ours->shared_secret(Bytes(32, 0)));  // the identity: all-zero result
  Bytes order_one(32, 0);
  order_one[0] = 1;
  EXPECT_FALSE(ours->shared_secret(order_one));
  EXPECT_FALSE(ours->shared_secret(Bytes(31, 9)));
}

TEST(KeyExchange, Ecp256Rfc5903) {
  // RFC 5903 §8.1.
  auto initiator = KeyExchange::from_private_key(
      group::kEcp256, from_hex("C88F01F510D9AC3F70A292DAA2316DE544E9AAB8AFE84049C62A9C57862D1433"));
  auto responder = KeyExchange::from_private_key(
      group::kEcp256, from_hex("C6EF9C5D78AE012A011164ACB397CE2088685D8F06BF9BE0B283AB46476BEE53"));
  ASSERT_TRUE(initiator && responder);
  EXPECT_EQ(to_hex(initiator->public_value()),
            "dad0b65394221cf9b051e1feca5787d098dfe637fc90b9ef945d0c3772581180"
            "5271a0461cdb8252d61f1c456fa3e59ab1f45b33accf5f58389e0577b8990bb3");
  EXPECT_EQ(to_hex(responder->public_value()),
            "d12dfb5289c8d4f81208b70270398c342296970a0bccb74c736fc7554494bf63"
            "56fbf3ca366cc23e8157854c13c58d6aac23f046ada30f8353e74f33039872ab");
  auto shared = initiator->shared_secret(responder->public_value());
  ASSERT_TRUE(shared);
  EXPECT_EQ(to_hex(shared->span()), "d6840f6b42f6edafd13116e0e12565202fef8e9ece7dce03812464d04b9442de");
  EXPECT_TRUE(*responder->shared_secret(initiator->public_value()) == *shared);
}

TEST(KeyExchange, EcpRefusesPointsOffTheCurve) {
  for (auto id : {group::kEcp256, group::kEcp384}) {
    auto a = KeyExchange::generate(id);
    auto b = KeyExchange::generate(id);
    ASSERT_TRUE(a && b);
    Bytes value = b->public_value();
    ASSERT_EQ(value.size(), id == group::kEcp256 ? 64u : 96u);
    auto shared = a->shared_secret(value);
    ASSERT_TRUE(shared);
    EXPECT_EQ(shared->size(), value.size() / 2);
    EXPECT_TRUE(*b->shared_secret(a->public_value()) == *shared);
    value.back() ^= 1;  // y no longer matches x
    EXPECT_FALSE(a->shared_secret(value));
    EXPECT_FALSE(a->shared_secret(Bytes(value.size(), 0)));
    EXPECT_FALSE(a->shared_secret(Bytes(value.begin(), value.end() - 1)));
  }
}

TEST(KeyExchange, Modp2048AgreementAndRangeChecks) {
  auto a = KeyExchange::generate(group::kModp2048);
  auto b = KeyExchange::generate(group::kModp2048);
  ASSERT_TRUE(a && b);
  ASSERT_EQ(a->public_value().size(), 256u);
  auto shared_a = a->shared_secret(b->public_value());
  auto shared_b = b->shared_secret(a->public_value());
  ASSERT_TRUE(shared_a && shared_b);
  EXPECT_EQ(shared_a->size(), 256u);
  EXPECT_TRUE(*shared_a == *shared_b);

  BIGNUM* prime = BN_get_rfc3526_prime_2048(nullptr);
  Bytes p(256), p_minus_1(256);
  BN_bn2binpad(prime, p.data(), 256);
  BN_sub_word(prime, 1);
  BN_bn2binpad(prime, p_minus_1.data(), 256);
  BN_free(prime);
  Bytes one(256, 0), zero(256, 0), two(256, 0);
  one.back() = 1;
  two.back() = 2;
  EXPECT_FALSE(a->shared_secret(zero));
  EXPECT_FALSE(a->shared_secret(one));
  EXPECT_FALSE(a->shared_secret(p_minus_1));
  EXPECT_FALSE(a->shared_secret(p));
  EXPECT_FALSE(a->shared_secret(Bytes(256, 0xff)));
  EXPECT_FALSE(a->shared_secret(Bytes(255, 7)));
}

TEST(KeyExchange, Modp2048FixedKeysAgreeAndPad) {
  auto a = KeyExchange::from_private_key(group::kModp2048, from_hex("0123456789abcdef0123456789abcdef"));
  auto b = KeyExchange::from_private_key(group::kModp2048, from_hex("fedcba9876543210fedcba9876543210"));
  ASSERT_TRUE(a && b);
  auto shared = a->shared_secret(b->public_value());
  ASSERT_TRUE(shared);
  EXPECT_EQ(shared->size(), 256u);
  EXPECT_TRUE(*shared == *b->shared_secret(a->public_value()));
  // g^1 = 2: the public value of private key 1 is 2, padded to 256 bytes.
  auto unit = KeyExchange::from_private_key(group::kModp2048, from_hex("01"));
  ASSERT_TRUE(unit);
  Bytes two(256, 0);
  two.back() = 2;
  EXPECT_EQ(unit->public_value(), two);
}

TEST(KeyExchange, UnsupportedGroups) {
  EXPECT_FALSE(KeyExchange::generate(2));
  EXPECT_FALSE(KeyExchange::generate(group::kNone));
  EXPECT_TRUE(group_supported(group::kCurve25519));
  EXPECT_TRUE(group_supported(group::kModp2048));
  EXPECT_FALSE(group_supported(21));
}

AlgorithmSuite gcm_suite() {
  AlgorithmSuite suite;
  suite.encryption = encr::kAesGcm16;
  suite.encryption_key_bits = 256;
  suite.prf = prf::kHmacSha384;
  suite.key_exchange = group::kCurve25519;
  return suite;
}

AlgorithmSuite cbc_suite() {
  AlgorithmSuite suite;
  suite.encryption = encr::kAesCbc;
  suite.encryption_key_bits = 128;
  suite.integrity = integ::kHmacSha256_128;
  suite.prf = prf::kHmacSha256;
  suite.key_exchange = group::kModp2048;
  return suite;
}

TEST(AlgorithmSuite, SizesAndNames) {
  AlgorithmSuite gcm = gcm_suite();
  EXPECT_TRUE(gcm.is_aead());
  EXPECT_EQ(gcm.encryption_key_size(), 36u);
  EXPECT_EQ(gcm.integrity_key_size(), 0u);
  EXPECT_EQ(gcm.icv_size(), 16u);
  EXPECT_EQ(gcm.to_string(), "AES_GCM_16_256/PRF_HMAC_SHA2_384/CURVE_25519");

  AlgorithmSuite chacha;
  chacha.encryption = encr::kChaCha20Poly1305;
  chacha.encryption_key_bits = 256;
  EXPECT_EQ(chacha.encryption_key_size(), 36u);
  EXPECT_EQ(chacha.to_string(), "CHACHA20_POLY1305/NO_EXT_SEQ");

  AlgorithmSuite cbc = cbc_suite();
  EXPECT_FALSE(cbc.is_aead());
  EXPECT_EQ(cbc.encryption_key_size(), 16u);
  EXPECT_EQ(cbc.integrity_key_size(), 32u);
  EXPECT_EQ(cbc.icv_size(), 16u);
  EXPECT_EQ(cbc.to_string(), "AES_CBC_128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048");
  cbc.integrity = integ::kHmacSha384_192;
  EXPECT_EQ(cbc.integrity_key_size(), 48u);
  EXPECT_EQ(cbc.icv_size(), 24u);
  cbc.integrity = integ::kHmacSha512_256;
  EXPECT_EQ(cbc.integrity_key_size(), 64u);
  EXPECT_EQ(cbc.icv_size(), 32u);

  AlgorithmSuite esp;
  esp.encryption = encr::kAesGcm16;
  esp.encryption_key_bits = 128;
  esp.extended_sequence_numbers = true;
  EXPECT_EQ(esp.encryption_key_size(), 20u);
  EXPECT_EQ(esp.to_string(), "AES_GCM_16_128/EXT_SEQ");
}

TEST(KeySchedule, IkeKeysHaveTheSuiteSizesAndAreDeterministic) {
  const Bytes shared(32, 0x42), ni(32, 1), nr(32, 2);
  for (const AlgorithmSuite& suite : {gcm_suite(), cbc_suite()}) {
    IkeKeys keys = derive_ike_keys(suite, shared, ni, nr, 0x1111, 0x2222);
    const std::size_t prf_size = Prf(suite.prf).output_size();
    EXPECT_EQ(keys.sk_d.size(), prf_size);
    EXPECT_EQ(keys.sk_pi.size(), prf_size);
    EXPECT_EQ(keys.sk_pr.size(), prf_size);
    EXPECT_EQ(keys.sk_ai.size(), suite.integrity_key_size());
    EXPECT_EQ(keys.sk_ar.size(), suite.integrity_key_size());
    EXPECT_EQ(keys.sk_ei.size(), suite.encryption_key_size());
    EXPECT_EQ(keys.sk_er.size(), suite.encryption_key_size());
    IkeKeys again = derive_ike_keys(suite, shared, ni, nr, 0x1111, 0x2222);
    EXPECT_TRUE(again.sk_d == keys.sk_d);
    EXPECT_TRUE(again.sk_er == keys.sk_er);
    EXPECT_FALSE(keys.sk_ei == keys.sk_er);
    IkeKeys other_spi = derive_ike_keys(suite, shared, ni, nr, 0x1111, 0x2223);
    EXPECT_FALSE(other_spi.sk_d == keys.sk_d);
  }
}

TEST(KeySchedule, IkeKeysFollowRfc7296Layout) {
  // Recomputes the schedule by hand with Prf to check order and seeds.
  const AlgorithmSuite suite = cbc_suite();
  const Bytes shared(256, 0x42), ni(16, 1), nr(24, 2);
  const Prf prf(suite.prf);
  Bytes nonces = ni;
  nonces.insert(nonces.end(), nr.begin(), nr.end());
  SecretBytes skeyseed = prf.compute(nonces, shared);
  Bytes seed = nonces;
  for (std::uint64_t spi : {0x0102030405060708ull, 0x1112131415161718ull})
    for (int shift = 56; shift >= 0; shift -= 8) seed.push_back(static_cast<std::uint8_t>(spi >> shift));
  SecretBytes stream = prf.plus(skeyseed.span(), seed, 32 * 3 + 32 * 2 + 16 * 2);
  IkeKeys keys = derive_ike_keys(suite, shared, ni, nr, 0x0102030405060708ull, 0x1112131415161718ull);
  EXPECT_TRUE(keys.sk_d == stream.slice(0, 32));
  EXPECT_TRUE(keys.sk_ai == stream.slice(32, 32));
  EXPECT_TRUE(keys.sk_ar == stream.slice(64, 32));
  EXPECT_TRUE(keys.sk_ei == stream.slice(96, 16));
  EXPECT_TRUE(keys.sk_er == stream.slice(112, 16));
  EXPECT_TRUE(keys.sk_pi == stream.slice(128, 32));
  EXPECT_TRUE(keys.sk_pr == stream.slice(160, 32));
}

TEST(KeySchedule, RekeyUsesOldSkdAndOldPrf) {
  const AlgorithmSuite suite = gcm_suite();  // new PRF: SHA-384
  const Bytes shared(32, 7), ni(32, 3), nr(32, 4);
  const SecretBytes old_sk_d(Bytes(32, 9));
  IkeKeys rekeyed = derive_ike_keys(suite, shared, ni, nr, 1, 2, &old_sk_d, prf::kHmacSha256);

  Bytes seed = shared;
  seed.insert(seed.end(), ni.begin(), ni.end());
  seed.insert(seed.end(), nr.begin(), nr.end());
  SecretBytes skeyseed = Prf(prf::kHmacSha256).compute(old_sk_d.span(), seed);
  Bytes plus_seed = ni;
  plus_seed.insert(plus_seed.end(), nr.begin(), nr.end());
  for (std::uint64_t spi : {1ull, 2ull})
    for (int shift = 56; shift >= 0; shift -= 8) plus_seed.push_back(static_cast<std::uint8_t>(spi >> shift));
  SecretBytes stream = Prf(prf::kHmacSha384).plus(skeyseed.span(), plus_seed, 48);
  EXPECT_TRUE(rekeyed.sk_d == stream);
  IkeKeys fresh = derive_ike_keys(suite, shared, ni, nr, 1, 2);
  EXPECT_FALSE(fresh.sk_d == rekeyed.sk_d);
}

TEST(KeySchedule, ChildKeysTakeInitiatorThenResponder) {
  AlgorithmSuite esp;
  esp.encryption = encr::kAesCbc;
  esp.encryption_key_bits = 256;
  esp.integrity = integ::kHmacSha256_128;
  const SecretBytes sk_d(Bytes(32, 5));
  const Bytes ni(32, 1), nr(32, 2);
  ChildKeys keys = derive_child_keys(esp, prf::kHmacSha256, sk_d, ni, nr);
  Bytes seed = ni;
  seed.insert(seed.end(), nr.begin(), nr.end());
  SecretBytes keymat = Prf(prf::kHmacSha256).plus(sk_d.span(), seed, 2 * (32 + 32));
  EXPECT_TRUE(keys.encryption_i == keymat.slice(0, 32));
  EXPECT_TRUE(keys.integrity_i == keymat.slice(32, 32));
  EXPECT_TRUE(keys.encryption_r == keymat.slice(64, 32));
  EXPECT_TRUE(keys.integrity_r == keymat.slice(96, 32));

  const SecretBytes pfs(Bytes(32, 8));
  ChildKeys with_pfs = derive_child_keys(esp, prf::kHmacSha256, sk_d, ni, nr, &pfs);
  Bytes pfs_seed(32, 8);
  pfs_seed.insert(pfs_seed.end(), seed.begin(), seed.end());
  EXPECT_TRUE(with_pfs.encryption_i == Prf(prf::kHmacSha256).plus(sk_d.span(), pfs_seed, 32));

  AlgorithmSuite gcm;
  gcm.encryption = encr::kAesGcm16;
  gcm.encryption_key_bits = 128;
  ChildKeys aead = derive_child_keys(gcm, prf::kHmacSha256, sk_d, ni, nr);
  EXPECT_EQ(aead.encryption_i.size(), 20u);
  EXPECT_TRUE(aead.integrity_i.empty());
  EXPECT_TRUE(aead.encryption_r == keymat.slice(20, 20));
}

TEST(KeySchedule, ExportIsLabelledPrfPlus) {
  const SecretBytes sk_d(Bytes(48, 5));
  const Bytes ni(32, 1), nr(32, 2);
  SecretBytes exported = derive_export(prf::kHmacSha384, sk_d, "wg", ni, nr, 40);
  Bytes seed = text_bytes("tapsec exportwg");
  seed.insert(seed.end(), ni.begin(), ni.end());
  seed.insert(seed.end(), nr.begin(), nr.end());
  EXPECT_TRUE(exported == Prf(prf::kHmacSha384).plus(sk_d.span(), seed, 40));
  EXPECT_FALSE(exported == derive_export(prf::kHmacSha384, sk_d, "other", ni, nr, 40));
}

TEST(NatDetection, MatchesIndependentSha1) {
  Endpoint endpoint;
  endpoint.address = IpAddress::any(2 /*AF_INET*/);
  endpoint.address.bytes[0] = 192;
  endpoint.address.bytes[1] = 0;
  endpoint.address.bytes[2] = 2;
  endpoint.address.bytes[3] = 1;
  endpoint.port = 4500;
  EXPECT_EQ(to_hex(nat_detection_hash(0x0102030405060708ull, 0x1112131415161718ull, endpoint)),
            "5184f43875ff7d9e3dfdc92bd1dee1a08204de3e");
}

TEST(Random, BytesDiffer) {
  EXPECT_EQ(random_bytes(16).size(), 16u);
  EXPECT_NE(random_bytes(16), random_bytes(16));
  EXPECT_NE(random_u64(), random_u64());
}

}  // namespace
}  // namespace tapsec::ikev2
