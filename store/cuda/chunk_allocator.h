// chunk_allocator.h - host-side offset allocator for GPU objects inside CUDA VMM chunks.
//
// Owns: bookkeeping only. It tracks up to max_chunks equally sized chunks and hands out
// (chunk index, offset, size) triples inside them; it never touches a device. The server backs
// each chunk with cuMemCreate (see ../shared/notes/allocator-cuda-fds.md section 2.2), either
// up front through AddChunk() or lazily through the grow callback that Allocate() calls.
// Called by: the server loop only. Not thread-safe: the caller must serialize every call.
//
// Policy: best fit over the free ranges of all chunks (ties go to the lowest chunk, then the
// lowest offset). An object never spans two chunks. Sizes are rounded up to the alignment.
// Free() coalesces with free neighbours. Allocate, Free and the figures are O(log n).
// Expected failures (out of space, device full, bad frees) return false; nothing throws
// except std::bad_alloc from the standard containers.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <tuple>
#include <vector>

namespace store::cuda {

struct Allocation {
  uint32_t chunk = 0;   // index of the chunk, as returned by AddChunk / passed to grow
  uint64_t offset = 0;  // byte offset inside the chunk; a multiple of the alignment
  uint64_t size = 0;    // bytes taken: the requested size rounded up to the alignment
};

class ChunkAllocator {
 public:
  static constexpr uint64_t kDefaultAlignment = 256;  // what cudaMalloc guarantees
  static constexpr uint64_t kMinAlignment = 256;

  // Called by Allocate() with the index the next chunk will get, when no free range fits and
  // fewer than max_chunks chunks exist. Returns true once device memory for that chunk exists,
  // false if it could not be created (device full). Must not call back into the allocator.
  using GrowFn = std::function<bool(uint32_t chunk)>;

  // REQUIRES for a usable allocator (see valid()): alignment is a power of two >= 256,
  // chunk_size is a non-zero multiple of alignment, max_chunks > 0, and
  // chunk_size * max_chunks does not overflow. An empty grow never grows.
  // With invalid arguments the allocator is created unusable: valid() is false and
  // AddChunk/Allocate always fail.
  ChunkAllocator(uint64_t chunk_size, uint32_t max_chunks, GrowFn grow = nullptr,
                 uint64_t alignment = kDefaultAlignment);
  ChunkAllocator(const ChunkAllocator&) = delete;
  ChunkAllocator& operator=(const ChunkAllocator&) = delete;

  bool valid() const { return max_chunks_ > 0; }

  // Registers a new, entirely free chunk (the caller has already created its device memory).
  // Stores its index in *index (may be null). Fails once max_chunks chunks exist.
  bool AddChunk(uint32_t* index = nullptr);

  // Best-fit allocation of size bytes (rounded up to the alignment). If nothing fits and a
  // chunk can still be added, calls grow(next index) and, on success, adds that chunk and
  // allocates from it. Fails, changing nothing, if size is 0 or larger than chunk_size, or if
  // nothing fits and no chunk can be added (max_chunks reached or grow returned false).
  bool Allocate(uint64_t size, Allocation* out);

  // Frees an allocation previously returned by Allocate. Returns false and changes nothing
  // unless a.chunk exists, a.offset is the start of a live allocation there and a.size is the
  // size Allocate returned for it (so double frees are detected too).
  bool Free(const Allocation& a);

  uint64_t chunk_size() const { return chunk_size_; }
  uint32_t max_chunks() const { return max_chunks_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t capacity() const { return chunk_size_ * max_chunks_; }  // chunk_size * max_chunks

  uint32_t chunk_count() const { return static_cast<uint32_t>(chunks_.size()); }
  uint64_t allocation_count() const { return allocation_count_; }
  // Bytes in live allocations (rounded sizes).
  uint64_t used_bytes() const { return used_bytes_; }
  // Free bytes in the chunks added so far (chunk_count * chunk_size - used_bytes).
  uint64_t free_bytes() const { return static_cast<uint64_t>(chunks_.size()) * chunk_size_ - used_bytes_; }
  // The largest free range in any existing chunk: the largest size Allocate can serve
  // without growing. 0 when there are no chunks or all are full.
  uint64_t largest_free() const;
  // Number of free ranges across all chunks (1 per chunk when everything is free).
  uint64_t free_range_count() const { return by_size_.size(); }

 private:
  struct Chunk {
    std::map<uint64_t, uint64_t> free;  // offset -> length, coalesced (no two adjacent)
    std::map<uint64_t, uint64_t> live;  // offset -> size of live allocations
  };
  // (length, chunk, offset): ordered for best fit with deterministic ties.
  using FreeKey = std::tuple<uint64_t, uint32_t, uint64_t>;

  void InsertFree(uint32_t chunk, uint64_t offset, uint64_t length);
  void EraseFree(uint32_t chunk, std::map<uint64_t, uint64_t>::iterator it);
  void Carve(const FreeKey& key, uint64_t size, Allocation* out);

  const uint64_t chunk_size_;
  const uint32_t max_chunks_;  // 0 when the constructor arguments were invalid
  const uint64_t alignment_;
  const GrowFn grow_;

  std::vector<Chunk> chunks_;
  std::set<FreeKey> by_size_;
  uint64_t used_bytes_ = 0;
  uint64_t allocation_count_ = 0;
};

}  // namespace store::cuda
