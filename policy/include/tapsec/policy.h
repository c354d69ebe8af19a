// The tapsec policy: who may ask for what kind of transport security, to
// where, with which identities and algorithms. Files in a drop-in directory
// (default /etc/tapsec/policy.d/) are read in lexical order; see
// policy/README.md for the format.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace tapsec::policy {

namespace detail {
struct PolicyData;
}

inline constexpr std::string_view kDefaultDirectory = "/etc/tapsec/policy.d";

// A parse or load failure: "file:line: what is wrong".
struct Error {
  std::string file;
  unsigned line = 0;  // 0 when the error is about the whole file
  std::string message;
  std::string to_string() const;  // "file:line: message"
};

// `Caller::gid` when the primary group is not known: the bus records a
// caller's groups (UnixGroupIDs) but not which of them is primary.
inline constexpr gid_t kNoPrimaryGroup = static_cast<gid_t>(-1);

// Who is asking, from the bus credentials of the caller.
struct Caller {
  uid_t uid = 0;
  gid_t gid = 0;                         // kNoPrimaryGroup: not known
  std::vector<gid_t> supplementary_gids;  // for a bus caller: every group the bus recorded
  pid_t pid = 0;
  std::string unit;    // systemd unit, "" if unknown
  std::string cgroup;  // cgroup path, "" if unknown
};

enum class Offload { Required, Preferred };

struct Request {
  std::vector<std::string> protocols;  // application's order, e.g. {"tls"}
  std::string role;                    // "client" | "server"
  std::string host;                    // destination name or address literal ("" if unknown)
  std::string address;                 // destination IP literal ("" if unknown)
  // The host is a name not resolved yet: decide whether any address could
  // be allowed, before anything is looked up. An allow rule's MatchAddress
  // counts as matching and a deny rule's as not; the request is evaluated
  // again for each address once resolved.
  bool address_pending = false;
  std::uint16_t port = 0;
  std::string identity;  // requested identity name, "" for none
  std::string psk;       // requested PSK name, "" for none
  bool wants_export = false;
  // "system", "pinned", "application", "none"; "" = "system" for a client,
  // and for a server "does not ask for a peer certificate" (nothing to check).
  std::string peer_validation;
  Offload offload = Offload::Preferred;
  std::string tunnel;  // EstablishTunnel/Terminate of a tunnel: its name ("" otherwise)
  // An administrative operation on what other users made ("" otherwise):
  // "observe" (see their associations), "manage" (update keys of and
  // terminate them), "flush-session-cache" (flush every user's entries).
  // Only rules with MatchOperation= naming it can allow it.
  std::string operation;
};

// The operations MatchOperation= knows.
const std::vector<std::string>& known_operations();

struct Decision {
  bool allowed = false;
  std::string rule;                     // name of the deciding rule ("" if none matched)
  std::string rule_location;            // "file:line" of the rule
  std::vector<std::string> protocols;   // what may be used, in the application's order
  // Allowed algorithm names per kind ("ciphersuites", "groups",
  // "signature-algorithms"); a kind that is absent means "no restriction".
  std::map<std::string, std::vector<std::string>> algorithms;
  bool export_allowed = false;    // true only when the request asked for export and the rule permits it
  bool fallback_allowed = false;  // userspace record protection where the kernel lacks offload
  std::string identity;     // identity to use: the requested one, else the rule's default ("" = none)
  std::string psk;          // PSK to use ("" = none)
  std::string trust_store;  // trust store for peer validation ("" = the system store)
  // Peer validation modes the rule permits ("system", "pinned", "application", "none").
  std::vector<std::string> peer_validation;
  std::vector<std::string> explanation;  // human-readable lines, in evaluation order
  std::string denial_reason;             // one line, when !allowed
};

// A named identity (IPK): certificate chain and private key, held by the agent.
// Type=wireguard: a Curve25519 key pair for WireGuard; key_file holds the
// private key in base64 (as `wg genkey` writes it) and the agent creates it,
// mode 0600, when it does not exist yet. No certificate.
struct Identity {
  std::string name;
  std::string type = "x509";     // "x509" | "wireguard"
  std::string certificate_file;  // PEM chain, leaf first (x509 only)
  std::string key_file;          // PEM private key, or the WireGuard key file
  std::string location;          // "file:line" where defined
};

// A named pre-shared key (PSKI).
struct Psk {
  std::string name;
  std::string identity;  // the PSK identity sent on the wire (defaults to name)
  std::vector<std::uint8_t> key;
  std::string location;
};

// A named set of trust anchors (IV), usable by rules.
struct TrustStore {
  std::string name;
  std::vector<std::string> files;  // PEM files
  bool include_system = false;
  std::string location;
};

// A tunnel defined in policy ([Tunnel] section): an IKEv2 connection the
// agent can start at boot, on demand (trap policies), by EstablishTunnel,
// or accept as responder. See policy/README.md.
struct Tunnel {
  std::string name;
  std::string protocol = "ikev2";
  std::string peer;           // address or host name; "" or "%any" = respond only
  std::string local_address;  // "" = chosen by routing
  std::uint16_t port = 500;   // the peer's IKE port
  std::string local_id;       // "" = the local address (or the certificate subject)
  std::string remote_id;      // "" = any ID the peer can prove
  std::string auth = "psk";   // "psk" | "certificate"
  std::string psk;            // [PSK] name
  std::string identity;       // [Identity] name
  std::string trust_store;    // [TrustStore] name ("" = system)
  std::vector<std::string> local_ts, remote_ts;  // "10.1.0.0/24"; empty = the outer address
  std::string mode = "tunnel";                   // "tunnel" | "transport"
  std::vector<std::string> ike_proposals, esp_proposals;  // strongSwan syntax; empty = defaults
  std::string rekey_group;                       // PFS group name for CREATE_CHILD_SA ("" = none)
  std::string start = "none";                    // "none" | "boot" | "trap"
  std::uint32_t rekey_seconds = 3600, life_seconds = 0;  // 0 = rekey + 10%
  std::uint64_t rekey_bytes = 0, life_bytes = 0, rekey_packets = 0, life_packets = 0;
  std::uint32_t ike_rekey_seconds = 14400;
  std::uint32_t dpd_seconds = 30;
  std::uint32_t replay_window = 32;
  bool mobike = true;
  bool fragmentation = true;
  bool force_encapsulation = false;
  bool export_allowed = false;  // SSKE from SK_d

  // Protocol=wireguard (see policy/README.md). `peer` is the peer's address
  // or host name, `port` its WireGuard port (default 51820 there), `psk` a
  // static PSK (32 bytes; no rotation), `identity`/`trust_store`/`remote_id`
  // authenticate the agents' exchange. `start` is "none" or "boot".
  std::string interface_name;                 // default "wg-" + name, at most 15 characters
  std::string wireguard_key;                  // [Identity] of Type=wireguard (required)
  std::uint16_t listen_port = 51820;
  std::uint16_t exchange_port = 51821;        // the peer agent's exchange port (TCP)
  std::vector<std::string> addresses;         // CIDR on the local interface, e.g. "10.9.0.1/24"
  std::vector<std::string> allowed_ips;       // CIDR routed to the peer (required)
  std::string peer_public_key;                // base64: a peer without an agent, no exchange
  std::uint32_t psk_rotation_seconds = 120;   // 0 = keep the first exchanged PSK
  std::uint16_t keepalive_seconds = 0;        // 0 = off
  std::uint32_t fwmark = 0;
  bool fallback = false;                      // wireguard-go where the kernel lacks WireGuard

  std::string location;         // "file:line"
};

class Policy {
 public:
  // Reads every *.policy file of dir in lexical order. A missing directory
  // is an empty policy (denies everything); any malformed file is an error.
  static std::variant<Policy, std::vector<Error>> load_directory(const std::string& dir);
  // Parses one file's text; `file` is used in error messages.
  static std::variant<Policy, std::vector<Error>> parse(std::string_view text, const std::string& file);

  Decision evaluate(const Caller& caller, const Request& request) const;

  const Identity* identity(std::string_view name) const;
  const Psk* psk(std::string_view name) const;
  const TrustStore* trust_store(std::string_view name) const;
  std::vector<std::string> identity_names() const;
  std::vector<std::string> psk_names() const;
  std::vector<std::string> trust_store_names() const;
  std::vector<std::string> rule_names() const;  // in evaluation order
  const Tunnel* tunnel(std::string_view name) const;
  std::vector<std::string> tunnel_names() const;  // in file order

  Policy();
  ~Policy();
  Policy(Policy&&) noexcept;
  Policy& operator=(Policy&&) noexcept;

 private:
  struct Data;
  const detail::PolicyData& data() const;
  std::unique_ptr<Data> data_;
};

}  // namespace tapsec::policy
