// test_spilling.cpp - spilling to disk end to end, against a real store server started with
// --spill-dir: many times more data than memory, eviction order (importance, LRU, pins, open
// readers), storage levels, spill URLs and the file layout behind them, the life of spill files,
// prefetch, shared restores, corrupted files, creates waiting for spills, recovery after a
// crash, compaction and its counters, and the disk threshold.
#include <doctest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "client_util.h"
#include "harness.h"
#include "spill_util.h"
#include "storeclient.h"

namespace fs = std::filesystem;

using namespace spill_test;

// ---------------------------------------------------------------------------------------------
// Volume.

TEST_CASE("512 MiB of mixed sizes through a 64 MiB store: everything reads back byte-exact") {
  TempDir tmp;
  const std::string dir = tmp.Sub("spill");
  test::TestStore s("64M", SpillArgs(dir));
  REQUIRE(s.started());
  ClientPtr c = Connect(s.socket());

  // Sizes from 4 KiB to 8 MiB (a fixed sequence), some with metadata.
  std::vector<Obj> objs;
  uint64_t total = 0;
  for (uint64_t i = 0; total < 512 * kMiB; i++) {
    uint64_t r = Mix(0xB0B + i);
    uint64_t base = 4 * kKiB << (r % 12);  // 4 KiB .. 8 MiB
    uint64_t size = std::min<uint64_t>(8 * kMiB, base + (r >> 20) % base);
    uint64_t meta = i % 4 == 0 ? 1 + (r >> 40) % 4096 : 0;
    objs.push_back(MakeObj("bulk-" + std::to_string(i), 1000 + i, size, meta));
    total += size;
  }
  INFO(objs.size(), " objects, ", total, " bytes");

  auto t0 = std::chrono::steady_clock::now();
  for (const Obj& o : objs) Put(c.get(), o, 0, -1);
  auto t1 = std::chrono::steady_clock::now();

  REQUIRE(test::WaitFor([&] { return Quiet(c.get()); }));
  store_stats st = Stats(c.get());
  CHECK(st.spill_enabled == 1);
  CHECK(st.object_count == objs.size());
  CHECK(st.sealed_count + st.spilled_count == objs.size());
  CHECK(st.spilled_count > 0);
  CHECK(st.total_spilled_objects > 0);
  CHECK(st.total_spilled_bytes > 0);
  CHECK(st.total_spill_failures == 0);
  CHECK(st.used_bytes <= st.capacity_bytes);
  // The files the server counts are the files on disk.
  uint64_t disk_bytes = 0;
  std::vector<std::string> files = SpillFiles(dir, &disk_bytes);
  CHECK(!files.empty());
  CHECK(files.size() == st.spill_files);
  CHECK(disk_bytes == st.spill_disk_bytes);

  for (const Obj& o : objs) ReadBack(c.get(), o);
  auto t2 = std::chrono::steady_clock::now();
  MESSAGE("wrote ", total >> 20, " MiB in ", objs.size(), " objects in ",
          std::chrono::duration<double>(t1 - t0).count(), " s, read back in ",
          std::chrono::duration<double>(t2 - t1).count(), " s");

  REQUIRE(test::WaitFor([&] { return Quiet(c.get()); }));
  st = Stats(c.get());
  CHECK(st.total_restored_objects > 0);
  CHECK(st.total_restored_bytes > 0);
  CHECK(st.total_restore_failures == 0);
  CHECK(st.object_count == objs.size());

  // Deleting everything removes every spill file.
  for (const Obj& o : objs) Delete(c.get(), o);
  CHECK(test::WaitFor([&] { return SpillFiles(dir).empty(); }));
  st = Stats(c.get());
  CHECK(st.object_count == 0);
  CHECK(st.used_bytes == 0);
  CHECK(st.spill_files == 0);
  CHECK(st.spill_disk_bytes == 0);
  CHECK(ExitedZero(s.Stop()));
  CHECK(InstanceDirs(dir).empty());
}

// ---------------------------------------------------------------------------------------------
// Eviction order.

TEST_CASE("eviction order: low importance first, never pinned or open objects; set_importance") {
  TempDir tmp;
  const std::string dir = tmp.Sub("spill");
  test::TestStore s("64M", SpillArgs(dir));
  REQUIRE(s.started());
  ClientPtr c = Connect(s.socket());

  // 1 MiB is one allocator size class: each object frees exactly 1 MiB. The pinned and the
  // open object come first and have the lowest importance: only the rules keep them in memory.
  const Obj pinned = MakeObj("pinned", 1, kMiB);
  const Obj open = MakeObj("open", 2, kMiB);
  Put(c.get(), pinned, 0);
  Put(c.get(), open, 0);
  REQUIRE(store_pin(c.get(), &pinned.id) == STORE_OK);
  ReaderPtr reader = Open(c.get(), open);
  std::vector<Obj> low, high;
  for (int i = 0; i < 10; i++) {
    low.push_back(MakeObj("low-" + std::to_string(i), 100 + i, kMiB));
    high.push_back(MakeObj("high-" + std::to_string(i), 200 + i, kMiB));
    Put(c.get(), low.back(), 0);   // interleaved: creation order alone would mix them
    Put(c.get(), high.back(), 10);
  }
  CHECK(Info(c.get(), high[0]).importance == 10);
  CHECK(Stats(c.get()).total_spilled_objects == 0);

  // Half of what is in memory: the low ones, and only them.
  uint64_t spilled = Evict(c.get(), 10 * kMiB);
  CHECK(spilled >= 10 * kMiB);
  for (const Obj& o : low) CHECK(IsSpilled(c.get(), o));
  for (const Obj& o : high) CHECK(InMemoryOnly(c.get(), o));
  CHECK(InMemoryOnly(c.get(), pinned));
  CHECK(InMemoryOnly(c.get(), open));

  // More: among the high ones (equal importance), the least recently used go first.
  CHECK(Evict(c.get(), 3 * kMiB) >= 3 * kMiB);
  for (int i = 0; i < 10; i++) {
    INFO("high-", i);
    CHECK(Info(c.get(), high[i]).state == (i < 3 ? STORE_STATE_SPILLED : STORE_STATE_SEALED));
  }

  // Everything: the pinned object and the open one never leave memory.
  Evict(c.get(), kAll);
  for (const Obj& o : high) CHECK(IsSpilled(c.get(), o));
  store_object_info pi = Info(c.get(), pinned), oi = Info(c.get(), open);
  CHECK(pi.state == STORE_STATE_SEALED);
  CHECK(pi.level == STORE_LEVEL_MEMORY);
  CHECK(pi.pin_count == 1);
  CHECK(oi.state == STORE_STATE_SEALED);
  CHECK(oi.level == STORE_LEVEL_MEMORY);
  CHECK(oi.reader_count == 1);
  CHECK(Matches(open.seed, static_cast<const uint8_t*>(store_reader_data(reader.get())), kMiB));
  store_stats st = Stats(c.get());
  CHECK(st.evictable_bytes == 0);
  CHECK(st.spilled_count == 20);
  CHECK(st.total_spilled_objects == 20);
  // store_list shows the spilled objects too.
  store_object_info* list = nullptr;
  size_t count = 0;
  REQUIRE(store_list(c.get(), &list, sizeof *list, &count) == STORE_OK);
  CHECK(count == 22);
  size_t listed_spilled = 0;
  for (size_t k = 0; k < count; k++) {
    if (list[k].state == STORE_STATE_SPILLED && list[k].level == STORE_LEVEL_DISK) listed_spilled++;
  }
  store_free(list);
  CHECK(listed_spilled == 20);
  // Nothing left to spill: the evict succeeds and frees nothing.
  CHECK(Evict(c.get(), kAll) == 0);

  // store_set_importance reorders: the oldest low object raised to 20 is spilled last.
  std::vector<Obj> more;
  for (int i = 0; i < 6; i++) {
    more.push_back(MakeObj("more-" + std::to_string(i), 300 + i, kMiB));
    Put(c.get(), more.back(), 0);
  }
  REQUIRE(store_set_importance(c.get(), &more[0].id, 20) == STORE_OK);
  CHECK(Info(c.get(), more[0]).importance == 20);
  CHECK(Evict(c.get(), 5 * kMiB) >= 5 * kMiB);
  CHECK(InMemoryOnly(c.get(), more[0]));
  for (int i = 1; i < 6; i++) CHECK(IsSpilled(c.get(), more[i]));
  CHECK(Evict(c.get(), kMiB) >= kMiB);
  CHECK(IsSpilled(c.get(), more[0]));
  // Lowering works too, and on a spilled object; a missing id is STORE_ENOTFOUND.
  REQUIRE(store_set_importance(c.get(), &more[0].id, -5) == STORE_OK);
  CHECK(Info(c.get(), more[0]).importance == -5);
  const store_object_id missing = Id("no-such-object");
  CHECK(store_set_importance(c.get(), &missing, 1) == STORE_ENOTFOUND);

  // Everything still reads back.
  reader.reset();
  for (const Obj& o : low) ReadBack(c.get(), o);
  for (const Obj& o : high) ReadBack(c.get(), o);
  for (const Obj& o : more) ReadBack(c.get(), o);
  ReadBack(c.get(), pinned);
  REQUIRE(store_unpin(c.get(), &pinned.id) == STORE_OK);
  CHECK(ExitedZero(s.Stop()));
}

TEST_CASE("LRU within equal importance: recently read objects stay in memory longer") {
  TempDir tmp;
  const std::string dir = tmp.Sub("spill");
  test::TestStore s("64M", SpillArgs(dir));
  REQUIRE(s.started());
  ClientPtr c = Connect(s.socket());

  std::vector<Obj> objs;
  for (int i = 0; i < 10; i++) {
    objs.push_back(MakeObj("lru-" + std::to_string(i), 10 + i, kMiB));
    Put(c.get(), objs.back(), 3);
  }
  // Read the even ones, newest first: 8, 6, 4, 2, 0 (0 is the most recently used).
  for (int i = 8; i >= 0; i -= 2) ReadBack(c.get(), objs[i]);

  CHECK(Evict(c.get(), 5 * kMiB) >= 5 * kMiB);
  for (int i = 0; i < 10; i++) {
    INFO("lru-", i);
    if (i % 2) {
      CHECK(IsSpilled(c.get(), objs[i]));
    } else {
      CHECK(InMemoryOnly(c.get(), objs[i]));
    }
  }
  // Next: the least recently read of the even ones.
  CHECK(Evict(c.get(), 2 * kMiB) >= 2 * kMiB);
  CHECK(IsSpilled(c.get(), objs[8]));
  CHECK(IsSpilled(c.get(), objs[6]));
  CHECK(InMemoryOnly(c.get(), objs[4]));
  CHECK(InMemoryOnly(c.get(), objs[2]));
  CHECK(InMemoryOnly(c.get(), objs[0]));
  for (const Obj& o : objs) ReadBack(c.get(), o);
}

// ---------------------------------------------------------------------------------------------
// Levels, URLs and files.

TEST_CASE("levels: DISK when spilled, MEMORY|DISK after a restore; evicting again writes nothing") {
  TempDir tmp;
  const std::string dir = tmp.Sub("spill");
  test::TestStore s("64M", SpillArgs(dir));
  REQUIRE(s.started());
  ClientPtr c = Connect(s.socket());

  const Obj x = MakeObj("levels", 7, 3 * kMiB + 5, 77);
  Put(c.get(), x);
  store_object_info i = Info(c.get(), x);
  CHECK(i.state == STORE_STATE_SEALED);
  CHECK(i.level == STORE_LEVEL_MEMORY);
  char url[1024];
  CHECK(store_spill_url(c.get(), &x.id, url, sizeof url) == STORE_ENOTFOUND);

  CHECK(Evict(c.get(), kAll) >= 3 * kMiB);
  i = Info(c.get(), x);
  CHECK(i.state == STORE_STATE_SPILLED);
  CHECK(i.level == STORE_LEVEL_DISK);
  CHECK(i.data_size == x.size);
  CHECK(i.metadata_size == x.meta);
  store_stats st1 = Stats(c.get());
  CHECK(st1.total_spilled_objects == 1);
  CHECK(st1.total_spilled_bytes == 16 + x.size + x.meta);
  CHECK(st1.spilled_count == 1);
  CHECK(st1.spilled_bytes == x.size + x.meta);
  CHECK(st1.used_bytes == 0);
  const std::string url1 = UrlOf(c.get(), x).path;

  ReadBack(c.get(), x);  // restores
  i = Info(c.get(), x);
  CHECK(i.state == STORE_STATE_SEALED);
  CHECK(i.level == (STORE_LEVEL_MEMORY | STORE_LEVEL_DISK));
  store_stats st2 = Stats(c.get());
  CHECK(st2.total_restored_objects == st1.total_restored_objects + 1);
  CHECK(st2.total_restored_bytes == st1.total_restored_bytes + 16 + x.size + x.meta);
  CHECK(st2.spill_files == 1);
  CHECK(UrlOf(c.get(), x).path == url1);  // the copy on disk is kept

  // Evicting it again drops it from memory without writing.
  CHECK(Evict(c.get(), kAll) >= 3 * kMiB);
  i = Info(c.get(), x);
  CHECK(i.state == STORE_STATE_SPILLED);
  CHECK(i.level == STORE_LEVEL_DISK);
  store_stats st3 = Stats(c.get());
  CHECK(st3.total_spilled_bytes == st2.total_spilled_bytes);
  CHECK(st3.total_spilled_objects == st2.total_spilled_objects);
  CHECK(st3.spill_files == 1);
  CHECK(st3.used_bytes == 0);
  CHECK(SpillFiles(dir).size() == 1);
  ReadBack(c.get(), x);
}

TEST_CASE("store_spill_url: the record at that offset holds the header, metadata and data") {
  TempDir tmp;
  const std::string dir = tmp.Sub("spill");
  test::TestStore s("64M", SpillArgs(dir));
  REQUIRE(s.started());
  ClientPtr c = Connect(s.socket());

  std::vector<Obj> objs = {MakeObj("url-a", 41, 100 * kKiB + 3, 333),
                           MakeObj("url-b", 42, 2 * kMiB, 0),
                           MakeObj("url-c", 43, 17, 1000)};
  for (const Obj& o : objs) Put(c.get(), o);
  Evict(c.get(), kAll);

  std::string path;
  for (const Obj& o : objs) {
    INFO("object ", Hex(o.id));
    SpillUrl u = UrlOf(c.get(), o);
    CHECK(u.path.front() == '/');
    CHECK(StartsWith(u.path, dir + "/store-"));
    if (path.empty()) path = u.path;
    CHECK(u.path == path);  // spilled together: one fused file
    CHECK(u.size == 16 + o.meta + o.size);
    std::vector<uint8_t> rec = ReadFileAt(u.path, u.offset, u.size);
    CHECK(LoadU64(rec.data()) == o.meta);
    CHECK(LoadU64(rec.data() + 8) == o.size);
    CHECK(Matches(MetaSeed(o.seed), rec.data() + 16, o.meta));
    CHECK(Matches(o.seed, rec.data() + 16 + o.meta, o.size));
  }

  // The buffer must hold the URL and its NUL.
  char url[4096];
  REQUIRE(store_spill_url(c.get(), &objs[0].id, url, sizeof url) == STORE_OK);
  size_t n = std::strlen(url);
  CHECK(store_spill_url(c.get(), &objs[0].id, url, n) == STORE_EINVAL);
  CHECK(store_spill_url(c.get(), &objs[0].id, url, n + 1) == STORE_OK);
  CHECK(std::strlen(url) == n);
  const store_object_id missing = Id("no-such-object");
  CHECK(store_spill_url(c.get(), &missing, url, sizeof url) == STORE_ENOTFOUND);
  for (const Obj& o : objs) ReadBack(c.get(), o);
}

// How many of pid's descriptors name target (readlink of /proc/<pid>/fd/N), or that start with
// prefix when target ends with '*'.
int ServerFdsTo(pid_t pid, const std::string& target) {
  const bool prefix = !target.empty() && target.back() == '*';
  const std::string want = prefix ? target.substr(0, target.size() - 1) : target;
  int n = 0;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec)) {
    std::error_code rec;
    std::string to = fs::read_symlink(e.path(), rec).string();
    if (rec) continue;
    if (prefix ? to.rfind(want, 0) == 0 : to == want) n++;
  }
  return n;
}

TEST_CASE("a spill file is deleted with the last object in it; the store's directory at stop") {
  TempDir tmp;
  const std::string dir = tmp.Sub("spill");
  // Compaction off: with 3 of 4 records dead it could otherwise rewrite the file in between.
  test::TestStore s("64M", SpillArgs(dir, {"--spill-compact", "1"}));
  REQUIRE(s.started());
  ClientPtr c = Connect(s.socket());

  // Before any spill: this store's own subdirectory exists, with no spill file.
  std::vector<std::string> mine = InstanceDirs(dir);
  REQUIRE(mine.size() == 1);
  CHECK(fs::exists(mine[0] + "/LOCK"));
  CHECK(SpillFiles(dir).empty());

  std::vector<Obj> objs;
  for (int i = 0; i < 4; i++) {
    objs.push_back(MakeObj("file-" + std::to_string(i), 50 + i, kMiB + 100 * i, i));
    Put(c.get(), objs.back());
  }
  Evict(c.get(), kAll);
  const std::string path = UrlOf(c.get(), objs[0]).path;
  for (const Obj& o : objs) CHECK(UrlOf(c.get(), o).path == path);
  REQUIRE(fs::exists(path));
  store_stats st = Stats(c.get());
  CHECK(st.spill_files == 1);
  CHECK(st.spill_disk_bytes == fs::file_size(path));
  CHECK(st.spill_dead_bytes == 0);

  // One object restored (it keeps its copy), then all deleted one by one: the file stays while
  // any object still has its copy there. The restore leaves the file open in the store (for the
  // next restores' read-ahead); removing the file closes it first, so no deleted file's blocks
  // stay in use.
  CHECK(ServerFdsTo(s.pid(), path) == 0);
  ReadBack(c.get(), objs[3]);
  CHECK(ServerFdsTo(s.pid(), path) == 1);
  for (int i = 0; i < 3; i++) {
    Delete(c.get(), objs[i]);
    CHECK(fs::exists(path));
  }
  st = Stats(c.get());
  CHECK(st.spill_files == 1);
  CHECK(st.spill_dead_bytes > 0);
  Delete(c.get(), objs[3]);
  CHECK(test::WaitFor([&] { return !fs::exists(path); }));
  CHECK(ServerFdsTo(s.pid(), path) == 0);
  CHECK(ServerFdsTo(s.pid(), path + " (deleted)") == 0);
  st = Stats(c.get());
  CHECK(st.spill_files == 0);
  CHECK(st.spill_disk_bytes == 0);
  CHECK(st.spill_dead_bytes == 0);
  CHECK(st.object_count == 0);
  CHECK(st.used_bytes == 0);
  CHECK(SpillFiles(dir).empty());

  // The subdirectory stays while the store runs, and goes at a clean stop.
  INFO(Tree(dir));
  CHECK(fs::is_directory(mine[0]));
  c.reset();
  CHECK(ExitedZero(s.Stop()));
  CHECK(!fs::exists(mine[0]));
  CHECK(fs::is_directory(dir));  // the given directory itself is not the store's
}

TEST_CASE("restores keep at most 16 spill files open, and close each before it is removed") {
  TempDir tmp;
  const std::string dir = tmp.Sub("spill");
  test::TestStore s("64M", SpillArgs(dir, {"--spill-compact", "1", "--restore-readahead", "0"}));
  REQUIRE(s.started());
  ClientPtr c = Connect(s.socket());
  // 24 objects, each evicted alone: 24 spill files.
  std::vector<Obj> objs;
  for (int i = 0; i < 24; i++) {
    objs.push_back(MakeObj("kept-" + std::to_string(i), 300 + i, 64 * 1024 + i, i));
    Put(c.get(), objs.back());
    Evict(c.get(), kAll);
  }
  REQUIRE(Stats(c.get()).spill_files == 24);
  REQUIRE(InstanceDirs(dir).size() == 1);
  const std::string files = InstanceDirs(dir)[0];
  CHECK(ServerFdsTo(s.pid(), files + "/spill-*") == 0);
  // Each read back restores it (and keeps its file open); evicting it again writes nothing.
  for (int round = 0; round < 2; round++) {
    for (const Obj& o : objs) {
      ReadBack(c.get(), o);
      Evict(c.get(), kAll);
    }
    INFO("round " << round);
    CHECK(ServerFdsTo(s.pid(), files + "/spill-*") == 16);
  }
  for (const Obj& o : objs) ReadBack(c.get(), o);
  CHECK(Stats(c.get()).spill_files == 24);
  for (const Obj& o : objs) Delete(c.get(), o);
  CHECK(test::WaitFor([&] { return Stats(c.get()).spill_files == 0; }));
  CHECK(ServerFdsTo(s.pid(), files + "/spill-*") == 0);
  c.reset();
  CHECK(ExitedZero(s.Stop()));
}

// Puts obj created leased (STORE_CREATE_LEASED): it goes when its last lease does.
void PutLeased(store_client* c, const Obj& obj) {
  std::vector<uint8_t> data = Bytes(obj.seed, obj.size);
  store_create_options o = STORE_CREATE_OPTIONS_INIT;
  o.flags = STORE_CREATE_LEASED;
  o.timeout_ms = -1;
  REQUIRE(store_put(c, &obj.id, data.data(), data.size(), &o) == STORE_OK);
}

TEST_CASE("objects created leased go from disk too when their holder disconnects") {
  TempDir tmp;
  const std::string dir = tmp.Sub("spill");
  test::TestStore s("64M", SpillArgs(dir));
  REQUIRE(s.started());
  ClientPtr watcher = Connect(s.socket(), "watcher");
  std::vector<Obj> objs;
  {
    ClientPtr c = Connect(s.socket(), "holder");
    for (int i = 0; i < 8; i++) {
      objs.push_back(MakeObj("leased-" + std::to_string(i), 70 + i, 2 * kMiB));
      PutLeased(c.get(), objs.back());
    }
    Evict(c.get(), kAll);
    for (const Obj& o : objs) CHECK(IsSpilled(watcher.get(), o));
    // Half of them restored: in memory with their copy on disk.
    for (int i = 0; i < 4; i++) ReadBack(watcher.get(), objs[i]);
    CHECK(!SpillFiles(dir).empty());
  }
  CHECK(test::WaitFor([&] { return Stats(watcher.get()).object_count == 0; }));
  CHECK(test::WaitFor([&] { return SpillFiles(dir).empty(); }));
  store_stats st = Stats(watcher.get());
  CHECK(st.used_bytes == 0);
  CHECK(st.spill_files == 0);
  CHECK(st.spill_disk_bytes == 0);
  watcher.reset();
  CHECK(ExitedZero(s.Stop()));
}

// ---------------------------------------------------------------------------------------------
// Restores.

TEST_CASE("store_prefetch restores in the background") {
  TempDir tmp;
  const std::string dir = tmp.Sub("spill");
  test::TestStore s("64M", SpillArgs(dir));
  REQUIRE(s.started());
  ClientPtr c = Connect(s.socket());

  const Obj a = MakeObj("prefetch-a", 61, 5 * kMiB, 10), b = MakeObj("prefetch-b", 62, kMiB);
  Put(c.get(), a);
  Evict(c.get(), kAll);
  Put(c.get(), b);  // in memory only
  REQUIRE(IsSpilled(c.get(), a));
  store_stats before = Stats(c.get());

  // Objects in memory and missing ones are skipped.
  store_object_id ids[3] = {a.id, b.id, Id("no-such-object")};
  REQUIRE(store_prefetch(c.get(), ids, 3) == STORE_OK);
  CHECK(test::WaitFor([&] {
    store_object_info i = Info(c.get(), a);
    return i.state == STORE_STATE_SEALED &&
           i.level == (STORE_LEVEL_MEMORY | STORE_LEVEL_DISK);
  }));
  store_stats after = Stats(c.get());
  CHECK(after.total_restored_objects == before.total_restored_objects + 1);
  CHECK(InMemoryOnly(c.get(), b));
  // Reading it now restores nothing more.
  ReadBack(c.get(), a);
  CHECK(Stats(c.get()).total_restored_objects == after.total_restored_objects);
  CHECK(store_prefetch(c.get(), ids, 0) == STORE_OK);
  CHECK(store_prefetch(c.get(), nullptr, 1) == STORE_EINVAL);
}

// Objects put in turn and evicted together lie in one spill file in that order.
std::vector<Obj> SpillInOrder(store_client* c, const std::string& prefix, int n, uint64_t size) {
  std::vector<Obj> objs;
  for (int i = 0; i < n; i++) {
    objs.push_back(MakeObj(prefix + std::to_string(i), 900 + static_cast<uint64_t>(i), size));
    Put(c, objs.back());
  }
  Evict(c, kAll);
  SpillUrl first = UrlOf(c, objs[0]);
  for (int i = 1; i < n; i++) {
    SpillUrl u = UrlOf(c, objs[static_cast<size_t>(i)]);
    REQUIRE(u.path == first.path);
    REQUIRE(u.offset == first.offset + static_cast<uint64_t>(i) * first.size);
  }
  return objs;
}

bool Restored(store_client* c, const Obj& o) {
  store_object_info i = Info(c, o);
  return i.state == STORE_STATE_SEALED || i.state == STORE_STATE_RESTORING;
}

// Waits until objs[first..last] are all in memory, their restores done.
bool WaitSealed(store_client* c, const std::vector<Obj>& objs, size_t first, size_t last) {
  return test::WaitFor([&] {
    for (size_t i = first; i <= last; i++) {
      if (Info(c, objs[i]).state != STORE_STATE_SEALED) return false;
    }
    return true;
  });
}

TEST_CASE("read-ahead: gets in spill-file order keep the objects that follow restored, a window "
          "ahead") {
  TempDir tmp;
  const std::string dir = tmp.Sub("spill");
  // A window of 4 objects of 1 MiB.
  test::TestStore s("64M", SpillArgs(dir, {"--restore-readahead", "4M"}));
  REQUIRE(s.started());
  ClientPtr c = Connect(s.socket());
  std::vector<Obj> objs = SpillInOrder(c.get(), "ra-", 16, kMiB);
  auto restored_through = [&](int last) {
    for (int i = 0; i <= last; i++) {
      if (!Restored(c.get(), objs[static_cast<size_t>(i)])) return false;
    }
    for (int i = last + 1; i < 16; i++) {
      if (!IsSpilled(c.get(), objs[static_cast<size_t>(i)])) return false;
    }
    return true;
  };

  // One get is no pattern: nothing else is restored.
  ReadBack(c.get(), objs[0]);
  CHECK(restored_through(0));
  // The second in order starts the stream: the window after it (2..5) is being restored by the
  // time the get is answered; nothing past it.
  ReadBack(c.get(), objs[1]);
  CHECK(restored_through(5));
  // Each get inside the window slides it: the stream stays a window ahead of its reader, one
  // object at a time, instead of waiting for the reader to use up a window before the next.
  REQUIRE(WaitSealed(c.get(), objs, 2, 2));
  ReadBack(c.get(), objs[2]);
  CHECK(restored_through(6));
  REQUIRE(WaitSealed(c.get(), objs, 3, 3));
  ReadBack(c.get(), objs[3]);
  CHECK(restored_through(7));
  // Every object reads back intact, in turn; the stream keeps ahead to the end. (Restores are
  // counted when done: 4..7 first.)
  REQUIRE(WaitSealed(c.get(), objs, 4, 7));
  store_stats before = Stats(c.get());
  for (int i = 4; i < 16; i++) ReadBack(c.get(), objs[static_cast<size_t>(i)]);
  store_stats after = Stats(c.get());
  CHECK(after.total_restored_objects - before.total_restored_objects == 8);  // 8..15
  CHECK(after.total_restore_failures == 0);
  for (const Obj& o : objs) CHECK(Info(c.get(), o).state == STORE_STATE_SEALED);

  // Out of order (backwards) reads nothing ahead.
  Evict(c.get(), kAll);
  ReadBack(c.get(), objs[9]);
  ReadBack(c.get(), objs[8]);
  ReadBack(c.get(), objs[3]);
  CHECK(IsSpilled(c.get(), objs[10]));
  CHECK(IsSpilled(c.get(), objs[4]));
  CHECK(IsSpilled(c.get(), objs[7]));
  for (const Obj& o : objs) CHECK(store_delete(c.get(), &o.id) == STORE_OK);
  REQUIRE(test::WaitFor([&] { return Quiet(c.get()) && SpillFiles(dir).empty(); }));
  CHECK(Stats(c.get()).used_bytes == 0);
}

TEST_CASE("read-ahead goes on into the spill file written next") {
  TempDir tmp;
  const std::string dir = tmp.Sub("spill");
  // One eviction writes 12 objects of 1 MiB into three files of 4, in order.
  test::TestStore s("64M", SpillArgs(dir, {"--restore-readahead", "4M",
                                           "--spill-file-max-objects", "4"}));
  REQUIRE(s.started());
  ClientPtr c = Connect(s.socket());
  std::vector<Obj> objs;
  for (int i = 0; i < 12; i++) {
    objs.push_back(MakeObj("ra-files-" + std::to_string(i), 960 + static_cast<uint64_t>(i), kMiB));
    Put(c.get(), objs.back());
  }
  Evict(c.get(), kAll);
  std::vector<std::string> paths;
  for (int i = 0; i < 12; i++) {
    SpillUrl u = UrlOf(c.get(), objs[static_cast<size_t>(i)]);
    if (i % 4 == 0) {
      paths.push_back(u.path);
      CHECK(u.offset == UrlOf(c.get(), objs[0]).offset);  // each file's first record
    } else {
      REQUIRE(u.path == paths.back());
    }
  }
  REQUIRE(paths.size() == 3);
  REQUIRE(SpillFiles(dir).size() == 3);

  ReadBack(c.get(), objs[0]);
  ReadBack(c.get(), objs[1]);
  // The window (2..5) runs past the end of the first file into the second.
  for (int i = 2; i <= 5; i++) CHECK(Restored(c.get(), objs[static_cast<size_t>(i)]));
  for (int i = 6; i < 12; i++) CHECK(IsSpilled(c.get(), objs[static_cast<size_t>(i)]));
  // Read in turn to the end, across both boundaries, nothing is restored on demand: each get
  // finds its object restored or being restored by the stream.
  for (size_t i = 2; i < 12; i++) {
    CHECK(Restored(c.get(), objs[i]));
    REQUIRE(WaitSealed(c.get(), objs, i, i));
    ReadBack(c.get(), objs[i]);
  }
  CHECK(Stats(c.get()).total_restore_failures == 0);
  for (const Obj& o : objs) CHECK(store_delete(c.get(), &o.id) == STORE_OK);
  REQUIRE(test::WaitFor([&] { return Quiet(c.get()) && SpillFiles(dir).empty(); }));
  CHECK(Stats(c.get()).used_bytes == 0);
}

TEST_CASE("objects read ahead but not read yet are dropped before objects that were read") {
  TempDir tmp;
  const std::string dir = tmp.Sub("spill");
  test::TestStore s("64M", SpillArgs(dir, {"--restore-readahead", "4M"}));
  REQUIRE(s.started());
  ClientPtr c = Connect(s.socket());
  std::vector<Obj> objs = SpillInOrder(c.get(), "ra-lru-", 8, kMiB);
  // h is read after the spilled objects were last used.
  const Obj h = MakeObj("ra-lru-h", 990, kMiB);
  Put(c.get(), h);
  ReadBack(c.get(), h);
  // Two gets in order read 2..5 ahead.
  ReadBack(c.get(), objs[0]);
  ReadBack(c.get(), objs[1]);
  REQUIRE(WaitSealed(c.get(), objs, 2, 5));
  // Nobody has read 2..5: a read-ahead is a guess, so it does not make them recently used.
  // Evicting one object's worth drops one of them (its copy is on disk: nothing is written)
  // rather than writing h, which was read.
  const store_stats before = Stats(c.get());
  Evict(c.get(), kMiB);
  CHECK(InMemoryOnly(c.get(), h));
  CHECK(Stats(c.get()).total_spilled_bytes == before.total_spilled_bytes);
  int dropped = 0;
  for (int i = 2; i <= 5; i++) dropped += IsSpilled(c.get(), objs[static_cast<size_t>(i)]) ? 1 : 0;
  CHECK(dropped >= 1);
  // Once read, one is recently used like any other object.
  for (const Obj& o : objs) ReadBack(c.get(), o);
  for (const Obj& o : objs) CHECK(store_delete(c.get(), &o.id) == STORE_OK);
  CHECK(store_delete(c.get(), &h.id) == STORE_OK);
  REQUIRE(test::WaitFor([&] { return Quiet(c.get()) && SpillFiles(dir).empty(); }));
}

TEST_CASE("read-ahead takes only memory free below the high mark, and --restore-readahead 0 is off") {
  TempDir tmp;
  const std::string dir = tmp.Sub("spill");
  SUBCASE("below the high mark") {
    // 32 MiB with the high mark at half; 10 MiB of other objects stay in memory, so read-ahead
    // may take 16 - 10 - 2 (the two read) = 4 MiB.
    test::TestStore s("32M", SpillArgs(dir, {"--spill-high", "0.5", "--spill-low", "0.25"}));
    REQUIRE(s.started());
    ClientPtr c = Connect(s.socket());
    std::vector<Obj> objs = SpillInOrder(c.get(), "ra-mark-", 12, kMiB);
    std::vector<Obj> others;
    for (int i = 0; i < 10; i++) {
      others.push_back(MakeObj("ra-other-" + std::to_string(i), 950 + static_cast<uint64_t>(i), kMiB));
      Put(c.get(), others.back());
    }
    const uint64_t spilled_before = Stats(c.get()).total_spilled_objects;
    ReadBack(c.get(), objs[0]);
    ReadBack(c.get(), objs[1]);
    REQUIRE(test::WaitFor([&] { return Quiet(c.get()); }));
    store_stats st = Stats(c.get());
    CHECK(st.used_bytes <= st.capacity_bytes / 2);
    for (int i = 2; i <= 5; i++) CHECK(Info(c.get(), objs[static_cast<size_t>(i)]).state == STORE_STATE_SEALED);
    for (int i = 6; i < 12; i++) CHECK(IsSpilled(c.get(), objs[static_cast<size_t>(i)]));
    // Nothing was spilled to make room for it.
    CHECK(st.total_spilled_objects == spilled_before);
    for (const Obj& o : others) CHECK(InMemoryOnly(c.get(), o));
    for (const Obj& o : objs) ReadBack(c.get(), o);
    for (const Obj& o : objs) CHECK(store_delete(c.get(), &o.id) == STORE_OK);
    for (const Obj& o : others) CHECK(store_delete(c.get(), &o.id) == STORE_OK);
  }
  SUBCASE("off") {
    test::TestStore s("64M", SpillArgs(dir, {"--restore-readahead", "0"}));
    REQUIRE(s.started());
    ClientPtr c = Connect(s.socket());
    std::vector<Obj> objs = SpillInOrder(c.get(), "ra-off-", 6, kMiB);
    for (int i = 0; i < 3; i++) ReadBack(c.get(), objs[static_cast<size_t>(i)]);
    for (int i = 3; i < 6; i++) CHECK(IsSpilled(c.get(), objs[static_cast<size_t>(i)]));
    for (const Obj& o : objs) CHECK(store_delete(c.get(), &o.id) == STORE_OK);
  }
}

TEST_CASE("pinning a spilled object brings it back and keeps it in memory") {
  TempDir tmp;
  const std::string dir = tmp.Sub("spill");
  test::TestStore s("64M", SpillArgs(dir));
  REQUIRE(s.started());
  ClientPtr c = Connect(s.socket());

  const Obj x = MakeObj("pin-spilled", 65, 4 * kMiB, 4);
  Put(c.get(), x);
  Evict(c.get(), kAll);
  REQUIRE(IsSpilled(c.get(), x));
  REQUIRE(store_pin(c.get(), &x.id) == STORE_OK);
  CHECK(test::WaitFor([&] {
    store_object_info i = Info(c.get(), x);
    return i.state == STORE_STATE_SEALED && i.level == (STORE_LEVEL_MEMORY | STORE_LEVEL_DISK);
  }));
  CHECK(Info(c.get(), x).pin_count == 1);
  CHECK(Evict(c.get(), kAll) == 0);
  CHECK(Info(c.get(), x).level == (STORE_LEVEL_MEMORY | STORE_LEVEL_DISK));
  const uint64_t written = Stats(c.get()).total_spilled_bytes;
  REQUIRE(store_unpin(c.get(), &x.id) == STORE_OK);
  CHECK(Evict(c.get(), kAll) >= x.size);
  CHECK(IsSpilled(c.get(), x));
  CHECK(Stats(c.get()).total_spilled_bytes == written);
  ReadBack(c.get(), x);
}

TEST_CASE("4 threads opening one spilled object restore it once and all read the right bytes") {
  TempDir tmp;
  const std::string dir = tmp.Sub("spill");
  test::TestStore s("64M", SpillArgs(dir));
  REQUIRE(s.started());
  ClientPtr c = Connect(s.socket());
  std::vector<ClientPtr> clients;
  for (int t = 0; t < 4; t++) clients.push_back(Connect(s.socket(), "reader"));

  const Obj x = MakeObj("shared", 71, 24 * kMiB + 9, 500);
  Put(c.get(), x);
  for (int round = 0; round < 3; round++) {
    INFO("round ", round);
    Evict(c.get(), kAll);  // the first writes, the others drop the restored copy
    REQUIRE(IsSpilled(c.get(), x));
    store_stats before = Stats(c.get());
    std::atomic<int> ready{0};
    std::atomic<bool> go{false};
    int rcs[4] = {-100, -100, -100, -100};
    bool intact[4] = {false, false, false, false};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; t++) {
      threads.emplace_back([&, t] {
        ready++;
        while (!go.load()) std::this_thread::yield();
        rcs[t] = TryRead(clients[t].get(), x, &intact[t]);
      });
    }
    while (ready.load() < 4) std::this_thread::yield();
    go = true;
    for (auto& th : threads) th.join();
    for (int t = 0; t < 4; t++) {
      INFO("thread ", t);
      CHECK(rcs[t] == STORE_OK);
      CHECK(intact[t]);
    }
    // The readers' releases reach the store within a few milliseconds.
    CHECK(test::WaitFor([&] { return Stats(c.get()).open_count == 0; }));
    store_stats after = Stats(c.get());
    CHECK(after.total_restored_objects == before.total_restored_objects + 1);
    CHECK(after.total_gets == before.total_gets + 4);
  }
  CHECK(Stats(c.get()).total_spilled_objects == 1);
}

TEST_CASE("a corrupted spill file: STORE_ECORRUPT for that object, never wrong bytes") {
  TempDir tmp;
  const std::string dir = tmp.Sub("spill");
  test::TestStore s("64M", SpillArgs(dir));
  REQUIRE(s.started());
  ClientPtr c = Connect(s.socket());

  std::vector<Obj> objs = {MakeObj("corrupt-0", 81, 2 * kMiB, 20),
                           MakeObj("corrupt-1", 82, 3 * kMiB + 1, 30),
                           MakeObj("corrupt-2", 83, 700 * kKiB, 0)};
  for (const Obj& o : objs) Put(c.get(), o);
  Evict(c.get(), kAll);
  const Obj& bad = objs[1];
  SpillUrl u = UrlOf(c.get(), bad);
  for (const Obj& o : objs) REQUIRE(UrlOf(c.get(), o).path == u.path);
  FlipByte(u.path, u.offset + 16 + bad.meta + bad.size / 2);
  store_stats before = Stats(c.get());

  for (int attempt = 0; attempt < 2; attempt++) {
    INFO("attempt ", attempt);
    store_reader* r = nullptr;
    CHECK(store_open_reader(c.get(), &r, &bad.id, 0) == STORE_ECORRUPT);
    CHECK(r == nullptr);
    store_reader_close(r);
    CHECK(IsSpilled(c.get(), bad));
  }
  store_stats after = Stats(c.get());
  CHECK(after.total_restore_failures == before.total_restore_failures + 2);
  CHECK(after.total_restored_objects == before.total_restored_objects);
  CHECK(after.used_bytes == before.used_bytes);  // the memory taken for the restore is back

  // The other objects of the same file are fine, and the server is up.
  ReadBack(c.get(), objs[0]);
  ReadBack(c.get(), objs[2]);
  CHECK(s.Alive());
  // A corrupt object can still be deleted.
  Delete(c.get(), bad);
  CHECK(store_info(c.get(), &bad.id, nullptr) == STORE_EINVAL);
  store_object_info gone = STORE_OBJECT_INFO_INIT;
  CHECK(store_info(c.get(), &bad.id, &gone) == STORE_ENOTFOUND);
  CHECK(ExitedZero(s.Stop()));
}

TEST_CASE("a spilled object with no memory to restore into: STORE_ENOSPACE, then it reads") {
  TempDir tmp;
  const std::string dir = tmp.Sub("spill");
  test::TestStore s("64M", SpillArgs(dir));
  REQUIRE(s.started());
  ClientPtr c = Connect(s.socket());

  const Obj x = MakeObj("restore-me", 700, 16 * kMiB, 12);
  Put(c.get(), x);
  Evict(c.get(), kAll);
  REQUIRE(IsSpilled(c.get(), x));
  // Fill the memory with pinned objects: nothing can be spilled to make room for the restore.
  std::vector<Obj> pinned = PinEverything(c.get(), "pinned-", 710);
  store_stats st = Stats(c.get());
  REQUIRE(st.capacity_bytes - st.used_bytes < x.size);
  store_reader* r = nullptr;
  int rc = store_open_reader(c.get(), &r, &x.id, 0);
  {
    const std::string err = store_last_error_message();
    INFO(err);
    CHECK(rc == STORE_ENOSPACE);
    CHECK(r == nullptr);
  }
  CHECK(IsSpilled(c.get(), x));
  CHECK(Stats(c.get()).used_bytes == st.used_bytes);
  // With the pins gone, the restore spills them to make room.
  for (const Obj& o : pinned) REQUIRE(store_unpin(c.get(), &o.id) == STORE_OK);
  ReadBack(c.get(), x);
  for (const Obj& o : pinned) ReadBack(c.get(), o);
}

TEST_CASE("an object opened while it is being spilled stays in memory, with its copy on disk") {
  TempDir tmp;
  const std::string dir = tmp.Sub("spill");
  test::TestStore s("64M", SpillArgs(dir));
  REQUIRE(s.started());
  ClientPtr c = Connect(s.socket());
  ClientPtr evictor = Connect(s.socket(), "evictor");

  // Large enough that its write takes a while; tried a few times in case a write is too quick
  // to be caught.
  bool caught = false;
  for (int attempt = 0; attempt < 5 && !caught; attempt++) {
    const Obj x = MakeObj("while-spilling-" + std::to_string(attempt), 800 + attempt, 40 * kMiB, 9);
    Put(c.get(), x);
    int evict_rc = -100;
    uint64_t spilled = 0;
    std::thread t([&] { evict_rc = store_evict(evictor.get(), kAll, &spilled); });
    bool spilling = test::WaitFor(
        [&] { return Info(c.get(), x).state != STORE_STATE_SEALED; }, std::chrono::seconds(10));
    ReaderPtr r;
    const uint64_t restored = Stats(c.get()).total_restored_objects;
    if (spilling && Info(c.get(), x).state == STORE_STATE_SPILLING) {
      store_reader* raw = nullptr;
      int rc = store_open_reader(c.get(), &raw, &x.id, 0);
      r.reset(raw);
      CHECK(rc == STORE_OK);
    }
    t.join();
    CHECK(evict_rc == STORE_OK);
    if (r && Stats(c.get()).total_restored_objects != restored) {
      r.reset();  // the write ended between the info and the open: it was read back from disk
    }
    if (!r) {
      MESSAGE("attempt ", attempt, ": the write finished before the open");
      Delete(c.get(), x);
      continue;
    }
    caught = true;
    CHECK(Matches(x.seed, static_cast<const uint8_t*>(store_reader_data(r.get())), x.size));
    store_object_info i = Info(c.get(), x);
    CHECK(i.state == STORE_STATE_SEALED);
    CHECK(i.level == (STORE_LEVEL_MEMORY | STORE_LEVEL_DISK));
    CHECK(i.reader_count == 1);
    CHECK(spilled == 0);  // written, but its memory was not freed
    store_stats st = Stats(c.get());
    CHECK(st.total_spilled_objects == 1 + static_cast<uint64_t>(attempt));
    r.reset();
    // Evicting it now writes nothing more.
    CHECK(Evict(c.get(), kAll) >= x.size);
    CHECK(IsSpilled(c.get(), x));
    CHECK(Stats(c.get()).total_spilled_bytes == st.total_spilled_bytes);
    ReadBack(c.get(), x);
  }
  CHECK(caught);
}

TEST_CASE("an object deleted while it is being spilled leaves no file and no memory behind") {
  TempDir tmp;
  const std::string dir = tmp.Sub("spill");
  test::TestStore s("64M", SpillArgs(dir));
  REQUIRE(s.started());
  ClientPtr c = Connect(s.socket());
  ClientPtr evictor = Connect(s.socket(), "evictor");

  bool caught = false;
  for (int attempt = 0; attempt < 5 && !caught; attempt++) {
    const Obj x = MakeObj("deleted-while-spilling-" + std::to_string(attempt), 900 + attempt,
                          40 * kMiB);
    Put(c.get(), x);
    int evict_rc = -100;
    uint64_t spilled = 12345;
    std::thread t([&] { evict_rc = store_evict(evictor.get(), kAll, &spilled); });
    test::WaitFor([&] { return Info(c.get(), x).state != STORE_STATE_SEALED; },
                  std::chrono::seconds(10));
    if (Info(c.get(), x).state == STORE_STATE_SPILLING) {
      Delete(c.get(), x);
      caught = true;
    }
    t.join();
    CHECK(evict_rc == STORE_OK);
    if (!caught) {
      MESSAGE("attempt ", attempt, ": the write finished before the delete");
      Delete(c.get(), x);
      REQUIRE(test::WaitFor([&] { return SpillFiles(dir).empty(); }));
      continue;
    }
    // *spilled is in bytes: the object's memory counts whole or not at all.
    INFO("spilled ", spilled);
    CHECK((spilled == 0 || spilled >= x.size));
    store_object_info none = STORE_OBJECT_INFO_INIT;
    CHECK(store_info(c.get(), &x.id, &none) == STORE_ENOTFOUND);
    CHECK(test::WaitFor([&] { return SpillFiles(dir).empty(); }));
    store_stats st = Stats(c.get());
    CHECK(st.object_count == 0);
    CHECK(st.used_bytes == 0);
    CHECK(st.deleted_pending_count == 0);
    CHECK(st.spill_files == 0);
    CHECK(st.spill_disk_bytes == 0);
  }
  CHECK(caught);
}

TEST_CASE("a store stopped while a spill is being written exits cleanly") {
  TempDir tmp;
  const std::string dir = tmp.Sub("spill");
  test::TestStore s("64M", SpillArgs(dir));
  REQUIRE(s.started());
  ClientPtr c = Connect(s.socket());
  ClientPtr evictor = Connect(s.socket(), "evictor");
  const Obj x = MakeObj("stop-while-spilling", 950, 40 * kMiB);
  Put(c.get(), x);
  int evict_rc = -100;
  std::thread t([&] { evict_rc = store_evict(evictor.get(), kAll, nullptr); });
  test::WaitFor([&] { return Info(c.get(), x).state != STORE_STATE_SEALED; });
  int status = s.Stop();
  t.join();
  INFO("wait status ", status, ", evict ", evict_rc);
  CHECK(ExitedZero(status));
  CHECK((evict_rc == STORE_OK || evict_rc == STORE_ECONN));
  store_stats st = STORE_STATS_INIT;
  CHECK(store_stats_get(c.get(), &st) == STORE_ECONN);
}

// ---------------------------------------------------------------------------------------------
// Creates that need spilling.

TEST_CASE("a create larger than what is free waits for spilling (timeout -1) and succeeds") {
  TempDir tmp;
  const std::string dir = tmp.Sub("spill");
  test::TestStore s("64M", SpillArgs(dir));
  REQUIRE(s.started());
  ClientPtr c = Connect(s.socket());

  // 40 MiB in memory: under the high mark (80%), so nothing is spilled yet.
  std::vector<Obj> objs;
  for (int i = 0; i < 40; i++) {
    objs.push_back(MakeObj("fill-" + std::to_string(i), 90 + i, kMiB));
    Put(c.get(), objs.back());
  }
  store_stats st = Stats(c.get());
  CHECK(st.total_spilled_objects == 0);
  REQUIRE(st.capacity_bytes - st.used_bytes < 32 * kMiB);

  // 32 MiB does not fit: with timeout -1 the create waits until spilling has made room.
  const Obj big = MakeObj("big", 99, 32 * kMiB);
  Put(c.get(), big, 0, -1);
  st = Stats(c.get());
  CHECK(st.total_spilled_objects > 0);
  CHECK(st.waiting_creates == 0);
  for (const Obj& o : objs) ReadBack(c.get(), o);
  ReadBack(c.get(), big);
}

TEST_CASE("a create whose size is not a size class waits for spilling and succeeds") {
  TempDir tmp;
  const std::string dir = tmp.Sub("spill");
  test::TestStore s("64M", SpillArgs(dir));
  REQUIRE(s.started());
  ClientPtr c = Connect(s.socket());

  std::vector<Obj> objs;
  for (int i = 0; i < 40; i++) {
    objs.push_back(MakeObj("fill-" + std::to_string(i), 190 + i, kMiB));
    Put(c.get(), objs.back());
  }
  // 30 MiB of data: the allocator rounds it up, to more than the 24 MiB that are free.
  const Obj big = MakeObj("big", 199, 30 * kMiB);
  CHECK(TryPut(c.get(), big, 0, 10000) == STORE_OK);
  CHECK(Stats(c.get()).waiting_creates == 0);
  ReadBack(c.get(), big);
}

TEST_CASE("a create that needs spilling when everything else is pinned waits for its timeout") {
  TempDir tmp;
  const std::string dir = tmp.Sub("spill");
  test::TestStore s("64M", SpillArgs(dir));
  REQUIRE(s.started());
  ClientPtr c = Connect(s.socket());

  std::vector<Obj> objs;
  for (int i = 0; i < 40; i++) {
    objs.push_back(MakeObj("pin-" + std::to_string(i), 110 + i, kMiB));
    Put(c.get(), objs.back());
    REQUIRE(store_pin(c.get(), &objs.back().id) == STORE_OK);
  }
  store_stats st = Stats(c.get());
  CHECK(st.pinned_count == 40);
  CHECK(st.pinned_bytes == 40 * kMiB);
  CHECK(st.evictable_bytes == 0);

  const Obj big = MakeObj("big", 150, 32 * kMiB);
  // Nothing can be spilled: it waits (a pin may go), until its timeout.
  int rc = TryPut(c.get(), big, 0, 300);
  std::string err = store_last_error_message();
  INFO(err);
  CHECK(rc == STORE_ETIMEDOUT);
  CHECK(err.find("pinned") != std::string::npos);
  // Not waiting at all: STORE_ENOSPACE at once.
  rc = TryPut(c.get(), big, 0, 0);
  err = store_last_error_message();
  CHECK(rc == STORE_ENOSPACE);
  CHECK(err.find("40.0 MiB pinned") != std::string::npos);
  st = Stats(c.get());
  CHECK(st.waiting_creates == 0);
  CHECK(st.total_spilled_objects == 0);
  store_object_info none = STORE_OBJECT_INFO_INIT;
  CHECK(store_info(c.get(), &big.id, &none) == STORE_ENOTFOUND);
  // Nothing can be evicted either.
  CHECK(Evict(c.get(), kAll) == 0);

  // Unpinned, the same create succeeds.
  for (const Obj& o : objs) REQUIRE(store_unpin(c.get(), &o.id) == STORE_OK);
  Put(c.get(), big, 0, -1);
  for (const Obj& o : objs) ReadBack(c.get(), o);
  ReadBack(c.get(), big);
}

// Objects being written every other MiB: no run of 3 MiB can be made whatever is spilled. A
// create of 3 MiB used to spill what it needed, then more at every pump, until every sealed
// object (16) was on disk, for nothing; later still its own size's worth (3 objects). Now the
// store checks first that spilling every candidate could make a run long enough, and spills
// nothing otherwise.
TEST_CASE("a create that no spilling could fit spills nothing") {
  TempDir tmp;
  // No spilling past a high mark: only for room.
  test::TestStore s("32M", SpillArgs(tmp.Sub("spill"), {"--spill-high", "1", "--spill-low", "0.99"}));
  REQUIRE(s.started());
  ClientPtr hog = Connect(s.socket());
  ClientPtr c = Connect(s.socket());
  std::vector<WriterPtr> unsealed = CutIntoHoles(hog.get());
  std::vector<Obj> kept;
  for (size_t i = 0; i < unsealed.size(); i += 2) {
    kept.push_back(MakeObj("kept-" + std::to_string(i), 1100 + i, kMiB));
  }
  // Every hole filled, one at a time so each goes in a hole (none is spilled for room).
  for (const Obj& o : kept) Put(c.get(), o, 0, 0);
  REQUIRE(Stats(c.get()).total_spilled_objects == 0);
  const Obj big = MakeObj("three-mib", 1200, 3 * kMiB);
  CHECK(TryPut(c.get(), big, 0, 500) == STORE_ETIMEDOUT);
  CHECK(TryPut(c.get(), big, 0, 0) == STORE_ENOSPACE);
  store_stats st = Stats(c.get());
  CHECK(st.total_spilled_objects == 0);
  CHECK(st.spilled_count == 0);
  // Once the objects being written go, the same create spills what it needs and fits.
  for (WriterPtr& w : unsealed) {
    if (w) REQUIRE(store_writer_abort(w.release()) == STORE_OK);
  }
  Put(c.get(), big, 0, -1);
  for (const Obj& o : kept) ReadBack(c.get(), o);
  ReadBack(c.get(), big);
}

TEST_CASE("without --spill-dir: store_evict is STORE_ENOTSUP") {
  test::TestStore s("64M");
  REQUIRE(s.started());
  ClientPtr c = Connect(s.socket());
  const Obj x = MakeObj("nospill", 5, kMiB);
  Put(c.get(), x);
  uint64_t spilled = 123;
  CHECK(store_evict(c.get(), kAll, &spilled) == STORE_ENOTSUP);
  CHECK(spilled == 0);
  CHECK(store_evict(c.get(), 1, nullptr) == STORE_ENOTSUP);
  CHECK(InMemoryOnly(c.get(), x));
  char url[256];
  CHECK(store_spill_url(c.get(), &x.id, url, sizeof url) == STORE_ENOTFOUND);
  CHECK(store_prefetch(c.get(), &x.id, 1) == STORE_OK);
  store_stats st = Stats(c.get());
  CHECK(st.spill_enabled == 0);
  CHECK(st.spill_files == 0);
  ReadBack(c.get(), x);
}

// ---------------------------------------------------------------------------------------------
// Recovery.

TEST_CASE("--recover after a crash serves every object that was spilled") {
  TempDir tmp;
  const std::string dir = tmp.Sub("spill");
  std::vector<Obj> spilled, restored, memory_only;
  for (int i = 0; i < 12; i++) {
    spilled.push_back(MakeObj("rec-" + std::to_string(i), 300 + i, 512 * kKiB * (1 + i % 4) + i,
                              i % 3 == 0 ? 0 : 100 + i));
  }
  restored.push_back(MakeObj("rec-restored", 320, 2 * kMiB, 8));
  memory_only.push_back(MakeObj("rec-memory", 321, kMiB));
  std::string stale;
  {
    test::TestStore s("64M", SpillArgs(dir));
    REQUIRE(s.started());
    ClientPtr c = Connect(s.socket());
    // Two files: the first evict writes one, the second another.
    for (int i = 0; i < 6; i++) Put(c.get(), spilled[i]);
    Put(c.get(), restored[0]);
    Evict(c.get(), kAll);
    for (int i = 6; i < 12; i++) Put(c.get(), spilled[i]);
    Evict(c.get(), kAll);
    ReadBack(c.get(), restored[0]);  // in memory and on disk
    Put(c.get(), memory_only[0]);    // never spilled: lost with the process
    CHECK(SpillFiles(dir).size() == 2);
    std::vector<std::string> inst = InstanceDirs(dir);
    REQUIRE(inst.size() == 1);
    stale = inst[0];
    c.reset();
    Crash(s);
  }
  REQUIRE(fs::is_directory(stale));
  // A partial file (as a crash mid-write leaves: not renamed from .tmp yet) is removed.
  const std::string partial = stale + "/spill-999.bin.tmp";
  WriteJunk(partial, 1, 5000);

  test::TestStore s("64M", SpillArgs(dir, {"--recover"}));
  REQUIRE(s.started());
  ClientPtr c = Connect(s.socket());
  CHECK(!fs::exists(partial));
  store_stats st = Stats(c.get());
  CHECK(st.object_count == 13);
  CHECK(st.spilled_count == 13);
  CHECK(st.spill_files == 2);
  CHECK(st.used_bytes == 0);
  std::vector<Obj> back = spilled;
  back.push_back(restored[0]);
  for (const Obj& o : back) {
    INFO("object ", Hex(o.id));
    store_object_info i = Info(c.get(), o);
    CHECK(i.state == STORE_STATE_SPILLED);
    CHECK(i.level == STORE_LEVEL_DISK);
    CHECK(i.data_size == o.size);
    CHECK(i.metadata_size == o.meta);
    CHECK(StartsWith(UrlOf(c.get(), o).path, stale + "/"));
  }
  for (const Obj& o : back) ReadBack(c.get(), o);
  for (const Obj& o : back) {
    CHECK(Info(c.get(), o).level == (STORE_LEVEL_MEMORY | STORE_LEVEL_DISK));
  }
  store_object_info none = STORE_OBJECT_INFO_INIT;
  CHECK(store_info(c.get(), &memory_only[0].id, &none) == STORE_ENOTFOUND);
  st = Stats(c.get());
  CHECK(st.total_restored_objects == 13);
  CHECK(st.total_restore_failures == 0);

  // Deleting them all removes the files and, with the last, the adopted directory.
  for (const Obj& o : back) Delete(c.get(), o);
  CHECK(test::WaitFor([&] { return !fs::exists(stale); }));
  CHECK(SpillFiles(dir).empty());
  CHECK(Stats(c.get()).spill_files == 0);
  c.reset();
  CHECK(ExitedZero(s.Stop()));
  INFO(Tree(dir));
  CHECK(fs::is_empty(dir));
}

TEST_CASE("--recover after a crash or a stop does not bring back objects created leased") {
  // Their lease holders were clients of the store that spilled them: gone with it, so the
  // objects are gone too (as they would be had the holders disconnected from a live store).
  auto EndsWith = [](const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  for (bool crash : {true, false}) {
    INFO((crash ? "crash" : "clean stop"));
    TempDir tmp;
    const std::string dir = tmp.Sub("spill");
    std::vector<Obj> plain, leased;
    for (int i = 0; i < 4; i++) {
      plain.push_back(MakeObj("lr-plain-" + std::to_string(i), 400 + i, kMiB + i));
      leased.push_back(MakeObj("lr-leased-" + std::to_string(i), 410 + i, kMiB + i));
    }
    std::string stale;
    {
      test::TestStore s("64M", SpillArgs(dir));
      REQUIRE(s.started());
      ClientPtr c = Connect(s.socket());
      // Interleaved, so that one batch holds both kinds.
      for (int i = 0; i < 4; i++) {
        Put(c.get(), plain[static_cast<size_t>(i)]);
        PutLeased(c.get(), leased[static_cast<size_t>(i)]);
      }
      Evict(c.get(), kAll);
      for (const Obj& o : leased) REQUIRE(IsSpilled(c.get(), o));
      // Each kind in a file of its own; the leased objects still read back.
      std::set<std::string> plain_files, leased_files;
      for (const Obj& o : plain) plain_files.insert(UrlOf(c.get(), o).path);
      for (const Obj& o : leased) leased_files.insert(UrlOf(c.get(), o).path);
      CHECK(plain_files.size() == 1);
      CHECK(leased_files.size() == 1);
      CHECK(EndsWith(*leased_files.begin(), ".leased.bin"));
      CHECK(!EndsWith(*plain_files.begin(), ".leased.bin"));
      ReadBack(c.get(), leased[0]);
      std::vector<std::string> inst = InstanceDirs(dir);
      REQUIRE(inst.size() == 1);
      stale = inst[0];
      if (crash) {
        Crash(s);  // the client is still connected: it holds the leases when the store dies
      } else {
        c.reset();
        CHECK(ExitedZero(s.Stop()));
      }
    }
    test::TestStore s("64M", SpillArgs(dir, {"--recover"}));
    REQUIRE(s.started());
    ClientPtr c = Connect(s.socket());
    for (const Obj& o : leased) {
      store_object_info none = STORE_OBJECT_INFO_INIT;
      CHECK(store_info(c.get(), &o.id, &none) == STORE_ENOTFOUND);
    }
    for (const Obj& o : plain) ReadBack(c.get(), o);
    store_stats st = Stats(c.get());
    CHECK(st.object_count == plain.size());
    CHECK(st.spill_files == 1);
    for (const std::string& f : SpillFiles(dir)) CHECK(!EndsWith(f, ".leased.bin"));
    for (const Obj& o : plain) Delete(c.get(), o);
    CHECK(test::WaitFor([&] { return SpillFiles(dir).empty(); }));
    c.reset();
    CHECK(ExitedZero(s.Stop()));
    INFO(Tree(dir));
    CHECK(fs::is_empty(dir));
  }
}

TEST_CASE("a spill file of objects created leased is compacted into another such file") {
  TempDir tmp;
  const std::string dir = tmp.Sub("spill");
  test::TestStore s("64M", SpillArgs(dir, {"--spill-compact", "0.5"}));
  REQUIRE(s.started());
  ClientPtr c = Connect(s.socket());
  std::vector<Obj> leased;
  for (int i = 0; i < 4; i++) {
    leased.push_back(MakeObj("lc-" + std::to_string(i), 430 + i, kMiB));
    PutLeased(c.get(), leased.back());
  }
  Evict(c.get(), kAll);
  const std::string before = UrlOf(c.get(), leased[3]).path;
  REQUIRE(before.size() > 11);
  CHECK(before.compare(before.size() - 11, 11, ".leased.bin") == 0);
  for (int i = 0; i < 3; i++) Delete(c.get(), leased[static_cast<size_t>(i)]);
  REQUIRE(test::WaitFor([&] { return UrlOf(c.get(), leased[3]).path != before; }));
  const std::string after = UrlOf(c.get(), leased[3]).path;
  CHECK(after.compare(after.size() - 11, 11, ".leased.bin") == 0);
  ReadBack(c.get(), leased[3]);
  Delete(c.get(), leased[3]);
  CHECK(test::WaitFor([&] { return SpillFiles(dir).empty(); }));
}

// The metrics file's spill lines, as they must read for st ("name value" each).
std::vector<std::string> SpillMetricLines(const store_stats& st) {
  std::vector<std::pair<const char*, uint64_t>> want = {
      {"store_spill_enabled", st.spill_enabled},
      {"store_spilled_objects", st.spilled_count},
      {"store_spilled_bytes", st.spilled_bytes},
      {"store_spill_files", st.spill_files},
      {"store_spill_disk_bytes", st.spill_disk_bytes},
      {"store_spill_dead_bytes", st.spill_dead_bytes},
      {"store_spilled_objects_total", st.total_spilled_objects},
      {"store_spilled_bytes_total", st.total_spilled_bytes},
      {"store_restored_objects_total", st.total_restored_objects},
      {"store_restored_bytes_total", st.total_restored_bytes},
      {"store_spill_failures_total", st.total_spill_failures},
      {"store_restore_failures_total", st.total_restore_failures}};
  std::vector<std::string> lines;
  for (const auto& [name, value] : want) {
    lines.push_back("\n" + std::string(name) + " " + std::to_string(value) + "\n");
  }
  return lines;
}

TEST_CASE("compactions are counted: the files rewritten, the bytes copied into the new files "
          "and the disk given back, in store_stats, store info and the metrics file") {
  TempDir tmp;
  const std::string dir = tmp.Sub("spill");
  const std::string metrics = tmp / "metrics.prom";
  test::TestStore s("64M", SpillArgs(dir, {"--spill-compact", "0.5", "--spill-file-max-objects",
                                           "4", "--metrics-file", metrics,
                                           "--metrics-interval", "0.05"}));
  REQUIRE(s.started());
  ClientPtr c = Connect(s.socket());
  // Two spill files of four objects each, of different sizes, some with metadata.
  std::vector<Obj> objs;
  for (int i = 0; i < 8; i++) {
    objs.push_back(MakeObj("cc-" + std::to_string(i), 470 + i, kMiB + 1000 * i, i % 2 ? 8 : 0));
    Put(c.get(), objs.back());
    if (i % 4 == 3) Evict(c.get(), kAll);
  }
  for (size_t i = 0; i < objs.size(); i++) {
    REQUIRE(UrlOf(c.get(), objs[i]).path == UrlOf(c.get(), objs[i < 4 ? 3 : 7]).path);
  }
  REQUIRE(UrlOf(c.get(), objs[3]).path != UrlOf(c.get(), objs[7]).path);
  auto read_all = [](const std::string& path) {
    std::ifstream f(path);
    return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  };
  // The metrics file shows what store_stats shows of spilling (nothing changes meanwhile).
  auto metrics_match = [&](const store_stats& want) {
    std::string m;
    bool ok = test::WaitFor([&] {
      m = read_all(metrics);
      for (const std::string& line : SpillMetricLines(want)) {
        if (m.find(line) == std::string::npos) return false;
      }
      return true;
    });
    INFO(m);
    CHECK(ok);
  };
  store_stats st = Stats(c.get());
  REQUIRE(st.spill_files == 2);
  CHECK(st.spilled_count == 8);
  CHECK(st.total_spilled_objects == 8);
  metrics_match(st);
  CHECK(st.total_compactions == 0);
  CHECK(st.total_compact_bytes_copied == 0);
  CHECK(st.total_compact_bytes_freed == 0);
  CHECK(st.total_compact_failures == 0);

  // Deletes the first three objects of a file (the smaller ones: only the third makes more than
  // half of it dead, so it is compacted once), waits for the fourth to move to the new file and
  // for the old one to go, and checks what the counters gained against the files on disk.
  uint64_t copied = 0, freed = 0;
  auto compact = [&](size_t first) {
    const Obj& kept = objs[first + 3];
    const std::string old_path = UrlOf(c.get(), kept).path;
    const uint64_t old_size = fs::file_size(old_path);
    const store_stats before = Stats(c.get());
    for (size_t i = first; i < first + 3; i++) Delete(c.get(), objs[i]);
    REQUIRE(test::WaitFor([&] { return UrlOf(c.get(), kept).path != old_path; }));
    REQUIRE(test::WaitFor([&] { return !fs::exists(old_path); }));
    const std::string new_path = UrlOf(c.get(), kept).path;
    const uint64_t new_size = fs::file_size(new_path);
    REQUIRE(new_size < old_size);
    const store_stats after = Stats(c.get());
    CHECK(after.total_compactions == before.total_compactions + 1);
    CHECK(after.total_compact_bytes_copied == before.total_compact_bytes_copied + new_size);
    CHECK(after.total_compact_bytes_freed == before.total_compact_bytes_freed + old_size - new_size);
    // What the store says is on disk went down by exactly what the compaction says it freed.
    CHECK(before.spill_disk_bytes - after.spill_disk_bytes ==
          after.total_compact_bytes_freed - before.total_compact_bytes_freed);
    CHECK(after.total_compact_failures == 0);
    copied += new_size;
    freed += old_size - new_size;
  };
  compact(0);
  compact(4);
  st = Stats(c.get());
  CHECK(st.total_compactions == 2);
  CHECK(st.total_compact_bytes_copied == copied);
  CHECK(st.total_compact_bytes_freed == freed);
  CHECK(st.total_compact_failures == 0);
  uint64_t on_disk = 0;
  REQUIRE(SpillFiles(dir, &on_disk).size() == 2);
  CHECK(on_disk == st.spill_disk_bytes);
  CHECK(on_disk == copied);  // the two new files are all there is

  // store info.
  const std::string out = tmp / "info.out";
  pid_t pid = test::Spawn({test::StoreBin(), "info", "--socket", s.socket()}, out);
  REQUIRE(test::ExitedCleanly(test::WaitExit(pid)));
  const std::string info = read_all(out);
  INFO(info);
  CHECK(info.find("\ntotal_compactions:2\n") != std::string::npos);
  CHECK(info.find("\ntotal_compact_bytes_copied:" + std::to_string(copied) + "\n") !=
        std::string::npos);
  CHECK(info.find("\ntotal_compact_bytes_freed:" + std::to_string(freed) + "\n") !=
        std::string::npos);
  CHECK(info.find("\ntotal_compact_failures:0\n") != std::string::npos);

  // The metrics file.
  std::string m;
  INFO(m);
  CHECK(test::WaitFor([&] {
    m = read_all(metrics);
    return m.find("\nstore_spill_compactions_total 2\n") != std::string::npos &&
           m.find("\nstore_spill_compact_bytes_copied_total " + std::to_string(copied) + "\n") !=
               std::string::npos &&
           m.find("\nstore_spill_compact_bytes_freed_total " + std::to_string(freed) + "\n") !=
               std::string::npos &&
           m.find("\nstore_spill_compact_failures_total 0\n") != std::string::npos;
  }));

  ReadBack(c.get(), objs[3]);
  ReadBack(c.get(), objs[7]);
  st = Stats(c.get());
  CHECK(st.total_restored_objects == 2);
  CHECK(st.spilled_count == 0);
  metrics_match(st);
  Delete(c.get(), objs[3]);
  Delete(c.get(), objs[7]);
  CHECK(test::WaitFor([&] { return SpillFiles(dir).empty(); }));
}

TEST_CASE("compactions are logged once a second at most, the others counted in one line") {
  TempDir tmp;
  const std::string dir = tmp.Sub("spill");
  test::TestStore s("64M", SpillArgs(dir, {"--spill-compact", "0.5", "--spill-file-max-objects",
                                           "2", "--log-level", "info"}));
  REQUIRE(s.started());
  ClientPtr c = Connect(s.socket());
  // 40 spill files of a large and a small object: deleting the large one makes most of its file
  // dead, so each is compacted; churn does this many times a second.
  constexpr int kFiles = 40;
  std::vector<Obj> large, small;
  for (int i = 0; i < kFiles; i++) {
    large.push_back(MakeObj("cl-large-" + std::to_string(i), 2000 + i, 64 * 1024));
    small.push_back(MakeObj("cl-small-" + std::to_string(i), 3000 + i, 1024));
    Put(c.get(), large.back());
    Put(c.get(), small.back());
  }
  Evict(c.get(), kAll);
  REQUIRE(Stats(c.get()).spill_files == kFiles);
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<store_object_id> ids;
  for (const Obj& o : large) ids.push_back(o.id);
  REQUIRE(store_delete_many(c.get(), ids.data(), ids.size(), nullptr) == STORE_OK);
  REQUIRE(test::WaitFor([&] { return Stats(c.get()).total_compactions == kFiles; }));
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  // Every compaction is in the log, one by one or in a count, once the second is over.
  size_t lines = 0;
  auto said = [&] {
    return test::LoggedOrCounted(s.Log(), "compacted spill file ",
                                 " more spill files compacted in the last second", &lines);
  };
  CHECK(test::WaitFor([&] { return said() == kFiles; }));
  INFO(s.Log());
  CHECK(lines >= 1);
  CHECK(static_cast<double>(lines) <= seconds + 2);
  for (const Obj& o : small) ReadBack(c.get(), o);
  for (const Obj& o : small) Delete(c.get(), o);
  CHECK(test::WaitFor([&] { return SpillFiles(dir).empty(); }));
}

TEST_CASE("without --recover, a store removes the spill directory of a dead store") {
  TempDir tmp;
  const std::string dir = tmp.Sub("spill");
  const Obj x = MakeObj("stale-x", 400, 2 * kMiB, 4);
  std::string stale;
  {
    test::TestStore s("64M", SpillArgs(dir));
    REQUIRE(s.started());
    ClientPtr c = Connect(s.socket());
    Put(c.get(), x);
    Evict(c.get(), kAll);
    REQUIRE(SpillFiles(dir).size() == 1);
    stale = InstanceDirs(dir).at(0);
    c.reset();
    Crash(s);
  }
  REQUIRE(fs::is_directory(stale));

  test::TestStore s("64M", SpillArgs(dir));
  REQUIRE(s.started());
  ClientPtr c = Connect(s.socket());
  CHECK(!fs::exists(stale));
  CHECK(SpillFiles(dir).empty());
  std::vector<std::string> inst = InstanceDirs(dir);
  CHECK(inst.size() == 1);
  store_object_info none = STORE_OBJECT_INFO_INIT;
  CHECK(store_info(c.get(), &x.id, &none) == STORE_ENOTFOUND);
  store_reader* r = nullptr;
  CHECK(store_open_reader(c.get(), &r, &x.id, 0) == STORE_ENOTFOUND);
  store_stats st = Stats(c.get());
  CHECK(st.object_count == 0);
  CHECK(st.spill_files == 0);
  c.reset();
  CHECK(ExitedZero(s.Stop()));
  CHECK(fs::is_empty(dir));
}

// A store killed while it made its own subdirectory (after its mkdir, before the rename to
// its final name) left a "tmp-store-<pid>-<ns>" directory that no later start looked at: one
// more with each such crash. The next start removes it once that pid is gone; one whose
// process lives is left alone.
TEST_CASE("a subdirectory a store was making when it died is removed by the next start") {
  TempDir tmp;
  const std::string dir = tmp.Sub("spill");
  fs::create_directory(dir);
  pid_t dead = fork();
  REQUIRE(dead >= 0);
  if (dead == 0) _exit(0);
  int status = 0;
  REQUIRE(waitpid(dead, &status, 0) == dead);
  const std::string stale = dir + "/tmp-store-" + std::to_string(dead) + "-12345";
  const std::string live = dir + "/tmp-store-" + std::to_string(getpid()) + "-12345";
  for (const std::string& d : {stale, live}) {
    REQUIRE(fs::create_directory(d));
    std::ofstream(d + "/LOCK").put('\n');
  }
  {
    test::TestStore s("64M", SpillArgs(dir));
    REQUIRE(s.started());
    CHECK(!fs::exists(stale));
    CHECK(fs::exists(live + "/LOCK"));
    CHECK(InstanceDirs(dir).size() == 1);
    CHECK(ExitedZero(s.Stop()));
  }
  fs::remove_all(live);
  CHECK(fs::is_empty(dir));
}

// ---------------------------------------------------------------------------------------------
// Disk threshold.

TEST_CASE("a spill directory fuller than --disk-threshold is not used: STORE_ENODISK") {
  TempDir tmp;
  const std::string dir = tmp.Sub("spill");
  struct statvfs sv;
  REQUIRE(statvfs(dir.c_str(), &sv) == 0);
  REQUIRE(sv.f_blocks > 0);
  const double used = 1.0 - static_cast<double>(sv.f_bavail) / static_cast<double>(sv.f_blocks);
  if (used < 0.002) {
    MESSAGE("skipped: the filesystem of /tmp is almost empty (", used, " used)");
    return;
  }
  char threshold[32];
  std::snprintf(threshold, sizeof threshold, "%.6f", used / 2);
  test::TestStore s("64M", SpillArgs(dir, {"--disk-threshold", threshold}));
  REQUIRE(s.started());
  ClientPtr c = Connect(s.socket());

  // Past the high mark: the spiller would start, but no directory qualifies.
  std::vector<Obj> objs;
  for (int i = 0; i < 56; i++) {
    objs.push_back(MakeObj("full-" + std::to_string(i), 500 + i, kMiB));
    Put(c.get(), objs.back(), 0, 0);
  }
  const Obj big = MakeObj("big", 600, 16 * kMiB);
  int rc = TryPut(c.get(), big, 0, -1);
  {
    const std::string err = store_last_error_message();
    INFO(err);
    CHECK(rc == STORE_ENODISK);
  }
  uint64_t spilled = 1;
  CHECK(store_evict(c.get(), kAll, &spilled) == STORE_ENODISK);
  CHECK(spilled == 0);
  store_stats st = Stats(c.get());
  CHECK(st.spilled_count == 0);
  CHECK(st.spill_files == 0);
  CHECK(st.total_spilled_objects == 0);
  CHECK(st.waiting_creates == 0);
  CHECK(SpillFiles(dir).empty());
  for (const Obj& o : objs) CHECK(InMemoryOnly(c.get(), o));
  for (const Obj& o : objs) ReadBack(c.get(), o);
  CHECK(s.Alive());
  c.reset();
  CHECK(ExitedZero(s.Stop()));
}

// ---------------------------------------------------------------------------------------------
// Flags: file limits, several directories, water marks.

TEST_CASE("--spill-file-max-objects and --spill-file-max-size split a batch into files") {
  TempDir tmp;
  SUBCASE("at most 3 objects per file") {
    const std::string dir = tmp.Sub("objects");
    test::TestStore s("64M", SpillArgs(dir, {"--spill-file-max-objects", "3"}));
    REQUIRE(s.started());
    ClientPtr c = Connect(s.socket());
    std::vector<Obj> objs;
    for (int i = 0; i < 10; i++) {
      objs.push_back(MakeObj("max-objects-" + std::to_string(i), 1100 + i, 256 * kKiB, 3));
      Put(c.get(), objs.back());
    }
    Evict(c.get(), kAll);
    std::map<std::string, int> per_file;
    for (const Obj& o : objs) per_file[UrlOf(c.get(), o).path]++;
    CHECK(per_file.size() == 4);
    for (auto& [path, n] : per_file) {
      INFO(path);
      CHECK(n <= 3);
    }
    CHECK(SpillFiles(dir).size() == 4);
    CHECK(Stats(c.get()).spill_files == 4);
    for (const Obj& o : objs) ReadBack(c.get(), o);
  }
  SUBCASE("at most 3 MiB of records per file") {
    const std::string dir = tmp.Sub("size");
    test::TestStore s("64M", SpillArgs(dir, {"--spill-file-max-size", "3M"}));
    REQUIRE(s.started());
    ClientPtr c = Connect(s.socket());
    std::vector<Obj> objs;
    for (int i = 0; i < 6; i++) {
      objs.push_back(MakeObj("max-size-" + std::to_string(i), 1200 + i, kMiB));
      Put(c.get(), objs.back());
    }
    // A single object larger than the limit still gets a file of its own.
    objs.push_back(MakeObj("max-size-big", 1299, 5 * kMiB));
    Put(c.get(), objs.back());
    Evict(c.get(), kAll);
    std::map<std::string, uint64_t> per_file;
    for (const Obj& o : objs) {
      SpillUrl u = UrlOf(c.get(), o);
      per_file[u.path] += u.size;
    }
    uint64_t over = 0;
    for (auto& [path, bytes] : per_file) {
      INFO(path, ": ", bytes, " bytes of records");
      if (bytes > 3 * kMiB) over++;
    }
    CHECK(over == 1);  // only the big one
    CHECK(per_file.size() == 4);  // 2 + 2 + 2 one-MiB records, and the big one
    for (const Obj& o : objs) ReadBack(c.get(), o);
  }
}

TEST_CASE("several --spill-dir: files go to each in turn") {
  TempDir tmp;
  const std::string d1 = tmp.Sub("one"), d2 = tmp.Sub("two");
  test::TestStore s("64M", {"--spill-dir", d1, "--spill-dir", d2, "--spill-file-max-objects", "1"});
  REQUIRE(s.started());
  ClientPtr c = Connect(s.socket());
  CHECK(InstanceDirs(d1).size() == 1);
  CHECK(InstanceDirs(d2).size() == 1);
  std::vector<Obj> objs;
  for (int i = 0; i < 6; i++) {
    objs.push_back(MakeObj("dirs-" + std::to_string(i), 1300 + i, kMiB));
    Put(c.get(), objs.back());
  }
  Evict(c.get(), kAll);
  CHECK(SpillFiles(d1).size() == 3);
  CHECK(SpillFiles(d2).size() == 3);
  for (const Obj& o : objs) ReadBack(c.get(), o);
  for (const Obj& o : objs) Delete(c.get(), o);
  CHECK(test::WaitFor([&] { return SpillFiles(d1).empty() && SpillFiles(d2).empty(); }));
  c.reset();
  CHECK(ExitedZero(s.Stop()));
  CHECK(InstanceDirs(d1).empty());
  CHECK(InstanceDirs(d2).empty());
}

TEST_CASE("--spill-high and --spill-low: past the high mark the store spills down to the low one") {
  TempDir tmp;
  const std::string dir = tmp.Sub("spill");
  test::TestStore s("64M", SpillArgs(dir, {"--spill-high", "0.5", "--spill-low", "0.25"}));
  REQUIRE(s.started());
  ClientPtr c = Connect(s.socket());

  std::vector<Obj> objs;
  for (int i = 0; i < 45; i++) {
    objs.push_back(MakeObj("marks-" + std::to_string(i), 1400 + i, kMiB));
    Put(c.get(), objs.back(), 0, 0);  // never waits: the marks alone make room
  }
  REQUIRE(test::WaitFor([&] { return Quiet(c.get()); }));
  store_stats st = Stats(c.get());
  CHECK(st.total_spilled_objects > 0);
  CHECK(st.used_bytes <= 32 * kMiB);
  CHECK(st.sealed_count + st.spilled_count == 45);
  // The oldest went first.
  CHECK(IsSpilled(c.get(), objs[0]));
  CHECK(InMemoryOnly(c.get(), objs[44]));
  for (const Obj& o : objs) ReadBack(c.get(), o);
}

// ---------------------------------------------------------------------------------------------
// Sharing a spill directory; recovery edge cases.

TEST_CASE("two live stores on one spill directory leave each other's files alone") {
  TempDir tmp;
  const std::string dir = tmp.Sub("spill");
  test::TestStore a("64M", SpillArgs(dir));
  REQUIRE(a.started());
  ClientPtr ca = Connect(a.socket());
  const Obj x = MakeObj("shared-dir-x", 1500, 3 * kMiB, 5);
  Put(ca.get(), x);
  Evict(ca.get(), kAll);
  const std::string path = UrlOf(ca.get(), x).path;

  // A second store, even with --recover, neither removes nor adopts the live store's files.
  test::TestStore b("64M", SpillArgs(dir, {"--recover"}));
  REQUIRE(b.started());
  ClientPtr cb = Connect(b.socket());
  CHECK(InstanceDirs(dir).size() == 2);
  CHECK(fs::exists(path));
  store_object_info none = STORE_OBJECT_INFO_INIT;
  CHECK(store_info(cb.get(), &x.id, &none) == STORE_ENOTFOUND);
  CHECK(Stats(cb.get()).spill_files == 0);
  const Obj y = MakeObj("shared-dir-y", 1501, 2 * kMiB);
  Put(cb.get(), y);
  Evict(cb.get(), kAll);
  CHECK(SpillFiles(dir).size() == 2);
  ReadBack(ca.get(), x);
  ReadBack(cb.get(), y);
  cb.reset();
  CHECK(ExitedZero(b.Stop()));
  CHECK(fs::exists(path));
  ReadBack(ca.get(), x);
}

TEST_CASE("--recover after a clean stop serves the objects left on disk") {
  TempDir tmp;
  const std::string dir = tmp.Sub("spill");
  std::vector<Obj> objs;
  for (int i = 0; i < 5; i++) objs.push_back(MakeObj("clean-" + std::to_string(i), 1600 + i, kMiB + i, i));
  {
    test::TestStore s("64M", SpillArgs(dir));
    REQUIRE(s.started());
    ClientPtr c = Connect(s.socket());
    for (const Obj& o : objs) Put(c.get(), o);
    Evict(c.get(), kAll);
    c.reset();
    CHECK(ExitedZero(s.Stop()));
  }
  CHECK(SpillFiles(dir).size() == 1);  // the data stays when its store stops
  test::TestStore s("64M", SpillArgs(dir, {"--recover"}));
  REQUIRE(s.started());
  ClientPtr c = Connect(s.socket());
  CHECK(Stats(c.get()).spilled_count == objs.size());
  for (const Obj& o : objs) CHECK(IsSpilled(c.get(), o));
  for (const Obj& o : objs) ReadBack(c.get(), o);
  for (const Obj& o : objs) Delete(c.get(), o);
  CHECK(test::WaitFor([&] { return SpillFiles(dir).empty(); }));
  c.reset();
  CHECK(ExitedZero(s.Stop()));
  CHECK(fs::is_empty(dir));
}

TEST_CASE("--recover does not bring back deleted objects, and serves the newest copy of an id") {
  TempDir tmp;
  const std::string dir = tmp.Sub("spill");
  // For each k: "old-k" and a companion "keep-k" are spilled together; old-k is deleted (its
  // file lives on for keep-k), then created again with new content and spilled to another file.
  // "gone-k" is spilled with keep-k and deleted for good.
  // Many pairs: which copy recovery meets first depends on the order of the directory listing.
  const int kPairs = 20;
  std::vector<Obj> keep, gone, fresh;
  for (int k = 0; k < kPairs; k++) {
    keep.push_back(MakeObj("keep-" + std::to_string(k), 1700 + k, 64 * kKiB));
    gone.push_back(MakeObj("gone-" + std::to_string(k), 1740 + k, 64 * kKiB, 4));
    fresh.push_back(MakeObj("old-" + std::to_string(k), 1780 + k, 64 * kKiB, 6));
  }
  {
    test::TestStore s("64M", SpillArgs(dir));
    REQUIRE(s.started());
    ClientPtr c = Connect(s.socket());
    for (int k = 0; k < kPairs; k++) {
      Obj old = fresh[k];
      old.seed = 1820 + k;  // same id, other content
      Put(c.get(), old);
      Put(c.get(), keep[k]);
      Put(c.get(), gone[k]);
      Evict(c.get(), kAll);
      Delete(c.get(), old);
      Delete(c.get(), gone[k]);
      Put(c.get(), fresh[k]);
      Evict(c.get(), kAll);
      CHECK(UrlOf(c.get(), fresh[k]).path != UrlOf(c.get(), keep[k]).path);
    }
    // (Waited for: a compaction of a pair's first file, two thirds of it deleted, shows its new
    // file a moment before the old one goes.)
    CHECK(test::WaitFor([&] { return SpillFiles(dir).size() == 2 * kPairs; }));
    c.reset();
    Crash(s);
  }
  test::TestStore s("64M", SpillArgs(dir, {"--recover"}));
  REQUIRE(s.started());
  ClientPtr c = Connect(s.socket());
  for (int k = 0; k < kPairs; k++) {
    INFO("k = ", k);
    ReadBack(c.get(), keep[k]);
    ReadBack(c.get(), fresh[k]);
    store_object_info none = STORE_OBJECT_INFO_INIT;
    CHECK(store_info(c.get(), &gone[k].id, &none) == STORE_ENOTFOUND);
  }
  CHECK(Stats(c.get()).object_count == 2 * kPairs);
}
