#include "agent/core/log.h"

#include <syslog.h>
#include <systemd/sd-journal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

namespace tapsec::core::log {
namespace {

Level g_min_level = Level::Info;

const char* level_name(Level level) {
  switch (level) {
    case Level::Debug: return "debug";
    case Level::Info: return "info";
    case Level::Notice: return "notice";
    case Level::Warning: return "warning";
    case Level::Error: return "error";
  }
  return "info";
}

bool to_journal() {
  static const bool journal = std::getenv("JOURNAL_STREAM") != nullptr;
  return journal;
}

// Values with spaces or quotes are quoted so a line stays machine-splittable.
std::string quote_if_needed(const std::string& v) {
  if (!v.empty() && v.find_first_of(" \"=\t") == std::string::npos) return v;
  std::string out = "\"";
  for (char c : v) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

}  // namespace

void set_min_level(Level level) { g_min_level = level; }

void write(Level level, std::string_view message, std::initializer_list<Field> fields) {
  if (static_cast<int>(level) > static_cast<int>(g_min_level)) return;
  std::string line(message);
  for (const auto& [key, value] : fields) {
    line += ' ';
    line += key;
    line += '=';
    line += quote_if_needed(value);
  }
  if (to_journal()) {
    sd_journal_print(static_cast<int>(level), "%s", line.c_str());
    return;
  }
  std::fprintf(stderr, "tapsecd %s: %s\n", level_name(level), line.c_str());
}

}  // namespace tapsec::core::log
