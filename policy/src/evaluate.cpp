// Policy evaluation: first matching rule decides; the decision narrows what
// the application asked for and never adds to it (RFC 8922 §1.2).

#include <algorithm>

#include "policy/src/model.h"
#include "policy/src/values.h"

namespace tapsec::policy::detail {
namespace {

template <typename T, typename Text>
std::string texts_of(const std::vector<T>& items, Text text) {
  std::string out;
  for (const T& item : items) {
    if (!out.empty()) out += ' ';
    out += text(item);
  }
  return out;
}

std::string words_of(const std::vector<std::string>& items) { return join(items, " "); }

std::string reference_names(const std::vector<Reference>& references) {
  return texts_of(references, [](const Reference& r) { return r.name; });
}

bool cgroup_within(const std::string& prefix, const std::string& cgroup) {
  if (prefix == "/") return !cgroup.empty();
  return cgroup == prefix || (cgroup.size() > prefix.size() && cgroup.compare(0, prefix.size(), prefix) == 0 &&
                              cgroup[prefix.size()] == '/');
}

std::string normalized_host(std::string host) {
  if (!host.empty() && host.back() == '.') host.pop_back();
  return host;
}

struct MatchResult {
  std::vector<std::string> matched_keys;
  std::vector<std::string> mismatches;
};

MatchResult match_rule(const Rule& rule, const Caller& caller, const Request& request,
                       const std::optional<Cidr>& address) {
  MatchResult result;
  const auto check = [&](bool present, std::string_view key, bool matched, std::string why) {
    if (!present) return;
    if (matched) result.matched_keys.emplace_back(key);
    else result.mismatches.push_back(std::move(why));
  };

  const std::string users = texts_of(rule.users, [](const AccountId& a) { return a.text; });
  check(!rule.users.empty(), "MatchUser",
        std::any_of(rule.users.begin(), rule.users.end(), [&](const AccountId& a) { return a.id == caller.uid; }),
        "MatchUser " + users + " does not match uid " + std::to_string(caller.uid));

  const auto in_groups = [&](const AccountId& a) {
    return (caller.gid != kNoPrimaryGroup && a.id == caller.gid) || std::find(caller.supplementary_gids.begin(), caller.supplementary_gids.end(),
                                           static_cast<gid_t>(a.id)) != caller.supplementary_gids.end();
  };
  std::string caller_groups = caller.gid != kNoPrimaryGroup ? "gid " + std::to_string(caller.gid) : std::string();
  if (!caller.supplementary_gids.empty()) {
    caller_groups += caller_groups.empty() ? "groups" : " or supplementary groups";
    for (gid_t gid : caller.supplementary_gids) caller_groups += " " + std::to_string(gid);
  }
  if (caller_groups.empty()) caller_groups = "the caller (no groups known)";
  check(!rule.groups.empty(), "MatchGroup", std::any_of(rule.groups.begin(), rule.groups.end(), in_groups),
        "MatchGroup " + texts_of(rule.groups, [](const AccountId& a) { return a.text; }) + " does not match " +
            caller_groups);

  check(!rule.units.empty(), "MatchUnit",
        !caller.unit.empty() && std::any_of(rule.units.begin(), rule.units.end(), [&](const std::string& glob) {
          return glob_matches(glob, caller.unit, false);
        }),
        "MatchUnit " + words_of(rule.units) +
            (caller.unit.empty() ? " does not match (the caller has no systemd unit)"
                                 : " does not match unit " + caller.unit));

  check(!rule.cgroups.empty(), "MatchCgroup",
        std::any_of(rule.cgroups.begin(), rule.cgroups.end(),
                    [&](const std::string& prefix) { return cgroup_within(prefix, caller.cgroup); }),
        "MatchCgroup " + words_of(rule.cgroups) +
            (caller.cgroup.empty() ? " does not match (the caller's cgroup is unknown)"
                                   : " does not contain cgroup " + caller.cgroup));

  check(!rule.roles.empty(), "MatchRole",
        std::find(rule.roles.begin(), rule.roles.end(), request.role) != rule.roles.end(),
        "MatchRole " + words_of(rule.roles) + " does not match role " +
            (request.role.empty() ? std::string("(none)") : request.role));

  const std::string host = normalized_host(request.host);
  check(!rule.hosts.empty(), "MatchHost",
        !host.empty() && std::any_of(rule.hosts.begin(), rule.hosts.end(),
                                     [&](const std::string& glob) { return glob_matches(glob, host, true); }),
        "MatchHost " + words_of(rule.hosts) +
            (host.empty() ? " does not match (the request names no host)" : " does not match host " + host));

  if (!address && request.address_pending && !rule.addresses.empty()) {
    if (rule.action == Action::Allow) result.matched_keys.emplace_back("MatchAddress (once resolved)");
    else result.mismatches.push_back("MatchAddress is checked once the host is resolved");
  } else {
    check(!rule.addresses.empty(), "MatchAddress",
          address && std::any_of(rule.addresses.begin(), rule.addresses.end(),
                                 [&](const Cidr& prefix) { return cidr_contains(prefix, *address); }),
          "MatchAddress " + texts_of(rule.addresses, [](const Cidr& c) { return c.text; }) +
              (address ? " does not contain address " + address->text
                       : std::string(" does not match (the request has no IP address)")));
  }

  check(!rule.ports.empty(), "MatchPort",
        std::any_of(rule.ports.begin(), rule.ports.end(),
                    [&](const PortRange& r) { return request.port >= r.low && request.port <= r.high; }),
        "MatchPort " + texts_of(rule.ports, [](const PortRange& r) { return r.text; }) +
            (request.port == 0 ? std::string(" does not match (the request has no port)")
                               : " does not match port " + std::to_string(request.port)));

  // MatchTunnel: only requests about a tunnel, and only the named ones ("*": any).
  check(!rule.tunnels.empty(), "MatchTunnel",
        !request.tunnel.empty() && std::any_of(rule.tunnels.begin(), rule.tunnels.end(), [&](const std::string& name) {
          return name == "*" || name == request.tunnel;
        }),
        "MatchTunnel " + words_of(rule.tunnels) +
            (request.tunnel.empty() ? std::string(" does not match (the request is not for a tunnel)")
                                    : " does not match tunnel " + request.tunnel));

  // MatchOperation: administrative operations are granted only by rules
  // that name them, so a broad allow rule never grants them by accident.
  if (!request.operation.empty()) {
    const bool named = std::find(rule.operations.begin(), rule.operations.end(), request.operation) !=
                       rule.operations.end();
    if (named) result.matched_keys.emplace_back("MatchOperation");
    else if (rule.operations.empty())
      result.mismatches.push_back("the rule has no MatchOperation, so it grants no operation like " +
                                  request.operation);
    else
      result.mismatches.push_back("MatchOperation " + words_of(rule.operations) + " does not name " +
                                  request.operation);
  } else if (!rule.operations.empty()) {
    result.mismatches.push_back("MatchOperation " + words_of(rule.operations) +
                                " does not match (the request is not an administrative operation)");
  }
  return result;
}

// The request's destination address: the address field, else a host that is
// an IP literal.
std::optional<Cidr> request_address(const Request& request) {
  if (!request.address.empty()) return parse_address(request.address);
  return parse_address(request.host);
}

// Fills the grants of an Action=allow rule; returns the reasons to deny.
std::vector<std::string> apply_allow_rule(const Rule& rule, const Request& request, Decision& decision) {
  std::vector<std::string> problems;

  // Protocols: the application's list, in its order, minus what the rule does not allow.
  const std::vector<std::string>& allowed_protocols = rule.protocols ? *rule.protocols : known_protocols();
  for (const std::string& protocol : request.protocols) {
    const bool allowed =
        std::find(allowed_protocols.begin(), allowed_protocols.end(), protocol) != allowed_protocols.end();
    const bool duplicate = std::find(decision.protocols.begin(), decision.protocols.end(), protocol) !=
                           decision.protocols.end();
    if (allowed && !duplicate) decision.protocols.push_back(protocol);
    if (!allowed) decision.explanation.push_back("  protocol " + protocol + " is not allowed by this rule; left out");
  }
  if (request.protocols.empty()) {
    problems.push_back("the request names no protocol (this rule allows: " + words_of(allowed_protocols) + ")");
  } else if (decision.protocols.empty()) {
    problems.push_back("none of the requested protocols (" + words_of(request.protocols) +
                       ") is allowed; this rule allows: " + words_of(allowed_protocols));
  }

  const auto choose = [&](const std::vector<Reference>& permitted, const std::string& requested,
                          std::string_view what, std::string& chosen) {
    if (requested.empty()) {
      chosen = permitted.empty() ? std::string() : permitted.front().name;
      return;
    }
    if (std::any_of(permitted.begin(), permitted.end(), [&](const Reference& r) { return r.name == requested; })) {
      chosen = requested;
      return;
    }
    problems.push_back(std::string(what) + " '" + requested + "' is not allowed (" +
                       (permitted.empty() ? std::string("this rule allows none")
                                          : "this rule allows: " + reference_names(permitted)) +
                       ")");
  };
  choose(rule.identities, request.identity, "identity", decision.identity);
  choose(rule.psks, request.psk, "PSK", decision.psk);

  if (request.wants_export && !rule.export_allowed)
    problems.push_back("policy forbids key export (ask without export, or set Export=yes in the rule)");
  decision.export_allowed = request.wants_export && rule.export_allowed;

  static const std::vector<std::string> kDefaultPeerValidation = {"system", "pinned", "application"};
  decision.peer_validation = rule.peer_validation ? *rule.peer_validation : kDefaultPeerValidation;
  // A client always validates its peer ("system" unless it says otherwise);
  // a server that names no mode does not ask for a peer certificate.
  std::string mode = request.peer_validation;
  if (mode.empty() && request.role != "server") mode = "system";
  if (!mode.empty()) {
    const auto& known = known_peer_validation_modes();
    if (std::find(known.begin(), known.end(), mode) == known.end()) {
      problems.push_back("unknown peer validation mode '" + mode + "' (known: " + words_of(known) + ")");
    } else if (std::find(decision.peer_validation.begin(), decision.peer_validation.end(), mode) ==
               decision.peer_validation.end()) {
      problems.push_back("peer validation '" + mode + "' is not permitted (this rule permits: " +
                         words_of(decision.peer_validation) + ")");
    }
  }

  decision.algorithms = rule.algorithms;
  decision.trust_store = rule.trust_store ? rule.trust_store->name : std::string();
  // An application that requires kernel offload gets no userspace stand-in.
  decision.fallback_allowed = request.offload == Offload::Preferred && rule.fallback_allowed;
  return problems;
}

std::string grants_summary(const Decision& decision) {
  std::string summary = "protocols " + words_of(decision.protocols);
  if (!decision.identity.empty()) summary += "; identity " + decision.identity;
  if (!decision.psk.empty()) summary += "; psk " + decision.psk;
  summary += "; trust store " + (decision.trust_store.empty() ? std::string("system") : decision.trust_store);
  summary += "; peer validation " + words_of(decision.peer_validation);
  for (const auto& [kind, names] : decision.algorithms) summary += "; " + kind + " " + words_of(names);
  summary += std::string("; export ") + (decision.export_allowed ? "yes" : "no");
  summary += std::string("; fallback ") + (decision.fallback_allowed ? "yes" : "no");
  return summary;
}

void deny(Decision& decision, std::string reason) {
  Decision denied;
  denied.rule = std::move(decision.rule);
  denied.rule_location = std::move(decision.rule_location);
  denied.explanation = std::move(decision.explanation);
  denied.denial_reason = std::move(reason);
  denied.explanation.push_back("decision: deny: " + denied.denial_reason);
  decision = std::move(denied);
}

}  // namespace

Decision evaluate(const PolicyData& data, const Caller& caller, const Request& request) {
  Decision decision;
  const std::optional<Cidr> address = request_address(request);
  if (!request.address.empty() && !address)
    decision.explanation.push_back("request address '" + request.address + "' is not an IP address; MatchAddress cannot match");

  for (const Rule& rule : data.rules) {
    const std::string head = "rule " + rule.name + " (" + rule.location + "): ";
    const MatchResult match = match_rule(rule, caller, request, address);
    if (!match.mismatches.empty()) {
      decision.explanation.push_back(head + join(match.mismatches, "; "));
      continue;
    }
    decision.explanation.push_back(head + "matches (" +
                                   (match.matched_keys.empty() ? std::string("no Match keys: every request")
                                                               : join(match.matched_keys, ", ")) +
                                   "), Action=" + (rule.action == Action::Allow ? "allow" : "deny"));
    decision.rule = rule.name;
    decision.rule_location = rule.location;
    if (rule.action == Action::Deny) {
      deny(decision, "denied by rule " + rule.name + " (" + rule.location + ")" +
                         (rule.description.empty() ? std::string() : ": " + rule.description));
      return decision;
    }
    if (!request.operation.empty()) {  // grants no protocol, identity or algorithm
      decision.allowed = true;
      decision.explanation.push_back("decision: allow operation " + request.operation + " by rule " + rule.name);
      return decision;
    }
    const std::vector<std::string> problems = apply_allow_rule(rule, request, decision);
    if (!problems.empty()) {
      deny(decision, "rule " + rule.name + " (" + rule.location + ") matches, but " + join(problems, "; "));
      return decision;
    }
    decision.allowed = true;
    decision.explanation.push_back("decision: allow by rule " + rule.name + ": " + grants_summary(decision));
    return decision;
  }

  std::string who = "uid " + std::to_string(caller.uid);
  if (!request.role.empty()) who += ", role " + request.role;
  if (!request.host.empty()) who += ", host " + request.host;
  if (!request.address.empty()) who += ", address " + request.address;
  if (request.port) who += ", port " + std::to_string(request.port);
  if (!request.tunnel.empty()) who += ", tunnel " + request.tunnel;
  deny(decision, data.rules.empty() ? "the policy has no rules, so every request is denied"
                                    : "no policy rule matches this request (" + who + "); denied by default");
  return decision;
}

}  // namespace tapsec::policy::detail
