// page_heap.h - the region's pages: best-fit allocation of page runs, with coalescing frees.
//
// Owns: nothing but its own bookkeeping (offsets into a range it never touches). Large objects
// take a run of pages from it directly, so they cost their size rounded up to a page and no
// allocator size class; jemalloc's arena takes its extents (for small objects) from it too, so
// both share the one region and any page freed by one can serve the other.
// Free runs are kept twice: by offset (to merge a freed run with its free neighbours) and by
// (length, offset) (best fit: the smallest run that fits, the lowest of equal ones). Allocate
// and Free are O(log n) in the number of free runs, but for an alignment above the page size,
// which may look at more runs.
// Called by: Region (the server's loop thread, and jemalloc's extent hooks under Region's
// lock). Not thread-safe by itself.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <set>
#include <utility>

namespace store {

class PageHeap {
 public:
  // Manages [0, size) in pages of `page` bytes (a power of two); size is rounded down to a page.
  explicit PageHeap(uint64_t size, uint64_t page = 4096);

  // A run of at least `bytes` (> 0; rounded up to whole pages), whose offset is a multiple of
  // `align` (a power of two; at least a page is used). On success sets *offset and *taken (the
  // bytes the run spans) and returns true; false when no free run can hold it.
  bool Allocate(uint64_t bytes, uint64_t align, uint64_t* offset, uint64_t* taken);
  // The run [offset, offset + bytes) if all of it is free (an extent that grows in place).
  bool AllocateAt(uint64_t offset, uint64_t bytes);
  // Gives back [offset, offset + bytes), page-aligned and allocated (it may span several
  // allocations, or part of one), merging it with its free neighbours.
  // REQUIRES: no byte of it is free already.
  void Free(uint64_t offset, uint64_t bytes);

  uint64_t size() const { return size_; }
  uint64_t page() const { return page_; }
  uint64_t free_bytes() const { return free_; }
  // The longest free run: the largest object that fits now.
  uint64_t largest_free() const { return by_size_.empty() ? 0 : by_size_.rbegin()->first; }
  size_t free_runs() const { return by_offset_.size(); }
  // The length of the free run that ends at `offset`, or that starts there (0 if none).
  uint64_t FreeEndingAt(uint64_t offset) const {
    auto it = by_offset_.lower_bound(offset);
    if (it == by_offset_.begin()) return 0;
    --it;
    return it->first + it->second == offset ? it->second : 0;
  }
  uint64_t FreeStartingAt(uint64_t offset) const {
    auto it = by_offset_.find(offset);
    return it == by_offset_.end() ? 0 : it->second;
  }
  // Calls f(offset, length) for each free run, in offset order.
  template <class F>
  void ForEachFree(F f) const {
    for (const auto& [off, len] : by_offset_) f(off, len);
  }

 private:
  void Insert(uint64_t offset, uint64_t length);
  void Erase(std::map<uint64_t, uint64_t>::iterator it);
  uint64_t RoundUp(uint64_t v) const { return (v + page_ - 1) & ~(page_ - 1); }

  uint64_t size_;
  uint64_t page_;
  uint64_t free_ = 0;
  std::map<uint64_t, uint64_t> by_offset_;            // offset -> length
  std::set<std::pair<uint64_t, uint64_t>> by_size_;   // (length, offset)
};

}  // namespace store
