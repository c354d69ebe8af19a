// End-to-end check of tapsec's XFRM installer on a kernel with ESP: two
// network namespaces joined by veth, an ESP SA pair and policies installed
// in each through XfrmSocket, UDP echoes across, and the kernel's own view
// (query_sa, `ip -s xfrm state`) compared. Other cases: lifetimes (soft and
// hard EXPIRE events), ACQUIRE for a trap policy, moving SAs to a new
// address.
//
//   xfrm-selftest --case traffic --cipher aes-gcm-128|aes-gcm-256|chacha20-poly1305|aes-cbc-256-sha256
//                 --mode tunnel|transport [--esn] [--encap]
//   xfrm-selftest --case lifetime|acquire|move
//   xfrm-selftest --case all        (every case above, one namespace pair)
//
// Needs root and iproute2. Exit 0: passed; 77: the kernel lacks ESP (or
// the cipher); 1: failed (what was expected and seen is printed).
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/rand.h>
#include <poll.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "agent/core/unique_fd.h"
#include "agent/kernel/xfrm.h"

namespace {

using namespace tapsec::kernel::xfrm;
using tapsec::core::UniqueFd;
using tapsec::kernel::Result;
using tapsec::ikev2::IpAddress;
using tapsec::ikev2::TrafficSelector;

constexpr int kSkipped = 77;

struct Failure {
  std::string message;
  int exit_code = 1;
};

[[noreturn]] void fail(const std::string& message, int exit_code = 1) { throw Failure{message, exit_code}; }

IpAddress ip(const char* text) { return IpAddress::parse(text).value(); }
TrafficSelector ts(const char* text) { return TrafficSelector::parse(text).value(); }

std::string hex(std::uint32_t value) {
  char text[16];
  std::snprintf(text, sizeof text, "0x%08x", value);
  return text;
}

int shell(const std::string& command) {
  const int status = std::system(command.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}

std::string capture(const std::string& command) {
  std::string output;
  if (FILE* pipe = ::popen(command.c_str(), "r")) {
    std::array<char, 512> chunk;
    while (std::fgets(chunk.data(), chunk.size(), pipe)) output += chunk.data();
    ::pclose(pipe);
  }
  return output;
}

// Two namespaces, "a" and "b", joined by veth: 10.99.0.1 ↔ 10.99.0.2 outer;
// tunnel mode carries 10.100.1.1 (on a's lo) ↔ 10.100.2.1 (on b's lo).
class Namespaces {
 public:
  Namespaces() {
    const std::string id = std::to_string(::getpid());
    a_ = "xfrmst-a-" + id;
    b_ = "xfrmst-b-" + id;
    const std::string setup =
        "set -e; ip netns add " + a_ + "; ip netns add " + b_ + "; " +
        "ip link add xst-a netns " + a_ + " type veth peer name xst-b netns " + b_ + "; " +
        in_a("ip link set lo up") + "; " + in_b("ip link set lo up") + "; " +
        in_a("ip addr add 10.99.0.1/24 dev xst-a") + "; " + in_b("ip addr add 10.99.0.2/24 dev xst-b") + "; " +
        in_a("ip link set xst-a up") + "; " + in_b("ip link set xst-b up") + "; " +
        in_a("ip addr add 10.100.1.1/32 dev lo") + "; " + in_b("ip addr add 10.100.2.1/32 dev lo") + "; " +
        in_a("ip route add 10.100.2.0/24 via 10.99.0.2 src 10.100.1.1") + "; " +
        in_b("ip route add 10.100.1.0/24 via 10.99.0.1 src 10.100.2.1") + "; " +
        in_a("sysctl -qw net.ipv4.conf.all.rp_filter=0") + "; " + in_b("sysctl -qw net.ipv4.conf.all.rp_filter=0");
    if (shell(setup) != 0) {
      cleanup();
      fail("cannot set up the two namespaces (iproute2, veth)");
    }
    original_ = UniqueFd(::open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC));
  }
  ~Namespaces() { cleanup(); }

  // "ip ..." commands run with -n (no extra process); others through netns exec.
  std::string in_a(const std::string& command) const { return in(a_, command); }
  std::string in_b(const std::string& command) const { return in(b_, command); }
  static std::string in(const std::string& name, const std::string& command) {
    if (command.rfind("ip ", 0) == 0) return "ip -n " + name + command.substr(2);
    return "ip netns exec " + name + " " + command;
  }
  const std::string& a() const { return a_; }
  const std::string& b() const { return b_; }

  // Runs make() inside namespace `name`: sockets made there stay there.
  template <typename T>
  T inside(const std::string& name, const std::function<T()>& make) const {
    UniqueFd target(::open(("/run/netns/" + name).c_str(), O_RDONLY | O_CLOEXEC));
    if (!target || ::setns(target.get(), CLONE_NEWNET) != 0) fail("cannot enter namespace " + name);
    T value = make();
    if (::setns(original_.get(), CLONE_NEWNET) != 0) fail("cannot return to the original namespace");
    return value;
  }

 private:
  void cleanup() {
    std::system(("ip netns del " + a_ + " 2>/dev/null; ip netns del " + b_ + " 2>/dev/null").c_str());
  }
  std::string a_, b_;
  UniqueFd original_;
};

XfrmSocket open_xfrm(const Namespaces& spaces, const std::string& name) {
  return spaces.inside<XfrmSocket>(name, [] {
    auto socket = XfrmSocket::open();
    if (!socket) fail(socket.error());
    return std::move(socket.value());
  });
}

XfrmEvents open_events(const Namespaces& spaces, const std::string& name) {
  return spaces.inside<XfrmEvents>(name, [] {
    auto events = XfrmEvents::open();
    if (!events) fail(events.error());
    return std::move(events.value());
  });
}

UniqueFd udp_bound(const Namespaces& spaces, const std::string& name, const char* address, std::uint16_t port) {
  return spaces.inside<UniqueFd>(name, [&] {
    UniqueFd fd(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    sockaddr_in local{};
    local.sin_family = AF_INET;
    local.sin_port = htons(port);
    ::inet_pton(AF_INET, address, &local.sin_addr);
    if (!fd || ::bind(fd.get(), reinterpret_cast<sockaddr*>(&local), sizeof local) != 0) {
      fail(std::string("cannot bind UDP ") + address + ":" + std::to_string(port) + ": " + std::strerror(errno));
    }
    return fd;
  });
}

struct Cipher {
  std::string aead, encryption, integrity;
  std::size_t key_bytes = 0, integrity_key_bytes = 0;
};

Cipher cipher_named(const std::string& name) {
  if (name == "aes-gcm-128") return {"rfc4106(gcm(aes))", "", "", 20, 0};
  if (name == "aes-gcm-256") return {"rfc4106(gcm(aes))", "", "", 36, 0};
  if (name == "chacha20-poly1305") return {"rfc7539esp(chacha20,poly1305)", "", "", 36, 0};
  if (name == "aes-cbc-256-sha256") return {"", "cbc(aes)", "hmac(sha256)", 32, 32};
  fail("unknown cipher " + name);
}

std::vector<std::uint8_t> random_bytes(std::size_t size) {
  std::vector<std::uint8_t> bytes(size);
  if (size && RAND_bytes(bytes.data(), static_cast<int>(size)) != 1) fail("no random bytes");
  return bytes;
}

struct Options {
  std::string test_case = "traffic";
  std::string cipher = "aes-gcm-128";
  Mode mode = Mode::Tunnel;
  bool esn = false;
  bool encap = false;
};

// One direction's SA, the same keys given to both ends.
SaSpec sa(const Options& options, const Cipher& cipher, const char* source, const char* destination,
          std::uint32_t spi, std::uint32_t reqid, const std::vector<std::uint8_t>& key,
          const std::vector<std::uint8_t>& integrity_key) {
  SaSpec spec;
  spec.source = ip(source);
  spec.destination = ip(destination);
  spec.spi = spi;
  spec.reqid = reqid;
  spec.mode = options.mode;
  spec.aead_algorithm = cipher.aead;
  spec.encryption_algorithm = cipher.encryption;
  spec.integrity_algorithm = cipher.integrity;
  spec.encryption_key = key;
  spec.integrity_key = integrity_key;
  spec.extended_sequence_numbers = options.esn;
  spec.replay_window = options.esn ? 128 : 32;
  if (options.encap) spec.encapsulation = Encapsulation{4500, 4500};
  if (options.mode == Mode::Transport) {
    spec.selector_source = TrafficSelector::host(spec.source);
    spec.selector_destination = TrafficSelector::host(spec.destination);
  }
  return spec;
}

void install_or_skip(XfrmSocket& socket, SaSpec spec, const std::string& side) {
  auto result = socket.add_sa(std::move(spec));
  if (result) return;
  const int error = result.error_number();
  const bool missing = error == EPROTONOSUPPORT || error == ENOPROTOOPT || error == ENOSYS;
  fail("[" + side + "] " + result.error(), missing ? kSkipped : 1);
}

void check(const Result<Unit>& result, const std::string& side) {
  if (!result) fail("[" + side + "] " + result.error());
}

// The policies of one end: `local_inner`→`remote_inner` out, the reverse in.
void install_policies(XfrmSocket& socket, Mode mode, const char* local_inner, const char* remote_inner,
                      const char* local_outer, const char* remote_outer, std::uint32_t out_reqid,
                      std::uint32_t in_reqid, const std::string& side, bool update = false) {
  PolicySpec out;
  out.source = ts(local_inner);
  out.destination = ts(remote_inner);
  out.direction = Direction::Out;
  out.mode = mode;
  out.reqid = out_reqid;
  if (mode == Mode::Tunnel) {
    out.template_source = ip(local_outer);
    out.template_destination = ip(remote_outer);
  }
  PolicySpec in = out;
  in.source = out.destination;
  in.destination = out.source;
  in.direction = Direction::In;
  in.reqid = in_reqid;
  if (mode == Mode::Tunnel) {
    in.template_source = ip(remote_outer);
    in.template_destination = ip(local_outer);
  }
  check(socket.add_policy(out, update), side);
  check(socket.add_policy(in, update), side);
}

// Sends `count` datagrams from `client` to `server_address`:7000 and has the
// server echo each; returns how many came back.
int echo(int client, int server, const char* server_address, int count) {
  sockaddr_in peer{};
  peer.sin_family = AF_INET;
  peer.sin_port = htons(7000);
  ::inet_pton(AF_INET, server_address, &peer.sin_addr);
  int returned = 0;
  for (int index = 0; index < count; ++index) {
    char payload[64];
    std::snprintf(payload, sizeof payload, "tapsec-xfrm-%d", index);
    ::sendto(client, payload, std::strlen(payload), 0, reinterpret_cast<sockaddr*>(&peer), sizeof peer);
    pollfd waiting{server, POLLIN, 0};
    if (::poll(&waiting, 1, 1000) <= 0) continue;
    char buffer[128];
    sockaddr_in from{};
    socklen_t from_length = sizeof from;
    const ssize_t length =
        ::recvfrom(server, buffer, sizeof buffer, 0, reinterpret_cast<sockaddr*>(&from), &from_length);
    if (length <= 0) continue;
    ::sendto(server, buffer, static_cast<std::size_t>(length), 0, reinterpret_cast<sockaddr*>(&from), from_length);
    pollfd back{client, POLLIN, 0};
    if (::poll(&back, 1, 1000) <= 0) continue;
    if (::recv(client, buffer, sizeof buffer, 0) == length && std::memcmp(buffer, payload, std::strlen(payload)) == 0) {
      ++returned;
    }
  }
  return returned;
}

// `ip -s xfrm state` of one SA (found by destination and SPI): its packet count.
long long ip_packets(const Namespaces& spaces, const std::string& name, const char* source, const char* destination,
                     std::uint32_t spi) {
  (void)spaces;
  const std::string output = capture("ip -n " + name + " -s xfrm state list dst " + destination + " 2>&1");
  const std::string header = std::string("src ") + source + " dst " + destination + "\n\tproto esp spi " + hex(spi);
  const auto block = output.find(header);
  // The configured limits also say "(packets)"; the count follows "current:".
  const auto current = block == std::string::npos ? block : output.find("lifetime current:", block);
  const auto mark = current == std::string::npos ? current : output.find("(packets)", current);
  if (mark == std::string::npos) fail("cannot read `ip -s xfrm state` for spi " + hex(spi) + ":\n" + output);
  const auto start = output.rfind(' ', mark);
  return std::atoll(output.c_str() + start + 1);
}

void expect_counters(XfrmSocket& socket, const Namespaces& spaces, const std::string& name, const char* source,
                     const char* destination, std::uint32_t spi, int at_least, const std::string& label) {
  auto counters = socket.query_sa(ip(destination), spi);
  if (!counters) fail("[" + label + "] " + counters.error());
  const long long from_ip = ip_packets(spaces, name, source, destination, spi);
  std::printf("  %-26s spi %s: %llu packets, %llu bytes (ip -s xfrm state: %lld packets)\n", label.c_str(),
              hex(spi).c_str(), static_cast<unsigned long long>(counters->packets),
              static_cast<unsigned long long>(counters->bytes), from_ip);
  if (counters->packets < static_cast<std::uint64_t>(at_least) || counters->bytes == 0) {
    fail("[" + label + "] expected at least " + std::to_string(at_least) + " packets on spi " + hex(spi) + ", saw " +
         std::to_string(counters->packets));
  }
  if (static_cast<long long>(counters->packets) != from_ip) {
    fail("[" + label + "] query_sa says " + std::to_string(counters->packets) + " packets, ip says " +
         std::to_string(from_ip));
  }
}

struct Pair {
  std::uint32_t spi_ab = 0, spi_ba = 0;
};

// Both SAs in both namespaces, and the policies.
Pair install_pair(XfrmSocket& a, XfrmSocket& b, const Options& options, const char* a_inner, const char* b_inner) {
  const Cipher cipher = cipher_named(options.cipher);
  const auto key_ab = random_bytes(cipher.key_bytes), key_ba = random_bytes(cipher.key_bytes);
  const auto integrity_ab = random_bytes(cipher.integrity_key_bytes);
  const auto integrity_ba = random_bytes(cipher.integrity_key_bytes);
  Pair pair;
  // b allocates the SPI it receives on, a the one it receives on: as IKE does.
  auto spi_ab = b.allocate_spi(ip("10.99.0.1"), ip("10.99.0.2"), 1);
  auto spi_ba = a.allocate_spi(ip("10.99.0.2"), ip("10.99.0.1"), 2);
  if (!spi_ab || !spi_ba) fail(spi_ab ? spi_ba.error() : spi_ab.error());
  pair.spi_ab = spi_ab.value();
  pair.spi_ba = spi_ba.value();
  install_or_skip(a, sa(options, cipher, "10.99.0.1", "10.99.0.2", pair.spi_ab, 1, key_ab, integrity_ab), "a out");
  // The inbound ends fill the larval SAs their allocation left.
  auto fill = [&](XfrmSocket& socket, SaSpec spec, const std::string& side) {
    auto result = socket.add_sa(std::move(spec), true);
    if (!result) fail("[" + side + "] " + result.error());
  };
  fill(b, sa(options, cipher, "10.99.0.1", "10.99.0.2", pair.spi_ab, 1, key_ab, integrity_ab), "b in");
  install_or_skip(b, sa(options, cipher, "10.99.0.2", "10.99.0.1", pair.spi_ba, 2, key_ba, integrity_ba), "b out");
  fill(a, sa(options, cipher, "10.99.0.2", "10.99.0.1", pair.spi_ba, 2, key_ba, integrity_ba), "a in");
  install_policies(a, options.mode, a_inner, b_inner, "10.99.0.1", "10.99.0.2", 1, 2, "a");
  install_policies(b, options.mode, b_inner, a_inner, "10.99.0.2", "10.99.0.1", 2, 1, "b");
  return pair;
}

// ESP in UDP needs a socket on port 4500 at each end; it bypasses the
// policies as an IKE socket would.
std::vector<UniqueFd> encapsulation_sockets(const Namespaces& spaces) {
  std::vector<UniqueFd> sockets;
  for (const auto& [name, address] : {std::pair{spaces.a(), "10.99.0.1"}, std::pair{spaces.b(), "10.99.0.2"}}) {
    UniqueFd fd = udp_bound(spaces, name, address, 4500);
    check(bypass_socket_policy(fd.get(), AF_INET), name);
    check(enable_esp_in_udp(fd.get()), name);
    sockets.push_back(std::move(fd));
  }
  return sockets;
}

void run_traffic(const Namespaces& spaces, const Options& options) {
  XfrmSocket a = open_xfrm(spaces, spaces.a()), b = open_xfrm(spaces, spaces.b());
  const bool tunnel = options.mode == Mode::Tunnel;
  const char* a_inner = tunnel ? "10.100.1.1" : "10.99.0.1";
  const char* b_inner = tunnel ? "10.100.2.1" : "10.99.0.2";
  auto encap_sockets = options.encap ? encapsulation_sockets(spaces) : std::vector<UniqueFd>{};
  const Pair pair = install_pair(a, b, options, a_inner, b_inner);

  UniqueFd server = udp_bound(spaces, spaces.b(), b_inner, 7000);
  UniqueFd client = udp_bound(spaces, spaces.a(), a_inner, 0);
  constexpr int kEchoes = 20;
  const int returned = echo(client.get(), server.get(), b_inner, kEchoes);
  std::printf("  %d of %d UDP echoes came back through ESP\n", returned, kEchoes);
  if (returned != kEchoes) fail("expected all " + std::to_string(kEchoes) + " echoes back, got " + std::to_string(returned));

  expect_counters(a, spaces, spaces.a(), "10.99.0.1", "10.99.0.2", pair.spi_ab, kEchoes, "a out");
  expect_counters(b, spaces, spaces.b(), "10.99.0.1", "10.99.0.2", pair.spi_ab, kEchoes, "b in");
  expect_counters(b, spaces, spaces.b(), "10.99.0.2", "10.99.0.1", pair.spi_ba, kEchoes, "b out");
  expect_counters(a, spaces, spaces.a(), "10.99.0.2", "10.99.0.1", pair.spi_ba, kEchoes, "a in");
  if (options.encap) {
    const std::string state = capture("ip -n " + spaces.a() + " xfrm state");
    if (state.find("encap type espinudp sport 4500 dport 4500") == std::string::npos) {
      fail("`ip xfrm state` shows no ESP-in-UDP encapsulation:\n" + state);
    }
  }
}

std::vector<Event> wait_events(XfrmEvents& events, std::size_t wanted, int milliseconds) {
  std::vector<Event> received;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(milliseconds);
  while (received.size() < wanted && std::chrono::steady_clock::now() < deadline) {
    pollfd waiting{events.fd(), POLLIN, 0};
    ::poll(&waiting, 1, 100);
    auto batch = events.read();
    if (!batch) fail(batch.error());
    received.insert(received.end(), batch->begin(), batch->end());
  }
  return received;
}

void run_lifetime(const Namespaces& spaces) {
  XfrmSocket a = open_xfrm(spaces, spaces.a()), b = open_xfrm(spaces, spaces.b());
  XfrmEvents events = open_events(spaces, spaces.a());
  Options options;
  options.mode = Mode::Transport;
  const Cipher cipher = cipher_named(options.cipher);
  const auto key = random_bytes(cipher.key_bytes);
  constexpr std::uint32_t kSpi = 0xc0de0001;
  SaSpec outbound = sa(options, cipher, "10.99.0.1", "10.99.0.2", kSpi, 1, key, {});
  outbound.lifetime.soft_packets = 3;
  outbound.lifetime.hard_packets = 6;
  install_or_skip(a, outbound, "a out");
  install_or_skip(b, sa(options, cipher, "10.99.0.1", "10.99.0.2", kSpi, 1, key, {}), "b in");
  PolicySpec out;
  out.source = ts("10.99.0.1[udp]");
  out.destination = ts("10.99.0.2[udp/7000]");
  out.mode = Mode::Transport;
  out.reqid = 1;
  check(a.add_policy(out), "a");

  UniqueFd server = udp_bound(spaces, spaces.b(), "10.99.0.2", 7000);
  UniqueFd client = udp_bound(spaces, spaces.a(), "10.99.0.1", 0);
  sockaddr_in peer{};
  peer.sin_family = AF_INET;
  peer.sin_port = htons(7000);
  ::inet_pton(AF_INET, "10.99.0.2", &peer.sin_addr);
  int sent = 0;
  for (int index = 0; index < 10; ++index) {
    if (::sendto(client.get(), "x", 1, 0, reinterpret_cast<sockaddr*>(&peer), sizeof peer) == 1) ++sent;
    ::usleep(20000);
  }
  const auto received = wait_events(events, 2, 3000);
  bool soft = false, hard = false;
  for (const Event& event : received) {
    if (const auto* expire = std::get_if<ExpireEvent>(&event)) {
      std::printf("  EXPIRE %s spi %s dst %s\n", expire->hard ? "hard" : "soft", hex(expire->spi).c_str(),
                  expire->destination.to_string().c_str());
      if (expire->spi != kSpi || expire->destination != ip("10.99.0.2")) fail("EXPIRE names the wrong SA");
      (expire->hard ? hard : soft) = true;
    }
  }
  std::printf("  %d packets sent with soft limit 3, hard limit 6\n", sent);
  if (!soft) fail("no soft EXPIRE after 3 packets");
  if (!hard) fail("no hard EXPIRE after 6 packets");
  auto gone = a.query_sa(ip("10.99.0.2"), kSpi);
  if (gone) fail("the SA is still there after its hard limit");
  std::printf("  after the hard limit: %s\n", gone.error().c_str());
}

void run_acquire(const Namespaces& spaces) {
  XfrmSocket a = open_xfrm(spaces, spaces.a());
  XfrmEvents events = open_events(spaces, spaces.a());
  PolicySpec trap;
  trap.source = ts("10.100.1.1");
  trap.destination = ts("10.100.2.0/24[udp]");
  trap.mode = Mode::Tunnel;
  trap.template_source = ip("10.99.0.1");
  trap.template_destination = ip("10.99.0.2");
  trap.reqid = 17;
  check(a.add_policy(trap), "a");
  UniqueFd client = udp_bound(spaces, spaces.a(), "10.100.1.1", 0);
  sockaddr_in peer{};
  peer.sin_family = AF_INET;
  peer.sin_port = htons(7000);
  ::inet_pton(AF_INET, "10.100.2.1", &peer.sin_addr);
  ::sendto(client.get(), "x", 1, 0, reinterpret_cast<sockaddr*>(&peer), sizeof peer);
  const auto received = wait_events(events, 1, 3000);
  if (received.empty()) fail("no ACQUIRE within 3 s");
  const auto* acquire = std::get_if<AcquireEvent>(&received.front());
  if (!acquire) fail("the first event is not an ACQUIRE");
  std::printf("  ACQUIRE %s → %s outer %s → %s reqid %u\n", acquire->source.to_string().c_str(),
              acquire->destination.to_string().c_str(), acquire->outer_source.to_string().c_str(),
              acquire->outer_destination.to_string().c_str(), acquire->reqid);
  if (acquire->destination.to_string() != "10.100.2.1/32[udp/7000]" || acquire->source.start != ip("10.100.1.1") ||
      acquire->outer_destination != ip("10.99.0.2") || acquire->outer_source != ip("10.99.0.1") ||
      acquire->reqid != 17) {
    fail("ACQUIRE fields differ from the trap policy and the packet");
  }
}

void run_move(const Namespaces& spaces) {
  XfrmSocket a = open_xfrm(spaces, spaces.a()), b = open_xfrm(spaces, spaces.b());
  Options options;
  const Pair pair = install_pair(a, b, options, "10.100.1.1", "10.100.2.1");
  UniqueFd server = udp_bound(spaces, spaces.b(), "10.100.2.1", 7000);
  UniqueFd client = udp_bound(spaces, spaces.a(), "10.100.1.1", 0);
  if (echo(client.get(), server.get(), "10.100.2.1", 5) != 5) fail("no traffic before the move");

  // b gains 10.99.0.3; both SAs move there, then the policies' templates.
  if (shell(spaces.in_b("ip addr add 10.99.0.3/24 dev xst-b")) != 0) fail("cannot add 10.99.0.3");
  check(a.update_sa_addresses(ip("10.99.0.2"), pair.spi_ab, ip("10.99.0.1"), ip("10.99.0.3"), std::nullopt), "a out");
  check(b.update_sa_addresses(ip("10.99.0.2"), pair.spi_ab, ip("10.99.0.1"), ip("10.99.0.3"), std::nullopt), "b in");
  check(b.update_sa_addresses(ip("10.99.0.1"), pair.spi_ba, ip("10.99.0.3"), ip("10.99.0.1"), std::nullopt), "b out");
  check(a.update_sa_addresses(ip("10.99.0.1"), pair.spi_ba, ip("10.99.0.3"), ip("10.99.0.1"), std::nullopt), "a in");
  install_policies(a, Mode::Tunnel, "10.100.1.1", "10.100.2.1", "10.99.0.1", "10.99.0.3", 1, 2, "a", true);
  install_policies(b, Mode::Tunnel, "10.100.2.1", "10.100.1.1", "10.99.0.3", "10.99.0.1", 2, 1, "b", true);
  if (a.query_sa(ip("10.99.0.2"), pair.spi_ab)) fail("the SA is still at its old destination");

  constexpr int kEchoes = 10;
  const int returned = echo(client.get(), server.get(), "10.100.2.1", kEchoes);
  std::printf("  after the move: %d of %d UDP echoes came back\n", returned, kEchoes);
  if (returned != kEchoes) fail("traffic does not cross after the move");
  expect_counters(a, spaces, spaces.a(), "10.99.0.1", "10.99.0.3", pair.spi_ab, kEchoes, "a out (moved)");
  expect_counters(b, spaces, spaces.b(), "10.99.0.1", "10.99.0.3", pair.spi_ab, kEchoes, "b in (moved)");
  expect_counters(a, spaces, spaces.a(), "10.99.0.3", "10.99.0.1", pair.spi_ba, kEchoes, "a in (moved)");
}

Options parse(int argc, char** argv) {
  Options options;
  for (int index = 1; index < argc; ++index) {
    const std::string argument = argv[index];
    auto value = [&]() -> std::string {
      if (index + 1 >= argc) fail("missing value after " + argument);
      return argv[++index];
    };
    if (argument == "--case") {
      options.test_case = value();
    } else if (argument == "--cipher") {
      options.cipher = value();
    } else if (argument == "--mode") {
      const std::string mode = value();
      if (mode != "tunnel" && mode != "transport") fail("--mode is tunnel or transport");
      options.mode = mode == "tunnel" ? Mode::Tunnel : Mode::Transport;
    } else if (argument == "--esn") {
      options.esn = true;
    } else if (argument == "--encap") {
      options.encap = true;
    } else {
      fail("unknown argument " + argument);
    }
  }
  return options;
}

}  // namespace

// Clears both namespaces' XFRM state between cases.
void reset(const Namespaces& spaces) {
  shell("printf 'xfrm state flush\\nxfrm policy flush\\n' | ip -n " + spaces.a() + " -batch - && " +
        "printf 'xfrm state flush\\nxfrm policy flush\\n' | ip -n " + spaces.b() + " -batch -");
}

// Runs one case; a failure is printed and counted, a skip (no ESP) too.
int run_case(const Namespaces& spaces, const std::string& title, const std::function<void()>& body) {
  std::printf("=== %s\n", title.c_str());
  std::fflush(stdout);
  int status = 0;
  try {
    body();
    std::printf("PASS\n");
  } catch (const Failure& failure) {
    std::printf("%s: %s: %s\n", failure.exit_code == kSkipped ? "SKIPPED" : "FAILED", title.c_str(),
                failure.message.c_str());
    status = failure.exit_code;
  }
  std::fflush(stdout);
  reset(spaces);
  return status;
}

// Every cipher in tunnel mode and in transport mode with ESN, plus the
// remaining combinations of interest, lifetimes, ACQUIRE and the move (last:
// it adds an address).
int run_all(const Namespaces& spaces) {
  std::vector<std::pair<std::string, std::function<void()>>> cases;
  auto traffic = [&](const std::string& cipher, Mode mode, bool esn, bool encap) {
    Options options;
    options.cipher = cipher;
    options.mode = mode;
    options.esn = esn;
    options.encap = encap;
    const std::string title = "traffic " + cipher + (mode == Mode::Tunnel ? " tunnel" : " transport") +
                              (esn ? " esn" : "") + (encap ? " udp-encap" : "");
    cases.emplace_back(title, [&spaces, options] { run_traffic(spaces, options); });
  };
  for (const char* cipher : {"aes-gcm-128", "aes-gcm-256", "chacha20-poly1305", "aes-cbc-256-sha256"}) {
    traffic(cipher, Mode::Tunnel, false, false);
    traffic(cipher, Mode::Transport, true, false);
  }
  traffic("aes-gcm-128", Mode::Transport, false, false);
  traffic("aes-gcm-256", Mode::Tunnel, true, false);
  traffic("aes-gcm-128", Mode::Tunnel, false, true);
  cases.emplace_back("lifetime (soft and hard EXPIRE)", [&spaces] { run_lifetime(spaces); });
  cases.emplace_back("acquire", [&spaces] { run_acquire(spaces); });
  cases.emplace_back("move (update_sa_addresses)", [&spaces] { run_move(spaces); });

  int failed = 0, skipped = 0;
  for (const auto& [title, body] : cases) {
    const int status = run_case(spaces, title, body);
    if (status == kSkipped) ++skipped;
    else if (status != 0) ++failed;
  }
  std::printf("%zu cases: %zu passed, %d failed, %d skipped (kernel refused ESP or the cipher)\n", cases.size(),
              cases.size() - failed - skipped, failed, skipped);
  if (failed) return 1;
  return skipped ? kSkipped : 0;
}

int main(int argc, char** argv) {
  try {
    const Options options = parse(argc, argv);
    if (::geteuid() != 0) fail("xfrm-selftest needs root", kSkipped);
    Namespaces spaces;
    if (options.test_case == "all") return run_all(spaces);
    if (options.test_case == "traffic") {
      cipher_named(options.cipher);
      run_traffic(spaces, options);
    } else if (options.test_case == "lifetime") {
      run_lifetime(spaces);
    } else if (options.test_case == "acquire") {
      run_acquire(spaces);
    } else if (options.test_case == "move") {
      run_move(spaces);
    } else {
      fail("unknown case " + options.test_case);
    }
    std::printf("PASS\n");
    return 0;
  } catch (const Failure& failure) {
    std::fprintf(stderr, "%s: %s\n", failure.exit_code == kSkipped ? "SKIPPED" : "FAILED", failure.message.c_str());
    return failure.exit_code;
  }
}
