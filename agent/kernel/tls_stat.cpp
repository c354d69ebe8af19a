#include "agent/kernel/tls_stat.h"

#include <fcntl.h>
#include <sched.h>

#include <cerrno>
#include <charconv>
#include <fstream>
#include <sstream>
#include <thread>

#include "agent/core/unique_fd.h"

namespace tapsec::kernel {
namespace {

bool is_blank(char c) { return c == ' ' || c == '\t' || c == '\r'; }

std::string_view trim(std::string_view s) {
  while (!s.empty() && is_blank(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_blank(s.back())) s.remove_suffix(1);
  return s;
}

}  // namespace

std::uint64_t TlsStats::get(std::string_view name) const {
  auto it = counters.find(name);
  return it == counters.end() ? 0 : it->second;
}

Result<TlsStats> parse_tls_stat(std::string_view text) {
  TlsStats stats;
  std::size_t line_number = 0;
  while (!text.empty()) {
    const std::size_t end = text.find('\n');
    std::string_view line = trim(text.substr(0, end));
    text.remove_prefix(end == std::string_view::npos ? text.size() : end + 1);
    ++line_number;
    if (line.empty()) continue;

    std::size_t split = 0;
    while (split < line.size() && !is_blank(line[split])) ++split;
    const std::string_view name = line.substr(0, split);
    const std::string_view value_text = trim(line.substr(split));
    const std::string where = "tls_stat line " + std::to_string(line_number);
    if (value_text.empty()) {
      return Result<TlsStats>::failure(where + ": counter \"" + std::string(name) +
                                       "\" has no value");
    }
    std::uint64_t value = 0;
    auto [rest, ec] = std::from_chars(value_text.data(), value_text.data() + value_text.size(), value);
    if (ec != std::errc() || rest != value_text.data() + value_text.size()) {
      return Result<TlsStats>::failure(where + ": value \"" + std::string(value_text) +
                                       "\" of \"" + std::string(name) +
                                       "\" is not an unsigned number");
    }
    if (!stats.counters.emplace(std::string(name), value).second) {
      return Result<TlsStats>::failure(where + ": counter \"" + std::string(name) +
                                       "\" appears twice");
    }
  }
  return Result<TlsStats>::success(std::move(stats));
}

Result<TlsStats> read_tls_stat(const std::string& path) {
  std::ifstream file(path);
  if (!file) {
    const int saved_errno = errno;
    if (saved_errno == ENOENT) {
      return Result<TlsStats>::failure(
          path + " does not exist: the tls module is not loaded (or the kernel lacks kTLS)",
          saved_errno);
    }
    return Result<TlsStats>::failure("cannot open " + path + ": " + describe_errno(saved_errno),
                                     saved_errno);
  }
  std::ostringstream content;
  content << file.rdbuf();
  return parse_tls_stat(content.str());
}

Result<TlsStats> read_tls_stat_of_pid(pid_t pid) {
  return read_tls_stat("/proc/" + std::to_string(pid) + "/net/tls_stat");
}

Result<TlsStats> read_tls_stat_in_netns(const std::string& netns_path) {
  core::UniqueFd netns(::open(netns_path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!netns) {
    return Result<TlsStats>::failure(
        "cannot open network namespace " + netns_path + ": " + describe_errno(errno), errno);
  }
  auto result = Result<TlsStats>::failure("namespace reader did not run");
  std::thread reader([&] {
    if (::setns(netns.get(), CLONE_NEWNET) != 0) {
      const int saved_errno = errno;
      result = Result<TlsStats>::failure("cannot enter network namespace " + netns_path + ": " +
                                             describe_errno(saved_errno) +
                                             (saved_errno == EPERM ? " (needs CAP_SYS_ADMIN)" : ""),
                                         saved_errno);
      return;
    }
    // /proc/thread-self/net follows this thread's namespace, /proc/self/net
    // would follow the main thread's.
    result = read_tls_stat("/proc/thread-self/net/tls_stat");
  });
  reader.join();
  return result;
}

}  // namespace tapsec::kernel
