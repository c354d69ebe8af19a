// One owning pointer for every OpenSSL object: OpenSslPtr<T, T_free>
// frees with T_free when it goes out of scope.
#pragma once

#include <memory>

namespace tapsec::core {

template <auto FreeFunction>
struct OpenSslDeleter {
  template <typename T>
  void operator()(T* object) const {
    FreeFunction(object);
  }
};

template <typename T, auto FreeFunction>
using OpenSslPtr = std::unique_ptr<T, OpenSslDeleter<FreeFunction>>;

}  // namespace tapsec::core
