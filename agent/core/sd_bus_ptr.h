// Owning pointers for sd-bus objects, so every bus, slot and message is
// released on every path.
#pragma once

#include <systemd/sd-bus.h>

#include <memory>

namespace tapsec::core {

struct SdBusCloser {
  // Flushes queued outgoing messages first (this may wait for the socket),
  // then closes: replies written just before shutdown are not lost.
  void operator()(sd_bus* bus) const { sd_bus_flush_close_unref(bus); }
};
using SdBusPtr = std::unique_ptr<sd_bus, SdBusCloser>;

// Dropping a slot unregisters what it stands for (a match, an object vtable,
// a pending async call's callback).
struct SdBusSlotReleaser {
  void operator()(sd_bus_slot* slot) const { sd_bus_slot_unref(slot); }
};
using SdBusSlotPtr = std::unique_ptr<sd_bus_slot, SdBusSlotReleaser>;

struct SdBusMessageReleaser {
  void operator()(sd_bus_message* message) const { sd_bus_message_unref(message); }
};
using SdBusMessagePtr = std::unique_ptr<sd_bus_message, SdBusMessageReleaser>;

// sd_bus_error that frees its name and message when it goes out of scope.
class SdBusError {
 public:
  SdBusError() = default;
  SdBusError(const SdBusError&) = delete;
  SdBusError& operator=(const SdBusError&) = delete;
  ~SdBusError() { sd_bus_error_free(&error_); }

  sd_bus_error* get() { return &error_; }
  const sd_bus_error* get() const { return &error_; }
  bool is_set() const { return sd_bus_error_is_set(&error_); }
  const char* name() const { return error_.name ? error_.name : ""; }
  const char* message() const { return error_.message ? error_.message : ""; }

 private:
  sd_bus_error error_ = SD_BUS_ERROR_NULL;
};

}  // namespace tapsec::core
