// log.h - the server's log: one line per event on stderr, with a level filter.
// Called from the loop thread; a line is formatted whole before it is written, so lines from
// other threads never interleave mid-line.
#pragma once

#include <cstdarg>

namespace store {

enum class LogLevel { kError = 0, kWarn = 1, kInfo = 2, kDebug = 3 };

void SetLogLevel(LogLevel level);
LogLevel GetLogLevel();
// Parses "error", "warn", "info" or "debug". Returns false for anything else.
bool ParseLogLevel(const char* s, LogLevel* out);
void Log(LogLevel level, const char* fmt, ...) __attribute__((format(printf, 2, 3)));

#define STORE_LOG(level, ...)                                    \
  do {                                                           \
    if (static_cast<int>(level) <= static_cast<int>(::store::GetLogLevel())) \
      ::store::Log(level, __VA_ARGS__);                          \
  } while (0)
#define LOG_ERROR(...) STORE_LOG(::store::LogLevel::kError, __VA_ARGS__)
#define LOG_WARN(...) STORE_LOG(::store::LogLevel::kWarn, __VA_ARGS__)
#define LOG_INFO(...) STORE_LOG(::store::LogLevel::kInfo, __VA_ARGS__)
#define LOG_DEBUG(...) STORE_LOG(::store::LogLevel::kDebug, __VA_ARGS__)

}  // namespace store
