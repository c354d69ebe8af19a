// The XFRM installer's netlink messages, with no socket involved: building
// requests from SaSpec / PolicySpec, reading the kernel's answers and events,
// and the wording of failures. Private to agent/kernel (the unit tests check
// it directly).
#pragma once

#include <linux/netlink.h>
#include <linux/xfrm.h>
#include <netlink/msg.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "agent/kernel/xfrm.h"

namespace tapsec::kernel::xfrm::detail {

// Frees a libnl message after wiping it: SA requests carry keys.
struct NlMsgFree {
  void operator()(nl_msg* message) const;
};
using NlMsgPtr = std::unique_ptr<nl_msg, NlMsgFree>;

// Bytes that are wiped when they go (kernel replies that carry SA keys).
class WipedBytes {
 public:
  WipedBytes() = default;
  explicit WipedBytes(std::size_t size) : bytes_(size) {}
  WipedBytes(const void* data, std::size_t size);
  WipedBytes(WipedBytes&& other) noexcept = default;
  WipedBytes& operator=(WipedBytes&& other) noexcept;
  WipedBytes(const WipedBytes&) = delete;
  WipedBytes& operator=(const WipedBytes&) = delete;
  ~WipedBytes() { wipe(); }

  void wipe();
  std::uint8_t* data() { return bytes_.data(); }
  const std::uint8_t* data() const { return bytes_.data(); }
  std::size_t size() const { return bytes_.size(); }
  bool empty() const { return bytes_.empty(); }
  const nlmsghdr* header() const { return reinterpret_cast<const nlmsghdr*>(bytes_.data()); }

 private:
  std::vector<std::uint8_t> bytes_;
};

// Clears a key the caller handed over (SaSpec keys are the installer's to wipe).
void wipe_key(std::vector<std::uint8_t>& key);

xfrm_address_t to_xfrm_address(const IpAddress& address);
IpAddress from_xfrm_address(const xfrm_address_t& address, int family);

// "add SA esp spi 0xc0a80101 192.0.2.1→192.0.2.2"; without a source:
// "delete SA esp spi 0xc0a80101 to 192.0.2.2".
std::string describe_sa(std::string_view operation, std::uint32_t spi, const IpAddress* source,
                        const IpAddress& destination);
// "add policy out 10.1.0.0/16→10.2.0.0/16"
std::string describe_policy(std::string_view operation, const TrafficSelector& source,
                            const TrafficSelector& destination, Direction direction);

// What the kernel's errno means for one operation. The message names the
// operation, explains the errno in words where it has a usual cause, and adds
// the kernel's own text (extended ACK) when it sent one.
enum class Subject { Sa, Policy, SpiAllocation, Query };
std::string explain_failure(const std::string& what, Subject subject, int error_number,
                            std::string_view kernel_message, int family = 0, std::string_view algorithms = {});

// Selectors. Both traffic selectors must be prefixes of one family; ports must
// be a single port, all ports, or an aligned power-of-two block.
Result<xfrm_selector> make_selector(const TrafficSelector& source, const TrafficSelector& destination);
// The traffic a selector matches, as (source, destination).
std::pair<TrafficSelector, TrafficSelector> selector_traffic(const xfrm_selector& selector);
// More specific selectors get smaller numbers (the kernel prefers them).
std::uint32_t derived_priority(const xfrm_selector& selector);

// Requests. Each returns a complete message (type, flags, payload); the
// channel sets sequence numbers. build_add_sa wipes the spec's keys.
Result<NlMsgPtr> build_add_sa(SaSpec& spec, bool update);
NlMsgPtr build_sa_id(std::uint16_t type, const IpAddress& destination, std::uint32_t spi);
NlMsgPtr build_allocate_spi(const IpAddress& source, const IpAddress& destination, std::uint32_t reqid,
                            std::uint32_t minimum, std::uint32_t maximum);
Result<NlMsgPtr> build_add_policy(const PolicySpec& spec, bool update);
Result<NlMsgPtr> build_delete_policy(const TrafficSelector& source, const TrafficSelector& destination,
                                     Direction direction);
// An XFRM_MSG_NEWSA request for the SA the kernel described in `current`
// (its GETSA answer), moved to new outer addresses and encapsulation, with
// its keys and replay state.
Result<NlMsgPtr> build_moved_sa(const nlmsghdr* current, const IpAddress& new_source,
                                const IpAddress& new_destination, const std::optional<Encapsulation>& encapsulation);

// Dumps (XFRM_MSG_GETSA / XFRM_MSG_GETPOLICY with NLM_F_DUMP), and removing
// a policy by the index the kernel gave it.
NlMsgPtr build_dump(std::uint16_t type);
NlMsgPtr build_delete_policy_by_index(std::uint32_t index, std::uint8_t kernel_direction);

struct DumpedSa {
  IpAddress destination;
  std::uint32_t spi = 0;  // host byte order
  std::uint32_t reqid = 0;
};
struct DumpedPolicy {
  std::uint32_t index = 0;
  std::uint8_t direction = 0;        // the kernel's XFRM_POLICY_IN / OUT / FWD
  std::vector<std::uint32_t> reqids;  // of its templates
};
// nullopt: an SA of another protocol than ESP.
Result<std::optional<DumpedSa>> read_dumped_sa(const nlmsghdr* message);
Result<DumpedPolicy> read_dumped_policy(const nlmsghdr* message);

// Answers and events.
Result<SaCounters> read_sa_counters(const nlmsghdr* message);
Result<std::uint32_t> read_sa_spi(const nlmsghdr* message);
// nullopt: a message the event socket does not follow (it is skipped).
Result<std::optional<Event>> read_event(const nlmsghdr* message);

}  // namespace tapsec::kernel::xfrm::detail
