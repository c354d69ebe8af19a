// sd-bus ownership wrappers and a generic reader of D-Bus values.
#pragma once

#include <systemd/sd-bus.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "dbus/tapsecctl/json.h"

namespace tapsec::ctl {

struct BusUnref {
  void operator()(sd_bus* bus) const { sd_bus_flush_close_unref(bus); }
};
struct MessageUnref {
  void operator()(sd_bus_message* m) const { sd_bus_message_unref(m); }
};
struct SlotUnref {
  void operator()(sd_bus_slot* s) const { sd_bus_slot_unref(s); }
};
using BusPtr = std::unique_ptr<sd_bus, BusUnref>;
using MessagePtr = std::unique_ptr<sd_bus_message, MessageUnref>;
using SlotPtr = std::unique_ptr<sd_bus_slot, SlotUnref>;

// sd_bus_error that frees itself.
class BusError {
 public:
  BusError() = default;
  BusError(const BusError&) = delete;
  BusError& operator=(const BusError&) = delete;
  ~BusError() { sd_bus_error_free(&error_); }
  sd_bus_error* get() { return &error_; }
  bool is_set() const { return sd_bus_error_is_set(&error_); }
  std::string name() const { return error_.name ? error_.name : ""; }
  std::string message() const { return error_.message ? error_.message : ""; }

 private:
  sd_bus_error error_ = SD_BUS_ERROR_NULL;
};

// Connects to "system", "session" or a D-Bus address. Returns a negative
// errno on failure.
int open_bus(const std::string& spec, BusPtr& out);

// Any D-Bus value, as read from a message.
struct Value {
  enum class Kind { String, Bool, Signed, Unsigned, Double, Bytes, Array, Dict, Struct } kind = Kind::String;
  std::string text;  // String (also object paths and signatures)
  bool flag = false;
  std::int64_t signed_number = 0;
  std::uint64_t unsigned_number = 0;
  double real = 0;
  std::vector<std::uint8_t> bytes;
  std::vector<Value> items;                          // Array, Struct
  std::vector<std::pair<std::string, Value>> entries;  // Dict (keys as text)
};

// Reads the next complete value (entering variants) from m.
int read_value(sd_bus_message* m, Value& out);
// Reads an a{sv} (e.g. Properties.GetAll) in order.
int read_property_dict(sd_bus_message* m, std::vector<std::pair<std::string, Value>>& out);

// Human text: strings as-is, lists joined with ", ", bytes as hex.
std::string value_to_text(const Value& v);
void write_value_json(JsonWriter& json, const Value& v);

// Helpers over a property list.
const Value* find_property(const std::vector<std::pair<std::string, Value>>& props, const std::string& name);
std::string property_text(const std::vector<std::pair<std::string, Value>>& props, const std::string& name);
std::uint64_t property_number(const std::vector<std::pair<std::string, Value>>& props, const std::string& name);

}  // namespace tapsec::ctl
