// libtapsec and tapsecctl against a FAKE agent on a private dbus-daemon.
// This checks only the clients' marshalling (what goes over the bus, how
// replies and errors come back); the real agent has its own tests.
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <sstream>

#include <gtest/gtest.h>

#include "dbus/tapsecctl/args.h"
#include "dbus/tapsecctl/commands.h"
#include "tapsec/tapsec.h"
#include "tests/unit/clients/fake_agent.h"
#include "tests/unit/clients/private_bus.h"

namespace {

using tapsec::testing::FakeAgent;
using tapsec::testing::PrivateBus;

PrivateBus* g_bus = nullptr;

struct ClientDeleter {
  void operator()(tapsec_client* c) const { tapsec_close(c); }
};
struct PropsDeleter {
  void operator()(tapsec_props* p) const { tapsec_props_free(p); }
};
using ClientPtr = std::unique_ptr<tapsec_client, ClientDeleter>;
using PropsPtr = std::unique_ptr<tapsec_props, PropsDeleter>;

// Frees a tapsec_error at scope end.
struct ScopedError {
  tapsec_error err = {nullptr, nullptr};
  ~ScopedError() { tapsec_error_free(&err); }
};

class ClientsAgainstFake : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    g_bus = new PrivateBus();
    if (!g_bus->start()) {
      std::fprintf(stderr, "SKIPPING: cannot start a private dbus-daemon: %s\n", g_bus->why().c_str());
    }
  }
  static void TearDownTestSuite() {
    delete g_bus;
    g_bus = nullptr;
  }
  void SetUp() override {
    if (g_bus->address().empty()) GTEST_SKIP() << "no private dbus-daemon: " << g_bus->why();
    agent_ = std::make_unique<FakeAgent>(g_bus->address());
    ASSERT_TRUE(agent_->start());
    int r = 0;
    client_.reset(tapsec_open(g_bus->address().c_str(), &r));
    ASSERT_TRUE(client_) << strerror(-r);
  }

  struct CtlOutcome {
    int exit_code;
    std::string out;
    std::string err;
  };
  CtlOutcome tapsecctl(std::vector<std::string> args) {
    args.insert(args.begin(), {"--bus", g_bus->address()});
    auto parsed = tapsec::ctl::parse_arguments(args);
    EXPECT_TRUE(parsed.invocation) << parsed.error;
    if (!parsed.invocation) return {-1, "", ""};
    std::ostringstream out, err;
    int code = tapsec::ctl::run(*parsed.invocation, out, err);
    return {code, out.str(), err.str()};
  }

  std::unique_ptr<FakeAgent> agent_;
  ClientPtr client_;
};

TEST_F(ClientsAgainstFake, SecureSocketSendsFdRoleAndProps) {
  int pair[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
  PropsPtr props(tapsec_props_new());
  const char* const protocols[] = {"tls", nullptr};
  tapsec_props_set_strv(props.get(), "protocols", protocols);
  tapsec_props_set_string(props.get(), "server-name", "example.com");
  tapsec_props_set_u32(props.get(), "timeout-ms", 5000);

  ScopedError e;
  int secured = -1;
  char* path = nullptr;
  ASSERT_EQ(tapsec_secure_socket(client_.get(), pair[0], "client", props.get(), &secured, &path, &e.err), 0)
      << (e.err.message ? e.err.message : "");
  EXPECT_STREQ(path, FakeAgent::kAssociationPath);
  free(path);

  auto request = agent_->last_request();
  EXPECT_EQ(request.method, "SecureSocket");
  EXPECT_EQ(request.signature, "hsa{sv}");
  EXPECT_EQ(request.role, "client");
  ASSERT_EQ(request.props.size(), 3u);
  EXPECT_EQ(request.props[0].first, "protocols");
  EXPECT_EQ(request.props[1].second.text, "example.com");
  EXPECT_EQ(request.props[2].second.unsigned_number, 5000u);
  EXPECT_FALSE(request.validator_called);

  // The fd that came back is the same socket we handed over.
  struct stat ours {}, returned {};
  ASSERT_EQ(fstat(pair[0], &ours), 0);
  ASSERT_EQ(fstat(secured, &returned), 0);
  EXPECT_EQ(ours.st_ino, returned.st_ino);
  EXPECT_EQ(request.socket_inode, ours.st_ino);
  EXPECT_NE(secured, pair[0]);
  close(secured);
  close(pair[0]);
  close(pair[1]);
}

TEST_F(ClientsAgainstFake, RejectsABadRoleLocally) {
  ScopedError e;
  int secured = -1;
  EXPECT_EQ(tapsec_secure_socket(client_.get(), 0, "peer", nullptr, &secured, nullptr, &e.err), -EINVAL);
  EXPECT_TRUE(tapsec_error_has_name(&e.err, "org.tapsec1.Error.InvalidArgument"));
  EXPECT_EQ(agent_->last_request().method, "");
}

struct ValidatorRecord {
  int calls = 0;
  std::string protocol;
  std::string server_name;
  std::vector<std::string> chain;
  int verdict = 1;
};

int record_validation(void* userdata, const char* protocol, const char* server_name, const tapsec_certificate* chain,
                      size_t chain_length, char** out_reason) {
  auto* record = static_cast<ValidatorRecord*>(userdata);
  record->calls++;
  record->protocol = protocol;
  record->server_name = server_name;
  for (size_t i = 0; i < chain_length; i++)
    record->chain.emplace_back(reinterpret_cast<const char*>(chain[i].der), chain[i].length);
  *out_reason = strdup(record->verdict ? "pinned by the test" : "not the certificate the test expects");
  return record->verdict;
}

TEST_F(ClientsAgainstFake, ValidatorIsServedDuringSecureSocket) {
  ValidatorRecord record;
  ASSERT_EQ(tapsec_client_set_validator(client_.get(), "/org/example/Validator", record_validation, &record), 0);
  PropsPtr props(tapsec_props_new());
  tapsec_props_set_string(props.get(), "server-name", "example.com");
  tapsec_props_set_string(props.get(), "peer-validation", "application");

  int pair[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
  ScopedError e;
  int secured = -1;
  ASSERT_EQ(tapsec_secure_socket(client_.get(), pair[0], "client", props.get(), &secured, nullptr, &e.err), 0)
      << (e.err.message ? e.err.message : "");
  close(secured);

  // The library added the validator's path, and the fake's call came back.
  auto request = agent_->last_request();
  const auto* validator = tapsec::ctl::find_property(request.props, "validator");
  ASSERT_NE(validator, nullptr);
  EXPECT_EQ(validator->text, "/org/example/Validator");
  EXPECT_TRUE(request.validator_called);
  EXPECT_TRUE(request.validator_accepted);
  EXPECT_EQ(request.validator_reason, "pinned by the test");
  EXPECT_EQ(record.calls, 1);
  EXPECT_EQ(record.protocol, "tls");
  EXPECT_EQ(record.server_name, "example.com");
  EXPECT_EQ(record.chain, (std::vector<std::string>{"fake leaf certificate", "fake issuer"}));

  // A rejection becomes PeerNotValidated for the application.
  record.verdict = 0;
  ScopedError rejected;
  EXPECT_EQ(tapsec_secure_socket(client_.get(), pair[0], "client", props.get(), &secured, nullptr, &rejected.err),
            -EKEYREJECTED);
  EXPECT_TRUE(tapsec_error_has_name(&rejected.err, "org.tapsec1.Error.PeerNotValidated"));
  ASSERT_NE(rejected.err.message, nullptr);
  EXPECT_NE(std::string(rejected.err.message).find("not the certificate the test expects"), std::string::npos);
  close(pair[0]);
  close(pair[1]);
}

TEST_F(ClientsAgainstFake, ConnectReturnsAReadableSocket) {
  ScopedError e;
  int secured = -1;
  char* path = nullptr;
  ASSERT_EQ(tapsec_connect(client_.get(), "example.com", 8443, nullptr, &secured, &path, &e.err), 0);
  free(path);
  auto request = agent_->last_request();
  EXPECT_EQ(request.signature, "sqa{sv}");
  EXPECT_EQ(request.host, "example.com");
  EXPECT_EQ(request.port, 8443u);
  std::string received;
  char buffer[64];
  ssize_t n;
  while ((n = tapsec_read(secured, buffer, sizeof(buffer))) > 0) received.append(buffer, n);
  EXPECT_EQ(n, 0);
  EXPECT_EQ(received, "hello example.com:8443\n");
  close(secured);
}

TEST_F(ClientsAgainstFake, AgentErrorsCarryNameMessageAndErrno) {
  PropsPtr props(tapsec_props_new());
  tapsec_props_set_string(props.get(), "identity", "missing");
  ScopedError e;
  int secured = -1;
  EXPECT_EQ(tapsec_connect(client_.get(), "example.com", 443, props.get(), &secured, nullptr, &e.err), -ENOKEY);
  EXPECT_TRUE(tapsec_error_has_name(&e.err, "org.tapsec1.Error.NoSuchIdentity"));
  EXPECT_STREQ(e.err.message, "No identity \"missing\" is defined");
  EXPECT_EQ(secured, -1);
}

TEST_F(ClientsAgainstFake, AssociationMethods) {
  const char* path = FakeAgent::kAssociationPath;
  ScopedError e;
  EXPECT_EQ(tapsec_update_keys(client_.get(), path, 1, &e.err), 0);
  EXPECT_EQ(tapsec_terminate(client_.get(), path, &e.err), 0);

  const std::uint8_t context[] = {1, 2, 3};
  uint8_t* material = nullptr;
  ASSERT_EQ(tapsec_export_keying_material(client_.get(), path, "EXPORTER-test", context, sizeof(context), 20,
                                          &material, &e.err),
            0);
  auto expected = FakeAgent::fake_export("EXPORTER-test", {1, 2, 3}, 20);
  EXPECT_EQ(std::vector<std::uint8_t>(material, material + 20), expected);
  tapsec_secret_free(material, 20);

  material = nullptr;
  EXPECT_EQ(tapsec_export_keying_material(client_.get(), path, "denied", nullptr, 0, 16, &material, &e.err), -EPERM);
  EXPECT_TRUE(tapsec_error_has_name(&e.err, "org.tapsec1.Error.ExportDenied"));
  EXPECT_EQ(material, nullptr);

  EXPECT_EQ(agent_->association_calls(),
            (std::vector<std::string>{"UpdateKeys(true)", "Terminate()", "ExportKeyingMaterial(EXPORTER-test,3,20)",
                                      "ExportKeyingMaterial(denied,0,16)"}));
  tapsec_error_free(&e.err);
  EXPECT_EQ(tapsec_update_keys(client_.get(), "/org/tapsec1/association/99", 0, &e.err) < 0, true);
  EXPECT_NE(e.err.name, nullptr);
}

TEST_F(ClientsAgainstFake, PropertyGetters) {
  const char* path = FakeAgent::kAssociationPath;
  ScopedError e;
  char* cipher = nullptr;
  ASSERT_EQ(tapsec_get_association_property_string(client_.get(), path, "Cipher", &cipher, &e.err), 0);
  EXPECT_STREQ(cipher, "TLS_AES_128_GCM_SHA256");
  free(cipher);
  uint64_t value = 0;
  ASSERT_EQ(tapsec_get_association_property_u64(client_.get(), path, "BytesSent", &value, &e.err), 0);
  EXPECT_EQ(value, 123456u);
  ASSERT_EQ(tapsec_get_association_property_u64(client_.get(), path, "OwnerUid", &value, &e.err), 0);
  EXPECT_EQ(value, 1000u);
  int resumed = 0;
  ASSERT_EQ(tapsec_get_association_property_bool(client_.get(), path, "Resumed", &resumed, &e.err), 0);
  EXPECT_EQ(resumed, 1);
  EXPECT_EQ(tapsec_get_association_property_u64(client_.get(), path, "Cipher", &value, &e.err), -EBADMSG);
  char* text = nullptr;
  EXPECT_EQ(tapsec_get_association_property_string(client_.get(), path, "BytesSent", &text, &e.err), -EBADMSG);
  EXPECT_EQ(text, nullptr);
}

TEST_F(ClientsAgainstFake, KeyExpiredReadErrorAsksTheAgent) {
  EXPECT_EQ(tapsec_handle_read_error(client_.get(), FakeAgent::kAssociationPath, -1, EKEYEXPIRED), TAPSEC_READ_RETRY);
  EXPECT_EQ(agent_->association_calls(), std::vector<std::string>{"UpdateKeys(false)"});
}

TEST_F(ClientsAgainstFake, AgentNotRunning) {
  agent_->stop();
  ScopedError e;
  int secured = -1;
  EXPECT_EQ(tapsec_connect(client_.get(), "example.com", 443, nullptr, &secured, nullptr, &e.err), -EHOSTDOWN);
  ASSERT_NE(e.err.message, nullptr);
  EXPECT_STREQ(e.err.message, "tapsecd is not running (org.tapsec1 not on the bus)");

  auto o = tapsecctl({"status"});
  EXPECT_EQ(o.exit_code, tapsec::ctl::kExitFailure);
  EXPECT_EQ(o.err, "tapsecctl: tapsecd is not running (org.tapsec1 not on the bus)\n");
}

// ---------------------------------------------------------------- tapsecctl

TEST_F(ClientsAgainstFake, CtlStatus) {
  auto o = tapsecctl({"status"});
  EXPECT_EQ(o.exit_code, 0) << o.err;
  EXPECT_NE(o.out.find("tapsecd 0.1.0-fake"), std::string::npos) << o.out;
  EXPECT_NE(o.out.find("ktls ktls-rekey"), std::string::npos) << o.out;
  EXPECT_NE(o.out.find("Associations: 1"), std::string::npos) << o.out;
  EXPECT_NE(o.out.find("7 of 1024"), std::string::npos) << o.out;

  o = tapsecctl({"status", "--json"});
  EXPECT_EQ(o.exit_code, 0) << o.err;
  EXPECT_EQ(o.out,
            "{\"version\":\"0.1.0-fake\",\"kernel_features\":[\"ktls\",\"ktls-rekey\"],\"associations\":1,"
            "\"session_cache\":{\"entries\":7,\"capacity\":1024}}\n");
}

TEST_F(ClientsAgainstFake, CtlAssociations) {
  auto o = tapsecctl({"associations"});
  EXPECT_EQ(o.exit_code, 0) << o.err;
  EXPECT_EQ(o.out.rfind("ID  PROTOCOL  VERSION  CIPHER", 0), 0u) << o.out;
  EXPECT_NE(o.out.find("1   tls       TLSv1.3  TLS_AES_128_GCM_SHA256  kernel   192.0.2.2:443  established  "
                       "120.6K/789B"),
            std::string::npos)
      << o.out;
  o = tapsecctl({"associations", "--json"});
  EXPECT_EQ(o.exit_code, 0) << o.err;
  EXPECT_EQ(o.out,
            "{\"associations\":[{\"id\":\"1\",\"path\":\"/org/tapsec1/association/1\",\"protocol\":\"tls\","
            "\"version\":\"TLSv1.3\",\"cipher\":\"TLS_AES_128_GCM_SHA256\",\"offload\":\"kernel\","
            "\"peer_address\":\"192.0.2.2:443\",\"peer_identity\":\"CN=example.com \\\"quoted\\\"\","
            "\"state\":\"established\",\"bytes_sent\":123456,\"bytes_received\":789}]}\n");
}

TEST_F(ClientsAgainstFake, CtlShow) {
  auto o = tapsecctl({"show", "1"});
  EXPECT_EQ(o.exit_code, 0) << o.err;
  EXPECT_NE(o.out.find("  Cipher: TLS_AES_128_GCM_SHA256\n"), std::string::npos) << o.out;
  EXPECT_NE(o.out.find("ExpiresAt: never\n"), std::string::npos) << o.out;
  EXPECT_NE(o.out.find("CreatedAt: 2023-11-14T22:13:20Z\n"), std::string::npos) << o.out;
  EXPECT_NE(o.out.find("Resumed: yes\n"), std::string::npos) << o.out;
  o = tapsecctl({"show", "1", "--json"});
  EXPECT_EQ(o.exit_code, 0) << o.err;
  EXPECT_NE(o.out.find("\"KeyEpoch\":0,"), std::string::npos) << o.out;
  EXPECT_NE(o.out.find("\"Resumed\":true,"), std::string::npos) << o.out;
  o = tapsecctl({"show", "42"});
  EXPECT_EQ(o.exit_code, 1);
  EXPECT_NE(o.err.find("no such association"), std::string::npos) << o.err;
}

TEST_F(ClientsAgainstFake, CtlAssociationMethods) {
  EXPECT_EQ(tapsecctl({"update-keys", "1", "--request-peer"}).exit_code, 0);
  auto o = tapsecctl({"terminate", "/org/tapsec1/association/1", "--json"});
  EXPECT_EQ(o.exit_code, 0) << o.err;
  EXPECT_EQ(o.out, "{\"id\":\"1\",\"result\":\"terminated\"}\n");
  o = tapsecctl({"export", "1", "--label", "EXPORTER-x", "--context", "0a0b", "--length", "8"});
  EXPECT_EQ(o.exit_code, 0) << o.err;
  auto expected = FakeAgent::fake_export("EXPORTER-x", {0x0a, 0x0b}, 8);
  EXPECT_EQ(o.out, tapsec::ctl::to_hex(expected.data(), expected.size()) + "\n");
  o = tapsecctl({"export", "1", "--label", "denied", "--length", "8", "--json"});
  EXPECT_EQ(o.exit_code, 1);
  EXPECT_EQ(o.out,
            "{\"error\":{\"name\":\"org.tapsec1.Error.ExportDenied\",\"message\":\"exporting keying material of "
            "association 1: Policy does not allow key export here\"}}\n");
  EXPECT_EQ(agent_->association_calls(),
            (std::vector<std::string>{"UpdateKeys(true)", "Terminate()", "ExportKeyingMaterial(EXPORTER-x,2,8)",
                                      "ExportKeyingMaterial(denied,0,8)"}));
}

TEST_F(ClientsAgainstFake, CtlFlushCache) {
  auto o = tapsecctl({"flush-cache"});
  EXPECT_EQ(o.exit_code, 0) << o.err;
  EXPECT_EQ(o.out, "Removed 7 session cache entries.\n");
  o = tapsecctl({"flush-cache", "--json"});
  EXPECT_EQ(o.out, "{\"entries_removed\":7}\n");
}

}  // namespace

// `tapsecctl monitor` as a separate process: events become JSON lines and
// SIGINT ends it cleanly.
namespace {

TEST_F(ClientsAgainstFake, CtlMonitorPrintsEventsUntilSigint) {
  int out_pipe[2];
  ASSERT_EQ(pipe2(out_pipe, O_CLOEXEC), 0);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    dup2(out_pipe[1], 1);
    execl(TAPSECCTL_BINARY, "tapsecctl", "--bus", g_bus->address().c_str(), "--json", "monitor",
          static_cast<char*>(nullptr));
    _exit(127);
  }
  close(out_pipe[1]);

  // Signals sent before the monitor subscribed would be lost: repeat the
  // trigger until the first event shows up (bounded).
  std::string output;
  for (int attempt = 0; attempt < 50 && output.find("KeysUpdated") == std::string::npos; attempt++) {
    ScopedError e;
    ASSERT_EQ(tapsec_update_keys(client_.get(), FakeAgent::kAssociationPath, 0, &e.err), 0);
    struct pollfd p = {out_pipe[0], POLLIN, 0};
    while (poll(&p, 1, 100) > 0) {
      char buffer[512];
      ssize_t n = read(out_pipe[0], buffer, sizeof(buffer));
      if (n <= 0) break;
      output.append(buffer, n);
    }
  }
  kill(pid, SIGINT);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  char buffer[512];
  ssize_t n;
  while ((n = read(out_pipe[0], buffer, sizeof(buffer))) > 0) output.append(buffer, n);
  close(out_pipe[0]);

  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
  const auto start = output.find("{\"time\":\"");
  ASSERT_NE(start, std::string::npos) << output;
  const auto line_end = output.find('\n', start);
  const std::string line = output.substr(start, line_end - start);
  EXPECT_NE(line.find("\"event\":\"KeysUpdated\",\"path\":\"/org/tapsec1/association/1\",\"id\":\"1\",\"epoch\":"),
            std::string::npos)
      << line;
  EXPECT_EQ(line.back(), '}') << line;
}

}  // namespace
