// Full TLS 1.3 handshakes per second through tapsecd's SecureSocket (D-Bus
// round trip, fd passing, key installation included) against raw OpenSSL
// client handshakes, same server, certificate, group and cipher, same run.
//
//   tls-handshake-bench [seconds per measurement, default 5]
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>

#include "tests/integration/agent/agent_fixture.h"

namespace {

using Clock = std::chrono::steady_clock;
using tapsec::testing::AgentProcess;
using tapsec::testing::CallResult;

const char* kPolicy = R"(
[TrustStore test-ca]
File=${DIR}/ca.pem
IncludeSystem=no

[Rule bench]
Protocols=tls
TrustStore=test-ca
Fallback=yes
Action=allow
)";

int tcp_connect(std::uint16_t port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    std::perror("connect");
    std::exit(1);
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return fd;
}

// The OpenSSL server both clients talk to: one thread, one connection at a time.
class Server {
 public:
  Server(const std::string& dir) {
    ctx_ = SSL_CTX_new(TLS_server_method());
    SSL_CTX_set_min_proto_version(ctx_, TLS1_3_VERSION);
    SSL_CTX_set_ciphersuites(ctx_, "TLS_AES_128_GCM_SHA256");
    SSL_CTX_set1_groups_list(ctx_, "X25519");
    SSL_CTX_set_session_cache_mode(ctx_, SSL_SESS_CACHE_OFF);
    if (SSL_CTX_use_certificate_chain_file(ctx_, (dir + "/server.pem").c_str()) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx_, (dir + "/server.key").c_str(), SSL_FILETYPE_PEM) != 1) {
      std::fprintf(stderr, "cannot load the server certificate\n");
      std::exit(1);
    }
    listener_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(listener_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(listener_, reinterpret_cast<sockaddr*>(&a), sizeof(a));
    listen(listener_, 128);
    socklen_t len = sizeof(a);
    getsockname(listener_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] { serve(); });
  }
  ~Server() {
    stop_ = true;
    close(tcp_connect(port_));
    thread_.join();
    close(listener_);
    SSL_CTX_free(ctx_);
  }
  std::uint16_t port() const { return port_; }

 private:
  void serve() {
    while (!stop_) {
      int fd = accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) continue;
      int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      SSL* ssl = SSL_new(ctx_);
      SSL_set_fd(ssl, fd);
      if (SSL_accept(ssl) == 1) {
        char byte;
        SSL_read(ssl, &byte, 1);  // until the client closes
      }
      SSL_free(ssl);
      close(fd);
    }
  }
  SSL_CTX* ctx_;
  int listener_;
  std::uint16_t port_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

double measure(double seconds, const auto& one_handshake) {
  auto start = Clock::now();
  auto end = start + std::chrono::duration<double>(seconds);
  long count = 0;
  while (Clock::now() < end) {
    one_handshake();
    ++count;
  }
  return count / std::chrono::duration<double>(Clock::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) {
  double seconds = argc > 1 ? std::atof(argv[1]) : 5.0;
  signal(SIGPIPE, SIG_IGN);  // clients close before reading the server's tickets
  if (geteuid() != 0) {
    std::fprintf(stderr, "tls-handshake-bench: run as root (the agent installs kernel keys)\n");
    return 77;
  }
  AgentProcess agent(kPolicy);
  Server server(agent.dir());

  SSL_CTX* client_ctx = SSL_CTX_new(TLS_client_method());
  SSL_CTX_set_min_proto_version(client_ctx, TLS1_3_VERSION);
  SSL_CTX_set_ciphersuites(client_ctx, "TLS_AES_128_GCM_SHA256");
  SSL_CTX_set1_groups_list(client_ctx, "X25519");
  SSL_CTX_load_verify_locations(client_ctx, (agent.dir() + "/ca.pem").c_str(), nullptr);
  SSL_CTX_set_verify(client_ctx, SSL_VERIFY_PEER, nullptr);
  SSL_CTX_set_session_cache_mode(client_ctx, SSL_SESS_CACHE_OFF);

  auto openssl_handshake = [&] {
    int fd = tcp_connect(server.port());
    SSL* ssl = SSL_new(client_ctx);
    SSL_set_fd(ssl, fd);
    SSL_set1_host(ssl, "server.test");
    SSL_set_tlsext_host_name(ssl, "server.test");
    if (SSL_connect(ssl) != 1) {
      ERR_print_errors_fp(stderr);
      std::exit(1);
    }
    SSL_free(ssl);
    close(fd);
  };
  std::string offload;
  auto tapsec_handshake = [&] {
    int fd = tcp_connect(server.port());
    CallResult result;
    agent.secure_socket_async(fd, "client", {{"server-name", std::string("server.test")}, {"session-cache", false}},
                              &result);
    if (!agent.wait({&result}) || !result.error_name.empty()) {
      std::fprintf(stderr, "SecureSocket failed: %s %s\n", result.error_name.c_str(), result.error_message.c_str());
      std::exit(1);
    }
    if (offload.empty()) offload = agent.get_string(result.association, "Offload");
    close(result.fd);
    close(fd);
  };

  // Warm up both paths, then alternate so drift hits both alike.
  for (int i = 0; i < 20; ++i) {
    openssl_handshake();
    tapsec_handshake();
  }
  double anchor1 = measure(seconds / 2, openssl_handshake);
  double tapsec = measure(seconds, tapsec_handshake);
  double anchor2 = measure(seconds / 2, openssl_handshake);
  double anchor = (anchor1 + anchor2) / 2;

  std::printf("TLS 1.3 full handshakes, X25519, TLS_AES_128_GCM_SHA256, ECDSA P-256, loopback, one at a time\n");
  std::printf("  openssl client (anchor):        %8.1f handshakes/s\n", anchor);
  std::printf("  tapsecd SecureSocket (offload=%s): %8.1f handshakes/s\n", offload.c_str(), tapsec);
  std::printf("  ratio tapsec/openssl: %.2f (target >= 0.90)\n", tapsec / anchor);
  SSL_CTX_free(client_ctx);
  return 0;
}
