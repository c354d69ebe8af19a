#include "tests/integration/agent/agent_fixture.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdarg>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <thread>

namespace tapsec::testing {
namespace {

std::string replace_all(std::string text, const std::string& from, const std::string& to) {
  for (auto pos = text.find(from); pos != std::string::npos; pos = text.find(from, pos + to.size())) {
    text.replace(pos, from.size(), to);
  }
  return text;
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
  if (!out) throw std::runtime_error("cannot write " + path);
}

void run_or_throw(const std::string& command) {
  if (std::system(command.c_str()) != 0) throw std::runtime_error("command failed: " + command);
}

// A CA, a server certificate for server.test and 127.0.0.1, and a client
// certificate, all P-256.
void make_certificates(const std::string& dir) {
  write_file(dir + "/make-certs.sh", R"(set -e
cd "$1"
gen() { openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1.key" -out "$1.csr" -subj "/CN=$2" 2>/dev/null; }
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=tapsec-test-ca 2>/dev/null
gen server server.test
printf 'subjectAltName=DNS:server.test,IP:127.0.0.1\n' > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.crt -days 2 -extfile server.ext 2>/dev/null
cat server.crt > server.pem
gen client client.test
openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out client.pem -days 2 2>/dev/null
openssl x509 -in server.pem -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64 > server.pin
chmod 600 *.key
)");
  run_or_throw("sh " + dir + "/make-certs.sh " + dir);
}

pid_t spawn(const std::vector<std::string>& argv, int stdout_fd = -1) {
  pid_t pid = fork();
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGTERM);  // never outlive the test
    if (stdout_fd >= 0) dup2(stdout_fd, 1);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    _exit(127);
  }
  return pid;
}

int on_reply(sd_bus_message* reply, void* userdata, sd_bus_error*) {
  auto* out = static_cast<CallResult*>(userdata);
  out->done = true;
  if (sd_bus_message_is_method_error(reply, nullptr)) {
    const sd_bus_error* e = sd_bus_message_get_error(reply);
    out->error_name = e->name ? e->name : "";
    out->error_message = e->message ? e->message : "";
    return 0;
  }
  int fd = -1;
  const char* path = nullptr;
  if (sd_bus_message_read(reply, "ho", &fd, &path) < 0) {
    out->error_name = "test.UnexpectedReply";
    return 0;
  }
  out->fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  out->association = path;
  return 0;
}

void append_props(sd_bus_message* m, const Props& props) {
  sd_bus_message_open_container(m, 'a', "{sv}");
  for (const auto& [key, value] : props) {
    sd_bus_message_open_container(m, 'e', "sv");
    sd_bus_message_append(m, "s", key.c_str());
    if (auto* s = std::get_if<std::string>(&value)) {
      sd_bus_message_append(m, "v", "s", s->c_str());
    } else if (auto* b = std::get_if<bool>(&value)) {
      sd_bus_message_append(m, "v", "b", static_cast<int>(*b));
    } else if (auto* algorithms = std::get_if<Algorithms>(&value)) {
      sd_bus_message_open_container(m, 'v', "a{sas}");
      sd_bus_message_open_container(m, 'a', "{sas}");
      for (const auto& [kind, names] : *algorithms) {
        sd_bus_message_open_container(m, 'e', "sas");
        sd_bus_message_append(m, "s", kind.c_str());
        sd_bus_message_open_container(m, 'a', "s");
        for (const auto& name : names) sd_bus_message_append(m, "s", name.c_str());
        sd_bus_message_close_container(m);
        sd_bus_message_close_container(m);
      }
      sd_bus_message_close_container(m);
      sd_bus_message_close_container(m);
    } else if (auto* o = std::get_if<ObjectPath>(&value)) {
      sd_bus_message_append(m, "v", "o", o->path.c_str());
    } else if (auto* u = std::get_if<std::uint32_t>(&value)) {
      sd_bus_message_append(m, "v", "u", *u);
    } else {
      const auto& list = std::get<std::vector<std::string>>(value);
      sd_bus_message_open_container(m, 'v', "as");
      sd_bus_message_open_container(m, 'a', "s");
      for (const auto& item : list) sd_bus_message_append(m, "s", item.c_str());
      sd_bus_message_close_container(m);
      sd_bus_message_close_container(m);
    }
    sd_bus_message_close_container(m);
  }
  sd_bus_message_close_container(m);
}

}  // namespace

AgentProcess::AgentProcess(const std::string& policy_text) : AgentProcess(policy_text, {"--ike-port", "0"}) {}

AgentProcess::AgentProcess(const std::string& policy_text, std::vector<std::string> extra_args) {
  char tmpl[] = "/tmp/tapsec-it-XXXXXX";
  if (!mkdtemp(tmpl)) throw std::runtime_error("mkdtemp failed");
  dir_ = tmpl;
  chmod(dir_.c_str(), 0755);  // other users' test clients reach the bus socket
  make_certificates(dir_);
  run_or_throw("mkdir -p " + dir_ + "/policy.d");
  write_file(dir_ + "/policy.d/50-test.policy", replace_all(policy_text, "${DIR}", dir_));
  chmod((dir_ + "/policy.d/50-test.policy").c_str(), 0600);  // it may hold a PSK

  bus_address_ = "unix:path=" + dir_ + "/bus";
  write_file(dir_ + "/bus.conf", "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\" "
                                 "\"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n"
                                 "<busconfig><type>session</type><listen>" + bus_address_ +
                                 "</listen><auth>EXTERNAL</auth><policy context=\"default\">"
                                 "<allow send_destination=\"*\" eavesdrop=\"true\"/><allow eavesdrop=\"true\"/>"
                                 "<allow own=\"*\"/><allow user=\"*\"/></policy>"
                                 // Let floods of calls reach the agent: its
                                 // own limits are what the tests measure.
                                 "<limit name=\"max_replies_per_connection\">100000</limit>"
                                 "</busconfig>\n");
  bus_pid_ = spawn({"dbus-daemon", "--config-file=" + dir_ + "/bus.conf", "--nofork", "--nopidfile"});
  // Up to 20 s: a guest under TCG on a busy host can take seconds to start it.
  for (int i = 0; i < 2000 && access((dir_ + "/bus").c_str(), F_OK) != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }

  std::string log = dir_ + "/tapsecd.log";
  int log_fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  pid_t agent = fork();
  if (agent == 0) {
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    dup2(log_fd, 2);
    std::vector<std::string> args = {"tapsecd", "--bus", bus_address_, "--policy-dir", dir_ + "/policy.d",
                                      "--log-level", "debug"};
    args.insert(args.end(), extra_args.begin(), extra_args.end());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(TAPSECD_PATH, argv.data());
    _exit(127);
  }
  close(log_fd);
  agent_pid_ = agent;

  if (sd_bus_new(&bus_) < 0 || sd_bus_set_address(bus_, bus_address_.c_str()) < 0 ||
      sd_bus_set_bus_client(bus_, 1) < 0 || sd_bus_negotiate_fds(bus_, 1) < 0 || sd_bus_start(bus_) < 0) {
    throw std::runtime_error("cannot connect to the test bus");
  }
  for (int i = 0; i < 500; ++i) {
    int has = 0;
    sd_bus_message* reply = nullptr;
    if (sd_bus_call_method(bus_, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                           "NameHasOwner", nullptr, &reply, "s", "org.tapsec1") >= 0) {
      sd_bus_message_read(reply, "b", &has);
      sd_bus_message_unref(reply);
    }
    if (has) return;
    if (!agent_running()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  std::ifstream in(log);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  throw std::runtime_error("tapsecd did not come up; its log:\n" + text);
}

AgentProcess::~AgentProcess() {
  if (bus_) sd_bus_flush_close_unref(bus_);
  if (agent_pid_ > 0) stop_agent();
  if (bus_pid_ > 0) {
    kill(bus_pid_, SIGTERM);
    waitpid(bus_pid_, nullptr, 0);
  }
  if (!std::getenv("TAPSEC_KEEP_TEST_DIR")) run_or_throw("rm -rf " + dir_);
}

bool AgentProcess::agent_running() const {
  if (agent_pid_ <= 0) return false;
  int status;
  return waitpid(agent_pid_, &status, WNOHANG) == 0;
}

int AgentProcess::stop_agent() {
  if (agent_pid_ <= 0) return -1;
  kill(agent_pid_, SIGTERM);
  int status = 0;
  waitpid(agent_pid_, &status, 0);
  agent_pid_ = -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

void AgentProcess::secure_socket_async(int fd, const std::string& role, const Props& props, CallResult* out) {
  sd_bus_message* m = nullptr;
  sd_bus_message_new_method_call(bus_, &m, "org.tapsec1", "/org/tapsec1", "org.tapsec1.Manager", "SecureSocket");
  sd_bus_message_append(m, "hs", fd, role.c_str());
  append_props(m, props);
  if (sd_bus_call_async(bus_, nullptr, m, on_reply, out, 30'000'000) < 0) {
    out->done = true;
    out->error_name = "test.SendFailed";
  }
  sd_bus_message_unref(m);
}

void AgentProcess::connect_async(const std::string& host, std::uint16_t port, const Props& props, CallResult* out) {
  sd_bus_message* m = nullptr;
  sd_bus_message_new_method_call(bus_, &m, "org.tapsec1", "/org/tapsec1", "org.tapsec1.Manager", "Connect");
  sd_bus_message_append(m, "sq", host.c_str(), port);
  append_props(m, props);
  if (sd_bus_call_async(bus_, nullptr, m, on_reply, out, 30'000'000) < 0) {
    out->done = true;
    out->error_name = "test.SendFailed";
  }
  sd_bus_message_unref(m);
}

bool AgentProcess::wait(std::vector<CallResult*> results, int timeout_ms) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  auto all_done = [&] {
    for (auto* r : results)
      if (!r->done) return false;
    return true;
  };
  while (!all_done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    int r = sd_bus_process(bus_, nullptr);
    if (r < 0) return false;
    if (r == 0) sd_bus_wait(bus_, 100'000);
  }
  return true;
}

std::string AgentProcess::get_string(const std::string& path, const char* property) {
  char* value = nullptr;
  if (sd_bus_get_property_string(bus_, "org.tapsec1", path.c_str(), "org.tapsec1.Association", property, nullptr,
                                 &value) < 0)
    return "<error>";
  std::string out = value;
  free(value);
  return out;
}

bool AgentProcess::get_bool(const std::string& path, const char* property) {
  int value = 0;
  sd_bus_get_property_trivial(bus_, "org.tapsec1", path.c_str(), "org.tapsec1.Association", property, nullptr, 'b',
                              &value);
  return value != 0;
}

std::uint64_t AgentProcess::get_u64(const std::string& path, const char* property) {
  std::uint64_t value = 0;
  sd_bus_get_property_trivial(bus_, "org.tapsec1", path.c_str(), "org.tapsec1.Association", property, nullptr, 't',
                              &value);
  return value;
}

std::string AgentProcess::call_association(const std::string& path, const char* method, const char* signature,
                                           ...) {
  sd_bus_message* m = nullptr;
  sd_bus_message_new_method_call(bus_, &m, "org.tapsec1", path.c_str(), "org.tapsec1.Association", method);
  if (signature && *signature) {
    va_list ap;
    va_start(ap, signature);
    sd_bus_message_appendv(m, signature, ap);
    va_end(ap);
  }
  sd_bus_error error = SD_BUS_ERROR_NULL;
  int r = sd_bus_call(bus_, m, 10'000'000, &error, nullptr);
  sd_bus_message_unref(m);
  std::string name = r < 0 ? (error.name ? error.name : "error") : "";
  sd_bus_error_free(&error);
  return name;
}

std::vector<std::uint8_t> AgentProcess::export_keying_material(const std::string& path, const std::string& label,
                                                               std::uint32_t length, std::string* error_name) {
  sd_bus_message* m = nullptr;
  sd_bus_message_new_method_call(bus_, &m, "org.tapsec1", path.c_str(), "org.tapsec1.Association",
                                 "ExportKeyingMaterial");
  sd_bus_message_append(m, "s", label.c_str());
  sd_bus_message_append_array(m, 'y', "", 0);
  sd_bus_message_append(m, "u", length);
  sd_bus_error error = SD_BUS_ERROR_NULL;
  sd_bus_message* reply = nullptr;
  int r = sd_bus_call(bus_, m, 10'000'000, &error, &reply);
  sd_bus_message_unref(m);
  std::vector<std::uint8_t> out;
  if (r < 0) {
    *error_name = error.name ? error.name : "error";
  } else {
    const void* data = nullptr;
    size_t size = 0;
    sd_bus_message_read_array(reply, 'y', &data, &size);
    out.assign(static_cast<const std::uint8_t*>(data), static_cast<const std::uint8_t*>(data) + size);
    sd_bus_message_unref(reply);
  }
  sd_bus_error_free(&error);
  return out;
}

long AgentProcess::flush_session_cache() {
  sd_bus_message* reply = nullptr;
  if (sd_bus_call_method(bus_, "org.tapsec1", "/org/tapsec1", "org.tapsec1.Manager", "FlushSessionCache", nullptr,
                         &reply, "") < 0)
    return -1;
  std::uint32_t removed = 0;
  sd_bus_message_read(reply, "u", &removed);
  sd_bus_message_unref(reply);
  return removed;
}

std::size_t AgentProcess::agent_fd_count() const {
  std::size_t count = 0;
  std::string path = "/proc/" + std::to_string(agent_pid_) + "/fd";
  if (DIR* d = opendir(path.c_str())) {
    while (auto* e = readdir(d))
      if (e->d_name[0] != '.') ++count;
    closedir(d);
  }
  return count;
}

bool AgentProcess::has_kernel_feature(const std::string& feature) {
  char** features = nullptr;
  if (sd_bus_get_property_strv(bus_, "org.tapsec1", "/org/tapsec1", "org.tapsec1.Manager", "KernelFeatures", nullptr,
                               &features) < 0)
    return false;
  bool found = false;
  for (char** f = features; f && *f; ++f) {
    found = found || feature == *f;
    free(*f);
  }
  free(features);
  return found;
}

std::pair<int, int> tcp_pair() {
  // One listener for the whole process: every pair reaches the same server
  // port, as connections to a real server do (the session cache keys on it).
  static int listener = [] {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address));
    listen(fd, 16);
    return fd;
  }();
  sockaddr_in address{};
  socklen_t len = sizeof(address);
  getsockname(listener, reinterpret_cast<sockaddr*>(&address), &len);
  int client = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  connect(client, reinterpret_cast<sockaddr*>(&address), sizeof(address));
  int server = accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
  return {client, server};
}

bool write_all(int fd, const void* data, std::size_t n) {
  auto* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<std::size_t>(w);
  }
  return true;
}

bool read_exact(int fd, void* data, std::size_t n) {
  auto* p = static_cast<char*>(data);
  while (n > 0) {
    ssize_t r = read(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= static_cast<std::size_t>(r);
  }
  return true;
}

}  // namespace tapsec::testing

namespace tapsec::testing {

std::string AgentProcess::establish_tunnel(const std::string& peer, const Props& props, std::string* error_name,
                                           std::string* error_message) {
  sd_bus_message* m = nullptr;
  sd_bus_message_new_method_call(bus_, &m, "org.tapsec1", "/org/tapsec1", "org.tapsec1.Manager", "EstablishTunnel");
  sd_bus_message_append(m, "s", peer.c_str());
  append_props(m, props);
  sd_bus_error error = SD_BUS_ERROR_NULL;
  sd_bus_message* reply = nullptr;
  int r = sd_bus_call(bus_, m, 60'000'000, &error, &reply);
  sd_bus_message_unref(m);
  std::string path;
  if (r < 0) {
    if (error_name) *error_name = error.name ? error.name : "error";
    if (error_message) *error_message = error.message ? error.message : "";
  } else {
    const char* p = nullptr;
    if (sd_bus_message_read(reply, "o", &p) >= 0 && p) path = p;
  }
  sd_bus_error_free(&error);
  sd_bus_message_unref(reply);
  return path;
}

std::vector<AgentProcess::Tunnel> AgentProcess::list_tunnels() {
  std::vector<Tunnel> out;
  sd_bus_message* reply = nullptr;
  sd_bus_error error = SD_BUS_ERROR_NULL;
  if (sd_bus_call_method(bus_, "org.tapsec1", "/org/tapsec1", "org.tapsec1.Manager", "ListTunnels", &error, &reply,
                         "") < 0) {
    sd_bus_error_free(&error);
    return out;
  }
  sd_bus_message_enter_container(reply, 'a', "(ssssso)");
  const char *name, *protocol, *peer, *start, *state, *path;
  while (sd_bus_message_read(reply, "(ssssso)", &name, &protocol, &peer, &start, &state, &path) > 0)
    out.push_back({name, protocol, peer, start, state, path});
  sd_bus_message_unref(reply);
  return out;
}

std::map<std::string, std::uint64_t> AgentProcess::statistics() {
  std::map<std::string, std::uint64_t> out;
  sd_bus_message* reply = nullptr;
  sd_bus_error error = SD_BUS_ERROR_NULL;
  if (sd_bus_get_property(bus_, "org.tapsec1", "/org/tapsec1", "org.tapsec1.Manager", "Statistics", &error, &reply,
                          "a{st}") < 0) {
    sd_bus_error_free(&error);
    return out;
  }
  sd_bus_message_enter_container(reply, 'a', "{st}");
  const char* key = nullptr;
  std::uint64_t value = 0;
  while (sd_bus_message_read(reply, "{st}", &key, &value) > 0) out[key] = value;
  sd_bus_message_unref(reply);
  return out;
}

}  // namespace tapsec::testing
