// Reuse of OpenSSL contexts between Sessions. Building an SSL_CTX (cipher
// lists, groups, certificate and key, a trust store read from disk) costs
// more in OpenSSL 3.0 than a whole handshake, so Sessions whose context-level
// settings are equal share one. Internal to agent/engines/tls: everything
// that differs per connection lives on the SSL, and the callbacks registered
// on a shared context find their connection's data through the SSL.
#pragma once

#include <openssl/ssl.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <variant>
#include <vector>

#include "agent/engines/tls/openssl_ptr.h"

namespace tapsec::tls::detail {

// A thread-safe, bounded map from a canonical description of context-level
// settings to the SSL_CTX built for them. Least recently used entries are
// dropped beyond capacity; Sessions still using a dropped context keep it
// alive through their own reference.
class ContextCache {
 public:
  using Builder = std::function<std::variant<SslCtxPtr, std::string>()>;
  // Objects the key names by address; held so that an address cannot be
  // reused by another object while the entry exists.
  using KeepAlive = std::vector<std::shared_ptr<const void>>;

  explicit ContextCache(std::size_t capacity = 64);
  ContextCache(const ContextCache&) = delete;
  ContextCache& operator=(const ContextCache&) = delete;

  // A new reference to the context cached under `key`; if there is none,
  // `build` makes one, which is cached unless it failed (its message is
  // returned then).
  std::variant<SslCtxPtr, std::string> acquire(const std::string& key, KeepAlive keep_alive, const Builder& build);

  // Drops every entry; returns how many were dropped.
  std::size_t flush();
  std::size_t size() const;
  std::size_t capacity() const { return capacity_; }
  // Contexts built through acquire() since construction (tests use it to see
  // that contexts are shared).
  std::uint64_t contexts_built() const { return contexts_built_.load(); }

 private:
  struct Entry {
    std::string key;
    SslCtxPtr context;
    KeepAlive keep_alive;
  };
  static SslCtxPtr new_reference(SSL_CTX* context);

  const std::size_t capacity_;
  mutable std::mutex mutex_;
  std::list<Entry> entries_;  // most recently used first
  std::unordered_map<std::string, std::list<Entry>::iterator> index_;
  std::atomic<std::uint64_t> contexts_built_{0};
};

// The cache Session::create uses.
ContextCache& shared_context_cache();

}  // namespace tapsec::tls::detail
