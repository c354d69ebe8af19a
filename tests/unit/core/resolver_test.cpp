#include "agent/core/resolver.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <chrono>

#include <gtest/gtest.h>

namespace tapsec::core {
namespace {

using namespace std::chrono_literals;

// Runs the loop until `stop` is set by a callback or the deadline passes.
bool run_until(Reactor& reactor, const bool& stop, std::chrono::milliseconds limit = 5000ms) {
  auto deadline = reactor.add_timer(limit, [&] { reactor.stop(); });
  auto check = reactor.add_prepare_hook([&] {
    if (stop) reactor.stop();
  });
  reactor.run();
  reactor.cancel_timer(deadline);
  reactor.remove_prepare_hook(check);
  return stop;
}

std::size_t thread_count() {
  std::size_t n = 0;
  if (DIR* d = opendir("/proc/self/task")) {
    while (auto* e = readdir(d)) n += e->d_name[0] != '.';
    closedir(d);
  }
  return n;
}

// One lookup, run to its answer on a loop of its own.
Resolver::Result resolve_once(const std::string& host, std::uint16_t port) {
  Reactor reactor;
  Resolver resolver(reactor, {});
  bool done = false;
  Resolver::Result result = std::string("no answer");
  auto lookup = resolver.lookup(host, port, SOCK_STREAM, [&](Resolver::Result r) {
    result = std::move(r);
    done = true;
  });
  EXPECT_TRUE(std::holds_alternative<Resolver::Lookup>(lookup));
  EXPECT_TRUE(run_until(reactor, done));
  return result;
}

TEST(Resolver, AnswersOnTheLoopWithThePortFilledIn) {
  Resolver::Result result = resolve_once("127.0.0.1", 4433);
  auto* addresses = std::get_if<Resolver::Addresses>(&result);
  ASSERT_NE(addresses, nullptr) << std::get<std::string>(result);
  ASSERT_EQ(addresses->size(), 1u);
  const auto& a = reinterpret_cast<const sockaddr_in&>(addresses->front());
  EXPECT_EQ(a.sin_family, AF_INET);
  EXPECT_EQ(ntohs(a.sin_port), 4433);
  EXPECT_EQ(ntohl(a.sin_addr.s_addr), INADDR_LOOPBACK);
}

TEST(Resolver, ReportsANameThatDoesNotResolve) {
  Resolver::Result result = resolve_once("no such host name", 1);
  ASSERT_TRUE(std::holds_alternative<std::string>(result));
  EXPECT_NE(std::get<std::string>(result).find("cannot resolve no such host name"), std::string::npos);
}

TEST(Resolver, ACancelledLookupNeverCallsBack) {
  Reactor reactor;
  Resolver resolver(reactor, {});
  int calls = 0;
  bool second_done = false;
  {
    auto cancelled = resolver.lookup("127.0.0.1", 1, SOCK_STREAM, [&](Resolver::Result) { ++calls; });
    // Dropped here: queued or running, its answer must not arrive.
  }
  auto kept = resolver.lookup("127.0.0.2", 1, SOCK_STREAM, [&](Resolver::Result) { second_done = true; });
  ASSERT_TRUE(run_until(reactor, second_done));
  // Let any late answer of the first reach the loop.
  bool never = false;
  run_until(reactor, never, 200ms);
  EXPECT_EQ(calls, 0);
}

TEST(Resolver, RefusesBeyondItsQueueAndKeepsItsThreadsBounded) {
  Reactor reactor;
  Resolver resolver(reactor, {.workers = 2, .queued = 4});
  std::size_t threads_before = thread_count();
  std::vector<Resolver::Lookup> lookups;
  std::size_t refused = 0;
  int answered = 0;
  for (int i = 0; i < 50; ++i) {
    auto r = resolver.lookup("127.0.0." + std::to_string(i + 1), 1, SOCK_STREAM, [&](Resolver::Result) { ++answered; });
    if (auto* l = std::get_if<Resolver::Lookup>(&r)) lookups.push_back(std::move(*l));
    else ++refused;
  }
  // The workers may take some jobs off the queue meanwhile, but never more
  // than queue + workers are accepted.
  EXPECT_LE(lookups.size(), 6u);
  EXPECT_GE(refused, 44u);
  EXPECT_LE(thread_count(), threads_before + 2);
  bool all = false;
  auto hook = reactor.add_prepare_hook([&] { all = answered == static_cast<int>(lookups.size()); });
  EXPECT_TRUE(run_until(reactor, all));
  reactor.remove_prepare_hook(hook);
}

TEST(Resolver, ItsWorkersOutliveItWithoutHarm) {
  Reactor reactor;
  bool called = false;
  {
    Resolver resolver(reactor, {});
    auto lookup = resolver.lookup("127.0.0.1", 1, SOCK_STREAM, [&](Resolver::Result) { called = true; });
    std::get<Resolver::Lookup>(lookup).reset();
  }
  bool never = false;
  run_until(reactor, never, 200ms);
  EXPECT_FALSE(called);
}

}  // namespace
}  // namespace tapsec::core
