// The relayed kernel record layer: kTLS protects the TCP socket, which the
// agent keeps; the application gets one end of a Unix socketpair. Data is
// moved between the two by splice() through pipes, so it never enters the
// agent's memory and every record is encrypted and decrypted by the kernel.
// What is not data never reaches the application:
//   - NewSessionTickets go to the engine (and so to the session cache);
//   - a KeyUpdate moves the kernel to the peer's next key (kernels with
//     kTLS rekey) and answers it when asked;
//   - close_notify is the application's end of file;
//   - Terminate sends close_notify and gives the application end of file.
// The association says Offload=kernel, DirectSocket=false.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "agent/core/reactor.h"
#include "agent/core/unique_fd.h"
#include "agent/engines/tls/tls_engine.h"

namespace tapsec::state {

class KernelRelay {
 public:
  using Closed = std::function<void(const std::string& reason)>;

  struct Options {
    bool rx_rekey = false;  // the kernel can take the peer's next receive key
    bool tx_rekey = false;  // the kernel can take our next send key
  };

  // `tcp` has kTLS installed both ways with the session's keys. Creates the
  // socketpair and the pipes; take_application_fd() is the application's end.
  static std::unique_ptr<KernelRelay> create(core::Reactor& reactor, core::UniqueFd tcp,
                                             std::unique_ptr<tls::Session> session, Options options, Closed closed,
                                             std::string* error);
  ~KernelRelay();
  KernelRelay(const KernelRelay&) = delete;
  KernelRelay& operator=(const KernelRelay&) = delete;

  core::UniqueFd take_application_fd() { return std::move(application_fd_); }
  void start();

  tls::Session& session() { return *session_; }
  int tcp_fd() const { return tcp_.get(); }
  // Our KeyUpdate (TLS 1.3): the message under the current send key, then
  // the next send key. An error message when the kernel cannot.
  std::optional<std::string> update_keys(bool request_peer);
  // Delivers what the application already wrote, sends close_notify, and
  // gives the application end of file; closes once the peer closed too or
  // after a bounded wait.
  void terminate();

  std::uint64_t bytes_sent() const { return bytes_sent_; }
  std::uint64_t bytes_received() const { return bytes_received_; }
  std::uint64_t tickets_received() const { return tickets_received_; }
  std::uint64_t peer_key_updates() const { return peer_key_updates_; }

 private:
  KernelRelay(core::Reactor& reactor, core::UniqueFd tcp, core::UniqueFd local, core::UniqueFd application,
              core::UniqueFd pipes[4], std::unique_ptr<tls::Session> session, Options options, Closed closed);

  void on_event();
  void pump();
  // The peer's next record is not data: read it and act on it. False when
  // the relay closed.
  bool take_control_record();
  bool handle_handshake_messages();
  void finish_sending();  // close_notify and FIN to the peer, once
  // Sends what the outbound pipe holds, waiting up to a second at a time
  // for the peer to take it.
  std::optional<std::string> flush_outbound();
  void update_interest();
  void close(const std::string& reason);

  core::Reactor& reactor_;
  core::UniqueFd tcp_;
  core::UniqueFd local_;           // our end of the socketpair
  core::UniqueFd application_fd_;  // handed to the application
  // inbound: peer -> application; outbound: application -> peer.
  core::UniqueFd inbound_read_, inbound_write_, outbound_read_, outbound_write_;
  std::unique_ptr<tls::Session> session_;
  Options options_;
  Closed closed_;

  core::Reactor::Id tcp_watch_ = 0;
  core::Reactor::Id local_watch_ = 0;
  core::Reactor::Id linger_timer_ = 0;
  std::size_t inbound_queued_ = 0;   // bytes in the inbound pipe
  std::size_t outbound_queued_ = 0;  // bytes in the outbound pipe
  std::vector<std::uint8_t> handshake_bytes_;  // a post-handshake message split across records
  bool peer_done_ = false;         // close_notify (or a bare FIN) from the peer
  bool application_done_ = false;  // the application shut down its sending side
  bool sent_close_ = false;
  bool terminating_ = false;
  bool closed_once_ = false;
  std::string peer_end_;  // how the peer ended, for the close reason
  std::uint64_t bytes_sent_ = 0;
  std::uint64_t bytes_received_ = 0;
  std::uint64_t tickets_received_ = 0;
  std::uint64_t peer_key_updates_ = 0;
};

}  // namespace tapsec::state
