// Structured logging: one line per event, a message plus key=value fields.
// To the journal when stderr is connected to it (JOURNAL_STREAM), else to
// stderr as "LEVEL message key=value ...".
#pragma once

#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>

namespace tapsec::core::log {

enum class Level { Debug = 7, Info = 6, Notice = 5, Warning = 4, Error = 3 };

using Field = std::pair<std::string_view, std::string>;

void set_min_level(Level level);
void write(Level level, std::string_view message, std::initializer_list<Field> fields = {});

inline void debug(std::string_view m, std::initializer_list<Field> f = {}) { write(Level::Debug, m, f); }
inline void info(std::string_view m, std::initializer_list<Field> f = {}) { write(Level::Info, m, f); }
inline void notice(std::string_view m, std::initializer_list<Field> f = {}) { write(Level::Notice, m, f); }
inline void warning(std::string_view m, std::initializer_list<Field> f = {}) { write(Level::Warning, m, f); }
inline void error(std::string_view m, std::initializer_list<Field> f = {}) { write(Level::Error, m, f); }

}  // namespace tapsec::core::log
