// chunk_allocator.cpp - see chunk_allocator.h.
#include "cuda/chunk_allocator.h"

#include <iterator>
#include <limits>
#include <utility>

namespace store::cuda {

namespace {

bool ValidArguments(uint64_t chunk_size, uint32_t max_chunks, uint64_t alignment) {
  if (alignment < ChunkAllocator::kMinAlignment || (alignment & (alignment - 1)) != 0) return false;
  if (chunk_size == 0 || chunk_size % alignment != 0) return false;
  if (max_chunks == 0) return false;
  return chunk_size <= std::numeric_limits<uint64_t>::max() / max_chunks;
}

}  // namespace

ChunkAllocator::ChunkAllocator(uint64_t chunk_size, uint32_t max_chunks, GrowFn grow, uint64_t alignment)
    : chunk_size_(chunk_size),
      max_chunks_(ValidArguments(chunk_size, max_chunks, alignment) ? max_chunks : 0),
      alignment_(alignment),
      grow_(std::move(grow)) {}

uint64_t ChunkAllocator::largest_free() const {
  return by_size_.empty() ? 0 : std::get<0>(*by_size_.rbegin());
}

void ChunkAllocator::InsertFree(uint32_t chunk, uint64_t offset, uint64_t length) {
  chunks_[chunk].free.emplace(offset, length);
  by_size_.emplace(length, chunk, offset);
}

void ChunkAllocator::EraseFree(uint32_t chunk, std::map<uint64_t, uint64_t>::iterator it) {
  by_size_.erase(FreeKey{it->second, chunk, it->first});
  chunks_[chunk].free.erase(it);
}

bool ChunkAllocator::AddChunk(uint32_t* index) {
  if (chunks_.size() >= max_chunks_) return false;
  const auto chunk = static_cast<uint32_t>(chunks_.size());
  chunks_.emplace_back();
  InsertFree(chunk, 0, chunk_size_);
  if (index != nullptr) *index = chunk;
  return true;
}

void ChunkAllocator::Carve(const FreeKey& key, uint64_t size, Allocation* out) {
  const auto [length, chunk, offset] = key;
  Chunk& c = chunks_[chunk];
  EraseFree(chunk, c.free.find(offset));
  if (length > size) InsertFree(chunk, offset + size, length - size);
  c.live.emplace(offset, size);
  used_bytes_ += size;
  ++allocation_count_;
  *out = Allocation{chunk, offset, size};
}

bool ChunkAllocator::Allocate(uint64_t size, Allocation* out) {
  if (out == nullptr || !valid() || size == 0 || size > chunk_size_) return false;
  // chunk_size_ is a multiple of alignment_, so this neither overflows nor exceeds it.
  const uint64_t rounded = (size + alignment_ - 1) & ~(alignment_ - 1);

  auto it = by_size_.lower_bound(FreeKey{rounded, 0, 0});
  if (it != by_size_.end()) {
    Carve(*it, rounded, out);
    return true;
  }
  if (chunks_.size() >= max_chunks_ || !grow_) return false;
  const auto next = static_cast<uint32_t>(chunks_.size());
  if (!grow_(next)) return false;  // device full: nothing changed
  uint32_t added = 0;
  AddChunk(&added);
  Carve(FreeKey{chunk_size_, added, 0}, rounded, out);
  return true;
}

bool ChunkAllocator::Free(const Allocation& a) {
  if (a.chunk >= chunks_.size()) return false;
  Chunk& c = chunks_[a.chunk];
  auto live = c.live.find(a.offset);
  if (live == c.live.end() || live->second != a.size) return false;
  c.live.erase(live);
  used_bytes_ -= a.size;
  --allocation_count_;

  uint64_t start = a.offset;
  uint64_t length = a.size;
  auto next = c.free.lower_bound(a.offset);  // first free range after the object
  if (next != c.free.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == start) {
      start = prev->first;
      length += prev->second;
      EraseFree(a.chunk, prev);
    }
  }
  if (next != c.free.end() && next->first == a.offset + a.size) {
    length += next->second;
    EraseFree(a.chunk, next);
  }
  InsertFree(a.chunk, start, length);
  return true;
}

}  // namespace store::cuda
