#include "agent/core/reactor.h"

#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "agent/core/unique_fd.h"

namespace tapsec::core {
namespace {

using namespace std::chrono_literals;

struct SocketPair {
  UniqueFd a;
  UniqueFd b;
  SocketPair() {
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) != 0) {
      ADD_FAILURE() << "socketpair failed";
      return;
    }
    a.reset(fds[0]);
    b.reset(fds[1]);
  }
};

void write_byte(int fd, char c = 'x') { ASSERT_EQ(::write(fd, &c, 1), 1); }

// Runs the loop, failing the test (and stopping) if it is still running
// after `limit`: a broken reactor makes a test fail, never hang.
// Returns true if the loop was stopped by the test itself.
bool run_for_at_most(Reactor& reactor, Reactor::Clock::duration limit) {
  bool timed_out = false;
  Reactor::Id guard = reactor.add_timer(limit, [&] {
    timed_out = true;
    reactor.stop();
  });
  EXPECT_EQ(reactor.run(), 0);
  reactor.cancel_timer(guard);
  return !timed_out;
}

// Runs the loop for exactly `duration`, to check that something does NOT
// happen.
void run_for(Reactor& reactor, Reactor::Clock::duration duration) {
  Reactor::Id t = reactor.add_timer(duration, [&] { reactor.stop(); });
  EXPECT_EQ(reactor.run(), 0);
  reactor.cancel_timer(t);
}

TEST(Reactor, ReportsReadabilityOfASocketpair) {
  Reactor reactor;
  SocketPair pair;
  int calls = 0;
  std::string received;
  Reactor::Id w = reactor.watch(pair.b.get(), POLLIN, [&](std::uint32_t revents) {
    ++calls;
    EXPECT_TRUE(revents & POLLIN);
    char buf[16];
    ssize_t n = ::read(pair.b.get(), buf, sizeof buf);
    ASSERT_GT(n, 0);
    received.append(buf, static_cast<size_t>(n));
    reactor.stop();
  });
  EXPECT_EQ(reactor.watch_count(), 1u);

  // Nothing to read yet: the callback must stay quiet.
  run_for(reactor, 30ms);
  EXPECT_EQ(calls, 0);

  write_byte(pair.a.get(), 'q');
  ASSERT_TRUE(run_for_at_most(reactor, 2s));
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(received, "q");

  reactor.unwatch(w);
  EXPECT_EQ(reactor.watch_count(), 0u);
}

TEST(Reactor, IsLevelTriggered) {
  Reactor reactor;
  SocketPair pair;
  write_byte(pair.a.get());
  int calls = 0;
  Reactor::Id w = 0;
  // Never reads: readiness must be reported again and again.
  w = reactor.watch(pair.b.get(), POLLIN, [&](std::uint32_t) {
    if (++calls == 3) {
      reactor.unwatch(w);
      reactor.stop();
    }
  });
  ASSERT_TRUE(run_for_at_most(reactor, 2s));
  EXPECT_EQ(calls, 3);
  EXPECT_EQ(reactor.watch_count(), 0u);
}

TEST(Reactor, ModifyChangesTheEventMask) {
  Reactor reactor;
  SocketPair pair;
  std::vector<std::uint32_t> seen;
  Reactor::Id w = 0;
  // A fresh socket is writable but not readable.
  w = reactor.watch(pair.b.get(), POLLIN, [&](std::uint32_t revents) {
    seen.push_back(revents);
    reactor.modify(w, POLLIN);  // back to waiting for input only
    reactor.stop();
  });
  run_for(reactor, 30ms);
  EXPECT_TRUE(seen.empty());

  reactor.modify(w, POLLOUT);
  ASSERT_TRUE(run_for_at_most(reactor, 2s));
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_TRUE(seen[0] & POLLOUT);
  EXPECT_FALSE(seen[0] & POLLIN);

  // Writable still, but no longer asked for.
  run_for(reactor, 30ms);
  EXPECT_EQ(seen.size(), 1u);

  // A mask of 0 pauses even a ready watch.
  write_byte(pair.a.get());
  reactor.modify(w, 0);
  run_for(reactor, 30ms);
  EXPECT_EQ(seen.size(), 1u);
  reactor.modify(w, POLLIN);
  ASSERT_TRUE(run_for_at_most(reactor, 2s));
  EXPECT_EQ(seen.size(), 2u);
  reactor.unwatch(w);
}

TEST(Reactor, ModifyFromAnotherCallbackTakesEffect) {
  Reactor reactor;
  SocketPair pair;
  int writable = 0;
  Reactor::Id w = reactor.watch(pair.b.get(), 0, [&](std::uint32_t revents) {
    if (revents & POLLOUT) ++writable;
    reactor.stop();
  });
  reactor.add_timer(10ms, [&] { reactor.modify(w, POLLOUT); });
  ASSERT_TRUE(run_for_at_most(reactor, 2s));
  EXPECT_EQ(writable, 1);
  reactor.unwatch(w);
}

TEST(Reactor, CallbackCanUnwatchItself) {
  Reactor reactor;
  SocketPair pair;
  write_byte(pair.a.get());
  int calls = 0;
  Reactor::Id w = 0;
  // The data stays unread, so a watch that survived would fire again.
  w = reactor.watch(pair.b.get(), POLLIN, [&](std::uint32_t) {
    ++calls;
    reactor.unwatch(w);
    reactor.unwatch(w);  // a second unwatch is harmless
  });
  run_for(reactor, 50ms);
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(reactor.watch_count(), 0u);
}

TEST(Reactor, UnwatchedWatchNeverFiresEvenIfAlreadyReadyInTheSameBatch) {
  for (int round = 0; round < 20; ++round) {
    Reactor reactor;
    SocketPair first, second;
    write_byte(first.a.get());
    write_byte(second.a.get());
    int fired = 0;
    Reactor::Id w1 = 0, w2 = 0;
    // Both are ready at once; whichever runs first cancels the other.
    w1 = reactor.watch(first.b.get(), POLLIN, [&](std::uint32_t) {
      ++fired;
      reactor.unwatch(w2);
      reactor.unwatch(w1);
    });
    w2 = reactor.watch(second.b.get(), POLLIN, [&](std::uint32_t) {
      ++fired;
      reactor.unwatch(w1);
      reactor.unwatch(w2);
    });
    run_for(reactor, 20ms);
    ASSERT_EQ(fired, 1) << "round " << round;
    ASSERT_EQ(reactor.watch_count(), 0u);
  }
}

TEST(Reactor, CallbackCanDestroyStateItCapturedAfterUnwatch) {
  // The callback object is kept alive until it returns even though the
  // watch is gone; a shared_ptr capture released by unwatch proves it.
  Reactor reactor;
  SocketPair pair;
  write_byte(pair.a.get());
  auto payload = std::make_shared<std::string>("still here");
  std::weak_ptr<std::string> weak = payload;
  std::string observed;
  Reactor::Id w = 0;
  w = reactor.watch(pair.b.get(), POLLIN, [&, payload](std::uint32_t) {
    reactor.unwatch(w);
    observed = *payload;  // must not be freed yet
    reactor.stop();
  });
  payload.reset();
  ASSERT_TRUE(run_for_at_most(reactor, 2s));
  EXPECT_EQ(observed, "still here");
  EXPECT_TRUE(weak.expired());
}

TEST(Reactor, WatchAddedInsideACallbackWorks) {
  Reactor reactor;
  SocketPair pair;
  write_byte(pair.a.get());
  bool inner_fired = false;
  Reactor::Id inner = 0;
  reactor.add_timer(1ms, [&] {
    inner = reactor.watch(pair.b.get(), POLLIN, [&](std::uint32_t) {
      inner_fired = true;
      reactor.unwatch(inner);
      reactor.stop();
    });
  });
  ASSERT_TRUE(run_for_at_most(reactor, 2s));
  EXPECT_TRUE(inner_fired);
  EXPECT_EQ(reactor.watch_count(), 0u);
}

TEST(Reactor, InvalidFdReportsPollnvalOnceWithoutSpinning) {
  Reactor reactor;
  int fd;
  {
    SocketPair pair;
    fd = pair.a.release();
  }
  ::close(fd);
  std::vector<std::uint32_t> seen;
  Reactor::Id w = reactor.watch(fd, POLLIN, [&](std::uint32_t revents) { seen.push_back(revents); });
  run_for(reactor, 30ms);
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_TRUE(seen[0] & POLLNVAL);
  reactor.unwatch(w);
}

TEST(Reactor, HangupIsReported) {
  Reactor reactor;
  SocketPair pair;
  std::uint32_t got = 0;
  Reactor::Id w = 0;
  w = reactor.watch(pair.b.get(), POLLIN, [&](std::uint32_t revents) {
    got = revents;
    reactor.unwatch(w);
    reactor.stop();
  });
  pair.a.reset();
  ASSERT_TRUE(run_for_at_most(reactor, 2s));
  EXPECT_TRUE(got & POLLHUP) << got;
}

TEST(Reactor, TimersFireInDeadlineOrderAndTiesInInsertionOrder) {
  Reactor reactor;
  std::vector<std::string> order;
  auto start = Reactor::Clock::now();
  reactor.add_timer(30ms, [&] { order.push_back("30"); });
  reactor.add_timer(10ms, [&] { order.push_back("10"); });
  reactor.add_timer_at(start + 20ms, [&] { order.push_back("20a"); });
  reactor.add_timer_at(start + 20ms, [&] { order.push_back("20b"); });
  reactor.add_timer(40ms, [&] {
    order.push_back("40");
    reactor.stop();
  });
  EXPECT_EQ(reactor.timer_count(), 5u);
  ASSERT_TRUE(run_for_at_most(reactor, 2s));
  EXPECT_EQ(order, (std::vector<std::string>{"10", "20a", "20b", "30", "40"}));
  EXPECT_GE(Reactor::Clock::now() - start, 40ms);
  EXPECT_EQ(reactor.timer_count(), 0u);
}

TEST(Reactor, TimerDoesNotFireEarly) {
  Reactor reactor;
  auto start = Reactor::Clock::now();
  Reactor::Clock::time_point fired_at{};
  reactor.add_timer(50ms, [&] {
    fired_at = Reactor::Clock::now();
    reactor.stop();
  });
  ASSERT_TRUE(run_for_at_most(reactor, 2s));
  EXPECT_GE(fired_at - start, 50ms);
  EXPECT_LT(fired_at - start, 1s);
}

TEST(Reactor, HugeDelaysDoNotOverflow) {
  Reactor reactor;
  bool fired = false;
  reactor.add_timer(Reactor::Clock::duration::max(), [&] { fired = true; });
  reactor.add_timer_at(Reactor::Clock::time_point::max(), [&] { fired = true; });
  run_for(reactor, 10ms);
  EXPECT_FALSE(fired);
  EXPECT_EQ(reactor.timer_count(), 2u);
}

TEST(Reactor, CancelledTimerNeverFires) {
  Reactor reactor;
  bool fired = false;
  Reactor::Id t = reactor.add_timer(5ms, [&] { fired = true; });
  EXPECT_EQ(reactor.timer_count(), 1u);
  reactor.cancel_timer(t);
  reactor.cancel_timer(t);      // twice is harmless
  reactor.cancel_timer(0);      // so is the null id
  reactor.cancel_timer(12345);  // and an id never issued
  EXPECT_EQ(reactor.timer_count(), 0u);
  run_for(reactor, 30ms);
  EXPECT_FALSE(fired);
}

TEST(Reactor, TimerCancelledByAnotherTimerDueAtTheSameInstant) {
  Reactor reactor;
  auto when = Reactor::Clock::now() + 5ms;
  bool victim_fired = false;
  Reactor::Id victim = 0;
  reactor.add_timer_at(when, [&] { reactor.cancel_timer(victim); });
  victim = reactor.add_timer_at(when, [&] { victim_fired = true; });
  run_for(reactor, 30ms);
  EXPECT_FALSE(victim_fired);
  EXPECT_EQ(reactor.timer_count(), 0u);
}

TEST(Reactor, TimerCancelledFromAWatchCallback) {
  Reactor reactor;
  SocketPair pair;
  write_byte(pair.a.get());
  bool timer_fired = false;
  Reactor::Id t = reactor.add_timer(20ms, [&] { timer_fired = true; });
  Reactor::Id w = 0;
  w = reactor.watch(pair.b.get(), POLLIN, [&](std::uint32_t) {
    reactor.cancel_timer(t);
    reactor.unwatch(w);
  });
  run_for(reactor, 50ms);
  EXPECT_FALSE(timer_fired);
}

TEST(Reactor, TimerCanCancelItselfAndAddNewTimers) {
  Reactor reactor;
  int ticks = 0;
  Reactor::Id current = 0;
  std::function<void()> tick = [&] {
    reactor.cancel_timer(current);  // already fired: must be a no-op
    if (++ticks == 5) {
      reactor.stop();
      return;
    }
    current = reactor.add_timer(1ms, tick);
  };
  current = reactor.add_timer(1ms, tick);
  ASSERT_TRUE(run_for_at_most(reactor, 2s));
  EXPECT_EQ(ticks, 5);
  EXPECT_EQ(reactor.timer_count(), 0u);
}

TEST(Reactor, ManyTimersWithHalfCancelled) {
  Reactor reactor;
  std::mt19937 rng(1234);
  std::uniform_int_distribution<int> delay_ms(1, 40);  // all after the canceller below
  auto base = Reactor::Clock::now();
  struct Entry {
    Reactor::Clock::time_point when;
    Reactor::Id id;
    bool cancelled;
  };
  std::vector<Entry> entries;
  std::vector<Reactor::Clock::time_point> fired;
  for (int i = 0; i < 2000; ++i) {
    auto when = base + std::chrono::milliseconds(delay_ms(rng));
    Reactor::Id id = reactor.add_timer_at(when, [&, when] { fired.push_back(when); });
    entries.push_back({when, id, false});
  }
  // Half are cancelled up front, a quarter from inside the first timer.
  for (size_t i = 0; i < entries.size(); i += 2) {
    reactor.cancel_timer(entries[i].id);
    entries[i].cancelled = true;
  }
  reactor.add_timer_at(base, [&] {
    for (size_t i = 1; i < entries.size(); i += 4) {
      reactor.cancel_timer(entries[i].id);
      entries[i].cancelled = true;
    }
  });
  reactor.add_timer_at(base + 60ms, [&] { reactor.stop(); });
  ASSERT_TRUE(run_for_at_most(reactor, 5s));

  size_t expected = 0;
  for (const auto& e : entries) expected += e.cancelled ? 0 : 1;
  EXPECT_EQ(expected, 500u);
  EXPECT_EQ(fired.size(), expected);
  EXPECT_TRUE(std::is_sorted(fired.begin(), fired.end()));
  EXPECT_EQ(reactor.timer_count(), 0u);
}

TEST(Reactor, DeliversSignalsThroughTheLoop) {
  Reactor reactor;
  int usr1 = 0, usr2 = 0;
  reactor.on_signal(SIGUSR1, [&] {
    ++usr1;
    reactor.stop();
  });
  reactor.on_signal(SIGUSR2, [&] { ++usr2; });
  // Blocked now: raising it must not kill the test process.
  reactor.post([] { ::raise(SIGUSR1); });
  ASSERT_TRUE(run_for_at_most(reactor, 2s));
  EXPECT_EQ(usr1, 1);
  EXPECT_EQ(usr2, 0);

  // Replacing the handler takes effect.
  bool replaced = false;
  reactor.on_signal(SIGUSR1, [&] {
    replaced = true;
    if (usr2 == 1) reactor.stop();
  });
  reactor.on_signal(SIGUSR2, [&] {
    ++usr2;
    if (replaced) reactor.stop();
  });
  ::raise(SIGUSR2);
  ::raise(SIGUSR1);
  ASSERT_TRUE(run_for_at_most(reactor, 2s));
  EXPECT_TRUE(replaced);
  EXPECT_EQ(usr1, 1);
  EXPECT_EQ(usr2, 1);
  EXPECT_EQ(reactor.watch_count(), 0u);  // the signalfd is internal
}

TEST(Reactor, RejectsSignalsItCannotHandle) {
  Reactor reactor;
  reactor.on_signal(SIGKILL, [] {});
  reactor.on_signal(0, [] {});
  reactor.on_signal(100000, [] {});
  run_for(reactor, 5ms);  // still a working loop
}

TEST(Reactor, PostRunsAfterTheCurrentCallbackInOrder) {
  Reactor reactor;
  std::vector<int> order;
  reactor.add_timer(1ms, [&] {
    reactor.post([&] { order.push_back(2); });
    reactor.post([&] {
      order.push_back(3);
      reactor.post([&] {
        order.push_back(4);
        reactor.stop();
      });
    });
    order.push_back(1);
  });
  ASSERT_TRUE(run_for_at_most(reactor, 2s));
  EXPECT_EQ(order, (std::vector<int>{1, 2, 3, 4}));
}

TEST(Reactor, PostFromAnotherThreadWakesTheLoop) {
  Reactor reactor;
  std::atomic<bool> ran{false};
  std::thread poster([&] {
    std::this_thread::sleep_for(20ms);
    reactor.post([&] {
      ran = true;
      reactor.stop();
    });
  });
  // No timers or watches other than the guard: only the wake-up can end
  // the wait before the 5 s guard does.
  auto start = Reactor::Clock::now();
  bool stopped_by_post = run_for_at_most(reactor, 5s);
  poster.join();
  EXPECT_TRUE(stopped_by_post);
  EXPECT_TRUE(ran);
  EXPECT_LT(Reactor::Clock::now() - start, 2s);
}

TEST(Reactor, StopReturnsAndRunCanResume) {
  Reactor reactor;
  int first = 0, second = 0;
  reactor.add_timer(1ms, [&] {
    ++first;
    reactor.stop();
  });
  reactor.add_timer(100ms, [&] {
    ++second;
    reactor.stop();
  });
  ASSERT_TRUE(run_for_at_most(reactor, 2s));
  EXPECT_EQ(first, 1);
  EXPECT_EQ(second, 0);
  EXPECT_EQ(reactor.timer_count(), 1u);  // survives stop()
  ASSERT_TRUE(run_for_at_most(reactor, 2s));
  EXPECT_EQ(second, 1);
}

TEST(Reactor, StopLeavesReadyWatchesForTheNextRun) {
  Reactor reactor;
  SocketPair p1, p2;
  write_byte(p1.a.get());
  write_byte(p2.a.get());
  int calls = 0;
  Reactor::Id w1 = 0, w2 = 0;
  auto on_ready = [&](Reactor::Id* self) {
    return [&, self](std::uint32_t) {
      ++calls;
      reactor.unwatch(*self);
      reactor.stop();
    };
  };
  w1 = reactor.watch(p1.b.get(), POLLIN, on_ready(&w1));
  w2 = reactor.watch(p2.b.get(), POLLIN, on_ready(&w2));
  ASSERT_TRUE(run_for_at_most(reactor, 2s));
  EXPECT_EQ(calls, 1);
  // The other readiness was not lost by stopping.
  ASSERT_TRUE(run_for_at_most(reactor, 2s));
  EXPECT_EQ(calls, 2);
  EXPECT_EQ(reactor.watch_count(), 0u);
}

TEST(Reactor, RunInsideRunIsRefused) {
  Reactor reactor;
  int nested = 0;
  reactor.post([&] {
    nested = reactor.run();
    reactor.stop();
  });
  ASSERT_TRUE(run_for_at_most(reactor, 2s));
  EXPECT_EQ(nested, -EBUSY);
}

TEST(Reactor, PrepareHookRunsBeforeEachSleepAndCanBeRemoved) {
  Reactor reactor;
  int hook_calls = 0;
  Reactor::Id hook = 0;
  hook = reactor.add_prepare_hook([&] {
    if (++hook_calls == 3) reactor.remove_prepare_hook(hook);
  });
  int ticks = 0;
  std::function<void()> tick = [&] {
    if (++ticks < 6) reactor.add_timer(1ms, tick);
    else reactor.stop();
  };
  reactor.add_timer(1ms, tick);
  ASSERT_TRUE(run_for_at_most(reactor, 2s));
  EXPECT_EQ(ticks, 6);
  EXPECT_EQ(hook_calls, 3);
}

TEST(Reactor, ThrowingCallbackDoesNotBreakTheLoop) {
  Reactor reactor;
  bool later = false;
  reactor.add_timer(1ms, [] { throw std::runtime_error("boom"); });
  reactor.add_timer(5ms, [&] {
    later = true;
    reactor.stop();
  });
  ASSERT_TRUE(run_for_at_most(reactor, 2s));
  EXPECT_TRUE(later);
}

TEST(Reactor, ManyWatchesBeyondTheQueueDepth) {
  // More polls than submission slots: the reactor must flush and carry on.
  Reactor reactor(8);
  std::vector<SocketPair> pairs(100);
  std::vector<Reactor::Id> ids(pairs.size());
  int fired = 0;
  for (size_t i = 0; i < pairs.size(); ++i) {
    write_byte(pairs[i].a.get());
    ids[i] = reactor.watch(pairs[i].b.get(), POLLIN, [&, i](std::uint32_t) {
      reactor.unwatch(ids[i]);
      if (++fired == static_cast<int>(pairs.size())) reactor.stop();
    });
  }
  EXPECT_EQ(reactor.watch_count(), pairs.size());
  ASSERT_TRUE(run_for_at_most(reactor, 5s));
  EXPECT_EQ(fired, 100);
  EXPECT_EQ(reactor.watch_count(), 0u);
}

TEST(Reactor, CountsReturnToZeroAfterMixedUse) {
  Reactor reactor;
  std::vector<SocketPair> pairs(10);
  std::vector<Reactor::Id> watches;
  std::vector<Reactor::Id> timers;
  for (auto& p : pairs) watches.push_back(reactor.watch(p.b.get(), POLLIN | POLLOUT, [](std::uint32_t) {}));
  for (int i = 0; i < 10; ++i) timers.push_back(reactor.add_timer(std::chrono::hours(1), [] {}));
  EXPECT_EQ(reactor.watch_count(), 10u);
  EXPECT_EQ(reactor.timer_count(), 10u);
  run_for(reactor, 10ms);
  for (auto w : watches) reactor.unwatch(w);
  for (auto t : timers) reactor.cancel_timer(t);
  EXPECT_EQ(reactor.watch_count(), 0u);
  EXPECT_EQ(reactor.timer_count(), 0u);
  run_for(reactor, 5ms);
  EXPECT_EQ(reactor.watch_count(), 0u);
  EXPECT_EQ(reactor.timer_count(), 0u);
}

TEST(Reactor, UnwatchLetsThePeerSeeTheCloseAtOnce) {
  // An armed poll holds a reference to the file; unwatch outside run()
  // must release it so closing the fd really closes the socket.
  Reactor reactor;
  SocketPair pair;
  Reactor::Id w = reactor.watch(pair.b.get(), POLLIN, [](std::uint32_t) {});
  run_for(reactor, 5ms);  // the poll is now armed in the kernel
  reactor.unwatch(w);
  pair.b.reset();
  pollfd pfd{pair.a.get(), POLLIN, 0};
  ASSERT_EQ(::poll(&pfd, 1, 1000), 1);
  char c;
  EXPECT_EQ(::read(pair.a.get(), &c, 1), 0);  // EOF
}

TEST(Reactor, DestructionWithLiveRegistrationsIsClean) {
  SocketPair pair;
  write_byte(pair.a.get());
  {
    Reactor reactor;
    reactor.watch(pair.b.get(), POLLIN, [](std::uint32_t) {});
    reactor.add_timer(1h, [] {});
    reactor.post([] {});
    run_for(reactor, 5ms);
  }
  SUCCEED();
}

}  // namespace
}  // namespace tapsec::core
