#include "agent/kernel/socket_info.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
// linux/tcp.h: glibc's struct tcp_info lacks the byte and segment counters.
#include <linux/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>

#include "agent/kernel/ktls.h"

namespace tapsec::kernel {
namespace {

// TCP states as TCP_INFO reports them (include/net/tcp_states.h).
enum : std::uint8_t {
  TCP_ESTABLISHED = 1,
  TCP_SYN_SENT,
  TCP_SYN_RECV,
  TCP_FIN_WAIT1,
  TCP_FIN_WAIT2,
  TCP_TIME_WAIT,
  TCP_CLOSE,
  TCP_CLOSE_WAIT,
  TCP_LAST_ACK,
  TCP_LISTEN,
  TCP_CLOSING,
};

std::string family_name(int family) {
  switch (family) {
    case AF_UNIX:
      return "UNIX";
    case AF_NETLINK:
      return "netlink";
    case AF_PACKET:
      return "packet";
    case AF_INET:
      return "IPv4";
    case AF_INET6:
      return "IPv6";
    default:
      return "address family " + std::to_string(family);
  }
}

std::string file_kind(mode_t mode) {
  if (S_ISREG(mode)) return "regular file";
  if (S_ISDIR(mode)) return "directory";
  if (S_ISFIFO(mode)) return "pipe";
  if (S_ISCHR(mode)) return "character device";
  if (S_ISBLK(mode)) return "block device";
  return "non-socket file";
}

// Names what an AF_INET/AF_INET6 socket is when it is not TCP.
std::string inet_kind(int type, int protocol) {
  if (protocol == IPPROTO_UDP) return "UDP";
  if (protocol == IPPROTO_UDPLITE) return "UDP-Lite";
  if (protocol == IPPROTO_SCTP) return "SCTP";
  if (protocol == IPPROTO_MPTCP) return "MPTCP";
  if (protocol == IPPROTO_ICMP || protocol == IPPROTO_ICMPV6) return "ICMP";
  if (type == SOCK_RAW) return "raw IP";
  return "IP protocol " + std::to_string(protocol);
}

bool get_int_option(int fd, int option, int& value) {
  socklen_t length = sizeof(value);
  return ::getsockopt(fd, SOL_SOCKET, option, &value, &length) == 0;
}

std::string address_of(int fd, bool peer) {
  sockaddr_storage address{};
  socklen_t length = sizeof(address);
  const int rc = peer ? ::getpeername(fd, reinterpret_cast<sockaddr*>(&address), &length)
                      : ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
  if (rc != 0) return {};
  return format_socket_address(&address, length);
}

}  // namespace

std::string format_socket_address(const void* sockaddr_pointer, std::size_t length) {
  sockaddr_storage address{};
  std::memcpy(&address, sockaddr_pointer, std::min(length, sizeof(address)));
  char text[INET6_ADDRSTRLEN] = {};
  if (address.ss_family == AF_INET && length >= sizeof(sockaddr_in)) {
    const auto& v4 = reinterpret_cast<const sockaddr_in&>(address);
    ::inet_ntop(AF_INET, &v4.sin_addr, text, sizeof(text));
    return std::string(text) + ":" + std::to_string(ntohs(v4.sin_port));
  }
  if (address.ss_family == AF_INET6 && length >= sizeof(sockaddr_in6)) {
    const auto& v6 = reinterpret_cast<const sockaddr_in6&>(address);
    ::inet_ntop(AF_INET6, &v6.sin6_addr, text, sizeof(text));
    return "[" + std::string(text) + "]:" + std::to_string(ntohs(v6.sin6_port));
  }
  return "(address family " + std::to_string(address.ss_family) + ")";
}

std::string tcp_state_name(std::uint8_t state) {
  switch (state) {
    case TCP_ESTABLISHED: return "ESTABLISHED";
    case TCP_SYN_SENT: return "SYN_SENT";
    case TCP_SYN_RECV: return "SYN_RECV";
    case TCP_FIN_WAIT1: return "FIN_WAIT1";
    case TCP_FIN_WAIT2: return "FIN_WAIT2";
    case TCP_TIME_WAIT: return "TIME_WAIT";
    case TCP_CLOSE: return "CLOSE";
    case TCP_CLOSE_WAIT: return "CLOSE_WAIT";
    case TCP_LAST_ACK: return "LAST_ACK";
    case TCP_LISTEN: return "LISTEN";
    case TCP_CLOSING: return "CLOSING";
    default: return "state " + std::to_string(state);
  }
}

Result<SocketInfo> inspect_tcp_socket(int fd) {
  using R = Result<SocketInfo>;
  struct stat file_status {};
  if (::fstat(fd, &file_status) != 0) {
    if (errno == EBADF) return R::failure("fd " + std::to_string(fd) + " is not open", EBADF);
    return R::failure("fstat of fd " + std::to_string(fd) + " failed: " + describe_errno(errno),
                      errno);
  }
  if (!S_ISSOCK(file_status.st_mode)) {
    return R::failure("fd is a " + file_kind(file_status.st_mode) + ", not a socket", ENOTSOCK);
  }

  int family = 0, type = 0, protocol = 0;
  if (!get_int_option(fd, SO_DOMAIN, family) || !get_int_option(fd, SO_TYPE, type) ||
      !get_int_option(fd, SO_PROTOCOL, protocol)) {
    return R::failure("cannot query the socket's kind: " + describe_errno(errno), errno);
  }
  if (family != AF_INET && family != AF_INET6) {
    return R::failure("fd is a " + family_name(family) + " socket, not TCP", EPROTONOSUPPORT);
  }
  if (type != SOCK_STREAM || protocol != IPPROTO_TCP) {
    return R::failure("fd is a " + inet_kind(type, protocol) + " socket, not TCP",
                      EPROTONOSUPPORT);
  }

  SocketInfo info;
  info.family = family;
  info.inode = file_status.st_ino;
  info.local_address = address_of(fd, false);
  info.peer_address = address_of(fd, true);

  socklen_t length = sizeof(info.cookie);
  if (::getsockopt(fd, SOL_SOCKET, SO_COOKIE, &info.cookie, &length) != 0) info.cookie = 0;

  tcp_info tcp{};
  length = sizeof(tcp);
  if (::getsockopt(fd, IPPROTO_TCP, TCP_INFO, &tcp, &length) != 0) {
    return R::failure("getsockopt TCP_INFO failed: " + describe_errno(errno), errno);
  }
  info.tcp.state = tcp.tcpi_state;
  info.tcp.bytes_acked = tcp.tcpi_bytes_acked;
  info.tcp.bytes_received = tcp.tcpi_bytes_received;
  info.tcp.segs_out = tcp.tcpi_segs_out;
  info.tcp.segs_in = tcp.tcpi_segs_in;
  info.tcp.rtt_us = tcp.tcpi_rtt;

  auto ulp = ulp_name(fd);
  if (ulp) info.ulp = ulp.value();
  return R::success(std::move(info));
}

Result<SocketInfo> check_offload_candidate(int fd) {
  using R = Result<SocketInfo>;
  auto inspected = inspect_tcp_socket(fd);
  if (!inspected) return inspected;
  const SocketInfo& info = inspected.value();
  switch (info.tcp.state) {
    case TCP_ESTABLISHED:
      break;
    case TCP_LISTEN:
      return R::failure("socket is listening, not connected", EINVAL);
    case TCP_CLOSE:
      return R::failure("socket is not connected", ENOTCONN);
    case TCP_SYN_SENT:
    case TCP_SYN_RECV:
      return R::failure("socket is still connecting (state " + tcp_state_name(info.tcp.state) +
                            "); pass it once connect() has completed",
                        ENOTCONN);
    default:
      return R::failure("socket is not established (state " + tcp_state_name(info.tcp.state) +
                            "): the connection is closing",
                        ENOTCONN);
  }
  if (info.peer_address.empty()) return R::failure("socket is not connected", ENOTCONN);
  if (!info.ulp.empty()) {
    return R::failure("socket already carries the TCP ULP \"" + info.ulp + "\"", EEXIST);
  }
  return inspected;
}

}  // namespace tapsec::kernel
