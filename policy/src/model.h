// The parsed form of a policy, shared by the parser and the evaluator.
// Internal to tapsec_policy.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "tapsec/policy.h"

namespace tapsec::policy::detail {

// A network prefix; IPv4 prefixes are kept as 4 bytes, IPv6 as 16.
struct Cidr {
  bool is_v6 = false;
  std::array<std::uint8_t, 16> bytes{};
  unsigned prefix_length = 0;
  std::string text;  // as written, for explanations
};

struct PortRange {
  std::uint16_t low = 0;
  std::uint16_t high = 0;
  std::string text;
};

// A user or group named in a Match key: the resolved id and the text written.
struct AccountId {
  std::uint32_t id = 0;
  std::string text;
};

// A name a rule refers to, with where it was written (for error messages).
struct Reference {
  std::string name;
  unsigned line = 0;
};

enum class Action { Allow, Deny };

struct Rule {
  std::string name;
  std::string file;
  unsigned line = 0;
  std::string location;  // "file:line"
  std::string description;

  // Match keys: empty = not given = matches everything.
  std::vector<AccountId> users;
  std::vector<AccountId> groups;
  std::vector<std::string> units;    // globs
  std::vector<std::string> cgroups;  // path prefixes, no trailing '/'
  std::vector<std::string> roles;    // "client" | "server"
  std::vector<std::string> hosts;    // globs, lower case
  std::vector<Cidr> addresses;
  std::vector<PortRange> ports;
  std::vector<std::string> tunnels;  // MatchTunnel: tunnel names, "*" = any tunnel
  // MatchOperation: the administrative operations this rule is about
  // ("observe", "manage", "flush-session-cache"). Only such rules match an
  // operation request, and they match nothing else.
  std::vector<std::string> operations;

  // Grants.
  std::optional<std::vector<std::string>> protocols;  // absent = every known protocol
  std::map<std::string, std::vector<std::string>> algorithms;
  std::vector<Reference> identities;  // first = default
  std::vector<Reference> psks;        // first = default
  std::optional<Reference> trust_store;
  std::optional<std::vector<std::string>> peer_validation;  // absent = system pinned application
  bool export_allowed = false;
  bool fallback_allowed = false;
  Action action = Action::Deny;
};

struct PolicyData {
  std::vector<Identity> identities;
  std::vector<Psk> psks;
  std::vector<TrustStore> trust_stores;
  std::vector<Rule> rules;
  std::vector<Tunnel> tunnels;

  PolicyData() = default;
  PolicyData(const PolicyData&) = delete;
  PolicyData& operator=(const PolicyData&) = delete;
  ~PolicyData();  // clears pre-shared keys
};

// Facts about one parsed file that only the directory loader can act on.
struct FileFacts {
  std::vector<unsigned> inline_key_lines;  // lines with Key= (secret inside the policy file)
};

// A rule's or tunnel's use of a named Identity, PSK, TrustStore or Tunnel,
// checked once every file has been read.
struct PendingReference {
  std::string file;
  unsigned line = 0;
  std::string rule;  // "" when the referring section's own name was rejected
  std::string kind;  // "Identity" | "PSK" | "TrustStore" | "Tunnel"
  std::string name;
  std::string owner = "Rule";  // section type of the referring section: "Rule" | "Tunnel"
  std::string key;             // the referring key, for messages ("" = kind + "=")
  std::string identity_type;   // an Identity must be of this Type= ("" = any)
  std::size_t psk_bytes = 0;   // a PSK must be exactly this long (0 = any)
};

// What a WireGuard tunnel sets for its whole interface; tunnels that share
// an interface (one peer each) must agree on all of it.
struct WireGuardInterface {
  std::string tunnel;    // the first tunnel on it
  std::string location;  // where that tunnel is defined
  std::string wireguard_key;
  std::uint16_t listen_port = 0;
  std::vector<std::string> addresses;
  std::uint32_t fwmark = 0;
  bool fallback = false;
};

// Names declared so far, "name" -> "file:line"; kept apart from PolicyData so
// that a section with errors still counts as declared (no cascading errors).
struct Declarations {
  std::map<std::string, std::string> identities;
  std::map<std::string, std::string> psks;
  std::map<std::string, std::string> trust_stores;
  std::map<std::string, std::string> rules;
  std::map<std::string, std::string> tunnels;
  std::vector<PendingReference> references;
  std::map<std::string, std::string> identity_types;  // identity -> its valid Type=
  std::map<std::string, std::size_t> psk_sizes;        // PSK -> bytes of its valid key
  std::map<std::string, WireGuardInterface> wireguard_interfaces;  // by interface name
};

// Parses one file's text into `data`, appending errors. References are not
// checked here: see resolve_references().
FileFacts parse_file(std::string_view text, const std::string& file, PolicyData& data,
                     Declarations& declared, std::vector<Error>& errors);

// Checks that every name a rule refers to is defined (in any file).
void resolve_references(const Declarations& declared, std::vector<Error>& errors);

Decision evaluate(const PolicyData& data, const Caller& caller, const Request& request);

}  // namespace tapsec::policy::detail
