#include "agent/state/userspace_channel.h"

#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <chrono>
#include <cstring>

namespace tapsec::state {
namespace {

constexpr std::size_t kChunk = 16384;
// Stop reading a side while this much is queued for the other: bounded memory.
constexpr std::size_t kHighWater = 1 << 20;
// How long a terminated channel waits for the peer to close its side.
constexpr std::chrono::seconds kLinger{5};

}  // namespace

std::unique_ptr<UserspaceChannel> UserspaceChannel::create(core::Reactor& reactor, core::UniqueFd tcp,
                                                           std::unique_ptr<tls::Session> session, Closed closed,
                                                           std::string* error) {
  int pair[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) {
    *error = std::string("socketpair: ") + std::strerror(errno);
    return nullptr;
  }
  return std::unique_ptr<UserspaceChannel>(new UserspaceChannel(reactor, std::move(tcp), core::UniqueFd(pair[0]),
                                                                core::UniqueFd(pair[1]), std::move(session),
                                                                std::move(closed)));
}

UserspaceChannel::UserspaceChannel(core::Reactor& reactor, core::UniqueFd tcp, core::UniqueFd local,
                                   core::UniqueFd application, std::unique_ptr<tls::Session> session, Closed closed)
    : reactor_(reactor),
      tcp_(std::move(tcp)),
      local_(std::move(local)),
      application_fd_(std::move(application)),
      session_(std::move(session)),
      closed_(std::move(closed)) {}

UserspaceChannel::~UserspaceChannel() {
  if (linger_timer_) reactor_.cancel_timer(linger_timer_);
  if (tcp_watch_) reactor_.unwatch(tcp_watch_);
  if (local_watch_) reactor_.unwatch(local_watch_);
}

void UserspaceChannel::start() {
  tcp_watch_ = reactor_.watch(tcp_.get(), POLLIN, [this](std::uint32_t ev) { on_tcp(ev); });
  local_watch_ = reactor_.watch(local_.get(), POLLIN, [this](std::uint32_t ev) { on_local(ev); });
  // Records that arrived right behind the handshake are already waiting.
  on_tcp(POLLIN);
}

bool UserspaceChannel::write_out(int fd, std::vector<std::uint8_t>& buffer) {
  while (!buffer.empty()) {
    ssize_t n = ::send(fd, buffer.data(), buffer.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return true;
      return false;
    }
    buffer.erase(buffer.begin(), buffer.begin() + n);
  }
  return true;
}

void UserspaceChannel::pump() {
  auto out = session_->take_output();
  to_tcp_.insert(to_tcp_.end(), out.begin(), out.end());
  if (!write_out(tcp_.get(), to_tcp_)) {
    close(std::string("sending to the peer failed: ") + std::strerror(errno));
    return;
  }
  if (!terminating_ && !write_out(local_.get(), to_local_)) {
    // The application went away; tell the peer properly.
    session_->close_notify();
    auto alert = session_->take_output();
    ::send(tcp_.get(), alert.data(), alert.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    close("the application closed its socket");
    return;
  }
  if (peer_done_ && to_local_.empty()) ::shutdown(local_.get(), SHUT_WR);
  if (application_done_ && to_tcp_.empty()) ::shutdown(tcp_.get(), SHUT_WR);
  if (terminating_ && to_tcp_.empty() && !linger_timer_) {
    // Closing with unread input would reset the connection and drop what
    // is still queued to send: half-close, then drain the peer's last
    // words (its close_notify) until it closes too, for a bounded time.
    ::shutdown(tcp_.get(), SHUT_WR);
    linger_timer_ = reactor_.add_timer(kLinger, [this] {
      linger_timer_ = 0;
      close("terminated on request");
    });
  }
  if (peer_done_ && application_done_ && to_tcp_.empty() && to_local_.empty()) {
    close("closed by both sides");
    return;
  }
  update_interest();
}

void UserspaceChannel::update_interest() {
  if (closed_once_) return;
  std::uint32_t tcp_events = 0, local_events = 0;
  if (linger_timer_ || (!peer_done_ && to_local_.size() < kHighWater)) tcp_events |= POLLIN;
  if (!to_tcp_.empty()) tcp_events |= POLLOUT;
  if (!application_done_ && to_tcp_.size() < kHighWater) local_events |= POLLIN;
  if (!to_local_.empty()) local_events |= POLLOUT;
  reactor_.modify(tcp_watch_, tcp_events);
  reactor_.modify(local_watch_, local_events);
}

void UserspaceChannel::on_tcp(std::uint32_t revents) {
  if (closed_once_) return;
  if (terminating_) {
    std::uint8_t discard[kChunk];
    ssize_t n = ::recv(tcp_.get(), discard, sizeof(discard), MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
      close("terminated on request");
      return;
    }
    pump();
    return;
  }
  if ((revents & (POLLIN | POLLHUP | POLLERR)) && !peer_done_) {
    std::uint8_t buffer[kChunk];
    ssize_t n = ::recv(tcp_.get(), buffer, sizeof(buffer), MSG_DONTWAIT);
    if (n > 0) {
      auto status = session_->feed_ciphertext(std::span<const std::uint8_t>(buffer, static_cast<std::size_t>(n)));
      auto plain = session_->take_plaintext();
      bytes_received_ += plain.size();
      to_local_.insert(to_local_.end(), plain.begin(), plain.end());
      if (status == tls::Session::Status::Failed) {
        pump();
        close("TLS error from the peer: " + session_->error());
        return;
      }
      if (session_->peer_closed()) peer_done_ = true;
    } else if (n == 0) {
      peer_done_ = true;
    } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      close(std::string("receiving from the peer failed: ") + std::strerror(errno));
      return;
    }
  }
  pump();
}

void UserspaceChannel::on_local(std::uint32_t revents) {
  if (closed_once_) return;
  if ((revents & (POLLIN | POLLHUP | POLLERR)) && !application_done_) {
    std::uint8_t buffer[kChunk];
    ssize_t n = ::recv(local_.get(), buffer, sizeof(buffer), MSG_DONTWAIT);
    if (n > 0) {
      session_->write_plaintext(std::span<const std::uint8_t>(buffer, static_cast<std::size_t>(n)));
      bytes_sent_ += static_cast<std::uint64_t>(n);
    } else if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
      application_done_ = true;
      session_->close_notify();
    }
  }
  pump();
}

void UserspaceChannel::update_keys(bool request_peer) {
  session_->update_keys(request_peer);
  pump();
}

void UserspaceChannel::terminate() {
  if (closed_once_ || terminating_) return;
  terminating_ = true;
  // What the application wrote before this call is delivered first, as
  // on a TCP close; then close_notify, and the end once all is sent.
  std::uint8_t buffer[kChunk];
  for (;;) {
    ssize_t n = ::recv(local_.get(), buffer, sizeof(buffer), MSG_DONTWAIT);
    if (n <= 0) break;
    session_->write_plaintext(std::span<const std::uint8_t>(buffer, static_cast<std::size_t>(n)));
    bytes_sent_ += static_cast<std::uint64_t>(n);
  }
  session_->close_notify();
  application_done_ = true;
  ::shutdown(local_.get(), SHUT_RDWR);  // the application sees the end now
  to_local_.clear();
  pump();
}

void UserspaceChannel::close(const std::string& reason) {
  if (closed_once_) return;
  closed_once_ = true;
  if (tcp_watch_) reactor_.unwatch(std::exchange(tcp_watch_, 0));
  if (local_watch_) reactor_.unwatch(std::exchange(local_watch_, 0));
  if (linger_timer_) reactor_.cancel_timer(std::exchange(linger_timer_, 0));
  auto closed = std::move(closed_);
  if (closed) closed(reason);  // may destroy this
}

}  // namespace tapsec::state
