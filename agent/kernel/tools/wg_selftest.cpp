// Kernel WireGuard through KernelDevice on a real kernel (run as root in a
// VM): two network namespaces joined by veth, one WireGuard link in each,
// configured with fresh keys and PSKs, pinged across; counters, handshakes,
// PSK rotation with update_only, 2,000 peers with 3 allowed IPs each, a peer
// whose allowed IPs span several messages, removal, errors, and deletion.
// One line per case: "ok NAME" or "FAIL NAME: why". Exit 0 when all pass,
// 77 when the kernel lacks WireGuard, 1 otherwise.
//
//   wg-selftest                    every case
//   wg-selftest --configure-demo IF  configure an existing link with a fixed
//                                  set of peers (for comparison with `wg`)
//   wg-selftest --dump IF          print IF as `wg show IF dump` does, the
//                                  private key replaced by "(hidden)"
#include <fcntl.h>
#include <net/if.h>
#include <openssl/rand.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "agent/core/unique_fd.h"
#include "agent/kernel/wireguard.h"

namespace wg = tapsec::kernel::wireguard;
using tapsec::kernel::Result;

namespace {

int failures = 0;

void report(const std::string& name, const std::string& failure) {
  if (failure.empty()) {
    std::printf("ok %s\n", name.c_str());
  } else {
    std::printf("FAIL %s: %s\n", name.c_str(), failure.c_str());
    ++failures;
  }
  std::fflush(stdout);
}

wg::Key random_key() {
  wg::Key key{};
  if (RAND_bytes(key.data(), static_cast<int>(key.size())) != 1) std::abort();
  return key;
}

wg::AllowedIp allowed(const std::string& text) {
  auto parsed = wg::AllowedIp::parse(text);
  if (!parsed) {
    std::fprintf(stderr, "bad allowed IP in the test: %s\n", text.c_str());
    std::abort();
  }
  return *parsed;
}

wg::AllowedIp interface_address(const std::string& address, std::uint8_t prefix) {
  return wg::AllowedIp{*tapsec::ikev2::IpAddress::parse(address), prefix};
}

wg::Endpoint endpoint(const std::string& address, std::uint16_t port) {
  return wg::Endpoint{*tapsec::ikev2::IpAddress::parse(address), port};
}

int run(const std::string& command) {
  const int status = std::system(command.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// A named network namespace, removed with everything in it when it goes.
class Namespace {
 public:
  explicit Namespace(std::string name) : name_(std::move(name)) {
    run("ip netns del " + name_ + " 2>/dev/null");
    if (run("ip netns add " + name_) != 0 || run("ip -n " + name_ + " link set lo up") != 0) return;
    fd_ = tapsec::core::UniqueFd(::open(("/run/netns/" + name_).c_str(), O_RDONLY | O_CLOEXEC));
  }
  ~Namespace() { run("ip netns del " + name_ + " 2>/dev/null"); }
  bool ok() const { return fd_.get() >= 0; }
  const std::string& name() const { return name_; }
  int fd() const { return fd_.get(); }

 private:
  std::string name_;
  tapsec::core::UniqueFd fd_;
};

// Runs the enclosing scope in another network namespace; sockets opened
// there stay there.
class Inside {
 public:
  explicit Inside(const Namespace& target) : home_(::open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC)) {
    if (::setns(target.fd(), CLONE_NEWNET) != 0) std::perror("setns");
  }
  ~Inside() {
    if (::setns(home_.get(), CLONE_NEWNET) != 0) std::perror("setns back");
  }

 private:
  tapsec::core::UniqueFd home_;
};

std::string text_of(const wg::AllowedIp& ip) { return ip.to_string(); }

std::vector<std::string> sorted_ips(const std::vector<wg::AllowedIp>& ips) {
  std::vector<std::string> out;
  for (const auto& ip : ips) out.push_back(text_of(ip));
  std::sort(out.begin(), out.end());
  return out;
}

const wg::PeerState* find_peer(const wg::DeviceState& state, const wg::Key& key) {
  for (const auto& peer : state.peers) {
    if (peer.public_key == key) return &peer;
  }
  return nullptr;
}

// Empty when `state` holds exactly the peers of `config` (keys, PSKs,
// endpoints, keepalives, allowed IPs as sets).
std::string compare_peers(const wg::DeviceState& state, const std::vector<wg::PeerConfig>& expected) {
  if (state.peers.size() != expected.size()) {
    return "read " + std::to_string(state.peers.size()) + " peers, expected " + std::to_string(expected.size());
  }
  std::map<wg::Key, const wg::PeerState*> by_key;
  for (const auto& peer : state.peers) by_key[peer.public_key] = &peer;
  if (by_key.size() != state.peers.size()) return "the dump lists a peer twice";
  for (const auto& want : expected) {
    auto found = by_key.find(want.public_key);
    if (found == by_key.end()) return "peer " + wg::key_to_base64(want.public_key) + " missing";
    const wg::PeerState& got = *found->second;
    const std::string which = "peer " + wg::key_to_base64(want.public_key);
    const wg::Key want_psk = want.preshared_key.value_or(wg::Key{});
    if (got.preshared_key != want_psk) return which + ": PSK differs";
    if (got.has_preshared_key != (want_psk != wg::Key{})) return which + ": has_preshared_key wrong";
    if (got.endpoint != want.endpoint) {
      return which + ": endpoint " + (got.endpoint ? got.endpoint->to_string() : "(none)");
    }
    if (got.persistent_keepalive_seconds != want.persistent_keepalive_seconds.value_or(0)) {
      return which + ": keepalive " + std::to_string(got.persistent_keepalive_seconds);
    }
    if (sorted_ips(got.allowed_ips) != sorted_ips(want.allowed_ips)) {
      return which + ": " + std::to_string(got.allowed_ips.size()) + " allowed IPs read, " +
             std::to_string(want.allowed_ips.size()) + " configured, or they differ";
    }
  }
  return {};
}

std::string failure_of(const std::string& what, const Result<wg::Unit>& result) {
  return result ? std::string{} : what + ": " + result.error();
}

// 2,000 peers, each with two IPv4 host routes and one IPv6 /128, a PSK,
// an endpoint and (every third) a keepalive.
std::vector<wg::PeerConfig> many_peers(std::size_t count) {
  std::vector<wg::PeerConfig> peers(count);
  for (std::size_t i = 0; i < count; ++i) {
    auto& peer = peers[i];
    peer.public_key = wg::public_key_of(random_key());
    peer.preshared_key = random_key();
    const std::string high = std::to_string(i / 256), low = std::to_string(i % 256);
    peer.endpoint = endpoint("198.51." + std::to_string(100 + i / 256) + "." + low, static_cast<std::uint16_t>(20000 + i));
    if (i % 3 == 0) peer.persistent_keepalive_seconds = static_cast<std::uint16_t>(10 + i % 50);
    char v6[64];
    std::snprintf(v6, sizeof v6, "fd00:77::%zx/128", i + 1);
    peer.allowed_ips = {allowed("10.100." + high + "." + low + "/32"), allowed("10.101." + high + "." + low + "/32"),
                        allowed(v6)};
  }
  return peers;
}

std::string join(const std::vector<std::string>& fields, char separator) {
  std::string out;
  for (const auto& field : fields) {
    if (!out.empty()) out.push_back(separator);
    out.append(field);
  }
  return out;
}

std::string or_none(const std::string& text) { return text.empty() ? std::string("(none)") : text; }

std::string dump_line(const wg::DeviceState& state) {
  std::string fwmark("off");
  if (state.fwmark) {
    char hex[16];
    std::snprintf(hex, sizeof hex, "0x%x", state.fwmark);
    fwmark = hex;
  }
  std::string out = join({"(hidden)", state.has_private_key ? wg::key_to_base64(state.public_key) : "(none)",
                          std::to_string(state.listen_port), fwmark},
                         '\t');
  out.push_back('\n');
  for (const auto& peer : state.peers) {
    std::vector<std::string> ips;
    for (const auto& ip : peer.allowed_ips) ips.push_back(ip.to_string());
    const auto seconds = std::chrono::duration_cast<std::chrono::seconds>(peer.last_handshake.time_since_epoch());
    out += join({wg::key_to_base64(peer.public_key),
                 peer.has_preshared_key ? wg::key_to_base64(peer.preshared_key) : "(none)",
                 peer.endpoint ? peer.endpoint->to_string() : "(none)", or_none(join(ips, ',')),
                 std::to_string(seconds.count()), std::to_string(peer.rx_bytes), std::to_string(peer.tx_bytes),
                 peer.persistent_keepalive_seconds ? std::to_string(peer.persistent_keepalive_seconds) : "off"},
                '\t');
    out.push_back('\n');
  }
  return out;
}

int configure_demo(const std::string& ifname) {
  auto device = wg::KernelDevice::create(ifname);
  if (!device) {
    std::fprintf(stderr, "wg-selftest: %s\n", device.error().c_str());
    return 1;
  }
  wg::DeviceConfig config;
  config.private_key = random_key();
  config.listen_port = 51999;
  config.fwmark = 0x42;
  config.replace_peers = true;
  wg::PeerConfig first, second, third;
  first.public_key = wg::public_key_of(random_key());
  first.preshared_key = random_key();
  first.endpoint = endpoint("192.0.2.7", 51820);
  first.persistent_keepalive_seconds = 25;
  first.allowed_ips = {allowed("10.1.0.0/24"), allowed("fd00:1::/64"), allowed("10.9.9.9/32")};
  second.public_key = wg::public_key_of(random_key());
  second.endpoint = endpoint("2001:db8::1", 4500);
  second.allowed_ips = {allowed("10.2.0.1/32")};
  third.public_key = wg::public_key_of(random_key());
  config.peers = {first, second, third};
  if (auto status = device.value()->configure(config); !status) {
    std::fprintf(stderr, "wg-selftest: %s\n", status.error().c_str());
    return 1;
  }
  return 0;
}

int dump(const std::string& ifname) {
  auto device = wg::KernelDevice::create(ifname);
  if (!device) {
    std::fprintf(stderr, "wg-selftest: %s\n", device.error().c_str());
    return 1;
  }
  auto state = device.value()->read();
  if (!state) {
    std::fprintf(stderr, "wg-selftest: %s\n", state.error().c_str());
    return 1;
  }
  std::fputs(dump_line(state.value()).c_str(), stdout);
  return 0;
}

struct Host {
  std::string ifname;
  wg::Key private_key = random_key();
  wg::Key public_key = wg::public_key_of(private_key);
  std::uint16_t port = 0;
  std::string underlay, inner;
  std::unique_ptr<wg::KernelDevice> device;
};

wg::DeviceConfig point_to_point(const Host& self, const Host& other, const wg::Key& psk) {
  wg::DeviceConfig config;
  config.private_key = self.private_key;
  config.listen_port = self.port;
  config.replace_peers = true;
  wg::PeerConfig peer;
  peer.public_key = other.public_key;
  peer.preshared_key = psk;
  peer.endpoint = endpoint(other.underlay, other.port);
  peer.allowed_ips = {allowed(other.inner + "/32")};
  config.peers = {peer};
  return config;
}

int run_all() {
  const std::string suffix = std::to_string(::getpid());
  Namespace alpha("tapsec-wg-a-" + suffix), beta("tapsec-wg-b-" + suffix);
  if (!alpha.ok() || !beta.ok()) {
    std::fprintf(stderr, "wg-selftest: cannot create network namespaces (needs root and iproute2)\n");
    return 1;
  }
  if (run("ip link add va netns " + alpha.name() + " type veth peer name vb netns " + beta.name()) != 0 ||
      run("ip -n " + alpha.name() + " addr add 192.168.241.1/24 dev va") != 0 ||
      run("ip -n " + beta.name() + " addr add 192.168.241.2/24 dev vb") != 0 ||
      run("ip -n " + alpha.name() + " link set va up") != 0 || run("ip -n " + beta.name() + " link set vb up") != 0) {
    std::fprintf(stderr, "wg-selftest: cannot join the namespaces with veth\n");
    return 1;
  }

  Host a, b;
  a.ifname = "wgsa", b.ifname = "wgsb";
  a.port = 51820, b.port = 51821;
  a.underlay = "192.168.241.1", b.underlay = "192.168.241.2";
  a.inner = "10.241.0.1", b.inner = "10.241.0.2";
  const wg::Key psk = random_key();

  {
    std::string why;
    {
      Inside in(alpha);
      auto device = wg::KernelDevice::create(a.ifname);
      if (device) a.device = std::move(device.value()); else why = "alpha: " + device.error();
    }
    if (why.empty()) {
      Inside in(beta);
      auto device = wg::KernelDevice::create(b.ifname);
      if (device) b.device = std::move(device.value()); else why = "beta: " + device.error();
    }
    report("create-links", why);
    if (!why.empty()) return 1;
  }

  {
    std::string why = failure_of("alpha", a.device->configure(point_to_point(a, b, psk)));
    if (why.empty()) why = failure_of("beta", b.device->configure(point_to_point(b, a, psk)));
    if (why.empty()) {
      auto state = a.device->read();
      if (!state) {
        why = state.error();
      } else if (!state->has_private_key || state->public_key != a.public_key) {
        why = "public key read back differs from public_key_of(private key)";
      } else if (state->listen_port != a.port || state->name != a.ifname || state->ifindex <= 0) {
        why = "listen port, name or ifindex wrong";
      } else {
        why = compare_peers(state.value(), point_to_point(a, b, psk).peers);
      }
    }
    report("configure-and-read", why);
  }

  {
    std::string why;
    {
      Inside in(alpha);
      why = failure_of("alpha address", wg::add_address(a.ifname, interface_address(a.inner, 24)));
      if (why.empty()) why = failure_of("alpha up", wg::set_link_up(a.ifname, true));
    }
    if (why.empty()) {
      Inside in(beta);
      why = failure_of("beta address", wg::add_address(b.ifname, interface_address(b.inner, 24)));
      if (why.empty()) why = failure_of("beta up", wg::set_link_up(b.ifname, true));
      if (why.empty()) why = failure_of("beta v6 address", wg::add_address(b.ifname, interface_address("fd00:241::2", 64)));
    }
    report("address-and-up", why);
  }

  {
    // The system's ping, or busybox's where iputils is not installed.
    const int status = run("ip netns exec " + alpha.name() +
                           " sh -c 'p=ping; command -v ping >/dev/null || p=\"busybox ping\"; exec $p -q -c 3 -W 3 " +
                           b.inner + "' >/dev/null");
    report("ping-across", status == 0 ? "" : "ping " + b.inner + " from alpha failed (exit " + std::to_string(status) + ")");
  }

  {
    std::string why;
    const auto now = std::chrono::system_clock::now();
    for (Host* host : {&a, &b}) {
      auto state = host->device->read();
      if (!state) { why = state.error(); break; }
      if (state->peers.size() != 1) { why = host->ifname + ": expected one peer"; break; }
      const auto& peer = state->peers.front();
      if (peer.last_handshake == std::chrono::system_clock::time_point{}) { why = host->ifname + ": no handshake time"; break; }
      if (peer.last_handshake > now + std::chrono::seconds(5) || peer.last_handshake < now - std::chrono::minutes(5)) {
        why = host->ifname + ": handshake time far from now";
        break;
      }
      if (peer.rx_bytes == 0 || peer.tx_bytes == 0) {
        why = host->ifname + ": counters rx=" + std::to_string(peer.rx_bytes) + " tx=" + std::to_string(peer.tx_bytes);
        break;
      }
    }
    report("handshake-and-counters", why);
  }

  {
    const wg::Key new_psk = random_key();
    wg::DeviceConfig change;
    wg::PeerConfig peer;
    peer.public_key = b.public_key;
    peer.update_only = true;
    peer.preshared_key = new_psk;
    change.peers = {peer};
    std::string why = failure_of("configure", a.device->configure(change));
    if (why.empty()) {
      auto state = a.device->read();
      if (!state) why = state.error();
      else if (state->peers.size() != 1 || state->peers[0].preshared_key != new_psk) why = "new PSK not read back";
      else if (sorted_ips(state->peers[0].allowed_ips) != std::vector<std::string>{b.inner + "/32"}) why = "allowed IPs changed";
      else if (!state->peers[0].endpoint || state->peers[0].endpoint->to_string() != b.underlay + ":" + std::to_string(b.port))
        why = "endpoint changed";
    }
    report("psk-rotation-update-only", why);
  }

  {
    wg::DeviceConfig change;
    wg::PeerConfig stranger;
    stranger.public_key = wg::public_key_of(random_key());
    stranger.update_only = true;
    stranger.preshared_key = random_key();
    stranger.allowed_ips = {allowed("10.242.0.0/16")};
    change.peers = {stranger};
    std::string why = failure_of("configure", a.device->configure(change));
    if (why.empty()) {
      auto state = a.device->read();
      if (!state) why = state.error();
      else if (find_peer(state.value(), stranger.public_key)) why = "update_only created an unknown peer";
      else if (state->peers.size() != 1) why = "peer count changed";
    }
    report("update-only-creates-nothing", why);
  }

  {
    std::string why;
    Inside in(alpha);
    auto big = wg::KernelDevice::create("wgsbig");
    if (!big) {
      report("many-peers", big.error());
    } else {
      const auto peers = many_peers(2000);
      wg::DeviceConfig config;
      config.private_key = random_key();
      config.replace_peers = true;
      config.peers = peers;
      why = failure_of("configure 2000 peers", big.value()->configure(config));
      if (why.empty()) {
        auto state = big.value()->read();
        why = state ? compare_peers(state.value(), peers) : state.error();
      }
      report("many-peers", why);

      // One peer whose allowed IPs fill several messages each way.
      wg::PeerConfig wide;
      wide.public_key = wg::public_key_of(random_key());
      wide.preshared_key = random_key();
      for (int i = 0; i < 6000; ++i) {
        wide.allowed_ips.push_back(allowed("10.150." + std::to_string(i / 256) + "." + std::to_string(i % 256) + "/32"));
      }
      wg::DeviceConfig add_wide;
      add_wide.peers = {wide};
      why = failure_of("configure", big.value()->configure(add_wide));
      auto expected = peers;
      expected.push_back(wide);
      if (why.empty()) {
        auto state = big.value()->read();
        why = state ? compare_peers(state.value(), expected) : state.error();
      }
      report("peer-split-across-messages", why);

      // Replace the wide peer's allowed IPs with a few.
      wg::PeerConfig narrowed;
      narrowed.public_key = wide.public_key;
      narrowed.replace_allowed_ips = true;
      narrowed.allowed_ips = {allowed("10.151.0.0/16")};
      add_wide.peers = {narrowed};
      why = failure_of("configure", big.value()->configure(add_wide));
      expected.back().allowed_ips = narrowed.allowed_ips;
      if (why.empty()) {
        auto state = big.value()->read();
        why = state ? compare_peers(state.value(), expected) : state.error();
      }
      report("replace-allowed-ips", why);

      wg::DeviceConfig removal;
      std::vector<wg::PeerConfig> remaining;
      for (std::size_t i = 0; i < expected.size(); ++i) {
        if (i % 2 == 0) {
          wg::PeerConfig gone;
          gone.public_key = expected[i].public_key;
          gone.remove = true;
          removal.peers.push_back(gone);
        } else {
          remaining.push_back(expected[i]);
        }
      }
      why = failure_of("configure", big.value()->configure(removal));
      if (why.empty()) {
        auto state = big.value()->read();
        why = state ? compare_peers(state.value(), remaining) : state.error();
      }
      report("remove-peers", why);

      wg::DeviceConfig replace;
      replace.replace_peers = true;
      replace.peers = {peers[1]};
      why = failure_of("configure", big.value()->configure(replace));
      if (why.empty()) {
        auto state = big.value()->read();
        why = state ? compare_peers(state.value(), {peers[1]}) : state.error();
      }
      report("replace-peers", why);
    }
  }

  {
    std::string why;
    Inside in(alpha);
    if (auto status = wg::delete_link("wgsnothere"); status || status.error_number() != ENODEV) {
      why = "delete_link of a missing link: " + (status ? std::string("succeeded") : status.error());
    }
    if (auto status = wg::add_address("wgsnothere", interface_address("10.0.0.1", 24));
        why.empty() && (status || status.error_number() != ENODEV)) {
      why = "add_address to a missing link: " + (status ? std::string("succeeded") : status.error());
    }
    if (auto veth = wg::KernelDevice::create("va"); why.empty() && (veth || veth.error_number() != EEXIST)) {
      why = "adopting a veth: " + (veth ? std::string("succeeded") : veth.error());
    }
    if (why.empty()) {
      auto doomed = wg::KernelDevice::create("wgsdoomed");
      if (!doomed) {
        why = doomed.error();
      } else if (auto status = wg::delete_link("wgsdoomed"); !status) {
        why = status.error();
      } else if (auto configured = doomed.value()->configure(wg::DeviceConfig{}); configured ||
                                                                                configured.error_number() != ENODEV) {
        why = "configure of a deleted link: " + (configured ? std::string("succeeded") : configured.error());
      } else if (auto read = doomed.value()->read(); read || read.error_number() != ENODEV) {
        why = "read of a deleted link: " + (read ? std::string("succeeded") : read.error());
      }
    }
    report("errors", why);
  }

  {
    std::string why;
    Inside in(alpha);
    if (run("ip link add wgsadopt type wireguard") != 0) {
      why = "ip link add failed";
    } else {
      {
        auto adopted = wg::KernelDevice::create("wgsadopt");
        if (!adopted) why = adopted.error();
      }
      if (why.empty() && ::if_nametoindex("wgsadopt") == 0) why = "an adopted link was deleted with its device";
      if (auto status = wg::delete_link("wgsadopt"); why.empty() && !status) why = status.error();
    }
    report("adopt-existing-link", why);
  }

  {
    std::string why;
    a.device.reset();
    b.device.reset();
    {
      Inside in(alpha);
      if (::if_nametoindex(a.ifname.c_str()) != 0 || ::if_nametoindex("wgsbig") != 0) why = "alpha links remain";
    }
    {
      Inside in(beta);
      if (::if_nametoindex(b.ifname.c_str()) != 0) why = "beta link remains";
    }
    report("delete-links", why);
  }
  return failures == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (::geteuid() != 0) {
    std::fprintf(stderr, "wg-selftest: SKIPPED: needs root (run it in the VM)\n");
    return 77;
  }
  if (!wg::KernelDevice::kernel_supports_wireguard()) {
    std::fprintf(stderr,
                 "\n*** wg-selftest: SKIPPED: this kernel lacks WireGuard (no \"wireguard\" generic netlink "
                 "family; modprobe wireguard) ***\n\n");
    return 77;
  }
  const std::vector<std::string> args(argv + 1, argv + argc);
  if (args.size() == 2 && args[0] == "--configure-demo") return configure_demo(args[1]);
  if (args.size() == 2 && args[0] == "--dump") return dump(args[1]);
  if (!args.empty()) {
    std::fprintf(stderr, "usage: wg-selftest [--configure-demo IF | --dump IF]\n");
    return 2;
  }
  const int status = run_all();
  std::printf("%s\n", status == 0 ? "all WireGuard cases passed" : "some WireGuard cases FAILED");
  return status;
}
