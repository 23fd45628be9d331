// util.h - small helpers shared by the server's files: clocks, ids, byte counts.
#pragma once

#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <string>

#include "framing.h"
#include "hex.h"
#include "objects/object_table.h"

namespace store {

inline int64_t RealtimeNs() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

inline int64_t MonotonicNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

inline ObjectKey KeyOf(const proto::ObjectId* id) {
  ObjectKey k;
  std::memcpy(k.bytes, id->bytes()->Data(), 20);
  return k;
}

// The id in 40 lowercase hex digits, as the client library and the tools print ids.
inline std::string Hex(const ObjectKey& k) { return hex::Encode(k.bytes, sizeof k.bytes); }

inline std::string Bytes(uint64_t n) {
  char buf[64];
  if (n >= (1ull << 30)) {
    std::snprintf(buf, sizeof buf, "%.1f GiB", n / double(1ull << 30));
  } else if (n >= (1ull << 20)) {
    std::snprintf(buf, sizeof buf, "%.1f MiB", n / double(1ull << 20));
  } else if (n >= 1024) {
    std::snprintf(buf, sizeof buf, "%.1f KiB", n / 1024.0);
  } else {
    std::snprintf(buf, sizeof buf, "%" PRIu64 " B", n);
  }
  return buf;
}

// s with every byte that could act on a log or a terminal escaped: control characters, DEL,
// backslash and bytes that are not part of well-formed UTF-8 (C1 controls included) become
// \n, \t, \\ or \xHH. Well-formed UTF-8 for printable characters is kept.
inline std::string Printable(const char* s, size_t n) {
  std::string out;
  out.reserve(n);
  auto escape = [&](uint8_t b) {
    char digits[2];
    hex::Byte(b, digits);
    out += "\\x";
    out.append(digits, 2);
  };
  for (size_t i = 0; i < n;) {
    const uint8_t b = static_cast<uint8_t>(s[i]);
    if (b >= 0x20 && b < 0x7f && b != '\\') {
      out += static_cast<char>(b);
      i++;
      continue;
    }
    if (b == '\n' || b == '\t' || b == '\\') {
      out += b == '\n' ? "\\n" : b == '\t' ? "\\t" : "\\\\";
      i++;
      continue;
    }
    // A multi-byte UTF-8 sequence: its length from the lead byte, continuation bytes after,
    // no overlong form, no surrogate, at most U+10FFFF, and not a C1 control (U+0080-U+009F).
    size_t len = b >= 0xc2 && b <= 0xdf ? 2 : b >= 0xe0 && b <= 0xef ? 3 : b >= 0xf0 && b <= 0xf4 ? 4 : 0;
    uint32_t cp = len == 2 ? b & 0x1f : len == 3 ? b & 0x0f : b & 0x07;
    bool ok = len > 0 && i + len <= n;
    for (size_t k = 1; ok && k < len; k++) {
      const uint8_t c = static_cast<uint8_t>(s[i + k]);
      ok = (c & 0xc0) == 0x80;
      cp = (cp << 6) | (c & 0x3f);
    }
    ok = ok && cp >= 0xa0 && !(len == 3 && cp < 0x800) && !(len == 4 && cp < 0x10000) &&
         !(cp >= 0xd800 && cp <= 0xdfff) && cp <= 0x10ffff;
    if (ok) {
      out.append(s + i, len);
      i += len;
    } else {
      escape(b);
      i++;
    }
  }
  return out;
}

}  // namespace store
