// Proposal strings, defaults and responder-side selection.
#include <gtest/gtest.h>

#include "agent/engines/ikev2/crypto.h"

namespace tapsec::ikev2 {
namespace {

Proposal parse(std::string_view text, ProtocolId protocol = ProtocolId::Ike) {
  auto parsed = parse_proposal(text, protocol);
  if (auto* error = std::get_if<ProposalParseError>(&parsed)) ADD_FAILURE() << text << ": " << error->message;
  return std::get<Proposal>(parsed);
}

std::string parse_error(std::string_view text, ProtocolId protocol = ProtocolId::Ike) {
  auto parsed = parse_proposal(text, protocol);
  auto* error = std::get_if<ProposalParseError>(&parsed);
  return error ? error->message : "";
}

Transform t(TransformType type, std::uint16_t id, std::optional<std::uint16_t> bits = std::nullopt) {
  return Transform{type, id, bits};
}

TEST(ParseProposal, IkeAeadWithAlternatives) {
  Proposal p = parse("aes256gcm16-aes128gcm16-prfsha384-x25519-ecp256");
  EXPECT_EQ(p.protocol, ProtocolId::Ike);
  std::vector<Transform> expected{
      t(TransformType::Encryption, encr::kAesGcm16, 256), t(TransformType::Encryption, encr::kAesGcm16, 128),
      t(TransformType::Prf, prf::kHmacSha384), t(TransformType::KeyExchange, group::kCurve25519),
      t(TransformType::KeyExchange, group::kEcp256)};
  EXPECT_EQ(p.transforms, expected);
}

TEST(ParseProposal, IntegrityTokenAlsoNamesPrf) {
  Proposal p = parse("aes128-sha256-modp2048");
  std::vector<Transform> expected{t(TransformType::Encryption, encr::kAesCbc, 128),
                                  t(TransformType::Prf, prf::kHmacSha256),
                                  t(TransformType::Integrity, integ::kHmacSha256_128),
                                  t(TransformType::KeyExchange, group::kModp2048)};
  EXPECT_EQ(p.transforms, expected);
  // An explicit prf token wins.
  Proposal explicit_prf = parse("aes128-sha256-prfsha512-curve25519");
  EXPECT_EQ(explicit_prf.transforms[1], t(TransformType::Prf, prf::kHmacSha512));
  EXPECT_EQ(explicit_prf.transforms.size(), 4u);
  // With AEAD, sha384 names only the PRF.
  Proposal aead = parse("aes256gcm16-sha384-ecp384");
  std::vector<Transform> aead_expected{t(TransformType::Encryption, encr::kAesGcm16, 256),
                                       t(TransformType::Prf, prf::kHmacSha384),
                                       t(TransformType::KeyExchange, group::kEcp384)};
  EXPECT_EQ(aead.transforms, aead_expected);
}

TEST(ParseProposal, Esp) {
  Proposal p = parse("chacha20poly1305-esn", ProtocolId::Esp);
  std::vector<Transform> expected{t(TransformType::Encryption, encr::kChaCha20Poly1305),
                                  t(TransformType::Esn, esn::kYes)};
  EXPECT_EQ(p.transforms, expected);
  Proposal cbc = parse("aes256-sha512-x25519", ProtocolId::Esp);
  std::vector<Transform> cbc_expected{t(TransformType::Encryption, encr::kAesCbc, 256),
                                      t(TransformType::Integrity, integ::kHmacSha512_256),
                                      t(TransformType::KeyExchange, group::kCurve25519),
                                      t(TransformType::Esn, esn::kNo)};
  EXPECT_EQ(cbc.transforms, cbc_expected);
}

TEST(ParseProposal, Errors) {
  EXPECT_NE(parse_error("aes256gcm16-prfsha384-x448").find("x448"), std::string::npos);
  EXPECT_NE(parse_error("aes128-modp2048").find("integrity"), std::string::npos);
  EXPECT_NE(parse_error("aes128gcm16-x25519").find("PRF"), std::string::npos);
  EXPECT_NE(parse_error("aes128gcm16-prfsha256").find("key exchange"), std::string::npos);
  EXPECT_NE(parse_error("sha256-x25519").find("encryption"), std::string::npos);
  EXPECT_NE(parse_error("aes128-aes128gcm16-sha256-x25519").find("mixes"), std::string::npos);
  EXPECT_FALSE(parse_error("aes128gcm16-esn-prfsha256-x25519").empty());
  EXPECT_FALSE(parse_error("aes128gcm16-prfsha256", ProtocolId::Esp).empty());
  EXPECT_FALSE(parse_error("aes128gcm16--x25519").empty());
  EXPECT_FALSE(parse_error("").empty());
}

TEST(DefaultProposals, ParseAndAreNumbered) {
  auto ike = default_ike_proposals();
  ASSERT_EQ(ike.size(), 2u);
  EXPECT_EQ(ike[0].number, 1);
  EXPECT_EQ(ike[1].number, 2);
  EXPECT_EQ(ike[0].transforms.front(), t(TransformType::Encryption, encr::kAesGcm16, 256));
  auto esp = default_esp_proposals();
  ASSERT_EQ(esp.size(), 2u);
  EXPECT_EQ(esp[0].protocol, ProtocolId::Esp);
}

TEST(ChooseProposal, ResponderFollowsThePeersOrder) {
  std::vector<Proposal> offered{parse("aes128gcm16-prfsha256-ecp256-x25519"), parse("aes256gcm16-prfsha384-x25519")};
  offered[0].number = 1;
  offered[1].number = 2;
  auto chosen = choose_proposal(offered, default_ike_proposals());
  ASSERT_TRUE(chosen);
  EXPECT_EQ(chosen->proposal.number, 1);
  EXPECT_EQ(chosen->suite.to_string(), "AES_GCM_16_128/PRF_HMAC_SHA2_256/ECP_256");
  std::vector<Transform> expected{t(TransformType::Encryption, encr::kAesGcm16, 128),
                                  t(TransformType::Prf, prf::kHmacSha256),
                                  t(TransformType::KeyExchange, group::kEcp256)};
  EXPECT_EQ(chosen->proposal.transforms, expected);
}

TEST(ChooseProposal, SkipsProposalsWeCannotMeet) {
  Proposal unsupported = parse("aes128gcm16-prfsha256-x25519");
  unsupported.transforms[0].key_length = 192;  // AES-192 is not offered by us
  Proposal cbc = parse("aes256-sha384-modp2048");
  cbc.number = 2;
  cbc.spi = {1, 2, 3, 4, 5, 6, 7, 8};
  auto chosen = choose_proposal({unsupported, cbc}, default_ike_proposals());
  ASSERT_TRUE(chosen);
  EXPECT_EQ(chosen->proposal.number, 2);
  EXPECT_EQ(chosen->proposal.spi, cbc.spi);
  EXPECT_EQ(chosen->suite.to_string(), "AES_CBC_256/HMAC_SHA2_384_192/PRF_HMAC_SHA2_384/MODP_2048");
  EXPECT_EQ(chosen->suite.encryption_key_bits, 256);

  EXPECT_FALSE(choose_proposal({parse("aes128gcm16-prfsha512-x25519")}, default_ike_proposals()));
  EXPECT_FALSE(choose_proposal({parse("aes128-sha256-ecp384")}, default_ike_proposals()));  // no ecp384 for CBC
}

TEST(ChooseProposal, AeadMustNotCarryIntegrityCbcMust) {
  Proposal aead_with_integrity = parse("aes128gcm16-prfsha256-x25519");
  aead_with_integrity.transforms.push_back(t(TransformType::Integrity, integ::kHmacSha256_128));
  EXPECT_FALSE(choose_proposal({aead_with_integrity}, default_ike_proposals()));
  Proposal aead_with_none = parse("aes128gcm16-prfsha256-x25519");
  aead_with_none.transforms.push_back(t(TransformType::Integrity, integ::kNone));
  EXPECT_TRUE(choose_proposal({aead_with_none}, default_ike_proposals()));
  Proposal cbc_without_integrity;
  cbc_without_integrity.transforms = {t(TransformType::Encryption, encr::kAesCbc, 128),
                                      t(TransformType::Prf, prf::kHmacSha256),
                                      t(TransformType::KeyExchange, group::kCurve25519)};
  EXPECT_FALSE(choose_proposal({cbc_without_integrity}, default_ike_proposals()));
}

TEST(ChooseProposal, EspEsnAndPfs) {
  Proposal offered = parse("aes128gcm16-noesn-esn", ProtocolId::Esp);
  offered.spi = {0xc0, 0xff, 0xee, 0x01};
  auto chosen = choose_proposal({offered}, default_esp_proposals());
  ASSERT_TRUE(chosen);
  EXPECT_EQ(chosen->suite.to_string(), "AES_GCM_16_128/NO_EXT_SEQ");
  EXPECT_EQ(chosen->proposal.spi, offered.spi);
  EXPECT_EQ(chosen->proposal.protocol, ProtocolId::Esp);

  // PFS configured on our side: the peer must offer the group.
  std::vector<Proposal> ours_pfs{parse("aes256gcm16-x25519-esn", ProtocolId::Esp)};
  EXPECT_FALSE(choose_proposal({parse("aes256gcm16-esn", ProtocolId::Esp)}, ours_pfs));
  EXPECT_FALSE(choose_proposal({parse("aes256gcm16-ecp256-esn", ProtocolId::Esp)}, ours_pfs));
  auto with_pfs = choose_proposal({parse("aes256gcm16-ecp256-x25519-esn", ProtocolId::Esp)}, ours_pfs);
  ASSERT_TRUE(with_pfs);
  EXPECT_EQ(with_pfs->suite.key_exchange, group::kCurve25519);
  EXPECT_EQ(with_pfs->suite.to_string(), "AES_GCM_16_256/CURVE_25519/EXT_SEQ");
  // The peer wants PFS but we do not.
  EXPECT_FALSE(choose_proposal({parse("aes256gcm16-x25519-esn", ProtocolId::Esp)}, default_esp_proposals()));

  // No ESN transform at all is a malformed ESP proposal.
  Proposal no_esn;
  no_esn.protocol = ProtocolId::Esp;
  no_esn.transforms = {t(TransformType::Encryption, encr::kAesGcm16, 256)};
  EXPECT_FALSE(choose_proposal({no_esn}, default_esp_proposals()));
  // IKE and ESP proposals never match each other.
  EXPECT_FALSE(choose_proposal({parse("aes256gcm16-prfsha256-x25519")}, default_esp_proposals()));
}

TEST(SuiteOf, AcceptsOnlyOneOfOurs) {
  auto chosen = choose_proposal({parse("chacha20poly1305-prfsha384-x25519")}, default_ike_proposals());
  ASSERT_TRUE(chosen);
  auto suite = suite_of(chosen->proposal, default_ike_proposals());
  ASSERT_TRUE(suite);
  EXPECT_EQ(*suite, chosen->suite);
  EXPECT_EQ(suite->to_string(), "CHACHA20_POLY1305/PRF_HMAC_SHA2_384/CURVE_25519");
  // A "choice" with two encryption transforms is malformed.
  EXPECT_FALSE(suite_of(parse("aes256gcm16-aes128gcm16-prfsha384-x25519"), default_ike_proposals()));
  EXPECT_FALSE(suite_of(parse("aes256gcm16-prfsha512-x25519"), default_ike_proposals()));
}

}  // namespace
}  // namespace tapsec::ikev2
