// WireGuard devices, configured the same way whether the kernel carries the
// packets (the "wireguard" generic netlink family, links made over
// rtnetlink) or a userspace wireguard-go does (its UAPI socket). The agent
// talks to one Device interface and does not care which.
#pragma once

#include <sys/types.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "agent/engines/ikev2/types.h"
#include "agent/kernel/result.h"

namespace tapsec::kernel::wireguard {

using ikev2::IpAddress;

struct Unit {};  // Result<Unit>: success without a value

using Key = std::array<std::uint8_t, 32>;  // private, public or preshared

// Curve25519 public key of a private key (clamping as WireGuard does).
Key public_key_of(const Key& private_key);
// Standard base64 of 32 bytes (44 characters, one '=') and back; nullopt
// for anything that is not exactly that.
std::string key_to_base64(const Key& key);
std::optional<Key> key_from_base64(std::string_view text);

struct AllowedIp {
  IpAddress address;
  std::uint8_t prefix_length = 0;
  std::string to_string() const;  // "10.2.0.0/24"
  static std::optional<AllowedIp> parse(std::string_view text);  // host bits must be zero
  bool operator==(const AllowedIp&) const = default;
};

struct Endpoint {
  IpAddress address;
  std::uint16_t port = 0;
  std::string to_string() const;  // "192.0.2.1:51820", "[2001:db8::1]:51820"
  bool operator==(const Endpoint&) const = default;
};

// One peer in a configuration change. Unset optionals leave the kernel's
// value alone; `update_only` never creates a peer (WGPEER_F_UPDATE_ONLY), so
// a PSK rotation racing a peer's removal cannot bring it back.
struct PeerConfig {
  Key public_key{};
  bool remove = false;
  bool update_only = false;
  std::optional<Key> preshared_key;  // all zero = no PSK
  std::optional<Endpoint> endpoint;
  std::optional<std::uint16_t> persistent_keepalive_seconds;  // 0 = off
  bool replace_allowed_ips = false;
  std::vector<AllowedIp> allowed_ips;
};

struct DeviceConfig {
  std::optional<Key> private_key;
  std::optional<std::uint16_t> listen_port;  // 0 = random
  std::optional<std::uint32_t> fwmark;       // 0 = none
  bool replace_peers = false;
  std::vector<PeerConfig> peers;
};

struct PeerState {
  Key public_key{};
  bool has_preshared_key = false;
  Key preshared_key{};  // read back only where the agent needs to compare
  std::optional<Endpoint> endpoint;
  // Zero when no handshake has completed yet: "up" only after a real one.
  std::chrono::system_clock::time_point last_handshake{};
  std::uint64_t rx_bytes = 0, tx_bytes = 0;
  std::uint16_t persistent_keepalive_seconds = 0;
  std::vector<AllowedIp> allowed_ips;
};

struct DeviceState {
  std::string name;
  int ifindex = 0;
  bool has_private_key = false;
  Key public_key{};
  std::uint16_t listen_port = 0;
  std::uint32_t fwmark = 0;
  std::vector<PeerState> peers;
};

enum class Offload { Kernel, Userspace };

// One WireGuard interface. configure() applies a whole change however many
// netlink messages (or UAPI lines) it takes; read() returns everything,
// however many messages the dump spans.
class Device {
 public:
  virtual ~Device() = default;
  virtual const std::string& name() const = 0;
  virtual Offload offload() const = 0;
  virtual Result<Unit> configure(const DeviceConfig& config) = 0;
  virtual Result<DeviceState> read() = 0;
};

// Kernel WireGuard. create() makes the link (rtnetlink, kind "wireguard")
// unless one of that name exists, which it adopts; it fails with
// EOPNOTSUPP and "kernel lacks WireGuard: load module wireguard or allow
// fallback" where the kernel has no such link kind. The link is deleted
// when the Device is destroyed only if create() made it.
class KernelDevice : public Device {
 public:
  static Result<std::unique_ptr<KernelDevice>> create(const std::string& name);
  static bool kernel_supports_wireguard();  // the genl family resolves or the link kind exists
  ~KernelDevice() override;
  const std::string& name() const override { return name_; }
  Offload offload() const override { return Offload::Kernel; }
  Result<Unit> configure(const DeviceConfig& config) override;
  Result<DeviceState> read() override;

  struct Impl;

 private:
  explicit KernelDevice(std::string name, std::unique_ptr<Impl> impl);
  std::string name_;
  std::unique_ptr<Impl> impl_;
};

// wireguard-go in the foreground, configured over
// <socket_dir>/<name>.sock. create() starts the program, waits (up to
// `startup`) for its socket, and stops it (SIGTERM, then SIGKILL) when the
// Device is destroyed; the TUN link goes with the process.
struct UserspaceOptions {
  std::string program = "wireguard-go";
  std::string socket_dir = "/var/run/wireguard";
  std::chrono::milliseconds startup{5000};
};
class UserspaceDevice : public Device {
 public:
  static Result<std::unique_ptr<UserspaceDevice>> create(const std::string& name, const UserspaceOptions& options = {});
  // Configure a wireguard-go (or any UAPI speaker) that someone else runs.
  static Result<std::unique_ptr<UserspaceDevice>> attach(const std::string& name, const std::string& socket_path);
  ~UserspaceDevice() override;
  const std::string& name() const override { return name_; }
  Offload offload() const override { return Offload::Userspace; }
  Result<Unit> configure(const DeviceConfig& config) override;
  Result<DeviceState> read() override;
  pid_t pid() const { return pid_; }  // 0 when attached

 private:
  UserspaceDevice(std::string name, std::string socket_path, pid_t pid);
  std::string name_, socket_path_;
  pid_t pid_ = 0;
};

// Link plumbing shared by both kinds (rtnetlink): addresses and state.
Result<Unit> add_address(const std::string& ifname, const AllowedIp& address);
Result<Unit> set_link_up(const std::string& ifname, bool up);
Result<Unit> delete_link(const std::string& ifname);

namespace uapi {
// The UAPI text protocol (wireguard.com/xplatform), exposed for tests and
// the fuzzer: a set request for `config`, and the parse of a get reply.
std::string format_set(const DeviceConfig& config);
Result<DeviceState> parse_get(std::string_view reply);
}  // namespace uapi

}  // namespace tapsec::kernel::wireguard
