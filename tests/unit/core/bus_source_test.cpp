// BusSource against a real, private dbus-daemon started per test: every
// byte on the bus is moved by the Reactor, nothing calls sd_bus_wait.
#include "agent/core/bus_source.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "agent/core/reactor.h"
#include "agent/core/sd_bus_ptr.h"

namespace tapsec::core {
namespace {

using namespace std::chrono_literals;

constexpr const char* kDaemon = "/usr/bin/dbus-daemon";
constexpr const char* kServiceName = "org.tapsec1.CoreTest";
constexpr const char* kObjectPath = "/org/tapsec1/CoreTest";
constexpr const char* kInterface = "org.tapsec1.CoreTest";

// Without dbus-daemon nothing here can run: say so and report "skipped".
class RequireDaemon : public ::testing::Environment {
 public:
  void SetUp() override {
    if (::access(kDaemon, X_OK) != 0) {
      std::fprintf(stderr, "\n*** SKIPPED: %s not found; install the 'dbus' package to run BusSource tests ***\n\n",
                   kDaemon);
      std::exit(77);
    }
  }
};
[[maybe_unused]] auto* const g_require_daemon = ::testing::AddGlobalTestEnvironment(new RequireDaemon);

// A session-config dbus-daemon listening on a socket in a fresh directory.
class PrivateBusDaemon {
 public:
  PrivateBusDaemon() {
    char dir_template[] = "/tmp/tapsec-core-bus-XXXXXX";
    if (!::mkdtemp(dir_template)) return;
    dir_ = dir_template;
    std::string listen = "unix:path=" + dir_ + "/bus";

    int pipe_fds[2];
    if (::pipe2(pipe_fds, O_CLOEXEC) != 0) return;
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(pipe_fds[1], 3);  // dup2 clears CLOEXEC on the copy
      std::string listen_arg = "--address=" + listen;
      ::execl(kDaemon, kDaemon, "--session", "--nofork", "--nopidfile", listen_arg.c_str(), "--print-address=3",
              static_cast<char*>(nullptr));
      ::_exit(127);
    }
    ::close(pipe_fds[1]);
    // The daemon prints its address once it listens.
    std::string line;
    pollfd pfd{pipe_fds[0], POLLIN, 0};
    while (line.find('\n') == std::string::npos && ::poll(&pfd, 1, 5000) == 1) {
      char buf[256];
      ssize_t n = ::read(pipe_fds[0], buf, sizeof buf);
      if (n <= 0) break;
      line.append(buf, static_cast<size_t>(n));
    }
    ::close(pipe_fds[0]);
    if (auto nl = line.find('\n'); nl != std::string::npos) address_ = line.substr(0, nl);
  }

  ~PrivateBusDaemon() {
    kill();
    if (!dir_.empty()) {
      std::error_code ec;
      std::filesystem::remove_all(dir_, ec);
    }
  }

  void kill() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
      pid_ = -1;
    }
  }

  const std::string& address() const { return address_; }

 private:
  std::string dir_;
  pid_t pid_ = -1;
  std::string address_;
};

// sd-bus reply callbacks are C function pointers; this forwards to a
// std::function kept alive by the test.
using ReplyHandler = std::function<void(sd_bus_message*)>;
int forward_reply(sd_bus_message* m, void* userdata, sd_bus_error*) {
  (*static_cast<ReplyHandler*>(userdata))(m);
  return 0;
}

int echo_method(sd_bus_message* m, void*, sd_bus_error*) {
  const char* text = nullptr;
  int r = sd_bus_message_read(m, "s", &text);
  if (r < 0) return r;
  return sd_bus_reply_method_return(m, "s", text);
}

int fail_method(sd_bus_message*, void*, sd_bus_error* error) {
  return sd_bus_error_set(error, "org.tapsec1.Error.Test", "asked to fail");
}

const sd_bus_vtable kTestVtable[] = {
    SD_BUS_VTABLE_START(0),
    SD_BUS_METHOD("Echo", "s", "s", echo_method, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD("Fail", "", "", fail_method, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_VTABLE_END,
};

class BusSourceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(daemon_.address().empty()) << "dbus-daemon did not start";
  }

  SdBusPtr connect() {
    sd_bus* raw = nullptr;
    int r = open_bus(daemon_.address(), &raw);
    EXPECT_EQ(r, 0) << std::strerror(-r);
    return SdBusPtr(raw);
  }

  // Runs the loop until the test stops it; false if the guard had to.
  bool run_for_at_most(Reactor::Clock::duration limit) {
    bool timed_out = false;
    Reactor::Id guard = reactor_.add_timer(limit, [&] {
      timed_out = true;
      reactor_.stop();
    });
    EXPECT_EQ(reactor_.run(), 0);
    reactor_.cancel_timer(guard);
    return !timed_out;
  }

  // Exports the test object on `bus` and takes kServiceName, driving the
  // bus with the reactor until the name is ours.
  SdBusSlotPtr export_test_object(sd_bus* bus) {
    sd_bus_slot* slot = nullptr;
    int r = sd_bus_add_object_vtable(bus, &slot, kObjectPath, kInterface, kTestVtable, nullptr);
    EXPECT_GE(r, 0) << std::strerror(-r);
    SdBusSlotPtr vtable(slot);

    bool acquired = false;
    ReplyHandler on_name = [&](sd_bus_message* m) {
      acquired = !sd_bus_message_is_method_error(m, nullptr);
      reactor_.stop();
    };
    r = sd_bus_request_name_async(bus, nullptr, kServiceName, 0, forward_reply, &on_name);
    EXPECT_GE(r, 0) << std::strerror(-r);
    EXPECT_TRUE(run_for_at_most(5s));
    EXPECT_TRUE(acquired);
    return vtable;
  }

  // One GetId round trip: afterwards the connection is past Hello and has
  // nothing in flight.
  void settle(sd_bus* bus) {
    ReplyHandler on_reply = [&](sd_bus_message*) { reactor_.stop(); };
    ASSERT_GE(sd_bus_call_method_async(bus, nullptr, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                                       "org.freedesktop.DBus", "GetId", forward_reply, &on_reply, ""),
              0);
    ASSERT_TRUE(run_for_at_most(5s));
  }

  PrivateBusDaemon daemon_;
  Reactor reactor_;
};

TEST(OpenBus, RejectsBadSpecs) {
  sd_bus* bus = reinterpret_cast<sd_bus*>(0x1);
  EXPECT_EQ(open_bus("", &bus), -EINVAL);
  EXPECT_EQ(bus, nullptr);
  EXPECT_EQ(open_bus("system", nullptr), -EINVAL);
  EXPECT_LT(open_bus("no-such-transport:x=y", &bus), 0);
  EXPECT_EQ(bus, nullptr);
  EXPECT_LT(open_bus("unix:path=/nonexistent/tapsec/bus", &bus), 0);
  EXPECT_EQ(bus, nullptr);
}

TEST_F(BusSourceTest, GetIdIsAnsweredThroughTheReactor) {
  SdBusPtr bus = connect();
  ASSERT_TRUE(bus);
  BusSource source(reactor_, bus.get());

  std::string bus_id;
  std::string error;
  ReplyHandler on_reply = [&](sd_bus_message* m) {
    if (sd_bus_message_is_method_error(m, nullptr)) {
      error = sd_bus_message_get_error(m)->message;
    } else {
      const char* id = nullptr;
      if (sd_bus_message_read(m, "s", &id) >= 0) bus_id = id;
    }
    reactor_.stop();
  };
  sd_bus_slot* raw_slot = nullptr;
  ASSERT_GE(sd_bus_call_method_async(bus.get(), &raw_slot, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                                     "org.freedesktop.DBus", "GetId", forward_reply, &on_reply, ""),
            0);
  SdBusSlotPtr slot(raw_slot);

  ASSERT_TRUE(run_for_at_most(5s)) << "no reply to GetId";
  EXPECT_EQ(error, "");
  ASSERT_EQ(bus_id.size(), 32u) << bus_id;
  EXPECT_EQ(bus_id.find_first_not_of("0123456789abcdef"), std::string::npos) << bus_id;

  // Hello completed on the way, again only through the reactor.
  const char* unique = nullptr;
  ASSERT_GE(sd_bus_get_unique_name(bus.get(), &unique), 0);
  EXPECT_EQ(std::string(unique).rfind(":1.", 0), 0u) << unique;
  EXPECT_TRUE(source.connected());
}

std::chrono::microseconds cpu_time_used() {
  rusage usage{};
  ::getrusage(RUSAGE_SELF, &usage);
  auto micros = [](const timeval& tv) { return std::chrono::seconds(tv.tv_sec) + std::chrono::microseconds(tv.tv_usec); };
  return micros(usage.ru_utime) + micros(usage.ru_stime);
}

TEST_F(BusSourceTest, IdleConnectionDoesNotSpin) {
  // While connecting, sd-bus wants POLLOUT; once idle it wants only POLLIN.
  // A source that kept the first mask would wake up without end.
  SdBusPtr bus = connect();
  ASSERT_TRUE(bus);
  BusSource source(reactor_, bus.get());
  settle(bus.get());

  auto before = cpu_time_used();
  reactor_.add_timer(300ms, [&] { reactor_.stop(); });
  ASSERT_EQ(reactor_.run(), 0);
  auto used = cpu_time_used() - before;
  EXPECT_LT(used, 100ms) << "the loop kept waking up while the bus was idle";
}

TEST_F(BusSourceTest, CallsAnExportedMethodBetweenTwoConnections) {
  SdBusPtr server = connect();
  SdBusPtr client = connect();
  ASSERT_TRUE(server && client);
  BusSource server_source(reactor_, server.get());
  BusSource client_source(reactor_, client.get());
  SdBusSlotPtr vtable = export_test_object(server.get());

  std::string echoed;
  ReplyHandler on_echo = [&](sd_bus_message* m) {
    const char* text = nullptr;
    if (!sd_bus_message_is_method_error(m, nullptr) && sd_bus_message_read(m, "s", &text) >= 0) echoed = text;
    reactor_.stop();
  };
  ASSERT_GE(sd_bus_call_method_async(client.get(), nullptr, kServiceName, kObjectPath, kInterface, "Echo",
                                     forward_reply, &on_echo, "s", "over the reactor"),
            0);
  ASSERT_TRUE(run_for_at_most(5s));
  EXPECT_EQ(echoed, "over the reactor");

  std::string error_name;
  ReplyHandler on_fail = [&](sd_bus_message* m) {
    if (const sd_bus_error* e = sd_bus_message_get_error(m)) error_name = e->name;
    reactor_.stop();
  };
  ASSERT_GE(sd_bus_call_method_async(client.get(), nullptr, kServiceName, kObjectPath, kInterface, "Fail",
                                     forward_reply, &on_fail, ""),
            0);
  ASSERT_TRUE(run_for_at_most(5s));
  EXPECT_EQ(error_name, "org.tapsec1.Error.Test");
}

TEST_F(BusSourceTest, ManyLargeConcurrentCallsAllComeBack) {
  // Large messages outrun the socket buffers, so sd-bus must ask for
  // POLLOUT and the BusSource must follow its changing events.
  SdBusPtr server = connect();
  SdBusPtr client = connect();
  ASSERT_TRUE(server && client);
  BusSource server_source(reactor_, server.get());
  BusSource client_source(reactor_, client.get());
  SdBusSlotPtr vtable = export_test_object(server.get());

  constexpr int kCalls = 100;
  const std::string payload(64 * 1024, 'p');
  int good = 0, bad = 0;
  ReplyHandler on_echo = [&](sd_bus_message* m) {
    const char* text = nullptr;
    if (!sd_bus_message_is_method_error(m, nullptr) && sd_bus_message_read(m, "s", &text) >= 0 &&
        payload == text) {
      ++good;
    } else {
      ++bad;
    }
    if (good + bad == kCalls) reactor_.stop();
  };
  // Queued from a timer callback, i.e. not while sd-bus is processing: the
  // source learns about the queued output only through its prepare hook.
  reactor_.add_timer(1ms, [&] {
    for (int i = 0; i < kCalls; ++i) {
      int r = sd_bus_call_method_async(client.get(), nullptr, kServiceName, kObjectPath, kInterface, "Echo",
                                       forward_reply, &on_echo, "s", payload.c_str());
      if (r < 0) ++bad;
    }
  });
  ASSERT_TRUE(run_for_at_most(20s)) << "replies: " << good << " good, " << bad << " bad";
  EXPECT_EQ(good, kCalls);
  EXPECT_EQ(bad, 0);
}

TEST_F(BusSourceTest, MethodCallTimeoutIsDeliveredByTheTimer) {
  SdBusPtr server = connect();
  SdBusPtr client = connect();
  ASSERT_TRUE(server && client);
  auto server_source = std::make_unique<BusSource>(reactor_, server.get());
  BusSource client_source(reactor_, client.get());
  SdBusSlotPtr vtable = export_test_object(server.get());
  // From now on nobody reads the server's socket: the call cannot be
  // answered, and only sd-bus's own deadline can end it.
  server_source.reset();

  sd_bus_message* raw_call = nullptr;
  ASSERT_GE(sd_bus_message_new_method_call(client.get(), &raw_call, kServiceName, kObjectPath, kInterface, "Echo"),
            0);
  SdBusMessagePtr call(raw_call);
  ASSERT_GE(sd_bus_message_append(call.get(), "s", "unanswered"), 0);

  int error = 0;
  auto sent = Reactor::Clock::now();
  Reactor::Clock::duration waited{};
  ReplyHandler on_reply = [&](sd_bus_message* m) {
    waited = Reactor::Clock::now() - sent;
    error = sd_bus_message_get_errno(m);
    reactor_.stop();
  };
  settle(client.get());
  // Sent from a timer, outside any bus processing, to an idle connection:
  // only the source's look before each sleep learns of the new deadline.
  reactor_.add_timer(1ms, [&] {
    sent = Reactor::Clock::now();
    ASSERT_GE(sd_bus_call_async(client.get(), nullptr, call.get(), forward_reply, &on_reply, 200 * 1000), 0);
  });
  ASSERT_TRUE(run_for_at_most(5s)) << "the call's timeout never fired";
  EXPECT_EQ(error, ETIMEDOUT);
  EXPECT_GE(waited, 200ms);
  EXPECT_LT(waited, 3s);
}

TEST_F(BusSourceTest, LosingTheDaemonIsReportedOnce) {
  SdBusPtr bus = connect();
  ASSERT_TRUE(bus);
  int disconnects = 0;
  int error = 0;
  BusSource source(reactor_, bus.get(), [&](int e) {
    ++disconnects;
    error = e;
    reactor_.stop();
  });
  // Let the connection finish Hello first.
  reactor_.add_timer(100ms, [&] { daemon_.kill(); });
  ASSERT_TRUE(run_for_at_most(5s)) << "disconnect not noticed";
  EXPECT_EQ(disconnects, 1);
  EXPECT_LT(error, 0);
  EXPECT_FALSE(source.connected());
  EXPECT_EQ(reactor_.watch_count(), 0u);
  EXPECT_EQ(reactor_.timer_count(), 0u);

  // Nothing fires after the report.
  reactor_.add_timer(30ms, [&] { reactor_.stop(); });
  ASSERT_EQ(reactor_.run(), 0);
  EXPECT_EQ(disconnects, 1);
}

TEST_F(BusSourceTest, SourceDestroyedInsideAReplyHandler) {
  SdBusPtr bus = connect();
  ASSERT_TRUE(bus);
  auto source = std::make_unique<BusSource>(reactor_, bus.get());

  bool replied = false;
  ReplyHandler on_reply = [&](sd_bus_message*) {
    replied = true;
    source.reset();  // from inside sd_bus_process, inside the watch callback
    reactor_.post([&] { reactor_.stop(); });
  };
  ASSERT_GE(sd_bus_call_method_async(bus.get(), nullptr, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                                     "org.freedesktop.DBus", "GetId", forward_reply, &on_reply, ""),
            0);
  ASSERT_TRUE(run_for_at_most(5s));
  EXPECT_TRUE(replied);
  EXPECT_EQ(source, nullptr);
  EXPECT_EQ(reactor_.watch_count(), 0u);
  EXPECT_EQ(reactor_.timer_count(), 0u);
}

TEST_F(BusSourceTest, RegistrationsAreReleasedWithTheSource) {
  SdBusPtr bus = connect();
  ASSERT_TRUE(bus);
  {
    BusSource source(reactor_, bus.get());
    EXPECT_EQ(reactor_.watch_count(), 1u);
    reactor_.add_timer(20ms, [&] { reactor_.stop(); });
    ASSERT_EQ(reactor_.run(), 0);
  }
  EXPECT_EQ(reactor_.watch_count(), 0u);
  EXPECT_EQ(reactor_.timer_count(), 0u);
}

TEST(BusSource, RefusesABusThatIsNotStarted) {
  Reactor reactor;
  sd_bus* raw = nullptr;
  ASSERT_GE(sd_bus_new(&raw), 0);
  SdBusPtr bus(raw);
  EXPECT_THROW(BusSource(reactor, bus.get()), std::system_error);
  EXPECT_EQ(reactor.watch_count(), 0u);
}

}  // namespace
}  // namespace tapsec::core
