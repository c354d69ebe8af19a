// libFuzzer target for the kernel WireGuard codec
// (agent/kernel/wireguard_netlink_codec.h). The first input byte sets a
// message size limit; the rest is one datagram of a WG_CMD_GET_DEVICE dump.
// Its messages go where the channel sends them (acknowledgements to the
// extended-ACK reader, dump parts to the DumpAssembler). A dump that
// assembles is written back as WG_CMD_SET_DEVICE messages under that limit
// (peers split over messages as the family needs), which must assemble to
// the same peers. Refusals are fine; memory errors and unstable round trips
// are not.
#include <linux/genetlink.h>
#include <netlink/msg.h>

#include <cstdint>
#include <cstdlib>
#include <span>

#include "agent/kernel/netlink_ack.h"
#include "agent/kernel/wireguard_netlink_codec.h"
#include "tests/fuzz/kernel/netlink_walk.h"

namespace {

using namespace tapsec::kernel::wireguard;

constexpr int kFamilyId = 0x1d;  // any id: the codec does not check it

DeviceConfig config_of(const DeviceState& state) {
  DeviceConfig config;
  config.replace_peers = true;
  for (const PeerState& peer : state.peers) {
    PeerConfig entry;
    entry.public_key = peer.public_key;
    if (peer.has_preshared_key) entry.preshared_key = peer.preshared_key;
    entry.endpoint = peer.endpoint;
    if (peer.persistent_keepalive_seconds) entry.persistent_keepalive_seconds = peer.persistent_keepalive_seconds;
    entry.replace_allowed_ips = true;
    entry.allowed_ips = peer.allowed_ips;
    config.peers.push_back(std::move(entry));
  }
  return config;
}

bool same_peers(const DeviceState& a, const DeviceState& b) {
  if (a.peers.size() != b.peers.size()) return false;
  for (std::size_t i = 0; i < a.peers.size(); ++i) {
    const PeerState &x = a.peers[i], &y = b.peers[i];
    if (x.public_key != y.public_key || x.has_preshared_key != y.has_preshared_key || x.endpoint != y.endpoint ||
        x.persistent_keepalive_seconds != y.persistent_keepalive_seconds || x.allowed_ips != y.allowed_ips)
      return false;
    if (x.has_preshared_key && x.preshared_key != y.preshared_key) return false;
  }
  return true;
}

void check_round_trip(const DeviceState& state, std::size_t limit) {
  auto messages = detail::build_set_device(kFamilyId, "wg0", config_of(state), limit);
  if (!messages) abort();  // every peer of a dump is a valid peer to set
  detail::DumpAssembler again;
  for (const auto& message : messages.value()) {
    const nlmsghdr* header = nlmsg_hdr(message.get());
    if (header->nlmsg_len > limit) abort();
    if (!again.add(header)) abort();
  }
  if (!same_peers(state, again.state())) abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::size_t limit = detail::kMinSetMessageBytes + std::size_t{data[0]} * 128;
  detail::DumpAssembler dump;
  bool refused = false;
  tapsec::fuzz::for_each_netlink_message(std::span(data + 1, size - 1), [&](const nlmsghdr* header) {
    if (refused || header->nlmsg_type == NLMSG_DONE || header->nlmsg_type == NLMSG_NOOP ||
        header->nlmsg_type == NLMSG_OVERRUN)
      return;
    if (header->nlmsg_type == NLMSG_ERROR) {
      const auto acknowledgement = tapsec::kernel::read_acknowledgement(header);
      if (acknowledgement.error_number < 0) abort();
      (void)detail::explain_failure("interface wg0", acknowledgement.error_number, acknowledgement.kernel_message);
      return;
    }
    auto added = dump.add(header);
    if (!added) {
      if (added.error().empty()) abort();
      refused = true;
    }
  });
  if (!refused) check_round_trip(dump.state(), limit);
  return 0;
}
