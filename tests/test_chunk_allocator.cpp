// test_chunk_allocator.cpp - unit tests for store::cuda::ChunkAllocator (no device needed).
#include <doctest.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <random>
#include <utility>
#include <vector>

#include "cuda/chunk_allocator.h"

namespace {

using store::cuda::Allocation;
using store::cuda::ChunkAllocator;

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = 1024 * kKiB;

// Snapshot of every public figure, to show that a failed call changed nothing.
struct Figures {
  uint64_t used, free, largest, chunks, allocations, ranges;
  bool operator==(const Figures&) const = default;
};

Figures Snap(const ChunkAllocator& a) {
  return {a.used_bytes(), a.free_bytes(), a.largest_free(), a.chunk_count(), a.allocation_count(),
          a.free_range_count()};
}

// A grow callback that records its calls and can pretend the device is full.
struct Grower {
  bool device_full = false;
  std::vector<uint32_t> calls;
  ChunkAllocator::GrowFn Fn() {
    return [this](uint32_t chunk) {
      calls.push_back(chunk);
      return !device_full;
    };
  }
};

// Reference model: one flag per alignment unit per chunk. Slow, obviously correct.
class Reference {
 public:
  Reference(uint64_t chunk_size, uint64_t alignment)
      : units_(chunk_size / alignment), alignment_(alignment) {}

  void AddChunk() { used_.emplace_back(units_, false); }

  struct Run {
    uint32_t chunk;
    uint64_t offset;  // bytes
    uint64_t length;  // bytes
  };
  std::vector<Run> FreeRuns() const {
    std::vector<Run> runs;
    for (uint32_t c = 0; c < used_.size(); ++c) {
      uint64_t u = 0;
      while (u < units_) {
        if (used_[c][u]) {
          ++u;
          continue;
        }
        uint64_t start = u;
        while (u < units_ && !used_[c][u]) ++u;
        runs.push_back({c, start * alignment_, (u - start) * alignment_});
      }
    }
    return runs;
  }
  // Best fit with the allocator's documented tie-break: smallest run, then lowest chunk,
  // then lowest offset. Returns false if no run fits.
  bool BestFit(uint64_t rounded, Run* out) const {
    bool found = false;
    for (const Run& r : FreeRuns()) {
      if (r.length < rounded) continue;
      if (!found || r.length < out->length) {  // runs come in (chunk, offset) order
        *out = r;
        found = true;
      }
    }
    return found;
  }
  void Mark(const Allocation& a, bool used) {
    for (uint64_t u = a.offset / alignment_; u < (a.offset + a.size) / alignment_; ++u) {
      REQUIRE(used_[a.chunk][u] != used);
      used_[a.chunk][u] = used;
    }
  }
  uint64_t Used() const {
    uint64_t n = 0;
    for (const auto& c : used_) n += std::count(c.begin(), c.end(), true);
    return n * alignment_;
  }
  uint64_t Largest() const {
    uint64_t best = 0;
    for (const Run& r : FreeRuns()) best = std::max(best, r.length);
    return best;
  }

 private:
  uint64_t units_;
  uint64_t alignment_;
  std::vector<std::vector<bool>> used_;
};

// Live allocations as intervals in one address space (chunk * chunk_size + offset).
class IntervalSet {
 public:
  explicit IntervalSet(uint64_t chunk_size) : chunk_size_(chunk_size) {}
  // Returns false if [start, end) overlaps a stored interval.
  bool Insert(const Allocation& a) {
    uint64_t start = a.chunk * chunk_size_ + a.offset;
    uint64_t end = start + a.size;
    auto next = intervals_.lower_bound(start);
    if (next != intervals_.end() && next->first < end) return false;
    if (next != intervals_.begin() && std::prev(next)->second > start) return false;
    intervals_.emplace(start, end);
    return true;
  }
  void Erase(const Allocation& a) { intervals_.erase(a.chunk * chunk_size_ + a.offset); }

 private:
  uint64_t chunk_size_;
  std::map<uint64_t, uint64_t> intervals_;
};

}  // namespace

TEST_CASE("constructor arguments are validated") {
  CHECK(ChunkAllocator(1 * kMiB, 4).valid());
  CHECK(ChunkAllocator(1 * kMiB, 4, nullptr, 4096).valid());
  CHECK(ChunkAllocator(256, 1).valid());
  CHECK_FALSE(ChunkAllocator(1 * kMiB, 4, nullptr, 128).valid());  // below 256
  CHECK_FALSE(ChunkAllocator(1 * kMiB, 4, nullptr, 384).valid());  // not a power of two
  CHECK_FALSE(ChunkAllocator(1 * kMiB, 4, nullptr, 0).valid());
  CHECK_FALSE(ChunkAllocator(1000, 4).valid());                    // not a multiple
  CHECK_FALSE(ChunkAllocator(0, 4).valid());
  CHECK_FALSE(ChunkAllocator(1 * kMiB, 0).valid());
  CHECK_FALSE(ChunkAllocator(1ull << 62, 8).valid());              // capacity overflows

  ChunkAllocator bad(1000, 4);
  Allocation a;
  CHECK_FALSE(bad.AddChunk());
  CHECK_FALSE(bad.Allocate(256, &a));
  CHECK(bad.chunk_count() == 0);

  ChunkAllocator good(2 * kMiB, 3);
  CHECK(good.capacity() == 6 * kMiB);
  CHECK(good.alignment() == 256);
  CHECK(good.chunk_size() == 2 * kMiB);
  CHECK(good.max_chunks() == 3);
}

TEST_CASE("AddChunk registers free chunks up to max_chunks") {
  ChunkAllocator a(1 * kMiB, 2);
  CHECK(a.chunk_count() == 0);
  CHECK(a.largest_free() == 0);
  CHECK(a.free_bytes() == 0);
  uint32_t index = 99;
  REQUIRE(a.AddChunk(&index));
  CHECK(index == 0);
  REQUIRE(a.AddChunk(&index));
  CHECK(index == 1);
  CHECK_FALSE(a.AddChunk(&index));
  CHECK(index == 1);
  CHECK(a.chunk_count() == 2);
  CHECK(a.free_bytes() == 2 * kMiB);
  CHECK(a.largest_free() == 1 * kMiB);
  CHECK(a.free_range_count() == 2);
  CHECK(a.used_bytes() == 0);
}

TEST_CASE("a chunk can be filled exactly with mixed sizes") {
  ChunkAllocator a(1 * kMiB, 1);
  REQUIRE(a.AddChunk());
  // Requested sizes and what they round to.
  const std::vector<std::pair<uint64_t, uint64_t>> sizes = {
      {1, 256},       {256, 256},     {257, 512},       {1000, 1024},   {4096, 4096},
      {5000, 5120},   {65536, 65536}, {100000, 100096}, {3, 256},       {262144, 262144}};
  std::vector<Allocation> live;
  uint64_t used = 0;
  for (auto [request, rounded] : sizes) {
    Allocation x;
    REQUIRE(a.Allocate(request, &x));
    CHECK(x.size == rounded);
    CHECK(x.chunk == 0);
    used += rounded;
    CHECK(a.used_bytes() == used);
    live.push_back(x);
  }
  const uint64_t rest = 1 * kMiB - used;
  Allocation last;
  REQUIRE(a.Allocate(rest, &last));
  CHECK(last.size == rest);
  CHECK(last.offset + last.size == 1 * kMiB);
  live.push_back(last);
  CHECK(a.used_bytes() == 1 * kMiB);
  CHECK(a.free_bytes() == 0);
  CHECK(a.largest_free() == 0);
  CHECK(a.free_range_count() == 0);
  CHECK(a.allocation_count() == live.size());

  // Contiguous, no gaps, no overlaps.
  std::sort(live.begin(), live.end(), [](auto& l, auto& r) { return l.offset < r.offset; });
  uint64_t expect = 0;
  for (const Allocation& x : live) {
    CHECK(x.offset == expect);
    expect = x.offset + x.size;
  }
  CHECK(expect == 1 * kMiB);

  Allocation more;
  const Figures before = Snap(a);
  CHECK_FALSE(a.Allocate(1, &more));  // full, max_chunks reached
  CHECK(Snap(a) == before);
}

TEST_CASE("every offset is aligned to the configured alignment") {
  for (uint64_t alignment : {256ull, 512ull, 4096ull, 65536ull}) {
    CAPTURE(alignment);
    ChunkAllocator a(4 * kMiB, 4, [](uint32_t) { return true; }, alignment);
    REQUIRE(a.valid());
    std::mt19937_64 rng(7);
    std::vector<Allocation> live;
    for (int i = 0; i < 2000; ++i) {
      if (!live.empty() && rng() % 3 == 0) {
        size_t k = rng() % live.size();
        REQUIRE(a.Free(live[k]));
        live[k] = live.back();
        live.pop_back();
        continue;
      }
      uint64_t size = 1 + rng() % (64 * kKiB);
      Allocation x;
      if (!a.Allocate(size, &x)) continue;
      CHECK(x.offset % alignment == 0);
      CHECK(x.offset % 256 == 0);
      CHECK(x.size % alignment == 0);
      CHECK(x.size >= size);
      CHECK(x.size < size + alignment);
      CHECK(x.offset + x.size <= a.chunk_size());
      live.push_back(x);
    }
  }
}

TEST_CASE("freeing everything coalesces back to one free range per chunk") {
  const uint64_t chunk = 1 * kMiB;
  ChunkAllocator a(chunk, 3, [](uint32_t) { return true; });
  std::mt19937_64 rng(42);
  std::vector<Allocation> live;
  while (true) {
    Allocation x;
    if (!a.Allocate(256 * (1 + rng() % 64), &x)) break;
    live.push_back(x);
  }
  CHECK(a.chunk_count() == 3);
  CHECK(a.largest_free() < 64 * 256);
  std::shuffle(live.begin(), live.end(), rng);
  for (const Allocation& x : live) REQUIRE(a.Free(x));
  CHECK(a.allocation_count() == 0);
  CHECK(a.used_bytes() == 0);
  CHECK(a.free_bytes() == 3 * chunk);
  CHECK(a.largest_free() == chunk);
  CHECK(a.free_range_count() == 3);
  // And each chunk really is whole again.
  std::vector<Allocation> whole(3);
  for (auto& w : whole) REQUIRE(a.Allocate(chunk, &w));
  std::sort(whole.begin(), whole.end(), [](auto& l, auto& r) { return l.chunk < r.chunk; });
  for (uint32_t c = 0; c < 3; ++c) {
    CHECK(whole[c].chunk == c);
    CHECK(whole[c].offset == 0);
  }
}

TEST_CASE("coalescing merges with the previous, the next, and both neighbours") {
  ChunkAllocator a(4 * kKiB, 1);
  REQUIRE(a.AddChunk());
  std::vector<Allocation> x(16);
  for (auto& e : x) REQUIRE(a.Allocate(256, &e));
  CHECK(a.free_range_count() == 0);
  REQUIRE(a.Free(x[1]));
  REQUIRE(a.Free(x[3]));
  CHECK(a.free_range_count() == 2);
  REQUIRE(a.Free(x[2]));  // merges both sides
  CHECK(a.free_range_count() == 1);
  CHECK(a.largest_free() == 3 * 256);
  REQUIRE(a.Free(x[4]));  // merges with the previous range
  CHECK(a.free_range_count() == 1);
  CHECK(a.largest_free() == 4 * 256);
  REQUIRE(a.Free(x[0]));  // merges with the next range
  CHECK(a.free_range_count() == 1);
  CHECK(a.largest_free() == 5 * 256);
  REQUIRE(a.Free(x[15]));  // last object, at the chunk end
  CHECK(a.free_range_count() == 2);
}

TEST_CASE("alternate frees fragment: largest_free stays below two objects") {
  const uint64_t object = 64 * kKiB;
  const uint64_t chunk = 4 * kMiB;
  ChunkAllocator a(chunk, 1);
  REQUIRE(a.AddChunk());
  std::vector<Allocation> live;
  for (uint64_t i = 0; i < chunk / object; ++i) {
    Allocation x;
    REQUIRE(a.Allocate(object, &x));
    live.push_back(x);
  }
  std::sort(live.begin(), live.end(), [](auto& l, auto& r) { return l.offset < r.offset; });
  for (size_t i = 0; i < live.size(); i += 2) REQUIRE(a.Free(live[i]));
  CHECK(a.free_bytes() == chunk / 2);
  CHECK(a.largest_free() == object);
  CHECK(a.largest_free() < 2 * object);
  CHECK(a.free_range_count() == live.size() / 2);
  Allocation big;
  const Figures before = Snap(a);
  CHECK_FALSE(a.Allocate(object + 1, &big));  // half the chunk is free, yet nothing fits
  CHECK(Snap(a) == before);
  Allocation fits;
  CHECK(a.Allocate(object, &fits));
}

TEST_CASE("best fit picks the smallest range that fits") {
  ChunkAllocator a(64 * kKiB, 1);
  REQUIRE(a.AddChunk());
  // Layout: [A 1K][h1 4K][B 1K][h2 2K][C 1K][h3 8K][D 1K][rest]
  std::vector<uint64_t> sizes = {1, 4, 1, 2, 1, 8, 1};
  std::vector<Allocation> x(sizes.size());
  for (size_t i = 0; i < sizes.size(); ++i) REQUIRE(a.Allocate(sizes[i] * kKiB, &x[i]));
  REQUIRE(a.Free(x[1]));
  REQUIRE(a.Free(x[3]));
  REQUIRE(a.Free(x[5]));
  Allocation y;
  REQUIRE(a.Allocate(1500, &y));  // 1536 bytes: the 2K hole is the best fit
  CHECK(y.offset == x[3].offset);
  REQUIRE(a.Allocate(3 * kKiB, &y));  // the 4K hole
  CHECK(y.offset == x[1].offset);
  REQUIRE(a.Allocate(5 * kKiB, &y));  // the 8K hole, not the large tail
  CHECK(y.offset == x[5].offset);
}

TEST_CASE("grow is called exactly when needed; false means device full, with no side effects") {
  const uint64_t chunk = 1 * kMiB;
  Grower g;
  ChunkAllocator a(chunk, 3, g.Fn());
  Allocation x;

  // No chunks yet: the first allocation grows chunk 0.
  REQUIRE(a.Allocate(600 * kKiB, &x));
  CHECK(g.calls == std::vector<uint32_t>{0});
  CHECK(x.chunk == 0);
  CHECK(x.offset == 0);

  // Fits in chunk 0: no call.
  REQUIRE(a.Allocate(400 * kKiB, &x));
  CHECK(g.calls.size() == 1);
  CHECK(x.chunk == 0);

  // 24K left in chunk 0; 100K does not fit and the device is full.
  g.device_full = true;
  const Figures before = Snap(a);
  CHECK_FALSE(a.Allocate(100 * kKiB, &x));
  CHECK(g.calls == std::vector<uint32_t>{0, 1});
  CHECK(Snap(a) == before);
  CHECK(a.chunk_count() == 1);

  // Small requests still succeed from existing space without calling grow.
  REQUIRE(a.Allocate(24 * kKiB, &x));
  CHECK(g.calls.size() == 2);

  // Device has room again: the retry adds chunk 1 (same index as the failed attempt).
  g.device_full = false;
  REQUIRE(a.Allocate(100 * kKiB, &x));
  CHECK(g.calls == std::vector<uint32_t>{0, 1, 1});
  CHECK(x.chunk == 1);
  CHECK(a.chunk_count() == 2);

  // A chunk added by hand is used before growing.
  uint32_t index = 0;
  REQUIRE(a.AddChunk(&index));
  CHECK(index == 2);
  REQUIRE(a.Allocate(chunk, &x));
  CHECK(x.chunk == 2);
  CHECK(g.calls.size() == 3);

  // max_chunks reached: grow is not called any more.
  Allocation y;
  REQUIRE(a.Allocate(chunk - 100 * kKiB, &y));
  CHECK(y.chunk == 1);
  const Figures full = Snap(a);
  CHECK(full.free == 0);
  CHECK_FALSE(a.Allocate(1, &y));
  CHECK(g.calls.size() == 3);
  CHECK(Snap(a) == full);

  // An empty callback never grows.
  ChunkAllocator no_grow(chunk, 2);
  CHECK_FALSE(no_grow.Allocate(1, &y));
  CHECK(no_grow.chunk_count() == 0);
}

TEST_CASE("an object larger than a chunk, or of size 0, fails without calling grow") {
  Grower g;
  ChunkAllocator a(1 * kMiB, 4, g.Fn());
  Allocation x{7, 7, 7};
  CHECK_FALSE(a.Allocate(1 * kMiB + 1, &x));
  CHECK_FALSE(a.Allocate(0, &x));
  CHECK_FALSE(a.Allocate(UINT64_MAX, &x));
  CHECK_FALSE(a.Allocate(256, nullptr));
  CHECK(g.calls.empty());
  CHECK(a.chunk_count() == 0);
  CHECK(x.chunk == 7);
  CHECK(x.offset == 7);
  CHECK(x.size == 7);
  REQUIRE(a.Allocate(1 * kMiB, &x));  // exactly a chunk is fine
  CHECK(x.size == 1 * kMiB);
  CHECK(g.calls.size() == 1);
}

TEST_CASE("bad frees return false and change nothing") {
  ChunkAllocator a(64 * kKiB, 2, [](uint32_t) { return true; });
  Allocation p, q, r;
  REQUIRE(a.Allocate(1000, &p));  // 1024 at 0
  REQUIRE(a.Allocate(2048, &q));  // 2048 at 1024
  REQUIRE(a.Allocate(256, &r));   // 256 at 3072
  REQUIRE(a.Free(q));             // a free range in the middle
  const Figures before = Snap(a);

  const std::vector<Allocation> bad = {
      {0, p.offset, 1000},              // requested, not rounded, size
      {0, p.offset, p.size + 256},      // size too large
      {0, p.offset, p.size - 256},      // size too small
      {0, p.offset, 0},                 // size 0
      {0, p.offset + 256, 768},         // inside a live allocation
      {0, q.offset, q.size},            // double free
      {0, q.offset + 256, 256},         // inside a free range
      {0, 60 * kKiB, 256},              // in the untouched tail
      {0, 64 * kKiB, 256},              // past the chunk end
      {0, UINT64_MAX - 255, 256},       // offset + size overflows
      {1, p.offset, p.size},            // chunk not added yet
      {UINT32_MAX, 0, 256},             // absurd chunk
      {0, r.offset, UINT64_MAX},        // absurd size
  };
  for (const Allocation& b : bad) {
    CAPTURE(b.chunk);
    CAPTURE(b.offset);
    CAPTURE(b.size);
    CHECK_FALSE(a.Free(b));
    CHECK(Snap(a) == before);
  }
  // State still intact: the real ones free fine and everything coalesces.
  CHECK(a.Free(p));
  CHECK(a.Free(r));
  CHECK_FALSE(a.Free(r));
  CHECK(a.used_bytes() == 0);
  CHECK(a.largest_free() == 64 * kKiB);
  CHECK(a.free_range_count() == 1);
}

TEST_CASE("randomized: 100k alloc/free against a reference model") {
  const uint64_t alignment = 256;
  const uint64_t chunk = 64 * kKiB;  // 256 units: small enough to scan the model every step
  const uint32_t max_chunks = 4;
  Grower g;
  ChunkAllocator a(chunk, max_chunks, g.Fn(), alignment);
  Reference ref(chunk, alignment);
  IntervalSet intervals(chunk);
  std::mt19937_64 rng(20240601);
  std::vector<Allocation> live;
  std::vector<Allocation> freed;  // for double-free attempts
  uint64_t expected_grow_calls = 0;
  uint64_t allocs = 0, frees = 0, failures = 0, bad_frees = 0;

  for (int op = 0; op < 100000; ++op) {
    CAPTURE(op);
    const uint64_t dice = rng() % 100;
    if (dice < 2) g.device_full = !g.device_full;

    if (dice < 5 && !live.empty()) {
      // A bad free: twisted copy of a live one, or a stale one.
      Allocation b = live[rng() % live.size()];
      switch (rng() % 4) {
        case 0: b.size += alignment; break;
        case 1: b.offset += alignment; break;
        case 2: b.chunk += max_chunks; break;
        default:
          if (freed.empty()) b.size = 0;
          else b = freed[rng() % freed.size()];
      }
      // A stale allocation may have been handed out again in the meantime.
      bool is_live = std::any_of(live.begin(), live.end(), [&](const Allocation& l) {
        return l.chunk == b.chunk && l.offset == b.offset && l.size == b.size;
      });
      if (!is_live) {
        const Figures before = Snap(a);
        REQUIRE_FALSE(a.Free(b));
        REQUIRE(Snap(a) == before);
        ++bad_frees;
      }
    } else if (dice < 50 && !live.empty()) {
      size_t k = rng() % live.size();
      Allocation x = live[k];
      live[k] = live.back();
      live.pop_back();
      REQUIRE(a.Free(x));
      ref.Mark(x, false);
      intervals.Erase(x);
      freed.push_back(x);
      if (freed.size() > 64) freed.erase(freed.begin());
      ++frees;
    } else {
      // Mostly small sizes, sometimes up to a whole chunk.
      uint64_t size = (rng() % 8 == 0) ? 1 + rng() % chunk : 1 + rng() % (4 * kKiB);
      const uint64_t rounded = (size + alignment - 1) / alignment * alignment;
      Reference::Run fit{};
      const bool fits = ref.BestFit(rounded, &fit);
      const bool can_grow = a.chunk_count() < max_chunks;
      if (!fits && can_grow) ++expected_grow_calls;
      const bool expect_ok = fits || (can_grow && !g.device_full);
      const Figures before = Snap(a);
      const uint32_t chunks_before = a.chunk_count();

      Allocation x;
      const bool ok = a.Allocate(size, &x);
      REQUIRE(g.calls.size() == expected_grow_calls);
      REQUIRE(ok == expect_ok);
      if (!ok) {
        REQUIRE(Snap(a) == before);
        ++failures;
      } else {
        if (fits) {
          REQUIRE(x.chunk == fit.chunk);
          REQUIRE(x.offset == fit.offset);
        } else {
          REQUIRE(g.calls.back() == chunks_before);
          REQUIRE(a.chunk_count() == chunks_before + 1);
          ref.AddChunk();
          REQUIRE(x.chunk == chunks_before);
          REQUIRE(x.offset == 0);
        }
        REQUIRE(x.size == rounded);
        REQUIRE(x.offset % alignment == 0);
        REQUIRE(x.offset + x.size <= chunk);
        REQUIRE(intervals.Insert(x));  // no overlap with any live allocation
        ref.Mark(x, true);
        live.push_back(x);
        ++allocs;
      }
    }

    // Exact figures at every step.
    REQUIRE(a.chunk_count() <= max_chunks);
    REQUIRE(a.allocation_count() == live.size());
    REQUIRE(a.used_bytes() == ref.Used());
    REQUIRE(a.free_bytes() == a.chunk_count() * chunk - ref.Used());
    REQUIRE(a.largest_free() == ref.Largest());
    REQUIRE(a.free_range_count() == ref.FreeRuns().size());
  }
  MESSAGE("allocs=" << allocs << " frees=" << frees << " failed allocs=" << failures
                    << " bad frees=" << bad_frees << " grow calls=" << g.calls.size()
                    << " chunks=" << a.chunk_count());
  CHECK(allocs > 30000);
  CHECK(failures > 100);
  CHECK(bad_frees > 1000);

  for (const Allocation& x : live) REQUIRE(a.Free(x));
  CHECK(a.used_bytes() == 0);
  CHECK(a.largest_free() == chunk);
  CHECK(a.free_range_count() == a.chunk_count());
}
