// Reading the small files a policy refers to (policy files, key files),
// without hanging on FIFOs or devices. Internal to tapsec_policy.
#pragma once

#include <sys/stat.h>

#include <cstddef>
#include <optional>
#include <string>

namespace tapsec::policy::detail {

struct FileContents {
  std::string bytes;
  struct stat status {};
};

// Opens `path` (following symlinks), insists on a regular file of at most
// `max_bytes`, and reads it. On failure returns nullopt and sets `why`.
std::optional<FileContents> read_regular_file(const std::string& path, std::size_t max_bytes,
                                              std::string& why);

// "0644"-style rendering of a mode's permission bits, for messages.
std::string permission_string(mode_t mode);

}  // namespace tapsec::policy::detail
