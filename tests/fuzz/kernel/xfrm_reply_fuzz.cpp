// libFuzzer target for the XFRM installer's readers of kernel answers and
// events (agent/kernel/xfrm_codec.h) and the acknowledgement reader shared with
// WireGuard (agent/kernel/netlink_ack.h). The input is one datagram from the
// XFRM socket; each message in it goes where the channel and the event socket
// send it: acknowledgements to read_acknowledgement, everything else to the SA
// query, SPI allocation, dump, event and MOBIKE move readers. Refusals are fine;
// memory errors are not, and neither is a moved SA that its own reader
// refuses.
#include <linux/xfrm.h>
#include <netlink/msg.h>

#include <cstdint>
#include <cstdlib>
#include <span>

#include "agent/kernel/netlink_ack.h"
#include "agent/kernel/xfrm_codec.h"
#include "tests/fuzz/kernel/netlink_walk.h"

namespace {

using namespace tapsec::kernel::xfrm;
using tapsec::ikev2::IpAddress;

void read_answer(const nlmsghdr* header) {
  (void)detail::read_sa_counters(header);
  (void)detail::read_sa_spi(header);
  (void)detail::read_dumped_sa(header);
  if (auto policy = detail::read_dumped_policy(header); policy && policy->reqids.size() > header->nlmsg_len) abort();
  if (auto event = detail::read_event(header); !event && event.error().empty()) abort();

  static const IpAddress v4_source = *IpAddress::parse("192.0.2.10"), v4_destination = *IpAddress::parse("192.0.2.20");
  static const IpAddress v6_source = *IpAddress::parse("2001:db8::10"), v6_destination = *IpAddress::parse("2001:db8::20");
  for (const auto& [source, destination] : {std::pair{&v4_source, &v4_destination}, std::pair{&v6_source, &v6_destination}}) {
    for (const auto& encapsulation : {std::optional<Encapsulation>{}, std::optional<Encapsulation>{Encapsulation{}}}) {
      auto moved = detail::build_moved_sa(header, *source, *destination, encapsulation);
      if (!moved) continue;
      // What we would send describes an SA as the kernel does: it reads back.
      const nlmsghdr* request = nlmsg_hdr(moved.value().get());
      if (!detail::read_sa_spi(request) || !detail::read_sa_counters(request)) abort();
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  tapsec::fuzz::for_each_netlink_message(std::span(data, size), [](const nlmsghdr* header) {
    if (header->nlmsg_type == NLMSG_ERROR) {
      const auto acknowledgement = tapsec::kernel::read_acknowledgement(header);
      if (acknowledgement.error_number < 0) abort();
      (void)detail::explain_failure("add SA", detail::Subject::Sa, acknowledgement.error_number,
                                    acknowledgement.kernel_message, AF_INET, "rfc4106(gcm(aes))");
      return;
    }
    read_answer(header);
  });
  return 0;
}
