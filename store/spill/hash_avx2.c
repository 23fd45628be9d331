/* hash_avx2.c - XXH3-64 from xxhash's inline code, compiled with -mavx2 (see hash.h).
 *
 * Called only once the CPU is known to support AVX2 (hash.cpp). C, and nothing included but
 * xxhash.h (whose functions are static here: XXH_INLINE_ALL) and the intrinsics, so no inline
 * function of a shared header is emitted with AVX2 instructions and picked by the linker for the
 * rest of the program. Every entry point ends with vzeroupper: the rest of the process is SSE
 * code, which runs several times slower while the upper halves of the YMM registers are dirty
 * (measured here: the library's XXH3 fell from 16 to 4 GB/s after a call that left them so). */
#define XXH_INLINE_ALL
#include <xxhash.h>

#include <immintrin.h>

#include "spill/hash_avx2.h"

void* spill_xxh3_avx2_create(void) { return XXH3_createState(); }

void spill_xxh3_avx2_free(void* s) { XXH3_freeState((XXH3_state_t*)s); }

void spill_xxh3_avx2_reset(void* s, uint64_t seed) {
  XXH3_64bits_reset_withSeed((XXH3_state_t*)s, seed);
  _mm256_zeroupper();
}

void spill_xxh3_avx2_update(void* s, const void* p, size_t n) {
  XXH3_64bits_update((XXH3_state_t*)s, p, n);
  _mm256_zeroupper();
}

uint64_t spill_xxh3_avx2_digest(const void* s) {
  uint64_t h = XXH3_64bits_digest((const XXH3_state_t*)s);
  _mm256_zeroupper();
  return h;
}

uint64_t spill_xxh3_avx2_hash(const void* p, size_t n, uint64_t seed) {
  uint64_t h = XXH3_64bits_withSeed(p, n, seed);
  _mm256_zeroupper();
  return h;
}
