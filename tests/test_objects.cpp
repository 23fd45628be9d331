// test_objects.cpp - unit tests for store::ObjectTable (indexes, uids and the exact counters).
#include <doctest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "keyed_hash.h"
#include "objects/object_table.h"

namespace {

using store::Object;
using store::ObjectKey;
using store::ObjectState;
using store::ObjectTable;
using store::TableCounters;

// A distinct id for every n; all 20 bytes depend on n.
ObjectKey Key(uint64_t n) {
  ObjectKey k;
  uint64_t a = n;
  uint64_t b = n * 0x9E3779B97F4A7C15ull + 0x1234;
  uint32_t c = static_cast<uint32_t>(n ^ 0xA5A5A5A5u);
  std::memcpy(k.bytes, &a, 8);
  std::memcpy(k.bytes + 8, &b, 8);
  std::memcpy(k.bytes + 16, &c, 4);
  return k;
}

Object Proto(const ObjectKey& id, uint64_t alloc_size) {
  Object o;
  o.id = id;
  o.alloc_size = alloc_size;
  o.data_size = alloc_size / 2;
  o.metadata_size = alloc_size / 4;
  return o;
}

std::string Str(const TableCounters& c) {
  std::ostringstream s;
  s << "objects=" << c.objects << " created=" << c.created_count << "/" << c.created_bytes
    << " sealed=" << c.sealed_count << "/" << c.sealed_bytes << " pinned=" << c.pinned_count << "/"
    << c.pinned_bytes << " open=" << c.open_count << "/" << c.open_bytes
    << " deleted_pending=" << c.deleted_pending_count << "/" << c.deleted_pending_bytes;
  return s.str();
}

bool Same(const TableCounters& a, const TableCounters& b) {
  return a.objects == b.objects && a.created_count == b.created_count &&
         a.created_bytes == b.created_bytes && a.sealed_count == b.sealed_count &&
         a.sealed_bytes == b.sealed_bytes && a.pinned_count == b.pinned_count &&
         a.pinned_bytes == b.pinned_bytes && a.open_count == b.open_count &&
         a.open_bytes == b.open_bytes && a.deleted_pending_count == b.deleted_pending_count &&
         a.deleted_pending_bytes == b.deleted_pending_bytes;
}

// Builds the expected counters field by field.
struct Expect {
  uint64_t objects = 0;
  uint64_t created_count = 0, created_bytes = 0;
  uint64_t sealed_count = 0, sealed_bytes = 0;
  uint64_t pinned_count = 0, pinned_bytes = 0;
  uint64_t open_count = 0, open_bytes = 0;
  uint64_t deleted_pending_count = 0, deleted_pending_bytes = 0;
  TableCounters Get() const {
    TableCounters c;
    c.objects = objects;
    c.created_count = created_count;
    c.created_bytes = created_bytes;
    c.sealed_count = sealed_count;
    c.sealed_bytes = sealed_bytes;
    c.pinned_count = pinned_count;
    c.pinned_bytes = pinned_bytes;
    c.open_count = open_count;
    c.open_bytes = open_bytes;
    c.deleted_pending_count = deleted_pending_count;
    c.deleted_pending_bytes = deleted_pending_bytes;
    return c;
  }
};

#define CHECK_COUNTERS(table, expect) CHECK(Str((table).counters()) == Str((expect).Get()))

}  // namespace

TEST_SUITE("unit") {

TEST_CASE("Insert assigns increasing unique uids; Find and FindUid locate the object") {
  ObjectTable t;
  CHECK(t.visible() == 0);
  CHECK(t.instances() == 0);
  CHECK(t.Find(Key(1)) == nullptr);
  CHECK(t.FindUid(1) == nullptr);
  CHECK(t.FindUid(0) == nullptr);

  std::vector<Object*> objs;
  uint64_t last_uid = 0;
  for (uint64_t i = 0; i < 50; i++) {
    Object* o = t.Insert(Proto(Key(i), 100 + i));
    REQUIRE(o != nullptr);
    CHECK(o->uid > last_uid);
    last_uid = o->uid;
    objs.push_back(o);
  }
  CHECK(objs.front()->uid >= 1);  // 0 means "no object" on the wire
  std::set<uint64_t> uids;
  for (Object* o : objs) uids.insert(o->uid);
  CHECK(uids.size() == 50);
  CHECK(t.visible() == 50);
  CHECK(t.instances() == 50);

  for (uint64_t i = 0; i < 50; i++) {
    Object* o = objs[i];
    CHECK(t.Find(Key(i)) == o);
    CHECK(t.FindUid(o->uid) == o);
    CHECK(o->id == Key(i));
    CHECK(o->alloc_size == 100 + i);
    CHECK(o->data_size == (100 + i) / 2);
    CHECK(o->metadata_size == (100 + i) / 4);
    CHECK(o->state == ObjectState::kCreated);
    CHECK(o->readers == 0);
    CHECK(o->pins == 0);
    CHECK_FALSE(o->deleted);
  }
  CHECK(t.Find(Key(50)) == nullptr);
  CHECK(t.Find(Key(1000000)) == nullptr);
  CHECK(t.FindUid(last_uid + 1) == nullptr);
}

TEST_CASE("Insert copies the descriptive fields and resets uid, state, readers, pins, deleted") {
  ObjectTable t;
  Object p = Proto(Key(7), 4096);
  static uint8_t backing[64];
  p.uid = 999;
  p.data = backing;
  p.data_size = 4000;
  p.metadata_size = 17;
  p.creator = 42;
  p.create_ns = 1111;
  p.access_ns = 2222;
  p.importance = -5;
  p.device = 2;
  p.creator_pid = 4321;
  p.readers = 5;
  p.pins = 3;
  p.state = ObjectState::kSealed;
  p.deleted = true;
  Object* o = t.Insert(p);
  REQUIRE(o != nullptr);
  CHECK(o != &p);
  CHECK(o->uid == 1);
  CHECK(o->data == backing);
  CHECK(o->data_size == 4000);
  CHECK(o->metadata_size == 17);
  CHECK(o->spill_size() == 16 + 17 + 4000);  // a spill record: header, metadata, data
  CHECK(o->alloc_size == 4096);
  CHECK(o->creator == 42);
  CHECK(o->create_ns == 1111);
  CHECK(o->access_ns == 2222);
  CHECK(o->importance == -5);
  CHECK(o->device == 2);
  CHECK(o->creator_pid == 4321);
  CHECK(o->readers == 0);
  CHECK(o->pins == 0);
  CHECK(o->state == ObjectState::kCreated);
  CHECK_FALSE(o->deleted);
  CHECK(t.Find(Key(7)) == o);
  CHECK(t.FindUid(999) == nullptr);
  CHECK(t.FindUid(1) == o);

  Expect e;
  e.objects = 1;
  e.created_count = 1;
  e.created_bytes = 4096;
  CHECK_COUNTERS(t, e);
}

TEST_CASE("ids that differ in a single byte are different objects") {
  ObjectTable t;
  ObjectKey base{};
  for (int i = 0; i < 20; i++) base.bytes[i] = static_cast<uint8_t>(i * 7 + 1);
  Object* b = t.Insert(Proto(base, 1));
  std::vector<Object*> objs;
  for (int pos = 0; pos < 20; pos++) {
    ObjectKey k = base;
    k.bytes[pos] ^= 0x80;
    CHECK(t.Find(k) == nullptr);
    objs.push_back(t.Insert(Proto(k, 2 + pos)));
  }
  CHECK(t.visible() == 21);
  CHECK(t.Find(base) == b);
  for (int pos = 0; pos < 20; pos++) {
    ObjectKey k = base;
    k.bytes[pos] ^= 0x80;
    CHECK(t.Find(k) == objs[pos]);
    CHECK(t.Find(k)->alloc_size == uint64_t(2 + pos));
  }
}

TEST_CASE("counters follow every transition of one object exactly") {
  ObjectTable t;
  Expect e;
  CHECK_COUNTERS(t, e);

  Object* o = t.Insert(Proto(Key(1), 1000));
  e.objects = 1;
  e.created_count = 1;
  e.created_bytes = 1000;
  CHECK_COUNTERS(t, e);

  // A second, created object of another size.
  Object* q = t.Insert(Proto(Key(2), 64));
  e.objects = 2;
  e.created_count = 2;
  e.created_bytes = 1064;
  CHECK_COUNTERS(t, e);

  t.Seal(o);
  CHECK(o->state == ObjectState::kSealed);
  e.created_count = 1;
  e.created_bytes = 64;
  e.sealed_count = 1;
  e.sealed_bytes = 1000;
  CHECK_COUNTERS(t, e);

  SUBCASE("readers") {
    t.AddReader(o);
    CHECK(o->readers == 1);
    e.open_count = 1;
    e.open_bytes = 1000;
    CHECK_COUNTERS(t, e);
    t.AddReader(o);  // a second reader: still one open object
    CHECK(o->readers == 2);
    CHECK_COUNTERS(t, e);
    t.AddReader(q);  // readers of a CREATED object count too
    e.open_count = 2;
    e.open_bytes = 1064;
    CHECK_COUNTERS(t, e);
    t.RemoveReader(q);
    e.open_count = 1;
    e.open_bytes = 1000;
    CHECK_COUNTERS(t, e);
    t.RemoveReader(o);
    CHECK(o->readers == 1);
    CHECK_COUNTERS(t, e);
    t.RemoveReader(o);
    CHECK(o->readers == 0);
    e.open_count = 0;
    e.open_bytes = 0;
    CHECK_COUNTERS(t, e);
  }

  SUBCASE("reader and pin counts stop at their largest value instead of wrapping") {
    t.Mutate(o, [](Object* x) { x->readers = UINT32_MAX - 1; });
    CHECK(t.AddReader(o));
    CHECK(o->readers == UINT32_MAX);
    CHECK_FALSE(t.AddReader(o));  // refused: nothing changed
    CHECK(o->readers == UINT32_MAX);
    t.RemoveReader(o);
    CHECK(o->readers == UINT32_MAX - 1);
    t.Mutate(o, [](Object* x) { x->readers = 0; });
    t.Mutate(o, [](Object* x) { x->pins = UINT32_MAX - 1; });
    CHECK(t.AddPin(o));
    CHECK_FALSE(t.AddPin(o));
    CHECK(o->pins == UINT32_MAX);
    t.Mutate(o, [](Object* x) { x->pins = 0; });
    CHECK_COUNTERS(t, e);
  }

  SUBCASE("pins") {
    t.AddPin(o);
    CHECK(o->pins == 1);
    e.pinned_count = 1;
    e.pinned_bytes = 1000;
    CHECK_COUNTERS(t, e);
    t.AddPin(o);
    CHECK(o->pins == 2);
    CHECK_COUNTERS(t, e);
    t.AddPin(q);
    e.pinned_count = 2;
    e.pinned_bytes = 1064;
    CHECK_COUNTERS(t, e);
    t.RemovePin(o);
    CHECK_COUNTERS(t, e);
    t.RemovePin(o);
    e.pinned_count = 1;
    e.pinned_bytes = 64;
    CHECK_COUNTERS(t, e);
    t.RemovePin(q);
    e.pinned_count = 0;
    e.pinned_bytes = 0;
    CHECK_COUNTERS(t, e);
  }

  SUBCASE("seal keeps readers and pins counted") {
    t.AddReader(q);
    t.AddPin(q);
    e.open_count = 1;
    e.open_bytes = 64;
    e.pinned_count = 1;
    e.pinned_bytes = 64;
    CHECK_COUNTERS(t, e);
    t.Seal(q);
    e.created_count = 0;
    e.created_bytes = 0;
    e.sealed_count = 2;
    e.sealed_bytes = 1064;
    CHECK_COUNTERS(t, e);
    t.RemoveReader(q);
    t.RemovePin(q);
    e.open_count = e.open_bytes = e.pinned_count = e.pinned_bytes = 0;
    CHECK_COUNTERS(t, e);
  }

  SUBCASE("unlink with a reader, then erase") {
    const uint64_t uid = o->uid;
    t.AddReader(o);
    t.AddPin(o);
    e.open_count = 1;
    e.open_bytes = 1000;
    e.pinned_count = 1;
    e.pinned_bytes = 1000;
    CHECK_COUNTERS(t, e);

    t.Unlink(o);
    CHECK(o->deleted);
    CHECK(t.Find(Key(1)) == nullptr);
    CHECK(t.FindUid(uid) == o);
    CHECK(t.visible() == 1);
    CHECK(t.instances() == 2);
    // A deleted object only counts as deleted_pending.
    e.objects = 1;
    e.sealed_count = 0;
    e.sealed_bytes = 0;
    e.open_count = e.open_bytes = 0;
    e.pinned_count = e.pinned_bytes = 0;
    e.deleted_pending_count = 1;
    e.deleted_pending_bytes = 1000;
    CHECK_COUNTERS(t, e);

    t.Unlink(o);  // a second unlink changes nothing
    CHECK_COUNTERS(t, e);
    CHECK(t.visible() == 1);

    // Reader and pin changes of the deleted instance keep it in deleted_pending only.
    t.AddReader(o);
    CHECK(o->readers == 2);
    CHECK_COUNTERS(t, e);
    t.RemoveReader(o);
    t.RemoveReader(o);
    t.RemovePin(o);
    CHECK(o->readers == 0);
    CHECK(o->pins == 0);
    CHECK_COUNTERS(t, e);

    // A new object with the same id.
    Object* n = t.Insert(Proto(Key(1), 300));
    REQUIRE(n != nullptr);
    CHECK(n != o);
    CHECK(n->uid != uid);
    CHECK(n->uid > q->uid);
    CHECK(t.Find(Key(1)) == n);
    CHECK(t.FindUid(uid) == o);
    CHECK(t.FindUid(n->uid) == n);
    CHECK(o->id == Key(1));
    CHECK(o->alloc_size == 1000);
    CHECK(t.visible() == 2);
    CHECK(t.instances() == 3);
    e.objects = 2;
    e.created_count = 2;
    e.created_bytes = 364;
    CHECK_COUNTERS(t, e);

    // Erasing the deleted old instance leaves the new one alone.
    t.Erase(o);
    CHECK(t.FindUid(uid) == nullptr);
    CHECK(t.Find(Key(1)) == n);
    CHECK(t.FindUid(n->uid) == n);
    CHECK(t.visible() == 2);
    CHECK(t.instances() == 2);
    e.deleted_pending_count = 0;
    e.deleted_pending_bytes = 0;
    CHECK_COUNTERS(t, e);

    // Erase of visible objects (no unlink first) removes them from both indexes.
    const uint64_t nuid = n->uid, quid = q->uid;
    t.Erase(n);
    t.Erase(q);
    CHECK(t.Find(Key(1)) == nullptr);
    CHECK(t.Find(Key(2)) == nullptr);
    CHECK(t.FindUid(nuid) == nullptr);
    CHECK(t.FindUid(quid) == nullptr);
    CHECK(t.visible() == 0);
    CHECK(t.instances() == 0);
    CHECK_COUNTERS(t, Expect{});

    // uids are never reused, even after the table emptied.
    Object* m = t.Insert(Proto(Key(1), 8));
    CHECK(m->uid == nuid + 1);
  }

  SUBCASE("erase a visible sealed object with readers and pins") {
    t.AddReader(o);
    t.AddPin(o);
    t.Erase(o);
    CHECK(t.Find(Key(1)) == nullptr);
    e.objects = 1;
    e.sealed_count = 0;
    e.sealed_bytes = 0;
    CHECK_COUNTERS(t, e);
    t.Erase(q);
    CHECK_COUNTERS(t, Expect{});
    CHECK(t.visible() == 0);
    CHECK(t.instances() == 0);
  }
}

TEST_CASE("unlink of a created object moves it to deleted_pending") {
  ObjectTable t;
  Object* o = t.Insert(Proto(Key(5), 77));
  t.Unlink(o);
  Expect e;
  e.deleted_pending_count = 1;
  e.deleted_pending_bytes = 77;
  CHECK_COUNTERS(t, e);
  CHECK(t.Find(Key(5)) == nullptr);
  CHECK(t.FindUid(o->uid) == o);
  // Three generations of the same id: each a new uid, every old one still findable by uid.
  Object* a = t.Insert(Proto(Key(5), 10));
  t.Unlink(a);
  Object* b = t.Insert(Proto(Key(5), 20));
  CHECK(o->uid < a->uid);
  CHECK(a->uid < b->uid);
  CHECK(t.Find(Key(5)) == b);
  CHECK(t.FindUid(o->uid) == o);
  CHECK(t.FindUid(a->uid) == a);
  // Unlinking an already deleted instance again must not touch the visible one of that id.
  t.Unlink(a);
  t.Unlink(o);
  CHECK(t.Find(Key(5)) == b);
  CHECK_FALSE(b->deleted);
  CHECK(t.instances() == 3);
  CHECK(t.visible() == 1);
  e.objects = 1;
  e.created_count = 1;
  e.created_bytes = 20;
  e.deleted_pending_count = 2;
  e.deleted_pending_bytes = 87;
  CHECK_COUNTERS(t, e);
  t.Erase(a);
  t.Erase(o);
  t.Erase(b);
  CHECK_COUNTERS(t, Expect{});
  CHECK(t.instances() == 0);
}

TEST_CASE("zero-sized objects are counted by count, not bytes") {
  ObjectTable t;
  Object* o = t.Insert(Proto(Key(1), 0));
  t.AddReader(o);
  t.AddPin(o);
  Expect e;
  e.objects = 1;
  e.created_count = 1;
  e.open_count = 1;
  e.pinned_count = 1;
  CHECK_COUNTERS(t, e);
  t.Seal(o);
  e.created_count = 0;
  e.sealed_count = 1;
  CHECK_COUNTERS(t, e);
}

TEST_CASE("ForEachVisible visits exactly the visible objects, once each") {
  ObjectTable t;
  std::vector<Object*> objs;
  for (uint64_t i = 0; i < 40; i++) objs.push_back(t.Insert(Proto(Key(i), i + 1)));
  // Unlink every third, erase every fifth (some of both), re-create two unlinked ids.
  std::set<uint64_t> expect;  // uids
  for (uint64_t i = 0; i < 40; i++) {
    if (i % 5 == 0) {
      t.Erase(objs[i]);
    } else if (i % 3 == 0) {
      t.Unlink(objs[i]);
    } else {
      expect.insert(objs[i]->uid);
    }
  }
  expect.insert(t.Insert(Proto(Key(3), 1))->uid);
  expect.insert(t.Insert(Proto(Key(0), 1))->uid);

  std::multiset<uint64_t> seen;
  t.ForEachVisible([&](const Object& o) {
    seen.insert(o.uid);
    CHECK_FALSE(o.deleted);
    CHECK(t.Find(o.id) == &o);
  });
  CHECK(seen.size() == expect.size());
  CHECK(std::set<uint64_t>(seen.begin(), seen.end()) == expect);
  CHECK(seen.size() == t.visible());
  CHECK(t.counters().objects == expect.size());

  ObjectTable empty;
  int calls = 0;
  empty.ForEachVisible([&](const Object&) { calls++; });
  CHECK(calls == 0);
}

TEST_CASE("randomized operations keep the counters equal to a reference model") {
  struct M {
    uint32_t id;
    uint64_t size;
    bool sealed = false;
    uint32_t readers = 0;
    uint32_t pins = 0;
    bool deleted = false;
  };
  std::map<uint64_t, M> live;           // uid -> model instance
  std::map<uint32_t, uint64_t> by_id;   // id -> uid of the visible instance
  constexpr uint32_t kIds = 300;
  constexpr int kSteps = 100000;

  auto recompute = [&]() {
    TableCounters c;
    c.objects = by_id.size();
    for (auto& [uid, m] : live) {
      if (m.deleted) {
        c.deleted_pending_count++;
        c.deleted_pending_bytes += m.size;
        continue;
      }
      if (m.sealed) {
        c.sealed_count++;
        c.sealed_bytes += m.size;
      } else {
        c.created_count++;
        c.created_bytes += m.size;
      }
      if (m.pins) {
        c.pinned_count++;
        c.pinned_bytes += m.size;
      }
      if (m.readers) {
        c.open_count++;
        c.open_bytes += m.size;
      }
    }
    return c;
  };
  auto same_as_model = [&](const Object* o, const M& m, uint64_t uid) {
    return o != nullptr && o->uid == uid && o->id == Key(m.id) && o->alloc_size == m.size &&
           o->state == (m.sealed ? ObjectState::kSealed : ObjectState::kCreated) &&
           o->readers == m.readers && o->pins == m.pins && o->deleted == m.deleted;
  };

  ObjectTable t;
  std::mt19937_64 rng(20240611);
  auto pick_live = [&]() -> uint64_t {
    // A random live uid: the first at or after a random point (wrapping).
    auto it = live.lower_bound(rng() % (live.rbegin()->first + 1));
    if (it == live.end()) it = live.begin();
    return it->first;
  };

  int mismatches = 0, model_mismatches = 0;
  int ops[8] = {};
  uint64_t max_uid = 0;
  // A list paged through the table with ForEachVisibleBetween while it changes, as store_list
  // does: each object visible from its start to its end is listed once, none created after it
  // started, none twice, each visible when listed.
  struct Walk {
    bool active = false;
    uint64_t after = 0, upto = 0;
    std::set<uint64_t> at_start, removed, listed;
  } walk;
  int walks_done = 0, walk_mismatches = 0;
  auto walk_page = [&]() {
    size_t want = 1 + rng() % 20, got = 0;
    t.ForEachVisibleBetween(walk.after, walk.upto, [&](const Object& o) {
      if (o.uid <= walk.after || o.uid > walk.upto || o.deleted || t.Find(o.id) != &o ||
          !walk.listed.insert(o.uid).second) {
        walk_mismatches++;
      }
      walk.after = o.uid;
      return ++got < want;
    });
    if (got == want) return;
    for (uint64_t uid : walk.at_start) {
      if (!walk.removed.count(uid) && !walk.listed.count(uid)) walk_mismatches++;
    }
    walk.active = false;
    walks_done++;
  };
  auto note_removed = [&](uint64_t uid) {
    if (walk.active) walk.removed.insert(uid);
  };
  for (int step = 0; step < kSteps && mismatches == 0 && model_mismatches == 0; step++) {
    if (walk.active && step % 3 == 0) walk_page();
    if (!walk.active && step % 97 == 0) {
      walk = Walk{};
      walk.active = true;
      walk.upto = t.last_uid();
      for (auto& [id, uid] : by_id) walk.at_start.insert(uid);
    }
    int op = static_cast<int>(rng() % 100);
    if (live.empty() || op < 22) {  // insert (or seal if the id is visible)
      uint32_t id = static_cast<uint32_t>(rng() % kIds);
      auto v = by_id.find(id);
      if (v == by_id.end()) {
        uint64_t size = (rng() % 4 == 0) ? rng() % 64 : rng() % (1u << 22);
        Object* o = t.Insert(Proto(Key(id), size));
        if (o->uid <= max_uid) model_mismatches++;
        max_uid = o->uid;
        if (live.count(o->uid)) model_mismatches++;
        live[o->uid] = M{id, size};
        by_id[id] = o->uid;
        ops[0]++;
      } else if (!live[v->second].sealed) {
        t.Seal(t.Find(Key(id)));
        live[v->second].sealed = true;
        ops[1]++;
      }
    } else {
      uint64_t uid = pick_live();
      M& m = live[uid];
      Object* o = t.FindUid(uid);
      if (!same_as_model(o, m, uid)) {
        INFO("step " << step << " uid " << uid);
        CHECK(same_as_model(o, m, uid));
        model_mismatches++;
        break;
      }
      if (op < 32) {
        if (!m.sealed) {
          t.Seal(o);
          m.sealed = true;
          ops[1]++;
        }
      } else if (op < 50) {
        t.AddReader(o);
        m.readers++;
        ops[2]++;
      } else if (op < 66) {
        if (m.readers) {
          t.RemoveReader(o);
          m.readers--;
          ops[3]++;
        }
      } else if (op < 76) {
        t.AddPin(o);
        m.pins++;
        ops[4]++;
      } else if (op < 86) {
        if (m.pins) {
          t.RemovePin(o);
          m.pins--;
          ops[5]++;
        }
      } else if (op < 93) {
        t.Unlink(o);
        if (!m.deleted) {
          by_id.erase(m.id);
          note_removed(uid);
        }
        m.deleted = true;
        ops[6]++;
      } else {
        // Erase: as the server does, only objects nobody reads any more, or deleted ones.
        if (m.readers == 0 || m.deleted) {
          t.Erase(o);
          if (!m.deleted) {
          by_id.erase(m.id);
          note_removed(uid);
        }
          live.erase(uid);
          ops[7]++;
        }
      }
    }

    TableCounters want = recompute();
    if (!Same(t.counters(), want) || t.visible() != by_id.size() ||
        t.instances() != live.size()) {
      INFO("step " << step << " op " << op);
      CHECK(Str(t.counters()) == Str(want));
      CHECK(t.visible() == by_id.size());
      CHECK(t.instances() == live.size());
      mismatches++;
    }
    // Now and then, every index entry against the model.
    if (step % 5000 == 4999) {
      for (auto& [uid, m] : live) {
        if (!same_as_model(t.FindUid(uid), m, uid)) model_mismatches++;
      }
      for (uint32_t id = 0; id < kIds; id++) {
        auto v = by_id.find(id);
        Object* f = t.Find(Key(id));
        if (v == by_id.end() ? f != nullptr : (f == nullptr || f->uid != v->second)) {
          model_mismatches++;
        }
      }
      size_t visited = 0;
      t.ForEachVisible([&](const Object& o) {
        visited++;
        auto v = by_id.find(static_cast<uint32_t>(o.id.bytes[0] | (o.id.bytes[1] << 8)));
        if (v == by_id.end() || v->second != o.uid || o.deleted) model_mismatches++;
      });
      if (visited != by_id.size()) model_mismatches++;
    }
  }
  CHECK(mismatches == 0);
  CHECK(model_mismatches == 0);
  CHECK(walk_mismatches == 0);
  CHECK(walks_done > 100);
  // Every kind of operation really ran, many times.
  if (mismatches == 0 && model_mismatches == 0) {
    for (int i = 0; i < 8; i++) {
      INFO("op kind " << i);
      CHECK(ops[i] > 1000);
    }
  }

  // Drain: release everything, erase everything, all counters back to zero.
  while (!live.empty()) {
    auto it = live.begin();
    Object* o = t.FindUid(it->first);
    REQUIRE(o != nullptr);
    while (o->readers) t.RemoveReader(o);
    while (o->pins) t.RemovePin(o);
    t.Erase(o);
    live.erase(it);
  }
  CHECK_COUNTERS(t, Expect{});
  CHECK(t.visible() == 0);
  CHECK(t.instances() == 0);
}

TEST_CASE("one million objects: each is found by id and uid") {
  constexpr uint64_t kN = 1000000;
  ObjectTable t;
  std::vector<uint64_t> uids(kN);
  uint64_t bytes = 0;
  for (uint64_t i = 0; i < kN; i++) {
    Object* o = t.Insert(Proto(Key(i), i % 1000));
    uids[i] = o->uid;
    bytes += i % 1000;
  }
  CHECK(t.visible() == kN);
  CHECK(t.instances() == kN);
  CHECK(t.counters().objects == kN);
  CHECK(t.counters().created_count == kN);
  CHECK(t.counters().created_bytes == bytes);

  uint64_t wrong = 0;
  for (uint64_t i = 0; i < kN; i++) {
    Object* o = t.Find(Key(i));
    if (o == nullptr || o->uid != uids[i] || !(o->id == Key(i)) || o->alloc_size != i % 1000 ||
        t.FindUid(uids[i]) != o) {
      wrong++;
    }
  }
  CHECK(wrong == 0);
  CHECK(t.Find(Key(kN)) == nullptr);
  std::set<uint64_t> distinct(uids.begin(), uids.end());
  CHECK(distinct.size() == kN);

  // Seal the even ones, erase the odd ones.
  uint64_t sealed_bytes = 0;
  for (uint64_t i = 0; i < kN; i++) {
    Object* o = t.Find(Key(i));
    if (i % 2 == 0) {
      t.Seal(o);
      sealed_bytes += i % 1000;
    } else {
      t.Erase(o);
    }
  }
  CHECK(t.visible() == kN / 2);
  CHECK(t.counters().sealed_count == kN / 2);
  CHECK(t.counters().sealed_bytes == sealed_bytes);
  CHECK(t.counters().created_count == 0);
  CHECK(t.counters().created_bytes == 0);
  wrong = 0;
  for (uint64_t i = 0; i < kN; i++) {
    Object* o = t.Find(Key(i));
    if ((i % 2 == 0) != (o != nullptr)) wrong++;
    if ((i % 2 == 0) != (t.FindUid(uids[i]) != nullptr)) wrong++;
  }
  CHECK(wrong == 0);
}

// ---- what a client can choose: ids, and the order of uids ------------------------------------

// The reference function's test vectors (SipHash-2-4, key 00 01 .. 0f, message 00 01 .. of the
// length given; from the SipHash paper and its reference code), so that the 1-3 variant the
// tables use runs the real rounds.
TEST_CASE("SipHash-2-4 gives the reference test vectors") {
  store::HashKey key;
  uint8_t kb[16], msg[64];
  for (int i = 0; i < 16; i++) kb[i] = static_cast<uint8_t>(i);
  for (int i = 0; i < 64; i++) msg[i] = static_cast<uint8_t>(i);
  std::memcpy(&key.k0, kb, 8);
  std::memcpy(&key.k1, kb + 8, 8);
  CHECK(store::SipHash<2, 4>(key, msg, 0) == 0x726fdb47dd0e0e31ull);
  CHECK(store::SipHash<2, 4>(key, msg, 15) == 0xa129ca6149be45e5ull);
  // The one-word form is the 8-byte message.
  uint64_t word;
  std::memcpy(&word, msg, 8);
  CHECK(store::SipHash13(key, word) == store::SipHash13(key, msg, 8));
  CHECK(store::SipHash13(key, msg, 20) != store::SipHash13(store::HashKey{1, 2}, msg, 20));
}

// The id hash the table had: no secret, and inverted in one line (for any first 8 bytes a, the
// next 8 that give a chosen hash). A client sending such ids made every one of them a step of
// every lookup: one get of 65,536 of them held the loop for about 20 s.
uint64_t UnkeyedIdHash(uint64_t a, uint64_t b, uint32_t c) {
  uint64_t h = a * 0x9E3779B97F4A7C15ull;
  h ^= (b + 0x632BE59BD9B4E019ull + (h << 6) + (h >> 2));
  h ^= (uint64_t{c} * 0xC2B2AE3D27D4EB4Full) + (h << 6) + (h >> 2);
  h ^= h >> 29;
  return h;
}

TEST_CASE("ids made to collide under a fixed hash spread over the id index") {
  const uint64_t target = 0x5555555555555555ull;
  const uint32_t c = 7;
  std::set<uint64_t> hashes;
  ObjectTable t;
  std::vector<ObjectKey> keys;
  uint64_t unkeyed = 0;
  for (uint64_t a = 1; a <= 4096; a++) {
    const uint64_t h1 = a * 0x9E3779B97F4A7C15ull;
    const uint64_t b = (target ^ h1) - 0x632BE59BD9B4E019ull - (h1 << 6) - (h1 >> 2);
    ObjectKey k;
    std::memcpy(k.bytes, &a, 8);
    std::memcpy(k.bytes + 8, &b, 8);
    std::memcpy(k.bytes + 16, &c, 4);
    if (a == 1) unkeyed = UnkeyedIdHash(a, b, c);
    CHECK(UnkeyedIdHash(a, b, c) == unkeyed);  // they do collide under it
    hashes.insert(store::ObjectKeyHash()(k));
    keys.push_back(k);
    t.Insert(Proto(k, 64));
  }
  CHECK(hashes.size() == keys.size());
  for (const ObjectKey& k : keys) CHECK(t.Find(k) != nullptr);
}

// The eviction order is a treap whose priorities came from the uid alone, and uids are in
// every reply: a client that reads objects in the order of their priorities (each read moves
// one to the end of the order) turned the tree into a list, and every get, release or spill
// then walked all of it (1.3 s per get and release with 1M objects). Keyed, the priorities
// cannot be predicted, and no order of reads unbalances the tree.
TEST_CASE("the eviction order stays balanced whatever order objects are used in") {
  constexpr uint64_t kN = 20000;
  ObjectTable t;
  static uint8_t backing[1];
  std::vector<Object*> objs;
  for (uint64_t i = 0; i < kN; i++) {
    Object p = Proto(Key(i), 64);
    p.data = backing;
    Object* o = t.Insert(p);
    t.Seal(o);
    objs.push_back(o);
  }
  // The order of the unkeyed priorities, lowest first: used in that order, the objects' order
  // in the tree is their priority order.
  auto unkeyed = [](const Object* o) {
    uint64_t h = o->uid * 0x9E3779B97F4A7C15ull;
    return h ^ (h >> 31);
  };
  std::sort(objs.begin(), objs.end(),
            [&](const Object* a, const Object* b) { return unkeyed(a) < unkeyed(b); });
  int64_t now = 1;
  for (Object* o : objs) t.Mutate(o, [&](Object* x) { x->access_ns = now++; });
  CHECK(t.counters().evictable_count == kN);
  // log2(20000) is 14.3; a random treap's height is about 3 times that, rarely more than 5.
  INFO("height ", t.EvictHeight());
  CHECK(t.EvictHeight() < 100);
  uint64_t walked = 0;
  int64_t last = 0;
  t.ForEachEvictable([&](Object* o) {
    CHECK(o->access_ns > last);
    last = o->access_ns;
    return ++walked < kN;
  });
  CHECK(walked == kN);
}

// The pool reuses its own memory, so without help AddressSanitizer would not see a read
// through a pointer to a deleted object (a reply built from an object a pump just dropped).
TEST_CASE("under AddressSanitizer, a read of a deleted object's entry is reported") {
  if (!STORE_ASAN) return;  // nothing to check in other builds
  ObjectTable t;
  Object* o = t.Insert(Proto(Key(1), 64));
  Object* kept = t.Insert(Proto(Key(2), 64));
  t.Erase(o);
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    volatile uint64_t size = o->data_size;  // reported: the child ends with ASan's exit code
    (void)size;
    _exit(0);
  }
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  CHECK_FALSE((WIFEXITED(status) && WEXITSTATUS(status) == 0));
  CHECK(kept->data_size == 32);  // a live entry reads as usual
}

}  // TEST_SUITE
