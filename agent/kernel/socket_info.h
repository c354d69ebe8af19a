// Checks on a socket handed to the agent, and what the agent reports about
// it: addresses, the kernel's socket cookie, TCP counters.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>

#include "agent/kernel/result.h"

namespace tapsec::kernel {

struct TcpCounters {
  std::uint8_t state = 0;  // TCP_ESTABLISHED (1), TCP_LISTEN (10), ... see tcp_state_name()
  std::uint64_t bytes_acked = 0;
  std::uint64_t bytes_received = 0;
  std::uint32_t segs_out = 0;
  std::uint32_t segs_in = 0;
  std::uint32_t rtt_us = 0;
};

struct SocketInfo {
  int family = 0;                 // AF_INET or AF_INET6
  std::string local_address;      // "192.0.2.1:443" or "[2001:db8::1]:443"
  std::string peer_address;       // empty when not connected
  std::uint64_t cookie = 0;       // SO_COOKIE: stable for the socket's life
  ino_t inode = 0;                // st_ino: how /proc/<pid>/fd names it
  std::string ulp;                // TCP ULP in use, "" when none
  TcpCounters tcp;
};

// Describes a TCP socket in any state. Fails with a plain explanation for
// anything else: "fd 5 is not open", "fd is a regular file, not a socket",
// "fd is a UNIX socket, not TCP", "fd is a UDP socket, not TCP", ...
Result<SocketInfo> inspect_tcp_socket(int fd);

// inspect_tcp_socket() plus what installing a record layer needs: the
// connection is established ("socket is not connected", "socket is
// listening, not connected", "socket is not established (state CLOSE_WAIT)")
// and carries no TCP ULP yet ("socket already carries the TCP ULP \"tls\"").
Result<SocketInfo> check_offload_candidate(int fd);

// "ESTABLISHED", "LISTEN", ... for TcpCounters::state.
std::string tcp_state_name(std::uint8_t state);

// "ip:port" / "[v6]:port" of a sockaddr_in / sockaddr_in6.
std::string format_socket_address(const void* sockaddr, std::size_t length);

}  // namespace tapsec::kernel
