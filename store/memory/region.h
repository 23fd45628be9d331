// region.h - the store's shared memory: one memfd region, its pages, and a jemalloc arena for
// small objects.
//
// Owns: the memfd, its one MAP_SHARED mapping in the server, a PageHeap of its pages (large
// objects take a run of pages each: their size rounded up to a page), and a manual jemalloc
// arena for small objects whose nine extent hooks are ours (extents come from and go back to
// the PageHeap; purge = punch hole; the arena's own metadata lives outside the region).
// See ../shared/notes/allocator-cuda-fds.md section 1.
// Called by: the server loop (one thread). Allocate/Free are not meant to be called from
// several threads at once, although jemalloc itself would allow it.
// Every mallocx/dallocx passes MALLOCX_ARENA(arena) | MALLOCX_TCACHE_NONE, so no heap memory
// ever lands in the region and no region memory is ever handed to malloc().
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "memory/page_heap.h"

namespace store {

struct RegionOptions {
  uint64_t capacity = 0;     // bytes; rounded up to a multiple of the page size
  bool prefault = false;     // touch every page at start (MADV_POPULATE_WRITE, else a write loop)
  bool hugepages = false;    // try MFD_HUGETLB, else madvise(MADV_HUGEPAGE); logs what it got
  // With hugepages: hugetlbfs only if capacity is a multiple of its page size, instead of
  // rounding the capacity up to one.
  bool hugepages_exact = false;
  int64_t dirty_decay_ms = -1;  // jemalloc dirty decay; -1 = keep freed pages resident
};

class Region {
 public:
  // Creates the memfd (CLOEXEC, sealing allowed), sizes it, fallocates it (so no SIGBUS later),
  // seals it against shrink and grow, maps it, creates and primes the arena.
  // Returns nullptr and fills *error on failure.
  static std::unique_ptr<Region> Create(const RegionOptions& options, std::string* error);
  ~Region();
  Region(const Region&) = delete;
  Region& operator=(const Region&) = delete;

  int fd() const { return fd_; }
  // The same memory opened read-only (O_RDONLY): what read-only clients are sent.
  int read_only_fd() const { return ro_fd_; }
  uint8_t* base() const { return base_; }
  uint64_t capacity() const { return capacity_; }
  // A process-wide id, never reused within one server run (starts at 1).
  uint64_t id() const { return id_; }

  // Allocates size bytes (size > 0), 64-byte aligned; from 16 KiB up a run of pages of its own
  // (page-aligned, the size rounded up to a page), below that from jemalloc's small classes
  // (at most 2 KiB more). Returns nullptr when the region cannot hold it. *usable receives the
  // bytes actually taken, which is what allocated_bytes() counts.
  void* Allocate(uint64_t size, uint64_t* usable);
  // What Allocate(size) takes when it succeeds (*usable), without allocating (0 for 0).
  uint64_t UsableSize(uint64_t size) const;
  // Frees a pointer returned by Allocate. REQUIRES: p came from this region.
  void Free(void* p);

  uint64_t allocated_bytes() const { return allocated_; }
  uint64_t free_bytes() const { return capacity_ > allocated_ ? capacity_ - allocated_ : 0; }
  uint64_t allocation_count() const { return allocations_; }
  // Frees so far: what FitsIfFreed says for given objects holds until this or they change.
  uint64_t free_count() const { return frees_; }
  bool Contains(const void* p) const {
    auto u = reinterpret_cast<const uint8_t*>(p);
    return u >= base_ && u < base_ + capacity_;
  }
  uint64_t OffsetOf(const void* p) const { return static_cast<uint64_t>(reinterpret_cast<const uint8_t*>(p) - base_); }
  // The size of the largest object that could be allocated now: the longest free run of
  // pages. O(1).
  uint64_t LargestFree();
  // Whether `size` bytes would fit in one run of pages if the objects at these offsets were
  // freed too. O(n log n). What a drop of those objects could make room for, at most. True (no
  // telling) when one of them is a small object: freeing it may empty its jemalloc extent,
  // which a purge gives back to the pages. True for a size below a page heap object's (a small
  // object's room comes from any freed object, page or not).
  bool FitsIfFreed(uint64_t size, const std::vector<uint64_t>& offsets);
  // The same, leaving out a free run long enough by itself (the caller knows there is none).
  bool FitsIfFreedNear(uint64_t size, const std::vector<uint64_t>& offsets);
  // Resident bytes of the memfd (st_blocks * 512).
  uint64_t ResidentBytes() const;
  // Hands every free page back to the OS now: jemalloc's unused extents go back to the page
  // heap, and every free run is punched out of the memfd (it reads zero afterwards).
  void Purge();
  // With dirty_decay_ms >= 0: one jemalloc decay step (extents unused for that long go back to
  // the page heap), then the free runs are punched out as by Purge. Nothing with -1.
  void Decay();
  bool hugepages_active() const { return hugepages_active_; }
  unsigned arena() const { return arena_; }

 private:
  Region() = default;
  int fd_ = -1;
  int ro_fd_ = -1;
  uint8_t* base_ = nullptr;
  uint64_t capacity_ = 0;
  uint64_t id_ = 0;
  unsigned arena_ = 0;
  int flags_ = 0;
  int64_t decay_ms_ = -1;
  uint64_t allocated_ = 0;
  uint64_t allocations_ = 0;
  uint64_t frees_ = 0;
  bool hugepages_active_ = false;
  struct HookState;
  void PurgeArena();  // jemalloc's unused extents back to the page heap
  void PunchFree();   // every free run of the page heap out of the memfd
  std::unique_ptr<PageHeap> heap_;    // outlives the arena (destroyed in ~Region's body)
  std::unique_ptr<HookState> hooks_;
  std::unordered_map<uint64_t, uint64_t> large_;  // offset -> bytes, of the page-heap objects
};

}  // namespace store
