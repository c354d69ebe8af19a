// The policy file parser: INI lines -> sections -> validated values.
// Every problem is reported with file:line and parsing goes on, so that one
// run shows all mistakes of a file.

#include <openssl/crypto.h>

#include <algorithm>
#include <cctype>
#include <climits>
#include <set>
#include <utility>

#include "agent/core/trusted_file.h"
#include "policy/src/model.h"
#include "policy/src/tunnel_values.h"
#include "policy/src/values.h"
#include "policy/src/wireguard_values.h"

namespace tapsec::policy::detail {
namespace {

enum class SectionType { Identity, Psk, TrustStore, Rule, Tunnel };

struct SectionSpec {
  SectionType type;
  std::string_view header;
  std::vector<std::string_view> keys;
  std::vector<std::string_view> list_keys;  // may be repeated; values accumulate
};

const std::vector<SectionSpec>& section_specs() {
  static const std::vector<SectionSpec> specs = {
      {SectionType::Identity, "Identity", {"Description", "Type", "Certificate", "PrivateKey"}, {}},
      {SectionType::Psk, "PSK", {"Description", "Identity", "Key", "KeyFile"}, {}},
      {SectionType::TrustStore, "TrustStore", {"Description", "File", "IncludeSystem"}, {"File"}},
      {SectionType::Rule,
       "Rule",
       {"Description", "MatchUser", "MatchGroup", "MatchUnit", "MatchCgroup", "MatchRole", "MatchHost",
        "MatchAddress", "MatchPort", "Protocols", "Ciphersuites", "Groups", "SignatureAlgorithms",
        "Identities", "PSKs", "TrustStore", "PeerValidation", "Export", "Fallback", "Action", "MatchTunnel",
        "MatchOperation"},
       {"MatchUser", "MatchGroup", "MatchUnit", "MatchCgroup", "MatchRole", "MatchHost", "MatchAddress",
        "MatchPort", "Protocols", "Ciphersuites", "Groups", "SignatureAlgorithms", "Identities", "PSKs",
        "PeerValidation", "MatchTunnel", "MatchOperation"}},
      {SectionType::Tunnel,
       "Tunnel",
       {"Description", "Name", "Protocol", "Peer", "LocalAddress", "Port", "LocalId", "RemoteId", "Auth", "PSK",
        "Identity", "TrustStore", "LocalTS", "RemoteTS", "Mode", "IKEProposals", "ESPProposals", "RekeyGroup",
        "Start", "RekeyTime", "LifeTime", "RekeyBytes", "LifeBytes", "RekeyPackets", "LifePackets",
        "IKERekeyTime", "DPD", "ReplayWindow", "MOBIKE", "Fragmentation", "ForceEncapsulation", "Export",
        "Interface", "WireGuardKey", "ListenPort", "ExchangePort", "Address", "AllowedIPs", "PeerPublicKey",
        "PSKRotation", "Keepalive", "FwMark", "Fallback"},
       {"LocalTS", "RemoteTS", "IKEProposals", "ESPProposals", "Address", "AllowedIPs"}},
  };
  return specs;
}

// Keys of a Rule that grant something; meaningless in a deny rule.
// [Tunnel] keys that only one protocol has; the other reports them.
constexpr std::string_view kIkeOnlyKeys[] = {
    "LocalAddress", "LocalId", "Auth", "LocalTS", "RemoteTS", "Mode", "IKEProposals", "ESPProposals", "RekeyGroup",
    "RekeyTime", "LifeTime", "RekeyBytes", "LifeBytes", "RekeyPackets", "LifePackets", "IKERekeyTime", "DPD",
    "ReplayWindow", "MOBIKE", "Fragmentation", "ForceEncapsulation", "Export"};
constexpr std::string_view kWireGuardOnlyKeys[] = {"Interface",   "WireGuardKey", "ListenPort", "ExchangePort",
                                                   "Address",     "AllowedIPs",   "PeerPublicKey", "PSKRotation",
                                                   "Keepalive",   "FwMark",       "Fallback"};

// A static WireGuard preshared key is exactly this long.
constexpr std::size_t kWireGuardPskBytes = 32;

constexpr std::string_view kGrantKeys[] = {"Protocols",  "Ciphersuites", "Groups",         "SignatureAlgorithms",
                                           "Identities", "PSKs",         "TrustStore",     "PeerValidation",
                                           "Export",     "Fallback"};

bool contains(const std::vector<std::string_view>& list, std::string_view item) {
  return std::find(list.begin(), list.end(), item) != list.end();
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
         });
}

bool has_control_character(std::string_view line) {
  return std::any_of(line.begin(), line.end(), [](char c) {
    const auto byte = static_cast<unsigned char>(c);
    return (byte < 0x20 && c != '\t' && c != '\r') || byte == 0x7f;
  });
}

// Removes a trailing comment: '#' preceded by a space or tab.
std::string_view strip_trailing_comment(std::string_view line) {
  for (std::size_t i = 1; i < line.size(); ++i) {
    if (line[i] == '#' && (line[i - 1] == ' ' || line[i - 1] == '\t')) return line.substr(0, i);
  }
  return line;
}

bool is_absolute_path(std::string_view path) {
  return !path.empty() && path.front() == '/' && path.size() < PATH_MAX;
}

template <typename T>
void push_unique(std::vector<T>& list, T item) {
  if (std::find(list.begin(), list.end(), item) == list.end()) list.push_back(std::move(item));
}

void push_unique_reference(std::vector<Reference>& list, std::string name, unsigned line) {
  for (const Reference& existing : list)
    if (existing.name == name) return;
  list.push_back({std::move(name), line});
}

class FileParser {
 public:
  struct Section {
    const SectionSpec* spec = nullptr;
    std::string name;  // "" when the header's name was rejected
    unsigned line = 0;
    std::size_t errors_before = 0;
    bool header_named = false;   // the name came from the header
    bool name_rejected = false;  // invalid or duplicate (already reported)
    bool protocol_rejected = false;  // [Tunnel] with an unknown Protocol= (already reported)
    std::map<std::string, unsigned> lines;  // key -> first line it appeared on
    Identity identity;
    Psk psk;
    TrustStore trust_store;
    Rule rule;
    Tunnel tunnel;
    // Traffic selectors with their lines, for the Mode=transport check.
    std::vector<std::pair<TrafficSelectorSpec, unsigned>> traffic_selectors;
  };

  FileParser(std::string_view text, const std::string& file, PolicyData& data, Declarations& declared,
             std::vector<Error>& errors)
      : text_(text), file_(file), data_(data), declared_(declared), errors_(errors) {}

  FileFacts run() {
    unsigned line_number = 0;
    std::size_t position = 0;
    while (position <= text_.size()) {
      std::size_t end = text_.find('\n', position);
      if (end == std::string_view::npos) end = text_.size();
      ++line_number;
      handle_line(text_.substr(position, end - position), line_number);
      position = end + 1;
    }
    finish_section();
    return std::move(facts_);
  }

 private:
  void error(unsigned line, std::string message) { errors_.push_back({file_, line, std::move(message)}); }

  std::string location(unsigned line) const { return file_ + ":" + std::to_string(line); }

  void handle_line(std::string_view raw, unsigned line) {
    std::string_view text = trim(raw);
    if (text.empty() || text.front() == '#' || text.front() == ';') return;
    if (has_control_character(text)) {
      error(line, "line contains a control character");
      return;
    }
    text = trim(strip_trailing_comment(text));
    if (text.front() == '[') {
      begin_section(text, line);
      return;
    }
    const std::size_t equals = text.find('=');
    if (equals == std::string_view::npos) {
      error(line, "expected Key=value, a [Section name] header, or a comment");
      return;
    }
    const std::string_view key = trim(text.substr(0, equals));
    const std::string_view value = trim(text.substr(equals + 1));
    if (key.empty()) {
      error(line, "missing key name before '='");
      return;
    }
    assignment(key, value, line);
  }

  // ---- sections ----

  void begin_section(std::string_view header, unsigned line) {
    finish_section();
    seen_any_header_ = true;
    if (header.back() != ']') {
      error(line, "section header must end with ']'");
      return;
    }
    const auto words = split_words(header.substr(1, header.size() - 2));
    if (words.empty()) {
      error(line, "empty section header; expected e.g. [Rule name]");
      return;
    }
    const SectionSpec* spec = nullptr;
    for (const SectionSpec& candidate : section_specs())
      if (candidate.header == words[0]) spec = &candidate;
    if (!spec) {
      std::string message = "unknown section type '" + std::string(words[0]) + "'";
      for (const SectionSpec& candidate : section_specs())
        if (iequals(candidate.header, words[0])) message += " (did you mean '" + std::string(candidate.header) + "'?)";
      message += "; known: Identity, PSK, TrustStore, Rule, Tunnel";
      error(line, std::move(message));
      return;
    }
    Section section;
    section.spec = spec;
    section.line = line;
    section.errors_before = errors_.size();
    if (spec->type == SectionType::Tunnel && words.size() == 1) {
      // [Tunnel] with Name= below; the name is declared when Name= is read.
    } else if (words.size() != 2) {
      error(line, "[" + std::string(spec->header) + "] needs exactly one name, e.g. [" +
                      std::string(spec->header) + " example]");
      section.name_rejected = true;
    } else if (!is_valid_name(words[1])) {
      error(line, "'" + std::string(words[1]) +
                      "' is not a valid name (letters, digits, '-', '_', '.'; starting with a letter or digit; "
                      "at most 64)");
      section.name_rejected = true;
    } else {
      declare(section, spec->type, words[1], line);
      section.header_named = true;
    }
    section_ = std::move(section);
  }

  // Records the section's name, or reports a duplicate (leaving the name empty).
  void declare(Section& section, SectionType type, std::string_view name, unsigned line) {
    section.name = std::string(name);
    auto& names = declared_names(type);
    const auto [it, inserted] = names.emplace(section.name, location(line));
    if (!inserted) {
      error(line, std::string(section.spec->header) + " '" + section.name + "' is already defined at " + it->second);
      section.name.clear();
      section.name_rejected = true;
    }
  }

  std::map<std::string, std::string>& declared_names(SectionType type) {
    switch (type) {
      case SectionType::Identity: return declared_.identities;
      case SectionType::Psk: return declared_.psks;
      case SectionType::TrustStore: return declared_.trust_stores;
      case SectionType::Tunnel: return declared_.tunnels;
      case SectionType::Rule: break;
    }
    return declared_.rules;
  }

  void finish_section() {
    if (!section_) return;
    Section& section = *section_;
    const std::string header = "[" + std::string(section.spec->header) + " " + section.name + "]";
    switch (section.spec->type) {
      case SectionType::Identity:
        finish_identity(section, header);
        break;
      case SectionType::Psk:
        if (!section.lines.count("Key") && !section.lines.count("KeyFile"))
          error(section.line, header + " needs Key= or KeyFile=");
        if (section.psk.identity.empty()) section.psk.identity = section.name;
        if (!section.name.empty() && !section.psk.key.empty() && errors_.size() == section.errors_before)
          declared_.psk_sizes[section.name] = section.psk.key.size();
        break;
      case SectionType::TrustStore:
        if (section.trust_store.files.empty() && !section.trust_store.include_system)
          error(section.line, header + " trusts nothing: give File= or IncludeSystem=yes");
        break;
      case SectionType::Rule:
        if (!section.lines.count("Action")) {
          error(section.line, header + " has no Action= (allow or deny)");
        } else if (section.rule.action == Action::Deny) {
          for (std::string_view key : kGrantKeys) {
            const auto it = section.lines.find(std::string(key));
            if (it != section.lines.end())
              error(it->second, std::string(key) + "= has no effect in a rule with Action=deny");
          }
        }
        break;
      case SectionType::Tunnel:
        finish_tunnel(section);
        break;
    }
    const bool valid = !section.name.empty() && errors_.size() == section.errors_before;
    if (valid) commit(section);
    if (!section.psk.key.empty()) OPENSSL_cleanse(section.psk.key.data(), section.psk.key.size());
    section_.reset();
  }

  void finish_identity(Section& section, const std::string& header) {
    Identity& identity = section.identity;
    if (identity.type == "wireguard") {
      const auto certificate = section.lines.find("Certificate");
      if (certificate != section.lines.end())
        error(certificate->second, "Certificate=: a Type=wireguard identity has no certificate, only its key "
                                   "file (PrivateKey=)");
      if (!section.lines.count("PrivateKey"))
        error(section.line, header + " has no PrivateKey= (the file of its WireGuard private key; the agent "
                                     "creates it when it does not exist)");
    } else if (identity.type == "x509") {
      if (!section.lines.count("Certificate")) error(section.line, header + " has no Certificate=");
      if (!section.lines.count("PrivateKey")) error(section.line, header + " has no PrivateKey=");
    }
    // An unknown Type= is already reported; tunnels then do not check theirs.
    if (!section.name.empty() && !identity.type.empty()) declared_.identity_types[section.name] = identity.type;
  }

  void commit(Section& section) {
    const std::string where = location(section.line);
    switch (section.spec->type) {
      case SectionType::Identity:
        section.identity.name = section.name;
        section.identity.location = where;
        data_.identities.push_back(std::move(section.identity));
        break;
      case SectionType::Psk:
        section.psk.name = section.name;
        section.psk.location = where;
        data_.psks.push_back(std::move(section.psk));
        section.psk.key.clear();
        break;
      case SectionType::TrustStore:
        section.trust_store.name = section.name;
        section.trust_store.location = where;
        data_.trust_stores.push_back(std::move(section.trust_store));
        break;
      case SectionType::Rule:
        section.rule.name = section.name;
        section.rule.file = file_;
        section.rule.line = section.line;
        section.rule.location = where;
        data_.rules.push_back(std::move(section.rule));
        break;
      case SectionType::Tunnel:
        section.tunnel.name = section.name;
        section.tunnel.location = where;
        data_.tunnels.push_back(std::move(section.tunnel));
        break;
    }
  }

  // ---- keys ----

  void assignment(std::string_view key, std::string_view value, unsigned line) {
    if (!section_) {
      // Either outside any section, or inside one whose header was rejected
      // (already reported; stay quiet to avoid a cascade).
      if (!seen_any_header_) error(line, "'" + std::string(key) + "=' is outside any section");
      return;
    }
    Section& section = *section_;
    const SectionSpec& spec = *section.spec;
    if (!contains(spec.keys, key)) {
      error(line, unknown_key_message(key, spec));
      return;
    }
    if (value.empty()) {
      error(line, std::string(key) + "= has an empty value");
      return;
    }
    const std::string key_name(key);
    const auto [previous, first_time] = section.lines.emplace(key_name, line);
    if (!first_time && !contains(spec.list_keys, key)) {
      error(line, key_name + "= is given twice in this section (first at line " +
                      std::to_string(previous->second) + ")");
      return;
    }
    switch (spec.type) {
      case SectionType::Identity: identity_key(section, key, value, line); break;
      case SectionType::Psk: psk_key(section, key, value, line); break;
      case SectionType::TrustStore: trust_store_key(section, key, value, line); break;
      case SectionType::Rule: rule_key(section, key, value, line); break;
      case SectionType::Tunnel: tunnel_key(section, key, value, line); break;
    }
  }

  std::string unknown_key_message(std::string_view key, const SectionSpec& spec) const {
    const std::string where = "[" + std::string(spec.header) + "]";
    for (const SectionSpec& other : section_specs()) {
      if (other.type != spec.type && contains(other.keys, key))
        return std::string(key) + "= belongs in [" + std::string(other.header) + "] sections, not in " + where;
    }
    for (std::string_view known : spec.keys)
      if (iequals(known, key))
        return "unknown key '" + std::string(key) + "' in " + where + " (did you mean '" + std::string(known) + "'?)";
    return "unknown key '" + std::string(key) + "' in " + where;
  }

  std::optional<std::string> absolute_path(std::string_view key, std::string_view value, unsigned line) {
    if (!is_absolute_path(value)) {
      error(line, std::string(key) + "= must be an absolute path, got '" + std::string(value) + "'");
      return std::nullopt;
    }
    return std::string(value);
  }

  std::optional<bool> boolean(std::string_view key, std::string_view value, unsigned line) {
    std::string why;
    const auto parsed = parse_bool(value, why);
    if (!parsed) error(line, std::string(key) + "=: " + why);
    return parsed;
  }

  void identity_key(Section& section, std::string_view key, std::string_view value, unsigned line) {
    if (key == "Type") {
      if (value == "x509" || value == "wireguard") {
        section.identity.type = std::string(value);
      } else {
        error(line, "Type=: '" + std::string(value) + "' is not an identity type (x509 or wireguard)");
        section.identity.type.clear();
      }
    } else if (key == "Certificate") {
      if (auto path = absolute_path(key, value, line)) section.identity.certificate_file = std::move(*path);
    } else if (key == "PrivateKey") {
      if (auto path = absolute_path(key, value, line)) section.identity.key_file = std::move(*path);
    }
  }

  void psk_key(Section& section, std::string_view key, std::string_view value, unsigned line) {
    if (key == "Identity") {
      const bool printable = std::all_of(value.begin(), value.end(), [](char c) {
        return static_cast<unsigned char>(c) >= 0x20 && static_cast<unsigned char>(c) < 0x7f;
      });
      if (!printable || value.size() > 255) {
        error(line, "Identity= must be printable ASCII of at most 255 characters");
        return;
      }
      section.psk.identity = std::string(value);
      return;
    }
    if ((key == "Key" && section.lines.count("KeyFile")) || (key == "KeyFile" && section.lines.count("Key"))) {
      error(line, "give either Key= or KeyFile=, not both");
      return;
    }
    if (key == "Key") {
      facts_.inline_key_lines.push_back(line);
      constexpr std::string_view kHexPrefix = "hex:";
      if (value.substr(0, kHexPrefix.size()) != kHexPrefix) {
        error(line, "Key= must be written as hex:<hex digits>");
        return;
      }
      std::string why;
      if (auto key_bytes = parse_hex_key(value.substr(kHexPrefix.size()), why)) {
        section.psk.key = std::move(*key_bytes);
      } else {
        error(line, "Key=: " + why);
      }
    } else if (key == "KeyFile") {
      if (auto path = absolute_path(key, value, line)) load_key_file(section, *path, line);
    }
  }

  void load_key_file(Section& section, const std::string& path, unsigned line) {
    std::string why;
    auto contents = core::read_trusted_file(path, 8192, {"PSK key file", "a PSK"}, why);
    if (!contents) {
      error(line, "KeyFile=: " + why);
      return;
    }
    std::string_view hex = trim(contents->bytes);
    while (!hex.empty() && hex.back() == '\n') hex = trim(hex.substr(0, hex.size() - 1));
    if (hex.substr(0, 4) == "hex:") hex.remove_prefix(4);
    if (auto key_bytes = parse_hex_key(hex, why)) {
      section.psk.key = std::move(*key_bytes);
    } else {
      error(line, "KeyFile=: " + path + ": " + why);
    }
  }

  void trust_store_key(Section& section, std::string_view key, std::string_view value, unsigned line) {
    if (key == "File") {
      for (std::string_view word : split_words(value))
        if (auto path = absolute_path(key, word, line)) push_unique(section.trust_store.files, std::move(*path));
    } else if (key == "IncludeSystem") {
      if (auto flag = boolean(key, value, line)) section.trust_store.include_system = *flag;
    }
  }

  void refer(const Section& section, std::string_view kind, std::string_view name, unsigned line) {
    declared_.references.push_back({file_, line, section.name, std::string(kind), std::string(name), "Rule", "", "", 0});
  }

  void rule_key(Section& section, std::string_view key, std::string_view value, unsigned line) {
    Rule& rule = section.rule;
    std::string why;
    const auto words = split_words(value);
    const auto bad = [&](std::string_view word, std::string reason) {
      error(line, std::string(key) + "=: " + (reason.empty() ? "'" + std::string(word) + "' is not valid" : reason));
    };

    if (key == "Description") {
      rule.description = std::string(value);
    } else if (key == "MatchUser" || key == "MatchGroup") {
      const bool is_user = key == "MatchUser";
      for (std::string_view word : words) {
        const auto id = is_user ? resolve_user(word, why) : resolve_group(word, why);
        if (!id) {
          bad(word, why);
          continue;
        }
        AccountId account{*id, std::string(word)};
        auto& list = is_user ? rule.users : rule.groups;
        if (std::none_of(list.begin(), list.end(), [&](const AccountId& a) { return a.id == account.id; }))
          list.push_back(std::move(account));
      }
    } else if (key == "MatchUnit") {
      for (std::string_view word : words) {
        if (word.find('/') != std::string_view::npos || word.size() > 256)
          bad(word, "'" + std::string(word) + "' is not a unit name or glob (e.g. nginx.service, app-*.scope)");
        else
          push_unique(rule.units, std::string(word));
      }
    } else if (key == "MatchCgroup") {
      for (std::string_view word : words) {
        if (word.front() != '/' || word.find("//") != std::string_view::npos || word.size() > 4096) {
          bad(word, "'" + std::string(word) + "' is not an absolute cgroup path (e.g. /system.slice/nginx.service)");
          continue;
        }
        while (word.size() > 1 && word.back() == '/') word.remove_suffix(1);
        push_unique(rule.cgroups, std::string(word));
      }
    } else if (key == "MatchRole") {
      for (std::string_view word : words) {
        if (word == "client" || word == "server")
          push_unique(rule.roles, std::string(word));
        else
          bad(word, "'" + std::string(word) + "' is not a role (client or server)");
      }
    } else if (key == "MatchHost") {
      for (std::string_view word : words) {
        const bool ok = word.size() <= 255 && std::all_of(word.begin(), word.end(), [](char c) {
                          return std::isalnum(static_cast<unsigned char>(c)) || std::string_view("-._*?[]!:").find(c) != std::string_view::npos;
                        });
        if (!ok) {
          bad(word, "'" + std::string(word) + "' is not a host name glob (e.g. *.example.com)");
          continue;
        }
        std::string lower(word);
        std::transform(lower.begin(), lower.end(), lower.begin(),
                       [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
        push_unique(rule.hosts, std::move(lower));
      }
    } else if (key == "MatchAddress") {
      for (std::string_view word : words) {
        if (auto prefix = parse_cidr(word, why)) rule.addresses.push_back(std::move(*prefix));
        else bad(word, why);
      }
    } else if (key == "MatchPort") {
      for (std::string_view word : words) {
        if (auto range = parse_port_range(word, why)) rule.ports.push_back(std::move(*range));
        else bad(word, why);
      }
    } else if (key == "Protocols") {
      if (!rule.protocols) rule.protocols.emplace();
      for (std::string_view word : words) {
        if (auto name = canonical_protocol(word)) push_unique(*rule.protocols, std::move(*name));
        else bad(word, "unknown protocol '" + std::string(word) + "' (known: " + join(known_protocols(), ", ") + ")");
      }
    } else if (key == "Ciphersuites" || key == "Groups" || key == "SignatureAlgorithms") {
      const std::string kind = key == "Ciphersuites" ? "ciphersuites" : key == "Groups" ? "groups" : "signature-algorithms";
      auto& list = rule.algorithms[kind];
      for (std::string_view word : words) {
        const auto name = kind == "ciphersuites" ? canonical_ciphersuite(word)
                          : kind == "groups"     ? canonical_group(word)
                                                 : canonical_signature_algorithm(word);
        if (name) push_unique(list, *name);
        else bad(word, "unknown " + std::string(kind == "ciphersuites" ? "TLS 1.3 cipher suite" : kind == "groups" ? "group" : "signature algorithm") +
                           " '" + std::string(word) + "'");
      }
    } else if (key == "Identities" || key == "PSKs") {
      for (std::string_view word : words) {
        if (!is_valid_name(word)) bad(word, "'" + std::string(word) + "' is not a valid name");
        else {
          push_unique_reference(key == "Identities" ? rule.identities : rule.psks, std::string(word), line);
          refer(section, key == "Identities" ? "Identity" : "PSK", word, line);
        }
      }
    } else if (key == "TrustStore") {
      if (words.size() != 1 || !is_valid_name(words[0])) bad(value, "expected the name of one [TrustStore]");
      else {
        rule.trust_store = Reference{std::string(words[0]), line};
        refer(section, "TrustStore", words[0], line);
      }
    } else if (key == "PeerValidation") {
      if (!rule.peer_validation) rule.peer_validation.emplace();
      for (std::string_view word : words) {
        const auto& modes = known_peer_validation_modes();
        if (std::find(modes.begin(), modes.end(), word) != modes.end())
          push_unique(*rule.peer_validation, std::string(word));
        else
          bad(word, "unknown peer validation mode '" + std::string(word) + "' (known: " + join(modes, ", ") + ")");
      }
    } else if (key == "Export") {
      if (auto flag = boolean(key, value, line)) rule.export_allowed = *flag;
    } else if (key == "Fallback") {
      if (auto flag = boolean(key, value, line)) rule.fallback_allowed = *flag;
    } else if (key == "MatchTunnel") {
      for (std::string_view word : words) {
        if (word == "*") {
          push_unique(rule.tunnels, std::string(word));
        } else if (!is_valid_name(word)) {
          bad(word, "'" + std::string(word) + "' is not a tunnel name (or * for any tunnel)");
        } else {
          push_unique(rule.tunnels, std::string(word));
          refer(section, "Tunnel", word, line);
        }
      }
    } else if (key == "MatchOperation") {
      for (std::string_view word : words) {
        const auto& known = known_operations();
        if (std::find(known.begin(), known.end(), word) == known.end())
          bad(word, "'" + std::string(word) + "' is not an operation (known: " + join(known, ", ") + ")");
        else
          push_unique(rule.operations, std::string(word));
      }
    } else if (key == "Action") {
      if (value == "allow") rule.action = Action::Allow;
      else if (value == "deny") rule.action = Action::Deny;
      else bad(value, "'" + std::string(value) + "' is not an action (allow or deny)");
    }
  }

  // ---- [Tunnel] ----

  void tunnel_key(Section& section, std::string_view key, std::string_view value, unsigned line) {
    Tunnel& tunnel = section.tunnel;
    std::string why;
    const auto words = split_words(value);
    const auto bad = [&](std::string reason) { error(line, std::string(key) + "=: " + reason); };
    const auto one_of = [&](std::initializer_list<std::string_view> allowed, std::string& out) {
      for (std::string_view candidate : allowed) {
        if (value == candidate) {
          out = std::string(value);
          return;
        }
      }
      std::string list;
      for (std::string_view candidate : allowed) list += (list.empty() ? "" : " or ") + std::string(candidate);
      bad("'" + std::string(value) + "' is not valid (use " + list + ")");
    };
    const auto duration = [&](std::uint32_t& out) {
      if (auto seconds = parse_duration(value, why)) out = *seconds;
      else bad(why);
    };
    const auto count = [&](std::uint64_t& out) {
      if (auto number = parse_count(value, why)) out = *number;
      else bad(why);
    };
    const auto flag = [&](bool& out) {
      if (auto parsed = boolean(key, value, line)) out = *parsed;
    };
    const auto section_name = [&](std::string& out) {
      if (words.size() != 1 || !is_valid_name(words[0])) bad("expected one section name, got '" + std::string(value) + "'");
      else out = std::string(words[0]);
    };
    const auto identification = [&](std::string& out) {
      const bool printable = std::all_of(value.begin(), value.end(), [](char c) {
        return static_cast<unsigned char>(c) >= 0x20 && static_cast<unsigned char>(c) < 0x7f;
      });
      if (!printable || value.size() > 255) bad("must be printable ASCII of at most 255 characters");
      else out = std::string(value);
    };

    if (key == "Description") {
      // for people only
    } else if (key == "Name") {
      if (!is_valid_name(value)) {
        bad("'" + std::string(value) + "' is not a valid name (letters, digits, '-', '_', '.'; starting with a "
            "letter or digit; at most 64)");
        section.name_rejected = true;
      } else if (section.header_named || section.name_rejected) {
        if (value != section.name && !section.name_rejected)
          bad("'" + std::string(value) + "' differs from the name in the section header ('" + section.name + "')");
      } else {
        declare(section, SectionType::Tunnel, value, line);
      }
    } else if (key == "Protocol") {
      if (value == "ikev2" || value == "wireguard") tunnel.protocol = std::string(value);
      else {
        bad("unknown tunnel protocol '" + std::string(value) + "' (ikev2 or wireguard)");
        section.protocol_rejected = true;
      }
    } else if (key == "Peer") {
      if (words.size() != 1 || !is_valid_peer(value))
        bad("'" + std::string(value) + "' is not an IP address, host name, or %any");
      else tunnel.peer = std::string(value);
    } else if (key == "LocalAddress") {
      if (!parse_address(value)) bad("'" + std::string(value) + "' is not an IP address");
      else tunnel.local_address = std::string(value);
    } else if (key == "Port") {
      const auto range = parse_port_range(value, why);
      if (!range || range->low != range->high) bad(range ? "expected one port, not a range" : why);
      else tunnel.port = range->low;
    } else if (key == "LocalId") {
      identification(tunnel.local_id);
    } else if (key == "RemoteId") {
      identification(tunnel.remote_id);
    } else if (key == "Auth") {
      one_of({"psk", "certificate"}, tunnel.auth);
    } else if (key == "PSK") {
      section_name(tunnel.psk);
    } else if (key == "Identity") {
      section_name(tunnel.identity);
    } else if (key == "TrustStore") {
      section_name(tunnel.trust_store);
    } else if (key == "LocalTS" || key == "RemoteTS") {
      auto& list = key == "LocalTS" ? tunnel.local_ts : tunnel.remote_ts;
      for (std::string_view word : words) {
        auto selector = parse_traffic_selector(word, why);
        if (!selector) {
          bad(why);
          continue;
        }
        push_unique(list, selector->text);
        section.traffic_selectors.emplace_back(std::move(*selector), line);
      }
    } else if (key == "Mode") {
      one_of({"tunnel", "transport"}, tunnel.mode);
    } else if (key == "IKEProposals" || key == "ESPProposals") {
      const bool ike = key == "IKEProposals";
      for (std::string_view word : words) {
        if (check_proposal(word, ike ? ProposalKind::Ike : ProposalKind::Esp, why))
          push_unique(ike ? tunnel.ike_proposals : tunnel.esp_proposals, std::string(word));
        else
          bad(why);
      }
    } else if (key == "RekeyGroup") {
      const auto& groups = known_key_exchange_groups();
      if (std::find(groups.begin(), groups.end(), value) == groups.end())
        bad("unknown key exchange group '" + std::string(value) + "' (known: " + join(groups, " ") + ")");
      else tunnel.rekey_group = std::string(value);
    } else if (key == "Start") {
      one_of({"none", "boot", "trap"}, tunnel.start);
    } else if (key == "RekeyTime" || key == "LifeTime" || key == "IKERekeyTime") {
      const auto seconds = parse_duration(value, why);
      if (!seconds) bad(why);
      else if (*seconds == 0) bad("must be more than 0 seconds");
      else if (key == "RekeyTime") tunnel.rekey_seconds = *seconds;
      else if (key == "LifeTime") tunnel.life_seconds = *seconds;
      else tunnel.ike_rekey_seconds = *seconds;
    } else if (key == "DPD") {
      duration(tunnel.dpd_seconds);
    } else if (key == "RekeyBytes") {
      count(tunnel.rekey_bytes);
    } else if (key == "LifeBytes") {
      count(tunnel.life_bytes);
    } else if (key == "RekeyPackets") {
      count(tunnel.rekey_packets);
    } else if (key == "LifePackets") {
      count(tunnel.life_packets);
    } else if (key == "ReplayWindow") {
      std::uint64_t window = 0;
      count(window);
      if (window > kMaxReplayWindow) bad("at most " + std::to_string(kMaxReplayWindow) + " packets");
      else tunnel.replay_window = static_cast<std::uint32_t>(window);
    } else if (key == "MOBIKE") {
      flag(tunnel.mobike);
    } else if (key == "Fragmentation") {
      flag(tunnel.fragmentation);
    } else if (key == "ForceEncapsulation") {
      flag(tunnel.force_encapsulation);
    } else if (key == "Export") {
      flag(tunnel.export_allowed);
    } else {
      wireguard_key(section, key, value, line);
    }
  }

  // The keys of Protocol=wireguard tunnels.
  void wireguard_key(Section& section, std::string_view key, std::string_view value, unsigned line) {
    Tunnel& tunnel = section.tunnel;
    std::string why;
    const auto bad = [&](std::string reason) { error(line, std::string(key) + "=: " + reason); };
    const auto port = [&](std::uint16_t& out) {
      const auto range = parse_port_range(value, why);
      if (!range || range->low != range->high) bad(range ? "expected one port, not a range" : why);
      else out = range->low;
    };

    if (key == "Interface") {
      if (is_valid_interface_name(value, why)) tunnel.interface_name = std::string(value);
      else bad(why);
    } else if (key == "WireGuardKey") {
      if (split_words(value).size() != 1 || !is_valid_name(value))
        bad("expected the name of one [Identity] with Type=wireguard, got '" + std::string(value) + "'");
      else tunnel.wireguard_key = std::string(value);
    } else if (key == "ListenPort") {
      port(tunnel.listen_port);
    } else if (key == "ExchangePort") {
      port(tunnel.exchange_port);
    } else if (key == "Address" || key == "AllowedIPs") {
      const bool local = key == "Address";
      for (std::string_view word : split_words(value)) {
        auto parsed = local ? parse_interface_address(word, why) : parse_allowed_ip(word, why);
        if (parsed) push_unique(local ? tunnel.addresses : tunnel.allowed_ips, std::move(*parsed));
        else bad(why);
      }
    } else if (key == "PeerPublicKey") {
      if (parse_wireguard_key(value, why)) tunnel.peer_public_key = std::string(value);
      else bad(why);
    } else if (key == "PSKRotation") {
      if (auto seconds = parse_duration(value, why)) tunnel.psk_rotation_seconds = *seconds;
      else bad(why);
    } else if (key == "Keepalive") {
      const auto seconds = parse_duration(value, why);
      if (!seconds) bad(why);
      else if (*seconds > 65535) bad("at most 65535 seconds");
      else tunnel.keepalive_seconds = static_cast<std::uint16_t>(*seconds);
    } else if (key == "FwMark") {
      if (auto mark = parse_fwmark(value, why)) tunnel.fwmark = *mark;
      else bad(why);
    } else if (key == "Fallback") {
      if (auto parsed = boolean(key, value, line)) tunnel.fallback = *parsed;
    }
  }

  static unsigned line_of(const Section& section, std::string_view key) {
    const auto it = section.lines.find(std::string(key));
    return it == section.lines.end() ? section.line : it->second;
  }

  static bool given(const Section& section, std::string_view key) {
    return section.lines.count(std::string(key)) > 0;
  }

  // A name the tunnel refers to, checked once every file is read.
  void refer_from_tunnel(const Section& section, std::string_view kind, const std::string& target,
                         std::string_view key, std::string identity_type = "", std::size_t psk_bytes = 0) {
    if (target.empty()) return;
    declared_.references.push_back({file_, line_of(section, key), section.name, std::string(kind), target, "Tunnel",
                                    std::string(key), std::move(identity_type), psk_bytes});
  }

  // Checks that need the whole section; each error points at the key to fix.
  void finish_tunnel(Section& section) {
    const std::string name = section.name.empty() ? std::string("[Tunnel]") : "[Tunnel " + section.name + "]";
    if (section.name.empty() && !section.name_rejected)
      error(section.line, "[Tunnel] has no name: give Name= (or write [Tunnel name])");
    // Which keys belong and which are required depends on the protocol: not guessed.
    if (section.protocol_rejected) return;
    const bool wireguard = section.tunnel.protocol == "wireguard";
    const auto refuse_keys = [&](const auto& keys, std::string_view wrong_for) {
      for (std::string_view key : keys)
        if (given(section, key))
          error(line_of(section, key), std::string(key) + "= applies to " + (wireguard ? "ikev2" : "wireguard") +
                                           " tunnels only; " + name + " has Protocol=" + std::string(wrong_for));
    };
    if (wireguard) {
      refuse_keys(kIkeOnlyKeys, "wireguard");
      finish_wireguard_tunnel(section, name);
    } else {
      refuse_keys(kWireGuardOnlyKeys, "ikev2");
      finish_ike_tunnel(section, name);
    }
  }

  void finish_ike_tunnel(Section& section, const std::string& name) {
    Tunnel& tunnel = section.tunnel;
    const auto line_of = [&](std::string_view key) { return FileParser::line_of(section, key); };
    const auto given = [&](std::string_view key) { return FileParser::given(section, key); };

    if (tunnel.auth == "psk" && !given("PSK"))
      error(line_of("Auth"), name + ": Auth=psk needs PSK= naming a [PSK] section");
    if (tunnel.auth == "certificate" && !given("Identity"))
      error(line_of("Auth"), name + ": Auth=certificate needs Identity= naming an [Identity] section");
    // Which names must exist is decided by Auth=.
    if (tunnel.auth == "psk") refer_from_tunnel(section, "PSK", tunnel.psk, "PSK");
    if (tunnel.auth == "certificate") {
      refer_from_tunnel(section, "Identity", tunnel.identity, "Identity", "x509");
      refer_from_tunnel(section, "TrustStore", tunnel.trust_store, "TrustStore");
    }

    const bool has_peer = !tunnel.peer.empty() && tunnel.peer != "%any";
    if ((tunnel.start == "boot" || tunnel.start == "trap") && !has_peer)
      error(line_of("Start"), name + ": Start=" + tunnel.start + " needs Peer= (an address or host name to connect to)");
    if (tunnel.start == "trap" && tunnel.mode == "tunnel" && tunnel.local_ts.empty() && tunnel.remote_ts.empty())
      error(line_of("Start"), name + ": Start=trap needs LocalTS= or RemoteTS= (the traffic that starts the tunnel), "
                                     "or Mode=transport");
    if (tunnel.mode == "transport") {
      for (const auto& [selector, line] : section.traffic_selectors)
        if (!selector.is_host)
          error(line, name + ": Mode=transport protects traffic between the two hosts only; traffic selector '" +
                          selector.text + "' is a network (use a host address, or Mode=tunnel)");
    }
    if (given("LifeTime") && given("RekeyTime") && tunnel.life_seconds <= tunnel.rekey_seconds)
      error(line_of("LifeTime"), name + ": LifeTime= (" + std::to_string(tunnel.life_seconds) +
                                     "s) must be longer than RekeyTime= (" + std::to_string(tunnel.rekey_seconds) + "s)");
    if (given("LifeBytes") && given("RekeyBytes") && tunnel.life_bytes <= tunnel.rekey_bytes)
      error(line_of("LifeBytes"), name + ": LifeBytes= must be more than RekeyBytes=");
    if (given("LifePackets") && given("RekeyPackets") && tunnel.life_packets <= tunnel.rekey_packets)
      error(line_of("LifePackets"), name + ": LifePackets= must be more than RekeyPackets=");
  }

  void finish_wireguard_tunnel(Section& section, const std::string& name) {
    Tunnel& tunnel = section.tunnel;
    const auto line_of = [&](std::string_view key) { return FileParser::line_of(section, key); };
    const auto given = [&](std::string_view key) { return FileParser::given(section, key); };

    if (!given("Port")) tunnel.port = kWireGuardPort;
    if (tunnel.interface_name.empty() && !given("Interface") && !section.name.empty())
      tunnel.interface_name = default_interface_name(section.name);
    // Identity= means the agents exchange keys with certificates; without it
    // the preshared key, if any, is the static PSK=.
    tunnel.auth = given("Identity") ? "certificate" : "psk";

    if (!given("WireGuardKey"))
      error(line_of("Protocol"), name + ": Protocol=wireguard needs WireGuardKey= naming an [Identity] with "
                                        "Type=wireguard (this side's key pair)");
    if (!given("AllowedIPs"))
      error(line_of("Protocol"), name + ": Protocol=wireguard needs AllowedIPs= (the addresses routed to the peer)");
    if (!given("PeerPublicKey") && !given("Identity"))
      error(line_of("Protocol"), name + ": a wireguard tunnel needs PeerPublicKey= (a peer without an agent) or "
                                        "Identity= (the agents exchange keys, authenticated by certificates)");
    if (given("PSK") && given("Identity"))
      error(line_of("PSK"), name + ": PSK= (a static preshared key) and Identity= (an agent exchange, which makes "
                                   "and rotates the preshared key) exclude each other");
    if (tunnel.start == "trap")
      error(line_of("Start"), name + ": Start=trap is for ikev2 tunnels; a wireguard tunnel starts with none or boot");

    refer_from_tunnel(section, "Identity", tunnel.wireguard_key, "WireGuardKey", "wireguard");
    refer_from_tunnel(section, "Identity", tunnel.identity, "Identity", "x509");
    refer_from_tunnel(section, "TrustStore", tunnel.trust_store, "TrustStore");
    refer_from_tunnel(section, "PSK", tunnel.psk, "PSK", "", kWireGuardPskBytes);

    if (!section.name.empty() && errors_.size() == section.errors_before) check_shared_interface(section, name);
  }

  // Each WireGuard tunnel is one link with one peer, and links need their
  // own ports.
  void check_shared_interface(const Section& section, const std::string& name) {
    const Tunnel& tunnel = section.tunnel;
    WireGuardInterface link{section.name,      location(section.line), tunnel.wireguard_key, tunnel.listen_port,
                            tunnel.addresses, tunnel.fwmark,          tunnel.fallback};
    auto& interfaces = declared_.wireguard_interfaces;
    const auto existing = interfaces.find(tunnel.interface_name);
    if (existing != interfaces.end()) {
      error(line_of(section, "Interface"),
            name + ": interface '" + tunnel.interface_name + "' is already tunnel '" + existing->second.tunnel +
                "''s (" + existing->second.location +
                "); each WireGuard tunnel has its own interface (one peer per link)");
      return;
    }
    for (const auto& [interface_name, other] : interfaces) {
      if (other.listen_port == link.listen_port) {
        error(line_of(section, "ListenPort"),
              name + ": ListenPort=" + std::to_string(link.listen_port) + " is already used by interface '" +
                  interface_name + "' (tunnel '" + other.tunnel + "', " + other.location +
                  "); each interface needs its own port");
        return;
      }
    }
    interfaces.emplace(tunnel.interface_name, std::move(link));
  }

  static constexpr std::uint64_t kMaxReplayWindow = 4096;
  static constexpr std::uint16_t kWireGuardPort = 51820;

  std::string_view text_;
  const std::string& file_;
  PolicyData& data_;
  Declarations& declared_;
  std::vector<Error>& errors_;
  FileFacts facts_;
  std::optional<Section> section_;
  bool seen_any_header_ = false;
};

}  // namespace

FileFacts parse_file(std::string_view text, const std::string& file, PolicyData& data, Declarations& declared,
                     std::vector<Error>& errors) {
  return FileParser(text, file, data, declared, errors).run();
}

void resolve_references(const Declarations& declared, std::vector<Error>& errors) {
  const auto names_of = [](const std::map<std::string, std::string>& declared_names) {
    std::vector<std::string> names;
    for (const auto& [name, where] : declared_names) names.push_back(name);
    return names.empty() ? std::string("none") : join(names, ", ");
  };
  for (const PendingReference& ref : declared.references) {
    const auto& declared_names = ref.kind == "Identity"     ? declared.identities
                                 : ref.kind == "PSK"        ? declared.psks
                                 : ref.kind == "TrustStore" ? declared.trust_stores
                                                            : declared.tunnels;
    std::string owner_lower = ref.owner;
    std::transform(owner_lower.begin(), owner_lower.end(), owner_lower.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    const std::string rule = ref.rule.empty() ? "this " + owner_lower : ref.owner + " '" + ref.rule + "'";
    const std::string key = ref.key.empty() ? ref.kind : ref.key;
    if (!declared_names.count(ref.name)) {
      errors.push_back({ref.file, ref.line,
                        rule + " refers to " + ref.kind + " '" + ref.name + "', which is not defined (defined: " +
                            names_of(declared_names) + ")"});
      continue;
    }
    // Types and sizes are known only of sections without errors of their own.
    const auto type = declared.identity_types.find(ref.name);
    if (ref.kind == "Identity" && !ref.identity_type.empty() && type != declared.identity_types.end() &&
        type->second != ref.identity_type)
      errors.push_back({ref.file, ref.line,
                        rule + ": " + key + "= names Identity '" + ref.name + "' of Type=" + type->second +
                            "; it needs an [Identity] with Type=" + ref.identity_type});
    const auto size = declared.psk_sizes.find(ref.name);
    if (ref.kind == "PSK" && ref.psk_bytes != 0 && size != declared.psk_sizes.end() && size->second != ref.psk_bytes)
      errors.push_back({ref.file, ref.line,
                        rule + ": PSK '" + ref.name + "' is " + std::to_string(size->second) +
                            " bytes; a WireGuard preshared key must be exactly " + std::to_string(ref.psk_bytes) +
                            " bytes"});
  }
}

}  // namespace tapsec::policy::detail
