// TLS 1.3 handshakes per second through tapsecd's SecureSocket (D-Bus
// round trip, fd passing, key installation included) against raw OpenSSL
// client handshakes, same server, certificate, group and cipher, same run:
// full and resumed handshakes, one at a time and 64 at once. Each
// connection ends when the client has read the server's one-byte greeting,
// which follows the server's tickets, so both clients have them.
//
// The agent runs its handshakes on one thread; the concurrent OpenSSL
// anchor is one thread too, driving its 64 connections non-blocking. The
// server gives each connection its own thread.
//
//   tls-handshake-bench [seconds per measurement, default 5]
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/socket.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
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

// The OpenSSL server both clients talk to: a thread per connection, which
// completes the handshake (its two tickets follow), writes one byte and
// reads until the client closes.
class Server {
 public:
  Server(const std::string& dir) {
    ctx_ = SSL_CTX_new(TLS_server_method());
    SSL_CTX_set_min_proto_version(ctx_, TLS1_3_VERSION);
    SSL_CTX_set_ciphersuites(ctx_, "TLS_AES_128_GCM_SHA256");
    SSL_CTX_set1_groups_list(ctx_, "X25519");
    SSL_CTX_set_session_cache_mode(ctx_, SSL_SESS_CACHE_OFF);  // stateless tickets still resume
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
    listen(listener_, 1024);
    socklen_t len = sizeof(a);
    getsockname(listener_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] { serve(); });
  }
  ~Server() {
    stop_ = true;
    close(tcp_connect(port_));
    thread_.join();
    while (active_ > 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    close(listener_);
    SSL_CTX_free(ctx_);
  }
  std::uint16_t port() const { return port_; }

 private:
  void serve() {
    while (!stop_) {
      int fd = accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0 || stop_) {
        if (fd >= 0) close(fd);
        continue;
      }
      ++active_;
      std::thread([this, fd] {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        SSL* ssl = SSL_new(ctx_);
        SSL_set_fd(ssl, fd);
        if (SSL_accept(ssl) == 1 && SSL_write(ssl, "!", 1) == 1) {
          char byte;
          SSL_read(ssl, &byte, 1);  // until the client closes
        }
        SSL_free(ssl);
        close(fd);
        --active_;
      }).detach();
    }
  }
  SSL_CTX* ctx_;
  int listener_;
  std::uint16_t port_;
  std::atomic<bool> stop_{false};
  std::atomic<int> active_{0};
  std::thread thread_;
};

// Connections per second: `batch` connections at a time, batches back to
// back, for about `seconds`.
double measure(double seconds, int batch, const std::function<void(int)>& run_batch) {
  auto start = Clock::now();
  auto end = start + std::chrono::duration<double>(seconds);
  long count = 0;
  while (Clock::now() < end) {
    run_batch(batch);
    count += batch;
  }
  return count / std::chrono::duration<double>(Clock::now() - start).count();
}

// The anchor: OpenSSL clients, one thread, `n` connections driven at once
// without blocking. With `resume`, each takes a ticket a previous
// connection received (single use, as the agent's cache does).
class OpensslClients {
 public:
  OpensslClients(const std::string& ca, std::uint16_t port) : port_(port) {
    ctx_ = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(ctx_, TLS1_3_VERSION);
    SSL_CTX_set_ciphersuites(ctx_, "TLS_AES_128_GCM_SHA256");
    SSL_CTX_set1_groups_list(ctx_, "X25519");
    SSL_CTX_load_verify_locations(ctx_, ca.c_str(), nullptr);
    SSL_CTX_set_verify(ctx_, SSL_VERIFY_PEER, nullptr);
    SSL_CTX_set_session_cache_mode(ctx_, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_set_ex_data(ctx_, 0, this);
    SSL_CTX_sess_set_new_cb(ctx_, [](SSL* ssl, SSL_SESSION* session) {
      auto* self = static_cast<OpensslClients*>(SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), 0));
      // A copy: the newest ticket's session is the connection's own, which
      // SSL_free without close_notify marks not resumable.
      if (self->tickets_.size() >= 256) return 0;
      if (SSL_SESSION* copy = SSL_SESSION_dup(session)) self->tickets_.push_back(copy);
      return 0;
    });
  }
  ~OpensslClients() {
    for (auto* t : tickets_) SSL_SESSION_free(t);
    SSL_CTX_free(ctx_);
  }
  long resumed() const { return resumed_; }

  void run(int n, bool resume) {
    struct Conn {
      int fd;
      SSL* ssl;
      bool done = false;
    };
    std::vector<Conn> conns;
    for (int i = 0; i < n; ++i) {
      int fd = tcp_connect(port_);
      fcntl(fd, F_SETFL, O_NONBLOCK);
      SSL* ssl = SSL_new(ctx_);
      SSL_set_fd(ssl, fd);
      SSL_set1_host(ssl, "server.test");
      SSL_set_tlsext_host_name(ssl, "server.test");
      if (resume && !tickets_.empty()) {
        SSL_set_session(ssl, tickets_.back());
        SSL_SESSION_free(tickets_.back());
        tickets_.pop_back();
      }
      SSL_set_connect_state(ssl);
      conns.push_back({fd, ssl});
    }
    int left = n;
    std::vector<pollfd> polls;
    while (left > 0) {
      polls.clear();
      for (auto& c : conns) {
        if (c.done) continue;
        char byte;
        int r = SSL_read(c.ssl, &byte, 1);  // drives the handshake, then takes the tickets and the greeting
        if (r == 1) {
          if (SSL_session_reused(c.ssl)) ++resumed_;
          c.done = true;
          --left;
          continue;
        }
        int e = SSL_get_error(c.ssl, r);
        if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
          ERR_print_errors_fp(stderr);
          std::fprintf(stderr, "openssl client failed (%d)\n", e);
          std::exit(1);
        }
        polls.push_back({c.fd, static_cast<short>(e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT), 0});
      }
      if (!polls.empty()) poll(polls.data(), polls.size(), 1000);
    }
    for (auto& c : conns) {
      SSL_free(c.ssl);
      close(c.fd);
    }
  }

 private:
  SSL_CTX* ctx_;
  std::uint16_t port_;
  std::vector<SSL_SESSION*> tickets_;
  long resumed_ = 0;
};

// tapsecd: `n` SecureSocket calls in flight at once, then each secured
// socket reads the greeting.
class TapsecClients {
 public:
  TapsecClients(AgentProcess& agent, std::uint16_t port) : agent_(agent), port_(port) {}
  std::string offload;
  long sampled = 0, resumed = 0;

  void run(int n, bool resume) {
    std::vector<int> fds(n);
    std::vector<CallResult> results(n);
    std::vector<CallResult*> waiting;
    for (int i = 0; i < n; ++i) {
      fds[i] = tcp_connect(port_);
      agent_.secure_socket_async(fds[i], "client",
                                 {{"server-name", std::string("server.test")}, {"session-cache", resume}},
                                 &results[i]);
      waiting.push_back(&results[i]);
    }
    if (!agent_.wait(waiting, 60000)) {
      std::fprintf(stderr, "SecureSocket did not answer\n");
      std::exit(1);
    }
    for (int i = 0; i < n; ++i) {
      auto& r = results[i];
      if (!r.error_name.empty()) {
        std::fprintf(stderr, "SecureSocket failed: %s %s\n", r.error_name.c_str(), r.error_message.c_str());
        std::exit(1);
      }
      if (offload.empty()) offload = agent_.get_string(r.association, "Offload");
      // Every 16th connection is asked whether it resumed (a bus round trip).
      if (resume && count_++ % 16 == 0) {
        ++sampled;
        if (agent_.get_bool(r.association, "Resumed")) ++resumed;
      }
      close(fds[i]);
    }
    for (auto& r : results) {
      char byte;
      if (read(r.fd, &byte, 1) != 1) {
        std::fprintf(stderr, "no greeting on a secured socket\n");
        std::exit(1);
      }
      close(r.fd);
    }
  }

 private:
  AgentProcess& agent_;
  std::uint16_t port_;
  long count_ = 0;
};

}  // namespace

int main(int argc, char** argv) {
  double seconds = argc > 1 ? std::atof(argv[1]) : 5.0;
  signal(SIGPIPE, SIG_IGN);
  if (geteuid() != 0) {
    std::fprintf(stderr, "tls-handshake-bench: run as root (the agent installs kernel keys)\n");
    return 77;
  }
  // 64 handshakes at once from one caller: the agent's per-caller bound
  // (32 by default) raised to let them in.
  AgentProcess agent(kPolicy, {"--ike-port", "0", "--max-handshakes-per-caller", "64"});
  Server server(agent.dir());
  OpensslClients openssl(agent.dir() + "/ca.pem", server.port());
  TapsecClients tapsec(agent, server.port());

  // Warm up both paths.
  for (int i = 0; i < 10; ++i) {
    openssl.run(1, true);
    tapsec.run(1, true);
  }
  std::printf("TLS 1.3 handshakes, X25519, TLS_AES_128_GCM_SHA256, ECDSA P-256, loopback, %d online CPUs\n",
              static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN)));
  for (int concurrency : {1, 64}) {
    for (bool resume : {false, true}) {
      // Anchor, tapsec, anchor: drift hits both alike.
      openssl.run(concurrency, resume);  // fills the anchor's tickets
      tapsec.run(concurrency, resume);
      const long anchor_resumed_before = openssl.resumed();
      long anchor_count = 0;
      double anchor1 = measure(seconds / 2, concurrency, [&](int n) {
        openssl.run(n, resume);
        anchor_count += n;
      });
      tapsec.sampled = tapsec.resumed = 0;
      double rate = measure(seconds, concurrency, [&](int n) { tapsec.run(n, resume); });
      double anchor2 = measure(seconds / 2, concurrency, [&](int n) {
        openssl.run(n, resume);
        anchor_count += n;
      });
      const double anchor = (anchor1 + anchor2) / 2;
      std::printf("BENCH concurrency=%d handshake=%s offload=%s openssl_per_s=%.1f tapsec_per_s=%.1f ratio=%.2f "
                  "(target >= 0.90)%s\n",
                  concurrency, resume ? "resumed" : "full", tapsec.offload.c_str(), anchor, rate, rate / anchor,
                  resume ? (" openssl_resumed=" + std::to_string(openssl.resumed() - anchor_resumed_before) + "/" +
                            std::to_string(anchor_count) + " tapsec_resumed=" + std::to_string(tapsec.resumed) + "/" +
                            std::to_string(tapsec.sampled) + "_sampled")
                               .c_str()
                         : "");
      std::fflush(stdout);
    }
  }
  return 0;
}
