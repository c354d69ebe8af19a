// The path between the engines: NAT traversal, forced UDP encapsulation,
// MOBIKE address updates, RFC 7383 fragmentation, and hostile datagrams.
#include <gtest/gtest.h>

#include <random>

#include "tests/unit/ikev2/engine/engine_fixture.h"

namespace tapsec::ikev2::test {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

TEST_F(EngineTest, NatDetectedMovesToPort4500) {
  net.a.address = ip("10.0.0.1");  // behind the NAT
  net.nat = true;
  connect();
  expect_established();
  const IkeSaUp up_a = net.a.all<IkeSaUp>()[0], up_b = net.b.all<IkeSaUp>()[0];
  EXPECT_TRUE(up_a.nat_detected_local);
  EXPECT_FALSE(up_a.nat_detected_remote);
  EXPECT_TRUE(up_b.nat_detected_remote);
  EXPECT_FALSE(up_b.nat_detected_local);
  ASSERT_EQ(net.a.sent.size(), 2u);
  EXPECT_EQ(net.a.sent[0].local.port, 500);
  EXPECT_EQ(net.a.sent[0].remote.port, 500);
  EXPECT_EQ(net.a.sent[1].local.port, 4500);
  EXPECT_EQ(net.a.sent[1].remote.port, 4500);
  EXPECT_EQ(net.b.sent[1].local.port, 4500);  // b answers where a came from
  EXPECT_EQ(net.b.sent[1].remote.address, net.nat_public);
  expect_mirrored(net.a, net.b);
  const ChildSaInstall on_a = net.a.all<ChildSaInstall>()[0], on_b = net.b.all<ChildSaInstall>()[0];
  EXPECT_TRUE(on_a.udp_encapsulation);
  EXPECT_TRUE(on_b.udp_encapsulation);
  EXPECT_EQ(on_a.local.port, 4500);
  EXPECT_EQ(on_a.remote, (Endpoint{net.b.address, 4500}));
  EXPECT_EQ(on_b.remote.address, net.nat_public);
  EXPECT_EQ(on_b.remote, net.b.sent[1].remote);
  // Exchanges keep working through the NAT.
  ASSERT_TRUE(net.b.engine->rekey_child(b_sa(), b_child(), net.now));
  net.run();
  expect_mirrored(net.a, net.b);
  EXPECT_EQ(net.a.installed().size(), 1u);
}

TEST_F(EngineTest, NatMappingChangeIsFollowed) {
  net.a.address = ip("10.0.0.1");
  net.nat = true;
  ends.a->mobike = false;  // without MOBIKE the responder follows the mapping
  connect();
  expect_established();
  // The NAT forgets its mappings; a's next request comes from a new port.
  net.nat_out.clear();
  net.nat_in.clear();
  ASSERT_TRUE(net.a.engine->check_liveness(a_sa, net.now));
  net.run();
  ASSERT_EQ(net.b.count<PathChange>(), 1u);
  const PathChange change = net.b.all<PathChange>()[0];
  EXPECT_NE(change.old_remote, change.new_remote);
  EXPECT_EQ(change.new_remote.address, net.nat_public);
  EXPECT_TRUE(change.udp_encapsulation);
  EXPECT_EQ(net.a.count<IkeSaDown>(), 0u);
}

TEST_F(EngineTest, ForcedUdpEncapsulationWithoutNat) {
  ends.a->force_udp_encapsulation = true;
  connect();
  expect_established();
  EXPECT_TRUE(net.b.all<IkeSaUp>()[0].nat_detected_remote);  // the faked NAT_DETECTION_SOURCE_IP
  EXPECT_EQ(net.a.sent[1].local.port, 4500);
  EXPECT_TRUE(net.a.all<ChildSaInstall>()[0].udp_encapsulation);
  EXPECT_TRUE(net.b.all<ChildSaInstall>()[0].udp_encapsulation);
  expect_mirrored(net.a, net.b);
}

TEST_F(EngineTest, MobikeAddressUpdate) {
  connect();
  expect_established();
  ASSERT_TRUE(net.a.all<IkeSaUp>()[0].mobike);
  const Endpoint old_a = net.a.endpoint();
  net.a.address = ip("192.0.2.11");  // a's interface got a new address
  ASSERT_TRUE(net.a.engine->update_local_address(a_sa, net.a.endpoint(), net.now));
  net.run();
  ASSERT_EQ(net.a.count<PathChange>(), 1u);
  ASSERT_EQ(net.b.count<PathChange>(), 1u);
  const PathChange on_a = net.a.all<PathChange>()[0], on_b = net.b.all<PathChange>()[0];
  EXPECT_EQ(on_a.old_local, old_a);
  EXPECT_EQ(on_a.new_local, net.a.endpoint());
  EXPECT_EQ(on_b.old_remote, old_a);
  EXPECT_EQ(on_b.new_remote, net.a.endpoint());
  EXPECT_FALSE(on_b.udp_encapsulation);
  EXPECT_EQ(net.b.engine->sa(b_sa())->remote, net.a.endpoint());
  // Later exchanges use the new path and new installs carry it.
  ASSERT_TRUE(net.b.engine->rekey_child(b_sa(), b_child(), net.now));
  net.run();
  expect_mirrored(net.a, net.b);
  EXPECT_EQ(net.b.installed().begin()->second.remote, net.a.endpoint());
  EXPECT_EQ(net.a.installed().begin()->second.local, net.a.endpoint());
}

TEST_F(EngineTest, MobikeNeedsBothEnds) {
  ends.b->mobike = false;
  connect();
  expect_established();
  EXPECT_FALSE(net.a.all<IkeSaUp>()[0].mobike);
  EXPECT_FALSE(net.a.engine->update_local_address(a_sa, Endpoint{ip("192.0.2.11"), 500}, net.now));
}

class FragmentationTest : public EngineTest {
 protected:
  // RSA-4096 chains (made once: key generation is slow).
  struct BigChains {
    TestPki pki{KeyKind::Rsa4096, KeyKind::Rsa4096};
    LocalCredentials a = pki.leaf("a.example"), b = pki.leaf("b.example");
  };
  static const BigChains& chains() {
    static const BigChains made;
    return made;
  }
  void SetUp() override {
    use_certificates(ends, chains().pki, &chains().a, &chains().b);
    ends.a->fragment_size = 576;
    ends.b->fragment_size = 576;
  }
};

TEST_F(FragmentationTest, LargeCertificateChainsAreFragmented) {
  connect();
  expect_established();
  expect_mirrored(net.a, net.b);
  EXPECT_GT(net.a.sent.size(), 4u);  // IKE_AUTH went in several fragments
  EXPECT_GT(net.b.sent.size(), 4u);
  for (const Node* n : {&net.a, &net.b})
    for (const SendDatagram& d : n->sent) EXPECT_LE(d.data.size(), 576u);
  // Later exchanges are small enough for one datagram.
  const std::size_t before = net.a.sent.size();
  ASSERT_TRUE(net.a.engine->check_liveness(a_sa, net.now));
  net.run();
  EXPECT_EQ(net.a.sent.size(), before + 1);
}

TEST_F(FragmentationTest, DuplicatedAndLostFragments) {
  int count = 0;
  net.copies = [](const InFlight&) { return 2; };
  net.drop = [&](const InFlight& p) { return p.from == 0 && ++count == 3; };  // one IKE_AUTH fragment
  connect();
  net.elapse(milliseconds(1000));  // its retransmit fills the gap
  expect_established();
  expect_mirrored(net.a, net.b);
  EXPECT_EQ(net.b.count<ChildSaInstall>(), 1u);
}

TEST_F(FragmentationTest, NotUsedUnlessBothEndsSupportIt) {
  ends.b->fragmentation = false;
  connect();
  expect_established();
  EXPECT_EQ(net.a.sent.size(), 2u);
  EXPECT_GT(net.a.sent[1].data.size(), 576u);
}

// ---- hostile input ----

TEST_F(EngineTest, GarbageIsDroppedAndCounted) {
  connect();
  expect_established();
  net.b.clear();
  IkeEngine& b = *net.b.engine;
  const Endpoint from{ip("203.0.113.9"), 500};
  b.receive(net.b.endpoint(), from, Bytes{}, net.now);
  b.receive(net.b.endpoint(), from, Bytes(3, 0xff), net.now);
  b.receive(net.b.endpoint(), from, Bytes(27, 0), net.now);
  Bytes random_header(28);
  for (std::size_t i = 0; i < random_header.size(); ++i) random_header[i] = static_cast<std::uint8_t>(i * 37 + 11);
  b.receive(net.b.endpoint(), from, random_header, net.now);
  net.collect();
  const auto counters = b.counters();
  EXPECT_GE(counters.dropped_malformed + counters.dropped_unknown_spi, 4u);
  EXPECT_GE(net.b.count<Dropped>(), 4u);
  EXPECT_TRUE(net.b.sent.empty());
}

TEST_F(EngineTest, TamperedProtectedMessageFailsIntegrity) {
  connect();
  ASSERT_TRUE(net.a.engine->check_liveness(a_sa, net.now));
  net.collect();
  ASSERT_EQ(net.wire.size(), 1u);
  net.wire.front().data.back() ^= 0x01;  // inside the ICV
  net.step();
  net.collect();
  EXPECT_EQ(net.b.engine->counters().dropped_authentication, 1u);
  EXPECT_EQ(net.b.count<Dropped>(), 1u);
  net.elapse(milliseconds(1000));  // the retransmit is intact
  EXPECT_EQ(net.a.count<IkeSaDown>(), 0u);
}

TEST_F(EngineTest, OnlyAnExactRepeatOfARequestIsAnsweredFromTheCache) {
  connect();
  ASSERT_TRUE(net.a.engine->check_liveness(a_sa, net.now));
  net.collect();
  ASSERT_EQ(net.wire.size(), 1u);
  const InFlight request = net.wire.front();
  net.run();
  const std::size_t sent = net.b.sent.size();
  Bytes forged = request.data;
  forged[forged.size() / 2] ^= 0x20;  // same SPIs and message ID, other content
  net.b.engine->receive(request.destination, request.source, forged, net.now);
  net.collect();
  EXPECT_EQ(net.b.sent.size(), sent);
  net.b.engine->receive(request.destination, request.source, request.data, net.now);
  net.collect();
  EXPECT_EQ(net.b.sent.size(), sent + 1);
  EXPECT_EQ(net.b.engine->counters().retransmitted, 1u);
}

TEST_F(EngineTest, UnknownSpiIsCounted) {
  connect();
  ASSERT_TRUE(net.a.engine->check_liveness(a_sa, net.now));
  net.collect();
  Bytes data = net.wire.front().data;
  data[9] ^= 0x55;  // responder SPI
  net.b.engine->receive(net.b.endpoint(), net.a.endpoint(), data, net.now);
  EXPECT_EQ(net.b.engine->counters().dropped_unknown_spi, 1u);
}

TEST_F(EngineTest, MutatedMessagesNeverCrash) {
  // Capture a whole conversation, then replay corrupted copies of it.
  std::vector<InFlight> captured;
  net.drop = [&](const InFlight& p) {
    captured.push_back(p);
    return false;
  };
  ends.a->children.push_back(child("dns", "10.1.0.0/16", "10.53.0.0/16"));
  ends.b->children.push_back(child("dns", "10.53.0.0/16", "10.1.0.0/16"));
  connect();
  ASSERT_TRUE(net.a.engine->rekey_child(a_sa, a_child(), net.now));
  ASSERT_TRUE(net.b.engine->rekey_ike(b_sa(), net.now));
  net.run();
  net.drop = nullptr;
  ASSERT_GT(captured.size(), 6u);

  std::mt19937 random(7);
  for (int round = 0; round < 3000; ++round) {
    const InFlight& original = captured[random() % captured.size()];
    Bytes data = original.data;
    switch (random() % 4) {
      case 0:  // flip bytes
        for (int i = 0; i < 1 + static_cast<int>(random() % 4); ++i) data[random() % data.size()] ^= 1 + random() % 255;
        break;
      case 1:  // truncate
        data.resize(random() % data.size());
        break;
      case 2:  // damage the header or a payload length (unprotected parts)
        data[random() % std::min<std::size_t>(data.size(), 40)] = static_cast<std::uint8_t>(random());
        break;
      case 3:  // append junk
        data.insert(data.end(), 1 + random() % 64, static_cast<std::uint8_t>(random()));
        break;
    }
    Node& to = original.from == 0 ? net.b : net.a;
    to.engine->receive(original.destination, original.source, data, net.now);
  }
  net.run();
  // Whatever was answered (retransmit caches, cookies, unprotected errors),
  // the SAs are intact and still work.
  EXPECT_EQ(net.a.count<IkeSaDown>() + net.b.count<IkeSaDown>(), 0u);
  ASSERT_TRUE(net.a.engine->rekey_child(a_sa, a_child(), net.now));
  net.run();
  net.elapse(seconds(5));
  expect_mirrored(net.a, net.b);
  EXPECT_EQ(net.a.installed().size(), 2u);
}

TEST_F(EngineTest, UnauthenticatedInitGetsOnlyUnprotectedInitErrors) {
  start();
  // An IKE_SA_INIT offering only something b does not accept.
  ends.a->ike_proposals = {proposal("aes128-sha256-modp2048", ProtocolId::Ike)};
  ends.b->ike_proposals = {proposal("aes256gcm16-prfsha384-x25519", ProtocolId::Ike)};
  net.a.engine->initiate(ends.a, net.a.endpoint(), net.b.endpoint(), net.now);
  net.run();
  ASSERT_EQ(net.b.sent.size(), 1u);
  auto decoded = decode_message(net.b.sent[0].data);
  ASSERT_TRUE(std::holds_alternative<Message>(decoded));
  const Message& answer = std::get<Message>(decoded);
  EXPECT_EQ(answer.header.exchange, ExchangeType::IkeSaInit);
  EXPECT_TRUE(answer.header.is_response());
  EXPECT_EQ(answer.header.responder_spi, 0u);
  ASSERT_EQ(answer.payloads.size(), 1u);
  ASSERT_NE(answer.notify(notify::kNoProposalChosen), nullptr);
  EXPECT_TRUE(net.b.engine->sas().empty());
}

TEST_F(EngineTest, EngineWithoutSelectorDoesNotRespond) {
  net.a.create();
  IkeEngine::Options options;
  options.allocate_spi = [](const Endpoint&, const Endpoint&) { return std::optional<std::uint32_t>(1); };
  net.b.engine = std::make_unique<IkeEngine>(options);
  a_sa = net.a.engine->initiate(ends.a, net.a.endpoint(), net.b.endpoint(), net.now);
  net.run();
  EXPECT_TRUE(net.b.sent.empty());
  EXPECT_EQ(net.b.count<Dropped>(), 1u);
}

TEST_F(EngineTest, NextDeadlineCoversRetransmitsAndRekeys) {
  start();
  EXPECT_FALSE(net.a.engine->next_deadline());
  a_sa = net.a.engine->initiate(ends.a, net.a.endpoint(), net.b.endpoint(), net.now);
  ASSERT_TRUE(net.a.engine->next_deadline());
  EXPECT_EQ(*net.a.engine->next_deadline(), net.now + milliseconds(1000));  // the first retransmit
  net.run();
  // Established: DPD after 30 s of silence is the earliest.
  ASSERT_TRUE(net.a.engine->next_deadline());
  EXPECT_EQ(*net.a.engine->next_deadline(), net.now + seconds(30));
  ends.a->dpd_interval = seconds(0);
  net = Network();
  connect();
  const TimePoint deadline = *net.a.engine->next_deadline();  // the child's rekey, jittered below 1 h
  EXPECT_LE(deadline, net.now + seconds(3600));
  EXPECT_GE(deadline, net.now + seconds(3600 - 31));
}

}  // namespace
}  // namespace tapsec::ikev2::test
