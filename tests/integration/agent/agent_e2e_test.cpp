// End to end on this machine's kernel: a real tapsecd on a private bus,
// applications on loopback TCP, OpenSSL's s_server and s_client as peers.
// Where the kernel lacks kTLS these run through the userspace fallback, and
// the tests check that the association says so.
#include <gtest/gtest.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <linux/tls.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <fstream>
#include <memory>
#include <random>
#include <thread>
#include <utility>

#include "tests/integration/agent/agent_fixture.h"

namespace tapsec::testing {
namespace {

const char* kPolicy = R"(
[Identity server]
Certificate=${DIR}/server.pem
PrivateKey=${DIR}/server.key

[Identity client]
Certificate=${DIR}/client.pem
PrivateKey=${DIR}/client.key

[TrustStore test-ca]
File=${DIR}/ca.pem
IncludeSystem=no

[PSK link]
Identity=tapsec-link
Key=hex:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff

[Rule psk-link]
MatchHost=psk.test
Protocols=tls
PSKs=link
Fallback=yes
Action=allow

[Rule denied-host]
MatchHost=denied.test
Action=deny

[Rule no-fallback]
MatchHost=nofallback.test
Protocols=tls
TrustStore=test-ca
Fallback=no
Action=allow

[Rule everything]
Protocols=tls
Identities=server client
TrustStore=test-ca
PeerValidation=system pinned application none
Export=yes
Fallback=yes
Action=allow
)";

class AgentTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (geteuid() != 0) GTEST_SKIP() << "needs root";
    agent_ = new AgentProcess(kPolicy);
  }
  static void TearDownTestSuite() {
    if (!agent_) return;
    // A clean exit status also means no leak report under AddressSanitizer.
    int status = agent_->stop_agent();
    EXPECT_EQ(status, 0) << "tapsecd did not shut down cleanly; its log is in " << agent_->dir()
                         << " (kept with TAPSEC_KEEP_TEST_DIR=1)";
    delete agent_;
    agent_ = nullptr;
  }
  void SetUp() override {
    if (!agent_) GTEST_SKIP() << "SKIPPED: needs root (the agent installs kernel keys)";
  }
  void TearDown() override {
    if (agent_) EXPECT_TRUE(agent_->agent_running()) << "tapsecd died";
  }

  struct Pair {
    CallResult client, server;
  };
  // Runs both ends of a handshake through the agent over a loopback pair.
  Pair secure_pair(const Props& client_props, const Props& server_props) {
    auto [c, s] = tcp_pair();
    Pair pair;
    agent_->secure_socket_async(s, "server", server_props, &pair.server);
    agent_->secure_socket_async(c, "client", client_props, &pair.client);
    EXPECT_TRUE(agent_->wait({&pair.client, &pair.server}));
    close(c);
    close(s);
    return pair;
  }
  static void close_pair(Pair& pair) {
    if (pair.client.fd >= 0) close(pair.client.fd);
    if (pair.server.fd >= 0) close(pair.server.fd);
    pair.client.fd = pair.server.fd = -1;
  }
  static std::string pin() {
    std::ifstream in(agent_->dir() + "/server.pin");
    std::string b64;
    in >> b64;
    return "sha256/" + b64;
  }
  static std::string expected_offload() {
    return std::ifstream("/proc/net/tls_stat").good() ? "kernel" : "userspace";
  }

  static AgentProcess* agent_;

 public:
  static sd_bus* bus_of_agent() { return agent_->bus(); }
  static AgentProcess* agent() { return agent_; }
};
AgentProcess* AgentTest::agent_ = nullptr;

const Props kServer = {{"identity", std::string("server")}};
const Props kClient = {{"server-name", std::string("server.test")}};
// The kTLS socket itself rather than the relayed socketpair end.
Props direct(Props props) {
  props.push_back({"direct-socket", true});
  return props;
}

// Sends `size` random bytes each way at once and checks both arrive intact.
void exchange(int a, int b, std::size_t size) {
  std::vector<std::uint8_t> from_a(size), from_b(size), got_a(size), got_b(size);
  std::mt19937 rng(42);
  for (auto& x : from_a) x = static_cast<std::uint8_t>(rng());
  for (auto& x : from_b) x = static_cast<std::uint8_t>(rng());
  std::thread wa([&] { EXPECT_TRUE(write_all(a, from_a.data(), size)); });
  std::thread wb([&] { EXPECT_TRUE(write_all(b, from_b.data(), size)); });
  std::thread ra([&] { EXPECT_TRUE(read_exact(a, got_b.data(), size)); });
  EXPECT_TRUE(read_exact(b, got_a.data(), size));
  wa.join();
  wb.join();
  ra.join();
  EXPECT_EQ(from_a, got_a);
  EXPECT_EQ(from_b, got_b);
}

TEST_F(AgentTest, AgentToAgentTls13CarriesDataBothWays) {
  auto pair = secure_pair(kClient, kServer);
  ASSERT_EQ(pair.client.error_name, "") << pair.client.error_message;
  ASSERT_EQ(pair.server.error_name, "") << pair.server.error_message;
  exchange(pair.client.fd, pair.server.fd, 4 << 20);
  const auto& path = pair.client.association;
  EXPECT_EQ(agent_->get_string(path, "Protocol"), "tls");
  EXPECT_EQ(agent_->get_string(path, "Version"), "TLSv1.3");
  EXPECT_EQ(agent_->get_string(path, "Role"), "client");
  EXPECT_EQ(agent_->get_string(path, "Offload"), expected_offload());
  EXPECT_NE(agent_->get_string(path, "PeerIdentity").find("server.test"), std::string::npos);
  EXPECT_EQ(agent_->get_string(pair.server.association, "Role"), "server");
  close_pair(pair);
}

// Reads one counter of /proc/net/tls_stat (0 when the kernel has none).
std::uint64_t tls_stat(const std::string& name) {
  std::ifstream in("/proc/net/tls_stat");
  std::string key;
  std::uint64_t value = 0;
  while (in >> key >> value)
    if (key == name) return value;
  return 0;
}

std::string ulp_of(int fd) {
  char name[16] = {};
  socklen_t len = sizeof(name);
  if (getsockopt(fd, IPPROTO_TCP, TCP_ULP, name, &len) != 0) return "";
  return name;
}

TEST_F(AgentTest, SixtyFourMiBEachWayWithKeysWhereTheyShouldBe) {
  auto tx_before = tls_stat("TlsTxSw"), rx_before = tls_stat("TlsRxSw");
  auto pair = secure_pair(kClient, kServer);
  ASSERT_EQ(pair.client.error_name, "") << pair.client.error_message;
  ASSERT_EQ(pair.server.error_name, "") << pair.server.error_message;
  // Relayed (the default), the application holds a socketpair end either way.
  EXPECT_EQ(ulp_of(pair.client.fd), "") << "a relayed fd is a socketpair, not TCP";
  if (expected_offload() == "kernel") {
    EXPECT_GE(tls_stat("TlsTxSw"), tx_before + 2) << "both ends should have installed a kTLS send key";
    EXPECT_GE(tls_stat("TlsRxSw"), rx_before + 2) << "both ends should have installed a kTLS receive key";
  }
  exchange(pair.client.fd, pair.server.fd, 64 << 20);
  close_pair(pair);
}

TEST_F(AgentTest, DirectSocketIsTheKtlsSocketItself) {
  if (expected_offload() != "kernel") GTEST_SKIP() << "SKIPPED: this kernel lacks kTLS (runs in the VM)";
  auto pair = secure_pair(direct(kClient), direct(kServer));
  ASSERT_EQ(pair.client.error_name, "") << pair.client.error_message;
  ASSERT_EQ(pair.server.error_name, "") << pair.server.error_message;
  EXPECT_EQ(ulp_of(pair.client.fd), "tls");
  EXPECT_EQ(ulp_of(pair.server.fd), "tls");
  exchange(pair.client.fd, pair.server.fd, 16 << 20);
  close_pair(pair);
}

TEST_F(AgentTest, Tls12WhenAsked) {
  Props client = kClient;
  client.push_back({"versions", std::vector<std::string>{"1.2"}});
  auto pair = secure_pair(client, kServer);
  ASSERT_EQ(pair.client.error_name, "") << pair.client.error_message;
  EXPECT_EQ(agent_->get_string(pair.client.association, "Version"), "TLSv1.2");
  exchange(pair.client.fd, pair.server.fd, 1 << 20);
  close_pair(pair);
}

TEST_F(AgentTest, SecondConnectionResumes) {
  agent_->flush_session_cache();  // tickets from earlier tests would resume the first one
  auto first = secure_pair(kClient, kServer);
  ASSERT_EQ(first.client.error_name, "") << first.client.error_message;
  exchange(first.client.fd, first.server.fd, 1024);  // the tickets have arrived by now
  EXPECT_FALSE(agent_->get_bool(first.client.association, "Resumed"));
  close_pair(first);
  auto second = secure_pair(kClient, kServer);
  ASSERT_EQ(second.client.error_name, "") << second.client.error_message;
  EXPECT_TRUE(agent_->get_bool(second.client.association, "Resumed"));
  exchange(second.client.fd, second.server.fd, 1024);
  close_pair(second);
}

TEST_F(AgentTest, FlushedSessionCacheMeansNoResumption) {
  agent_->flush_session_cache();  // start from a full handshake
  auto first = secure_pair(kClient, kServer);
  ASSERT_EQ(first.client.error_name, "") << first.client.error_message;
  exchange(first.client.fd, first.server.fd, 1024);
  close_pair(first);
  EXPECT_GE(agent_->flush_session_cache(), 1);
  auto second = secure_pair(kClient, kServer);
  ASSERT_EQ(second.client.error_name, "") << second.client.error_message;
  EXPECT_FALSE(agent_->get_bool(second.client.association, "Resumed"));
  close_pair(second);
}

TEST_F(AgentTest, AlgorithmsAreNarrowedAsAsked) {
  Props client = kClient;
  client.push_back({"algorithms", Algorithms{{"groups", {"P-256"}}, {"ciphersuites", {"TLS_CHACHA20_POLY1305_SHA256"}}}});
  client.push_back({"session-cache", false});
  auto pair = secure_pair(client, kServer);
  ASSERT_EQ(pair.client.error_name, "") << pair.client.error_message;
  EXPECT_EQ(agent_->get_string(pair.client.association, "Group"), "P-256");
  EXPECT_EQ(agent_->get_string(pair.client.association, "Cipher"), "TLS_CHACHA20_POLY1305_SHA256");
  exchange(pair.client.fd, pair.server.fd, 1 << 20);
  close_pair(pair);
}

TEST_F(AgentTest, AlpnIsNegotiated) {
  Props client = kClient, server = kServer;
  client.push_back({"alpn", std::vector<std::string>{"h2", "http/1.1"}});
  server.push_back({"alpn", std::vector<std::string>{"http/1.1"}});
  auto pair = secure_pair(client, server);
  ASSERT_EQ(pair.client.error_name, "") << pair.client.error_message;
  EXPECT_EQ(agent_->get_string(pair.client.association, "ALPN"), "http/1.1");
  EXPECT_EQ(agent_->get_string(pair.server.association, "ALPN"), "http/1.1");
  close_pair(pair);
}

TEST_F(AgentTest, AlpnMismatchFailsTheHandshake) {
  Props client = kClient, server = kServer;
  client.push_back({"alpn", std::vector<std::string>{"h2"}});
  server.push_back({"alpn", std::vector<std::string>{"imap"}});
  auto pair = secure_pair(client, server);
  EXPECT_EQ(pair.server.error_name, "org.tapsec1.Error.HandshakeFailed");
  EXPECT_NE(pair.client.error_name, "");
  close_pair(pair);
}

TEST_F(AgentTest, PinnedPeerIsAcceptedAndWrongPinRejected) {
  Props pinned = {{"server-name", std::string("server.test")},
                  {"peer-validation", std::string("pinned")},
                  {"peer-pins", std::vector<std::string>{pin()}}};
  auto good = secure_pair(pinned, kServer);
  EXPECT_EQ(good.client.error_name, "") << good.client.error_message;
  close_pair(good);

  Props wrong = {{"server-name", std::string("server.test")},
                 {"peer-validation", std::string("pinned")},
                 {"peer-pins", std::vector<std::string>{"sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}}};
  auto bad = secure_pair(wrong, kServer);
  EXPECT_EQ(bad.client.error_name, "org.tapsec1.Error.PeerNotValidated") << bad.client.error_message;
  close_pair(bad);
}

TEST_F(AgentTest, ExternalPskByName) {
  Props client = {{"server-name", std::string("psk.test")}, {"psk", std::string("link")}};
  Props server = {{"server-name", std::string("psk.test")}, {"psk", std::string("link")}};
  auto pair = secure_pair(client, server);
  ASSERT_EQ(pair.client.error_name, "") << pair.client.error_message;
  ASSERT_EQ(pair.server.error_name, "") << pair.server.error_message;
  EXPECT_EQ(agent_->get_string(pair.client.association, "PeerIdentity"), "psk:tapsec-link");
  EXPECT_EQ(agent_->get_string(pair.client.association, "Version"), "TLSv1.3");
  exchange(pair.client.fd, pair.server.fd, 1 << 20);
  close_pair(pair);

  Props unknown = {{"server-name", std::string("psk.test")}, {"psk", std::string("no-such-psk")}};
  auto denied = secure_pair(unknown, server);
  EXPECT_EQ(denied.client.error_name, "org.tapsec1.Error.PolicyDenied") << denied.client.error_message;
  close_pair(denied);
}

TEST_F(AgentTest, WrongHostNameIsRejected) {
  Props client = {{"server-name", std::string("other.test")}};
  auto pair = secure_pair(client, kServer);
  EXPECT_EQ(pair.client.error_name, "org.tapsec1.Error.PeerNotValidated") << pair.client.error_message;
  close_pair(pair);
}

// The application's own validator, exported on the test's bus connection.
struct Validator {
  bool accept = true;
  int calls = 0;
  std::string server_name;
  std::size_t chain_length = 0;
};

int validate_peer(sd_bus_message* m, void* userdata, sd_bus_error*) {
  auto* v = static_cast<Validator*>(userdata);
  const char* protocol = nullptr;
  const char* server_name = nullptr;
  sd_bus_message_read(m, "ss", &protocol, &server_name);
  v->server_name = server_name;
  sd_bus_message_enter_container(m, 'a', "ay");
  const void* data;
  size_t size;
  while (sd_bus_message_read_array(m, 'y', &data, &size) > 0) ++v->chain_length;
  sd_bus_message_exit_container(m);
  ++v->calls;
  return sd_bus_reply_method_return(m, "bs", v->accept, v->accept ? "" : "the test says no");
}

const sd_bus_vtable kValidatorVtable[] = {
    SD_BUS_VTABLE_START(0),
    SD_BUS_METHOD("ValidatePeer", "ssaay", "bs", validate_peer, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_VTABLE_END};

TEST_F(AgentTest, ApplicationValidatorDecides) {
  Validator validator;
  sd_bus_slot* slot = nullptr;
  ASSERT_GE(sd_bus_add_object_vtable(agent_->bus(), &slot, "/test/validator", "org.tapsec1.PeerValidator",
                                     kValidatorVtable, &validator),
            0);
  Props client = {{"server-name", std::string("server.test")},
                  {"peer-validation", std::string("application")},
                  {"validator", ObjectPath{"/test/validator"}}};
  auto pair = secure_pair(client, kServer);
  EXPECT_EQ(pair.client.error_name, "") << pair.client.error_message;
  EXPECT_EQ(validator.calls, 1);
  EXPECT_EQ(validator.server_name, "server.test");
  EXPECT_GE(validator.chain_length, 1u);
  close_pair(pair);

  validator.accept = false;
  auto rejected = secure_pair(client, kServer);
  EXPECT_EQ(rejected.client.error_name, "org.tapsec1.Error.PeerNotValidated") << rejected.client.error_message;
  EXPECT_EQ(validator.calls, 2);
  close_pair(rejected);
  sd_bus_slot_unref(slot);
}

TEST_F(AgentTest, ExportedKeysMatchAndNeedPermission) {
  Props client = kClient, server = kServer;
  client.push_back({"export", true});
  server.push_back({"export", true});
  auto pair = secure_pair(client, server);
  ASSERT_EQ(pair.client.error_name, "") << pair.client.error_message;
  std::string error;
  auto a = agent_->export_keying_material(pair.client.association, "EXPORTER-tapsec-test", 32, &error);
  EXPECT_EQ(error, "");
  auto b = agent_->export_keying_material(pair.server.association, "EXPORTER-tapsec-test", 32, &error);
  EXPECT_EQ(error, "");
  EXPECT_EQ(a.size(), 32u);
  EXPECT_EQ(a, b);
  close_pair(pair);

  auto plain = secure_pair(kClient, kServer);
  ASSERT_EQ(plain.client.error_name, "");
  agent_->export_keying_material(plain.client.association, "EXPORTER-tapsec-test", 32, &error);
  EXPECT_EQ(error, "org.tapsec1.Error.ExportDenied");
  close_pair(plain);
}

// Reads one record from a kTLS socket with its content type.
int recv_record_type(int fd, std::uint8_t* data, std::size_t size, ssize_t* length) {
  char control[CMSG_SPACE(sizeof(unsigned char))];
  iovec iov{data, size};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  *length = recvmsg(fd, &msg, 0);
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c))
    if (c->cmsg_level == SOL_TLS && c->cmsg_type == TLS_GET_RECORD_TYPE) return *CMSG_DATA(c);
  return -1;
}

bool agent_has_feature(const std::string& feature) { return AgentTest::agent()->has_kernel_feature(feature); }

TEST_F(AgentTest, TerminateSendsCloseNotifyAndBothReadEndOfFile) {
  auto pair = secure_pair(kClient, kServer);
  ASSERT_EQ(pair.client.error_name, "") << pair.client.error_message;
  EXPECT_EQ(agent_->call_association(pair.client.association, "Terminate", ""), "");
  char byte;
  EXPECT_EQ(read(pair.client.fd, &byte, 1), 0) << "the terminated side should read the end of the stream";
  EXPECT_EQ(read(pair.server.fd, &byte, 1), 0) << "the peer's close_notify should read as the end of the stream";
  close_pair(pair);
}

TEST_F(AgentTest, DirectSocketTerminateSendsCloseNotify) {
  auto pair = secure_pair(direct(kClient), direct(kServer));
  ASSERT_EQ(pair.client.error_name, "") << pair.client.error_message;
  EXPECT_EQ(agent_->call_association(pair.client.association, "Terminate", ""), "");
  char byte;
  if (expected_offload() == "kernel") {
    // kTLS hands a plain read() the close_notify alert as EIO; recvmsg
    // with a record-type cmsg reads it (what libtapsec's tapsec_read does).
    EXPECT_EQ(read(pair.server.fd, &byte, 1), -1);
    EXPECT_EQ(errno, EIO);
    std::uint8_t alert[2] = {};
    ssize_t length = 0;
    EXPECT_EQ(recv_record_type(pair.server.fd, alert, sizeof(alert), &length), 21);
    EXPECT_EQ(length, 2);
    EXPECT_EQ(alert[1], 0) << "close_notify";
  } else {
    EXPECT_EQ(read(pair.server.fd, &byte, 1), 0) << "the server side should see the end of the stream";
  }
  close_pair(pair);
}

TEST_F(AgentTest, UpdateKeysIsFollowedByTheRelayedPeer) {
  auto pair = secure_pair(kClient, kServer);
  ASSERT_EQ(pair.client.error_name, "") << pair.client.error_message;
  ASSERT_EQ(pair.server.error_name, "") << pair.server.error_message;
  if (expected_offload() == "kernel" && !agent_has_feature("ktls-rekey")) {
    EXPECT_EQ(agent_->call_association(pair.client.association, "UpdateKeys", "b", 0),
              "org.tapsec1.Error.KernelUnsupported");
    exchange(pair.client.fd, pair.server.fd, 1 << 20);  // nothing was sent: the connection is intact
  } else {
    // The peer's relay takes the KeyUpdate off the wire, follows it and
    // answers it; neither application notices.
    EXPECT_EQ(agent_->call_association(pair.client.association, "UpdateKeys", "b", 1), "");
    exchange(pair.client.fd, pair.server.fd, 1 << 20);
    EXPECT_EQ(agent_->get_u64(pair.client.association, "KeyEpoch"), 1u);
    EXPECT_EQ(agent_->get_u64(pair.server.association, "KeyEpoch"), 1u) << "the peer should have answered";
    exchange(pair.client.fd, pair.server.fd, 1 << 20);
  }
  close_pair(pair);
}

TEST_F(AgentTest, DirectSocketUpdateKeysKeepsTheConnectionWorking) {
  auto pair = secure_pair(direct(kClient), direct(kServer));
  ASSERT_EQ(pair.client.error_name, "") << pair.client.error_message;
  if (expected_offload() == "userspace") {
    EXPECT_EQ(agent_->call_association(pair.client.association, "UpdateKeys", "b", 1), "");
    exchange(pair.client.fd, pair.server.fd, 1 << 20);
    EXPECT_EQ(agent_->get_u64(pair.client.association, "KeyEpoch"), 1u);
  } else if (!agent_has_feature("ktls-rekey")) {
    EXPECT_EQ(agent_->call_association(pair.client.association, "UpdateKeys", "b", 0),
              "org.tapsec1.Error.KernelUnsupported");
    exchange(pair.client.fd, pair.server.fd, 1 << 20);  // nothing was sent: the connection is intact
  } else {
    // Our update, the peer's side follows when its reader meets the
    // KeyUpdate (EIO on a plain read) and asks its agent.
    const char ping[] = "after-update";
    char got[sizeof(ping)] = {};
    EXPECT_EQ(agent_->call_association(pair.client.association, "UpdateKeys", "b", 1), "");
    ASSERT_TRUE(write_all(pair.client.fd, ping, sizeof(ping)));
    EXPECT_EQ(read(pair.server.fd, got, 1), -1);
    EXPECT_EQ(errno, EIO);
    EXPECT_EQ(agent_->call_association(pair.server.association, "UpdateKeys", "b", 0), "");
    ASSERT_TRUE(read_exact(pair.server.fd, got, sizeof(got)));
    EXPECT_STREQ(got, ping);
    // The client asked for an update in return: its reader meets it next.
    ASSERT_TRUE(write_all(pair.server.fd, ping, sizeof(ping)));
    EXPECT_EQ(read(pair.client.fd, got, 1), -1);
    EXPECT_EQ(errno, EIO);
    EXPECT_EQ(agent_->call_association(pair.client.association, "UpdateKeys", "b", 0), "");
    ASSERT_TRUE(read_exact(pair.client.fd, got, sizeof(got)));
    EXPECT_STREQ(got, ping);
    exchange(pair.client.fd, pair.server.fd, 1 << 20);
    EXPECT_EQ(agent_->get_u64(pair.client.association, "KeyEpoch"), 1u);
    EXPECT_EQ(agent_->get_u64(pair.server.association, "KeyEpoch"), 1u);
  }
  close_pair(pair);
}

TEST_F(AgentTest, BadInputGetsNamedErrors) {
  auto expect_error = [](int fd, const std::string& role, const Props& props, const std::string& expected) {
    CallResult result;
    agent_->secure_socket_async(fd, role, props, &result);
    ASSERT_TRUE(agent_->wait({&result}));
    EXPECT_EQ(result.error_name, expected) << result.error_message;
    EXPECT_FALSE(result.error_message.empty());
    if (result.fd >= 0) close(result.fd);
  };
  auto [c, s] = tcp_pair();
  expect_error(c, "client", {{"no-such-key", std::string("x")}}, "org.tapsec1.Error.UnknownProperty");
  expect_error(c, "client", {{"server-name", true}}, "org.tapsec1.Error.InvalidArgument");
  expect_error(c, "juggler", kClient, "org.tapsec1.Error.InvalidArgument");
  expect_error(c, "client", {{"server-name", std::string("denied.test")}}, "org.tapsec1.Error.PolicyDenied");
  expect_error(c, "client", {{"server-name", std::string("server.test")}, {"protocols", std::vector<std::string>{"ikev2"}}},
               "org.tapsec1.Error.NotSupported");
  if (expected_offload() == "userspace") {
    expect_error(c, "client", {{"server-name", std::string("server.test")}, {"offload", std::string("required")}},
                 "org.tapsec1.Error.KernelUnsupported");
    expect_error(c, "client", {{"server-name", std::string("nofallback.test")}}, "org.tapsec1.Error.KernelUnsupported");
  }
  close(c);
  close(s);

  int unix_pair[2];
  socketpair(AF_UNIX, SOCK_STREAM, 0, unix_pair);
  expect_error(unix_pair[0], "client", kClient, "org.tapsec1.Error.BadSocket");
  close(unix_pair[0]);
  close(unix_pair[1]);
  int unconnected = socket(AF_INET, SOCK_STREAM, 0);
  expect_error(unconnected, "client", kClient, "org.tapsec1.Error.BadSocket");
  close(unconnected);
}

TEST_F(AgentTest, GarbageFromThePeerFailsCleanly) {
  auto [c, s] = tcp_pair();
  CallResult server;
  agent_->secure_socket_async(s, "server", kServer, &server);
  const char garbage[] = "GET / HTTP/1.0\r\nHost: example\r\n\r\n";
  write_all(c, garbage, sizeof(garbage) - 1);
  ASSERT_TRUE(agent_->wait({&server}));
  EXPECT_EQ(server.error_name, "org.tapsec1.Error.HandshakeFailed") << server.error_message;
  close(c);
  close(s);
}

TEST_F(AgentTest, NoFdLeaksOverManyConnections) {
  // Settle what earlier tests left behind.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  auto before = agent_->agent_fd_count();
  for (int i = 0; i < 20; ++i) {
    auto pair = secure_pair(kClient, kServer);
    ASSERT_EQ(pair.client.error_name, "") << pair.client.error_message;
    exchange(pair.client.fd, pair.server.fd, 4096);
    close_pair(pair);
  }
  std::size_t after = 0;
  for (int i = 0; i < 50; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    after = agent_->agent_fd_count();
    if (after <= before) break;
  }
  EXPECT_LE(after, before);
}

// --- against OpenSSL's own tools ---------------------------------------

struct Child {
  pid_t pid = -1;
  int in = -1, out = -1;
  ~Child() {
    if (in >= 0) close(in);
    if (out >= 0) close(out);
    if (pid > 0) {
      kill(pid, SIGTERM);
      waitpid(pid, nullptr, 0);
    }
  }
};

std::unique_ptr<Child> spawn_with_pipes(const std::vector<std::string>& argv) {
  int to_child[2], from_child[2];
  if (pipe2(to_child, O_CLOEXEC) != 0 || pipe2(from_child, O_CLOEXEC) != 0) return nullptr;
  auto child = std::make_unique<Child>();
  child->pid = fork();
  if (child->pid == 0) {
    dup2(to_child[0], 0);
    dup2(from_child[1], 1);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    _exit(127);
  }
  close(to_child[0]);
  close(from_child[1]);
  child->in = to_child[1];
  child->out = from_child[0];
  return child;
}

std::string read_line(int fd, int timeout_ms = 10000) {
  std::string line;
  char ch;
  while (true) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, timeout_ms) <= 0) break;
    if (read(fd, &ch, 1) != 1) break;
    if (ch == '\n') break;
    line += ch;
  }
  return line;
}

TEST_F(AgentTest, ConnectToOpensslServer) {
  const std::string dir = agent_->dir();
  auto server = spawn_with_pipes({"openssl", "s_server", "-accept", "127.0.0.1:24433", "-cert",
                                  dir + "/server.pem", "-key", dir + "/server.key", "-rev", "-quiet"});
  ASSERT_TRUE(server);
  CallResult result;
  for (int attempt = 0; attempt < 50; ++attempt) {
    result = CallResult{};
    agent_->connect_async("127.0.0.1", 24433, kClient, &result);
    ASSERT_TRUE(agent_->wait({&result}));
    if (result.error_name.empty()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));  // s_server still starting
  }
  ASSERT_EQ(result.error_name, "") << result.error_message;
  EXPECT_EQ(agent_->get_string(result.association, "Offload"), expected_offload());
  const char line[] = "hello tapsec\n";
  ASSERT_TRUE(write_all(result.fd, line, sizeof(line) - 1));
  std::string reply;
  char ch;
  while (read(result.fd, &ch, 1) == 1 && ch != '\n') reply += ch;
  EXPECT_EQ(reply, "cespat olleh");
  close(result.fd);
}

// A listening TCP socket on 127.0.0.1:port, or -1.
int listen_loopback(std::uint16_t port) {
  int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = htons(port);
  if (bind(listener, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 || listen(listener, 1) != 0) {
    close(listener);
    return -1;
  }
  return listener;
}

// Accepts one connection on `listener` (then closed) and secures it as the
// server through the agent.
CallResult accept_and_secure(int listener) {
  CallResult result;
  int s = accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
  close(listener);
  if (s < 0) {
    result.error_name = "test.AcceptFailed";
    return result;
  }
  AgentTest::agent()->secure_socket_async(s, "server", kServer, &result);
  if (!AgentTest::agent()->wait({&result})) result.error_name = "test.NoReply";
  close(s);
  return result;
}

TEST_F(AgentTest, OpensslClientToAgentServer) {
  const std::string dir = agent_->dir();
  int listener = listen_loopback(24434);
  ASSERT_GE(listener, 0);
  auto client = spawn_with_pipes({"openssl", "s_client", "-connect", "127.0.0.1:24434", "-CAfile", dir + "/ca.pem",
                                  "-servername", "server.test", "-verify_return_error", "-quiet"});
  ASSERT_TRUE(client);
  CallResult result = accept_and_secure(listener);
  ASSERT_EQ(result.error_name, "") << result.error_message;
  const char line[] = "hello from the agent\n";
  ASSERT_TRUE(write_all(result.fd, line, sizeof(line) - 1));
  EXPECT_EQ(read_line(client->out), "hello from the agent");
  const char back[] = "and back\n";
  ASSERT_TRUE(write_all(client->in, back, sizeof(back) - 1));
  std::string reply;
  char ch;
  while (read(result.fd, &ch, 1) == 1 && ch != '\n') reply += ch;
  EXPECT_EQ(reply, "and back");
  close(result.fd);
}

std::vector<std::uint8_t> random_bytes(std::size_t size, unsigned seed) {
  std::vector<std::uint8_t> data(size);
  std::mt19937 rng(seed);
  for (auto& x : data) x = static_cast<std::uint8_t>(rng());
  return data;
}

std::vector<std::uint8_t> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<std::uint8_t>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// Sends `out` and receives `in` over the agent's fd at once, checks what
// arrived, then terminates the association and waits for the OpenSSL peer.
void exchange_then_terminate(CallResult& result, Child& peer, const std::vector<std::uint8_t>& out,
                             const std::vector<std::uint8_t>& in, const std::string& peer_output) {
  std::vector<std::uint8_t> received(in.size());
  std::thread writer([&] { EXPECT_TRUE(write_all(result.fd, out.data(), out.size())); });
  EXPECT_TRUE(read_exact(result.fd, received.data(), received.size()));
  writer.join();
  EXPECT_TRUE(received == in) << "the data from the OpenSSL peer arrived altered";
  EXPECT_EQ(AgentTest::agent()->call_association(result.association, "Terminate", ""), "");
  // s_server hangs up as soon as its input ends: wait (bounded) until it
  // has written out everything we sent before ending its input.
  for (int i = 0; i < 600; ++i) {
    struct stat st {};
    if (stat(peer_output.c_str(), &st) == 0 && static_cast<std::size_t>(st.st_size) >= out.size()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  close(std::exchange(peer.in, -1));
  int status = 0;
  waitpid(peer.pid, &status, 0);
  peer.pid = -1;
  close(result.fd);
}

TEST_F(AgentTest, OpensslClientSixtyFourMiBEachWay) {
  const std::string dir = agent_->dir();
  const std::size_t size = 64 << 20;
  auto upload = random_bytes(size, 1), download = random_bytes(size, 2);
  {
    std::ofstream out(dir + "/upload.bin", std::ios::binary);
    out.write(reinterpret_cast<const char*>(upload.data()), size);
  }
  int listener = listen_loopback(24435);
  ASSERT_GE(listener, 0);
  // s_client sends its stdin and writes what it receives to stdout.
  auto client = spawn_with_pipes({"sh", "-c",
                                  "exec openssl s_client -connect 127.0.0.1:24435 -CAfile " + dir +
                                      "/ca.pem -servername server.test -verify_return_error -quiet -nocommands < " +
                                      dir + "/upload.bin > " + dir + "/download.bin 2>/dev/null"});
  ASSERT_TRUE(client);
  CallResult result = accept_and_secure(listener);
  ASSERT_EQ(result.error_name, "") << result.error_message;
  EXPECT_EQ(agent_->get_string(result.association, "Offload"), expected_offload());

  // close_notify ends s_client, which has written all it received by then.
  exchange_then_terminate(result, *client, download, upload, dir + "/download.bin");
  EXPECT_TRUE(read_file(dir + "/download.bin") == download) << "64 MiB to openssl s_client arrived altered";
}

TEST_F(AgentTest, ConnectToOpensslServerSixtyFourMiBEachWay) {
  const std::string dir = agent_->dir();
  const std::size_t size = 64 << 20;
  auto upload = random_bytes(size, 3), download = random_bytes(size, 4);
  {
    std::ofstream out(dir + "/served.bin", std::ios::binary);
    out.write(reinterpret_cast<const char*>(download.data()), size);
  }
  // s_server sends its stdin and writes what it receives to stdout. It
  // closes the connection when its stdin ends, so the input stays open
  // (our pipe, after the file) until our close_notify ends the connection.
  auto server = spawn_with_pipes({"sh", "-c",
                                  "cat " + dir + "/served.bin - | openssl s_server -accept 127.0.0.1:24436 "
                                  "-naccept 1 -quiet -cert " + dir + "/server.pem -key " + dir +
                                      "/server.key > " + dir + "/uploaded.bin 2>/dev/null"});
  ASSERT_TRUE(server);
  CallResult result;
  for (int attempt = 0; attempt < 50; ++attempt) {
    result = CallResult{};
    agent_->connect_async("127.0.0.1", 24436, kClient, &result);
    ASSERT_TRUE(agent_->wait({&result}));
    if (result.error_name.empty()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_EQ(result.error_name, "") << result.error_message;
  EXPECT_EQ(agent_->get_string(result.association, "Offload"), expected_offload());
  exchange_then_terminate(result, *server, upload, download, dir + "/uploaded.bin");
  EXPECT_TRUE(read_file(dir + "/uploaded.bin") == upload) << "64 MiB to openssl s_server arrived altered";
}

TEST_F(AgentTest, CleanShutdownOnSigterm) {
  // Last: a fresh agent, stopped, must exit 0.
  AgentProcess other(kPolicy);
  EXPECT_EQ(other.stop_agent(), 0);
}

}  // namespace
}  // namespace tapsec::testing
