// One TCP connection between two agents carrying the WireGuard PSK exchange
// inside TLS 1.3 with certificates on both sides. The TLS session stays in
// userspace (a few small messages every rotation do not need kTLS); the
// link stays open so that rotations need no new handshake.
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

class WgExchangeLink {
 public:
  struct Callbacks {
    // TLS is up and the peer proved its certificate chain; return an error
    // to refuse it (its name is not the expected one, ...).
    std::function<std::string(const tls::Session& session)> authenticated;
    std::function<void(const wireguard::PeerHello& hello)> hello;
    std::function<void(std::uint64_t epoch, const wireguard::Key& psk)> psk;
    // The link is finished (failure, refusal or the peer closing). Called
    // once, from the loop; the owner may destroy the link inside it.
    std::function<void(const std::string& reason)> closed;
  };

  // Initiator: connects to `peer` and runs TLS as client.
  static std::unique_ptr<WgExchangeLink> connect(core::Reactor& reactor, const ikev2::Endpoint& peer,
                                                 const tls::Settings& settings, const wireguard::Key& local_public,
                                                 std::uint16_t listen_port, Callbacks callbacks, std::string* error);
  // Responder: an accepted connection, TLS as server.
  static std::unique_ptr<WgExchangeLink> accept(core::Reactor& reactor, core::UniqueFd fd,
                                                const tls::Settings& settings, const wireguard::Key& local_public,
                                                std::uint16_t listen_port, Callbacks callbacks, std::string* error);
  ~WgExchangeLink();
  WgExchangeLink(const WgExchangeLink&) = delete;
  WgExchangeLink& operator=(const WgExchangeLink&) = delete;

  // Initiator: start the next PSK epoch now. False when one is in flight,
  // the exchange has not started, or this is the responder.
  bool rotate();
  bool established() const { return exchange_ != nullptr; }
  wireguard::Role role() const { return role_; }
  std::string peer_identity() const;  // the peer certificate's subject
  std::string remote_address() const { return remote_.address.to_string(); }

 private:
  WgExchangeLink(core::Reactor& reactor, core::UniqueFd fd, wireguard::Role role, const wireguard::Key& local_public,
                 std::uint16_t listen_port, Callbacks callbacks);
  bool begin(const tls::Settings& settings, bool connecting, std::string* error);
  void on_ready(std::uint32_t revents);
  void read_available();
  void handle_record(std::span<const std::uint8_t> record);
  void start_exchange();
  void pump_exchange();
  void flush();
  void finish(const std::string& reason);

  core::Reactor& reactor_;
  core::UniqueFd fd_;
  wireguard::Role role_;
  wireguard::Key local_public_;
  std::uint16_t listen_port_;
  Callbacks callbacks_;
  ikev2::Endpoint remote_;
  std::unique_ptr<tls::Session> session_;
  std::unique_ptr<wireguard::PskExchange> exchange_;
  std::vector<std::uint8_t> inbound_, outbound_;
  core::Reactor::Id watch_ = 0, handshake_timer_ = 0;
  bool connecting_ = false, finished_ = false;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace tapsec::state
