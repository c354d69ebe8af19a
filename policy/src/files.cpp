#include "policy/src/files.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "agent/core/unique_fd.h"

namespace tapsec::policy::detail {

std::optional<FileContents> read_regular_file(const std::string& path, std::size_t max_bytes,
                                              std::string& why) {
  // O_NONBLOCK: opening a FIFO must not wait for a writer.
  core::UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));
  if (!fd) {
    why = "cannot open " + path + ": " + std::strerror(errno);
    return std::nullopt;
  }
  FileContents contents;
  if (::fstat(fd.get(), &contents.status) != 0) {
    why = "cannot stat " + path + ": " + std::strerror(errno);
    return std::nullopt;
  }
  if (!S_ISREG(contents.status.st_mode)) {
    why = path + " is not a regular file";
    return std::nullopt;
  }
  if (static_cast<std::size_t>(contents.status.st_size) > max_bytes) {
    why = path + " is too large (more than " + std::to_string(max_bytes) + " bytes)";
    return std::nullopt;
  }
  contents.bytes.resize(static_cast<std::size_t>(contents.status.st_size));
  std::size_t done = 0;
  while (done < contents.bytes.size()) {
    const ssize_t n = ::read(fd.get(), contents.bytes.data() + done, contents.bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      why = "cannot read " + path + ": " + std::strerror(errno);
      return std::nullopt;
    }
    if (n == 0) break;  // the file shrank meanwhile
    done += static_cast<std::size_t>(n);
  }
  contents.bytes.resize(done);
  return contents;
}

std::string permission_string(mode_t mode) {
  char text[8];
  std::snprintf(text, sizeof text, "%04o", static_cast<unsigned>(mode & 07777));
  return text;
}

}  // namespace tapsec::policy::detail
