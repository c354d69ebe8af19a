// A value or an explanation of why there is none, with the errno that caused
// it when one did (callers branch on EKEYEXPIRED, EAGAIN, ENOENT...).
#pragma once

#include <optional>
#include <string>
#include <utility>

namespace tapsec::kernel {

template <typename T>
class Result {
 public:
  static Result success(T value) {
    Result r;
    r.value_.emplace(std::move(value));
    return r;
  }
  static Result failure(std::string message, int error_number = 0) {
    Result r;
    r.error_ = std::move(message);
    r.error_number_ = error_number;
    return r;
  }

  bool ok() const { return value_.has_value(); }
  explicit operator bool() const { return ok(); }
  T& value() { return *value_; }
  const T& value() const { return *value_; }
  T* operator->() { return &*value_; }
  const T* operator->() const { return &*value_; }
  const std::string& error() const { return error_; }
  // errno of the failing call, 0 when the failure was not a system call's.
  int error_number() const { return error_number_; }

 private:
  std::optional<T> value_;
  std::string error_;
  int error_number_ = 0;
};

// "EBUSY (Device or resource busy)": both the name to search for and the text.
std::string describe_errno(int error_number);

}  // namespace tapsec::kernel
