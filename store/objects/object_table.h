// object_table.h - every object the server knows: id -> entry, and the figures kept about them.
//
// Owns: the Object entries. Two indexes: by id (visible objects only) and by uid (every live
// instance, deleted-but-still-read ones included; uids are never reused, so a client's reader
// of a deleted object can never be confused with a new object of the same id).
// Called by: the server loop only (single-threaded, no locks).
// Every change of state, readers or pins goes through a method here so that the counters
// behind stats() stay exact without walking the table.
#pragma once

#include <cstdint>
#include <cstring>
#include <memory>
#include <set>
#include <unordered_map>
#include <vector>

namespace store {

struct SpillFile;  // owned by the server's spiller; objects only point at it

struct ObjectKey {
  uint8_t bytes[20];
  bool operator==(const ObjectKey& o) const { return std::memcmp(bytes, o.bytes, 20) == 0; }
};

struct ObjectKeyHash {
  size_t operator()(const ObjectKey& k) const {
    uint64_t a, b;
    uint32_t c;
    std::memcpy(&a, k.bytes, 8);
    std::memcpy(&b, k.bytes + 8, 8);
    std::memcpy(&c, k.bytes + 16, 4);
    uint64_t h = a * 0x9E3779B97F4A7C15ull;
    h ^= (b + 0x632BE59BD9B4E019ull + (h << 6) + (h >> 2));
    h ^= (uint64_t{c} * 0xC2B2AE3D27D4EB4Full) + (h << 6) + (h >> 2);
    h ^= h >> 29;
    return static_cast<size_t>(h);
  }
};

enum class ObjectState : uint8_t {
  kCreated = 1,
  kSealed = 2,
  kSpilling = 3,
  kSpilled = 4,
  kRestoring = 5,
};

struct Object {
  ObjectKey id;
  uint64_t uid = 0;
  uint8_t* data = nullptr;      // in the region; metadata follows at data + data_size
  uint64_t offset = 0;          // data - region base
  uint64_t region_id = 0;
  uint64_t data_size = 0;
  uint64_t metadata_size = 0;
  uint64_t alloc_size = 0;      // bytes the allocator took (counted as used)
  uint64_t creator = 0;         // client id
  int64_t create_ns = 0;
  int64_t access_ns = 0;
  int32_t importance = 0;
  int32_t device = -1;
  int32_t creator_pid = 0;
  uint32_t readers = 0;         // open readers over all clients
  uint32_t pins = 0;            // pins over all clients
  ObjectState state = ObjectState::kCreated;
  bool deleted = false;         // unlinked from the id index; freed when readers reach 0
  // A copy on disk, if any: a record of a spill file. Kept after a restore, so evicting the
  // object again writes nothing.
  SpillFile* spill_file = nullptr;
  uint64_t spill_offset = 0;
  uint64_t spill_size = 0;
  uint64_t spill_checksum = 0;
  int restore_error = 0;        // why the last restore failed (0 = it did not)
  uint32_t dense_index = 0;     // position in the table's list of visible objects
  // GPU objects (device >= 0): the data is in chunk gpu_chunk of that device at gpu_offset;
  // `data` then points at the metadata in the host region (nullptr without metadata).
  uint32_t gpu_chunk = 0;
  uint64_t gpu_offset = 0;
  uint64_t gpu_size = 0;        // device bytes taken (0 once freed)

  bool on_gpu() const { return device >= 0; }
  bool in_memory() const { return data != nullptr || on_gpu(); }
  // Host bytes it accounts for: its allocation in memory, else its size on disk. A GPU
  // object's device memory is counted per device, not here.
  uint64_t bytes() const {
    return alloc_size || on_gpu() ? alloc_size : data_size + metadata_size;
  }
  // May the spiller take it? Sealed, in host memory, not read, not pinned, not deleted.
  bool evictable() const {
    return !deleted && state == ObjectState::kSealed && readers == 0 && pins == 0 &&
           data != nullptr && !on_gpu();
  }
};

struct TableCounters {
  uint64_t objects = 0;          // visible objects (id index size)
  uint64_t created_count = 0, created_bytes = 0;
  uint64_t sealed_count = 0, sealed_bytes = 0;        // sealed and in memory
  uint64_t spilling_count = 0, spilling_bytes = 0;
  uint64_t spilled_count = 0, spilled_bytes = 0;      // only on disk (bytes = size on disk)
  uint64_t restoring_count = 0, restoring_bytes = 0;
  uint64_t evictable_count = 0, evictable_bytes = 0;  // what the spiller may take now
  uint64_t pinned_count = 0, pinned_bytes = 0;
  uint64_t open_count = 0, open_bytes = 0;
  uint64_t deleted_pending_count = 0, deleted_pending_bytes = 0;
};

class ObjectTable {
 public:
  // The visible object with this id, or nullptr.
  Object* Find(const ObjectKey& id) const {
    auto it = by_id_.find(id);
    return it == by_id_.end() ? nullptr : it->second;
  }
  // Any live instance with this uid (deleted ones included), or nullptr.
  Object* FindUid(uint64_t uid) const {
    auto it = by_uid_.find(uid);
    return it == by_uid_.end() ? nullptr : it->second.get();
  }
  // Adds a CREATED object. REQUIRES: Find(o.id) == nullptr. Assigns o.uid.
  Object* Insert(const Object& o);
  // CREATED -> SEALED.
  void Seal(Object* o);
  void AddReader(Object* o);
  void RemoveReader(Object* o);
  void AddPin(Object* o);
  void RemovePin(Object* o);
  // Removes o from the id index (unlink); it stays findable by uid until Erase.
  void Unlink(Object* o);
  // Any other change to an object's state, importance, access time, memory or spill copy goes
  // through Mutate, so the counters and the eviction order follow it.
  template <class F>
  void Mutate(Object* o, F f) {
    CountState(o, -1);
    f(o);
    CountState(o, +1);
  }

  // Evictable objects in eviction order: lowest importance first, then least recently used.
  // O(log n) to keep up to date; iterate with ForEachEvictable until f returns false.
  template <class F>
  void ForEachEvictable(F f) const {
    for (const EvictKey& k : evictable_) {
      if (!f(k.object)) return;
    }
  }
  // Removes o entirely and destroys it. The caller frees its memory first.
  void Erase(Object* o);

  const TableCounters& counters() const { return c_; }
  size_t visible() const { return by_id_.size(); }
  size_t instances() const { return by_uid_.size(); }
  template <class F>
  void ForEachVisible(F f) const {
    for (Object* o : dense_) f(*o);  // a flat array: cheap to walk even with millions
  }

 private:
  void CountState(Object* o, int sign);
  struct EvictKey {
    int32_t importance;
    int64_t access_ns;
    uint64_t uid;
    Object* object;
    bool operator<(const EvictKey& k) const {
      if (importance != k.importance) return importance < k.importance;
      if (access_ns != k.access_ns) return access_ns < k.access_ns;
      return uid < k.uid;
    }
  };
  std::set<EvictKey> evictable_;
  void DenseAdd(Object* o);
  void DenseRemove(Object* o);
  std::unordered_map<ObjectKey, Object*, ObjectKeyHash> by_id_;
  std::vector<Object*> dense_;  // the visible objects, in no particular order
  std::unordered_map<uint64_t, std::unique_ptr<Object>> by_uid_;
  uint64_t next_uid_ = 1;
  TableCounters c_;
};

}  // namespace store
