// hex.h - bytes as lowercase hex digits: the one encoder for object ids and the other bytes the
// store shows as text.
//
// Owns: nothing; header-only, with no dependency beyond the standard library.
// Called by: the server (server/util.h: ids in messages and logs, \xHH escapes), the client
// library (store_object_id_to_hex in capi/ids.cpp) and store-bench (its id prefix).
// Threads: any; the functions only read their input and write their output.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace store::hex {

inline constexpr char kDigits[] = "0123456789abcdef";

// Writes the two digits of b to out[0] and out[1].
inline void Byte(uint8_t b, char* out) {
  out[0] = kDigits[b >> 4];
  out[1] = kDigits[b & 15];
}

// Writes 2 * n digits to out, without a terminating NUL.
// REQUIRES: out has room for 2 * n characters.
inline void Encode(const void* bytes, size_t n, char* out) {
  const uint8_t* p = static_cast<const uint8_t*>(bytes);
  for (size_t i = 0; i < n; i++) Byte(p[i], out + 2 * i);
}

// The 2 * n digits of n bytes.
inline std::string Encode(const void* bytes, size_t n) {
  std::string s(2 * n, '0');
  Encode(bytes, n, s.data());
  return s;
}

}  // namespace store::hex
