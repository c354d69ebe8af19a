// The agent under attack from local callers and remote hosts: policy is
// decided before the network is touched, host-name lookups are bounded and
// never write into a descriptor of somebody else, and floods of calls and
// datagrams leave it small and answering. Each test plays the attacker.
#include <gtest/gtest.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <grp.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <dirent.h>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <sstream>
#include <thread>

#include "tests/integration/agent/agent_fixture.h"

namespace tapsec::testing {
namespace {

using Clock = std::chrono::steady_clock;

std::size_t rss_kib(pid_t pid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::stoul(line.substr(6));
  return 0;
}

std::size_t thread_count(pid_t pid) {
  std::size_t n = 0;
  if (DIR* d = opendir(("/proc/" + std::to_string(pid) + "/task").c_str())) {
    while (auto* e = readdir(d)) n += e->d_name[0] != '.';
    closedir(d);
  }
  return n;
}

// A TCP listener on loopback that never speaks.
struct Listener {
  int fd = -1;
  std::uint16_t port = 0;
  Listener() {
    fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
    ::listen(fd, 4096);
    socklen_t len = sizeof a;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    port = ntohs(a.sin_port);
  }
  ~Listener() { ::close(fd); }
  // A connection waiting to be accepted within `ms`, or -1.
  int accept_within(int ms) const {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, ms) != 1) return -1;
    return ::accept4(fd, nullptr, nullptr, SOCK_CLOEXEC);
  }
};

// A port on loopback that nobody listens on.
std::uint16_t closed_port() {
  Listener l;
  return l.port;  // closed again when `l` goes
}

// Calls ListAssociations on a connection of its own, as another
// application would, until stopped; keeps the slowest answer.
class OtherCaller {
 public:
  explicit OtherCaller(const std::string& address) {
    thread_ = std::thread([this, address] {
      sd_bus* bus = nullptr;
      if (sd_bus_new(&bus) < 0 || sd_bus_set_address(bus, address.c_str()) < 0 || sd_bus_set_bus_client(bus, 1) < 0 ||
          sd_bus_start(bus) < 0) {
        failed_ = true;
        return;
      }
      while (!stop_) {
        auto start = Clock::now();
        sd_bus_message* reply = nullptr;
        sd_bus_error error = SD_BUS_ERROR_NULL;
        int r = sd_bus_call_method(bus, "org.tapsec1", "/org/tapsec1", "org.tapsec1.Manager", "ListAssociations",
                                   &error, &reply, "");
        sd_bus_error_free(&error);
        sd_bus_message_unref(reply);
        if (r < 0) failed_ = true;
        auto took = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count();
        slowest_ms_ = std::max<long>(slowest_ms_, took);
        ++calls_;
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
      sd_bus_flush_close_unref(bus);
    });
  }
  ~OtherCaller() { finish(); }
  void finish() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  long slowest_ms() const { return slowest_ms_; }
  int calls() const { return calls_; }
  bool failed() const { return failed_; }

 private:
  std::thread thread_;
  std::atomic<bool> stop_{false}, failed_{false};
  std::atomic<long> slowest_ms_{0};
  std::atomic<int> calls_{0};
};

// Makes host-name lookups of this process and its children (the agent)
// slow: resolv.conf names a server on loopback that never answers.
class SlowNameServer {
 public:
  SlowNameServer() {
    if (::unshare(CLONE_NEWNS) != 0 || ::mount("none", "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) return;
    fd_ = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(53);
    a.sin_addr.s_addr = htonl(0x7f00004d);  // 127.0.0.77
    if (::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return;
    char path[] = "/tmp/tapsec-resolv-XXXXXX";
    int conf = ::mkstemp(path);
    if (conf < 0) return;
    std::string text = "nameserver 127.0.0.77\noptions timeout:3 attempts:1\n";
    bool written = ::write(conf, text.data(), text.size()) == static_cast<ssize_t>(text.size());
    ::close(conf);
    conf_ = path;
    ready_ = written && ::mount(path, "/etc/resolv.conf", nullptr, MS_BIND, nullptr) == 0;
  }
  ~SlowNameServer() {
    if (ready_) ::umount("/etc/resolv.conf");
    if (!conf_.empty()) ::unlink(conf_.c_str());
    if (fd_ >= 0) ::close(fd_);
  }
  bool ready() const { return ready_; }

 private:
  int fd_ = -1;
  std::string conf_;
  bool ready_ = false;
};

const char* kAllowAll = R"(
[Rule everyone]
Action=allow
Fallback=yes
)";

// The agent's memory and latency bounds are those of the release build;
// under AddressSanitizer freed memory sits in its quarantine and every call
// is several times slower. Those tests check their limits there too, then
// skip the bounds, saying so.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif
#define SKIP_BOUNDS_WHEN_SANITIZED()                                                                   \
  if (kSanitized)                                                                                   \
  GTEST_SKIP() << "SKIPPED the RSS and latency bounds: this build runs under AddressSanitizer, whose " \
                  "quarantine and slowdown they do not allow for (the release build checks them)"

// Kernel drops at a UDP port of this host ("drops" in /proc/net/udp).
std::uint64_t udp_drops(std::uint16_t port) {
  std::ifstream table("/proc/net/udp");
  std::string line;
  std::getline(table, line);  // the header
  char wanted[8];
  std::snprintf(wanted, sizeof wanted, ":%04X", port);
  std::uint64_t drops = 0;
  while (std::getline(table, line)) {
    std::istringstream fields(line);
    std::string slot, local;
    fields >> slot >> local;
    if (local.size() < 5 || local.compare(local.size() - 5, 5, wanted) != 0) continue;
    std::string field;
    for (int i = 3; i <= 13 && fields >> field; ++i) {
      if (i == 13) drops += std::stoull(field);
    }
  }
  return drops;
}

#define NEED_ROOT() \
  if (geteuid() != 0) GTEST_SKIP() << "SKIPPED: needs root (mount namespace, private bus, the agent)"

// A caller that policy denies learns nothing about the network: a listening
// port, a closed port and a host name all give the same PolicyDenied, no
// connection reaches the listener, and the name is never looked up.
TEST(AgentBounds, DeniedConnectTouchesNoNetwork) {
  NEED_ROOT();
  SlowNameServer dns;
  ASSERT_TRUE(dns.ready()) << "cannot set up the slow name server";
  AgentProcess agent("[Rule only-nobody]\nMatchUser=65534\nAction=allow\nFallback=yes\n");
  Listener listening;
  CallResult open_port, shut_port, name;
  agent.connect_async("127.0.0.1", listening.port, {}, &open_port);
  agent.connect_async("127.0.0.1", closed_port(), {}, &shut_port);
  auto start = Clock::now();
  agent.connect_async("slow.test", 443, {}, &name);
  ASSERT_TRUE(agent.wait({&open_port, &shut_port, &name}));
  auto took = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count();
  EXPECT_EQ(open_port.error_name, "org.tapsec1.Error.PolicyDenied");
  EXPECT_EQ(shut_port.error_name, "org.tapsec1.Error.PolicyDenied") << shut_port.error_message;
  EXPECT_EQ(name.error_name, "org.tapsec1.Error.PolicyDenied") << name.error_message;
  EXPECT_LT(took, 1000) << "the denied name was looked up (the name server never answers)";
  int accepted = listening.accept_within(300);
  EXPECT_LT(accepted, 0) << "a denied caller made the agent connect";
  if (accepted >= 0) ::close(accepted);
}

// Connects whose lookups outlast their timeout: a bounded number of
// threads and descriptors, and no late write lands in a socket that took a
// freed descriptor number.
TEST(AgentBounds, SlowLookupsLeaveNoThreadsDescriptorsOrStrayWrites) {
  NEED_ROOT();
  SlowNameServer dns;
  ASSERT_TRUE(dns.ready()) << "cannot set up the slow name server";
  AgentProcess agent(kAllowAll);
  const std::size_t threads_before = thread_count(agent.agent_pid());
  const std::size_t fds_before = agent.agent_fd_count();

  std::vector<CallResult> calls(300);
  std::vector<CallResult*> pointers;
  for (auto& call : calls) {
    agent.connect_async("slow.test", 443, {{"server-name", std::string("slow.test")}, {"timeout-ms", 100u}}, &call);
    pointers.push_back(&call);
  }
  ASSERT_TRUE(agent.wait(pointers, 20000));
  std::size_t timed_out = 0, limited = 0, connect_limited = 0;
  for (const auto& call : calls) {
    if (call.error_name == "org.tapsec1.Error.Timeout") {
      ++timed_out;
    } else if (call.error_name == "org.tapsec1.Error.LimitExceeded") {
      ++limited;
      connect_limited += call.error_message.find("Connects in progress") != std::string::npos;
    } else {
      ADD_FAILURE() << "unexpected answer: " << call.error_name << " " << call.error_message;
    }
  }
  EXPECT_GT(timed_out, 0u);
  // 16 Connects per caller at once: the lookups that hang hold them.
  EXPECT_GT(connect_limited, 0u) << "no Connect was refused by the per-caller Connect limit";
  std::printf("300 slow Connects: %zu timed out, %zu refused at the limit\n", timed_out, limited);
  std::size_t threads = thread_count(agent.agent_pid());
  EXPECT_LE(threads, threads_before + 2) << "lookups must run on the resolver's workers (2 by default)";
  EXPECT_LE(agent.agent_fd_count(), fds_before + 2) << "descriptors left behind by timed-out Connects";

  // A connection made now takes the lowest free descriptor numbers; it must
  // carry only TLS records, also after the pending lookups have given up.
  Listener server;
  CallResult client;
  agent.connect_async("127.0.0.1", server.port, {{"server-name", std::string("server.test")}, {"timeout-ms", 6000u}},
                      &client);
  int accepted = -1;
  for (int i = 0; i < 100 && accepted < 0; ++i) {
    sd_bus_process(agent.bus(), nullptr);
    accepted = server.accept_within(50);
  }
  ASSERT_GE(accepted, 0) << "the agent did not connect";
  std::vector<std::uint8_t> received;
  auto until = Clock::now() + std::chrono::milliseconds(4000);  // past the name server's 3 s
  while (Clock::now() < until) {
    pollfd p{accepted, POLLIN, 100};
    if (::poll(&p, 1, 100) == 1) {
      std::uint8_t chunk[4096];
      ssize_t n = ::read(accepted, chunk, sizeof chunk);
      if (n <= 0) break;
      received.insert(received.end(), chunk, chunk + n);
    }
    sd_bus_process(agent.bus(), nullptr);
  }
  ::close(accepted);
  ASSERT_FALSE(received.empty()) << "no ClientHello";
  for (std::size_t at = 0; at < received.size();) {
    ASSERT_GE(received.size() - at, 5u) << "a partial record at byte " << at;
    ASSERT_EQ(received[at], 22) << "byte " << at << " is not a TLS handshake record: a stray write";
    ASSERT_EQ(received[at + 1], 3) << "byte " << at << ": not a TLS record version";
    at += 5 + (std::size_t(received[at + 3]) << 8 | received[at + 4]);
    ASSERT_LE(at, received.size()) << "a record runs past what was received";
  }
  agent.wait({&client}, 10000);
  EXPECT_LE(thread_count(agent.agent_pid()), threads_before + 2);
  EXPECT_EQ(agent.stop_agent(), 0);
}

// 10,000 Connects at once from one caller to a server that never answers:
// at most the configured number are in progress, the rest are refused at
// once with LimitExceeded, the agent stays small, and another application
// is answered promptly throughout.
TEST(AgentBounds, TenThousandConcurrentCallsAreBounded) {
  NEED_ROOT();
  AgentProcess agent(kAllowAll);
  Listener silent;
  const std::size_t rss_before = rss_kib(agent.agent_pid());
  OtherCaller other(agent.bus_address());
  std::vector<CallResult> calls(10000);
  std::vector<CallResult*> pointers;
  auto start = Clock::now();
  for (auto& call : calls) {
    agent.connect_async("127.0.0.1", silent.port, {{"server-name", std::string("server.test")}, {"timeout-ms", 3000u}},
                        &call);
    pointers.push_back(&call);
  }
  std::size_t rss_peak = 0;
  bool all = false;
  while (!all && Clock::now() - start < std::chrono::seconds(60)) {
    all = agent.wait(pointers, 200);
    rss_peak = std::max(rss_peak, rss_kib(agent.agent_pid()));
  }
  ASSERT_TRUE(all) << "not every call was answered within 60 s";
  auto took = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count();
  other.finish();
  std::size_t limited = 0, other_errors = 0;
  std::map<std::string, int> answers;
  for (const auto& call : calls) {
    ++answers[call.error_name + " " + call.error_message.substr(0, 60)];
    if (call.error_name == "org.tapsec1.Error.LimitExceeded") ++limited;
    else ++other_errors;
  }
  for (const auto& [answer, count] : answers) std::printf("  %6d  %s\n", count, answer.c_str());
  std::printf("10000 Connects in %lld ms: %zu LimitExceeded, %zu ran to their timeout; RSS %zu KiB before, %zu KiB "
              "peak; other caller: %d calls, slowest %ld ms\n",
              static_cast<long long>(took), limited, other_errors, rss_before, rss_peak, other.calls(),
              other.slowest_ms());
  // Per caller: 16 Connects and 32 handshakes at once (the defaults).
  EXPECT_LE(other_errors, 48u + 48u) << "more calls ran than the per-caller limits allow";
  EXPECT_GE(limited, 9000u);
  EXPECT_FALSE(other.failed());
  EXPECT_EQ(agent.stop_agent(), 0);
  SKIP_BOUNDS_WHEN_SANITIZED();
  EXPECT_LT(rss_peak, rss_before + 64 * 1024) << "the agent grew by more than 64 MiB";
  EXPECT_GT(other.calls(), 0);
  EXPECT_LT(other.slowest_ms(), 2000) << "another application waited too long for an answer";
}

// 40,000 garbage datagrams at the IKE port: all dropped and counted, the
// agent stays small and answers another application throughout.
TEST(AgentBounds, FortyThousandGarbageDatagrams) {
  NEED_ROOT();
  constexpr std::uint16_t kIkePort = 15600;
  AgentProcess agent(kAllowAll, {"--ike-port", std::to_string(kIkePort), "--nat-t-port", "15601"});
  const std::size_t rss_before = rss_kib(agent.agent_pid());
  auto counted = [&] {
    auto statistics = agent.statistics();
    return statistics["ike-dropped-malformed"] + statistics["ike-dropped-unknown-spi"];
  };
  const auto dropped_before = counted();
  const auto kernel_drops_before = udp_drops(kIkePort);
  OtherCaller other(agent.bus_address());
  int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(kIkePort);
  to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::mt19937 random(7);
  std::size_t rss_peak = 0;
  for (int batch = 0; batch < 200; ++batch) {
    for (int i = 0; i < 200; ++i) {
      std::uint8_t d[256];
      std::size_t n = 28 + random() % 200;
      for (std::size_t j = 0; j < n; ++j) d[j] = static_cast<std::uint8_t>(random());
      d[17] = 0x20;  // IKE version 2.0, so the header parser goes on
      ::sendto(fd, d, n, 0, reinterpret_cast<sockaddr*>(&to), sizeof to);
    }
    // Paced, so that the socket buffer does not overflow and every datagram
    // reaches the agent's parser.
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    rss_peak = std::max(rss_peak, rss_kib(agent.agent_pid()));
  }
  ::close(fd);
  // Every datagram is either counted by the agent as dropped or was
  // dropped by the kernel before it (a full socket buffer).
  std::uint64_t dropped = 0, kernel_drops = 0;
  for (int i = 0; i < 100 && dropped + kernel_drops < 40000; ++i) {
    dropped = counted() - dropped_before;
    kernel_drops = udp_drops(kIkePort) - kernel_drops_before;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  other.finish();
  std::printf("40000 garbage datagrams: %llu counted as dropped by the agent, %llu by the kernel; RSS %zu KiB before, "
              "%zu KiB peak; other caller: %d calls, slowest %ld ms\n",
              static_cast<unsigned long long>(dropped), static_cast<unsigned long long>(kernel_drops), rss_before,
              rss_peak, other.calls(), other.slowest_ms());
  EXPECT_EQ(dropped + kernel_drops, 40000u) << "datagrams neither dropped by the kernel nor counted by the agent";
  EXPECT_GE(dropped, 20000u) << "most datagrams should reach the agent's parser";
  EXPECT_FALSE(other.failed());
  EXPECT_EQ(agent.stop_agent(), 0);
  SKIP_BOUNDS_WHEN_SANITIZED();
  EXPECT_LT(rss_peak, rss_before + 16 * 1024);
  EXPECT_LT(other.slowest_ms(), 1000);
}

// ---------------------------------------------------------------- ownership

const char* kOwnershipPolicy = R"(
[Identity server]
Certificate=${DIR}/server.pem
PrivateKey=${DIR}/server.key

[TrustStore test-ca]
File=${DIR}/ca.pem
IncludeSystem=no

[Rule everything]
Protocols=tls
Identities=server
TrustStore=test-ca
Fallback=yes
Action=allow
)";

constexpr uid_t kNobody = 65534;

// Runs `body` in a child that is user nobody with its own bus connection;
// returns what the body wrote to its string.
std::string as_nobody(const std::string& bus_address, const std::function<std::string(sd_bus*)>& body) {
  int pipe_fds[2];
  if (::pipe(pipe_fds) != 0) return "pipe failed";
  pid_t child = ::fork();
  if (child == 0) {
    ::close(pipe_fds[0]);
    std::string out;
    sd_bus* bus = nullptr;
    if (::setgroups(0, nullptr) != 0 || ::setgid(kNobody) != 0 || ::setuid(kNobody) != 0) {
      out = "cannot become nobody";
    } else if (sd_bus_new(&bus) < 0 || sd_bus_set_address(bus, bus_address.c_str()) < 0 ||
               sd_bus_set_bus_client(bus, 1) < 0 || sd_bus_start(bus) < 0) {
      out = "nobody cannot connect to the bus";
    } else {
      out = body(bus);
    }
    [[maybe_unused]] auto n = ::write(pipe_fds[1], out.data(), out.size());
    ::_exit(0);
  }
  ::close(pipe_fds[1]);
  std::string result;
  char buffer[4096];
  for (ssize_t n; (n = ::read(pipe_fds[0], buffer, sizeof buffer)) > 0;) result.append(buffer, n);
  ::close(pipe_fds[0]);
  ::waitpid(child, nullptr, 0);
  return result;
}

// The error name of a call, or "ok".
std::string call_error(sd_bus* bus, const char* path, const char* interface, const char* member,
                       const char* types = "", const char* a = nullptr, const char* b = nullptr) {
  sd_bus_error error = SD_BUS_ERROR_NULL;
  sd_bus_message* reply = nullptr;
  int r = a ? (b ? sd_bus_call_method(bus, "org.tapsec1", path, interface, member, &error, &reply, types, a, b)
                 : sd_bus_call_method(bus, "org.tapsec1", path, interface, member, &error, &reply, types, a))
            : sd_bus_call_method(bus, "org.tapsec1", path, interface, member, &error, &reply, types);
  std::string name = r >= 0 ? "ok" : (error.name ? error.name : "error");
  sd_bus_error_free(&error);
  sd_bus_message_unref(reply);
  return name;
}

std::size_t listed_associations(sd_bus* bus) {
  sd_bus_message* reply = nullptr;
  if (sd_bus_call_method(bus, "org.tapsec1", "/org/tapsec1", "org.tapsec1.Manager", "ListAssociations", nullptr, &reply,
                         "") < 0)
    return 9999;
  std::size_t n = 0;
  const char* path = nullptr;
  sd_bus_message_enter_container(reply, 'a', "o");
  while (sd_bus_message_read_basic(reply, 'o', &path) > 0) ++n;
  sd_bus_message_unref(reply);
  return n;
}

// Object paths below /org/tapsec1/association in GetManagedObjects.
std::size_t managed_associations(sd_bus* bus) {
  sd_bus_message* reply = nullptr;
  if (sd_bus_call_method(bus, "org.tapsec1", "/org/tapsec1", "org.freedesktop.DBus.ObjectManager",
                         "GetManagedObjects", nullptr, &reply, "") < 0)
    return 9999;
  std::size_t n = 0;
  sd_bus_message_enter_container(reply, 'a', "{oa{sa{sv}}}");
  while (sd_bus_message_enter_container(reply, 'e', "oa{sa{sv}}") > 0) {
    const char* path = nullptr;
    sd_bus_message_read_basic(reply, 'o', &path);
    if (path && std::string(path).rfind("/org/tapsec1/association/", 0) == 0) ++n;
    sd_bus_message_skip(reply, "a{sa{sv}}");
    sd_bus_message_exit_container(reply);
  }
  sd_bus_message_unref(reply);
  return n;
}

std::uint32_t session_cache_entries(AgentProcess& agent) {
  std::uint32_t value = 0;
  sd_bus_get_property_trivial(agent.bus(), "org.tapsec1", "/org/tapsec1", "org.tapsec1.Manager",
                              "SessionCacheEntries", nullptr, 'u', &value);
  return value;
}

struct SecuredPair {
  CallResult client, server;
  ~SecuredPair() {
    if (client.fd >= 0) ::close(client.fd);
    if (server.fd >= 0) ::close(server.fd);
  }
};

void secure_pair(AgentProcess& agent, SecuredPair& pair) {
  auto [c, s] = tcp_pair();
  agent.secure_socket_async(s, "server", {{"identity", std::string("server")}}, &pair.server);
  agent.secure_socket_async(c, "client", {{"server-name", std::string("server.test")}}, &pair.client);
  ASSERT_TRUE(agent.wait({&pair.client, &pair.server}));
  ::close(c);
  ::close(s);
  ASSERT_EQ(pair.client.error_name, "") << pair.client.error_message;
  ASSERT_EQ(pair.server.error_name, "") << pair.server.error_message;
}

// Another user can neither see nor touch root's association: no listing,
// no properties, no methods, no signal content, and FlushSessionCache
// flushes only its own sessions.
TEST(AgentOwnership, AnotherUserSeesNothingOfAnAssociation) {
  NEED_ROOT();
  AgentProcess agent(kOwnershipPolicy);
  SecuredPair pair;
  secure_pair(agent, pair);
  const std::string path = pair.client.association;
  const std::uint32_t cached = session_cache_entries(agent);
  ASSERT_GT(cached, 0u) << "the handshake left no session to resume";

  std::string seen = as_nobody(agent.bus_address(), [&](sd_bus* bus) {
    std::string out;
    out += "list=" + std::to_string(listed_associations(bus)) + ";";
    out += "managed=" + std::to_string(managed_associations(bus)) + ";";
    out += "get=" + call_error(bus, path.c_str(), "org.freedesktop.DBus.Properties", "GetAll", "s",
                                "org.tapsec1.Association") + ";";
    out += "terminate=" + call_error(bus, path.c_str(), "org.tapsec1.Association", "Terminate") + ";";
    sd_bus_message* reply = nullptr;
    std::uint32_t flushed = 9999;
    if (sd_bus_call_method(bus, "org.tapsec1", "/org/tapsec1", "org.tapsec1.Manager", "FlushSessionCache", nullptr,
                           &reply, "") >= 0)
      sd_bus_message_read(reply, "u", &flushed);
    sd_bus_message_unref(reply);
    out += "flushed=" + std::to_string(flushed) + ";";
    return out;
  });
  EXPECT_EQ(seen, "list=0;managed=0;get=org.freedesktop.DBus.Error.UnknownObject;"
                  "terminate=org.freedesktop.DBus.Error.UnknownObject;flushed=0;");
  EXPECT_EQ(session_cache_entries(agent), cached) << "nobody flushed root's sessions";
  EXPECT_EQ(agent.get_string(path, "State"), "established");
}

TEST(AgentOwnership, AnotherUserGetsNoSignalsOfAnAssociation) {
  NEED_ROOT();
  AgentProcess agent(kOwnershipPolicy);
  SecuredPair pair;
  secure_pair(agent, pair);
  const std::string path = pair.client.association;
  int ready[2];
  ASSERT_EQ(::pipe(ready), 0);
  std::string seen;
  std::thread listener([&] {
    seen = as_nobody(agent.bus_address(), [&](sd_bus* bus) {
      int count = 0;
      sd_bus_slot* slot = nullptr;
      sd_bus_add_match(bus, &slot, "type='signal',sender='org.tapsec1'",
                       [](sd_bus_message*, void* userdata, sd_bus_error*) {
                         ++*static_cast<int*>(userdata);
                         return 0;
                       },
                       &count);
      listed_associations(bus);  // introduces itself to the agent
      [[maybe_unused]] auto n = ::write(ready[1], "r", 1);
      auto until = Clock::now() + std::chrono::milliseconds(1500);
      while (Clock::now() < until) {
        while (sd_bus_process(bus, nullptr) > 0) {
        }
        sd_bus_wait(bus, 100'000);
      }
      sd_bus_slot_unref(slot);
      return "signals=" + std::to_string(count);
    });
  });
  char c;
  ASSERT_EQ(::read(ready[0], &c, 1), 1);
  // Root's own watcher (the fixture's connection) still gets its signals.
  EXPECT_EQ(agent.call_association(path, "UpdateKeys", "b", 0), "");
  EXPECT_EQ(agent.call_association(path, "Terminate", ""), "");
  listener.join();
  ::close(ready[0]);
  ::close(ready[1]);
  EXPECT_EQ(seen, "signals=0") << "another user received signals about root's association";
}

// Policy may let a group of operators see everything (MatchOperation=observe),
// which still grants no action on what they see.
TEST(AgentOwnership, PolicyCanGrantObservingOthers) {
  NEED_ROOT();
  AgentProcess agent(std::string(kOwnershipPolicy) + R"(
[Rule operators-observe]
MatchUser=nobody
MatchOperation=observe
Action=allow
)");
  SecuredPair pair;
  secure_pair(agent, pair);
  const std::string path = pair.client.association;
  std::string seen = as_nobody(agent.bus_address(), [&](sd_bus* bus) {
    std::string out = "list=" + std::to_string(listed_associations(bus)) + ";";
    out += "get=" + call_error(bus, path.c_str(), "org.freedesktop.DBus.Properties", "GetAll", "s",
                                "org.tapsec1.Association") + ";";
    out += "terminate=" + call_error(bus, path.c_str(), "org.tapsec1.Association", "Terminate") + ";";
    return out;
  });
  EXPECT_EQ(seen, "list=2;get=ok;terminate=org.tapsec1.Error.PolicyDenied;");
  EXPECT_EQ(agent.get_string(path, "State"), "established");
}

}  // namespace
}  // namespace tapsec::testing
