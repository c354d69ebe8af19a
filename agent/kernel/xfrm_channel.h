// The request/acknowledgement side of an XFRM netlink socket: requests go out
// in batches with NLM_F_ACK and sequence numbers, answers are matched back by
// sequence number. Private to agent/kernel.
#pragma once

#include <netlink/socket.h>

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "agent/kernel/xfrm_codec.h"

namespace tapsec::kernel::xfrm::detail {

struct NlSockFree {
  void operator()(nl_sock* socket) const { nl_socket_free(socket); }
};
using NlSockPtr = std::unique_ptr<nl_sock, NlSockFree>;

// A connected NETLINK_XFRM socket (groups: multicast groups to join, 0 for none).
Result<NlSockPtr> open_xfrm_socket(const std::vector<int>& groups);

// What the kernel said to one request.
struct Outcome {
  int error_number = 0;        // 0: acknowledged
  std::string kernel_message;  // the extended ACK text, if any
  std::string local_failure;   // the request could not be built (never sent)
  WipedBytes reply;            // the answer message before the ACK (GETSA, ALLOCSPI)
};

class XfrmChannel {
 public:
  static Result<XfrmChannel> open();

  // Builds request i with build(i), sends them in batches without waiting,
  // and reads the acknowledgements as they come (bounded by a window so the
  // socket's receive buffer never overflows). Fails only when the socket
  // itself fails; each request's fate is in its Outcome.
  using Builder = std::function<Result<NlMsgPtr>(std::size_t index)>;
  Result<std::vector<Outcome>> exchange(std::size_t count, const Builder& build);
  // One request.
  Result<Outcome> exchange_one(NlMsgPtr request);
  // A dump request: each answer message goes to each() (and is wiped after),
  // until the kernel's NLMSG_DONE. The first failure of each() is returned
  // once the dump is drained.
  using Visitor = std::function<Result<Unit>(const nlmsghdr* message)>;
  Result<Unit> dump(NlMsgPtr request, const Visitor& each);

 private:
  explicit XfrmChannel(NlSockPtr socket);
  // One recv into received_: its length, 0 when interrupted.
  Result<std::size_t> receive(const char* what);
  NlSockPtr socket_;
  // Reused across exchanges; each is cleared after every use.
  WipedBytes batch_, received_;
  std::uint32_t next_sequence_ = 1;
  std::size_t window_ = 64;  // unacknowledged requests allowed in flight
};

}  // namespace tapsec::kernel::xfrm::detail
