// Value types of Protocol=wireguard tunnels: interface names, base64 keys,
// interface addresses, allowed IPs, firewall marks. Parsers return
// std::nullopt and set `why` to a one-line reason on bad input. Internal to
// tapsec_policy (which does not depend on the agent's key helpers).
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace tapsec::policy::detail {

// Linux link names: 1-15 characters (IFNAMSIZ - 1) of letters, digits, '_',
// '.', '-'; not "." or "..".
inline constexpr std::size_t kMaxInterfaceNameLength = 15;
bool is_valid_interface_name(std::string_view name, std::string& why);
// "wg-" + the tunnel's name, cut to the length a link name may have.
std::string default_interface_name(std::string_view tunnel_name);

// A WireGuard key as `wg` prints it: the canonical base64 of 32 bytes,
// 44 characters ending in one '='.
inline constexpr std::size_t kWireGuardKeyBytes = 32;
std::optional<std::array<std::uint8_t, kWireGuardKeyBytes>> parse_wireguard_key(std::string_view base64,
                                                                                 std::string& why);

// An address for the local interface with its prefix length
// ("10.9.0.1/24", "fd00:9::1/64"); a bare address means /32 or /128.
// Returns the address with its prefix length always written out.
std::optional<std::string> parse_interface_address(std::string_view value, std::string& why);

// A network routed to the peer ("10.9.0.2/32", "0.0.0.0/0", "fd00:9::/64");
// host bits after the prefix length are an error, a bare address means
// /32 or /128. Returns the prefix with its length always written out.
std::optional<std::string> parse_allowed_ip(std::string_view value, std::string& why);

// A 32-bit firewall mark, decimal or 0x-prefixed hex.
std::optional<std::uint32_t> parse_fwmark(std::string_view value, std::string& why);

}  // namespace tapsec::policy::detail
