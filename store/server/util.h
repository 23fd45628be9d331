// util.h - small helpers shared by the server's files: clocks, ids, byte counts.
#pragma once

#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <string>

#include "framing.h"
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

inline std::string Hex(const ObjectKey& k) {
  static const char* d = "0123456789abcdef";
  std::string s(40, '0');
  for (int i = 0; i < 20; i++) {
    s[2 * i] = d[k.bytes[i] >> 4];
    s[2 * i + 1] = d[k.bytes[i] & 15];
  }
  return s;
}

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

}  // namespace store
