// Small value types shared by the IKEv2 engine, the agent and the XFRM
// installer: addresses, endpoints, traffic selectors, byte strings.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace tapsec::ikev2 {

using Bytes = std::vector<std::uint8_t>;

// An IPv4 or IPv6 address in network byte order (IPv4 uses the first 4 bytes).
struct IpAddress {
  int family = 0;  // AF_INET | AF_INET6 | 0 (none)
  std::array<std::uint8_t, 16> bytes{};

  static std::optional<IpAddress> parse(std::string_view text);  // "192.0.2.1", "2001:db8::1"
  static IpAddress any(int family);
  std::size_t size() const { return family == 10 /*AF_INET6*/ ? 16 : 4; }
  std::string to_string() const;
  bool operator==(const IpAddress&) const = default;
  auto operator<=>(const IpAddress&) const = default;
};

struct Endpoint {
  IpAddress address;
  std::uint16_t port = 0;
  std::string to_string() const;  // "192.0.2.1:500", "[2001:db8::1]:4500"
  bool operator==(const Endpoint&) const = default;
  auto operator<=>(const Endpoint&) const = default;
};

// One traffic selector (RFC 7296 §3.13.1): an address range, an IP protocol
// (0 = any) and a port range.
struct TrafficSelector {
  IpAddress start, end;
  std::uint8_t ip_protocol = 0;
  std::uint16_t start_port = 0, end_port = 65535;

  // "10.1.0.0/16", "192.0.2.1", "10.0.0.0/8[tcp/443]", "0.0.0.0/0", "::/0".
  static std::optional<TrafficSelector> parse(std::string_view text);
  static TrafficSelector host(const IpAddress& address);
  // The selector as a prefix when it is one (XFRM policies need prefixes).
  std::optional<std::uint8_t> prefix_length() const;
  std::string to_string() const;
  bool operator==(const TrafficSelector&) const = default;
};

// An IKE identity (ID payload, RFC 7296 §3.5).
struct Identification {
  std::uint8_t type = 0;  // id_type::* of message.h
  std::vector<std::uint8_t> data;

  // "192.0.2.1" / "2001:db8::1" (address), "user@example.org" (RFC 822),
  // "CN=gw, O=Example" (DER DN), "keyid:0a1b..." (hex), anything else FQDN;
  // "fqdn:..." forces FQDN.
  static std::optional<Identification> parse(std::string_view text);
  std::string to_string() const;  // the same forms parse accepts
  bool operator==(const Identification&) const = default;
};

}  // namespace tapsec::ikev2
