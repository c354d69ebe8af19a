// The bus layer against a private dbus-daemon: BusService on a Reactor in a
// server thread with a FakeBackend, and a plain sd-bus client connection in
// the test thread.
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <grp.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <future>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include "agent/bus/bus_service.h"
#include "agent/bus/properties_parser.h"
#include "agent/bus/sd_bus_ref.h"
#include "agent/core/bus_source.h"
#include "agent/core/reactor.h"
#include "agent/core/sd_bus_ptr.h"
#include "tapsec/policy.h"
#include "tests/integration/bus/fake_backend.h"
#include "tests/integration/bus/private_bus.h"

#ifndef TAPSEC_DBUS_INTERFACES_DIR
#error "TAPSEC_DBUS_INTERFACES_DIR must name dbus/interfaces"
#endif

namespace tapsec::test {
namespace {

using bus::MessageRef;
using bus::SlotRef;
using core::SdBusError;
using core::SdBusPtr;
using namespace std::chrono_literals;

// ---- the agent side, on its own thread ----

class Server {
 public:
  Server(const std::string& address, bus::BusService::Options options) {
    std::promise<std::string> started;
    auto ready = started.get_future();
    thread_ = std::thread([this, address, options, &started] { run(address, options, started); });
    std::string problem = ready.get();
    if (!problem.empty()) {
      thread_.join();
      throw std::runtime_error(problem);
    }
  }
  ~Server() {
    if (reactor_) reactor_->post([this] { reactor_->stop(); });
    if (thread_.joinable()) thread_.join();
  }

  FakeBackend backend;

  // Runs f on the loop thread and waits for it.
  template <typename F>
  auto on_loop(F f) -> decltype(f()) {
    std::packaged_task<decltype(f())()> task(std::move(f));
    auto result = task.get_future();
    reactor_->post([&task] { task(); });
    return result.get();
  }
  bus::BusService& service() { return *service_; }

 private:
  void run(const std::string& address, bus::BusService::Options options, std::promise<std::string>& started) {
    try {
      core::Reactor reactor;
      sd_bus* raw = nullptr;
      int r = core::open_bus(address, &raw);
      if (r < 0) {
        started.set_value("open_bus failed: " + std::string(strerror(-r)));
        return;
      }
      SdBusPtr connection(raw);
      core::BusSource source(reactor, connection.get());
      backend.reactor = &reactor;
      bus::BusService service(connection.get(), backend, options);
      std::promise<std::string>* pending_start = &started;
      service.on_name_result([&](bool acquired, const std::string& error) {
        if (!pending_start) return;
        pending_start->set_value(acquired ? "" : "name not acquired: " + error);
        pending_start = nullptr;
      });
      r = service.start();
      if (r < 0) {
        started.set_value("BusService::start failed: " + std::string(strerror(-r)));
        return;
      }
      reactor_ = &reactor;
      service_ = &service;
      reactor.run();
      service_ = nullptr;
    } catch (const std::exception& e) {
      started.set_value(std::string("server failed: ") + e.what());
    }
  }

  std::thread thread_;
  core::Reactor* reactor_ = nullptr;
  bus::BusService* service_ = nullptr;
};

// ---- the application side ----

struct CallResult {
  MessageRef reply;
  std::string error_name;
  std::string error_message;
  bool ok() const { return error_name.empty(); }
};

using Writer = std::function<int(sd_bus_message*)>;

int count_open_fds() {
  int count = 0;
  DIR* dir = opendir("/proc/self/fd");
  if (!dir) return -1;
  while (dirent* entry = readdir(dir))
    if (entry->d_name[0] != '.') ++count;
  closedir(dir);
  return count - 1;  // the directory's own fd
}

ino_t inode_of(int fd) {
  struct stat st{};
  return fstat(fd, &st) == 0 ? st.st_ino : 0;
}

class BusServiceTest : public ::testing::Test {
 protected:
  static bus::BusService::Options server_options() {
    bus::BusService::Options options;
    options.validator_timeout = 500ms;
    return options;
  }

  void SetUp() override {
    if (access("/usr/bin/dbus-daemon", X_OK) != 0 && system("command -v dbus-daemon >/dev/null 2>&1") != 0)
      GTEST_SKIP() << "dbus-daemon is not installed";
    daemon_ = std::make_unique<PrivateBus>();
    ASSERT_TRUE(daemon_->ok()) << daemon_->error();
    server_ = std::make_unique<Server>(daemon_->address(), server_options());
    sd_bus* raw = nullptr;
    ASSERT_GE(core::open_bus(daemon_->address(), &raw), 0);
    client_.reset(raw);
    const char* unique = nullptr;
    ASSERT_GE(sd_bus_get_unique_name(client_.get(), &unique), 0);  // waits for Hello
    client_name_ = unique;
  }

  void TearDown() override {
    client_.reset();
    server_.reset();
    daemon_.reset();
  }

  // Builds a call; `args` appends the arguments.
  MessageRef new_call(const char* path, const char* interface, const char* member, const Writer& args) {
    MessageRef call;
    EXPECT_GE(sd_bus_message_new_method_call(client_.get(), call.out(), bus::kBusName, path, interface, member), 0);
    if (args) {
      EXPECT_GE(args(call.get()), 0) << "appending arguments of " << member;
    }
    return call;
  }

  CallResult call(const char* path, const char* interface, const char* member, const Writer& args = {}) {
    MessageRef message = new_call(path, interface, member, args);
    CallResult result;
    SdBusError error;
    int r = sd_bus_call(client_.get(), message.get(), 10'000'000, error.get(), result.reply.out());
    if (r < 0) {
      result.error_name = error.is_set() ? error.name() : "errno";
      result.error_message = error.is_set() ? error.message() : strerror(-r);
    }
    return result;
  }

  // Like call(), but keeps dispatching the client's own incoming calls and
  // signals while it waits (needed when the agent calls back).
  CallResult call_pumping(MessageRef message) {
    struct State {
      bool done = false;
      CallResult result;
    } state;
    SlotRef slot;
    auto on_reply = [](sd_bus_message* reply, void* userdata, sd_bus_error*) -> int {
      auto* s = static_cast<State*>(userdata);
      s->done = true;
      if (const sd_bus_error* e = sd_bus_message_get_error(reply)) {
        s->result.error_name = e->name;
        s->result.error_message = e->message ? e->message : "";
      } else {
        s->result.reply = MessageRef::share(reply);
      }
      return 1;
    };
    EXPECT_GE(sd_bus_call_async(client_.get(), slot.out(), message.get(), on_reply, &state, 10'000'000), 0);
    pump_until([&] { return state.done; });
    if (!state.done) state.result.error_name = "test.NoReply";
    return state.result;
  }

  void pump_until(const std::function<bool()>& condition, std::chrono::milliseconds limit = 10s) {
    auto deadline = std::chrono::steady_clock::now() + limit;
    while (!condition() && std::chrono::steady_clock::now() < deadline) {
      int r = sd_bus_process(client_.get(), nullptr);
      ASSERT_GE(r, 0);
      if (r == 0) sd_bus_wait(client_.get(), 50'000);
    }
  }

  static Writer secure_socket_args(int fd, const char* role, const Writer& props = {}) {
    return [=](sd_bus_message* m) {
      int r = sd_bus_message_append(m, "hs", fd, role);
      if (r < 0) return r;
      if ((r = sd_bus_message_open_container(m, 'a', "{sv}")) < 0) return r;
      if (props && (r = props(m)) < 0) return r;
      return sd_bus_message_close_container(m);
    };
  }

  CallResult secure_socket(int fd, const char* role, const Writer& props = {}) {
    return call(bus::kManagerPath, bus::kManagerInterface, "SecureSocket", secure_socket_args(fd, role, props));
  }

  // SecureSocket on a fresh socketpair; returns the result.
  CallResult secure_pair(const Writer& props, const char* role = "client") {
    int pair[2];
    EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
    CallResult r = secure_socket(pair[0], role, props);
    close(pair[0]);
    close(pair[1]);
    return r;
  }

  std::vector<std::string> list_associations() {
    CallResult r = call(bus::kManagerPath, bus::kManagerInterface, "ListAssociations");
    EXPECT_TRUE(r.ok()) << r.error_name << ": " << r.error_message;
    std::vector<std::string> paths;
    if (!r.ok()) return paths;
    EXPECT_GE(sd_bus_message_enter_container(r.reply.get(), 'a', "o"), 0);
    const char* path = nullptr;
    while (sd_bus_message_read_basic(r.reply.get(), 'o', &path) > 0) paths.emplace_back(path);
    return paths;
  }

  std::unique_ptr<PrivateBus> daemon_;
  std::unique_ptr<Server> server_;
  SdBusPtr client_;
  std::string client_name_;
};

// A property value as text, for comparisons: "s:TLSv1.3", "t:5", "b:1", "u:0".
std::string read_variant_as_text(sd_bus_message* m) {
  char type = 0;
  const char* contents = nullptr;
  if (sd_bus_message_peek_type(m, &type, &contents) < 0 || type != 'v') return "?";
  std::string signature = contents;
  sd_bus_message_enter_container(m, 'v', contents);
  std::string text = signature + ":";
  if (signature == "s" || signature == "o") {
    const char* s;
    sd_bus_message_read_basic(m, signature[0], &s);
    text += s;
  } else if (signature == "t") {
    std::uint64_t v;
    sd_bus_message_read_basic(m, 't', &v);
    text += std::to_string(v);
  } else if (signature == "u") {
    std::uint32_t v;
    sd_bus_message_read_basic(m, 'u', &v);
    text += std::to_string(v);
  } else if (signature == "q") {
    std::uint16_t v;
    sd_bus_message_read_basic(m, 'q', &v);
    text += std::to_string(v);
  } else if (signature == "b") {
    int v;
    sd_bus_message_read_basic(m, 'b', &v);
    text += std::to_string(v);
  } else if (signature == "as") {
    sd_bus_message_enter_container(m, 'a', "s");
    const char* s;
    while (sd_bus_message_read_basic(m, 's', &s) > 0) text += std::string(s) + ",";
    sd_bus_message_exit_container(m);
  } else {
    sd_bus_message_skip(m, contents);
  }
  sd_bus_message_exit_container(m);
  return text;
}

// Reads an a{sv} of properties into name -> "sig:value".
std::map<std::string, std::string> read_property_map(sd_bus_message* m) {
  std::map<std::string, std::string> out;
  if (sd_bus_message_enter_container(m, 'a', "{sv}") < 0) return out;
  while (sd_bus_message_enter_container(m, 'e', "sv") > 0) {
    const char* name;
    sd_bus_message_read_basic(m, 's', &name);
    out[name] = read_variant_as_text(m);
    sd_bus_message_exit_container(m);
  }
  sd_bus_message_exit_container(m);
  return out;
}

// ---- fd passing ----

TEST_F(BusServiceTest, SecureSocketRoundTripsASocketpair) {
  int pair[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
  core::UniqueFd mine(pair[0]), peer(pair[1]);

  CallResult r = secure_socket(mine.get(), "client");
  ASSERT_TRUE(r.ok()) << r.error_name << ": " << r.error_message;
  int returned = -1;
  const char* association = nullptr;
  ASSERT_GE(sd_bus_message_read(r.reply.get(), "ho", &returned, &association), 0);
  EXPECT_EQ(inode_of(returned), inode_of(mine.get())) << "the agent must return the very socket";
  EXPECT_EQ(server_->backend.snapshot().socket_inode, inode_of(mine.get())) << "the backend got another socket";
  EXPECT_STREQ(association, "/org/tapsec1/association/1");

  // The returned fd is usable: it reaches the peer.
  core::UniqueFd usable(fcntl(returned, F_DUPFD_CLOEXEC, 3));
  ASSERT_EQ(write(usable.get(), "ping", 4), 4);
  char buffer[8] = {};
  ASSERT_EQ(read(peer.get(), buffer, sizeof buffer), 4);
  EXPECT_STREQ(buffer, "ping");
  EXPECT_EQ(server_->backend.snapshot().role, "client");
}

TEST_F(BusServiceTest, SecureSocketRoundTripsATcpSocket) {
  core::UniqueFd listener(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(listener.get(), reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
  ASSERT_EQ(listen(listener.get(), 1), 0);
  socklen_t length = sizeof address;
  ASSERT_EQ(getsockname(listener.get(), reinterpret_cast<sockaddr*>(&address), &length), 0);
  core::UniqueFd client(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  ASSERT_EQ(connect(client.get(), reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
  core::UniqueFd accepted(accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
  ASSERT_TRUE(accepted);

  CallResult r = secure_socket(accepted.get(), "server");
  ASSERT_TRUE(r.ok()) << r.error_name << ": " << r.error_message;
  int returned = -1;
  const char* association = nullptr;
  ASSERT_GE(sd_bus_message_read(r.reply.get(), "ho", &returned, &association), 0);
  sockaddr_in local_a{}, local_b{};
  socklen_t la = sizeof local_a, lb = sizeof local_b;
  ASSERT_EQ(getpeername(returned, reinterpret_cast<sockaddr*>(&local_a), &la), 0);
  ASSERT_EQ(getsockname(client.get(), reinterpret_cast<sockaddr*>(&local_b), &lb), 0);
  EXPECT_EQ(local_a.sin_port, local_b.sin_port) << "the returned socket is connected to our client";
  ASSERT_EQ(send(returned, "tcp", 3, 0), 3);
  char buffer[4] = {};
  ASSERT_EQ(recv(client.get(), buffer, 3, MSG_WAITALL), 3);
  EXPECT_STREQ(buffer, "tcp");
  EXPECT_EQ(server_->backend.snapshot().role, "server");
}

TEST_F(BusServiceTest, CompletionFromALaterLoopIterationIsDelivered) {
  server_->backend.mode = FakeBackend::SecureMode::kReturnLater;
  CallResult r = secure_pair({});
  ASSERT_TRUE(r.ok()) << r.error_name << ": " << r.error_message;
  int fd = -1;
  const char* path = nullptr;
  ASSERT_GE(sd_bus_message_read(r.reply.get(), "ho", &fd, &path), 0);
  EXPECT_GE(fd, 0);
}

TEST_F(BusServiceTest, NotASocketIsBadSocket) {
  int pipe_fds[2];
  ASSERT_EQ(pipe2(pipe_fds, O_CLOEXEC), 0);
  core::UniqueFd read_end(pipe_fds[0]), write_end(pipe_fds[1]);
  CallResult r = secure_socket(read_end.get(), "client");
  EXPECT_EQ(r.error_name, "org.tapsec1.Error.BadSocket");
  EXPECT_NE(r.error_message.find("not a socket"), std::string::npos) << r.error_message;
  EXPECT_EQ(server_->backend.snapshot().secure_calls, 0);
}

TEST_F(BusServiceTest, NoFdLeaksOver200Calls) {
  // Warm up: sd-bus and the daemon settle their own fds first.
  ASSERT_TRUE(secure_pair({}).ok());
  // The server thread frees a sent reply (and the fd in it) just after the
  // client has it: let it settle before each count.
  auto settled_count = [&](int expected) {
    int count = count_open_fds();
    for (int i = 0; i < 100 && count != expected; ++i) {
      std::this_thread::sleep_for(10ms);
      count = count_open_fds();
    }
    return count;
  };
  std::this_thread::sleep_for(50ms);
  int before = count_open_fds();
  for (int i = 0; i < 200; ++i) {
    CallResult r;
    switch (i % 4) {
      case 0:
      case 1:
        r = secure_pair({});
        ASSERT_TRUE(r.ok()) << r.error_name << ": " << r.error_message;
        break;
      case 2:
        r = secure_pair([](sd_bus_message* m) { return sd_bus_message_append(m, "{sv}", "offload", "u", 1u); });
        ASSERT_EQ(r.error_name, "org.tapsec1.Error.InvalidArgument");
        break;
      case 3:
        server_->backend.mode = FakeBackend::SecureMode::kFail;
        r = secure_pair({});
        server_->backend.mode = FakeBackend::SecureMode::kReturnSocket;
        ASSERT_EQ(r.error_name, "org.tapsec1.Error.PolicyDenied");
        break;
    }
    r.reply.reset();  // closes the received fd with the message
  }
  EXPECT_EQ(settled_count(before), before) << "file descriptors leaked";
}

// ---- props ----

TEST_F(BusServiceTest, EveryPropsKeyReachesItsField) {
  CallResult r = secure_pair(
      [](sd_bus_message* m) {
        int r = sd_bus_message_append(m, "{sv}{sv}{sv}{sv}", "protocols", "as", 1, "tls", "identity", "s", "web",
                                      "psk", "s", "shared", "versions", "as", 2, "1.3", "1.2");
        if (r < 0) return r;
        r = sd_bus_message_append(m, "{sv}{sv}{sv}{sv}", "alpn", "as", 2, "h2", "http/1.1", "server-name", "s",
                                  "peer.example", "session-cache", "b", 0, "peer-validation", "s", "pinned");
        if (r < 0) return r;
        r = sd_bus_message_append(m, "{sv}{sv}{sv}{sv}{sv}", "peer-pins", "as", 1,
                                  "sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "require-peer-certificate",
                                  "b", 1, "export", "b", 1, "offload", "s", "required", "timeout-ms", "u", 2500u);
        if (r < 0) return r;
        return sd_bus_message_append(m, "{sv}", "algorithms", "a{sas}", 2, "ciphersuites", 1,
                                     "TLS_AES_256_GCM_SHA384", "groups", 2, "X25519", "secp256r1");
      },
      "server");
  ASSERT_TRUE(r.ok()) << r.error_name << ": " << r.error_message;
  bus::SecurityProperties p = server_->backend.snapshot().props;
  EXPECT_EQ(p.protocols, std::vector<std::string>{"tls"});
  EXPECT_EQ(p.identity, "web");
  EXPECT_EQ(p.psk, "shared");
  EXPECT_EQ(p.versions, (std::vector<std::string>{"1.3", "1.2"}));
  EXPECT_EQ(p.alpn, (std::vector<std::string>{"h2", "http/1.1"}));
  EXPECT_EQ(p.server_name, "peer.example");
  EXPECT_FALSE(p.session_cache);
  EXPECT_EQ(p.peer_validation, "pinned");
  EXPECT_EQ(p.peer_pins, std::vector<std::string>{"sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="});
  EXPECT_TRUE(p.require_peer_certificate);
  EXPECT_TRUE(p.wants_export);
  EXPECT_EQ(p.offload, "required");
  EXPECT_EQ(p.timeout_ms, 2500u);
  EXPECT_EQ(p.algorithms.at("ciphersuites"), std::vector<std::string>{"TLS_AES_256_GCM_SHA384"});
  EXPECT_EQ(p.algorithms.at("groups"), (std::vector<std::string>{"X25519", "secp256r1"}));

  // The one key that needs another peer-validation mode.
  r = secure_pair([](sd_bus_message* m) {
    return sd_bus_message_append(m, "{sv}{sv}", "peer-validation", "s", "application", "validator", "o",
                                 "/app/validator");
  });
  ASSERT_TRUE(r.ok()) << r.error_name << ": " << r.error_message;
  p = server_->backend.snapshot().props;
  EXPECT_EQ(p.validator, "/app/validator");
  EXPECT_EQ(p.peer_validation, "application");
}

TEST_F(BusServiceTest, DefaultsWhenNoPropsAreGiven) {
  ASSERT_TRUE(secure_pair({}).ok());
  bus::SecurityProperties p = server_->backend.snapshot().props;
  bus::SecurityProperties defaults;
  EXPECT_TRUE(p.protocols.empty());
  EXPECT_EQ(p.session_cache, defaults.session_cache);
  EXPECT_EQ(p.peer_validation, "system");
  EXPECT_EQ(p.offload, "preferred");
  EXPECT_EQ(p.timeout_ms, 10000u);
}

TEST_F(BusServiceTest, WrongTypeForEveryKeyNamesKeyAndSignatures) {
  for (const auto& key : bus::known_property_keys()) {
    std::string name(key.name);
    // A value of a type the key never has.
    bool wants_string = key.signature == "s";
    CallResult r = secure_pair([&](sd_bus_message* m) {
      return wants_string ? sd_bus_message_append(m, "{sv}", name.c_str(), "u", 7u)
                          : sd_bus_message_append(m, "{sv}", name.c_str(), "s", "text");
    });
    std::string actual = wants_string ? "u" : "s";
    EXPECT_EQ(r.error_name, "org.tapsec1.Error.InvalidArgument") << name;
    EXPECT_NE(r.error_message.find("'" + name + "'"), std::string::npos) << r.error_message;
    EXPECT_NE(r.error_message.find("'" + std::string(key.signature) + "'"), std::string::npos) << r.error_message;
    EXPECT_NE(r.error_message.find("got '" + actual + "'"), std::string::npos) << r.error_message;
  }
  // algorithms must be a{sas}, not a{ss}.
  CallResult r = secure_pair([](sd_bus_message* m) {
    return sd_bus_message_append(m, "{sv}", "algorithms", "a{ss}", 1, "groups", "X25519");
  });
  EXPECT_EQ(r.error_name, "org.tapsec1.Error.InvalidArgument");
  EXPECT_NE(r.error_message.find("'a{sas}', got 'a{ss}'"), std::string::npos) << r.error_message;
  EXPECT_EQ(server_->backend.snapshot().secure_calls, 0) << "a bad request reached the backend";
}

TEST_F(BusServiceTest, UnknownKeyIsNamedWithTheKnownOnes) {
  CallResult r = secure_pair([](sd_bus_message* m) { return sd_bus_message_append(m, "{sv}", "cipher", "s", "x"); });
  EXPECT_EQ(r.error_name, "org.tapsec1.Error.UnknownProperty");
  EXPECT_NE(r.error_message.find("'cipher'"), std::string::npos) << r.error_message;
  for (const auto& key : bus::known_property_keys())
    EXPECT_NE(r.error_message.find(std::string(key.name)), std::string::npos) << key.name << " not listed";
}

TEST_F(BusServiceTest, BadValuesAreInvalidArguments) {
  struct Case {
    const char* what;
    Writer props;
    const char* expected_fragment;
  };
  std::vector<Case> cases = {
      {"offload", [](sd_bus_message* m) { return sd_bus_message_append(m, "{sv}", "offload", "s", "maybe"); },
       "\"required\" or \"preferred\""},
      {"peer-validation",
       [](sd_bus_message* m) { return sd_bus_message_append(m, "{sv}", "peer-validation", "s", "trust-me"); },
       "\"system\""},
      {"versions", [](sd_bus_message* m) { return sd_bus_message_append(m, "{sv}", "versions", "as", 1, "1.1"); },
       "\"1.1\""},
      {"algorithms kind",
       [](sd_bus_message* m) {
         return sd_bus_message_append(m, "{sv}", "algorithms", "a{sas}", 1, "ciphers", 1, "x");
       },
       "\"ciphers\""},
      {"pinned without pins",
       [](sd_bus_message* m) { return sd_bus_message_append(m, "{sv}", "peer-validation", "s", "pinned"); },
       "'peer-pins'"},
      {"application without validator",
       [](sd_bus_message* m) { return sd_bus_message_append(m, "{sv}", "peer-validation", "s", "application"); },
       "'validator'"},
      {"bad pin",
       [](sd_bus_message* m) {
         return sd_bus_message_append(m, "{sv}{sv}", "peer-validation", "s", "pinned", "peer-pins", "as", 1,
                                      "md5/abc");
       },
       "md5/abc"},
      {"twice",
       [](sd_bus_message* m) {
         return sd_bus_message_append(m, "{sv}{sv}", "alpn", "as", 1, "h2", "alpn", "as", 1, "h2");
       },
       "twice"},
      {"empty identity", [](sd_bus_message* m) { return sd_bus_message_append(m, "{sv}", "identity", "s", ""); },
       "'identity'"},
      {"zero timeout", [](sd_bus_message* m) { return sd_bus_message_append(m, "{sv}", "timeout-ms", "u", 0u); },
       "'timeout-ms'"},
      {"client asks for client certificate",
       [](sd_bus_message* m) {
         return sd_bus_message_append(m, "{sv}", "require-peer-certificate", "b", 1);
       },
       "server role"},
  };
  for (const auto& c : cases) {
    CallResult r = secure_pair(c.props);
    EXPECT_EQ(r.error_name, "org.tapsec1.Error.InvalidArgument") << c.what;
    EXPECT_NE(r.error_message.find(c.expected_fragment), std::string::npos) << c.what << ": " << r.error_message;
  }
  EXPECT_EQ(server_->backend.snapshot().secure_calls, 0);
}

TEST_F(BusServiceTest, BadRoleIsInvalidArgument) {
  CallResult r = secure_pair({}, "both");
  EXPECT_EQ(r.error_name, "org.tapsec1.Error.InvalidArgument");
  EXPECT_NE(r.error_message.find("\"both\""), std::string::npos) << r.error_message;
  EXPECT_NE(r.error_message.find("\"client\" or \"server\""), std::string::npos) << r.error_message;
}

TEST_F(BusServiceTest, WrongMethodSignatureIsRejectedBySdBus) {
  CallResult r = call(bus::kManagerPath, bus::kManagerInterface, "SecureSocket",
                      [](sd_bus_message* m) { return sd_bus_message_append(m, "ss", "client", "x"); });
  EXPECT_EQ(r.error_name, "org.freedesktop.DBus.Error.InvalidArgs");
  EXPECT_NE(r.error_message.find("hsa{sv}"), std::string::npos) << r.error_message;
  r = call(bus::kManagerPath, bus::kManagerInterface, "NoSuchMethod");
  EXPECT_EQ(r.error_name, "org.freedesktop.DBus.Error.UnknownMethod");
}

// ---- backend results and credentials ----

TEST_F(BusServiceTest, BackendErrorsKeepTheirNameAndMessage) {
  server_->backend.mode = FakeBackend::SecureMode::kFail;
  {
    std::lock_guard lock(server_->backend.mutex);
    server_->backend.failure = {"org.tapsec1.Error.HandshakeFailed", "peer sent alert 40 (handshake_failure)"};
  }
  CallResult r = secure_pair({});
  EXPECT_EQ(r.error_name, "org.tapsec1.Error.HandshakeFailed");
  EXPECT_EQ(r.error_message, "peer sent alert 40 (handshake_failure)");

  {
    std::lock_guard lock(server_->backend.mutex);
    server_->backend.failure = {"not an error name", "oops"};
  }
  r = secure_pair({});
  EXPECT_EQ(r.error_name, "org.tapsec1.Error.Internal") << "an invalid error name must not reach the wire";
}

TEST_F(BusServiceTest, DroppedCompletionStillAnswers) {
  server_->backend.mode = FakeBackend::SecureMode::kDrop;
  CallResult r = secure_pair({});
  EXPECT_EQ(r.error_name, "org.tapsec1.Error.Internal");
  EXPECT_NE(r.error_message.find("dropped"), std::string::npos) << r.error_message;
}

TEST_F(BusServiceTest, CallerCredentialsReachTheBackend) {
  ASSERT_TRUE(secure_pair({}).ok());
  bus::CallerCredentials c = server_->backend.snapshot().caller;
  EXPECT_EQ(c.uid, getuid());
  // The bus records the groups at connect time (the effective gid and the
  // supplementary groups), not which one is primary.
  EXPECT_EQ(c.gid, policy::kNoPrimaryGroup);
  std::vector<gid_t> groups(static_cast<std::size_t>(getgroups(0, nullptr)));
  getgroups(static_cast<int>(groups.size()), groups.data());
  groups.push_back(getegid());
  std::sort(groups.begin(), groups.end());
  groups.erase(std::unique(groups.begin(), groups.end()), groups.end());
  auto recorded = c.supplementary_gids;
  std::sort(recorded.begin(), recorded.end());
  EXPECT_EQ(recorded, groups);
  EXPECT_EQ(c.pid, getpid());
  EXPECT_EQ(c.unique_name, client_name_);
}

TEST_F(BusServiceTest, ConnectChecksArgumentsAndReturnsASocket) {
  auto connect_args = [](const char* host, std::uint16_t port, const Writer& props) -> Writer {
    return [=](sd_bus_message* m) {
      int r = sd_bus_message_append(m, "sq", host, port);
      if (r < 0) return r;
      if ((r = sd_bus_message_open_container(m, 'a', "{sv}")) < 0) return r;
      if (props && (r = props(m)) < 0) return r;
      return sd_bus_message_close_container(m);
    };
  };
  CallResult r = call(bus::kManagerPath, bus::kManagerInterface, "Connect",
                      connect_args("example.org", 443, [](sd_bus_message* m) {
                        return sd_bus_message_append(m, "{sv}", "alpn", "as", 1, "h2");
                      }));
  ASSERT_TRUE(r.ok()) << r.error_name << ": " << r.error_message;
  int fd = -1;
  const char* path = nullptr;
  ASSERT_GE(sd_bus_message_read(r.reply.get(), "ho", &fd, &path), 0);
  EXPECT_GE(fd, 0);
  auto seen = server_->backend.snapshot();
  EXPECT_EQ(seen.host, "example.org");
  EXPECT_EQ(seen.port, 443);
  EXPECT_EQ(seen.props.alpn, std::vector<std::string>{"h2"});
  EXPECT_EQ(seen.caller.uid, getuid());

  r = call(bus::kManagerPath, bus::kManagerInterface, "Connect", connect_args("", 443, {}));
  EXPECT_EQ(r.error_name, "org.tapsec1.Error.InvalidArgument");
  r = call(bus::kManagerPath, bus::kManagerInterface, "Connect", connect_args("example.org", 0, {}));
  EXPECT_EQ(r.error_name, "org.tapsec1.Error.InvalidArgument");
  EXPECT_NE(r.error_message.find("port"), std::string::npos);
  EXPECT_EQ(server_->backend.snapshot().connect_calls, 1);
}

TEST_F(BusServiceTest, EstablishTunnelChecksPropsAndReturnsTheIkeSa) {
  auto tunnel_args = [](const char* peer, const Writer& props) -> Writer {
    return [=](sd_bus_message* m) {
      int r = sd_bus_message_append(m, "s", peer);
      if (r < 0) return r;
      if ((r = sd_bus_message_open_container(m, 'a', "{sv}")) < 0) return r;
      if (props && (r = props(m)) < 0) return r;
      return sd_bus_message_close_container(m);
    };
  };
  CallResult r = call(bus::kManagerPath, bus::kManagerInterface, "EstablishTunnel",
                      tunnel_args("192.0.2.2", [](sd_bus_message* m) {
                        int r = sd_bus_message_append(m, "{sv}", "psk", "s", "site");
                        if (r >= 0) r = sd_bus_message_append(m, "{sv}", "local-ts", "as", 1, "10.1.0.0/24");
                        if (r >= 0) r = sd_bus_message_append(m, "{sv}", "mode", "s", "transport");
                        return r;
                      }));
  ASSERT_TRUE(r.ok()) << r.error_name << ": " << r.error_message;
  const char* path = nullptr;
  ASSERT_GE(sd_bus_message_read(r.reply.get(), "o", &path), 0);
  EXPECT_STREQ(path, "/org/tapsec1/association/77");
  auto seen = server_->backend.snapshot();
  EXPECT_EQ(seen.tunnel_peer, "192.0.2.2");
  EXPECT_EQ(seen.tunnel_props.psk, "site");
  EXPECT_EQ(seen.tunnel_props.local_ts, std::vector<std::string>{"10.1.0.0/24"});
  EXPECT_EQ(seen.tunnel_props.mode, "transport");

  struct Bad {
    const char* peer;
    Writer props;
    const char* error;
  };
  std::vector<Bad> bad = {
      {"", {}, "org.tapsec1.Error.InvalidArgument"},
      {"x", [](sd_bus_message* m) { return sd_bus_message_append(m, "{sv}", "alpn", "as", 0); },
       "org.tapsec1.Error.UnknownProperty"},
      {"x", [](sd_bus_message* m) { return sd_bus_message_append(m, "{sv}", "mode", "s", "sideways"); },
       "org.tapsec1.Error.InvalidArgument"},
      {"x", [](sd_bus_message* m) { return sd_bus_message_append(m, "{sv}", "mode", "u", 1); },
       "org.tapsec1.Error.InvalidArgument"},
      {"x",
       [](sd_bus_message* m) {
         int r = sd_bus_message_append(m, "{sv}", "psk", "s", "a");
         return r < 0 ? r : sd_bus_message_append(m, "{sv}", "identity", "s", "b");
       },
       "org.tapsec1.Error.InvalidArgument"},
      {"x", [](sd_bus_message* m) { return sd_bus_message_append(m, "{sv}", "remote-ts", "as", 1, "10.0.0.0/8;"); },
       "org.tapsec1.Error.InvalidArgument"},
      {"fail", {}, "org.tapsec1.Error.PolicyDenied"},
  };
  for (const auto& b : bad) {
    r = call(bus::kManagerPath, bus::kManagerInterface, "EstablishTunnel", tunnel_args(b.peer, b.props));
    EXPECT_EQ(r.error_name, b.error) << b.peer << ": " << r.error_message;
  }
  EXPECT_EQ(server_->backend.snapshot().tunnel_calls, 2) << "bad props must not reach the backend";

  r = call(bus::kManagerPath, bus::kManagerInterface, "ListTunnels");
  ASSERT_TRUE(r.ok()) << r.error_message;
  ASSERT_GE(sd_bus_message_enter_container(r.reply.get(), 'a', "(ssssso)"), 0);
  std::vector<std::string> rows;
  const char *name, *protocol, *peer, *start, *state, *association;
  while (sd_bus_message_read(r.reply.get(), "(ssssso)", &name, &protocol, &peer, &start, &state, &association) > 0)
    rows.push_back(std::string(name) + " " + protocol + " " + peer + " " + start + " " + state + " " + association);
  EXPECT_EQ(rows, (std::vector<std::string>{"to-beta ikev2 192.0.2.2 boot up /org/tapsec1/association/77",
                                            "anyone ikev2 %any none down /"}));
}

// ---- objects, properties, signals ----

TEST_F(BusServiceTest, AssociationObjectsAppearAndDisappear) {
  struct Seen {
    std::vector<std::string> added, removed;
    std::vector<std::string> removed_interfaces;
    std::string terminated_reason;
  } seen;
  SlotRef added_match, removed_match, terminated_match;
  auto on_added = [](sd_bus_message* m, void* userdata, sd_bus_error*) -> int {
    const char* path;
    if (sd_bus_message_read_basic(m, 'o', &path) > 0) static_cast<Seen*>(userdata)->added.emplace_back(path);
    return 0;
  };
  auto on_removed = [](sd_bus_message* m, void* userdata, sd_bus_error*) -> int {
    auto* s = static_cast<Seen*>(userdata);
    const char* path;
    if (sd_bus_message_read_basic(m, 'o', &path) > 0) s->removed.emplace_back(path);
    sd_bus_message_enter_container(m, 'a', "s");
    const char* interface;
    while (sd_bus_message_read_basic(m, 's', &interface) > 0) s->removed_interfaces.emplace_back(interface);
    return 0;
  };
  auto on_terminated = [](sd_bus_message* m, void* userdata, sd_bus_error*) -> int {
    const char* reason;
    if (sd_bus_message_read_basic(m, 's', &reason) > 0) static_cast<Seen*>(userdata)->terminated_reason = reason;
    return 0;
  };
  ASSERT_GE(sd_bus_match_signal(client_.get(), added_match.out(), bus::kBusName, bus::kManagerPath,
                                "org.freedesktop.DBus.ObjectManager", "InterfacesAdded", on_added, &seen),
            0);
  ASSERT_GE(sd_bus_match_signal(client_.get(), removed_match.out(), bus::kBusName, bus::kManagerPath,
                                "org.freedesktop.DBus.ObjectManager", "InterfacesRemoved", on_removed, &seen),
            0);
  ASSERT_GE(sd_bus_match_signal(client_.get(), terminated_match.out(), bus::kBusName, nullptr,
                                bus::kAssociationInterface, "Terminated", on_terminated, &seen),
            0);

  EXPECT_TRUE(list_associations().empty());
  CallResult r = secure_pair({});
  ASSERT_TRUE(r.ok()) << r.error_message;
  const std::string path = "/org/tapsec1/association/1";
  EXPECT_EQ(list_associations(), std::vector<std::string>{path});
  pump_until([&] { return !seen.added.empty(); });
  EXPECT_EQ(seen.added, std::vector<std::string>{path});

  // GetManagedObjects lists it with its properties.
  r = call(bus::kManagerPath, "org.freedesktop.DBus.ObjectManager", "GetManagedObjects");
  ASSERT_TRUE(r.ok()) << r.error_message;
  bool found = false;
  ASSERT_GE(sd_bus_message_enter_container(r.reply.get(), 'a', "{oa{sa{sv}}}"), 0);
  while (sd_bus_message_enter_container(r.reply.get(), 'e', "oa{sa{sv}}") > 0) {
    const char* object;
    sd_bus_message_read_basic(r.reply.get(), 'o', &object);
    sd_bus_message_enter_container(r.reply.get(), 'a', "{sa{sv}}");
    while (sd_bus_message_enter_container(r.reply.get(), 'e', "sa{sv}") > 0) {
      const char* interface;
      sd_bus_message_read_basic(r.reply.get(), 's', &interface);
      if (object == path && std::string(interface) == bus::kAssociationInterface) {
        auto properties = read_property_map(r.reply.get());
        EXPECT_EQ(properties["Cipher"], "s:TLS_AES_128_GCM_SHA256");
        found = true;
      } else {
        sd_bus_message_skip(r.reply.get(), "a{sv}");
      }
      sd_bus_message_exit_container(r.reply.get());
    }
    sd_bus_message_exit_container(r.reply.get());
    sd_bus_message_exit_container(r.reply.get());
  }
  EXPECT_TRUE(found) << "GetManagedObjects does not list " << path;

  // Every property, with its type and value; the backend is read once for
  // the whole reply, not once per property.
  int reads_before = 0;
  {
    std::lock_guard lock(server_->backend.mutex);
    reads_before = server_->backend.association_reads;
  }
  r = call(path.c_str(), "org.freedesktop.DBus.Properties", "GetAll",
           [](sd_bus_message* m) { return sd_bus_message_append(m, "s", bus::kAssociationInterface); });
  ASSERT_TRUE(r.ok()) << r.error_message;
  {
    std::lock_guard lock(server_->backend.mutex);
    // One for the object lookup, one for the properties.
    EXPECT_LE(server_->backend.association_reads - reads_before, 2);
  }
  auto properties = read_property_map(r.reply.get());
  std::map<std::string, std::string> expected = {
      {"Protocol", "s:tls"},
      {"Version", "s:TLSv1.3"},
      {"Cipher", "s:TLS_AES_128_GCM_SHA256"},
      {"Group", "s:X25519"},
      {"Role", "s:client"},
      {"LocalIdentity", "s:web"},
      {"PeerIdentity", "s:CN=peer.example"},
      {"ServerName", "s:peer.example"},
      {"ALPN", "s:h2"},
      {"Resumed", "b:1"},
      {"Offload", "s:userspace"},
      {"KeyEpoch", "t:0"},
      {"BytesSent", "t:1001"},
      {"BytesReceived", "t:2001"},
      {"RecordsSent", "t:3"},
      {"RecordsReceived", "t:4"},
      {"ExpiresAt", "t:5555"},
      {"State", "s:established"},
      {"LocalAddress", "s:127.0.0.1:1000"},
      {"PeerAddress", "s:127.0.0.1:2000"},
      {"OwnerUid", "u:" + std::to_string(getuid())},
      {"CreatedAt", "t:1234567"},
      {"Parent", "o:/"},
      {"TunnelName", "s:"},
      {"Mode", "s:"},
      {"LocalTrafficSelectors", "as:"},
      {"RemoteTrafficSelectors", "as:"},
      {"InboundSPI", "s:"},
      {"OutboundSPI", "s:"},
      {"Encapsulation", "s:"},
      {"PacketsSent", "t:0"},
      {"PacketsReceived", "t:0"},
      {"Interface", "s:"},
      {"PublicKey", "s:"},
      {"PeerPublicKey", "s:"},
      {"ListenPort", "q:0"},
      {"LastHandshake", "t:0"},
      {"PresharedKey", "s:"},
  };
  EXPECT_EQ(properties, expected);

  // Terminate: signal, InterfacesRemoved, object gone.
  r = call(path.c_str(), bus::kAssociationInterface, "Terminate");
  ASSERT_TRUE(r.ok()) << r.error_message;
  pump_until([&] { return !seen.removed.empty() && !seen.terminated_reason.empty(); });
  EXPECT_EQ(seen.removed, std::vector<std::string>{path});
  EXPECT_NE(std::find(seen.removed_interfaces.begin(), seen.removed_interfaces.end(), bus::kAssociationInterface),
            seen.removed_interfaces.end());
  EXPECT_EQ(seen.terminated_reason, "terminated by the application");
  EXPECT_TRUE(list_associations().empty());
  r = call(path.c_str(), "org.freedesktop.DBus.Properties", "Get",
           [](sd_bus_message* m) { return sd_bus_message_append(m, "ss", bus::kAssociationInterface, "State"); });
  EXPECT_EQ(r.error_name, "org.freedesktop.DBus.Error.UnknownObject");
  // Paths that are no association.
  r = call("/org/tapsec1/association/01", bus::kAssociationInterface, "Terminate");
  EXPECT_FALSE(r.ok());
}

TEST_F(BusServiceTest, SignalsAreEmitted) {
  std::uint64_t id = server_->on_loop([&] { return server_->backend.add_association(getuid(), "client"); });
  std::string path = bus::association_path(id);
  struct Seen {
    std::vector<std::string> signals;
    std::set<std::string> changed;
  } seen;
  SlotRef signal_match, changed_match;
  auto on_signal = [](sd_bus_message* m, void* userdata, sd_bus_error*) -> int {
    auto* s = static_cast<Seen*>(userdata);
    std::string text = sd_bus_message_get_member(m);
    std::string signature = sd_bus_message_get_signature(m, 1);
    if (signature == "t") {
      std::uint64_t v;
      sd_bus_message_read_basic(m, 't', &v);
      text += " " + std::to_string(v);
    } else if (signature == "ss") {
      const char *a, *b;
      sd_bus_message_read(m, "ss", &a, &b);
      text += std::string(" ") + a + " " + b;
    } else if (signature == "s") {
      const char* a;
      sd_bus_message_read_basic(m, 's', &a);
      text += std::string(" ") + a;
    }
    s->signals.push_back(text);
    return 0;
  };
  auto on_changed = [](sd_bus_message* m, void* userdata, sd_bus_error*) -> int {
    auto* s = static_cast<Seen*>(userdata);
    const char* interface;
    sd_bus_message_read_basic(m, 's', &interface);
    for (const auto& [name, value] : read_property_map(m)) s->changed.insert(name + "=" + value);
    return 0;
  };
  ASSERT_GE(sd_bus_match_signal(client_.get(), signal_match.out(), bus::kBusName, path.c_str(),
                                bus::kAssociationInterface, nullptr, on_signal, &seen),
            0);
  ASSERT_GE(sd_bus_match_signal(client_.get(), changed_match.out(), bus::kBusName, path.c_str(),
                                "org.freedesktop.DBus.Properties", "PropertiesChanged", on_changed, &seen),
            0);

  // Signals go to connections the agent knows, never as broadcasts: the
  // client introduces itself the way an ObjectManager client does.
  ASSERT_TRUE(call(bus::kManagerPath, "org.freedesktop.DBus.ObjectManager", "GetManagedObjects").ok());
  server_->on_loop([&] {
    server_->service().key_expiring(id, 1000);
    server_->service().path_changed(id, "10.0.0.1:5->10.0.0.2:443", "10.0.1.1:5->10.0.0.2:443");
    server_->service().terminated(id, "peer closed");
    return 0;
  });
  CallResult r = call(path.c_str(), bus::kAssociationInterface, "UpdateKeys",
                      [](sd_bus_message* m) { return sd_bus_message_append(m, "b", 1); });
  ASSERT_TRUE(r.ok()) << r.error_message;
  pump_until([&] { return seen.signals.size() >= 4 && seen.changed.count("KeyEpoch=t:1"); });
  EXPECT_EQ(seen.signals, (std::vector<std::string>{"KeyExpiring 1000",
                                                    "PathChanged 10.0.0.1:5->10.0.0.2:443 10.0.1.1:5->10.0.0.2:443",
                                                    "Terminated peer closed", "KeysUpdated 1"}));
  EXPECT_TRUE(seen.changed.count("KeyEpoch=t:1")) << "no PropertiesChanged for KeyEpoch";
  EXPECT_TRUE(seen.changed.count("State=s:established"));
  EXPECT_TRUE(seen.changed.count("PeerAddress=s:127.0.0.1:2000"));
  EXPECT_EQ(server_->backend.snapshot().method_log, std::vector<std::string>{"UpdateKeys 1 true"});
}

TEST_F(BusServiceTest, AssociationMethodsReachTheBackend) {
  std::uint64_t id = server_->on_loop([&] { return server_->backend.add_association(getuid(), "client"); });
  std::string path = bus::association_path(id);
  CallResult r = call(path.c_str(), bus::kAssociationInterface, "ExportKeyingMaterial", [](sd_bus_message* m) {
    static const std::uint8_t context[] = {9, 9};
    int r = sd_bus_message_append(m, "s", "EXPORTER-test");
    if (r < 0) return r;
    if ((r = sd_bus_message_append_array(m, 'y', context, sizeof context)) < 0) return r;
    return sd_bus_message_append(m, "u", 4u);
  });
  ASSERT_TRUE(r.ok()) << r.error_name << ": " << r.error_message;
  const void* data = nullptr;
  std::size_t size = 0;
  ASSERT_GE(sd_bus_message_read_array(r.reply.get(), 'y', &data, &size), 0);
  const auto* bytes = static_cast<const std::uint8_t*>(data);
  EXPECT_EQ(std::vector<std::uint8_t>(bytes, bytes + size), (std::vector<std::uint8_t>{2, 3, 4, 5}));

  auto export_call = [&](const char* label, std::uint32_t length) {
    return call(path.c_str(), bus::kAssociationInterface, "ExportKeyingMaterial", [=](sd_bus_message* m) {
      int r = sd_bus_message_append(m, "s", label);
      if (r < 0) return r;
      if ((r = sd_bus_message_append_array(m, 'y', nullptr, 0)) < 0) return r;
      return sd_bus_message_append(m, "u", length);
    });
  };
  EXPECT_EQ(export_call("denied", 16).error_name, "org.tapsec1.Error.ExportDenied");
  EXPECT_EQ(export_call("x", 0).error_name, "org.tapsec1.Error.InvalidArgument");

  r = call(bus::kManagerPath, bus::kManagerInterface, "FlushSessionCache");
  ASSERT_TRUE(r.ok()) << r.error_message;
  std::uint32_t removed = 0;
  ASSERT_GE(sd_bus_message_read_basic(r.reply.get(), 'u', &removed), 0);
  EXPECT_EQ(removed, 7u);
  EXPECT_EQ(server_->backend.snapshot().method_log,
            (std::vector<std::string>{"Export 1 EXPORTER-test 2 4", "Export 1 denied 0 16", "Flush"}));
  EXPECT_EQ(server_->backend.snapshot().caller.uid, getuid());
}

TEST_F(BusServiceTest, ManagerProperties) {
  CallResult r = call(bus::kManagerPath, "org.freedesktop.DBus.Properties", "GetAll",
                      [](sd_bus_message* m) { return sd_bus_message_append(m, "s", bus::kManagerInterface); });
  ASSERT_TRUE(r.ok()) << r.error_message;
  auto properties = read_property_map(r.reply.get());
  EXPECT_EQ(properties, (std::map<std::string, std::string>{{"Version", "s:0.1.0-test"},
                                                            {"KernelFeatures", "as:ktls,ktls-rekey,"},
                                                            {"SessionCacheEntries", "u:3"},
                                                            {"Statistics", "a{st}:"},
                                                            {"SessionCacheCapacity", "u:1024"}}));
  ASSERT_EQ(getuid(), 0u) << "this check assumes the test runs as root (integration label)";
  r = call(bus::kManagerPath, "org.freedesktop.DBus.Properties", "Set", [](sd_bus_message* m) {
    return sd_bus_message_append(m, "ssv", bus::kManagerInterface, "SessionCacheCapacity", "u", 64u);
  });
  ASSERT_TRUE(r.ok()) << r.error_name << ": " << r.error_message;
  EXPECT_EQ(server_->backend.snapshot().capacity, 64u);
}

// ---- calling back into the application ----

struct Validator {
  enum class Answer { kAccept, kReject, kError, kSilent } answer = Answer::kAccept;
  std::string protocol, server_name;
  std::vector<std::vector<std::uint8_t>> chain;
  std::string sender;
  int calls = 0;
  std::vector<MessageRef> unanswered;

  static int validate(sd_bus_message* m, void* userdata, sd_bus_error* ret_error) {
    auto* v = static_cast<Validator*>(userdata);
    ++v->calls;
    v->sender = sd_bus_message_get_sender(m);
    const char *protocol, *server_name;
    int r = sd_bus_message_read(m, "ss", &protocol, &server_name);
    if (r < 0) return r;
    v->protocol = protocol;
    v->server_name = server_name;
    v->chain.clear();
    sd_bus_message_enter_container(m, 'a', "ay");
    const void* data;
    std::size_t size;
    while ((r = sd_bus_message_read_array(m, 'y', &data, &size)) > 0) {
      const auto* bytes = static_cast<const std::uint8_t*>(data);
      v->chain.emplace_back(bytes, bytes + size);
    }
    switch (v->answer) {
      case Answer::kAccept:
        return sd_bus_reply_method_return(m, "bs", 1, "");
      case Answer::kReject:
        return sd_bus_reply_method_return(m, "bs", 0, "pin mismatch");
      case Answer::kError:
        return sd_bus_error_set(ret_error, "com.example.App.Broken", "validator crashed");
      case Answer::kSilent:
        v->unanswered.push_back(MessageRef::share(m));
        return 1;
    }
    return 0;
  }
};

const sd_bus_vtable kValidatorVtable[] = {
    SD_BUS_VTABLE_START(0),
    SD_BUS_METHOD("ValidatePeer", "ssaay", "bs", Validator::validate, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_VTABLE_END,
};

TEST_F(BusServiceTest, PeerValidatorIsCalledAndItsAnswerReachesTheBackend) {
  Validator validator;
  SlotRef object;
  ASSERT_GE(sd_bus_add_object_vtable(client_.get(), object.out(), "/app/validator", bus::kPeerValidatorInterface,
                                     kValidatorVtable, &validator),
            0);
  server_->backend.mode = FakeBackend::SecureMode::kAskValidator;
  auto props = [](sd_bus_message* m) {
    return sd_bus_message_append(m, "{sv}{sv}{sv}", "peer-validation", "s", "application", "validator", "o",
                                 "/app/validator", "server-name", "s", "peer.example");
  };
  auto secure_with_validator = [&] {
    int pair[2];
    EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
    core::UniqueFd a(pair[0]), b(pair[1]);
    return call_pumping(new_call(bus::kManagerPath, bus::kManagerInterface, "SecureSocket",
                                 secure_socket_args(a.get(), "client", props)));
  };

  // Rejected: the reason travels to the backend and into the error.
  validator.answer = Validator::Answer::kReject;
  CallResult r = secure_with_validator();
  EXPECT_EQ(r.error_name, "org.tapsec1.Error.PeerNotValidated");
  EXPECT_NE(r.error_message.find("pin mismatch"), std::string::npos) << r.error_message;
  EXPECT_EQ(validator.calls, 1);
  EXPECT_EQ(validator.protocol, "tls");
  EXPECT_EQ(validator.server_name, "peer.example");
  EXPECT_EQ(validator.chain, server_->backend.chain_to_validate);
  auto answer = server_->backend.snapshot().validation;
  ASSERT_TRUE(answer.has_value());
  EXPECT_FALSE(answer->first);
  EXPECT_EQ(answer->second, "pin mismatch");

  // Accepted.
  validator.answer = Validator::Answer::kAccept;
  r = secure_with_validator();
  EXPECT_TRUE(r.ok()) << r.error_name << ": " << r.error_message;
  EXPECT_TRUE(server_->backend.snapshot().validation->first);

  // The validator fails: a rejection naming the error.
  validator.answer = Validator::Answer::kError;
  r = secure_with_validator();
  EXPECT_EQ(r.error_name, "org.tapsec1.Error.PeerNotValidated");
  EXPECT_NE(server_->backend.snapshot().validation->second.find("com.example.App.Broken"), std::string::npos);

  // The validator never answers: rejected when the time is up.
  validator.answer = Validator::Answer::kSilent;
  r = secure_with_validator();
  EXPECT_EQ(r.error_name, "org.tapsec1.Error.PeerNotValidated");
  EXPECT_FALSE(server_->backend.snapshot().validation->first);
  EXPECT_EQ(server_->on_loop([&] { return server_->service().pending_validations(); }), 0u);
  EXPECT_EQ(validator.calls, 4);

  // No such object on the caller's connection.
  object.reset();
  r = secure_with_validator();
  EXPECT_EQ(r.error_name, "org.tapsec1.Error.PeerNotValidated");
  EXPECT_NE(server_->backend.snapshot().validation->second.find("org.freedesktop.DBus.Error.Unknown"),
            std::string::npos)
      << server_->backend.snapshot().validation->second;
}

// ---- the introspection XML cannot drift from the code ----

// interface -> member -> "kind signature" (e.g. "method hsa{sv}>ho").
using Members = std::map<std::string, std::map<std::string, std::string>>;

Members parse_introspection(const std::string& xml) {
  Members members;
  std::regex interface_re(R"re(<interface name="([^"]+)">([\s\S]*?)</interface>)re");
  std::regex member_re(R"re(<(method|signal|property) name="([^"]+)"([^>]*?)(/>|>([\s\S]*?)</\1>))re");
  std::regex arg_re(R"re(<arg ([^>]*)/>)re");
  std::regex type_re(R"re(type="([^"]+)")re");
  std::regex direction_re(R"re(direction="([^"]+)")re");
  for (std::sregex_iterator i(xml.begin(), xml.end(), interface_re), end; i != end; ++i) {
    std::string interface = (*i)[1];
    std::string body = (*i)[2];
    for (std::sregex_iterator j(body.begin(), body.end(), member_re); j != end; ++j) {
      std::string kind = (*j)[1], name = (*j)[2], attributes = (*j)[3], inner = (*j)[5];
      std::string in, out;
      if (kind == "property") {
        std::smatch type;
        std::regex_search(attributes, type, type_re);
        in = type[1];
      }
      for (std::sregex_iterator k(inner.begin(), inner.end(), arg_re); k != end; ++k) {
        std::string arg = (*k)[1];
        std::smatch type, direction;
        std::regex_search(arg, type, type_re);
        bool is_out = std::regex_search(arg, direction, direction_re) && direction[1] == "out";
        (is_out ? out : in) += type[1];
      }
      members[interface][name] = kind + " " + in + ">" + out;
    }
  }
  return members;
}

std::string read_text_file(const std::string& path) {
  std::ifstream file(path);
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

TEST_F(BusServiceTest, IntrospectionMatchesTheShippedXml) {
  std::uint64_t id = server_->on_loop([&] { return server_->backend.add_association(getuid(), "client"); });
  const std::string dir = TAPSEC_DBUS_INTERFACES_DIR;
  struct Check {
    std::string path, interface, file;
  };
  for (const Check& c : {Check{bus::kManagerPath, bus::kManagerInterface, dir + "/org.tapsec1.Manager.xml"},
                         Check{bus::association_path(id), bus::kAssociationInterface,
                               dir + "/org.tapsec1.Association.xml"}}) {
    std::string shipped = read_text_file(c.file);
    ASSERT_FALSE(shipped.empty()) << c.file;
    CallResult r = call(c.path.c_str(), "org.freedesktop.DBus.Introspectable", "Introspect");
    ASSERT_TRUE(r.ok()) << r.error_message;
    const char* live = nullptr;
    ASSERT_GE(sd_bus_message_read_basic(r.reply.get(), 's', &live), 0);
    auto expected = parse_introspection(shipped)[c.interface];
    auto actual = parse_introspection(live)[c.interface];
    EXPECT_FALSE(expected.empty()) << "no members parsed from " << c.file;
    EXPECT_EQ(actual, expected) << c.interface << " differs between the agent and " << c.file;
  }
  // The validator interface the agent calls matches what it sends.
  auto validator = parse_introspection(read_text_file(dir + "/org.tapsec1.PeerValidator.xml"));
  EXPECT_EQ(validator[bus::kPeerValidatorInterface]["ValidatePeer"], "method ssaay>bs");
}

}  // namespace
}  // namespace tapsec::test

namespace tapsec::test {
namespace {

// dbus/system.d/org.tapsec1.conf on top of the system bus's deny-by-default
// rules: root owns the name; another user may call the Manager but may not
// own the name or set properties.
TEST(BusPolicyTest, OnlyRootOwnsTheNameAndOthersReachOnlyTheListedInterfaces) {
  if (getuid() != 0) {
    fprintf(stderr, "SKIP: the bus policy test needs root (it switches to another user)\n");
    GTEST_SKIP();
  }
  const std::string policy_file = std::string(TAPSEC_DBUS_INTERFACES_DIR) + "/../system.d/org.tapsec1.conf";
  const std::string system_like =
      "  <policy context=\"default\">\n"
      "    <allow user=\"*\"/>\n"
      "    <deny own=\"*\"/>\n"
      "    <deny send_type=\"method_call\"/>\n"
      "    <allow send_type=\"signal\"/>\n"
      "    <allow send_requested_reply=\"true\" send_type=\"method_return\"/>\n"
      "    <allow send_requested_reply=\"true\" send_type=\"error\"/>\n"
      "    <allow receive_type=\"method_call\"/>\n"
      "    <allow receive_type=\"method_return\"/>\n"
      "    <allow receive_type=\"error\"/>\n"
      "    <allow receive_type=\"signal\"/>\n"
      "    <allow send_destination=\"org.freedesktop.DBus\" send_interface=\"org.freedesktop.DBus\"/>\n"
      "    <allow send_destination=\"org.freedesktop.DBus\" send_interface=\"org.freedesktop.DBus.Introspectable\"/>\n"
      "  </policy>\n"
      "  <include>" + policy_file + "</include>\n";
  PrivateBus daemon(system_like, /*permissive_default_policy=*/false);
  ASSERT_TRUE(daemon.ok()) << daemon.error() << " (is " << policy_file << " valid?)";
  Server server(daemon.address(), bus::BusService::Options{});  // as root: must acquire the name

  // Another user, in a child process (credentials are per process).
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    if (setgroups(0, nullptr) != 0 || setgid(65534) != 0 || setuid(65534) != 0) _exit(10);
    sd_bus* raw = nullptr;
    if (core::open_bus(daemon.address(), &raw) < 0) _exit(11);
    SdBusPtr bus(raw);
    SdBusError error;
    MessageRef reply;
    // Calling the Manager is allowed.
    if (sd_bus_call_method(bus.get(), bus::kBusName, bus::kManagerPath, bus::kManagerInterface, "ListAssociations",
                           error.get(), reply.out(), "") < 0)
      _exit(12);
    // Setting a property is not (the bus refuses before the agent sees it).
    SdBusError set_error;
    if (sd_bus_set_property(bus.get(), bus::kBusName, bus::kManagerPath, bus::kManagerInterface,
                            "SessionCacheCapacity", set_error.get(), "u", 1u) >= 0)
      _exit(13);
    if (std::string(set_error.name()) != "org.freedesktop.DBus.Error.AccessDenied") _exit(14);
    // Owning the name is not.
    if (sd_bus_request_name(bus.get(), bus::kBusName, SD_BUS_NAME_QUEUE) >= 0) _exit(15);
    _exit(0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "10: setuid failed, 11: connect, 12: Manager call refused, 13/14: Set "
                                       "allowed, 15: name owned";
}

}  // namespace
}  // namespace tapsec::test
