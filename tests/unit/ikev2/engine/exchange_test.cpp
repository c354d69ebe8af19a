// IKE_SA_INIT and IKE_AUTH between two engines: PSK and certificates,
// every group and suite, INVALID_KE_PAYLOAD, cookies, traffic selector
// narrowing and the failures each side must report.
#include <gtest/gtest.h>

#include "tests/unit/ikev2/engine/engine_fixture.h"

namespace tapsec::ikev2::test {
namespace {

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

TEST_F(EngineTest, PskEstablishesIkeSaAndFirstChild) {
  connect();
  expect_established();
  const IkeSaUp up_a = net.a.all<IkeSaUp>().front(), up_b = net.b.all<IkeSaUp>().front();
  EXPECT_TRUE(up_a.initiator);
  EXPECT_FALSE(up_b.initiator);
  EXPECT_EQ(up_a.peer_id, id("b.example"));
  EXPECT_EQ(up_b.peer_id, id("a.example"));
  EXPECT_FALSE(up_a.nat_detected_local || up_a.nat_detected_remote);
  EXPECT_TRUE(up_a.mobike);
  EXPECT_EQ(up_a.suite, up_b.suite);
  EXPECT_EQ(up_a.epoch, 0u);

  ASSERT_EQ(net.a.count<ChildSaInstall>(), 1u);
  ASSERT_EQ(net.b.count<ChildSaInstall>(), 1u);
  expect_mirrored(net.a, net.b);
  const ChildSaInstall install = net.a.all<ChildSaInstall>().front();
  EXPECT_EQ(install.local_ts, std::vector{ts("10.1.0.0/16")});
  EXPECT_EQ(install.remote_ts, std::vector{ts("10.2.0.0/16")});
  EXPECT_EQ(install.mode, Mode::Tunnel);
  EXPECT_FALSE(install.udp_encapsulation);
  EXPECT_FALSE(install.is_rekey);
  EXPECT_EQ(install.local, net.a.endpoint());
  EXPECT_EQ(install.remote, net.b.endpoint());
  EXPECT_EQ(install.inbound_spi, 0xa0000001u);
  EXPECT_EQ(install.outbound_spi, 0xb0000001u);

  auto state_a = net.a.engine->sa(a_sa);
  ASSERT_TRUE(state_a);
  EXPECT_EQ(state_a->state, "established");
  EXPECT_EQ(state_a->children.size(), 1u);
  auto state_b = net.b.engine->sa(b_sa());
  ASSERT_TRUE(state_b);
  EXPECT_EQ(state_a->initiator_spi, state_b->initiator_spi);
  EXPECT_EQ(state_a->responder_spi, state_b->responder_spi);
  EXPECT_EQ(net.b.selector->init_calls, 1);
  EXPECT_EQ(net.b.selector->auth_calls, 1);
  EXPECT_EQ(net.a.engine->find_child_by_spi(install.inbound_spi), std::pair(a_sa, state_a->children[0].id));
  EXPECT_EQ(net.a.engine->find_child_by_spi(install.outbound_spi), std::pair(a_sa, state_a->children[0].id));
  EXPECT_FALSE(net.a.engine->find_child_by_spi(12345));
  EXPECT_EQ(net.a.engine->counters().sent, 2u);  // IKE_SA_INIT, IKE_AUTH
  EXPECT_EQ(net.b.engine->counters().received, 2u);
  EXPECT_EQ(net.b.engine->counters().half_open, 0u);
}

class GroupTest : public EngineTest, public ::testing::WithParamInterface<const char*> {};

TEST_P(GroupTest, EachKeyExchangeGroup) {
  const std::string text = std::string("aes256gcm16-prfsha256-") + GetParam();
  ends.a->ike_proposals = {proposal(text.c_str(), ProtocolId::Ike)};
  ends.a->children[0].rekey_group = ends.a->ike_proposals[0].transforms.back().id;
  connect();
  expect_established();
  const std::uint16_t group = net.a.all<IkeSaUp>().front().suite.key_exchange;
  EXPECT_EQ(group, ends.a->ike_proposals[0].transforms.back().id);
  EXPECT_EQ(net.b.all<IkeSaUp>().front().suite.key_exchange, group);
  // A PFS rekey in the same group.
  ASSERT_TRUE(net.a.engine->rekey_child(a_sa, a_child(), net.now));
  net.run();
  expect_mirrored(net.a, net.b);
  EXPECT_EQ(net.a.installed().size(), 1u);
  EXPECT_EQ(net.a.installed().begin()->second.epoch, 1u);
}

INSTANTIATE_TEST_SUITE_P(Groups, GroupTest, ::testing::Values("x25519", "ecp256", "ecp384", "modp2048"));

struct SuiteCase {
  const char* ike;
  const char* esp;
};

class SuiteTest : public EngineTest, public ::testing::WithParamInterface<SuiteCase> {};

TEST_P(SuiteTest, EachIkeAndEspSuite) {
  ends.a->ike_proposals = {proposal(GetParam().ike, ProtocolId::Ike)};
  ends.a->children[0].esp_proposals = {proposal(GetParam().esp, ProtocolId::Esp)};
  // b accepts its defaults plus exactly this suite.
  ends.b->ike_proposals.push_back(ends.a->ike_proposals[0]);
  ends.b->children[0].esp_proposals.push_back(ends.a->children[0].esp_proposals[0]);
  connect();
  expect_established();
  expect_mirrored(net.a, net.b);
  const AlgorithmSuite ike_suite = net.a.all<IkeSaUp>().front().suite;
  EXPECT_EQ(ike_suite.encryption, ends.a->ike_proposals[0].transforms[0].id);
  const ChildSaInstall install = net.a.all<ChildSaInstall>().front();
  EXPECT_EQ(install.suite.encryption, ends.a->children[0].esp_proposals[0].transforms[0].id);
  EXPECT_EQ(install.inbound_integrity.size(), install.suite.integrity_key_size());
  // The suite carries INFORMATIONAL traffic too.
  ASSERT_TRUE(net.a.engine->delete_child(a_sa, a_child(), net.now));
  net.run();
  EXPECT_TRUE(net.a.installed().empty());
  EXPECT_TRUE(net.b.installed().empty());
}

INSTANTIATE_TEST_SUITE_P(Suites, SuiteTest,
                         ::testing::Values(SuiteCase{"aes256gcm16-prfsha384-x25519", "aes256gcm16"},
                                           SuiteCase{"aes128gcm16-prfsha256-ecp256", "aes128gcm16-esn"},
                                           SuiteCase{"chacha20poly1305-prfsha256-x25519", "chacha20poly1305"},
                                           SuiteCase{"aes256-sha384-x25519", "aes256-sha384"},
                                           SuiteCase{"aes128-sha256-modp2048", "aes128-sha256"},
                                           SuiteCase{"aes256-sha512-ecp384", "aes256-sha512"}));

TEST_F(EngineTest, InvalidKePayloadRetriesWithTheGroupTheResponderWants) {
  ends.a->ike_proposals = {proposal("aes256gcm16-prfsha256-x25519-ecp384", ProtocolId::Ike)};
  ends.b->ike_proposals = {proposal("aes256gcm16-prfsha256-ecp384", ProtocolId::Ike)};
  connect();
  expect_established();
  EXPECT_EQ(net.a.all<IkeSaUp>().front().suite.key_exchange, group::kEcp384);
  EXPECT_EQ(net.a.sent.size(), 3u);  // IKE_SA_INIT twice, then IKE_AUTH
}

TEST_F(EngineTest, NoProposalChosenIsReported) {
  ends.a->ike_proposals = {proposal("aes128-sha256-modp2048", ProtocolId::Ike)};
  ends.b->ike_proposals = {proposal("aes256gcm16-prfsha384-x25519", ProtocolId::Ike)};
  connect();
  ASSERT_EQ(net.a.count<IkeSaDown>(), 1u);
  EXPECT_TRUE(net.a.all<IkeSaDown>().front().failed);
  EXPECT_TRUE(contains(net.a.down_reasons().front(), "NO_PROPOSAL_CHOSEN")) << net.a.down_reasons().front();
  EXPECT_EQ(net.b.count<IkeSaUp>(), 0u);
  EXPECT_EQ(net.b.engine->counters().half_open, 0u);
}

TEST_F(EngineTest, CookieRoundTripWhenThresholdIsZero) {
  b_options.cookie_threshold = 0;
  connect();
  expect_established();
  EXPECT_EQ(net.b.engine->counters().cookies_sent, 1u);
  EXPECT_EQ(net.a.sent.size(), 3u);
}

TEST_F(EngineTest, CookiesOnlyAboveTheThreshold) {
  b_options.cookie_threshold = 1;
  start();
  const IkeSaId first = net.a.engine->initiate(ends.a, net.a.endpoint(), net.b.endpoint(), net.now);
  const IkeSaId second = net.a.engine->initiate(ends.a, net.a.endpoint(), net.b.endpoint(), net.now);
  net.run();
  EXPECT_EQ(net.b.engine->counters().cookies_sent, 1u);  // the second arrived while one was half-open
  EXPECT_EQ(net.a.count<IkeSaUp>(), 2u);
  EXPECT_EQ(net.b.count<IkeSaUp>(), 2u);
  EXPECT_EQ(net.a.engine->sa(first)->state, "established");
  EXPECT_EQ(net.a.engine->sa(second)->state, "established");
  expect_mirrored(net.a, net.b);
}

TEST_F(EngineTest, ForgedCookieIsAnsweredWithAFreshOne) {
  b_options.cookie_threshold = 0;
  start();
  net.a.engine->initiate(ends.a, net.a.endpoint(), net.b.endpoint(), net.now);
  net.collect();
  ASSERT_EQ(net.wire.size(), 1u);
  net.step();  // b answers with a cookie
  net.collect();
  ASSERT_EQ(net.wire.size(), 1u);
  net.step();  // a resends with it
  net.collect();
  ASSERT_EQ(net.wire.size(), 1u);
  // Corrupt the cookie's last byte in the resent IKE_SA_INIT.
  auto decoded = decode_message(net.wire.front().data);
  ASSERT_TRUE(std::holds_alternative<Message>(decoded));
  Message message = std::get<Message>(decoded);
  for (Payload& p : message.payloads)
    if (auto* n = std::get_if<NotifyPayload>(&p.body); n && n->type == notify::kCookie) n->data.back() ^= 1;
  net.wire.front().data = encode_message(message.header, message.payloads);
  net.step();
  EXPECT_EQ(net.b.engine->counters().cookies_sent, 2u);
  EXPECT_EQ(net.b.engine->counters().half_open, 0u);
}

TEST_F(EngineTest, TrafficSelectorsAreNarrowed) {
  ends.b->children = {child("net", "10.2.1.0/24", "10.1.0.0/16")};
  connect();
  expect_established();
  expect_mirrored(net.a, net.b);
  const ChildSaInstall install = net.a.all<ChildSaInstall>().front();
  EXPECT_EQ(install.remote_ts, std::vector{ts("10.2.1.0/24")});
  EXPECT_EQ(install.local_ts, std::vector{ts("10.1.0.0/16")});
}

TEST_F(EngineTest, TrafficSelectorsWithAPortAreIntersected) {
  ends.a->children = {child("web", "10.1.0.0/16", "10.2.0.0/16[tcp/443]")};
  ends.b->children = {child("web", "10.2.0.0/24", "10.1.0.0/16")};
  connect();
  expect_established();
  const ChildSaInstall install = net.a.all<ChildSaInstall>().front();
  ASSERT_EQ(install.remote_ts.size(), 1u);
  EXPECT_EQ(install.remote_ts[0].ip_protocol, 6);
  EXPECT_EQ(install.remote_ts[0].start_port, 443);
  EXPECT_EQ(install.remote_ts[0].end_port, 443);
  EXPECT_EQ(install.remote_ts[0].prefix_length(), 24);
}

TEST_F(EngineTest, TsUnacceptableFailsBothEnds) {
  ends.b->children = {child("net", "10.9.0.0/16", "10.1.0.0/16")};
  connect();
  ASSERT_EQ(net.a.count<IkeSaDown>(), 1u);
  ASSERT_EQ(net.b.count<IkeSaDown>(), 1u);
  EXPECT_TRUE(contains(net.a.down_reasons()[0], "TS_UNACCEPTABLE")) << net.a.down_reasons()[0];
  EXPECT_TRUE(contains(net.b.down_reasons()[0], "TS_UNACCEPTABLE")) << net.b.down_reasons()[0];
  EXPECT_TRUE(net.a.installed().empty());
  EXPECT_TRUE(net.b.installed().empty());
  EXPECT_TRUE(net.a.engine->sas().empty());
  EXPECT_TRUE(net.b.engine->sas().empty());
}

TEST_F(EngineTest, WrongPskFailsBothEndsWithAClearReason) {
  ends.a->local_credentials.psk = SecretBytes(Bytes{'w', 'r', 'o', 'n', 'g'});
  connect();
  ASSERT_EQ(net.a.count<IkeSaDown>(), 1u);
  ASSERT_EQ(net.b.count<IkeSaDown>(), 1u);
  EXPECT_TRUE(net.a.all<IkeSaDown>()[0].failed);
  EXPECT_TRUE(net.b.all<IkeSaDown>()[0].failed);
  EXPECT_TRUE(contains(net.a.down_reasons()[0], "AUTHENTICATION_FAILED")) << net.a.down_reasons()[0];
  EXPECT_TRUE(contains(net.b.down_reasons()[0], "AUTHENTICATION_FAILED")) << net.b.down_reasons()[0];
  EXPECT_EQ(net.a.count<IkeSaUp>() + net.b.count<IkeSaUp>(), 0u);
  EXPECT_EQ(net.a.count<ChildSaInstall>() + net.b.count<ChildSaInstall>(), 0u);
}

TEST_F(EngineTest, ResponderWithWrongPskIsRejectedByTheInitiator) {
  ends.b->local_credentials.psk = SecretBytes(Bytes{'w', 'r', 'o', 'n', 'g'});
  connect();
  ASSERT_EQ(net.a.count<IkeSaDown>(), 1u);
  EXPECT_TRUE(contains(net.a.down_reasons()[0], "AUTHENTICATION_FAILED")) << net.a.down_reasons()[0];
  // b thought it was up until a's AUTHENTICATION_FAILED notice arrived.
  ASSERT_EQ(net.b.count<IkeSaDown>(), 1u);
  EXPECT_TRUE(contains(net.b.down_reasons()[0], "AUTHENTICATION_FAILED")) << net.b.down_reasons()[0];
  EXPECT_TRUE(net.b.installed().empty());
}

TEST_F(EngineTest, UnexpectedPeerIdentityFails) {
  ends.a->peer.expected_id = id("c.example");
  connect();
  ASSERT_EQ(net.a.count<IkeSaDown>(), 1u);
  EXPECT_TRUE(contains(net.a.down_reasons()[0], "AUTHENTICATION_FAILED")) << net.a.down_reasons()[0];
  EXPECT_TRUE(contains(net.b.down_reasons().at(0), "c.example")) << net.b.down_reasons()[0];
}

// b has a certificate config and a PSK config for the same peer and ID, in
// the order given; select() returns the first (as the agent does).
class SameIdSelector : public FixedSelector {
 public:
  std::vector<std::shared_ptr<const IkeConfig>> configs;
  std::shared_ptr<const IkeConfig> select(const Endpoint&, const Endpoint&, const Identification*) override {
    return configs.front();
  }
  std::vector<std::shared_ptr<const IkeConfig>> candidates(const Endpoint&, const Endpoint&,
                                                           const Identification&) override {
    return configs;
  }
};

class SameIdTest : public EngineTest {
 protected:
  std::shared_ptr<SameIdSelector> selector = std::make_shared<SameIdSelector>();
  Ends cert_ends = psk_ends();
  SameIdTest() {
    static const TestPki pki(KeyKind::EcdsaP256);
    use_certificates(cert_ends, pki);
    ends.b->name = "psk";
    cert_ends.b->name = "certificate";
    net.b.selector = selector;
  }
  std::string b_config() const { return net.b.all<IkeSaUp>().at(0).config_name; }
};

TEST_F(SameIdTest, PskPeerGetsThePskConfigListedSecond) {
  selector->configs = {cert_ends.b, ends.b};
  connect();
  expect_established();
  EXPECT_EQ(b_config(), "psk");
}

TEST_F(SameIdTest, CertificatePeerGetsTheCertificateConfigListedSecond) {
  selector->configs = {ends.b, cert_ends.b};
  ends.a = cert_ends.a;
  connect();
  expect_established();
  EXPECT_EQ(b_config(), "certificate");
}

TEST_F(SameIdTest, WithoutAConfigForItsMethodThePeerIsRefused) {
  selector->configs = {cert_ends.b};
  connect();
  ASSERT_EQ(net.b.count<IkeSaDown>(), 1u);
  EXPECT_TRUE(contains(net.b.down_reasons()[0], "a certificate is required")) << net.b.down_reasons()[0];
  EXPECT_EQ(net.a.count<IkeSaUp>() + net.b.count<IkeSaUp>(), 0u);
}

TEST_F(EngineTest, NoInboundSpiMeansNoAdditionalSas) {
  start();
  net.b.spis_exhausted = true;
  connect();
  ASSERT_EQ(net.a.count<IkeSaDown>(), 1u);
  EXPECT_TRUE(contains(net.a.down_reasons()[0], "NO_ADDITIONAL_SAS")) << net.a.down_reasons()[0];
}

TEST_F(EngineTest, TransportModeWithHostSelectors) {
  ends.a->children = {ChildConfig{}};
  ends.a->children[0].name = "host";
  ends.a->children[0].mode = Mode::Transport;
  ends.b->children = ends.a->children;
  connect();
  expect_established();
  expect_mirrored(net.a, net.b);
  const ChildSaInstall install = net.a.all<ChildSaInstall>().front();
  EXPECT_EQ(install.mode, Mode::Transport);
  EXPECT_EQ(install.local_ts, std::vector{TrafficSelector::host(net.a.address)});
  EXPECT_EQ(install.remote_ts, std::vector{TrafficSelector::host(net.b.address)});
}

TEST_F(EngineTest, FurtherChildrenWithCreateChildSa) {
  ends.a->children.push_back(child("dns", "10.1.0.0/16", "10.53.0.0/16"));
  ends.a->children[1].rekey_group = group::kCurve25519;
  ends.b->children.push_back(child("dns", "10.53.0.0/16", "10.1.0.0/16"));
  connect();
  expect_established();
  EXPECT_EQ(net.a.count<ChildSaInstall>(), 2u);
  EXPECT_EQ(net.b.count<ChildSaInstall>(), 2u);
  expect_mirrored(net.a, net.b);
  EXPECT_EQ(net.b.engine->sa(b_sa())->children.size(), 2u);
  EXPECT_EQ(net.b.all<ChildSaInstall>()[1].config_name, "dns");
}

TEST_F(EngineTest, TriggerSelectorsComeFirst) {
  start();
  a_sa = net.a.engine->initiate(ends.a, net.a.endpoint(), net.b.endpoint(), net.now, ts("10.1.2.3"),
                                ts("10.2.3.4[tcp/22]"));
  net.run();
  expect_established();
  const ChildSaInstall install = net.b.all<ChildSaInstall>().front();
  EXPECT_EQ(install.remote_ts.front(), ts("10.1.2.3"));
}

class CertificateTest : public EngineTest, public ::testing::WithParamInterface<KeyKind> {};

TEST_P(CertificateTest, SignatureAuthentication) {
  static const TestPki rsa_pki(KeyKind::Rsa2048, KeyKind::Rsa2048);
  static const TestPki ecdsa_pki(KeyKind::EcdsaP256, KeyKind::EcdsaP256);
  static const TestPki ecdsa384_pki(KeyKind::EcdsaP384, KeyKind::EcdsaP384);
  const TestPki& pki =
      GetParam() == KeyKind::Rsa2048 ? rsa_pki : GetParam() == KeyKind::EcdsaP256 ? ecdsa_pki : ecdsa384_pki;
  use_certificates(ends, pki);
  connect();
  expect_established();
  expect_mirrored(net.a, net.b);
  EXPECT_FALSE(net.a.all<IkeSaUp>()[0].peer_description.empty());
  EXPECT_FALSE(net.b.all<IkeSaUp>()[0].peer_description.empty());
}

TEST_P(CertificateTest, UntrustedCertificateFails) {
  static const TestPki trusted(KeyKind::EcdsaP256), stranger(KeyKind::EcdsaP256);
  use_certificates(ends, trusted);
  ends.a->local_credentials = stranger.leaf("a.example");
  connect();
  ASSERT_EQ(net.b.count<IkeSaDown>(), 1u);
  EXPECT_TRUE(contains(net.b.down_reasons()[0], "AUTHENTICATION_FAILED"));
  EXPECT_TRUE(contains(net.a.down_reasons().at(0), "AUTHENTICATION_FAILED"));
}

INSTANTIATE_TEST_SUITE_P(Keys, CertificateTest,
                         ::testing::Values(KeyKind::Rsa2048, KeyKind::EcdsaP256, KeyKind::EcdsaP384));

TEST_F(EngineTest, ExportedKeyingMaterialAgrees) {
  ends.a->allow_export = true;
  ends.b->allow_export = true;
  connect();
  auto from_a = net.a.engine->export_keying_material(a_sa, "app", 32);
  auto from_b = net.b.engine->export_keying_material(b_sa(), "app", 32);
  ASSERT_TRUE(from_a && from_b);
  EXPECT_EQ(from_a->size(), 32u);
  EXPECT_TRUE(*from_a == *from_b);
  EXPECT_FALSE(*from_a == *net.a.engine->export_keying_material(a_sa, "other", 32));
}

TEST_F(EngineTest, ExportIsRefusedWithoutPermission) {
  connect();
  EXPECT_FALSE(net.a.engine->export_keying_material(a_sa, "app", 32));
  EXPECT_FALSE(net.a.engine->export_keying_material(999, "app", 32));
}

TEST_F(EngineTest, InitialContactReplacesTheOldIkeSa) {
  connect();
  expect_established();
  // a restarts and connects again: b drops the SA a no longer has.
  net.a.engine.reset();
  net.a.events.clear();
  net.a.create();
  connect();
  EXPECT_EQ(net.b.count<IkeSaUp>(), 2u);
  ASSERT_EQ(net.b.count<IkeSaDown>(), 1u);
  EXPECT_TRUE(contains(net.b.down_reasons()[0], "INITIAL_CONTACT"));
  EXPECT_EQ(net.b.engine->sas().size(), 1u);
  expect_mirrored(net.a, net.b);
}

TEST_F(EngineTest, CommandsOnUnknownSasAreRefused) {
  start();
  EXPECT_FALSE(net.a.engine->rekey_child(7, 1, net.now));
  EXPECT_FALSE(net.a.engine->delete_child(7, 1, net.now));
  EXPECT_FALSE(net.a.engine->rekey_ike(7, net.now));
  EXPECT_FALSE(net.a.engine->close(7, net.now));
  EXPECT_FALSE(net.a.engine->check_liveness(7, net.now));
  EXPECT_FALSE(net.a.engine->update_local_address(7, net.a.endpoint(), net.now));
  EXPECT_FALSE(net.a.engine->sa(7));
  EXPECT_FALSE(net.a.engine->next_deadline());
}

}  // namespace
}  // namespace tapsec::ikev2::test
