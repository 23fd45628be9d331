// test_memory.cpp - unit tests for store::Region (memfd + manual jemalloc arena).
#include <doctest.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <cmath>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "memory/region.h"

namespace {

constexpr uint64_t kMiB = 1ull << 20;

std::unique_ptr<store::Region> MakeRegion(uint64_t capacity, bool prefault = false,
                                          int64_t dirty_decay_ms = -1, bool hugepages = false) {
  store::RegionOptions o;
  o.capacity = capacity;
  o.prefault = prefault;
  o.dirty_decay_ms = dirty_decay_ms;
  o.hugepages = hugepages;
  std::string error;
  auto r = store::Region::Create(o, &error);
  INFO("Create error: " << error);
  REQUIRE(r != nullptr);
  CHECK(error.empty());
  return r;
}

bool Aligned(const void* p, uint64_t a) { return reinterpret_cast<uintptr_t>(p) % a == 0; }

struct Block {
  void* p;
  uint64_t usable;
};

// Allocates sizes from next_size() until the region says no. Returns the blocks.
template <typename NextSize>
std::vector<Block> FillUntilFull(store::Region& r, NextSize next_size) {
  std::vector<Block> blocks;
  for (;;) {
    uint64_t usable = 0;
    void* p = r.Allocate(next_size(), &usable);
    if (p == nullptr) break;
    blocks.push_back({p, usable});
  }
  return blocks;
}

// Every block inside the region, and no two blocks overlapping.
void CheckDisjointInside(const store::Region& r, std::vector<Block> blocks) {
  std::sort(blocks.begin(), blocks.end(), [](const Block& a, const Block& b) { return a.p < b.p; });
  bool inside = true, disjoint = true;
  for (size_t i = 0; i < blocks.size(); ++i) {
    auto* p = static_cast<uint8_t*>(blocks[i].p);
    if (!r.Contains(p) || r.OffsetOf(p) + blocks[i].usable > r.capacity()) inside = false;
    if (i > 0 && static_cast<uint8_t*>(blocks[i - 1].p) + blocks[i - 1].usable > p) disjoint = false;
  }
  CHECK(inside);
  CHECK(disjoint);
}

void FreeAll(store::Region& r, std::vector<Block>& blocks) {
  for (auto& b : blocks) r.Free(b.p);
  blocks.clear();
}

}  // namespace

TEST_CASE("region: create sets up a sealed, mapped memfd of the requested size") {
  auto r = MakeRegion(64 * kMiB);
  CHECK(r->fd() >= 0);
  CHECK(r->base() != nullptr);
  CHECK(r->capacity() == 64 * kMiB);
  CHECK(r->id() >= 1);
  CHECK(r->allocated_bytes() == 0);
  CHECK(r->allocation_count() == 0);
  CHECK((fcntl(r->fd(), F_GETFD) & FD_CLOEXEC) != 0);
  CHECK(lseek(r->fd(), 0, SEEK_END) == static_cast<off_t>(64 * kMiB));
}

TEST_CASE("region: capacity is rounded up to the page size") {
  auto r = MakeRegion(10 * kMiB + 1);
  CHECK(r->capacity() == 10 * kMiB + 4096);
  uint64_t usable = 0;
  void* p = r->Allocate(kMiB, &usable);
  CHECK(r->Contains(p));
  r->Free(p);
}

TEST_CASE("region: invalid options fail cleanly with a message") {
  std::string error;
  store::RegionOptions o;
  o.capacity = 0;
  CHECK(store::Region::Create(o, &error) == nullptr);
  CHECK(!error.empty());
  error.clear();
  o.capacity = 1ull << 45;  // 32 TiB: more than this machine has
  CHECK(store::Region::Create(o, &error) == nullptr);
  MESSAGE("32 TiB: " << error);
  CHECK(!error.empty());
  error.clear();
  o.capacity = UINT64_MAX;
  CHECK(store::Region::Create(o, &error) == nullptr);
  CHECK(!error.empty());
}

TEST_CASE("region: every allocation lies inside the region and is aligned") {
  auto r = MakeRegion(64 * kMiB);
  const uint64_t sizes[] = {1, 7, 48, 63, 64, 65, 100, 1000, 1599, 4000, 4096, 14000, 16385, 20000, 40000,
                            65535, 65536, 65537, 100000, 1 * kMiB + 3, 3 * kMiB, 8 * kMiB};
  std::vector<Block> blocks;
  for (int round = 0; round < 3; ++round) {
    for (uint64_t s : sizes) {
      uint64_t usable = 0;
      void* p = r->Allocate(s, &usable);
      REQUIRE(p != nullptr);
      INFO("size " << s << " offset " << r->OffsetOf(p));
      CHECK(r->Contains(p));
      CHECK(r->OffsetOf(p) + usable <= r->capacity());
      CHECK(usable >= s);
      CHECK(Aligned(p, 64));
      if (s >= 64 * 1024) CHECK(Aligned(p, 4096));
      std::memset(p, 0x5a, s);
      blocks.push_back({p, usable});
    }
  }
  CheckDisjointInside(*r, blocks);
  uint64_t sum = 0;
  for (auto& b : blocks) sum += b.usable;
  CHECK(r->allocated_bytes() == sum);
  CHECK(r->allocation_count() == blocks.size());
  FreeAll(*r, blocks);
  CHECK(r->allocated_bytes() == 0);
  CHECK(r->allocation_count() == 0);
}

TEST_CASE("region: the thread cache never mixes heap and region memory") {
  auto r = MakeRegion(64 * kMiB);
  const size_t sizes[] = {64, 4000};
  for (size_t s : sizes) {
    // Warm the thread cache with heap blocks of this size class.
    for (int round = 0; round < 4; ++round) {
      std::vector<void*> heap;
      for (int i = 0; i < 64; ++i) heap.push_back(std::malloc(s));
      for (void* h : heap) std::free(h);
    }
    int outside = 0;
    std::vector<void*> mine;
    for (int i = 0; i < 32; ++i) {
      void* p = r->Allocate(s, nullptr);
      REQUIRE(p != nullptr);
      if (!r->Contains(p)) ++outside;
      mine.push_back(p);
    }
    INFO("size " << s);
    CHECK(outside == 0);
    // Region blocks freed must not be handed out by malloc().
    for (void* p : mine) r->Free(p);
    int inside = 0;
    std::vector<void*> heap;
    for (int i = 0; i < 64; ++i) {
      void* h = std::malloc(s);
      REQUIRE(h != nullptr);
      if (r->Contains(h)) ++inside;
      heap.push_back(h);
    }
    for (void* h : heap) std::free(h);
    CHECK(inside == 0);
  }
  CHECK(r->allocated_bytes() == 0);
}

TEST_CASE("region: mixed sizes fill most of the region, and a second fill reaches as far") {
  auto r = MakeRegion(256 * kMiB);
  auto fill = [&](std::vector<Block>* out) {
    std::mt19937_64 rng(12345);
    std::uniform_int_distribution<uint64_t> dist(1024, 4 * kMiB);
    *out = FillUntilFull(*r, [&] { return dist(rng); });
    return r->allocated_bytes();
  };
  std::vector<Block> blocks;
  uint64_t first = fill(&blocks);
  double fraction = static_cast<double>(first) / static_cast<double>(r->capacity());
  MESSAGE("mixed 1 KiB..4 MiB fill: " << blocks.size() << " objects, " << first << " of " << r->capacity()
                                      << " bytes usable (" << fraction * 100 << " %)");
  CHECK(fraction >= 0.85);
  CheckDisjointInside(*r, blocks);
  for (auto& b : blocks) {  // the memory is really there
    auto* p = static_cast<uint8_t*>(b.p);
    p[0] = 1;
    p[b.usable - 1] = 2;
  }
  size_t first_count = blocks.size();
  FreeAll(*r, blocks);
  CHECK(r->allocated_bytes() == 0);
  CHECK(r->allocation_count() == 0);

  uint64_t second = fill(&blocks);
  MESSAGE("second fill: " << blocks.size() << " objects, " << second << " bytes usable");
  CHECK(second >= first);
  CHECK(blocks.size() >= first_count);
  FreeAll(*r, blocks);
  CHECK(r->allocated_bytes() == 0);

  // After the fills, one object of (nearly) the whole region still fits: nothing leaked and
  // the free space coalesced back into one piece.
  uint64_t usable = 0;
  void* big = r->Allocate(192 * kMiB, &usable);
  CHECK(big != nullptr);
  r->Free(big);
}

TEST_CASE("region: 8 MiB objects fill at least 90% of a 256 MiB region") {
  auto r = MakeRegion(256 * kMiB);
  for (int cycle = 0; cycle < 2; ++cycle) {
    auto blocks = FillUntilFull(*r, [] { return 8 * kMiB; });
    double fraction = static_cast<double>(r->allocated_bytes()) / static_cast<double>(r->capacity());
    MESSAGE("8 MiB fill, cycle " << cycle << ": " << blocks.size() << " objects ("
                                  << fraction * 100 << " %)");
    CHECK(fraction >= 0.90);
    CheckDisjointInside(*r, blocks);
    FreeAll(*r, blocks);
    CHECK(r->allocated_bytes() == 0);
  }
}

TEST_CASE("region: a capacity that is not a size class still primes fully") {
  auto r = MakeRegion(100 * kMiB);
  auto blocks = FillUntilFull(*r, [] { return 1 * kMiB; });
  double fraction = static_cast<double>(r->allocated_bytes()) / static_cast<double>(r->capacity());
  MESSAGE("1 MiB fill of 100 MiB: " << blocks.size() << " objects (" << fraction * 100 << " %)");
  CHECK(fraction >= 0.95);
  CheckDisjointInside(*r, blocks);
  FreeAll(*r, blocks);
}

TEST_CASE("region: small objects can be carved out of the one big free extent") {
  // Right after priming, and again after a fill/free cycle, all free space is one extent of
  // nearly the whole region; a 64-byte object needs a 4 KiB slab cut from it.
  auto r = MakeRegion(256 * kMiB);
  for (int cycle = 0; cycle < 2; ++cycle) {
    for (uint64_t s : {1ull, 64ull, 3000ull, 20000ull}) {
      uint64_t usable = 0;
      void* p = r->Allocate(s, &usable);
      INFO("cycle " << cycle << " size " << s);
      CHECK(r->Contains(p));
      r->Free(p);
    }
    auto blocks = FillUntilFull(*r, [] { return 16 * kMiB; });
    CHECK(blocks.size() >= 14);
    FreeAll(*r, blocks);
  }
  CHECK(r->allocated_bytes() == 0);
}

TEST_CASE("region: oversize and zero-size allocations return nullptr") {
  auto r = MakeRegion(16 * kMiB);
  uint64_t usable = 123;
  CHECK(r->Allocate(0, &usable) == nullptr);
  CHECK(usable == 0);
  CHECK(r->Allocate(r->capacity() + 1, &usable) == nullptr);
  CHECK(r->Allocate(2 * r->capacity(), &usable) == nullptr);
  CHECK(r->Allocate(UINT64_MAX, &usable) == nullptr);
  CHECK(r->Allocate(UINT64_MAX / 2, nullptr) == nullptr);
  CHECK(r->allocated_bytes() == 0);
  CHECK(r->allocation_count() == 0);
  // The region still works afterwards.
  void* p = r->Allocate(kMiB, &usable);
  CHECK(r->Contains(p));
  r->Free(p);
  r->Free(nullptr);
  CHECK(r->allocated_bytes() == 0);
}

TEST_CASE("region: writes through base() are visible through another mapping of fd()") {
  auto r = MakeRegion(16 * kMiB);
  uint64_t usable = 0;
  auto* p = static_cast<uint8_t*>(r->Allocate(100000, &usable));
  REQUIRE(p != nullptr);
  uint64_t off = r->OffsetOf(p);
  for (uint64_t i = 0; i < usable; ++i) p[i] = static_cast<uint8_t>(i * 7 + 3);

  void* m = mmap(nullptr, r->capacity(), PROT_READ | PROT_WRITE, MAP_SHARED, r->fd(), 0);
  REQUIRE(m != MAP_FAILED);
  auto* client = static_cast<uint8_t*>(m);
  CHECK(client != r->base());
  CHECK(std::memcmp(client + off, p, usable) == 0);
  client[off + 10] = 0xee;  // and back the other way
  CHECK(p[10] == 0xee);
  munmap(m, r->capacity());
  r->Free(p);
}

TEST_CASE("region: the memfd is sealed against shrinking and growing") {
  auto r = MakeRegion(16 * kMiB);
  int seals = fcntl(r->fd(), F_GET_SEALS);
  CHECK(seals >= 0);
  CHECK((seals & F_SEAL_SHRINK) != 0);
  CHECK((seals & F_SEAL_GROW) != 0);
  CHECK((seals & F_SEAL_SEAL) != 0);
  CHECK(ftruncate(r->fd(), 0) != 0);
  CHECK(ftruncate(r->fd(), static_cast<off_t>(2 * r->capacity())) != 0);
  CHECK(fallocate(r->fd(), 0, 0, static_cast<off_t>(2 * r->capacity())) != 0);
  CHECK(fcntl(r->fd(), F_ADD_SEALS, F_SEAL_WRITE) != 0);
  CHECK(lseek(r->fd(), 0, SEEK_END) == static_cast<off_t>(r->capacity()));
}

TEST_CASE("region: jemalloc keeps no metadata inside the region") {
  auto r = MakeRegion(64 * kMiB);
  CHECK(r->allocated_bytes() == 0);
  // Overwrite every byte of the region. If arena metadata (bins, extent records) lived here,
  // what follows would crash or hand out wrong pointers.
  std::memset(r->base(), 0xa5, r->capacity());

  std::vector<void*> heap;
  for (int i = 0; i < 1000; ++i) heap.push_back(std::malloc(16 + (i % 50) * 97));
  for (void* h : heap) {
    CHECK_FALSE(r->Contains(h));
    std::free(h);
  }

  std::vector<Block> blocks;
  const uint64_t sizes[] = {64, 200, 3000, 20000, 70000, kMiB, 5 * kMiB};
  for (int i = 0; i < 8; ++i) {
    for (uint64_t s : sizes) {
      uint64_t usable = 0;
      void* p = r->Allocate(s, &usable);
      REQUIRE(p != nullptr);
      blocks.push_back({p, usable});
    }
  }
  CheckDisjointInside(*r, blocks);
  // Allocating wrote nothing into the region: the pattern is intact everywhere.
  const uint8_t* b = r->base();
  bool intact = std::all_of(b, b + r->capacity(), [](uint8_t v) { return v == 0xa5; });
  CHECK(intact);
  FreeAll(*r, blocks);
  CHECK(r->allocated_bytes() == 0);

  // And the region still fills almost completely.
  blocks = FillUntilFull(*r, [] { return 4 * kMiB; });
  double fraction = static_cast<double>(r->allocated_bytes()) / static_cast<double>(r->capacity());
  MESSAGE("4 MiB fill of 64 MiB after overwriting: " << fraction * 100 << " %");
  CHECK(fraction >= 0.90);
  CheckDisjointInside(*r, blocks);
  FreeAll(*r, blocks);
}

TEST_CASE("region: pages are reserved at creation, with or without prefault") {
  for (bool prefault : {false, true}) {
    auto r = MakeRegion(64 * kMiB, prefault);
    INFO("prefault " << prefault);
    MESSAGE("prefault=" << prefault << ": resident " << r->ResidentBytes() << " of " << r->capacity());
    CHECK(r->ResidentBytes() >= r->capacity() * 9 / 10);
    CHECK(r->ResidentBytes() <= r->capacity() + 2 * kMiB);
  }
}

TEST_CASE("region: Purge punches freed pages out of the memfd") {
  auto r = MakeRegion(64 * kMiB);
  CHECK(r->ResidentBytes() >= r->capacity() * 9 / 10);
  std::vector<Block> blocks;
  for (int i = 0; i < 12; ++i) {
    uint64_t usable = 0;
    void* p = r->Allocate(4 * kMiB, &usable);
    REQUIRE(p != nullptr);
    std::memset(p, 0x77, usable);
    blocks.push_back({p, usable});
  }
  // One object stays live across the purge: its data must survive.
  Block keep = blocks.back();
  blocks.pop_back();
  FreeAll(*r, blocks);
  r->Purge();
  uint64_t resident = r->ResidentBytes();
  MESSAGE("resident after Purge with one 4 MiB object live: " << resident);
  CHECK(resident >= keep.usable);
  CHECK(resident <= keep.usable + 2 * kMiB);
  auto* k = static_cast<const uint8_t*>(keep.p);
  CHECK(std::all_of(k, k + keep.usable, [](uint8_t v) { return v == 0x77; }));
  r->Free(keep.p);
  r->Purge();
  CHECK(r->ResidentBytes() <= 2 * kMiB);

  // Purged space is reusable and reads back as zero.
  uint64_t usable = 0;
  auto* p = static_cast<uint8_t*>(r->Allocate(8 * kMiB, &usable));
  REQUIRE(p != nullptr);
  CHECK(std::all_of(p, p + usable, [](uint8_t v) { return v == 0; }));
  r->Free(p);
}

TEST_CASE("region: dirty_decay_ms=0 hands freed pages back at once") {
  auto r = MakeRegion(64 * kMiB, false, 0);
  std::vector<Block> blocks;
  for (int i = 0; i < 4; ++i) {
    uint64_t usable = 0;
    void* p = r->Allocate(4 * kMiB, &usable);
    REQUIRE(p != nullptr);
    std::memset(p, 0x11, usable);
    blocks.push_back({p, usable});
  }
  CHECK(r->ResidentBytes() >= 16 * kMiB);
  FreeAll(*r, blocks);
  r->Decay();
  MESSAGE("resident after free with dirty_decay_ms=0: " << r->ResidentBytes());
  CHECK(r->ResidentBytes() <= 2 * kMiB);
}

TEST_CASE("region: the default decay never gives pages back by itself") {
  auto r = MakeRegion(64 * kMiB);
  std::vector<Block> blocks = FillUntilFull(*r, [] { return 2 * kMiB; });
  FreeAll(*r, blocks);
  for (int i = 0; i < 3; ++i) r->Decay();
  CHECK(r->ResidentBytes() >= r->capacity() * 9 / 10);
}

TEST_CASE("region: two regions are independent") {
  auto a = MakeRegion(32 * kMiB);
  auto b = MakeRegion(32 * kMiB);
  CHECK(a->id() != b->id());
  CHECK(a->arena() != b->arena());
  CHECK(a->fd() != b->fd());
  std::vector<Block> in_a, in_b;
  for (int i = 0; i < 50; ++i) {
    uint64_t ua = 0, ub = 0;
    void* pa = a->Allocate(1000 + i * 5000, &ua);
    void* pb = b->Allocate(1000 + i * 5000, &ub);
    REQUIRE(pa != nullptr);
    REQUIRE(pb != nullptr);
    CHECK(a->Contains(pa));
    CHECK_FALSE(b->Contains(pa));
    CHECK(b->Contains(pb));
    CHECK_FALSE(a->Contains(pb));
    in_a.push_back({pa, ua});
    in_b.push_back({pb, ub});
  }
  uint64_t b_bytes = b->allocated_bytes();
  FreeAll(*a, in_a);
  CHECK(a->allocated_bytes() == 0);
  CHECK(b->allocated_bytes() == b_bytes);
  // Filling a leaves b's free space alone.
  auto fill_a = FillUntilFull(*a, [] { return kMiB; });
  uint64_t ub = 0;
  void* pb = b->Allocate(kMiB, &ub);
  CHECK(b->Contains(pb));
  b->Free(pb);
  FreeAll(*a, fill_a);
  FreeAll(*b, in_b);
}

TEST_CASE("region: ids are never reused across create and destroy") {
  uint64_t last = 0;
  unsigned first_arena = 0, max_arena = 0;
  for (int i = 0; i < 20; ++i) {
    auto r = MakeRegion(8 * kMiB);
    CHECK(r->id() > last);
    last = r->id();
    if (i == 0) first_arena = r->arena();
    max_arena = std::max(max_arena, r->arena());
    uint64_t usable = 0;
    void* p = r->Allocate(kMiB, &usable);  // left live: destruction must cope
    CHECK(r->Contains(p));
    void* q = r->Allocate(64, &usable);
    CHECK(r->Contains(q));
    r->Free(q);
  }
  // jemalloc hands a destroyed arena's index to the next arena created; had ~Region not
  // destroyed its arena, the indices would have grown by one per region.
  CHECK(max_arena <= first_arena + 1);
}

TEST_CASE("region: the hugepages option always yields a working region") {
  auto r = MakeRegion(16 * kMiB, false, -1, true);
  MESSAGE("hugepages requested: active=" << r->hugepages_active() << ", capacity " << r->capacity());
  CHECK(r->capacity() >= 16 * kMiB);
  CHECK(r->ResidentBytes() >= r->capacity() * 9 / 10);
  auto blocks = FillUntilFull(*r, [] { return kMiB; });
  CHECK(blocks.size() >= 14);
  CheckDisjointInside(*r, blocks);
  FreeAll(*r, blocks);
}

// ---- PageHeap against a model: a bitmap of pages ----------------------------------------------

TEST_CASE("page heap: random allocations and frees against a page bitmap") {
  constexpr uint64_t kPageSize = 4096;
  for (uint64_t seed : {1ull, 2ull, 3ull, 42ull}) {
    CAPTURE(seed);
    std::mt19937_64 rng(seed);
    const uint64_t pages = 1 + rng() % 4096;
    store::PageHeap heap(pages * kPageSize + rng() % kPageSize, kPageSize);
    REQUIRE(heap.size() == pages * kPageSize);
    std::vector<uint8_t> used(pages, 0);
    std::vector<std::pair<uint64_t, uint64_t>> live;  // offset, bytes
    bool ok = true;
    for (int step = 0; step < 20000 && ok; step++) {
      if (!live.empty() && (rng() % 100 < 45)) {
        // Free a live one (sometimes only its second half, as jemalloc splits extents).
        size_t k = rng() % live.size();
        auto [off, bytes] = live[k];
        live[k] = live.back();
        live.pop_back();
        if (bytes > kPageSize && rng() % 4 == 0) {
          uint64_t half = (bytes / kPageSize / 2) * kPageSize;
          heap.Free(off + half, bytes - half);
          for (uint64_t p = (off + half) / kPageSize; p < (off + bytes) / kPageSize; p++) used[p] = 0;
          live.push_back({off, half});
        } else {
          heap.Free(off, bytes);
          for (uint64_t p = off / kPageSize; p < (off + bytes) / kPageSize; p++) used[p] = 0;
        }
      } else {
        uint64_t want = 1 + rng() % (rng() % 8 == 0 ? pages * kPageSize : 64 * kPageSize);
        uint64_t align = rng() % 10 == 0 ? kPageSize << (rng() % 6) : kPageSize;
        // The model's answer: the smallest free run that can hold it, aligned.
        const uint64_t need = (want + kPageSize - 1) / kPageSize;
        uint64_t best_len = UINT64_MAX;
        for (uint64_t p = 0; p < pages;) {
          if (used[p]) {
            p++;
            continue;
          }
          uint64_t q = p;
          while (q < pages && !used[q]) q++;
          uint64_t start = p * kPageSize, at = (start + align - 1) / align * align;
          if (at + need * kPageSize <= q * kPageSize && q - p < best_len) best_len = q - p;
          p = q;
        }
        uint64_t off = 0, taken = 0;
        bool got = heap.Allocate(want, align, &off, &taken);
        if (got != (best_len != UINT64_MAX)) {
          FAIL_CHECK("step " << step << ": allocate " << want << " aligned " << align << " gave "
                             << got << ", the model says " << (best_len != UINT64_MAX));
          ok = false;
          break;
        }
        if (!got) continue;
        CHECK(taken == need * kPageSize);
        CHECK(off % align == 0);
        // Best fit: the free run it came from is the shortest that can hold it.
        if (off / kPageSize < pages && !used[off / kPageSize]) {
          uint64_t a = off / kPageSize, b = a;
          while (a > 0 && !used[a - 1]) a--;
          while (b < pages && !used[b]) b++;
          if (b - a != best_len) {
            FAIL_CHECK("step " << step << ": took a run of " << b - a << " pages, the best fit "
                               << "is " << best_len);
            ok = false;
          }
        }
        for (uint64_t p = off / kPageSize; p < off / kPageSize + need; p++) {
          if (p >= pages || used[p]) {
            FAIL_CHECK("step " << step << ": page " << p << " given twice or outside");
            ok = false;
            break;
          }
          used[p] = 1;
        }
        // Best fit: the free run it came from was no longer than the shortest that fits.
        live.push_back({off, taken});
      }
      // Every byte accounted: free bytes, runs coalesced and matching the bitmap.
      uint64_t free_pages = 0, runs = 0, longest = 0;
      for (uint64_t p = 0; p < pages;) {
        if (used[p]) {
          p++;
          continue;
        }
        uint64_t q = p;
        while (q < pages && !used[q]) q++;
        runs++;
        free_pages += q - p;
        longest = std::max(longest, q - p);
        p = q;
      }
      if (heap.free_bytes() != free_pages * kPageSize || heap.free_runs() != runs ||
          heap.largest_free() != longest * kPageSize) {
        FAIL_CHECK("step " << step << ": heap says " << heap.free_bytes() << " free in "
                           << heap.free_runs() << " runs, longest " << heap.largest_free()
                           << "; the model " << free_pages * kPageSize << " in " << runs
                           << ", longest " << longest * kPageSize);
        ok = false;
      }
    }
    for (auto [off, bytes] : live) heap.Free(off, bytes);
    CHECK(heap.free_bytes() == heap.size());
    CHECK(heap.free_runs() == 1);
    CHECK(heap.largest_free() == heap.size());
  }
}

TEST_CASE("page heap: best fit takes the smallest run that fits, the lowest of equal ones") {
  store::PageHeap heap(100 * 4096, 4096);
  uint64_t off[10], taken = 0;
  for (int i = 0; i < 10; i++) REQUIRE(heap.Allocate(10 * 4096, 4096, &off[i], &taken));
  CHECK(heap.free_bytes() == 0);
  // Holes of 10, 10 and 20 pages (2 and 3 coalesce), at offsets 10, 50 and 70.
  heap.Free(off[1], 10 * 4096);
  heap.Free(off[5], 10 * 4096);
  heap.Free(off[7], 10 * 4096);
  heap.Free(off[8], 10 * 4096);
  uint64_t at = 0;
  REQUIRE(heap.Allocate(5 * 4096, 4096, &at, &taken));
  CHECK(at == off[1]);  // a 10-page hole, the lowest
  REQUIRE(heap.Allocate(12 * 4096, 4096, &at, &taken));
  CHECK(at == off[7]);  // only the 20-page hole holds 12
  REQUIRE(heap.Allocate(10 * 4096, 4096, &at, &taken));
  CHECK(at == off[5]);
  CHECK(!heap.Allocate(9 * 4096, 4096, &at, &taken));
  CHECK(heap.AllocateAt(off[1] + 5 * 4096, 4096));
  CHECK(!heap.AllocateAt(off[1] + 5 * 4096, 4096));
}

TEST_CASE("region: large objects take their size rounded to a page: 0.97 of the capacity or "
          "more, filled with log-uniform sizes, and the largest object is the whole region") {
  auto r = MakeRegion(1024 * kMiB);
  struct Range {
    uint64_t lo, hi;
  };
  for (Range range : {Range{kMiB, 64 * kMiB}, Range{16 * kMiB, 256 * kMiB},
                      Range{64 * 1024, 4 * kMiB}}) {
    std::mt19937_64 rng(range.lo ^ range.hi);
    std::uniform_real_distribution<double> u(std::log(static_cast<double>(range.lo)),
                                             std::log(static_cast<double>(range.hi)));
    std::vector<Block> blocks;
    uint64_t data = 0;
    // Full for these sizes: 50 puts in a row that do not fit.
    for (int misses = 0; misses < 50;) {
      uint64_t size = static_cast<uint64_t>(std::exp(u(rng)));
      uint64_t usable = 0;
      void* p = r->Allocate(size, &usable);
      if (p == nullptr) {
        misses++;
        continue;
      }
      misses = 0;
      CHECK(usable - size < 4096);  // within a page of the data
      data += size;
      blocks.push_back({p, usable});
    }
    double fraction = static_cast<double>(data) / static_cast<double>(r->capacity());
    MESSAGE("log-uniform " << range.lo << ".." << range.hi << ": " << blocks.size()
                           << " objects, data " << fraction << " of the capacity");
    CHECK(fraction >= 0.97);
    CheckDisjointInside(*r, blocks);
    FreeAll(*r, blocks);
    CHECK(r->allocated_bytes() == 0);
  }
  CHECK(r->LargestFree() == r->capacity());
  uint64_t usable = 0;
  void* whole = r->Allocate(r->capacity(), &usable);
  CHECK(whole != nullptr);
  CHECK(usable == r->capacity());
  r->Free(whole);
}

TEST_CASE("region: pages small objects held go back to large ones") {
  auto r = MakeRegion(64 * kMiB);
  // Fill it with small objects, free them: a create of the whole region fits again.
  std::vector<Block> blocks = FillUntilFull(*r, [] { return uint64_t{3000}; });
  CHECK(r->allocated_bytes() > 60 * kMiB);
  FreeAll(*r, blocks);
  uint64_t usable = 0;
  void* whole = r->Allocate(r->capacity(), &usable);
  CHECK(whole != nullptr);
  r->Free(whole);
  // Half small, half large, interleaved; after freeing the small ones the large ones can grow.
  std::vector<Block> small, large;
  for (int i = 0; i < 200; i++) {
    uint64_t u = 0;
    void* p = r->Allocate(i % 2 ? 5000 : 100 * 1024, &u);
    REQUIRE(p != nullptr);
    (i % 2 ? small : large).push_back({p, u});
  }
  FreeAll(*r, small);
  FreeAll(*r, large);
  CHECK(r->allocated_bytes() == 0);
  whole = r->Allocate(r->capacity(), &usable);
  CHECK(whole != nullptr);
  r->Free(whole);
}

TEST_CASE("region: FitsIfFreed and FitsIfFreedNear agree on runs that freed objects would make") {
  auto r = MakeRegion(16 * kMiB);
  // 1 MiB objects one after another until full, then every fourth freed: holes of 1 MiB.
  std::vector<void*> objs;
  for (;;) {
    uint64_t usable = 0;
    void* p = r->Allocate(kMiB, &usable);
    if (!p) break;
    objs.push_back(p);
  }
  REQUIRE(objs.size() >= 12);
  std::sort(objs.begin(), objs.end());
  for (size_t i = 0; i < objs.size(); i += 4) {
    r->Free(objs[i]);
    objs[i] = nullptr;
  }
  auto off = [&](size_t i) { return r->OffsetOf(objs[i]); };
  // objs[1] is next to the hole at 0 and to objs[2]; objs[3] to objs[2] and the hole at 4.
  for (bool near : {false, true}) {
    INFO("near " << near);
    auto fits = [&](uint64_t size, std::vector<uint64_t> offs) {
      return near ? r->FitsIfFreedNear(size, offs) : r->FitsIfFreed(size, offs);
    };
    CHECK(fits(2 * kMiB, {off(1)}));            // with the hole before it
    CHECK_FALSE(fits(3 * kMiB, {off(1)}));
    CHECK(fits(3 * kMiB, {off(2), off(1)}));     // hole, 1, 2, and nothing more
    CHECK_FALSE(fits(4 * kMiB, {off(1), off(2)}));
    CHECK(fits(5 * kMiB, {off(1), off(2), off(3)}));  // hole, 1, 2, 3, hole
    CHECK_FALSE(fits(6 * kMiB, {off(1), off(2), off(3)}));
    CHECK_FALSE(fits(3 * kMiB, {off(1), off(6)}));    // apart: 2 MiB runs each
  }
  // A small object's room does not need pages: neither judges it.
  CHECK(r->FitsIfFreedNear(100, {}));
  CHECK(r->FitsIfFreed(100, {}));
  // Nor a small object's extent: freeing it may give back its pages.
  uint64_t usable = 0;
  void* tiny = r->Allocate(64, &usable);
  REQUIRE(tiny != nullptr);
  CHECK(r->FitsIfFreed(8 * kMiB, {r->OffsetOf(tiny)}));
  CHECK(r->FitsIfFreedNear(8 * kMiB, {r->OffsetOf(tiny)}));
  CHECK_FALSE(r->FitsIfFreed(8 * kMiB, {off(1)}));
  r->Free(tiny);
  for (void* p : objs) {
    if (p) r->Free(p);
  }
}
