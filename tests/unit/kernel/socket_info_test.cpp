#include "agent/kernel/socket_info.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include "agent/core/unique_fd.h"
#include "agent/kernel/loopback.h"

namespace tapsec::kernel {
namespace {

using core::UniqueFd;

TEST(SocketInfo, UnixSocketIsNotTcp) {
  int fds[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
  UniqueFd a(fds[0]), b(fds[1]);
  auto info = check_offload_candidate(a.get());
  ASSERT_FALSE(info);
  EXPECT_EQ(info.error(), "fd is a UNIX socket, not TCP");
}

TEST(SocketInfo, UdpSocketIsNotTcp) {
  UniqueFd udp(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  ASSERT_TRUE(udp);
  auto info = check_offload_candidate(udp.get());
  ASSERT_FALSE(info);
  EXPECT_EQ(info.error(), "fd is a UDP socket, not TCP");
}

TEST(SocketInfo, RegularFileIsNotASocket) {
  UniqueFd file(::open("/proc/self/status", O_RDONLY | O_CLOEXEC));
  ASSERT_TRUE(file);
  auto info = inspect_tcp_socket(file.get());
  ASSERT_FALSE(info);
  EXPECT_EQ(info.error(), "fd is a regular file, not a socket");
}

TEST(SocketInfo, ClosedFdIsNotOpen) {
  int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  ::close(fd);
  auto info = inspect_tcp_socket(fd);
  ASSERT_FALSE(info);
  EXPECT_EQ(info.error(), "fd " + std::to_string(fd) + " is not open");
}

TEST(SocketInfo, UnconnectedTcpSocketIsNotConnected) {
  UniqueFd tcp(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  ASSERT_TRUE(tcp);
  EXPECT_TRUE(inspect_tcp_socket(tcp.get()));  // a TCP socket, just not usable yet
  auto info = check_offload_candidate(tcp.get());
  ASSERT_FALSE(info);
  EXPECT_EQ(info.error(), "socket is not connected");
}

TEST(SocketInfo, ListeningSocketIsNotConnected) {
  UniqueFd listener(::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0));
  ASSERT_TRUE(listener);
  sockaddr_in6 address{};
  address.sin6_family = AF_INET6;
  address.sin6_addr = in6addr_loopback;
  ASSERT_EQ(::bind(listener.get(), reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  ASSERT_EQ(::listen(listener.get(), 1), 0);
  auto info = check_offload_candidate(listener.get());
  ASSERT_FALSE(info);
  EXPECT_EQ(info.error(), "socket is listening, not connected");
  auto inspected = inspect_tcp_socket(listener.get());
  ASSERT_TRUE(inspected) << inspected.error();
  EXPECT_EQ(tcp_state_name(inspected->tcp.state), "LISTEN");
  EXPECT_EQ(inspected->local_address.rfind("[::1]:", 0), 0u) << inspected->local_address;
}

TEST(SocketInfo, ConnectedPairDescribesBothEnds) {
  auto pair = make_loopback_tcp_pair();
  ASSERT_TRUE(pair) << pair.error();
  auto client = check_offload_candidate(pair->client.get());
  auto server = check_offload_candidate(pair->server.get());
  ASSERT_TRUE(client) << client.error();
  ASSERT_TRUE(server) << server.error();
  EXPECT_EQ(client->family, AF_INET);
  EXPECT_EQ(client->local_address, server->peer_address);
  EXPECT_EQ(client->peer_address, server->local_address);
  EXPECT_EQ(client->peer_address.rfind("127.0.0.1:", 0), 0u) << client->peer_address;
  EXPECT_EQ(tcp_state_name(client->tcp.state), "ESTABLISHED");
  EXPECT_NE(client->cookie, 0u);
  EXPECT_NE(client->cookie, server->cookie);
  EXPECT_EQ(client->ulp, "");

  struct stat status {};
  ASSERT_EQ(::fstat(pair->client.get(), &status), 0);
  EXPECT_EQ(client->inode, status.st_ino);
}

TEST(SocketInfo, CountsBytesBothWays) {
  auto pair = make_loopback_tcp_pair();
  ASSERT_TRUE(pair) << pair.error();
  const std::string payload(1000, 'p');
  ASSERT_EQ(::send(pair->client.get(), payload.data(), payload.size(), 0), 1000);
  char buffer[1000];
  ASSERT_EQ(::recv(pair->server.get(), buffer, sizeof(buffer), MSG_WAITALL), 1000);
  auto server = inspect_tcp_socket(pair->server.get());
  ASSERT_TRUE(server) << server.error();
  EXPECT_EQ(server->tcp.bytes_received, 1000u);
  EXPECT_GT(server->tcp.segs_in, 0u);
  // Acknowledgement may trail the receive a little on a busy machine.
  for (int i = 0; i < 100; ++i) {
    auto client = inspect_tcp_socket(pair->client.get());
    ASSERT_TRUE(client);
    if (client->tcp.bytes_acked >= 1000) break;
    ::usleep(10'000);
  }
  auto client = inspect_tcp_socket(pair->client.get());
  EXPECT_GE(client->tcp.bytes_acked, 1000u);
  EXPECT_GT(client->tcp.segs_out, 0u);
}

TEST(SocketInfo, ClosingConnectionIsNotEstablished) {
  auto pair = make_loopback_tcp_pair();
  ASSERT_TRUE(pair) << pair.error();
  pair->client.reset();  // the server side moves to CLOSE_WAIT
  for (int i = 0; i < 100; ++i) {
    auto server = inspect_tcp_socket(pair->server.get());
    ASSERT_TRUE(server);
    if (server->tcp.state != 1) break;
    ::usleep(10'000);
  }
  auto info = check_offload_candidate(pair->server.get());
  ASSERT_FALSE(info);
  EXPECT_EQ(info.error(), "socket is not established (state CLOSE_WAIT): the connection is closing");
}

TEST(FormatSocketAddress, FormatsBothFamilies) {
  sockaddr_in v4{};
  v4.sin_family = AF_INET;
  v4.sin_port = htons(443);
  ::inet_pton(AF_INET, "192.0.2.7", &v4.sin_addr);
  EXPECT_EQ(format_socket_address(&v4, sizeof(v4)), "192.0.2.7:443");
  sockaddr_in6 v6{};
  v6.sin6_family = AF_INET6;
  v6.sin6_port = htons(8443);
  ::inet_pton(AF_INET6, "2001:db8::1", &v6.sin6_addr);
  EXPECT_EQ(format_socket_address(&v6, sizeof(v6)), "[2001:db8::1]:8443");
}

}  // namespace
}  // namespace tapsec::kernel
