// The agent's single event loop, on io_uring. Everything the agent waits for
// (the bus connection, sockets mid-handshake, proxied fallback sockets,
// timers, signals) is a registration here; callbacks run on the loop thread
// and must never block.
//
// Any callback may call any member (watch, modify, unwatch, add_timer,
// cancel_timer, post, stop), including unwatching or cancelling itself.
// Once unwatch()/cancel_timer() returns, that callback never runs again,
// even if its event already sits in the current completion batch.
// Ids are never reused; 0 is never a valid id, so unwatch(0) and
// cancel_timer(0) are harmless no-ops, as are calls with stale ids.
#pragma once

#include <liburing.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <unordered_map>

#include "agent/core/unique_fd.h"

namespace tapsec::core {

class Reactor {
 public:
  using Id = std::uint64_t;
  // revents as poll(2) reports them (POLLIN, POLLOUT, POLLERR, POLLHUP, ...).
  using IoCallback = std::function<void(std::uint32_t revents)>;
  using Callback = std::function<void()>;
  using Clock = std::chrono::steady_clock;

  // Throws std::system_error if the io_uring (or its helper fds) cannot be
  // created, e.g. when io_uring is disabled by sysctl or seccomp.
  explicit Reactor(unsigned queue_depth = 256);
  ~Reactor();
  Reactor(const Reactor&) = delete;
  Reactor& operator=(const Reactor&) = delete;

  // Calls cb each time fd becomes ready for any of `events` (level
  // triggered, like poll) until unwatch(). The fd is not owned.
  // POLLERR and POLLHUP are always reported. If the fd is invalid the
  // callback gets POLLNVAL once and the watch pauses until modify().
  Id watch(int fd, std::uint32_t events, IoCallback cb);
  // Changes the event mask of a watch. A mask of 0 pauses the watch.
  void modify(Id watch, std::uint32_t events);
  void unwatch(Id watch);

  // One-shot timers. Timers due at the same instant fire in the order they
  // were added.
  Id add_timer(Clock::duration after, Callback cb);
  Id add_timer_at(Clock::time_point when, Callback cb);
  void cancel_timer(Id timer);

  // Blocks the signal for the process and calls cb on the loop when it
  // arrives (signalfd underneath). A second call for the same signal
  // replaces the callback. The signal stays blocked after the Reactor is
  // gone, so a late arrival is not fatal.
  void on_signal(int signo, Callback cb);

  // Runs cb on the loop after the current callback returns, in FIFO order.
  // Safe to call from any thread; it wakes the loop.
  void post(Callback cb);

  // Calls cb on the loop each time just before it goes to sleep, after all
  // ready work ran. For event sources that must recompute what they wait
  // for (sd-bus's events and timeout change whenever a message is queued).
  Id add_prepare_hook(Callback cb);
  void remove_prepare_hook(Id hook);

  // Runs until stop(); returns 0, or a negative errno if io_uring failed
  // (-EBUSY if called while already running). May be called again after it
  // returned: registrations survive.
  int run();
  // Makes run() return after the current callback; pending timers and
  // posted callbacks stay queued for the next run(). Loop thread only; from
  // another thread, post() a call to it.
  void stop();

  // Number of live watches and timers, for leak checks in tests.
  // The Reactor's own internal watches are not counted.
  std::size_t watch_count() const;
  std::size_t timer_count() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tapsec::core
