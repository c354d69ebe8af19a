#include "agent/bus/properties_parser.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <set>

#include "agent/bus/errors.h"

namespace tapsec::bus {
namespace {

using ParseResult = std::variant<SecurityProperties, BusError>;

// Quoted for messages: 'name'.
std::string quoted(std::string_view s) { return "'" + std::string(s) + "'"; }

BusError invalid(std::string message) { return error::make(error::kInvalidArgument, std::move(message)); }

BusError malformed(std::string_view key, int r) {
  return invalid("could not read property " + quoted(key) + ": " + std::strerror(-r));
}

// Readers return 0 on success or a negative errno from sd-bus.
int read_string(sd_bus_message* m, std::string& out) {
  const char* s = nullptr;
  int r = sd_bus_message_read_basic(m, 's', &s);
  if (r < 0) return r;
  out = s ? s : "";
  return 0;
}

int read_object_path(sd_bus_message* m, std::string& out) {
  const char* s = nullptr;
  int r = sd_bus_message_read_basic(m, 'o', &s);
  if (r < 0) return r;
  out = s ? s : "";
  return 0;
}

int read_bool(sd_bus_message* m, bool& out) {
  int value = 0;  // sd-bus stores D-Bus booleans in an int
  int r = sd_bus_message_read_basic(m, 'b', &value);
  if (r < 0) return r;
  out = value != 0;
  return 0;
}

int read_uint32(sd_bus_message* m, std::uint32_t& out) {
  int r = sd_bus_message_read_basic(m, 'u', &out);
  return r < 0 ? r : 0;
}

int read_string_array(sd_bus_message* m, std::vector<std::string>& out) {
  int r = sd_bus_message_enter_container(m, 'a', "s");
  if (r < 0) return r;
  out.clear();
  const char* s = nullptr;
  while ((r = sd_bus_message_read_basic(m, 's', &s)) > 0) out.emplace_back(s);
  if (r < 0) return r;
  r = sd_bus_message_exit_container(m);
  return r < 0 ? r : 0;
}

int read_string_array_map(sd_bus_message* m, std::map<std::string, std::vector<std::string>>& out,
                          std::string& duplicate_key) {
  int r = sd_bus_message_enter_container(m, 'a', "{sas}");
  if (r < 0) return r;
  out.clear();
  while ((r = sd_bus_message_enter_container(m, 'e', "sas")) > 0) {
    std::string key;
    std::vector<std::string> values;
    if ((r = read_string(m, key)) < 0) return r;
    if ((r = read_string_array(m, values)) < 0) return r;
    if ((r = sd_bus_message_exit_container(m)) < 0) return r;
    if (out.count(key) && duplicate_key.empty()) duplicate_key = key;
    out[key] = std::move(values);
  }
  if (r < 0) return r;
  r = sd_bus_message_exit_container(m);
  return r < 0 ? r : 0;
}

std::string join(const std::vector<std::string>& items, std::string_view separator = ", ") {
  std::string out;
  for (const auto& item : items) {
    if (!out.empty()) out += separator;
    out += item;
  }
  return out;
}

bool is_one_of(std::string_view value, std::initializer_list<std::string_view> allowed) {
  return std::find(allowed.begin(), allowed.end(), value) != allowed.end();
}

std::string list_quoted(std::initializer_list<std::string_view> allowed) {
  std::string out;
  for (auto a : allowed) {
    if (!out.empty()) out += ", ";
    out += "\"" + std::string(a) + "\"";
  }
  return out;
}

// "sha256/" + base64 of a 32-byte SHA-256 digest (44 characters, one '=').
bool is_valid_pin(std::string_view pin) {
  constexpr std::string_view prefix = "sha256/";
  if (pin.substr(0, prefix.size()) != prefix) return false;
  std::string_view digest = pin.substr(prefix.size());
  if (digest.size() != 44 || digest[43] != '=') return false;
  return std::all_of(digest.begin(), digest.end() - 1, [](char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' || c == '/';
  });
}

std::optional<BusError> check_nonempty_elements(std::string_view key, const std::vector<std::string>& values) {
  std::set<std::string> seen;
  for (const auto& v : values) {
    if (v.empty()) return invalid("property " + quoted(key) + " contains an empty string");
    if (!seen.insert(v).second) return invalid("property " + quoted(key) + " lists \"" + v + "\" twice");
  }
  return std::nullopt;
}

// Reads the value of `key` (already type-checked against its signature) into
// props. Returns an error for values outside the key's vocabulary.
std::optional<BusError> read_value(sd_bus_message* m, std::string_view key, SecurityProperties& props) {
  int r = 0;
  if (key == "protocols") {
    if ((r = read_string_array(m, props.protocols)) < 0) return malformed(key, r);
    if (props.protocols.empty()) return invalid("property 'protocols' must name at least one protocol, e.g. [\"tls\"]");
    return check_nonempty_elements(key, props.protocols);
  }
  if (key == "identity" || key == "psk") {
    std::string& field = key == "identity" ? props.identity : props.psk;
    if ((r = read_string(m, field)) < 0) return malformed(key, r);
    if (field.empty()) return invalid("property " + quoted(key) + " is empty; leave the key out instead");
    return std::nullopt;
  }
  if (key == "algorithms") {
    std::string duplicate;
    if ((r = read_string_array_map(m, props.algorithms, duplicate)) < 0) return malformed(key, r);
    if (!duplicate.empty()) return invalid("property 'algorithms' has the key \"" + duplicate + "\" twice");
    static const std::initializer_list<std::string_view> kAlgorithmKinds = {"ciphersuites", "groups",
                                                                            "signature-algorithms"};
    for (const auto& [kind, names] : props.algorithms) {
      if (!is_one_of(kind, kAlgorithmKinds))
        return invalid("property 'algorithms' has the unknown key \"" + kind + "\"; known keys: " +
                       list_quoted(kAlgorithmKinds));
      if (names.empty()) return invalid("property 'algorithms' key \"" + kind + "\" lists no algorithm");
      if (auto e = check_nonempty_elements("algorithms/" + kind, names)) return e;
    }
    return std::nullopt;
  }
  if (key == "versions") {
    if ((r = read_string_array(m, props.versions)) < 0) return malformed(key, r);
    if (props.versions.empty()) return invalid("property 'versions' must list at least one version");
    for (const auto& v : props.versions)
      if (!is_one_of(v, {"1.2", "1.3"}))
        return invalid("property 'versions' has the unknown version \"" + v + "\"; known versions: \"1.2\", \"1.3\"");
    return check_nonempty_elements(key, props.versions);
  }
  if (key == "alpn") {
    if ((r = read_string_array(m, props.alpn)) < 0) return malformed(key, r);
    for (const auto& id : props.alpn)
      if (id.size() > 255) return invalid("property 'alpn' has a protocol name longer than 255 bytes");
    return check_nonempty_elements(key, props.alpn);
  }
  if (key == "server-name") {
    if ((r = read_string(m, props.server_name)) < 0) return malformed(key, r);
    if (props.server_name.empty()) return invalid("property 'server-name' is empty; leave the key out instead");
    if (props.server_name.size() > 253) return invalid("property 'server-name' is longer than 253 characters");
    return std::nullopt;
  }
  if (key == "session-cache") {
    if ((r = read_bool(m, props.session_cache)) < 0) return malformed(key, r);
    return std::nullopt;
  }
  if (key == "peer-validation") {
    if ((r = read_string(m, props.peer_validation)) < 0) return malformed(key, r);
    static const std::initializer_list<std::string_view> kModes = {"system", "pinned", "application", "none"};
    if (!is_one_of(props.peer_validation, kModes))
      return invalid("property 'peer-validation' is \"" + props.peer_validation + "\"; expected one of " +
                     list_quoted(kModes));
    return std::nullopt;
  }
  if (key == "peer-pins") {
    if ((r = read_string_array(m, props.peer_pins)) < 0) return malformed(key, r);
    if (props.peer_pins.empty()) return invalid("property 'peer-pins' must list at least one pin");
    for (const auto& pin : props.peer_pins)
      if (!is_valid_pin(pin))
        return invalid("property 'peer-pins' has \"" + pin +
                       "\"; a pin is \"sha256/\" followed by the base64 of the SHA-256 digest of the "
                       "peer's SubjectPublicKeyInfo (44 characters)");
    return check_nonempty_elements(key, props.peer_pins);
  }
  if (key == "validator") {
    if ((r = read_object_path(m, props.validator)) < 0) return malformed(key, r);
    return std::nullopt;
  }
  if (key == "require-peer-certificate") {
    if ((r = read_bool(m, props.require_peer_certificate)) < 0) return malformed(key, r);
    return std::nullopt;
  }
  if (key == "export") {
    if ((r = read_bool(m, props.wants_export)) < 0) return malformed(key, r);
    return std::nullopt;
  }
  if (key == "direct-socket") {
    if ((r = read_bool(m, props.direct_socket)) < 0) return malformed(key, r);
    return std::nullopt;
  }
  if (key == "offload") {
    if ((r = read_string(m, props.offload)) < 0) return malformed(key, r);
    if (!is_one_of(props.offload, {"required", "preferred"}))
      return invalid("property 'offload' is \"" + props.offload + "\"; expected \"required\" or \"preferred\"");
    return std::nullopt;
  }
  if (key == "timeout-ms") {
    if ((r = read_uint32(m, props.timeout_ms)) < 0) return malformed(key, r);
    if (props.timeout_ms == 0) return invalid("property 'timeout-ms' must be greater than 0");
    return std::nullopt;
  }
  return invalid("property " + quoted(key) + " has no reader");  // table and readers out of step
}

// Checks between keys, once all are read.
std::optional<BusError> check_combination(const SecurityProperties& props, const std::set<std::string>& given,
                                          std::string_view role) {
  if (props.peer_validation == "pinned" && props.peer_pins.empty())
    return invalid("peer-validation \"pinned\" needs the property 'peer-pins'");
  if (props.peer_validation == "application" && props.validator.empty())
    return invalid("peer-validation \"application\" needs the property 'validator' (an object path on the "
                   "caller's connection implementing org.tapsec1.PeerValidator)");
  if (given.count("peer-pins") && props.peer_validation != "pinned")
    return invalid("property 'peer-pins' is only used with peer-validation \"pinned\"");
  if (given.count("validator") && props.peer_validation != "application")
    return invalid("property 'validator' is only used with peer-validation \"application\"");
  if (role == "client" && props.require_peer_certificate)
    return invalid("property 'require-peer-certificate' applies to the server role only");
  return std::nullopt;
}

}  // namespace

const std::vector<PropertyKey>& known_property_keys() {
  static const std::vector<PropertyKey> keys = {
      {"protocols", "as"},     {"identity", "s"},         {"psk", "s"},
      {"algorithms", "a{sas}"}, {"versions", "as"},        {"alpn", "as"},
      {"server-name", "s"},    {"session-cache", "b"},    {"peer-validation", "s"},
      {"peer-pins", "as"},     {"validator", "o"},        {"require-peer-certificate", "b"},
      {"export", "b"},         {"offload", "s"},          {"timeout-ms", "u"},
      {"direct-socket", "b"},
  };
  return keys;
}

namespace {

// Walks an a{sv}: checks each key against `keys` and its type, then lets
// read(key) consume the value. Returns the keys given.
template <typename ReadValue>
std::variant<std::set<std::string>, BusError> walk_properties(sd_bus_message* m, const std::vector<PropertyKey>& keys,
                                                              ReadValue&& read) {
  std::set<std::string> given;
  int r = sd_bus_message_enter_container(m, 'a', "{sv}");
  if (r < 0) return invalid(std::string("could not read props (expected a{sv}): ") + std::strerror(-r));
  while ((r = sd_bus_message_enter_container(m, 'e', "sv")) > 0) {
    std::string key;
    if ((r = read_string(m, key)) < 0) return malformed("?", r);
    auto known = std::find_if(keys.begin(), keys.end(), [&](const PropertyKey& k) { return k.name == key; });
    if (known == keys.end()) {
      std::vector<std::string> names;
      for (const auto& k : keys) names.emplace_back(k.name);
      return error::make(error::kUnknownProperty,
                         "unknown property " + quoted(key) + "; known properties: " + join(names));
    }
    if (!given.insert(key).second) return invalid("property " + quoted(key) + " is given twice");
    char type = 0;
    const char* contents = nullptr;
    if ((r = sd_bus_message_peek_type(m, &type, &contents)) < 0) return malformed(key, r);
    std::string actual = contents ? contents : "";
    if (type != SD_BUS_TYPE_VARIANT || actual != known->signature)
      return invalid("property " + quoted(key) + " must have type '" + std::string(known->signature) +
                     "', got '" + actual + "'");
    if ((r = sd_bus_message_enter_container(m, 'v', contents)) < 0) return malformed(key, r);
    if (std::optional<BusError> e = read(key)) return *e;
    if ((r = sd_bus_message_exit_container(m)) < 0) return malformed(key, r);  // variant
    if ((r = sd_bus_message_exit_container(m)) < 0) return malformed(key, r);  // dict entry
  }
  if (r < 0) return invalid(std::string("could not read props: ") + std::strerror(-r));
  if ((r = sd_bus_message_exit_container(m)) < 0)
    return invalid(std::string("could not read props: ") + std::strerror(-r));
  return given;
}

bool is_traffic_selector(std::string_view text) {
  // Address, optional /prefix, optional [proto/port]: full checks happen
  // where the tunnel is built; here only the shape.
  if (text.empty() || text.size() > 80) return false;
  return std::all_of(text.begin(), text.end(), [](char c) {
    return std::isxdigit(static_cast<unsigned char>(c)) || std::isalpha(static_cast<unsigned char>(c)) ||
           c == '.' || c == ':' || c == '/' || c == '[' || c == ']' || c == '-';
  });
}

std::optional<BusError> read_tunnel_value(sd_bus_message* m, std::string_view key, TunnelProperties& props) {
  int r = 0;
  if (key == "protocols") {
    if ((r = read_string_array(m, props.protocols)) < 0) return malformed(key, r);
    if (props.protocols.empty()) return invalid("property 'protocols' must name at least one protocol, e.g. [\"ikev2\"]");
    return check_nonempty_elements(key, props.protocols);
  }
  if (key == "identity" || key == "psk" || key == "local-id" || key == "remote-id" || key == "mode") {
    std::string& field = key == "identity"    ? props.identity
                         : key == "psk"       ? props.psk
                         : key == "local-id"  ? props.local_id
                         : key == "remote-id" ? props.remote_id
                                              : props.mode;
    if ((r = read_string(m, field)) < 0) return malformed(key, r);
    if (field.empty()) return invalid("property " + quoted(key) + " is empty; leave the key out instead");
    if (key == "mode" && !is_one_of(field, {"tunnel", "transport"}))
      return invalid("property 'mode' is \"" + field + "\"; expected \"tunnel\" or \"transport\"");
    return std::nullopt;
  }
  if (key == "local-ts" || key == "remote-ts") {
    auto& field = key == "local-ts" ? props.local_ts : props.remote_ts;
    if ((r = read_string_array(m, field)) < 0) return malformed(key, r);
    if (field.empty()) return invalid("property " + quoted(key) + " must list at least one traffic selector");
    for (const auto& ts : field)
      if (!is_traffic_selector(ts))
        return invalid("property " + quoted(key) + " has \"" + ts + "\", which is not a traffic selector (e.g. 10.1.0.0/24)");
    return check_nonempty_elements(key, field);
  }
  if (key == "algorithms") {
    std::string duplicate;
    if ((r = read_string_array_map(m, props.algorithms, duplicate)) < 0) return malformed(key, r);
    if (!duplicate.empty()) return invalid("property 'algorithms' has the key \"" + duplicate + "\" twice");
    static const std::initializer_list<std::string_view> kKinds = {"ike", "esp"};
    for (const auto& [kind, names] : props.algorithms) {
      if (!is_one_of(kind, kKinds))
        return invalid("property 'algorithms' has the unknown key \"" + kind + "\"; known keys: " + list_quoted(kKinds));
      if (names.empty()) return invalid("property 'algorithms' key \"" + kind + "\" lists no proposal");
      if (auto e = check_nonempty_elements("algorithms/" + kind, names)) return e;
    }
    return std::nullopt;
  }
  if (key == "timeout-ms") {
    if ((r = read_uint32(m, props.timeout_ms)) < 0) return malformed(key, r);
    if (props.timeout_ms == 0) return invalid("property 'timeout-ms' must be greater than 0");
    return std::nullopt;
  }
  return invalid("property " + quoted(key) + " has no reader");
}

}  // namespace

const std::vector<PropertyKey>& known_tunnel_property_keys() {
  static const std::vector<PropertyKey> keys = {
      {"protocols", "as"}, {"identity", "s"}, {"psk", "s"},       {"local-id", "s"},   {"remote-id", "s"},
      {"local-ts", "as"},  {"remote-ts", "as"}, {"mode", "s"},    {"algorithms", "a{sas}"}, {"timeout-ms", "u"},
  };
  return keys;
}

std::variant<TunnelProperties, BusError> parse_tunnel_properties(sd_bus_message* m) {
  TunnelProperties props;
  auto given = walk_properties(m, known_tunnel_property_keys(),
                               [&](std::string_view key) { return read_tunnel_value(m, key, props); });
  if (auto* e = std::get_if<BusError>(&given)) return *e;
  if (props.identity.size() && props.psk.size())
    return invalid("properties 'identity' and 'psk' exclude each other: a tunnel authenticates one way");
  return props;
}

std::variant<SecurityProperties, BusError> parse_security_properties(sd_bus_message* m, std::string_view role) {
  SecurityProperties props;
  auto walked = walk_properties(m, known_property_keys(),
                                [&](std::string_view key) { return read_value(m, key, props); });
  if (auto* e = std::get_if<BusError>(&walked)) return *e;
  const std::set<std::string>& given = std::get<std::set<std::string>>(walked);
  if (auto e = check_combination(props, given, role)) return *e;
  return props;
}

}  // namespace tapsec::bus
