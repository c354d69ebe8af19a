#include "dbus/tapsecctl/commands.h"

#include <signal.h>
#include <string.h>
#include <time.h>

#include <systemd/sd-event.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <iomanip>
#include <sstream>

#include "dbus/tapsecctl/bus.h"
#include "dbus/tapsecctl/json.h"

namespace tapsec::ctl {
namespace {

constexpr const char* kBusName = "org.tapsec1";
constexpr const char* kManagerPath = "/org/tapsec1";
constexpr const char* kManagerInterface = "org.tapsec1.Manager";
constexpr const char* kAssociationInterface = "org.tapsec1.Association";
constexpr const char* kNotRunning = "tapsecd is not running (org.tapsec1 not on the bus)";

using PropertyList = std::vector<std::pair<std::string, Value>>;

struct Context {
  const Invocation& inv;
  std::ostream& out;
  std::ostream& err;
  BusPtr bus;
};

// Reports a failure on stderr, and as {"error":...} on stdout with --json.
int report_error(Context& ctx, const std::string& what, const std::string& error_name = "") {
  ctx.err << "tapsecctl: " << what << "\n";
  if (ctx.inv.json) {
    JsonWriter json;
    json.begin_object();
    json.key("error");
    json.begin_object();
    json.field("name", error_name);
    json.field("message", what);
    json.end_object();
    json.end_object();
    ctx.out << json.str() << "\n";
  }
  return kExitFailure;
}

int report_bus_error(Context& ctx, const std::string& action, BusError& error, int r) {
  if (error.is_set()) {
    const std::string name = error.name();
    if (name == "org.freedesktop.DBus.Error.ServiceUnknown" || name == "org.freedesktop.DBus.Error.NameHasNoOwner")
      return report_error(ctx, kNotRunning, name);
    if (name == "org.freedesktop.DBus.Error.UnknownObject" || name == "org.tapsec1.Error.NoSuchAssociation")
      return report_error(ctx, action + ": no such association", name);
    if (name == "org.freedesktop.DBus.Error.UnknownMethod")
      return report_error(ctx, action + ": this tapsecd does not offer it (" + error.message() + ")", name);
    if (name == "org.freedesktop.DBus.Error.AccessDenied")
      return report_error(ctx, action + ": permission denied (" + error.message() + ")", name);
    return report_error(ctx, action + ": " + error.message(), name);
  }
  return report_error(ctx, action + ": " + strerror(-r));
}

int connect(Context& ctx) {
  int r = open_bus(ctx.inv.bus, ctx.bus);
  if (r < 0)
    return report_error(ctx, "cannot connect to the " +
                                 (ctx.inv.bus == "system" || ctx.inv.bus == "session" ? ctx.inv.bus + " bus"
                                                                                       : "bus at " + ctx.inv.bus) +
                                 ": " + strerror(-r));
  return kExitSuccess;
}

// Fails with the "not running" message when org.tapsec1 has no owner.
int require_agent(Context& ctx) {
  BusError error;
  sd_bus_message* reply = nullptr;
  int r = sd_bus_call_method(ctx.bus.get(), "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                             "NameHasOwner", error.get(), &reply, "s", kBusName);
  MessagePtr owned(reply);
  if (r < 0) return report_bus_error(ctx, "asking the bus for tapsecd", error, r);
  int has_owner = 0;
  r = sd_bus_message_read(reply, "b", &has_owner);
  if (r < 0 || !has_owner) return report_error(ctx, kNotRunning, "org.freedesktop.DBus.Error.ServiceUnknown");
  return kExitSuccess;
}

int get_all(Context& ctx, const std::string& path, const char* interface, PropertyList& props, BusError& error) {
  sd_bus_message* reply = nullptr;
  int r = sd_bus_call_method(ctx.bus.get(), kBusName, path.c_str(), "org.freedesktop.DBus.Properties", "GetAll",
                             error.get(), &reply, "s", interface);
  MessagePtr owned(reply);
  if (r < 0) return r;
  return read_property_dict(reply, props);
}

int list_associations(Context& ctx, std::vector<std::string>& paths, BusError& error) {
  sd_bus_message* reply = nullptr;
  int r = sd_bus_call_method(ctx.bus.get(), kBusName, kManagerPath, kManagerInterface, "ListAssociations", error.get(),
                             &reply, "");
  MessagePtr owned(reply);
  if (r < 0) return r;
  r = sd_bus_message_enter_container(reply, 'a', "o");
  if (r < 0) return r;
  const char* path = nullptr;
  while ((r = sd_bus_message_read_basic(reply, 'o', &path)) > 0) paths.emplace_back(path);
  if (r < 0) return r;
  // Numeric order of ids, whatever order the agent listed them in.
  std::sort(paths.begin(), paths.end(), [](const std::string& a, const std::string& b) {
    return a.size() != b.size() ? a.size() < b.size() : a < b;
  });
  return sd_bus_message_exit_container(reply);
}

std::string format_bytes(std::uint64_t bytes) {
  static const char* units[] = {"B", "K", "M", "G", "T"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1024 && unit < 4) {
    value /= 1024;
    unit++;
  }
  char text[32];
  if (unit == 0)
    std::snprintf(text, sizeof(text), "%llu%s", static_cast<unsigned long long>(bytes), units[unit]);
  else
    std::snprintf(text, sizeof(text), "%.1f%s", value, units[unit]);
  return text;
}

// µs since the epoch → "2024-05-01T12:00:00Z" (UTC); 0 → "".
std::string format_timestamp(std::uint64_t usec) {
  if (usec == 0) return "";
  time_t seconds = static_cast<time_t>(usec / 1000000);
  struct tm tm {};
  gmtime_r(&seconds, &tm);
  char text[40];
  strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return text;
}

std::string now_timestamp() {
  struct timespec ts {};
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm {};
  gmtime_r(&ts.tv_sec, &tm);
  char text[48];
  size_t n = strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%S", &tm);
  std::snprintf(text + n, sizeof(text) - n, ".%06ldZ", ts.tv_nsec / 1000);
  return text;
}

// ------------------------------------------------------------------ status

int cmd_status(Context& ctx) {
  BusError error;
  PropertyList props;
  int r = get_all(ctx, kManagerPath, kManagerInterface, props, error);
  if (r < 0) return report_bus_error(ctx, "reading the agent's properties", error, r);
  std::vector<std::string> paths;
  BusError list_error;
  r = list_associations(ctx, paths, list_error);
  if (r < 0) return report_bus_error(ctx, "listing associations", list_error, r);

  std::vector<std::string> features;
  if (const Value* v = find_property(props, "KernelFeatures"))
    for (const auto& item : v->items) features.push_back(value_to_text(item));
  const std::uint64_t entries = property_number(props, "SessionCacheEntries");
  const std::uint64_t capacity = property_number(props, "SessionCacheCapacity");
  std::vector<std::pair<std::string, std::uint64_t>> statistics;
  if (const Value* v = find_property(props, "Statistics"))
    for (const auto& [key, value] : v->entries) statistics.emplace_back(key, value.unsigned_number);

  if (ctx.inv.json) {
    JsonWriter json;
    json.begin_object();
    json.field("version", property_text(props, "Version"));
    json.field("kernel_features", features);
    json.field("associations", static_cast<std::uint64_t>(paths.size()));
    json.key("session_cache");
    json.begin_object();
    json.field("entries", entries);
    json.field("capacity", capacity);
    json.end_object();
    json.key("statistics");
    json.begin_object();
    for (const auto& [key, value] : statistics) json.field(key, value);
    json.end_object();
    json.end_object();
    ctx.out << json.str() << "\n";
    return kExitSuccess;
  }
  std::string feature_text;
  for (const auto& f : features) feature_text += (feature_text.empty() ? "" : " ") + f;
  ctx.out << "        Agent: tapsecd " << property_text(props, "Version") << "\n"
          << "Kernel offload: " << (feature_text.empty() ? "none (userspace fallback only)" : feature_text) << "\n"
          << " Associations: " << paths.size() << "\n"
          << "Session cache: " << entries << " of " << capacity << " entries\n";
  for (const auto& [key, value] : statistics) {
    if (&key == &statistics.front().first) ctx.out << "   Statistics:";
    ctx.out << " " << key << "=" << value;
  }
  if (!statistics.empty()) ctx.out << "\n";
  return kExitSuccess;
}

// ------------------------------------------------------------ associations

struct AssociationRow {
  std::string path;
  PropertyList props;
};

// GetAll of every listed association, in id order. An association may end
// between listing and reading: it is skipped.
int read_associations(Context& ctx, std::vector<AssociationRow>& rows, BusError& error) {
  std::vector<std::string> paths;
  int r = list_associations(ctx, paths, error);
  if (r < 0) return r;
  for (const auto& path : paths) {
    AssociationRow row{path, {}};
    BusError get_error;
    if (get_all(ctx, path, kAssociationInterface, row.props, get_error) < 0) continue;
    rows.push_back(std::move(row));
  }
  return 0;
}

std::vector<std::string> property_strings(const PropertyList& props, const std::string& name) {
  std::vector<std::string> items;
  if (const Value* v = find_property(props, name))
    for (const auto& item : v->items) items.push_back(value_to_text(item));
  return items;
}

// The Parent property as an association number; 0 for "/" (none) or absent.
std::uint64_t parent_id(const PropertyList& props) {
  const std::string path = property_text(props, "Parent");
  const std::string id = association_id_from_path(path);
  if (id.empty() || id == path) return 0;
  std::uint64_t number = 0;
  for (char c : id) {
    if (c < '0' || c > '9') return 0;
    number = number * 10 + static_cast<std::uint64_t>(c - '0');
  }
  return number;
}

// The fields of one association in JSON, snake_case, in a stable order.
// "id" stays a string (as it always was); "parent" is a number, 0 = none.
void write_association_fields(JsonWriter& json, const std::string& path, const PropertyList& props) {
  json.field("id", association_id_from_path(path));
  json.field("path", path);
  json.field("protocol", property_text(props, "Protocol"));
  json.field("version", property_text(props, "Version"));
  json.field("cipher", property_text(props, "Cipher"));
  json.field("offload", property_text(props, "Offload"));
  json.field("peer_address", property_text(props, "PeerAddress"));
  json.field("peer_identity", property_text(props, "PeerIdentity"));
  json.field("state", property_text(props, "State"));
  json.field("bytes_sent", property_number(props, "BytesSent"));
  json.field("bytes_received", property_number(props, "BytesReceived"));
  json.field("key_epoch", property_number(props, "KeyEpoch"));
  json.field("group", property_text(props, "Group"));
  json.field("local_address", property_text(props, "LocalAddress"));
  json.field("local_identity", property_text(props, "LocalIdentity"));
  json.field("expires_at", property_number(props, "ExpiresAt"));
  json.field("created_at", property_number(props, "CreatedAt"));
  json.field("parent", parent_id(props));
  json.field("tunnel_name", property_text(props, "TunnelName"));
  json.field("mode", property_text(props, "Mode"));
  json.field("local_ts", property_strings(props, "LocalTrafficSelectors"));
  json.field("remote_ts", property_strings(props, "RemoteTrafficSelectors"));
  json.field("inbound_spi", property_text(props, "InboundSPI"));
  json.field("outbound_spi", property_text(props, "OutboundSPI"));
  json.field("encapsulation", property_text(props, "Encapsulation"));
  json.field("packets_sent", property_number(props, "PacketsSent"));
  json.field("packets_received", property_number(props, "PacketsReceived"));
}

int cmd_associations(Context& ctx) {
  BusError error;
  std::vector<AssociationRow> rows;
  int r = read_associations(ctx, rows, error);
  if (r < 0) return report_bus_error(ctx, "listing associations", error, r);

  if (ctx.inv.json) {
    JsonWriter json;
    json.begin_object();
    json.key("associations");
    json.begin_array();
    for (const auto& row : rows) {
      json.begin_object();
      write_association_fields(json, row.path, row.props);
      json.end_object();
    }
    json.end_array();
    json.end_object();
    ctx.out << json.str() << "\n";
    return kExitSuccess;
  }

  // Tunnel columns only when some association belongs to a tunnel.
  const bool tunnels = std::any_of(rows.begin(), rows.end(), [](const AssociationRow& row) {
    return parent_id(row.props) != 0 || !property_text(row.props, "TunnelName").empty();
  });
  std::vector<std::string> headers = {"ID", "PROTOCOL", "VERSION", "CIPHER", "OFFLOAD", "PEER", "STATE",
                                      "SENT/RECEIVED"};
  if (tunnels) headers.insert(headers.end(), {"PARENT", "TUNNEL"});
  std::vector<std::vector<std::string>> table;
  for (const auto& row : rows) {
    table.push_back({association_id_from_path(row.path), property_text(row.props, "Protocol"),
                     property_text(row.props, "Version"), property_text(row.props, "Cipher"),
                     property_text(row.props, "Offload"), property_text(row.props, "PeerAddress"),
                     property_text(row.props, "State"),
                     format_bytes(property_number(row.props, "BytesSent")) + "/" +
                         format_bytes(property_number(row.props, "BytesReceived"))});
    if (tunnels) {
      const std::uint64_t parent = parent_id(row.props);
      const std::string name = property_text(row.props, "TunnelName");
      table.back().push_back(parent ? std::to_string(parent) : "-");
      table.back().push_back(name.empty() ? "-" : name);
    }
  }
  std::vector<size_t> widths(headers.size());
  for (size_t c = 0; c < headers.size(); c++) {
    widths[c] = headers[c].size();
    for (const auto& cells : table) widths[c] = std::max(widths[c], cells[c].size());
  }
  auto print_row = [&](const std::vector<std::string>& cells) {
    std::string line;
    for (size_t c = 0; c < cells.size(); c++) {
      line += cells[c];
      if (c + 1 < cells.size()) line += std::string(widths[c] - cells[c].size() + 2, ' ');
    }
    ctx.out << line << "\n";
  };
  print_row(headers);
  for (const auto& cells : table) print_row(cells);
  ctx.out << "\n" << rows.size() << (rows.size() == 1 ? " association" : " associations") << " listed.\n";
  return kExitSuccess;
}

// -------------------------------------------------------------------- show

int cmd_show(Context& ctx) {
  BusError error;
  PropertyList props;
  int r = get_all(ctx, ctx.inv.association_path, kAssociationInterface, props, error);
  if (r < 0) return report_bus_error(ctx, "association " + association_id_from_path(ctx.inv.association_path), error, r);

  if (ctx.inv.json) {
    JsonWriter json;
    json.begin_object();
    write_association_fields(json, ctx.inv.association_path, props);
    json.key("properties");
    json.begin_object();
    for (const auto& [name, value] : props) {
      json.key(name);
      write_value_json(json, value);
    }
    json.end_object();
    json.end_object();
    ctx.out << json.str() << "\n";
    return kExitSuccess;
  }
  size_t width = 0;
  for (const auto& [name, value] : props) width = std::max(width, name.size());
  ctx.out << "Association " << association_id_from_path(ctx.inv.association_path) << " ("
          << ctx.inv.association_path << ")\n";
  for (const auto& [name, value] : props) {
    std::string text = value_to_text(value);
    if ((name == "ExpiresAt" || name == "CreatedAt") && value.kind == Value::Kind::Unsigned)
      text = value.unsigned_number == 0 ? "never" : format_timestamp(value.unsigned_number);
    if (name == "Parent") text = parent_id(props) ? std::to_string(parent_id(props)) + " (" + text + ")" : "none";
    ctx.out << std::string(width - name.size() + 2, ' ') << name << ": " << text << "\n";
  }
  return kExitSuccess;
}

// -------------------------------------------------- terminate, update-keys

int call_association(Context& ctx, const char* method, const char* action, const char* result,
                     const std::function<int(sd_bus_message*)>& append) {
  BusError error;
  sd_bus_message* call = nullptr;
  int r = sd_bus_message_new_method_call(ctx.bus.get(), &call, kBusName, ctx.inv.association_path.c_str(),
                                         kAssociationInterface, method);
  MessagePtr owned_call(call);
  if (r >= 0 && append) r = append(call);
  sd_bus_message* reply = nullptr;
  if (r >= 0) r = sd_bus_call(ctx.bus.get(), call, 0, error.get(), &reply);
  MessagePtr owned_reply(reply);
  const std::string id = association_id_from_path(ctx.inv.association_path);
  if (r < 0) return report_bus_error(ctx, std::string(action) + " association " + id, error, r);
  if (ctx.inv.json) {
    JsonWriter json;
    json.begin_object();
    json.field("id", id);
    json.field("result", result);
    if (ctx.inv.command == Command::UpdateKeys) json.field("request_peer", ctx.inv.request_peer);
    json.end_object();
    ctx.out << json.str() << "\n";
  }
  return kExitSuccess;
}

int cmd_terminate(Context& ctx) { return call_association(ctx, "Terminate", "terminating", "terminated", nullptr); }

int cmd_update_keys(Context& ctx) {
  const int request_peer = ctx.inv.request_peer;
  return call_association(ctx, "UpdateKeys", "updating keys of", "keys-updated",
                          [&](sd_bus_message* m) { return sd_bus_message_append(m, "b", request_peer); });
}

// ------------------------------------------------------------------ export

int cmd_export(Context& ctx) {
  BusError error;
  sd_bus_message* call = nullptr;
  int r = sd_bus_message_new_method_call(ctx.bus.get(), &call, kBusName, ctx.inv.association_path.c_str(),
                                         kAssociationInterface, "ExportKeyingMaterial");
  MessagePtr owned_call(call);
  if (r >= 0) r = sd_bus_message_append_basic(call, 's', ctx.inv.label.c_str());
  if (r >= 0) r = sd_bus_message_append_array(call, 'y', ctx.inv.context.data(), ctx.inv.context.size());
  if (r >= 0) r = sd_bus_message_append_basic(call, 'u', &ctx.inv.length);
  sd_bus_message* reply = nullptr;
  if (r >= 0) r = sd_bus_call(ctx.bus.get(), call, 0, error.get(), &reply);
  MessagePtr owned_reply(reply);
  const std::string id = association_id_from_path(ctx.inv.association_path);
  if (r < 0) return report_bus_error(ctx, "exporting keying material of association " + id, error, r);
  sd_bus_message_sensitive(reply);
  const void* data = nullptr;
  size_t size = 0;
  r = sd_bus_message_read_array(reply, 'y', &data, &size);
  if (r < 0) return report_error(ctx, "the agent's reply could not be read");
  std::string hex = to_hex(static_cast<const std::uint8_t*>(data), size);
  if (ctx.inv.json) {
    JsonWriter json;
    json.begin_object();
    json.field("id", id);
    json.field("label", ctx.inv.label);
    json.field("context", to_hex(ctx.inv.context.data(), ctx.inv.context.size()));
    json.field("length", static_cast<std::uint64_t>(size));
    json.field("material", hex);
    json.end_object();
    ctx.out << json.str() << "\n";
    std::string& text = const_cast<std::string&>(json.str());
    explicit_bzero(text.data(), text.size());
  } else {
    ctx.out << hex << "\n";
  }
  explicit_bzero(hex.data(), hex.size());
  return kExitSuccess;
}

// ------------------------------------------------------------- tunnel up

// Appends key -> variant(type, value) to an open a{sv}.
template <typename Append>
int append_prop(sd_bus_message* m, const char* key, const char* type, Append append_value) {
  int r = sd_bus_message_open_container(m, 'e', "sv");
  if (r >= 0) r = sd_bus_message_append_basic(m, 's', key);
  if (r >= 0) r = sd_bus_message_open_container(m, 'v', type);
  if (r >= 0) r = append_value();
  if (r >= 0) r = sd_bus_message_close_container(m);
  if (r >= 0) r = sd_bus_message_close_container(m);
  return r;
}

int append_strings(sd_bus_message* m, const std::vector<std::string>& items) {
  int r = sd_bus_message_open_container(m, 'a', "s");
  for (const auto& item : items)
    if (r >= 0) r = sd_bus_message_append_basic(m, 's', item.c_str());
  if (r >= 0) r = sd_bus_message_close_container(m);
  return r;
}

// The EstablishTunnel props: only what was given, so the policy's tunnel
// settings apply to everything else.
int append_tunnel_props(sd_bus_message* m, const TunnelUpOptions& t) {
  int r = sd_bus_message_open_container(m, 'a', "{sv}");
  const auto string_prop = [&](const char* key, const std::string& value) {
    if (r >= 0 && !value.empty())
      r = append_prop(m, key, "s", [&] { return sd_bus_message_append_basic(m, 's', value.c_str()); });
  };
  const auto list_prop = [&](const char* key, const std::vector<std::string>& items) {
    if (r >= 0 && !items.empty()) r = append_prop(m, key, "as", [&] { return append_strings(m, items); });
  };
  if (!t.protocol.empty()) list_prop("protocols", {t.protocol});
  string_prop("psk", t.psk);
  string_prop("identity", t.identity);
  string_prop("local-id", t.local_id);
  string_prop("remote-id", t.remote_id);
  list_prop("local-ts", t.local_ts);
  list_prop("remote-ts", t.remote_ts);
  string_prop("mode", t.mode);
  if (r >= 0 && (!t.ike_proposals.empty() || !t.esp_proposals.empty())) {
    r = append_prop(m, "algorithms", "a{sas}", [&] {
      int rr = sd_bus_message_open_container(m, 'a', "{sas}");
      for (const auto& [kind, proposals] : {std::pair{"ike", &t.ike_proposals}, std::pair{"esp", &t.esp_proposals}}) {
        if (proposals->empty()) continue;
        if (rr >= 0) rr = sd_bus_message_open_container(m, 'e', "sas");
        if (rr >= 0) rr = sd_bus_message_append_basic(m, 's', kind);
        if (rr >= 0) rr = append_strings(m, *proposals);
        if (rr >= 0) rr = sd_bus_message_close_container(m);
      }
      if (rr >= 0) rr = sd_bus_message_close_container(m);
      return rr;
    });
  }
  if (r >= 0 && t.timeout_ms)
    r = append_prop(m, "timeout-ms", "u", [&] { return sd_bus_message_append_basic(m, 'u', &*t.timeout_ms); });
  if (r >= 0) r = sd_bus_message_close_container(m);
  return r;
}

constexpr std::uint32_t kDefaultTunnelTimeoutMs = 30000;

int cmd_tunnel_up(Context& ctx) {
  const TunnelUpOptions& t = ctx.inv.tunnel;
  BusError error;
  sd_bus_message* call = nullptr;
  int r = sd_bus_message_new_method_call(ctx.bus.get(), &call, kBusName, kManagerPath, kManagerInterface,
                                         "EstablishTunnel");
  MessagePtr owned_call(call);
  if (r >= 0) r = sd_bus_message_append_basic(call, 's', t.peer.c_str());
  if (r >= 0) r = append_tunnel_props(call, t);
  if (r < 0) return report_error(ctx, std::string("cannot build the EstablishTunnel call: ") + strerror(-r));
  // The agent answers when the IKE SA is up or the handshake timed out;
  // wait a little longer than its timeout so its own error wins.
  const std::uint64_t wait_usec = (std::uint64_t{t.timeout_ms.value_or(kDefaultTunnelTimeoutMs)} + 5000) * 1000;
  sd_bus_message* reply = nullptr;
  r = sd_bus_call(ctx.bus.get(), call, wait_usec, error.get(), &reply);
  MessagePtr owned_reply(reply);
  if (r < 0) return report_bus_error(ctx, "establishing tunnel " + t.peer, error, r);
  const char* path = nullptr;
  r = sd_bus_message_read(reply, "o", &path);
  if (r < 0 || !path) return report_error(ctx, "the agent's reply could not be read");
  const std::string id = association_id_from_path(path);
  if (ctx.inv.json) {
    JsonWriter json;
    json.begin_object();
    json.field("peer", t.peer);
    json.field("id", id);
    json.field("path", std::string(path));
    json.end_object();
    ctx.out << json.str() << "\n";
  } else {
    const bool wireguard = t.protocol == "wireguard";
    ctx.out << "Tunnel " << t.peer << " is up: " << (wireguard ? "WireGuard interface, association " : "IKE SA ")
            << id << " (" << path << ")\n";
  }
  return kExitSuccess;
}

// ----------------------------------------------------------------- tunnels

struct TunnelRow {
  std::string name, protocol, peer, start, state, path;
};

int cmd_tunnels(Context& ctx) {
  BusError error;
  sd_bus_message* reply = nullptr;
  int r = sd_bus_call_method(ctx.bus.get(), kBusName, kManagerPath, kManagerInterface, "ListTunnels", error.get(),
                             &reply, "");
  MessagePtr owned(reply);
  if (r < 0) return report_bus_error(ctx, "listing tunnels", error, r);
  std::vector<TunnelRow> rows;
  r = sd_bus_message_enter_container(reply, 'a', "(ssssso)");
  while (r >= 0) {
    const char *name, *protocol, *peer, *start, *state, *path;
    r = sd_bus_message_read(reply, "(ssssso)", &name, &protocol, &peer, &start, &state, &path);
    if (r <= 0) break;
    rows.push_back({name, protocol, peer, start, state, path});
  }
  if (r >= 0) r = sd_bus_message_exit_container(reply);
  if (r < 0) return report_error(ctx, "the agent's reply could not be read");

  const auto association = [](const std::string& path) -> std::uint64_t {
    const std::string id = association_id_from_path(path);
    if (id == path || id.empty()) return 0;
    return std::strtoull(id.c_str(), nullptr, 10);
  };
  if (ctx.inv.json) {
    JsonWriter json;
    json.begin_object();
    json.key("tunnels");
    json.begin_array();
    for (const auto& row : rows) {
      json.begin_object();
      json.field("name", row.name);
      json.field("protocol", row.protocol);
      json.field("peer", row.peer);
      json.field("start", row.start);
      json.field("state", row.state);
      json.field("association", association(row.path));
      json.field("path", row.path);
      json.end_object();
    }
    json.end_array();
    json.end_object();
    ctx.out << json.str() << "\n";
    return kExitSuccess;
  }
  const std::vector<std::string> headers = {"NAME", "PROTOCOL", "PEER", "START", "STATE", "IKE SA"};
  std::vector<std::vector<std::string>> table;
  for (const auto& row : rows) {
    const std::uint64_t id = association(row.path);
    table.push_back({row.name, row.protocol, row.peer.empty() ? "%any" : row.peer, row.start, row.state,
                     id ? std::to_string(id) : "-"});
  }
  std::vector<size_t> widths(headers.size());
  for (size_t c = 0; c < headers.size(); c++) {
    widths[c] = headers[c].size();
    for (const auto& cells : table) widths[c] = std::max(widths[c], cells[c].size());
  }
  for (size_t i = 0; i <= table.size(); i++) {
    const auto& cells = i == 0 ? headers : table[i - 1];
    std::string line;
    for (size_t c = 0; c < cells.size(); c++) {
      line += cells[c];
      if (c + 1 < cells.size()) line += std::string(widths[c] - cells[c].size() + 2, ' ');
    }
    ctx.out << line << "\n";
  }
  ctx.out << "\n" << rows.size() << (rows.size() == 1 ? " tunnel" : " tunnels") << " listed.\n";
  return kExitSuccess;
}

// --------------------------------------------------------------------- sas

// "ike" SAs with their children, like `swanctl --list-sas`.
struct IkeSa {
  const AssociationRow* sa;
  std::vector<const AssociationRow*> children;
};

std::string expiry_text(std::uint64_t usec) { return usec == 0 ? "never" : format_timestamp(usec); }

std::string joined(const std::vector<std::string>& items) {
  std::string text;
  for (const auto& item : items) text += (text.empty() ? "" : " ") + item;
  return text.empty() ? "(the outer address)" : text;
}

void print_ike_sa_text(Context& ctx, const IkeSa& ike) {
  const PropertyList& p = ike.sa->props;
  const std::string name = property_text(p, "TunnelName");
  const std::string encapsulation = property_text(p, "Encapsulation");
  std::ostream& out = ctx.out;
  out << (name.empty() ? "(unnamed)" : name) << ": #" << association_id_from_path(ike.sa->path) << ", "
      << property_text(p, "State") << ", " << property_text(p, "Version") << ", SPIs ours "
      << property_text(p, "InboundSPI") << " peer's " << property_text(p, "OutboundSPI") << "\n";
  out << "  local  '" << property_text(p, "LocalIdentity") << "' @ " << property_text(p, "LocalAddress") << "\n";
  out << "  remote '" << property_text(p, "PeerIdentity") << "' @ " << property_text(p, "PeerAddress")
      << (encapsulation.empty() ? "" : " (" + encapsulation + " encapsulation)") << "\n";
  std::string algorithms = property_text(p, "Cipher");
  if (!property_text(p, "Group").empty()) algorithms += "/" + property_text(p, "Group");
  out << "  " << algorithms << "\n";
  out << "  created " << format_timestamp(property_number(p, "CreatedAt")) << ", key epoch "
      << property_number(p, "KeyEpoch") << ", expires " << expiry_text(property_number(p, "ExpiresAt")) << "\n";
  for (const AssociationRow* child : ike.children) {
    const PropertyList& c = child->props;
    const std::string child_encapsulation = property_text(c, "Encapsulation");
    const std::string child_name = property_text(c, "TunnelName");
    out << "  " << (child_name.empty() ? "(unnamed)" : child_name) << ": #" << association_id_from_path(child->path)
        << ", " << property_text(c, "State") << ", ESP " << property_text(c, "Mode")
        << (child_encapsulation.empty() ? "" : " in " + child_encapsulation) << ", SPIs "
        << property_text(c, "InboundSPI") << "_i " << property_text(c, "OutboundSPI") << "_o\n";
    std::string child_algorithms = property_text(c, "Cipher");
    if (!property_text(c, "Group").empty()) child_algorithms += "/" + property_text(c, "Group");
    out << "    " << child_algorithms << "\n";
    out << "    in  " << property_text(c, "InboundSPI") << ", " << property_number(c, "BytesReceived") << " bytes, "
        << property_number(c, "PacketsReceived") << " packets\n";
    out << "    out " << property_text(c, "OutboundSPI") << ", " << property_number(c, "BytesSent") << " bytes, "
        << property_number(c, "PacketsSent") << " packets\n";
    out << "    local  " << joined(property_strings(c, "LocalTrafficSelectors")) << "\n";
    out << "    remote " << joined(property_strings(c, "RemoteTrafficSelectors")) << "\n";
    out << "    key epoch " << property_number(c, "KeyEpoch") << ", expires "
        << expiry_text(property_number(c, "ExpiresAt")) << "\n";
  }
}

int cmd_sas(Context& ctx) {
  BusError error;
  std::vector<AssociationRow> rows;
  int r = read_associations(ctx, rows, error);
  if (r < 0) return report_bus_error(ctx, "listing associations", error, r);

  std::vector<IkeSa> ike_sas;
  for (const auto& row : rows)
    if (property_text(row.props, "Protocol") == "ikev2") ike_sas.push_back({&row, {}});
  std::vector<const AssociationRow*> orphans;  // Child SAs whose IKE SA is gone
  for (const auto& row : rows) {
    if (property_text(row.props, "Protocol") != "esp") continue;
    const std::uint64_t parent = parent_id(row.props);
    auto it = std::find_if(ike_sas.begin(), ike_sas.end(), [&](const IkeSa& ike) {
      return parent != 0 && association_id_from_path(ike.sa->path) == std::to_string(parent);
    });
    if (it != ike_sas.end()) it->children.push_back(&row);
    else orphans.push_back(&row);
  }

  if (ctx.inv.json) {
    JsonWriter json;
    json.begin_array();
    for (const auto& ike : ike_sas) {
      json.begin_object();
      write_association_fields(json, ike.sa->path, ike.sa->props);
      json.key("children");
      json.begin_array();
      for (const AssociationRow* child : ike.children) {
        json.begin_object();
        write_association_fields(json, child->path, child->props);
        json.end_object();
      }
      json.end_array();
      json.end_object();
    }
    json.end_array();
    ctx.out << json.str() << "\n";
    return kExitSuccess;
  }
  for (const auto& ike : ike_sas) print_ike_sa_text(ctx, ike);
  for (const AssociationRow* orphan : orphans)
    ctx.out << "Child SA #" << association_id_from_path(orphan->path) << " (its IKE SA is gone): "
            << property_text(orphan->props, "State") << ", SPIs " << property_text(orphan->props, "InboundSPI")
            << "_i " << property_text(orphan->props, "OutboundSPI") << "_o\n";
  if (ike_sas.empty() && orphans.empty()) ctx.out << "No IKE SAs.\n";
  return kExitSuccess;
}

// ---------------------------------------------------------------------- wg

// A WireGuard interface association with its peer associations.
struct WireGuardLink {
  const AssociationRow* link;
  std::vector<const AssociationRow*> peers;
};

std::uint64_t now_usec() {
  struct timespec ts {};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000000 + static_cast<std::uint64_t>(ts.tv_nsec) / 1000;
}

// Whole seconds between two µs timestamps, rounded to the nearest.
std::uint64_t seconds_between(std::uint64_t earlier_usec, std::uint64_t later_usec) {
  return later_usec > earlier_usec ? (later_usec - earlier_usec + 500000) / 1000000 : 0;
}

// "1 hour, 2 minutes, 5 seconds", as `wg show` writes durations.
std::string duration_text(std::uint64_t seconds) {
  static const std::pair<std::uint64_t, const char*> units[] = {
      {365 * 24 * 3600, "year"}, {24 * 3600, "day"}, {3600, "hour"}, {60, "minute"}, {1, "second"}};
  if (seconds == 0) return "0 seconds";
  std::string text;
  for (const auto& [size, name] : units) {
    const std::uint64_t count = seconds / size;
    seconds %= size;
    if (count == 0) continue;
    text += (text.empty() ? "" : ", ") + std::to_string(count) + " " + name + (count == 1 ? "" : "s");
  }
  return text;
}

// "1.20 KiB", as `wg show` writes transfer sizes.
std::string wg_bytes_text(std::uint64_t bytes) {
  static const char* units[] = {"KiB", "MiB", "GiB", "TiB"};
  if (bytes < 1024) return std::to_string(bytes) + " B";
  double value = static_cast<double>(bytes) / 1024;
  int unit = 0;
  while (value >= 1024 && unit < 3) {
    value /= 1024;
    unit++;
  }
  char text[32];
  std::snprintf(text, sizeof(text), "%.2f %s", value, units[unit]);
  return text;
}

// LocalAddress of an interface association: "a, b" -> {"a", "b"}.
std::vector<std::string> split_addresses(const std::string& text) {
  std::vector<std::string> items;
  std::string item;
  std::istringstream in(text);
  while (std::getline(in, item, ',')) {
    item.erase(0, item.find_first_not_of(' '));
    item.erase(item.find_last_not_of(' ') + 1);
    if (!item.empty()) items.push_back(item);
  }
  return items;
}

std::string psk_text(const PropertyList& peer, std::uint64_t now) {
  const std::string mode = property_text(peer, "PresharedKey");
  if (mode == "static") return "static (imported by name)";
  if (mode != "exchanged") return "none";
  const std::uint64_t epoch = property_number(peer, "KeyEpoch");
  const std::uint64_t rotates = property_number(peer, "ExpiresAt");
  std::string text = "exchanged, epoch " + std::to_string(epoch);
  if (rotates == 0) return text + ", not rotated";
  if (rotates <= now) return text + ", rotation due";
  return text + ", rotates in " + duration_text(seconds_between(now, rotates));
}

void print_wireguard_text(Context& ctx, const std::vector<WireGuardLink>& links) {
  std::ostream& out = ctx.out;
  const std::uint64_t now = now_usec();
  for (const WireGuardLink& link : links) {
    const PropertyList& p = link.link->props;
    if (&link != &links.front()) out << "\n";
    out << "interface: " << property_text(p, "Interface") << "  (tunnel " << property_text(p, "TunnelName")
        << ", offload " << property_text(p, "Offload") << ", " << property_text(p, "State") << ")\n";
    out << "  public key: " << property_text(p, "PublicKey") << "\n";
    out << "  listening port: " << property_number(p, "ListenPort") << "\n";
    const std::string addresses = property_text(p, "LocalAddress");
    out << "  addresses: " << (addresses.empty() ? "(none)" : addresses) << "\n";
    for (const AssociationRow* row : link.peers) {
      const PropertyList& peer = row->props;
      const std::string identity = property_text(peer, "PeerIdentity");
      out << "\n  peer: " << property_text(peer, "PeerPublicKey") << (identity.empty() ? "" : "  (" + identity + ")")
          << "\n";
      const std::string endpoint = property_text(peer, "PeerAddress");
      if (!endpoint.empty()) out << "    endpoint: " << endpoint << "\n";
      std::string allowed;
      for (const auto& prefix : property_strings(peer, "RemoteTrafficSelectors"))
        allowed += (allowed.empty() ? "" : ", ") + prefix;
      out << "    allowed ips: " << (allowed.empty() ? "(none)" : allowed) << "\n";
      const std::uint64_t handshake = property_number(peer, "LastHandshake");
      out << "    latest handshake: "
          << (handshake == 0 ? "(none)" : duration_text(seconds_between(handshake, now)) + " ago") << "\n";
      const std::uint64_t received = property_number(peer, "BytesReceived");
      const std::uint64_t sent = property_number(peer, "BytesSent");
      if (received != 0 || sent != 0)
        out << "    transfer: " << wg_bytes_text(received) << " received, " << wg_bytes_text(sent) << " sent\n";
      out << "    preshared key: " << psk_text(peer, now) << "\n";
      out << "    state: " << property_text(peer, "State") << "\n";
    }
  }
}

void write_wireguard_json(JsonWriter& json, const std::vector<WireGuardLink>& links) {
  json.begin_object();
  json.key("interfaces");
  json.begin_array();
  for (const WireGuardLink& link : links) {
    const PropertyList& p = link.link->props;
    json.begin_object();
    json.field("interface", property_text(p, "Interface"));
    json.field("tunnel", property_text(p, "TunnelName"));
    json.field("offload", property_text(p, "Offload"));
    json.field("state", property_text(p, "State"));
    json.field("public_key", property_text(p, "PublicKey"));
    json.field("listen_port", property_number(p, "ListenPort"));
    json.field("addresses", split_addresses(property_text(p, "LocalAddress")));
    json.field("association", link.link->path);
    json.key("peers");
    json.begin_array();
    for (const AssociationRow* row : link.peers) {
      const PropertyList& peer = row->props;
      json.begin_object();
      json.field("public_key", property_text(peer, "PeerPublicKey"));
      json.field("peer_identity", property_text(peer, "PeerIdentity"));
      json.field("endpoint", property_text(peer, "PeerAddress"));
      json.field("allowed_ips", property_strings(peer, "RemoteTrafficSelectors"));
      json.field("latest_handshake", property_number(peer, "LastHandshake") / 1000000);
      json.field("rx_bytes", property_number(peer, "BytesReceived"));
      json.field("tx_bytes", property_number(peer, "BytesSent"));
      json.field("psk", property_text(peer, "PresharedKey"));
      json.field("psk_epoch", property_number(peer, "KeyEpoch"));
      json.field("psk_rotates_at", property_number(peer, "ExpiresAt") / 1000000);
      json.field("state", property_text(peer, "State"));
      json.field("association", row->path);
      json.end_object();
    }
    json.end_array();
    json.end_object();
  }
  json.end_array();
  json.end_object();
}

int cmd_wg(Context& ctx) {
  BusError error;
  std::vector<AssociationRow> rows;
  int r = read_associations(ctx, rows, error);
  if (r < 0) return report_bus_error(ctx, "listing associations", error, r);

  const auto is_wireguard = [](const AssociationRow& row, const char* role) {
    return property_text(row.props, "Protocol") == "wireguard" && property_text(row.props, "Role") == role;
  };
  std::vector<WireGuardLink> links;
  for (const auto& row : rows)
    if (is_wireguard(row, "interface")) links.push_back({&row, {}});
  for (const auto& row : rows) {
    if (!is_wireguard(row, "peer")) continue;
    const std::string parent = property_text(row.props, "Parent");
    auto it = std::find_if(links.begin(), links.end(), [&](const WireGuardLink& link) { return link.link->path == parent; });
    // A peer whose interface is already gone is about to go too.
    if (it != links.end()) it->peers.push_back(&row);
  }

  if (ctx.inv.json) {
    JsonWriter json;
    write_wireguard_json(json, links);
    ctx.out << json.str() << "\n";
    return kExitSuccess;
  }
  if (links.empty()) {
    ctx.out << "No WireGuard interfaces.\n";
    return kExitSuccess;
  }
  print_wireguard_text(ctx, links);
  return kExitSuccess;
}

int cmd_wg_pubkey(Context& ctx) {
  const std::string& identity = ctx.inv.wireguard_identity;
  BusError error;
  sd_bus_message* reply = nullptr;
  int r = sd_bus_call_method(ctx.bus.get(), kBusName, kManagerPath, kManagerInterface, "GetPublicKey", error.get(),
                             &reply, "s", identity.c_str());
  MessagePtr owned(reply);
  if (r < 0) {
    if (error.name() == "org.tapsec1.Error.UnknownIdentity")
      return report_error(ctx,
                          "the policy has no WireGuard identity '" + identity +
                              "' (an [Identity] section with Type=wireguard): " + error.message(),
                          error.name());
    return report_bus_error(ctx, "reading the public key of " + identity, error, r);
  }
  const char* key = nullptr;
  r = sd_bus_message_read(reply, "s", &key);
  if (r < 0 || !key) return report_error(ctx, "the agent's reply could not be read");
  if (ctx.inv.json) {
    JsonWriter json;
    json.begin_object();
    json.field("identity", identity);
    json.field("public_key", std::string(key));
    json.end_object();
    ctx.out << json.str() << "\n";
  } else {
    ctx.out << key << "\n";
  }
  return kExitSuccess;
}

// ------------------------------------------------------------- flush-cache

int cmd_flush_cache(Context& ctx) {
  BusError error;
  sd_bus_message* reply = nullptr;
  int r = sd_bus_call_method(ctx.bus.get(), kBusName, kManagerPath, kManagerInterface, "FlushSessionCache",
                             error.get(), &reply, "");
  MessagePtr owned(reply);
  if (r < 0) return report_bus_error(ctx, "flushing the session cache", error, r);
  std::uint32_t removed = 0;
  r = sd_bus_message_read(reply, "u", &removed);
  if (r < 0) return report_error(ctx, "the agent's reply could not be read");
  if (ctx.inv.json) {
    JsonWriter json;
    json.begin_object();
    json.field("entries_removed", static_cast<std::uint64_t>(removed));
    json.end_object();
    ctx.out << json.str() << "\n";
  } else {
    ctx.out << "Removed " << removed << (removed == 1 ? " session cache entry." : " session cache entries.") << "\n";
  }
  return kExitSuccess;
}

// ----------------------------------------------------------------- monitor

struct SignalArgumentNames {
  const char* member;
  std::vector<const char*> names;
};

const std::vector<SignalArgumentNames>& association_signal_arguments() {
  static const std::vector<SignalArgumentNames> table = {
      {"KeyExpiring", {"remaining_records"}},
      {"KeysUpdated", {"epoch"}},
      {"PathChanged", {"old_path", "new_path"}},
      {"Terminated", {"reason"}},
  };
  return table;
}

struct MonitorState {
  Context* ctx;
};

// Prints one event: text "TIME EVENT association=ID k=v ..." or a JSON line.
void print_event(Context& ctx, const std::string& event, const std::string& path,
                 const std::vector<std::pair<std::string, Value>>& fields) {
  const std::string time = now_timestamp();
  if (ctx.inv.json) {
    JsonWriter json;
    json.begin_object();
    json.field("time", time);
    json.field("event", event);
    if (!path.empty()) {
      json.field("path", path);
      json.field("id", association_id_from_path(path));
    }
    for (const auto& [name, value] : fields) {
      json.key(name);
      write_value_json(json, value);
    }
    json.end_object();
    ctx.out << json.str() << std::endl;
    return;
  }
  std::string line = time + " " + event;
  if (!path.empty()) line += " association=" + association_id_from_path(path);
  for (const auto& [name, value] : fields) {
    std::string text = value_to_text(value);
    const bool quote = text.empty() || text.find_first_of(" \t\"") != std::string::npos;
    line += " " + name + "=" + (quote ? json_quote(text) : text);
  }
  ctx.out << line << std::endl;
}

int on_association_signal(sd_bus_message* m, void* userdata, sd_bus_error*) {
  auto* state = static_cast<MonitorState*>(userdata);
  const std::string member = sd_bus_message_get_member(m) ? sd_bus_message_get_member(m) : "";
  std::vector<const char*> names;
  for (const auto& entry : association_signal_arguments())
    if (member == entry.member) names = entry.names;
  std::vector<std::pair<std::string, Value>> fields;
  for (size_t i = 0;; i++) {
    Value v;
    if (read_value(m, v) <= 0) break;
    fields.emplace_back(i < names.size() ? names[i] : "arg" + std::to_string(i), std::move(v));
  }
  print_event(*state->ctx, member, sd_bus_message_get_path(m) ? sd_bus_message_get_path(m) : "", fields);
  return 0;
}

int on_interfaces_changed(sd_bus_message* m, void* userdata, sd_bus_error*) {
  auto* state = static_cast<MonitorState*>(userdata);
  const char* path = nullptr;
  if (sd_bus_message_read(m, "o", &path) < 0) return 0;
  const bool added = sd_bus_message_is_signal(m, "org.freedesktop.DBus.ObjectManager", "InterfacesAdded");
  std::vector<std::pair<std::string, Value>> fields;
  if (added) {
    // a{sa{sv}}: show a few identifying properties of a new association.
    Value interfaces;
    if (read_value(m, interfaces) > 0) {
      for (const auto& [interface, props] : interfaces.entries) {
        if (interface != kAssociationInterface) continue;
        for (const char* name : {"Protocol", "Version", "Cipher", "Offload", "PeerAddress", "PeerIdentity"}) {
          for (const auto& [key, value] : props.entries)
            if (key == name) {
              std::string field = name;
              // snake_case field names: PeerAddress -> peer_address
              std::string snake;
              for (char c : field) {
                if (c >= 'A' && c <= 'Z') {
                  if (!snake.empty()) snake.push_back('_');
                  snake.push_back(static_cast<char>(c - 'A' + 'a'));
                } else {
                  snake.push_back(c);
                }
              }
              fields.emplace_back(snake, value);
            }
        }
      }
    }
  }
  print_event(*state->ctx, added ? "AssociationAdded" : "AssociationRemoved", path, fields);
  return 0;
}

// The agent sends its signals to the connections it knows, never as
// broadcasts: a monitor introduces itself as an ObjectManager client does.
void introduce_to_agent(sd_bus* bus) {
  sd_bus_call_method_async(bus, nullptr, kBusName, kManagerPath, "org.freedesktop.DBus.ObjectManager",
                           "GetManagedObjects", nullptr, nullptr, "");
}

int on_name_owner_changed(sd_bus_message* m, void* userdata, sd_bus_error*) {
  auto* state = static_cast<MonitorState*>(userdata);
  const char *name = nullptr, *old_owner = nullptr, *new_owner = nullptr;
  if (sd_bus_message_read(m, "sss", &name, &old_owner, &new_owner) < 0) return 0;
  const bool started = new_owner && *new_owner;
  if (started) introduce_to_agent(sd_bus_message_get_bus(m));
  print_event(*state->ctx, started ? "AgentStarted" : "AgentStopped", "", {});
  return 0;
}

int on_stop_signal(sd_event_source* source, const struct signalfd_siginfo*, void*) {
  return sd_event_exit(sd_event_source_get_event(source), 0);
}

int cmd_monitor(Context& ctx) {
  MonitorState state{&ctx};
  sd_bus* bus = ctx.bus.get();
  std::vector<SlotPtr> slots;
  auto add = [&](const char* sender, const char* path, const char* interface, const char* member,
                 sd_bus_message_handler_t handler) {
    sd_bus_slot* slot = nullptr;
    int r = sd_bus_match_signal(bus, &slot, sender, path, interface, member, handler, &state);
    if (r >= 0) slots.emplace_back(slot);
    return r;
  };
  int r = add(kBusName, nullptr, kAssociationInterface, nullptr, on_association_signal);
  if (r >= 0) r = add(kBusName, kManagerPath, "org.freedesktop.DBus.ObjectManager", nullptr, on_interfaces_changed);
  if (r >= 0) {
    sd_bus_slot* slot = nullptr;
    r = sd_bus_add_match(bus, &slot,
                         "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',"
                         "member='NameOwnerChanged',arg0='org.tapsec1'",
                         on_name_owner_changed, &state);
    if (r >= 0) slots.emplace_back(slot);
  }
  if (r < 0) return report_error(ctx, std::string("cannot subscribe to the agent's signals: ") + strerror(-r));
  introduce_to_agent(bus);

  sd_event* event = nullptr;
  r = sd_event_default(&event);
  if (r < 0) return report_error(ctx, std::string("cannot create the event loop: ") + strerror(-r));
  std::unique_ptr<sd_event, decltype(&sd_event_unref)> owned_event(event, sd_event_unref);
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  sigprocmask(SIG_BLOCK, &stop_signals, nullptr);
  sd_event_source* int_source = nullptr;
  sd_event_source* term_source = nullptr;
  sd_event_add_signal(event, &int_source, SIGINT, on_stop_signal, nullptr);
  sd_event_add_signal(event, &term_source, SIGTERM, on_stop_signal, nullptr);
  r = sd_bus_attach_event(bus, event, SD_EVENT_PRIORITY_NORMAL);
  if (r < 0) return report_error(ctx, std::string("cannot attach to the event loop: ") + strerror(-r));
  if (!ctx.inv.json) ctx.err << "Monitoring tapsecd events; press Ctrl-C to stop.\n";
  r = sd_event_loop(event);
  sd_bus_detach_event(bus);
  sd_event_source_unref(int_source);
  sd_event_source_unref(term_source);
  sigprocmask(SIG_UNBLOCK, &stop_signals, nullptr);
  if (r < 0) return report_error(ctx, std::string("event loop failed: ") + strerror(-r));
  return kExitSuccess;
}

}  // namespace

int run(const Invocation& inv, std::ostream& out, std::ostream& err) {
  if (inv.command == Command::Help) {
    out << kUsage;
    return kExitSuccess;
  }
  if (inv.command == Command::PolicyCheck) return run_policy_check(inv.policy, inv.json, out, err);

  Context ctx{inv, out, err, nullptr};
  if (int r = connect(ctx); r != kExitSuccess) return r;
  if (inv.command == Command::Monitor) {
    // The agent need not be running yet: its start is an event too.
    return cmd_monitor(ctx);
  }
  if (int r = require_agent(ctx); r != kExitSuccess) return r;
  switch (inv.command) {
    case Command::Status: return cmd_status(ctx);
    case Command::Associations: return cmd_associations(ctx);
    case Command::Show: return cmd_show(ctx);
    case Command::Terminate: return cmd_terminate(ctx);
    case Command::UpdateKeys: return cmd_update_keys(ctx);
    case Command::Export: return cmd_export(ctx);
    case Command::FlushCache: return cmd_flush_cache(ctx);
    case Command::TunnelUp: return cmd_tunnel_up(ctx);
    case Command::Tunnels: return cmd_tunnels(ctx);
    case Command::Sas: return cmd_sas(ctx);
    case Command::Wg: return cmd_wg(ctx);
    case Command::WgPubkey: return cmd_wg_pubkey(ctx);
    default: break;
  }
  return report_error(ctx, "internal error: unhandled command");
}

}  // namespace tapsec::ctl
