#include "agent/kernel/result.h"

#include <cstring>

namespace tapsec::kernel {

std::string describe_errno(int error_number) {
  const char* name = ::strerrorname_np(error_number);
  std::string text = name ? name : "errno " + std::to_string(error_number);
  text += " (";
  text += ::strerror(error_number);
  text += ")";
  return text;
}

}  // namespace tapsec::kernel
