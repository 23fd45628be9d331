#include "memory/page_heap.h"

#include <algorithm>

namespace store {

PageHeap::PageHeap(uint64_t size, uint64_t page) : size_(size & ~(page - 1)), page_(page) {
  if (size_ > 0) Insert(0, size_);
}

void PageHeap::Insert(uint64_t offset, uint64_t length) {
  by_offset_.emplace(offset, length);
  by_size_.emplace(length, offset);
  free_ += length;
}

void PageHeap::Erase(std::map<uint64_t, uint64_t>::iterator it) {
  by_size_.erase({it->second, it->first});
  free_ -= it->second;
  by_offset_.erase(it);
}

bool PageHeap::Allocate(uint64_t bytes, uint64_t align, uint64_t* offset, uint64_t* taken) {
  if (bytes == 0 || bytes > size_) return false;
  const uint64_t need = RoundUp(bytes);
  align = std::max(align, page_);
  if ((align & (align - 1)) != 0) return false;
  // The smallest free run that can hold it, aligned; runs shorter than need cannot.
  for (auto it = by_size_.lower_bound({need, 0}); it != by_size_.end(); ++it) {
    const uint64_t start = it->second, length = it->first;
    const uint64_t at = (start + align - 1) & ~(align - 1);
    if (at - start > length || length - (at - start) < need) continue;
    auto run = by_offset_.find(start);
    Erase(run);
    if (at > start) Insert(start, at - start);
    if (start + length > at + need) Insert(at + need, start + length - (at + need));
    *offset = at;
    *taken = need;
    return true;
  }
  return false;
}

bool PageHeap::AllocateAt(uint64_t offset, uint64_t bytes) {
  if (bytes == 0 || offset % page_ != 0 || offset > size_ || bytes > size_ - offset) return false;
  const uint64_t need = RoundUp(bytes);
  auto it = by_offset_.upper_bound(offset);
  if (it == by_offset_.begin()) return false;
  --it;  // the free run starting at or before offset
  const uint64_t start = it->first, length = it->second;
  if (offset + need > start + length) return false;
  Erase(it);
  if (offset > start) Insert(start, offset - start);
  if (start + length > offset + need) Insert(offset + need, start + length - (offset + need));
  return true;
}

void PageHeap::Free(uint64_t offset, uint64_t bytes) {
  if (bytes == 0) return;
  uint64_t start = offset, end = offset + RoundUp(bytes);
  // Merge with the free run that ends where this begins, and the one that begins where it ends.
  auto next = by_offset_.lower_bound(start);
  if (next != by_offset_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == start) {
      start = prev->first;
      Erase(prev);
    }
  }
  next = by_offset_.lower_bound(end);
  if (next != by_offset_.end() && next->first == end) {
    end += next->second;
    Erase(next);
  }
  Insert(start, end - start);
}

}  // namespace store
