#include <openssl/ssl.h>

#include <ctime>

#include "agent/engines/tls/tls_engine.h"

namespace tapsec::tls {

SessionCache::SessionCache(std::size_t capacity) : capacity_(capacity) {}

SessionCache::~SessionCache() { flush(); }

std::size_t SessionCache::size() const {
  std::lock_guard lock(mutex_);
  return entries_.size();
}

std::size_t SessionCache::capacity() const {
  std::lock_guard lock(mutex_);
  return capacity_;
}

void SessionCache::set_capacity(std::size_t capacity) {
  std::lock_guard lock(mutex_);
  capacity_ = capacity;
  evict_locked();
}

std::size_t SessionCache::flush() {
  std::lock_guard lock(mutex_);
  const std::size_t removed = entries_.size();
  for (Entry& entry : entries_) SSL_SESSION_free(entry.session);
  entries_.clear();
  return removed;
}

std::size_t SessionCache::forget(const std::string& key) {
  return forget_if([&](const std::string& candidate) { return candidate == key; });
}

std::size_t SessionCache::forget_if(const std::function<bool(const std::string& key)>& pred) {
  std::lock_guard lock(mutex_);
  std::size_t removed = 0;
  for (auto it = entries_.begin(); it != entries_.end();) {
    if (pred(it->key)) {
      SSL_SESSION_free(it->session);
      it = entries_.erase(it);
      ++removed;
    } else {
      ++it;
    }
  }
  return removed;
}

void SessionCache::store(const std::string& key, SSL_SESSION* session) {
  if (key.empty() || session == nullptr || !SSL_SESSION_is_resumable(session)) return;
  // A copy, not a reference: the newest ticket's SSL_SESSION is also the
  // connection's own, which OpenSSL marks not resumable when the connection
  // is freed without a close_notify (most are).
  SSL_SESSION* copy = SSL_SESSION_dup(session);
  if (copy == nullptr) return;
  std::lock_guard lock(mutex_);
  entries_.push_front(Entry{key, copy});
  // A peer may send any number of tickets: beyond kSessionsPerKey the
  // oldest of its key go, so that one server cannot push other peers'
  // sessions out.
  std::size_t kept = 0;
  for (auto it = entries_.begin(); it != entries_.end();) {
    if (it->key == key && ++kept > kSessionsPerKey) {
      SSL_SESSION_free(it->session);
      it = entries_.erase(it);
    } else {
      ++it;
    }
  }
  evict_locked();
}

void SessionCache::evict_locked() {
  while (entries_.size() > capacity_) {
    SSL_SESSION_free(entries_.back().session);
    entries_.pop_back();
  }
}

SSL_SESSION* SessionCache::take(const std::string& key) {
  if (key.empty()) return nullptr;
  std::lock_guard lock(mutex_);
  const auto now = static_cast<long>(std::time(nullptr));
  for (auto it = entries_.begin(); it != entries_.end();) {
    if (it->key != key) {
      ++it;
      continue;
    }
    SSL_SESSION* session = it->session;
    const bool expired = SSL_SESSION_get_time(session) + SSL_SESSION_get_timeout(session) <= now;
    if (expired || !SSL_SESSION_is_resumable(session)) {
      SSL_SESSION_free(session);
      it = entries_.erase(it);
      continue;
    }
    if (SSL_SESSION_get_protocol_version(session) >= TLS1_3_VERSION) {
      // TLS 1.3 tickets are single use (RFC 8446 §C.4): hand over the cache's reference.
      entries_.erase(it);
      return session;
    }
    SSL_SESSION_up_ref(session);
    return session;
  }
  return nullptr;
}

}  // namespace tapsec::tls
