// FAKE agent, for the clients' marshalling tests only (see fake_agent.h).
#include "tests/unit/clients/fake_agent.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <time.h>

#include <cstring>

namespace tapsec::testing {

using ctl::MessagePtr;
using ctl::Value;

std::vector<std::uint8_t> FakeAgent::fake_export(const std::string& label, const std::vector<std::uint8_t>& context,
                                                 std::uint32_t length) {
  std::vector<std::uint8_t> out(length);
  for (std::uint32_t i = 0; i < length; i++)
    out[i] = static_cast<std::uint8_t>(i * 7 + label.size() * 13 + context.size() * 31);
  return out;
}

FakeAgent::Request FakeAgent::last_request() {
  std::lock_guard lock(mutex_);
  return last_request_;
}

FakeAgent::Request FakeAgent::last_tunnel_request() {
  std::lock_guard lock(mutex_);
  return last_tunnel_request_;
}

std::vector<std::string> FakeAgent::association_calls() {
  std::lock_guard lock(mutex_);
  return association_calls_;
}

// Reads the a{sv} props; with a "validator", calls back into the caller as
// the real agent would in the middle of a handshake; then replies (h, o).
int FakeAgent::finish_request(sd_bus_message* m, Request& request, int fd, sd_bus_error* error) {
  int r = ctl::read_property_dict(m, request.props);
  if (r < 0) return r;
  request.signature = sd_bus_message_get_signature(m, 1);
  struct stat st {};
  if (fstat(fd, &st) == 0) request.socket_inode = st.st_ino;

  const Value* identity = ctl::find_property(request.props, "identity");
  if (identity && identity->text == "missing") {
    std::lock_guard lock(mutex_);
    last_request_ = request;
    return sd_bus_error_set(error, "org.tapsec1.Error.NoSuchIdentity", "No identity \"missing\" is defined");
  }

  if (const Value* validator = ctl::find_property(request.props, "validator")) {
    const Value* server_name = ctl::find_property(request.props, "server-name");
    sd_bus_message* call = nullptr;
    r = sd_bus_message_new_method_call(bus_.get(), &call, sd_bus_message_get_sender(m), validator->text.c_str(),
                                       "org.tapsec1.PeerValidator", "ValidatePeer");
    MessagePtr owned_call(call);
    if (r >= 0) r = sd_bus_message_append(call, "ss", "tls", server_name ? server_name->text.c_str() : "");
    if (r >= 0) r = sd_bus_message_open_container(call, 'a', "ay");
    const char leaf[] = "fake leaf certificate";
    const char issuer[] = "fake issuer";
    if (r >= 0) r = sd_bus_message_append_array(call, 'y', leaf, sizeof(leaf) - 1);
    if (r >= 0) r = sd_bus_message_append_array(call, 'y', issuer, sizeof(issuer) - 1);
    if (r >= 0) r = sd_bus_message_close_container(call);
    sd_bus_message* reply = nullptr;
    ctl::BusError call_error;
    if (r >= 0) r = sd_bus_call(bus_.get(), call, 5 * 1000 * 1000, call_error.get(), &reply);
    MessagePtr owned_reply(reply);
    request.validator_called = true;
    int accept = 0;
    const char* reason = "";
    if (r >= 0) r = sd_bus_message_read(reply, "bs", &accept, &reason);
    request.validator_accepted = r >= 0 && accept;
    request.validator_reason = r >= 0 ? reason : call_error.message();
    {
      std::lock_guard lock(mutex_);
      last_request_ = request;
    }
    if (!request.validator_accepted)
      return sd_bus_error_setf(error, "org.tapsec1.Error.PeerNotValidated", "The application rejected the peer: %s",
                               request.validator_reason.c_str());
  } else {
    std::lock_guard lock(mutex_);
    last_request_ = request;
  }
  return sd_bus_reply_method_return(m, "ho", fd, kAssociationPath);
}

int FakeAgent::on_secure_socket(sd_bus_message* m, void* userdata, sd_bus_error* error) {
  auto* self = static_cast<FakeAgent*>(userdata);
  Request request;
  request.method = "SecureSocket";
  int fd = -1;
  const char* role = nullptr;
  int r = sd_bus_message_read(m, "hs", &fd, &role);
  if (r < 0) return r;
  request.role = role;
  return self->finish_request(m, request, fd, error);
}

int FakeAgent::on_connect(sd_bus_message* m, void* userdata, sd_bus_error* error) {
  auto* self = static_cast<FakeAgent*>(userdata);
  Request request;
  request.method = "Connect";
  const char* host = nullptr;
  std::uint16_t port = 0;
  int r = sd_bus_message_read(m, "sq", &host, &port);
  if (r < 0) return r;
  request.host = host;
  request.port = port;
  int pair[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) < 0) return -errno;
  const std::string greeting = "hello " + request.host + ":" + std::to_string(port) + "\n";
  if (write(pair[1], greeting.data(), greeting.size()) < 0) return -errno;
  shutdown(pair[1], SHUT_WR);
  {
    std::lock_guard lock(self->mutex_);
    self->peer_ends_.push_back(pair[1]);
  }
  r = self->finish_request(m, request, pair[0], error);
  close(pair[0]);
  return r;
}

int FakeAgent::on_list(sd_bus_message* m, void* userdata, sd_bus_error*) {
  auto* self = static_cast<FakeAgent*>(userdata);
  // Listed out of order on purpose: clients sort by id.
  if (self->with_wireguard_)
    return sd_bus_reply_method_return(m, "ao", 4, kWgSilentPeerPath, kAssociationPath, kWgInterfacePath, kWgPeerPath);
  if (self->with_tunnels_)
    return sd_bus_reply_method_return(m, "ao", 3, kChildSaPath, kAssociationPath, kIkeSaPath);
  return sd_bus_reply_method_return(m, "ao", 1, kAssociationPath);
}

// Peer "branch" comes up as IKE SA 2; "refused" fails as a peer would make
// it fail; anything else is not a tunnel the fake knows.
int FakeAgent::on_establish_tunnel(sd_bus_message* m, void* userdata, sd_bus_error* error) {
  auto* self = static_cast<FakeAgent*>(userdata);
  Request request;
  request.method = "EstablishTunnel";
  const char* peer = nullptr;
  int r = sd_bus_message_read(m, "s", &peer);
  if (r < 0) return r;
  request.host = peer;
  r = ctl::read_property_dict(m, request.props);
  if (r < 0) return r;
  request.signature = sd_bus_message_get_signature(m, 1);
  {
    std::lock_guard lock(self->mutex_);
    self->last_tunnel_request_ = request;
  }
  if (request.host == "refused")
    return sd_bus_error_set(error, "org.tapsec1.Error.HandshakeFailed",
                            "the peer answered IKE_AUTH with AUTHENTICATION_FAILED");
  const ctl::Value* protocols = ctl::find_property(request.props, "protocols");
  const bool wireguard = protocols && ctl::value_to_text(*protocols) == "wireguard";
  if (request.host == "to-beta" && wireguard) return sd_bus_reply_method_return(m, "o", kWgInterfacePath);
  if (request.host != "branch" && request.host != "192.0.2.9")
    return sd_bus_error_setf(error, "org.tapsec1.Error.InvalidArgument", "no tunnel '%s' in the policy",
                             request.host.c_str());
  return sd_bus_reply_method_return(m, "o", kIkeSaPath);
}

int FakeAgent::on_list_tunnels(sd_bus_message* m, void*, sd_bus_error*) {
  return sd_bus_reply_method_return(m, "a(ssssso)", 2, "branch", "ikev2", "198.51.100.7", "trap", "up", kIkeSaPath,
                                    "partner", "ikev2", "vpn.partner.example", "none", "down", "/");
}

// "wg-host" is the one WireGuard identity the fake knows.
int FakeAgent::on_get_public_key(sd_bus_message* m, void*, sd_bus_error* error) {
  const char* identity = nullptr;
  int r = sd_bus_message_read(m, "s", &identity);
  if (r < 0) return r;
  if (*identity == '\0' || std::strchr(identity, '/'))
    return sd_bus_error_setf(error, "org.tapsec1.Error.InvalidArguments", "'%s' is not an identity name", identity);
  if (std::string(identity) != "wg-host")
    return sd_bus_error_setf(error, "org.tapsec1.Error.UnknownIdentity", "no [Identity %s] with Type=wireguard",
                             identity);
  return sd_bus_reply_method_return(m, "s", kWgPublicKey);
}

int FakeAgent::on_flush(sd_bus_message* m, void*, sd_bus_error*) {
  return sd_bus_reply_method_return(m, "u", 7u);
}

int FakeAgent::on_update_keys(sd_bus_message* m, void* userdata, sd_bus_error*) {
  auto* self = static_cast<FakeAgent*>(userdata);
  int request_peer = 0;
  int r = sd_bus_message_read(m, "b", &request_peer);
  if (r < 0) return r;
  std::uint64_t epoch;
  {
    std::lock_guard lock(self->mutex_);
    self->association_calls_.push_back(request_peer ? "UpdateKeys(true)" : "UpdateKeys(false)");
    epoch = ++self->key_epoch_;
  }
  sd_bus_emit_signal(sd_bus_message_get_bus(m), kAssociationPath, "org.tapsec1.Association", "KeysUpdated", "t",
                     epoch);
  return sd_bus_reply_method_return(m, "");
}

int FakeAgent::on_export(sd_bus_message* m, void* userdata, sd_bus_error* error) {
  auto* self = static_cast<FakeAgent*>(userdata);
  const char* label = nullptr;
  const void* context = nullptr;
  size_t context_size = 0;
  std::uint32_t length = 0;
  int r = sd_bus_message_read(m, "s", &label);
  if (r >= 0) r = sd_bus_message_read_array(m, 'y', &context, &context_size);
  if (r >= 0) r = sd_bus_message_read(m, "u", &length);
  if (r < 0) return r;
  {
    std::lock_guard lock(self->mutex_);
    self->association_calls_.push_back("ExportKeyingMaterial(" + std::string(label) + "," +
                                       std::to_string(context_size) + "," + std::to_string(length) + ")");
  }
  if (std::string(label) == "denied")
    return sd_bus_error_set(error, "org.tapsec1.Error.ExportDenied", "Policy does not allow key export here");
  const auto* bytes = static_cast<const std::uint8_t*>(context);
  auto material = fake_export(label, std::vector<std::uint8_t>(bytes, bytes + context_size), length);
  sd_bus_message* reply = nullptr;
  r = sd_bus_message_new_method_return(m, &reply);
  MessagePtr owned(reply);
  if (r >= 0) r = sd_bus_message_append_array(reply, 'y', material.data(), material.size());
  if (r >= 0) r = sd_bus_send(nullptr, reply, nullptr);
  return r;
}

int FakeAgent::on_terminate(sd_bus_message* m, void* userdata, sd_bus_error*) {
  auto* self = static_cast<FakeAgent*>(userdata);
  {
    std::lock_guard lock(self->mutex_);
    self->association_calls_.push_back("Terminate()");
  }
  sd_bus_emit_signal(sd_bus_message_get_bus(m), kAssociationPath, "org.tapsec1.Association", "Terminated", "s",
                     "requested by the application");
  return sd_bus_reply_method_return(m, "");
}

// The IPsec properties of the IKE SA (2) and its Child SA (3); "" when the
// fake has no value of its own for the property there.
int tunnel_property(const std::string& path, const std::string& name, sd_bus_message* reply) {
  const bool ike = path == FakeAgent::kIkeSaPath;
  static const std::map<std::string, std::pair<std::string, std::string>> strings = {
      // name: {IKE SA, Child SA}
      {"Protocol", {"ikev2", "esp"}},
      {"Version", {"IKEv2", ""}},
      {"Cipher", {"AES_GCM_16_256/PRF_HMAC_SHA2_384", "AES_GCM_16_256"}},
      {"Group", {"CURVE_25519", ""}},
      {"Role", {"initiator", "initiator"}},
      {"LocalIdentity", {"gw-a.example.com", "gw-a.example.com"}},
      {"PeerIdentity", {"gw-b.example.com", "gw-b.example.com"}},
      {"ServerName", {"", ""}},
      {"ALPN", {"", ""}},
      {"Offload", {"kernel", "kernel"}},
      {"State", {"established", "established"}},
      {"LocalAddress", {"192.0.2.1:4500", "192.0.2.1:4500"}},
      {"PeerAddress", {"198.51.100.7:4500", "198.51.100.7:4500"}},
      {"TunnelName", {"branch", "branch"}},
      {"Mode", {"", "tunnel"}},
      {"InboundSPI", {"0x8a7f3e21c4d5b6a7", "0xc2a3e1f0"}},
      {"OutboundSPI", {"0x1c2d3e4f5a6b7c8d", "0x0a1b2c3d"}},
      {"Encapsulation", {"udp", "udp"}},
  };
  if (auto it = strings.find(name); it != strings.end())
    return sd_bus_message_append(reply, "s", (ike ? it->second.first : it->second.second).c_str());
  if (name == "Parent") return sd_bus_message_append(reply, "o", ike ? "/" : FakeAgent::kIkeSaPath);
  if (name == "LocalTrafficSelectors")
    return ike ? sd_bus_message_append(reply, "as", 0) : sd_bus_message_append(reply, "as", 1, "10.1.0.0/24");
  if (name == "RemoteTrafficSelectors")
    return ike ? sd_bus_message_append(reply, "as", 0)
               : sd_bus_message_append(reply, "as", 2, "10.2.0.0/24", "10.3.0.0/16[tcp/443]");
  if (name == "Resumed") return sd_bus_message_append(reply, "b", 0);
  if (name == "OwnerUid") return sd_bus_message_append(reply, "u", 0u);
  if (name == "KeyEpoch") return sd_bus_message_append(reply, "t", std::uint64_t{ike ? 0u : 1u});
  if (name == "BytesSent") return sd_bus_message_append(reply, "t", std::uint64_t{ike ? 1200u : 840000u});
  if (name == "BytesReceived") return sd_bus_message_append(reply, "t", std::uint64_t{ike ? 1100u : 910000u});
  if (name == "PacketsSent") return sd_bus_message_append(reply, "t", std::uint64_t{ike ? 4u : 700u});
  if (name == "PacketsReceived") return sd_bus_message_append(reply, "t", std::uint64_t{ike ? 4u : 650u});
  if (name == "RecordsSent" || name == "RecordsReceived") return sd_bus_message_append(reply, "t", std::uint64_t{0});
  if (name == "ExpiresAt")
    return sd_bus_message_append(reply, "t", std::uint64_t{ike ? 1700014400000000u : 1700003600000000u});
  if (name == "CreatedAt") return sd_bus_message_append(reply, "t", std::uint64_t{1700000000000000});
  return -ENOENT;
}

std::uint64_t now_usec() {
  struct timespec ts {};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000000 + static_cast<std::uint64_t>(ts.tv_nsec) / 1000;
}

// The WireGuard properties of the interface (4) and its peers (5, 6).
int wireguard_property(const std::string& path, const std::string& name, sd_bus_message* reply) {
  const bool link = path == FakeAgent::kWgInterfacePath;
  const bool talking = path == FakeAgent::kWgPeerPath;
  const auto text = [&](const char* value) { return sd_bus_message_append(reply, "s", value); };
  const auto number = [&](std::uint64_t value) { return sd_bus_message_append(reply, "t", value); };
  if (name == "Protocol") return text("wireguard");
  if (name == "Role") return text(link ? "interface" : "peer");
  if (name == "TunnelName") return text("to-beta");
  if (name == "Offload") return text("kernel");
  if (name == "Interface") return text("wg-beta");
  if (name == "PublicKey") return text(link ? FakeAgent::kWgPublicKey : "");
  if (name == "ListenPort") return sd_bus_message_append(reply, "q", static_cast<std::uint16_t>(link ? 51820 : 0));
  if (name == "LocalIdentity") return text(link ? "wg-host" : "");
  if (name == "LocalAddress") return text(link ? "10.9.0.1/24, fd00:9::1/64" : "");
  if (name == "State") return text(link ? "up" : talking ? "established" : "connecting");
  if (name == "Parent") return sd_bus_message_append(reply, "o", link ? "/" : FakeAgent::kWgInterfacePath);
  if (name == "PeerPublicKey")
    return text(link ? "" : talking ? FakeAgent::kWgPeerKey : FakeAgent::kWgSilentPeerKey);
  if (name == "PeerIdentity") return text(link ? "" : talking ? "CN=beta.example" : "wireguard:MiWQAZfP");
  if (name == "PeerAddress") return text(talking ? "192.0.2.2:51820" : "");
  if (name == "RemoteTrafficSelectors") {
    if (link) return sd_bus_message_append(reply, "as", 0);
    return talking ? sd_bus_message_append(reply, "as", 2, "10.9.0.2/32", "10.20.0.0/16")
                   : sd_bus_message_append(reply, "as", 1, "10.9.0.3/32");
  }
  if (name == "LocalTrafficSelectors") return sd_bus_message_append(reply, "as", 0);
  if (name == "BytesSent") return number(talking ? 3482 : 0);         // 3.40 KiB
  if (name == "BytesReceived") return number(talking ? 1229 : 0);     // 1.20 KiB
  if (name == "LastHandshake") return number(talking ? now_usec() - 12 * 1000000 : 0);
  if (name == "KeyEpoch") return number(talking ? 3 : 0);
  if (name == "PresharedKey") return text(link ? "" : talking ? "exchanged" : "static");
  if (name == "ExpiresAt") return number(talking ? now_usec() + 95 * 1000000 : 0);
  if (name == "CreatedAt") return number(1700000000000000);
  if (name == "OwnerUid") return sd_bus_message_append(reply, "u", 0u);
  if (name == "Resumed") return sd_bus_message_append(reply, "b", 0);
  if (name == "PacketsSent" || name == "PacketsReceived" || name == "RecordsSent" || name == "RecordsReceived")
    return number(0);
  return text("");  // the TLS and IPsec strings: empty here
}

int FakeAgent::get_property(sd_bus*, const char* path, const char* interface, const char* property,
                            sd_bus_message* reply, void* userdata, sd_bus_error*) {
  auto* self = static_cast<FakeAgent*>(userdata);
  const std::string name = property;
  const bool manager = std::string(interface) == "org.tapsec1.Manager";
  const std::string object = path;
  if (!manager && (object == kWgInterfacePath || object == kWgPeerPath || object == kWgSilentPeerPath))
    return wireguard_property(object, name, reply);
  // The WireGuard properties of the other associations: empty.
  if (name == "Interface" || name == "PublicKey" || name == "PeerPublicKey" || name == "PresharedKey")
    return sd_bus_message_append(reply, "s", "");
  if (name == "ListenPort") return sd_bus_message_append(reply, "q", std::uint16_t{0});
  if (name == "LastHandshake") return sd_bus_message_append(reply, "t", std::uint64_t{0});
  if (!manager && (std::string(path) == kIkeSaPath || std::string(path) == kChildSaPath))
    return tunnel_property(path, name, reply);
  if (manager && name == "Version") return sd_bus_message_append(reply, "s", "0.1.0-fake");
  if (name == "KernelFeatures") return sd_bus_message_append(reply, "as", 2, "ktls", "ktls-rekey");
  if (name == "SessionCacheEntries") return sd_bus_message_append(reply, "u", 7u);
  if (name == "SessionCacheCapacity") return sd_bus_message_append(reply, "u", 1024u);
  if (name == "Statistics")
    return sd_bus_message_append(reply, "a{st}", 2, "ike-dropped-malformed", std::uint64_t{3}, "ike-received",
                                 std::uint64_t{12});
  // Association
  static const std::map<std::string, std::string> strings = {
      {"Protocol", "tls"},
      {"Version", "TLSv1.3"},
      {"Cipher", "TLS_AES_128_GCM_SHA256"},
      {"Group", "X25519"},
      {"Role", "client"},
      {"LocalIdentity", ""},
      {"PeerIdentity", "CN=example.com \"quoted\""},
      {"ServerName", "example.com"},
      {"ALPN", "h2"},
      {"Offload", "kernel"},
      {"State", "established"},
      {"LocalAddress", "192.0.2.1:40000"},
      {"PeerAddress", "192.0.2.2:443"},
  };
  if (auto it = strings.find(name); it != strings.end()) return sd_bus_message_append(reply, "s", it->second.c_str());
  if (name == "Resumed") return sd_bus_message_append(reply, "b", 1);
  if (name == "OwnerUid") return sd_bus_message_append(reply, "u", 1000u);
  if (name == "KeyEpoch") {
    std::lock_guard lock(self->mutex_);
    return sd_bus_message_append(reply, "t", self->key_epoch_);
  }
  if (name == "BytesSent") return sd_bus_message_append(reply, "t", std::uint64_t{123456});
  if (name == "BytesReceived") return sd_bus_message_append(reply, "t", std::uint64_t{789});
  if (name == "RecordsSent" || name == "RecordsReceived") return sd_bus_message_append(reply, "t", std::uint64_t{3});
  if (name == "ExpiresAt") return sd_bus_message_append(reply, "t", std::uint64_t{0});
  if (name == "CreatedAt") return sd_bus_message_append(reply, "t", std::uint64_t{1700000000000000});
  // IPsec properties of a TLS association: empty.
  if (name == "Parent") return sd_bus_message_append(reply, "o", "/");
  if (name == "TunnelName" || name == "Mode" || name == "InboundSPI" || name == "OutboundSPI" ||
      name == "Encapsulation")
    return sd_bus_message_append(reply, "s", "");
  if (name == "LocalTrafficSelectors" || name == "RemoteTrafficSelectors")
    return sd_bus_message_append(reply, "as", 0);
  if (name == "PacketsSent" || name == "PacketsReceived") return sd_bus_message_append(reply, "t", std::uint64_t{0});
  return -ENOENT;
}

bool FakeAgent::start() {
  static const sd_bus_vtable manager_vtable[] = {
      SD_BUS_VTABLE_START(0),
      SD_BUS_METHOD("SecureSocket", "hsa{sv}", "ho", on_secure_socket, SD_BUS_VTABLE_UNPRIVILEGED),
      SD_BUS_METHOD("Connect", "sqa{sv}", "ho", on_connect, SD_BUS_VTABLE_UNPRIVILEGED),
      SD_BUS_METHOD("ListAssociations", "", "ao", on_list, SD_BUS_VTABLE_UNPRIVILEGED),
      SD_BUS_METHOD("FlushSessionCache", "", "u", on_flush, SD_BUS_VTABLE_UNPRIVILEGED),
      SD_BUS_METHOD("EstablishTunnel", "sa{sv}", "o", on_establish_tunnel, SD_BUS_VTABLE_UNPRIVILEGED),
      SD_BUS_METHOD("ListTunnels", "", "a(ssssso)", on_list_tunnels, SD_BUS_VTABLE_UNPRIVILEGED),
      SD_BUS_METHOD("GetPublicKey", "s", "s", on_get_public_key, SD_BUS_VTABLE_UNPRIVILEGED),
      SD_BUS_PROPERTY("Version", "s", get_property, 0, SD_BUS_VTABLE_PROPERTY_CONST),
      SD_BUS_PROPERTY("KernelFeatures", "as", get_property, 0, SD_BUS_VTABLE_PROPERTY_CONST),
      SD_BUS_PROPERTY("SessionCacheEntries", "u", get_property, 0, 0),
      SD_BUS_PROPERTY("SessionCacheCapacity", "u", get_property, 0, 0),
      SD_BUS_PROPERTY("Statistics", "a{st}", get_property, 0, 0),
      SD_BUS_VTABLE_END,
  };
#define FAKE_PROPERTY(name, type) SD_BUS_PROPERTY(name, type, get_property, 0, 0)
  static const sd_bus_vtable association_vtable[] = {
      SD_BUS_VTABLE_START(0),
      FAKE_PROPERTY("Protocol", "s"),
      FAKE_PROPERTY("Version", "s"),
      FAKE_PROPERTY("Cipher", "s"),
      FAKE_PROPERTY("Group", "s"),
      FAKE_PROPERTY("Role", "s"),
      FAKE_PROPERTY("LocalIdentity", "s"),
      FAKE_PROPERTY("PeerIdentity", "s"),
      FAKE_PROPERTY("ServerName", "s"),
      FAKE_PROPERTY("ALPN", "s"),
      FAKE_PROPERTY("Resumed", "b"),
      FAKE_PROPERTY("Offload", "s"),
      FAKE_PROPERTY("KeyEpoch", "t"),
      FAKE_PROPERTY("BytesSent", "t"),
      FAKE_PROPERTY("BytesReceived", "t"),
      FAKE_PROPERTY("RecordsSent", "t"),
      FAKE_PROPERTY("RecordsReceived", "t"),
      FAKE_PROPERTY("ExpiresAt", "t"),
      FAKE_PROPERTY("State", "s"),
      FAKE_PROPERTY("LocalAddress", "s"),
      FAKE_PROPERTY("PeerAddress", "s"),
      FAKE_PROPERTY("OwnerUid", "u"),
      FAKE_PROPERTY("CreatedAt", "t"),
      FAKE_PROPERTY("Parent", "o"),
      FAKE_PROPERTY("TunnelName", "s"),
      FAKE_PROPERTY("Mode", "s"),
      FAKE_PROPERTY("LocalTrafficSelectors", "as"),
      FAKE_PROPERTY("RemoteTrafficSelectors", "as"),
      FAKE_PROPERTY("InboundSPI", "s"),
      FAKE_PROPERTY("OutboundSPI", "s"),
      FAKE_PROPERTY("Encapsulation", "s"),
      FAKE_PROPERTY("PacketsSent", "t"),
      FAKE_PROPERTY("PacketsReceived", "t"),
      FAKE_PROPERTY("Interface", "s"),
      FAKE_PROPERTY("PublicKey", "s"),
      FAKE_PROPERTY("ListenPort", "q"),
      FAKE_PROPERTY("PeerPublicKey", "s"),
      FAKE_PROPERTY("LastHandshake", "t"),
      FAKE_PROPERTY("PresharedKey", "s"),
      SD_BUS_METHOD("UpdateKeys", "b", "", on_update_keys, SD_BUS_VTABLE_UNPRIVILEGED),
      SD_BUS_METHOD("ExportKeyingMaterial", "sayu", "ay", on_export, SD_BUS_VTABLE_UNPRIVILEGED),
      SD_BUS_METHOD("Terminate", "", "", on_terminate, SD_BUS_VTABLE_UNPRIVILEGED),
      SD_BUS_SIGNAL("KeysUpdated", "t", 0),
      SD_BUS_SIGNAL("Terminated", "s", 0),
      SD_BUS_VTABLE_END,
  };
#undef FAKE_PROPERTY
  if (ctl::open_bus(address_, bus_) < 0) return false;
  if (sd_bus_add_object_vtable(bus_.get(), nullptr, "/org/tapsec1", "org.tapsec1.Manager", manager_vtable, this) < 0)
    return false;
  if (sd_bus_add_object_vtable(bus_.get(), nullptr, kAssociationPath, "org.tapsec1.Association", association_vtable,
                               this) < 0)
    return false;
  if (with_tunnels_) {
    for (const char* path : {kIkeSaPath, kChildSaPath})
      if (sd_bus_add_object_vtable(bus_.get(), nullptr, path, "org.tapsec1.Association", association_vtable, this) < 0)
        return false;
  }
  if (with_wireguard_) {
    for (const char* path : {kWgInterfacePath, kWgPeerPath, kWgSilentPeerPath})
      if (sd_bus_add_object_vtable(bus_.get(), nullptr, path, "org.tapsec1.Association", association_vtable, this) < 0)
        return false;
  }
  if (sd_bus_add_object_manager(bus_.get(), nullptr, "/org/tapsec1") < 0) return false;
  if (sd_bus_request_name(bus_.get(), "org.tapsec1", 0) < 0) return false;
  thread_ = std::thread([this] { serve(); });
  return true;
}

void FakeAgent::serve() {
  while (!stopping_) {
    int r = sd_bus_process(bus_.get(), nullptr);
    if (r < 0) break;
    if (r > 0) continue;
    sd_bus_wait(bus_.get(), 50 * 1000);
  }
}

void FakeAgent::stop() {
  if (thread_.joinable()) {
    stopping_ = true;
    thread_.join();
  }
  if (bus_) {
    sd_bus_release_name(bus_.get(), "org.tapsec1");
    bus_.reset();
  }
  for (int fd : peer_ends_) close(fd);
  peer_ends_.clear();
}

}  // namespace tapsec::testing
