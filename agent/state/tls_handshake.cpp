#include "agent/state/tls_handshake.h"

#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "agent/core/log.h"

namespace tapsec::state {
namespace {

constexpr std::size_t kRecordHeader = 5;
constexpr std::size_t kMaxRecord = kRecordHeader + 16384 + 256;
constexpr const char* kHandshakeFailed = "org.tapsec1.Error.HandshakeFailed";
constexpr std::uint8_t kContentHandshake = 22;

}  // namespace

TlsHandshake::TlsHandshake(core::Reactor& reactor, int fd, std::unique_ptr<tls::Session> session,
                           Options options, Validate validate, Done done)
    : reactor_(reactor),
      fd_(fd),
      session_(std::move(session)),
      options_(options),
      validate_(std::move(validate)),
      done_(std::move(done)),
      peek_buffer_(kMaxRecord) {}

TlsHandshake::~TlsHandshake() {
  *alive_ = false;
  if (watch_) reactor_.unwatch(watch_);
  if (timeout_timer_) reactor_.cancel_timer(timeout_timer_);
  if (ticket_timer_) reactor_.cancel_timer(ticket_timer_);
}

void TlsHandshake::start() {
  socklen_t len = sizeof(original_lowat_);
  if (::getsockopt(fd_, SOL_SOCKET, SO_RCVLOWAT, &original_lowat_, &len) != 0) original_lowat_ = 1;
  watch_ = reactor_.watch(fd_, POLLIN, [this](std::uint32_t revents) { on_io(revents); });
  timeout_timer_ = reactor_.add_timer(options_.timeout, [this] {
    timeout_timer_ = 0;
    fail("org.tapsec1.Error.Timeout",
         "the TLS handshake did not finish within " + std::to_string(options_.timeout.count()) + " ms");
  });
  auto status = session_->start();
  if (!flush_output()) return;
  first_flight_sent_ = std::chrono::steady_clock::now();
  handle_status(status);
}

void TlsHandshake::on_io(std::uint32_t revents) {
  if (revents & POLLOUT) {
    if (!flush_output()) return;
    if (phase_ == Phase::Flushing && pending_output_.empty()) {
      finish(nullptr);
      return;
    }
  }
  if (revents & (POLLIN | POLLERR | POLLHUP)) {
    if (phase_ == Phase::Handshake || phase_ == Phase::Tickets) read_records();
  }
}

void TlsHandshake::set_low_watermark(int bytes) {
  // Without this a partial record would keep the socket readable and the
  // loop spinning on MSG_PEEK; TCP honours SO_RCVLOWAT in poll.
  ::setsockopt(fd_, SOL_SOCKET, SO_RCVLOWAT, &bytes, sizeof(bytes));
}

void TlsHandshake::read_records() {
  auto alive = alive_;
  while (*alive && (phase_ == Phase::Handshake || phase_ == Phase::Tickets)) {
    ssize_t n = ::recv(fd_, peek_buffer_.data(), peek_buffer_.size(), MSG_PEEK | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      fail(kHandshakeFailed, std::string("reading from the socket failed: ") + std::strerror(errno));
      return;
    }
    if (n == 0) {
      if (phase_ == Phase::Tickets) {
        finish(nullptr);  // the peer closed after the handshake: the application will see EOF
      } else {
        fail(kHandshakeFailed, "the peer closed the connection during the TLS handshake");
      }
      return;
    }
    std::span<const std::uint8_t> buffered(peek_buffer_.data(), static_cast<std::size_t>(n));
    std::string error;
    auto record_length = tls::Session::complete_record_length(buffered, &error);
    if (!record_length) {
      if (!error.empty()) {
        if (phase_ == Phase::Tickets) {
          finish(nullptr);  // not ours to judge: the kernel record layer will
        } else {
          fail(kHandshakeFailed, "the peer sent data that is not TLS: " + error);
        }
        return;
      }
      if (buffered.size() >= kRecordHeader) {
        set_low_watermark(static_cast<int>(kRecordHeader + (std::size_t(buffered[3]) << 8 | buffered[4])));
      } else {
        set_low_watermark(static_cast<int>(kRecordHeader));
      }
      return;
    }
    set_low_watermark(1);
    auto record = buffered.first(*record_length);

    if (phase_ == Phase::Tickets) {
      // Only NewSessionTicket (handshake) records are ours; anything else
      // stays in the socket for the kernel.
      auto inner = session_->inner_content_type(record);
      if (!inner || *inner != kContentHandshake) {
        finish(nullptr);
        return;
      }
    }

    ssize_t taken = ::recv(fd_, peek_buffer_.data(), *record_length, MSG_DONTWAIT);
    if (taken != static_cast<ssize_t>(*record_length)) {
      fail(kHandshakeFailed, "short read of a record that was already buffered");
      return;
    }
    if (!round_trip_measured_) {
      round_trip_ = std::chrono::steady_clock::now() - first_flight_sent_;
      round_trip_measured_ = true;
    }
    auto status = session_->feed_record(std::span<const std::uint8_t>(peek_buffer_.data(), *record_length));
    if (!flush_output()) return;
    if (phase_ == Phase::Tickets) {
      if (status == tls::Session::Status::Failed) {
        fail(kHandshakeFailed, "processing a post-handshake record failed: " + session_->error());
        return;
      }
      continue;
    }
    handle_status(status);
  }
}

bool TlsHandshake::flush_output() {
  auto output = session_->take_output();
  pending_output_.insert(pending_output_.end(), output.begin(), output.end());
  while (!pending_output_.empty()) {
    ssize_t n = ::send(fd_, pending_output_.data(), pending_output_.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      fail(kHandshakeFailed, std::string("writing to the socket failed: ") + std::strerror(errno));
      return false;
    }
    pending_output_.erase(pending_output_.begin(), pending_output_.begin() + n);
  }
  if (watch_) reactor_.modify(watch_, pending_output_.empty() ? POLLIN : (POLLIN | POLLOUT));
  return true;
}

void TlsHandshake::handle_status(tls::Session::Status status) {
  using Status = tls::Session::Status;
  switch (status) {
    case Status::WantRecord:
      return;
    case Status::NeedPeerValidation: {
      if (!validate_) {
        fail("org.tapsec1.Error.PeerNotValidated", "the engine asked for application validation but no validator was named");
        return;
      }
      phase_ = Phase::Validating;
      std::weak_ptr<bool> alive = alive_;
      validate_(session_->peer_chain_der(), [this, alive](bool accept, std::string reason) {
        auto still = alive.lock();
        if (!still || !*still || phase_ != Phase::Validating) return;
        phase_ = Phase::Handshake;
        auto next = session_->resolve_peer_validation(accept, reason);
        if (!flush_output()) return;
        if (!accept) {
          fail("org.tapsec1.Error.PeerNotValidated", "the application's validator rejected the peer: " + reason);
          return;
        }
        handle_status(next);
        if (*still && phase_ == Phase::Handshake) read_records();
      });
      return;
    }
    case Status::Established:
      if (options_.is_client && options_.drain_tickets && session_->info().version == "TLSv1.3") {
        enter_ticket_window();
      } else {
        finish_after_flush();
      }
      return;
    case Status::Failed: {
      std::string error = session_->error();
      bool validation = session_->peer_validation_failed();
      fail(validation ? "org.tapsec1.Error.PeerNotValidated" : kHandshakeFailed, error);
      return;
    }
  }
}

void TlsHandshake::enter_ticket_window() {
  // A TLS 1.3 server sends its tickets as soon as it has our Finished, one
  // round trip from now. The round trip measured during the handshake
  // includes the server's own handshake work, so it also stands for how
  // quickly this server answers. Wait three of those, bounded both ways.
  // (Ending early once some tickets arrived is wrong: servers may write
  // each ticket separately, and a late one would reach the application.)
  using namespace std::chrono;
  auto rtt = round_trip_measured_ ? duration_cast<microseconds>(round_trip_) : microseconds(10000);
  auto window = std::clamp(3 * rtt + microseconds(2000), microseconds(3000), microseconds(200000));
  phase_ = Phase::Tickets;
  ticket_timer_ = reactor_.add_timer(window, [this] {
    ticket_timer_ = 0;
    // Tickets may already sit in the socket while their readiness is still
    // unreported (the reactor fires due timers after one pass of completions,
    // and on loopback the server may have answered within that pass). Take
    // them now: once the kernel owns the receive side, a ticket left behind
    // reaches the application as EIO.
    auto alive = alive_;
    read_records();
    if (*alive && phase_ == Phase::Tickets) finish_after_flush();
  });
  read_records();
}

void TlsHandshake::finish_after_flush() {
  if (pending_output_.empty()) {
    finish(nullptr);
    return;
  }
  phase_ = Phase::Flushing;
}

void TlsHandshake::fail(std::string error_name, std::string message) {
  HandshakeFailure failure{std::move(error_name), std::move(message)};
  finish(&failure);
}

void TlsHandshake::finish(const HandshakeFailure* failure) {
  if (phase_ == Phase::Done) return;
  phase_ = Phase::Done;
  if (watch_) reactor_.unwatch(std::exchange(watch_, 0));
  if (timeout_timer_) reactor_.cancel_timer(std::exchange(timeout_timer_, 0));
  if (ticket_timer_) reactor_.cancel_timer(std::exchange(ticket_timer_, 0));
  set_low_watermark(original_lowat_);
  auto done = std::move(done_);
  if (done) done(failure);
}

}  // namespace tapsec::state
