#include "agent/core/trusted_file.h"

#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <string.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>

#include "agent/core/unique_fd.h"

namespace tapsec::core {

namespace {

bool is_trusted_owner(uid_t uid) { return uid == 0 || uid == ::geteuid(); }

std::string quoted_command(const std::string& command) { return "run \"" + command + "\""; }

// Who a rejected file should belong to. Public files go to root; a secret
// goes to the agent's own user when the agent is not root, since a root-only
// 0600 file is one the agent could not read.
std::string owner_to_suggest(bool secret) {
  const uid_t uid = ::geteuid();
  if (!secret || uid == 0) return "root:root";
  const passwd* user = ::getpwuid(uid);
  const group* group = ::getgrgid(::getegid());
  return (user ? std::string(user->pw_name) : std::to_string(uid)) + ":" +
         (group ? std::string(group->gr_name) : std::to_string(::getegid()));
}

std::string owner_problem(const struct stat& status, const std::string& subject, const std::string& path,
                          bool secret) {
  if (is_trusted_owner(status.st_uid)) return "";
  return subject + " is owned by uid " + std::to_string(status.st_uid) + ": " +
         quoted_command("chown " + owner_to_suggest(secret) + " " + path);
}

std::string writable_problem(const struct stat& status, const std::string& subject, const std::string& path) {
  const mode_t mode = status.st_mode;
  if (!(mode & (S_IWGRP | S_IWOTH))) return "";
  const char* by = (mode & S_IWGRP) && (mode & S_IWOTH) ? "its group and every user"
                   : (mode & S_IWGRP)                   ? "its group"
                                                        : "every user";
  return subject + " has mode " + permission_string(mode) + " and is writable by " + by + ": " +
         quoted_command("chmod " + permission_string(mode & ~(S_IWGRP | S_IWOTH)) + " " + path);
}

// The path the descriptor really names (symbolic links resolved), for
// checking the directories above what was opened rather than above a link.
std::string real_path_of(int fd, const std::string& fallback) {
  char link[64];
  std::snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  char target[PATH_MAX];
  const ssize_t n = ::readlink(link, target, sizeof target - 1);
  if (n > 0 && target[0] == '/') return std::string(target, static_cast<std::size_t>(n));
  // No /proc: resolve the name instead (the directories are checked, and
  // only a trusted user can change what passed that check).
  if (char* resolved = ::realpath(fallback.c_str(), nullptr)) {
    std::string path = resolved;
    std::free(resolved);
    return path;
  }
  return fallback;
}

std::string parent_of(const std::string& path) {
  const auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

std::string open_failure(const std::string& subject, int error) {
  if (error == ELOOP) return subject + " is a symbolic link; name the file itself";
  return "cannot open " + subject + ": " + ::strerror(error);
}

// Checks `start` and every directory above it on behalf of `subject`.
// `start_holds_subject`: `start` is the directory holding the subject, which
// must not be writable by others even when sticky.
std::string chain_problem(const std::string& subject, const std::string& start, bool start_holds_subject) {
  std::string current = start;
  for (bool first = true;; first = false) {
    const bool holding = first && start_holds_subject;
    const std::string named =
        subject + ": " + (holding ? "its directory " + current : "the directory " + current + " above it");
    struct stat status {};
    if (::lstat(current.c_str(), &status) != 0) return "cannot check " + named + ": " + ::strerror(errno);
    if (auto problem = owner_problem(status, named, current, false); !problem.empty()) return problem;
    // Above the holding directory a sticky one (/tmp) is safe: only an
    // entry's owner may rename it away, and that owner was just checked.
    if (holding || !(status.st_mode & S_ISVTX))
      if (auto problem = writable_problem(status, named, current); !problem.empty()) return problem;
    if (current == "/" || current == ".") return "";
    current = parent_of(current);
  }
}

}  // namespace

FileContents::~FileContents() { ::explicit_bzero(bytes.data(), bytes.size()); }

std::string permission_string(mode_t mode) {
  char text[8];
  std::snprintf(text, sizeof text, "%04o", static_cast<unsigned>(mode & 07777));
  return text;
}

std::string secret_mode_problem(const struct stat& status, const std::string& path, std::string_view what,
                                std::string_view secret) {
  const mode_t mode = status.st_mode;
  if (!(mode & (S_IRWXG | S_IRWXO))) return "";
  return std::string(what) + " " + path + " has mode " + permission_string(mode) + " and holds " +
         std::string(secret) + ": " + quoted_command("chmod " + permission_string(mode & S_IRWXU) + " " + path);
}

std::string trusted_file_problem(const struct stat& status, const std::string& path, const TrustedFileRules& rules) {
  const std::string subject = std::string(rules.what) + " " + path;
  const bool secret = !rules.secret.empty();
  if (auto problem = owner_problem(status, subject, path, secret); !problem.empty()) return problem;
  // For a secret the stricter fix (0600) is the one to suggest.
  if (secret) return secret_mode_problem(status, path, rules.what, rules.secret);
  return writable_problem(status, subject, path);
}

std::string directory_chain_problem(const std::string& path, std::string_view what) {
  const std::string subject = std::string(what) + " " + path;
  // The directories themselves, not links on the way to them.
  char* resolved = ::realpath(parent_of(path).c_str(), nullptr);
  if (!resolved) return "cannot check " + subject + ": its directory " + parent_of(path) + ": " + ::strerror(errno);
  const std::string directory = resolved;
  std::free(resolved);
  return chain_problem(subject, directory, /*start_holds_subject=*/true);
}

std::optional<FileContents> read_trusted_file(const std::string& path, std::size_t max_bytes,
                                              const TrustedFileRules& rules, std::string& why) {
  return read_trusted_file_at(AT_FDCWD, path, path, max_bytes, rules, why);
}

std::optional<FileContents> read_trusted_file_at(int dir_fd, const std::string& name, const std::string& path,
                                                 std::size_t max_bytes, const TrustedFileRules& rules,
                                                 std::string& why) {
  const std::string subject = std::string(rules.what) + " " + path;
  // O_NONBLOCK: opening a FIFO must not wait for a writer.
  const int flags = O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK | (rules.follow_symlinks ? 0 : O_NOFOLLOW);
  UniqueFd fd(::openat(dir_fd, name.c_str(), flags));
  if (!fd) {
    why = open_failure(subject, errno);
    return std::nullopt;
  }
  FileContents contents;
  if (::fstat(fd.get(), &contents.status) != 0) {
    why = "cannot stat " + subject + ": " + ::strerror(errno);
    return std::nullopt;
  }
  if (!S_ISREG(contents.status.st_mode)) {
    why = subject + " is not a regular file";
    return std::nullopt;
  }
  if (static_cast<std::size_t>(contents.status.st_size) > max_bytes) {
    why = subject + " is too large (more than " + std::to_string(max_bytes) + " bytes)";
    return std::nullopt;
  }
  if (why = trusted_file_problem(contents.status, path, rules); !why.empty()) return std::nullopt;
  if (why = chain_problem(subject, parent_of(real_path_of(fd.get(), path)), true); !why.empty())
    return std::nullopt;

  contents.bytes.resize(static_cast<std::size_t>(contents.status.st_size));
  std::size_t done = 0;
  while (done < contents.bytes.size()) {
    const ssize_t n = ::read(fd.get(), contents.bytes.data() + done, contents.bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      why = "cannot read " + subject + ": " + ::strerror(errno);
      return std::nullopt;
    }
    if (n == 0) break;  // the file shrank meanwhile
    done += static_cast<std::size_t>(n);
  }
  contents.bytes.resize(done);
  return contents;
}

int open_trusted_directory(const std::string& path, std::string_view what, std::string& why) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd) {
    const int error = errno;
    why = "cannot open " + std::string(what) + " " + path + ": " + ::strerror(error);
    errno = error;
    return -1;
  }
  struct stat status {};
  if (::fstat(fd.get(), &status) != 0) {
    why = "cannot stat " + std::string(what) + " " + path + ": " + ::strerror(errno);
    return -1;
  }
  if (why = trusted_file_problem(status, path, {what, ""}); !why.empty()) return -1;
  const std::string subject = std::string(what) + " " + path;
  const std::string real = real_path_of(fd.get(), path);
  if (real != "/" && !(why = chain_problem(subject, parent_of(real), false)).empty()) return -1;
  return fd.release();
}

}  // namespace tapsec::core
