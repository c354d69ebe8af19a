#include "agent/bus/bus_service.h"

#include <fcntl.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <utility>

#include "agent/bus/caller_identity.h"
#include "agent/bus/errors.h"
#include "agent/bus/properties_parser.h"
#include "agent/core/log.h"

namespace tapsec::bus {

namespace error {

bool is_valid_error_name(std::string_view name) {
  if (name.empty() || name.size() > 255) return false;
  std::size_t elements = 0;
  std::size_t start = 0;
  while (start <= name.size()) {
    std::size_t dot = name.find('.', start);
    std::string_view element = name.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start);
    if (element.empty() || (element[0] >= '0' && element[0] <= '9')) return false;
    for (char c : element)
      if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) return false;
    ++elements;
    if (dot == std::string_view::npos) break;
    start = dot + 1;
  }
  return elements >= 2;
}

}  // namespace error

std::string association_path(std::uint64_t id) {
  return std::string(kAssociationPrefix) + "/" + std::to_string(id);
}

std::optional<std::uint64_t> association_id_from_path(std::string_view path) {
  std::string_view prefix = kAssociationPrefix;
  if (path.size() <= prefix.size() + 1 || path.substr(0, prefix.size()) != prefix || path[prefix.size()] != '/')
    return std::nullopt;
  std::string_view digits = path.substr(prefix.size() + 1);
  if (digits.size() > 1 && digits[0] == '0') return std::nullopt;  // one path per id
  std::uint64_t id = 0;
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), id);
  if (ec != std::errc() || end != digits.data() + digits.size()) return std::nullopt;
  return id;
}

namespace {

int reply_error(sd_bus_message* call, const BusError& e) {
  const char* name = error::is_valid_error_name(e.name) ? e.name.c_str() : error::kInternal;
  int r = sd_bus_reply_method_errorf(call, name, "%s", e.message.c_str());
  if (r < 0) core::log::warning("could not send error reply", {{"error", name}, {"errno", std::strerror(-r)}});
  return r < 0 ? r : 1;
}

// The answer to one SecureSocket/Connect call. The backend may complete it
// later; if every copy of the completion is dropped unanswered, the caller
// still gets an error instead of waiting for a timeout.
class PendingSecureReply {
 public:
  explicit PendingSecureReply(sd_bus_message* call) : call_(MessageRef::share(call)) {}
  PendingSecureReply(const PendingSecureReply&) = delete;
  PendingSecureReply& operator=(const PendingSecureReply&) = delete;
  ~PendingSecureReply() {
    if (!answered_)
      reply_error(call_.get(), error::make(error::kInternal, "the agent dropped the request before it completed"));
  }

  void finish(SecureResult result) {
    if (answered_) {
      core::log::warning("a secure socket request completed twice; the second result is ignored");
      return;
    }
    answered_ = true;
    if (auto* e = std::get_if<BusError>(&result)) {
      reply_error(call_.get(), *e);
      return;
    }
    auto& secured = std::get<SecuredSocket>(result);
    if (!secured.fd) {
      reply_error(call_.get(), error::make(error::kInternal, "the agent produced no socket"));
      return;
    }
    // sd-bus duplicates the fd into the message; ours closes with `secured`.
    std::string path = association_path(secured.association_id);
    int r = sd_bus_reply_method_return(call_.get(), "ho", secured.fd.get(), path.c_str());
    if (r < 0) {
      core::log::warning("could not send the secured socket", {{"errno", std::strerror(-r)}});
      reply_error(call_.get(), error::make(error::kInternal, std::string("could not send the socket back: ") +
                                                                  std::strerror(-r)));
    }
  }

 private:
  MessageRef call_;
  bool answered_ = false;
};

// EstablishTunnel's reply: exactly once, an error if the backend drops it.
class PendingTunnelReply {
 public:
  explicit PendingTunnelReply(sd_bus_message* call) : call_(MessageRef::share(call)) {}
  PendingTunnelReply(const PendingTunnelReply&) = delete;
  PendingTunnelReply& operator=(const PendingTunnelReply&) = delete;
  ~PendingTunnelReply() {
    if (!answered_)
      reply_error(call_.get(), error::make(error::kInternal, "the agent dropped the request before it completed"));
  }
  void finish(const Backend::TunnelResult& result) {
    if (std::exchange(answered_, true)) return;
    if (auto* e = std::get_if<BusError>(&result)) {
      reply_error(call_.get(), *e);
      return;
    }
    std::string path = association_path(std::get<std::uint64_t>(result));
    int r = sd_bus_reply_method_return(call_.get(), "o", path.c_str());
    if (r < 0) core::log::warning("could not answer EstablishTunnel", {{"errno", std::strerror(-r)}});
  }

 private:
  MessageRef call_;
  bool answered_ = false;
};

SecureCompletion make_completion(sd_bus_message* call) {
  auto pending = std::make_shared<PendingSecureReply>(call);
  return [pending](SecureResult result) { pending->finish(std::move(result)); };
}

std::optional<BusError> check_role(std::string_view role) {
  if (role == "client" || role == "server") return std::nullopt;
  return error::make(error::kInvalidArgument,
                     "role is \"" + std::string(role) + "\"; expected \"client\" or \"server\"");
}

// Runs a handler body; an exception becomes org.tapsec1.Error.Internal
// instead of unwinding into sd-bus.
template <typename Body>
int guarded(sd_bus_error* ret_error, Body&& body) {
  try {
    return body();
  } catch (const std::exception& e) {
    core::log::error("bus handler failed", {{"exception", e.what()}});
    return sd_bus_error_setf(ret_error, error::kInternal, "internal error: %s", e.what());
  } catch (...) {
    return sd_bus_error_set(ret_error, error::kInternal, "internal error");
  }
}

// Parent is an object path made from parent_id ("/" for none).
struct ParentPath {};
using AssociationField = std::variant<std::string AssociationInfo::*, std::uint64_t AssociationInfo::*,
                                      bool AssociationInfo::*, uid_t AssociationInfo::*,
                                      std::uint16_t AssociationInfo::*,
                                      std::vector<std::string> AssociationInfo::*, ParentPath>;

struct AssociationProperty {
  std::string_view name;
  AssociationField field;
};

const AssociationProperty kAssociationProperties[] = {
    {"Protocol", &AssociationInfo::protocol},
    {"Version", &AssociationInfo::version},
    {"Cipher", &AssociationInfo::cipher},
    {"Group", &AssociationInfo::group},
    {"Role", &AssociationInfo::role},
    {"LocalIdentity", &AssociationInfo::local_identity},
    {"PeerIdentity", &AssociationInfo::peer_identity},
    {"ServerName", &AssociationInfo::server_name},
    {"ALPN", &AssociationInfo::alpn},
    {"Resumed", &AssociationInfo::resumed},
    {"Offload", &AssociationInfo::offload},
    {"KeyEpoch", &AssociationInfo::key_epoch},
    {"BytesSent", &AssociationInfo::bytes_sent},
    {"BytesReceived", &AssociationInfo::bytes_received},
    {"RecordsSent", &AssociationInfo::records_sent},
    {"RecordsReceived", &AssociationInfo::records_received},
    {"ExpiresAt", &AssociationInfo::expires_at_usec},
    {"State", &AssociationInfo::state},
    {"LocalAddress", &AssociationInfo::local_address},
    {"PeerAddress", &AssociationInfo::peer_address},
    {"OwnerUid", &AssociationInfo::owner_uid},
    {"CreatedAt", &AssociationInfo::created_at_usec},
    {"Parent", ParentPath{}},
    {"TunnelName", &AssociationInfo::tunnel_name},
    {"Mode", &AssociationInfo::mode},
    {"LocalTrafficSelectors", &AssociationInfo::local_traffic_selectors},
    {"RemoteTrafficSelectors", &AssociationInfo::remote_traffic_selectors},
    {"InboundSPI", &AssociationInfo::inbound_spi},
    {"OutboundSPI", &AssociationInfo::outbound_spi},
    {"Encapsulation", &AssociationInfo::encapsulation},
    {"PacketsSent", &AssociationInfo::packets_sent},
    {"PacketsReceived", &AssociationInfo::packets_received},
    {"Interface", &AssociationInfo::interface_name},
    {"PublicKey", &AssociationInfo::public_key},
    {"PeerPublicKey", &AssociationInfo::peer_public_key},
    {"ListenPort", &AssociationInfo::listen_port},
    {"LastHandshake", &AssociationInfo::last_handshake_usec},
    {"PresharedKey", &AssociationInfo::preshared_key},
};

int append_association_property(sd_bus_message* reply, const AssociationInfo& info, const AssociationField& field) {
  struct Appender {
    sd_bus_message* reply;
    const AssociationInfo& info;
    int operator()(std::string AssociationInfo::*f) const {
      return sd_bus_message_append_basic(reply, 's', (info.*f).c_str());
    }
    int operator()(std::uint64_t AssociationInfo::*f) const {
      return sd_bus_message_append_basic(reply, 't', &(info.*f));
    }
    int operator()(bool AssociationInfo::*f) const {
      int value = (info.*f) ? 1 : 0;
      return sd_bus_message_append_basic(reply, 'b', &value);
    }
    int operator()(uid_t AssociationInfo::*f) const {
      std::uint32_t value = info.*f;
      return sd_bus_message_append_basic(reply, 'u', &value);
    }
    int operator()(std::uint16_t AssociationInfo::*f) const {
      std::uint16_t value = info.*f;
      return sd_bus_message_append_basic(reply, 'q', &value);
    }
    int operator()(std::vector<std::string> AssociationInfo::*f) const {
      int r = sd_bus_message_open_container(reply, 'a', "s");
      for (const auto& item : info.*f)
        if (r >= 0) r = sd_bus_message_append_basic(reply, 's', item.c_str());
      return r < 0 ? r : sd_bus_message_close_container(reply);
    }
    int operator()(ParentPath) const {
      std::string path = info.parent_id ? association_path(info.parent_id) : "/";
      return sd_bus_message_append_basic(reply, 'o', path.c_str());
    }
  };
  return std::visit(Appender{reply, info}, field);
}

const char* signature_of(const AssociationField& field) {
  struct Signature {
    const char* operator()(std::string AssociationInfo::*) const { return "s"; }
    const char* operator()(std::uint64_t AssociationInfo::*) const { return "t"; }
    const char* operator()(bool AssociationInfo::*) const { return "b"; }
    const char* operator()(uid_t AssociationInfo::*) const { return "u"; }
    const char* operator()(std::uint16_t AssociationInfo::*) const { return "q"; }
    const char* operator()(std::vector<std::string> AssociationInfo::*) const { return "as"; }
    const char* operator()(ParentPath) const { return "o"; }
  };
  return std::visit(Signature{}, field);
}

// The a{sv} of the named association properties; every one if none is named.
int append_property_dict(sd_bus_message* m, const AssociationInfo& info, std::initializer_list<const char*> names) {
  int r = sd_bus_message_open_container(m, 'a', "{sv}");
  for (const auto& p : kAssociationProperties) {
    if (r < 0) break;
    if (names.size() && std::none_of(names.begin(), names.end(), [&](const char* n) { return p.name == n; }))
      continue;
    if ((r = sd_bus_message_open_container(m, 'e', "sv")) < 0) break;
    if ((r = sd_bus_message_append_basic(m, 's', std::string(p.name).c_str())) < 0) break;
    if ((r = sd_bus_message_open_container(m, 'v', signature_of(p.field))) < 0) break;
    if ((r = append_association_property(m, info, p.field)) < 0) break;
    if ((r = sd_bus_message_close_container(m)) < 0) break;
    r = sd_bus_message_close_container(m);
  }
  return r < 0 ? r : sd_bus_message_close_container(m);
}

// The interfaces an association object has besides its own, as sd-bus
// reports them.
constexpr const char* kStandardInterfaces[] = {"org.freedesktop.DBus.Peer", "org.freedesktop.DBus.Introspectable",
                                               "org.freedesktop.DBus.Properties"};

}  // namespace

struct BusService::PendingValidation {
  BusService* service = nullptr;
  std::uint64_t token = 0;
  std::string peer;  // "unique_name object_path", for messages
  std::function<void(bool, std::string)> done;
  SlotRef slot;
};

// The sd-bus callbacks. userdata is the BusService for every one of them
// (for the association fallback: what find_association returned).
struct BusService::Handlers {
  static BusService& self(void* userdata) { return *static_cast<BusService*>(userdata); }

  // org.tapsec1.Manager

  static int secure_socket(sd_bus_message* m, void* userdata, sd_bus_error* ret_error) {
    return guarded(ret_error, [&] {
      int received_fd = -1;
      const char* role = nullptr;
      int r = sd_bus_message_read(m, "hs", &received_fd, &role);
      if (r < 0) return r;
      if (auto e = check_role(role)) return reply_error(m, *e);
      auto props = parse_security_properties(m, role);
      if (auto* e = std::get_if<BusError>(&props)) return reply_error(m, *e);
      auto caller = self(userdata).caller_credentials(m);
      if (auto* e = std::get_if<BusError>(&caller)) return reply_error(m, *e);

      struct stat st{};
      if (fstat(received_fd, &st) < 0 || !S_ISSOCK(st.st_mode))
        return reply_error(m, error::make(error::kBadSocket, "the file descriptor passed is not a socket; pass a "
                                                             "connected TCP socket"));
      // The message owns the received fd; the backend gets its own.
      core::UniqueFd fd(fcntl(received_fd, F_DUPFD_CLOEXEC, 3));
      if (!fd)
        return reply_error(m, error::make(error::kInternal, std::string("could not take the socket: ") +
                                                                std::strerror(errno)));
      self(userdata).backend_.secure_socket(std::get<CallerCredentials>(caller), std::move(fd), role,
                                            std::move(std::get<SecurityProperties>(props)), make_completion(m));
      return 1;
    });
  }

  static int connect(sd_bus_message* m, void* userdata, sd_bus_error* ret_error) {
    return guarded(ret_error, [&] {
      const char* host = nullptr;
      std::uint16_t port = 0;
      int r = sd_bus_message_read(m, "sq", &host, &port);
      if (r < 0) return r;
      if (!host || !*host) return reply_error(m, error::make(error::kInvalidArgument, "host is empty"));
      if (std::strlen(host) > 253)
        return reply_error(m, error::make(error::kInvalidArgument, "host is longer than 253 characters"));
      if (port == 0) return reply_error(m, error::make(error::kInvalidArgument, "port 0 is not a valid port"));
      auto props = parse_security_properties(m, "client");
      if (auto* e = std::get_if<BusError>(&props)) return reply_error(m, *e);
      auto caller = self(userdata).caller_credentials(m);
      if (auto* e = std::get_if<BusError>(&caller)) return reply_error(m, *e);
      self(userdata).backend_.connect(std::get<CallerCredentials>(caller), host, port,
                                      std::move(std::get<SecurityProperties>(props)), make_completion(m));
      return 1;
    });
  }

  static int list_associations(sd_bus_message* m, void* userdata, sd_bus_error* ret_error) {
    return guarded(ret_error, [&] {
      MessageRef reply;
      int r = sd_bus_message_new_method_return(m, reply.out());
      if (r < 0) return r;
      if ((r = sd_bus_message_open_container(reply.get(), 'a', "o")) < 0) return r;
      auto& service = self(userdata);
      for (std::uint64_t id : service.backend_.association_ids()) {
        auto owner = service.owner_of(id);
        if (!owner || !service.current_caller_may_observe(service.bus_.get(), *owner)) continue;
        std::string path = association_path(id);
        if ((r = sd_bus_message_append_basic(reply.get(), 'o', path.c_str())) < 0) return r;
      }
      if ((r = sd_bus_message_close_container(reply.get())) < 0) return r;
      r = sd_bus_send(nullptr, reply.get(), nullptr);
      return r < 0 ? r : 1;
    });
  }

  static int establish_tunnel(sd_bus_message* m, void* userdata, sd_bus_error* ret_error) {
    return guarded(ret_error, [&] {
      const char* peer = nullptr;
      int r = sd_bus_message_read_basic(m, 's', &peer);
      if (r < 0) return r;
      if (!peer || !*peer)
        return reply_error(m, error::make(error::kInvalidArgument, "peer is empty: name a tunnel or an address"));
      if (std::strlen(peer) > 253)
        return reply_error(m, error::make(error::kInvalidArgument, "peer is longer than 253 characters"));
      auto props = parse_tunnel_properties(m);
      if (auto* e = std::get_if<BusError>(&props)) return reply_error(m, *e);
      auto caller = self(userdata).caller_credentials(m);
      if (auto* e = std::get_if<BusError>(&caller)) return reply_error(m, *e);
      auto pending = std::make_shared<PendingTunnelReply>(m);
      self(userdata).backend_.establish_tunnel(std::get<CallerCredentials>(caller), peer,
                                               std::move(std::get<TunnelProperties>(props)),
                                               [pending](Backend::TunnelResult result) { pending->finish(result); });
      return 1;
    });
  }

  static int list_tunnels(sd_bus_message* m, void* userdata, sd_bus_error* ret_error) {
    return guarded(ret_error, [&] {
      MessageRef reply;
      int r = sd_bus_message_new_method_return(m, reply.out());
      if (r < 0) return r;
      if ((r = sd_bus_message_open_container(reply.get(), 'a', "(ssssso)")) < 0) return r;
      for (const TunnelInfo& t : self(userdata).backend_.tunnels()) {
        std::string path = t.association_id ? association_path(t.association_id) : "/";
        r = sd_bus_message_append(reply.get(), "(ssssso)", t.name.c_str(), t.protocol.c_str(), t.peer.c_str(),
                                  t.start.c_str(), t.state.c_str(), path.c_str());
        if (r < 0) return r;
      }
      if ((r = sd_bus_message_close_container(reply.get())) < 0) return r;
      r = sd_bus_send(nullptr, reply.get(), nullptr);
      return r < 0 ? r : 1;
    });
  }

  // A public key is no secret: anyone may ask.
  static int get_public_key(sd_bus_message* m, void* userdata, sd_bus_error* ret_error) {
    return guarded(ret_error, [&] {
      const char* identity = nullptr;
      int r = sd_bus_message_read(m, "s", &identity);
      if (r < 0) return r;
      auto key = self(userdata).backend_.public_key(identity);
      if (auto* e = std::get_if<BusError>(&key)) return reply_error(m, *e);
      return sd_bus_reply_method_return(m, "s", std::get<std::string>(key).c_str());
    });
  }

  static int flush_session_cache(sd_bus_message* m, void* userdata, sd_bus_error* ret_error) {
    return guarded(ret_error, [&] {
      auto caller = self(userdata).caller_credentials(m);
      if (auto* e = std::get_if<BusError>(&caller)) return reply_error(m, *e);
      std::uint32_t removed = self(userdata).backend_.flush_session_cache(std::get<CallerCredentials>(caller));
      return sd_bus_reply_method_return(m, "u", removed);
    });
  }

  static int manager_property(sd_bus*, const char*, const char*, const char* property, sd_bus_message* reply,
                              void* userdata, sd_bus_error* ret_error) {
    return guarded(ret_error, [&] {
      ManagerInfo info = self(userdata).backend_.manager_info();
      std::string_view name = property;
      if (name == "Version") return sd_bus_message_append_basic(reply, 's', info.version.c_str());
      if (name == "SessionCacheEntries") return sd_bus_message_append_basic(reply, 'u', &info.session_cache_entries);
      if (name == "SessionCacheCapacity")
        return sd_bus_message_append_basic(reply, 'u', &info.session_cache_capacity);
      if (name == "Statistics") {
        int r = sd_bus_message_open_container(reply, 'a', "{st}");
        for (const auto& [key, value] : info.statistics)
          if (r >= 0) r = sd_bus_message_append(reply, "{st}", key.c_str(), value);
        return r < 0 ? r : sd_bus_message_close_container(reply);
      }
      if (name == "KernelFeatures") {
        int r = sd_bus_message_open_container(reply, 'a', "s");
        if (r < 0) return r;
        for (const auto& feature : info.kernel_features)
          if ((r = sd_bus_message_append_basic(reply, 's', feature.c_str())) < 0) return r;
        return sd_bus_message_close_container(reply);
      }
      return sd_bus_error_setf(ret_error, SD_BUS_ERROR_UNKNOWN_PROPERTY, "no property %s", property);
    });
  }

  static int set_session_cache_capacity(sd_bus* bus, const char* path, const char* interface, const char* property,
                                        sd_bus_message* value, void* userdata, sd_bus_error* ret_error) {
    return guarded(ret_error, [&] {
      std::uint32_t capacity = 0;
      int r = sd_bus_message_read_basic(value, 'u', &capacity);
      if (r < 0) return r;
      sd_bus_message* call = sd_bus_get_current_message(bus);
      if (!call) return sd_bus_error_set(ret_error, error::kInternal, "no current call");
      auto caller = self(userdata).caller_credentials(call);
      if (auto* e = std::get_if<BusError>(&caller)) return sd_bus_error_set(ret_error, e->name.c_str(), e->message.c_str());
      if (std::get<CallerCredentials>(caller).uid != 0)
        return sd_bus_error_set(ret_error, error::kPolicyDenied, "only root may set SessionCacheCapacity");
      if (auto e = self(userdata).backend_.set_session_cache_capacity(std::get<CallerCredentials>(caller), capacity))
        return sd_bus_error_set(ret_error, error::is_valid_error_name(e->name) ? e->name.c_str() : error::kInternal,
                                e->message.c_str());
      sd_bus_emit_properties_changed(bus, path, interface, property, nullptr);
      return 1;
    });
  }

  // org.tapsec1.Association (fallback below /org/tapsec1/association)

  // An association the caller may not see does not exist for it
  // (UnknownObject), so its properties and methods are out of reach too.
  static int find_association(sd_bus* bus, const char* path, const char*, void* userdata, void** found,
                              sd_bus_error* ret_error) {
    return guarded(ret_error, [&] {
      auto id = association_id_from_path(path);
      if (!id) return 0;
      auto& service = self(userdata);
      auto owner = service.owner_of(*id);
      if (!owner || !service.current_caller_may_observe(bus, *owner)) return 0;
      *found = userdata;
      return 1;
    });
  }

  static int enumerate_associations(sd_bus* bus, const char*, void* userdata, char*** nodes, sd_bus_error* ret_error) {
    return guarded(ret_error, [&] {
      auto& service = self(userdata);
      std::vector<std::uint64_t> ids;
      for (std::uint64_t id : service.backend_.association_ids()) {
        auto owner = service.owner_of(id);
        if (owner && service.current_caller_may_observe(bus, *owner)) ids.push_back(id);
      }
      // sd-bus frees the list with free(): build it with malloc.
      char** list = static_cast<char**>(calloc(ids.size() + 1, sizeof(char*)));
      if (!list) return -ENOMEM;
      for (std::size_t i = 0; i < ids.size(); ++i) {
        list[i] = strdup(association_path(ids[i]).c_str());
        if (!list[i]) {
          for (std::size_t j = 0; j < i; ++j) free(list[j]);
          free(list);
          return -ENOMEM;
        }
      }
      *nodes = list;
      return 0;
    });
  }

  static int association_property(sd_bus*, const char* path, const char*, const char* property,
                                  sd_bus_message* reply, void* userdata, sd_bus_error* ret_error) {
    return guarded(ret_error, [&] {
      auto id = association_id_from_path(path);
      if (!id) return sd_bus_error_setf(ret_error, error::kNoSuchAssociation, "no association at %s", path);
      const auto& info = self(userdata).association_for(reply, *id);
      if (!info) return sd_bus_error_setf(ret_error, error::kNoSuchAssociation, "association %s no longer exists", path);
      for (const auto& p : kAssociationProperties)
        if (p.name == property) return append_association_property(reply, *info, p.field);
      return sd_bus_error_setf(ret_error, SD_BUS_ERROR_UNKNOWN_PROPERTY, "no property %s", property);
    });
  }

  // Common start of the Association methods: the id and the caller.
  static std::variant<std::pair<std::uint64_t, CallerCredentials>, BusError> association_call(sd_bus_message* m,
                                                                                           void* userdata) {
    const char* path = sd_bus_message_get_path(m);
    auto id = association_id_from_path(path ? path : "");
    if (!id) return error::make(error::kNoSuchAssociation, std::string("no association at ") + (path ? path : "?"));
    auto caller = self(userdata).caller_credentials(m);
    if (auto* e = std::get_if<BusError>(&caller)) return *e;
    return std::make_pair(*id, std::move(std::get<CallerCredentials>(caller)));
  }

  static int update_keys(sd_bus_message* m, void* userdata, sd_bus_error* ret_error) {
    return guarded(ret_error, [&] {
      int request_peer = 0;
      int r = sd_bus_message_read_basic(m, 'b', &request_peer);
      if (r < 0) return r;
      auto call = association_call(m, userdata);
      if (auto* e = std::get_if<BusError>(&call)) return reply_error(m, *e);
      auto& [id, caller] = std::get<0>(call);
      if (auto e = self(userdata).backend_.update_keys(caller, id, request_peer != 0)) return reply_error(m, *e);
      return sd_bus_reply_method_return(m, "");
    });
  }

  static int export_keying_material(sd_bus_message* m, void* userdata, sd_bus_error* ret_error) {
    return guarded(ret_error, [&] {
      const char* label = nullptr;
      const void* context_data = nullptr;
      std::size_t context_size = 0;
      std::uint32_t length = 0;
      int r = sd_bus_message_read_basic(m, 's', &label);
      if (r < 0) return r;
      if ((r = sd_bus_message_read_array(m, 'y', &context_data, &context_size)) < 0) return r;
      if ((r = sd_bus_message_read_basic(m, 'u', &length)) < 0) return r;
      if (length == 0) return reply_error(m, error::make(error::kInvalidArgument, "length must be greater than 0"));
      auto call = association_call(m, userdata);
      if (auto* e = std::get_if<BusError>(&call)) return reply_error(m, *e);
      auto& [id, caller] = std::get<0>(call);
      const auto* bytes = static_cast<const std::uint8_t*>(context_data);
      std::vector<std::uint8_t> context(bytes, bytes + context_size);
      auto result = self(userdata).backend_.export_keying_material(caller, id, label, context, length);
      if (auto* e = std::get_if<BusError>(&result)) return reply_error(m, *e);
      auto& material = std::get<std::vector<std::uint8_t>>(result);

      MessageRef reply;
      r = sd_bus_message_new_method_return(m, reply.out());
      if (r >= 0) r = sd_bus_message_sensitive(reply.get());  // erased when sd-bus frees it
      if (r >= 0) r = sd_bus_message_append_array(reply.get(), 'y', material.data(), material.size());
      if (r >= 0) r = sd_bus_send(nullptr, reply.get(), nullptr);
      explicit_bzero(material.data(), material.size());
      return r < 0 ? r : 1;
    });
  }

  static int terminate(sd_bus_message* m, void* userdata, sd_bus_error* ret_error) {
    return guarded(ret_error, [&] {
      auto call = association_call(m, userdata);
      if (auto* e = std::get_if<BusError>(&call)) return reply_error(m, *e);
      auto& [id, caller] = std::get<0>(call);
      if (auto e = self(userdata).backend_.terminate(caller, id)) return reply_error(m, *e);
      return sd_bus_reply_method_return(m, "");
    });
  }

  // Replies from the bus daemon and from applications.

  static int on_name_owner_changed(sd_bus_message* m, void* userdata, sd_bus_error*) {
    const char *name = nullptr, *old_owner = nullptr, *new_owner = nullptr;
    if (sd_bus_message_read(m, "sss", &name, &old_owner, &new_owner) < 0) return 0;
    if (name && name[0] == ':' && (!new_owner || !*new_owner)) self(userdata).forget_caller(name);
    return 0;
  }

  static int on_name_reply(sd_bus_message* reply, void* userdata, sd_bus_error*) {
    BusService& service = self(userdata);
    bool acquired = false;
    std::string problem;
    if (const sd_bus_error* e = sd_bus_message_get_error(reply)) {
      problem = std::string(e->name ? e->name : "") + ": " + (e->message ? e->message : "");
    } else {
      std::uint32_t result = 0;
      if (sd_bus_message_read_basic(reply, 'u', &result) < 0) {
        problem = "unreadable reply to RequestName";
      } else if (result == 1 /* primary owner */ || result == 4 /* already owner */) {
        acquired = true;
      } else if (result == 3 /* exists */) {
        problem = std::string("the name ") + kBusName + " is owned by another process";
      } else {
        problem = "RequestName answered " + std::to_string(result);
      }
    }
    if (acquired)
      core::log::info("acquired the bus name", {{"name", kBusName}});
    else
      core::log::error("could not acquire the bus name", {{"name", kBusName}, {"error", problem}});
    service.name_slot_.reset();
    if (service.name_callback_) service.name_callback_(acquired, problem);
    return 1;
  }

  static int on_validation_reply(sd_bus_message* reply, void* userdata, sd_bus_error*) {
    auto* pending = static_cast<PendingValidation*>(userdata);
    BusService* service = pending->service;
    std::uint64_t token = pending->token;
    if (const sd_bus_error* e = sd_bus_message_get_error(reply)) {
      std::string reason = "the application's peer validator (" + pending->peer + ") failed: " +
                           (e->name ? e->name : "") + ": " + (e->message ? e->message : "");
      service->finish_validation(token, false, std::move(reason));
      return 1;
    }
    const char* signature = sd_bus_message_get_signature(reply, 1);
    if (!signature || std::string_view(signature) != "bs") {
      service->finish_validation(token, false,
                                 "the application's peer validator (" + pending->peer + ") answered with type '" +
                                     (signature ? signature : "") + "', expected '(bs)'");
      return 1;
    }
    int accept = 0;
    const char* reason = nullptr;
    if (sd_bus_message_read(reply, "bs", &accept, &reason) < 0) {
      service->finish_validation(token, false, "the application's peer validator sent an unreadable answer");
      return 1;
    }
    std::string why = reason ? reason : "";
    if (!accept && why.empty()) why = "the application's peer validator rejected the peer";
    service->finish_validation(token, accept != 0, std::move(why));
    return 1;
  }

  static const sd_bus_vtable* manager_vtable() {
    static const sd_bus_vtable vtable[] = {
      SD_BUS_VTABLE_START(0),
      SD_BUS_PROPERTY("Version", "s", manager_property, 0, SD_BUS_VTABLE_PROPERTY_CONST),
      SD_BUS_PROPERTY("KernelFeatures", "as", manager_property, 0, 0),
      SD_BUS_PROPERTY("SessionCacheEntries", "u", manager_property, 0, 0),
      SD_BUS_PROPERTY("Statistics", "a{st}", manager_property, 0, 0),
      SD_BUS_WRITABLE_PROPERTY("SessionCacheCapacity", "u", manager_property,
                               set_session_cache_capacity, 0,
                               SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE | SD_BUS_VTABLE_UNPRIVILEGED),
      SD_BUS_METHOD_WITH_ARGS("SecureSocket", SD_BUS_ARGS("h", fd, "s", role, "a{sv}", props),
                              SD_BUS_RESULT("h", fd, "o", association), secure_socket,
                              SD_BUS_VTABLE_UNPRIVILEGED),
      SD_BUS_METHOD_WITH_ARGS("Connect", SD_BUS_ARGS("s", host, "q", port, "a{sv}", props),
                              SD_BUS_RESULT("h", fd, "o", association), connect,
                              SD_BUS_VTABLE_UNPRIVILEGED),
      SD_BUS_METHOD_WITH_ARGS("ListAssociations", SD_BUS_NO_ARGS, SD_BUS_RESULT("ao", associations),
                              list_associations, SD_BUS_VTABLE_UNPRIVILEGED),
      SD_BUS_METHOD_WITH_ARGS("FlushSessionCache", SD_BUS_NO_ARGS, SD_BUS_RESULT("u", entries_removed),
                              flush_session_cache, SD_BUS_VTABLE_UNPRIVILEGED),
      SD_BUS_METHOD_WITH_ARGS("EstablishTunnel", SD_BUS_ARGS("s", peer, "a{sv}", props),
                              SD_BUS_RESULT("o", association), establish_tunnel, SD_BUS_VTABLE_UNPRIVILEGED),
      SD_BUS_METHOD_WITH_ARGS("ListTunnels", SD_BUS_NO_ARGS, SD_BUS_RESULT("a(ssssso)", tunnels), list_tunnels,
                              SD_BUS_VTABLE_UNPRIVILEGED),
      SD_BUS_METHOD_WITH_ARGS("GetPublicKey", SD_BUS_ARGS("s", identity), SD_BUS_RESULT("s", public_key),
                              get_public_key, SD_BUS_VTABLE_UNPRIVILEGED),
      SD_BUS_VTABLE_END,
    };
    return vtable;
  }

  #define TAPSEC_ASSOCIATION_PROPERTY(name, type, flags) \
    SD_BUS_PROPERTY(name, type, association_property, 0, flags)

  // Fixed at the handshake: const. Epoch, expiry, state and addresses change
  // with events and are announced; traffic counters change all the time and
  // are read on demand.
  static const sd_bus_vtable* association_vtable() {
    static const sd_bus_vtable vtable[] = {
      SD_BUS_VTABLE_START(0),
      TAPSEC_ASSOCIATION_PROPERTY("Protocol", "s", SD_BUS_VTABLE_PROPERTY_CONST),
      TAPSEC_ASSOCIATION_PROPERTY("Version", "s", SD_BUS_VTABLE_PROPERTY_CONST),
      TAPSEC_ASSOCIATION_PROPERTY("Cipher", "s", SD_BUS_VTABLE_PROPERTY_CONST),
      TAPSEC_ASSOCIATION_PROPERTY("Group", "s", SD_BUS_VTABLE_PROPERTY_CONST),
      TAPSEC_ASSOCIATION_PROPERTY("Role", "s", SD_BUS_VTABLE_PROPERTY_CONST),
      TAPSEC_ASSOCIATION_PROPERTY("LocalIdentity", "s", SD_BUS_VTABLE_PROPERTY_CONST),
      TAPSEC_ASSOCIATION_PROPERTY("PeerIdentity", "s", SD_BUS_VTABLE_PROPERTY_CONST),
      TAPSEC_ASSOCIATION_PROPERTY("ServerName", "s", SD_BUS_VTABLE_PROPERTY_CONST),
      TAPSEC_ASSOCIATION_PROPERTY("ALPN", "s", SD_BUS_VTABLE_PROPERTY_CONST),
      TAPSEC_ASSOCIATION_PROPERTY("Resumed", "b", SD_BUS_VTABLE_PROPERTY_CONST),
      TAPSEC_ASSOCIATION_PROPERTY("Offload", "s", SD_BUS_VTABLE_PROPERTY_CONST),
      TAPSEC_ASSOCIATION_PROPERTY("KeyEpoch", "t", SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
      TAPSEC_ASSOCIATION_PROPERTY("BytesSent", "t", 0),
      TAPSEC_ASSOCIATION_PROPERTY("BytesReceived", "t", 0),
      TAPSEC_ASSOCIATION_PROPERTY("RecordsSent", "t", 0),
      TAPSEC_ASSOCIATION_PROPERTY("RecordsReceived", "t", 0),
      TAPSEC_ASSOCIATION_PROPERTY("ExpiresAt", "t", SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
      TAPSEC_ASSOCIATION_PROPERTY("State", "s", SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
      TAPSEC_ASSOCIATION_PROPERTY("LocalAddress", "s", SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
      TAPSEC_ASSOCIATION_PROPERTY("PeerAddress", "s", SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
      TAPSEC_ASSOCIATION_PROPERTY("OwnerUid", "u", SD_BUS_VTABLE_PROPERTY_CONST),
      TAPSEC_ASSOCIATION_PROPERTY("CreatedAt", "t", SD_BUS_VTABLE_PROPERTY_CONST),
      TAPSEC_ASSOCIATION_PROPERTY("Parent", "o", SD_BUS_VTABLE_PROPERTY_CONST),
      TAPSEC_ASSOCIATION_PROPERTY("TunnelName", "s", SD_BUS_VTABLE_PROPERTY_CONST),
      TAPSEC_ASSOCIATION_PROPERTY("Mode", "s", SD_BUS_VTABLE_PROPERTY_CONST),
      TAPSEC_ASSOCIATION_PROPERTY("LocalTrafficSelectors", "as", SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
      TAPSEC_ASSOCIATION_PROPERTY("RemoteTrafficSelectors", "as", SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
      TAPSEC_ASSOCIATION_PROPERTY("InboundSPI", "s", SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
      TAPSEC_ASSOCIATION_PROPERTY("OutboundSPI", "s", SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
      TAPSEC_ASSOCIATION_PROPERTY("Encapsulation", "s", SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
      TAPSEC_ASSOCIATION_PROPERTY("PacketsSent", "t", 0),
      TAPSEC_ASSOCIATION_PROPERTY("PacketsReceived", "t", 0),
      TAPSEC_ASSOCIATION_PROPERTY("Interface", "s", SD_BUS_VTABLE_PROPERTY_CONST),
      TAPSEC_ASSOCIATION_PROPERTY("PublicKey", "s", SD_BUS_VTABLE_PROPERTY_CONST),
      TAPSEC_ASSOCIATION_PROPERTY("PeerPublicKey", "s", SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
      TAPSEC_ASSOCIATION_PROPERTY("ListenPort", "q", SD_BUS_VTABLE_PROPERTY_CONST),
      TAPSEC_ASSOCIATION_PROPERTY("LastHandshake", "t", 0),
      TAPSEC_ASSOCIATION_PROPERTY("PresharedKey", "s", SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
      SD_BUS_METHOD_WITH_ARGS("UpdateKeys", SD_BUS_ARGS("b", request_peer), SD_BUS_NO_RESULT,
                              update_keys, SD_BUS_VTABLE_UNPRIVILEGED),
      SD_BUS_METHOD_WITH_ARGS("ExportKeyingMaterial", SD_BUS_ARGS("s", label, "ay", context, "u", length),
                              SD_BUS_RESULT("ay", material), export_keying_material,
                              SD_BUS_VTABLE_UNPRIVILEGED | SD_BUS_VTABLE_SENSITIVE),
      SD_BUS_METHOD_WITH_ARGS("Terminate", SD_BUS_NO_ARGS, SD_BUS_NO_RESULT, terminate,
                              SD_BUS_VTABLE_UNPRIVILEGED),
      SD_BUS_SIGNAL_WITH_ARGS("KeyExpiring", SD_BUS_ARGS("t", remaining_records), 0),
      SD_BUS_SIGNAL_WITH_ARGS("KeysUpdated", SD_BUS_ARGS("t", epoch), 0),
      SD_BUS_SIGNAL_WITH_ARGS("PathChanged", SD_BUS_ARGS("s", old_path, "s", new_path), 0),
      SD_BUS_SIGNAL_WITH_ARGS("Terminated", SD_BUS_ARGS("s", reason), 0),
      SD_BUS_VTABLE_END,
    };
    return vtable;
  }

  #undef TAPSEC_ASSOCIATION_PROPERTY
};

namespace {

void warn_if_failed(int r, std::string_view what, std::uint64_t id) {
  if (r < 0)
    core::log::warning("could not emit a bus signal",
                       {{"signal", std::string(what)}, {"association", std::to_string(id)}, {"errno", std::strerror(-r)}});
}

}  // namespace

BusService::BusService(sd_bus* bus, Backend& backend) : BusService(bus, backend, Options{}) {}

BusService::BusService(sd_bus* bus, Backend& backend, Options options)
    : bus_(BusRef::share(bus)), backend_(backend), options_(options) {}

BusService::~BusService() {
  if (started_) backend_.set_publisher(nullptr);
  // Dropping the slots unregisters the objects and cancels pending calls
  // (their callbacks do not run).
  pending_validations_.clear();
  name_slot_.reset();
  slots_.clear();
}

int BusService::start() {
  if (started_) return -EALREADY;
  sd_bus* bus = bus_.get();
  auto add = [&](const char* what, int r, SlotRef slot) {
    if (r >= 0) slots_.push_back(std::move(slot));
    else core::log::error("could not register on the bus", {{"what", what}, {"errno", std::strerror(-r)}});
    return r;
  };
  SlotRef slot;
  int r = add("manager", sd_bus_add_object_vtable(bus, slot.out(), kManagerPath, kManagerInterface, Handlers::manager_vtable(), this),
              slot);
  if (r >= 0)
    r = add("object manager", sd_bus_add_object_manager(bus, slot.out(), kManagerPath), slot);
  if (r >= 0)
    r = add("associations",
            sd_bus_add_fallback_vtable(bus, slot.out(), kAssociationPrefix, kAssociationInterface, Handlers::association_vtable(),
                                       Handlers::find_association, this),
            slot);
  // Both nodes enumerate the associations: sd-bus asks the manager's node
  // for GetManagedObjects and the prefix node for Introspect.
  if (r >= 0)
    r = add("association enumerator",
            sd_bus_add_node_enumerator(bus, slot.out(), kAssociationPrefix, Handlers::enumerate_associations, this),
            slot);
  if (r >= 0)
    r = add("association enumerator",
            sd_bus_add_node_enumerator(bus, slot.out(), kManagerPath, Handlers::enumerate_associations, this),
            slot);
  // A caller that leaves the bus is forgotten: it watches nothing more, and
  // its unique name is never used again.
  if (r >= 0)
    r = add("caller departures",
            sd_bus_match_signal(bus, slot.out(), "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                                "NameOwnerChanged", Handlers::on_name_owner_changed, this),
            slot);
  if (r >= 0 && options_.request_name) {
    r = sd_bus_request_name_async(bus, name_slot_.out(), kBusName, 0, Handlers::on_name_reply, this);
    if (r < 0) core::log::error("could not request the bus name", {{"name", kBusName}, {"errno", std::strerror(-r)}});
  }
  if (r < 0) {
    slots_.clear();
    name_slot_.reset();
    return r;
  }
  started_ = true;
  backend_.set_publisher(this);
  return 0;
}

void BusService::send_to_watchers(std::uint64_t id, const char* path, const char* interface, const char* member,
                                  const std::function<int(sd_bus_message*)>& append) {
  auto owner = owner_of(id);
  if (!owner) return;
  for (const auto& [name, record] : callers_) {
    if (!backend_.may_observe(record.credentials, *owner)) continue;
    MessageRef signal;
    int r = sd_bus_message_new_signal(bus_.get(), signal.out(), path, interface, member);
    if (r >= 0) r = sd_bus_message_set_destination(signal.get(), name.c_str());
    if (r >= 0) r = append(signal.get());
    if (r >= 0) r = sd_bus_send(bus_.get(), signal.get(), nullptr);
    warn_if_failed(r, member, id);
  }
}

void BusService::emit_properties_changed(std::uint64_t id, std::initializer_list<const char*> properties) {
  auto info = backend_.association(id);
  if (!info) return;
  std::string path = association_path(id);
  send_to_watchers(id, path.c_str(), "org.freedesktop.DBus.Properties", "PropertiesChanged", [&](sd_bus_message* m) {
    int r = sd_bus_message_append_basic(m, 's', kAssociationInterface);
    if (r >= 0) r = append_property_dict(m, *info, properties);
    if (r >= 0) r = sd_bus_message_append(m, "as", 0);
    return r;
  });
}

void BusService::association_added(std::uint64_t id) {
  info_cache_ = {};
  auto info = backend_.association(id);
  if (!info) return;
  owners_[id] = info->owner_uid;
  std::string path = association_path(id);
  send_to_watchers(id, kManagerPath, "org.freedesktop.DBus.ObjectManager", "InterfacesAdded", [&](sd_bus_message* m) {
    int r = sd_bus_message_append_basic(m, 'o', path.c_str());
    if (r >= 0) r = sd_bus_message_open_container(m, 'a', "{sa{sv}}");
    if (r >= 0) r = sd_bus_message_open_container(m, 'e', "sa{sv}");
    if (r >= 0) r = sd_bus_message_append_basic(m, 's', kAssociationInterface);
    if (r >= 0) r = append_property_dict(m, *info, {});
    if (r >= 0) r = sd_bus_message_close_container(m);
    for (const char* standard : kStandardInterfaces)
      if (r >= 0) r = sd_bus_message_append(m, "{sa{sv}}", standard, 0);
    return r < 0 ? r : sd_bus_message_close_container(m);
  });
}

void BusService::association_removed(std::uint64_t id) {
  info_cache_ = {};
  std::string path = association_path(id);
  send_to_watchers(id, kManagerPath, "org.freedesktop.DBus.ObjectManager", "InterfacesRemoved",
                   [&](sd_bus_message* m) {
                     return sd_bus_message_append(m, "oas", path.c_str(), 4, kAssociationInterface,
                                                  kStandardInterfaces[0], kStandardInterfaces[1],
                                                  kStandardInterfaces[2]);
                   });
  owners_.erase(id);
}

void BusService::key_expiring(std::uint64_t id, std::uint64_t remaining_records) {
  std::string path = association_path(id);
  send_to_watchers(id, path.c_str(), kAssociationInterface, "KeyExpiring",
                   [&](sd_bus_message* m) { return sd_bus_message_append(m, "t", remaining_records); });
}

void BusService::keys_updated(std::uint64_t id, std::uint64_t epoch) {
  info_cache_ = {};
  std::string path = association_path(id);
  send_to_watchers(id, path.c_str(), kAssociationInterface, "KeysUpdated",
                   [&](sd_bus_message* m) { return sd_bus_message_append(m, "t", epoch); });
  emit_properties_changed(id, {"KeyEpoch", "ExpiresAt"});
}

void BusService::path_changed(std::uint64_t id, const std::string& old_path, const std::string& new_path) {
  info_cache_ = {};
  std::string path = association_path(id);
  send_to_watchers(id, path.c_str(), kAssociationInterface, "PathChanged", [&](sd_bus_message* m) {
    return sd_bus_message_append(m, "ss", old_path.c_str(), new_path.c_str());
  });
  emit_properties_changed(id, {"LocalAddress", "PeerAddress"});
}

void BusService::terminated(std::uint64_t id, const std::string& reason) {
  info_cache_ = {};
  std::string path = association_path(id);
  send_to_watchers(id, path.c_str(), kAssociationInterface, "Terminated",
                   [&](sd_bus_message* m) { return sd_bus_message_append(m, "s", reason.c_str()); });
  // Only while the object is still there; once removed, InterfacesRemoved says it all.
  emit_properties_changed(id, {"State"});
}

void BusService::validate_peer(const std::string& unique_name, const std::string& object_path,
                               const std::string& protocol, const std::string& server_name,
                               const std::vector<std::vector<std::uint8_t>>& chain_der,
                               std::function<void(bool accept, std::string reason)> done) {
  auto pending = std::make_unique<PendingValidation>();
  pending->service = this;
  pending->token = next_validation_token_++;
  pending->peer = unique_name + " " + object_path;
  pending->done = std::move(done);

  auto fail = [&](std::string reason) {
    core::log::warning("could not call the application's peer validator",
                       {{"peer", pending->peer}, {"reason", reason}});
    pending->done(false, std::move(reason));
  };
  if (unique_name.empty() || !sd_bus_service_name_is_valid(unique_name.c_str()))
    return fail("no valid bus name to call the peer validator on");
  if (object_path.empty() || !sd_bus_object_path_is_valid(object_path.c_str()))
    return fail("the validator object path \"" + object_path + "\" is not valid");

  MessageRef call;
  int r = sd_bus_message_new_method_call(bus_.get(), call.out(), unique_name.c_str(), object_path.c_str(),
                                         kPeerValidatorInterface, "ValidatePeer");
  if (r >= 0) r = sd_bus_message_append(call.get(), "ss", protocol.c_str(), server_name.c_str());
  if (r >= 0) r = sd_bus_message_open_container(call.get(), 'a', "ay");
  for (const auto& certificate : chain_der) {
    if (r < 0) break;
    r = sd_bus_message_append_array(call.get(), 'y', certificate.data(), certificate.size());
  }
  if (r >= 0) r = sd_bus_message_close_container(call.get());
  if (r >= 0)
    r = sd_bus_call_async(bus_.get(), pending->slot.out(), call.get(), Handlers::on_validation_reply, pending.get(),
                          static_cast<std::uint64_t>(options_.validator_timeout.count()));
  if (r < 0) return fail(std::string("could not call the peer validator: ") + std::strerror(-r));
  std::uint64_t token = pending->token;
  pending_validations_.emplace(token, std::move(pending));
}

const std::optional<AssociationInfo>& BusService::association_for(const sd_bus_message* message, std::uint64_t id) {
  // The message address alone could repeat once a message is freed; the
  // short age bound keeps a reused address from serving old values.
  auto now = std::chrono::steady_clock::now();
  InfoCache& c = info_cache_;
  if (c.message != message || c.id != id || now - c.read_at > std::chrono::milliseconds(20)) {
    c.message = message;
    c.id = id;
    c.read_at = now;
    c.info = backend_.association(id);
  }
  return c.info;
}

std::variant<CallerCredentials, BusError> BusService::caller_credentials(sd_bus_message* m) {
  // A connection's uid and groups are fixed when it connects, and unique
  // names are never reused on a bus: ask the bus daemon once per caller,
  // not once per call (each query is a blocking round trip).
  const char* sender = sd_bus_message_get_sender(m);
  if (!sender) return error::make(error::kPolicyDenied, "refused: the call names no sender");
  if (auto it = callers_.find(sender); it != callers_.end()) {
    recheck_caller(it->second);
    return it->second.credentials;
  }
  auto fresh = identify_caller(bus_.get(), sender);
  if (auto* e = std::get_if<BusError>(&fresh)) return *e;
  while (callers_.size() >= kCallerCacheCapacity && !caller_order_.empty()) {
    callers_.erase(caller_order_.front());
    caller_order_.pop_front();
  }
  auto& record = callers_.emplace(sender, std::move(std::get<CallerRecord>(fresh))).first->second;
  caller_order_.push_back(sender);
  return record.credentials;
}

bool BusService::current_caller_may_observe(sd_bus* bus, uid_t owner) {
  sd_bus_message* call = sd_bus_get_current_message(bus);
  if (!call) return false;
  auto caller = caller_credentials(call);
  auto* known = std::get_if<CallerCredentials>(&caller);
  return known && backend_.may_observe(*known, owner);
}

std::optional<uid_t> BusService::owner_of(std::uint64_t id) {
  if (auto it = owners_.find(id); it != owners_.end()) return it->second;
  // Not announced (yet): ask the backend.
  if (auto info = backend_.association(id)) return info->owner_uid;
  return std::nullopt;
}

void BusService::forget_caller(const std::string& unique_name) {
  if (!callers_.erase(unique_name)) return;
  // The order list keeps departed names until it is twice the cache's size.
  if (caller_order_.size() > 2 * kCallerCacheCapacity) {
    std::erase_if(caller_order_, [&](const std::string& name) { return !callers_.count(name); });
  }
}

void BusService::finish_validation(std::uint64_t token, bool accept, std::string reason) {
  auto it = pending_validations_.find(token);
  if (it == pending_validations_.end()) return;
  // Take it out first: `done` may start another validation.
  std::unique_ptr<PendingValidation> pending = std::move(it->second);
  pending_validations_.erase(it);
  auto done = std::move(pending->done);
  // The slot is the one whose callback is running; sd-bus holds its own
  // reference until the callback returns.
  pending.reset();
  if (done) done(accept, std::move(reason));
}

}  // namespace tapsec::bus
