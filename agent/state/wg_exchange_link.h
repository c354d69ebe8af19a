// One TCP connection between two agents carrying the WireGuard PSK exchange
// inside TLS 1.3 with certificates on both sides. The TLS session stays in
// userspace (a few small messages every rotation do not need kTLS); the
// link stays open so that rotations need no new handshake.
//
// An accepted connection is untrusted until the peer's certificate is
// checked: it gets no TLS session before its first byte (a silent one costs
// a descriptor and this object), a time limit for the whole handshake, and
// a cap on the bytes it may send before authenticating.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "agent/core/reactor.h"
#include "agent/core/unique_fd.h"
#include "agent/engines/ikev2/types.h"
#include "agent/engines/tls/tls_engine.h"
#include "agent/engines/wireguard/psk_exchange.h"

namespace tapsec::state {

// Bounds on an exchange connection (tapsecd --wg-exchange-*).
struct WgExchangeLimits {
  // Unauthenticated inbound connections held at once, in all and from one
  // address; past them a new connection is closed as soon as it is accepted.
  std::size_t max_pending = 64;
  std::size_t max_per_source = 8;
  // From connect or accept until the peer's certificate has been checked.
  std::chrono::milliseconds handshake_timeout{3000};
  // Bytes a peer may send before it is authenticated, and bytes buffered
  // from it at any time after (one TLS record is at most 16,645).
  std::size_t max_buffered = 32 * 1024;
};

class WgExchangeLink {
 public:
  // Why a link finished.
  enum class Ending {
    Failed,      // TLS or the exchange failed, a refusal, the peer closing
    TimedOut,    // not authenticated within handshake_timeout
    TooMuchData  // more than max_buffered bytes
  };
  struct Callbacks {
    // TLS is up and the peer proved its certificate chain; return an error
    // to refuse it (its name is not the expected one, ...).
    std::function<std::string(const tls::Session& session)> authenticated;
    std::function<void(const wireguard::PeerHello& hello)> hello;
    std::function<void(std::uint64_t epoch, const wireguard::Key& psk)> psk;
    // The link is finished (failure, refusal or the peer closing). Called
    // once, from the loop; the owner may destroy the link inside it.
    std::function<void(Ending ending, const std::string& reason)> closed;
  };
  // What both ends need: TLS settings built once per tunnel, not per link.
  struct Setup {
    std::shared_ptr<const tls::Settings> settings;
    wireguard::Key local_public{};
    std::uint16_t listen_port = 0;
    WgExchangeLimits limits;
  };

  // Initiator: connects to `peer` and runs TLS as client.
  static std::unique_ptr<WgExchangeLink> connect(core::Reactor& reactor, const ikev2::Endpoint& peer, Setup setup,
                                                 Callbacks callbacks, std::string* error);
  // Responder: an accepted connection, TLS as server once its first byte arrives.
  static std::unique_ptr<WgExchangeLink> accept(core::Reactor& reactor, core::UniqueFd fd,
                                                const ikev2::Endpoint& remote, Setup setup, Callbacks callbacks);
  ~WgExchangeLink();
  WgExchangeLink(const WgExchangeLink&) = delete;
  WgExchangeLink& operator=(const WgExchangeLink&) = delete;

  // Initiator: start the next PSK epoch now. False when one is in flight,
  // the exchange has not started, or this is the responder.
  bool rotate();
  bool established() const { return exchange_ != nullptr; }
  wireguard::Role role() const { return role_; }
  std::string peer_identity() const;  // the peer certificate's subject
  const ikev2::IpAddress& remote_address() const { return remote_.address; }

 private:
  WgExchangeLink(core::Reactor& reactor, core::UniqueFd fd, wireguard::Role role, const ikev2::Endpoint& remote,
                 Setup setup, Callbacks callbacks);
  void begin(bool connecting);
  bool start_tls(std::string* error);
  void on_ready(std::uint32_t revents);
  void read_available();
  void handle_record(std::span<const std::uint8_t> record);
  void start_exchange();
  void pump_exchange();
  void flush();
  void finish(const std::string& reason, Ending ending = Ending::Failed);

  core::Reactor& reactor_;
  core::UniqueFd fd_;
  wireguard::Role role_;
  ikev2::Endpoint remote_;
  Setup setup_;
  Callbacks callbacks_;
  std::unique_ptr<tls::Session> session_;  // a responder's, from the peer's first byte
  std::unique_ptr<wireguard::PskExchange> exchange_;
  std::vector<std::uint8_t> inbound_, outbound_;
  std::size_t received_unauthenticated_ = 0;
  core::Reactor::Id watch_ = 0, handshake_timer_ = 0;
  bool connecting_ = false, finished_ = false;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace tapsec::state
