// keyed_hash.h - SipHash-1-3 under a key drawn at random once per process, for every hash table
// and tree whose keys a client chooses or can predict (object ids, uids).
//
// An unkeyed hash lets a client pick ids that all land on one slot, or uids whose tree
// priorities line up in order, and then every lookup costs as many steps as it has ids: one
// request could hold the server's loop for seconds. Under a secret key the client cannot tell
// which ids collide. SipHash-1-3 (Aumasson and Bernstein; the variant Rust's HashMap uses) is a
// few nanoseconds for a 20-byte id.
// Header-only; any thread (the key is made once, thread-safely, on first use).
#pragma once

#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace store {

struct HashKey {
  uint64_t k0, k1;
};

// The process's key: from getrandom, else (no entropy yet, very early at boot) from the clock,
// the pid and an address, which a local client cannot read either.
inline const HashKey& ProcessHashKey() {
  static const HashKey key = [] {
    HashKey k{0, 0};
    if (getrandom(&k, sizeof k, GRND_NONBLOCK) != static_cast<ssize_t>(sizeof k)) {
      timespec ts{};
      clock_gettime(CLOCK_MONOTONIC, &ts);
      k.k0 = static_cast<uint64_t>(ts.tv_nsec) * 0x9E3779B97F4A7C15ull ^
             static_cast<uint64_t>(ts.tv_sec);
      k.k1 = static_cast<uint64_t>(getpid()) * 0xC2B2AE3D27D4EB4Full ^
             reinterpret_cast<uintptr_t>(&k);
    }
    return k;
  }();
  return key;
}

namespace keyed_hash_detail {

inline uint64_t Rotl(uint64_t x, int b) { return (x << b) | (x >> (64 - b)); }

struct SipState {
  uint64_t v0, v1, v2, v3;
  explicit SipState(const HashKey& k)
      : v0(k.k0 ^ 0x736f6d6570736575ull),
        v1(k.k1 ^ 0x646f72616e646f6dull),
        v2(k.k0 ^ 0x6c7967656e657261ull),
        v3(k.k1 ^ 0x7465646279746573ull) {}
  void Round() {
    v0 += v1; v1 = Rotl(v1, 13); v1 ^= v0; v0 = Rotl(v0, 32);
    v2 += v3; v3 = Rotl(v3, 16); v3 ^= v2;
    v0 += v3; v3 = Rotl(v3, 21); v3 ^= v0;
    v2 += v1; v1 = Rotl(v1, 17); v1 ^= v2; v2 = Rotl(v2, 32);
  }
  template <int C>
  void Word(uint64_t m) {  // C compression rounds
    v3 ^= m;
    for (int i = 0; i < C; i++) Round();
    v0 ^= m;
  }
  template <int D>
  uint64_t Finish() {  // D finalization rounds
    v2 ^= 0xff;
    for (int i = 0; i < D; i++) Round();
    return v0 ^ v1 ^ v2 ^ v3;
  }
};

}  // namespace keyed_hash_detail

// SipHash-C-D of n bytes at p under key (the bytes read as little-endian words, as on x86-64
// and arm64; SipHash<2, 4> is the reference function, checked against its test vectors).
template <int C, int D>
inline uint64_t SipHash(const HashKey& key, const void* p, size_t n) {
  keyed_hash_detail::SipState s(key);
  const auto* b = static_cast<const uint8_t*>(p);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t m;
    std::memcpy(&m, b + i, 8);
    s.Word<C>(m);
  }
  uint64_t last = static_cast<uint64_t>(n & 0xff) << 56;
  for (size_t j = 0; i + j < n; j++) last |= static_cast<uint64_t>(b[i + j]) << (8 * j);
  s.Word<C>(last);
  return s.Finish<D>();
}

inline uint64_t SipHash13(const HashKey& key, const void* p, size_t n) {
  return SipHash<1, 3>(key, p, n);
}

// SipHash-1-3 of one 64-bit value (its 8 little-endian bytes) under key.
inline uint64_t SipHash13(const HashKey& key, uint64_t v) {
  keyed_hash_detail::SipState s(key);
  s.Word<1>(v);
  s.Word<1>(uint64_t{8} << 56);
  return s.Finish<3>();
}

}  // namespace store
