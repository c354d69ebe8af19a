#include "agent/state/wg_service.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <stdexcept>
#include <cstring>

#include "agent/bus/errors.h"
#include "agent/core/log.h"
#include "agent/core/unique_fd.h"
#include "agent/kernel/wireguard.h"
#include "agent/state/ike_sockets.h"
#include "agent/state/wg_exchange_link.h"
#include "agent/state/wg_keys.h"
#include "agent/state/policy_caller.h"

namespace tapsec::state {

namespace wg = kernel::wireguard;
using bus::error::check_owner;
using bus::error::named;
using Clock = std::chrono::system_clock;

namespace {

// WireGuard's own timers (drivers/net/wireguard/messages.h): a session is
// renewed every 120 s of use and refused after 180 s.
constexpr auto kRejectAfter = std::chrono::seconds(180);
constexpr auto kResolveEvery = std::chrono::seconds(30);
constexpr auto kReconnectAfter = std::chrono::seconds(5);

std::uint64_t usec(Clock::time_point t) {
  if (t.time_since_epoch().count() == 0) return 0;
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::microseconds>(t.time_since_epoch()).count());
}
std::uint64_t now_usec() { return usec(Clock::now()); }

std::string short_key(const wg::Key& key) { return wg::key_to_base64(key).substr(0, 8); }

std::string join(const std::vector<std::string>& items, const char* separator) {
  std::string out;
  for (const auto& item : items) out += (out.empty() ? "" : separator) + item;
  return out;
}

// "10.9.0.1/24": an interface address keeps its host part (AllowedIp::parse
// would refuse it, rightly, for a route).
std::optional<wg::AllowedIp> interface_address(const std::string& text) {
  auto slash = text.find('/');
  auto address = ikev2::IpAddress::parse(text.substr(0, slash));
  if (!address) return std::nullopt;
  unsigned prefix = address->family == AF_INET6 ? 128 : 32;
  if (slash != std::string::npos) {
    try {
      std::size_t used = 0;
      prefix = static_cast<unsigned>(std::stoul(text.substr(slash + 1), &used));
      if (used != text.size() - slash - 1) return std::nullopt;
    } catch (...) {
      return std::nullopt;
    }
    if (prefix > (address->family == AF_INET6 ? 128u : 32u)) return std::nullopt;
  }
  return wg::AllowedIp{*address, static_cast<std::uint8_t>(prefix)};
}

// A tunnel whose peer runs an agent: the two exchange keys and the PSK over
// the exchange port (else the peer is given by PeerPublicKey=).
bool exchanges_psk(const policy::Tunnel& tunnel) { return tunnel.peer_public_key.empty(); }

// The far end of an accepted connection; an IPv4-mapped address (the
// listener is dual-stack) as the IPv4 address it carries.
ikev2::Endpoint remote_endpoint(int fd) {
  sockaddr_storage sa{};
  socklen_t length = sizeof sa;
  ikev2::Endpoint endpoint;
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&sa), &length) != 0) return endpoint;
  if (sa.ss_family == AF_INET6) {
    const auto& in6 = reinterpret_cast<const sockaddr_in6&>(sa);
    endpoint.port = ntohs(in6.sin6_port);
    if (IN6_IS_ADDR_V4MAPPED(&in6.sin6_addr)) {
      endpoint.address.family = AF_INET;
      std::memcpy(endpoint.address.bytes.data(), reinterpret_cast<const std::uint8_t*>(&in6.sin6_addr) + 12, 4);
    } else {
      endpoint.address.family = AF_INET6;
      std::memcpy(endpoint.address.bytes.data(), &in6.sin6_addr, 16);
    }
  } else if (sa.ss_family == AF_INET) {
    const auto& in4 = reinterpret_cast<const sockaddr_in&>(sa);
    endpoint.address.family = AF_INET;
    std::memcpy(endpoint.address.bytes.data(), &in4.sin_addr, 4);
    endpoint.port = ntohs(in4.sin_port);
  }
  return endpoint;
}

// Lines that an unauthenticated peer can cause: at most one a second for
// each message, each saying how many like it were left out before it.
class ThrottledWarnings {
 public:
  void write(std::string_view message, const ikev2::IpAddress& from, const std::string& tunnel,
             const std::string& reason) {
    auto now = std::chrono::steady_clock::now();
    auto& state = by_message_[std::string(message)];
    if (state.written && now - state.last < std::chrono::seconds(1)) {
      ++state.left_out;
      return;
    }
    if (state.left_out == 0)
      core::log::warning(message, {{"from", from.to_string()}, {"tunnel", tunnel}, {"reason", reason}});
    else
      core::log::warning(message, {{"from", from.to_string()}, {"tunnel", tunnel}, {"reason", reason},
                                   {"left_out", std::to_string(state.left_out)}});
    state = {true, now, 0};
  }

 private:
  struct State {
    bool written = false;
    std::chrono::steady_clock::time_point last{};
    std::uint64_t left_out = 0;
  };
  std::map<std::string, State, std::less<>> by_message_;
};

constexpr std::string_view kRefusedLimit = "WireGuard exchange refused: too many unauthenticated connections";
constexpr std::string_view kRefusedSourceLimit =
    "WireGuard exchange refused: too many unauthenticated connections from one address";
constexpr std::string_view kRefusedOversized = "WireGuard exchange refused: too much data before authentication";
constexpr std::string_view kTimedOut = "WireGuard exchange timed out before authentication";
constexpr std::string_view kRefused = "WireGuard exchange refused";

// Does the leaf certificate name `expected` (DNS SAN, IP SAN or CN)?
bool certificate_names(const std::vector<std::uint8_t>& leaf_der, const std::string& expected) {
  const unsigned char* p = leaf_der.data();
  X509* leaf = d2i_X509(nullptr, &p, static_cast<long>(leaf_der.size()));
  if (!leaf) return false;
  bool match = X509_check_host(leaf, expected.c_str(), expected.size(), 0, nullptr) == 1 ||
               X509_check_ip_asc(leaf, expected.c_str(), 0) == 1;
  X509_free(leaf);
  return match;
}

}  // namespace

struct WgService::Impl {
  struct Peer {
    std::uint64_t association_id = 0;
    bool known = false;  // public key known: static, or the peer agent's HELLO arrived
    wg::Key public_key{};
    std::string identity;  // the peer agent's certificate subject, or "wireguard:<key>"
    std::optional<wg::Endpoint> endpoint;  // as WireGuard last reported it
    std::string path;                      // "local -> endpoint", as last published
    bool static_psk = false, has_psk = false;
    std::uint64_t psk_epoch = 0;
    std::uint64_t next_rotation_usec = 0;
    Clock::time_point last_handshake{};
    std::uint64_t rx_bytes = 0, tx_bytes = 0;
    std::uint64_t created_at = 0;
  };
  struct Link {
    policy::Tunnel tunnel;
    std::uint64_t association_id = 0;
    uid_t owner_uid = 0;
    std::uint64_t created_at = 0;
    std::unique_ptr<wg::Device> device;
    std::shared_ptr<WireguardKey> key;
    Peer peer;
    std::optional<ikev2::IpAddress> peer_address;  // Peer= resolved
    std::chrono::steady_clock::time_point last_resolve{};
    core::Resolver::Lookup lookup;  // while Peer= is being looked up
    std::unique_ptr<WgExchangeLink> exchange;           // the one carrying rotations
    std::vector<std::unique_ptr<WgExchangeLink>> retired;  // finished, destroyed on the next turn
    core::Reactor::Id rotation_timer = 0, reconnect_timer = 0, ready_timer = 0;
    bool ready = false;  // configured, and the first PSK in place where one is exchanged
    std::vector<std::function<void(bus::Backend::TunnelResult)>> waiting;
    bool uses_exchange() const { return exchanges_psk(tunnel); }
  };
  // An exchange tunnel's TLS settings, read once per policy load.
  struct ExchangeTls {
    std::shared_ptr<const tls::Settings> server, client;
    std::string error;  // why there are none
  };

  core::Reactor& reactor;
  core::Resolver& resolver;
  WgOptions options;
  kernel::KernelCapabilities capabilities;
  IdAllocator allocate_id;
  bus::Publisher* publisher = nullptr;
  const policy::Policy* policy = nullptr;
  std::map<std::string, policy::Tunnel> configured;  // wireguard tunnels of the policy, by name
  std::map<std::string, std::shared_ptr<WireguardKey>> keys;
  std::map<std::string, std::unique_ptr<Link>> links;  // by tunnel name
  std::map<std::uint64_t, std::string> by_association;
  std::map<std::string, ExchangeTls> exchange_tls;  // by tunnel name
  std::vector<std::unique_ptr<WgExchangeLink>> unassigned;  // accepted, not yet authenticated
  core::UniqueFd listener;
  core::Reactor::Id listen_watch = 0, poll_timer = 0;
  std::map<std::string, std::uint64_t> counters;
  ThrottledWarnings unauthenticated_log;
  std::shared_ptr<bool> alive = std::make_shared<bool>(true);

  Impl(core::Reactor& r, core::Resolver& n, WgOptions o, kernel::KernelCapabilities c, IdAllocator a)
      : reactor(r), resolver(n), options(std::move(o)), capabilities(std::move(c)), allocate_id(std::move(a)) {}

  ~Impl() {
    *alive = false;
    if (listen_watch) reactor.unwatch(listen_watch);
    if (poll_timer) reactor.cancel_timer(poll_timer);
  }

  // Runs `work` on the loop's next turn, unless the service is gone by then.
  void defer(std::function<void()> work) {
    reactor.post([weak = std::weak_ptr<bool>(alive), work = std::move(work)] {
      if (auto still = weak.lock(); still && *still) work();
    });
  }

  // ---- identities -------------------------------------------------------

  std::variant<std::shared_ptr<WireguardKey>, bus::BusError> key_for(const std::string& name) {
    if (auto it = keys.find(name); it != keys.end()) return it->second;
    const policy::Identity* identity = policy ? policy->identity(name) : nullptr;
    if (!identity) return named("NoSuchIdentity", "no identity named \"" + name + "\"");
    if (identity->type != "wireguard")
      return named("InvalidArgument", "identity \"" + name + "\" (" + identity->location + ") is not Type=wireguard");
    auto loaded = WireguardKey::load_or_create(*identity);
    if (auto* message = std::get_if<std::string>(&loaded))
      return named("NoSuchIdentity", "identity \"" + name + "\" (" + identity->location + "): " + *message);
    auto key = std::get<std::shared_ptr<WireguardKey>>(loaded);
    keys[name] = key;
    return key;
  }

  // ---- the exchange listener --------------------------------------------

  bool listen(std::string* error) {
    core::UniqueFd fd(::socket(AF_INET6, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!fd) {
      *error = std::string("socket: ") + std::strerror(errno);
      return false;
    }
    int zero = 0, one = 1;
    ::setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
    ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in6 any{};
    any.sin6_family = AF_INET6;
    any.sin6_port = htons(options.exchange_port);
    // A deep accept queue: connections over the limits are refused as soon as
    // they are accepted, and a burst of them must not crowd a genuine peer
    // out of the kernel's queue.
    if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&any), sizeof any) != 0 || ::listen(fd.get(), SOMAXCONN) != 0) {
      *error = "the WireGuard exchange port " + std::to_string(options.exchange_port) + ": " + std::strerror(errno);
      return false;
    }
    listener = std::move(fd);
    listen_watch = reactor.watch(listener.get(), POLLIN, [this](std::uint32_t) { accept_all(); });
    return true;
  }

  // The port is open while a tunnel of the policy exchanges its PSK.
  void update_listener() {
    bool wanted = options.exchange_port != 0 &&
                  std::any_of(configured.begin(), configured.end(), [](const auto& t) { return exchanges_psk(t.second); });
    std::string port = std::to_string(options.exchange_port);
    if (wanted && !listener) {
      std::string error;
      if (listen(&error))
        core::log::info("WireGuard exchange listening", {{"port", port}});
      else
        core::log::warning("WireGuard exchange is not listening", {{"reason", error}});
    } else if (!wanted && listener) {
      close_listener();
      core::log::info("WireGuard exchange closed",
                      {{"port", port}, {"reason", "no tunnel of the policy exchanges its PSK with a peer's agent"}});
    }
  }

  // Connections still unauthenticated go with it: no tunnel wants them.
  void close_listener() {
    if (listen_watch) reactor.unwatch(std::exchange(listen_watch, 0));
    listener.reset();
    unassigned.clear();
  }

  void accept_all() {
    for (;;) {
      core::UniqueFd fd(::accept4(listener.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
      if (!fd) return;
      accept_one(std::move(fd));
    }
  }

  // The tunnel an inbound exchange belongs to: the one whose Peer= is the
  // caller's address, else one that only responds (no Peer=).
  const policy::Tunnel* tunnel_for_inbound(const ikev2::IpAddress& from) {
    const policy::Tunnel* respond_only = nullptr;
    for (const auto& [name, tunnel] : configured) {
      if (!tunnel.peer_public_key.empty() || tunnel.identity.empty()) continue;
      auto link = links.find(name);
      const auto* known = link != links.end() && link->second->peer_address ? &*link->second->peer_address : nullptr;
      auto literal = ikev2::IpAddress::parse(tunnel.peer);
      if ((known && *known == from) || (literal && *literal == from)) return &tunnel;
      if ((tunnel.peer.empty() || tunnel.peer == "%any") && !respond_only) respond_only = &tunnel;
    }
    return respond_only;
  }

  // A connection refused before any TLS work: counted, logged (throttled)
  // and reset, so that it leaves no state in our kernel either.
  void refuse(core::UniqueFd fd, const std::string& counter, std::string_view message, const ikev2::IpAddress& from,
              const std::string& tunnel, const std::string& reason) {
    counters[counter]++;
    unauthenticated_log.write(message, from, tunnel, reason);
    linger reset{1, 0};
    ::setsockopt(fd.get(), SOL_SOCKET, SO_LINGER, &reset, sizeof reset);
  }

  // The source a per-source limit counts: an IPv4 address, or an IPv6
  // address's /64, since one host is commonly given a whole /64.
  static ikev2::IpAddress source_of(const ikev2::IpAddress& address) {
    ikev2::IpAddress source = address;
    if (source.family == AF_INET6) std::fill(source.bytes.begin() + 8, source.bytes.end(), 0);
    return source;
  }

  void accept_one(core::UniqueFd fd) {
    const auto& limits = options.exchange_limits;
    ikev2::Endpoint remote = remote_endpoint(fd.get());
    const ikev2::IpAddress& from = remote.address;
    if (unassigned.size() >= limits.max_pending)
      return refuse(std::move(fd), "wg-exchange-refused-limit", kRefusedLimit, from, "",
                    std::to_string(unassigned.size()) + " connections are not authenticated yet (--wg-exchange-max-pending)");
    const ikev2::IpAddress source = source_of(from);
    auto from_here = static_cast<std::size_t>(std::count_if(unassigned.begin(), unassigned.end(), [&](const auto& link) {
      return source_of(link->remote_address()) == source;
    }));
    if (from_here >= limits.max_per_source)
      return refuse(std::move(fd), "wg-exchange-refused-source-limit", kRefusedSourceLimit, from, "",
                    std::to_string(from_here) + " connections from this " +
                        (source.family == AF_INET6 ? "/64" : "address") +
                        " are not authenticated yet (--wg-exchange-max-per-source)");
    const policy::Tunnel* tunnel = tunnel_for_inbound(from);
    if (!tunnel) return refuse(std::move(fd), "wg-exchange-refused", kRefused, from, "", "no tunnel for this peer");
    auto tls = exchange_tls.find(tunnel->name);
    if (tls == exchange_tls.end() || !tls->second.server)
      return refuse(std::move(fd), "wg-exchange-refused", kRefused, from, tunnel->name,
                    tls == exchange_tls.end() ? "no TLS settings" : tls->second.error);
    auto key = key_for(tunnel->wireguard_key);
    if (auto* error = std::get_if<bus::BusError>(&key))
      return refuse(std::move(fd), "wg-exchange-refused", kRefused, from, tunnel->name, error->message);
    std::string name = tunnel->name;
    auto holder = std::make_shared<WgExchangeLink*>(nullptr);
    auto link = WgExchangeLink::accept(
        reactor, std::move(fd), remote,
        {tls->second.server, std::get<std::shared_ptr<WireguardKey>>(key)->public_key(), tunnel->listen_port, limits},
        link_callbacks(name, [holder] { return *holder; }));
    *holder = link.get();
    counters["wg-exchanges-accepted"]++;
    unassigned.push_back(std::move(link));
  }

  // Identity, key and trust store of each exchange tunnel, read once per
  // policy load: all of a tunnel's connections share them (and so one
  // OpenSSL context), and accepting a connection reads no file.
  void load_exchange_tls() {
    exchange_tls.clear();
    for (const auto& [name, tunnel] : configured) {
      if (!exchanges_psk(tunnel)) continue;
      ExchangeTls& entry = exchange_tls[name];
      auto server = tls_settings(tunnel, tls::Role::Server, nullptr, &entry.error);
      if (!server) {
        core::log::warning("WireGuard exchange has no TLS identity", {{"tunnel", name}, {"error", entry.error}});
        continue;
      }
      auto client = tls_settings(tunnel, tls::Role::Client, server->credentials, &entry.error);
      entry.server = std::make_shared<const tls::Settings>(std::move(*server));
      if (client) entry.client = std::make_shared<const tls::Settings>(std::move(*client));
    }
  }

  // `credentials`: those of the tunnel's other role, loaded already.
  std::optional<tls::Settings> tls_settings(const policy::Tunnel& tunnel, tls::Role role,
                                            std::shared_ptr<const tls::Credentials> credentials, std::string* error) {
    tls::Settings settings;
    settings.role = role;
    settings.min_version = tls::Version::Tls13;
    settings.max_version = tls::Version::Tls13;
    settings.server_tickets = 0;
    settings.require_peer_certificate = role == tls::Role::Server;
    settings.peer_validation = tls::PeerValidation::System;
    const policy::Identity* identity = policy ? policy->identity(tunnel.identity) : nullptr;
    if (!identity || identity->type != "x509") {
      *error = "tunnel \"" + tunnel.name + "\" needs an x509 Identity= for the agents' exchange";
      return std::nullopt;
    }
    if (!credentials) {
      auto loaded = tls::Credentials::load(identity->name, identity->certificate_file, identity->key_file);
      if (auto* message = std::get_if<std::string>(&loaded)) {
        *error = "identity \"" + identity->name + "\" cannot be loaded: " + *message;
        return std::nullopt;
      }
      credentials = std::get<std::shared_ptr<tls::Credentials>>(loaded);
    }
    settings.credentials = std::move(credentials);
    settings.use_system_trust = true;
    if (!tunnel.trust_store.empty()) {
      const auto* store = policy->trust_store(tunnel.trust_store);
      if (!store) {
        *error = "no trust store named \"" + tunnel.trust_store + "\"";
        return std::nullopt;
      }
      settings.trust_anchor_files = store->files;
      settings.use_system_trust = store->include_system;
    }
    // The client checks the server's name in TLS itself; the server checks
    // the client's in authenticated().
    if (role == tls::Role::Client) settings.server_name = tunnel.remote_id.empty() ? tunnel.peer : tunnel.remote_id;
    return settings;
  }

  // Callbacks of an exchange link of tunnel `name`. `self` finds the link
  // (it does not exist yet when the callbacks are made).
  WgExchangeLink::Callbacks link_callbacks(const std::string& name, std::function<WgExchangeLink*()> self) {
    WgExchangeLink::Callbacks callbacks;
    auto weak = std::weak_ptr<bool>(alive);
    callbacks.authenticated = [this, name, self](const tls::Session& session) -> std::string {
      auto configured_tunnel = configured.find(name);
      if (configured_tunnel == configured.end()) return "tunnel \"" + name + "\" is no longer in the policy";
      const auto& tunnel = configured_tunnel->second;
      auto chain = session.peer_chain_der();
      if (!tunnel.remote_id.empty() && (chain.empty() || !certificate_names(chain.front(), tunnel.remote_id)))
        return "the peer's agent is not \"" + tunnel.remote_id + "\" (" + session.info().peer_identity + ")";
      return adopt(name, self());
    };
    callbacks.hello = [this, name, self](const wireguard::PeerHello& hello) { on_hello(name, self(), hello); };
    callbacks.psk = [this, name](std::uint64_t, const wireguard::Key& psk) { on_psk(name, psk); };
    callbacks.closed = [this, name, self, weak](WgExchangeLink::Ending ending, const std::string& reason) {
      if (weak.expired()) return;
      on_link_closed(name, self(), ending, reason);
    };
    return callbacks;
  }

  // An authenticated inbound link becomes its tunnel's exchange (bringing
  // the link up if needed); an outbound one already is.
  std::string adopt(const std::string& name, WgExchangeLink* link) {
    auto it = std::find_if(unassigned.begin(), unassigned.end(), [&](const auto& l) { return l.get() == link; });
    if (it == unassigned.end()) return "";  // our own outbound link
    Link* up = links.count(name) ? links[name].get() : nullptr;
    if (!up) {
      auto error = bring_up(configured.at(name), 0);
      if (error) return error->message;
      up = links[name].get();
    }
    if (up->exchange && up->exchange->established())
      return "tunnel \"" + name + "\" already has an exchange with its peer";
    if (up->exchange) up->retired.push_back(std::move(up->exchange));
    up->exchange = std::move(*it);
    unassigned.erase(it);
    return "";
  }

  // ---- bringing tunnels up and down -------------------------------------

  std::optional<bus::BusError> bring_up(const policy::Tunnel& tunnel, uid_t owner) {
    auto key = key_for(tunnel.wireguard_key);
    if (auto* error = std::get_if<bus::BusError>(&key)) return *error;
    std::unique_ptr<wg::Device> device;
    std::string ifname = tunnel.interface_name;
    if (capabilities.wireguard) {
      auto made = wg::KernelDevice::create(ifname);
      if (!made) return named("KernelUnsupported", "WireGuard link " + ifname + ": " + made.error());
      device = std::move(made.value());
    } else if (tunnel.fallback) {
      wg::UserspaceOptions userspace;
      userspace.program = options.userspace_program;
      userspace.socket_dir = options.userspace_socket_dir;
      auto made = wg::UserspaceDevice::create(ifname, userspace);
      if (!made) return named("KernelUnsupported", "userspace WireGuard for " + ifname + ": " + made.error());
      device = std::move(made.value());
    } else {
      return named("KernelUnsupported",
                   "kernel lacks WireGuard: load module wireguard or allow fallback (Fallback=yes in tunnel \"" +
                       tunnel.name + "\", " + tunnel.location + ")");
    }

    auto link = std::make_unique<Link>();
    link->tunnel = tunnel;
    link->owner_uid = owner;
    link->key = std::get<std::shared_ptr<WireguardKey>>(key);
    link->created_at = now_usec();
    link->device = std::move(device);

    wg::DeviceConfig config;
    config.private_key = link->key->private_key();
    config.listen_port = tunnel.listen_port;
    config.fwmark = tunnel.fwmark;
    config.replace_peers = true;
    auto applied = link->device->configure(config);
    OPENSSL_cleanse(config.private_key->data(), config.private_key->size());
    if (!applied) return named("KernelUnsupported", "configuring " + ifname + ": " + applied.error());
    for (const auto& text : tunnel.addresses) {
      auto address = interface_address(text);
      if (!address) return named("InvalidArgument", "Address=" + text + " is not an address with a prefix");
      auto added = wg::add_address(ifname, *address);
      if (!added && added.error_number() != EEXIST)
        return named("KernelUnsupported", "adding " + text + " to " + ifname + ": " + added.error());
    }
    if (auto upped = wg::set_link_up(ifname, true); !upped)
      return named("KernelUnsupported", "bringing " + ifname + " up: " + upped.error());

    link->association_id = allocate_id();
    link->peer.association_id = allocate_id();
    link->peer.created_at = link->created_at;
    by_association[link->association_id] = tunnel.name;
    by_association[link->peer.association_id] = tunnel.name;
    if (auto literal = ikev2::IpAddress::parse(tunnel.peer)) link->peer_address = literal;
    Link& ref = *link;
    links[tunnel.name] = std::move(link);
    core::log::info("WireGuard link up",
                    {{"tunnel", tunnel.name}, {"interface", ifname},
                     {"offload", ref.device->offload() == wg::Offload::Kernel ? "kernel" : "userspace"},
                     {"public_key", wg::key_to_base64(ref.key->public_key())}});
    if (publisher) {
      publisher->association_added(ref.association_id);
      publisher->association_added(ref.peer.association_id);
    }

    if (!ref.uses_exchange()) {
      if (!ref.peer_address && !tunnel.peer.empty()) {
        resolve(ref);  // configures the peer once the name resolves
      } else {
        if (auto error = configure_static_peer(ref)) return error;
        ref.ready = true;
      }
    } else if (!tunnel.peer.empty() && tunnel.peer != "%any") {
      start_exchange(ref);
    }
    ensure_polling();
    return std::nullopt;
  }

  std::optional<bus::BusError> configure_static_peer(Link& link) {
    const auto& tunnel = link.tunnel;
    auto key = wg::key_from_base64(tunnel.peer_public_key);
    if (!key) return named("InvalidArgument", "PeerPublicKey= of tunnel \"" + tunnel.name + "\" is not a WireGuard key");
    link.peer.known = true;
    link.peer.public_key = *key;
    link.peer.identity = "wireguard:" + short_key(*key);
    wg::PeerConfig peer = base_peer(link);
    if (!tunnel.psk.empty()) {
      const auto* psk = policy ? policy->psk(tunnel.psk) : nullptr;
      if (!psk || psk->key.size() != 32)
        return named("NoSuchIdentity", "PSK \"" + tunnel.psk + "\" is missing or not 32 bytes");
      wg::Key value{};
      std::copy(psk->key.begin(), psk->key.end(), value.begin());
      peer.preshared_key = value;
      OPENSSL_cleanse(value.data(), value.size());
      link.peer.static_psk = link.peer.has_psk = true;
    }
    wg::DeviceConfig config;
    config.peers.push_back(std::move(peer));
    auto applied = link.device->configure(config);
    if (config.peers.front().preshared_key)
      OPENSSL_cleanse(config.peers.front().preshared_key->data(), 32);
    if (!applied) return named("KernelUnsupported", "adding the peer to " + tunnel.interface_name + ": " + applied.error());
    return std::nullopt;
  }

  // The peer as the tunnel describes it: key, endpoint, allowed IPs, keepalive.
  wg::PeerConfig base_peer(const Link& link, std::optional<std::uint16_t> endpoint_port = {}) {
    wg::PeerConfig peer;
    peer.public_key = link.peer.public_key;
    if (link.peer_address)
      peer.endpoint = wg::Endpoint{*link.peer_address, endpoint_port.value_or(link.tunnel.port)};
    peer.persistent_keepalive_seconds = link.tunnel.keepalive_seconds;
    peer.replace_allowed_ips = true;
    for (const auto& text : link.tunnel.allowed_ips)
      if (auto allowed = wg::AllowedIp::parse(text)) peer.allowed_ips.push_back(*allowed);
    return peer;
  }

  void start_exchange(Link& link) {
    if (link.exchange || link.reconnect_timer) return;
    if (!link.peer_address) {
      resolve(link);
      return;
    }
    std::string name = link.tunnel.name;
    auto tls = exchange_tls.find(name);
    if (tls == exchange_tls.end() || !tls->second.client) {
      fail_waiting(link, named("NoSuchIdentity", tls == exchange_tls.end() ? "no TLS settings" : tls->second.error));
      return;
    }
    std::string error;
    auto holder = std::make_shared<WgExchangeLink*>(nullptr);
    auto callbacks = link_callbacks(name, [holder] { return *holder; });
    auto exchange = WgExchangeLink::connect(
        reactor, {*link.peer_address, link.tunnel.exchange_port},
        {tls->second.client, link.key->public_key(), link.tunnel.listen_port, options.exchange_limits},
        std::move(callbacks), &error);
    if (!exchange) {
      core::log::warning("WireGuard exchange not started", {{"tunnel", name}, {"reason", error}});
      schedule_reconnect(link);
      return;
    }
    *holder = exchange.get();
    link.exchange = std::move(exchange);
  }

  void schedule_reconnect(Link& link) {
    if (link.reconnect_timer) return;
    std::string name = link.tunnel.name;
    link.reconnect_timer = reactor.add_timer(kReconnectAfter, [this, name] {
      auto it = links.find(name);
      if (it == links.end()) return;
      it->second->reconnect_timer = 0;
      start_exchange(*it->second);
    });
  }

  // Peer= is a host name: look it up through the agent's resolver, at most
  // every 30 s. The lookup is the link's: it goes with the link.
  void resolve(Link& link) {
    auto now = std::chrono::steady_clock::now();
    if (link.lookup || (link.last_resolve.time_since_epoch().count() != 0 && now - link.last_resolve < kResolveEvery))
      return;
    link.last_resolve = now;
    std::string name = link.tunnel.name;
    auto started = resolver.lookup(link.tunnel.peer, 0, SOCK_DGRAM, [this, name](core::Resolver::Result result) {
      if (auto* error = std::get_if<std::string>(&result)) return resolved(name, std::nullopt, *error);
      resolved(name, address_of(std::get<core::Resolver::Addresses>(result).front()), "");
    });
    if (auto* error = std::get_if<std::string>(&started)) return resolved(name, std::nullopt, *error);
    link.lookup = std::move(std::get<core::Resolver::Lookup>(started));
  }

  void resolved(const std::string& name, std::optional<ikev2::IpAddress> address, const std::string& error) {
    auto it = links.find(name);
    if (it == links.end()) return;
    Link& link = *it->second;
    link.lookup = {};
    if (!address) {
      core::log::warning("WireGuard peer not resolved", {{"tunnel", name}, {"host", link.tunnel.peer}, {"error", error}});
      if (!link.ready) fail_waiting(link, named("InvalidArgument", error));
      return;
    }
    bool moved = link.peer_address && *link.peer_address != *address;
    link.peer_address = address;
    if (moved && link.peer.known) {
      core::log::info("WireGuard peer re-resolved", {{"tunnel", name}, {"host", link.tunnel.peer}, {"address", address->to_string()}});
      wg::DeviceConfig config;
      wg::PeerConfig peer;
      peer.public_key = link.peer.public_key;
      peer.update_only = true;
      peer.endpoint = wg::Endpoint{*address, link.tunnel.port};
      config.peers.push_back(peer);
      link.device->configure(config);
    }
    if (link.uses_exchange() && !link.exchange) start_exchange(link);
    if (!link.uses_exchange() && !link.peer.known) {
      if (auto failure = configure_static_peer(link)) fail_waiting(link, *failure);
      else finish_waiting(link);
    }
  }

  void fail_waiting(Link& link, const bus::BusError& error) {
    auto waiting = std::move(link.waiting);
    for (auto& done : waiting) done(error);
    if (link.ready_timer) reactor.cancel_timer(std::exchange(link.ready_timer, 0));
  }

  void finish_waiting(Link& link) {
    link.ready = true;
    if (link.ready_timer) reactor.cancel_timer(std::exchange(link.ready_timer, 0));
    auto waiting = std::move(link.waiting);
    for (auto& done : waiting) done(link.association_id);
  }

  void on_hello(const std::string& name, WgExchangeLink* exchange, const wireguard::PeerHello& hello) {
    auto it = links.find(name);
    if (it == links.end() || it->second->exchange.get() != exchange) return;
    Link& link = *it->second;
    if (link.peer.known && link.peer.public_key != hello.public_key) {
      // The peer agent has a new WireGuard key: the old peer goes.
      wg::DeviceConfig remove;
      wg::PeerConfig old;
      old.public_key = link.peer.public_key;
      old.remove = true;
      remove.peers.push_back(old);
      link.device->configure(remove);
      link.peer.has_psk = false;
    }
    link.peer.known = true;
    link.peer.public_key = hello.public_key;
    link.peer.identity = exchange->peer_identity();
    if (!link.peer_address) link.peer_address = exchange->remote_address();
    wg::DeviceConfig config;
    // Until the first PSK arrives the peer has a random one: no handshake
    // can succeed without the exchanged key.
    wg::PeerConfig peer = base_peer(link, hello.listen_port);
    if (!link.peer.has_psk) {
      wg::Key placeholder{};
      RAND_bytes(placeholder.data(), static_cast<int>(placeholder.size()));
      peer.preshared_key = placeholder;
      OPENSSL_cleanse(placeholder.data(), placeholder.size());
    }
    config.peers.push_back(std::move(peer));
    auto applied = link.device->configure(config);
    if (config.peers.front().preshared_key) OPENSSL_cleanse(config.peers.front().preshared_key->data(), 32);
    if (!applied) {
      core::log::error("WireGuard peer not configured", {{"tunnel", name}, {"error", applied.error()}});
      fail_waiting(link, named("KernelUnsupported", "adding the peer to " + link.tunnel.interface_name + ": " +
                                                        applied.error()));
      return;
    }
    core::log::info("WireGuard peer agent authenticated",
                    {{"tunnel", name}, {"peer", link.peer.identity}, {"public_key", wg::key_to_base64(hello.public_key)}});
  }

  void on_psk(const std::string& name, const wireguard::Key& psk) {
    auto it = links.find(name);
    if (it == links.end() || !it->second->peer.known) return;
    Link& link = *it->second;
    wg::DeviceConfig config;
    wg::PeerConfig peer;
    peer.public_key = link.peer.public_key;
    peer.update_only = true;
    peer.preshared_key = psk;
    config.peers.push_back(std::move(peer));
    auto applied = link.device->configure(config);
    OPENSSL_cleanse(config.peers.front().preshared_key->data(), 32);
    if (!applied) {
      core::log::error("WireGuard PSK not installed", {{"tunnel", name}, {"error", applied.error()}});
      counters["wg-psk-install-failures"]++;
      return;
    }
    bool first = !link.peer.has_psk;
    if (!first) link.peer.psk_epoch++;
    link.peer.has_psk = true;
    counters["wg-psk-rotations"]++;
    auto interval = std::chrono::seconds(link.tunnel.psk_rotation_seconds);
    link.peer.next_rotation_usec = link.tunnel.psk_rotation_seconds ? now_usec() + std::uint64_t(
                                       std::chrono::duration_cast<std::chrono::microseconds>(interval).count()) : 0;
    core::log::info(first ? "WireGuard PSK installed" : "WireGuard PSK rotated",
                    {{"tunnel", name}, {"epoch", std::to_string(link.peer.psk_epoch)}});
    if (link.exchange && link.exchange->role() == wireguard::Role::Initiator && link.tunnel.psk_rotation_seconds) {
      if (link.rotation_timer) reactor.cancel_timer(link.rotation_timer);
      link.rotation_timer = reactor.add_timer(interval, [this, name] {
        auto found = links.find(name);
        if (found == links.end()) return;
        found->second->rotation_timer = 0;
        if (found->second->exchange) found->second->exchange->rotate();
      });
    }
    if (!first && publisher) publisher->keys_updated(link.peer.association_id, link.peer.psk_epoch);
    if (!link.ready) finish_waiting(link);
  }

  void on_link_closed(const std::string& name, WgExchangeLink* exchange, WgExchangeLink::Ending ending,
                      const std::string& reason) {
    // An inbound link that never found its tunnel.
    auto stray = std::find_if(unassigned.begin(), unassigned.end(), [&](const auto& l) { return l.get() == exchange; });
    if (stray != unassigned.end()) {
      using Ending = WgExchangeLink::Ending;
      const auto [counter, message] =
          ending == Ending::TimedOut      ? std::pair{"wg-exchange-timed-out", kTimedOut}
          : ending == Ending::TooMuchData ? std::pair{"wg-exchange-refused-oversized", kRefusedOversized}
                                          : std::pair{"wg-exchange-refused", kRefused};
      counters[counter]++;
      unauthenticated_log.write(message, exchange->remote_address(), name, reason);
      std::shared_ptr<WgExchangeLink> gone(std::move(*stray));
      unassigned.erase(stray);
      defer([gone] {});  // destroyed after its own callback returned
      return;
    }
    auto it = links.find(name);
    if (it == links.end()) return;
    Link& link = *it->second;
    if (link.exchange.get() != exchange) return;
    core::log::warning("WireGuard exchange ended", {{"tunnel", name}, {"reason", reason}});
    counters["wg-exchange-failures"]++;
    bool initiator = exchange->role() == wireguard::Role::Initiator;
    link.retired.push_back(std::move(link.exchange));
    defer([this, name] {
      if (auto found = links.find(name); found != links.end()) found->second->retired.clear();
    });
    if (link.rotation_timer) reactor.cancel_timer(std::exchange(link.rotation_timer, 0));
    if (!link.ready && !link.waiting.empty()) {
      // Someone asked for this tunnel and it never came up: leave nothing
      // behind in the kernel.
      auto error = named(reason.find("is not \"") != std::string::npos || reason.find("certificate") != std::string::npos
                             ? "PeerNotValidated" : "HandshakeFailed", reason);
      fail_waiting(link, error);
      // Not from inside the link's own callback: the link goes with the tunnel.
      defer([this, name, reason] { take_down(name, reason); });
      return;
    }
    // The installed PSK keeps working; the initiator comes back for the next one.
    if (initiator) schedule_reconnect(link);
  }

  void take_down(const std::string& name, const std::string& reason) {
    auto it = links.find(name);
    if (it == links.end()) return;
    std::unique_ptr<Link> link = std::move(it->second);
    links.erase(it);
    fail_waiting(*link, named("HandshakeFailed", "the tunnel went down: " + reason));
    if (link->rotation_timer) reactor.cancel_timer(link->rotation_timer);
    if (link->reconnect_timer) reactor.cancel_timer(link->reconnect_timer);
    by_association.erase(link->association_id);
    by_association.erase(link->peer.association_id);
    std::string ifname = link->tunnel.interface_name;
    link->exchange.reset();
    link->device.reset();  // deletes the link it made, or stops wireguard-go
    core::log::info("WireGuard link down", {{"tunnel", name}, {"interface", ifname}, {"reason", reason}});
    if (publisher) {
      for (auto id : {link->peer.association_id, link->association_id}) {
        publisher->terminated(id, reason);
        publisher->association_removed(id);
      }
    }
  }

  // ---- observation ------------------------------------------------------

  void ensure_polling() {
    if (poll_timer || links.empty()) return;
    poll_timer = reactor.add_timer(options.poll_interval, [this] {
      poll_timer = 0;
      poll();
      ensure_polling();
    });
  }

  void poll() {
    for (auto& [name, link] : links) {
      auto state = link->device->read();
      if (!state) {
        counters["wg-read-failures"]++;
        continue;
      }
      Peer& peer = link->peer;
      if (!peer.known) continue;
      for (const auto& p : state->peers) {
        if (p.public_key != peer.public_key) continue;
        bool first_handshake = peer.last_handshake.time_since_epoch().count() == 0 &&
                               p.last_handshake.time_since_epoch().count() != 0;
        peer.last_handshake = p.last_handshake;
        peer.rx_bytes = p.rx_bytes;
        peer.tx_bytes = p.tx_bytes;
        peer.endpoint = p.endpoint;
        if (first_handshake)
          core::log::info("WireGuard handshake", {{"tunnel", name}, {"endpoint", p.endpoint ? p.endpoint->to_string() : ""}});
        std::string path = path_of(*link);
        if (!peer.path.empty() && path != peer.path && publisher) {
          core::log::info("WireGuard path changed", {{"tunnel", name}, {"from", peer.path}, {"to", path}});
          publisher->path_changed(peer.association_id, peer.path, path);
        }
        peer.path = path;
      }
      // A host name peer that stopped answering may have moved.
      if (!ikev2::IpAddress::parse(link->tunnel.peer) && !link->tunnel.peer.empty() && link->tunnel.peer != "%any" &&
          stale(*link))
        resolve(*link);
    }
  }

  bool stale(const Link& link) const {
    auto last = link.peer.last_handshake;
    if (last.time_since_epoch().count() == 0)
      return link.ready && now_usec() > link.created_at + std::uint64_t(options.stale_after.count()) * 1'000'000;
    return Clock::now() - last > options.stale_after;
  }

  std::string path_of(const Link& link) const {
    const auto& endpoint = link.peer.endpoint;
    if (!endpoint) return "";
    auto local = route_source_address(endpoint->address);
    return (local ? local->to_string() : std::string("?")) + " -> " + endpoint->to_string();
  }

  std::string peer_state(const Link& link) const {
    auto last = link.peer.last_handshake;
    if (last.time_since_epoch().count() == 0) return "connecting";
    return Clock::now() - last <= kRejectAfter ? "established" : "stale";
  }
};

WgService::WgService(core::Reactor& reactor, core::Resolver& resolver, WgOptions options,
                     kernel::KernelCapabilities capabilities, IdAllocator allocate_id) {
  const auto& limits = options.exchange_limits;
  if (limits.max_pending == 0 || limits.max_per_source == 0 || limits.handshake_timeout.count() <= 0 ||
      limits.max_buffered == 0)
    throw std::invalid_argument("the WireGuard exchange limits must all be above 0");
  impl_ = std::make_unique<Impl>(reactor, resolver, std::move(options), std::move(capabilities), std::move(allocate_id));
}

WgService::~WgService() { shutdown(); }

void WgService::set_publisher(bus::Publisher* publisher) { impl_->publisher = publisher; }

void WgService::apply_policy(const policy::Policy& policy) {
  Impl& s = *impl_;
  s.policy = &policy;
  s.keys.clear();  // key files are read again: a replaced key takes effect
  std::map<std::string, policy::Tunnel> now;
  for (const auto& name : policy.tunnel_names()) {
    const policy::Tunnel* tunnel = policy.tunnel(name);
    if (tunnel && tunnel->protocol == "wireguard") now[name] = *tunnel;
  }
  // Tunnels that are gone or changed come down; changed ones come back below
  // if they start at boot.
  std::vector<std::string> down;
  for (const auto& [name, link] : s.links) {
    auto it = now.find(name);
    if (it == now.end() || it->second.location != link->tunnel.location || it->second.interface_name != link->tunnel.interface_name)
      down.push_back(name);
  }
  for (const auto& name : down) s.take_down(name, "the policy changed");
  s.configured = std::move(now);
  s.load_exchange_tls();
  s.update_listener();
  for (const auto& [name, tunnel] : s.configured) {
    if (tunnel.start != "boot" || s.links.count(name)) continue;
    if (auto error = s.bring_up(tunnel, 0))
      core::log::warning("WireGuard tunnel not started", {{"tunnel", name}, {"error", error->message}});
  }
}

void WgService::shutdown() {
  Impl& s = *impl_;
  std::vector<std::string> names;
  for (const auto& [name, link] : s.links) names.push_back(name);
  for (const auto& name : names) s.take_down(name, "the agent stops");
  s.close_listener();
}

void WgService::establish_tunnel(const bus::CallerCredentials& caller, const std::string& peer,
                                 bus::TunnelProperties props, std::function<void(bus::Backend::TunnelResult)> done) {
  Impl& s = *impl_;
  if (!s.policy) return done(named("PolicyDenied", "no policy is loaded"));
  if (!props.identity.empty() || !props.psk.empty() || !props.local_ts.empty() || !props.remote_ts.empty() ||
      !props.mode.empty() || !props.local_id.empty() || !props.remote_id.empty() || !props.algorithms.empty())
    return done(named("InvalidArgument",
                      "a WireGuard tunnel takes its settings from the policy (pass only 'protocols' and 'timeout-ms')"));
  const policy::Tunnel* tunnel = nullptr;
  if (auto it = s.configured.find(peer); it != s.configured.end()) {
    tunnel = &it->second;
  } else {
    for (const auto& [name, candidate] : s.configured)
      if (candidate.peer == peer) tunnel = &candidate;
  }
  if (!tunnel) {
    if (const auto* other = s.policy ? s.policy->tunnel(peer) : nullptr)
      return done(named("InvalidArgument", "tunnel \"" + peer + "\" runs " + other->protocol + ", not wireguard"));
    return done(named("InvalidArgument", "\"" + peer + "\" is no WireGuard tunnel of the policy (by name or Peer=)"));
  }

  const policy::Caller who = policy_caller(caller);
  policy::Request request;
  request.protocols = {"wireguard"};
  request.role = "client";
  request.host = tunnel->peer;
  request.address = ikev2::IpAddress::parse(tunnel->peer) ? tunnel->peer : "";
  request.port = tunnel->port;
  request.tunnel = tunnel->name;
  policy::Decision decision = s.policy->evaluate(who, request);
  if (!decision.allowed) return done(named("PolicyDenied", decision.denial_reason));

  auto it = s.links.find(tunnel->name);
  if (it == s.links.end()) {
    if (auto error = s.bring_up(*tunnel, caller.uid)) return done(*error);
    it = s.links.find(tunnel->name);
  }
  Impl::Link& link = *it->second;
  if (link.ready) return done(link.association_id);
  link.waiting.push_back(std::move(done));
  if (!link.ready_timer) {
    std::string name = tunnel->name;
    link.ready_timer = s.reactor.add_timer(std::chrono::milliseconds(props.timeout_ms), [this, name] {
      auto found = impl_->links.find(name);
      if (found == impl_->links.end()) return;
      found->second->ready_timer = 0;
      impl_->fail_waiting(*found->second,
                          named("Timeout", "no PSK from the peer's agent for tunnel \"" + name + "\" in time"));
    });
  }
  if (link.uses_exchange() && !link.exchange) s.start_exchange(link);
}

std::vector<bus::TunnelInfo> WgService::tunnels() const {
  const Impl& s = *impl_;
  std::vector<bus::TunnelInfo> out;
  for (const auto& [name, tunnel] : s.configured) {
    bus::TunnelInfo info;
    info.name = name;
    info.protocol = "wireguard";
    info.peer = tunnel.peer;
    info.start = tunnel.start;
    info.state = "down";
    if (auto it = s.links.find(name); it != s.links.end()) {
      info.association_id = it->second->association_id;
      // "up" only once WireGuard itself has completed a handshake.
      info.state = s.peer_state(*it->second) == "established" ? "up" : "connecting";
    }
    out.push_back(info);
  }
  return out;
}

std::variant<std::string, bus::BusError> WgService::public_key(const std::string& identity) {
  auto key = impl_->key_for(identity);
  if (auto* error = std::get_if<bus::BusError>(&key)) return *error;
  return wg::key_to_base64(std::get<std::shared_ptr<WireguardKey>>(key)->public_key());
}

std::map<std::string, std::uint64_t> WgService::statistics() const {
  auto out = impl_->counters;
  // The exchange's limits are always reported, 0 until one is reached.
  for (const char* limit : {"wg-exchange-refused-limit", "wg-exchange-refused-source-limit", "wg-exchange-timed-out",
                            "wg-exchange-refused-oversized"})
    out.try_emplace(limit, 0);
  out["wg-exchange-pending"] = impl_->unassigned.size();
  out["wg-links"] = impl_->links.size();
  return out;
}

bool WgService::owns(std::uint64_t id) const { return impl_->by_association.count(id) != 0; }

std::vector<std::uint64_t> WgService::association_ids() const {
  std::vector<std::uint64_t> ids;
  for (const auto& [id, name] : impl_->by_association) ids.push_back(id);
  return ids;
}

std::optional<bus::AssociationInfo> WgService::association(std::uint64_t id) const {
  const Impl& s = *impl_;
  auto name = s.by_association.find(id);
  if (name == s.by_association.end()) return std::nullopt;
  auto it = s.links.find(name->second);
  if (it == s.links.end()) return std::nullopt;
  const Impl::Link& link = *it->second;
  bus::AssociationInfo info;
  info.id = id;
  info.protocol = "wireguard";
  info.tunnel_name = link.tunnel.name;
  info.offload = link.device->offload() == wg::Offload::Kernel ? "kernel" : "userspace";
  info.interface_name = link.tunnel.interface_name;
  info.owner_uid = link.owner_uid;
  if (id == link.association_id) {
    info.role = "interface";
    info.public_key = wg::key_to_base64(link.key->public_key());
    info.listen_port = link.tunnel.listen_port;
    info.local_identity = link.key->name();
    info.local_address = join(link.tunnel.addresses, ",");
    info.state = "up";
    info.created_at_usec = link.created_at;
    return info;
  }
  const Impl::Peer& peer = link.peer;
  info.role = "peer";
  info.parent_id = link.association_id;
  info.peer_public_key = peer.known ? wg::key_to_base64(peer.public_key) : "";
  info.peer_identity = peer.identity;
  info.peer_address = peer.endpoint ? peer.endpoint->to_string() : "";
  info.remote_traffic_selectors = link.tunnel.allowed_ips;
  info.bytes_sent = peer.tx_bytes;
  info.bytes_received = peer.rx_bytes;
  info.last_handshake_usec = usec(peer.last_handshake);
  info.key_epoch = peer.psk_epoch;
  info.preshared_key = !peer.has_psk ? "none" : peer.static_psk ? "static" : "exchanged";
  info.expires_at_usec = peer.next_rotation_usec;
  info.state = s.peer_state(link);
  info.created_at_usec = peer.created_at;
  return info;
}

std::optional<bus::BusError> WgService::update_keys(const bus::CallerCredentials& caller, std::uint64_t id) {
  Impl& s = *impl_;
  auto name = s.by_association.find(id);
  if (name == s.by_association.end()) return named("NoSuchAssociation", "no association " + std::to_string(id));
  Impl::Link& link = *s.links.at(name->second);
  if (auto denied = check_owner(caller, link.owner_uid, id, "rekey")) return denied;
  if (!link.uses_exchange() || link.peer.static_psk)
    return named("NotSupported", "tunnel \"" + link.tunnel.name + "\" has a static PSK or none; nothing to rotate");
  if (!link.exchange || !link.exchange->established())
    return named("NotSupported", "no exchange with the peer's agent is running for \"" + link.tunnel.name + "\" now");
  if (link.exchange->role() != wireguard::Role::Initiator)
    return named("NotSupported", "the peer's agent started this exchange and rotates its PSK; ask there");
  if (!link.exchange->rotate()) return named("NotSupported", "a rotation is already in flight");
  return std::nullopt;
}

std::optional<bus::BusError> WgService::terminate(const bus::CallerCredentials& caller, std::uint64_t id) {
  Impl& s = *impl_;
  auto name = s.by_association.find(id);
  if (name == s.by_association.end()) return named("NoSuchAssociation", "no association " + std::to_string(id));
  if (auto denied = check_owner(caller, s.links.at(name->second)->owner_uid, id, "terminate")) return denied;
  std::string tunnel = name->second;
  s.take_down(tunnel, "terminated by request");
  return std::nullopt;
}

}  // namespace tapsec::state
