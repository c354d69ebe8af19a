#include "agent/kernel/loopback.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>

namespace tapsec::kernel {
namespace {

Result<TcpPair> connect_pair(int family) {
  using R = Result<TcpPair>;
  sockaddr_storage address{};
  socklen_t length;
  if (family == AF_INET) {
    auto& v4 = reinterpret_cast<sockaddr_in&>(address);
    v4.sin_family = AF_INET;
    v4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    length = sizeof(v4);
  } else {
    auto& v6 = reinterpret_cast<sockaddr_in6&>(address);
    v6.sin6_family = AF_INET6;
    v6.sin6_addr = in6addr_loopback;
    length = sizeof(v6);
  }
  auto fail = [](const char* step) {
    return R::failure(std::string("loopback TCP pair: ") + step + " failed: " +
                          describe_errno(errno),
                      errno);
  };

  core::UniqueFd listener(::socket(family, SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP));
  if (!listener) return fail("socket");
  if (::bind(listener.get(), reinterpret_cast<sockaddr*>(&address), length) != 0) return fail("bind");
  if (::listen(listener.get(), 1) != 0) return fail("listen");
  if (::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&address), &length) != 0)
    return fail("getsockname");

  TcpPair pair;
  pair.client.reset(::socket(family, SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP));
  if (!pair.client) return fail("socket");
  if (::connect(pair.client.get(), reinterpret_cast<sockaddr*>(&address), length) != 0)
    return fail("connect");
  pair.server.reset(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
  if (!pair.server) return fail("accept");
  return R::success(std::move(pair));
}

}  // namespace

Result<TcpPair> make_loopback_tcp_pair() {
  auto v4 = connect_pair(AF_INET);
  if (v4) return v4;
  auto v6 = connect_pair(AF_INET6);
  if (v6) return v6;
  return v4;
}

}  // namespace tapsec::kernel
