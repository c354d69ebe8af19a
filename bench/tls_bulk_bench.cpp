// Bulk throughput of a kTLS connection secured by tapsecd, in each of the
// ways an application can hold it, against a program that reads and writes
// the kTLS socket itself (direct-socket on both ends), same agent, same
// kernel, same run:
//   direct          both ends hold their kTLS TCP socket (the anchor);
//   relayed-reader  the receiving end is relayed (the default), the sender
//                   holds its kTLS socket: one tapsec host receiving;
//   relayed-writer  the other way round: one tapsec host sending;
//   relayed         both ends relayed, both relays on the agent's one thread.
// Each repetition runs the modes in a rotating order; medians are reported.
//
//   tls-bulk-bench [MiB per transfer, default 64] [repetitions, default 3]
#include <sys/socket.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/integration/agent/agent_fixture.h"

namespace {

using Clock = std::chrono::steady_clock;
using tapsec::testing::AgentProcess;
using tapsec::testing::CallResult;
using tapsec::testing::Props;

const char* kPolicy = R"(
[Identity server]
Certificate=${DIR}/server.pem
PrivateKey=${DIR}/server.key

[TrustStore test-ca]
File=${DIR}/ca.pem
IncludeSystem=no

[Rule bench]
Protocols=tls
Identities=server
TrustStore=test-ca
Fallback=no
Action=allow
)";

struct Secured {
  int client = -1, server = -1;
  std::string offload;
};

struct Mode {
  const char* name;
  bool client_direct, server_direct;  // the client writes, the server reads
};
const Mode kModes[] = {
    {"direct", true, true},
    {"relayed-reader", true, false},
    {"relayed-writer", false, true},
    {"relayed", false, false},
};

Secured secure_pair(AgentProcess& agent, const Mode& mode) {
  auto [c, s] = tapsec::testing::tcp_pair();
  CallResult client, server;
  Props server_props = {{"identity", std::string("server")}, {"direct-socket", mode.server_direct}};
  Props client_props = {{"server-name", std::string("server.test")}, {"direct-socket", mode.client_direct}};
  agent.secure_socket_async(s, "server", server_props, &server);
  agent.secure_socket_async(c, "client", client_props, &client);
  if (!agent.wait({&client, &server}) || !client.error_name.empty() || !server.error_name.empty()) {
    std::fprintf(stderr, "SecureSocket failed: %s %s / %s %s\n", client.error_name.c_str(),
                 client.error_message.c_str(), server.error_name.c_str(), server.error_message.c_str());
    std::exit(1);
  }
  // Direct: the returned descriptors are these sockets again; relayed: the
  // agent holds them now. Either way ours are no longer needed.
  close(c);
  close(s);
  return {client.fd, server.fd, agent.get_string(client.association, "Offload")};
}

// MiB/s for `mib` MiB from client to server, timed from the first write to
// the last byte read.
double transfer(const Secured& pair, std::size_t mib) {
  const std::size_t total = mib << 20;
  std::vector<char> chunk(1 << 16, 'x');
  auto start = Clock::now();
  std::thread writer([&] {
    std::size_t sent = 0;
    while (sent < total) {
      ssize_t n = write(pair.client, chunk.data(), std::min(chunk.size(), total - sent));
      if (n <= 0) {
        std::perror("write");
        std::exit(1);
      }
      sent += static_cast<std::size_t>(n);
    }
  });
  std::vector<char> buffer(1 << 16);
  std::size_t got = 0;
  while (got < total) {
    ssize_t n = read(pair.server, buffer.data(), buffer.size());
    if (n <= 0) {
      std::perror("read");
      std::exit(1);
    }
    got += static_cast<std::size_t>(n);
  }
  writer.join();
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return static_cast<double>(mib) / seconds;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const std::size_t mib = argc > 1 ? std::strtoul(argv[1], nullptr, 10) : 64;
  const int repetitions = argc > 2 ? std::atoi(argv[2]) : 3;
  signal(SIGPIPE, SIG_IGN);
  if (geteuid() != 0) {
    std::fprintf(stderr, "tls-bulk-bench: run as root (the agent installs kernel keys)\n");
    return 77;
  }
  if (!std::ifstream("/proc/net/tls_stat").good()) {
    std::fprintf(stderr, "tls-bulk-bench: this kernel has no kTLS (load module tls); nothing to compare\n");
    return 77;
  }
  AgentProcess agent(kPolicy);
  constexpr std::size_t kModeCount = sizeof kModes / sizeof kModes[0];
  std::vector<double> rates[kModeCount];
  for (int rep = 0; rep < repetitions; ++rep) {
    for (std::size_t step = 0; step < kModeCount; ++step) {
      const std::size_t m = (static_cast<std::size_t>(rep) + step) % kModeCount;
      Secured pair = secure_pair(agent, kModes[m]);
      if (pair.offload != "kernel") {
        std::fprintf(stderr, "tls-bulk-bench: offload is %s, not kernel\n", pair.offload.c_str());
        return 1;
      }
      const double rate = transfer(pair, mib);
      rates[m].push_back(rate);
      std::printf("BENCH rep=%d mode=%s mib=%zu rate_mib_s=%.1f\n", rep, kModes[m].name, mib, rate);
      std::fflush(stdout);
      close(pair.client);
      close(pair.server);
    }
  }
  const double anchor = median(rates[0]);
  std::printf("BENCH summary mib=%zu repetitions=%d direct_mib_s=%.1f", mib, repetitions, anchor);
  for (std::size_t m = 1; m < kModeCount; ++m)
    std::printf(" %s_mib_s=%.1f ratio_%s=%.2f", kModes[m].name, median(rates[m]), kModes[m].name,
                median(rates[m]) / anchor);
  std::printf(" (target >= 0.90)\n");
  return 0;
}
