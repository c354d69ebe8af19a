#include "agent/state/wg_exchange_link.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>

#include <openssl/crypto.h>

#include "agent/core/log.h"

namespace tapsec::state {

namespace {

constexpr auto kHandshakeTimeout = std::chrono::seconds(15);
constexpr std::size_t kRecordHeader = 5;
constexpr std::size_t kMaxBuffered = 64 * 1024;  // the exchange's frames are tiny

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

ikev2::Endpoint peer_of(int fd) {
  sockaddr_storage sa{};
  socklen_t length = sizeof sa;
  ikev2::Endpoint endpoint;
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&sa), &length) != 0) return endpoint;
  if (sa.ss_family == AF_INET6) {
    const auto& in6 = reinterpret_cast<const sockaddr_in6&>(sa);
    endpoint.address.family = AF_INET6;
    std::memcpy(endpoint.address.bytes.data(), &in6.sin6_addr, 16);
    endpoint.port = ntohs(in6.sin6_port);
  } else if (sa.ss_family == AF_INET) {
    const auto& in4 = reinterpret_cast<const sockaddr_in&>(sa);
    endpoint.address.family = AF_INET;
    std::memcpy(endpoint.address.bytes.data(), &in4.sin_addr, 4);
    endpoint.port = ntohs(in4.sin_port);
  }
  return endpoint;
}

}  // namespace

WgExchangeLink::WgExchangeLink(core::Reactor& reactor, core::UniqueFd fd, wireguard::Role role,
                               const wireguard::Key& local_public, std::uint16_t listen_port, Callbacks callbacks)
    : reactor_(reactor),
      fd_(std::move(fd)),
      role_(role),
      local_public_(local_public),
      listen_port_(listen_port),
      callbacks_(std::move(callbacks)) {}

WgExchangeLink::~WgExchangeLink() {
  *alive_ = false;
  if (watch_) reactor_.unwatch(watch_);
  if (handshake_timer_) reactor_.cancel_timer(handshake_timer_);
}

std::unique_ptr<WgExchangeLink> WgExchangeLink::connect(core::Reactor& reactor, const ikev2::Endpoint& peer,
                                                        const tls::Settings& settings,
                                                        const wireguard::Key& local_public, std::uint16_t listen_port,
                                                        Callbacks callbacks, std::string* error) {
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
  std::unique_ptr<WgExchangeLink> link(new WgExchangeLink(reactor, std::move(fd), wireguard::Role::Initiator,
                                                          local_public, listen_port, std::move(callbacks)));
  link->remote_ = peer;
  if (!link->begin(settings, /*connecting=*/true, error)) return nullptr;
  return link;
}

std::unique_ptr<WgExchangeLink> WgExchangeLink::accept(core::Reactor& reactor, core::UniqueFd fd,
                                                       const tls::Settings& settings,
                                                       const wireguard::Key& local_public, std::uint16_t listen_port,
                                                       Callbacks callbacks, std::string* error) {
  ikev2::Endpoint remote = peer_of(fd.get());
  std::unique_ptr<WgExchangeLink> link(new WgExchangeLink(reactor, std::move(fd), wireguard::Role::Responder,
                                                          local_public, listen_port, std::move(callbacks)));
  link->remote_ = remote;
  if (!link->begin(settings, /*connecting=*/false, error)) return nullptr;
  return link;
}

bool WgExchangeLink::begin(const tls::Settings& settings, bool connecting, std::string* error) {
  auto created = tls::Session::create(settings);
  if (auto* message = std::get_if<std::string>(&created)) {
    *error = "TLS settings for the exchange: " + *message;
    return false;
  }
  session_ = std::move(std::get<std::unique_ptr<tls::Session>>(created));
  int one = 1;
  ::setsockopt(fd_.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  connecting_ = connecting;
  if (!connecting) {
    session_->start();
    outbound_ = session_->take_output();
  }
  watch_ = reactor_.watch(fd_.get(), connecting ? POLLOUT : POLLIN,
                          [this](std::uint32_t revents) { on_ready(revents); });
  handshake_timer_ = reactor_.add_timer(kHandshakeTimeout, [this] {
    handshake_timer_ = 0;
    if (!exchange_) finish("no TLS handshake with the peer's agent within 15 s");
  });
  return true;
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
  while (*alive && !finished_) {
    ssize_t n = ::recv(fd_.get(), buffer, sizeof buffer, MSG_DONTWAIT);
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
    inbound_.insert(inbound_.end(), buffer, buffer + n);
    if (inbound_.size() > kMaxBuffered) {
      finish("the peer's agent sent more than the exchange can hold");
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
      role_, local_public_, listen_port_,
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

void WgExchangeLink::finish(const std::string& reason) {
  if (finished_) return;
  finished_ = true;
  if (watch_) reactor_.unwatch(std::exchange(watch_, 0));
  if (handshake_timer_) reactor_.cancel_timer(std::exchange(handshake_timer_, 0));
  ::shutdown(fd_.get(), SHUT_RDWR);
  // Reported from the loop so the owner may destroy this link in the callback.
  auto alive = alive_;
  reactor_.post([this, alive, reason] {
    if (*alive && callbacks_.closed) callbacks_.closed(reason);
  });
}

}  // namespace tapsec::state
