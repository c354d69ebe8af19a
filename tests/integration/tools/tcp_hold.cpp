// tcp_hold: opens many TCP connections to one port and holds them without
// sending a byte (a silent flood), then says how the server treated them.
//
//   tcp_hold --to ADDRESS:PORT --count N [--from ADDRESS] [--hold SECONDS] [--send FILE]
//
// With --send, each connection sends FILE's bytes once connected, then says
// nothing more.
// Prints "opened N failed F" once every connect has finished (so a script can
// measure the server while the connections are open), then watches them for
// --hold seconds (default 6) and prints
//   "closed_within_1s A closed_within_5s B closed C open D"
// counting connections the server closed (EOF or reset), by time since they
// were opened; one reset before the connect was seen to finish counts as
// opened and closed at once. Exit status 0 unless the arguments are wrong or nothing opened.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <vector>

#include "agent/core/unique_fd.h"

namespace {

using Clock = std::chrono::steady_clock;
using tapsec::core::UniqueFd;

struct Address {
  sockaddr_storage storage{};
  socklen_t length = 0;
};

// "192.0.2.2", "192.0.2.2:51821", "[2001:db8::2]:51821", "2001:db8::2".
std::optional<Address> parse_address(std::string text, bool with_port) {
  Address out;
  std::string host = text, port = "0";
  if (with_port) {
    auto colon = text.rfind(':');
    if (colon == std::string::npos) return std::nullopt;
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
  }
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  char* end = nullptr;
  unsigned long number = std::strtoul(port.c_str(), &end, 10);
  if (port.empty() || *end || number > 65535) return std::nullopt;
  auto& in4 = reinterpret_cast<sockaddr_in&>(out.storage);
  auto& in6 = reinterpret_cast<sockaddr_in6&>(out.storage);
  if (::inet_pton(AF_INET, host.c_str(), &in4.sin_addr) == 1) {
    in4.sin_family = AF_INET;
    in4.sin_port = htons(static_cast<std::uint16_t>(number));
    out.length = sizeof in4;
  } else if (::inet_pton(AF_INET6, host.c_str(), &in6.sin6_addr) == 1) {
    in6.sin6_family = AF_INET6;
    in6.sin6_port = htons(static_cast<std::uint16_t>(number));
    out.length = sizeof in6;
  } else {
    return std::nullopt;
  }
  return out;
}

struct Held {
  UniqueFd fd;
  Clock::time_point opened;
  std::optional<Clock::duration> closed_after;  // set once the server closed it
};

int usage() {
  std::fputs("usage: tcp_hold --to ADDRESS:PORT --count N [--from ADDRESS] [--hold SECONDS] [--send FILE]\n", stderr);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::optional<Address> to, from;
  long count = 0, hold_seconds = 6;
  std::string payload;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string option = argv[i], value = argv[i + 1];
    if (option == "--to") to = parse_address(value, true);
    else if (option == "--from") from = parse_address(value, false);
    else if (option == "--count") count = std::strtol(value.c_str(), nullptr, 10);
    else if (option == "--hold") hold_seconds = std::strtol(value.c_str(), nullptr, 10);
    else if (option == "--send") {
      std::ifstream file(value, std::ios::binary);
      if (!file) return usage();
      payload.assign(std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>());
    } else return usage();
  }
  if (argc % 2 == 0 || !to || count <= 0 || hold_seconds < 0) return usage();
  if (from && from->storage.ss_family != to->storage.ss_family) return usage();

  // One descriptor per connection.
  rlimit limit{};
  ::getrlimit(RLIMIT_NOFILE, &limit);
  if (limit.rlim_cur < static_cast<rlim_t>(count) + 64) {
    limit.rlim_cur = std::min<rlim_t>(limit.rlim_max, static_cast<rlim_t>(count) + 64);
    ::setrlimit(RLIMIT_NOFILE, &limit);
  }

  // Every connect at once, non-blocking; then wait (up to 10 s) for each to finish.
  std::vector<Held> held;
  long failed = 0;
  for (long i = 0; i < count; ++i) {
    UniqueFd fd(::socket(to->storage.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!fd) {
      std::fprintf(stderr, "tcp_hold: socket: %s\n", std::strerror(errno));
      ++failed;
      continue;
    }
    if (from && ::bind(fd.get(), reinterpret_cast<const sockaddr*>(&from->storage), from->length) != 0) {
      std::fprintf(stderr, "tcp_hold: bind: %s\n", std::strerror(errno));
      return 1;
    }
    if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&to->storage), to->length) != 0 &&
        errno != EINPROGRESS) {
      ++failed;
      continue;
    }
    held.push_back({std::move(fd), Clock::now(), std::nullopt});
  }
  std::vector<Held> connecting = std::move(held);
  held.clear();
  auto connect_deadline = Clock::now() + std::chrono::seconds(10);
  while (!connecting.empty() && Clock::now() < connect_deadline) {
    std::vector<pollfd> fds;
    for (const auto& c : connecting) fds.push_back({c.fd.get(), POLLOUT, 0});
    if (::poll(fds.data(), fds.size(), 100) < 0 && errno != EINTR) break;
    std::vector<Held> still;
    for (std::size_t i = 0; i < connecting.size(); ++i) {
      if (!fds[i].revents) {
        still.push_back(std::move(connecting[i]));
        continue;
      }
      int error = 0;
      socklen_t length = sizeof error;
      ::getsockopt(fds[i].fd, SOL_SOCKET, SO_ERROR, &error, &length);
      // A reset after the handshake: opened, and closed by the server at once.
      if (error == ECONNRESET || error == EPIPE) connecting[i].closed_after = Clock::now() - connecting[i].opened;
      else if (error != 0) {
        ++failed;
        continue;
      }
      // The socket buffer takes the small payloads this is for at once.
      if (!payload.empty() && !connecting[i].closed_after)
        ::send(fds[i].fd, payload.data(), payload.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
      held.push_back(std::move(connecting[i]));
    }
    connecting = std::move(still);
  }
  failed += static_cast<long>(connecting.size());
  std::printf("opened %zu failed %ld\n", held.size(), failed);
  std::fflush(stdout);
  if (held.empty()) return 1;

  // Watch for the server closing them.
  auto hold_until = Clock::now() + std::chrono::seconds(hold_seconds);
  while (Clock::now() < hold_until) {
    std::vector<pollfd> fds;
    std::vector<Held*> watched;
    for (auto& h : held) {
      if (h.closed_after) continue;
      fds.push_back({h.fd.get(), POLLIN | POLLRDHUP, 0});
      watched.push_back(&h);
    }
    if (fds.empty()) break;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(hold_until - Clock::now()).count();
    if (::poll(fds.data(), fds.size(), static_cast<int>(std::max<long>(left, 0))) < 0 && errno != EINTR) break;
    for (std::size_t i = 0; i < fds.size(); ++i) {
      if (!fds[i].revents) continue;
      // Anything the server sends is read and dropped; EOF or a reset ends it.
      char discard[512];
      ssize_t n = ::recv(fds[i].fd, discard, sizeof discard, MSG_DONTWAIT);
      bool gone = n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR);
      if (gone || (fds[i].revents & (POLLRDHUP | POLLHUP | POLLERR)))
        watched[i]->closed_after = Clock::now() - watched[i]->opened;
    }
  }
  long within_1s = 0, within_5s = 0, closed = 0;
  for (const auto& h : held) {
    if (!h.closed_after) continue;
    ++closed;
    if (*h.closed_after <= std::chrono::seconds(1)) ++within_1s;
    if (*h.closed_after <= std::chrono::seconds(5)) ++within_5s;
  }
  std::printf("closed_within_1s %ld closed_within_5s %ld closed %ld open %ld\n", within_1s, within_5s, closed,
              static_cast<long>(held.size()) - closed);
  return 0;
}
