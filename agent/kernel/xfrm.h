// IPsec state in the kernel through XFRM netlink: inbound SPI allocation,
// ESP SAs (AEAD or cipher + HMAC, transport or tunnel, ESN, replay window,
// soft/hard lifetimes, UDP encapsulation), policies with templates, SA
// counters, and the event socket for ACQUIRE / EXPIRE / MAPPING. Also the
// socket options that let the IKE sockets bypass IPsec and receive ESP in UDP.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "agent/core/unique_fd.h"
#include "agent/engines/ikev2/types.h"
#include "agent/kernel/result.h"

namespace tapsec::kernel::xfrm {

using ikev2::IpAddress;
using ikev2::TrafficSelector;

struct Unit {};  // Result<Unit>: success without a value

// The reqids the agent gives its SAs and policies. They mark what is the
// agent's in the kernel: what an earlier run left there (killed, or crashed)
// is found by them and removed at start, while other IKE daemons' state
// (strongSwan and libreswan number from 1 and 16384) is left alone.
constexpr std::uint32_t kAgentReqidFirst = 0x74700001;
constexpr std::uint32_t kAgentReqidLast = 0x747fffff;
constexpr bool is_agent_reqid(std::uint32_t reqid) { return reqid >= kAgentReqidFirst && reqid <= kAgentReqidLast; }

enum class Mode { Transport, Tunnel };
enum class Direction { In, Out, Forward };

struct Lifetime {  // 0 = unlimited
  std::uint64_t soft_bytes = 0, hard_bytes = 0;
  std::uint64_t soft_packets = 0, hard_packets = 0;
  std::uint64_t soft_add_seconds = 0, hard_add_seconds = 0;
};

struct Encapsulation {  // ESP in UDP (RFC 3948)
  std::uint16_t source_port = 4500, destination_port = 4500;
};

// One ESP SA. Algorithms use the kernel's names: AEAD "rfc4106(gcm(aes))"
// (key includes the 4-byte salt, icv_bits 128) or "rfc7539esp(chacha20,poly1305)";
// otherwise encryption "cbc(aes)" with integrity "hmac(sha256)" (truncation 128),
// "hmac(sha384)" (192), "hmac(sha512)" (256).
struct SaSpec {
  IpAddress source, destination;  // outer addresses
  std::uint32_t spi = 0;          // host byte order
  Mode mode = Mode::Tunnel;
  std::uint32_t reqid = 0;
  std::string aead_algorithm;     // non-empty: AEAD
  std::uint32_t aead_icv_bits = 128;
  std::string encryption_algorithm, integrity_algorithm;
  std::uint32_t integrity_truncation_bits = 0;
  std::vector<std::uint8_t> encryption_key, integrity_key;  // cleared by the installer after use
  bool extended_sequence_numbers = false;
  std::uint32_t replay_window = 32;  // packets
  Lifetime lifetime;
  std::optional<Encapsulation> encapsulation;
  // Transport mode: the inner traffic this SA carries (a host selector);
  // tunnel mode: left empty (any).
  std::optional<TrafficSelector> selector_source, selector_destination;
};

// One policy: traffic matching source→destination in `direction` must use
// the ESP SA identified by the template (tunnel: outer addresses; transport:
// none) and reqid.
struct PolicySpec {
  TrafficSelector source, destination;  // must be prefixes (protocol and port allowed)
  Direction direction = Direction::Out;
  std::uint32_t priority = 0;           // 0: derived from the selectors' specificity
  bool block = false;                   // a drop policy, no template
  Mode mode = Mode::Tunnel;
  IpAddress template_source, template_destination;  // tunnel outer addresses
  std::uint32_t reqid = 0;
  bool optional_template = false;  // "level use": inbound policies for packets that may arrive in clear
};

struct Leftovers {  // what remove_leftovers() found and removed
  std::size_t sas = 0, policies = 0;
};

struct SaCounters {
  std::uint64_t bytes = 0, packets = 0;
  std::uint64_t replay_dropped = 0, integrity_failed = 0;
  std::uint64_t add_time_seconds = 0, use_time_seconds = 0;  // seconds since the epoch, 0 = not yet used
};

class XfrmSocket {
 public:
  static Result<XfrmSocket> open();
  XfrmSocket(XfrmSocket&&) noexcept;
  XfrmSocket& operator=(XfrmSocket&&) noexcept;
  ~XfrmSocket();

  // A larval SA reserves a unique inbound SPI (XFRM_MSG_ALLOCSPI); add_sa
  // with update=true later fills it in.
  Result<std::uint32_t> allocate_spi(const IpAddress& source, const IpAddress& destination, std::uint32_t reqid);
  Result<Unit> add_sa(SaSpec spec, bool update = false);
  Result<Unit> delete_sa(const IpAddress& destination, std::uint32_t spi);
  Result<SaCounters> query_sa(const IpAddress& destination, std::uint32_t spi);
  // Moves an SA to new outer addresses / encapsulation (delete + add with the
  // same keys as far as the kernel is concerned), for MOBIKE and NAT changes.
  Result<Unit> update_sa_addresses(const IpAddress& old_destination, std::uint32_t spi, const IpAddress& new_source,
                                   const IpAddress& new_destination, std::optional<Encapsulation> encapsulation);

  Result<Unit> add_policy(const PolicySpec& spec, bool update = false);
  Result<Unit> delete_policy(const TrafficSelector& source, const TrafficSelector& destination,
                             Direction direction);

  // Sends many requests before reading any acknowledgement (fast bulk
  // install); the result reports the first failure, if any.
  Result<Unit> add_sas(std::vector<SaSpec> specs);

  // Removes the ESP SAs and the policies of this network namespace that
  // carry an agent reqid: what an agent that died without cleaning up left.
  // Call it only while holding the IKE port, which makes this agent the one
  // of its namespace.
  Result<Leftovers> remove_leftovers();

 private:
  struct Impl;
  explicit XfrmSocket(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

struct AcquireEvent {  // outbound traffic hit a policy with no SA
  TrafficSelector source, destination;  // the triggering packet (host selectors)
  IpAddress outer_source, outer_destination;
  std::uint32_t reqid = 0;
};
struct ExpireEvent {
  IpAddress destination;
  std::uint32_t spi = 0;
  bool hard = false;
  std::uint64_t packets = 0;          // carried so far
  std::uint64_t hard_packet_limit = 0;  // 0: none (the kernel's "infinity")
};
struct MappingEvent {  // NAT mapping of a UDP-encapsulated SA changed
  std::uint32_t spi = 0;
  IpAddress old_address, new_address;
  std::uint16_t old_port = 0, new_port = 0;
};
using Event = std::variant<AcquireEvent, ExpireEvent, MappingEvent>;

// The multicast subscriber (ACQUIRE, EXPIRE, MAPPING). Non-blocking: read()
// after the fd polls readable returns what has arrived.
class XfrmEvents {
 public:
  static Result<XfrmEvents> open();
  XfrmEvents(XfrmEvents&&) noexcept;
  XfrmEvents& operator=(XfrmEvents&&) noexcept;
  ~XfrmEvents();
  int fd() const;
  Result<std::vector<Event>> read();

 private:
  struct Impl;
  explicit XfrmEvents(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// IKE sockets must not be caught by our own policies: per-socket bypass
// (IP_XFRM_POLICY / IPV6_XFRM_POLICY, both directions).
Result<Unit> bypass_socket_policy(int fd, int family);
// Lets the kernel take ESP-in-UDP off a UDP socket bound to 4500
// (UDP_ENCAP_ESPINUDP); IKE still arrives with the non-ESP marker.
Result<Unit> enable_esp_in_udp(int fd);

}  // namespace tapsec::kernel::xfrm
