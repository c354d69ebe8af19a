// Kernel WireGuard: the "wireguard" generic netlink family for the device's
// configuration, rtnetlink (libnl-route) for the link and its addresses.
#include <arpa/inet.h>
#include <linux/genetlink.h>
#include <linux/if_link.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/wireguard.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netlink/addr.h>
#include <netlink/attr.h>
#include <netlink/errno.h>
#include <netlink/genl/ctrl.h>
#include <netlink/genl/genl.h>
#include <netlink/msg.h>
#include <netlink/netlink.h>
#include <netlink/route/addr.h>
#include <netlink/route/link.h>
#include <netlink/socket.h>
#include <openssl/crypto.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <functional>
#include <random>

#include "agent/kernel/netlink_ack.h"
#include "agent/kernel/wireguard.h"
#include "agent/kernel/wireguard_netlink_codec.h"

namespace tapsec::kernel::wireguard {
namespace detail {
namespace {

constexpr const char* kLacksWireGuard = "kernel lacks WireGuard: load module wireguard or allow fallback";
// A peers attribute longer than this would overflow its 16-bit length.
constexpr std::size_t kLargestSetMessage = 60 * 1024;
constexpr std::size_t kGenlHeaderBytes = NLMSG_HDRLEN + GENL_HDRLEN;

bool valid_family(int family) { return family == AF_INET || family == AF_INET6; }

// Builds the WG_CMD_SET_DEVICE series for one configuration.
class SetMessageBuilder {
 public:
  SetMessageBuilder(int family_id, std::string_view ifname, std::size_t limit)
      : family_id_(family_id), ifname_(ifname), limit_(limit) {}

  Result<std::vector<NlMsgPtr>> build(const DeviceConfig& config) {
    using R = Result<std::vector<NlMsgPtr>>;
    if (!begin_message()) return no_room();
    nl_msg* message = current_.get();
    const std::uint32_t device_flags = config.replace_peers ? WGDEVICE_F_REPLACE_PEERS : 0;
    if ((device_flags && nla_put_u32(message, WGDEVICE_A_FLAGS, device_flags) < 0) ||
        (config.private_key &&
         nla_put(message, WGDEVICE_A_PRIVATE_KEY, WG_KEY_LEN, config.private_key->data()) < 0) ||
        (config.listen_port && nla_put_u16(message, WGDEVICE_A_LISTEN_PORT, *config.listen_port) < 0) ||
        (config.fwmark && nla_put_u32(message, WGDEVICE_A_FWMARK, *config.fwmark) < 0)) {
      return no_room();
    }
    for (std::size_t index = 0; index < config.peers.size(); ++index) {
      if (auto status = add_peer(config.peers[index], index); !status) {
        return R::failure(status.error(), status.error_number());
      }
    }
    if (auto status = finish_message(); !status) return R::failure(status.error(), status.error_number());
    return R::success(std::move(messages_));
  }

 private:
  static Result<std::vector<NlMsgPtr>> no_room() {
    return Result<std::vector<NlMsgPtr>>::failure(
        "cannot build a WireGuard netlink request (out of memory or message limit too small)", ENOMEM);
  }

  bool begin_message() {
    current_.reset(nlmsg_alloc_size(limit_));
    peers_nest_ = nullptr;
    if (!current_) return false;
    if (!genlmsg_put(current_.get(), NL_AUTO_PORT, NL_AUTO_SEQ, family_id_, 0, NLM_F_REQUEST | NLM_F_ACK,
                     WG_CMD_SET_DEVICE, WG_GENL_VERSION)) {
      return false;
    }
    return nla_put_string(current_.get(), WGDEVICE_A_IFNAME, ifname_.c_str()) == 0;
  }

  Result<Unit> finish_message() {
    if (peers_nest_ && nla_nest_end(current_.get(), peers_nest_) < 0) {
      return Result<Unit>::failure("WireGuard netlink request: peers attribute too long", EMSGSIZE);
    }
    peers_nest_ = nullptr;
    messages_.push_back(std::move(current_));
    return Result<Unit>::success({});
  }

  Result<Unit> next_message() {
    if (auto status = finish_message(); !status) return status;
    if (!begin_message()) return Result<Unit>::failure("cannot allocate a WireGuard netlink request", ENOMEM);
    return Result<Unit>::success({});
  }

  // The peer's nest with its own attributes (or, for a continuation, only
  // what identifies it). nullptr when the message has no room left.
  nlattr* put_peer_head(const PeerConfig& peer, bool continuation) {
    nl_msg* message = current_.get();
    if (!peers_nest_ && !(peers_nest_ = nla_nest_start(message, WGDEVICE_A_PEERS))) return nullptr;
    nlattr* peer_nest = nla_nest_start(message, 0);
    if (!peer_nest) return nullptr;
    std::uint32_t flags = 0;
    if (peer.update_only) flags |= WGPEER_F_UPDATE_ONLY;
    if (!continuation) {
      if (peer.remove) flags |= WGPEER_F_REMOVE_ME;
      if (peer.replace_allowed_ips) flags |= WGPEER_F_REPLACE_ALLOWEDIPS;
    }
    bool fits = nla_put(message, WGPEER_A_PUBLIC_KEY, WG_KEY_LEN, peer.public_key.data()) == 0 &&
                (!flags || nla_put_u32(message, WGPEER_A_FLAGS, flags) == 0);
    if (fits && !continuation && !peer.remove) {
      if (peer.preshared_key) {
        fits = fits && nla_put(message, WGPEER_A_PRESHARED_KEY, WG_KEY_LEN, peer.preshared_key->data()) == 0;
      }
      if (peer.endpoint) {
        const IpAddress& address = peer.endpoint->address;
        if (address.family == AF_INET) {
          sockaddr_in socket_address{};
          socket_address.sin_family = AF_INET;
          socket_address.sin_port = htons(peer.endpoint->port);
          std::memcpy(&socket_address.sin_addr, address.bytes.data(), 4);
          fits = fits && nla_put(message, WGPEER_A_ENDPOINT, sizeof socket_address, &socket_address) == 0;
        } else {
          sockaddr_in6 socket_address{};
          socket_address.sin6_family = AF_INET6;
          socket_address.sin6_port = htons(peer.endpoint->port);
          std::memcpy(&socket_address.sin6_addr, address.bytes.data(), 16);
          fits = fits && nla_put(message, WGPEER_A_ENDPOINT, sizeof socket_address, &socket_address) == 0;
        }
      }
      if (peer.persistent_keepalive_seconds) {
        fits = fits &&
               nla_put_u16(message, WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL, *peer.persistent_keepalive_seconds) == 0;
      }
    }
    if (!fits) {
      nla_nest_cancel(message, peer_nest);
      return nullptr;
    }
    return peer_nest;
  }

  static bool put_allowed_ip(nl_msg* message, const AllowedIp& allowed) {
    nlattr* nest = nla_nest_start(message, 0);
    if (!nest) return false;
    if (nla_put_u8(message, WGALLOWEDIP_A_CIDR_MASK, allowed.prefix_length) < 0 ||
        nla_put_u16(message, WGALLOWEDIP_A_FAMILY, static_cast<std::uint16_t>(allowed.address.family)) < 0 ||
        nla_put(message, WGALLOWEDIP_A_IPADDR, static_cast<int>(allowed.address.size()), allowed.address.bytes.data()) <
            0) {
      nla_nest_cancel(message, nest);
      return false;
    }
    nla_nest_end(message, nest);
    return true;
  }

  Result<Unit> check_peer(const PeerConfig& peer, std::size_t index) const {
    const std::string which = "peer " + std::to_string(index) + " (" + key_to_base64(peer.public_key) + ")";
    if (peer.endpoint && !valid_family(peer.endpoint->address.family)) {
      return Result<Unit>::failure(which + ": endpoint has no IPv4 or IPv6 address", EINVAL);
    }
    for (const AllowedIp& allowed : peer.allowed_ips) {
      if (!valid_family(allowed.address.family) || allowed.prefix_length > allowed.address.size() * 8) {
        return Result<Unit>::failure(which + ": invalid allowed IP " + allowed.to_string(), EINVAL);
      }
    }
    return Result<Unit>::success({});
  }

  Result<Unit> add_peer(const PeerConfig& peer, std::size_t index) {
    if (auto status = check_peer(peer, index); !status) return status;
    const auto too_small = [&] {
      return Result<Unit>::failure("message limit of " + std::to_string(limit_) + " bytes cannot hold peer " +
                                       std::to_string(index),
                                   EMSGSIZE);
    };
    bool continuation = false;
    std::size_t next_ip = 0;
    const std::size_t ip_count = peer.remove ? 0 : peer.allowed_ips.size();
    for (;;) {
      nl_msg* message = current_.get();
      const bool fresh_message = !peers_nest_;
      nlattr* peer_nest = put_peer_head(peer, continuation);
      if (!peer_nest) {
        if (fresh_message) return too_small();
        if (auto status = next_message(); !status) return status;
        continue;
      }
      if (next_ip == ip_count) {
        nla_nest_end(message, peer_nest);
        return Result<Unit>::success({});
      }
      const std::size_t first_ip = next_ip;
      if (nlattr* ips_nest = nla_nest_start(message, WGPEER_A_ALLOWEDIPS)) {
        while (next_ip < ip_count && put_allowed_ip(message, peer.allowed_ips[next_ip])) ++next_ip;
        nla_nest_end(message, ips_nest);  // an empty nest is dropped
      }
      if (next_ip == first_ip && continuation) {
        // Nothing but the public key fitted: drop the useless continuation.
        nla_nest_cancel(message, peer_nest);
        if (fresh_message) return too_small();
      } else {
        nla_nest_end(message, peer_nest);
        continuation = true;
      }
      if (next_ip == ip_count) return Result<Unit>::success({});
      if (auto status = next_message(); !status) return status;
    }
  }

  int family_id_;
  std::string ifname_;
  std::size_t limit_;
  std::vector<NlMsgPtr> messages_;
  NlMsgPtr current_;
  nlattr* peers_nest_ = nullptr;
};

template <typename T>
bool attribute_is(const nlattr* attribute, T& out) {
  if (!attribute || nla_len(attribute) < static_cast<int>(sizeof(T))) return false;
  std::memcpy(&out, nla_data(attribute), sizeof(T));
  return true;
}

bool read_key(const nlattr* attribute, Key& key) {
  if (!attribute || nla_len(attribute) != WG_KEY_LEN) return false;
  std::memcpy(key.data(), nla_data(attribute), WG_KEY_LEN);
  return true;
}

std::optional<Endpoint> read_endpoint(const nlattr* attribute) {
  sa_family_t family = 0;
  if (!attribute_is(attribute, family)) return std::nullopt;
  Endpoint endpoint;
  if (family == AF_INET && nla_len(attribute) >= static_cast<int>(sizeof(sockaddr_in))) {
    sockaddr_in socket_address;
    std::memcpy(&socket_address, nla_data(attribute), sizeof socket_address);
    endpoint.address.family = AF_INET;
    std::memcpy(endpoint.address.bytes.data(), &socket_address.sin_addr, 4);
    endpoint.port = ntohs(socket_address.sin_port);
    return endpoint;
  }
  if (family == AF_INET6 && nla_len(attribute) >= static_cast<int>(sizeof(sockaddr_in6))) {
    sockaddr_in6 socket_address;
    std::memcpy(&socket_address, nla_data(attribute), sizeof socket_address);
    endpoint.address.family = AF_INET6;
    std::memcpy(endpoint.address.bytes.data(), &socket_address.sin6_addr, 16);
    endpoint.port = ntohs(socket_address.sin6_port);
    return endpoint;
  }
  return std::nullopt;
}

Result<Unit> read_allowed_ips(nlattr* list, std::vector<AllowedIp>& out) {
  nlattr* entry;
  int remaining;
  nla_for_each_nested(entry, list, remaining) {
    nlattr* fields[WGALLOWEDIP_A_MAX + 1] = {};
    if (nla_parse_nested(fields, WGALLOWEDIP_A_MAX, entry, nullptr) < 0) {
      return Result<Unit>::failure("WireGuard dump: malformed allowed IP", EPROTO);
    }
    std::uint16_t family = 0;
    std::uint8_t prefix = 0;
    const nlattr* address = fields[WGALLOWEDIP_A_IPADDR];
    if (!attribute_is(fields[WGALLOWEDIP_A_FAMILY], family) || !attribute_is(fields[WGALLOWEDIP_A_CIDR_MASK], prefix) ||
        !address) {
      return Result<Unit>::failure("WireGuard dump: allowed IP lacks family, address or prefix", EPROTO);
    }
    AllowedIp allowed;
    allowed.address.family = family;
    const int expected = family == AF_INET ? 4 : family == AF_INET6 ? 16 : -1;
    if (expected < 0 || nla_len(address) != expected || prefix > expected * 8) {
      return Result<Unit>::failure("WireGuard dump: invalid allowed IP (family " + std::to_string(family) + ")",
                                   EPROTO);
    }
    std::memcpy(allowed.address.bytes.data(), nla_data(address), static_cast<std::size_t>(expected));
    allowed.prefix_length = prefix;
    out.push_back(allowed);
  }
  return Result<Unit>::success({});
}

}  // namespace

void NlMsgFree::operator()(nl_msg* message) const {
  if (!message) return;
  if (nlmsghdr* header = nlmsg_hdr(message)) OPENSSL_cleanse(header, header->nlmsg_len);
  nlmsg_free(message);
}

Result<std::vector<NlMsgPtr>> build_set_device(int family_id, std::string_view ifname, const DeviceConfig& config,
                                               std::size_t max_message_bytes) {
  using R = Result<std::vector<NlMsgPtr>>;
  if (ifname.empty() || ifname.size() >= IFNAMSIZ) {
    return R::failure("invalid interface name \"" + std::string(ifname) + "\"", EINVAL);
  }
  if (max_message_bytes < kMinSetMessageBytes) {
    return R::failure("WireGuard message limit below " + std::to_string(kMinSetMessageBytes) + " bytes", EINVAL);
  }
  SetMessageBuilder builder(family_id, ifname, std::min(max_message_bytes, kLargestSetMessage));
  return builder.build(config);
}

Result<NlMsgPtr> build_get_device(int family_id, std::string_view ifname) {
  using R = Result<NlMsgPtr>;
  if (ifname.empty() || ifname.size() >= IFNAMSIZ) {
    return R::failure("invalid interface name \"" + std::string(ifname) + "\"", EINVAL);
  }
  NlMsgPtr message(nlmsg_alloc_size(kGenlHeaderBytes + 64));
  const std::string terminated(ifname);
  if (!message ||
      !genlmsg_put(message.get(), NL_AUTO_PORT, NL_AUTO_SEQ, family_id, 0, NLM_F_REQUEST | NLM_F_DUMP,
                   WG_CMD_GET_DEVICE, WG_GENL_VERSION) ||
      nla_put_string(message.get(), WGDEVICE_A_IFNAME, terminated.c_str()) < 0) {
    return R::failure("cannot build the WireGuard dump request", ENOMEM);
  }
  return R::success(std::move(message));
}

Result<Unit> DumpAssembler::add(const nlmsghdr* header) {
  using R = Result<Unit>;
  if (header->nlmsg_len < NLMSG_LENGTH(GENL_HDRLEN)) return R::failure("WireGuard dump: short message", EPROTO);
  nlattr* device[WGDEVICE_A_MAX + 1] = {};
  if (genlmsg_parse(const_cast<nlmsghdr*>(header), 0, device, WGDEVICE_A_MAX, nullptr) < 0) {
    return R::failure("WireGuard dump: malformed attributes", EPROTO);
  }
  ++messages_;
  std::uint32_t u32 = 0;
  std::uint16_t u16 = 0;
  if (attribute_is(device[WGDEVICE_A_IFINDEX], u32)) state_.ifindex = static_cast<int>(u32);
  if (const nlattr* name = device[WGDEVICE_A_IFNAME]; name && nla_len(name) > 0) {
    const char* text = static_cast<const char*>(nla_data(name));
    state_.name.assign(text, ::strnlen(text, static_cast<std::size_t>(nla_len(name))));
  }
  if (device[WGDEVICE_A_PRIVATE_KEY]) state_.has_private_key = true;
  read_key(device[WGDEVICE_A_PUBLIC_KEY], state_.public_key);
  if (attribute_is(device[WGDEVICE_A_LISTEN_PORT], u16)) state_.listen_port = u16;
  if (attribute_is(device[WGDEVICE_A_FWMARK], u32)) state_.fwmark = u32;
  if (!device[WGDEVICE_A_PEERS]) return R::success({});

  nlattr* entry;
  int remaining;
  nla_for_each_nested(entry, device[WGDEVICE_A_PEERS], remaining) {
    nlattr* fields[WGPEER_A_MAX + 1] = {};
    if (nla_parse_nested(fields, WGPEER_A_MAX, entry, nullptr) < 0) {
      return R::failure("WireGuard dump: malformed peer", EPROTO);
    }
    Key public_key{};
    if (!read_key(fields[WGPEER_A_PUBLIC_KEY], public_key)) {
      return R::failure("WireGuard dump: peer without a public key", EPROTO);
    }
    // The peer the previous message stopped in: only allowed IPs follow.
    if (!state_.peers.empty() && state_.peers.back().public_key == public_key) {
      if (fields[WGPEER_A_ALLOWEDIPS]) {
        if (auto status = read_allowed_ips(fields[WGPEER_A_ALLOWEDIPS], state_.peers.back().allowed_ips); !status) {
          return status;
        }
      }
      continue;
    }
    PeerState peer;
    peer.public_key = public_key;
    if (read_key(fields[WGPEER_A_PRESHARED_KEY], peer.preshared_key)) {
      peer.has_preshared_key = std::any_of(peer.preshared_key.begin(), peer.preshared_key.end(),
                                           [](std::uint8_t byte) { return byte != 0; });
    }
    peer.endpoint = read_endpoint(fields[WGPEER_A_ENDPOINT]);
    struct {
      std::int64_t seconds, nanoseconds;
    } handshake{};
    if (attribute_is(fields[WGPEER_A_LAST_HANDSHAKE_TIME], handshake) &&
        (handshake.seconds != 0 || handshake.nanoseconds != 0)) {
      // The clock counts int64 nanoseconds: about 292 years from 1970.
      constexpr std::int64_t kLatestSeconds =
          std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::duration::max()).count() - 1;
      if (handshake.seconds < 0 || handshake.seconds > kLatestSeconds || handshake.nanoseconds < 0 ||
          handshake.nanoseconds >= 1'000'000'000) {
        return R::failure("WireGuard dump: peer's last handshake time out of range", EPROTO);
      }
      peer.last_handshake = std::chrono::system_clock::time_point(
          std::chrono::duration_cast<std::chrono::system_clock::duration>(
              std::chrono::seconds(handshake.seconds) + std::chrono::nanoseconds(handshake.nanoseconds)));
    }
    std::uint64_t u64 = 0;
    if (attribute_is(fields[WGPEER_A_RX_BYTES], u64)) peer.rx_bytes = u64;
    if (attribute_is(fields[WGPEER_A_TX_BYTES], u64)) peer.tx_bytes = u64;
    if (attribute_is(fields[WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL], u16)) peer.persistent_keepalive_seconds = u16;
    if (fields[WGPEER_A_ALLOWEDIPS]) {
      if (auto status = read_allowed_ips(fields[WGPEER_A_ALLOWEDIPS], peer.allowed_ips); !status) return status;
    }
    state_.peers.push_back(std::move(peer));
  }
  return R::success({});
}

std::string explain_failure(std::string_view what, int error_number, std::string_view kernel_message) {
  std::string text(what);
  text += ": ";
  text += describe_errno(error_number);
  switch (error_number) {
    case EPERM:
    case EACCES: text += " (needs CAP_NET_ADMIN in the interface's network namespace)"; break;
    case ENODEV: text += " (no such interface)"; break;
    case EOPNOTSUPP: text += " (not a WireGuard interface, or the kernel lacks WireGuard)"; break;
    case EBADR: text += " (the request named the interface by both name and index, or by neither)"; break;
    case EADDRINUSE: text += " (the listen port is taken)"; break;
    default: break;
  }
  if (!kernel_message.empty()) {
    text += "; kernel: ";
    text += kernel_message;
  }
  return text;
}

}  // namespace detail

namespace {

using detail::NlMsgPtr;

struct NlSockFree {
  void operator()(nl_sock* socket) const { nl_socket_free(socket); }
};
using NlSockPtr = std::unique_ptr<nl_sock, NlSockFree>;
struct LinkFree {
  void operator()(rtnl_link* link) const { rtnl_link_put(link); }
};
struct AddrFree {
  void operator()(rtnl_addr* address) const { rtnl_addr_put(address); }
};
struct NlAddrFree {
  void operator()(nl_addr* address) const { nl_addr_put(address); }
};

constexpr int kSocketBufferBytes = 1024 * 1024;
constexpr std::size_t kReceiveBytes = 64 * 1024;
constexpr int kReplyTimeoutSeconds = 30;
constexpr int kDumpAttempts = 5;

// Received bytes are wiped: dump replies carry private and preshared keys.
class WipedBuffer {
 public:
  explicit WipedBuffer(std::size_t size) : bytes_(size) {}
  ~WipedBuffer() { OPENSSL_cleanse(bytes_.data(), bytes_.size()); }
  WipedBuffer(const WipedBuffer&) = delete;
  WipedBuffer& operator=(const WipedBuffer&) = delete;
  std::uint8_t* data() { return bytes_.data(); }
  std::size_t size() const { return bytes_.size(); }

 private:
  std::vector<std::uint8_t> bytes_;
};

// The outcome of one request: 0 or the kernel's errno, and its words.
struct Answer {
  int error_number = 0;
  std::string kernel_message;
  bool interrupted = false;  // a dump the device changed under (NLM_F_DUMP_INTR)
};

// One netlink socket (generic or route), one request at a time, replies
// matched by sequence number.
class Channel {
 public:
  static Result<Channel> open(int protocol, const char* what) {
    using R = Result<Channel>;
    NlSockPtr socket(nl_socket_alloc());
    if (!socket) return R::failure(std::string("open ") + what + " socket: out of memory", ENOMEM);
    errno = 0;
    if (const int status = nl_connect(socket.get(), protocol); status < 0) {
      const int error_number = errno ? errno : EPROTONOSUPPORT;
      return R::failure(std::string("open ") + what + " socket: " + nl_geterror(status) + ": " +
                            describe_errno(error_number),
                        error_number);
    }
    // Room for the largest requests and dump parts (the kernel caps it).
    nl_socket_set_buffer_size(socket.get(), kSocketBufferBytes, kSocketBufferBytes);
    const int fd = nl_socket_get_fd(socket.get());
    const int on = 1;
    // Failed requests are not echoed back (they carry keys); the kernel's
    // reason comes in words.
    ::setsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, &on, sizeof on);
    ::setsockopt(fd, SOL_NETLINK, NETLINK_EXT_ACK, &on, sizeof on);
    timeval timeout{kReplyTimeoutSeconds, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    Channel channel;
    channel.socket_ = std::move(socket);
    channel.next_sequence_ = std::random_device{}();
    return R::success(std::move(channel));
  }

  nl_sock* socket() { return socket_.get(); }

  // Sends `request` (wiping it once sent) and reads until its acknowledgement
  // or, for a dump (a request given `on_reply`), the end of the dump, handing
  // every part to `on_reply`.
  Result<Answer> exchange(NlMsgPtr request, const std::function<Result<Unit>(const nlmsghdr*)>& on_reply = {}) {
    using R = Result<Answer>;
    const int fd = nl_socket_get_fd(socket_.get());
    nlmsghdr* header = nlmsg_hdr(request.get());
    const std::uint32_t sequence = next_sequence_++;
    header->nlmsg_seq = sequence;
    header->nlmsg_pid = 0;
    // NLM_F_DUMP shares its bits with NLM_F_EXCL and NLM_F_REPLACE: the
    // caller says which it is.
    const bool dump = static_cast<bool>(on_reply);
    if (!dump) header->nlmsg_flags |= NLM_F_ACK;
    header->nlmsg_flags |= NLM_F_REQUEST;
    ssize_t sent;
    do {
      sent = ::send(fd, header, header->nlmsg_len, 0);
    } while (sent < 0 && errno == EINTR);
    const int send_error = errno;
    OPENSSL_cleanse(header, header->nlmsg_len);
    request.reset();
    if (sent < 0) return R::failure("send netlink request: " + describe_errno(send_error), send_error);

    Answer answer;
    WipedBuffer buffer(kReceiveBytes);
    for (;;) {
      const ssize_t length = ::recv(fd, buffer.data(), buffer.size(), MSG_TRUNC);
      if (length < 0) {
        const int error_number = errno;
        if (error_number == EINTR) continue;
        if (error_number == EAGAIN || error_number == EWOULDBLOCK) {
          return R::failure("no netlink answer within " + std::to_string(kReplyTimeoutSeconds) + " s", ETIMEDOUT);
        }
        return R::failure("receive netlink answer: " + describe_errno(error_number), error_number);
      }
      if (static_cast<std::size_t>(length) > buffer.size()) {
        return R::failure("netlink answer larger than " + std::to_string(buffer.size()) + " bytes", EMSGSIZE);
      }
      int remaining = static_cast<int>(length);
      for (auto* reply = reinterpret_cast<nlmsghdr*>(buffer.data()); NLMSG_OK(reply, remaining);
           reply = NLMSG_NEXT(reply, remaining)) {
        if (reply->nlmsg_seq != sequence) continue;  // a stale answer to an earlier request
        if (reply->nlmsg_flags & NLM_F_DUMP_INTR) answer.interrupted = true;
        if (reply->nlmsg_type == NLMSG_ERROR) {
          Acknowledgement acknowledgement = read_acknowledgement(reply);
          answer.error_number = acknowledgement.error_number;
          answer.kernel_message = std::move(acknowledgement.kernel_message);
          return R::success(std::move(answer));
        }
        if (reply->nlmsg_type == NLMSG_DONE) {
          int status = 0;
          if (reply->nlmsg_len >= NLMSG_LENGTH(sizeof status)) std::memcpy(&status, NLMSG_DATA(reply), sizeof status);
          answer.error_number = status < 0 ? -status : 0;
          return R::success(std::move(answer));
        }
        if (reply->nlmsg_type == NLMSG_NOOP || reply->nlmsg_type == NLMSG_OVERRUN) continue;
        if (on_reply) {
          if (auto status = on_reply(reply); !status) return R::failure(status.error(), status.error_number());
        }
      }
    }
  }

 private:
  NlSockPtr socket_;
  std::uint32_t next_sequence_ = 0;
};

Result<Unit> check_interface_name(const std::string& name) {
  if (name.empty() || name.size() >= IFNAMSIZ || name.find_first_of("/ \t\n:") != std::string::npos ||
      name == "." || name == "..") {
    return Result<Unit>::failure("invalid interface name \"" + name + "\" (1 to " + std::to_string(IFNAMSIZ - 1) +
                                     " characters, no '/', ':' or spaces)",
                                 EINVAL);
  }
  return Result<Unit>::success({});
}

Result<Unit> unit_failure(const std::string& what, const Answer& answer) {
  return Result<Unit>::failure(detail::explain_failure(what, answer.error_number, answer.kernel_message),
                               answer.error_number);
}

template <typename T, typename U>
Result<T> forward_failure(const Result<U>& failed) {
  return Result<T>::failure(failed.error(), failed.error_number());
}

Result<NlMsgPtr> link_request(const std::string& name, bool create) {
  using R = Result<NlMsgPtr>;
  std::unique_ptr<rtnl_link, LinkFree> link(rtnl_link_alloc());
  if (!link) return R::failure("out of memory", ENOMEM);
  rtnl_link_set_name(link.get(), name.c_str());
  nl_msg* raw = nullptr;
  int status;
  if (create) {
    if ((status = rtnl_link_set_type(link.get(), "wireguard")) < 0) {
      return R::failure(std::string("link request: ") + nl_geterror(status), ENOMEM);
    }
    status = rtnl_link_build_add_request(link.get(), NLM_F_CREATE | NLM_F_EXCL, &raw);
  } else {
    status = rtnl_link_build_delete_request(link.get(), &raw);
  }
  NlMsgPtr message(raw);
  if (status < 0 || !message) return R::failure(std::string("link request: ") + nl_geterror(status), ENOMEM);
  return R::success(std::move(message));
}

Result<Unit> delete_link_over(Channel& route, const std::string& name) {
  auto request = link_request(name, false);
  if (!request) return forward_failure<Unit>(request);
  auto answer = route.exchange(std::move(request.value()));
  if (!answer) return forward_failure<Unit>(answer);
  if (answer->error_number) return unit_failure("delete link " + name, answer.value());
  return Result<Unit>::success({});
}

Result<int> interface_index(const std::string& name) {
  if (auto valid = check_interface_name(name); !valid) return forward_failure<int>(valid);
  const unsigned index = ::if_nametoindex(name.c_str());
  if (index == 0) {
    const int error_number = errno == ENXIO || errno == 0 ? ENODEV : errno;
    return Result<int>::failure("interface " + name + ": " + describe_errno(error_number) + " (no such interface)",
                                error_number);
  }
  return Result<int>::success(static_cast<int>(index));
}

}  // namespace

struct KernelDevice::Impl {
  Channel generic;
  Channel route;
  int family_id = 0;
  bool owns_link = false;
};

KernelDevice::KernelDevice(std::string name, std::unique_ptr<Impl> impl)
    : name_(std::move(name)), impl_(std::move(impl)) {}

KernelDevice::~KernelDevice() {
  if (impl_ && impl_->owns_link) (void)delete_link_over(impl_->route, name_);
}

bool KernelDevice::kernel_supports_wireguard() {
  auto generic = Channel::open(NETLINK_GENERIC, "generic netlink");
  if (!generic) return false;
  // Resolving the family also loads the module where the kernel may.
  return genl_ctrl_resolve(generic->socket(), WG_GENL_NAME) >= 0;
}

Result<std::unique_ptr<KernelDevice>> KernelDevice::create(const std::string& name) {
  using R = Result<std::unique_ptr<KernelDevice>>;
  if (auto valid = check_interface_name(name); !valid) return forward_failure<std::unique_ptr<KernelDevice>>(valid);
  auto impl = std::make_unique<Impl>();
  auto route = Channel::open(NETLINK_ROUTE, "rtnetlink");
  if (!route) return forward_failure<std::unique_ptr<KernelDevice>>(route);
  impl->route = std::move(route.value());

  auto request = link_request(name, true);
  if (!request) return forward_failure<std::unique_ptr<KernelDevice>>(request);
  auto answer = impl->route.exchange(std::move(request.value()));
  if (!answer) return forward_failure<std::unique_ptr<KernelDevice>>(answer);
  switch (answer->error_number) {
    case 0: impl->owns_link = true; break;
    case EEXIST: break;  // adopted below, once it proves to be WireGuard
    case EOPNOTSUPP: return R::failure(std::string(detail::kLacksWireGuard) + " (creating link " + name + ")", EOPNOTSUPP);
    default:
      return R::failure(detail::explain_failure("create WireGuard link " + name, answer->error_number,
                                                answer->kernel_message),
                        answer->error_number);
  }

  auto generic = Channel::open(NETLINK_GENERIC, "generic netlink");
  if (!generic) return forward_failure<std::unique_ptr<KernelDevice>>(generic);
  impl->generic = std::move(generic.value());
  impl->family_id = genl_ctrl_resolve(impl->generic.socket(), WG_GENL_NAME);
  if (impl->family_id < 0) {
    if (impl->owns_link) (void)delete_link_over(impl->route, name);
    return R::failure(std::string(detail::kLacksWireGuard) + " (no \"wireguard\" generic netlink family)", EOPNOTSUPP);
  }
  std::unique_ptr<KernelDevice> device(new KernelDevice(name, std::move(impl)));
  if (!device->impl_->owns_link) {
    auto state = device->read();
    if (!state) {
      const bool foreign = state.error_number() == EOPNOTSUPP;
      return R::failure(foreign ? "link " + name + " exists and is not a WireGuard interface"
                                : "adopt existing link " + name + ": " + state.error(),
                        foreign ? EEXIST : state.error_number());
    }
  }
  return R::success(std::move(device));
}

Result<Unit> KernelDevice::configure(const DeviceConfig& config) {
  auto messages = detail::build_set_device(impl_->family_id, name_, config);
  if (!messages) return forward_failure<Unit>(messages);
  const std::size_t count = messages->size();
  for (std::size_t index = 0; index < count; ++index) {
    auto answer = impl_->generic.exchange(std::move(messages.value()[index]));
    if (!answer) return forward_failure<Unit>(answer);
    if (answer->error_number) {
      std::string what = "configure WireGuard interface " + name_;
      if (count > 1) what += " (message " + std::to_string(index + 1) + " of " + std::to_string(count) + ")";
      return unit_failure(what, answer.value());
    }
  }
  return Result<Unit>::success({});
}

Result<DeviceState> KernelDevice::read() {
  using R = Result<DeviceState>;
  for (int attempt = 1;; ++attempt) {
    auto request = detail::build_get_device(impl_->family_id, name_);
    if (!request) return forward_failure<DeviceState>(request);
    detail::DumpAssembler assembler;
    auto answer = impl_->generic.exchange(std::move(request.value()),
                                          [&assembler](const nlmsghdr* reply) { return assembler.add(reply); });
    if (!answer) return forward_failure<DeviceState>(answer);
    if (answer->error_number) {
      return R::failure(detail::explain_failure("read WireGuard interface " + name_, answer->error_number,
                                                answer->kernel_message),
                        answer->error_number);
    }
    // The device changed while the dump ran: its parts do not fit together.
    if (answer->interrupted) {
      if (attempt < kDumpAttempts) continue;
      return R::failure("read WireGuard interface " + name_ + ": changed during each of " +
                            std::to_string(kDumpAttempts) + " dumps",
                        EAGAIN);
    }
    return R::success(assembler.take());
  }
}

Result<Unit> add_address(const std::string& ifname, const AllowedIp& address) {
  using R = Result<Unit>;
  auto index = interface_index(ifname);
  if (!index) return forward_failure<Unit>(index);
  if (address.address.family != AF_INET && address.address.family != AF_INET6) {
    return R::failure("add address to " + ifname + ": no IPv4 or IPv6 address given", EINVAL);
  }
  if (address.prefix_length > address.address.size() * 8) {
    return R::failure("add address to " + ifname + ": prefix length " + std::to_string(address.prefix_length) +
                          " too long",
                      EINVAL);
  }
  std::unique_ptr<nl_addr, NlAddrFree> local(
      nl_addr_build(address.address.family, address.address.bytes.data(), address.address.size()));
  std::unique_ptr<rtnl_addr, AddrFree> entry(rtnl_addr_alloc());
  if (!local || !entry) return R::failure("add address: out of memory", ENOMEM);
  rtnl_addr_set_ifindex(entry.get(), index.value());
  rtnl_addr_set_family(entry.get(), address.address.family);
  rtnl_addr_set_prefixlen(entry.get(), address.prefix_length);
  nl_addr_set_prefixlen(local.get(), address.prefix_length);
  if (rtnl_addr_set_local(entry.get(), local.get()) < 0) return R::failure("add address: out of memory", ENOMEM);
  nl_msg* raw = nullptr;
  const int status = rtnl_addr_build_add_request(entry.get(), NLM_F_CREATE | NLM_F_REPLACE, &raw);
  NlMsgPtr message(raw);
  if (status < 0 || !message) return R::failure(std::string("add address: ") + nl_geterror(status), ENOMEM);
  auto route = Channel::open(NETLINK_ROUTE, "rtnetlink");
  if (!route) return forward_failure<Unit>(route);
  auto answer = route->exchange(std::move(message));
  if (!answer) return forward_failure<Unit>(answer);
  if (answer->error_number) return unit_failure("add address " + address.to_string() + " to " + ifname, answer.value());
  return R::success({});
}

Result<Unit> set_link_up(const std::string& ifname, bool up) {
  using R = Result<Unit>;
  auto index = interface_index(ifname);
  if (!index) return forward_failure<Unit>(index);
  NlMsgPtr message(nlmsg_alloc_simple(RTM_NEWLINK, 0));
  ifinfomsg header{};
  header.ifi_family = AF_UNSPEC;
  header.ifi_index = index.value();
  header.ifi_change = IFF_UP;
  header.ifi_flags = up ? IFF_UP : 0;
  if (!message || nlmsg_append(message.get(), &header, sizeof header, NLMSG_ALIGNTO) < 0) {
    return R::failure("set link state: out of memory", ENOMEM);
  }
  auto route = Channel::open(NETLINK_ROUTE, "rtnetlink");
  if (!route) return forward_failure<Unit>(route);
  auto answer = route->exchange(std::move(message));
  if (!answer) return forward_failure<Unit>(answer);
  if (answer->error_number) return unit_failure(std::string("set link ") + ifname + (up ? " up" : " down"), answer.value());
  return R::success({});
}

Result<Unit> delete_link(const std::string& ifname) {
  if (auto valid = check_interface_name(ifname); !valid) return valid;
  auto route = Channel::open(NETLINK_ROUTE, "rtnetlink");
  if (!route) return forward_failure<Unit>(route);
  return delete_link_over(route.value(), ifname);
}

}  // namespace tapsec::kernel::wireguard
