// libFuzzer target for the strict reader of the a{sv} props of
// SecureSocket/Connect and EstablishTunnel (agent/bus/properties_parser.h),
// which any local user can send. The input drives sd_bus_message_append:
// its first byte picks the parser (and role) and whether the body is an
// a{sv} at all; then come dict entries whose keys are mostly the known ones
// and whose values mostly have the key's type, else any D-Bus type (nested
// containers, variants, strings, object paths, signatures). Whatever the
// message, the parser must not crash or hang, and must give properties or
// one of its named errors with a message sd-bus can send.
#include <sys/socket.h>
#include <systemd/sd-bus.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

#include "agent/bus/errors.h"
#include "agent/bus/properties_parser.h"
#include "agent/bus/sd_bus_ref.h"

namespace {

using namespace tapsec::bus;

constexpr int kMaxDepth = 6;         // containers within containers
constexpr int kMaxElements = 8;      // per array
constexpr std::size_t kMaxEntries = 64;

// The fuzz input, read front to back; zeros once it runs out.
class Input {
 public:
  Input(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}
  bool empty() const { return position_ >= size_; }
  std::uint8_t byte() { return empty() ? 0 : data_[position_++]; }
  template <typename T>
  T number() {
    T value{};
    for (std::size_t i = 0; i < sizeof value; ++i) value = static_cast<T>((value << 8) | byte());
    return value;
  }
  std::string text(std::size_t limit) {
    std::string out;
    for (std::size_t length = byte() % (limit + 1); length > 0 && !empty(); --length) out.push_back(static_cast<char>(byte()));
    return out;
  }

 private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t position_ = 0;
};

// sd-bus makes messages only on a bus that was started; this one talks to
// the other end of a socket pair that never answers, and nothing is sent.
sd_bus* message_factory() {
  static sd_bus* bus = [] {
    int sockets[2];
    sd_bus* made = nullptr;
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sockets) < 0 || sd_bus_new(&made) < 0 ||
        sd_bus_set_fd(made, sockets[0], sockets[0]) < 0 || sd_bus_start(made) < 0)
      abort();
    return made;
  }();
  return bus;
}

// Length of the single complete type at the start of `signature`.
std::size_t complete_type_length(std::string_view signature) {
  if (signature.empty()) return 0;
  if (signature[0] == 'a') return 1 + complete_type_length(signature.substr(1));
  if (signature[0] != '(' && signature[0] != '{') return 1;
  const char close = signature[0] == '(' ? ')' : '}';
  std::size_t at = 1;
  while (at < signature.size() && signature[at] != close) at += complete_type_length(signature.substr(at));
  return at + 1;
}

// A single complete type of at most about kTypeBudget characters (D-Bus
// signatures end at 255, and sd-bus refuses to build longer ones).
constexpr int kTypeBudget = 64;

std::string random_type(Input& in, int depth, int& budget) {
  static constexpr std::string_view kBasic = "ybnqiuxtdsog";
  const std::uint8_t choice = in.byte();
  --budget;
  if (depth >= kMaxDepth || budget <= 0 || choice < 0xa0) return std::string(1, kBasic[choice % kBasic.size()]);
  switch (choice % 4) {
    case 0: return "a" + random_type(in, depth + 1, budget);
    case 1: return "v";
    case 2: {
      std::string members = "(";
      for (int count = 1 + in.byte() % 3; count > 0; --count) members += random_type(in, depth + 1, budget);
      return members + ")";
    }
    default: return "a{" + std::string(1, kBasic[in.byte() % kBasic.size()]) + random_type(in, depth + 1, budget) + "}";
  }
}

std::string random_type(Input& in, int depth) {
  int budget = kTypeBudget;
  return random_type(in, depth, budget);
}

std::string object_path(Input& in) {
  std::string path;
  for (int segments = in.byte() % 4; segments > 0; --segments) {
    path += '/';
    for (int length = 1 + in.byte() % 8; length > 0; --length) {
      static constexpr std::string_view kChars = "abcXYZ019_";
      path += kChars[in.byte() % kChars.size()];
    }
  }
  return path.empty() ? "/" : path;
}

void append_value(sd_bus_message* m, std::string_view type, Input& in, int depth);

// Appends the members of a struct or dict entry (`contents` without brackets).
void append_members(sd_bus_message* m, std::string_view contents, Input& in, int depth) {
  for (std::size_t at = 0; at < contents.size();) {
    const std::size_t length = complete_type_length(contents.substr(at));
    append_value(m, contents.substr(at, length), in, depth);
    at += length;
  }
}

void append_value(sd_bus_message* m, std::string_view type, Input& in, int depth) {
  const std::string contents(type.substr(1));
  switch (type[0]) {
    case 'a': {
      if (sd_bus_message_open_container(m, 'a', contents.c_str()) < 0) return;
      for (int count = in.byte() % (kMaxElements + 1); count > 0 && !in.empty(); --count)
        append_value(m, contents, in, depth + 1);
      sd_bus_message_close_container(m);
      return;
    }
    case '{':
    case '(': {
      const std::string members(type.substr(1, type.size() - 2));
      if (sd_bus_message_open_container(m, type[0] == '{' ? 'e' : 'r', members.c_str()) < 0) return;
      append_members(m, members, in, depth + 1);
      sd_bus_message_close_container(m);
      return;
    }
    case 'v': {
      const std::string inner = random_type(in, depth + 1);
      if (sd_bus_message_open_container(m, 'v', inner.c_str()) < 0) return;
      append_value(m, inner, in, depth + 1);
      sd_bus_message_close_container(m);
      return;
    }
    case 's': {
      // sd-bus refuses strings that are not UTF-8, as it refuses them from the wire.
      const std::string text = in.text(64);
      if (sd_bus_message_append_basic(m, 's', text.c_str()) < 0) sd_bus_message_append_basic(m, 's', "");
      return;
    }
    case 'o': {
      const std::string path = object_path(in);
      sd_bus_message_append_basic(m, 'o', path.c_str());
      return;
    }
    case 'g': {
      const std::string signature = random_type(in, depth);
      sd_bus_message_append_basic(m, 'g', signature.c_str());
      return;
    }
    case 'b': {
      const int value = in.byte() & 1;
      sd_bus_message_append_basic(m, 'b', &value);
      return;
    }
    case 'y': { const std::uint8_t v = in.byte(); sd_bus_message_append_basic(m, 'y', &v); return; }
    case 'n': case 'q': { const std::uint16_t v = in.number<std::uint16_t>(); sd_bus_message_append_basic(m, type[0], &v); return; }
    case 'i': case 'u': { const std::uint32_t v = in.number<std::uint32_t>(); sd_bus_message_append_basic(m, type[0], &v); return; }
    case 'x': case 't': { const std::uint64_t v = in.number<std::uint64_t>(); sd_bus_message_append_basic(m, type[0], &v); return; }
    case 'd': { const double v = static_cast<double>(in.number<std::int32_t>()) / 7; sd_bus_message_append_basic(m, 'd', &v); return; }
    default: abort();  // random_type makes no other type
  }
}

void append_properties(sd_bus_message* m, const std::vector<PropertyKey>& keys, Input& in) {
  if (sd_bus_message_open_container(m, 'a', "{sv}") < 0) abort();
  for (std::size_t entries = 0; entries < kMaxEntries && !in.empty(); ++entries) {
    if (sd_bus_message_open_container(m, 'e', "sv") < 0) abort();
    const std::uint8_t key_choice = in.byte();
    const PropertyKey* known = key_choice < 0xf0 ? &keys[key_choice % keys.size()] : nullptr;
    std::string key = known ? std::string(known->name) : in.text(32);
    if (sd_bus_message_append_basic(m, 's', key.c_str()) < 0) {
      key = "x";
      sd_bus_message_append_basic(m, 's', key.c_str());
    }
    // Mostly the key's own type, so the readers of each value are reached.
    const std::string type = known && in.byte() < 0xd0 ? std::string(known->signature) : random_type(in, 1);
    if (sd_bus_message_open_container(m, 'v', type.c_str()) < 0) abort();
    append_value(m, type, in, 2);
    if (sd_bus_message_close_container(m) < 0 || sd_bus_message_close_container(m) < 0) abort();
  }
  if (sd_bus_message_close_container(m) < 0) abort();
}

// A named error of the parser's, with a message sd-bus can send.
void check_error(const BusError& e) {
  if (e.name != error::kInvalidArgument && e.name != error::kUnknownProperty) abort();
  if (e.message.empty()) abort();
  sd_bus_message* reply = nullptr;
  if (sd_bus_message_new_method_call(message_factory(), &reply, nullptr, "/", nullptr, "Reply") < 0) abort();
  const MessageRef owner = MessageRef::adopt(reply);
  if (sd_bus_message_append_basic(reply, 's', e.message.c_str()) < 0) abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Input in(data, size);
  const std::uint8_t mode = in.byte();
  const bool tunnel = (mode & 3) == 3;
  static constexpr std::string_view kRoles[] = {"client", "server", ""};

  sd_bus_message* raw = nullptr;
  if (sd_bus_message_new_method_call(message_factory(), &raw, "org.tapsec1", "/org/tapsec1", "org.tapsec1.Manager",
                                     tunnel ? "EstablishTunnel" : "SecureSocket") < 0)
    abort();
  const MessageRef message = MessageRef::adopt(raw);
  if (mode & 4) {
    // Not an a{sv} at all.
    const std::string type = random_type(in, 0);
    append_value(raw, type, in, 0);
  } else {
    append_properties(raw, tunnel ? known_tunnel_property_keys() : known_property_keys(), in);
  }
  // A message sd-bus will not build (its limits on nesting and length)
  // cannot reach the agent either.
  if (sd_bus_message_seal(raw, 1, 0) < 0) return 0;
  if (sd_bus_message_rewind(raw, 1) < 0) abort();

  if (tunnel) {
    auto parsed = parse_tunnel_properties(raw);
    if (const auto* e = std::get_if<BusError>(&parsed)) check_error(*e);
  } else {
    auto parsed = parse_security_properties(raw, kRoles[mode & 3]);
    if (const auto* e = std::get_if<BusError>(&parsed)) check_error(*e);
  }
  return 0;
}
