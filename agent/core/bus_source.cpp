#include "agent/core/bus_source.h"

#include <cerrno>
#include <chrono>
#include <cstring>
#include <string>
#include <system_error>

#include "agent/core/log.h"
#include "agent/core/sd_bus_ptr.h"

namespace tapsec::core {

BusSource::BusSource(Reactor& reactor, sd_bus* bus, DisconnectCallback on_disconnect)
    : reactor_(reactor), bus_(bus), on_disconnect_(std::move(on_disconnect)) {
  if (!bus_) throw std::system_error(EINVAL, std::system_category(), "BusSource: no bus");
  int fd = sd_bus_get_fd(bus_);
  if (fd < 0) throw std::system_error(-fd, std::system_category(), "BusSource: sd_bus_get_fd");
  int events = sd_bus_get_events(bus_);
  if (events < 0) throw std::system_error(-events, std::system_category(), "BusSource: sd_bus_get_events");
  sd_bus_ref(bus_);

  watched_events_ = static_cast<std::uint32_t>(events);
  watch_ = reactor_.watch(fd, watched_events_, [this](std::uint32_t) { process(); });
  // What sd-bus waits for changes whenever anyone queues a message or
  // starts a call, not only when we process; re-read it before each sleep.
  prepare_hook_ = reactor_.add_prepare_hook([this] { refresh(); });
}

BusSource::~BusSource() {
  *alive_ = false;
  detach();
  sd_bus_unref(bus_);
}

void BusSource::detach() {
  reactor_.unwatch(std::exchange(watch_, 0));
  reactor_.cancel_timer(std::exchange(timer_, 0));
  reactor_.remove_prepare_hook(std::exchange(prepare_hook_, 0));
  armed_deadline_usec_ = UINT64_MAX;
}

void BusSource::process() {
  if (!connected_) return;
  // Handlers run inside sd_bus_process and may destroy this object; hold
  // the bus and the liveness flag locally so the loop can end safely.
  std::shared_ptr<bool> alive = alive_;
  sd_bus* raw = sd_bus_ref(bus_);
  struct Unref {
    sd_bus* bus;
    ~Unref() { sd_bus_unref(bus); }
  } hold{raw};

  for (;;) {
    int r = sd_bus_process(raw, nullptr);
    if (!*alive) return;
    if (r < 0) {
      fail(r);  // may destroy this: nothing after it
      return;
    }
    if (r == 0) break;
  }
  refresh();
}

void BusSource::refresh() {
  if (!connected_) return;
  int events = sd_bus_get_events(bus_);
  if (events < 0) {
    fail(events);
    return;
  }
  if (static_cast<std::uint32_t>(events) != watched_events_) {
    watched_events_ = static_cast<std::uint32_t>(events);
    reactor_.modify(watch_, watched_events_);
  }

  std::uint64_t deadline_usec = UINT64_MAX;
  int r = sd_bus_get_timeout(bus_, &deadline_usec);
  if (r < 0) {
    fail(r);
    return;
  }
  if (deadline_usec == armed_deadline_usec_) return;
  reactor_.cancel_timer(std::exchange(timer_, 0));
  armed_deadline_usec_ = deadline_usec;
  if (deadline_usec == UINT64_MAX) return;
  // sd-bus deadlines are CLOCK_MONOTONIC microseconds, the same clock
  // steady_clock reads on Linux. 0 means "process now".
  Reactor::Clock::time_point when{std::chrono::microseconds(deadline_usec)};
  timer_ = reactor_.add_timer_at(when, [this] {
    timer_ = 0;
    armed_deadline_usec_ = UINT64_MAX;
    process();
  });
}

void BusSource::fail(int error) {
  connected_ = false;
  detach();
  const char* name = nullptr;
  sd_bus_get_description(bus_, &name);
  log::warning("bus connection lost", {{"bus", name ? name : "unnamed"}, {"error", std::strerror(-error)}});
  if (on_disconnect_) {
    DisconnectCallback callback = std::move(on_disconnect_);
    callback(error);
  }
}

int open_bus(const std::string& spec, sd_bus** out) {
  if (!out) return -EINVAL;
  *out = nullptr;
  if (spec.empty()) return -EINVAL;

  sd_bus* raw = nullptr;
  int r;
  if (spec == "system") {
    r = sd_bus_open_system(&raw);
  } else if (spec == "session" || spec == "user") {
    r = sd_bus_open_user(&raw);
  } else {
    r = sd_bus_new(&raw);
    if (r < 0) return r;
    SdBusPtr bus(raw);
    if ((r = sd_bus_set_description(bus.get(), "private")) < 0) return r;
    if ((r = sd_bus_set_address(bus.get(), spec.c_str())) < 0) return r;
    if ((r = sd_bus_set_bus_client(bus.get(), 1)) < 0) return r;
    if ((r = sd_bus_start(bus.get())) < 0) return r;
    *out = bus.release();
    return 0;
  }
  if (r < 0) return r;
  *out = raw;
  return 0;
}

}  // namespace tapsec::core
