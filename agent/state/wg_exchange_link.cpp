#include "agent/state/wg_exchange_link.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <openssl/crypto.h>

#include "agent/core/log.h"

namespace tapsec::state {

namespace {

socklen_t to_sockaddr(const ikev2::Endpoint& endpoint, sockaddr_storage& out) {
  std::memset(&out, 0, sizeof out);
  if (endpoint.address.family == AF_INET6) {
    auto& sa = reinterpret_cast<sockaddr_in6&>(out);
    sa.sin6_family = AF_INET6;
    sa.sin6_port = htons(endpoint.port);
    std::memcpy(&sa.sin6_addr, endpoint.address.bytes.data(), 16);
    return sizeof sa;
  }
  auto& sa = reinterpret_cast<sockaddr_in&>(out);
  sa.sin_family = AF_INET;
  sa.sin_port = htons(endpoint.port);
  std::memcpy(&sa.sin_addr, endpoint.address.bytes.data(), 4);
  return sizeof sa;
}

}  // namespace

WgExchangeLink::WgExchangeLink(core::Reactor& reactor, core::UniqueFd fd, wireguard::Role role,
                               const ikev2::Endpoint& remote, Setup setup, Callbacks callbacks)
    : reactor_(reactor),
      fd_(std::move(fd)),
      role_(role),
      remote_(remote),
      setup_(std::move(setup)),
      callbacks_(std::move(callbacks)) {}

WgExchangeLink::~WgExchangeLink() {
  *alive_ = false;
  if (watch_) reactor_.unwatch(watch_);
  if (handshake_timer_) reactor_.cancel_timer(handshake_timer_);
}

std::unique_ptr<WgExchangeLink> WgExchangeLink::connect(core::Reactor& reactor, const ikev2::Endpoint& peer,
                                                        Setup setup, Callbacks callbacks, std::string* error) {
  int family = peer.address.family == AF_INET6 ? AF_INET6 : AF_INET;
  core::UniqueFd fd(::socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) {
    *error = std::string("socket: ") + std::strerror(errno);
    return nullptr;
  }
  sockaddr_storage to{};
  socklen_t length = to_sockaddr(peer, to);
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&to), length) != 0 && errno != EINPROGRESS) {
    *error = "connecting to the peer's agent at " + peer.to_string() + ": " + std::strerror(errno);
    return nullptr;
  }
  std::unique_ptr<WgExchangeLink> link(new WgExchangeLink(reactor, std::move(fd), wireguard::Role::Initiator, peer,
                                                          std::move(setup), std::move(callbacks)));
  // The client's settings are checked now, not when the connection is up.
  if (!link->start_tls(error)) return nullptr;
  link->begin(/*connecting=*/true);
  return link;
}

std::unique_ptr<WgExchangeLink> WgExchangeLink::accept(core::Reactor& reactor, core::UniqueFd fd,
                                                       const ikev2::Endpoint& remote, Setup setup,
                                                       Callbacks callbacks) {
  std::unique_ptr<WgExchangeLink> link(new WgExchangeLink(reactor, std::move(fd), wireguard::Role::Responder, remote,
                                                          std::move(setup), std::move(callbacks)));
  link->begin(/*connecting=*/false);
  return link;
}

bool WgExchangeLink::start_tls(std::string* error) {
  auto created = tls::Session::create(*setup_.settings);
  if (auto* message = std::get_if<std::string>(&created)) {
    *error = "TLS settings for the exchange: " + *message;
    return false;
  }
  session_ = std::move(std::get<std::unique_ptr<tls::Session>>(created));
  return true;
}

void WgExchangeLink::begin(bool connecting) {
  int one = 1;
  ::setsockopt(fd_.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  connecting_ = connecting;
  watch_ = reactor_.watch(fd_.get(), connecting ? POLLOUT : POLLIN,
                          [this](std::uint32_t revents) { on_ready(revents); });
  handshake_timer_ = reactor_.add_timer(setup_.limits.handshake_timeout, [this] {
    handshake_timer_ = 0;
    if (!exchange_)
      finish("not authenticated within " + std::to_string(setup_.limits.handshake_timeout.count()) + " ms",
             Ending::TimedOut);
  });
}

void WgExchangeLink::on_ready(std::uint32_t revents) {
  auto alive = alive_;
  if (connecting_) {
    int error = 0;
    socklen_t length = sizeof error;
    ::getsockopt(fd_.get(), SOL_SOCKET, SO_ERROR, &error, &length);
    if (error != 0) {
      finish("connecting to the peer's agent at " + remote_.to_string() + ": " + std::strerror(error));
      return;
    }
    connecting_ = false;
    session_->start();
    auto hello = session_->take_output();
    outbound_.insert(outbound_.end(), hello.begin(), hello.end());
    flush();
    return;
  }
  if (revents & POLLOUT) flush();
  if (*alive && !finished_ && (revents & (POLLIN | POLLERR | POLLHUP))) read_available();
}

void WgExchangeLink::read_available() {
  auto alive = alive_;
  std::uint8_t buffer[16384];
  const std::size_t cap = setup_.limits.max_buffered;
  while (*alive && !finished_) {
    // Never read more than one byte past the cap: the peer cannot make us hold more.
    std::size_t held = exchange_ ? inbound_.size() : received_unauthenticated_;
    std::size_t room = std::min(sizeof buffer, cap - std::min(cap, held) + 1);
    ssize_t n = ::recv(fd_.get(), buffer, room, MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      finish(std::string("reading from the peer's agent: ") + std::strerror(errno));
      return;
    }
    if (n == 0) {
      finish("the peer's agent closed the connection");
      return;
    }
    if (!exchange_) received_unauthenticated_ += static_cast<std::size_t>(n);
    inbound_.insert(inbound_.end(), buffer, buffer + n);
    if (exchange_ ? inbound_.size() > cap : received_unauthenticated_ > cap) {
      finish(std::string("more than ") + std::to_string(cap) + " bytes " +
                 (exchange_ ? "buffered" : "before authenticating"),
             Ending::TooMuchData);
      return;
    }
    // Whole records only; the engine takes one at a time.
    while (*alive && !finished_) {
      std::string error;
      auto length = tls::Session::complete_record_length(inbound_, &error);
      if (!length) {
        if (!error.empty()) finish("the peer's agent sent something that is not TLS: " + error);
        break;
      }
      // A responder's TLS session starts with the peer's first whole record.
      if (!session_) {
        if (!start_tls(&error)) {
          finish(error);
          return;
        }
        session_->start();
        auto output = session_->take_output();
        outbound_.insert(outbound_.end(), output.begin(), output.end());
      }
      std::vector<std::uint8_t> record(inbound_.begin(), inbound_.begin() + static_cast<std::ptrdiff_t>(*length));
      inbound_.erase(inbound_.begin(), inbound_.begin() + static_cast<std::ptrdiff_t>(*length));
      handle_record(record);
    }
  }
}

void WgExchangeLink::handle_record(std::span<const std::uint8_t> record) {
  auto status = session_->feed_record(record);
  auto output = session_->take_output();
  outbound_.insert(outbound_.end(), output.begin(), output.end());
  if (status == tls::Session::Status::Failed) {
    flush();  // the alert, if any
    finish("TLS with the peer's agent failed: " + session_->error());
    return;
  }
  if (status == tls::Session::Status::NeedPeerValidation) {
    finish("TLS with the peer's agent asked for application validation, which the exchange does not use");
    return;
  }
  if (status == tls::Session::Status::Established && !exchange_) {
    start_exchange();
    return;
  }
  if (exchange_) pump_exchange();
  flush();
}

void WgExchangeLink::start_exchange() {
  if (handshake_timer_) reactor_.cancel_timer(std::exchange(handshake_timer_, 0));
  if (callbacks_.authenticated) {
    std::string refusal = callbacks_.authenticated(*session_);
    if (!refusal.empty()) {
      session_->close_notify();
      auto output = session_->take_output();
      outbound_.insert(outbound_.end(), output.begin(), output.end());
      flush();
      finish(refusal);
      return;
    }
  }
  auto* session = session_.get();
  exchange_ = std::make_unique<wireguard::PskExchange>(
      role_, setup_.local_public, setup_.listen_port,
      [session](std::string_view label, std::span<const std::uint8_t> context) -> std::optional<wireguard::Key> {
        auto exported = session->export_keying_material(label, context, 32);
        auto* bytes = std::get_if<std::vector<std::uint8_t>>(&exported);
        if (!bytes || bytes->size() != 32) return std::nullopt;
        wireguard::Key key{};
        std::copy(bytes->begin(), bytes->end(), key.begin());
        return key;
      });
  exchange_->start();
  pump_exchange();
  flush();
}

void WgExchangeLink::pump_exchange() {
  auto alive = alive_;
  auto plaintext = session_->take_plaintext();
  if (!plaintext.empty()) exchange_->feed(plaintext);
  auto output = exchange_->take_output();
  if (!output.empty()) {
    session_->write_plaintext(output);
    auto records = session_->take_output();
    outbound_.insert(outbound_.end(), records.begin(), records.end());
  }
  for (auto& event : exchange_->take_events()) {
    if (!*alive || finished_) return;
    if (auto* hello = std::get_if<wireguard::PeerHello>(&event)) {
      if (callbacks_.hello) callbacks_.hello(*hello);
    } else if (auto* ready = std::get_if<wireguard::PskReady>(&event)) {
      if (callbacks_.psk) callbacks_.psk(ready->epoch, ready->psk);
      OPENSSL_cleanse(ready->psk.data(), ready->psk.size());
    } else if (auto* failed = std::get_if<wireguard::ExchangeFailed>(&event)) {
      flush();
      finish("the PSK exchange failed: " + failed->reason);
      return;
    }
  }
  if (*alive && !finished_ && session_->peer_closed()) finish("the peer's agent ended the session");
}

bool WgExchangeLink::rotate() {
  if (!exchange_ || finished_ || !exchange_->rotate()) return false;
  pump_exchange();
  flush();
  return true;
}

std::string WgExchangeLink::peer_identity() const { return session_ ? session_->info().peer_identity : ""; }

void WgExchangeLink::flush() {
  while (!outbound_.empty() && !finished_) {
    ssize_t n = ::send(fd_.get(), outbound_.data(), outbound_.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      finish(std::string("writing to the peer's agent: ") + std::strerror(errno));
      return;
    }
    outbound_.erase(outbound_.begin(), outbound_.begin() + n);
  }
  if (watch_ && !connecting_) reactor_.modify(watch_, outbound_.empty() ? POLLIN : (POLLIN | POLLOUT));
}

void WgExchangeLink::finish(const std::string& reason, Ending ending) {
  if (finished_) return;
  finished_ = true;
  if (watch_) reactor_.unwatch(std::exchange(watch_, 0));
  if (handshake_timer_) reactor_.cancel_timer(std::exchange(handshake_timer_, 0));
  ::shutdown(fd_.get(), SHUT_RDWR);
  // Reported from the loop so the owner may destroy this link in the callback.
  auto alive = alive_;
  reactor_.post([this, alive, reason, ending] {
    if (*alive && callbacks_.closed) callbacks_.closed(ending, reason);
  });
}

}  // namespace tapsec::state
