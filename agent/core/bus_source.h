// Drives an sd-bus connection from the Reactor: the bus fd is watched for
// what sd-bus wants (sd_bus_get_events), its next deadline
// (sd_bus_get_timeout: method call timeouts, queued messages) is a timer,
// and sd_bus_process runs until the connection has nothing left to do.
#pragma once

#include <systemd/sd-bus.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "agent/core/reactor.h"

namespace tapsec::core {

class BusSource {
 public:
  // Called once when the connection fails or is closed by the peer, with a
  // negative errno (usually -ENOTCONN or -ECONNRESET). The BusSource has
  // stopped watching by then; the callback may destroy it.
  using DisconnectCallback = std::function<void(int error)>;

  // `bus` must be started (see open_bus); the BusSource takes its own
  // reference. Throws std::system_error if the bus has no single pollable
  // fd (not started, or split input/output fds).
  BusSource(Reactor& reactor, sd_bus* bus, DisconnectCallback on_disconnect = {});
  ~BusSource();
  BusSource(const BusSource&) = delete;
  BusSource& operator=(const BusSource&) = delete;

  sd_bus* bus() const { return bus_; }
  bool connected() const { return connected_; }

 private:
  void process();
  void refresh();
  void detach();
  void fail(int error);

  Reactor& reactor_;
  sd_bus* bus_;
  DisconnectCallback on_disconnect_;
  Reactor::Id watch_ = 0;
  Reactor::Id timer_ = 0;
  Reactor::Id prepare_hook_ = 0;
  std::uint32_t watched_events_ = 0;
  std::uint64_t armed_deadline_usec_ = UINT64_MAX;
  bool connected_ = true;
  // Cleared by the destructor; lets process() notice that a message handler
  // destroyed this object while sd_bus_process was running.
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

// Opens and starts a bus connection. `spec` is "system", "session" (or
// "user"), or a D-Bus address such as "unix:path=/run/x/bus" for a private
// bus daemon. Authentication and Hello finish asynchronously once a
// BusSource processes the connection. Returns 0 and sets *out (owned by the
// caller; wrap it in SdBusPtr), or a negative errno: -EINVAL for an empty
// spec or an address sd-bus cannot parse.
int open_bus(const std::string& spec, sd_bus** out);

}  // namespace tapsec::core
