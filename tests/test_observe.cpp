// test_observe.cpp - the figures a store reports about itself (stats, client list, object pages,
// metrics file), checked against a workload whose figures are known exactly.
#include <doctest.h>
#include <sys/stat.h>
#include <iterator>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "harness.h"
#include "storeclient.h"

namespace {

store_object_id Id(int i) {
  std::string s = "observe-" + std::to_string(i);
  store_object_id id;
  store_object_id_from_string(s.data(), s.size(), &id);
  return id;
}

store_client* Connect(const test::TestStore& s, const char* name) {
  store_client* c = nullptr;
  store_connect_options o = STORE_CONNECT_OPTIONS_INIT;
  o.client_name = name;
  REQUIRE(store_client_connect(&c, s.socket().c_str(), &o) == STORE_OK);
  return c;
}

store_stats Stats(store_client* c) {
  store_stats st = STORE_STATS_INIT;
  REQUIRE(store_stats_get(c, &st) == STORE_OK);
  return st;
}

std::string Hex(const store_object_id& id) {
  char h[41];
  store_object_id_to_hex(&id, h, sizeof h);
  return h;
}

std::map<std::string, std::string> ReadMetrics(const std::string& path) {
  std::map<std::string, std::string> m;
  std::ifstream f(path);
  std::string line;
  while (std::getline(f, line)) {
    if (line.empty() || line[0] == '#') continue;
    auto sp = line.rfind(' ');
    m[line.substr(0, sp)] = line.substr(sp + 1);
  }
  return m;
}

}  // namespace

TEST_CASE("stats, clients and pages match a known workload") {
  test::TestStore s("64M");
  REQUIRE(s.started());
  store_client* a = Connect(s, "writer-a");
  store_client* b = Connect(s, "reader-b");

  // 10 sealed objects of 1..10 KiB, importance i; object 0 and 1 pinned by b; object 2 held
  // open by b twice; one unsealed 100 KiB writer in a.
  std::vector<uint8_t> buf(10 * 1024, 7);
  for (int i = 0; i < 10; i++) {
    store_create_options o = STORE_CREATE_OPTIONS_INIT;
    o.importance = i;
    store_object_id id = Id(i);
    REQUIRE(store_put(a, &id, buf.data(), uint64_t(i + 1) * 1024, &o) == STORE_OK);
  }
  store_object_id id0 = Id(0), id1 = Id(1), id2 = Id(2), idw = Id(100);
  REQUIRE(store_pin(b, &id0) == STORE_OK);
  REQUIRE(store_pin(b, &id1) == STORE_OK);
  store_reader *r1 = nullptr, *r2 = nullptr;
  REQUIRE(store_open_reader(b, &r1, &id2, 0) == STORE_OK);
  REQUIRE(store_open_reader(b, &r2, &id2, 0) == STORE_OK);
  store_writer* w = nullptr;
  REQUIRE(store_create(a, &w, &idw, 100 * 1024, nullptr) == STORE_OK);

  store_stats st = Stats(b);
  CHECK(st.object_count == 11);
  CHECK(st.client_count == 2);
  CHECK(st.sealed_count == 10);
  CHECK(st.created_count == 1);
  CHECK(st.pinned_count == 2);
  CHECK(st.open_count == 1);
  CHECK(st.deleted_pending_count == 0);
  // Bytes are allocator size classes: at least the object's size, and they add up.
  CHECK(st.created_bytes >= 100 * 1024);
  CHECK(st.sealed_bytes >= 55 * 1024);
  CHECK(st.used_bytes == st.created_bytes + st.sealed_bytes);
  CHECK(st.pinned_bytes >= 3 * 1024);
  CHECK(st.open_bytes >= 3 * 1024);
  CHECK(st.open_bytes < 8 * 1024);
  CHECK(st.total_creates == 11);
  CHECK(st.total_seals == 10);
  CHECK(st.total_gets == 2);
  CHECK(st.total_pins == 2);
  // Allocator size classes are 4 per doubling, so the largest block of an empty 64 MiB region
  // is the 56 MiB class (a 64 MiB block would need the region plus a page).
  CHECK(st.largest_free_bytes >= 48ull << 20);
  CHECK(st.largest_free_bytes <= st.capacity_bytes - st.used_bytes);
  CHECK(st.resident_bytes >= st.used_bytes);
  CHECK(st.total_requests >= 16);
  CHECK(st.server_pid == s.pid());

  // Clients.
  store_client_info* cl = nullptr;
  size_t ncl = 0;
  REQUIRE(store_list_clients(b, &cl, sizeof *cl, &ncl) == STORE_OK);
  REQUIRE(ncl == 2);
  const store_client_info* ia = std::strcmp(cl[0].name, "writer-a") == 0 ? &cl[0] : &cl[1];
  const store_client_info* ib = ia == &cl[0] ? &cl[1] : &cl[0];
  CHECK(std::string(ia->name) == "writer-a");
  CHECK(std::string(ib->name) == "reader-b");
  CHECK(ia->pid == getpid());
  CHECK(ia->objects_created == 11);
  CHECK(ia->creating_count == 1);
  CHECK(ia->readers_held == 0);
  CHECK(ia->bytes_held >= 100 * 1024);
  CHECK(ib->objects_created == 0);
  CHECK(ib->readers_held == 2);
  CHECK(ib->pins_held == 2);
  // b holds objects 0, 1 (pins) and 2 (two readers): each counted once.
  CHECK(ib->bytes_held == st.pinned_bytes + st.open_bytes);
  CHECK(ib->is_self == 1);
  CHECK(ia->is_self == 0);
  CHECK(ia->connect_time_ns > 0);
  store_free(cl);

  // Pages: sorted by size, largest first.
  store_list_options lo = STORE_LIST_OPTIONS_INIT;
  lo.sort = STORE_SORT_SIZE;
  lo.descending = 1;
  lo.limit = 3;
  store_object_info* page = nullptr;
  size_t n = 0;
  uint64_t total = 0;
  REQUIRE(store_list_page(b, &lo, &page, sizeof *page, &n, &total) == STORE_OK);
  CHECK(total == 11);
  REQUIRE(n == 3);
  CHECK(page[0].data_size == 100 * 1024);
  CHECK(page[0].state == STORE_STATE_CREATED);
  CHECK(page[1].data_size == 10 * 1024);
  CHECK(page[2].data_size == 9 * 1024);
  store_free(page);
  // The next page continues where it stopped.
  lo.offset = 3;
  REQUIRE(store_list_page(b, &lo, &page, sizeof *page, &n, &total) == STORE_OK);
  REQUIRE(n == 3);
  CHECK(page[0].data_size == 8 * 1024);
  store_free(page);
  // Pages past the middle (served from the other end) agree with one whole listing.
  {
    store_list_options all = STORE_LIST_OPTIONS_INIT;
    all.sort = STORE_SORT_SIZE;
    all.descending = 1;
    all.limit = 100;
    store_object_info* whole = nullptr;
    size_t nw = 0;
    REQUIRE(store_list_page(b, &all, &whole, sizeof *whole, &nw, &total) == STORE_OK);
    REQUIRE(nw == 11);
    for (uint64_t off : {6u, 8u, 9u, 10u}) {
      all.offset = off;
      all.limit = 3;
      REQUIRE(store_list_page(b, &all, &page, sizeof *page, &n, &total) == STORE_OK);
      CHECK(n == std::min<size_t>(3, 11 - off));
      for (size_t i = 0; i < n; i++) {
        CHECK(std::memcmp(page[i].id.bytes, whole[off + i].id.bytes, 20) == 0);
      }
      store_free(page);
    }
    all.offset = 11;
    REQUIRE(store_list_page(b, &all, &page, sizeof *page, &n, &total) == STORE_OK);
    CHECK(n == 0);
    CHECK(total == 11);
    store_free(whole);
  }
  // By importance ascending: 0 first, with its pins.
  lo = STORE_LIST_OPTIONS_INIT;
  lo.sort = STORE_SORT_IMPORTANCE;
  lo.limit = 2;
  REQUIRE(store_list_page(b, &lo, &page, sizeof *page, &n, &total) == STORE_OK);
  REQUIRE(n == 2);
  CHECK(page[0].importance == 0);  // the unsealed writer has importance 0 too; ties by id
  store_free(page);
  // Filter by an id prefix: the full hex of object 2 finds exactly it, with 2 readers.
  std::string hex2 = Hex(id2);
  lo = STORE_LIST_OPTIONS_INIT;
  lo.id_prefix = hex2.c_str();
  REQUIRE(store_list_page(b, &lo, &page, sizeof *page, &n, &total) == STORE_OK);
  REQUIRE(n == 1);
  CHECK(total == 1);
  CHECK(std::memcmp(page[0].id.bytes, id2.bytes, 20) == 0);
  CHECK(page[0].reader_count == 2);
  store_free(page);
  // A short prefix matches what the ids say.
  std::string p1 = hex2.substr(0, 1);
  lo.id_prefix = p1.c_str();
  lo.limit = 100;
  REQUIRE(store_list_page(b, &lo, &page, sizeof *page, &n, &total) == STORE_OK);
  size_t expect = 0;
  for (int i : {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 100}) expect += Hex(Id(i))[0] == p1[0];
  CHECK(n == expect);
  for (size_t i = 0; i < n; i++) CHECK(Hex(page[i].id)[0] == p1[0]);
  store_free(page);
  // Bad options.
  lo.id_prefix = "xyz";
  CHECK(store_list_page(b, &lo, &page, sizeof *page, &n, &total) == STORE_EINVAL);
  lo = STORE_LIST_OPTIONS_INIT;
  lo.limit = STORE_MAX_PAGE_OBJECTS + 1;
  CHECK(store_list_page(b, &lo, &page, sizeof *page, &n, &total) == STORE_EINVAL);
  lo = STORE_LIST_OPTIONS_INIT;
  lo.sort = 99;
  CHECK(store_list_page(b, &lo, &page, sizeof *page, &n, &total) == STORE_EINVAL);

  // Undo everything: figures return to zero.
  store_readers_close(&r1, 1);
  store_reader_close(r2);
  REQUIRE(store_writer_abort(w) == STORE_OK);
  REQUIRE(store_unpin(b, &id0) == STORE_OK);
  REQUIRE(store_unpin(b, &id1) == STORE_OK);
  for (int i = 0; i < 10; i++) {
    store_object_id id = Id(i);
    REQUIRE(store_delete(a, &id) == STORE_OK);
  }
  st = Stats(b);
  CHECK(st.object_count == 0);
  CHECK(st.used_bytes == 0);
  CHECK(st.pinned_count == 0);
  CHECK(st.open_count == 0);
  CHECK(st.total_releases == 2);
  CHECK(st.total_aborts == 1);
  CHECK(st.total_deletes == 10);
  CHECK(st.largest_free_bytes >= 48ull << 20);
  store_client_free(a);
  store_client_free(b);
}

TEST_CASE("the largest free block shows fragmentation") {
  test::TestStore s("16M");
  REQUIRE(s.started());
  store_client* c = Connect(s, "frag");
  // Fill with 1 MiB objects, then free every other one: plenty free, but no 2 MiB block.
  std::vector<store_object_id> ids;
  std::vector<uint8_t> mib(1 << 20, 1);
  for (int i = 0;; i++) {
    store_object_id id = Id(1000 + i);
    if (store_put(c, &id, mib.data(), mib.size(), nullptr) != STORE_OK) break;
    ids.push_back(id);
  }
  REQUIRE(ids.size() >= 8);
  for (size_t i = 0; i < ids.size(); i += 2) REQUIRE(store_delete(c, &ids[i]) == STORE_OK);
  store_stats st = Stats(c);
  CHECK(st.capacity_bytes - st.used_bytes >= 4ull << 20);
  CHECK(st.largest_free_bytes < 2ull << 20);
  CHECK(st.largest_free_bytes >= 1ull << 20);
  for (size_t i = 1; i < ids.size(); i += 2) REQUIRE(store_delete(c, &ids[i]) == STORE_OK);
  st = Stats(c);
  CHECK(st.used_bytes == 0);
  CHECK(st.largest_free_bytes >= 12ull << 20);
  store_client_free(c);
}

TEST_CASE("the metrics file follows the store and goes away with it") {
  std::string dir = test::MakeTempDir();
  std::string path = dir + "/store.prom";
  {
    test::TestStore s("32M", {"--metrics-file", path, "--metrics-interval", "0.05"});
    REQUIRE(s.started());
    REQUIRE(test::WaitFor([&] { return ReadMetrics(path).count("store_capacity_bytes") == 1; }));
    auto m = ReadMetrics(path);
    CHECK(m["store_capacity_bytes"] == std::to_string(32 << 20));
    CHECK(m["store_objects"] == "0");
    // Spill-file compaction: written by a store without a spill directory too, all 0.
    for (const char* k : {"store_spill_compactions_total", "store_spill_compact_bytes_copied_total",
                          "store_spill_compact_bytes_freed_total",
                          "store_spill_compact_failures_total"}) {
      CHECK_MESSAGE(m[k] == "0", k);
    }
    store_client* c = Connect(s, "metrics");
    std::vector<uint8_t> data(4096, 3);
    for (int i = 0; i < 3; i++) {
      store_object_id id = Id(2000 + i);
      REQUIRE(store_put(c, &id, data.data(), data.size(), nullptr) == STORE_OK);
    }
    CHECK(test::WaitFor([&] {
      auto mm = ReadMetrics(path);
      return mm["store_objects"] == "3" && mm["store_clients"] == "1" &&
             mm["store_operations_total{op=\"create\"}"] == "3" &&
             mm["store_objects_by_state{state=\"sealed\"}"] == "3";
    }));
    for (int i = 0; i < 3; i++) {
      store_object_id id = Id(2000 + i);
      REQUIRE(store_delete(c, &id) == STORE_OK);
    }
    store_client_free(c);
    CHECK(test::WaitFor([&] { return ReadMetrics(path)["store_used_bytes"] == "0"; }));
    // Every sample line is "name value" with a number.
    for (auto& [k, v] : ReadMetrics(path)) {
      CHECK(k.rfind("store_", 0) == 0);
      CHECK(!v.empty());
      CHECK(v.find_first_not_of("0123456789") == std::string::npos);
    }
    CHECK(s.Stop() == 0);
  }
  CHECK(access(path.c_str(), F_OK) != 0);
  CHECK(access((path + ".tmp").c_str(), F_OK) != 0);
  std::filesystem::remove_all(dir);
}

// The metrics file often lives in a directory other users write to (a node exporter's): a link
// planted where the store writes the file's next version (PATH.tmp), before it starts or while
// it runs, is replaced, never written through.
TEST_CASE("the metrics file is never written through a link planted in its place") {
  std::string dir = test::MakeTempDir();
  const std::string victim = dir + "/victim";
  { std::ofstream(victim) << "precious\n"; }
  const std::string path = dir + "/store.prom";
  const std::string tmp = path + ".tmp";
  auto planted = [&] {
    struct stat st;
    return lstat(tmp.c_str(), &st) == 0 && S_ISLNK(st.st_mode);
  };
  REQUIRE(symlink(victim.c_str(), tmp.c_str()) == 0);
  {
    test::TestStore s("32M", {"--metrics-file", path, "--metrics-interval", "0.05"});
    REQUIRE(s.started());
    REQUIRE(test::WaitFor([&] { return ReadMetrics(path).count("store_capacity_bytes") == 1; }));
    int replaced = 0;
    for (int i = 0; i < 20; i++) {
      unlink(tmp.c_str());
      if (symlink(victim.c_str(), tmp.c_str()) != 0) continue;  // the store's own, that moment
      replaced += test::WaitFor([&] { return !planted(); });
    }
    CHECK(replaced >= 10);
    CHECK(ReadMetrics(path).count("store_capacity_bytes") == 1);
    CHECK(s.Stop() == 0);
  }
  std::ifstream f(victim);
  std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  CHECK(text == "precious\n");
  std::filesystem::remove_all(dir);
}

// The list of clients counts what each holds as it changes: a pin taken on an object on disk
// counts its memory (it is brought back), and the pins on an object deleted while pinned go
// with it.
TEST_CASE("the list of clients counts pins on spilled and deleted objects") {
  std::string dir = test::MakeTempDir();
  {
    test::TestStore s("32M", {"--spill-dir", dir});
    REQUIRE(s.started());
    store_client* c = Connect(s, "pinner");
    auto mine = [&] {
      store_client_info* cl = nullptr;
      size_t n = 0;
      REQUIRE(store_list_clients(c, &cl, sizeof *cl, &n) == STORE_OK);
      REQUIRE(n == 1);
      store_client_info me = cl[0];
      store_free(cl);
      return me;
    };
    std::vector<uint8_t> data(300 * 1024, 5);
    store_object_id big = Id(4000), small = Id(4001);
    REQUIRE(store_put(c, &big, data.data(), data.size(), nullptr) == STORE_OK);
    REQUIRE(store_put(c, &small, data.data(), 100, nullptr) == STORE_OK);
    uint64_t spilled = 0;
    REQUIRE(store_evict(c, 64ull << 20, &spilled) == STORE_OK);
    REQUIRE(Stats(c).spilled_count == 2);
    REQUIRE(store_pin(c, &big) == STORE_OK);
    REQUIRE(store_pin(c, &big) == STORE_OK);
    REQUIRE(store_pin(c, &small) == STORE_OK);
    // Back in memory: neither on disk nor being read (a delete during the read frees the object,
    // and its pins go, only once the read is done).
    REQUIRE(test::WaitFor([&] {
      store_stats st = Stats(c);
      return st.spilled_count == 0 && st.restoring_count == 0;
    }));
    store_client_info me = mine();
    CHECK(me.pins_held == 3);
    CHECK(me.bytes_held == Stats(c).pinned_bytes);
    CHECK(me.bytes_held >= data.size() + 100);
    // Deleted while pinned: it is freed, and its pins are gone from the list.
    REQUIRE(store_delete(c, &big) == STORE_OK);
    me = mine();
    CHECK(me.pins_held == 1);
    CHECK(me.bytes_held == Stats(c).pinned_bytes);
    CHECK(me.bytes_held < data.size());
    REQUIRE(store_unpin(c, &small) == STORE_OK);
    me = mine();
    CHECK(me.pins_held == 0);
    CHECK(me.bytes_held == 0);
    REQUIRE(store_delete(c, &small) == STORE_OK);
    store_client_free(c);
  }
  std::filesystem::remove_all(dir);
}

TEST_CASE("spill files are listed with their live and dead bytes") {
  std::string dir = test::MakeTempDir();
  {
    // Compaction off: a file rewritten in between would change what is listed.
    test::TestStore s("32M", {"--spill-dir", dir, "--spill-compact", "1"});
    REQUIRE(s.started());
    store_client* c = Connect(s, "spill-files");
    std::vector<uint8_t> data(256 * 1024, 9);
    for (int i = 0; i < 8; i++) {
      store_object_id id = Id(3000 + i);
      REQUIRE(store_put(c, &id, data.data(), data.size(), nullptr) == STORE_OK);
    }
    uint64_t spilled = 0;
    REQUIRE(store_evict(c, 64ull << 20, &spilled) == STORE_OK);
    CHECK(spilled >= 8 * data.size());
    store_spill_file_info* files = nullptr;
    size_t n = 0;
    REQUIRE(store_list_spill_files(c, &files, sizeof *files, &n) == STORE_OK);
    store_stats st = Stats(c);
    REQUIRE(n == st.spill_files);
    REQUIRE(n >= 1);
    uint64_t live = 0, size = 0;
    for (size_t i = 0; i < n; i++) {
      live += files[i].live_objects;
      size += files[i].size;
      CHECK(files[i].dead_bytes == 0);
      CHECK(std::string(files[i].path).rfind(dir, 0) == 0);
      CHECK(access(files[i].path, F_OK) == 0);
    }
    CHECK(live == 8);
    CHECK(size == st.spill_disk_bytes);
    std::string first_path = files[0].path;
    store_free(files);
    // Deleting one object of a file that keeps others leaves a dead record in it.
    char url[4200];
    store_object_id id0 = Id(3000);
    REQUIRE(store_spill_url(c, &id0, url, sizeof url) == STORE_OK);
    REQUIRE(store_delete(c, &id0) == STORE_OK);
    REQUIRE(store_list_spill_files(c, &files, sizeof *files, &n) == STORE_OK);
    uint64_t dead = 0;
    for (size_t i = 0; i < n; i++) dead += files[i].dead_bytes;
    store_free(files);
    st = Stats(c);
    if (st.spill_files > 0 && live > 1) {
      CHECK(dead == 16 + data.size());
      CHECK(st.spill_dead_bytes == dead);
    }
    for (int i = 1; i < 8; i++) {
      store_object_id id = Id(3000 + i);
      REQUIRE(store_delete(c, &id) == STORE_OK);
    }
    REQUIRE(store_list_spill_files(c, &files, sizeof *files, &n) == STORE_OK);
    CHECK(n == 0);
    CHECK(files == nullptr);
    // The file is unlinked off the event loop: wait for it.
    CHECK(test::WaitFor([&] { return access(first_path.c_str(), F_OK) != 0; }));
    store_client_free(c);
  }
  std::filesystem::remove_all(dir);
}

TEST_CASE("more spill files than a page holds (4096): each is listed once") {
  std::string dir = test::MakeTempDir();
  {
    // One object per file: an eviction of them all writes as many files.
    test::TestStore s("64M", {"--spill-dir", dir, "--spill-compact", "1",
                              "--spill-file-max-objects", "1"});
    REQUIRE(s.started());
    store_client* c = Connect(s, "many-spill-files");
    constexpr int kFiles = 5000;
    std::vector<store_object_id> ids;
    std::vector<const void*> datas;
    std::vector<uint64_t> sizes;
    static const uint8_t bytes[512] = {7};
    for (int i = 0; i < kFiles; i++) {
      ids.push_back(Id(50000 + i));
      datas.push_back(bytes);
      sizes.push_back(sizeof bytes);
    }
    size_t done = 0;
    REQUIRE(store_put_many(c, ids.data(), datas.data(), sizes.data(), ids.size(), nullptr,
                           &done) == STORE_OK);
    REQUIRE(store_evict(c, 1ull << 40, nullptr) == STORE_OK);
    REQUIRE(Stats(c).spill_files == kFiles);
    store_spill_file_info* files = nullptr;
    size_t n = 0;
    REQUIRE(store_list_spill_files(c, &files, sizeof *files, &n) == STORE_OK);
    CHECK(n == kFiles);
    std::set<std::string> paths;
    uint64_t live = 0;
    for (size_t i = 0; i < n; i++) {
      paths.insert(files[i].path);
      live += files[i].live_objects;
    }
    CHECK(paths.size() == n);
    CHECK(live == kFiles);
    store_free(files);
    size_t deleted = 0;
    CHECK(store_delete_many(c, ids.data(), ids.size(), &deleted) == STORE_OK);
    CHECK(deleted == ids.size());
    REQUIRE(store_list_spill_files(c, &files, sizeof *files, &n) == STORE_OK);
    CHECK(n == 0);
    // Files are unlinked off the event loop: wait for them.
    CHECK(test::WaitFor([&] {
      return std::all_of(paths.begin(), paths.end(),
                         [](const std::string& p) { return access(p.c_str(), F_OK) != 0; });
    }));
    store_client_free(c);
  }
  std::filesystem::remove_all(dir);
}

TEST_CASE("objects of one size are paged in the byte order of their ids") {
  test::TestStore s("16M");
  REQUIRE(s.started());
  store_client* c = Connect(s, "id-order");
  // Random ids, and ids that differ from one another in a single byte, at every position.
  std::vector<store_object_id> ids;
  std::mt19937 rng(5);
  for (int i = 0; i < 200; i++) {
    store_object_id id;
    for (auto& b : id.bytes) b = static_cast<uint8_t>(rng());
    ids.push_back(id);
  }
  store_object_id base = ids[0];
  for (int pos = 0; pos < 20; pos++) {
    for (int v : {0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff}) {
      store_object_id id = base;
      id.bytes[pos] = static_cast<uint8_t>(v);
      if (std::memcmp(id.bytes, base.bytes, 20) != 0) ids.push_back(id);
    }
  }
  uint8_t data[8] = {};
  for (const auto& id : ids) REQUIRE(store_put(c, &id, data, sizeof data, nullptr) == STORE_OK);
  auto byte_less = [](const store_object_info& a, const store_object_info& b) {
    return std::memcmp(a.id.bytes, b.id.bytes, 20) < 0;
  };
  for (int descending : {0, 1}) {
    store_list_options lo = STORE_LIST_OPTIONS_INIT;
    lo.sort = STORE_SORT_SIZE;
    lo.descending = descending;
    lo.limit = 1000;
    store_object_info* page = nullptr;
    size_t n = 0;
    REQUIRE(store_list_page(c, &lo, &page, sizeof *page, &n, nullptr) == STORE_OK);
    REQUIRE(n == ids.size());
    std::vector<store_object_info> got(page, page + n);
    if (descending) std::reverse(got.begin(), got.end());
    CHECK(std::adjacent_find(got.begin(), got.end(), [&](const auto& a, const auto& b) {
            return !byte_less(a, b);
          }) == got.end());
    store_free(page);
  }
  size_t deleted = 0;
  CHECK(store_delete_many(c, ids.data(), ids.size(), &deleted) == STORE_OK);
  CHECK(deleted == ids.size());
  store_client_free(c);
}

TEST_CASE("pages deep in a large table, from both ends and with a prefix, agree with the order "
          "the objects were put in") {
  // Pages near either end come from a bounded heap; deeper ones (past 32768 objects from both
  // ends) from a selection over every object: both must give the same order.
  test::TestStore s("64M");
  REQUIRE(s.started());
  store_client* c = Connect(s, "deep-pages");
  constexpr int kObjects = 80000;
  struct Want {
    uint64_t size;
    store_object_id id;
  };
  std::vector<Want> want;
  std::vector<store_object_id> ids;
  std::vector<const void*> datas;
  std::vector<uint64_t> sizes;
  static const uint8_t bytes[128] = {};
  for (int i = 0; i < kObjects; i++) {
    std::string key = "deep-" + std::to_string(i);
    store_object_id id;
    store_object_id_from_string(key.data(), key.size(), &id);
    uint64_t size = 1 + static_cast<uint64_t>(i * 7919) % 97;
    want.push_back({size, id});
    ids.push_back(id);
    datas.push_back(bytes);
    sizes.push_back(size);
  }
  size_t done = 0;
  REQUIRE(store_put_many(c, ids.data(), datas.data(), sizes.data(), ids.size(), nullptr, &done) ==
          STORE_OK);
  auto less = [](const Want& a, const Want& b) {
    if (a.size != b.size) return a.size < b.size;
    return std::memcmp(a.id.bytes, b.id.bytes, 20) < 0;
  };
  std::sort(want.begin(), want.end(), less);
  // The same order restricted to ids starting with hex digit 'a'.
  std::vector<Want> want_a;
  for (const Want& w : want) {
    if (Hex(w.id)[0] == 'a') want_a.push_back(w);
  }
  auto check_page = [&](const std::vector<Want>& order, int descending, uint64_t offset,
                        uint32_t limit, const char* prefix) {
    store_list_options lo = STORE_LIST_OPTIONS_INIT;
    lo.sort = STORE_SORT_SIZE;
    lo.descending = descending;
    lo.offset = offset;
    lo.limit = limit;
    lo.id_prefix = prefix;
    store_object_info* page = nullptr;
    size_t n = 0;
    uint64_t total = 0;
    REQUIRE(store_list_page(c, &lo, &page, sizeof *page, &n, &total) == STORE_OK);
    CHECK(total == order.size());
    const size_t expect = offset >= order.size() ? 0 : std::min<size_t>(limit, order.size() - offset);
    INFO("descending " << descending << " offset " << offset << " limit " << limit);
    CHECK(n == expect);
    size_t bad = 0;
    for (size_t i = 0; i < std::min(n, expect); i++) {
      const Want& w = descending ? order[order.size() - 1 - (offset + i)] : order[offset + i];
      if (page[i].data_size != w.size || std::memcmp(page[i].id.bytes, w.id.bytes, 20) != 0) bad++;
    }
    CHECK(bad == 0);
    store_free(page);
  };
  for (int descending : {0, 1}) {
    for (uint64_t offset : {0ull, 100ull, 30000ull, 32768ull, 39990ull, 40000ull, 45000ull,
                            60000ull, 79950ull, 79999ull, 80000ull}) {
      check_page(want, descending, offset, 100, nullptr);
    }
    check_page(want, descending, 20000, 40000, nullptr);  // most of the table in one page
    check_page(want, descending, 0, kObjects, nullptr);
  }
  REQUIRE(want_a.size() > 4000);
  for (uint64_t offset : {uint64_t{0}, uint64_t{want_a.size() / 2}, uint64_t{want_a.size() - 10}}) {
    check_page(want_a, 0, offset, 100, "a");
  }
  check_page(want_a, 1, 0, 100000, "a");
  size_t deleted = 0;
  CHECK(store_delete_many(c, ids.data(), ids.size(), &deleted) == STORE_OK);
  CHECK(deleted == ids.size());
  store_client_free(c);
}

TEST_CASE("store_delete_many deletes every id it can and says how many") {
  test::TestStore s("32M");
  REQUIRE(s.started());
  store_client* c = Connect(s, "delete-many");
  std::vector<store_object_id> ids;
  std::vector<uint8_t> data(100, 5);
  for (int i = 0; i < 70000; i++) ids.push_back(Id(5000 + i));  // more than one request's worth
  std::vector<const void*> datas(ids.size(), data.data());
  std::vector<uint64_t> sizes(ids.size(), data.size());
  size_t done = 0;
  REQUIRE(store_put_many(c, ids.data(), datas.data(), sizes.data(), ids.size(), nullptr, &done) ==
          STORE_OK);
  REQUIRE(done == ids.size());
  // One id is deleted already and one is still being written: both are reported, the rest go.
  REQUIRE(store_delete(c, &ids[10]) == STORE_OK);
  store_object_id unsealed = Id(999999);
  store_writer* w = nullptr;
  // Larger than a staged object: in the store, unsealed, from the create on.
  REQUIRE(store_create(c, &w, &unsealed, 100 * 1024, nullptr) == STORE_OK);
  ids.push_back(unsealed);
  size_t deleted = 0;
  CHECK(store_delete_many(c, ids.data(), ids.size(), &deleted) == STORE_ENOTFOUND);
  CHECK(deleted == ids.size() - 2);
  CHECK(std::string(store_last_error_message()).find("cannot delete object") != std::string::npos);
  store_stats st = Stats(c);
  CHECK(st.object_count == 1);  // the unsealed one
  CHECK(store_writer_abort(w) == STORE_OK);
  CHECK(store_delete_many(c, nullptr, 0, &deleted) == STORE_OK);
  CHECK(deleted == 0);
  CHECK(store_delete_many(nullptr, ids.data(), 1, &deleted) == STORE_EINVAL);
  st = Stats(c);
  CHECK(st.object_count == 0);
  CHECK(st.used_bytes == 0);
  store_client_free(c);
}

TEST_CASE("instance_id: the same for every client of a store, new for another or a restart") {
  uint64_t first = 0;
  int64_t first_start = 0;
  {
    test::TestStore s("16M");
    REQUIRE(s.started());
    test::TestStore other("16M");
    REQUIRE(other.started());
    const int64_t before = std::chrono::duration_cast<std::chrono::nanoseconds>(
                               std::chrono::system_clock::now().time_since_epoch())
                               .count();
    store_client* a = Connect(s, "a");
    store_client* b = Connect(s, "b");
    store_client* c = Connect(other, "c");
    store_stats sa = Stats(a), sb = Stats(b), sc = Stats(c);
    CHECK(sa.instance_id != 0);
    CHECK(sa.instance_id == sb.instance_id);
    CHECK(sa.start_time_ns == sb.start_time_ns);
    CHECK(sc.instance_id != 0);
    CHECK(sc.instance_id != sa.instance_id);
    // Started before this test read the clock, and not long before.
    CHECK(sa.start_time_ns <= before);
    CHECK(sa.start_time_ns > before - 60'000'000'000);
    first = sa.instance_id;
    first_start = sa.start_time_ns;
    store_client_free(a);
    store_client_free(b);
    store_client_free(c);
  }
  test::TestStore again("16M");
  REQUIRE(again.started());
  store_client* a = Connect(again, "a");
  store_stats st = Stats(a);
  CHECK(st.instance_id != 0);
  CHECK(st.instance_id != first);
  CHECK(st.start_time_ns >= first_start);
  store_client_free(a);
}
