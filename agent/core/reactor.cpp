#include "agent/core/reactor.h"

#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <deque>
#include <exception>
#include <map>
#include <mutex>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "agent/core/log.h"

namespace tapsec::core {
namespace {

// user_data of requests whose completions carry nothing we need (poll
// removals). Poll tokens start at 1 so they never collide with it.
constexpr std::uint64_t kIgnoredCompletion = 0;

// Callbacks must not throw, but one that does must not take the whole agent
// (and every other association on the loop) down with it.
template <typename F>
void invoke_guarded(const char* what, F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    log::error("event callback threw", {{"source", what}, {"error", e.what()}});
  } catch (...) {
    log::error("event callback threw", {{"source", what}, {"error", "unknown exception"}});
  }
}

}  // namespace

// Polls are one-shot and re-armed after each callback rather than multishot:
// a one-shot poll checks readiness when it is armed, which gives the level-
// triggered behaviour the API promises. A multishot poll reports wake-ups
// only, so data a callback left unread would never be reported again.
//
// Every armed poll gets a fresh token as its user_data. unwatch() and
// modify() forget the token at once, so a completion that was already on
// its way is recognised as stale and dropped: a cancelled watch never fires.
//
// Watch and hook records are held by shared_ptr and the dispatcher keeps its
// own reference while a callback runs, so a callback may unwatch itself (or
// anything else) without destroying the function that is executing.
//
// Timers live in an ordered map in userspace; the loop sleeps in
// io_uring_enter with a timeout equal to the nearest deadline. Cancelling is
// erasing from the map, which is safe at any point, including from inside
// another timer's callback that fired in the same pass.
struct Reactor::Impl {
  struct Watch {
    int fd = -1;
    std::uint32_t events = 0;
    IoCallback callback;
    std::uint64_t armed_token = 0;  // 0: no poll in flight
    bool internal = false;          // the Reactor's own fds, not counted
    bool stalled = false;           // reported an invalid fd; waits for modify()
  };

  struct Completion {
    std::uint64_t user_data;
    std::int32_t result;
  };

  io_uring ring{};
  Id next_id = 1;
  std::uint64_t next_token = 1;

  std::unordered_map<Id, std::shared_ptr<Watch>> watches;
  std::unordered_map<std::uint64_t, Id> armed_polls;  // token -> watch
  std::vector<Id> arm_retry;  // watches whose poll could not get an SQE
  std::size_t internal_watches = 0;

  std::map<std::pair<Clock::time_point, Id>, Callback> timer_queue;
  std::unordered_map<Id, Clock::time_point> timer_deadlines;

  std::mutex posted_mutex;
  std::deque<Callback> posted;
  UniqueFd wake_fd;

  UniqueFd signal_fd;
  sigset_t signal_mask{};
  std::unordered_map<int, std::shared_ptr<Callback>> signal_handlers;

  std::map<Id, std::shared_ptr<Callback>> prepare_hooks;

  bool running = false;
  bool stop_requested = false;
  std::vector<Completion> completion_scratch;

  explicit Impl(unsigned queue_depth) {
    if (queue_depth == 0) queue_depth = 1;
    // COOP_TASKRUN avoids interrupting the loop for completions it will
    // reap anyway; SUBMIT_ALL keeps one bad request from holding back the
    // rest of a batch. Both are optional: older kernels refuse them.
    int r = io_uring_queue_init(queue_depth, &ring, IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SUBMIT_ALL);
    if (r == -EINVAL) r = io_uring_queue_init(queue_depth, &ring, 0);
    if (r < 0) throw std::system_error(-r, std::system_category(), "io_uring_queue_init");

    wake_fd.reset(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
    if (!wake_fd) {
      int err = errno;
      io_uring_queue_exit(&ring);
      throw std::system_error(err, std::system_category(), "eventfd");
    }
    sigemptyset(&signal_mask);
    add_watch(wake_fd.get(), POLLIN, [this](std::uint32_t) { drain_wake_fd(); }, /*internal=*/true);
  }

  ~Impl() {
    // Exiting the ring cancels every poll still armed; the fds themselves
    // are closed afterwards by their members.
    io_uring_queue_exit(&ring);
  }

  // ---- submission ----

  io_uring_sqe* get_sqe() {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring);
    if (sqe) return sqe;
    // The submission queue is full: hand it to the kernel and try again.
    int r = io_uring_submit(&ring);
    if (r < 0 && r != -EBUSY && r != -EAGAIN && r != -EINTR) {
      log::error("io_uring submit failed", {{"error", std::strerror(-r)}});
    }
    return io_uring_get_sqe(&ring);
  }

  void arm(Id id, Watch& w) {
    if (w.armed_token != 0 || w.events == 0 || w.stalled) return;
    io_uring_sqe* sqe = get_sqe();
    if (!sqe) {
      arm_retry.push_back(id);
      return;
    }
    std::uint64_t token = next_token++;
    io_uring_prep_poll_add(sqe, w.fd, w.events);
    io_uring_sqe_set_data64(sqe, token);
    w.armed_token = token;
    armed_polls.emplace(token, id);
  }

  // Forgets the armed poll of w (its completion becomes stale) and asks the
  // kernel to drop it so it does not pin the file.
  void disarm(Watch& w) {
    if (w.armed_token == 0) return;
    std::uint64_t token = std::exchange(w.armed_token, 0);
    armed_polls.erase(token);
    if (io_uring_sqe* sqe = get_sqe()) {
      io_uring_prep_poll_remove(sqe, token);
      io_uring_sqe_set_data64(sqe, kIgnoredCompletion);
    }
    // Without an SQE the poll stays armed until it fires or the ring
    // closes; its completion is stale either way.
  }

  void retry_arms() {
    if (arm_retry.empty()) return;
    std::vector<Id> ids;
    ids.swap(arm_retry);
    for (Id id : ids) {
      auto it = watches.find(id);
      if (it != watches.end()) arm(id, *it->second);
    }
  }

  Id add_watch(int fd, std::uint32_t events, IoCallback cb, bool internal) {
    Id id = next_id++;
    auto w = std::make_shared<Watch>();
    w->fd = fd;
    w->events = events;
    w->callback = std::move(cb);
    w->internal = internal;
    watches.emplace(id, w);
    if (internal) ++internal_watches;
    arm(id, *w);
    return id;
  }

  void remove_watch(Id id) {
    auto it = watches.find(id);
    if (it == watches.end()) return;
    disarm(*it->second);
    if (it->second->internal) --internal_watches;
    watches.erase(it);
    // Outside the loop nothing would submit the removal soon; do it now so
    // the kernel lets go of the file before the caller closes it.
    if (!running) io_uring_submit(&ring);
  }

  // ---- dispatch ----

  void handle_poll_completion(const Completion& c) {
    auto token_it = armed_polls.find(c.user_data);
    if (token_it == armed_polls.end()) return;  // stale: unwatched or modified
    Id id = token_it->second;
    armed_polls.erase(token_it);
    auto it = watches.find(id);
    if (it == watches.end()) return;
    std::shared_ptr<Watch> w = it->second;  // keeps the callback alive
    w->armed_token = 0;

    std::uint32_t revents = 0;
    if (c.result >= 0) {
      revents = static_cast<std::uint32_t>(c.result);
    } else if (c.result == -ECANCELED) {
      // Cancelled by the kernel, not by us (we forget our own): re-arm.
      arm(id, *w);
      return;
    } else {
      // Re-arming would fail the same way at once; report and pause.
      revents = c.result == -EBADF ? POLLNVAL : POLLERR;
      w->stalled = true;
    }

    if (stop_requested) {
      // Level triggered: re-arming reports the same readiness next run().
      w->stalled = false;
      arm(id, *w);
      return;
    }

    invoke_guarded(w->internal ? "internal watch" : "watch", [&] { w->callback(revents); });

    auto again = watches.find(id);
    if (again != watches.end() && again->second == w) arm(id, *w);
  }

  void dispatch_completions() {
    std::vector<Completion> batch;
    batch.swap(completion_scratch);
    batch.clear();
    // Copy the batch out first: callbacks submit new requests, and the
    // kernel may post completions while the batch is being handled.
    unsigned head;
    unsigned seen = 0;
    io_uring_cqe* cqe;
    io_uring_for_each_cqe(&ring, head, cqe) {
      ++seen;
      if (cqe->user_data == kIgnoredCompletion || cqe->user_data == LIBURING_UDATA_TIMEOUT) continue;
      batch.push_back({cqe->user_data, cqe->res});
    }
    io_uring_cq_advance(&ring, seen);

    for (const Completion& c : batch) handle_poll_completion(c);
    batch.clear();
    completion_scratch.swap(batch);
  }

  void fire_due_timers() {
    // Timers added during this pass are due after `now`, so a callback that
    // re-adds itself with a zero delay cannot starve the rest of the loop.
    const Clock::time_point now = Clock::now();
    while (!stop_requested && !timer_queue.empty() && timer_queue.begin()->first.first <= now) {
      auto node = timer_queue.extract(timer_queue.begin());
      timer_deadlines.erase(node.key().second);
      invoke_guarded("timer", [&] { node.mapped()(); });
    }
  }

  void run_posted() {
    std::deque<Callback> batch;
    {
      std::lock_guard lock(posted_mutex);
      batch.swap(posted);
    }
    while (!batch.empty()) {
      if (stop_requested) {
        // Keep the rest, in order, ahead of anything posted meanwhile.
        std::lock_guard lock(posted_mutex);
        while (!batch.empty()) {
          posted.push_front(std::move(batch.back()));
          batch.pop_back();
        }
        return;
      }
      Callback cb = std::move(batch.front());
      batch.pop_front();
      invoke_guarded("posted", [&] { cb(); });
    }
  }

  void run_prepare_hooks() {
    std::vector<Id> ids;
    ids.reserve(prepare_hooks.size());
    for (const auto& [id, hook] : prepare_hooks) ids.push_back(id);
    for (Id id : ids) {
      if (stop_requested) return;
      auto it = prepare_hooks.find(id);
      if (it == prepare_hooks.end()) continue;
      std::shared_ptr<Callback> hook = it->second;
      invoke_guarded("prepare hook", [&] { (*hook)(); });
    }
  }

  bool has_posted() {
    std::lock_guard lock(posted_mutex);
    return !posted.empty();
  }

  void drain_wake_fd() {
    std::uint64_t value;
    while (::read(wake_fd.get(), &value, sizeof value) == static_cast<ssize_t>(sizeof value)) {
    }
  }

  void drain_signals() {
    // One at a time so that stop() from a handler leaves the rest queued in
    // the kernel for the next run().
    while (!stop_requested) {
      signalfd_siginfo info;
      ssize_t n = ::read(signal_fd.get(), &info, sizeof info);
      if (n != static_cast<ssize_t>(sizeof info)) return;
      auto it = signal_handlers.find(static_cast<int>(info.ssi_signo));
      if (it == signal_handlers.end()) continue;
      std::shared_ptr<Callback> handler = it->second;
      invoke_guarded("signal", [&] { (*handler)(); });
    }
  }

  // Submits everything queued and sleeps until a completion arrives or the
  // nearest timer is due. Returns a negative errno only for real failures.
  int submit_and_wait() {
    bool wait_forever = true;
    Clock::duration timeout = Clock::duration::zero();
    if (has_posted()) {
      wait_forever = false;
    } else if (!timer_queue.empty()) {
      wait_forever = false;
      timeout = std::max(Clock::duration::zero(), timer_queue.begin()->first.first - Clock::now());
    }

    int r;
    if (wait_forever) {
      r = io_uring_submit_and_wait(&ring, 1);
    } else if (timeout == Clock::duration::zero()) {
      r = io_uring_submit(&ring);
    } else {
      auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(timeout).count();
      __kernel_timespec ts{};
      ts.tv_sec = ns / 1'000'000'000;
      ts.tv_nsec = ns % 1'000'000'000;
      io_uring_cqe* cqe = nullptr;
      r = io_uring_submit_and_wait_timeout(&ring, &cqe, 1, &ts, nullptr);
    }
    // ETIME: the timer deadline came first. EINTR: a signal not routed
    // through the signalfd. EBUSY/EAGAIN: completion queue overflow or
    // memory pressure, relieved by reaping what is there.
    if (r < 0 && r != -ETIME && r != -EINTR && r != -EBUSY && r != -EAGAIN) return r;
    return 0;
  }

  int run() {
    if (running) return -EBUSY;
    running = true;
    stop_requested = false;
    int result = 0;
    while (!stop_requested) {
      run_posted();
      if (stop_requested) break;
      run_prepare_hooks();
      if (stop_requested) break;
      retry_arms();
      int r = submit_and_wait();
      if (r < 0) {
        log::error("io_uring wait failed", {{"error", std::strerror(-r)}});
        result = r;
        break;
      }
      dispatch_completions();
      fire_due_timers();
    }
    running = false;
    // Hand over removals queued by the last callbacks.
    io_uring_submit(&ring);
    return result;
  }
};

Reactor::Reactor(unsigned queue_depth) : impl_(std::make_unique<Impl>(queue_depth)) {}

Reactor::~Reactor() = default;

Reactor::Id Reactor::watch(int fd, std::uint32_t events, IoCallback cb) {
  return impl_->add_watch(fd, events, std::move(cb), /*internal=*/false);
}

void Reactor::modify(Id watch, std::uint32_t events) {
  auto it = impl_->watches.find(watch);
  if (it == impl_->watches.end()) return;
  Impl::Watch& w = *it->second;
  if (w.events == events && !w.stalled) return;
  w.events = events;
  w.stalled = false;
  impl_->disarm(w);
  impl_->arm(watch, w);
}

void Reactor::unwatch(Id watch) { impl_->remove_watch(watch); }

Reactor::Id Reactor::add_timer(Clock::duration after, Callback cb) {
  const Clock::time_point now = Clock::now();
  // Saturate instead of overflowing for "practically never" delays.
  const Clock::time_point when =
      after > Clock::time_point::max() - now ? Clock::time_point::max() : now + after;
  return add_timer_at(when, std::move(cb));
}

Reactor::Id Reactor::add_timer_at(Clock::time_point when, Callback cb) {
  Id id = impl_->next_id++;
  impl_->timer_queue.emplace(std::make_pair(when, id), std::move(cb));
  impl_->timer_deadlines.emplace(id, when);
  return id;
}

void Reactor::cancel_timer(Id timer) {
  auto it = impl_->timer_deadlines.find(timer);
  if (it == impl_->timer_deadlines.end()) return;
  impl_->timer_queue.erase(std::make_pair(it->second, timer));
  impl_->timer_deadlines.erase(it);
}

void Reactor::on_signal(int signo, Callback cb) {
  if (signo <= 0 || signo > SIGRTMAX || signo == SIGKILL || signo == SIGSTOP) {
    log::error("cannot handle signal", {{"signal", std::to_string(signo)}});
    return;
  }
  sigset_t one;
  sigemptyset(&one);
  sigaddset(&one, signo);
  // Blocked, the signal waits in the kernel until the signalfd reads it.
  pthread_sigmask(SIG_BLOCK, &one, nullptr);
  sigaddset(&impl_->signal_mask, signo);

  if (!impl_->signal_fd) {
    impl_->signal_fd.reset(::signalfd(-1, &impl_->signal_mask, SFD_NONBLOCK | SFD_CLOEXEC));
    if (!impl_->signal_fd) {
      log::error("signalfd failed", {{"error", std::strerror(errno)}});
      return;
    }
    impl_->add_watch(impl_->signal_fd.get(), POLLIN, [this](std::uint32_t) { impl_->drain_signals(); },
                     /*internal=*/true);
  } else if (::signalfd(impl_->signal_fd.get(), &impl_->signal_mask, 0) < 0) {
    log::error("signalfd update failed", {{"error", std::strerror(errno)}});
    return;
  }
  impl_->signal_handlers[signo] = std::make_shared<Callback>(std::move(cb));
}

void Reactor::post(Callback cb) {
  bool was_empty;
  {
    std::lock_guard lock(impl_->posted_mutex);
    was_empty = impl_->posted.empty();
    impl_->posted.push_back(std::move(cb));
  }
  // Only needed when the loop may be asleep in the kernel (a post from
  // another thread), but cheap enough to do once per batch regardless.
  if (was_empty) {
    std::uint64_t one = 1;
    ssize_t n = ::write(impl_->wake_fd.get(), &one, sizeof one);
    (void)n;  // EAGAIN means the counter is already non-zero: still awake.
  }
}

Reactor::Id Reactor::add_prepare_hook(Callback cb) {
  Id id = impl_->next_id++;
  impl_->prepare_hooks.emplace(id, std::make_shared<Callback>(std::move(cb)));
  return id;
}

void Reactor::remove_prepare_hook(Id hook) { impl_->prepare_hooks.erase(hook); }

int Reactor::run() { return impl_->run(); }

void Reactor::stop() { impl_->stop_requested = true; }

std::size_t Reactor::watch_count() const { return impl_->watches.size() - impl_->internal_watches; }

std::size_t Reactor::timer_count() const { return impl_->timer_deadlines.size(); }

}  // namespace tapsec::core
