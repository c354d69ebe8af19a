// The life of an established IKE SA: Child and IKE SA rekeys from either
// side, rekey collisions, deletes, lost and duplicated messages, liveness
// checks and a peer that stops answering.
#include <gtest/gtest-spi.h>
#include <gtest/gtest.h>

#include <algorithm>

#include "tests/unit/ikev2/engine/engine_fixture.h"

namespace tapsec::ikev2::test {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

// Every rekey installs the new pair before it removes the old one.
void expect_make_before_break(const Node& node) {
  std::map<ChildSaId, std::size_t> installed;
  for (const Event& e : node.events) {
    if (const auto* install = std::get_if<ChildSaInstall>(&e)) ++installed[install->child];
    if (const auto* remove = std::get_if<ChildSaRemove>(&e); remove && !remove->child_closed) {
      EXPECT_GE(installed[remove->child], 2u) << node.name << " removed a pair of child " << remove->child
                                              << " before installing its successor";
    }
  }
}

class LifecycleTest : public EngineTest {
 protected:
  void SetUp() override {
    connect();
    expect_established();
  }
  std::size_t datagrams_between() const { return net.a.sent.size() + net.b.sent.size(); }
};

TEST_F(LifecycleTest, ChildRekeyFromInitiator) {
  const auto before = net.a.installed().begin()->second;
  ASSERT_TRUE(net.a.engine->rekey_child(a_sa, a_child(), net.now));
  EXPECT_FALSE(net.a.engine->rekey_child(a_sa, a_child(), net.now));  // one at a time
  net.run();
  expect_mirrored(net.a, net.b);
  ASSERT_EQ(net.a.installed().size(), 1u);
  const auto after = net.a.installed().begin()->second;
  EXPECT_NE(after.inbound_spi, before.inbound_spi);
  EXPECT_TRUE(after.is_rekey);
  EXPECT_EQ(after.epoch, 1u);
  EXPECT_EQ(after.child, before.child);
  EXPECT_FALSE(after.inbound_encryption == before.inbound_encryption);
  expect_make_before_break(net.a);
  expect_make_before_break(net.b);
  for (const Node* n : {&net.a, &net.b}) {
    ASSERT_EQ(n->count<ChildSaRemove>(), 1u);
    EXPECT_FALSE(n->all<ChildSaRemove>()[0].child_closed);
  }
  auto state = net.a.engine->sa(a_sa);
  EXPECT_EQ(state->children.size(), 1u);
  EXPECT_EQ(state->children[0].epoch, 1u);
  EXPECT_FALSE(state->children[0].rekeying);
  EXPECT_EQ(net.b.engine->sa(b_sa())->children.size(), 1u);
}

TEST_F(LifecycleTest, ChildRekeyFromResponder) {
  ASSERT_TRUE(net.b.engine->rekey_child(b_sa(), b_child(), net.now));
  net.run();
  expect_mirrored(net.a, net.b);
  EXPECT_EQ(net.a.installed().size(), 1u);
  EXPECT_EQ(net.a.installed().begin()->second.epoch, 1u);
  expect_make_before_break(net.a);
  expect_make_before_break(net.b);
  // And again from the other side on the new pair.
  ASSERT_TRUE(net.a.engine->rekey_child(a_sa, a_child(), net.now));
  net.run();
  expect_mirrored(net.a, net.b);
  EXPECT_EQ(net.b.installed().begin()->second.epoch, 2u);
}

// The rekey's responder sends with the new pair only once the initiator
// has deleted the old one: before that the initiator may not read it yet.
TEST_F(LifecycleTest, ChildRekeyResponderHoldsItsOutboundSaUntilTheOldPairIsDeleted) {
  const std::uint32_t old_b_outbound = net.b.installed().begin()->second.outbound_spi;
  ASSERT_TRUE(net.a.engine->rekey_child(a_sa, a_child(), net.now));
  net.collect();
  ASSERT_EQ(net.wire.size(), 1u);
  net.step();  // b answers the CREATE_CHILD_SA request
  net.collect();
  auto installs = net.b.all<ChildSaInstall>();
  ASSERT_EQ(installs.size(), 2u);
  const ChildSaInstall answered = installs.back();
  EXPECT_EQ(answered.part, InstallPart::Inbound);
  EXPECT_TRUE(answered.is_rekey);
  EXPECT_EQ(answered.outbound_encryption.size(), 0u);
  EXPECT_EQ(answered.inbound_encryption.size(), answered.suite.encryption_key_size());
  EXPECT_EQ(net.b.sending().begin()->second, old_b_outbound);

  net.step();  // a installs both SAs and sends the Delete of the old pair
  net.collect();
  EXPECT_EQ(net.b.sending().begin()->second, old_b_outbound);
  net.step();  // b receives the Delete
  net.collect();
  installs = net.b.all<ChildSaInstall>();
  ASSERT_EQ(installs.size(), 3u);
  const ChildSaInstall released = installs.back();
  EXPECT_EQ(released.part, InstallPart::Outbound);
  EXPECT_EQ(released.outbound_spi, answered.outbound_spi);
  EXPECT_EQ(released.inbound_encryption.size(), 0u);
  EXPECT_EQ(released.outbound_encryption.size(), answered.suite.encryption_key_size());
  EXPECT_EQ(net.b.sending().begin()->second, answered.outbound_spi);
  // The outbound SA went in before the old pair went out.
  ASSERT_TRUE(std::holds_alternative<ChildSaRemove>(net.b.events.back()));
  EXPECT_EQ(std::get<ChildSaRemove>(net.b.events.back()).outbound_spi, old_b_outbound);
  net.run();
  expect_mirrored(net.a, net.b);
  EXPECT_EQ(net.b.installed().size(), 1u);
}

// The ends' view of the check itself: a responder that sent with its new
// pair at once would be caught by the harness.
TEST(TrafficCheck, CatchesAnEndSendingWithAnSaThePeerCannotRead) {
  Network net;
  auto pair = [](std::uint32_t in, std::uint32_t out, InstallPart part) {
    ChildSaInstall install;
    install.child = 1;
    install.inbound_spi = in;
    install.outbound_spi = out;
    install.part = part;
    return install;
  };
  net.a.apply(pair(0xa1, 0xb1, InstallPart::Both));
  net.b.apply(pair(0xb1, 0xa1, InstallPart::Both));
  net.check_traffic_flows();
  net.b.apply(pair(0xb2, 0xa2, InstallPart::Both));  // b sends with 0xa2; a has no such SA yet
  EXPECT_NONFATAL_FAILURE(net.check_traffic_flows(), "b sends child 1's traffic with SPI 162, which a cannot read");
}

TEST_F(LifecycleTest, ChildRekeyWithPfs) {
  ends.a->children[0].rekey_group = group::kEcp256;
  // The config object is shared with the engine: start over with PFS on.
  net = Network();
  connect();
  ASSERT_TRUE(net.a.engine->rekey_child(a_sa, a_child(), net.now));
  net.run();
  expect_mirrored(net.a, net.b);
  EXPECT_EQ(net.a.installed().begin()->second.epoch, 1u);
}

TEST_F(LifecycleTest, ChildRekeysOnItsOwnBeforeTheSoftLifetime) {
  // Default: rekey after 1 h (jittered earlier), hard limit 1 h 6 min.
  net.elapse(seconds(3600));
  expect_mirrored(net.a, net.b);
  ASSERT_EQ(net.a.installed().size(), 1u);
  EXPECT_GE(net.a.installed().begin()->second.epoch, 1u);
  EXPECT_EQ(net.a.count<IkeSaDown>() + net.b.count<IkeSaDown>(), 0u);
  expect_make_before_break(net.a);
  expect_make_before_break(net.b);
}

TEST_F(LifecycleTest, IkeRekeyFromInitiatorKeepsChildren) {
  const auto before_a = *net.a.engine->sa(a_sa);
  const auto children_before = net.a.installed();
  ASSERT_TRUE(net.a.engine->rekey_ike(a_sa, net.now));
  net.run();
  auto after_a = *net.a.engine->sa(a_sa);
  auto after_b = *net.b.engine->sa(b_sa());
  EXPECT_NE(after_a.initiator_spi, before_a.initiator_spi);
  EXPECT_EQ(after_a.initiator_spi, after_b.initiator_spi);
  EXPECT_EQ(after_a.responder_spi, after_b.responder_spi);
  EXPECT_EQ(after_a.epoch, 1u);
  EXPECT_EQ(after_b.epoch, 1u);
  EXPECT_EQ(after_a.state, "established");
  EXPECT_EQ(net.a.count<IkeSaUp>(), 2u);
  EXPECT_EQ(net.b.count<IkeSaUp>(), 2u);
  EXPECT_EQ(net.a.all<IkeSaUp>()[1].epoch, 1u);
  EXPECT_EQ(net.a.count<ChildSaRemove>() + net.b.count<ChildSaRemove>(), 0u);
  EXPECT_EQ(net.a.installed().size(), children_before.size());
  // The new IKE SA carries exchanges: rekey the child over it.
  ASSERT_TRUE(net.a.engine->rekey_child(a_sa, a_child(), net.now));
  net.run();
  expect_mirrored(net.a, net.b);
  EXPECT_EQ(net.a.installed().begin()->second.epoch, 1u);
  EXPECT_EQ(net.a.count<IkeSaDown>() + net.b.count<IkeSaDown>(), 0u);
}

TEST_F(LifecycleTest, IkeRekeyFromResponder) {
  ASSERT_TRUE(net.b.engine->rekey_ike(b_sa(), net.now));
  net.run();
  auto after_a = *net.a.engine->sa(a_sa);
  auto after_b = *net.b.engine->sa(b_sa());
  EXPECT_EQ(after_a.initiator_spi, after_b.initiator_spi);
  EXPECT_EQ(after_a.epoch, 1u);
  EXPECT_FALSE(after_a.initiator);  // the rekey's initiator is the new IKE SA's initiator
  EXPECT_TRUE(after_b.initiator);
  ASSERT_TRUE(net.a.engine->delete_child(a_sa, a_child(), net.now));
  net.run();
  EXPECT_TRUE(net.a.installed().empty());
  EXPECT_TRUE(net.b.installed().empty());
  // A second IKE rekey, from a this time.
  ASSERT_TRUE(net.a.engine->rekey_ike(a_sa, net.now));
  net.run();
  EXPECT_EQ(net.a.engine->sa(a_sa)->epoch, 2u);
  EXPECT_EQ(net.b.engine->sa(b_sa())->epoch, 2u);
  EXPECT_EQ(net.a.count<IkeSaDown>() + net.b.count<IkeSaDown>(), 0u);
}

TEST_F(LifecycleTest, IkeSaRekeysOnItsOwn) {
  ends.a->ike_lifetime.rekey_seconds = 600;
  net = Network();
  connect();
  net.elapse(seconds(601));
  EXPECT_GE(net.a.engine->sa(a_sa)->epoch, 1u);
  EXPECT_EQ(net.a.engine->sa(a_sa)->initiator_spi, net.b.engine->sa(b_sa())->initiator_spi);
  EXPECT_EQ(net.a.count<IkeSaDown>() + net.b.count<IkeSaDown>(), 0u);
}

// The last pair an end announced as its child's current one is the pair
// its engine holds as current (what the agent lists and moves).
void expect_current_announced(const Node& node) {
  const auto sas = node.engine->sas();
  ASSERT_EQ(sas.size(), 1u);
  const IkeSaState& state = sas.front();
  ASSERT_EQ(state.children.size(), 1u);
  std::uint32_t announced = 0;
  for (const auto& install : node.all<ChildSaInstall>())
    if (install.part != InstallPart::Outbound && install.current) announced = install.inbound_spi;
  EXPECT_EQ(announced, state.children[0].inbound_spi) << node.name;
}

// Both ends rekey the same child at once: one new pair survives on both.
void check_single_survivor(const Node& a, const Node& b) {
  expect_mirrored(a, b);
  expect_current_announced(a);
  expect_current_announced(b);
  ASSERT_EQ(a.installed().size(), 1u);
  EXPECT_EQ(a.installed().begin()->second.epoch, 1u);
  EXPECT_EQ(a.pairs_installed(), 3u);  // first pair, two new ones
  EXPECT_EQ(b.pairs_installed(), 3u);
  expect_make_before_break(a);
  expect_make_before_break(b);
  for (const auto& remove : a.all<ChildSaRemove>()) EXPECT_FALSE(remove.child_closed);
  for (const auto& remove : b.all<ChildSaRemove>()) EXPECT_FALSE(remove.child_closed);
}

TEST_F(LifecycleTest, ChildRekeyCollision) {
  ASSERT_TRUE(net.a.engine->rekey_child(a_sa, a_child(), net.now));
  ASSERT_TRUE(net.b.engine->rekey_child(b_sa(), b_child(), net.now));
  net.run();
  check_single_survivor(net.a, net.b);
  EXPECT_EQ(net.a.engine->sa(a_sa)->children.size(), 1u);
  EXPECT_EQ(net.b.engine->sa(b_sa())->children.size(), 1u);
  EXPECT_FALSE(net.a.engine->sa(a_sa)->children[0].rekeying);
  // Nothing left behind: the next rekey is an ordinary one.
  ASSERT_TRUE(net.b.engine->rekey_child(b_sa(), b_child(), net.now));
  net.run();
  expect_mirrored(net.a, net.b);
  EXPECT_EQ(net.a.installed().size(), 1u);
}

TEST_F(LifecycleTest, ChildRekeyCollisionManyTimes) {
  // Nonces are random: repeat so both "a wins" and "b wins" happen.
  for (int round = 0; round < 12; ++round) {
    ASSERT_TRUE(net.a.engine->rekey_child(a_sa, a_child(), net.now));
    ASSERT_TRUE(net.b.engine->rekey_child(b_sa(), b_child(), net.now));
    net.run();
    expect_mirrored(net.a, net.b);
    ASSERT_EQ(net.a.installed().size(), 1u) << "round " << round;
    expect_current_announced(net.a);
    expect_current_announced(net.b);
    ASSERT_EQ(net.a.engine->sa(a_sa)->children.size(), 1u);
  }
  EXPECT_EQ(net.a.count<IkeSaDown>() + net.b.count<IkeSaDown>(), 0u);
}

TEST_F(LifecycleTest, ChildRekeyCollisionWhereOneResponseOvertakes) {
  ASSERT_TRUE(net.a.engine->rekey_child(a_sa, a_child(), net.now));
  ASSERT_TRUE(net.b.engine->rekey_child(b_sa(), b_child(), net.now));
  net.collect();
  ASSERT_EQ(net.wire.size(), 2u);  // a's request, b's request
  net.step();                      // b answers a (and sees the collision)
  net.collect();
  ASSERT_EQ(net.wire.size(), 2u);  // b's request, b's response to a
  std::swap(net.wire[0], net.wire[1]);
  net.run();  // a completes first, then b's request meets a pair being deleted
  expect_mirrored(net.a, net.b);
  expect_current_announced(net.a);
  expect_current_announced(net.b);
  ASSERT_EQ(net.a.installed().size(), 1u);
  EXPECT_EQ(net.a.engine->sa(a_sa)->children.size(), 1u);
  EXPECT_EQ(net.b.engine->sa(b_sa())->children.size(), 1u);
  expect_make_before_break(net.a);
  expect_make_before_break(net.b);
}

TEST_F(LifecycleTest, IkeRekeyCollision) {
  for (int round = 0; round < 8; ++round) {
    ASSERT_TRUE(net.a.engine->rekey_ike(a_sa, net.now));
    ASSERT_TRUE(net.b.engine->rekey_ike(b_sa(), net.now));
    net.run();
    auto state_a = *net.a.engine->sa(a_sa);
    auto state_b = *net.b.engine->sa(b_sa());
    ASSERT_EQ(state_a.initiator_spi, state_b.initiator_spi) << "round " << round;
    ASSERT_EQ(state_a.responder_spi, state_b.responder_spi);
    EXPECT_EQ(state_a.epoch, round + 1u);
    EXPECT_EQ(state_b.epoch, round + 1u);
    EXPECT_EQ(state_a.state, "established");
    EXPECT_EQ(state_a.children.size(), 1u);
  }
  EXPECT_EQ(net.a.count<ChildSaRemove>() + net.b.count<ChildSaRemove>(), 0u);
  // The survivor works: DPD and a child rekey over it.
  ASSERT_TRUE(net.a.engine->check_liveness(a_sa, net.now));
  ASSERT_TRUE(net.b.engine->rekey_child(b_sa(), b_child(), net.now));
  net.run();
  expect_mirrored(net.a, net.b);
  // Old and losing IKE SAs are gone after their grace time; no one reports an error.
  net.elapse(seconds(200));
  EXPECT_EQ(net.a.count<IkeSaDown>() + net.b.count<IkeSaDown>(), 0u);
  EXPECT_EQ(net.a.engine->sas().size(), 1u);
}

TEST_F(LifecycleTest, IkeRekeyCollisionWhereOneResponseOvertakes) {
  ASSERT_TRUE(net.a.engine->rekey_ike(a_sa, net.now));
  ASSERT_TRUE(net.b.engine->rekey_ike(b_sa(), net.now));
  net.collect();
  net.step();
  net.collect();
  ASSERT_EQ(net.wire.size(), 2u);
  std::swap(net.wire[0], net.wire[1]);
  net.run();
  auto state_a = *net.a.engine->sa(a_sa);
  auto state_b = *net.b.engine->sa(b_sa());
  EXPECT_EQ(state_a.initiator_spi, state_b.initiator_spi);
  EXPECT_EQ(state_a.epoch, 1u);
  EXPECT_EQ(state_b.epoch, 1u);
  ASSERT_TRUE(net.a.engine->rekey_child(a_sa, a_child(), net.now));
  net.run();
  expect_mirrored(net.a, net.b);
  EXPECT_EQ(net.a.count<IkeSaDown>() + net.b.count<IkeSaDown>(), 0u);
}

TEST_F(LifecycleTest, ChildRekeyMeetsIkeRekey) {
  ASSERT_TRUE(net.a.engine->rekey_ike(a_sa, net.now));
  ASSERT_TRUE(net.b.engine->rekey_child(b_sa(), b_child(), net.now));
  net.run();
  net.elapse(seconds(10));  // TEMPORARY_FAILURE retries
  expect_mirrored(net.a, net.b);
  EXPECT_EQ(net.a.installed().size(), 1u);
  EXPECT_EQ(net.a.engine->sa(a_sa)->epoch, 1u);
  EXPECT_EQ(net.a.count<IkeSaDown>() + net.b.count<IkeSaDown>(), 0u);
}

TEST_F(LifecycleTest, RekeyMeetsDelete) {
  ASSERT_TRUE(net.a.engine->rekey_child(a_sa, a_child(), net.now));
  ASSERT_TRUE(net.b.engine->delete_child(b_sa(), b_child(), net.now));
  net.run();
  EXPECT_TRUE(net.a.installed().empty());
  EXPECT_TRUE(net.b.installed().empty());
  EXPECT_TRUE(net.a.engine->sa(a_sa)->children.empty());
  EXPECT_TRUE(net.b.engine->sa(b_sa())->children.empty());
  EXPECT_EQ(net.a.count<IkeSaDown>() + net.b.count<IkeSaDown>(), 0u);
}

TEST_F(LifecycleTest, RekeyArrivingAfterTheChildIsGone) {
  ASSERT_TRUE(net.a.engine->rekey_child(a_sa, a_child(), net.now));
  ASSERT_TRUE(net.b.engine->delete_child(b_sa(), b_child(), net.now));
  net.collect();
  ASSERT_EQ(net.wire.size(), 2u);
  // Hold a's rekey back until b's delete is complete: b answers CHILD_SA_NOT_FOUND.
  InFlight held = net.wire.front();
  net.wire.pop_front();
  net.run();
  net.wire.push_back(held);
  net.run();
  EXPECT_TRUE(net.a.installed().empty());
  EXPECT_TRUE(net.b.installed().empty());
  EXPECT_TRUE(net.a.engine->sa(a_sa)->children.empty());
  EXPECT_EQ(net.a.count<IkeSaDown>() + net.b.count<IkeSaDown>(), 0u);
}

TEST_F(LifecycleTest, DeleteChild) {
  ASSERT_TRUE(net.a.engine->delete_child(a_sa, a_child(), net.now));
  net.run();
  for (const Node* n : {&net.a, &net.b}) {
    ASSERT_EQ(n->count<ChildSaRemove>(), 1u);
    EXPECT_TRUE(n->all<ChildSaRemove>()[0].child_closed);
    EXPECT_TRUE(n->installed().empty());
  }
  EXPECT_TRUE(net.a.engine->sa(a_sa)->children.empty());
  EXPECT_TRUE(net.b.engine->sa(b_sa())->children.empty());
  EXPECT_EQ(net.a.count<IkeSaDown>(), 0u);
}

TEST_F(LifecycleTest, BothEndsDeleteTheSameChild) {
  ASSERT_TRUE(net.a.engine->delete_child(a_sa, a_child(), net.now));
  ASSERT_TRUE(net.b.engine->delete_child(b_sa(), b_child(), net.now));
  net.run();
  EXPECT_EQ(net.a.count<ChildSaRemove>(), 1u);
  EXPECT_EQ(net.b.count<ChildSaRemove>(), 1u);
  EXPECT_TRUE(net.a.engine->sa(a_sa)->children.empty());
  EXPECT_TRUE(net.b.engine->sa(b_sa())->children.empty());
}

TEST_F(LifecycleTest, CloseIkeSa) {
  ASSERT_TRUE(net.a.engine->close(a_sa, net.now));
  EXPECT_FALSE(net.a.engine->close(a_sa, net.now));
  EXPECT_EQ(net.a.engine->sa(a_sa)->state, "deleting");
  net.run();
  ASSERT_EQ(net.a.count<IkeSaDown>(), 1u);
  ASSERT_EQ(net.b.count<IkeSaDown>(), 1u);
  EXPECT_FALSE(net.a.all<IkeSaDown>()[0].failed);
  EXPECT_FALSE(net.b.all<IkeSaDown>()[0].failed);
  EXPECT_EQ(net.b.down_reasons()[0], "deleted by peer");
  EXPECT_TRUE(net.a.installed().empty());
  EXPECT_TRUE(net.b.installed().empty());
  EXPECT_TRUE(net.a.all<ChildSaRemove>()[0].child_closed);
  EXPECT_TRUE(net.a.engine->sas().empty());
  EXPECT_TRUE(net.b.engine->sas().empty());
}

TEST_F(LifecycleTest, LostRequestIsRetransmitted) {
  int lost = 0;
  net.drop = [&](const InFlight& p) { return p.from == 0 && lost++ == 0; };  // a's next datagram
  ASSERT_TRUE(net.a.engine->rekey_child(a_sa, a_child(), net.now));
  net.run();
  EXPECT_EQ(net.a.installed().begin()->second.epoch, 0u);  // nothing yet
  net.elapse(milliseconds(1000));
  expect_mirrored(net.a, net.b);
  EXPECT_EQ(net.a.installed().begin()->second.epoch, 1u);
  EXPECT_EQ(net.a.engine->counters().retransmitted, 1u);
}

TEST_F(LifecycleTest, LostResponseIsAnsweredFromTheCache) {
  int lost = 0;
  net.drop = [&](const InFlight& p) { return p.from == 1 && lost++ == 0; };  // b's response
  ASSERT_TRUE(net.a.engine->rekey_child(a_sa, a_child(), net.now));
  net.run();
  const std::size_t installs_b = net.b.pairs_installed();
  net.elapse(milliseconds(1000));
  EXPECT_EQ(net.b.pairs_installed(), installs_b);  // the retransmit was not processed again
  EXPECT_EQ(net.b.engine->counters().retransmitted, 1u);
  expect_mirrored(net.a, net.b);
  EXPECT_EQ(net.a.installed().size(), 1u);
}

TEST_F(LifecycleTest, LostIkeAuthResponse) {
  net = Network();
  int lost = 0;
  net.drop = [&](const InFlight& p) { return p.from == 1 && ++lost == 2; };  // b's IKE_AUTH response
  connect();
  EXPECT_EQ(net.a.count<IkeSaUp>(), 0u);
  net.elapse(milliseconds(1000));
  expect_established();
  EXPECT_EQ(net.b.count<ChildSaInstall>(), 1u);
  expect_mirrored(net.a, net.b);
}

TEST_F(LifecycleTest, DuplicatedDatagrams) {
  net.copies = [](const InFlight&) { return 2; };
  ASSERT_TRUE(net.a.engine->rekey_child(a_sa, a_child(), net.now));
  net.run();
  ASSERT_TRUE(net.b.engine->rekey_ike(b_sa(), net.now));
  net.run();
  ASSERT_TRUE(net.a.engine->delete_child(a_sa, a_child(), net.now));
  net.run();
  EXPECT_TRUE(net.a.installed().empty());
  EXPECT_TRUE(net.b.installed().empty());
  EXPECT_EQ(net.a.count<IkeSaDown>() + net.b.count<IkeSaDown>(), 0u);
  EXPECT_GT(net.a.engine->counters().dropped_malformed + net.b.engine->counters().retransmitted, 0u);
}

TEST_F(LifecycleTest, DuplicatedDatagramsDuringSetup) {
  net = Network();
  net.copies = [](const InFlight&) { return 2; };
  connect();
  expect_established();
  EXPECT_EQ(net.a.count<ChildSaInstall>(), 1u);
  EXPECT_EQ(net.b.count<ChildSaInstall>(), 1u);
  expect_mirrored(net.a, net.b);
}

TEST_F(LifecycleTest, PeerNotResponding) {
  net.drop = [](const InFlight&) { return true; };
  ASSERT_TRUE(net.a.engine->check_liveness(a_sa, net.now));
  net.run();
  // 1 + 1.8 + 3.24 + 5.83 + 10.5 + 18.9 s with the default settings.
  net.elapse(seconds(40));
  EXPECT_EQ(net.a.count<IkeSaDown>(), 0u);
  net.elapse(seconds(2));
  ASSERT_EQ(net.a.count<IkeSaDown>(), 1u);
  const IkeSaDown down = net.a.all<IkeSaDown>()[0];
  EXPECT_TRUE(down.failed);
  EXPECT_EQ(down.reason, "peer not responding");
  ASSERT_EQ(net.a.count<ChildSaRemove>(), 1u);
  EXPECT_TRUE(net.a.all<ChildSaRemove>()[0].child_closed);
  EXPECT_EQ(net.a.engine->counters().retransmitted, 5u);
  EXPECT_TRUE(net.a.engine->sas().empty());
}

TEST_F(LifecycleTest, InitiatorGivesUpOnASilentResponder) {
  net = Network();
  net.drop = [](const InFlight& p) { return p.from == 1; };
  ends.a->retransmit = RetransmitSettings{milliseconds(500), 2.0, 2};
  connect();
  net.elapse(seconds(4));  // 0.5 + 1 + 2
  ASSERT_EQ(net.a.count<IkeSaDown>(), 1u);
  EXPECT_EQ(net.a.down_reasons()[0], "peer not responding");
  EXPECT_EQ(net.a.sent.size(), 3u);
  // b's half-open SA expires on its own.
  EXPECT_EQ(net.b.engine->counters().half_open, 1u);
  net.elapse(seconds(30));
  EXPECT_EQ(net.b.engine->counters().half_open, 0u);
  EXPECT_TRUE(net.b.engine->sas().empty());
}

TEST_F(LifecycleTest, DeadPeerDetectionWhenIdle) {
  const std::size_t sent = net.a.sent.size() + net.b.sent.size();
  net.elapse(seconds(31));
  EXPECT_GT(net.a.sent.size() + net.b.sent.size(), sent);  // an empty INFORMATIONAL and its answer
  EXPECT_EQ(net.a.count<IkeSaDown>() + net.b.count<IkeSaDown>(), 0u);
  // Now b disappears.
  net.drop = [](const InFlight& p) { return p.from == 1; };
  net.elapse(seconds(30 + 42));
  ASSERT_EQ(net.a.count<IkeSaDown>(), 1u);
  EXPECT_EQ(net.a.down_reasons()[0], "peer not responding");
}

TEST_F(LifecycleTest, ResponseThatMatchesNoRequestIsDropped) {
  ASSERT_TRUE(net.a.engine->check_liveness(a_sa, net.now));
  net.collect();
  net.step();  // b answers
  net.collect();
  ASSERT_EQ(net.wire.size(), 1u);
  const InFlight response = net.wire.front();
  net.run();
  const auto dropped = net.a.engine->counters().dropped_malformed;
  net.a.engine->receive(response.destination, response.source, response.data, net.now);
  EXPECT_EQ(net.a.engine->counters().dropped_malformed, dropped + 1);
}

}  // namespace
}  // namespace tapsec::ikev2::test
