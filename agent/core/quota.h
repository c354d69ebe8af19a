// Counts what is in progress, per key (a caller's uid, a source address)
// and in total, and refuses beyond the limits. A granted slot is an RAII
// token: the count goes down when it is destroyed, whatever path the work
// ends on.
#pragma once

#include <cstddef>
#include <map>
#include <memory>
#include <optional>
#include <utility>

namespace tapsec::core {

template <typename Key>
class Quota {
 public:
  struct Limits {
    std::size_t total = 0;    // 0 = none
    std::size_t per_key = 0;  // 0 = none
  };
  enum class Refusal { Total, PerKey };

  class Slot {
   public:
    Slot() = default;
    Slot(Slot&& other) noexcept : counts_(std::move(other.counts_)), key_(std::move(other.key_)) {}
    Slot& operator=(Slot&& other) noexcept {
      if (this != &other) {
        release();
        counts_ = std::move(other.counts_);
        key_ = std::move(other.key_);
      }
      return *this;
    }
    ~Slot() { release(); }
    explicit operator bool() const { return counts_ != nullptr; }

   private:
    friend class Quota;
    Slot(std::shared_ptr<typename Quota::Counts> counts, Key key) : counts_(std::move(counts)), key_(std::move(key)) {}
    void release() {
      if (!counts_) return;
      --counts_->total;
      if (auto it = counts_->per_key.find(key_); it != counts_->per_key.end() && --it->second == 0)
        counts_->per_key.erase(it);
      counts_.reset();
    }
    std::shared_ptr<typename Quota::Counts> counts_;
    Key key_{};
  };

  explicit Quota(Limits limits) : limits_(limits), counts_(std::make_shared<Counts>()) {}

  // A slot, or which limit refused it.
  std::pair<Slot, std::optional<Refusal>> acquire(const Key& key) {
    if (limits_.total && counts_->total >= limits_.total) return {Slot(), Refusal::Total};
    auto& mine = counts_->per_key[key];
    if (limits_.per_key && mine >= limits_.per_key) {
      if (mine == 0) counts_->per_key.erase(key);
      return {Slot(), Refusal::PerKey};
    }
    ++mine;
    ++counts_->total;
    return {Slot(counts_, key), std::nullopt};
  }

  std::size_t total() const { return counts_->total; }
  std::size_t count(const Key& key) const {
    auto it = counts_->per_key.find(key);
    return it == counts_->per_key.end() ? 0 : it->second;
  }
  const Limits& limits() const { return limits_; }

 private:
  struct Counts {
    std::size_t total = 0;
    std::map<Key, std::size_t> per_key;
  };
  Limits limits_;
  // Shared with the slots, so a slot may outlive the Quota harmlessly.
  std::shared_ptr<Counts> counts_;
};

}  // namespace tapsec::core
