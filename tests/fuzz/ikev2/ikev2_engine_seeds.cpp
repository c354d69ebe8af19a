// Records the seed corpus of ikev2_engine_fuzz: for each scenario a peer
// engine ("a", the engine tests' config) runs against the target engine
// ("b", as engine_script.h builds it) over the engine tests' network, and
// everything the target is given becomes a script. Each scenario checks
// that its script replays to what the target did, and that the committed
// seed of that name (tests/fuzz/ikev2/engine-corpus) still does: when the
// engine changes what it sends, the seeds stop decrypting and this test
// says to record them again:
//
//   TAPSEC_ENGINE_SEEDS_OUT=tests/fuzz/ikev2/engine-corpus build/fuzz/tests/fuzz/ikev2/ikev2_engine_seeds
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>

#include "tests/fuzz/ikev2/deterministic_random.h"
#include "tests/fuzz/ikev2/engine_script.h"
#include "tests/unit/ikev2/engine/engine_harness.h"

#ifndef TAPSEC_ENGINE_CORPUS
#error "TAPSEC_ENGINE_CORPUS names the committed seed folder"
#endif

namespace tapsec::ikev2::fuzz {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using test::ip;

class SeedRecorder : public ::testing::Test {
 protected:
  static constexpr int kPeer = 0, kTarget = 1;
  test::Network net;
  test::Ends ends = test::psk_ends();
  std::uint8_t options = 0;
  std::unique_ptr<ScriptWriter> writer;

  // Creates both engines; call after changing `options` or the peer's config.
  void start() {
    writer = std::make_unique<ScriptWriter>(options);
    DeterministicRandom::restart(kTarget);
    net.b.engine = make_target(options);
    DeterministicRandom::use(kPeer);
    net.a.selector->config = ends.a;
    net.a.create();
    net.before_receive = [this](int node, const test::InFlight& packet) {
      DeterministicRandom::use(node);
      if (node == kTarget) writer->datagram(packet.destination, packet.source, packet.data, net.now);
    };
    net.before_timer = [this](int node) {
      DeterministicRandom::use(node);
      if (node == kTarget) writer->timer(net.now);
    };
  }
  IkeEngine& peer() {
    DeterministicRandom::use(kPeer);
    return *net.a.engine;
  }
  void target(Command command, std::uint8_t argument = 0) {
    DeterministicRandom::use(kTarget);
    writer->command(command, argument, net.now);
    execute(*net.b.engine, command, argument, net.now);
  }
  IkeSaId peer_sa() const { return net.a.engine->sas().at(0).id; }
  ChildSaId peer_child() const { return net.a.engine->sas().at(0).children.at(0).id; }
  void connect() {
    if (!writer) start();
    peer().initiate(ends.a, net.a.endpoint(), net.b.endpoint(), net.now);
    net.run();
    ASSERT_EQ(net.b.count<IkeSaUp>(), 1u) << ::testing::PrintToString(net.b.down_reasons());
  }

  Outcome recorded() const {
    Outcome outcome;
    for (const Event& event : net.b.events) outcome.count(event);
    outcome.sent = net.b.sent.size();
    return outcome;
  }
  static Outcome replay(std::span<const std::uint8_t> script) {
    DeterministicRandom::restart(kTarget);
    return run_script(script);
  }

  // Checks the script and the committed seed called `name` (or writes it).
  void finish(const std::string& name) {
    net.run();
    const Outcome expected = recorded();
    EXPECT_EQ(replay(writer->bytes()), expected) << name << ": the script does not replay";
    const std::string committed = std::string(TAPSEC_ENGINE_CORPUS) + "/" + name;
    if (const char* out = std::getenv("TAPSEC_ENGINE_SEEDS_OUT")) {
      std::ofstream file(std::string(out) + "/" + name, std::ios::binary);
      file.write(reinterpret_cast<const char*>(writer->bytes().data()),
                 static_cast<std::streamsize>(writer->bytes().size()));
      ASSERT_TRUE(file.good()) << "cannot write " << out << "/" << name;
      return;
    }
    std::ifstream file(committed, std::ios::binary);
    ASSERT_TRUE(file.good()) << "no seed " << committed;
    const std::vector<std::uint8_t> seed{std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>()};
    EXPECT_EQ(replay(seed), expected) << "the seed " << committed
                                      << " no longer drives the target as the engine does now; record the seeds again "
                                         "(TAPSEC_ENGINE_SEEDS_OUT, see the top of ikev2_engine_seeds.cpp)";
  }
};

TEST_F(SeedRecorder, Setup) {
  connect();
  finish("setup");
}

TEST_F(SeedRecorder, SetupWithCookie) {
  options = kOptionCookies;
  connect();
  finish("setup_cookie");
}

TEST_F(SeedRecorder, FragmentedSetupAndRekey) {
  ends.a->fragment_size = 160;  // every protected message of the peer in SKF fragments
  connect();
  ASSERT_TRUE(peer().rekey_child(peer_sa(), peer_child(), net.now));
  net.run();
  finish("fragmented");
}

TEST_F(SeedRecorder, ChildRekeyFromPeerWithPfs) {
  ends.a->children[0].rekey_group = group::kCurve25519;
  connect();
  ASSERT_TRUE(peer().rekey_child(peer_sa(), peer_child(), net.now));
  net.run();
  EXPECT_EQ(net.b.count<ChildSaInstall>(), 3u);  // first pair, new inbound, new outbound
  finish("child_rekey_peer_pfs");
}

TEST_F(SeedRecorder, ChildRekeyFromTarget) {
  connect();
  target(Command::RekeyChild);
  net.run();
  finish("child_rekey_target");
}

TEST_F(SeedRecorder, ChildRekeyCollision) {
  connect();
  ASSERT_TRUE(peer().rekey_child(peer_sa(), peer_child(), net.now));
  target(Command::RekeyChild);
  net.run();
  finish("child_rekey_collision");
}

TEST_F(SeedRecorder, IkeRekeyFromPeerThenChildRekey) {
  connect();
  ASSERT_TRUE(peer().rekey_ike(peer_sa(), net.now));
  net.run();
  ASSERT_TRUE(peer().rekey_child(peer_sa(), peer_child(), net.now));
  net.run();
  finish("ike_rekey_peer");
}

TEST_F(SeedRecorder, IkeRekeyFromTarget) {
  connect();
  target(Command::RekeyIke);
  net.run();
  finish("ike_rekey_target");
}

TEST_F(SeedRecorder, IkeRekeyCollision) {
  connect();
  ASSERT_TRUE(peer().rekey_ike(peer_sa(), net.now));
  target(Command::RekeyIke);
  net.run();
  finish("ike_rekey_collision");
}

TEST_F(SeedRecorder, LivenessDeleteAndClose) {
  connect();
  ASSERT_TRUE(peer().check_liveness(peer_sa(), net.now));
  net.run();
  target(Command::CheckLiveness);
  net.run();
  ASSERT_TRUE(peer().delete_child(peer_sa(), peer_child(), net.now));
  net.run();
  ASSERT_TRUE(peer().close(peer_sa(), net.now));
  net.run();
  EXPECT_EQ(net.b.count<IkeSaDown>(), 1u);
  finish("informational");
}

TEST_F(SeedRecorder, MobikeBothEndsMove) {
  connect();
  net.a.address = ip("192.0.2.11");
  ASSERT_TRUE(peer().update_local_address(peer_sa(), net.a.endpoint(), net.now));
  net.run();
  net.b.address = ip("192.0.2.12");
  target(Command::UpdateLocalAddress, 2);  // 192.0.2.12:500
  net.run();
  EXPECT_EQ(net.b.count<PathChange>(), 2u);
  finish("mobike");
}

TEST_F(SeedRecorder, NatTraversal) {
  net.nat = true;
  connect();
  ASSERT_TRUE(peer().rekey_child(peer_sa(), peer_child(), net.now));
  net.run();
  finish("nat");
}

TEST_F(SeedRecorder, TargetInitiates) {
  start();
  target(Command::Initiate, 0x00);  // 192.0.2.2:500 to 192.0.2.1:500
  net.run();
  ASSERT_EQ(net.b.count<IkeSaUp>(), 1u) << ::testing::PrintToString(net.b.down_reasons());
  target(Command::DeleteChild);
  net.run();
  finish("target_initiates");
}

TEST_F(SeedRecorder, LostAndDuplicatedDatagrams) {
  int count = 0;
  net.copies = [](const test::InFlight&) { return 2; };
  net.drop = [&](const test::InFlight& packet) { return packet.from == kTarget && ++count == 2; };
  ends.a->fragment_size = 200;
  connect();
  net.elapse(seconds(5));  // the retransmits
  finish("lost_duplicated");
}

TEST_F(SeedRecorder, PeerLifetimesExpire) {
  ends.a->children[0].lifetime = {60, 90, 0, 0, 0, 0};
  ends.a->ike_lifetime = {100, 0, 0, 0, 0, 0};
  connect();
  net.elapse(seconds(130));  // the peer's own rekeys, and liveness checks both ways
  EXPECT_GE(net.b.count<ChildSaInstall>(), 3u);
  finish("peer_lifetimes");
}

}  // namespace
}  // namespace tapsec::ikev2::fuzz
