#include "agent/state/agent.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>

#include "agent/bus/errors.h"
#include "agent/core/log.h"
#include "agent/engines/tls/post_handshake.h"
#include "agent/kernel/ktls.h"
#include "agent/kernel/socket_info.h"
#include "agent/kernel/socket_locator.h"
#include "agent/state/policy_caller.h"

namespace tapsec::state {
namespace {

bus::BusError make_error(const char* short_name, std::string message) {
  return bus::error::named(short_name, std::move(message));
}

std::uint64_t now_usec() {
  using namespace std::chrono;
  return duration_cast<microseconds>(system_clock::now().time_since_epoch()).count();
}

std::string join(const std::vector<std::string>& items, const char* separator = ", ") {
  std::string out;
  for (const auto& item : items) {
    if (!out.empty()) out += separator;
    out += item;
  }
  return out;
}

// Requested ∩ allowed, in the requested order; an empty "allowed" means the
// policy does not restrict this kind.
std::vector<std::string> narrow(const std::vector<std::string>& requested, const std::vector<std::string>* allowed) {
  if (!allowed) return requested;
  if (requested.empty()) return *allowed;
  std::vector<std::string> out;
  for (const auto& name : requested) {
    if (std::find(allowed->begin(), allowed->end(), name) != allowed->end()) out.push_back(name);
  }
  return out;
}

bool is_ip_literal(const std::string& host) {
  in6_addr a6;
  in_addr a4;
  return inet_pton(AF_INET, host.c_str(), &a4) == 1 || inet_pton(AF_INET6, host.c_str(), &a6) == 1;
}

// Splits "ip:port" of the peer for the policy's address and port matchers.
void split_address(const std::string& address, std::string* ip, std::uint16_t* port) {
  auto colon = address.rfind(':');
  if (colon == std::string::npos) return;
  *ip = address.substr(0, colon);
  if (!ip->empty() && ip->front() == '[') *ip = ip->substr(1, ip->size() - 2);
  *port = static_cast<std::uint16_t>(std::atoi(address.c_str() + colon + 1));
}

// The IP literal of a resolved address, for the policy's MatchAddress.
std::string ip_of(const sockaddr_storage& address) {
  std::string ip;
  std::uint16_t port = 0;
  split_address(kernel::format_socket_address(&address, sizeof address), &ip, &port);
  return ip;
}

}  // namespace

struct Agent::Association {
  bus::AssociationInfo info;
  bool export_allowed = false;
  kernel::PinnedSocket holder;  // kernel offload: who holds the socket
  std::unique_ptr<tls::Session> session;    // kernel offload: kept for rekey and export
  std::unique_ptr<UserspaceChannel> channel;  // userspace fallback
  std::unique_ptr<KernelRelay> relay;         // kernel offload, relayed (the default)
  // The engine, wherever it lives.
  tls::Session* tls_session() {
    return channel ? &channel->session() : relay ? &relay->session() : session.get();
  }
};

struct Agent::PendingHandshake {
  TlsRequest request;
  policy::Decision decision;
  std::unique_ptr<TlsHandshake> handshake;
};

struct Agent::PendingConnect {
  TlsRequest request;
  RequestQuota::Slot slot;
  core::Resolver::Lookup lookup;  // cancelled with the request
  core::Reactor::Id watch = 0;
  core::Reactor::Id timer = 0;
  core::Resolver::Addresses addresses;  // resolved and allowed by policy
  std::size_t next_address = 0;
  std::string last_error;
};

Agent::Agent(core::Reactor& reactor, AgentOptions options, kernel::KernelCapabilities capabilities)
    : reactor_(reactor),
      options_(std::move(options)),
      capabilities_(std::move(capabilities)),
      session_cache_(std::make_shared<tls::SessionCache>(options_.session_cache_capacity)),
      ticket_keys_(tls::TicketKeys::generate()),
      resolver_(reactor_, options_.resolver),
      handshake_quota_(options_.handshakes),
      connect_quota_(options_.connects) {
  liveness_timer_ = reactor_.add_timer(options_.liveness_interval, [this] { check_liveness(); });
  ike_ = std::make_unique<IkeService>(reactor_, resolver_, options_.ike, capabilities_, [this] { return next_id_++; });
  if (options_.ike.ike_port != 0) {
    std::string error;
    if (!ike_->start(&error)) core::log::warning("IKE is off", {{"reason", error}});
  }
  wireguard_ = std::make_unique<WgService>(reactor_, resolver_, options_.wireguard, capabilities_, [this] { return next_id_++; });
}

Agent::~Agent() {
  ike_.reset();  // deletes the tunnels while the publisher may still listen
  wireguard_.reset();
  if (liveness_timer_) reactor_.cancel_timer(liveness_timer_);
  for (auto& [id, pending] : connects_) {
    if (pending->watch) reactor_.unwatch(pending->watch);
    if (pending->timer) reactor_.cancel_timer(pending->timer);
  }
}

bool Agent::load_policy(std::string* error) {
  auto loaded = policy::Policy::load_directory(options_.policy_dir);
  if (auto* errors = std::get_if<std::vector<policy::Error>>(&loaded)) {
    std::string text;
    for (const auto& e : *errors) text += (text.empty() ? "" : "\n") + e.to_string();
    *error = text;
    return false;
  }
  policy_ = std::move(std::get<policy::Policy>(loaded));
  ike_->apply_policy(policy_);
  wireguard_->apply_policy(policy_);
  credentials_.clear();        // identities may have changed on disk,
  tls::flush_context_cache();  // and so may trust anchor files
  core::log::info("policy loaded", {{"dir", options_.policy_dir},
                                    {"identities", join(policy_.identity_names())}});
  return true;
}

// ---------------------------------------------------------------- requests

void Agent::secure_socket(const bus::CallerCredentials& caller, core::UniqueFd fd, const std::string& role,
                          bus::SecurityProperties props, bus::SecureCompletion done) {
  if (role != "client" && role != "server") {
    done(make_error("InvalidArgument", "role must be \"client\" or \"server\", not \"" + role + "\""));
    return;
  }
  auto socket = kernel::check_offload_candidate(fd.get());
  if (!socket) {
    done(make_error("BadSocket", socket.error()));
    return;
  }
  TlsRequest request{caller, std::move(fd), role, std::move(props), {}, 0, std::move(done), socket.value(), {}};
  std::string peer_ip;
  split_address(request.socket.peer_address, &peer_ip, &request.port);
  request.host = !request.props.server_name.empty() ? request.props.server_name : peer_ip;
  // Policy before any handshake work (start_tls decides first).
  start_tls(std::move(request));
}

std::optional<bus::BusError> Agent::refuse_over_limit(const std::optional<RequestQuota::Refusal>& refusal,
                                                     const RequestQuota& quota, uid_t uid, const char* what,
                                                     const char* option) const {
  if (!refusal) return std::nullopt;
  const bool total = *refusal == RequestQuota::Refusal::Total;
  std::string message =
      total ? "the agent has " + std::to_string(quota.total()) + " " + what + " in progress, its limit (" + option +
                  "); try again when some complete"
            : "uid " + std::to_string(uid) + " has " + std::to_string(quota.count(uid)) + " " + what +
                  " in progress, the limit per caller (" + option + "-per-caller); try again when one completes";
  core::log::notice("request refused: limit reached", {{"uid", std::to_string(uid)}, {"what", what}});
  return make_error("LimitExceeded", std::move(message));
}

std::optional<bus::BusError> Agent::reserve_handshake(TlsRequest& request) {
  if (request.handshake_slot) return std::nullopt;
  auto [slot, refusal] = handshake_quota_.acquire(request.caller.uid);
  if (auto refused =
          refuse_over_limit(refusal, handshake_quota_, request.caller.uid, "handshakes", "--max-handshakes"))
    return refused;
  request.handshake_slot = std::move(slot);
  return std::nullopt;
}

void Agent::connect(const bus::CallerCredentials& caller, const std::string& host, std::uint16_t port,
                    bus::SecurityProperties props, bus::SecureCompletion done) {
  if (host.empty() || port == 0) {
    done(make_error("InvalidArgument", "Connect needs a host name or address and a port other than 0"));
    return;
  }
  if (props.server_name.empty() && !is_ip_literal(host)) props.server_name = host;
  TlsRequest request{caller, {}, "client", std::move(props), host, port, std::move(done), {}, {}};
  if (auto refused = refuse_unsupported_protocols(request)) return request.done(std::move(*refused));

  // Policy first: a caller no rule could allow to this host and port gets
  // no lookup and no connection, whatever the address would have been.
  auto decision = decide(request, is_ip_literal(host) ? host : std::string(), !is_ip_literal(host));
  if (!decision.allowed) return deny(request, decision);
  if (auto refused = refuse_direct_socket(request.props)) return request.done(std::move(*refused));

  auto [slot, refusal] = connect_quota_.acquire(caller.uid);
  if (auto refused = refuse_over_limit(refusal, connect_quota_, caller.uid, "Connects", "--max-connects"))
    return request.done(std::move(*refused));
  if (auto refused = reserve_handshake(request)) return request.done(std::move(*refused));

  auto id = next_id_++;
  auto pending = std::make_unique<PendingConnect>();
  pending->request = std::move(request);
  pending->slot = std::move(slot);
  auto* raw = pending.get();
  auto started = resolver_.lookup(host, port, SOCK_STREAM, [this, id](core::Resolver::Result result) {
    auto it = connects_.find(id);
    if (it == connects_.end()) return;
    it->second->lookup = {};
    if (auto* error = std::get_if<std::string>(&result)) return fail_connect(id, "HandshakeFailed", *error);
    connect_allowed_addresses(id, std::get<core::Resolver::Addresses>(std::move(result)));
  });
  if (auto* error = std::get_if<std::string>(&started)) return raw->request.done(make_error("LimitExceeded", *error));
  raw->lookup = std::move(std::get<core::Resolver::Lookup>(started));
  connects_[id] = std::move(pending);
  raw->timer = reactor_.add_timer(std::chrono::milliseconds(raw->request.props.timeout_ms), [this, id, raw] {
    raw->timer = 0;
    fail_connect(id, "Timeout", "connecting to " + raw->request.host + " timed out");
  });
}

void Agent::fail_connect(std::uint64_t id, const char* error_name, std::string message) {
  auto it = connects_.find(id);
  if (it == connects_.end()) return;
  auto owned = std::move(it->second);
  connects_.erase(it);
  if (owned->watch) reactor_.unwatch(owned->watch);
  if (owned->timer) reactor_.cancel_timer(owned->timer);
  owned->request.done(make_error(error_name, std::move(message)));
}

// Keeps only the addresses policy allows for this caller; a name that
// resolves to none of them is denied without a connection.
void Agent::connect_allowed_addresses(std::uint64_t id, core::Resolver::Addresses addresses) {
  auto* raw = connects_.at(id).get();
  std::optional<policy::Decision> denial;
  for (const auto& address : addresses) {
    auto decision = decide(raw->request, ip_of(address), false);
    if (decision.allowed) raw->addresses.push_back(address);
    else if (!denial) denial = std::move(decision);
  }
  if (raw->addresses.empty() && denial) {
    auto owned = std::move(connects_.at(id));
    connects_.erase(id);
    if (owned->timer) reactor_.cancel_timer(owned->timer);
    return deny(owned->request, *denial);
  }
  connect_next_address(id);
}

// Tries the allowed addresses in turn with non-blocking connects.
void Agent::connect_next_address(std::uint64_t id) {
  auto it = connects_.find(id);
  if (it == connects_.end()) return;
  auto* raw = it->second.get();
  while (raw->next_address < raw->addresses.size()) {
    const auto& address = raw->addresses[raw->next_address++];
    core::UniqueFd fd(::socket(address.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP));
    if (!fd) continue;
    socklen_t len = address.ss_family == AF_INET ? sizeof(sockaddr_in) : sizeof(sockaddr_in6);
    if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&address), len) != 0 && errno != EINPROGRESS) {
      raw->last_error = std::strerror(errno);
      continue;
    }
    raw->request.fd = std::move(fd);
    raw->watch = reactor_.watch(raw->request.fd.get(), POLLOUT, [this, id, raw](std::uint32_t) {
      reactor_.unwatch(std::exchange(raw->watch, 0));
      int so_error = 0;
      socklen_t l = sizeof(so_error);
      ::getsockopt(raw->request.fd.get(), SOL_SOCKET, SO_ERROR, &so_error, &l);
      if (so_error != 0) {
        raw->last_error = std::strerror(so_error);
        raw->request.fd.reset();
        connect_next_address(id);
        return;
      }
      // Connected: the application gets an ordinary blocking socket.
      int flags = ::fcntl(raw->request.fd.get(), F_GETFL);
      ::fcntl(raw->request.fd.get(), F_SETFL, flags & ~O_NONBLOCK);
      auto found = connects_.find(id);
      auto owned = std::move(found->second);
      connects_.erase(found);
      if (owned->timer) reactor_.cancel_timer(owned->timer);
      auto socket = kernel::check_offload_candidate(owned->request.fd.get());
      if (!socket) {
        owned->request.done(make_error("Internal", "the connected socket cannot be offloaded: " + socket.error()));
        return;
      }
      owned->request.socket = socket.value();
      owned->slot = {};  // a Connect no more, but still a handshake
      start_tls(std::move(owned->request));
    });
    return;
  }
  fail_connect(id, "HandshakeFailed",
               "cannot connect to " + raw->request.host + " port " + std::to_string(raw->request.port) +
                   (raw->last_error.empty() ? std::string() : ": " + raw->last_error));
}

std::optional<bus::BusError> Agent::refuse_direct_socket(const bus::SecurityProperties& props) const {
  if (!props.direct_socket || options_.may_take_back_sockets) return std::nullopt;
  return make_error("NotSupported",
                    "direct-socket needs CAP_SYS_PTRACE, which this tapsecd does not hold (the packaged unit leaves it "
                    "out: see tapsecd(8)); ask without direct-socket for the relayed socket");
}

std::optional<bus::BusError> Agent::check_offload_possible(const bus::SecurityProperties& props,
                                                           const policy::Decision& decision) const {
  if (auto refused = refuse_direct_socket(props)) return refused;
  if (capabilities_.ktls) return std::nullopt;
  if (props.offload == "required") {
    return make_error("KernelUnsupported",
                      "kernel lacks kTLS: load module tls, or ask with offload \"preferred\" where policy allows fallback");
  }
  if (!decision.fallback_allowed) {
    return make_error("KernelUnsupported", "kernel lacks kTLS: load module tls or allow fallback (policy rule " +
                                               decision.rule + " at " + decision.rule_location +
                                               " does not allow userspace fallback)");
  }
  return std::nullopt;
}

std::optional<bus::BusError> Agent::refuse_unsupported_protocols(TlsRequest& request) const {
  // RFC 8922 §1.2: use only what the application asked for, narrowed by
  // policy, and never switch protocols silently.
  if (request.props.protocols.empty()) request.props.protocols = {"tls"};
  if (std::find(request.props.protocols.begin(), request.props.protocols.end(), "tls") !=
      request.props.protocols.end())
    return std::nullopt;
  return make_error("NotSupported", "a socket can carry only \"tls\" here; asked for: " + join(request.props.protocols));
}

policy::Decision Agent::decide(const TlsRequest& request, const std::string& address, bool address_pending) const {
  policy::Request asked;
  asked.protocols = request.props.protocols;
  asked.role = request.role;
  asked.host = request.host;
  asked.address = address;
  asked.address_pending = address_pending;
  asked.port = request.port;
  asked.identity = request.props.identity;
  asked.psk = request.props.psk;
  asked.wants_export = request.props.wants_export;
  asked.peer_validation = request.props.peer_validation;
  asked.offload = request.props.offload == "required" ? policy::Offload::Required : policy::Offload::Preferred;
  return policy_.evaluate(policy_caller(request.caller), asked);
}

void Agent::deny(TlsRequest& request, const policy::Decision& decision) const {
  core::log::notice("request denied by policy", {{"uid", std::to_string(request.caller.uid)},
                                                 {"host", request.host},
                                                 {"reason", decision.denial_reason}});
  request.done(make_error("PolicyDenied", decision.denial_reason));
}

void Agent::start_tls(TlsRequest request) {
  if (auto refused = refuse_unsupported_protocols(request)) return request.done(std::move(*refused));
  std::string peer_ip;
  split_address(request.socket.peer_address, &peer_ip, &request.port);
  auto decision = decide(request, peer_ip, false);
  if (!decision.allowed) return deny(request, decision);
  if (auto refused = reserve_handshake(request)) return request.done(std::move(*refused));
  if (std::find(decision.protocols.begin(), decision.protocols.end(), "tls") == decision.protocols.end()) {
    request.done(make_error("PolicyDenied", "policy rule " + decision.rule + " does not allow tls; it allows: " +
                                                join(decision.protocols)));
    return;
  }
  if (auto problem = check_offload_possible(request.props, decision)) {
    request.done(std::move(*problem));
    return;
  }

  auto settings = build_settings(request, decision);
  if (auto* error = std::get_if<bus::BusError>(&settings)) {
    request.done(std::move(*error));
    return;
  }
  auto created = tls::Session::create(std::get<tls::Settings>(settings));
  if (auto* message = std::get_if<std::string>(&created)) {
    request.done(make_error("InvalidArgument", *message));
    return;
  }

  auto id = next_id_++;
  auto pending = std::make_unique<PendingHandshake>();
  pending->decision = std::move(decision);
  pending->request = std::move(request);
  auto& req = pending->request;

  TlsHandshake::Options options;
  options.timeout = std::chrono::milliseconds(req.props.timeout_ms);
  options.is_client = req.role == "client";
  // Tickets must be off the wire before the application reads the kTLS
  // socket itself; relayed, they are taken whenever they come.
  options.drain_tickets = capabilities_.ktls && req.props.direct_socket;

  TlsHandshake::Validate validate;
  if (req.props.peer_validation == "application") {
    validate = [this, caller = req.caller, validator = req.props.validator, sni = req.props.server_name](
                   std::vector<std::vector<std::uint8_t>> chain, std::function<void(bool, std::string)> done) {
      validate_with_application(caller, validator, sni, std::move(chain), std::move(done));
    };
  }
  pending->handshake = std::make_unique<TlsHandshake>(
      reactor_, req.fd.get(), std::move(std::get<std::unique_ptr<tls::Session>>(created)), options,
      std::move(validate), [this, id](const HandshakeFailure* failure) {
        // Runs inside the handshake's callback: finish after it returns.
        std::optional<HandshakeFailure> copy;
        if (failure) copy = *failure;
        reactor_.post([this, id, copy] { finish_handshake(id, copy ? &*copy : nullptr); });
      });
  auto* handshake = pending->handshake.get();
  handshakes_[id] = std::move(pending);
  handshake->start();
}

std::variant<tls::Settings, bus::BusError> Agent::build_settings(const TlsRequest& request,
                                                                 const policy::Decision& decision) {
  const auto& props = request.props;
  tls::Settings settings;
  settings.role = request.role == "client" ? tls::Role::Client : tls::Role::Server;

  if (!props.versions.empty()) {
    bool v12 = std::find(props.versions.begin(), props.versions.end(), "1.2") != props.versions.end();
    bool v13 = std::find(props.versions.begin(), props.versions.end(), "1.3") != props.versions.end();
    if (!v12 && !v13) return make_error("InvalidArgument", "versions must name \"1.2\" and/or \"1.3\"");
    settings.min_version = v12 ? tls::Version::Tls12 : tls::Version::Tls13;
    settings.max_version = v13 ? tls::Version::Tls13 : tls::Version::Tls12;
  }

  auto allowed = [&](const char* kind) -> const std::vector<std::string>* {
    auto it = decision.algorithms.find(kind);
    return it == decision.algorithms.end() ? nullptr : &it->second;
  };
  auto requested = [&](const char* kind) {
    auto it = props.algorithms.find(kind);
    return it == props.algorithms.end() ? std::vector<std::string>{} : it->second;
  };
  for (const char* kind : {"ciphersuites", "groups", "signature-algorithms"}) {
    auto asked = requested(kind);
    auto narrowed = narrow(asked, allowed(kind));
    if (narrowed.empty() && (!asked.empty() || allowed(kind))) {
      return make_error("PolicyDenied", std::string("none of the requested ") + kind + " (" + join(asked) +
                                            ") is allowed by policy rule " + decision.rule + " (allowed: " +
                                            (allowed(kind) ? join(*allowed(kind)) : "any") + ")");
    }
    if (std::string(kind) == "ciphersuites") settings.ciphersuites = narrowed;
    if (std::string(kind) == "groups") settings.groups = narrowed;
    if (std::string(kind) == "signature-algorithms") settings.signature_algorithms = narrowed;
  }

  settings.alpn = props.alpn;
  settings.server_name = props.server_name;

  if (!decision.identity.empty()) {
    auto cached = credentials_.find(decision.identity);
    if (cached == credentials_.end()) {
      const auto* identity = policy_.identity(decision.identity);
      if (!identity) return make_error("NoSuchIdentity", "no identity named \"" + decision.identity + "\"");
      auto loaded = tls::Credentials::load(identity->name, identity->certificate_file, identity->key_file);
      if (auto* message = std::get_if<std::string>(&loaded)) {
        return make_error("NoSuchIdentity", "identity \"" + identity->name + "\" (" + identity->location +
                                                ") cannot be loaded: " + *message);
      }
      cached = credentials_.emplace(decision.identity, std::get<std::shared_ptr<tls::Credentials>>(loaded)).first;
    }
    settings.credentials = cached->second;
  }
  if (!decision.psk.empty()) {
    const auto* psk = policy_.psk(decision.psk);
    if (!psk) return make_error("NoSuchIdentity", "no pre-shared key named \"" + decision.psk + "\"");
    settings.psk = tls::ExternalPsk{psk->identity, psk->key};
  }
  if (settings.role == tls::Role::Server && !settings.credentials && !settings.psk) {
    return make_error("NoSuchIdentity",
                      "the server role needs an identity (certificate and key) or a psk; policy rule " +
                          decision.rule + " names none and the request asked for none");
  }

  const auto& mode = props.peer_validation;
  if (mode == "system") {
    settings.peer_validation = tls::PeerValidation::System;
  } else if (mode == "pinned") {
    settings.peer_validation = tls::PeerValidation::Pinned;
    if (props.peer_pins.empty()) return make_error("InvalidArgument", "peer-validation \"pinned\" needs peer-pins");
    for (const auto& pin : props.peer_pins) {
      auto digest = tls::parse_spki_pin(pin);
      if (!digest) {
        return make_error("InvalidArgument", "peer pin \"" + pin + "\" is not of the form sha256/<base64 of 32 bytes>");
      }
      settings.spki_sha256_pins.push_back(*digest);
    }
  } else if (mode == "application") {
    if (props.validator.empty()) {
      return make_error("InvalidArgument", "peer-validation \"application\" needs a validator object path");
    }
    settings.peer_validation = tls::PeerValidation::Application;
  } else if (mode == "none") {
    settings.peer_validation = tls::PeerValidation::None;
  } else {
    return make_error("InvalidArgument", "peer-validation must be system, pinned, application or none, not \"" + mode + "\"");
  }
  settings.use_system_trust = true;
  if (!decision.trust_store.empty()) {
    if (const auto* store = policy_.trust_store(decision.trust_store)) {
      settings.trust_anchor_files = store->files;
      settings.use_system_trust = store->include_system;
    }
  }
  if (settings.role == tls::Role::Client && settings.peer_validation == tls::PeerValidation::System &&
      settings.server_name.empty() && !settings.psk) {
    return make_error("InvalidArgument",
                      "a client validating the peer against the trust store needs server-name (the name the "
                      "certificate must carry)");
  }
  settings.require_peer_certificate = props.require_peer_certificate;

  // An application validator is asked about every connection; a resumed
  // session carries no certificate to show it, so it is never resumed.
  if (props.session_cache && mode != "application") {
    settings.session_cache = session_cache_;
    // A resumed session skips peer validation, so only a session that was
    // validated the same way may be resumed; and one asked for with other
    // versions would offer a version the caller did not ask for.
    std::string key = request.host + ":" + std::to_string(request.port) + "|sni=" + settings.server_name +
                      "|id=" + decision.identity + "|uid=" + std::to_string(request.caller.uid) +
                      "|iv=" + props.peer_validation + "|store=" + decision.trust_store + "|validator=" +
                      props.validator + "|versions=" + std::string(tls::to_string(settings.min_version)) + "-" +
                      std::string(tls::to_string(settings.max_version));
    for (const auto& pin : props.peer_pins) key += "|pin=" + pin;
    settings.session_cache_key = std::move(key);
  }
  settings.ticket_keys = ticket_keys_;
  return settings;
}

void Agent::validate_with_application(const bus::CallerCredentials& caller, const std::string& validator,
                                      const std::string& server_name, std::vector<std::vector<std::uint8_t>> chain,
                                      std::function<void(bool, std::string)> done) {
  if (!publisher_) {
    done(false, "no bus connection to reach the application's validator");
    return;
  }
  publisher_->validate_peer(caller.unique_name, validator, "tls", server_name, chain, std::move(done));
}

void Agent::finish_handshake(std::uint64_t id, const HandshakeFailure* failure) {
  auto it = handshakes_.find(id);
  if (it == handshakes_.end()) return;
  auto pending = std::move(it->second);
  handshakes_.erase(it);
  auto& request = pending->request;

  if (failure) {
    core::log::notice("handshake failed", {{"peer", request.host}, {"error", failure->message}});
    auto short_name = failure->error_name.substr(std::string(bus::kErrorPrefix).size());
    request.done(make_error(short_name.c_str(), failure->message));
    return;
  }

  auto session = pending->handshake->take_session();
  auto info = session->info();
  auto association = std::make_unique<Association>();
  auto& a = *association;
  a.info.id = id;
  a.info.protocol = "tls";
  a.info.version = info.version;
  a.info.cipher = info.cipher;
  a.info.group = info.group;
  a.info.role = request.role;
  a.info.local_identity = info.local_identity;
  a.info.peer_identity = info.peer_identity;
  a.info.server_name = info.server_name;
  a.info.alpn = info.alpn;
  a.info.resumed = info.resumed;
  a.info.state = "established";
  a.info.local_address = request.socket.local_address;
  a.info.peer_address = request.socket.peer_address;
  a.info.owner_uid = request.caller.uid;
  a.info.created_at_usec = now_usec();
  a.export_allowed = pending->decision.export_allowed && request.props.wants_export;

  core::UniqueFd for_application;
  std::string install_error;
  bool kernel_ok = false;
  if (capabilities_.ktls) {
    if (auto e = kernel::install_ulp(request.fd.get())) {
      install_error = *e;
    } else if (auto e2 = kernel::install_tx(request.fd.get(), session->tx_keys())) {
      request.done(make_error("KernelUnsupported", "installing the kTLS send key failed: " + *e2));
      return;
    } else if (auto e3 = kernel::install_rx(request.fd.get(), session->rx_keys())) {
      request.done(make_error("KernelUnsupported", "installing the kTLS receive key failed: " + *e3));
      return;
    } else {
      kernel_ok = true;
    }
  }
  if (kernel_ok && !request.props.direct_socket) {
    std::string error;
    auto relay = KernelRelay::create(
        reactor_, std::move(request.fd), std::move(session),
        {capabilities_.ktls_rx_rekey, capabilities_.ktls_tx_rekey},
        [this, id](const std::string& reason) {
          reactor_.post([this, id, reason] { remove_association(id, reason); });
        },
        &error);
    if (!relay) {
      request.done(make_error("Internal", error));
      return;
    }
    for_application = relay->take_application_fd();
    relay->start();
    a.relay = std::move(relay);
    a.info.offload = "kernel";
  } else if (kernel_ok) {
    // Pinned now, while the caller holds the socket it passed (or gave to a
    // process of its own uid); a stranger is never taken for it.
    auto pinned = kernel::pin_socket(request.caller.pid, request.socket.inode, request.caller.uid);
    if (!pinned) pinned = kernel::pin_new_holder(request.socket.inode, request.caller.uid);
    if (pinned) a.holder = std::move(pinned.value());
    else a.holder.inode = request.socket.inode;
    if (!pinned)
      core::log::warning("no holder of the secured socket could be pinned; key update and termination will fail",
                         {{"id", std::to_string(id)}, {"reason", pinned.error()}});
    a.info.offload = "kernel";
    a.session = std::move(session);
    for_application = std::move(request.fd);  // the agent keeps no copy
  } else {
    if (!pending->decision.fallback_allowed) {
      request.done(make_error("KernelUnsupported", install_error.empty()
                                                       ? "kernel lacks kTLS: load module tls or allow fallback"
                                                       : install_error));
      return;
    }
    std::string error;
    auto channel = UserspaceChannel::create(
        reactor_, std::move(request.fd), std::move(session),
        [this, id](const std::string& reason) {
          reactor_.post([this, id, reason] { remove_association(id, reason); });
        },
        &error);
    if (!channel) {
      request.done(make_error("Internal", error));
      return;
    }
    for_application = channel->take_application_fd();
    channel->start();
    a.channel = std::move(channel);
    a.info.offload = "userspace";
  }

  core::log::info("association established",
                  {{"id", std::to_string(id)}, {"role", a.info.role}, {"peer", a.info.peer_address},
                   {"version", a.info.version}, {"cipher", a.info.cipher}, {"offload", a.info.offload},
                   {"resumed", a.info.resumed ? "yes" : "no"}});
  associations_[id] = std::move(association);
  if (publisher_) publisher_->association_added(id);
  request.done(bus::SecuredSocket{std::move(for_application), id});
}

// ------------------------------------------------------------ associations

std::vector<std::uint64_t> Agent::association_ids() const {
  std::vector<std::uint64_t> ids;
  for (const auto& [id, a] : associations_) ids.push_back(id);
  for (auto id : ike_->association_ids()) ids.push_back(id);
  for (auto id : wireguard_->association_ids()) ids.push_back(id);
  std::sort(ids.begin(), ids.end());
  return ids;
}

void Agent::set_publisher(bus::Publisher* publisher) {
  publisher_ = publisher;
  ike_->set_publisher(publisher);
  wireguard_->set_publisher(publisher);
}

void Agent::establish_tunnel(const bus::CallerCredentials& caller, const std::string& peer,
                             bus::TunnelProperties props, std::function<void(TunnelResult)> done) {
  bool wireguard = std::find(props.protocols.begin(), props.protocols.end(), "wireguard") != props.protocols.end();
  if (wireguard && props.protocols.size() != 1)
    return done(make_error("InvalidArgument", "\"wireguard\" cannot be combined with other tunnel protocols"));
  if (!wireguard && props.protocols.empty()) {
    // A tunnel of the policy named without protocols runs its own protocol.
    if (const auto* tunnel = policy_.tunnel(peer); tunnel && tunnel->protocol == "wireguard") wireguard = true;
  }
  if (wireguard) return wireguard_->establish_tunnel(caller, peer, std::move(props), std::move(done));
  ike_->establish_tunnel(caller, peer, std::move(props), std::move(done));
}

std::vector<bus::TunnelInfo> Agent::tunnels() const {
  auto out = ike_->tunnels();
  for (auto& t : wireguard_->tunnels()) out.push_back(std::move(t));
  return out;
}

std::variant<std::string, bus::BusError> Agent::public_key(const std::string& identity) {
  return wireguard_->public_key(identity);
}

std::optional<bus::AssociationInfo> Agent::association(std::uint64_t id) const {
  if (ike_->owns(id)) return ike_->association(id);
  if (wireguard_->owns(id)) return wireguard_->association(id);
  auto it = associations_.find(id);
  if (it == associations_.end()) return std::nullopt;
  auto info = it->second->info;
  auto& a = *it->second;  // the holder's pid may be refreshed
  if (a.channel) {
    info.bytes_sent = a.channel->bytes_sent();
    info.bytes_received = a.channel->bytes_received();
  } else if (a.relay) {
    info.bytes_sent = a.relay->bytes_sent();
    info.bytes_received = a.relay->bytes_received();
  } else if (auto fd = borrow_socket(a)) {
    // The kernel carries the records: count what TCP carried (records
    // included), as the agent never sees the plaintext.
    if (auto socket = kernel::inspect_tcp_socket(fd.value().get())) {
      info.bytes_sent = socket.value().tcp.bytes_acked;
      info.bytes_received = socket.value().tcp.bytes_received;
    }
  }
  tls::Session* session = a.tls_session();
  if (session) info.key_epoch = session->key_epoch();
  return info;
}

std::optional<bus::BusError> Agent::authorize(const bus::CallerCredentials& caller, const Association& association,
                                              const char* action) const {
  return bus::error::check_owner(caller, association.info.owner_uid, association.info.id, action);
}

bool Agent::granted(const bus::CallerCredentials& caller, const char* operation) const {
  policy::Request asked;
  asked.operation = operation;
  return policy_.evaluate(policy_caller(caller), asked).allowed;
}

bool Agent::may_observe(const bus::CallerCredentials& caller, uid_t owner) const {
  return caller.uid == 0 || caller.uid == owner || granted(caller, "observe");
}

bus::CallerCredentials Agent::with_grants(const bus::CallerCredentials& caller) const {
  bus::CallerCredentials out = caller;
  out.manages_others = caller.uid != 0 && granted(caller, "manage");
  return out;
}

std::optional<bus::BusError> Agent::update_keys(const bus::CallerCredentials& asking, std::uint64_t id,
                                                bool request_peer) {
  const bus::CallerCredentials caller = with_grants(asking);
  if (ike_->owns(id)) return ike_->update_keys(caller, id);
  if (wireguard_->owns(id)) return wireguard_->update_keys(caller, id);
  auto it = associations_.find(id);
  if (it == associations_.end()) return make_error("NoSuchAssociation", "no association " + std::to_string(id));
  auto& a = *it->second;
  if (auto denied = authorize(caller, a, "update the keys of")) return denied;
  if (a.info.version != "TLSv1.3") return make_error("NotSupported", "KeyUpdate exists only in TLS 1.3");

  if (a.channel) {
    a.channel->update_keys(request_peer);
  } else if (a.relay) {
    if (auto error = a.relay->update_keys(request_peer))
      return make_error("KernelUnsupported", *error + " (kernel " + capabilities_.kernel_release + ")");
  } else {
    if (!capabilities_.ktls_tx_rekey) {
      return make_error("KernelUnsupported",
                        "this kernel (" + capabilities_.kernel_release +
                            ") cannot replace kTLS keys on a live socket; a key update needs a newer kernel");
    }
    auto located = borrow_socket(a);
    if (!located) return make_error("NoSuchAssociation", "the association's socket is gone: " + located.error());
    auto fd = std::move(located.value());
    auto followed = follow_peer_key_update(a, fd.get());
    if (auto* error = std::get_if<bus::BusError>(&followed)) return *error;
    switch (std::get<PeerKeyUpdate>(followed)) {
      case PeerKeyUpdate::None:
        break;
      case PeerKeyUpdate::Followed:  // the peer asked for nothing in return
        if (publisher_) publisher_->keys_updated(id, a.session->key_epoch());
        return std::nullopt;
      case PeerKeyUpdate::FollowedAndAsked:
        request_peer = false;  // answer with our own update
        break;
    }
    if (request_peer && !capabilities_.ktls_rx_rekey) {
      return make_error("KernelUnsupported", "this kernel cannot install the peer's next receive key");
    }
    auto message = a.session->key_update_message(request_peer);
    if (auto sent = kernel::send_record(fd.get(), kernel::content_type::handshake, message); !sent) {
      return make_error("Internal", "sending KeyUpdate failed: " + sent.error());
    }
    if (auto e = kernel::install_tx(fd.get(), a.session->tx_keys())) {
      return make_error("KernelUnsupported", "installing the next send key failed: " + *e);
    }
  }
  auto info = association(id);
  a.info.key_epoch = info ? info->key_epoch : a.info.key_epoch + 1;
  if (publisher_) publisher_->keys_updated(id, a.info.key_epoch);
  core::log::info("keys updated", {{"id", std::to_string(id)}, {"epoch", std::to_string(a.info.key_epoch)}});
  return std::nullopt;
}

std::variant<Agent::PeerKeyUpdate, bus::BusError> Agent::follow_peer_key_update(Association& a, int fd) {
  // The peer's KeyUpdate is either still at the head of the stream (the
  // application met it as EIO) or already taken by the application, in
  // which case the kernel has paused receiving (EKEYEXPIRED).
  // A record that holds more than the KeyUpdate is not followed here (the
  // relayed mode splits such records; this socket is the application's).
  std::uint8_t head[16];
  auto peeked = kernel::recv_record(fd, head, MSG_PEEK | MSG_DONTWAIT);
  std::optional<tls::PostHandshakeMessages::KeyUpdate> update;
  if (peeked && peeked.value().content_type == kernel::content_type::handshake) {
    update = tls::PostHandshakeMessages::parse_key_update(
        std::span<const std::uint8_t>(head, std::min<std::size_t>(peeked.value().length, sizeof head)));
  }
  bool waiting_record = update.has_value();
  bool paused = !peeked && peeked.error_number() == EKEYEXPIRED;
  if (!waiting_record && !paused) return PeerKeyUpdate::None;
  if (!capabilities_.ktls_rx_rekey) {
    return make_error("KernelUnsupported", "the peer updated its keys, and this kernel cannot install the next receive key");
  }
  bool asked = false;
  if (waiting_record) {
    auto taken = kernel::recv_record(fd, head, MSG_DONTWAIT);
    if (!taken) return make_error("Internal", "reading the peer's KeyUpdate: " + taken.error());
    asked = update->update_requested;
  }
  a.session->advance_rx_keys();
  if (auto e = kernel::install_rx(fd, a.session->rx_keys())) {
    return make_error("Internal", "installing the peer's next key failed: " + *e);
  }
  core::log::info("followed the peer's key update", {{"id", std::to_string(a.info.id)}, {"answer", asked ? "yes" : "no"}});
  return asked ? PeerKeyUpdate::FollowedAndAsked : PeerKeyUpdate::Followed;
}

std::variant<std::vector<std::uint8_t>, bus::BusError> Agent::export_keying_material(
    const bus::CallerCredentials& caller, std::uint64_t id, const std::string& label,
    const std::vector<std::uint8_t>& context, std::uint32_t length) {
  if (ike_->owns(id)) return ike_->export_keying_material(caller, id, label, context, length);
  if (wireguard_->owns(id))
    return make_error("ExportDenied", "WireGuard associations export nothing: their PSKs stay in the agent and kernel");
  auto it = associations_.find(id);
  if (it == associations_.end()) return make_error("NoSuchAssociation", "no association " + std::to_string(id));
  auto& a = *it->second;
  if (auto denied = authorize(caller, a, "export keys of")) return *denied;
  if (!a.export_allowed) {
    return make_error("ExportDenied", "key export was not granted for association " + std::to_string(id) +
                                          " (ask with export=true; policy must allow Export)");
  }
  if (length == 0 || length > 1024) return make_error("InvalidArgument", "length must be between 1 and 1024");
  tls::Session* session = a.tls_session();
  auto exported = session->export_keying_material(label, context, length);
  if (auto* message = std::get_if<std::string>(&exported)) return make_error("InvalidArgument", *message);
  return std::get<std::vector<std::uint8_t>>(exported);
}

std::optional<bus::BusError> Agent::terminate(const bus::CallerCredentials& asking, std::uint64_t id) {
  const bus::CallerCredentials caller = with_grants(asking);
  if (ike_->owns(id)) return ike_->terminate(caller, id);
  if (wireguard_->owns(id)) return wireguard_->terminate(caller, id);
  auto it = associations_.find(id);
  if (it == associations_.end()) return make_error("NoSuchAssociation", "no association " + std::to_string(id));
  auto& a = *it->second;
  if (auto denied = authorize(caller, a, "terminate")) return denied;
  if (a.channel) {
    a.channel->terminate();  // its close callback removes the association
    return std::nullopt;
  }
  if (a.relay) {
    a.relay->terminate();  // its close callback removes the association
    return std::nullopt;
  }
  if (auto located = borrow_socket(a)) {
    kernel::send_record(located.value().get(), kernel::content_type::alert, kernel::close_notify_alert);
    ::shutdown(located.value().get(), SHUT_RDWR);
  }
  remove_association(id, "terminated on request");
  return std::nullopt;
}

void Agent::remove_association(std::uint64_t id, const std::string& reason) {
  auto it = associations_.find(id);
  if (it == associations_.end()) return;
  auto owned = std::move(it->second);
  associations_.erase(it);
  core::log::info("association ended", {{"id", std::to_string(id)}, {"reason", reason}});
  if (publisher_) {
    publisher_->terminated(id, reason);
    publisher_->association_removed(id);
  }
}

bool Agent::adopt_new_holder(Association& a) const {
  auto holder = kernel::pin_new_holder(a.holder.inode, a.info.owner_uid);
  if (!holder) return false;
  core::log::debug("socket handed on", {{"id", std::to_string(a.info.id)},
                                        {"from", std::to_string(a.holder.pid)},
                                        {"to", std::to_string(holder.value().pid)}});
  a.holder = std::move(holder.value());
  return true;
}

kernel::Result<core::UniqueFd> Agent::borrow_socket(Association& a) const {
  auto fd = kernel::borrow_socket(a.holder);
  if (!fd && (fd.error_number() == ENOENT || fd.error_number() == ESRCH) && adopt_new_holder(a)) {
    fd = kernel::borrow_socket(a.holder);
  }
  return fd;
}

void Agent::check_liveness() {
  liveness_timer_ = reactor_.add_timer(options_.liveness_interval, [this] { check_liveness(); });
  std::vector<std::uint64_t> gone;
  for (const auto& [id, a] : associations_) {
    if (a->channel || a->relay) continue;  // they notice closes themselves
    auto alive = kernel::socket_alive(a->holder);
    if (alive && !alive.value() && !adopt_new_holder(*a)) gone.push_back(id);
  }
  for (auto id : gone) remove_association(id, "the application closed the socket");
}

// Everyone may flush their own cached sessions; every user's only root and
// whom policy grants "flush-session-cache".
std::uint32_t Agent::flush_session_cache(const bus::CallerCredentials& caller) {
  if (caller.uid == 0 || granted(caller, "flush-session-cache"))
    return static_cast<std::uint32_t>(session_cache_->flush());
  const std::string mine = "|uid=" + std::to_string(caller.uid) + "|";
  return static_cast<std::uint32_t>(
      session_cache_->forget_if([&](const std::string& key) { return key.find(mine) != std::string::npos; }));
}

bus::ManagerInfo Agent::manager_info() const {
  bus::ManagerInfo info;
  info.version = TAPSEC_VERSION;
  info.kernel_features = capabilities_.feature_names();
  info.session_cache_entries = static_cast<std::uint32_t>(session_cache_->size());
  info.session_cache_capacity = static_cast<std::uint32_t>(session_cache_->capacity());
  info.statistics = ike_->statistics();
  info.statistics.merge(wireguard_->statistics());
  return info;
}

}  // namespace tapsec::state
