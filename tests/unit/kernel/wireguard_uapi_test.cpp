// The UAPI text protocol (exact set requests, strict parsing of get
// replies), then real wireguard-go devices: two of them in two network
// namespaces joined by a veth pair, configured only through
// UserspaceDevice, with real traffic through the tunnel.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <net/if.h>
#include <netinet/in.h>
#include <openssl/rand.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <tuple>

#include "agent/core/unique_fd.h"
#include "agent/kernel/wireguard.h"

namespace tapsec::kernel::wireguard {
namespace {

using core::UniqueFd;
using namespace std::chrono_literals;

Key key_of(std::uint8_t fill) {
  Key key;
  key.fill(fill);
  return key;
}

Key random_key() {
  Key key{};
  EXPECT_EQ(RAND_bytes(key.data(), static_cast<int>(key.size())), 1);
  return key;
}

std::string hex(const Key& key) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string text;
  for (std::uint8_t byte : key) {
    text.push_back(kDigits[byte >> 4]);
    text.push_back(kDigits[byte & 0x0f]);
  }
  return text;
}

IpAddress address(const char* text) {
  auto parsed = IpAddress::parse(text);
  EXPECT_TRUE(parsed) << text;
  return parsed.value_or(IpAddress{});
}

AllowedIp allowed(const char* text) {
  auto parsed = AllowedIp::parse(text);
  EXPECT_TRUE(parsed) << text;
  return parsed.value_or(AllowedIp{});
}

// ---- format_set -----------------------------------------------------------

TEST(UapiFormatSet, EmptyConfigIsJustTheOperation) {
  EXPECT_EQ(uapi::format_set(DeviceConfig{}), "set=1\n\n");
}

TEST(UapiFormatSet, DeviceFields) {
  DeviceConfig config;
  config.private_key = key_of(0xa1);
  config.listen_port = 51820;
  config.fwmark = 0x1234;
  config.replace_peers = true;
  EXPECT_EQ(uapi::format_set(config), "set=1\nprivate_key=" + hex(key_of(0xa1)) +
                                          "\nlisten_port=51820\nfwmark=4660\nreplace_peers=true\n\n");
}

TEST(UapiFormatSet, ZeroValuesAreSentNotOmitted) {
  DeviceConfig config;
  config.listen_port = 0;  // random port
  config.fwmark = 0;       // clears the mark
  PeerConfig peer;
  peer.public_key = key_of(0x01);
  peer.preshared_key = Key{};  // removes the PSK
  peer.persistent_keepalive_seconds = 0;
  config.peers.push_back(peer);
  EXPECT_EQ(uapi::format_set(config), "set=1\nlisten_port=0\nfwmark=0\npublic_key=" + hex(key_of(0x01)) +
                                          "\npreshared_key=" + std::string(64, '0') +
                                          "\npersistent_keepalive_interval=0\n\n");
}

TEST(UapiFormatSet, EveryPeerFieldInProtocolOrder) {
  DeviceConfig config;
  PeerConfig peer;
  peer.public_key = key_of(0xb2);
  peer.update_only = true;
  peer.preshared_key = key_of(0xc3);
  peer.endpoint = Endpoint{address("192.0.2.7"), 51821};
  peer.persistent_keepalive_seconds = 25;
  peer.replace_allowed_ips = true;
  peer.allowed_ips = {allowed("10.2.0.0/24"), allowed("2001:db8::/64"), allowed("0.0.0.0/0")};
  config.peers.push_back(peer);
  EXPECT_EQ(uapi::format_set(config), "set=1\npublic_key=" + hex(key_of(0xb2)) +
                                          "\nupdate_only=true\npreshared_key=" + hex(key_of(0xc3)) +
                                          "\nendpoint=192.0.2.7:51821\npersistent_keepalive_interval=25"
                                          "\nreplace_allowed_ips=true\nallowed_ip=10.2.0.0/24"
                                          "\nallowed_ip=2001:db8::/64\nallowed_ip=0.0.0.0/0\n\n");
}

TEST(UapiFormatSet, Ipv6EndpointIsBracketed) {
  DeviceConfig config;
  PeerConfig peer;
  peer.public_key = key_of(0x02);
  peer.endpoint = Endpoint{address("2001:db8::1"), 443};
  config.peers.push_back(peer);
  EXPECT_EQ(uapi::format_set(config), "set=1\npublic_key=" + hex(key_of(0x02)) + "\nendpoint=[2001:db8::1]:443\n\n");
}

TEST(UapiFormatSet, RemovedPeerCarriesNothingElse) {
  DeviceConfig config;
  PeerConfig removed;
  removed.public_key = key_of(0x03);
  removed.remove = true;
  removed.preshared_key = key_of(0x04);  // ignored: the peer is going
  removed.allowed_ips = {allowed("10.0.0.0/8")};
  PeerConfig kept;
  kept.public_key = key_of(0x05);
  kept.allowed_ips = {allowed("10.9.0.1/32")};
  config.peers = {removed, kept};
  EXPECT_EQ(uapi::format_set(config), "set=1\npublic_key=" + hex(key_of(0x03)) + "\nremove=true\npublic_key=" +
                                          hex(key_of(0x05)) + "\nallowed_ip=10.9.0.1/32\n\n");
}

// ---- parse_get ------------------------------------------------------------

const Key kPrivate = key_of(0x11);
const Key kPeer1 = key_of(0x22), kPeer2 = key_of(0x33), kPsk = key_of(0x44);

// Shaped like wireguard-go 0.0.20220316's reply.
std::string real_looking_reply() {
  return "private_key=" + hex(kPrivate) +
         "\nlisten_port=51820\nfwmark=7\n"
         "public_key=" + hex(kPeer1) + "\npreshared_key=" + hex(kPsk) +
         "\nprotocol_version=1\nendpoint=192.0.2.1:51821\n"
         "last_handshake_time_sec=1700000000\nlast_handshake_time_nsec=123456789\n"
         "tx_bytes=1184\nrx_bytes=2280\npersistent_keepalive_interval=25\n"
         "allowed_ip=10.2.0.0/24\nallowed_ip=fd00::/64\n"
         "public_key=" + hex(kPeer2) + "\npreshared_key=" + std::string(64, '0') +
         "\nprotocol_version=1\nendpoint=[2001:db8::9]:4500\n"
         "last_handshake_time_sec=0\nlast_handshake_time_nsec=0\ntx_bytes=0\nrx_bytes=0\n"
         "persistent_keepalive_interval=0\nerrno=0\n\n";
}

TEST(UapiParseGet, RealLookingReply) {
  auto state = uapi::parse_get(real_looking_reply());
  ASSERT_TRUE(state) << state.error();
  EXPECT_TRUE(state->has_private_key);
  EXPECT_EQ(state->public_key, public_key_of(kPrivate));
  EXPECT_EQ(state->listen_port, 51820);
  EXPECT_EQ(state->fwmark, 7u);
  ASSERT_EQ(state->peers.size(), 2u);

  const PeerState& first = state->peers[0];
  EXPECT_EQ(first.public_key, kPeer1);
  EXPECT_TRUE(first.has_preshared_key);
  EXPECT_EQ(first.preshared_key, kPsk);
  ASSERT_TRUE(first.endpoint);
  EXPECT_EQ(first.endpoint->to_string(), "192.0.2.1:51821");
  EXPECT_EQ(first.last_handshake.time_since_epoch(), 1700000000s + 123456789ns);
  EXPECT_EQ(first.tx_bytes, 1184u);
  EXPECT_EQ(first.rx_bytes, 2280u);
  EXPECT_EQ(first.persistent_keepalive_seconds, 25);
  ASSERT_EQ(first.allowed_ips.size(), 2u);
  EXPECT_EQ(first.allowed_ips[0].to_string(), "10.2.0.0/24");
  EXPECT_EQ(first.allowed_ips[1].to_string(), "fd00::/64");

  const PeerState& second = state->peers[1];
  EXPECT_EQ(second.public_key, kPeer2);
  EXPECT_FALSE(second.has_preshared_key);
  ASSERT_TRUE(second.endpoint);
  EXPECT_EQ(second.endpoint->to_string(), "[2001:db8::9]:4500");
  EXPECT_EQ(second.last_handshake, std::chrono::system_clock::time_point{});
  EXPECT_TRUE(second.allowed_ips.empty());
}

TEST(UapiParseGet, FreshDeviceHasNoKeyAndNoPeers) {
  auto state = uapi::parse_get("listen_port=0\nerrno=0\n\n");
  ASSERT_TRUE(state) << state.error();
  EXPECT_FALSE(state->has_private_key);
  EXPECT_EQ(state->public_key, Key{});
  EXPECT_TRUE(state->peers.empty());
  EXPECT_TRUE(uapi::parse_get("errno=0\n\n"));
}

TEST(UapiParseGet, PeerWithoutEndpointOrCounters) {
  auto state = uapi::parse_get("public_key=" + hex(kPeer1) + "\nerrno=0\n\n");
  ASSERT_TRUE(state) << state.error();
  ASSERT_EQ(state->peers.size(), 1u);
  EXPECT_FALSE(state->peers[0].endpoint);
  EXPECT_FALSE(state->peers[0].has_preshared_key);
}

TEST(UapiParseGet, ZoneOfLinkLocalEndpointIsDropped) {
  auto state = uapi::parse_get("public_key=" + hex(kPeer1) + "\nendpoint=[fe80::1%eth0]:51820\nerrno=0\n\n");
  ASSERT_TRUE(state) << state.error();
  EXPECT_EQ(state->peers.at(0).endpoint->to_string(), "[fe80::1]:51820");
}

TEST(UapiParseGet, UppercaseHexAndUnknownKeysAreAccepted) {
  std::string upper = hex(kPeer1);
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  auto state = uapi::parse_get("some_future_device_key=x\npublic_key=" + upper + "\nfuture_peer_key=2\nerrno=0\n\n");
  ASSERT_TRUE(state) << state.error();
  EXPECT_EQ(state->peers.at(0).public_key, kPeer1);
}

TEST(UapiParseGet, ErrnoBecomesTheFailure) {
  for (const char* reply : {"errno=-22\n\n", "errno=22\n\n"}) {
    auto state = uapi::parse_get(reply);
    ASSERT_FALSE(state) << reply;
    EXPECT_EQ(state.error_number(), EINVAL);
    EXPECT_NE(state.error().find("EINVAL"), std::string::npos) << state.error();
  }
}

struct Malformed {
  const char* why;
  std::string reply;
  const char* expected;  // a piece of the message
};

std::vector<Malformed> malformed_replies() {
  const std::string peer = "public_key=" + hex(kPeer1) + "\n";
  const std::string end = "errno=0\n\n";
  return {
      {"empty", "", "blank line"},
      {"no terminator", "errno=0\n", "blank line"},
      {"no newline at all", "errno=0", "blank line"},
      {"only a blank line", "\n\n", "line 1 is blank"},
      {"no errno", "listen_port=1\n\n", "no errno"},
      {"blank line inside", "listen_port=1\n\nerrno=0\n\n", "line 2 is blank"},
      {"data after errno", "errno=0\nlisten_port=1\n\n", "follows the errno"},
      {"data after the blank line", "errno=0\n\nlisten_port=1\n\n", "follows the errno"},
      {"line without =", "listen_port\n" + end, "not key=value"},
      {"empty key", "=5\n" + end, "not key=value"},
      {"bad key characters", "Listen Port=5\n" + end, "invalid key"},
      {"NUL byte", std::string("listen_port=1\0\n", 15) + end, "control"},
      {"carriage return", "listen_port=1\r\n" + end, "control"},
      {"non-ASCII", "listen_port=1\xc3\xa9\n" + end, "control or non-ASCII"},
      {"errno not a number", "errno=zero\n\n", "invalid errno"},
      {"errno huge", "errno=99999999999\n\n", "invalid errno"},
      {"errno double sign", "errno=--1\n\n", "invalid errno"},
      {"short private key", "private_key=" + std::string(62, 'a') + "\n" + end, "private_key"},
      {"long private key", "private_key=" + std::string(66, 'a') + "\n" + end, "private_key"},
      {"non-hex private key", "private_key=" + std::string(63, 'a') + "g\n" + end, "private_key"},
      {"base64 public key", "public_key=" + key_to_base64(kPeer1) + "\n" + end, "public_key"},
      {"repeated private key", "private_key=" + hex(kPrivate) + "\nprivate_key=" + hex(kPrivate) + "\n" + end,
       "repeats private_key"},
      {"port too big", "listen_port=65536\n" + end, "listen_port"},
      {"negative port", "listen_port=-1\n" + end, "listen_port"},
      {"port with plus", "listen_port=+1\n" + end, "listen_port"},
      {"port with space", "listen_port= 1\n" + end, "listen_port"},
      {"port empty", "listen_port=\n" + end, "listen_port"},
      {"repeated port", "listen_port=1\nlisten_port=2\n" + end, "repeats listen_port"},
      {"fwmark too big", "fwmark=4294967296\n" + end, "fwmark"},
      {"fwmark hex", "fwmark=0x10\n" + end, "fwmark"},
      {"repeated peer", peer + peer + end, "repeats a peer"},
      {"short psk", peer + "preshared_key=00\n" + end, "preshared_key"},
      {"repeated psk", peer + "preshared_key=" + hex(kPsk) + "\npreshared_key=" + hex(kPsk) + "\n" + end,
       "repeats preshared_key"},
      {"endpoint without port", peer + "endpoint=192.0.2.1\n" + end, "endpoint"},
      {"endpoint port too big", peer + "endpoint=192.0.2.1:70000\n" + end, "endpoint"},
      {"endpoint empty port", peer + "endpoint=192.0.2.1:\n" + end, "endpoint"},
      {"unbracketed IPv6 endpoint", peer + "endpoint=2001:db8::1:51820\n" + end, "endpoint"},
      {"bracketed IPv4 endpoint", peer + "endpoint=[192.0.2.1]:51820\n" + end, "endpoint"},
      {"unclosed bracket", peer + "endpoint=[2001:db8::1:51820\n" + end, "endpoint"},
      {"empty zone", peer + "endpoint=[fe80::1%]:51820\n" + end, "endpoint"},
      {"host name endpoint", peer + "endpoint=example.org:51820\n" + end, "endpoint"},
      {"repeated endpoint", peer + "endpoint=192.0.2.1:1\nendpoint=192.0.2.1:2\n" + end, "repeats endpoint"},
      {"nanoseconds overflow", peer + "last_handshake_time_nsec=1000000000\n" + end, "a second or more"},
      {"seconds beyond the clock", peer + "last_handshake_time_sec=18446744073709551615\n" + end, "out of range"},
      {"seconds not a number", peer + "last_handshake_time_sec=soon\n" + end, "last_handshake_time_sec"},
      {"counter overflow", peer + "rx_bytes=18446744073709551616\n" + end, "rx_bytes"},
      {"negative counter", peer + "tx_bytes=-5\n" + end, "tx_bytes"},
      {"repeated counter", peer + "tx_bytes=1\ntx_bytes=1\n" + end, "repeats tx_bytes"},
      {"keepalive too big", peer + "persistent_keepalive_interval=65536\n" + end, "persistent_keepalive_interval"},
      {"allowed ip host bits", peer + "allowed_ip=10.2.0.1/24\n" + end, "allowed_ip"},
      {"allowed ip prefix too long", peer + "allowed_ip=10.2.0.0/33\n" + end, "allowed_ip"},
      {"allowed ip garbage", peer + "allowed_ip=ten/8\n" + end, "allowed_ip"},
      {"protocol version 2", peer + "protocol_version=2\n" + end, "protocol_version"},
      {"peer key before any peer", "allowed_ip=10.0.0.0/8\n" + end, "allowed_ip before any public_key"},
      {"psk before any peer", "preshared_key=" + hex(kPsk) + "\n" + end, "before any public_key"},
  };
}

TEST(UapiParseGet, MalformedRepliesAreRefusedClearly) {
  const auto cases = malformed_replies();
  ASSERT_GE(cases.size(), 30u);
  for (const Malformed& bad : cases) {
    auto state = uapi::parse_get(bad.reply);
    ASSERT_FALSE(state) << bad.why;
    EXPECT_EQ(state.error_number(), EPROTO) << bad.why;
    EXPECT_NE(state.error().find("UAPI get reply"), std::string::npos) << bad.why << ": " << state.error();
    EXPECT_NE(state.error().find(bad.expected), std::string::npos) << bad.why << ": " << state.error();
  }
}

TEST(UapiParseGet, EveryTruncationOfARealReplyIsRefused) {
  const std::string reply = real_looking_reply();
  for (std::size_t length = 0; length < reply.size(); ++length) {
    auto state = uapi::parse_get(std::string_view(reply).substr(0, length));
    // A cut just after a complete line plus one more '\n' would be a
    // shorter valid reply only if it ended in errno: never, before the end.
    EXPECT_FALSE(state) << "length " << length;
  }
}

// ---- processes that are not wireguard-go -----------------------------------

class ScratchDir {
 public:
  ScratchDir() {
    char pattern[] = "/tmp/wg-uapi-test.XXXXXX";
    path_ = ::mkdtemp(pattern) ? pattern : "";
  }
  ~ScratchDir() { std::system(("rm -rf '" + path_ + "'").c_str()); }
  const std::string& path() const { return path_; }
  std::string script(const std::string& name, const std::string& body) const {
    const std::string file = path_ + "/" + name;
    std::ofstream(file) << "#!/bin/sh\n" << body << "\n";
    ::chmod(file.c_str(), 0755);
    return file;
  }

 private:
  std::string path_;
};

TEST(UserspaceDeviceStart, MissingProgramSaysWhatToDo) {
  UserspaceOptions options;
  options.program = "wireguard-go-that-does-not-exist";
  auto device = UserspaceDevice::create("wgmissing0", options);
  ASSERT_FALSE(device);
  EXPECT_EQ(device.error_number(), ENOENT);
  EXPECT_NE(device.error().find("not found: install wireguard-go or use kernel WireGuard"), std::string::npos)
      << device.error();
}

TEST(UserspaceDeviceStart, EarlyExitReportsStatusAndStderr) {
  ScratchDir dir;
  UserspaceOptions options;
  options.program = dir.script("fails", "echo 'cannot open /dev/net/tun: no such device' >&2\nexit 3");
  options.socket_dir = dir.path();
  auto device = UserspaceDevice::create("wgfails0", options);
  ASSERT_FALSE(device);
  EXPECT_NE(device.error().find("exited with status 3"), std::string::npos) << device.error();
  EXPECT_NE(device.error().find("cannot open /dev/net/tun: no such device"), std::string::npos) << device.error();
}

TEST(UserspaceDeviceStart, NoSocketInTimeStopsTheProgram) {
  ScratchDir dir;
  const std::string pid_file = dir.path() + "/pid";
  UserspaceOptions options;
  options.program = dir.script("hangs", "echo $$ > " + pid_file + "\nexec sleep 60");
  options.socket_dir = dir.path();
  options.startup = 300ms;
  const auto start = std::chrono::steady_clock::now();
  auto device = UserspaceDevice::create("wghangs0", options);
  ASSERT_FALSE(device);
  EXPECT_EQ(device.error_number(), ETIMEDOUT);
  EXPECT_NE(device.error().find("did not open"), std::string::npos) << device.error();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 3s);
  pid_t pid = 0;
  std::ifstream(pid_file) >> pid;
  ASSERT_GT(pid, 0);
  EXPECT_EQ(::kill(pid, 0), -1) << "the program still runs";
}

// Gone, or a zombie nobody reaped yet.
bool process_gone(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return true;
  const auto after_name = line.rfind(')');
  return after_name != std::string::npos && after_name + 2 < line.size() && line[after_name + 2] == 'Z';
}

TEST(UserspaceDeviceStart, TheProgramDiesWithTheAgent) {
  ScratchDir dir;
  const std::string pid_file = dir.path() + "/pid";
  UserspaceOptions options;
  options.program = dir.script("outlives", "echo $$ > " + pid_file + ".tmp\nmv " + pid_file + ".tmp " + pid_file +
                                               "\nexec sleep 60");
  options.socket_dir = dir.path();
  options.startup = 30s;
  // A stand-in agent: starts the program, then is killed while it waits.
  const pid_t agent = ::fork();
  ASSERT_GE(agent, 0);
  if (agent == 0) {
    auto device = UserspaceDevice::create("wgorphan0", options);
    ::_exit(device ? 0 : 1);
  }
  pid_t program = 0;
  for (int tries = 0; tries < 500 && program <= 0; ++tries) {
    std::this_thread::sleep_for(10ms);
    std::ifstream(pid_file) >> program;
  }
  ::kill(agent, SIGKILL);
  int status = 0;
  ::waitpid(agent, &status, 0);
  ASSERT_GT(program, 0) << "the program never started";
  bool gone = false;
  for (int tries = 0; tries < 300 && !gone; ++tries) {
    gone = process_gone(program);
    if (!gone) std::this_thread::sleep_for(10ms);
  }
  if (!gone) ::kill(program, SIGKILL);
  EXPECT_TRUE(gone) << "the program outlived the agent that started it";
}

TEST(UserspaceDeviceStart, ChildInheritsNoDescriptors) {
  ScratchDir dir;
  const std::string report = dir.path() + "/fds";
  // Not close-on-exec on purpose, and numbered high: the shell running the
  // script may itself use low descriptors for the script file.
  UniqueFd opened(::open("/dev/null", O_RDONLY));
  ASSERT_TRUE(opened);
  UniqueFd marker(::fcntl(opened.get(), F_DUPFD, 100));
  ASSERT_TRUE(marker);
  const std::string marker_path = "/proc/$$/fd/" + std::to_string(marker.get());
  UserspaceOptions options;
  options.program = dir.script("lists", "if [ -e " + marker_path + " ]; then echo leaked; else echo closed; fi > " + report +
                                        "\nreadlink /proc/$$/fd/0 /proc/$$/fd/1 /proc/$$/fd/2 | cat >> " + report + "\nexit 1");
  options.socket_dir = dir.path();
  ASSERT_FALSE(UserspaceDevice::create("wglists0", options));
  std::ifstream in(report);
  std::string inherited, stdin_target, stdout_target, stderr_target;
  in >> inherited >> stdin_target >> stdout_target >> stderr_target;
  EXPECT_EQ(inherited, "closed") << "descriptor " << marker.get() << " leaked into the child";
  EXPECT_EQ(stdin_target, "/dev/null");
  EXPECT_EQ(stdout_target.rfind("pipe:", 0), 0u) << stdout_target;
  EXPECT_EQ(stderr_target, stdout_target);
}

TEST(UserspaceDeviceStart, BadNamesAndAbsentSocketsAreRefused) {
  EXPECT_FALSE(UserspaceDevice::create(""));
  EXPECT_FALSE(UserspaceDevice::create("a-name-far-too-long"));
  EXPECT_FALSE(UserspaceDevice::create("../etc"));
  auto attached = UserspaceDevice::attach("wgnone0", "/tmp/no-such-dir/wgnone0.sock");
  ASSERT_FALSE(attached);
  EXPECT_EQ(attached.error_number(), ENOENT);
  EXPECT_NE(attached.error().find("is wireguard-go running?"), std::string::npos) << attached.error();
}

// ---- real wireguard-go devices ---------------------------------------------

int run(const std::string& command) {
  const int status = std::system((command + " >/dev/null 2>&1").c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

bool program_exists(const char* name) { return run(std::string("command -v ") + name) == 0; }

// Moves the calling thread into a named network namespace for its life;
// processes started meanwhile are born there.
class InNamespace {
 public:
  explicit InNamespace(const std::string& name)
      : original_(::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC)) {
    UniqueFd target(::open(("/var/run/netns/" + name).c_str(), O_RDONLY | O_CLOEXEC));
    entered_ = original_ && target && ::setns(target.get(), CLONE_NEWNET) == 0;
    EXPECT_TRUE(entered_) << "cannot enter namespace " << name;
  }
  ~InNamespace() {
    if (entered_) {
      EXPECT_EQ(::setns(original_.get(), CLONE_NEWNET), 0);
    }
  }

 private:
  UniqueFd original_;
  bool entered_ = false;
};

UniqueFd udp_socket_in(const std::string& netns) {
  InNamespace inside(netns);
  return UniqueFd(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
}

sockaddr_in ipv4(const char* text, std::uint16_t port) {
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(port);
  ::inet_pton(AF_INET, text, &address.sin_addr);
  return address;
}

class TwoWireguardGoPeers : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "SKIPPED LOUDLY: real wireguard-go devices need root";
    if (!program_exists("wireguard-go"))
      GTEST_SKIP() << "SKIPPED LOUDLY: wireguard-go is not installed (apt-get install wireguard-go)";
    if (::access("/dev/net/tun", R_OK | W_OK) != 0)
      GTEST_SKIP() << "SKIPPED LOUDLY: /dev/net/tun is missing: wireguard-go cannot make a TUN device";
    if (!program_exists("ip")) GTEST_SKIP() << "SKIPPED LOUDLY: iproute2's ip is missing";
    const std::string tag = std::to_string(::getpid() % 100000);
    ns_a_ = "wgu-a-" + tag;
    ns_b_ = "wgu-b-" + tag;
    wg_a_ = "wgua" + tag;
    wg_b_ = "wgub" + tag;
    ASSERT_EQ(run("ip netns add " + ns_a_), 0);
    ASSERT_EQ(run("ip netns add " + ns_b_), 0);
    namespaces_made_ = true;
    ASSERT_EQ(run("ip -n " + ns_a_ + " link add veth-a type veth peer name veth-b netns " + ns_b_), 0);
    for (const auto& [ns, veth, address] : {std::tuple{ns_a_, "veth-a", "192.168.77.1/24"},
                                            std::tuple{ns_b_, "veth-b", "192.168.77.2/24"}}) {
      ASSERT_EQ(run("ip -n " + ns + " link set lo up"), 0);
      ASSERT_EQ(run("ip -n " + ns + " addr add " + address + " dev " + veth), 0);
      ASSERT_EQ(run("ip -n " + ns + " link set " + veth + " up"), 0);
    }
    private_a_ = random_key();
    private_b_ = random_key();
    psk_ = random_key();
  }

  void TearDown() override {
    a_.reset();
    b_.reset();
    if (namespaces_made_) {
      run("ip netns del " + ns_a_);
      run("ip netns del " + ns_b_);
    }
  }

  std::unique_ptr<UserspaceDevice> start(const std::string& ns, const std::string& name,
                                         const std::string& tunnel_address) {
    std::unique_ptr<UserspaceDevice> device;
    {
      InNamespace inside(ns);
      const auto begin = std::chrono::steady_clock::now();
      auto created = UserspaceDevice::create(name);
      const auto took = std::chrono::steady_clock::now() - begin;
      EXPECT_TRUE(created) << created.error();
      if (!created) return nullptr;
      std::fprintf(stderr, "wireguard-go for %s answered on its socket after %lld ms\n", name.c_str(),
                   static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(took).count()));
      device = std::move(created.value());
    }
    EXPECT_GT(device->pid(), 0);
    EXPECT_EQ(device->offload(), Offload::Userspace);
    EXPECT_EQ(run("ip -n " + ns + " addr add " + tunnel_address + " dev " + name), 0);
    EXPECT_EQ(run("ip -n " + ns + " link set " + name + " up"), 0);
    return device;
  }

  // Sends datagrams from one namespace to a tunnel address in the other
  // until one arrives (the first waits for the handshake).
  bool datagram_crosses(const std::string& from_ns, const std::string& to_ns, const char* to_address,
                        std::chrono::milliseconds limit = 8000ms) {
    static std::uint16_t next_port = 40000;
    const std::uint16_t port = next_port++;
    UniqueFd receiver = udp_socket_in(to_ns);
    UniqueFd sender = udp_socket_in(from_ns);
    const sockaddr_in target = ipv4(to_address, port);
    if (::bind(receiver.get(), reinterpret_cast<const sockaddr*>(&target), sizeof target) != 0) {
      ADD_FAILURE() << "bind " << to_address << ": " << std::strerror(errno);
      return false;
    }
    const std::string payload = "through the tunnel " + std::to_string(port);
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < deadline) {
      ::sendto(sender.get(), payload.data(), payload.size(), 0, reinterpret_cast<const sockaddr*>(&target),
               sizeof target);
      pollfd wait{receiver.get(), POLLIN, 0};
      if (::poll(&wait, 1, 250) == 1) {
        char buffer[256];
        const ssize_t got = ::recv(receiver.get(), buffer, sizeof buffer, 0);
        return got > 0 && std::string(buffer, static_cast<std::size_t>(got)) == payload;
      }
    }
    return false;
  }

  DeviceState read_state(UserspaceDevice& device, const std::string& ns) {
    InNamespace inside(ns);
    auto state = device.read();
    EXPECT_TRUE(state) << state.error();
    return state ? state.value() : DeviceState{};
  }

  std::string ns_a_, ns_b_, wg_a_, wg_b_;
  bool namespaces_made_ = false;
  Key private_a_{}, private_b_{}, psk_{};
  std::unique_ptr<UserspaceDevice> a_, b_;
};

TEST_F(TwoWireguardGoPeers, TrafficRekeyingAndRemoval) {
  a_ = start(ns_a_, wg_a_, "10.77.0.1/24");
  b_ = start(ns_b_, wg_b_, "10.77.0.2/24");
  ASSERT_TRUE(a_ && b_);

  // A knows where B is; B learns A's endpoint from the handshake.
  DeviceConfig config_a;
  config_a.private_key = private_a_;
  config_a.listen_port = 51001;
  PeerConfig b_at_a;
  b_at_a.public_key = public_key_of(private_b_);
  b_at_a.preshared_key = psk_;
  b_at_a.endpoint = Endpoint{address("192.168.77.2"), 51002};
  b_at_a.allowed_ips = {allowed("10.77.0.2/32")};
  config_a.peers.push_back(b_at_a);
  auto configured = a_->configure(config_a);
  ASSERT_TRUE(configured) << configured.error();

  DeviceConfig config_b;
  config_b.private_key = private_b_;
  config_b.listen_port = 51002;
  PeerConfig a_at_b;
  a_at_b.public_key = public_key_of(private_a_);
  a_at_b.preshared_key = psk_;
  a_at_b.replace_allowed_ips = true;
  a_at_b.allowed_ips = {allowed("10.77.0.1/32")};
  config_b.peers.push_back(a_at_b);
  configured = b_->configure(config_b);
  ASSERT_TRUE(configured) << configured.error();

  ASSERT_TRUE(datagram_crosses(ns_a_, ns_b_, "10.77.0.2")) << "A to B through the tunnel";
  ASSERT_TRUE(datagram_crosses(ns_b_, ns_a_, "10.77.0.1")) << "B to A through the tunnel";

  const DeviceState state_a = read_state(*a_, ns_a_);
  const DeviceState state_b = read_state(*b_, ns_b_);
  EXPECT_EQ(state_a.name, wg_a_);
  EXPECT_GT(state_a.ifindex, 0);
  EXPECT_TRUE(state_a.has_private_key);
  EXPECT_EQ(state_a.public_key, public_key_of(private_a_));
  EXPECT_EQ(state_a.listen_port, 51001);
  EXPECT_EQ(state_b.public_key, public_key_of(private_b_));
  ASSERT_EQ(state_a.peers.size(), 1u);
  ASSERT_EQ(state_b.peers.size(), 1u);
  for (const PeerState& peer : {state_a.peers[0], state_b.peers[0]}) {
    EXPECT_NE(peer.last_handshake, std::chrono::system_clock::time_point{});
    EXPECT_LT(std::chrono::system_clock::now() - peer.last_handshake, 60s);
    EXPECT_GT(peer.rx_bytes, 0u);
    EXPECT_GT(peer.tx_bytes, 0u);
    EXPECT_TRUE(peer.has_preshared_key);
    EXPECT_EQ(peer.preshared_key, psk_);
  }
  EXPECT_EQ(state_a.peers[0].public_key, public_key_of(private_b_));
  ASSERT_TRUE(state_b.peers[0].endpoint) << "B did not learn A's endpoint";
  EXPECT_EQ(state_b.peers[0].endpoint->to_string(), "192.168.77.1:51001");
  ASSERT_EQ(state_b.peers[0].allowed_ips.size(), 1u);
  EXPECT_EQ(state_b.peers[0].allowed_ips[0].to_string(), "10.77.0.1/32");

  // A PSK rotation on both sides: the running session carries on.
  const Key new_psk = random_key();
  for (auto [device, peer_key] : {std::pair{a_.get(), public_key_of(private_b_)},
                                  std::pair{b_.get(), public_key_of(private_a_)}}) {
    DeviceConfig rotation;
    PeerConfig peer;
    peer.public_key = peer_key;
    peer.update_only = true;
    peer.preshared_key = new_psk;
    rotation.peers.push_back(peer);
    configured = device->configure(rotation);
    ASSERT_TRUE(configured) << configured.error();
  }
  EXPECT_TRUE(datagram_crosses(ns_a_, ns_b_, "10.77.0.2")) << "traffic stopped after the PSK rotation";
  EXPECT_EQ(read_state(*a_, ns_a_).peers.at(0).preshared_key, new_psk);
  EXPECT_EQ(read_state(*b_, ns_b_).peers.at(0).preshared_key, new_psk);

  // update_only for a peer A does not have creates nothing.
  DeviceConfig stranger;
  PeerConfig unknown;
  unknown.public_key = public_key_of(random_key());
  unknown.update_only = true;
  unknown.preshared_key = new_psk;
  unknown.allowed_ips = {allowed("10.99.0.0/16")};
  stranger.peers.push_back(unknown);
  configured = a_->configure(stranger);
  ASSERT_TRUE(configured) << configured.error();
  EXPECT_EQ(read_state(*a_, ns_a_).peers.size(), 1u) << "update_only created a peer";

  // B forgets A, then knows it again as a new peer: the fresh handshake
  // only succeeds if A really uses the rotated PSK.
  DeviceConfig removal;
  PeerConfig gone;
  gone.public_key = public_key_of(private_a_);
  gone.remove = true;
  removal.peers.push_back(gone);
  configured = b_->configure(removal);
  ASSERT_TRUE(configured) << configured.error();
  EXPECT_TRUE(read_state(*b_, ns_b_).peers.empty()) << "the removed peer is still there";
  EXPECT_FALSE(datagram_crosses(ns_b_, ns_a_, "10.77.0.1", 1000ms)) << "traffic to a removed peer went through";

  DeviceConfig again;
  PeerConfig returning = a_at_b;
  returning.preshared_key = new_psk;
  returning.endpoint = Endpoint{address("192.168.77.1"), 51001};
  again.peers.push_back(returning);
  configured = b_->configure(again);
  ASSERT_TRUE(configured) << configured.error();
  EXPECT_TRUE(datagram_crosses(ns_b_, ns_a_, "10.77.0.1", 15000ms)) << "no handshake with the rotated PSK";
  EXPECT_NE(read_state(*b_, ns_b_).peers.at(0).last_handshake, std::chrono::system_clock::time_point{});
}

TEST_F(TwoWireguardGoPeers, RejectedConfigurationCarriesTheErrno) {
  a_ = start(ns_a_, wg_a_, "10.77.0.1/24");
  ASSERT_TRUE(a_);
  DeviceConfig config;
  PeerConfig peer;
  peer.public_key = random_key();
  peer.endpoint = Endpoint{};  // no address: wireguard-go must refuse
  config.peers.push_back(peer);
  auto configured = a_->configure(config);
  ASSERT_FALSE(configured);
  EXPECT_EQ(configured.error_number(), EINVAL);
  EXPECT_NE(configured.error().find("EINVAL"), std::string::npos) << configured.error();
  // The device still answers afterwards.
  auto state = a_->read();
  EXPECT_TRUE(state) << state.error();
}

TEST_F(TwoWireguardGoPeers, SecondStartForTheSameNameIsRefused) {
  a_ = start(ns_a_, wg_a_, "10.77.0.1/24");
  ASSERT_TRUE(a_);
  InNamespace inside(ns_a_);
  auto twin = UserspaceDevice::create(wg_a_);
  ASSERT_FALSE(twin);
  EXPECT_EQ(twin.error_number(), EEXIST);
}

TEST_F(TwoWireguardGoPeers, AttachConfiguresSomeoneElsesDevice) {
  a_ = start(ns_a_, wg_a_, "10.77.0.1/24");
  ASSERT_TRUE(a_);
  auto attached = UserspaceDevice::attach(wg_a_, "/var/run/wireguard/" + wg_a_ + ".sock");
  ASSERT_TRUE(attached) << attached.error();
  EXPECT_EQ(attached.value()->pid(), 0);
  DeviceConfig config;
  config.fwmark = 42;
  auto configured = attached.value()->configure(config);
  ASSERT_TRUE(configured) << configured.error();
  attached.value().reset();  // detaching stops nothing
  EXPECT_EQ(::kill(a_->pid(), 0), 0);
  EXPECT_EQ(read_state(*a_, ns_a_).fwmark, 42u);
}

TEST_F(TwoWireguardGoPeers, DestroyingStopsTheProgramAndTheLinkGoes) {
  a_ = start(ns_a_, wg_a_, "10.77.0.1/24");
  ASSERT_TRUE(a_);
  const pid_t pid = a_->pid();
  const std::string socket_path = "/var/run/wireguard/" + wg_a_ + ".sock";
  ASSERT_EQ(run("ip -n " + ns_a_ + " link show " + wg_a_), 0);
  const auto begin = std::chrono::steady_clock::now();
  a_.reset();
  EXPECT_LT(std::chrono::steady_clock::now() - begin, 2s) << "wireguard-go ignored SIGTERM";
  EXPECT_EQ(::kill(pid, 0), -1);
  EXPECT_EQ(errno, ESRCH) << "the process was not reaped";
  EXPECT_NE(run("ip -n " + ns_a_ + " link show " + wg_a_), 0) << "the link outlived the device";
  EXPECT_NE(::access(socket_path.c_str(), F_OK), 0) << "the socket outlived the device";
}

}  // namespace
}  // namespace tapsec::kernel::wireguard
