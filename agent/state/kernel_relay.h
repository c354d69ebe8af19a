// The relayed kernel record layer: kTLS protects the TCP socket, which the
// agent keeps; the application gets one end of a Unix socketpair. Every
// record is encrypted and decrypted by the kernel. The application's data
// goes to the peer by splice() through a pipe, without entering the agent's
// memory; the peer's decrypted data comes through a buffer of the agent's,
// because one recvmsg takes many records where splice takes one, and it
// reports the type of a record that is not data.
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
#include <span>
#include <string>
#include <vector>

#include "agent/core/reactor.h"
#include "agent/core/unique_fd.h"
#include "agent/engines/tls/post_handshake.h"
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
              core::UniqueFd outbound_read, core::UniqueFd outbound_write, std::unique_ptr<tls::Session> session,
              Options options, Closed closed);

  void on_event();
  void pump();
  // The peer sent a record that is not data: act on it. False when the
  // relay closed.
  bool take_control_record(std::uint8_t content_type, std::span<const std::uint8_t> content);
  std::size_t inbound_queued() const { return inbound_end_ - inbound_begin_; }
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
  // application -> peer
  core::UniqueFd outbound_read_, outbound_write_;
  // peer -> application: decrypted data not yet taken by the application
  std::vector<std::uint8_t> inbound_;
  std::size_t inbound_begin_ = 0, inbound_end_ = 0;
  std::unique_ptr<tls::Session> session_;
  Options options_;
  Closed closed_;

  core::Reactor::Id tcp_watch_ = 0;
  core::Reactor::Id local_watch_ = 0;
  core::Reactor::Id linger_timer_ = 0;
  std::size_t outbound_queued_ = 0;  // bytes in the outbound pipe
  tls::PostHandshakeMessages post_handshake_;  // the peer's tickets and KeyUpdates
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
