// libFuzzer target for the UAPI get-reply parser. Refusals are fine (with a
// message and an errno); crashes, leaks and out-of-bounds reads are not.
// Whatever parses is written back as a canonical reply that must parse to
// the same state, and turned into a set request that must be well formed.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "agent/kernel/wireguard.h"

namespace {

using namespace tapsec::kernel::wireguard;

std::string hex(const Key& key) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string text;
  for (std::uint8_t byte : key) {
    text.push_back(kDigits[byte >> 4]);
    text.push_back(kDigits[byte & 0x0f]);
  }
  return text;
}

// The reply wireguard-go would give for `state` (without the private key,
// which a DeviceState does not keep).
std::string canonical_reply(const DeviceState& state) {
  std::string reply = "listen_port=" + std::to_string(state.listen_port) + "\n";
  if (state.fwmark) reply += "fwmark=" + std::to_string(state.fwmark) + "\n";
  for (const PeerState& peer : state.peers) {
    reply += "public_key=" + hex(peer.public_key) + "\n";
    reply += "preshared_key=" + hex(peer.preshared_key) + "\nprotocol_version=1\n";
    if (peer.endpoint) reply += "endpoint=" + peer.endpoint->to_string() + "\n";
    const auto since_epoch = peer.last_handshake.time_since_epoch();
    const auto seconds = std::chrono::duration_cast<std::chrono::seconds>(since_epoch);
    const auto nanoseconds = std::chrono::duration_cast<std::chrono::nanoseconds>(since_epoch - seconds);
    reply += "last_handshake_time_sec=" + std::to_string(seconds.count()) + "\n";
    reply += "last_handshake_time_nsec=" + std::to_string(nanoseconds.count()) + "\n";
    reply += "tx_bytes=" + std::to_string(peer.tx_bytes) + "\nrx_bytes=" + std::to_string(peer.rx_bytes) + "\n";
    reply += "persistent_keepalive_interval=" + std::to_string(peer.persistent_keepalive_seconds) + "\n";
    for (const AllowedIp& allowed : peer.allowed_ips) reply += "allowed_ip=" + allowed.to_string() + "\n";
  }
  return reply + "errno=0\n\n";
}

bool same_peers(const DeviceState& a, const DeviceState& b) {
  if (a.listen_port != b.listen_port || a.fwmark != b.fwmark || a.peers.size() != b.peers.size()) return false;
  for (std::size_t i = 0; i < a.peers.size(); ++i) {
    const PeerState &x = a.peers[i], &y = b.peers[i];
    if (x.public_key != y.public_key || x.has_preshared_key != y.has_preshared_key ||
        x.preshared_key != y.preshared_key || x.endpoint != y.endpoint || x.last_handshake != y.last_handshake ||
        x.rx_bytes != y.rx_bytes || x.tx_bytes != y.tx_bytes ||
        x.persistent_keepalive_seconds != y.persistent_keepalive_seconds || x.allowed_ips != y.allowed_ips)
      return false;
  }
  return true;
}

// A set request: "set=1", key=value lines, one blank line at the end.
void check_set_request(std::string_view request) {
  if (!request.starts_with("set=1\n") || !request.ends_with("\n\n")) abort();
  request.remove_suffix(1);
  while (!request.empty()) {
    const auto newline = request.find('\n');
    const std::string_view line = request.substr(0, newline);
    if (line.empty() || line.find('=') == std::string_view::npos || line.front() == '=') abort();
    for (char c : line)
      if (c < 0x20 || c >= 0x7f) abort();
    request.remove_prefix(newline + 1);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  auto state = uapi::parse_get(input);
  if (!state) {
    if (state.error().empty() || state.error_number() == 0) abort();
    return 0;
  }

  const std::string again_text = canonical_reply(state.value());
  auto again = uapi::parse_get(again_text);
  if (!again || !same_peers(state.value(), again.value())) abort();
  if (canonical_reply(again.value()) != again_text) abort();

  // The state as a configuration, the way the agent re-applies one.
  DeviceConfig config;
  config.listen_port = state->listen_port;
  config.fwmark = state->fwmark;
  config.replace_peers = true;
  for (const PeerState& peer : state->peers) {
    PeerConfig change;
    change.public_key = peer.public_key;
    change.preshared_key = peer.preshared_key;
    change.endpoint = peer.endpoint;
    change.persistent_keepalive_seconds = peer.persistent_keepalive_seconds;
    change.replace_allowed_ips = true;
    change.allowed_ips = peer.allowed_ips;
    change.update_only = peer.rx_bytes % 2 == 1;
    change.remove = peer.tx_bytes % 3 == 1;
    config.peers.push_back(change);
  }
  check_set_request(uapi::format_set(config));
  return 0;
}
