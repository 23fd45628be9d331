// hash.h - XXH3-64, the checksum of spill records, at the speed of the CPU it runs on.
//
// libxxhash as distributions build it runs XXH3 with SSE2, the x86-64 baseline: about 16 GB/s
// on the machines this store runs on, slower than a read from the page cache (25-28 GB/s), so a
// restore from the page cache waited on its checksum. Where the CPU (and the kernel) support
// AVX2, the same function runs from xxhash's inline code compiled for AVX2 (hash_avx2.cpp),
// about 40 GB/s. XXH3's values do not depend on the vector unit: both give the same checksums,
// which the spill files keep as they were. The choice is made once, at first use.
//
// Owns: one XXH3 state per StreamHash. Called by: spill files (spill_file.cpp), on the libuv
// threadpool. A StreamHash is used by one thread at a time; different ones need no lock.
#pragma once

#include <cstddef>
#include <cstdint>

namespace store::spill {

struct HashOps;

class StreamHash {
 public:
  StreamHash();
  ~StreamHash();
  StreamHash(const StreamHash&) = delete;
  StreamHash& operator=(const StreamHash&) = delete;

  // False if the state could not be allocated (then nothing else may be called).
  bool ok() const { return state_ != nullptr; }
  // Starts a new hash; seed 0 is XXH3-64 unseeded.
  void Reset(uint64_t seed);
  void Update(const void* p, size_t n);
  uint64_t Digest() const;

 private:
  const HashOps* ops_;
  void* state_;
};

// XXH3-64 of [p, p + n), seeded.
uint64_t Hash64(const void* p, size_t n, uint64_t seed = 0);

// "avx2" or "sse2/library": which implementation this process uses.
const char* HashImplementation();

}  // namespace store::spill
