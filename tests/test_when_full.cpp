// test_when_full.cpp - `--when-full drop` against a real store: a store far smaller than what is
// put through it takes every create by deleting the least valuable objects nobody uses (lowest
// importance, then least recently used); objects being written, open, pinned or leased are never
// dropped, and when only those are left a create waits or fails as in the default mode; creates
// waiting for room are served as soon as something becomes droppable (a reader closed, an unpin,
// an unlease, a client gone); the counters, the log line, `store info` and the metrics file; the
// default mode still refuses; the flag's usage errors.
#include <doctest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <functional>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "client_util.h"
#include "harness.h"
#include "spill_util.h"
#include "storeclient.h"

using namespace spill_test;

namespace {

const std::vector<std::string> kDrop = {"--when-full", "drop"};

std::string ReadAll(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

bool Present(store_client* c, const Obj& o) {
  int present = -1;
  REQUIRE(store_contains(c, &o.id, &present) == STORE_OK);
  return present == 1;
}

// How many 1 MiB objects a 16 MiB store holds (a little of it may go to the allocator's small
// classes): found once, on a store of its own in the default mode, so that the stores of the
// tests start with nothing dropped and nothing refused.
uint64_t Slots() {
  static uint64_t slots = [] {
    test::TestStore s("16M");
    REQUIRE(s.started());
    ClientPtr c = Connect(s.socket(), "slots");
    uint64_t n = 0;
    while (n < 1000 && TryPut(c.get(), MakeObj("probe-" + std::to_string(n), n, kMiB), 0, 0) ==
                           STORE_OK) {
      n++;
    }
    REQUIRE(Stats(c.get()).total_full == 1);
    return n;
  }();
  REQUIRE(slots >= 12);
  REQUIRE(slots <= 16);
  return slots;
}

// A create run on its own thread (on its own client), waiting for room up to timeout_ms.
class WaitingPut {
 public:
  WaitingPut(const std::string& socket, const Obj& o, int64_t timeout_ms)
      : client_(Connect(socket, "waiting put")), obj_(o) {
    thread_ = std::thread([this, timeout_ms] {
      rc_ = TryPut(client_.get(), obj_, 0, timeout_ms);
      done_ = true;
    });
  }
  ~WaitingPut() {
    if (thread_.joinable()) thread_.join();
  }
  bool done() const { return done_; }
  // Waits for the create to end and returns its status.
  int Result() {
    REQUIRE(test::WaitFor([&] { return done_.load(); }, std::chrono::seconds(30)));
    thread_.join();
    return rc_;
  }

 private:
  ClientPtr client_;
  Obj obj_;
  std::thread thread_;
  std::atomic<bool> done_{false};
  std::atomic<int> rc_{0};
};

// Puts o created leased (STORE_CREATE_LEASED): it goes with the creator's lease.
void PutLeased(store_client* c, const Obj& o, int32_t importance) {
  store_create_options opts = STORE_CREATE_OPTIONS_INIT;
  opts.importance = importance;
  opts.timeout_ms = 0;
  opts.flags = STORE_CREATE_LEASED;
  store_writer* w = nullptr;
  REQUIRE(store_create(c, &w, &o.id, o.size, &opts) == STORE_OK);
  Fill(o.seed, static_cast<uint8_t*>(store_writer_data(w)), o.size);
  REQUIRE(store_writer_seal(w) == STORE_OK);
}

// The sum of N over the server's "dropped N object(s)" log lines.
uint64_t LoggedDrops(const test::TestStore& s) {
  static const std::regex line("dropped ([0-9]+) objects? \\(");
  const std::string log = s.Log();
  uint64_t sum = 0;
  for (auto it = std::sregex_iterator(log.begin(), log.end(), line); it != std::sregex_iterator();
       ++it) {
    sum += std::stoull((*it)[1].str());
  }
  return sum;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Volume and accounting.

TEST_CASE("drop: a 16 MiB store takes 64 MiB of 1 MiB objects; the oldest go, counted exactly") {
  test::TestStore s("16M", kDrop);
  REQUIRE(s.started());
  ClientPtr c = Connect(s.socket(), "when_full");
  const uint64_t k = Slots();
  INFO(k, " objects of 1 MiB fit");
  CHECK(Stats(c.get()).when_full_drop == 1);

  // Data and metadata take a little less than 1 MiB, so each object takes one 1 MiB run of
  // pages and the counted bytes (data and metadata) differ from the memory it took.
  const uint64_t meta = 1000, data = kMiB - 5000;
  std::vector<Obj> objs;
  for (int i = 0; i < 64; i++) {
    objs.push_back(MakeObj("bulk-" + std::to_string(i), 100 + i, data, meta));
    int rc = TryPut(c.get(), objs.back(), 0, 0);  // no waiting: each fits at once or fails
    INFO("put ", i, ": ", store_last_error_message());
    REQUIRE(rc == STORE_OK);
  }
  const store_stats st = Stats(c.get());
  const uint64_t dropped = 64 - k;
  CHECK(st.object_count == k);
  CHECK(st.sealed_count == k);
  CHECK(st.total_dropped_objects == dropped);
  CHECK(st.total_dropped_bytes == dropped * (data + meta));
  CHECK(st.total_deletes == 0);  // drops are counted apart from deletes
  CHECK(st.total_full == 0);
  CHECK(st.waiting_creates == 0);
  CHECK(st.deleted_pending_count == 0);  // nobody read them: their memory went at once
  CHECK(st.used_bytes == k * kMiB);
  CHECK(st.used_bytes <= st.capacity_bytes);
  // Exactly the newest k are left, byte-exact; the others are gone.
  for (int i = 0; i < 64; i++) {
    INFO("object ", i);
    if (static_cast<uint64_t>(i) < dropped) {
      CHECK_FALSE(Present(c.get(), objs[i]));
    } else {
      REQUIRE(Present(c.get(), objs[i]));
      ReadBack(c.get(), objs[i]);
    }
  }

  // A dropped id may be created again. That drops the least recently used object, which is
  // the first survivor: they were all just read back, in order.
  Put(c.get(), objs[0], 0, 0);
  CHECK(Present(c.get(), objs[0]));
  CHECK_FALSE(Present(c.get(), objs[dropped]));
  CHECK(Stats(c.get()).total_dropped_objects == dropped + 1);
  ReadBack(c.get(), objs[0]);

  // Small objects (staged, put in one round trip at the seal) drop big ones too.
  const uint64_t before = Stats(c.get()).total_dropped_objects;
  for (int i = 0; i < 300; i++) Put(c.get(), MakeObj("small-" + std::to_string(i), 5000 + i, 60000), 0, 0);
  CHECK(Stats(c.get()).total_dropped_objects > before);
  CHECK(Stats(c.get()).total_full == 0);
  CHECK(s.Alive());
}

TEST_CASE("drop: at --max-objects a create drops the least valuable object, as when memory is full") {
  test::TestStore s("64M", {"--when-full", "drop", "--max-objects", "100"});
  REQUIRE(s.started());
  ClientPtr c = Connect(s.socket(), "when_full");
  std::vector<Obj> objs;
  for (int i = 0; i < 250; i++) {
    objs.push_back(MakeObj("many-" + std::to_string(i), 300 + i, 100 + i));
    int rc = TryPut(c.get(), objs.back(), 0, 0);
    INFO("put ", i, ": ", store_last_error_message());
    REQUIRE(rc == STORE_OK);
  }
  store_stats st = Stats(c.get());
  CHECK(st.object_count == 100);
  CHECK(st.total_dropped_objects == 150);
  CHECK(st.refused_objects == 0);
  for (int i = 0; i < 250; i++) {
    INFO("object ", i);
    if (i < 150) {
      CHECK_FALSE(Present(c.get(), objs[i]));
    } else {
      ReadBack(c.get(), objs[i]);
    }
  }
  // With every object open, nothing can go: the create is refused over the limit.
  std::vector<ReaderPtr> held;
  for (int i = 150; i < 250; i++) held.push_back(Open(c.get(), objs[i]));
  Obj extra = MakeObj("one too many", 7, 10);
  CHECK(TryPut(c.get(), extra, 0, 0) == STORE_ELIMIT);
  CHECK(std::string(store_last_error_message()).find("--max-objects") != std::string::npos);
  CHECK(Stats(c.get()).refused_objects == 1);
  held.pop_back();  // objs[249] may go now
  Put(c.get(), extra, 0, 0);
  CHECK_FALSE(Present(c.get(), objs[249]));
  CHECK(Stats(c.get()).object_count == 100);
  CHECK(s.Alive());
}

TEST_CASE("drop: lowest importance goes first, then the least recently used") {
  test::TestStore s("16M", kDrop);
  REQUIRE(s.started());
  ClientPtr c = Connect(s.socket(), "when_full");
  const uint64_t k = Slots();
  // k objects fill it: even ones of importance 0, odd ones of importance 1, interleaved so that
  // creation order alone would mix them.
  std::vector<Obj> a;
  for (uint64_t i = 0; i < k; i++) {
    a.push_back(MakeObj("a-" + std::to_string(i), 200 + i, kMiB));
    Put(c.get(), a.back(), i % 2 == 0 ? 0 : 1, 0);
  }
  // Reading a[0], then a[2], makes them the most recently used of importance 0.
  ReadBack(c.get(), a[0]);
  ReadBack(c.get(), a[2]);
  // New objects of the highest importance: each drops one. Enough of them to drop every even
  // object but a[2]: the untouched even ones in creation order, then a[0].
  const uint64_t evens = (k + 1) / 2;
  const uint64_t m = evens - 1;
  std::vector<Obj> b;
  for (uint64_t i = 0; i < m; i++) {
    b.push_back(MakeObj("b-" + std::to_string(i), 300 + i, kMiB));
    Put(c.get(), b.back(), 2, 0);
  }
  CHECK(Stats(c.get()).total_dropped_objects == m);
  for (uint64_t i = 0; i < k; i++) {
    INFO("a[", i, "], importance ", i % 2);
    // Odd ones (importance 1) all stay, although a[1] is older than every even one but a[0];
    // of the even ones only a[2], read last, stays.
    CHECK(Present(c.get(), a[i]) == (i % 2 == 1 || i == 2));
  }
  for (const Obj& o : b) CHECK(Present(c.get(), o));

  // One more: a[2] goes (importance 0), not a[1] (older, importance 1).
  Put(c.get(), MakeObj("b-last", 399, kMiB), 2, 0);
  CHECK_FALSE(Present(c.get(), a[2]));
  CHECK(Present(c.get(), a[1]));
  // Then the odd ones, oldest first; set_importance moves one to the end.
  REQUIRE(store_set_importance(c.get(), &a[1].id, 2) == STORE_OK);
  Put(c.get(), MakeObj("b-next", 400, kMiB), 2, 0);
  CHECK(Present(c.get(), a[1]));
  CHECK_FALSE(Present(c.get(), a[3]));
  CHECK(Present(c.get(), a[5]));
  CHECK(Stats(c.get()).total_dropped_objects == m + 2);
}

// A leased object is no candidate, so it is not among the objects a drop looks at at all: it is
// out of the eviction order (evictable_bytes leaves it out) until its last lease goes. Were it
// kept in that order, one client holding many leases on the least valuable objects would make
// every create at the limit walk past all of them, holding up every client (1M leased objects:
// 50 ms per create instead of 0.09).
TEST_CASE("drop: leased objects are out of the eviction order until their last lease goes") {
  test::TestStore s("64M", {"--when-full", "drop", "--max-objects", "40"});
  REQUIRE(s.started());
  ClientPtr c = Connect(s.socket(), "when_full");
  ClientPtr holder = Connect(s.socket(), "lease holder");
  std::vector<Obj> plain;
  for (int i = 0; i < 10; i++) {
    plain.push_back(MakeObj("plain-" + std::to_string(i), 500 + i, 4096));
    Put(c.get(), plain.back(), 0, 0);
  }
  const uint64_t plain_bytes = Stats(c.get()).evictable_bytes;
  REQUIRE(plain_bytes >= 10 * 4096);

  // Of the lowest importance: a drop would take them first if it could. Half created leased by
  // the holder, half leased by it after an ordinary put.
  std::vector<Obj> created_leased, leased;
  for (int i = 0; i < 10; i++) {
    created_leased.push_back(MakeObj("created-leased-" + std::to_string(i), 600 + i, 4096));
    PutLeased(holder.get(), created_leased.back(), -5);
    leased.push_back(MakeObj("leased-" + std::to_string(i), 700 + i, 4096));
    Put(c.get(), leased.back(), -5, 0);
    uint32_t n = 0;
    REQUIRE(store_lease(holder.get(), &leased.back().id, &n) == STORE_OK);
    REQUIRE(n == 1);
  }
  CHECK(Stats(c.get()).evictable_bytes == plain_bytes);
  // A second lease, then its release: still held by the first.
  uint32_t n = 0;
  REQUIRE(store_lease(c.get(), &leased[0].id, &n) == STORE_OK);
  REQUIRE(n == 2);
  REQUIRE(store_unlease(c.get(), &leased[0].id, &n) == STORE_OK);
  REQUIRE(n == 1);
  CHECK(Stats(c.get()).evictable_bytes == plain_bytes);

  // At the limit (40 objects) each create drops a plain one, never a leased one.
  std::vector<Obj> more;
  for (int i = 0; i < 15; i++) {
    more.push_back(MakeObj("more-" + std::to_string(i), 800 + i, 4096));
    Put(c.get(), more.back(), 0, 0);
  }
  store_stats st = Stats(c.get());
  CHECK(st.object_count == 40);
  CHECK(st.total_dropped_objects == 5);
  for (int i = 0; i < 5; i++) CHECK_FALSE(Present(c.get(), plain[i]));
  for (const Obj& o : created_leased) CHECK(Present(c.get(), o));
  for (const Obj& o : leased) CHECK(Present(c.get(), o));

  // Its last lease gone, leased[3] is a candidate again, and the first (lowest importance).
  const uint64_t before = Stats(c.get()).evictable_bytes;
  REQUIRE(store_unlease(holder.get(), &leased[3].id, &n) == STORE_OK);
  REQUIRE(n == 0);
  CHECK(Stats(c.get()).evictable_bytes > before);
  Put(c.get(), MakeObj("after-unlease", 900, 4096), 0, 0);
  CHECK_FALSE(Present(c.get(), leased[3]));
  CHECK(Present(c.get(), plain[5]));
  CHECK(Stats(c.get()).total_dropped_objects == 6);

  // The holder gone: the objects it created leased go with it, the others it leased become
  // candidates, and the next create drops the first of them.
  holder.reset();
  REQUIRE(test::WaitFor([&] { return Stats(c.get()).object_count == 30; },
                        std::chrono::seconds(10)));
  for (const Obj& o : created_leased) CHECK_FALSE(Present(c.get(), o));
  CHECK(Stats(c.get()).evictable_bytes > before);
  for (int i = 0; i < 11; i++) Put(c.get(), MakeObj("last-" + std::to_string(i), 950 + i, 4096), 0, 0);
  CHECK_FALSE(Present(c.get(), leased[0]));
  CHECK(Present(c.get(), leased[1]));
  CHECK(Present(c.get(), plain[5]));
  CHECK(s.Alive());
}

// A 32M store in drop mode whose memory is cut into holes: 1 MiB objects written by "hog"
// (never sealed) until it is full, every other one then aborted (null in unsealed), so holes
// of 1 MiB lie between objects that stay. c is a second client.
struct Holed {
  test::TestStore s{"32M", kDrop};
  ClientPtr hog, c;
  std::vector<WriterPtr> unsealed;
  Holed() {
    REQUIRE(s.started());
    hog = Connect(s.socket(), "hog");
    c = Connect(s.socket(), "when_full");
    unsealed = CutIntoHoles(hog.get());
  }
};

// Objects that stay (here unsealed ones) cut the free memory into 1 MiB holes. A create of
// 3 MiB could not fit whatever was dropped, and used to drop every droppable object anyway, one
// at a time, before it failed (and then each later put too). Now nothing is dropped for it.
TEST_CASE("drop: a create that no drop could fit drops nothing") {
  Holed h;
  test::TestStore& s = h.s;
  ClientPtr& c = h.c;
  std::vector<WriterPtr>& unsealed = h.unsealed;
  std::vector<Obj> kept;
  for (int i = 0; i < 4; i++) {
    kept.push_back(MakeObj("kept-" + std::to_string(i), 1100 + i, kMiB));
    Put(c.get(), kept.back(), 0, 0);
  }
  const Obj big = MakeObj("three-mib", 1200, 3 * kMiB);
  CHECK(TryPut(c.get(), big, 0, 0) == STORE_ENOSPACE);
  CHECK(TryPut(c.get(), big, 0, 200) == STORE_ETIMEDOUT);
  store_stats st = Stats(c.get());
  CHECK(st.total_dropped_objects == 0);
  for (const Obj& o : kept) {
    CHECK(Present(c.get(), o));
    ReadBack(c.get(), o);
  }
  // A put that fits a hole is kept too.
  const Obj small = MakeObj("fits", 1201, kMiB / 2);
  Put(c.get(), small, 0, 0);
  CHECK(Present(c.get(), small));
  CHECK(Stats(c.get()).total_dropped_objects == 0);
  // With the unsealed objects gone, the same create fits.
  unsealed.clear();  // aborts the rest
  Put(c.get(), big, 0, 0);
  CHECK(Present(c.get(), big));
  CHECK(s.Alive());
}

// The same with every hole filled: the create's bytes are not free, so the least valuable
// objects are chosen by bytes first. They used to be dropped before the check that dropping
// could make a run long enough at all: three objects went for nothing at each try.
TEST_CASE("drop: a create that no drop could fit drops nothing, with no bytes free") {
  Holed h;
  test::TestStore& s = h.s;
  ClientPtr& c = h.c;
  std::vector<WriterPtr>& unsealed = h.unsealed;
  // Every hole filled with an object that may be dropped.
  std::vector<Obj> kept;
  for (size_t i = 0; i < unsealed.size(); i += 2) {
    kept.push_back(MakeObj("kept-" + std::to_string(i), 1100 + i, kMiB));
    Put(c.get(), kept.back(), 0, 0);
  }
  REQUIRE(Stats(c.get()).total_dropped_objects == 0);
  REQUIRE(Stats(c.get()).largest_free_bytes < 3 * kMiB);
  const Obj big = MakeObj("three-mib", 1200, 3 * kMiB);
  CHECK(TryPut(c.get(), big, 0, 0) == STORE_ENOSPACE);
  CHECK(TryPut(c.get(), big, 0, 200) == STORE_ETIMEDOUT);
  CHECK(Stats(c.get()).total_dropped_objects == 0);
  for (const Obj& o : kept) CHECK(Present(c.get(), o));
  unsealed.clear();
  CHECK(s.Alive());
}

// Small objects live in extents of pages: dropping them empties the extents, which then make
// a run of pages for a large object. The check that a drop could make a run long enough must
// not take their pages for ones that never come free.
TEST_CASE("drop: a large create fits by dropping small objects") {
  test::TestStore s("16M", kDrop);
  REQUIRE(s.started());
  ClientPtr c = Connect(s.socket(), "when_full");
  std::vector<Obj> small;
  for (int i = 0; i < 4096; i++) {
    small.push_back(MakeObj("small-" + std::to_string(i), 3000 + i, 8 * 1024));
    Put(c.get(), small.back(), 0, 0);
    if (Stats(c.get()).total_dropped_objects > 0) break;
  }
  REQUIRE(Stats(c.get()).largest_free_bytes < kMiB);
  const Obj big = MakeObj("big", 2999, kMiB);
  Put(c.get(), big, 0, 0);
  CHECK(Present(c.get(), big));
  ReadBack(c.get(), big);
  CHECK(s.Alive());
}

TEST_CASE("drop: when the first victims are not next to each other, the next ones go too") {
  test::TestStore s("16M", kDrop);
  REQUIRE(s.started());
  ClientPtr c = Connect(s.socket(), "when_full");
  const uint64_t k = Slots();
  // Objects taken one after another from empty memory lie one after another in it.
  std::vector<Obj> a;
  for (uint64_t i = 0; i < k; i++) {
    a.push_back(MakeObj("a-" + std::to_string(i), 500 + i, kMiB));
    Put(c.get(), a.back(), 0, 0);
  }
  // a[1] read: the least recently used are a[0], a[2], a[3], ... Two of them free 2 MiB, but
  // a[0] and a[2] are not next to each other; with a[3] too, a[2] and a[3] hold 2 MiB in one.
  ReadBack(c.get(), a[1]);
  const Obj big = MakeObj("big", 600, 2 * kMiB);
  Put(c.get(), big, 0, 0);
  ReadBack(c.get(), big);
  const store_stats st = Stats(c.get());
  CHECK(st.total_dropped_objects == 3);
  CHECK(st.total_dropped_bytes == 3 * kMiB);
  for (uint64_t i = 0; i < k; i++) {
    INFO("a[", i, "]");
    CHECK(Present(c.get(), a[i]) == (i == 1 || i >= 4));
  }
}

// ---------------------------------------------------------------------------------------------
// What is never dropped.

TEST_CASE("drop: open, pinned, leased and unsealed objects stay; with only those, creates fail") {
  test::TestStore s("16M", kDrop);
  REQUIRE(s.started());
  ClientPtr c = Connect(s.socket(), "when_full");
  const uint64_t k = Slots();

  // The held ones come first and have the lowest importance: only the rules keep them.
  const Obj open = MakeObj("open", 1, kMiB), pinned = MakeObj("pinned", 2, kMiB),
            leased = MakeObj("leased", 3, kMiB), created_leased = MakeObj("created-leased", 4, kMiB),
            unsealed = MakeObj("unsealed", 5, kMiB);
  Put(c.get(), open, -5, 0);
  Put(c.get(), pinned, -5, 0);
  Put(c.get(), leased, -5, 0);
  PutLeased(c.get(), created_leased, -5);
  ReaderPtr reader = Open(c.get(), open);
  REQUIRE(store_pin(c.get(), &pinned.id) == STORE_OK);
  uint32_t leases = 0;
  REQUIRE(store_lease(c.get(), &leased.id, &leases) == STORE_OK);
  REQUIRE(leases == 1);
  store_create_options opts = STORE_CREATE_OPTIONS_INIT;
  opts.importance = -5;
  opts.timeout_ms = 0;
  store_writer* w = nullptr;
  REQUIRE(store_create(c.get(), &w, &unsealed.id, unsealed.size, &opts) == STORE_OK);
  WriterPtr writer(w);
  Fill(unsealed.seed, static_cast<uint8_t*>(store_writer_data(w)), unsealed.size);

  // Three times the store through it: every create fits at once, by dropping the others.
  for (uint64_t i = 0; i < 3 * k; i++) Put(c.get(), MakeObj("churn-" + std::to_string(i), 10 + i, kMiB), 0, 0);
  for (const Obj* o : {&open, &pinned, &leased, &created_leased}) {
    INFO(Hex(o->id));
    CHECK(Present(c.get(), *o));
    ReadBack(c.get(), *o);
  }
  CHECK(Info(c.get(), unsealed).state == STORE_STATE_CREATED);
  store_stats st = Stats(c.get());
  CHECK(st.total_dropped_objects == 3 * k - (k - 5));
  CHECK(st.object_count == k);

  // Now every other object is held too (opened): nothing is droppable.
  std::vector<ReaderPtr> held;
  std::vector<store_object_info> infos;
  {
    store_object_info* list = nullptr;
    size_t n = 0;
    REQUIRE(store_list(c.get(), &list, sizeof *list, &n) == STORE_OK);
    infos.assign(list, list + n);
    store_free(list);
  }
  for (const store_object_info& i : infos) {
    if (i.importance != 0) continue;
    store_reader* r = nullptr;
    REQUIRE(store_open_reader(c.get(), &r, &i.id, 0) == STORE_OK);
    held.emplace_back(r);
  }
  REQUIRE(held.size() == k - 5);
  REQUIRE(Stats(c.get()).evictable_bytes == 0);  // the two leased ones are no candidates
  const Obj extra = MakeObj("extra", 7, kMiB);
  CHECK(TryPut(c.get(), extra, 0, 0) == STORE_ENOSPACE);
  const std::string full = store_last_error_message();
  INFO(full);
  CHECK(full.find("leased") != std::string::npos);
  CHECK(full.find("would not make room") != std::string::npos);
  CHECK(TryPut(c.get(), extra, 0, 200) == STORE_ETIMEDOUT);
  st = Stats(c.get());
  CHECK(st.total_full == 2);
  CHECK(st.total_dropped_objects == 3 * k - (k - 5));  // nothing was dropped in vain
  CHECK(st.object_count == k);
  for (const Obj* o : {&open, &pinned, &leased, &created_leased}) CHECK(Present(c.get(), *o));

  // Finishing the unsealed object keeps it too: sealed, it is the newest, and read.
  REQUIRE(store_writer_seal(writer.release()) == STORE_OK);
  ReadBack(c.get(), unsealed);
  held.clear();
}

// ---------------------------------------------------------------------------------------------
// Creates waiting for room.

TEST_CASE("drop: a waiting create is served when an object becomes droppable") {
  struct Case {
    const char* name;
    // Makes the one object that is not held (hold) droppable (free).
    std::function<void(store_client*, const Obj&)> hold;
    std::function<void(store_client*, const Obj&)> free;
  };
  std::vector<ReaderPtr> readers;   // the holding readers of the case's own client
  ClientPtr holder;                 // a client whose disconnect releases what it held
  const std::vector<Case> cases = {
      {"a reader closes",
       [&](store_client* c, const Obj& o) { readers.push_back(Open(c, o)); },
       [&](store_client*, const Obj&) { readers.clear(); }},
      {"an unpin",
       [](store_client* c, const Obj& o) { REQUIRE(store_pin(c, &o.id) == STORE_OK); },
       [](store_client* c, const Obj& o) { REQUIRE(store_unpin(c, &o.id) == STORE_OK); }},
      {"an unlease",
       [](store_client* c, const Obj& o) { REQUIRE(store_lease(c, &o.id, nullptr) == STORE_OK); },
       [](store_client* c, const Obj& o) { REQUIRE(store_unlease(c, &o.id, nullptr) == STORE_OK); }},
      {"the reader's client disconnects",
       [&](store_client*, const Obj& o) { readers.push_back(Open(holder.get(), o)); },
       [&](store_client*, const Obj&) {
         holder.reset();   // its readers end with it in the store ...
         readers.clear();  // ... and their handles may still be closed, sending nothing
       }},
  };
  for (const Case& k : cases) {
    INFO(k.name);
    test::TestStore s("16M", kDrop);
    REQUIRE(s.started());
    ClientPtr c = Connect(s.socket(), "when_full");
    holder = Connect(s.socket(), "holder");
    const uint64_t slots = Slots();
    // The store is full of pinned objects and one that is held the case's way.
    std::vector<Obj> pinned;
    for (uint64_t i = 0; i + 1 < slots; i++) {
      pinned.push_back(MakeObj("pinned-" + std::to_string(i), 10 + i, kMiB));
      Put(c.get(), pinned.back(), 0, 0);
      REQUIRE(store_pin(c.get(), &pinned.back().id) == STORE_OK);
    }
    const Obj held = MakeObj("held", 1, kMiB);
    Put(c.get(), held, 0, 0);
    k.hold(c.get(), held);
    // Nothing can be dropped now.
    REQUIRE(TryPut(c.get(), MakeObj("no-room", 3, kMiB), 0, 0) == STORE_ENOSPACE);

    const Obj want = MakeObj("want", 2, kMiB);
    WaitingPut put(s.socket(), want, 20000);
    REQUIRE(test::WaitFor([&] { return Stats(c.get()).waiting_creates == 1; }));
    CHECK_FALSE(put.done());
    k.free(c.get(), held);
    const auto t0 = std::chrono::steady_clock::now();
    CHECK(put.Result() == STORE_OK);
    // Served by the event, not by the create's deadline.
    CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(10));
    CHECK_FALSE(Present(c.get(), held));
    ReadBack(c.get(), want);
    const store_stats st = Stats(c.get());
    CHECK(st.total_dropped_objects == 1);
    CHECK(st.waiting_creates == 0);
    readers.clear();
    holder.reset();
  }
}

TEST_CASE("drop: a create waiting for an object being written drops it once it is sealed") {
  test::TestStore s("16M", kDrop);
  REQUIRE(s.started());
  ClientPtr c = Connect(s.socket(), "when_full");
  const uint64_t slots = Slots();
  std::vector<Obj> pinned;
  for (uint64_t i = 0; i + 1 < slots; i++) {
    pinned.push_back(MakeObj("pinned-" + std::to_string(i), 10 + i, kMiB));
    Put(c.get(), pinned.back(), 0, 0);
    REQUIRE(store_pin(c.get(), &pinned.back().id) == STORE_OK);
  }
  const Obj written = MakeObj("written", 1, kMiB);
  store_create_options opts = STORE_CREATE_OPTIONS_INIT;
  opts.timeout_ms = 0;
  store_writer* w = nullptr;
  REQUIRE(store_create(c.get(), &w, &written.id, written.size, &opts) == STORE_OK);
  Fill(written.seed, static_cast<uint8_t*>(store_writer_data(w)), written.size);

  WaitingPut put(s.socket(), MakeObj("want", 2, kMiB), 20000);
  REQUIRE(test::WaitFor([&] { return Stats(c.get()).waiting_creates == 1; }));
  REQUIRE(store_writer_seal(w) == STORE_OK);
  CHECK(put.Result() == STORE_OK);
  CHECK_FALSE(Present(c.get(), written));
  CHECK(Stats(c.get()).total_dropped_objects == 1);
}

// ---------------------------------------------------------------------------------------------
// How drops are reported.

TEST_CASE("drop: the log line, store info and the metrics file") {
  test::TempDir tmp;
  const std::string metrics = tmp / "metrics.prom";
  std::vector<std::string> args = kDrop;
  args.insert(args.end(), {"--log-level", "info", "--metrics-file", metrics,
                           "--metrics-interval", "0.05"});
  test::TestStore s("16M", args);
  REQUIRE(s.started());
  ClientPtr c = Connect(s.socket(), "when_full");
  const uint64_t slots = Slots();
  CHECK(s.Log().find("when full, unused objects are dropped") != std::string::npos);
  for (uint64_t i = 0; i < slots + 5; i++) Put(c.get(), MakeObj("x-" + std::to_string(i), i, kMiB), 0, 0);
  const uint64_t dropped = Stats(c.get()).total_dropped_objects;
  CHECK(dropped == 5);
  // Every drop is in a line soon, also the ones after the first of a burst, with no further drop
  // to push them out.
  CHECK(test::WaitFor([&] { return LoggedDrops(s) == dropped; }, std::chrono::seconds(5)));
  INFO(s.Log());
  CHECK(std::regex_search(s.Log(), std::regex("dropped [0-9]+ objects? \\([0-9.]+ MiB\\) to make room")));

  // store info.
  const std::string out = tmp / "info.out";
  pid_t pid = test::Spawn({test::StoreBin(), "info", "--socket", s.socket()}, out);
  REQUIRE(test::ExitedCleanly(test::WaitExit(pid)));
  const std::string info = ReadAll(out);
  INFO(info);
  CHECK(info.find("\nwhen_full_drop:1\n") != std::string::npos);
  CHECK(info.find("\ntotal_dropped_objects:5\n") != std::string::npos);
  CHECK(info.find("\ntotal_dropped_bytes:" + std::to_string(5 * kMiB) + "\n") != std::string::npos);

  // The metrics file.
  CHECK(test::WaitFor([&] {
    const std::string m = ReadAll(metrics);
    return m.find("\nstore_dropped_objects_total 5\n") != std::string::npos &&
           m.find("\nstore_dropped_bytes_total " + std::to_string(5 * kMiB) + "\n") !=
               std::string::npos &&
           m.find("\nstore_when_full_drop 1\n") != std::string::npos;
  }));
}

// ---------------------------------------------------------------------------------------------
// The default mode, and the flag's usage.

TEST_CASE("refuse (the default, and when asked): a full store refuses creates, drops nothing") {
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{}, std::vector<std::string>{"--when-full", "refuse"}}) {
    const std::string mode = args.empty() ? "default" : "--when-full refuse";
    INFO(mode);
    test::TestStore s("16M", args);
    REQUIRE(s.started());
    ClientPtr c = Connect(s.socket(), "when_full");
    const uint64_t k = Slots();
    std::vector<Obj> objs;
    for (uint64_t i = 0; i < k; i++) {
      objs.push_back(MakeObj("r-" + std::to_string(i), i, kMiB));
      Put(c.get(), objs.back(), 0, 0);
    }
    CHECK(TryPut(c.get(), MakeObj("one-more", 99, kMiB), 0, 0) == STORE_ENOSPACE);
    CHECK(std::string(store_last_error_message()).find("dropping") == std::string::npos);
    CHECK(TryPut(c.get(), MakeObj("one-more", 99, kMiB), 0, 100) == STORE_ETIMEDOUT);
    const store_stats st = Stats(c.get());
    CHECK(st.when_full_drop == 0);
    CHECK(st.total_dropped_objects == 0);
    CHECK(st.total_dropped_bytes == 0);
    CHECK(st.total_full == 2);
    for (const Obj& o : objs) CHECK(Present(c.get(), o));
  }
}

TEST_CASE("--when-full: drop with --spill-dir, and bad values, are usage errors (exit 2)") {
  test::TempDir tmp;
  const std::string sock = tmp / "s.sock", spill = tmp.Sub("spill");
  const std::vector<std::vector<std::string>> cases = {
      {"--when-full", "drop", "--spill-dir", spill},
      {"--spill-dir", spill, "--when-full=drop"},
      {"--when-full", "maybe"},
      {"--when-full", ""},
      {"--when-full", "Drop"},
      {"--when-full"},
  };
  for (const auto& extra : cases) {
    std::string shown;
    for (const auto& a : extra) shown += " '" + a + "'";
    INFO("store", shown);
    const std::string log = tmp / "run.log";
    std::remove(log.c_str());
    std::vector<std::string> args = {test::StoreBin(), "--socket", sock};
    args.insert(args.end(), extra.begin(), extra.end());
    const int status = test::WaitExit(test::Spawn(args, log));
    const std::string err = ReadAll(log);
    INFO(err);
    CHECK(status != -1);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 2);
    CHECK(std::count(err.begin(), err.end(), '\n') == 1);
    CHECK(err.find("--when-full") != std::string::npos);
    if (extra.size() > 2) CHECK(err.find("--spill-dir") != std::string::npos);
    CHECK_FALSE(test::SocketAccepts(sock));
  }
  // Documented in --help.
  const std::string help = tmp / "help.out";
  REQUIRE(test::ExitedCleanly(test::WaitExit(test::Spawn({test::StoreBin(), "--help"}, help))));
  CHECK(ReadAll(help).find("--when-full MODE") != std::string::npos);
  // --when-full=drop is the same flag.
  test::TestStore s("16M", {"--when-full=drop"});
  REQUIRE(s.started());
  ClientPtr c = Connect(s.socket(), "when_full");
  CHECK(Stats(c.get()).when_full_drop == 1);
}
