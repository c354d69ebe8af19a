// Finding an application's socket again after the agent handed it back.
//
// The agent keeps no duplicate of a socket it returned: a duplicate would
// keep the TCP connection open after the application closed its own fd. For
// UpdateKeys()/Terminate() it looks the socket up in its holder (pinned by a
// pidfd) by the socket's inode (st_ino, the number in "socket:[N]") and
// borrows a fd to it with pidfd_getfd(), which needs ptrace rights over the
// holder (CAP_SYS_PTRACE for another user's process).
//
// socket_alive() answers the question the agent actually has — "does the
// owner still hold this socket?" — by the same /proc scan rather than
// NETLINK_SOCK_DIAG: sock_diag reports the TCP connection, which outlives
// the application's close() (FIN_WAIT, TIME_WAIT, orphans) and needs the
// inet_diag/tcp_diag modules, while the agent must stop managing the
// association as soon as no fd refers to the socket.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>

#include "agent/core/unique_fd.h"
#include "agent/kernel/result.h"

namespace tapsec::kernel {

struct SocketRef {
  pid_t owner_pid = 0;
  ino_t inode = 0;
};

// The process that holds an application's socket, pinned by a pidfd from
// the moment the agent takes it on: once that process exits, its pid never
// leads the agent to anybody else. The agent acts on the socket only while
// its holder runs as `uid` (real and effective), the association's owner.
struct PinnedSocket {
  pid_t pid = 0;  // for messages and /proc; valid while pidfd's process lives
  uid_t uid = 0;
  ino_t inode = 0;
  core::UniqueFd pidfd;
  explicit operator bool() const { return static_cast<bool>(pidfd); }
};

// Pins `pid` as the holder of socket `inode`: opens its pidfd first, then
// checks that the process holds the socket and runs as `uid`, and that it
// was still alive after the checks (so they were about it).
Result<PinnedSocket> pin_socket(pid_t pid, ino_t inode, uid_t uid);
// Another process than this one, running as `uid`, that holds the socket:
// where the application handed it on (a fork, fd passing). A holder of
// another uid is never adopted.
Result<PinnedSocket> pin_new_holder(ino_t inode, uid_t uid);

// Inode of the socket behind fd (fstat st_ino); fails if fd is no socket.
Result<ino_t> socket_inode(int fd);

// A fd number in the owner that refers to the socket, if any.
Result<int> find_socket_fd_number(const SocketRef& ref);

// A fd of this process referring to the same socket (close it soon: while
// it is open the connection stays alive). Errors name the cause: the
// holder exited or now runs as another uid, the socket is no longer open in
// it, ptrace access was denied, or the kernel lacks pidfd_getfd (Linux 5.6).
Result<core::UniqueFd> borrow_socket(const PinnedSocket& holder);

// Whether the holder is alive and still has a fd referring to the socket. A
// scan that fails for another reason (permissions) reports the error.
Result<bool> socket_alive(const PinnedSocket& holder);

}  // namespace tapsec::kernel
