// tapsec-exec: runs an unmodified program on a connection secured by
// tapsecd, inetd style: the program's stdin and stdout are the protected
// socket. With --connect it is the client; with --listen it accepts
// connections and runs the program once per connection.
//
//   tapsec-exec --connect HOST:PORT [options] -- PROGRAM [ARGS...]
//   tapsec-exec --listen [ADDR:]PORT --identity NAME [options] -- PROGRAM [ARGS...]
#include <arpa/inet.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <systemd/sd-bus.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

struct Options {
  std::string bus = "system";
  std::string connect, listen;
  std::string identity, server_name, peer_validation, psk;
  std::vector<std::string> alpn;
  bool once = false;
  bool verbose = false;
  std::vector<char*> program;
};

[[noreturn]] void die(const std::string& message) {
  std::fprintf(stderr, "tapsec-exec: %s\n", message.c_str());
  std::exit(1);
}

sd_bus* open_bus(const std::string& spec) {
  sd_bus* bus = nullptr;
  int r;
  if (spec == "system") {
    r = sd_bus_open_system(&bus);
  } else if (spec == "session") {
    r = sd_bus_open_user(&bus);
  } else {
    r = sd_bus_new(&bus);
    if (r >= 0) r = sd_bus_set_address(bus, spec.c_str());
    if (r >= 0) r = sd_bus_set_bus_client(bus, 1);
    if (r >= 0) r = sd_bus_start(bus);
  }
  if (r < 0) die(std::string("cannot connect to the bus: ") + std::strerror(-r));
  return bus;
}

void append_string_prop(sd_bus_message* m, const char* key, const std::string& value) {
  if (value.empty()) return;
  sd_bus_message_append(m, "{sv}", key, "s", value.c_str());
}

// Calls SecureSocket and returns the protected fd (owned by the caller).
int secure(sd_bus* bus, int fd, const char* role, const Options& o) {
  sd_bus_message* m = nullptr;
  int r = sd_bus_message_new_method_call(bus, &m, "org.tapsec1", "/org/tapsec1", "org.tapsec1.Manager", "SecureSocket");
  if (r < 0) die("building the call failed");
  sd_bus_message_append(m, "hs", fd, role);
  sd_bus_message_open_container(m, 'a', "{sv}");
  append_string_prop(m, "identity", o.identity);
  append_string_prop(m, "server-name", o.server_name);
  append_string_prop(m, "peer-validation", o.peer_validation);
  append_string_prop(m, "psk", o.psk);
  if (!o.alpn.empty()) {
    sd_bus_message_open_container(m, 'e', "sv");
    sd_bus_message_append(m, "s", "alpn");
    sd_bus_message_open_container(m, 'v', "as");
    sd_bus_message_open_container(m, 'a', "s");
    for (const auto& a : o.alpn) sd_bus_message_append(m, "s", a.c_str());
    sd_bus_message_close_container(m);
    sd_bus_message_close_container(m);
    sd_bus_message_close_container(m);
  }
  sd_bus_message_close_container(m);

  sd_bus_error error = SD_BUS_ERROR_NULL;
  sd_bus_message* reply = nullptr;
  r = sd_bus_call(bus, m, 30 * 1000 * 1000, &error, &reply);
  sd_bus_message_unref(m);
  if (r < 0) {
    std::string text = std::string(error.name ? error.name : "error") + ": " + (error.message ? error.message : std::strerror(-r));
    sd_bus_error_free(&error);
    std::fprintf(stderr, "tapsec-exec: SecureSocket failed: %s\n", text.c_str());
    return -1;
  }
  int secured = -1;
  const char* path = nullptr;
  if (sd_bus_message_read(reply, "ho", &secured, &path) < 0) die("unexpected reply to SecureSocket");
  int owned = fcntl(secured, F_DUPFD_CLOEXEC, 3);
  if (o.verbose) {
    // One line: what was negotiated and where the keys live.
    std::string line;
    for (const char* property : {"Role", "Version", "Cipher", "Group", "PeerIdentity", "ALPN", "Offload"}) {
      char* value = nullptr;
      if (sd_bus_get_property_string(bus, "org.tapsec1", path, "org.tapsec1.Association", property, nullptr,
                                     &value) >= 0) {
        if (*value) line += std::string(" ") + property + "=" + value;
        std::free(value);
      }
    }
    std::fprintf(stderr, "tapsec-exec: %s%s\n", path, line.c_str());
  }
  sd_bus_message_unref(reply);
  return owned;
}

bool split_host_port(const std::string& spec, std::string* host, std::string* port) {
  auto colon = spec.rfind(':');
  if (colon == std::string::npos) return false;
  *host = spec.substr(0, colon);
  *port = spec.substr(colon + 1);
  if (!host->empty() && host->front() == '[') *host = host->substr(1, host->size() - 2);
  return !port->empty();
}

int tcp_socket(const std::string& spec, bool listening) {
  std::string host, port;
  if (!split_host_port(spec, &host, &port)) {
    if (!listening) die("expected HOST:PORT, got \"" + spec + "\"");
    port = spec;
  }
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = listening ? AI_PASSIVE : 0;
  addrinfo* result = nullptr;
  int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &result);
  if (rc != 0) die("cannot resolve " + spec + ": " + gai_strerror(rc));
  int fd = -1;
  std::string last;
  for (auto* ai = result; ai; ai = ai->ai_next) {
    fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) continue;
    int one = 1;
    if (listening) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (listening ? (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 64) == 0)
                  : connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
      break;
    }
    last = std::strerror(errno);
    close(fd);
    fd = -1;
  }
  freeaddrinfo(result);
  if (fd < 0) die((listening ? "cannot listen on " : "cannot connect to ") + spec + ": " + last);
  return fd;
}

// Runs the program with fd as stdin and stdout; returns its exit status.
int run_program(int fd, const Options& o) {
  pid_t child = fork();
  if (child < 0) die(std::string("fork: ") + std::strerror(errno));
  if (child == 0) {
    dup2(fd, 0);
    dup2(fd, 1);
    if (fd > 1) close(fd);
    execvp(o.program[0], o.program.data());
    std::fprintf(stderr, "tapsec-exec: cannot run %s: %s\n", o.program[0], std::strerror(errno));
    _exit(127);
  }
  close(fd);
  int status = 0;
  while (waitpid(child, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

void usage(FILE* out) {
  std::fputs(
      "usage: tapsec-exec --connect HOST:PORT [options] -- PROGRAM [ARGS...]\n"
      "       tapsec-exec --listen [ADDR:]PORT [options] -- PROGRAM [ARGS...]\n"
      "Runs PROGRAM with stdin and stdout on a connection secured by tapsecd.\n"
      "  --bus system|session|ADDRESS  --identity NAME  --server-name NAME\n"
      "  --peer-validation system|pinned|application|none  --psk NAME\n"
      "  --alpn PROTO (repeatable)  --once (listen: serve one connection)  --verbose\n",
      out);
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  static const option long_options[] = {
      {"bus", required_argument, nullptr, 'b'},        {"connect", required_argument, nullptr, 'c'},
      {"listen", required_argument, nullptr, 'l'},     {"identity", required_argument, nullptr, 'i'},
      {"server-name", required_argument, nullptr, 's'}, {"peer-validation", required_argument, nullptr, 'p'},
      {"psk", required_argument, nullptr, 'k'},        {"alpn", required_argument, nullptr, 'a'},
      {"once", no_argument, nullptr, '1'},             {"verbose", no_argument, nullptr, 'v'},
      {"help", no_argument, nullptr, 'h'},             {nullptr, 0, nullptr, 0}};
  int c;
  while ((c = getopt_long(argc, argv, "+hv", long_options, nullptr)) != -1) {
    switch (c) {
      case 'b': o.bus = optarg; break;
      case 'c': o.connect = optarg; break;
      case 'l': o.listen = optarg; break;
      case 'i': o.identity = optarg; break;
      case 's': o.server_name = optarg; break;
      case 'p': o.peer_validation = optarg; break;
      case 'k': o.psk = optarg; break;
      case 'a': o.alpn.push_back(optarg); break;
      case '1': o.once = true; break;
      case 'v': o.verbose = true; break;
      case 'h': usage(stdout); return 0;
      default: usage(stderr); return 2;
    }
  }
  for (int i = optind; i < argc; ++i) o.program.push_back(argv[i]);
  o.program.push_back(nullptr);
  if (o.program.size() < 2 || o.connect.empty() == o.listen.empty()) {
    usage(stderr);
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  sd_bus* bus = open_bus(o.bus);

  if (!o.connect.empty()) {
    int fd = tcp_socket(o.connect, false);
    int secured = secure(bus, fd, "client", o);
    close(fd);
    if (secured < 0) return 1;  // the secured fd is the one to use (the same socket under kTLS)
    sd_bus_flush_close_unref(bus);
    return run_program(secured, o);
  }

  int listener = tcp_socket(o.listen, true);
  signal(SIGCHLD, SIG_DFL);
  for (;;) {
    int fd = accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR) continue;
      die(std::string("accept: ") + std::strerror(errno));
    }
    int secured = secure(bus, fd, "server", o);
    close(fd);
    if (secured < 0) {
      if (o.once) return 1;
      continue;  // one failed client does not stop the server
    }
    int status = run_program(secured, o);
    if (o.once) {
      sd_bus_flush_close_unref(bus);
      return status;
    }
  }
}
