// Drives one TLS handshake over one TCP socket on the reactor: reads whole
// records (never a byte past the handshake, so the kernel record layer
// starts exactly where the engine stopped), feeds them to the engine, sends
// what it produces, asks the application's validator when needed, and for a
// TLS 1.3 client takes the server's NewSessionTickets off the wire before
// the socket is handed over (see dbus/API.md, "What an application sees").
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "agent/core/reactor.h"
#include "agent/engines/tls/tls_engine.h"

namespace tapsec::state {

struct HandshakeFailure {
  std::string error_name;  // org.tapsec1.Error.*
  std::string message;
};

class TlsHandshake {
 public:
  // validate(chain, done): ask the application; done(accept, reason).
  using Validate = std::function<void(std::vector<std::vector<std::uint8_t>> chain,
                                      std::function<void(bool, std::string)> done)>;
  // Called once: failure empty on success. The handshake object may be
  // destroyed from inside the callback.
  using Done = std::function<void(const HandshakeFailure* failure)>;

  struct Options {
    std::chrono::milliseconds timeout{10000};
    // Drain NewSessionTicket records before handing the socket to the kernel.
    bool drain_tickets = true;
    bool is_client = true;
  };

  TlsHandshake(core::Reactor& reactor, int fd, std::unique_ptr<tls::Session> session, Options options,
               Validate validate, Done done);
  ~TlsHandshake();
  TlsHandshake(const TlsHandshake&) = delete;
  TlsHandshake& operator=(const TlsHandshake&) = delete;

  void start();

  // After success: the engine, ready for the kernel or the userspace layer.
  std::unique_ptr<tls::Session> take_session() { return std::move(session_); }

 private:
  enum class Phase { Handshake, Validating, Tickets, Flushing, Done };

  void on_io(std::uint32_t revents);
  void read_records();
  bool flush_output();
  void handle_status(tls::Session::Status status);
  void enter_ticket_window();
  void finish_after_flush();
  void finish(const HandshakeFailure* failure);
  void fail(std::string error_name, std::string message);
  void set_low_watermark(int bytes);

  core::Reactor& reactor_;
  int fd_;  // not owned
  std::unique_ptr<tls::Session> session_;
  Options options_;
  Validate validate_;
  Done done_;

  Phase phase_ = Phase::Handshake;
  core::Reactor::Id watch_ = 0;
  core::Reactor::Id timeout_timer_ = 0;
  core::Reactor::Id ticket_timer_ = 0;
  std::vector<std::uint8_t> pending_output_;
  std::vector<std::uint8_t> peek_buffer_;
  int original_lowat_ = 1;
  std::chrono::steady_clock::time_point first_flight_sent_{};
  std::chrono::steady_clock::duration round_trip_{};
  bool round_trip_measured_ = false;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace tapsec::state
