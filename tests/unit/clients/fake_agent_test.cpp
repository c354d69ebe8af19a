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

#include <cctype>
#include <cstring>
#include <ctime>
#include <map>
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
    agent_ = std::make_unique<FakeAgent>(g_bus->address(), with_tunnels(), with_wireguard());
    ASSERT_TRUE(agent_->start());
    int r = 0;
    client_.reset(tapsec_open(g_bus->address().c_str(), &r));
    ASSERT_TRUE(client_) << strerror(-r);
  }

  // Whether the fake also serves an IKE SA and a Child SA.
  virtual bool with_tunnels() const { return false; }
  // Whether it serves a WireGuard interface with two peers instead.
  virtual bool with_wireguard() const { return false; }

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
  EXPECT_NE(o.out.find("Statistics: ike-dropped-malformed=3 ike-received=12"), std::string::npos) << o.out;

  o = tapsecctl({"status", "--json"});
  EXPECT_EQ(o.exit_code, 0) << o.err;
  EXPECT_EQ(o.out,
            "{\"version\":\"0.1.0-fake\",\"kernel_features\":[\"ktls\",\"ktls-rekey\"],\"associations\":1,"
            "\"session_cache\":{\"entries\":7,\"capacity\":1024},"
            "\"statistics\":{\"ike-dropped-malformed\":3,\"ike-received\":12}}\n");
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
            "\"state\":\"established\",\"bytes_sent\":123456,\"bytes_received\":789,\"key_epoch\":0,"
            "\"group\":\"X25519\",\"local_address\":\"192.0.2.1:40000\",\"local_identity\":\"\",\"expires_at\":0,"
            "\"created_at\":1700000000000000,\"parent\":0,\"tunnel_name\":\"\",\"mode\":\"\",\"local_ts\":[],"
            "\"remote_ts\":[],\"inbound_spi\":\"\",\"outbound_spi\":\"\",\"encapsulation\":\"\",\"packets_sent\":0,"
            "\"packets_received\":0}]}\n");
  // Without tunnels the table has no tunnel columns.
  EXPECT_EQ(tapsecctl({"associations"}).out.find("PARENT"), std::string::npos);
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

// tapsecctl's tunnel commands and the IPsec association properties, against
// the fake serving a TLS association (1), an IKE SA (2) and its Child SA (3).
namespace {

class TunnelsAgainstFake : public ClientsAgainstFake {
 protected:
  bool with_tunnels() const override { return true; }
};

const tapsec::ctl::Value* prop(const FakeAgent::Request& request, const std::string& key) {
  return tapsec::ctl::find_property(request.props, key);
}

TEST_F(TunnelsAgainstFake, TunnelUpSendsOnlyTheGivenProps) {
  auto o = tapsecctl({"tunnel", "up", "branch"});
  EXPECT_EQ(o.exit_code, 0) << o.err;
  EXPECT_EQ(o.out, "Tunnel branch is up: IKE SA 2 (/org/tapsec1/association/2)\n");
  auto request = agent_->last_tunnel_request();
  EXPECT_EQ(request.method, "EstablishTunnel");
  EXPECT_EQ(request.signature, "sa{sv}");
  EXPECT_EQ(request.host, "branch");
  EXPECT_TRUE(request.props.empty());

  o = tapsecctl({"tunnel", "up", "192.0.2.9", "--psk", "link", "--local-id", "gw-a", "--remote-id", "CN=gw b",
                 "--local-ts", "10.1.0.0/24", "--local-ts", "10.4.0.0/24,10.5.0.0/24", "--remote-ts",
                 "10.2.0.0/24[tcp/443]", "--mode", "transport", "--ike-proposal", "aes256gcm16-prfsha384-x25519",
                 "--esp-proposal", "aes256gcm16", "--esp-proposal", "aes128gcm16-esn", "--timeout-ms", "5000",
                 "--json"});
  EXPECT_EQ(o.exit_code, 0) << o.err;
  EXPECT_EQ(o.out, "{\"peer\":\"192.0.2.9\",\"id\":\"2\",\"path\":\"/org/tapsec1/association/2\"}\n");
  request = agent_->last_tunnel_request();
  EXPECT_EQ(request.host, "192.0.2.9");
  std::vector<std::string> keys;
  for (const auto& [key, value] : request.props) keys.push_back(key);
  EXPECT_EQ(keys, (std::vector<std::string>{"psk", "local-id", "remote-id", "local-ts", "remote-ts", "mode",
                                            "algorithms", "timeout-ms"}));
  EXPECT_EQ(prop(request, "psk")->text, "link");
  EXPECT_EQ(prop(request, "remote-id")->text, "CN=gw b");
  ASSERT_EQ(prop(request, "local-ts")->kind, tapsec::ctl::Value::Kind::Array);
  EXPECT_EQ(tapsec::ctl::value_to_text(*prop(request, "local-ts")), "10.1.0.0/24, 10.4.0.0/24, 10.5.0.0/24");
  EXPECT_EQ(tapsec::ctl::value_to_text(*prop(request, "remote-ts")), "10.2.0.0/24[tcp/443]");
  EXPECT_EQ(prop(request, "mode")->text, "transport");
  const auto* algorithms = prop(request, "algorithms");
  ASSERT_EQ(algorithms->kind, tapsec::ctl::Value::Kind::Dict);
  ASSERT_EQ(algorithms->entries.size(), 2u);
  EXPECT_EQ(algorithms->entries[0].first, "ike");
  EXPECT_EQ(tapsec::ctl::value_to_text(algorithms->entries[0].second), "aes256gcm16-prfsha384-x25519");
  EXPECT_EQ(algorithms->entries[1].first, "esp");
  EXPECT_EQ(tapsec::ctl::value_to_text(algorithms->entries[1].second), "aes256gcm16, aes128gcm16-esn");
  ASSERT_EQ(prop(request, "timeout-ms")->kind, tapsec::ctl::Value::Kind::Unsigned);
  EXPECT_EQ(prop(request, "timeout-ms")->unsigned_number, 5000u);
}

TEST_F(TunnelsAgainstFake, TunnelUpReportsTheAgentsError) {
  auto o = tapsecctl({"tunnel", "up", "refused", "--json"});
  EXPECT_EQ(o.exit_code, 1);
  EXPECT_EQ(o.err, "tapsecctl: establishing tunnel refused: the peer answered IKE_AUTH with AUTHENTICATION_FAILED\n");
  EXPECT_EQ(o.out,
            "{\"error\":{\"name\":\"org.tapsec1.Error.HandshakeFailed\",\"message\":\"establishing tunnel refused: the "
            "peer answered IKE_AUTH with AUTHENTICATION_FAILED\"}}\n");
}

TEST_F(TunnelsAgainstFake, Tunnels) {
  auto o = tapsecctl({"tunnels"});
  EXPECT_EQ(o.exit_code, 0) << o.err;
  EXPECT_EQ(o.out,
            "NAME     PROTOCOL  PEER                 START  STATE  IKE SA\n"
            "branch   ikev2     198.51.100.7         trap   up     2\n"
            "partner  ikev2     vpn.partner.example  none   down   -\n"
            "\n2 tunnels listed.\n");
  o = tapsecctl({"tunnels", "--json"});
  EXPECT_EQ(o.exit_code, 0) << o.err;
  EXPECT_EQ(o.out,
            "{\"tunnels\":[{\"name\":\"branch\",\"protocol\":\"ikev2\",\"peer\":\"198.51.100.7\",\"start\":\"trap\","
            "\"state\":\"up\",\"association\":2,\"path\":\"/org/tapsec1/association/2\"},{\"name\":\"partner\","
            "\"protocol\":\"ikev2\",\"peer\":\"vpn.partner.example\",\"start\":\"none\",\"state\":\"down\","
            "\"association\":0,\"path\":\"/\"}]}\n");
}

TEST_F(TunnelsAgainstFake, AssociationsShowTheTunnelColumnsAndKeys) {
  auto o = tapsecctl({"associations"});
  EXPECT_EQ(o.exit_code, 0) << o.err;
  EXPECT_NE(o.out.find("SENT/RECEIVED  PARENT  TUNNEL\n"), std::string::npos) << o.out;
  EXPECT_NE(o.out.find("3   esp "), std::string::npos) << o.out;
  EXPECT_NE(o.out.find("  2       branch\n"), std::string::npos) << o.out;
  EXPECT_NE(o.out.find("3 associations listed."), std::string::npos) << o.out;

  o = tapsecctl({"associations", "--json"});
  EXPECT_EQ(o.exit_code, 0) << o.err;
  // In id order, whatever order the agent listed them in.
  const auto first = o.out.find("\"id\":\"1\""), second = o.out.find("\"id\":\"2\""), third = o.out.find("\"id\":\"3\"");
  ASSERT_NE(third, std::string::npos) << o.out;
  EXPECT_LT(first, second);
  EXPECT_LT(second, third);
  const std::string child = o.out.substr(third);
  for (const char* expected :
       {"\"protocol\":\"esp\"", "\"state\":\"established\"", "\"peer_identity\":\"gw-b.example.com\"",
        "\"bytes_sent\":840000", "\"bytes_received\":910000", "\"key_epoch\":1", "\"parent\":2",
        "\"tunnel_name\":\"branch\"", "\"mode\":\"tunnel\"", "\"local_ts\":[\"10.1.0.0/24\"]",
        "\"remote_ts\":[\"10.2.0.0/24\",\"10.3.0.0/16[tcp/443]\"]", "\"inbound_spi\":\"0xc2a3e1f0\"",
        "\"outbound_spi\":\"0x0a1b2c3d\"", "\"encapsulation\":\"udp\"", "\"packets_sent\":700",
        "\"packets_received\":650"})
    EXPECT_NE(child.find(expected), std::string::npos) << expected << " in " << child;
  EXPECT_NE(o.out.find("\"inbound_spi\":\"0x8a7f3e21c4d5b6a7\""), std::string::npos) << o.out;
}

TEST_F(TunnelsAgainstFake, ShowNamesTheParent) {
  auto o = tapsecctl({"show", "3"});
  EXPECT_EQ(o.exit_code, 0) << o.err;
  EXPECT_NE(o.out.find("  Parent: 2 (/org/tapsec1/association/2)\n"), std::string::npos) << o.out;
  EXPECT_NE(o.out.find("RemoteTrafficSelectors: 10.2.0.0/24, 10.3.0.0/16[tcp/443]\n"), std::string::npos) << o.out;
  o = tapsecctl({"show", "2"});
  EXPECT_NE(o.out.find("  Parent: none\n"), std::string::npos) << o.out;
  o = tapsecctl({"show", "3", "--json"});
  EXPECT_EQ(o.exit_code, 0) << o.err;
  EXPECT_NE(o.out.find("\"parent\":2,\"tunnel_name\":\"branch\""), std::string::npos) << o.out;
  EXPECT_NE(o.out.find("\"properties\":{"), std::string::npos) << o.out;
  EXPECT_NE(o.out.find("\"Parent\":\"/org/tapsec1/association/2\""), std::string::npos) << o.out;
}

TEST_F(TunnelsAgainstFake, SasIsATreeOfIkeSasAndTheirChildren) {
  auto o = tapsecctl({"sas"});
  EXPECT_EQ(o.exit_code, 0) << o.err;
  EXPECT_EQ(o.out,
            "branch: #2, established, IKEv2, SPIs ours 0x8a7f3e21c4d5b6a7 peer's 0x1c2d3e4f5a6b7c8d\n"
            "  local  'gw-a.example.com' @ 192.0.2.1:4500\n"
            "  remote 'gw-b.example.com' @ 198.51.100.7:4500 (udp encapsulation)\n"
            "  AES_GCM_16_256/PRF_HMAC_SHA2_384/CURVE_25519\n"
            "  created 2023-11-14T22:13:20Z, key epoch 0, expires 2023-11-15T02:13:20Z\n"
            "  branch: #3, established, ESP tunnel in udp, SPIs 0xc2a3e1f0_i 0x0a1b2c3d_o\n"
            "    AES_GCM_16_256\n"
            "    in  0xc2a3e1f0, 910000 bytes, 650 packets\n"
            "    out 0x0a1b2c3d, 840000 bytes, 700 packets\n"
            "    local  10.1.0.0/24\n"
            "    remote 10.2.0.0/24 10.3.0.0/16[tcp/443]\n"
            "    key epoch 1, expires 2023-11-14T23:13:20Z\n");

  o = tapsecctl({"sas", "--json"});
  EXPECT_EQ(o.exit_code, 0) << o.err;
  ASSERT_EQ(o.out.rfind("[{\"id\":\"2\",", 0), 0u) << o.out;
  const auto children = o.out.find("\"children\":[{\"id\":\"3\",");
  ASSERT_NE(children, std::string::npos) << o.out;
  EXPECT_NE(o.out.find("\"protocol\":\"ikev2\""), std::string::npos);
  EXPECT_NE(o.out.find("\"parent\":2", children), std::string::npos);
  EXPECT_EQ(o.out.substr(o.out.size() - 6), "0}]}]\n") << o.out;
  // The TLS association is not an SA.
  EXPECT_EQ(o.out.find("\"id\":\"1\""), std::string::npos) << o.out;
}

TEST_F(ClientsAgainstFake, SasWithoutTunnels) {
  auto o = tapsecctl({"sas"});
  EXPECT_EQ(o.exit_code, 0) << o.err;
  EXPECT_EQ(o.out, "No IKE SAs.\n");
  EXPECT_EQ(tapsecctl({"sas", "--json"}).out, "[]\n");
}

}  // namespace

// tapsecctl's WireGuard commands, against the fake serving a TLS association
// (1), the interface wg-beta (4) and its two peers (5: handshaked 12 s ago,
// PSK epoch 3 rotating in 95 s; 6: never handshaked, no agent).
namespace {

class WireGuardAgainstFake : public ClientsAgainstFake {
 protected:
  bool with_wireguard() const override { return true; }
};

// Just enough JSON to read tapsecctl's output back: objects, arrays,
// strings (with \" and \\), unsigned numbers, booleans.
struct Json {
  enum class Kind { Null, Bool, Number, String, Array, Object } kind = Kind::Null;
  bool flag = false;
  std::uint64_t number = 0;
  std::string text;
  std::vector<Json> items;
  std::map<std::string, Json> fields;
  const Json& operator[](const std::string& key) const {
    static const Json missing;
    auto it = fields.find(key);
    return it == fields.end() ? missing : it->second;
  }
};

class JsonReader {
 public:
  explicit JsonReader(const std::string& text) : text_(text) {}
  bool read(Json& out) {
    if (!value(out)) return false;
    skip_space();
    return at_ == text_.size();
  }

 private:
  void skip_space() {
    while (at_ < text_.size() && std::isspace(static_cast<unsigned char>(text_[at_]))) at_++;
  }
  bool literal(const char* word) {
    const std::size_t length = std::strlen(word);
    if (text_.compare(at_, length, word) != 0) return false;
    at_ += length;
    return true;
  }
  bool string(std::string& out) {
    if (at_ >= text_.size() || text_[at_] != '"') return false;
    for (at_++; at_ < text_.size(); at_++) {
      char c = text_[at_];
      if (c == '"') {
        at_++;
        return true;
      }
      if (c == '\\') {
        if (++at_ >= text_.size()) return false;
        c = text_[at_];
        if (c != '"' && c != '\\' && c != '/') return false;
      }
      out.push_back(c);
    }
    return false;
  }
  bool value(Json& out) {
    skip_space();
    if (at_ >= text_.size()) return false;
    const char c = text_[at_];
    if (c == '{') {
      out.kind = Json::Kind::Object;
      at_++;
      skip_space();
      if (at_ < text_.size() && text_[at_] == '}') return ++at_, true;
      for (;;) {
        skip_space();
        std::string key;
        if (!string(key)) return false;
        skip_space();
        if (at_ >= text_.size() || text_[at_++] != ':') return false;
        if (!value(out.fields[key])) return false;
        skip_space();
        if (at_ < text_.size() && text_[at_] == ',') {
          at_++;
          continue;
        }
        return at_ < text_.size() && text_[at_++] == '}';
      }
    }
    if (c == '[') {
      out.kind = Json::Kind::Array;
      at_++;
      skip_space();
      if (at_ < text_.size() && text_[at_] == ']') return ++at_, true;
      for (;;) {
        out.items.emplace_back();
        if (!value(out.items.back())) return false;
        skip_space();
        if (at_ < text_.size() && text_[at_] == ',') {
          at_++;
          continue;
        }
        return at_ < text_.size() && text_[at_++] == ']';
      }
    }
    if (c == '"') {
      out.kind = Json::Kind::String;
      return string(out.text);
    }
    if (literal("true") || literal("false")) {
      out.kind = Json::Kind::Bool;
      out.flag = text_[at_ - 1] == 'e' && text_[at_ - 2] == 'u';
      return true;
    }
    if (literal("null")) return true;
    if (!std::isdigit(static_cast<unsigned char>(c))) return false;
    out.kind = Json::Kind::Number;
    while (at_ < text_.size() && std::isdigit(static_cast<unsigned char>(text_[at_])))
      out.number = out.number * 10 + static_cast<std::uint64_t>(text_[at_++] - '0');
    return true;
  }

  const std::string& text_;
  std::size_t at_ = 0;
};

std::vector<std::string> texts(const Json& array) {
  std::vector<std::string> out;
  for (const Json& item : array.items) out.push_back(item.text);
  return out;
}

TEST_F(WireGuardAgainstFake, ShowIsLikeWgShow) {
  const std::string expected =
      "interface: wg-beta  (tunnel to-beta, offload kernel, up)\n"
      "  public key: InuaCBxqTGbed/OPQrtBhmqQsvqN6Pnux2+166C752Q=\n"
      "  listening port: 51820\n"
      "  addresses: 10.9.0.1/24, fd00:9::1/64\n"
      "\n"
      "  peer: zP8JjmCn7M1N4sCpPjVRgMq9+4AxVByfGxpBjyEvUkk=  (CN=beta.example)\n"
      "    endpoint: 192.0.2.2:51820\n"
      "    allowed ips: 10.9.0.2/32, 10.20.0.0/16\n"
      "    latest handshake: 12 seconds ago\n"
      "    transfer: 1.20 KiB received, 3.40 KiB sent\n"
      "    preshared key: exchanged, epoch 3, rotates in 1 minute, 35 seconds\n"
      "    state: established\n"
      "\n"
      "  peer: MiWQAZfPsc0aR3I2Tx/wTXjEVRdeY9JicV6USEnXMk8=  (wireguard:MiWQAZfP)\n"
      "    allowed ips: 10.9.0.3/32\n"
      "    latest handshake: (none)\n"
      "    preshared key: static (imported by name)\n"
      "    state: connecting\n";
  auto o = tapsecctl({"wg"});
  EXPECT_EQ(o.exit_code, 0) << o.err;
  EXPECT_EQ(o.out, expected);
  o = tapsecctl({"wg", "show"});
  EXPECT_EQ(o.exit_code, 0) << o.err;
  EXPECT_EQ(o.out, expected);
}

TEST_F(WireGuardAgainstFake, ShowJsonParsesBack) {
  const std::uint64_t before = static_cast<std::uint64_t>(time(nullptr));
  auto o = tapsecctl({"wg", "show", "--json"});
  const std::uint64_t after = static_cast<std::uint64_t>(time(nullptr));
  EXPECT_EQ(o.exit_code, 0) << o.err;
  ASSERT_EQ(o.out.back(), '\n');
  Json document;
  ASSERT_TRUE(JsonReader(o.out).read(document)) << o.out;
  const Json& interfaces = document["interfaces"];
  ASSERT_EQ(interfaces.items.size(), 1u) << o.out;
  const Json& link = interfaces.items[0];
  EXPECT_EQ(link["interface"].text, "wg-beta");
  EXPECT_EQ(link["tunnel"].text, "to-beta");
  EXPECT_EQ(link["offload"].text, "kernel");
  EXPECT_EQ(link["state"].text, "up");
  EXPECT_EQ(link["public_key"].text, FakeAgent::kWgPublicKey);
  EXPECT_EQ(link["listen_port"].number, 51820u);
  EXPECT_EQ(texts(link["addresses"]), (std::vector<std::string>{"10.9.0.1/24", "fd00:9::1/64"}));
  EXPECT_EQ(link["association"].text, FakeAgent::kWgInterfacePath);
  const Json& peers = link["peers"];
  ASSERT_EQ(peers.items.size(), 2u);
  const Json& beta = peers.items[0];
  EXPECT_EQ(beta["public_key"].text, FakeAgent::kWgPeerKey);
  EXPECT_EQ(beta["peer_identity"].text, "CN=beta.example");
  EXPECT_EQ(beta["endpoint"].text, "192.0.2.2:51820");
  EXPECT_EQ(texts(beta["allowed_ips"]), (std::vector<std::string>{"10.9.0.2/32", "10.20.0.0/16"}));
  EXPECT_GE(beta["latest_handshake"].number, before - 13);
  EXPECT_LE(beta["latest_handshake"].number, after - 11);
  EXPECT_EQ(beta["rx_bytes"].number, 1229u);
  EXPECT_EQ(beta["tx_bytes"].number, 3482u);
  EXPECT_EQ(beta["psk_epoch"].number, 3u);
  EXPECT_EQ(beta["psk"].text, "exchanged");
  EXPECT_GE(beta["psk_rotates_at"].number, before + 94);
  EXPECT_LE(beta["psk_rotates_at"].number, after + 95);
  EXPECT_EQ(beta["state"].text, "established");
  EXPECT_EQ(beta["association"].text, FakeAgent::kWgPeerPath);
  const Json& silent = peers.items[1];
  EXPECT_EQ(silent["public_key"].text, FakeAgent::kWgSilentPeerKey);
  EXPECT_EQ(silent["endpoint"].kind, Json::Kind::String);
  EXPECT_EQ(silent["endpoint"].text, "");
  EXPECT_EQ(silent["latest_handshake"].kind, Json::Kind::Number);
  EXPECT_EQ(silent["latest_handshake"].number, 0u);
  EXPECT_EQ(silent["psk_epoch"].number, 0u);
  EXPECT_EQ(silent["psk"].text, "static");
  EXPECT_EQ(silent["psk_rotates_at"].number, 0u);
  EXPECT_EQ(silent["state"].text, "connecting");
  EXPECT_EQ(silent["association"].text, FakeAgent::kWgSilentPeerPath);
}

TEST_F(ClientsAgainstFake, WgWithoutWireGuard) {
  auto o = tapsecctl({"wg"});
  EXPECT_EQ(o.exit_code, 0) << o.err;
  EXPECT_EQ(o.out, "No WireGuard interfaces.\n");
  EXPECT_EQ(tapsecctl({"wg", "--json"}).out, "{\"interfaces\":[]}\n");
}

TEST_F(WireGuardAgainstFake, Pubkey) {
  auto o = tapsecctl({"wg", "pubkey", "wg-host"});
  EXPECT_EQ(o.exit_code, 0) << o.err;
  EXPECT_EQ(o.out, std::string(FakeAgent::kWgPublicKey) + "\n");
  EXPECT_EQ(o.err, "");
  o = tapsecctl({"wg", "pubkey", "wg-host", "--json"});
  EXPECT_EQ(o.exit_code, 0) << o.err;
  EXPECT_EQ(o.out, "{\"identity\":\"wg-host\",\"public_key\":\"" + std::string(FakeAgent::kWgPublicKey) + "\"}\n");
}

TEST_F(WireGuardAgainstFake, PubkeyErrors) {
  auto o = tapsecctl({"wg", "pubkey", "nobody"});
  EXPECT_EQ(o.exit_code, 1);
  EXPECT_EQ(o.out, "");
  EXPECT_EQ(o.err,
            "tapsecctl: the policy has no WireGuard identity 'nobody' (an [Identity] section with Type=wireguard): "
            "no [Identity nobody] with Type=wireguard\n");
  o = tapsecctl({"wg", "pubkey", "nobody", "--json"});
  EXPECT_EQ(o.exit_code, 1);
  Json document;
  ASSERT_TRUE(JsonReader(o.out).read(document)) << o.out;
  EXPECT_EQ(document["error"]["name"].text, "org.tapsec1.Error.UnknownIdentity");
  o = tapsecctl({"wg", "pubkey", "../etc/passwd"});
  EXPECT_EQ(o.exit_code, 1);
  EXPECT_EQ(o.err, "tapsecctl: reading the public key of ../etc/passwd: '../etc/passwd' is not an identity name\n");
}

TEST_F(WireGuardAgainstFake, TunnelUpAsksForWireGuard) {
  auto o = tapsecctl({"tunnel", "up", "to-beta", "--protocol", "wireguard"});
  EXPECT_EQ(o.exit_code, 0) << o.err;
  EXPECT_EQ(o.out, "Tunnel to-beta is up: WireGuard interface, association 4 (/org/tapsec1/association/4)\n");
  const auto request = agent_->last_tunnel_request();
  EXPECT_EQ(request.host, "to-beta");
  ASSERT_EQ(request.props.size(), 1u);
  EXPECT_EQ(request.props[0].first, "protocols");
  ASSERT_EQ(request.props[0].second.kind, tapsec::ctl::Value::Kind::Array);
  ASSERT_EQ(request.props[0].second.items.size(), 1u);
  EXPECT_EQ(request.props[0].second.items[0].text, "wireguard");
  o = tapsecctl({"tunnel", "up", "to-beta", "--protocol", "wireguard", "--json"});
  EXPECT_EQ(o.out, "{\"peer\":\"to-beta\",\"id\":\"4\",\"path\":\"/org/tapsec1/association/4\"}\n");
}

}  // namespace
