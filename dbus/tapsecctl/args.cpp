#include "dbus/tapsecctl/args.h"

#include <grp.h>
#include <pwd.h>

#include <charconv>
#include <cstring>
#include <map>

namespace tapsec::ctl {

const char* const kUsage =
    "Usage: tapsecctl [OPTIONS] COMMAND [ARGS]\n"
    "\n"
    "Inspect and control tapsecd, the transport security offload agent.\n"
    "\n"
    "Commands:\n"
    "  status                     Agent version, kernel features, associations, session cache\n"
    "  associations               List security associations\n"
    "  show ID                    Show all properties of an association\n"
    "  terminate ID               End an association (close_notify)\n"
    "  update-keys ID [--request-peer]\n"
    "                             Update the traffic keys (TLS 1.3 KeyUpdate)\n"
    "  export ID --label L [--context HEX] --length N\n"
    "                             Export keying material (RFC 8446 7.5), printed as hex\n"
    "  flush-cache                Empty the agent's session resumption cache\n"
    "  policy check --uid U --role client|server --host H --port P --protocols P[,P...]\n"
    "               [--dir D] [--gid G] [--unit U] [--address A] [--identity I]\n"
    "               [--psk K] [--export] [--peer-validation M] [--offload required|preferred]\n"
    "  policy check --uid U --tunnel NAME [other options as above]\n"
    "                             The same for the request a [Tunnel] makes; its protocol,\n"
    "                             peer, port and PSK or identity fill in what is not given\n"
    "                             Evaluate the policy for a request, without the agent;\n"
    "                             exit status 0 allowed, 1 denied, 2 error\n"
    "  monitor                    Print association events as they happen, until interrupted\n"
    "  tunnel up NAME|ADDRESS [--psk N] [--identity N] [--local-id ID] [--remote-id ID]\n"
    "            [--local-ts P]... [--remote-ts P]... [--mode tunnel|transport]\n"
    "            [--ike-proposal S]... [--esp-proposal S]... [--timeout-ms N]\n"
    "            [--protocol ikev2|wireguard]\n"
    "                             Establish a tunnel: a tunnel named in the policy, or an IPsec\n"
    "                             (IKEv2) peer address with the options; prints the IKE SA, or\n"
    "                             the WireGuard interface\n"
    "  tunnels                    List the tunnels the policy defines and their state\n"
    "  sas                        IKE SAs with their Child SAs: identities, addresses,\n"
    "                             algorithms, SPIs, traffic selectors, counters, expiry\n"
    "  wg [show]                  WireGuard interfaces and their peers, like `wg show`\n"
    "  wg pubkey IDENTITY         The public key of a Type=wireguard identity (base64)\n"
    "\n"
    "Options:\n"
    "  --bus system|session|ADDRESS  Bus to talk to tapsecd on (default: system)\n"
    "  --json                        Machine-readable output (one JSON document per line)\n"
    "  -h, --help                    Show this help\n"
    "\n"
    "ID is an association number or its object path (/org/tapsec1/association/ID).\n";

namespace {

constexpr const char* kAssociationPrefix = "/org/tapsec1/association/";

struct OptionSpec {
  bool takes_value;
  std::vector<Command> commands;  // where the option is accepted
  bool repeatable = false;        // values accumulate
};

const std::map<std::string, OptionSpec>& command_options() {
  static const std::map<std::string, OptionSpec> options = {
      {"request-peer", {false, {Command::UpdateKeys}}},
      {"label", {true, {Command::Export}}},
      {"context", {true, {Command::Export}}},
      {"length", {true, {Command::Export}}},
      {"dir", {true, {Command::PolicyCheck}}},
      {"uid", {true, {Command::PolicyCheck}}},
      {"gid", {true, {Command::PolicyCheck}}},
      {"unit", {true, {Command::PolicyCheck}}},
      {"role", {true, {Command::PolicyCheck}}},
      {"host", {true, {Command::PolicyCheck}}},
      {"address", {true, {Command::PolicyCheck}}},
      {"port", {true, {Command::PolicyCheck}}},
      {"protocols", {true, {Command::PolicyCheck}}},
      {"identity", {true, {Command::PolicyCheck, Command::TunnelUp}}},
      {"psk", {true, {Command::PolicyCheck, Command::TunnelUp}}},
      {"tunnel", {true, {Command::PolicyCheck}}},
      {"local-id", {true, {Command::TunnelUp}}},
      {"remote-id", {true, {Command::TunnelUp}}},
      {"local-ts", {true, {Command::TunnelUp}, true}},
      {"remote-ts", {true, {Command::TunnelUp}, true}},
      {"mode", {true, {Command::TunnelUp}}},
      {"ike-proposal", {true, {Command::TunnelUp}, true}},
      {"esp-proposal", {true, {Command::TunnelUp}, true}},
      {"timeout-ms", {true, {Command::TunnelUp}}},
      {"protocol", {true, {Command::TunnelUp}}},
      {"export", {false, {Command::PolicyCheck}}},
      {"peer-validation", {true, {Command::PolicyCheck}}},
      {"offload", {true, {Command::PolicyCheck}}},
  };
  return options;
}

const std::map<std::string, Command>& command_names() {
  static const std::map<std::string, Command> names = {
      {"status", Command::Status},         {"associations", Command::Associations},
      {"show", Command::Show},             {"terminate", Command::Terminate},
      {"update-keys", Command::UpdateKeys}, {"export", Command::Export},
      {"flush-cache", Command::FlushCache}, {"monitor", Command::Monitor},
      {"tunnels", Command::Tunnels},       {"sas", Command::Sas},
      {"help", Command::Help},
  };
  return names;
}

template <typename Number>
bool parse_number(const std::string& text, Number& out) {
  if (text.empty()) return false;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  return ec == std::errc() && end == text.data() + text.size();
}

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> items;
  size_t start = 0;
  while (start <= text.size()) {
    size_t comma = text.find(',', start);
    if (comma == std::string::npos) comma = text.size();
    if (comma > start) items.push_back(text.substr(start, comma - start));
    start = comma + 1;
  }
  return items;
}

ParseResult fail(std::string message) { return ParseResult{std::nullopt, std::move(message)}; }

// Fills uid (and, from the user database, gid and groups) from a number or
// a user name.
bool resolve_user(const std::string& text, PolicyCheckOptions& policy, bool& gid_known) {
  struct passwd* pw = nullptr;
  uid_t uid = 0;
  if (parse_number(text, uid)) {
    policy.uid = uid;
    pw = getpwuid(uid);
  } else {
    pw = getpwnam(text.c_str());
    if (!pw) return false;
    policy.uid = pw->pw_uid;
  }
  if (pw) {
    policy.gid = pw->pw_gid;
    gid_known = true;
    int count = 64;
    std::vector<gid_t> groups(count);
    if (getgrouplist(pw->pw_name, pw->pw_gid, groups.data(), &count) < 0) {
      groups.resize(count);
      getgrouplist(pw->pw_name, pw->pw_gid, groups.data(), &count);
    }
    groups.resize(count > 0 ? count : 0);
    for (gid_t g : groups)
      if (g != pw->pw_gid) policy.supplementary_gids.push_back(g);
  }
  return true;
}

bool resolve_group(const std::string& text, gid_t& gid) {
  if (parse_number(text, gid)) return true;
  struct group* gr = getgrnam(text.c_str());
  if (!gr) return false;
  gid = gr->gr_gid;
  return true;
}

}  // namespace

std::string association_path_from_argument(const std::string& argument) {
  std::string id = argument;
  if (argument.rfind(kAssociationPrefix, 0) == 0) id = argument.substr(std::strlen(kAssociationPrefix));
  if (id.empty() || id.size() > 20) return "";
  for (char c : id)
    if (c < '0' || c > '9') return "";
  return kAssociationPrefix + id;
}

std::string association_id_from_path(const std::string& path) {
  if (path.rfind(kAssociationPrefix, 0) == 0) return path.substr(std::strlen(kAssociationPrefix));
  return path;
}

std::optional<std::vector<std::uint8_t>> parse_hex(const std::string& hex) {
  if (hex.size() % 2 != 0) return std::nullopt;
  std::vector<std::uint8_t> bytes;
  bytes.reserve(hex.size() / 2);
  for (size_t i = 0; i < hex.size(); i += 2) {
    std::uint8_t byte = 0;
    auto [end, ec] = std::from_chars(hex.data() + i, hex.data() + i + 2, byte, 16);
    if (ec != std::errc() || end != hex.data() + i + 2) return std::nullopt;
    bytes.push_back(byte);
  }
  return bytes;
}

std::string to_hex(const std::uint8_t* data, std::size_t length) {
  static const char digits[] = "0123456789abcdef";
  std::string out;
  out.reserve(length * 2);
  for (std::size_t i = 0; i < length; i++) {
    out.push_back(digits[data[i] >> 4]);
    out.push_back(digits[data[i] & 0xF]);
  }
  return out;
}

ParseResult parse_arguments(const std::vector<std::string>& args) {
  Invocation inv;
  std::vector<std::string> positional;
  std::map<std::string, std::string> given;  // command option -> value ("" for flags)
  std::map<std::string, std::vector<std::string>> given_all;  // every value of repeatable options
  bool help = false;

  for (size_t i = 0; i < args.size(); i++) {
    const std::string& arg = args[i];
    if (arg == "--") {
      positional.insert(positional.end(), args.begin() + i + 1, args.end());
      break;
    }
    if (arg == "-h" || arg == "--help") {
      help = true;
      continue;
    }
    if (arg.rfind("--", 0) != 0) {
      if (arg.size() > 1 && arg[0] == '-') return fail("unknown option '" + arg + "'");
      positional.push_back(arg);
      continue;
    }
    std::string name = arg.substr(2);
    std::optional<std::string> inline_value;
    if (auto eq = name.find('='); eq != std::string::npos) {
      inline_value = name.substr(eq + 1);
      name.resize(eq);
    }
    bool takes_value;
    if (name == "json") {
      takes_value = false;
    } else if (name == "bus") {
      takes_value = true;
    } else if (auto it = command_options().find(name); it != command_options().end()) {
      takes_value = it->second.takes_value;
    } else {
      return fail("unknown option '--" + name + "'");
    }
    std::string value;
    if (takes_value) {
      if (inline_value) {
        value = *inline_value;
      } else if (i + 1 < args.size()) {
        value = args[++i];
      } else {
        return fail("option '--" + name + "' needs a value");
      }
    } else if (inline_value) {
      return fail("option '--" + name + "' takes no value");
    }
    if (name == "json") {
      inv.json = true;
    } else if (name == "bus") {
      if (value.empty()) return fail("--bus needs system, session or a D-Bus address");
      inv.bus = value;
    } else {
      given[name] = value;
      given_all[name].push_back(value);
    }
  }

  if (positional.empty()) {
    if (help) {
      inv.command = Command::Help;
      return ParseResult{inv, ""};
    }
    return fail("no command given (try --help)");
  }

  const std::string& command = positional[0];
  size_t operands = 1;
  if (command == "policy") {
    if (positional.size() < 2 || positional[1] != "check")
      return fail("'policy' needs a subcommand: policy check");
    inv.command = Command::PolicyCheck;
    operands = 2;
  } else if (command == "tunnel") {
    if (positional.size() < 2 || positional[1] != "up") return fail("'tunnel' needs a subcommand: tunnel up");
    inv.command = Command::TunnelUp;
    operands = 2;
  } else if (command == "wg") {
    // "wg" alone is "wg show"; "wg pubkey" takes the identity as its operand.
    inv.command = Command::Wg;
    if (positional.size() >= 2 && positional[1] == "show") {
      operands = 2;
    } else if (positional.size() >= 2 && positional[1] == "pubkey") {
      inv.command = Command::WgPubkey;
      operands = 2;
    } else if (positional.size() >= 2) {
      return fail("unknown 'wg' subcommand '" + positional[1] + "' (wg show, wg pubkey IDENTITY)");
    }
  } else if (auto it = command_names().find(command); it != command_names().end()) {
    inv.command = it->second;
  } else {
    return fail("unknown command '" + command + "' (try --help)");
  }
  if (help) inv.command = Command::Help;
  if (inv.command == Command::Help) return ParseResult{inv, ""};

  for (const auto& [name, value] : given) {
    const auto& allowed = command_options().at(name).commands;
    bool ok = false;
    for (Command c : allowed) ok = ok || c == inv.command;
    if (!ok) return fail("option '--" + name + "' does not apply to '" + command + "'");
  }

  const bool needs_id = inv.command == Command::Show || inv.command == Command::Terminate ||
                        inv.command == Command::UpdateKeys || inv.command == Command::Export;
  const bool needs_peer = inv.command == Command::TunnelUp;
  const bool needs_identity = inv.command == Command::WgPubkey;
  const size_t expected = operands + (needs_id || needs_peer || needs_identity ? 1 : 0);
  if (positional.size() < expected)
    return fail(needs_peer       ? "'tunnel up' needs a tunnel name or a peer address"
                : needs_identity ? "'wg pubkey' needs the name of a Type=wireguard identity"
                                 : "'" + command + "' needs an association ID");
  if (positional.size() > expected) return fail("unexpected argument '" + positional[expected] + "'");
  if (needs_id) {
    inv.association_path = association_path_from_argument(positional[operands]);
    if (inv.association_path.empty())
      return fail("'" + positional[operands] + "' is not an association ID (a number or " + kAssociationPrefix +
                  "N)");
  }

  auto has = [&](const char* name) { return given.count(name) > 0; };
  switch (inv.command) {
    case Command::UpdateKeys:
      inv.request_peer = has("request-peer");
      break;
    case Command::WgPubkey:
      inv.wireguard_identity = positional[operands];
      if (inv.wireguard_identity.empty()) return fail("'wg pubkey' needs the name of a Type=wireguard identity");
      break;
    case Command::Export: {
      if (!has("label")) return fail("export needs --label");
      if (!has("length")) return fail("export needs --length");
      inv.label = given["label"];
      if (inv.label.empty()) return fail("--label must not be empty");
      if (!parse_number(given["length"], inv.length) || inv.length == 0 || inv.length > 16384)
        return fail("--length must be a number from 1 to 16384");
      if (has("context")) {
        auto bytes = parse_hex(given["context"]);
        if (!bytes) return fail("--context must be hex digits, two per byte");
        inv.context = std::move(*bytes);
      }
      break;
    }
    case Command::TunnelUp: {
      TunnelUpOptions& t = inv.tunnel;
      t.peer = positional[operands];
      if (t.peer.empty()) return fail("'tunnel up' needs a tunnel name or a peer address");
      t.psk = given["psk"];
      t.identity = given["identity"];
      t.local_id = given["local-id"];
      t.remote_id = given["remote-id"];
      // Selectors and proposals: repeat the option, or separate with commas.
      const auto all = [&](const char* name) {
        std::vector<std::string> items;
        for (const auto& value : given_all[name])
          for (auto& item : split_list(value)) items.push_back(std::move(item));
        return items;
      };
      t.local_ts = all("local-ts");
      t.remote_ts = all("remote-ts");
      t.ike_proposals = all("ike-proposal");
      t.esp_proposals = all("esp-proposal");
      for (const char* name : {"local-ts", "remote-ts", "ike-proposal", "esp-proposal"})
        if (has(name) && all(name).empty()) return fail(std::string("--") + name + " must not be empty");
      if (has("mode")) {
        t.mode = given["mode"];
        if (t.mode != "tunnel" && t.mode != "transport") return fail("--mode must be tunnel or transport");
      }
      if (has("protocol")) {
        t.protocol = given["protocol"];
        if (t.protocol != "ikev2" && t.protocol != "wireguard") return fail("--protocol must be ikev2 or wireguard");
      }
      if (has("timeout-ms")) {
        std::uint32_t timeout = 0;
        if (!parse_number(given["timeout-ms"], timeout) || timeout == 0)
          return fail("--timeout-ms must be a number of milliseconds above 0");
        t.timeout_ms = timeout;
      }
      break;
    }
    case Command::PolicyCheck: {
      PolicyCheckOptions& p = inv.policy;
      if (has("tunnel")) {
        p.tunnel = given["tunnel"];
        if (p.tunnel.empty()) return fail("--tunnel needs a tunnel name");
      }
      // A tunnel supplies the destination and protocol; the caller is always needed.
      for (const char* required : {"uid", "role", "host", "port", "protocols"})
        if (!has(required) && (p.tunnel.empty() || std::string(required) == "uid"))
          return fail(std::string("policy check needs --") + required +
                      (std::string(required) == "uid" ? "" : " (or --tunnel)"));
      if (has("dir")) p.dir = given["dir"];
      bool gid_known = false;
      if (!resolve_user(given["uid"], p, gid_known)) return fail("--uid: no such user '" + given["uid"] + "'");
      if (has("gid")) {
        if (!resolve_group(given["gid"], p.gid)) return fail("--gid: no such group '" + given["gid"] + "'");
      } else if (!gid_known) {
        p.gid = static_cast<gid_t>(p.uid);  // unknown user: assume a user private group
      }
      p.unit = given["unit"];
      // (has() before given[...]: reading a missing option would add it.)
      if (has("role")) {
        p.role = given["role"];
        if (p.role != "client" && p.role != "server") return fail("--role must be client or server");
      }
      p.host = given["host"];
      p.address = given["address"];
      if (has("port") && (!parse_number(given["port"], p.port) || p.port == 0))
        return fail("--port must be a number from 1 to 65535");
      if (has("protocols")) {
        p.protocols = split_list(given["protocols"]);
        if (p.protocols.empty()) return fail("--protocols needs at least one protocol");
      }
      p.identity = given["identity"];
      p.psk = given["psk"];
      p.wants_export = has("export");
      if (has("peer-validation")) p.peer_validation = given["peer-validation"];
      if (p.peer_validation != "system" && p.peer_validation != "pinned" && p.peer_validation != "application" &&
          p.peer_validation != "none")
        return fail("--peer-validation must be system, pinned, application or none");
      if (has("offload")) p.offload = given["offload"];
      if (p.offload != "required" && p.offload != "preferred") return fail("--offload must be required or preferred");
      break;
    }
    default:
      break;
  }
  return ParseResult{inv, ""};
}

}  // namespace tapsec::ctl
