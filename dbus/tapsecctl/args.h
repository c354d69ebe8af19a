// Command line of tapsecctl: global options, a subcommand and its options.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace tapsec::ctl {

enum class Command {
  Status,
  Associations,
  Show,
  Terminate,
  UpdateKeys,
  Export,
  FlushCache,
  PolicyCheck,
  Monitor,
  TunnelUp,
  Tunnels,
  Sas,
  Wg,        // wg [show]
  WgPubkey,  // wg pubkey IDENTITY
  Help,
};

struct PolicyCheckOptions {
  std::string dir = "/etc/tapsec/policy.d";
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> supplementary_gids;  // from the user database when known
  std::string unit;
  std::string role;
  std::string host;
  std::string address;
  std::uint16_t port = 0;
  std::vector<std::string> protocols;
  std::string identity;
  std::string psk;
  bool wants_export = false;
  std::string peer_validation = "system";
  std::string offload = "preferred";
  // --tunnel: evaluate the request the named [Tunnel] makes. Its protocol,
  // peer, port and credential fill in what the options above leave empty.
  std::string tunnel;
};

// `tunnel up`: the EstablishTunnel call. Empty strings and lists are not
// sent, so the agent uses the policy tunnel's settings.
struct TunnelUpOptions {
  std::string peer;  // a [Tunnel] name, an address or a host name
  std::string protocol;  // --protocol: "ikev2" | "wireguard" | "" (the tunnel's own)
  std::string psk;
  std::string identity;
  std::string local_id;
  std::string remote_id;
  std::vector<std::string> local_ts;
  std::vector<std::string> remote_ts;
  std::string mode;  // "tunnel" | "transport" | ""
  std::vector<std::string> ike_proposals;
  std::vector<std::string> esp_proposals;
  std::optional<std::uint32_t> timeout_ms;
};

struct Invocation {
  std::string bus = "system";  // "system", "session" or a D-Bus address
  bool json = false;
  Command command = Command::Help;
  std::string association_path;  // show, terminate, update-keys, export
  bool request_peer = false;     // update-keys
  std::string label;             // export
  std::vector<std::uint8_t> context;
  std::uint32_t length = 0;
  PolicyCheckOptions policy;
  TunnelUpOptions tunnel;
  std::string wireguard_identity;  // wg pubkey
};

struct ParseResult {
  std::optional<Invocation> invocation;  // empty on error
  std::string error;                     // what is wrong, for a person
};

// Parses the arguments after argv[0]. Global options may appear anywhere.
ParseResult parse_arguments(const std::vector<std::string>& args);

// "3" or "/org/tapsec1/association/3" → the object path; "" if invalid.
std::string association_path_from_argument(const std::string& argument);
// The id (last path element) of an association path, or the path itself.
std::string association_id_from_path(const std::string& path);

// Lowercase hex <-> bytes. parse_hex returns nullopt on odd length or a
// character that is not a hex digit.
std::optional<std::vector<std::uint8_t>> parse_hex(const std::string& hex);
std::string to_hex(const std::uint8_t* data, std::size_t length);

extern const char* const kUsage;

}  // namespace tapsec::ctl
