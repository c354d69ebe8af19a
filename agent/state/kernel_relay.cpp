#include "agent/state/kernel_relay.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <utility>

#include "agent/core/log.h"
#include "agent/kernel/ktls.h"

namespace tapsec::state {
namespace {

// One splice moves at most this much; a pipe holds 64 KiB by default.
constexpr std::size_t kChunk = 65536;
// The peer's decrypted data on its way to the application: four full
// records per recvmsg.
constexpr std::size_t kInboundBuffer = 4 * 16384;
// Rounds of splicing per wake-up, so one busy connection cannot hold the
// event loop.
constexpr int kRoundsPerWake = 16;
// How long a terminated relay waits for the peer's close_notify.
constexpr std::chrono::seconds kLinger{5};
bool would_block(int error) { return error == EAGAIN || error == EWOULDBLOCK; }

// Whether the application closed its end altogether (not just its sending side).
bool hung_up(int fd) {
  pollfd p{fd, POLLOUT, 0};
  return ::poll(&p, 1, 0) == 1 && (p.revents & (POLLHUP | POLLERR));
}

}  // namespace

std::unique_ptr<KernelRelay> KernelRelay::create(core::Reactor& reactor, core::UniqueFd tcp,
                                                 std::unique_ptr<tls::Session> session, Options options,
                                                 Closed closed, std::string* error) {
  int pair[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) {
    *error = std::string("socketpair: ") + std::strerror(errno);
    return nullptr;
  }
  core::UniqueFd local(pair[0]), application(pair[1]);
  int ends[2];
  if (::pipe2(ends, O_CLOEXEC | O_NONBLOCK) != 0) {
    *error = std::string("pipe2: ") + std::strerror(errno);
    return nullptr;
  }
  core::UniqueFd outbound_read(ends[0]), outbound_write(ends[1]);
  for (int fd : {tcp.get(), local.get()}) {
    const int flags = ::fcntl(fd, F_GETFL);
    if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) {
      *error = std::string("fcntl O_NONBLOCK: ") + std::strerror(errno);
      return nullptr;
    }
  }
  session->hand_reads_to_kernel();
  return std::unique_ptr<KernelRelay>(new KernelRelay(reactor, std::move(tcp), std::move(local),
                                                      std::move(application), std::move(outbound_read),
                                                      std::move(outbound_write), std::move(session), options,
                                                      std::move(closed)));
}

KernelRelay::KernelRelay(core::Reactor& reactor, core::UniqueFd tcp, core::UniqueFd local, core::UniqueFd application,
                         core::UniqueFd outbound_read, core::UniqueFd outbound_write,
                         std::unique_ptr<tls::Session> session, Options options, Closed closed)
    : reactor_(reactor),
      tcp_(std::move(tcp)),
      local_(std::move(local)),
      application_fd_(std::move(application)),
      outbound_read_(std::move(outbound_read)),
      outbound_write_(std::move(outbound_write)),
      inbound_(kInboundBuffer),
      session_(std::move(session)),
      options_(options),
      closed_(std::move(closed)) {}

KernelRelay::~KernelRelay() {
  if (linger_timer_) reactor_.cancel_timer(linger_timer_);
  if (tcp_watch_) reactor_.unwatch(tcp_watch_);
  if (local_watch_) reactor_.unwatch(local_watch_);
}

void KernelRelay::start() {
  tcp_watch_ = reactor_.watch(tcp_.get(), POLLIN, [this](std::uint32_t) { on_event(); });
  local_watch_ = reactor_.watch(local_.get(), POLLIN, [this](std::uint32_t) { on_event(); });
  // Records that arrived right behind the handshake are already waiting.
  on_event();
}

void KernelRelay::on_event() {
  if (closed_once_) return;
  pump();
}

void KernelRelay::pump() {
  for (int round = 0; round < kRoundsPerWake && !closed_once_; ++round) {
    bool moved = false;

    // Peer -> application. One recvmsg takes as many data records as the
    // buffer holds (splice would take one), and stops at a record that is
    // not data, which it returns alone with its type.
    if (inbound_queued() > 0 && terminating_) {
      // Terminated: what the peer still sends is dropped.
      inbound_begin_ = inbound_end_ = 0;
      moved = true;
    } else if (inbound_queued() > 0) {
      ssize_t n = ::send(local_.get(), inbound_.data() + inbound_begin_, inbound_queued(), MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n > 0) {
        inbound_begin_ += static_cast<std::size_t>(n);
        if (inbound_begin_ == inbound_end_) inbound_begin_ = inbound_end_ = 0;
        moved = true;
      } else if (n < 0 && errno != EINTR && !would_block(errno)) {
        // The application closed its end: tell the peer properly.
        finish_sending();
        return close("the application closed its socket");
      }
    }
    if (inbound_queued() == 0 && !peer_done_) {
      auto record = kernel::recv_installed(tcp_.get(), inbound_, MSG_DONTWAIT);
      if (!record) {
        if (record.error_number() != EINTR && !would_block(record.error_number()))
          return close("receiving from the peer failed: " + record.error());
      } else if (record.value().content_type == 0 && record.value().length == 0) {
        peer_done_ = true;
        if (peer_end_.empty()) peer_end_ = "the peer closed TCP without close_notify";
        moved = true;
      } else if (record.value().content_type == kernel::content_type::application_data) {
        inbound_end_ = record.value().length;
        bytes_received_ += record.value().length;
        moved = true;
      } else {
        if (!take_control_record(record.value().content_type,
                                 std::span<const std::uint8_t>(inbound_.data(), record.value().length)))
          return;
        moved = true;
      }
    }
    if (peer_done_ && inbound_queued() == 0 && !terminating_) ::shutdown(local_.get(), SHUT_WR);

    // Application -> peer. The kernel encrypts what it takes from the pipe.
    if (outbound_queued_ > 0) {
      ssize_t n = ::splice(outbound_read_.get(), nullptr, tcp_.get(), nullptr, outbound_queued_,
                           SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
      if (n > 0) {
        outbound_queued_ -= static_cast<std::size_t>(n);
        bytes_sent_ += static_cast<std::uint64_t>(n);
        moved = true;
      } else if (n < 0 && errno != EINTR && !would_block(errno)) {
        return close(std::string("sending to the peer failed: ") + std::strerror(errno));
      }
    }
    if (outbound_queued_ == 0 && !application_done_) {
      ssize_t n = ::splice(local_.get(), nullptr, outbound_write_.get(), nullptr, kChunk,
                           SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
      if (n > 0) {
        outbound_queued_ = static_cast<std::size_t>(n);
        moved = true;
      } else if (n == 0 || (n < 0 && errno != EINTR && !would_block(errno))) {
        application_done_ = true;
        moved = true;
      }
    }
    if (application_done_ && outbound_queued_ == 0) finish_sending();
    if (!moved) break;
  }
  if (closed_once_) return;
  if (terminating_ && sent_close_ && !linger_timer_) {
    linger_timer_ = reactor_.add_timer(kLinger, [this] {
      linger_timer_ = 0;
      close("terminated on request");
    });
  }
  // Both sides done comes first: an application that closes as soon as it
  // read the end must not hide why the peer ended (a KeyUpdate 6.1 cannot
  // follow, an alert).
  if (peer_done_ && application_done_ && inbound_queued() == 0 && outbound_queued_ == 0 && sent_close_)
    return close(terminating_ ? "terminated on request" : peer_end_.empty() ? "closed by both sides" : peer_end_);
  if (application_done_ && sent_close_ && !terminating_ && hung_up(local_.get()))
    return close("the application closed its socket");
  update_interest();
}

bool KernelRelay::take_control_record(std::uint8_t content_type, std::span<const std::uint8_t> content) {
  switch (content_type) {
    case kernel::content_type::alert:
      peer_done_ = true;
      if (content.size() == 2 && content[1] == 0) {
        peer_end_ = "the peer sent close_notify";
      } else {
        peer_end_ = content.size() == 2 ? "the peer sent alert " + std::to_string(content[1])
                                        : "the peer sent a malformed alert";
        // A fatal alert: nothing more comes; what the application wrote
        // after it cannot be delivered.
        application_done_ = true;
        sent_close_ = true;
        ::shutdown(tcp_.get(), SHUT_RDWR);
      }
      return true;
    case kernel::content_type::handshake:
      post_handshake_.add(content);
      return handle_handshake_messages();
    default:
      close("the peer sent a record of type " + std::to_string(content_type));
      return false;
  }
}

bool KernelRelay::handle_handshake_messages() {
  using Messages = tls::PostHandshakeMessages;
  for (;;) {
    auto next = post_handshake_.next();
    if (auto* error = std::get_if<std::string>(&next)) {
      close(*error);
      return false;
    }
    auto* message = std::get_if<Messages::Message>(&next);
    if (message == nullptr) return true;  // the rest comes in the next record
    if (message->type == Messages::kNewSessionTicket) {
      if (session_->absorb_post_handshake(message->bytes) == tls::Session::Status::Failed) {
        close("a NewSessionTicket from the peer was refused: " + session_->error());
        return false;
      }
      ++tickets_received_;
    } else if (message->type == Messages::kKeyUpdate) {
      const auto update = Messages::parse_key_update(message->bytes);
      if (!update || post_handshake_.partial()) {
        close("the peer sent a malformed KeyUpdate");
        return false;
      }
      if (!options_.rx_rekey) {
        // The kernel cannot take a second receive key: the records behind
        // this one cannot be read. What came before has been delivered.
        peer_done_ = true;
        peer_end_ = "the peer updated its keys (KeyUpdate), and this kernel cannot install a new kTLS receive key";
        application_done_ = true;
        finish_sending();
        return true;
      }
      session_->advance_rx_keys();
      if (auto error = kernel::install_rx(tcp_.get(), session_->rx_keys())) {
        close("installing the peer's next receive key failed: " + *error);
        return false;
      }
      ++peer_key_updates_;
      core::log::debug("followed the peer's key update", {{"answer", update->update_requested ? "yes" : "no"}});
      if (update->update_requested) {
        if (auto error = update_keys(false)) {
          close("answering the peer's KeyUpdate failed: " + *error);
          return false;
        }
      }
    } else if (message->type == Messages::kHelloRequest && session_->version() == tls::Version::Tls12) {
      // Renegotiation is off: a HelloRequest may be ignored (RFC 5246 §7.4.1.1).
    } else {
      close("the peer sent post-handshake message " + std::to_string(message->type) + ", which tapsec does not take");
      return false;
    }
  }
}

std::optional<std::string> KernelRelay::flush_outbound() {
  while (outbound_queued_ > 0) {
    ssize_t n = ::splice(outbound_read_.get(), nullptr, tcp_.get(), nullptr, outbound_queued_, SPLICE_F_NONBLOCK);
    if (n > 0) {
      outbound_queued_ -= static_cast<std::size_t>(n);
      bytes_sent_ += static_cast<std::uint64_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && would_block(errno)) {
      pollfd p{tcp_.get(), POLLOUT, 0};
      if (::poll(&p, 1, 1000) == 1) continue;
      return std::string("the peer takes no data");
    }
    return std::string("sending queued data failed: ") + std::strerror(errno);
  }
  return std::nullopt;
}

std::optional<std::string> KernelRelay::update_keys(bool request_peer) {
  if (closed_once_ || sent_close_) return "the connection is closing";
  if (!options_.tx_rekey) return "this kernel cannot replace the kTLS send key";
  if (request_peer && !options_.rx_rekey) return "this kernel cannot install the peer's next receive key";
  // What the application wrote goes out under the current key first.
  if (auto error = flush_outbound()) return error;
  auto message = session_->key_update_message(request_peer);
  if (message.empty()) return std::string("no KeyUpdate for this session");
  if (auto sent = kernel::send_record(tcp_.get(), kernel::content_type::handshake, message); !sent)
    return "sending KeyUpdate failed: " + sent.error();
  if (auto error = kernel::install_tx(tcp_.get(), session_->tx_keys())) return "installing the next send key failed: " + *error;
  return std::nullopt;
}

void KernelRelay::finish_sending() {
  if (sent_close_) return;
  sent_close_ = true;
  kernel::send_record(tcp_.get(), kernel::content_type::alert, kernel::close_notify_alert, MSG_DONTWAIT);
  ::shutdown(tcp_.get(), SHUT_WR);
}

void KernelRelay::terminate() {
  if (closed_once_ || terminating_) return;
  terminating_ = true;
  // What the application wrote before this call is delivered first, as on
  // a TCP close; then close_notify. The application sees the end now.
  for (;;) {
    if (outbound_queued_ == 0) {
      ssize_t n = ::splice(local_.get(), nullptr, outbound_write_.get(), nullptr, kChunk, SPLICE_F_NONBLOCK);
      if (n <= 0) break;
      outbound_queued_ = static_cast<std::size_t>(n);
    }
    if (flush_outbound()) break;
  }
  application_done_ = true;
  ::shutdown(local_.get(), SHUT_RDWR);
  finish_sending();
  pump();
}

void KernelRelay::update_interest() {
  if (closed_once_) return;
  std::uint32_t tcp_events = 0, local_events = 0;
  if (!peer_done_ && (inbound_queued() == 0 || terminating_)) tcp_events |= POLLIN;
  if (outbound_queued_ > 0) tcp_events |= POLLOUT;
  if (!application_done_ && outbound_queued_ == 0) local_events |= POLLIN;
  if (inbound_queued() > 0 && !terminating_) local_events |= POLLOUT;
  reactor_.modify(tcp_watch_, tcp_events);
  reactor_.modify(local_watch_, local_events);
}

void KernelRelay::close(const std::string& reason) {
  if (closed_once_) return;
  closed_once_ = true;
  if (tcp_watch_) reactor_.unwatch(std::exchange(tcp_watch_, 0));
  if (local_watch_) reactor_.unwatch(std::exchange(local_watch_, 0));
  if (linger_timer_) reactor_.cancel_timer(std::exchange(linger_timer_, 0));
  auto closed = std::move(closed_);
  if (closed) closed(reason);  // may destroy this
}

}  // namespace tapsec::state
