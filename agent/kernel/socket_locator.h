// Finding an application's socket again after the agent handed it back.
//
// The agent keeps no duplicate of a socket it returned: a duplicate would
// keep the TCP connection open after the application closed its own fd. For
// UpdateKeys()/Terminate() it looks the socket up by the owner's pid and the
// socket's inode (st_ino, the number in "socket:[N]") and borrows a fd to it
// with pidfd_getfd(), which needs ptrace rights over the owner (the agent
// runs as root; an unprivileged caller may reach only its own children).
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

// Inode of the socket behind fd (fstat st_ino); fails if fd is no socket.
Result<ino_t> socket_inode(int fd);

// A fd number in the owner that refers to the socket, if any.
Result<int> find_socket_fd_number(const SocketRef& ref);

// A fd of this process referring to the same socket (close it soon: while
// it is open the connection stays alive). Errors name the cause: the
// process exited, the socket is no longer open in it, ptrace access was
// denied, or the kernel lacks pidfd_getfd (Linux 5.6).
Result<core::UniqueFd> borrow_socket(const SocketRef& ref);

// Some process other than this one that holds a fd to the socket: where an
// application handed its socket on (a fork, fd passing) and closed its own.
Result<pid_t> find_socket_holder(ino_t inode);

// Whether the owner still has a fd referring to the socket. A scan that
// fails for another reason (permissions) reports the error instead.
Result<bool> socket_alive(const SocketRef& ref);

}  // namespace tapsec::kernel
