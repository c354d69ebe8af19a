// Reference-counted owners of sd-bus objects (bus, message, slot, creds):
// each holds one reference, copies take another. Unlike the unique owners in
// agent/core/sd_bus_ptr.h these can be shared, e.g. by a pending reply that
// several completions refer to.
#pragma once

#include <systemd/sd-bus.h>

#include <utility>

namespace tapsec::bus {

template <typename T, T* (*Ref)(T*), T* (*Unref)(T*)>
class SdRef {
 public:
  SdRef() = default;
  // Takes over a reference the caller already owns (e.g. from sd_bus_*_new).
  static SdRef adopt(T* p) {
    SdRef r;
    r.p_ = p;
    return r;
  }
  // Takes a new reference on p.
  static SdRef share(T* p) { return adopt(p ? Ref(p) : nullptr); }

  SdRef(const SdRef& other) : p_(other.p_ ? Ref(other.p_) : nullptr) {}
  SdRef(SdRef&& other) noexcept : p_(std::exchange(other.p_, nullptr)) {}
  SdRef& operator=(SdRef other) noexcept {
    std::swap(p_, other.p_);
    return *this;
  }
  ~SdRef() { reset(); }

  T* get() const { return p_; }
  explicit operator bool() const { return p_ != nullptr; }
  // For out-parameters of sd-bus functions: drops the current reference and
  // returns the address to store a new one at.
  T** out() {
    reset();
    return &p_;
  }
  void reset() {
    if (p_) Unref(p_);
    p_ = nullptr;
  }

 private:
  T* p_ = nullptr;
};

using BusRef = SdRef<sd_bus, sd_bus_ref, sd_bus_unref>;
using MessageRef = SdRef<sd_bus_message, sd_bus_message_ref, sd_bus_message_unref>;
using SlotRef = SdRef<sd_bus_slot, sd_bus_slot_ref, sd_bus_slot_unref>;
using CredsRef = SdRef<sd_bus_creds, sd_bus_creds_ref, sd_bus_creds_unref>;

}  // namespace tapsec::bus
