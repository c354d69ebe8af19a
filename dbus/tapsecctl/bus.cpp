#include "dbus/tapsecctl/bus.h"

#include <cerrno>

#include "dbus/tapsecctl/args.h"

namespace tapsec::ctl {

int open_bus(const std::string& spec, BusPtr& out) {
  sd_bus* bus = nullptr;
  int r;
  if (spec == "system") {
    r = sd_bus_open_system(&bus);
  } else if (spec == "session" || spec == "user") {
    r = sd_bus_open_user(&bus);
  } else {
    r = sd_bus_new(&bus);
    if (r >= 0) r = sd_bus_set_address(bus, spec.c_str());
    if (r >= 0) r = sd_bus_set_bus_client(bus, 1);
    if (r >= 0) r = sd_bus_negotiate_fds(bus, 1);
    if (r >= 0) r = sd_bus_start(bus);
    if (r < 0) sd_bus_unref(bus);
  }
  if (r < 0) return r;
  out.reset(bus);
  return 0;
}

namespace {

int read_basic(sd_bus_message* m, char type, Value& out) {
  int r = 0;
  union {
    std::uint8_t y;
    int b;
    std::int16_t n;
    std::uint16_t q;
    std::int32_t i;
    std::uint32_t u;
    std::int64_t x;
    std::uint64_t t;
    double d;
    const char* s;
    int h;
  } v{};
  r = sd_bus_message_read_basic(m, type, &v);
  if (r < 0) return r;
  switch (type) {
    case 'y': out.kind = Value::Kind::Unsigned; out.unsigned_number = v.y; break;
    case 'q': out.kind = Value::Kind::Unsigned; out.unsigned_number = v.q; break;
    case 'u': out.kind = Value::Kind::Unsigned; out.unsigned_number = v.u; break;
    case 't': out.kind = Value::Kind::Unsigned; out.unsigned_number = v.t; break;
    case 'n': out.kind = Value::Kind::Signed; out.signed_number = v.n; break;
    case 'i': out.kind = Value::Kind::Signed; out.signed_number = v.i; break;
    case 'x': out.kind = Value::Kind::Signed; out.signed_number = v.x; break;
    case 'h': out.kind = Value::Kind::Signed; out.signed_number = v.h; break;
    case 'b': out.kind = Value::Kind::Bool; out.flag = v.b; break;
    case 'd': out.kind = Value::Kind::Double; out.real = v.d; break;
    case 's':
    case 'o':
    case 'g': out.kind = Value::Kind::String; out.text = v.s ? v.s : ""; break;
    default: return -EBADMSG;
  }
  return 1;
}

}  // namespace

int read_value(sd_bus_message* m, Value& out) {
  char type = 0;
  const char* contents = nullptr;
  int r = sd_bus_message_peek_type(m, &type, &contents);
  if (r <= 0) return r;
  switch (type) {
    case SD_BUS_TYPE_VARIANT: {
      r = sd_bus_message_enter_container(m, type, contents);
      if (r < 0) return r;
      r = read_value(m, out);
      if (r < 0) return r;
      r = sd_bus_message_exit_container(m);
      return r < 0 ? r : 1;
    }
    case SD_BUS_TYPE_ARRAY: {
      if (std::string(contents) == "y") {
        const void* data = nullptr;
        size_t size = 0;
        r = sd_bus_message_read_array(m, 'y', &data, &size);
        if (r < 0) return r;
        out.kind = Value::Kind::Bytes;
        const auto* bytes = static_cast<const std::uint8_t*>(data);
        out.bytes.assign(bytes, bytes + size);
        return 1;
      }
      const bool dict = contents[0] == SD_BUS_TYPE_DICT_ENTRY_BEGIN;
      out.kind = dict ? Value::Kind::Dict : Value::Kind::Array;
      r = sd_bus_message_enter_container(m, type, contents);
      if (r < 0) return r;
      for (;;) {
        if (dict) {
          std::string inner(contents + 1, std::string(contents).size() - 2);
          r = sd_bus_message_enter_container(m, SD_BUS_TYPE_DICT_ENTRY, inner.c_str());
          if (r < 0) return r;
          if (r == 0) break;
          Value key, value;
          if ((r = read_value(m, key)) < 0 || (r = read_value(m, value)) < 0) return r;
          out.entries.emplace_back(value_to_text(key), std::move(value));
          r = sd_bus_message_exit_container(m);
          if (r < 0) return r;
        } else {
          Value item;
          r = read_value(m, item);
          if (r < 0) return r;
          if (r == 0) break;
          out.items.push_back(std::move(item));
        }
      }
      r = sd_bus_message_exit_container(m);
      return r < 0 ? r : 1;
    }
    case SD_BUS_TYPE_STRUCT: {
      out.kind = Value::Kind::Struct;
      r = sd_bus_message_enter_container(m, type, contents);
      if (r < 0) return r;
      for (;;) {
        Value item;
        r = read_value(m, item);
        if (r < 0) return r;
        if (r == 0) break;
        out.items.push_back(std::move(item));
      }
      r = sd_bus_message_exit_container(m);
      return r < 0 ? r : 1;
    }
    default:
      return read_basic(m, type, out);
  }
}

int read_property_dict(sd_bus_message* m, std::vector<std::pair<std::string, Value>>& out) {
  Value dict;
  int r = read_value(m, dict);
  if (r < 0) return r;
  if (r == 0 || dict.kind != Value::Kind::Dict) return -EBADMSG;
  out = std::move(dict.entries);
  return 0;
}

std::string value_to_text(const Value& v) {
  switch (v.kind) {
    case Value::Kind::String: return v.text;
    case Value::Kind::Bool: return v.flag ? "yes" : "no";
    case Value::Kind::Signed: return std::to_string(v.signed_number);
    case Value::Kind::Unsigned: return std::to_string(v.unsigned_number);
    case Value::Kind::Double: return std::to_string(v.real);
    case Value::Kind::Bytes: return to_hex(v.bytes.data(), v.bytes.size());
    case Value::Kind::Array:
    case Value::Kind::Struct: {
      std::string text;
      for (const auto& item : v.items) {
        if (!text.empty()) text += ", ";
        text += value_to_text(item);
      }
      return text;
    }
    case Value::Kind::Dict: {
      std::string text;
      for (const auto& [key, item] : v.entries) {
        if (!text.empty()) text += "; ";
        text += key + "=" + value_to_text(item);
      }
      return text;
    }
  }
  return "";
}

void write_value_json(JsonWriter& json, const Value& v) {
  switch (v.kind) {
    case Value::Kind::String: json.value(v.text); return;
    case Value::Kind::Bool: json.value(v.flag); return;
    case Value::Kind::Signed: json.value(v.signed_number); return;
    case Value::Kind::Unsigned: json.value(v.unsigned_number); return;
    case Value::Kind::Double: json.value(v.real); return;
    case Value::Kind::Bytes: json.value(to_hex(v.bytes.data(), v.bytes.size())); return;
    case Value::Kind::Array:
    case Value::Kind::Struct:
      json.begin_array();
      for (const auto& item : v.items) write_value_json(json, item);
      json.end_array();
      return;
    case Value::Kind::Dict:
      json.begin_object();
      for (const auto& [key, item] : v.entries) {
        json.key(key);
        write_value_json(json, item);
      }
      json.end_object();
      return;
  }
}

const Value* find_property(const std::vector<std::pair<std::string, Value>>& props, const std::string& name) {
  for (const auto& [key, value] : props)
    if (key == name) return &value;
  return nullptr;
}

std::string property_text(const std::vector<std::pair<std::string, Value>>& props, const std::string& name) {
  const Value* v = find_property(props, name);
  return v ? value_to_text(*v) : "";
}

std::uint64_t property_number(const std::vector<std::pair<std::string, Value>>& props, const std::string& name) {
  const Value* v = find_property(props, name);
  if (!v) return 0;
  if (v->kind == Value::Kind::Unsigned) return v->unsigned_number;
  if (v->kind == Value::Kind::Signed && v->signed_number > 0) return static_cast<std::uint64_t>(v->signed_number);
  return 0;
}

}  // namespace tapsec::ctl
