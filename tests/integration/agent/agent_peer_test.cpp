// Programs that know nothing of TLS, on connections tapsecd secured, against
// an OpenSSL server of the test's own that does what real servers do: sends
// its tickets after a HelloRetryRequest, sends more of them later or none,
// updates its keys in the middle of the stream, and closes with
// close_notify. The readers are unmodified: a plain read() loop on the
// socket SecureSocket returns, and cat and sha256sum run by tapsec-exec.
// Each must get every byte and then a clean end of file (read() returns 0),
// and the server must see our close_notify.
//
// On a kernel with kTLS the sockets are relayed (the default); without it
// the agent's userspace record layer carries them. Both must behave alike.
#include <gtest/gtest.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/integration/agent/agent_fixture.h"

namespace tapsec::testing {
namespace {

const char* kPolicy = R"(
[TrustStore test-ca]
File=${DIR}/ca.pem
IncludeSystem=no

[Rule everything]
Protocols=tls
TrustStore=test-ca
PeerValidation=system
Fallback=yes
Action=allow
)";

constexpr std::size_t kPayload = 256 * 1024;

std::vector<std::uint8_t> payload() {
  std::vector<std::uint8_t> bytes(kPayload);
  std::mt19937 rng(7);
  for (auto& b : bytes) b = static_cast<std::uint8_t>(rng());
  return bytes;
}

std::string sha256_hex(const std::vector<std::uint8_t>& bytes) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_Digest(bytes.data(), bytes.size(), digest, &length, EVP_sha256(), nullptr);
  std::string hex;
  char two[3];
  for (unsigned int i = 0; i < length; ++i) {
    std::snprintf(two, sizeof two, "%02x", digest[i]);
    hex += two;
  }
  return hex;
}

// What the server does on each connection, in order: the handshake
// (sending `tickets_in_handshake` tickets), the first half of the payload,
// `late_tickets` tickets `late_delay` after it, a KeyUpdate asking the
// client to update too, the second half, close_notify; then it reads
// whatever the client sends until the client's close_notify.
struct Script {
  std::string groups = "X25519:P-256";  // "P-384" alone: a HelloRetryRequest
  int tickets_in_handshake = 2;
  int late_tickets = 0;
  std::chrono::milliseconds late_delay{0};
  bool key_update = false;
};

struct Served {
  bool handshake = false;
  std::string error;
  int server_hellos = 0;  // 2 when the server asked for a retry
  bool resumed = false;
  int key_updates_received = 0;  // the client's answers to ours
  std::vector<std::uint8_t> received;
  bool client_close_notify = false;  // the client ended with close_notify
};

// An OpenSSL 3.0 server on 127.0.0.1, serving `connections` connections
// one after another on its own thread, all with one SSL_CTX (so tickets it
// issued resume).
class OpensslServer {
 public:
  OpensslServer(const std::string& dir, Script script, int connections) : script_(std::move(script)) {
    listener_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(listener_, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 || listen(listener_, 4) != 0)
      throw std::runtime_error("cannot listen");
    socklen_t length = sizeof address;
    getsockname(listener_, reinterpret_cast<sockaddr*>(&address), &length);
    port_ = ntohs(address.sin_port);

    ctx_ = SSL_CTX_new(TLS_server_method());
    SSL_CTX_set_min_proto_version(ctx_, TLS1_3_VERSION);
    if (SSL_CTX_use_certificate_chain_file(ctx_, (dir + "/server.pem").c_str()) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx_, (dir + "/server.key").c_str(), SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_set1_groups_list(ctx_, script_.groups.c_str()) != 1)
      throw std::runtime_error("cannot configure the OpenSSL server");
    SSL_CTX_set_num_tickets(ctx_, static_cast<std::size_t>(script_.tickets_in_handshake));
    SSL_CTX_set_msg_callback(ctx_, &OpensslServer::on_message);
    served_.resize(static_cast<std::size_t>(connections));
    thread_ = std::thread([this] { serve_all(); });
  }
  ~OpensslServer() {
    stop_ = true;
    ::shutdown(listener_, SHUT_RDWR);
    if (thread_.joinable()) thread_.join();
    close(listener_);
    SSL_CTX_free(ctx_);
  }

  std::uint16_t port() const { return port_; }
  // Waits for the server thread to finish its connections.
  const std::vector<Served>& results() {
    if (thread_.joinable()) thread_.join();
    return served_;
  }

 private:
  static void on_message(int write_p, int, int content_type, const void* buf, size_t len, SSL* ssl, void*) {
    auto* served = static_cast<Served*>(SSL_get_app_data(ssl));
    if (!served || content_type != SSL3_RT_HANDSHAKE || len == 0) return;
    const std::uint8_t type = static_cast<const std::uint8_t*>(buf)[0];
    if (write_p && type == SSL3_MT_SERVER_HELLO) ++served->server_hellos;
    if (!write_p && type == SSL3_MT_KEY_UPDATE) ++served->key_updates_received;
  }

  void serve_all() {
    for (auto& served : served_) {
      pollfd p{listener_, POLLIN, 0};
      if (poll(&p, 1, 60000) != 1 || stop_) {
        served.error = "no connection came";
        return;
      }
      int fd = accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) {
        served.error = "accept failed";
        return;
      }
      timeval timeout{30, 0};
      setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
      setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
      serve(fd, served);
      close(fd);
    }
  }

  bool write_all(SSL* ssl, const std::uint8_t* data, std::size_t size, Served& served) {
    while (size > 0) {
      int n = SSL_write(ssl, data, static_cast<int>(std::min<std::size_t>(size, 16384)));
      if (n <= 0) {
        served.error = "SSL_write failed: " + openssl_error(ssl, n);
        return false;
      }
      data += n;
      size -= static_cast<std::size_t>(n);
    }
    return true;
  }

  static std::string openssl_error(SSL* ssl, int rc) {
    char text[256] = "";
    ERR_error_string_n(ERR_get_error(), text, sizeof text);
    return "SSL error " + std::to_string(SSL_get_error(ssl, rc)) + " " + text;
  }

  void serve(int fd, Served& served) {
    SSL* ssl = SSL_new(ctx_);
    SSL_set_app_data(ssl, &served);
    SSL_set_fd(ssl, fd);
    const auto data = payload();
    const std::size_t half = data.size() / 2;
    int rc = SSL_accept(ssl);
    if (rc != 1) {
      served.error = "handshake failed: " + openssl_error(ssl, rc);
      SSL_free(ssl);
      return;
    }
    served.handshake = true;
    served.resumed = SSL_session_reused(ssl) == 1;
    if (!write_all(ssl, data.data(), half, served)) return SSL_free(ssl);
    if (script_.late_tickets > 0) {
      std::this_thread::sleep_for(script_.late_delay);
      for (int i = 0; i < script_.late_tickets; ++i) {
        if (SSL_new_session_ticket(ssl) != 1 || SSL_do_handshake(ssl) != 1) {
          served.error = "sending a late ticket failed";
          return SSL_free(ssl);
        }
      }
    }
    if (script_.key_update) {
      if (SSL_key_update(ssl, SSL_KEY_UPDATE_REQUESTED) != 1 || SSL_do_handshake(ssl) != 1) {
        served.error = "sending a KeyUpdate failed";
        return SSL_free(ssl);
      }
    }
    if (!write_all(ssl, data.data() + half, data.size() - half, served)) return SSL_free(ssl);
    SSL_shutdown(ssl);  // our close_notify; the client may still send
    std::uint8_t buffer[16384];
    for (;;) {
      int n = SSL_read(ssl, buffer, sizeof buffer);
      if (n > 0) {
        served.received.insert(served.received.end(), buffer, buffer + n);
        continue;
      }
      const int error = SSL_get_error(ssl, n);
      served.client_close_notify = error == SSL_ERROR_ZERO_RETURN;
      if (!served.client_close_notify) served.error = "reading the client failed: " + openssl_error(ssl, n);
      break;
    }
    SSL_free(ssl);
  }

  Script script_;
  int listener_ = -1;
  std::uint16_t port_ = 0;
  SSL_CTX* ctx_ = nullptr;
  std::vector<Served> served_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

class PeerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // The server writes on while a 6.1 relay closes after the peer's
    // KeyUpdate: a write error, not a signal.
    signal(SIGPIPE, SIG_IGN);
    if (geteuid() != 0) return;
    agent_ = new AgentProcess(kPolicy);
  }
  static void TearDownTestSuite() {
    if (!agent_) return;
    EXPECT_EQ(agent_->stop_agent(), 0) << "tapsecd did not shut down cleanly; its log is in " << agent_->dir();
    delete agent_;
    agent_ = nullptr;
  }
  void SetUp() override {
    if (!agent_) GTEST_SKIP() << "SKIPPED: needs root (the agent installs kernel keys)";
    agent_->flush_session_cache();
  }
  void TearDown() override {
    if (agent_) {
      EXPECT_TRUE(agent_->agent_running()) << "tapsecd died";
    }
  }

  static bool kernel_offload() { return std::ifstream("/proc/net/tls_stat").good(); }

  // The client's side through Connect, read by a plain read() loop until it
  // returns 0; `end` says how the loop ended ("eof", or the failure). The
  // socket is closed afterwards (our close_notify).
  struct ReadLoop {
    std::string error;  // Connect's error
    std::string association;
    bool resumed = false;
    std::string offload;
    std::vector<std::uint8_t> data;
    std::string end;  // "eof", or what went wrong
  };
  static ReadLoop read_loop(std::uint16_t port) {
    ReadLoop out;
    CallResult result;
    agent_->connect_async("127.0.0.1", port, {{"server-name", std::string("server.test")}}, &result);
    if (!agent_->wait({&result}, 60000)) {
      out.error = "no answer to Connect";
      return out;
    }
    if (!result.error_name.empty()) {
      out.error = result.error_name + ": " + result.error_message;
      return out;
    }
    out.association = result.association;
    out.resumed = agent_->get_bool(result.association, "Resumed");
    out.offload = agent_->get_string(result.association, "Offload");
    std::uint8_t buffer[8192];
    for (;;) {
      pollfd p{result.fd, POLLIN, 0};
      if (poll(&p, 1, 30000) != 1) {
        out.end = "no data and no end of file for 30 s";
        break;
      }
      ssize_t n = read(result.fd, buffer, sizeof buffer);
      if (n > 0) {
        out.data.insert(out.data.end(), buffer, buffer + n);
        continue;
      }
      out.end = n == 0 ? "eof" : std::string("read() failed: ") + std::strerror(errno);
      break;
    }
    close(result.fd);
    return out;
  }

  // tapsec-exec --connect with `program` as the reader; its exit status.
  static int exec_reader(std::uint16_t port, std::vector<std::string> program) {
    std::vector<std::string> args = {TAPSEC_EXEC_PATH, "--bus",         agent_->bus_address(),
                                     "--connect",      "127.0.0.1:" + std::to_string(port),
                                     "--server-name",  "server.test",   "--"};
    args.insert(args.end(), program.begin(), program.end());
    pid_t child = fork();
    if (child == 0) {
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    int status = 0;
    waitpid(child, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

  static void expect_clean(const ReadLoop& got, const Served& served, std::size_t bytes = kPayload) {
    EXPECT_EQ(got.error, "");
    EXPECT_EQ(got.offload, kernel_offload() ? "kernel" : "userspace");
    EXPECT_EQ(got.data.size(), bytes);
    const auto expected = payload();
    EXPECT_TRUE(std::equal(got.data.begin(), got.data.end(), expected.begin())) << "the bytes differ";
    EXPECT_EQ(got.end, "eof");
    EXPECT_EQ(served.error, "");
    EXPECT_TRUE(served.client_close_notify) << "the server should see our close_notify";
  }

  static AgentProcess* agent_;
};
AgentProcess* PeerTest::agent_ = nullptr;

// The agent's first key share is X25519; this server takes only P-384 and
// asks it to retry. Its two tickets follow the retried handshake.
TEST_F(PeerTest, TicketsAfterAHelloRetryRequestNeverReachTheReader) {
  OpensslServer server(agent_->dir(), {.groups = "P-384"}, 2);
  auto first = read_loop(server.port());
  auto second = read_loop(server.port());  // resumes: the tickets reached the cache
  const auto& served = server.results();
  EXPECT_EQ(served[0].server_hellos, 2) << "the server should have asked for a retry";
  expect_clean(first, served[0]);
  EXPECT_FALSE(first.resumed);
  expect_clean(second, served[1]);
  EXPECT_TRUE(second.resumed) << "the tickets should have reached the session cache";
}

TEST_F(PeerTest, ShaTwoFiftySixSumAfterAHelloRetryRequest) {
  OpensslServer server(agent_->dir(), {.groups = "P-384"}, 1);
  EXPECT_EQ(exec_reader(server.port(), {"sha256sum"}), 0);
  const auto& served = server.results();
  EXPECT_EQ(served[0].error, "");
  EXPECT_EQ(std::string(served[0].received.begin(), served[0].received.end()), sha256_hex(payload()) + "  -\n");
  EXPECT_TRUE(served[0].client_close_notify);
}

// Tickets long after the handshake, several at once, between data.
TEST_F(PeerTest, LateTicketsInAnyNumberNeverReachTheReader) {
  OpensslServer server(agent_->dir(), {.tickets_in_handshake = 0, .late_tickets = 5, .late_delay = std::chrono::milliseconds(700)}, 2);
  auto first = read_loop(server.port());
  auto second = read_loop(server.port());
  const auto& served = server.results();
  expect_clean(first, served[0]);
  expect_clean(second, served[1]);
  EXPECT_TRUE(second.resumed) << "a late ticket should have reached the session cache";
}

TEST_F(PeerTest, CatEchoesEverythingAroundLateTickets) {
  OpensslServer server(agent_->dir(), {.tickets_in_handshake = 0, .late_tickets = 1, .late_delay = std::chrono::milliseconds(500)}, 1);
  EXPECT_EQ(exec_reader(server.port(), {"cat"}), 0);
  const auto& served = server.results();
  EXPECT_EQ(served[0].error, "");
  EXPECT_TRUE(served[0].received == payload()) << "cat should have sent back all " << kPayload << " bytes, got "
                                               << served[0].received.size();
  EXPECT_TRUE(served[0].client_close_notify);
}

TEST_F(PeerTest, NoTicketsAtAll) {
  OpensslServer server(agent_->dir(), {.tickets_in_handshake = 0}, 2);
  auto first = read_loop(server.port());
  auto second = read_loop(server.port());
  const auto& served = server.results();
  expect_clean(first, served[0]);
  expect_clean(second, served[1]);
  EXPECT_FALSE(second.resumed);
}

// A KeyUpdate in the middle of the stream, asking us to update as well.
// Where the kernel can take a new receive key (kTLS rekey, 6.13 and later)
// or the agent carries the records itself, the reader never notices. On a
// kernel without it, the records behind the KeyUpdate cannot be read: the
// reader gets everything before it and then end of file, the server our
// close_notify, and the association's end says why.
TEST_F(PeerTest, PeerKeyUpdateMidStream) {
  OpensslServer server(agent_->dir(), {.key_update = true}, 1);
  auto got = read_loop(server.port());
  const auto& served = server.results();
  if (kernel_offload() && !agent_->has_kernel_feature("ktls-rekey")) {
    EXPECT_EQ(got.error, "");
    EXPECT_EQ(got.data.size(), kPayload / 2) << "everything before the KeyUpdate";
    const auto expected = payload();
    EXPECT_TRUE(std::equal(got.data.begin(), got.data.end(), expected.begin())) << "the bytes differ";
    EXPECT_EQ(got.end, "eof");
    // The agent sent close_notify, then closed with the records behind the
    // KeyUpdate unread, which resets the connection: the server reads our
    // close_notify unless it was still writing when the reset came.
    std::printf("the server saw: %s\n", served[0].client_close_notify ? "close_notify" : served[0].error.c_str());
    // The reader's end of file comes first; the association ends (and its
    // reason is logged) when the relay has finished with the peer.
    bool logged = false;
    for (int i = 0; i < 100 && !logged; ++i) {
      std::ifstream log(agent_->dir() + "/tapsecd.log");
      std::stringstream text;
      text << log.rdbuf();
      logged = text.str().find("this kernel cannot install a new kTLS receive key") != std::string::npos;
      if (!logged) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    EXPECT_TRUE(logged) << "within 10 s the log should say why the connection ended";
  } else {
    // Our answering KeyUpdate is due before our next data (RFC 8446
    // §4.6.3); this reader sends none, ShaTwoFiftySixSumAcrossAKeyUpdate
    // checks the answer.
    expect_clean(got, served[0]);
  }
}

// Where the KeyUpdate cannot be followed (6.1 with kTLS), the connection
// ends at it: sha256sum reads half the stream and end of file, and what it
// writes then must never reach the server, which would take the hash of a
// truncated stream for an answer.
TEST_F(PeerTest, ShaTwoFiftySixSumAcrossAKeyUpdate) {
  OpensslServer server(agent_->dir(), {.key_update = true}, 1);
  const int status = exec_reader(server.port(), {"sha256sum"});
  const auto& served = server.results();
  if (kernel_offload() && !agent_->has_kernel_feature("ktls-rekey")) {
    EXPECT_TRUE(served[0].received.empty()) << "the server got " << served[0].received.size() << " bytes";
    std::printf("sha256sum exited with %d; the server saw: %s\n", status,
                served[0].client_close_notify ? "close_notify" : served[0].error.c_str());
    return;
  }
  EXPECT_EQ(status, 0);
  EXPECT_EQ(served[0].error, "");
  EXPECT_EQ(std::string(served[0].received.begin(), served[0].received.end()), sha256_hex(payload()) + "  -\n")
      << "the server reads our hash under our updated key";
  EXPECT_EQ(served[0].key_updates_received, 1);
  EXPECT_TRUE(served[0].client_close_notify);
}

// A run of connections to one server resumes every time after the first:
// each resumed handshake's ticket replaces the one it used.
TEST_F(PeerTest, ARunOfConnectionsResumesAfterTheFirst) {
  OpensslServer server(agent_->dir(), {}, 5);
  std::vector<ReadLoop> runs;
  for (int i = 0; i < 5; ++i) runs.push_back(read_loop(server.port()));
  const auto& served = server.results();
  for (int i = 0; i < 5; ++i) {
    expect_clean(runs[i], served[i]);
    EXPECT_EQ(runs[i].resumed, i > 0) << "connection " << i;
    EXPECT_EQ(served[i].resumed, i > 0) << "connection " << i;
  }
}

}  // namespace
}  // namespace tapsec::testing
