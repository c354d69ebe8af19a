#include "agent/engines/tls/context_cache.h"

#include <algorithm>

namespace tapsec::tls::detail {

ContextCache::ContextCache(std::size_t capacity) : capacity_(std::max<std::size_t>(capacity, 1)) {}

SslCtxPtr ContextCache::new_reference(SSL_CTX* context) {
  SSL_CTX_up_ref(context);
  return SslCtxPtr(context);
}

std::variant<SslCtxPtr, std::string> ContextCache::acquire(const std::string& key, KeepAlive keep_alive,
                                                           const Builder& build) {
  {
    std::lock_guard lock(mutex_);
    if (auto found = index_.find(key); found != index_.end()) {
      entries_.splice(entries_.begin(), entries_, found->second);
      return new_reference(found->second->context.get());
    }
  }

  // Built without the lock: loading a trust store from disk must not hold up
  // Sessions whose contexts are already cached.
  auto built = build();
  ++contexts_built_;
  auto* context = std::get_if<SslCtxPtr>(&built);
  if (context == nullptr) return built;

  std::lock_guard lock(mutex_);
  if (auto found = index_.find(key); found != index_.end()) {
    // Another thread cached one meanwhile; this one serves its Session only.
    entries_.splice(entries_.begin(), entries_, found->second);
    return built;
  }
  entries_.push_front(Entry{key, new_reference(context->get()), std::move(keep_alive)});
  index_.emplace(key, entries_.begin());
  while (entries_.size() > capacity_) {
    index_.erase(entries_.back().key);
    entries_.pop_back();
  }
  return built;
}

std::size_t ContextCache::flush() {
  std::list<Entry> dropped;
  std::lock_guard lock(mutex_);
  dropped.swap(entries_);
  index_.clear();
  return dropped.size();
}

std::size_t ContextCache::size() const {
  std::lock_guard lock(mutex_);
  return entries_.size();
}

ContextCache& shared_context_cache() {
  // Never destroyed: OpenSSL may already be cleaned up by the time static
  // destructors run, and freeing contexts then would touch freed state.
  static auto* cache = new ContextCache();
  return *cache;
}

}  // namespace tapsec::tls::detail
