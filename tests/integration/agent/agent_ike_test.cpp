// IKEv2 through the agent's bus API on this machine's kernel: tunnels from
// policy, the named errors of EstablishTunnel, and the IKE port under
// garbage. Negotiations with real peers and ESP run in the VM scenarios.
#include <gtest/gtest.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <random>

#include "tests/integration/agent/agent_fixture.h"

namespace tapsec::testing {
namespace {

constexpr std::uint16_t kIkePort = 15500;
constexpr std::uint16_t kNatTPort = 15501;

const char* kPolicy = R"(
[PSK site]
Key=hex:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff

[Tunnel]
Name=to-beta
Peer=192.0.2.2
LocalAddress=127.0.0.1
LocalId=alpha.example
RemoteId=beta.example
Auth=psk
PSK=site
LocalTS=10.1.0.0/24
RemoteTS=10.2.0.0/24

[Tunnel]
Name=anyone
Auth=psk
PSK=site

[Tunnel]
Name=by-name
Peer=localhost
LocalAddress=127.0.0.1
Auth=psk
PSK=site

[Tunnel]
Name=unknown-name
Peer=no-such-host.invalid
Auth=psk
PSK=site

[Tunnel]
Name=forbidden
Peer=192.0.2.3
LocalAddress=127.0.0.1
Auth=psk
PSK=site

[Rule no-forbidden]
MatchTunnel=forbidden
Action=deny

[Rule tunnels]
Protocols=ikev2
PSKs=site
Action=allow
)";

class AgentIkeTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    agent_ = new AgentProcess(kPolicy, {"--ike-port", std::to_string(kIkePort), "--nat-t-port",
                                        std::to_string(kNatTPort)});
  }
  static void TearDownTestSuite() {
    delete agent_;
    agent_ = nullptr;
  }
  static bool kernel_has_esp() {
    char** features = nullptr;
    if (sd_bus_get_property_strv(agent_->bus(), "org.tapsec1", "/org/tapsec1", "org.tapsec1.Manager",
                                 "KernelFeatures", nullptr, &features) < 0)
      return false;
    bool esp = false;
    for (char** f = features; f && *f; ++f) {
      esp = esp || std::string(*f) == "esp";
      free(*f);
    }
    free(features);
    return esp;
  }
  static AgentProcess* agent_;
};
AgentProcess* AgentIkeTest::agent_ = nullptr;

TEST_F(AgentIkeTest, ListsTheTunnelsOfThePolicy) {
  auto tunnels = agent_->list_tunnels();
  ASSERT_EQ(tunnels.size(), 5u);
  auto to_beta = std::find_if(tunnels.begin(), tunnels.end(), [](auto& t) { return t.name == "to-beta"; });
  ASSERT_NE(to_beta, tunnels.end());
  EXPECT_EQ(to_beta->protocol, "ikev2");
  EXPECT_EQ(to_beta->peer, "192.0.2.2");
  EXPECT_EQ(to_beta->start, "none");
  EXPECT_EQ(to_beta->state, "down");
  EXPECT_EQ(to_beta->association, "/");
  auto anyone = std::find_if(tunnels.begin(), tunnels.end(), [](auto& t) { return t.name == "anyone"; });
  ASSERT_NE(anyone, tunnels.end());
  EXPECT_EQ(anyone->peer, "%any");
}

TEST_F(AgentIkeTest, EstablishTunnelSaysWhatTheKernelLacks) {
  if (kernel_has_esp()) GTEST_SKIP() << "this kernel has ESP; the VM scenarios establish real tunnels";
  std::string name, message;
  std::string path = agent_->establish_tunnel("to-beta", {}, &name, &message);
  EXPECT_EQ(path, "");
  EXPECT_EQ(name, "org.tapsec1.Error.KernelUnsupported");
  EXPECT_NE(message.find("kernel lacks ESP"), std::string::npos) << message;
}

// Peer= may name a host: the agent's resolver looks it up, and the tunnel
// is usable once it has an address (here it then meets the missing ESP).
TEST_F(AgentIkeTest, TunnelPeersMayBeHostNames) {
  std::string name, message;
  agent_->establish_tunnel("unknown-name", {}, &name, &message);
  EXPECT_EQ(name, "org.tapsec1.Error.InvalidArgument") << message;
  EXPECT_NE(message.find("cannot resolve no-such-host.invalid"), std::string::npos) << message;
  if (kernel_has_esp()) GTEST_SKIP() << "this kernel has ESP; the VM scenarios establish real tunnels";
  agent_->establish_tunnel("by-name", {}, &name, &message);
  EXPECT_EQ(name, "org.tapsec1.Error.KernelUnsupported") << "the host name was not resolved: " << message;
}

TEST_F(AgentIkeTest, EstablishTunnelNamesBadRequests) {
  struct Case {
    std::string peer;
    Props props;
    std::string error;
    std::string mentions;
  };
  std::vector<Case> cases = {
      {"no-such-tunnel", {}, "org.tapsec1.Error.InvalidArgument", "neither a tunnel"},
      {"to-beta", {{"psk", std::string("site")}}, "org.tapsec1.Error.InvalidArgument", "defined in the policy"},
      {"to-beta", {{"cipher", std::string("x")}}, "org.tapsec1.Error.UnknownProperty", "'cipher'"},
      {"to-beta", {{"mode", std::string("sideways")}}, "org.tapsec1.Error.InvalidArgument", "'mode'"},
      {"to-beta", {{"local-ts", std::vector<std::string>{"10.0.0.0/8;rm"}}}, "org.tapsec1.Error.InvalidArgument",
       "traffic selector"},
      {"to-beta", {{"protocols", std::vector<std::string>{"wireguard"}}}, "org.tapsec1.Error.InvalidArgument",
       "runs ikev2, not wireguard"},
      {"forbidden", {}, "org.tapsec1.Error.PolicyDenied", "no-forbidden"},
      {"", {}, "org.tapsec1.Error.InvalidArgument", "empty"},
  };
  for (const auto& c : cases) {
    std::string name, message;
    std::string path = agent_->establish_tunnel(c.peer, c.props, &name, &message);
    EXPECT_EQ(path, "") << c.peer;
    EXPECT_EQ(name, c.error) << c.peer << ": " << message;
    EXPECT_NE(message.find(c.mentions), std::string::npos) << c.peer << ": " << message;
  }
}

// Malformed IKE at the agent's ports is dropped and counted; nothing else
// happens and the agent keeps serving.
TEST_F(AgentIkeTest, GarbageAtTheIkePortIsDroppedAndCounted) {
  auto before = agent_->statistics();
  ASSERT_TRUE(before.count("ike-dropped-malformed")) << "the Statistics property has no IKE counters";

  int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(kIkePort);
  to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::mt19937 random(42);
  std::vector<std::vector<std::uint8_t>> datagrams;
  for (int i = 0; i < 40; ++i) {
    std::vector<std::uint8_t> d(28 + random() % 200);
    for (auto& b : d) b = static_cast<std::uint8_t>(random());
    datagrams.push_back(d);
  }
  // An IKE_SA_INIT header whose length field lies, and a truncated one.
  std::vector<std::uint8_t> lying(28, 0);
  lying[0] = 1;            // initiator SPI
  lying[17] = 0x20;        // version 2.0
  lying[18] = 34;          // IKE_SA_INIT
  lying[19] = 0x08;        // initiator
  lying[27] = 200;         // length 200, datagram 28
  datagrams.push_back(lying);
  datagrams.push_back(std::vector<std::uint8_t>(lying.begin(), lying.begin() + 12));
  for (const auto& d : datagrams)
    ASSERT_EQ(::sendto(fd, d.data(), d.size(), 0, reinterpret_cast<sockaddr*>(&to), sizeof to),
              static_cast<ssize_t>(d.size()));
  ::close(fd);

  std::map<std::string, std::uint64_t> after;
  for (int i = 0; i < 100; ++i) {
    after = agent_->statistics();
    if (after["ike-dropped-malformed"] - before["ike-dropped-malformed"] >= datagrams.size() - 2) break;
    usleep(20'000);
  }
  // Random bytes may by chance parse as a header with an unknown SPI: those
  // count as unknown SPIs. Every datagram is counted as one or the other.
  std::uint64_t dropped = (after["ike-dropped-malformed"] - before["ike-dropped-malformed"]) +
                          (after["ike-dropped-unknown-spi"] - before["ike-dropped-unknown-spi"]);
  EXPECT_EQ(dropped, datagrams.size());
  EXPECT_EQ(after["ike-sent"], before["ike-sent"]) << "the agent answered garbage";
  EXPECT_TRUE(agent_->agent_running());
  EXPECT_EQ(agent_->list_tunnels().size(), 5u);
}

}  // namespace
}  // namespace tapsec::testing
