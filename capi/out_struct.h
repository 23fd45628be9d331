// out_struct.h - how libstoreclient writes the structs it fills in for the caller (store_stats,
// store_object_info and the others that open with `uint32_t struct_size`) at the caller's size,
// not at its own: a program built against an older header has smaller structs, one built against
// a newer header larger ones (storeclient.h, "Output structs").
//
// Owns: nothing; the functions write into memory the caller of the library passed or into arrays
// they allocate for it.
// Called by: capi/management.cpp, for every call that fills an output struct;
// tests/test_client.cpp checks callers with a header older than the library's (store_stats
// without the compaction totals, and a made-up struct for the arrays).
// Threads: any; the functions keep no state.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "storeclient.h"

namespace storeclient {

// The smallest size a caller may give for T: the end of T's last field in the first header that
// had struct_size (storeclient.h of libstoreclient.so.2). Fields are only ever appended, so this
// stays as it is when T grows.
template <class T>
struct OutStructFirst;
#define STORE_OUT_STRUCT_FIRST_(T, last)                                                   \
  template <>                                                                              \
  struct OutStructFirst<T> {                                                               \
    static constexpr size_t kSize = offsetof(T, last) + sizeof(T::last);                   \
    static_assert(kSize % alignof(T) == 0 && kSize <= sizeof(T));                          \
  };
STORE_OUT_STRUCT_FIRST_(store_object_info, lease_count)
STORE_OUT_STRUCT_FIRST_(store_stats, total_dropped_bytes)
STORE_OUT_STRUCT_FIRST_(store_client_info, reserved_)
STORE_OUT_STRUCT_FIRST_(store_gpu_device_stats, largest_free_bytes)
STORE_OUT_STRUCT_FIRST_(store_spill_file_info, created_time_ns)
#undef STORE_OUT_STRUCT_FIRST_

// REQUIRES: `full` is the library's T, filled in; dst points to `size` bytes of the caller, with
// size at least OutStructFirst<T>::kSize (checked before). Copies the fields the caller's struct
// holds, sets its struct_size to size and zeroes the bytes past the library's T (fields of a
// newer header). Writes exactly `size` bytes, never more.
template <class T>
void WriteOutStruct(T full, void* dst, size_t size) {
  full.struct_size = static_cast<uint32_t>(size);
  const size_t n = std::min(size, sizeof(T));
  std::memcpy(dst, &full, n);
  if (size > n) std::memset(static_cast<char*>(dst) + n, 0, size - n);
}

// Why `size` cannot be a caller's size of T (the text of an STORE_EINVAL), or nullptr when it
// can. `array`: an element of an array the library allocates, which must also keep its 64-bit
// fields aligned (a multiple of 8) and fit in struct_size.
template <class T>
const char* OutStructSizeProblem(size_t size, bool array) {
  if (size == 0) return "is 0: set it to sizeof the struct (or use its *_INIT macro)";
  if (size < OutStructFirst<T>::kSize) return "is smaller than the struct's first layout";
  if (array && size % alignof(T) != 0) return "is not a multiple of 8";
  if (size > UINT32_MAX) return "does not fit in struct_size";
  return nullptr;
}

// A C array for the caller (freed with store_free) whose elements lie `stride` bytes apart (the
// caller's sizeof T), each written by WriteOutStruct; grown a page of replies at a time.
template <class T>
struct OutArray {
  explicit OutArray(size_t stride_bytes) : stride(stride_bytes) {}
  OutArray(const OutArray&) = delete;
  OutArray& operator=(const OutArray&) = delete;
  ~OutArray() { std::free(data); }

  // Room for `more` elements after the ones there; false when out of memory (or when the bytes
  // would not fit in a size_t).
  bool Grow(size_t more) {
    if (size + more <= cap) return true;
    size_t n = std::max(cap * 2, size + more), bytes = 0;
    if (__builtin_mul_overflow(n, stride, &bytes)) return false;
    void* p = std::realloc(data, bytes);
    if (!p) return false;
    data = static_cast<char*>(p);
    cap = n;
    return true;
  }
  // REQUIRES: Grow() made room. Appends one element.
  void Put(const T& v) { WriteOutStruct(v, data + size++ * stride, stride); }
  void Release(T** out, size_t* count) {
    if (size == 0) return;
    *out = reinterpret_cast<T*>(data);
    *count = size;
    data = nullptr;
  }

  const size_t stride;
  char* data = nullptr;
  size_t size = 0, cap = 0;
};

}  // namespace storeclient
