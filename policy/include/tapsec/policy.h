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

// Who is asking, from the bus credentials of the caller.
struct Caller {
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> supplementary_gids;
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
  std::uint16_t port = 0;
  std::string identity;  // requested identity name, "" for none
  std::string psk;       // requested PSK name, "" for none
  bool wants_export = false;
  // "system", "pinned", "application", "none"; "" = "system" for a client,
  // and for a server "does not ask for a peer certificate" (nothing to check).
  std::string peer_validation;
  Offload offload = Offload::Preferred;
};

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
struct Identity {
  std::string name;
  std::string certificate_file;  // PEM chain, leaf first
  std::string key_file;          // PEM private key
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
