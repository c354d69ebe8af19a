// `tapsecctl policy check`: the agent's policy decision, computed locally.
#include <variant>

#include "dbus/tapsecctl/commands.h"
#include "dbus/tapsecctl/json.h"
#include "tapsec/policy.h"

namespace tapsec::ctl {
namespace {

std::string join(const std::vector<std::string>& items, const char* separator = ", ") {
  std::string text;
  for (const auto& item : items) text += (text.empty() ? "" : separator) + item;
  return text;
}

policy::Request make_request(const PolicyCheckOptions& o) {
  policy::Request request;
  request.protocols = o.protocols;
  request.role = o.role;
  request.host = o.host;
  request.address = o.address;
  request.port = o.port;
  request.identity = o.identity;
  request.psk = o.psk;
  request.wants_export = o.wants_export;
  request.peer_validation = o.peer_validation;
  request.offload = o.offload == "required" ? policy::Offload::Required : policy::Offload::Preferred;
  return request;
}

// The request establishing `tunnel` makes: the initiator ("client") towards
// its peer, with its protocol and the credential its Auth= names. Options
// given on the command line take precedence.
policy::Request make_tunnel_request(const PolicyCheckOptions& o, const policy::Tunnel& tunnel) {
  policy::Request request = make_request(o);
  request.tunnel = tunnel.name;
  if (request.protocols.empty()) request.protocols = {tunnel.protocol};
  if (request.role.empty()) request.role = "client";
  const bool has_peer = !tunnel.peer.empty() && tunnel.peer != "%any";
  if (request.host.empty() && has_peer) request.host = tunnel.peer;
  if (request.port == 0) request.port = tunnel.port;
  if (request.identity.empty() && tunnel.auth == "certificate") request.identity = tunnel.identity;
  if (request.psk.empty() && tunnel.auth == "psk") request.psk = tunnel.psk;
  request.wants_export = request.wants_export || tunnel.export_allowed;
  return request;
}

void print_json(const policy::Decision& d, const std::string& tunnel, std::ostream& out) {
  JsonWriter json;
  json.begin_object();
  json.field("allowed", d.allowed);
  json.field("rule", d.rule);
  json.field("rule_location", d.rule_location);
  json.field("protocols", d.protocols);
  json.key("algorithms");
  json.begin_object();
  for (const auto& [kind, names] : d.algorithms) json.field(kind, names);
  json.end_object();
  json.field("export_allowed", d.export_allowed);
  json.field("fallback_allowed", d.fallback_allowed);
  json.field("identity", d.identity);
  json.field("psk", d.psk);
  json.field("trust_store", d.trust_store);
  json.field("peer_validation", d.peer_validation);
  json.field("denial_reason", d.denial_reason);
  json.field("explanation", d.explanation);
  if (!tunnel.empty()) json.field("tunnel", tunnel);
  json.end_object();
  out << json.str() << "\n";
}

void print_text(const policy::Decision& d, std::ostream& out) {
  out << "Decision: " << (d.allowed ? "allowed" : "denied") << "\n";
  if (!d.allowed && !d.denial_reason.empty()) out << "  Reason: " << d.denial_reason << "\n";
  if (!d.rule.empty()) out << "    Rule: " << d.rule << (d.rule_location.empty() ? "" : " (" + d.rule_location + ")") << "\n";
  if (d.allowed) {
    out << "Protocols: " << join(d.protocols) << "\n";
    if (d.algorithms.empty()) {
      out << "Algorithms: any\n";
    } else {
      for (const auto& [kind, names] : d.algorithms) out << "Algorithms (" << kind << "): " << join(names) << "\n";
    }
    out << "Identity: " << (d.identity.empty() ? "(none)" : d.identity) << "\n";
    if (!d.psk.empty()) out << "PSK: " << d.psk << "\n";
    out << "Trust store: " << (d.trust_store.empty() ? "system" : d.trust_store) << "\n";
    out << "Peer validation: " << join(d.peer_validation) << "\n";
    out << "Key export: " << (d.export_allowed ? "allowed" : "not allowed") << "\n";
    out << "Userspace fallback: " << (d.fallback_allowed ? "allowed" : "not allowed") << "\n";
  }
  if (!d.explanation.empty()) {
    out << "Explanation:\n";
    for (const auto& line : d.explanation) out << "  " << line << "\n";
  }
}

}  // namespace

int run_policy_check(const PolicyCheckOptions& options, bool json, std::ostream& out, std::ostream& err) {
  auto loaded = policy::Policy::load_directory(options.dir);
  if (auto* errors = std::get_if<std::vector<policy::Error>>(&loaded)) {
    err << "tapsecctl: the policy in " << options.dir << " cannot be loaded:\n";
    for (const auto& e : *errors) err << "  " << e.to_string() << "\n";
    if (json) {
      JsonWriter w;
      w.begin_object();
      w.key("error");
      w.begin_object();
      w.field("name", "policy-invalid");
      w.field("message", "the policy in " + options.dir + " cannot be loaded");
      w.key("details");
      w.begin_array();
      for (const auto& e : *errors) w.value(e.to_string());
      w.end_array();
      w.end_object();
      w.end_object();
      out << w.str() << "\n";
    }
    return kExitUsage;
  }
  const auto& policy = std::get<policy::Policy>(loaded);

  policy::Caller caller;
  caller.uid = options.uid;
  caller.gid = options.gid;
  caller.supplementary_gids = options.supplementary_gids;
  caller.unit = options.unit;
  policy::Request request;
  if (!options.tunnel.empty()) {
    const policy::Tunnel* tunnel = policy.tunnel(options.tunnel);
    if (!tunnel) {
      std::string defined = join(policy.tunnel_names());
      const std::string message = "the policy in " + options.dir + " defines no tunnel '" + options.tunnel +
                                  "' (defined: " + (defined.empty() ? "none" : defined) + ")";
      err << "tapsecctl: " << message << "\n";
      if (json) {
        JsonWriter w;
        w.begin_object();
        w.key("error");
        w.begin_object();
        w.field("name", "no-such-tunnel");
        w.field("message", message);
        w.end_object();
        w.end_object();
        out << w.str() << "\n";
      }
      return kExitUsage;
    }
    request = make_tunnel_request(options, *tunnel);
    if (!json)
      out << "Tunnel: " << tunnel->name << " (" << tunnel->location << "): " << join(request.protocols) << " to "
          << (request.host.empty() ? "any peer" : request.host) << " port " << request.port << "\n";
  } else {
    request = make_request(options);
  }
  const policy::Decision decision = policy.evaluate(caller, request);
  if (json)
    print_json(decision, options.tunnel, out);
  else
    print_text(decision, out);
  return decision.allowed ? kExitSuccess : kExitFailure;
}

}  // namespace tapsec::ctl
