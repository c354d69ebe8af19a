// The messages of the kernel's "wireguard" generic netlink family, with no
// socket involved: WG_CMD_SET_DEVICE requests built from a DeviceConfig (split
// over as many messages as the family needs) and the WG_CMD_GET_DEVICE dump
// read back into a DeviceState. Private to agent/kernel (the unit tests check
// it directly).
#pragma once

#include <linux/netlink.h>
#include <netlink/msg.h>

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "agent/kernel/wireguard.h"

namespace tapsec::kernel::wireguard::detail {

// Frees a libnl message after wiping it: requests carry private and
// preshared keys.
struct NlMsgFree {
  void operator()(nl_msg* message) const;
};
using NlMsgPtr = std::unique_ptr<nl_msg, NlMsgFree>;

// The largest WG_CMD_SET_DEVICE built by default. The peers travel in one
// attribute, whose length is 16 bits, so a message can never exceed 64 KiB;
// 32 KiB stays well inside that and inside a netlink socket's send buffer.
constexpr std::size_t kMaxSetMessageBytes = 32 * 1024;
// Smaller limits leave no room for one peer and one allowed IP.
constexpr std::size_t kMinSetMessageBytes = 512;

// The WG_CMD_SET_DEVICE messages that apply `config` to the device `ifname`,
// in order, each at most `max_message_bytes` long. Only the first carries the
// device's own attributes and WGDEVICE_F_REPLACE_PEERS. A peer whose allowed
// IPs do not all fit continues in the next message with only its public key
// (plus WGPEER_F_UPDATE_ONLY when the peer had it, so a continuation never
// creates a peer) and the remaining allowed IPs, never with
// WGPEER_F_REPLACE_ALLOWEDIPS. Sequence numbers and ports are left at zero.
Result<std::vector<NlMsgPtr>> build_set_device(int family_id, std::string_view ifname, const DeviceConfig& config,
                                               std::size_t max_message_bytes = kMaxSetMessageBytes);

// The WG_CMD_GET_DEVICE dump request (NLM_F_REQUEST | NLM_F_DUMP) for `ifname`.
Result<NlMsgPtr> build_get_device(int family_id, std::string_view ifname);

// Gathers the messages of one WG_CMD_GET_DEVICE dump. The kernel puts the
// device's attributes in the first message only and may split a peer's
// allowed IPs over several: a message that begins with the peer the previous
// one ended with carries that peer's remaining allowed IPs.
class DumpAssembler {
 public:
  // One message of the dump (generic netlink header and attributes).
  Result<Unit> add(const nlmsghdr* message);
  const DeviceState& state() const { return state_; }
  DeviceState take() { return std::move(state_); }
  std::size_t messages() const { return messages_; }

 private:
  DeviceState state_;
  std::size_t messages_ = 0;
};

// "interface wg0: ENODEV (No such device)" and the like, with the usual cause
// of the errno for this family spelled out, and the kernel's own text when
// it sent one (extended ACK).
std::string explain_failure(std::string_view what, int error_number, std::string_view kernel_message);

}  // namespace tapsec::kernel::wireguard::detail
