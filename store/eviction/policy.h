// policy.h - which objects to spill, and how much.
//
// The spiller keeps memory use between two water marks: when use crosses the high mark (after a
// seal) it spills down to the low mark, and when a create or a restore does not fit it spills at
// least what that request needs. Victims come from the object table's eviction order: lowest
// importance first, then least recently used, among sealed objects that nobody reads or pins
// (ObjectTable::ForEachEvictable keeps that order in a balanced tree, O(log n) per change).
// An object that still has a copy on disk (it was restored) is dropped from memory without
// writing anything; the others are written together into one fused spill file, up to the
// file's size and object limits.
// Without a spill directory, a store started with --when-full drop deletes instead: when a create
// does not fit, ChooseDrops takes victims in the same order (leased objects are not in it) until they
// and the free memory cover it, or none at all when every candidate together would not.
// Called by: the server loop thread. Pure functions: no IO, no clock.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "objects/object_table.h"

namespace store {

struct SpillPolicy {
  double high = 0.8;                   // --spill-high, fraction of capacity
  double low = 0.6;                    // --spill-low
  uint64_t max_file_bytes = 256u << 20;  // --spill-file-max-size
  uint32_t max_file_objects = 2000;    // --spill-file-max-objects
};

struct SpillBatch {
  std::vector<Object*> write;  // to write into one new spill file
  std::vector<Object*> drop;   // already on disk: free their memory, nothing to write
  uint64_t bytes = 0;          // memory all of them free
};

// Bytes to free now: enough to bring `used` down to the low mark once it is over the high
// mark, and at least `need_now` beyond what is free, less what spills in flight will free.
uint64_t BytesToFree(uint64_t used, uint64_t capacity, const SpillPolicy& p, uint64_t need_now,
                     uint64_t in_flight);

// Victims in eviction order until `bytes` are covered or one file is full. With drops_only,
// only objects that still have a copy on disk (nothing to write).
SpillBatch ChooseVictims(const ObjectTable& table, uint64_t bytes, const SpillPolicy& p,
                         bool drops_only = false);

// Objects to delete, in eviction order, until `free_now` bytes plus their memory cover `need`;
// keep(o) true means o must stay (keep may be empty: every object in the order may go; the
// server's drop mode keeps leased objects out of the order instead). Empty when all the
// candidates would not cover it.
std::vector<Object*> ChooseDrops(const ObjectTable& table, uint64_t free_now, uint64_t need,
                                 const std::function<bool(const Object*)>& keep);

}  // namespace store
