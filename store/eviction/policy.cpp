#include "eviction/policy.h"

#include <algorithm>

namespace store {

uint64_t BytesToFree(uint64_t used, uint64_t capacity, const SpillPolicy& p, uint64_t need_now,
                     uint64_t in_flight) {
  uint64_t want = 0;
  auto high = static_cast<uint64_t>(p.high * static_cast<double>(capacity));
  auto low = static_cast<uint64_t>(p.low * static_cast<double>(capacity));
  if (used > high) want = used - low;
  if (need_now > 0) {
    uint64_t free_now = capacity > used ? capacity - used : 0;
    if (need_now > free_now) want = std::max(want, need_now - free_now);
  }
  return want > in_flight ? want - in_flight : 0;
}

SpillBatch ChooseVictims(const ObjectTable& table, uint64_t bytes, const SpillPolicy& p,
                         bool drops_only) {
  SpillBatch b;
  uint64_t file_bytes = 0;
  table.ForEachEvictable([&](Object* o) {
    if (b.bytes >= bytes) return false;
    if (o->spill_file) {
      b.drop.push_back(o);
      b.bytes += o->alloc_size;
      return true;
    }
    if (drops_only) return true;
    uint64_t record = 16 + o->data_size + o->metadata_size;
    if (!b.write.empty() &&
        (b.write.size() >= p.max_file_objects || file_bytes + record > p.max_file_bytes)) {
      return false;  // the file is full; the next batch takes the rest
    }
    b.write.push_back(o);
    file_bytes += record;
    b.bytes += o->alloc_size;
    return true;
  });
  return b;
}

std::vector<Object*> ChooseDrops(const ObjectTable& table, uint64_t free_now, uint64_t need,
                                 const std::function<bool(const Object*)>& keep) {
  std::vector<Object*> victims;
  uint64_t room = free_now;
  if (room >= need) return victims;
  // Every candidate is evictable: when even all of those would not do, walk nothing.
  if (room + table.counters().evictable_bytes < need) return victims;
  table.ForEachEvictable([&](Object* o) {
    if (keep && keep(o)) return true;
    victims.push_back(o);
    room += o->alloc_size;
    return room < need;
  });
  if (room < need) victims.clear();
  return victims;
}

}  // namespace store
