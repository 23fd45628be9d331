// errors.cpp - the library's error reporting: this thread's message, the codes' strings and
// the version.
//
// Owns: t_message, the per-thread message of the last failure.
// Called by: every file of the library (Fail, FailMsg); applications (store_errstr,
// store_last_error_message, store_version_string).
// Threads: any; each thread has its own message.
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <string>

#include "client_internal.h"

namespace storeclient::internal {

// The details of this thread's last failure (store_last_error_message).
thread_local Message t_message;

int Fail(int code, const char* fmt, ...) noexcept __attribute__((format(printf, 2, 3)));
int Fail(int code, const char* fmt, ...) noexcept {
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(t_message.text, sizeof t_message.text, fmt, ap);
  va_end(ap);
  return code;
}

int FailMsg(int code, const char* message) noexcept {
  t_message.Set(message);
  return code;
}

int FailMsg(int code, const std::string& message) noexcept {
  t_message.Set(message.data(), message.size());
  return code;
}

}  // namespace storeclient::internal

using namespace storeclient::internal;

extern "C" {

// ---- errors and versions -------------------------------------------------------------------

const char* store_errstr(int code) {
  switch (code) {
    case STORE_OK: return "ok";
#define STORE_XX_STR_(name, value, text) \
    case STORE_##name: return text;
    STORE_ERRNO_MAP(STORE_XX_STR_)
#undef STORE_XX_STR_
    default: return "unknown error";
  }
}

const char* store_last_error_message(void) { return t_message.text; }

const char* store_version_string(void) { return STORE_VERSION_STRING; }

}  // extern "C"
