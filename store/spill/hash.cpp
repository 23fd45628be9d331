#include "spill/hash.h"

#include <xxhash.h>

#ifdef STORE_HASH_AVX2
#include "spill/hash_avx2.h"
#endif

namespace store::spill {

// One implementation of XXH3-64's streaming interface on opaque states.
struct HashOps {
  const char* name;
  void* (*create)();
  void (*free)(void*);
  void (*reset)(void*, uint64_t);
  void (*update)(void*, const void*, size_t);
  uint64_t (*digest)(const void*);
  uint64_t (*hash)(const void*, size_t, uint64_t);
};

namespace {

const HashOps kLibrary = {
    "sse2/library",
    [] { return static_cast<void*>(XXH3_createState()); },
    [](void* s) { XXH3_freeState(static_cast<XXH3_state_t*>(s)); },
    [](void* s, uint64_t seed) { XXH3_64bits_reset_withSeed(static_cast<XXH3_state_t*>(s), seed); },
    [](void* s, const void* p, size_t n) { XXH3_64bits_update(static_cast<XXH3_state_t*>(s), p, n); },
    [](const void* s) { return XXH3_64bits_digest(static_cast<const XXH3_state_t*>(s)); },
    [](const void* p, size_t n, uint64_t seed) { return XXH3_64bits_withSeed(p, n, seed); },
};

#ifdef STORE_HASH_AVX2
const HashOps kAvx2 = {
    "avx2",
    spill_xxh3_avx2_create,
    spill_xxh3_avx2_free,
    spill_xxh3_avx2_reset,
    spill_xxh3_avx2_update,
    spill_xxh3_avx2_digest,
    spill_xxh3_avx2_hash,
};
#endif

const HashOps* Choose() {
#ifdef STORE_HASH_AVX2
  // libgcc's check covers the kernel too: AVX2 counts only where the OS saves the YMM state.
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2")) return &kAvx2;
#endif
  return &kLibrary;
}

const HashOps* Ops() {
  static const HashOps* const ops = Choose();
  return ops;
}

}  // namespace

StreamHash::StreamHash() : ops_(Ops()), state_(ops_->create()) {}

StreamHash::~StreamHash() {
  if (state_) ops_->free(state_);
}

void StreamHash::Reset(uint64_t seed) { ops_->reset(state_, seed); }

void StreamHash::Update(const void* p, size_t n) {
  if (n > 0) ops_->update(state_, p, n);
}

uint64_t StreamHash::Digest() const { return ops_->digest(state_); }

uint64_t Hash64(const void* p, size_t n, uint64_t seed) { return Ops()->hash(p, n, seed); }

const char* HashImplementation() { return Ops()->name; }

}  // namespace store::spill
