// test_eviction.cpp - the eviction order kept by the object table, and the spill policy.
#include <doctest.h>

#include <algorithm>
#include <random>
#include <set>
#include <vector>

#include "eviction/policy.h"
#include "objects/object_table.h"

using store::BytesToFree;
using store::ChooseDrops;
using store::ChooseVictims;
using store::Object;
using store::ObjectKey;
using store::ObjectState;
using store::ObjectTable;
using store::SpillPolicy;

namespace {

uint8_t g_memory[1];  // objects only need a non-null data pointer to count as in memory

ObjectKey Key(uint32_t i) {
  ObjectKey k{};
  for (int b = 0; b < 4; b++) k.bytes[b] = static_cast<uint8_t>(i >> (8 * b));
  return k;
}

// A sealed, in-memory object of `size` bytes.
Object* Add(ObjectTable& t, uint32_t i, uint64_t size, int32_t importance, int64_t access) {
  Object p;
  p.id = Key(i);
  p.data = g_memory;
  p.data_size = size;
  p.alloc_size = size;
  p.importance = importance;
  p.access_ns = access;
  Object* o = t.Insert(p);
  t.Seal(o);
  return o;
}

std::vector<Object*> Order(const ObjectTable& t) {
  std::vector<Object*> v;
  t.ForEachEvictable([&](Object* o) {
    v.push_back(o);
    return true;
  });
  return v;
}

}  // namespace

TEST_CASE("eviction order: importance first, then least recently used") {
  ObjectTable t;
  Object* a = Add(t, 1, 100, 5, 10);
  Object* b = Add(t, 2, 100, 0, 30);
  Object* c = Add(t, 3, 100, 0, 20);
  Object* d = Add(t, 4, 100, 9, 1);
  CHECK(Order(t) == std::vector<Object*>{c, b, a, d});
  CHECK(t.counters().evictable_count == 4);
  CHECK(t.counters().evictable_bytes == 400);

  // A reader or a pin takes it out; dropping them puts it back in its place.
  t.AddReader(c);
  CHECK(Order(t) == std::vector<Object*>{b, a, d});
  t.RemoveReader(c);
  t.AddPin(b);
  CHECK(Order(t) == std::vector<Object*>{c, a, d});
  t.RemovePin(b);
  CHECK(Order(t) == std::vector<Object*>{c, b, a, d});

  // A new access moves it back; a new importance moves it.
  t.Mutate(c, [](Object* o) { o->access_ns = 40; });
  CHECK(Order(t) == std::vector<Object*>{b, c, a, d});
  t.Mutate(d, [](Object* o) { o->importance = -1; });
  CHECK(Order(t) == std::vector<Object*>{d, b, c, a});

  // Spilled objects, unsealed ones and deleted ones are not candidates.
  t.Mutate(d, [](Object* o) {
    o->data = nullptr;
    o->state = ObjectState::kSpilled;
  });
  CHECK(Order(t) == std::vector<Object*>{b, c, a});
  CHECK(t.counters().spilled_count == 1);
  CHECK(t.counters().spilled_bytes == 100);
  t.Unlink(a);
  CHECK(Order(t) == std::vector<Object*>{b, c});
  Object p;
  p.id = Key(9);
  p.data = g_memory;
  p.alloc_size = 50;
  Object* e = t.Insert(p);  // CREATED
  CHECK(Order(t) == std::vector<Object*>{b, c});
  t.Erase(e);
  t.Erase(a);
  t.Erase(b);
  t.Erase(c);
  t.Erase(d);
  CHECK(Order(t).empty());
  CHECK(t.counters().evictable_count == 0);
  CHECK(t.counters().evictable_bytes == 0);
  CHECK(t.counters().spilled_count == 0);
}

TEST_CASE("eviction order stays exact under random changes") {
  ObjectTable t;
  std::mt19937 rng(7);
  std::vector<Object*> objs;
  for (uint32_t i = 0; i < 500; i++) {
    objs.push_back(Add(t, i, 1 + rng() % 1000, static_cast<int32_t>(rng() % 4),
                       static_cast<int64_t>(rng() % 100)));
  }
  for (int step = 0; step < 20000; step++) {
    Object* o = objs[rng() % objs.size()];
    switch (rng() % 4) {
      case 0: t.Mutate(o, [&](Object* x) { x->access_ns = static_cast<int64_t>(rng() % 100); }); break;
      case 1: t.Mutate(o, [&](Object* x) { x->importance = static_cast<int32_t>(rng() % 4); }); break;
      case 2: if (o->readers) t.RemoveReader(o); else t.AddReader(o); break;
      case 3: if (o->pins) t.RemovePin(o); else t.AddPin(o); break;
    }
  }
  // Expected order, recomputed from scratch.
  std::vector<Object*> want;
  for (Object* o : objs) {
    if (o->evictable()) want.push_back(o);
  }
  std::sort(want.begin(), want.end(), [](const Object* a, const Object* b) {
    if (a->importance != b->importance) return a->importance < b->importance;
    if (a->access_ns != b->access_ns) return a->access_ns < b->access_ns;
    return a->uid < b->uid;
  });
  CHECK(Order(t) == want);
  uint64_t bytes = 0;
  for (Object* o : want) bytes += o->alloc_size;
  CHECK(t.counters().evictable_bytes == bytes);
  CHECK(t.counters().evictable_count == want.size());
}

TEST_CASE("eviction order over several chunks of the table's storage, freed entries reused") {
  // The treap links objects by their slot in the table's chunked storage (4096 per chunk).
  ObjectTable t;
  std::mt19937 rng(11);
  std::vector<Object*> objs;
  uint32_t next = 0;
  auto add = [&] {
    objs.push_back(Add(t, next++, 1 + rng() % 1000, static_cast<int32_t>(rng() % 8),
                       static_cast<int64_t>(rng() % 100000)));
  };
  for (int i = 0; i < 13000; i++) add();
  for (int round = 0; round < 3; round++) {
    // Erase a random third, then add as many again: new objects take freed entries.
    std::shuffle(objs.begin(), objs.end(), rng);
    for (size_t i = 0; i < objs.size() / 3; i++) t.Erase(objs[i]);
    size_t erased = objs.size() / 3;
    objs.erase(objs.begin(), objs.begin() + static_cast<ptrdiff_t>(erased));
    for (size_t i = 0; i < erased; i++) add();
    for (int step = 0; step < 5000; step++) {
      Object* o = objs[rng() % objs.size()];
      t.Mutate(o, [&](Object* x) { x->access_ns = static_cast<int64_t>(rng() % 100000); });
    }
    std::vector<Object*> want(objs);
    std::sort(want.begin(), want.end(), [](const Object* a, const Object* b) {
      if (a->importance != b->importance) return a->importance < b->importance;
      if (a->access_ns != b->access_ns) return a->access_ns < b->access_ns;
      return a->uid < b->uid;
    });
    CHECK(Order(t) == want);
  }
  for (Object* o : objs) t.Erase(o);
  CHECK(Order(t).empty());
  CHECK(t.counters().evictable_count == 0);
}

TEST_CASE("how much to free") {
  SpillPolicy p;  // high 0.8, low 0.6
  CHECK(BytesToFree(700, 1000, p, 0, 0) == 0);            // under the high mark
  CHECK(BytesToFree(850, 1000, p, 0, 0) == 250);          // down to the low mark
  CHECK(BytesToFree(850, 1000, p, 0, 100) == 150);        // less what is already being spilled
  CHECK(BytesToFree(850, 1000, p, 0, 300) == 0);
  CHECK(BytesToFree(700, 1000, p, 500, 0) == 200);        // a create of 500 with 300 free
  CHECK(BytesToFree(900, 1000, p, 500, 0) == 400);        // the larger of the two
  CHECK(BytesToFree(100, 1000, p, 500, 0) == 0);          // it fits
}

TEST_CASE("victims: in order, within one file's limits, copies on disk dropped") {
  ObjectTable t;
  std::vector<Object*> v;
  for (uint32_t i = 0; i < 10; i++) v.push_back(Add(t, i, 1000, 0, i));
  SpillPolicy p;
  p.max_file_objects = 4;
  auto b = ChooseVictims(t, 2500, p);
  CHECK(b.write == std::vector<Object*>{v[0], v[1], v[2]});
  CHECK(b.bytes == 3000);
  b = ChooseVictims(t, 100000, p);
  CHECK(b.write.size() == 4);  // the file is full
  p.max_file_objects = 100;
  p.max_file_bytes = 16 + 1000 + 16 + 1000;  // two records
  b = ChooseVictims(t, 100000, p);
  CHECK(b.write == std::vector<Object*>{v[0], v[1]});
  // An object that still has a copy on disk is dropped, not written.
  store::SpillFile* f = reinterpret_cast<store::SpillFile*>(&g_memory);
  v[0]->spill_file = f;
  b = ChooseVictims(t, 1500, p);
  CHECK(b.drop == std::vector<Object*>{v[0]});
  CHECK(b.write == std::vector<Object*>{v[1]});
  CHECK(b.bytes == 2000);
  v[0]->spill_file = nullptr;
  // Nothing evictable: nothing chosen.
  for (Object* o : v) t.AddPin(o);
  b = ChooseVictims(t, 100000, p);
  CHECK(b.write.empty());
  CHECK(b.drop.empty());
  CHECK(b.bytes == 0);
}

TEST_CASE("drops (--when-full drop): in order, kept ones skipped, none when too few") {
  ObjectTable t;
  std::vector<Object*> v;
  for (uint32_t i = 0; i < 6; i++) v.push_back(Add(t, i, 1000, i % 2 ? 1 : 0, i));
  // Order: v0, v2, v4 (importance 0), then v1, v3, v5.
  auto none = [](const Object*) { return false; };
  CHECK(ChooseDrops(t, 0, 2500, none) == std::vector<Object*>{v[0], v[2], v[4]});
  // What is free already counts.
  CHECK(ChooseDrops(t, 600, 2500, none) == std::vector<Object*>{v[0], v[2]});
  CHECK(ChooseDrops(t, 2500, 2500, none).empty());
  // Kept ones (leased) are skipped, the next ones taken.
  auto keep = [&](const Object* o) { return o == v[2] || o == v[1]; };
  CHECK(ChooseDrops(t, 0, 3500, keep) == std::vector<Object*>{v[0], v[4], v[3], v[5]});
  // When all the candidates do not cover it: none at all, whether the kept ones would or not.
  CHECK(ChooseDrops(t, 0, 4500, keep).empty());
  CHECK(ChooseDrops(t, 0, 6001, none).empty());
  CHECK(ChooseDrops(t, 1, 6001, none).size() == 6);
  // Read or pinned objects are no candidates.
  t.AddReader(v[0]);
  t.AddPin(v[4]);
  CHECK(ChooseDrops(t, 0, 1500, none) == std::vector<Object*>{v[2], v[1]});
}
