#include "agent/kernel/socket_locator.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <fstream>
#include <sstream>
#include <memory>

namespace tapsec::kernel {
namespace {

// glibc 2.36 declares pidfd_open/pidfd_getfd but older C libraries do not,
// so both go through syscall(2).
int open_pidfd(pid_t pid) { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); }
int get_fd_from(int pidfd, int target_fd) {
  return static_cast<int>(::syscall(SYS_pidfd_getfd, pidfd, target_fd, 0));
}

struct DirCloser {
  void operator()(DIR* dir) const { ::closedir(dir); }
};
using UniqueDir = std::unique_ptr<DIR, DirCloser>;

// 0: found (fd_number set); ENOENT: not open in the process; other: errno.
int scan_fd_directory(const SocketRef& ref, int& fd_number) {
  const std::string directory = "/proc/" + std::to_string(ref.owner_pid) + "/fd";
  UniqueDir dir(::opendir(directory.c_str()));
  if (!dir) return errno == ENOENT ? ESRCH : errno;
  const std::string wanted = "socket:[" + std::to_string(ref.inode) + "]";
  char target[64];
  while (dirent* entry = ::readdir(dir.get())) {
    int number = -1;
    const char* name = entry->d_name;
    const char* name_end = name + std::char_traits<char>::length(name);
    auto [end, ec] = std::from_chars(name, name_end, number);
    if (ec != std::errc() || end != name_end) continue;  // "." and ".."
    const ssize_t length = ::readlinkat(::dirfd(dir.get()), name, target, sizeof(target));
    if (length < 0) continue;  // closed while scanning
    if (std::string_view(target, static_cast<std::size_t>(length)) == wanted) {
      fd_number = number;
      return 0;
    }
  }
  return ENOENT;
}

std::string describe_ref(const SocketRef& ref) {
  return "socket inode " + std::to_string(ref.inode) + " of process " +
         std::to_string(ref.owner_pid);
}

std::string scan_error_text(const SocketRef& ref, int error) {
  switch (error) {
    case ESRCH:
      return "process " + std::to_string(ref.owner_pid) + " does not exist (it exited)";
    case ENOENT:
      return describe_ref(ref) + " is no longer open in that process";
    case EACCES:
    case EPERM:
      return "cannot list /proc/" + std::to_string(ref.owner_pid) +
             "/fd: permission denied (needs CAP_SYS_PTRACE or the same user)";
    default:
      return "cannot list /proc/" + std::to_string(ref.owner_pid) + "/fd: " + describe_errno(error);
  }
}

// A pidfd turns readable once its process has exited.
bool exited(int pidfd) {
  pollfd p{pidfd, POLLIN, 0};
  return ::poll(&p, 1, 0) != 0;
}

// "" if the pinned process runs as its uid (real and effective), else why not.
std::string check_holder(const PinnedSocket& holder) {
  std::ifstream status("/proc/" + std::to_string(holder.pid) + "/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("Uid:", 0) != 0) continue;
    std::istringstream ids(line.substr(4));
    uid_t real = 0, effective = 0;
    if (!(ids >> real >> effective)) break;
    if (real == holder.uid && effective == holder.uid) return {};
    return "process " + std::to_string(holder.pid) + " holding socket inode " + std::to_string(holder.inode) +
           " runs as uid " + std::to_string(effective) + ", not the association's owner " +
           std::to_string(holder.uid) + ": the agent does not act on it";
  }
  return "cannot read the user of process " + std::to_string(holder.pid);
}

}  // namespace

Result<ino_t> socket_inode(int fd) {
  struct stat status {};
  if (::fstat(fd, &status) != 0) {
    return Result<ino_t>::failure("fstat failed: " + describe_errno(errno), errno);
  }
  if (!S_ISSOCK(status.st_mode)) return Result<ino_t>::failure("fd is not a socket", ENOTSOCK);
  return Result<ino_t>::success(status.st_ino);
}

Result<int> find_socket_fd_number(const SocketRef& ref) {
  int fd_number = -1;
  const int error = scan_fd_directory(ref, fd_number);
  if (error != 0) return Result<int>::failure(scan_error_text(ref, error), error);
  return Result<int>::success(fd_number);
}

Result<PinnedSocket> pin_socket(pid_t pid, ino_t inode, uid_t uid) {
  using R = Result<PinnedSocket>;
  PinnedSocket pinned{pid, uid, inode, core::UniqueFd(open_pidfd(pid))};
  if (!pinned.pidfd) {
    const int error = errno;
    if (error == ESRCH) return R::failure(scan_error_text({pid, inode}, ESRCH), ESRCH);
    if (error == ENOSYS) return R::failure("kernel lacks pidfd_open (needs Linux 5.3)", ENOSYS);
    return R::failure("pidfd_open(" + std::to_string(pid) + ") failed: " + describe_errno(error), error);
  }
  if (auto problem = check_holder(pinned); !problem.empty()) return R::failure(problem, EPERM);
  int fd_number = -1;
  if (int error = scan_fd_directory({pid, inode}, fd_number); error != 0)
    return R::failure(scan_error_text({pid, inode}, error), error);
  if (exited(pinned.pidfd.get())) return R::failure(scan_error_text({pid, inode}, ESRCH), ESRCH);
  return R::success(std::move(pinned));
}

Result<PinnedSocket> pin_new_holder(ino_t inode, uid_t uid) {
  using R = Result<PinnedSocket>;
  UniqueDir proc(::opendir("/proc"));
  if (!proc) return R::failure("cannot list /proc: " + describe_errno(errno), errno);
  const pid_t self = ::getpid();
  while (dirent* entry = ::readdir(proc.get())) {
    pid_t pid = 0;
    const char* name = entry->d_name;
    const char* name_end = name + std::char_traits<char>::length(name);
    auto [end, ec] = std::from_chars(name, name_end, pid);
    if (ec != std::errc() || end != name_end || pid == self) continue;
    int fd_number = -1;
    if (scan_fd_directory(SocketRef{pid, inode}, fd_number) != 0) continue;
    auto pinned = pin_socket(pid, inode, uid);
    if (pinned) return pinned;
  }
  return R::failure("no process of uid " + std::to_string(uid) + " holds socket inode " + std::to_string(inode),
                    ENOENT);
}

Result<core::UniqueFd> borrow_socket(const PinnedSocket& holder) {
  using R = Result<core::UniqueFd>;
  const SocketRef ref{holder.pid, holder.inode};
  if (!holder) return R::failure("no process is known to hold socket inode " + std::to_string(holder.inode), ESRCH);
  if (exited(holder.pidfd.get())) return R::failure(scan_error_text(ref, ESRCH), ESRCH);
  if (auto problem = check_holder(holder); !problem.empty()) return R::failure(problem, EPERM);

  // The application may close and reuse fd numbers between the scan and
  // pidfd_getfd; a few rounds settle that race.
  constexpr int attempts = 3;
  for (int attempt = 0; attempt < attempts; ++attempt) {
    int fd_number = -1;
    const int scan_error = scan_fd_directory(ref, fd_number);
    if (scan_error != 0) return R::failure(scan_error_text(ref, scan_error), scan_error);

    core::UniqueFd borrowed(get_fd_from(holder.pidfd.get(), fd_number));
    if (!borrowed) {
      const int error = errno;
      if (error == EBADF) continue;  // closed in between
      if (error == ESRCH) return R::failure(scan_error_text(ref, ESRCH), ESRCH);
      if (error == EPERM) {
        return R::failure("pidfd_getfd on process " + std::to_string(holder.pid) +
                              " denied: needs ptrace access (CAP_SYS_PTRACE)",
                          EPERM);
      }
      if (error == ENOSYS) {
        return R::failure("kernel lacks pidfd_getfd (needs Linux 5.6)", ENOSYS);
      }
      return R::failure("pidfd_getfd failed: " + describe_errno(error), error);
    }
    auto inode = socket_inode(borrowed.get());
    if (inode && inode.value() == holder.inode) return R::success(std::move(borrowed));
  }
  return R::failure(describe_ref(ref) + " kept changing while being looked up", EAGAIN);
}

Result<bool> socket_alive(const PinnedSocket& holder) {
  if (!holder || exited(holder.pidfd.get())) return Result<bool>::success(false);
  int fd_number = -1;
  const int error = scan_fd_directory({holder.pid, holder.inode}, fd_number);
  if (error == 0) return Result<bool>::success(true);
  if (error == ENOENT || error == ESRCH) return Result<bool>::success(false);
  return Result<bool>::failure(scan_error_text({holder.pid, holder.inode}, error), error);
}

}  // namespace tapsec::kernel
