// The agent's one host-name resolver. getaddrinfo blocks, so lookups run on
// a fixed number of worker threads fed by a bounded queue; the answer comes
// back on the loop. Shared by everything in the agent that names hosts
// (Connect, WireGuard peers, IKE tunnels), so a slow or hostile name server
// costs a bounded number of threads and nothing else.
//
// No worker ever touches a descriptor or an object of its requester: it
// hands its answer to the loop by Reactor::post, and the loop gives it to
// the requester only while the requester's Lookup handle still exists.
#pragma once

#include <sys/socket.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <variant>
#include <vector>

#include "agent/core/reactor.h"

namespace tapsec::core {

class Resolver {
 public:
  struct Limits {
    std::size_t workers = 2;   // lookups running at once
    std::size_t queued = 256;  // lookups waiting for a worker; more are refused
  };
  // Addresses in the order getaddrinfo gave them, with `port` filled in.
  using Addresses = std::vector<sockaddr_storage>;
  // The addresses, or a message for a person ("cannot resolve x: ...").
  using Result = std::variant<Addresses, std::string>;
  using Callback = std::function<void(Result)>;

  // A lookup in flight. Destroying it (or reset()) cancels the lookup: a
  // queued one is dropped, a running one's answer is discarded, and the
  // callback never runs. Must not outlive its Resolver.
  class Lookup {
   public:
    Lookup() = default;
    Lookup(Lookup&& other) noexcept;
    Lookup& operator=(Lookup&& other) noexcept;
    Lookup(const Lookup&) = delete;
    Lookup& operator=(const Lookup&) = delete;
    ~Lookup() { reset(); }
    void reset();
    explicit operator bool() const { return resolver_ != nullptr; }

   private:
    friend class Resolver;
    Lookup(Resolver* resolver, std::uint64_t id) : resolver_(resolver), id_(id) {}
    Resolver* resolver_ = nullptr;
    std::uint64_t id_ = 0;
  };

  Resolver(Reactor& reactor, Limits limits);
  ~Resolver();
  Resolver(const Resolver&) = delete;
  Resolver& operator=(const Resolver&) = delete;

  // Starts looking `host` up for `socktype` (SOCK_STREAM, SOCK_DGRAM); port
  // 0 leaves the port 0. `done` runs on the loop, once, unless the Lookup is
  // gone first. A full queue is refused at once with a message (and `done`
  // is not called).
  std::variant<Lookup, std::string> lookup(const std::string& host, std::uint16_t port, int socktype, Callback done);

  std::size_t in_flight() const;  // queued or running, for tests and statistics
  const Limits& limits() const { return limits_; }

 private:
  struct Shared;
  void cancel(std::uint64_t id);
  void deliver(std::uint64_t id, Result result);

  Reactor& reactor_;
  Limits limits_;
  std::shared_ptr<Shared> shared_;
  std::uint64_t next_id_ = 1;
  // Loop thread only: the callbacks of lookups whose handle still exists.
  std::unordered_map<std::uint64_t, Callback> callbacks_;
};

}  // namespace tapsec::core
