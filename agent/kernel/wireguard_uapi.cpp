// Userspace WireGuard: the UAPI text protocol (wireguard.com/xplatform) and
// a wireguard-go process per device. Nothing here logs or speaks netlink:
// the reply parser is fuzzed with only this file, wireguard.cpp and the
// codecs linked in.
#include <fcntl.h>
#include <net/if.h>
#include <openssl/crypto.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <set>
#include <thread>

#include "agent/core/unique_fd.h"
#include "agent/kernel/wireguard.h"

extern char** environ;

namespace tapsec::kernel::wireguard {

namespace {

using core::UniqueFd;

// A get reply of a device with tens of thousands of peers fits; anything
// bigger is not a reply we can use.
constexpr std::size_t kMaxReplyBytes = 64u << 20;
constexpr auto kSocketTimeout = std::chrono::seconds(10);
constexpr auto kStopGrace = std::chrono::seconds(2);
constexpr std::size_t kOutputTailBytes = 2048;

// A string that may hold key material: wiped when it dies, and when it
// grows (so no reallocation leaves a copy behind in freed memory).
class SecretText {
 public:
  SecretText() = default;
  SecretText(const SecretText&) = delete;
  SecretText& operator=(const SecretText&) = delete;
  ~SecretText() { wipe(); }

  void reserve(std::size_t size) {
    if (size <= text_.capacity()) return;
    std::string bigger;
    bigger.reserve(size);
    bigger.assign(text_);
    wipe();
    text_.swap(bigger);
  }
  void append(std::string_view more) {
    if (text_.size() + more.size() > text_.capacity())
      reserve(std::max(text_.capacity() * 2, text_.size() + more.size()));
    text_.append(more);
  }
  void wipe() { OPENSSL_cleanse(text_.data(), text_.size()); }
  std::string& text() { return text_; }
  std::string_view view() const { return text_; }

 private:
  std::string text_;
};

// ---- values as UAPI text --------------------------------------------------

void append_hex(std::string& out, const Key& key) {
  static constexpr char kDigits[] = "0123456789abcdef";
  for (std::uint8_t byte : key) {
    out.push_back(kDigits[byte >> 4]);
    out.push_back(kDigits[byte & 0x0f]);
  }
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::optional<Key> key_from_hex(std::string_view text) {
  if (text.size() != 64) return std::nullopt;
  Key key{};
  for (std::size_t i = 0; i < key.size(); ++i) {
    const int high = hex_digit(text[2 * i]), low = hex_digit(text[2 * i + 1]);
    if (high < 0 || low < 0) {
      OPENSSL_cleanse(key.data(), key.size());
      return std::nullopt;
    }
    key[i] = static_cast<std::uint8_t>(high << 4 | low);
  }
  return key;
}

bool is_zero(const Key& key) {
  return std::all_of(key.begin(), key.end(), [](std::uint8_t byte) { return byte == 0; });
}

template <typename Unsigned>
std::optional<Unsigned> parse_decimal(std::string_view text) {
  // Digits only: no sign, no spaces, no "0x".
  if (text.empty() || text.size() > 20) return std::nullopt;
  if (!std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; })) return std::nullopt;
  Unsigned value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return value;
}

// "errno=N": wireguard-go sends negative numbers, wg's C library positive.
std::optional<int> parse_errno(std::string_view text) {
  if (!text.empty() && text.front() == '-') text.remove_prefix(1);
  const auto magnitude = parse_decimal<unsigned>(text);
  if (!magnitude || *magnitude > 4095) return std::nullopt;
  return static_cast<int>(*magnitude);
}

// "192.0.2.1:51820" or "[2001:db8::1]:51820"; an IPv6 zone ("%eth0") is
// dropped, since IpAddress has no place for it.
std::optional<Endpoint> parse_endpoint(std::string_view text) {
  std::string_view host, port;
  int family = AF_INET;
  if (!text.empty() && text.front() == '[') {
    const auto close = text.find("]:");
    if (close == std::string_view::npos) return std::nullopt;
    host = text.substr(1, close - 1);
    port = text.substr(close + 2);
    if (const auto percent = host.find('%'); percent != std::string_view::npos) {
      if (percent + 1 == host.size()) return std::nullopt;
      host = host.substr(0, percent);
    }
    family = AF_INET6;
  } else {
    const auto colon = text.rfind(':');
    if (colon == std::string_view::npos) return std::nullopt;
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
  }
  const auto address = IpAddress::parse(host);
  const auto port_number = parse_decimal<std::uint16_t>(port);
  if (!address || address->family != family || !port_number) return std::nullopt;
  return Endpoint{*address, *port_number};
}

bool is_printable(std::string_view line) {
  return std::all_of(line.begin(), line.end(), [](char c) { return c >= 0x20 && c < 0x7f; });
}

bool is_key_name(std::string_view key) {
  return !key.empty() && std::all_of(key.begin(), key.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
  });
}

bool is_peer_key(std::string_view key) {
  for (std::string_view peer_key : {"preshared_key", "endpoint", "last_handshake_time_sec", "last_handshake_time_nsec",
                                    "rx_bytes", "tx_bytes", "persistent_keepalive_interval", "allowed_ip",
                                    "protocol_version"})
    if (key == peer_key) return true;
  return false;
}

// What a get reply said about one peer before it is turned into a PeerState.
struct PeerBeingRead {
  PeerState state;
  std::uint64_t handshake_seconds = 0, handshake_nanoseconds = 0;
  unsigned seen = 0;  // bits of PeerField: each scalar key at most once
};

enum PeerField : unsigned {
  kPresharedKey = 1u << 0,
  kEndpoint = 1u << 1,
  kHandshakeSeconds = 1u << 2,
  kHandshakeNanoseconds = 1u << 3,
  kRxBytes = 1u << 4,
  kTxBytes = 1u << 5,
  kKeepalive = 1u << 6,
  kProtocolVersion = 1u << 7,
};

class GetReplyParser {
 public:
  GetReplyParser() = default;
  GetReplyParser(const GetReplyParser&) = delete;
  GetReplyParser& operator=(const GetReplyParser&) = delete;
  // Keys are arrays: moving a peer out copies its PSK, so what stays
  // behind (or was parsed before a refusal) is wiped here.
  ~GetReplyParser() {
    for (PeerState& peer : state_.peers) OPENSSL_cleanse(peer.preshared_key.data(), peer.preshared_key.size());
    if (peer_) OPENSSL_cleanse(peer_->state.preshared_key.data(), peer_->state.preshared_key.size());
  }

  Result<DeviceState> parse(std::string_view reply) {
    if (reply.size() > kMaxReplyBytes) return fail_whole("is larger than " + std::to_string(kMaxReplyBytes) + " bytes");
    if (reply.size() < 2 || reply.substr(reply.size() - 2) != "\n\n")
      return fail_whole("does not end with a blank line");
    std::string_view rest = reply.substr(0, reply.size() - 1);  // every line now ends in '\n'
    bool errno_seen = false;
    while (!rest.empty()) {
      ++line_number_;
      const auto newline = rest.find('\n');
      const std::string_view line = rest.substr(0, newline);
      rest.remove_prefix(newline + 1);
      if (errno_seen) return fail("follows the errno line");
      if (line.empty()) return fail("is blank before the end of the reply");
      if (!is_printable(line)) return fail("holds a control or non-ASCII character");
      const auto equals = line.find('=');
      if (equals == std::string_view::npos || equals == 0) return fail("is not key=value");
      const std::string_view key = line.substr(0, equals), value = line.substr(equals + 1);
      if (key == "errno") {
        const auto error_number = parse_errno(value);
        if (!error_number) return fail("has an invalid errno \"" + std::string(value) + "\"");
        if (*error_number != 0)
          return Result<DeviceState>::failure("the UAPI get failed: " + describe_errno(*error_number), *error_number);
        errno_seen = true;
        continue;
      }
      std::optional<std::string> problem;
      if (key == "public_key") {
        problem = start_peer(value);
      } else if (peer_) {
        problem = peer_line(key, value);
      } else {
        problem = device_line(key, value);
      }
      if (problem) return fail(*problem);
    }
    if (!errno_seen) return fail_whole("has no errno line");
    finish_peer();
    return Result<DeviceState>::success(std::move(state_));
  }

 private:
  Result<DeviceState> fail(const std::string& problem) const {
    return Result<DeviceState>::failure("UAPI get reply line " + std::to_string(line_number_) + " " + problem, EPROTO);
  }
  Result<DeviceState> fail_whole(const std::string& problem) const {
    return Result<DeviceState>::failure("UAPI get reply " + problem, EPROTO);
  }

  std::optional<std::string> device_line(std::string_view key, std::string_view value) {
    if (key == "private_key") {
      if (private_key_seen_) return "repeats private_key";
      private_key_seen_ = true;
      auto private_key = key_from_hex(value);
      if (!private_key) return "has a private_key that is not 64 hex digits";
      state_.has_private_key = !is_zero(*private_key);
      if (state_.has_private_key) state_.public_key = public_key_of(*private_key);
      OPENSSL_cleanse(private_key->data(), private_key->size());
    } else if (key == "listen_port") {
      if (listen_port_seen_) return "repeats listen_port";
      listen_port_seen_ = true;
      const auto port = parse_decimal<std::uint16_t>(value);
      if (!port) return "has an invalid listen_port";
      state_.listen_port = *port;
    } else if (key == "fwmark") {
      if (fwmark_seen_) return "repeats fwmark";
      fwmark_seen_ = true;
      const auto mark = parse_decimal<std::uint32_t>(value);
      if (!mark) return "has an invalid fwmark";
      state_.fwmark = *mark;
    } else if (is_peer_key(key)) {
      return "has " + std::string(key) + " before any public_key";
    } else if (is_key_name(key)) {
      // Keys a newer UAPI speaker may add: ignored, as the protocol asks.
    } else {
      return "has an invalid key";
    }
    return std::nullopt;
  }

  std::optional<std::string> start_peer(std::string_view value) {
    finish_peer();
    const auto public_key = key_from_hex(value);
    if (!public_key) return "has a public_key that is not 64 hex digits";
    if (!peer_keys_.insert(*public_key).second) return "repeats a peer";
    peer_.emplace();
    peer_->state.public_key = *public_key;
    return std::nullopt;
  }

  // Marks `field` seen; false when it was already.
  bool first(PeerField field) {
    if (peer_->seen & field) return false;
    peer_->seen |= field;
    return true;
  }

  std::optional<std::string> peer_line(std::string_view key, std::string_view value) {
    PeerState& peer = peer_->state;
    const std::string name(key);
    if (key == "preshared_key") {
      if (!first(kPresharedKey)) return "repeats preshared_key";
      auto psk = key_from_hex(value);
      if (!psk) return "has a preshared_key that is not 64 hex digits";
      peer.preshared_key = *psk;
      peer.has_preshared_key = !is_zero(*psk);
      OPENSSL_cleanse(psk->data(), psk->size());
    } else if (key == "endpoint") {
      if (!first(kEndpoint)) return "repeats endpoint";
      peer.endpoint = parse_endpoint(value);
      if (!peer.endpoint) return "has an invalid endpoint";
    } else if (key == "last_handshake_time_sec" || key == "last_handshake_time_nsec" || key == "rx_bytes" ||
               key == "tx_bytes") {
      const PeerField field = key == "last_handshake_time_sec"    ? kHandshakeSeconds
                              : key == "last_handshake_time_nsec" ? kHandshakeNanoseconds
                              : key == "rx_bytes"                 ? kRxBytes
                                                                  : kTxBytes;
      if (!first(field)) return "repeats " + name;
      const auto number = parse_decimal<std::uint64_t>(value);
      if (!number) return "has an invalid " + name;
      switch (field) {
        case kHandshakeSeconds: peer_->handshake_seconds = *number; break;
        case kHandshakeNanoseconds: peer_->handshake_nanoseconds = *number; break;
        case kRxBytes: peer.rx_bytes = *number; break;
        default: peer.tx_bytes = *number; break;
      }
      if (field == kHandshakeNanoseconds && *number >= 1'000'000'000u) return "has last_handshake_time_nsec of a second or more";
      // The clock counts int64 nanoseconds: about 292 years from 1970.
      if (field == kHandshakeSeconds &&
          *number > static_cast<std::uint64_t>(std::chrono::system_clock::duration::max().count() /
                                               std::chrono::system_clock::duration::period::den) -
                        1)
        return "has a last_handshake_time_sec out of range";
    } else if (key == "persistent_keepalive_interval") {
      if (!first(kKeepalive)) return "repeats persistent_keepalive_interval";
      const auto seconds = parse_decimal<std::uint16_t>(value);
      if (!seconds) return "has an invalid persistent_keepalive_interval";
      peer.persistent_keepalive_seconds = *seconds;
    } else if (key == "allowed_ip") {
      const auto allowed = AllowedIp::parse(value);
      if (!allowed) return "has an invalid allowed_ip (or one with host bits set)";
      peer.allowed_ips.push_back(*allowed);
    } else if (key == "protocol_version") {
      if (!first(kProtocolVersion)) return "repeats protocol_version";
      if (value != "1") return "has an unsupported protocol_version";
    } else if (is_key_name(key)) {
      // Ignored, as for the device.
    } else {
      return "has an invalid key";
    }
    return std::nullopt;
  }

  void finish_peer() {
    if (!peer_) return;
    if (peer_->handshake_seconds != 0 || peer_->handshake_nanoseconds != 0)
      peer_->state.last_handshake = std::chrono::system_clock::time_point{} +
                                    std::chrono::duration_cast<std::chrono::system_clock::duration>(
                                        std::chrono::seconds(peer_->handshake_seconds) +
                                        std::chrono::nanoseconds(peer_->handshake_nanoseconds));
    state_.peers.push_back(std::move(peer_->state));
    OPENSSL_cleanse(peer_->state.preshared_key.data(), peer_->state.preshared_key.size());
    peer_.reset();
  }

  DeviceState state_;
  std::optional<PeerBeingRead> peer_;
  std::set<Key> peer_keys_;
  bool private_key_seen_ = false, listen_port_seen_ = false, fwmark_seen_ = false;
  std::size_t line_number_ = 0;
};

void format_set_into(SecretText& out, const DeviceConfig& config) {
  // Reserved up front so the text holding keys is never reallocated.
  std::size_t estimate = 256;
  for (const PeerConfig& peer : config.peers) estimate += 400 + 64 * peer.allowed_ips.size();
  out.reserve(estimate);
  std::string line;
  line.reserve(128);
  auto emit = [&](std::string_view key, std::string_view value) {
    line.assign(key);
    line += '=';
    line += value;
    line += '\n';
    out.append(line);
  };
  auto emit_key = [&](std::string_view key, const Key& value) {
    line.assign(key);
    line += '=';
    append_hex(line, value);
    line += '\n';
    out.append(line);
  };

  out.append("set=1\n");
  if (config.private_key) emit_key("private_key", *config.private_key);
  if (config.listen_port) emit("listen_port", std::to_string(*config.listen_port));
  if (config.fwmark) emit("fwmark", std::to_string(*config.fwmark));
  if (config.replace_peers) emit("replace_peers", "true");
  for (const PeerConfig& peer : config.peers) {
    emit_key("public_key", peer.public_key);
    if (peer.remove) {
      emit("remove", "true");
      continue;  // nothing else applies to a peer being removed
    }
    // wireguard-go (checked with Debian 12's 0.0.20220316) honours
    // update_only: it drops a peer that public_key just created within
    // the same request, before the peer can send anything. It must follow
    // public_key directly.
    if (peer.update_only) emit("update_only", "true");
    if (peer.preshared_key) emit_key("preshared_key", *peer.preshared_key);
    if (peer.endpoint) emit("endpoint", peer.endpoint->to_string());
    if (peer.persistent_keepalive_seconds)
      emit("persistent_keepalive_interval", std::to_string(*peer.persistent_keepalive_seconds));
    if (peer.replace_allowed_ips) emit("replace_allowed_ips", "true");
    for (const AllowedIp& allowed : peer.allowed_ips) emit("allowed_ip", allowed.to_string());
  }
  out.append("\n");
  OPENSSL_cleanse(line.data(), line.size());
}

// ---- the UAPI socket ------------------------------------------------------

Result<UniqueFd> connect_uapi(const std::string& socket_path) {
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (socket_path.empty() || socket_path.size() >= sizeof address.sun_path)
    return Result<UniqueFd>::failure("UAPI socket path \"" + socket_path + "\" is empty or too long", ENAMETOOLONG);
  std::memcpy(address.sun_path, socket_path.data(), socket_path.size());
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return Result<UniqueFd>::failure("socket(AF_UNIX): " + describe_errno(errno), errno);
  const timeval timeout{.tv_sec = kSocketTimeout.count(), .tv_usec = 0};
  ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  ::setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&address), sizeof address) != 0) {
    const int error = errno;
    std::string hint = error == ENOENT || error == ECONNREFUSED ? " (is wireguard-go running?)" : "";
    return Result<UniqueFd>::failure("cannot connect to WireGuard UAPI socket " + socket_path + ": " +
                                         describe_errno(error) + hint,
                                     error);
  }
  return Result<UniqueFd>::success(std::move(fd));
}

bool socket_answers(const std::string& socket_path) { return connect_uapi(socket_path).ok(); }

// Sends one request and reads its reply up to and including the blank line.
Result<Unit> exchange(const std::string& socket_path, std::string_view request, SecretText& reply) {
  auto fd = connect_uapi(socket_path);
  if (!fd) return Result<Unit>::failure(fd.error(), fd.error_number());
  while (!request.empty()) {
    const ssize_t sent = ::send(fd->get(), request.data(), request.size(), MSG_NOSIGNAL);
    if (sent < 0 && errno == EINTR) continue;
    if (sent < 0) {
      const int error = errno;
      return Result<Unit>::failure("sending to " + socket_path + ": " + describe_errno(error), error);
    }
    request.remove_prefix(static_cast<std::size_t>(sent));
  }
  char chunk[4096];
  std::size_t searched = 0;
  for (;;) {
    const ssize_t got = ::recv(fd->get(), chunk, sizeof chunk, 0);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) {
      const int error = errno;
      OPENSSL_cleanse(chunk, sizeof chunk);
      const bool timed_out = error == EAGAIN || error == EWOULDBLOCK;
      return Result<Unit>::failure(
          (timed_out ? "timed out waiting for the reply on " : "reading from ") + socket_path + ": " +
              describe_errno(timed_out ? ETIMEDOUT : error),
          timed_out ? ETIMEDOUT : error);
    }
    if (got == 0) {
      OPENSSL_cleanse(chunk, sizeof chunk);
      return Result<Unit>::failure(socket_path + " closed the connection before the end of the reply", EPROTO);
    }
    reply.append(std::string_view(chunk, static_cast<std::size_t>(got)));
    OPENSSL_cleanse(chunk, static_cast<std::size_t>(got));
    const auto end = reply.view().find("\n\n", searched);
    if (end != std::string_view::npos) {
      // Anything after the blank line would belong to a next request.
      reply.text().resize(end + 2);
      return Result<Unit>::success({});
    }
    searched = reply.view().size() - 1;
    if (reply.view().size() > kMaxReplyBytes)
      return Result<Unit>::failure("the reply on " + socket_path + " exceeds " + std::to_string(kMaxReplyBytes) + " bytes",
                                   EMSGSIZE);
  }
}

// ---- the wireguard-go process ---------------------------------------------

// wireguard-go's stdout and stderr: forwarded to ours (the journal, under
// systemd) line by line, the last bytes kept for error messages. A pipe
// nobody drained would block wireguard-go's logging once full, so a small
// thread owns the read end for the life of the process and ends at EOF.
struct ProgramOutput {
  std::mutex mutex;
  std::condition_variable closed_signal;
  std::string tail;
  bool closed = false;

  std::string last_lines() {
    std::lock_guard lock(mutex);
    std::string text = tail;
    while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
    return text.empty() ? "(no output)" : text;
  }
  // Waits a little for EOF, so the tail of a process that exited is whole.
  void wait_closed(std::chrono::milliseconds limit) {
    std::unique_lock lock(mutex);
    closed_signal.wait_for(lock, limit, [this] { return closed; });
  }
};

void drain_output(UniqueFd pipe, std::shared_ptr<ProgramOutput> output, std::string prefix) {
  char chunk[4096];
  std::string line;
  auto write_all = [](std::string_view text) {
    while (!text.empty()) {
      const ssize_t written = ::write(STDERR_FILENO, text.data(), text.size());
      if (written < 0 && errno == EINTR) continue;
      if (written <= 0) return;
      text.remove_prefix(static_cast<std::size_t>(written));
    }
  };
  for (;;) {
    const ssize_t got = ::read(pipe.get(), chunk, sizeof chunk);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) break;
    const std::string_view text(chunk, static_cast<std::size_t>(got));
    {
      std::lock_guard lock(output->mutex);
      output->tail.append(text);
      if (output->tail.size() > kOutputTailBytes) output->tail.erase(0, output->tail.size() - kOutputTailBytes);
    }
    for (char c : text) {
      line.push_back(c);
      if (c == '\n') {
        write_all(prefix + line);
        line.clear();
      }
    }
  }
  if (!line.empty()) write_all(prefix + line + "\n");
  std::lock_guard lock(output->mutex);
  output->closed = true;
  output->closed_signal.notify_all();
}

std::string describe_exit(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    const char* abbreviation = sigabbrev_np(WTERMSIG(status));
    return "was killed by " + (abbreviation ? "SIG" + std::string(abbreviation) : "signal " + std::to_string(WTERMSIG(status)));
  }
  return "stopped";
}

// SIGTERM, a grace period, then SIGKILL; always reaps. True when the
// process had to be killed (it then left its socket behind).
bool stop_process(pid_t pid) {
  ::kill(pid, SIGTERM);
  const auto deadline = std::chrono::steady_clock::now() + kStopGrace;
  int status = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    const pid_t done = ::waitpid(pid, &status, WNOHANG);
    if (done == pid || (done < 0 && errno == ECHILD)) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ::kill(pid, SIGKILL);
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return true;
}

// The program's path as execve wants it: as given when it names a
// directory, else the first executable match in PATH; empty if none.
std::string find_program(const std::string& program) {
  if (program.find('/') != std::string::npos) return ::access(program.c_str(), X_OK) == 0 ? program : "";
  const char* search = std::getenv("PATH");
  std::string_view rest = search ? search : "/usr/local/bin:/usr/bin:/bin";
  while (true) {
    const auto colon = rest.find(':');
    std::string directory(rest.substr(0, colon));
    std::string candidate = (directory.empty() ? std::string(".") : directory) + "/" + program;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
    if (colon == std::string_view::npos) return "";
    rest.remove_prefix(colon + 1);
  }
}

// Starts `path` with stdin from /dev/null, stdout and stderr into `output`,
// no other descriptor of ours, default signal handling, and SIGTERM when
// the agent dies: a crashed agent leaves no wireguard-go holding the
// interface name. posix_spawn cannot ask for the last, hence fork. The
// child calls only async-signal-safe functions; everything is prepared
// before the fork. The kernel sends that signal when the forking *thread*
// ends: create() runs on the agent's main thread.
Result<pid_t> start_tied_to_us(const std::string& path, char* const arguments[], char* const environment[],
                               int output) {
  int report_ends[2];  // the child's exec errno, if exec fails
  if (::pipe2(report_ends, O_CLOEXEC) != 0) return Result<pid_t>::failure("pipe2: " + describe_errno(errno), errno);
  UniqueFd report_read(report_ends[0]), report_write(report_ends[1]);
  // The child's stdio numbers are taken; keep the report pipe above them.
  if (report_write.get() <= STDERR_FILENO) report_write = UniqueFd(::fcntl(report_write.get(), F_DUPFD_CLOEXEC, 3));
  if (!report_write) return Result<pid_t>::failure("fcntl: " + describe_errno(errno), errno);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) return Result<pid_t>::failure("fork: " + describe_errno(errno), errno);
  if (pid == 0) {
    const int report = report_write.get();
    auto fail = [report](int error) {
      ssize_t ignored = ::write(report, &error, sizeof error);
      (void)ignored;
      ::_exit(127);
    };
    if (::prctl(PR_SET_PDEATHSIG, SIGTERM) != 0) fail(errno);
    if (::getppid() != parent) ::_exit(0);  // the agent died before the line above
    const int null = ::open("/dev/null", O_RDONLY);
    if (null < 0 || ::dup2(null, STDIN_FILENO) < 0 || ::dup2(output, STDOUT_FILENO) < 0 ||
        ::dup2(output, STDERR_FILENO) < 0)
      fail(errno);
    // No socket, key file or bus connection of ours leaks into the child;
    // the report pipe closes itself on exec.
    const unsigned first = STDERR_FILENO + 1, keep = static_cast<unsigned>(report);
    if (keep > first) ::close_range(first, keep - 1, 0);
    ::close_range(keep + 1, ~0U, 0);
    // An agent blocking signals for its event loop must not pass that on:
    // wireguard-go has to see SIGTERM.
    struct sigaction defaults {};
    defaults.sa_handler = SIG_DFL;
    for (int signal_number = 1; signal_number < NSIG; ++signal_number) ::sigaction(signal_number, &defaults, nullptr);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::execve(path.c_str(), arguments, environment);
    fail(errno);
  }
  report_write.reset();
  int error = 0;
  ssize_t got;
  while ((got = ::read(report_read.get(), &error, sizeof error)) < 0 && errno == EINTR) {
  }
  if (got == static_cast<ssize_t>(sizeof error)) {
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return Result<pid_t>::failure(describe_errno(error), error);
  }
  return Result<pid_t>::success(pid);
}

bool valid_interface_name(const std::string& name) {
  if (name.empty() || name.size() >= IFNAMSIZ || name == "." || name == "..") return false;
  return std::all_of(name.begin(), name.end(), [](char c) { return c > 0x20 && c < 0x7f && c != '/' && c != ':'; });
}

}  // namespace

// ---- the protocol ---------------------------------------------------------

namespace uapi {

std::string format_set(const DeviceConfig& config) {
  SecretText text;
  format_set_into(text, config);
  return std::string(text.view());  // the caller owns (and wipes) the copy
}

Result<DeviceState> parse_get(std::string_view reply) { return GetReplyParser().parse(reply); }

}  // namespace uapi

// ---- UserspaceDevice ------------------------------------------------------

UserspaceDevice::UserspaceDevice(std::string name, std::string socket_path, pid_t pid)
    : name_(std::move(name)), socket_path_(std::move(socket_path)), pid_(pid) {}

UserspaceDevice::~UserspaceDevice() {
  if (pid_ <= 0) return;
  if (stop_process(pid_)) ::unlink(socket_path_.c_str());
}

Result<std::unique_ptr<UserspaceDevice>> UserspaceDevice::create(const std::string& name,
                                                                 const UserspaceOptions& options) {
  using DeviceResult = Result<std::unique_ptr<UserspaceDevice>>;
  if (!valid_interface_name(name))
    return DeviceResult::failure("invalid WireGuard interface name \"" + name + "\"", EINVAL);
  // wireguard-go always listens on /var/run/wireguard/<name>.sock;
  // socket_dir says where that directory is seen from here.
  const std::string socket_path = options.socket_dir + "/" + name + ".sock";
  if (socket_answers(socket_path))
    return DeviceResult::failure("a WireGuard UAPI socket already answers at " + socket_path +
                                     ": another wireguard-go runs for " + name,
                                 EEXIST);

  int pipe_ends[2];
  if (::pipe2(pipe_ends, O_CLOEXEC) != 0)
    return DeviceResult::failure("pipe2: " + describe_errno(errno), errno);
  UniqueFd output_read(pipe_ends[0]), output_write(pipe_ends[1]);

  // Everything the child needs is prepared before it exists.
  std::vector<std::string> environment_text;
  for (char** entry = environ; entry && *entry; ++entry) {
    const std::string_view variable(*entry);
    if (variable.starts_with("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=") ||
        variable.starts_with("WG_PROCESS_FOREGROUND="))
      continue;
    environment_text.emplace_back(variable);
  }
  // Without the first, wireguard-go refuses to run; the second keeps it
  // from daemonizing even where -f were ignored.
  environment_text.emplace_back("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1");
  environment_text.emplace_back("WG_PROCESS_FOREGROUND=1");
  std::vector<char*> environment;
  for (std::string& variable : environment_text) environment.push_back(variable.data());
  environment.push_back(nullptr);
  std::string program = options.program, foreground = "-f", interface = name;

  const std::string path = find_program(options.program);
  if (path.empty())
    return DeviceResult::failure(options.program + " not found: install wireguard-go or use kernel WireGuard", ENOENT);
  char* arguments[] = {program.data(), foreground.data(), interface.data(), nullptr};
  auto started = start_tied_to_us(path, arguments, environment.data(), output_write.get());
  output_write.reset();
  if (!started) {
    return DeviceResult::failure("cannot start " + options.program + ": " + started.error(), started.error_number());
  }
  const pid_t pid = started.value();

  auto output = std::make_shared<ProgramOutput>();
  std::thread(drain_output, std::move(output_read), output, options.program + "[" + name + "]: ").detach();

  const auto deadline = std::chrono::steady_clock::now() + options.startup;
  for (;;) {
    int status = 0;
    const pid_t done = ::waitpid(pid, &status, WNOHANG);
    if (done == pid) {
      output->wait_closed(std::chrono::milliseconds(500));
      return DeviceResult::failure(options.program + " for " + name + " " + describe_exit(status) +
                                       " before opening " + socket_path + ": " + output->last_lines(),
                                   ECHILD);
    }
    if (socket_answers(socket_path))
      return DeviceResult::success(std::unique_ptr<UserspaceDevice>(new UserspaceDevice(name, socket_path, pid)));
    if (std::chrono::steady_clock::now() >= deadline) {
      if (stop_process(pid)) ::unlink(socket_path.c_str());
      output->wait_closed(std::chrono::milliseconds(500));
      return DeviceResult::failure(options.program + " did not open " + socket_path + " within " +
                                       std::to_string(options.startup.count()) + " ms: " + output->last_lines(),
                                   ETIMEDOUT);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

Result<std::unique_ptr<UserspaceDevice>> UserspaceDevice::attach(const std::string& name,
                                                                 const std::string& socket_path) {
  using DeviceResult = Result<std::unique_ptr<UserspaceDevice>>;
  auto probe = connect_uapi(socket_path);
  if (!probe) return DeviceResult::failure(probe.error(), probe.error_number());
  return DeviceResult::success(std::unique_ptr<UserspaceDevice>(new UserspaceDevice(name, socket_path, 0)));
}

Result<Unit> UserspaceDevice::configure(const DeviceConfig& config) {
  SecretText request;
  format_set_into(request, config);
  SecretText reply;
  auto sent = exchange(socket_path_, request.view(), reply);
  if (!sent) return sent;
  std::string_view text = reply.view();
  text.remove_suffix(2);  // the blank line
  const auto error_number = text.starts_with("errno=") ? parse_errno(text.substr(6)) : std::nullopt;
  if (!error_number)
    return Result<Unit>::failure("unexpected reply to a UAPI set on " + socket_path_ + ": \"" +
                                     std::string(text.substr(0, 80)) + "\"",
                                 EPROTO);
  if (*error_number != 0)
    return Result<Unit>::failure("WireGuard " + name_ + " rejected the configuration: " + describe_errno(*error_number),
                                 *error_number);
  return Result<Unit>::success({});
}

Result<DeviceState> UserspaceDevice::read() {
  SecretText reply;
  auto received = exchange(socket_path_, "get=1\n\n", reply);
  if (!received) return Result<DeviceState>::failure(received.error(), received.error_number());
  auto state = uapi::parse_get(reply.view());
  if (!state) return Result<DeviceState>::failure("WireGuard " + name_ + ": " + state.error(), state.error_number());
  state->name = name_;
  state->ifindex = static_cast<int>(::if_nametoindex(name_.c_str()));
  return state;
}

}  // namespace tapsec::kernel::wireguard
