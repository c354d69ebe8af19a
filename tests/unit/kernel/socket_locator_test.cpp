#include "agent/kernel/socket_locator.h"

#include <gtest/gtest.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <optional>

#include "agent/kernel/loopback.h"
#include "agent/kernel/socket_info.h"

namespace tapsec::kernel {
namespace {

using core::UniqueFd;

// A child process that holds one socket until told to close it (a byte on
// the control pipe), then waits to be told to exit.
class SocketHolder {
 public:
  // With `as_uid`, the child switches to that uid before it says it is ready.
  explicit SocketHolder(UniqueFd socket, std::optional<uid_t> as_uid = std::nullopt) {
    int to_child[2], from_child[2];
    if (::pipe2(to_child, O_CLOEXEC) != 0 || ::pipe2(from_child, O_CLOEXEC) != 0) return;
    pid_ = ::fork();
    if (pid_ == 0) {
      ::close(to_child[1]);
      ::close(from_child[0]);
      char command;
      if (as_uid && (::setgid(*as_uid) != 0 || ::setuid(*as_uid) != 0)) ::_exit(1);
      (void)::write(from_child[1], "r", 1);
      (void)::read(to_child[0], &command, 1);  // close the socket
      socket.reset();
      (void)::write(from_child[1], "c", 1);
      (void)::read(to_child[0], &command, 1);  // exit
      ::_exit(0);
    }
    ::close(to_child[0]);
    ::close(from_child[1]);
    control_.reset(to_child[1]);
    replies_.reset(from_child[0]);
    char reply;
    (void)::read(replies_.get(), &reply, 1);
  }
  ~SocketHolder() {
    control_.reset();  // EOF ends both of the child's reads
    if (pid_ > 0) ::waitpid(pid_, nullptr, 0);
  }
  pid_t pid() const { return pid_; }
  void close_socket() {
    char reply;
    (void)::write(control_.get(), "c", 1);
    (void)::read(replies_.get(), &reply, 1);
  }

 private:
  pid_t pid_ = -1;
  UniqueFd control_, replies_;
};

TEST(SocketLocator, BorrowsASocketHeldByAnotherProcess) {
  auto pair = make_loopback_tcp_pair();
  ASSERT_TRUE(pair) << pair.error();
  auto inode = socket_inode(pair->server.get());
  ASSERT_TRUE(inode) << inode.error();
  auto expected = inspect_tcp_socket(pair->server.get());
  ASSERT_TRUE(expected);

  SocketHolder holder(std::move(pair->server));  // only the child holds it now
  ASSERT_GT(holder.pid(), 0);
  auto pinned = pin_socket(holder.pid(), inode.value(), ::getuid());
  ASSERT_TRUE(pinned) << pinned.error();
  const PinnedSocket& ref = pinned.value();

  auto alive = socket_alive(ref);
  ASSERT_TRUE(alive) << alive.error();
  EXPECT_TRUE(alive.value());

  auto borrowed = borrow_socket(ref);
  ASSERT_TRUE(borrowed) << borrowed.error();
  auto info = inspect_tcp_socket(borrowed->get());
  ASSERT_TRUE(info) << info.error();
  EXPECT_EQ(info->cookie, expected->cookie);
  // The borrowed fd reaches the same connection: data sent through it
  // arrives at the client.
  ASSERT_EQ(::send(borrowed->get(), "k", 1, 0), 1);
  char byte = 0;
  ASSERT_EQ(::recv(pair->client.get(), &byte, 1, 0), 1);
  EXPECT_EQ(byte, 'k');
  borrowed->reset();

  holder.close_socket();
  alive = socket_alive(ref);
  ASSERT_TRUE(alive) << alive.error();
  EXPECT_FALSE(alive.value());
  auto gone = borrow_socket(ref);
  ASSERT_FALSE(gone);
  EXPECT_EQ(gone.error_number(), ENOENT);
  EXPECT_EQ(gone.error(), "socket inode " + std::to_string(inode.value()) + " of process " +
                              std::to_string(holder.pid()) + " is no longer open in that process");
  // The application closed the last fd: the connection ends (no duplicate
  // kept it alive), so the client sees end of stream.
  EXPECT_EQ(::recv(pair->client.get(), &byte, 1, 0), 0);
}

TEST(SocketLocator, ExitedProcessIsReportedAsSuch) {
  const pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  ASSERT_GT(child, 0);
  ASSERT_EQ(::waitpid(child, nullptr, 0), child);
  auto pinned = pin_socket(child, 12345, ::getuid());
  ASSERT_FALSE(pinned);
  EXPECT_EQ(pinned.error_number(), ESRCH);
  EXPECT_EQ(pinned.error(), "process " + std::to_string(child) + " does not exist (it exited)");
}

// Once the pinned holder has exited, the agent is done with that pid: a
// process that takes the pid next is never reached through it.
TEST(SocketLocator, APinnedHolderThatExitedStaysGone) {
  auto pair = make_loopback_tcp_pair();
  ASSERT_TRUE(pair) << pair.error();
  auto inode = socket_inode(pair->server.get());
  ASSERT_TRUE(inode);
  std::optional<PinnedSocket> pinned;
  {
    SocketHolder holder(std::move(pair->server));
    auto pin = pin_socket(holder.pid(), inode.value(), ::getuid());
    ASSERT_TRUE(pin) << pin.error();
    pinned = std::move(pin.value());
  }  // the holder exits and is reaped: its pid is free
  auto borrowed = borrow_socket(*pinned);
  ASSERT_FALSE(borrowed);
  EXPECT_EQ(borrowed.error_number(), ESRCH);
  auto alive = socket_alive(*pinned);
  ASSERT_TRUE(alive);
  EXPECT_FALSE(alive.value());
}

// A socket that ends up with a process of another user is not acted on,
// and such a process is never adopted as its new holder.
TEST(SocketLocator, AHolderOfAnotherUidIsRefused) {
  if (::geteuid() != 0) GTEST_SKIP() << "SKIPPED: needs root to run a holder as another uid";
  constexpr uid_t kNobody = 65534;
  auto pair = make_loopback_tcp_pair();
  ASSERT_TRUE(pair) << pair.error();
  auto inode = socket_inode(pair->server.get());
  ASSERT_TRUE(inode);
  SocketHolder stranger(std::move(pair->server), kNobody);
  auto as_owner = pin_socket(stranger.pid(), inode.value(), ::getuid());
  ASSERT_FALSE(as_owner);
  EXPECT_EQ(as_owner.error_number(), EPERM);
  EXPECT_NE(as_owner.error().find("runs as uid 65534"), std::string::npos) << as_owner.error();
  auto adopted = pin_new_holder(inode.value(), ::getuid());
  ASSERT_FALSE(adopted) << "a process of uid 65534 was adopted for uid 0";
  EXPECT_EQ(adopted.error_number(), ENOENT);
  auto as_nobody = pin_new_holder(inode.value(), kNobody);
  ASSERT_TRUE(as_nobody) << as_nobody.error();
  EXPECT_EQ(as_nobody.value().pid, stranger.pid());
}

TEST(SocketLocator, FindsTheFdNumberInThisProcess) {
  auto pair = make_loopback_tcp_pair();
  ASSERT_TRUE(pair) << pair.error();
  auto inode = socket_inode(pair->client.get());
  ASSERT_TRUE(inode);
  auto number = find_socket_fd_number({::getpid(), inode.value()});
  ASSERT_TRUE(number) << number.error();
  EXPECT_EQ(number.value(), pair->client.get());
}

TEST(SocketLocator, SocketInodeRejectsNonSockets) {
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  UniqueFd a(fds[0]), b(fds[1]);
  auto inode = socket_inode(a.get());
  ASSERT_FALSE(inode);
  EXPECT_EQ(inode.error(), "fd is not a socket");
}

}  // namespace
}  // namespace tapsec::kernel
