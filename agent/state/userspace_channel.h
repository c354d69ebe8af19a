// The fallback record layer: where the kernel lacks kTLS and policy allows
// it, the application gets one end of a socketpair and the agent carries
// the plaintext between it and the TLS connection, protecting it with the
// engine in userspace. The association then says Offload=userspace.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "agent/core/reactor.h"
#include "agent/core/unique_fd.h"
#include "agent/engines/tls/tls_engine.h"

namespace tapsec::state {

class UserspaceChannel {
 public:
  using Closed = std::function<void(const std::string& reason)>;

  // Creates the socketpair; application_fd() is the end for the application.
  static std::unique_ptr<UserspaceChannel> create(core::Reactor& reactor, core::UniqueFd tcp,
                                                  std::unique_ptr<tls::Session> session, Closed closed,
                                                  std::string* error);
  ~UserspaceChannel();

  core::UniqueFd take_application_fd() { return std::move(application_fd_); }
  void start();

  tls::Session& session() { return *session_; }
  void update_keys(bool request_peer);
  // Sends what the application already wrote, then close_notify, then
  // closes both sides (asynchronously, once everything is sent).
  void terminate();

  std::uint64_t bytes_sent() const { return bytes_sent_; }
  std::uint64_t bytes_received() const { return bytes_received_; }

 private:
  UserspaceChannel(core::Reactor& reactor, core::UniqueFd tcp, core::UniqueFd local, core::UniqueFd application,
                   std::unique_ptr<tls::Session> session, Closed closed);

  void on_tcp(std::uint32_t revents);
  void on_local(std::uint32_t revents);
  void pump();
  bool write_out(int fd, std::vector<std::uint8_t>& buffer);
  void update_interest();
  void close(const std::string& reason);

  core::Reactor& reactor_;
  core::UniqueFd tcp_;
  core::UniqueFd local_;           // our end of the socketpair
  core::UniqueFd application_fd_;  // handed to the application
  std::unique_ptr<tls::Session> session_;
  Closed closed_;

  core::Reactor::Id tcp_watch_ = 0;
  core::Reactor::Id local_watch_ = 0;
  core::Reactor::Id linger_timer_ = 0;  // set while a terminated channel drains
  std::vector<std::uint8_t> to_tcp_;    // ciphertext waiting for the socket
  std::vector<std::uint8_t> to_local_;  // plaintext waiting for the application
  bool application_done_ = false;       // the application shut down its sending side
  bool peer_done_ = false;              // the peer sent close_notify or FIN
  bool terminating_ = false;
  bool closed_once_ = false;
  std::uint64_t bytes_sent_ = 0;
  std::uint64_t bytes_received_ = 0;
};

}  // namespace tapsec::state
