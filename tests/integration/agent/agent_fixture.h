// A real tapsecd on a private dbus-daemon, with certificates and a policy
// made for the test, and the calls a client makes, over plain sd-bus.
#pragma once

#include <systemd/sd-bus.h>
#include <sys/types.h>

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace tapsec::testing {

struct ObjectPath {
  std::string path;
};
using Algorithms = std::map<std::string, std::vector<std::string>>;  // a{sas}
using PropValue = std::variant<std::string, std::vector<std::string>, bool, std::uint32_t, ObjectPath, Algorithms>;
using Props = std::vector<std::pair<std::string, PropValue>>;

struct CallResult {
  bool done = false;
  int fd = -1;  // owned by the caller once done
  std::string association;
  std::string error_name;
  std::string error_message;
};

// Owns a temp dir, a dbus-daemon and a tapsecd.
class AgentProcess {
 public:
  // policy_text may use ${DIR} for the directory holding the certificates.
  explicit AgentProcess(const std::string& policy_text);
  // extra_args go to tapsecd; without them IKE is off (--ike-port 0), so
  // tests never contend for UDP 500.
  AgentProcess(const std::string& policy_text, std::vector<std::string> extra_args);
  ~AgentProcess();

  const std::string& dir() const { return dir_; }
  const std::string& bus_address() const { return bus_address_; }
  pid_t agent_pid() const { return agent_pid_; }
  bool agent_running() const;
  // SIGTERM and the exit status (0 for a clean shutdown).
  int stop_agent();

  sd_bus* bus() const { return bus_; }

  // Starts SecureSocket asynchronously; the result fills `out`.
  void secure_socket_async(int fd, const std::string& role, const Props& props, CallResult* out);
  void connect_async(const std::string& host, std::uint16_t port, const Props& props, CallResult* out);
  // Processes the bus until every result is done (or the timeout passes).
  bool wait(std::vector<CallResult*> results, int timeout_ms = 20000);

  std::string get_string(const std::string& path, const char* property);
  bool get_bool(const std::string& path, const char* property);
  std::uint64_t get_u64(const std::string& path, const char* property);
  // Calls a method on an association; returns the D-Bus error name or "".
  std::string call_association(const std::string& path, const char* method, const char* signature, ...);
  std::vector<std::uint8_t> export_keying_material(const std::string& path, const std::string& label,
                                                    std::uint32_t length, std::string* error_name);
  std::size_t agent_fd_count() const;
  // Whether Manager.KernelFeatures names `feature` ("ktls-rekey", ...).
  bool has_kernel_feature(const std::string& feature);
  // Manager.FlushSessionCache(); returns the entries removed, or -1.
  long flush_session_cache();

  // Manager.EstablishTunnel: the association path, or "" with the error.
  std::string establish_tunnel(const std::string& peer, const Props& props, std::string* error_name,
                               std::string* error_message);
  struct Tunnel {
    std::string name, protocol, peer, start, state, association;
  };
  std::vector<Tunnel> list_tunnels();
  std::map<std::string, std::uint64_t> statistics();

 private:
  std::string dir_;
  std::string bus_address_;
  pid_t bus_pid_ = -1;
  pid_t agent_pid_ = -1;
  sd_bus* bus_ = nullptr;
};

// A connected TCP pair on loopback: {client, server}.
std::pair<int, int> tcp_pair();
// Writes all of data, reads exactly n bytes; false on error or early EOF.
bool write_all(int fd, const void* data, std::size_t n);
bool read_exact(int fd, void* data, std::size_t n);

}  // namespace tapsec::testing
