#include "agent/kernel/xfrm_channel.h"

#include <linux/netlink.h>
#include <netlink/attr.h>
#include <netlink/errno.h>
#include <openssl/crypto.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <cerrno>
#include <cstring>
#include <random>

#include "agent/kernel/netlink_ack.h"

namespace tapsec::kernel::xfrm::detail {
namespace {

// Requests per sendmsg and bytes per batch: the kernel handles a whole batch
// within one send, so the acknowledgements of one batch arrive together.
constexpr std::size_t kBatchMessages = 64;
constexpr std::size_t kBatchBytes = 64 * 1024;
constexpr std::size_t kReceiveBytes = 64 * 1024;
// Each queued acknowledgement costs about a kilobyte of receive buffer; the
// window of unacknowledged requests keeps the buffer from overflowing.
constexpr int kLargeReceiveBuffer = 8 * 1024 * 1024;
constexpr std::size_t kLargeWindow = 2048;
constexpr std::size_t kSmallWindow = 64;
constexpr int kAcknowledgementTimeoutSeconds = 10;

}  // namespace

Result<NlSockPtr> open_xfrm_socket(const std::vector<int>& groups) {
  using R = Result<NlSockPtr>;
  NlSockPtr socket(nl_socket_alloc());
  if (!socket) return R::failure("open XFRM netlink socket: out of memory", ENOMEM);
  // Sequence numbers are matched here, not by libnl.
  nl_socket_disable_seq_check(socket.get());
  errno = 0;
  if (const int status = nl_connect(socket.get(), NETLINK_XFRM); status < 0) {
    const int error_number = errno ? errno : EPROTONOSUPPORT;
    return R::failure("open XFRM netlink socket: " + std::string(nl_geterror(status)) + ": " +
                          describe_errno(error_number) +
                          (error_number == EPROTONOSUPPORT ? " (kernel lacks XFRM netlink: load module xfrm_user)" : ""),
                      error_number);
  }
  for (int group : groups) {
    if (const int status = nl_socket_add_membership(socket.get(), group); status < 0) {
      const int error_number = errno ? errno : EINVAL;
      return R::failure("join XFRM multicast group " + std::to_string(group) + ": " + nl_geterror(status),
                        error_number);
    }
  }
  const int fd = nl_socket_get_fd(socket.get());
  const int on = 1;
  // Acknowledgements of failed requests would otherwise echo the request,
  // keys included; extended ACKs carry the kernel's reason in words.
  ::setsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, &on, sizeof on);
  ::setsockopt(fd, SOL_NETLINK, NETLINK_EXT_ACK, &on, sizeof on);
  return R::success(std::move(socket));
}

XfrmChannel::XfrmChannel(NlSockPtr socket)
    : socket_(std::move(socket)), batch_(kBatchBytes), received_(kReceiveBytes) {}

Result<XfrmChannel> XfrmChannel::open() {
  auto socket = open_xfrm_socket({});
  if (!socket) return Result<XfrmChannel>::failure(socket.error(), socket.error_number());
  const int fd = nl_socket_get_fd(socket.value().get());
  XfrmChannel channel(std::move(socket.value()));
  const int size = kLargeReceiveBuffer;
  channel.window_ =
      ::setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size) == 0 ? kLargeWindow : kSmallWindow;
  timeval timeout{kAcknowledgementTimeoutSeconds, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  // Start somewhere unpredictable so stale answers of an earlier socket
  // user never match.
  channel.next_sequence_ = std::random_device{}();
  return Result<XfrmChannel>::success(std::move(channel));
}

Result<std::vector<Outcome>> XfrmChannel::exchange(std::size_t count, const Builder& build) {
  using R = Result<std::vector<Outcome>>;
  const int fd = nl_socket_get_fd(socket_.get());
  std::vector<Outcome> outcomes(count);
  std::vector<bool> awaiting(count, false);
  std::size_t outstanding = 0;
  const std::uint32_t first_sequence = next_sequence_;
  next_sequence_ += static_cast<std::uint32_t>(count);

  WipedBytes& batch = batch_;
  WipedBytes& received = received_;
  std::size_t batch_used = 0, batch_messages = 0;

  auto flush = [&]() -> Result<Unit> {
    if (batch_used == 0) return Result<Unit>::success({});
    const ssize_t sent = ::send(fd, batch.data(), batch_used, 0);
    const int error_number = errno;
    OPENSSL_cleanse(batch.data(), batch_used);
    batch_used = batch_messages = 0;
    if (sent < 0) {
      return Result<Unit>::failure("send XFRM netlink requests: " + describe_errno(error_number), error_number);
    }
    return Result<Unit>::success({});
  };

  auto receive_acknowledgements = [&]() -> Result<Unit> {
    auto received_length = receive("receive XFRM netlink acknowledgements");
    if (!received_length) return Result<Unit>::failure(received_length.error(), received_length.error_number());
    const std::size_t length = received_length.value();
    int remaining = static_cast<int>(length);
    for (auto* header = reinterpret_cast<nlmsghdr*>(received.data()); NLMSG_OK(header, remaining);
         header = NLMSG_NEXT(header, remaining)) {
      const std::size_t index = header->nlmsg_seq - first_sequence;
      if (index >= count || !awaiting[index]) continue;  // a stale answer to someone else's request
      Outcome& outcome = outcomes[index];
      if (header->nlmsg_type == NLMSG_ERROR) {
        Acknowledgement acknowledgement = read_acknowledgement(header);
        outcome.error_number = acknowledgement.error_number;
        outcome.kernel_message = std::move(acknowledgement.kernel_message);
        awaiting[index] = false;
        --outstanding;
      } else if (header->nlmsg_type != NLMSG_DONE && header->nlmsg_type != NLMSG_NOOP) {
        outcome.reply = WipedBytes(header, header->nlmsg_len);
      }
    }
    OPENSSL_cleanse(received.data(), static_cast<std::size_t>(length));
    return Result<Unit>::success({});
  };

  auto wait_until = [&](std::size_t limit) -> Result<Unit> {
    while (outstanding > limit) {
      if (auto status = receive_acknowledgements(); !status) return status;
    }
    return Result<Unit>::success({});
  };

  for (std::size_t index = 0; index < count; ++index) {
    auto request = build(index);
    if (!request) {
      outcomes[index].local_failure = request.error();
      outcomes[index].error_number = request.error_number() ? request.error_number() : EINVAL;
      continue;
    }
    nlmsghdr* header = nlmsg_hdr(request.value().get());
    header->nlmsg_seq = first_sequence + static_cast<std::uint32_t>(index);
    header->nlmsg_pid = 0;
    header->nlmsg_flags |= NLM_F_REQUEST | NLM_F_ACK;
    const std::size_t aligned = NLMSG_ALIGN(header->nlmsg_len);
    if (aligned > batch.size()) {
      outcomes[index].local_failure = "request too large for one netlink message";
      outcomes[index].error_number = EMSGSIZE;
      continue;
    }
    if (batch_used + aligned > batch.size() || batch_messages == kBatchMessages) {
      if (auto status = flush(); !status) return R::failure(status.error(), status.error_number());
    }
    std::memcpy(batch.data() + batch_used, header, header->nlmsg_len);
    std::memset(batch.data() + batch_used + header->nlmsg_len, 0, aligned - header->nlmsg_len);
    batch_used += aligned;
    ++batch_messages;
    awaiting[index] = true;
    ++outstanding;
    if (outstanding >= window_) {
      if (auto status = flush(); !status) return R::failure(status.error(), status.error_number());
      if (auto status = wait_until(window_ / 2); !status) return R::failure(status.error(), status.error_number());
    }
  }
  if (auto status = flush(); !status) return R::failure(status.error(), status.error_number());
  if (auto status = wait_until(0); !status) return R::failure(status.error(), status.error_number());
  return R::success(std::move(outcomes));
}

Result<std::size_t> XfrmChannel::receive(const char* what) {
  using R = Result<std::size_t>;
  const ssize_t length = ::recv(nl_socket_get_fd(socket_.get()), received_.data(), received_.size(), MSG_TRUNC);
  if (length < 0) {
    const int error_number = errno;
    if (error_number == EAGAIN || error_number == EWOULDBLOCK) {
      return R::failure(std::string(what) + ": no answer within " + std::to_string(kAcknowledgementTimeoutSeconds) +
                            " s",
                        ETIMEDOUT);
    }
    if (error_number == EINTR) return R::success(0);
    return R::failure(explain_failure(what, Subject::Query, error_number, {}), error_number);
  }
  if (static_cast<std::size_t>(length) > received_.size()) {
    OPENSSL_cleanse(received_.data(), received_.size());
    return R::failure(std::string(what) + ": answer larger than " + std::to_string(received_.size()) + " bytes",
                      EMSGSIZE);
  }
  return R::success(static_cast<std::size_t>(length));
}

Result<Unit> XfrmChannel::dump(NlMsgPtr request, const Visitor& each) {
  using R = Result<Unit>;
  nlmsghdr* header = nlmsg_hdr(request.get());
  const std::uint32_t sequence = next_sequence_++;
  header->nlmsg_seq = sequence;
  header->nlmsg_pid = 0;
  header->nlmsg_flags |= NLM_F_REQUEST | NLM_F_DUMP;
  if (::send(nl_socket_get_fd(socket_.get()), header, header->nlmsg_len, 0) < 0) {
    const int error_number = errno;
    return R::failure("send XFRM netlink dump request: " + describe_errno(error_number), error_number);
  }
  R first_failure = R::success({});
  for (bool done = false; !done;) {
    auto received_length = receive("receive XFRM netlink dump");
    if (!received_length) return R::failure(received_length.error(), received_length.error_number());
    int remaining = static_cast<int>(received_length.value());
    for (auto* answer = reinterpret_cast<nlmsghdr*>(received_.data()); NLMSG_OK(answer, remaining);
         answer = NLMSG_NEXT(answer, remaining)) {
      if (answer->nlmsg_seq != sequence) continue;  // a stale answer to an earlier request
      if (answer->nlmsg_type == NLMSG_DONE) {
        done = true;
        break;
      }
      if (answer->nlmsg_type == NLMSG_ERROR) {
        Acknowledgement acknowledgement = read_acknowledgement(answer);
        if (acknowledgement.error_number) {
          OPENSSL_cleanse(received_.data(), received_.size());
          return R::failure(explain_failure("XFRM netlink dump", Subject::Query, acknowledgement.error_number,
                                            acknowledgement.kernel_message),
                            acknowledgement.error_number);
        }
        continue;
      }
      if (auto visited = each(answer); !visited && first_failure) first_failure = std::move(visited);
    }
    // SA dumps carry keys.
    OPENSSL_cleanse(received_.data(), received_length.value());
  }
  return first_failure;
}

Result<Outcome> XfrmChannel::exchange_one(NlMsgPtr request) {
  auto outcomes = exchange(1, [&request](std::size_t) { return Result<NlMsgPtr>::success(std::move(request)); });
  if (!outcomes) return Result<Outcome>::failure(outcomes.error(), outcomes.error_number());
  return Result<Outcome>::success(std::move(outcomes.value().front()));
}

}  // namespace tapsec::kernel::xfrm::detail
