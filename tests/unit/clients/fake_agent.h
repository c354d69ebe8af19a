// A FAKE org.tapsec1 agent for testing the clients' marshalling only: it
// speaks the Manager and Association interfaces on a private bus, records
// what it was sent and answers with canned values. No handshakes, no keys.
#pragma once

#include <atomic>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "dbus/tapsecctl/bus.h"

namespace tapsec::testing {

class FakeAgent {
 public:
  static constexpr const char* kAssociationPath = "/org/tapsec1/association/1";
  // With tunnels: an IKE SA (2) of the tunnel "branch" and its Child SA (3).
  static constexpr const char* kIkeSaPath = "/org/tapsec1/association/2";
  static constexpr const char* kChildSaPath = "/org/tapsec1/association/3";

  // With WireGuard: the interface "wg-beta" (4) of the tunnel "to-beta", a
  // peer with an agent that has handshaked (5), and a peer without an agent
  // that never has (6). Times are relative to when they are read.
  static constexpr const char* kWgInterfacePath = "/org/tapsec1/association/4";
  static constexpr const char* kWgPeerPath = "/org/tapsec1/association/5";
  static constexpr const char* kWgSilentPeerPath = "/org/tapsec1/association/6";
  static constexpr const char* kWgPublicKey = "InuaCBxqTGbed/OPQrtBhmqQsvqN6Pnux2+166C752Q=";
  static constexpr const char* kWgPeerKey = "zP8JjmCn7M1N4sCpPjVRgMq9+4AxVByfGxpBjyEvUkk=";
  static constexpr const char* kWgSilentPeerKey = "MiWQAZfPsc0aR3I2Tx/wTXjEVRdeY9JicV6USEnXMk8=";

  explicit FakeAgent(std::string address, bool with_tunnels = false, bool with_wireguard = false)
      : address_(std::move(address)), with_tunnels_(with_tunnels), with_wireguard_(with_wireguard) {}
  ~FakeAgent() { stop(); }

  // Connects, takes the name org.tapsec1 and serves in a thread.
  bool start();
  void stop();

  // What the last SecureSocket/Connect call carried.
  struct Request {
    std::string method;
    std::string role;
    std::string host;
    unsigned port = 0;
    std::string signature;  // of the whole call
    std::vector<std::pair<std::string, ctl::Value>> props;
    ino_t socket_inode = 0;
    bool validator_called = false;
    bool validator_accepted = false;
    std::string validator_reason;
  };
  Request last_request();
  // What the last EstablishTunnel call carried (method "EstablishTunnel",
  // host = the peer argument).
  Request last_tunnel_request();
  std::vector<std::string> association_calls();  // "UpdateKeys(true)", "Terminate()", ...

  // Bytes the fake derives for ExportKeyingMaterial(label, context, length).
  static std::vector<std::uint8_t> fake_export(const std::string& label, const std::vector<std::uint8_t>& context,
                                               std::uint32_t length);

 private:
  void serve();
  static int on_secure_socket(sd_bus_message* m, void* userdata, sd_bus_error* error);
  static int on_connect(sd_bus_message* m, void* userdata, sd_bus_error* error);
  static int on_list(sd_bus_message* m, void* userdata, sd_bus_error* error);
  static int on_flush(sd_bus_message* m, void* userdata, sd_bus_error* error);
  static int on_update_keys(sd_bus_message* m, void* userdata, sd_bus_error* error);
  static int on_export(sd_bus_message* m, void* userdata, sd_bus_error* error);
  static int on_terminate(sd_bus_message* m, void* userdata, sd_bus_error* error);
  static int on_establish_tunnel(sd_bus_message* m, void* userdata, sd_bus_error* error);
  static int on_list_tunnels(sd_bus_message* m, void* userdata, sd_bus_error* error);
  static int on_get_public_key(sd_bus_message* m, void* userdata, sd_bus_error* error);
  static int get_property(sd_bus* bus, const char* path, const char* interface, const char* property,
                          sd_bus_message* reply, void* userdata, sd_bus_error* error);
  int finish_request(sd_bus_message* m, Request& request, int fd, sd_bus_error* error);

  std::string address_;
  bool with_tunnels_ = false;
  bool with_wireguard_ = false;
  Request last_tunnel_request_;
  ctl::BusPtr bus_;
  std::thread thread_;
  std::atomic<bool> stopping_{false};
  std::mutex mutex_;
  Request last_request_;
  std::vector<std::string> association_calls_;
  std::uint64_t key_epoch_ = 0;
  std::vector<int> peer_ends_;  // our ends of Connect's socketpairs
};

}  // namespace tapsec::testing
