// object_table.h - every object the server knows: id -> entry, and the figures kept about them.
//
// Owns: the Object entries. Two indexes: by id (visible objects only) and by uid (every live
// instance, deleted-but-still-read ones included; uids are never reused, so a client's reader
// of a deleted object can never be confused with a new object of the same id).
// Called by: the server loop only (single-threaded, no locks).
// Every change of state, readers or pins goes through a method here so that the counters
// behind stats() stay exact without walking the table.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <vector>

#include "keyed_hash.h"

#if defined(__SANITIZE_ADDRESS__)
#define STORE_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define STORE_ASAN 1
#endif
#endif
#ifndef STORE_ASAN
#define STORE_ASAN 0
#endif
#if STORE_ASAN
#include <sanitizer/asan_interface.h>
#endif

namespace store {

struct SpillFile;  // owned by the server's spiller; objects only point at it

struct ObjectKey {
  uint8_t bytes[20];
  bool operator==(const ObjectKey& o) const { return std::memcmp(bytes, o.bytes, 20) == 0; }
};

// Keyed (keyed_hash.h): a client chooses ids, and must not be able to choose ids that collide.
struct ObjectKeyHash {
  size_t operator()(const ObjectKey& k) const {
    return static_cast<size_t>(SipHash13(ProcessHashKey(), k.bytes, sizeof k.bytes));
  }
};

enum class ObjectState : uint8_t {
  kCreated = 1,
  kSealed = 2,
  kSpilling = 3,
  kSpilled = 4,
  kRestoring = 5,
};

// The server keeps one of these per object, so its size is the server's memory per object
// (144 bytes; the fields are ordered so that none needs padding). The region and an object's
// offset in it are not kept: a server has one region, and the offset follows from `data`.
struct Object {
  ObjectKey id;
  ObjectState state = ObjectState::kCreated;
  bool deleted = false;         // unlinked from the id index; freed when readers reach 0
  int8_t restore_error = 0;     // why the last restore failed (a STORE_E* code; 0 = it did not)
  // Leased in a store that drops (--when-full drop): never a victim, so out of the eviction
  // order, which a drop then never walks past it (set and cleared by the server, via Mutate).
  bool lease_kept = false;
  uint64_t data_size = 0;       // next to the id: a page of objects sorted by size reads both
  uint64_t uid = 0;
  uint8_t* data = nullptr;      // in the region; metadata follows at data + data_size
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
  uint32_t dense_index = 0;     // position in the table's uid order of visible objects
  // Links of the table's eviction order (a treap of the evictable objects): slots of the
  // table's ObjectPool, kNoSlot for none; the table's own.
  uint32_t evict_left = kNoSlot;
  uint32_t evict_right = kNoSlot;
  // A copy on disk, if any: a record of a spill file. Kept after a restore, so evicting the
  // object again writes nothing. The record's size is not kept: it is always the 16-byte
  // header plus metadata and data (the writer writes it so; reading an index checks it).
  SpillFile* spill_file = nullptr;
  // GPU objects (device >= 0): the data is in chunk gpu_chunk of that device at gpu_offset;
  // `data` then points at the metadata in the host region (nullptr without metadata).
  // GPU objects are never spilled, so these share storage with the spill record's fields.
  union {
    uint64_t spill_offset = 0;
    uint64_t gpu_offset;        // device bytes taken: data_size rounded up to 256
  };
  union {
    uint64_t spill_checksum = 0;
    uint32_t gpu_chunk;
  };

  static constexpr uint32_t kNoSlot = UINT32_MAX;
  uint64_t spill_size() const { return 16 + metadata_size + data_size; }
  bool on_gpu() const { return device >= 0; }
  bool in_memory() const { return data != nullptr || on_gpu(); }
  // Host bytes it accounts for: its allocation in memory, else its size on disk. A GPU
  // object's device memory is counted per device, not here.
  uint64_t bytes() const {
    return alloc_size || on_gpu() ? alloc_size : data_size + metadata_size;
  }
  // May the spiller (or a drop) take it? Sealed, in host memory, not read, not pinned, not
  // deleted, not kept by a lease.
  bool evictable() const {
    return !deleted && state == ObjectState::kSealed && readers == 0 && pins == 0 &&
           !lease_kept && data != nullptr && !on_gpu();
  }
};

// Every byte here is a megabyte per million objects: a new field goes where it fills padding.
static_assert(sizeof(void*) != 8 || sizeof(Object) == 144, "the object entry changed size");

struct TableCounters {
  uint64_t objects = 0;          // visible objects (id index size)
  uint64_t created_count = 0, created_bytes = 0;
  uint64_t sealed_count = 0, sealed_bytes = 0;        // sealed and in memory
  uint64_t spilling_count = 0, spilling_bytes = 0;
  uint64_t spilled_count = 0, spilled_bytes = 0;      // only on disk (bytes = size on disk)
  uint64_t restoring_count = 0, restoring_bytes = 0;
  uint64_t evictable_count = 0, evictable_bytes = 0;  // what the spiller may take now
  uint64_t pinned_count = 0, pinned_bytes = 0;
  uint64_t lease_kept_count = 0, lease_kept_bytes = 0;  // not deleted
  uint64_t open_count = 0, open_bytes = 0;
  uint64_t deleted_pending_count = 0, deleted_pending_bytes = 0;
};

// An open-addressing hash set of Object pointers (linear probing, backward-shift deletion, at
// most 3/4 full): 8 bytes per slot instead of a node per entry. KeyOf gives an object's key,
// Hash hashes a key.
template <class Key, class KeyOf, class Hash>
class ObjectIndex {
 public:
  Object* Find(const Key& k) const {
    if (slots_.empty()) return nullptr;
    for (size_t i = Home(k);; i = (i + 1) & mask_) {
      Object* o = slots_[i];
      if (o == nullptr) return nullptr;
      if (KeyOf()(o) == k) return o;
    }
  }
  // REQUIRES: no object with o's key is in the index.
  void Insert(Object* o) {
    if ((size_ + 1) * 4 > slots_.size() * 3) Grow();
    size_t i = Home(KeyOf()(o));
    while (slots_[i] != nullptr) i = (i + 1) & mask_;
    slots_[i] = o;
    size_++;
  }
  // Removes o if it is in the index.
  void Erase(Object* o) {
    if (slots_.empty()) return;
    size_t i = Home(KeyOf()(o));
    while (slots_[i] != o) {
      if (slots_[i] == nullptr) return;
      i = (i + 1) & mask_;
    }
    // Shift back the entries after the hole that may not stay behind it.
    for (size_t j = (i + 1) & mask_; slots_[j] != nullptr; j = (j + 1) & mask_) {
      size_t home = Home(KeyOf()(slots_[j]));
      // Move slots_[j] into the hole at i unless its home lies cyclically in (i, j].
      bool stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
      if (!stays) {
        slots_[i] = slots_[j];
        i = j;
      }
    }
    slots_[i] = nullptr;
    size_--;
  }
  size_t size() const { return size_; }
  template <class F>
  void ForEach(F f) const {
    for (Object* o : slots_) {
      if (o != nullptr) f(o);
    }
  }
  size_t capacity_bytes() const { return slots_.capacity() * sizeof(Object*); }

 private:
  // The key's home slot: the hash's low bits (both hashes are SipHash, uniform in every bit).
  size_t Home(const Key& k) const { return static_cast<size_t>(Hash()(k)) & mask_; }
  void Grow() {
    std::vector<Object*> old;
    old.swap(slots_);
    slots_.assign(old.empty() ? 16 : old.size() * 2, nullptr);
    mask_ = slots_.size() - 1;
    size_ = 0;
    for (Object* o : old) {
      if (o != nullptr) Insert(o);
    }
  }
  std::vector<Object*> slots_;
  size_t mask_ = 0;
  size_t size_ = 0;
};

// Stable storage for Objects: chunks of kChunk entries, freed entries reused (a free entry holds
// the next free one). An Object's address never changes while it lives, and neither does its
// slot, a 32-bit number for it (links between objects are slots: half a pointer). Chunks are
// kept until the pool is destroyed; the pool runs no destructors then: its owner destroys the
// live objects.
class ObjectPool {
 public:
  ObjectPool() = default;
  ObjectPool(const ObjectPool&) = delete;
  ObjectPool& operator=(const ObjectPool&) = delete;
  Object* New(const Object& proto) {
    if (free_ == nullptr) AddChunk();
    FreeEntry* f = free_;
    free_ = f->next;
    Unpoison(f);
    return new (f) Object(proto);
  }
  void Delete(Object* o) {
    o->~Object();
    free_ = new (o) FreeEntry{free_};
    Poison(o);
  }
  // REQUIRES: slot is the slot of a live object.
  Object* At(uint32_t slot) const {
    return reinterpret_cast<Object*>(chunks_[slot / kChunk].get() + (slot % kChunk) * kStride);
  }
  // REQUIRES: o is a live object of this pool. O(log chunks): a search of the chunks by address.
  uint32_t SlotOf(const Object* o) const {
    const auto* p = reinterpret_cast<const unsigned char*>(o);
    auto it = std::upper_bound(by_address_.begin(), by_address_.end(), p,
                               [](const unsigned char* x, const ChunkAt& c) { return x < c.base; });
    --it;
    return it->number * static_cast<uint32_t>(kChunk) +
           static_cast<uint32_t>(static_cast<size_t>(p - it->base) / kStride);
  }

 private:
  static constexpr size_t kChunk = 4096;
  static constexpr size_t kStride = sizeof(Object);
  // Under AddressSanitizer a freed entry (but for its free-list link) is poisoned, so that a
  // read through a pointer to an object already deleted is reported, as for heap memory; the
  // pool's own reuse would hide it otherwise. Nothing in other builds.
  static void Poison(void* entry) {
#if STORE_ASAN
    __asan_poison_memory_region(static_cast<char*>(entry) + sizeof(FreeEntry),
                                kStride - sizeof(FreeEntry));
#else
    (void)entry;
#endif
  }
  static void Unpoison(void* entry) {
#if STORE_ASAN
    __asan_unpoison_memory_region(entry, kStride);
#else
    (void)entry;
#endif
  }
  struct FreeEntry {
    FreeEntry* next;
  };
  static_assert(sizeof(Object) >= sizeof(FreeEntry) && alignof(Object) >= alignof(FreeEntry));
  struct ChunkAt {
    const unsigned char* base;
    uint32_t number;  // index in chunks_
  };
  void AddChunk();
  std::vector<std::unique_ptr<unsigned char[]>> chunks_;
  std::vector<ChunkAt> by_address_;  // the chunks sorted by address
  FreeEntry* free_ = nullptr;
};

class ObjectTable {
 public:
  ObjectTable() = default;
  ObjectTable(const ObjectTable&) = delete;
  ObjectTable& operator=(const ObjectTable&) = delete;
  ~ObjectTable() {
    by_uid_.ForEach([](Object* o) { o->~Object(); });
  }
  // The visible object with this id, or nullptr.
  Object* Find(const ObjectKey& id) const { return by_id_.Find(id); }
  // Any live instance with this uid (deleted ones included), or nullptr.
  Object* FindUid(uint64_t uid) const { return by_uid_.Find(uid); }
  // Adds a CREATED object. REQUIRES: Find(o.id) == nullptr. Assigns o.uid.
  Object* Insert(const Object& o);
  // CREATED -> SEALED.
  void Seal(Object* o);
  // One more reader or pin; false (nothing changed) when o holds the most a count can hold.
  bool AddReader(Object* o);
  void RemoveReader(Object* o, uint32_t n = 1);  // REQUIRES: o holds n readers
  bool AddPin(Object* o);
  void RemovePin(Object* o, uint32_t n = 1);  // REQUIRES: o holds n pins
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
    std::vector<Object*> stack;  // in-order walk of the treap
    Object* n = Node(evict_root_);
    while (n != nullptr || !stack.empty()) {
      while (n != nullptr) {
        stack.push_back(n);
        n = Node(n->evict_left);
      }
      n = stack.back();
      stack.pop_back();
      if (!f(n)) return;
      n = Node(n->evict_right);
    }
  }
  // The height of the eviction order's tree (0 when empty): what a change of it or the first
  // step of ForEachEvictable costs. O(n); for tests.
  size_t EvictHeight() const;
  // Removes o entirely and destroys it. The caller frees its memory first.
  void Erase(Object* o);

  const TableCounters& counters() const { return c_; }
  // Objects put in the eviction order so far (also each time one in it changed).
  uint64_t evictable_joins() const { return evictable_joins_; }
  size_t visible() const { return by_id_.size(); }
  size_t instances() const { return by_uid_.size(); }
  template <class F>
  void ForEachVisible(F f) const {
    for (uintptr_t e : order_) {  // a flat array: cheap to walk even with millions
      if (!(e & 1)) f(*reinterpret_cast<const Object*>(e));
    }
  }
  // The visible objects whose uid is in (after, upto], in uid order (the order they were
  // created in), until f returns false. O(log n) to find the first, then O(1) each (amortized:
  // the gaps left by deleted objects are at most as many as the objects). A walk resumed from
  // the last uid it saw lists each object that stayed visible exactly once, and none created
  // after upto was the newest uid: a store_list pages through the table with no copy of it.
  template <class F>
  void ForEachVisibleBetween(uint64_t after, uint64_t upto, F f) const {
    auto it = std::partition_point(order_.begin(), order_.end(),
                                   [&](uintptr_t e) { return UidAt(e) <= after; });
    for (; it != order_.end(); ++it) {
      if (UidAt(*it) > upto) return;
      if (!(*it & 1) && !f(*reinterpret_cast<const Object*>(*it))) return;
    }
  }
  // The uid of the newest object (0 before the first).
  uint64_t last_uid() const { return next_uid_ - 1; }

 private:
  void CountState(Object* o, int sign);
  // The eviction order: lowest importance, then least recent access, then uid. A treap whose
  // links live in the objects (no node of its own) and whose heap priority is a keyed hash of
  // the uid: O(log n) expected per insert or erase, whatever order a client uses objects in.
  // An object's key fields must not change while it is in the treap (Mutate takes it out).
  static bool EvictLess(const Object* a, const Object* b) {
    if (a->importance != b->importance) return a->importance < b->importance;
    if (a->access_ns != b->access_ns) return a->access_ns < b->access_ns;
    return a->uid < b->uid;
  }
  // The treap's heap priority: keyed (keyed_hash.h), as uids are in every reply and a client
  // that uses objects in the order of predictable priorities makes the tree a list. Not the
  // uid index's hash (the uid is complemented first).
  static uint64_t EvictPriority(const Object* o) { return SipHash13(ProcessHashKey(), ~o->uid); }
  Object* Node(uint32_t slot) const { return slot == Object::kNoSlot ? nullptr : pool_.At(slot); }
  uint32_t EvictInsert(uint32_t root, Object* o);
  uint32_t EvictErase(uint32_t root, Object* o);
  void EvictSplit(uint32_t root, const Object* key, uint32_t* left, uint32_t* right);
  uint32_t EvictMerge(uint32_t left, uint32_t right);
  uint32_t evict_root_ = Object::kNoSlot;
  void DenseAdd(Object* o);
  void DenseRemove(Object* o);
  struct IdOf {
    const ObjectKey& operator()(const Object* o) const { return o->id; }
  };
  struct UidOf {
    uint64_t operator()(const Object* o) const { return o->uid; }
  };
  // Keyed too: uids are in every reply, and a client that keeps only the objects whose uids
  // share a slot would otherwise make one long run of the index.
  struct UidHash {
    size_t operator()(uint64_t uid) const {
      return static_cast<size_t>(SipHash13(ProcessHashKey(), uid));
    }
  };
  ObjectPool pool_;  // declared first: destroyed after the indexes
  ObjectIndex<ObjectKey, IdOf, ObjectKeyHash> by_id_;
  // The visible objects in uid order: an Object* each, or where one left (deleted), its uid
  // tagged (uid << 1 | 1; pointers are even) until the gaps are as many as the objects and
  // CompactOrder closes them. Objects are created with ever larger uids, so appending keeps the
  // order. 8 bytes per object.
  std::vector<uintptr_t> order_;
  size_t order_gaps_ = 0;
  static uint64_t UidAt(uintptr_t e) {
    return (e & 1) ? static_cast<uint64_t>(e >> 1) : reinterpret_cast<const Object*>(e)->uid;
  }
  void CompactOrder();
  ObjectIndex<uint64_t, UidOf, UidHash> by_uid_;  // every live instance; owns them (in pool_)
  uint64_t next_uid_ = 1;
  TableCounters c_;
  uint64_t evictable_joins_ = 0;
};

}  // namespace store
