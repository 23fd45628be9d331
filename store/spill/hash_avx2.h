/* hash_avx2.h - XXH3-64 built for AVX2 (hash_avx2.c). Internal to hash.cpp: call only where
 * the CPU supports AVX2. States are opaque; one thread at a time per state. */
#ifndef STORE_SPILL_HASH_AVX2_H
#define STORE_SPILL_HASH_AVX2_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

void* spill_xxh3_avx2_create(void); /* NULL when out of memory */
void spill_xxh3_avx2_free(void* s);
void spill_xxh3_avx2_reset(void* s, uint64_t seed);
void spill_xxh3_avx2_update(void* s, const void* p, size_t n);
uint64_t spill_xxh3_avx2_digest(const void* s);
uint64_t spill_xxh3_avx2_hash(const void* p, size_t n, uint64_t seed);

#ifdef __cplusplus
}
#endif

#endif
