#include "agent/core/resolver.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <utility>

namespace tapsec::core {

// What the workers share with the loop. Workers are detached and hold it
// alive; once the Resolver is gone (`owner` null, `stopping` set) they finish
// the lookup they are in and leave without touching anything else.
struct Resolver::Shared {
  struct Job {
    std::uint64_t id;
    std::string host;
    std::uint16_t port;
    int socktype;
  };

  std::mutex mutex;
  std::condition_variable wake;
  std::deque<Job> queue;
  std::size_t running = 0;
  std::size_t workers = 0;
  bool stopping = false;
  Reactor* reactor = nullptr;  // null once the Resolver is gone
  Resolver* owner = nullptr;   // read and written on the loop thread only

  static Result run(const Job& job) {
    addrinfo hints{};
    hints.ai_socktype = job.socktype;
    hints.ai_flags = AI_ADDRCONFIG;
    addrinfo* found = nullptr;
    int rc = ::getaddrinfo(job.host.c_str(), nullptr, &hints, &found);
    if (rc != 0) return "cannot resolve " + job.host + ": " + ::gai_strerror(rc);
    Addresses addresses;
    for (auto* ai = found; ai; ai = ai->ai_next) {
      if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6) continue;
      sockaddr_storage address{};
      std::memcpy(&address, ai->ai_addr, std::min<std::size_t>(ai->ai_addrlen, sizeof address));
      if (ai->ai_family == AF_INET) reinterpret_cast<sockaddr_in*>(&address)->sin_port = htons(job.port);
      else reinterpret_cast<sockaddr_in6*>(&address)->sin6_port = htons(job.port);
      addresses.push_back(address);
    }
    ::freeaddrinfo(found);
    if (addresses.empty()) return "cannot resolve " + job.host + ": no IPv4 or IPv6 address";
    return addresses;
  }

  static void work(std::shared_ptr<Shared> shared) {
    std::unique_lock lock(shared->mutex);
    for (;;) {
      shared->wake.wait(lock, [&] { return shared->stopping || !shared->queue.empty(); });
      if (shared->stopping) break;
      Job job = std::move(shared->queue.front());
      shared->queue.pop_front();
      ++shared->running;
      lock.unlock();
      Result result = run(job);
      lock.lock();
      --shared->running;
      if (!shared->reactor) break;
      shared->reactor->post([shared, id = job.id, result = std::move(result)]() mutable {
        if (shared->owner) shared->owner->deliver(id, std::move(result));
      });
    }
    --shared->workers;
  }
};

Resolver::Lookup::Lookup(Lookup&& other) noexcept
    : resolver_(std::exchange(other.resolver_, nullptr)), id_(other.id_) {}

Resolver::Lookup& Resolver::Lookup::operator=(Lookup&& other) noexcept {
  if (this != &other) {
    reset();
    resolver_ = std::exchange(other.resolver_, nullptr);
    id_ = other.id_;
  }
  return *this;
}

void Resolver::Lookup::reset() {
  if (auto* resolver = std::exchange(resolver_, nullptr)) resolver->cancel(id_);
}

Resolver::Resolver(Reactor& reactor, Limits limits)
    : reactor_(reactor), limits_(limits), shared_(std::make_shared<Shared>()) {
  if (limits_.workers == 0) limits_.workers = 1;
  shared_->reactor = &reactor_;
  shared_->owner = this;
}

Resolver::~Resolver() {
  shared_->owner = nullptr;
  std::lock_guard lock(shared_->mutex);
  shared_->stopping = true;
  shared_->reactor = nullptr;
  shared_->queue.clear();
  shared_->wake.notify_all();
}

std::variant<Resolver::Lookup, std::string> Resolver::lookup(const std::string& host, std::uint16_t port,
                                                            int socktype, Callback done) {
  std::uint64_t id = next_id_++;
  {
    std::lock_guard lock(shared_->mutex);
    if (shared_->queue.size() >= limits_.queued) {
      return "the agent is already looking up " + std::to_string(shared_->queue.size() + shared_->running) +
             " host names (the limit is " + std::to_string(limits_.queued) + " waiting); try again later";
    }
    shared_->queue.push_back(Shared::Job{id, host, port, socktype});
    // A worker more only while every worker is busy: idle ones take the job.
    if (shared_->workers < limits_.workers && shared_->running + shared_->queue.size() > shared_->workers) {
      ++shared_->workers;
      std::thread(Shared::work, shared_).detach();
    }
    shared_->wake.notify_one();
  }
  callbacks_.emplace(id, std::move(done));
  return Lookup(this, id);
}

std::size_t Resolver::in_flight() const {
  std::lock_guard lock(shared_->mutex);
  return shared_->queue.size() + shared_->running;
}

void Resolver::cancel(std::uint64_t id) {
  callbacks_.erase(id);
  std::lock_guard lock(shared_->mutex);
  for (auto it = shared_->queue.begin(); it != shared_->queue.end(); ++it) {
    if (it->id == id) {
      shared_->queue.erase(it);
      break;
    }
  }
}

void Resolver::deliver(std::uint64_t id, Result result) {
  auto it = callbacks_.find(id);
  if (it == callbacks_.end()) return;  // cancelled while it ran
  Callback done = std::move(it->second);
  callbacks_.erase(it);
  done(std::move(result));
}

}  // namespace tapsec::core
