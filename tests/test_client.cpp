// test_client.cpp - the C API (storeclient.h) end to end against a real store server, with one
// client or two.
#include <doctest.h>

#include <fstream>

#include <dirent.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#include <time.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "../capi/out_struct.h"
#include "client_util.h"
#include "harness.h"
#include "storeclient.h"

namespace {

using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

constexpr uint64_t kMiB = 1ull << 20;

using test::ClientPtr;
using test::ReaderPtr;
using test::WriterPtr;

ClientPtr Connect(const test::TestStore& s, const char* name = "test_client") {
  return test::Connect(s.socket(), name);
}

store_object_id Id(const std::string& s) { return test::IdOf(s); }

std::string Hex(const store_object_id& id) { return test::HexOf(id); }

bool SameId(const store_object_id& a, const store_object_id& b) {
  return std::memcmp(a.bytes, b.bytes, STORE_OBJECT_ID_SIZE) == 0;
}

// Deterministic bytes seeded by seed: an object's content can always be recomputed and checked.
std::vector<uint8_t> Pattern(uint64_t seed, size_t n) {
  std::vector<uint8_t> v(n);
  uint64_t x = (seed + 1) * 0x9E3779B97F4A7C15ull;
  for (size_t i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    v[i] = static_cast<uint8_t>(x >> 32);
  }
  return v;
}

bool SameBytes(const void* p, const std::vector<uint8_t>& want) {
  return p != nullptr && std::memcmp(p, want.data(), want.size()) == 0;
}

store_stats Stats(store_client* c) {
  store_stats st = STORE_STATS_INIT;
  int rc = store_stats_get(c, &st);
  const std::string err = store_last_error_message();
  INFO(err);
  REQUIRE(rc == STORE_OK);
  return st;
}

store_object_info Info(store_client* c, const store_object_id& id) {
  store_object_info info = STORE_OBJECT_INFO_INIT;
  int rc = store_info(c, &id, &info);
  const std::string err = store_last_error_message();
  INFO(err);
  REQUIRE(rc == STORE_OK);
  return info;
}

int Contains(store_client* c, const store_object_id& id) {
  int present = -1;
  REQUIRE(store_contains(c, &id, &present) == STORE_OK);
  return present;
}

ReaderPtr Open(store_client* c, const store_object_id& id, int64_t timeout_ms = 0) {
  store_reader* r = nullptr;
  int rc = store_open_reader(c, &r, &id, timeout_ms);
  const std::string err = store_last_error_message();
  INFO(err);
  REQUIRE(rc == STORE_OK);
  REQUIRE(r != nullptr);
  return ReaderPtr(r);
}

void Put(store_client* c, const store_object_id& id, const std::vector<uint8_t>& data,
         const store_create_options* opts = nullptr) {
  int rc = store_put(c, &id, data.data(), data.size(), opts);
  const std::string err = store_last_error_message();
  INFO(err);
  REQUIRE(rc == STORE_OK);
}

void Delete(store_client* c, const store_object_id& id) {
  int rc = store_delete(c, &id);
  const std::string err = store_last_error_message();
  INFO(err);
  REQUIRE(rc == STORE_OK);
}

// Everything the test made is gone: no objects and no memory in use. Another client's
// releases reach the store within a few milliseconds, so the memory of an object deleted while
// another client read it may be freed a moment after the delete.
void CheckEmpty(store_client* c) {
  test::WaitFor([&] { return Stats(c).deleted_pending_count == 0; });
  store_stats st = Stats(c);
  CHECK(st.object_count == 0);
  CHECK(st.used_bytes == 0);
  CHECK(st.created_count == 0);
  CHECK(st.deleted_pending_count == 0);
}

int64_t RealtimeNs() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

// Puts 1 MiB objects named prefix-<i> until the store is full. Returns their ids; the content of
// object i is Pattern(i, 1 MiB).
std::vector<store_object_id> FillWithMiB(store_client* c, const std::string& prefix) {
  std::vector<store_object_id> ids;
  for (int i = 0; i < 1000; i++) {
    store_object_id id = Id(prefix + "-" + std::to_string(i));
    std::vector<uint8_t> data = Pattern(i, kMiB);
    int rc = store_put(c, &id, data.data(), data.size(), nullptr);
    if (rc == STORE_ENOSPACE) return ids;
    const std::string err = store_last_error_message();
    INFO(err);
    REQUIRE(rc == STORE_OK);
    ids.push_back(id);
  }
  FAIL("the store never became full");
  return ids;
}

// The threads of a test. Join() waits for them. If the test leaves early (a failed REQUIRE)
// while one still blocks in a call, the server is stopped first so that the call returns; no
// thread outlives the test. Declare it after everything its threads use.
class Threads {
 public:
  explicit Threads(test::TestStore& s) : s_(s) {}
  ~Threads() {
    for (auto& t : threads_) {
      if (t.joinable()) {
        s_.Stop();
        break;
      }
    }
    Join();
  }
  template <class F>
  void Start(F&& f) {
    threads_.emplace_back(std::forward<F>(f));
  }
  void Join() {
    for (auto& t : threads_) {
      if (t.joinable()) t.join();
    }
  }

 private:
  test::TestStore& s_;
  std::vector<std::thread> threads_;
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// Writing and reading one object.

TEST_CASE("create, write, seal and open: data, metadata, read, seek and tell") {
  test::TestStore s("64M");
  REQUIRE(s.started());
  ClientPtr c = Connect(s);

  const store_object_id id = Id("roundtrip");
  const std::vector<uint8_t> data = Pattern(1, 1000);
  const char meta[] = {'m', 'e', '\0', 't', 'a', '\xff'};
  store_create_options opts = STORE_CREATE_OPTIONS_INIT;
  opts.metadata = meta;
  opts.metadata_size = sizeof meta;

  store_writer* raw = nullptr;
  REQUIRE(store_create(c.get(), &raw, &id, data.size(), &opts) == STORE_OK);
  WriterPtr w(raw);
  CHECK(store_writer_size(w.get()) == 1000);
  CHECK(store_writer_tell(w.get()) == 0);

  // The second half first, then the first half: writes land where the position says.
  uint64_t pos = 12345;
  REQUIRE(store_writer_seek(w.get(), 500, SEEK_SET, &pos) == STORE_OK);
  CHECK(pos == 500);
  REQUIRE(store_writer_write(w.get(), data.data() + 500, 300) == STORE_OK);
  CHECK(store_writer_tell(w.get()) == 800);
  REQUIRE(store_writer_write(w.get(), data.data() + 800, 200) == STORE_OK);
  CHECK(store_writer_tell(w.get()) == 1000);
  REQUIRE(store_writer_seek(w.get(), -1000, SEEK_CUR, &pos) == STORE_OK);
  CHECK(pos == 0);
  REQUIRE(store_writer_write(w.get(), data.data(), 500) == STORE_OK);
  CHECK(store_writer_tell(w.get()) == 500);
  // Writer seeks outside [0, size] fail and leave the position alone.
  CHECK(store_writer_seek(w.get(), 1, SEEK_END, &pos) == STORE_EINVAL);
  CHECK(store_writer_seek(w.get(), -501, SEEK_CUR, nullptr) == STORE_EINVAL);
  CHECK(store_writer_seek(w.get(), -1, SEEK_SET, nullptr) == STORE_EINVAL);
  CHECK(store_writer_seek(w.get(), 0, 42, nullptr) == STORE_EINVAL);
  CHECK(store_writer_tell(w.get()) == 500);
  REQUIRE(store_writer_seek(w.get(), 0, SEEK_END, nullptr) == STORE_OK);
  CHECK(store_writer_tell(w.get()) == 1000);

  // Not visible before the seal.
  CHECK(Contains(c.get(), id) == 0);
  REQUIRE(store_writer_seal(w.release()) == STORE_OK);
  CHECK(Contains(c.get(), id) == 1);

  {
    ReaderPtr r = Open(c.get(), id, 0);
    CHECK(store_reader_size(r.get()) == 1000);
    CHECK(store_reader_tell(r.get()) == 0);
    CHECK(SameBytes(store_reader_data(r.get()), data));
    const store_object_id* rid = store_reader_id(r.get());
    REQUIRE(rid != nullptr);
    CHECK(SameId(*rid, id));

    uint64_t msize = 0;
    const void* m = store_reader_metadata(r.get(), &msize);
    REQUIRE(m != nullptr);
    CHECK(msize == sizeof meta);
    CHECK(std::memcmp(m, meta, sizeof meta) == 0);
    CHECK(store_reader_metadata(r.get(), nullptr) == m);

    // Read in pieces of 300: 300, 300, 300, 100, then 0 at the end.
    std::vector<uint8_t> got;
    const size_t expect[] = {300, 300, 300, 100, 0};
    for (size_t want : expect) {
      uint8_t buf[300];
      size_t n = 9999;
      REQUIRE(store_reader_read(r.get(), buf, sizeof buf, &n) == STORE_OK);
      CHECK(n == want);
      got.insert(got.end(), buf, buf + n);
    }
    CHECK(got == data);
    CHECK(store_reader_tell(r.get()) == 1000);

    // Seeks.
    REQUIRE(store_reader_seek(r.get(), 250, SEEK_SET, &pos) == STORE_OK);
    CHECK(pos == 250);
    uint8_t buf[16];
    size_t n = 0;
    REQUIRE(store_reader_read(r.get(), buf, 10, &n) == STORE_OK);
    CHECK(n == 10);
    CHECK(std::memcmp(buf, data.data() + 250, 10) == 0);
    CHECK(store_reader_tell(r.get()) == 260);
    REQUIRE(store_reader_seek(r.get(), -20, SEEK_CUR, &pos) == STORE_OK);
    CHECK(pos == 240);
    REQUIRE(store_reader_read(r.get(), buf, 4, &n) == STORE_OK);
    CHECK(n == 4);
    CHECK(std::memcmp(buf, data.data() + 240, 4) == 0);
    REQUIRE(store_reader_seek(r.get(), -1, SEEK_END, &pos) == STORE_OK);
    CHECK(pos == 999);
    REQUIRE(store_reader_read(r.get(), buf, sizeof buf, &n) == STORE_OK);
    CHECK(n == 1);
    CHECK(buf[0] == data[999]);
    REQUIRE(store_reader_read(r.get(), buf, sizeof buf, &n) == STORE_OK);
    CHECK(n == 0);
    REQUIRE(store_reader_read(r.get(), buf, sizeof buf, nullptr) == STORE_OK);

    // Outside [0, size]: STORE_EINVAL, position unchanged.
    REQUIRE(store_reader_seek(r.get(), 100, SEEK_SET, nullptr) == STORE_OK);
    CHECK(store_reader_seek(r.get(), -1, SEEK_SET, &pos) == STORE_EINVAL);
    CHECK(store_reader_seek(r.get(), 1001, SEEK_SET, &pos) == STORE_EINVAL);
    CHECK(store_reader_seek(r.get(), 1, SEEK_END, &pos) == STORE_EINVAL);
    CHECK(store_reader_seek(r.get(), -101, SEEK_CUR, &pos) == STORE_EINVAL);
    CHECK(store_reader_seek(r.get(), 901, SEEK_CUR, &pos) == STORE_EINVAL);
    CHECK(store_reader_seek(r.get(), INT64_MAX, SEEK_CUR, &pos) == STORE_EINVAL);
    CHECK(store_reader_seek(r.get(), INT64_MIN, SEEK_END, &pos) == STORE_EINVAL);
    CHECK(store_reader_seek(r.get(), 0, 3, &pos) == STORE_EINVAL);
    CHECK(store_reader_tell(r.get()) == 100);
    // The end itself is a valid position; reading there gives nothing.
    REQUIRE(store_reader_seek(r.get(), 1000, SEEK_SET, &pos) == STORE_OK);
    CHECK(pos == 1000);
    REQUIRE(store_reader_read(r.get(), buf, sizeof buf, &n) == STORE_OK);
    CHECK(n == 0);
    REQUIRE(store_reader_seek(r.get(), 0, SEEK_SET, &pos) == STORE_OK);
    CHECK(pos == 0);
    // A zero-byte read with a NULL buffer is fine.
    REQUIRE(store_reader_read(r.get(), nullptr, 0, &n) == STORE_OK);
    CHECK(n == 0);
  }

  // An object without metadata has none.
  const store_object_id bare = Id("roundtrip-bare");
  Put(c.get(), bare, Pattern(2, 7));
  {
    ReaderPtr r = Open(c.get(), bare);
    uint64_t msize = 99;
    CHECK(store_reader_metadata(r.get(), &msize) == nullptr);
    CHECK(msize == 0);
    CHECK(SameBytes(store_reader_data(r.get()), Pattern(2, 7)));
  }

  Delete(c.get(), id);
  Delete(c.get(), bare);
  CheckEmpty(c.get());
}

TEST_CASE("store_writer_data: writing in place through the pointer") {
  test::TestStore s("64M");
  REQUIRE(s.started());
  ClientPtr c = Connect(s);

  const store_object_id id = Id("zero-copy");
  const size_t size = 3 * kMiB + 17;
  store_writer* raw = nullptr;
  REQUIRE(store_create(c.get(), &raw, &id, size, nullptr) == STORE_OK);
  WriterPtr w(raw);
  auto* p = static_cast<uint8_t*>(store_writer_data(w.get()));
  REQUIRE(p != nullptr);
  CHECK(store_writer_data(w.get()) == p);
  std::memset(p, 0xA5, size);
  const std::vector<uint8_t> tail = Pattern(3, 4096);
  std::memcpy(p + size - tail.size(), tail.data(), tail.size());
  CHECK(store_writer_tell(w.get()) == 0);  // writing through the pointer moves nothing
  REQUIRE(store_writer_seal(w.release()) == STORE_OK);

  {
    ReaderPtr r = Open(c.get(), id);
    REQUIRE(store_reader_size(r.get()) == size);
    std::vector<uint8_t> want(size, 0xA5);
    std::memcpy(want.data() + size - tail.size(), tail.data(), tail.size());
    CHECK(SameBytes(store_reader_data(r.get()), want));
    // The same bytes through a second client's mapping.
    ClientPtr c2 = Connect(s, "second");
    ReaderPtr r2 = Open(c2.get(), id);
    CHECK(SameBytes(store_reader_data(r2.get()), want));
  }

  Delete(c.get(), id);
  CheckEmpty(c.get());
}

TEST_CASE("writing past the end fails and writes nothing") {
  test::TestStore s("64M");
  REQUIRE(s.started());
  ClientPtr c = Connect(s);

  const store_object_id id = Id("past-the-end");
  store_writer* raw = nullptr;
  REQUIRE(store_create(c.get(), &raw, &id, 16, nullptr) == STORE_OK);
  WriterPtr w(raw);
  const std::vector<uint8_t> a(16, 'a'), x(17, 'X');
  REQUIRE(store_writer_write(w.get(), a.data(), 16) == STORE_OK);
  CHECK(store_writer_tell(w.get()) == 16);
  CHECK(store_writer_write(w.get(), x.data(), 1) == STORE_EINVAL);
  REQUIRE(store_writer_seek(w.get(), 10, SEEK_SET, nullptr) == STORE_OK);
  CHECK(store_writer_write(w.get(), x.data(), 7) == STORE_EINVAL);
  CHECK(store_writer_tell(w.get()) == 10);
  REQUIRE(store_writer_seek(w.get(), 0, SEEK_SET, nullptr) == STORE_OK);
  CHECK(store_writer_write(w.get(), x.data(), 17) == STORE_EINVAL);
  CHECK(store_writer_tell(w.get()) == 0);
  CHECK(std::strlen(store_last_error_message()) > 0);
  // A zero-byte write at the end is fine.
  REQUIRE(store_writer_seek(w.get(), 0, SEEK_END, nullptr) == STORE_OK);
  CHECK(store_writer_write(w.get(), x.data(), 0) == STORE_OK);
  REQUIRE(store_writer_seal(w.release()) == STORE_OK);

  {
    ReaderPtr r = Open(c.get(), id);
    REQUIRE(store_reader_size(r.get()) == 16);
    CHECK(SameBytes(store_reader_data(r.get()), a));  // no 'X' landed anywhere
  }
  Delete(c.get(), id);
  CheckEmpty(c.get());
}

TEST_CASE("store_put: a small and a large object") {
  test::TestStore s("64M");
  REQUIRE(s.started());
  ClientPtr c = Connect(s);

  const store_object_id small = Id("put-small"), large = Id("put-large");
  const std::vector<uint8_t> sdata = Pattern(100, 100), ldata = Pattern(8, 8 * kMiB);
  const char meta[] = "put metadata";
  store_create_options opts = STORE_CREATE_OPTIONS_INIT;
  opts.metadata = meta;
  opts.metadata_size = sizeof meta;
  Put(c.get(), small, sdata, &opts);
  Put(c.get(), large, ldata, &opts);
  CHECK(Stats(c.get()).object_count == 2);
  CHECK(Stats(c.get()).sealed_count == 2);

  for (auto& [id, data] : {std::pair{small, sdata}, std::pair{large, ldata}}) {
    CHECK(Contains(c.get(), id) == 1);
    ReaderPtr r = Open(c.get(), id);
    CHECK(store_reader_size(r.get()) == data.size());
    CHECK(SameBytes(store_reader_data(r.get()), data));
    uint64_t msize = 0;
    const void* m = store_reader_metadata(r.get(), &msize);
    CHECK(msize == sizeof meta);
    CHECK((m != nullptr && std::memcmp(m, meta, sizeof meta) == 0));
    store_object_info info = Info(c.get(), id);
    CHECK(info.data_size == data.size());
    CHECK(info.metadata_size == sizeof meta);
    CHECK(info.state == STORE_STATE_SEALED);
  }

  Delete(c.get(), small);
  Delete(c.get(), large);
  CheckEmpty(c.get());
}

TEST_CASE("store_put_many 1000 small objects, then store_open_readers on all of them") {
  test::TestStore s("64M");
  REQUIRE(s.started());
  ClientPtr c = Connect(s);

  const size_t n = 1000;
  std::vector<store_object_id> ids;
  std::vector<std::vector<uint8_t>> datas;
  std::vector<const void*> ptrs;
  std::vector<uint64_t> sizes;
  for (size_t i = 0; i < n; i++) {
    ids.push_back(Id("many-" + std::to_string(i)));
    datas.push_back(Pattern(i, 1 + i % 300));
  }
  for (auto& d : datas) {
    ptrs.push_back(d.data());
    sizes.push_back(d.size());
  }
  size_t done = 12345;
  int rc = store_put_many(c.get(), ids.data(), ptrs.data(), sizes.data(), n, nullptr, &done);
  const std::string err = store_last_error_message();
  INFO(err);
  REQUIRE(rc == STORE_OK);
  CHECK(done == n);
  store_stats st = Stats(c.get());
  CHECK(st.object_count == n);
  CHECK(st.sealed_count == n);
  CHECK(st.created_count == 0);

  std::vector<store_reader*> readers(n, nullptr);
  REQUIRE(store_open_readers(c.get(), readers.data(), ids.data(), n, 0) == STORE_OK);
  size_t good = 0;
  for (size_t i = 0; i < n; i++) {
    store_reader* r = readers[i];
    if (r && store_reader_size(r) == datas[i].size() &&
        SameBytes(store_reader_data(r), datas[i]) && SameId(*store_reader_id(r), ids[i])) {
      good++;
    }
  }
  CHECK(good == n);
  st = Stats(c.get());
  CHECK(st.open_count == n);
  CHECK(Info(c.get(), ids[n - 1]).reader_count == 1);
  store_readers_close(readers.data(), n);
  // The release travels before the next request on the same connection.
  st = Stats(c.get());
  CHECK(st.open_count == 0);
  CHECK(st.total_releases == n);
  CHECK(Info(c.get(), ids[0]).reader_count == 0);
  CHECK(Info(c.get(), ids[n - 1]).reader_count == 0);

  for (auto& id : ids) Delete(c.get(), id);
  CheckEmpty(c.get());
}

TEST_CASE("store_put_many of runs of equal sizes, with metadata: each object keeps its own") {
  test::TestStore s("64M");
  REQUIRE(s.started());
  ClientPtr c = Connect(s);

  // Runs of one size, longer and shorter than a batch of requests, up to the inline limit.
  std::vector<uint64_t> sizes;
  for (uint64_t size : {64, 64, 7, 300, 1, 65536, 64}) {
    size_t run = size == 7 ? 1 : size == 65536 ? 40 : 300;
    sizes.insert(sizes.end(), run, size);
  }
  const size_t n = sizes.size();
  std::vector<store_object_id> ids;
  std::vector<std::vector<uint8_t>> datas;
  std::vector<const void*> ptrs;
  for (size_t i = 0; i < n; i++) {
    ids.push_back(Id("runs-" + std::to_string(i)));
    datas.push_back(Pattern(i, sizes[i]));
  }
  for (auto& d : datas) ptrs.push_back(d.data());
  const std::vector<uint8_t> meta = Pattern(9999, 40);
  store_create_options o = STORE_CREATE_OPTIONS_INIT;
  o.metadata = meta.data();
  o.metadata_size = meta.size();
  o.importance = 3;
  size_t done = 0;
  int rc = store_put_many(c.get(), ids.data(), ptrs.data(), sizes.data(), n, &o, &done);
  const std::string err = store_last_error_message();
  INFO(err);
  REQUIRE(rc == STORE_OK);
  CHECK(done == n);

  size_t good = 0;
  for (size_t i = 0; i < n; i++) {
    ReaderPtr r = Open(c.get(), ids[i]);
    uint64_t msize = 0;
    const void* m = store_reader_metadata(r.get(), &msize);
    if (store_reader_size(r.get()) == sizes[i] && SameBytes(store_reader_data(r.get()), datas[i]) &&
        msize == meta.size() && std::memcmp(m, meta.data(), meta.size()) == 0 &&
        Info(c.get(), ids[i]).importance == 3) {
      good++;
    }
  }
  CHECK(good == n);

  for (auto& id : ids) Delete(c.get(), id);
  CheckEmpty(c.get());
}

TEST_CASE("store_put_many: objects small and large, and failures in the middle") {
  test::TestStore s("64M");
  REQUIRE(s.started());
  ClientPtr c = Connect(s);
  const size_t kInline = 64 * 1024;

  // Sizes on both sides of the one-round-trip limit, all put.
  const std::vector<size_t> mix_sizes = {10, 100 * 1024, kInline, kInline + 1, 1, 3 * kMiB};
  std::vector<store_object_id> mix_ids;
  std::vector<std::vector<uint8_t>> mix_datas;
  std::vector<const void*> ptrs;
  std::vector<uint64_t> sizes;
  for (size_t i = 0; i < mix_sizes.size(); i++) {
    mix_ids.push_back(Id("mix-" + std::to_string(i)));
    mix_datas.push_back(Pattern(500 + i, mix_sizes[i]));
  }
  for (auto& d : mix_datas) {
    ptrs.push_back(d.data());
    sizes.push_back(d.size());
  }
  const char meta[] = "many-meta";
  store_create_options opts = STORE_CREATE_OPTIONS_INIT;
  opts.metadata = meta;
  opts.metadata_size = sizeof meta;
  opts.importance = 4;
  size_t done = 0;
  REQUIRE(store_put_many(c.get(), mix_ids.data(), ptrs.data(), sizes.data(), mix_ids.size(),
                         &opts, &done) == STORE_OK);
  CHECK(done == mix_ids.size());
  for (size_t i = 0; i < mix_ids.size(); i++) {
    CAPTURE(i);
    ReaderPtr r = Open(c.get(), mix_ids[i]);
    CHECK(store_reader_size(r.get()) == mix_sizes[i]);
    CHECK(SameBytes(store_reader_data(r.get()), mix_datas[i]));
    uint64_t msize = 0;
    const void* m = store_reader_metadata(r.get(), &msize);
    CHECK(msize == sizeof meta);
    CHECK((m != nullptr && std::memcmp(m, meta, sizeof meta) == 0));
    CHECK(Info(c.get(), mix_ids[i]).importance == 4);
  }

  // Every object is tried; the first failure is reported; done counts what was put.
  // [new small, existing small, new small, existing large, new large]
  const std::vector<store_object_id> ids = {Id("again-0"), mix_ids[0], Id("again-2"), mix_ids[1],
                                            Id("again-4")};
  const std::vector<std::vector<uint8_t>> datas = {Pattern(600, 50), Pattern(601, 60),
                                                   Pattern(602, 70), Pattern(603, 200 * 1024),
                                                   Pattern(604, 300 * 1024)};
  ptrs.clear();
  sizes.clear();
  for (auto& d : datas) {
    ptrs.push_back(d.data());
    sizes.push_back(d.size());
  }
  done = 12345;
  CHECK(store_put_many(c.get(), ids.data(), ptrs.data(), sizes.data(), ids.size(), nullptr,
                       &done) == STORE_EEXISTS);
  CHECK(done == 3);
  const std::string msg = store_last_error_message();
  CHECK(msg.find(Hex(mix_ids[0])) != std::string::npos);  // the first failure, not the second
  CHECK(msg.find(Hex(mix_ids[1])) == std::string::npos);
  for (size_t i : {0u, 2u, 4u}) {
    CAPTURE(i);
    ReaderPtr r = Open(c.get(), ids[i]);
    CHECK(SameBytes(store_reader_data(r.get()), datas[i]));
  }
  // The existing objects are untouched.
  for (size_t i : {0u, 1u}) {
    ReaderPtr r = Open(c.get(), mix_ids[i]);
    CHECK(store_reader_size(r.get()) == mix_sizes[i]);
    CHECK(SameBytes(store_reader_data(r.get()), mix_datas[i]));
  }
  CHECK(Stats(c.get()).object_count == mix_ids.size() + 3);

  // Nothing to put is fine.
  done = 7;
  CHECK(store_put_many(c.get(), nullptr, nullptr, nullptr, 0, nullptr, &done) == STORE_OK);
  CHECK(done == 0);

  for (auto& id : mix_ids) Delete(c.get(), id);
  for (size_t i : {0u, 2u, 4u}) Delete(c.get(), ids[i]);
  CheckEmpty(c.get());
}

// ---------------------------------------------------------------------------------------------
// Waiting for objects.

TEST_CASE("open timeouts: 0 and finite on a missing id") {
  test::TestStore s("64M");
  REQUIRE(s.started());
  ClientPtr c = Connect(s);
  const store_object_id id = Id("never-there");

  store_reader* r = reinterpret_cast<store_reader*>(0x1);
  CHECK(store_open_reader(c.get(), &r, &id, 0) == STORE_ENOTFOUND);
  CHECK(r == nullptr);
  CHECK(std::strlen(store_last_error_message()) > 0);

  r = reinterpret_cast<store_reader*>(0x1);
  auto t0 = Clock::now();
  CHECK(store_open_reader(c.get(), &r, &id, 50) == STORE_ETIMEDOUT);
  auto waited = Clock::now() - t0;
  CHECK(r == nullptr);
  CHECK(waited >= milliseconds(45));
  CHECK(waited < milliseconds(5000));
  CHECK(Stats(c.get()).waiting_gets == 0);

  CHECK(store_open_reader(c.get(), &r, &id, -2) == STORE_EINVAL);
  CheckEmpty(c.get());
}

TEST_CASE("open with timeout -1 waits for a seal done by another client") {
  test::TestStore s("64M");
  REQUIRE(s.started());
  ClientPtr waiter = Connect(s, "waiter");
  ClientPtr maker = Connect(s, "maker");

  SUBCASE("the object does not exist yet") {
    const store_object_id id = Id("awaited");
    const std::vector<uint8_t> data = Pattern(77, 5000);
    std::atomic<bool> returned{false};
    int rc = -100;
    std::vector<uint8_t> got;
    Threads th(s);
    th.Start([&] {
      store_reader* r = nullptr;
      rc = store_open_reader(waiter.get(), &r, &id, -1);
      if (rc == STORE_OK) {
        auto* p = static_cast<const uint8_t*>(store_reader_data(r));
        if (p) got.assign(p, p + store_reader_size(r));
        store_reader_close(r);
      }
      returned = true;
    });
    CHECK(test::WaitFor([&] { return Stats(maker.get()).waiting_gets == 1; }));
    CHECK_FALSE(returned.load());
    Put(maker.get(), id, data);
    th.Join();
    CHECK(rc == STORE_OK);
    CHECK(got == data);
    CHECK(test::WaitFor([&] { return Info(maker.get(), id).reader_count == 0; }));
    CHECK(Stats(maker.get()).waiting_gets == 0);
    Delete(maker.get(), id);
  }

  SUBCASE("the object is created but not sealed yet") {
    const store_object_id id = Id("awaited-unsealed");
    const std::vector<uint8_t> data = Pattern(78, 64 * 1024 + 3);
    store_writer* raw = nullptr;
    REQUIRE(store_create(maker.get(), &raw, &id, data.size(), nullptr) == STORE_OK);
    WriterPtr w(raw);
    REQUIRE(store_writer_write(w.get(), data.data(), data.size() / 2) == STORE_OK);
    store_reader* none = nullptr;
    CHECK(store_open_reader(waiter.get(), &none, &id, 0) == STORE_ENOTFOUND);
    CHECK(none == nullptr);

    std::atomic<bool> returned{false};
    int rc = -100;
    std::vector<uint8_t> got;
    Threads th(s);
    th.Start([&] {
      store_reader* r = nullptr;
      rc = store_open_reader(waiter.get(), &r, &id, -1);
      if (rc == STORE_OK) {
        auto* p = static_cast<const uint8_t*>(store_reader_data(r));
        if (p) got.assign(p, p + store_reader_size(r));
        store_reader_close(r);
      }
      returned = true;
    });
    CHECK(test::WaitFor([&] { return Stats(maker.get()).waiting_gets == 1; }));
    REQUIRE(store_writer_write(w.get(), data.data() + data.size() / 2,
                               data.size() - data.size() / 2) == STORE_OK);
    CHECK_FALSE(returned.load());
    REQUIRE(store_writer_seal(w.release()) == STORE_OK);
    th.Join();
    CHECK(rc == STORE_OK);
    CHECK(got == data);
    CHECK(test::WaitFor([&] { return Info(maker.get(), id).reader_count == 0; }));
    Delete(maker.get(), id);
  }

  CheckEmpty(maker.get());
}

TEST_CASE("store_open_readers with some ids missing gives NULL slots") {
  test::TestStore s("64M");
  REQUIRE(s.started());
  ClientPtr c = Connect(s);

  std::vector<store_object_id> ids;
  for (int i = 0; i < 5; i++) ids.push_back(Id("some-" + std::to_string(i)));
  for (int i : {0, 2, 4}) Put(c.get(), ids[i], Pattern(i, 100 + i));

  for (int64_t timeout : {int64_t{0}, int64_t{30}}) {
    CAPTURE(timeout);
    store_reader* out[5];
    for (auto& o : out) o = reinterpret_cast<store_reader*>(0x1);
    REQUIRE(store_open_readers(c.get(), out, ids.data(), 5, timeout) == STORE_OK);
    CHECK(out[1] == nullptr);
    CHECK(out[3] == nullptr);
    for (int i : {0, 2, 4}) {
      REQUIRE(out[i] != nullptr);
      CHECK(store_reader_size(out[i]) == 100u + i);
      CHECK(SameBytes(store_reader_data(out[i]), Pattern(i, 100 + i)));
      CHECK(SameId(*store_reader_id(out[i]), ids[i]));
    }
    CHECK(Stats(c.get()).open_count == 3);
    store_readers_close(out, 5);  // NULL slots are skipped
    CHECK(Stats(c.get()).open_count == 0);
  }
  // Zero ids is fine and opens nothing.
  CHECK(store_open_readers(c.get(), nullptr, nullptr, 0, 0) == STORE_OK);

  for (int i : {0, 2, 4}) Delete(c.get(), ids[i]);
  CheckEmpty(c.get());
}

// ---------------------------------------------------------------------------------------------
// Two clients.

TEST_CASE("two clients: one puts, the other reads the same bytes") {
  test::TestStore s("64M");
  REQUIRE(s.started());
  ClientPtr a = Connect(s, "a");
  ClientPtr b = Connect(s, "b");
  CHECK(Stats(a.get()).client_count == 2);

  const store_object_id put_id = Id("shared-put");
  const std::vector<uint8_t> pdata = Pattern(5, 2 * kMiB + 5);
  Put(a.get(), put_id, pdata);
  {
    ReaderPtr ra = Open(a.get(), put_id);
    ReaderPtr rb = Open(b.get(), put_id);
    CHECK(SameBytes(store_reader_data(ra.get()), pdata));
    CHECK(SameBytes(store_reader_data(rb.get()), pdata));
    CHECK(Info(a.get(), put_id).reader_count == 2);
  }
  CHECK(test::WaitFor([&] { return Info(a.get(), put_id).reader_count == 0; }));
  {
    // One store_readers_close for readers of both clients, with a NULL among them.
    store_reader* mixed[4] = {nullptr, nullptr, nullptr, nullptr};
    REQUIRE(store_open_reader(a.get(), &mixed[0], &put_id, 0) == STORE_OK);
    REQUIRE(store_open_reader(b.get(), &mixed[2], &put_id, 0) == STORE_OK);
    REQUIRE(store_open_reader(a.get(), &mixed[3], &put_id, 0) == STORE_OK);
    CHECK(SameBytes(store_reader_data(mixed[2]), pdata));
    CHECK(SameBytes(store_reader_data(mixed[3]), pdata));
    CHECK(Info(a.get(), put_id).reader_count == 3);
    store_readers_close(mixed, 4);
    CHECK(test::WaitFor([&] { return Info(a.get(), put_id).reader_count == 0; }));
    CHECK(Stats(a.get()).open_count == 0);
  }

  // A writer in A, a reader in B.
  const store_object_id wid = Id("shared-writer");
  const std::vector<uint8_t> wdata = Pattern(6, 12345);
  store_writer* raw = nullptr;
  REQUIRE(store_create(a.get(), &raw, &wid, wdata.size(), nullptr) == STORE_OK);
  WriterPtr w(raw);
  REQUIRE(store_writer_write(w.get(), wdata.data(), wdata.size()) == STORE_OK);
  CHECK(Contains(b.get(), wid) == 0);  // not visible to B before the seal
  REQUIRE(store_writer_seal(w.release()) == STORE_OK);
  CHECK(Contains(b.get(), wid) == 1);
  {
    ReaderPtr rb = Open(b.get(), wid);
    CHECK(store_reader_size(rb.get()) == wdata.size());
    CHECK(SameBytes(store_reader_data(rb.get()), wdata));
    std::vector<uint8_t> buf(wdata.size());
    size_t n = 0;
    REQUIRE(store_reader_read(rb.get(), buf.data(), buf.size(), &n) == STORE_OK);
    CHECK(n == wdata.size());
    CHECK(buf == wdata);
    CHECK(Info(a.get(), wid).reader_count == 1);
  }
  // The release is one-way: wait for A to see it.
  CHECK(test::WaitFor([&] { return Info(a.get(), wid).reader_count == 0; }));
  // B may delete A's object.
  Delete(b.get(), wid);
  CHECK(Contains(a.get(), wid) == 0);
  Delete(b.get(), put_id);
  CheckEmpty(a.get());
}

// ---------------------------------------------------------------------------------------------
// Errors of the object lifecycle.

TEST_CASE("duplicate create: STORE_EEXISTS, the original untouched") {
  test::TestStore s("64M");
  REQUIRE(s.started());
  ClientPtr a = Connect(s, "a");
  ClientPtr b = Connect(s, "b");
  // Objects larger than a staged one (64 KiB) are created in the store at store_create.
  const size_t big = 200 * 1024;

  // Sealed.
  const store_object_id sealed = Id("dup-sealed");
  const std::vector<uint8_t> sdata = Pattern(10, big), other = Pattern(11, big);
  Put(a.get(), sealed, sdata);
  store_writer* w2 = reinterpret_cast<store_writer*>(0x1);
  CHECK(store_create(a.get(), &w2, &sealed, big, nullptr) == STORE_EEXISTS);
  CHECK(w2 == nullptr);
  CHECK(std::strlen(store_last_error_message()) > 0);
  CHECK(store_create(b.get(), &w2, &sealed, 100 * 1024, nullptr) == STORE_EEXISTS);
  CHECK(store_put(b.get(), &sealed, other.data(), other.size(), nullptr) == STORE_EEXISTS);
  {
    ReaderPtr r = Open(b.get(), sealed);
    CHECK(store_reader_size(r.get()) == sdata.size());
    CHECK(SameBytes(store_reader_data(r.get()), sdata));
  }

  // Unsealed.
  const store_object_id open_id = Id("dup-unsealed");
  const std::vector<uint8_t> udata = Pattern(12, big + 3000);
  store_writer* raw = nullptr;
  REQUIRE(store_create(a.get(), &raw, &open_id, udata.size(), nullptr) == STORE_OK);
  WriterPtr w(raw);
  REQUIRE(store_writer_write(w.get(), udata.data(), 1000) == STORE_OK);
  CHECK(store_create(a.get(), &w2, &open_id, udata.size(), nullptr) == STORE_EEXISTS);
  CHECK(w2 == nullptr);
  CHECK(store_create(b.get(), &w2, &open_id, 100 * 1024, nullptr) == STORE_EEXISTS);
  CHECK(w2 == nullptr);
  CHECK(store_put(b.get(), &open_id, other.data(), other.size(), nullptr) == STORE_EEXISTS);
  // A staged writer of the same id finds out at its seal, and the original is untouched.
  REQUIRE(store_create(b.get(), &w2, &open_id, 10, nullptr) == STORE_OK);
  CHECK(store_writer_seal(w2) == STORE_EEXISTS);
  CHECK(Stats(a.get()).created_count == 1);
  // The original writer still works.
  REQUIRE(store_writer_write(w.get(), udata.data() + 1000, udata.size() - 1000) == STORE_OK);
  REQUIRE(store_writer_seal(w.release()) == STORE_OK);
  {
    ReaderPtr r = Open(b.get(), open_id);
    CHECK(store_reader_size(r.get()) == udata.size());
    CHECK(SameBytes(store_reader_data(r.get()), udata));
  }

  Delete(a.get(), sealed);
  Delete(a.get(), open_id);
  CheckEmpty(a.get());
}

TEST_CASE("small objects are staged: nothing reaches the store before the seal, which creates, "
          "writes and seals in one request") {
  test::TestStore s("64M");
  REQUIRE(s.started());
  ClientPtr a = Connect(s, "a");
  ClientPtr b = Connect(s, "b");
  const store_object_id id = Id("staged");
  const std::vector<uint8_t> data = Pattern(30, 64 * 1024), meta = Pattern(31, 100);
  store_create_options o = STORE_CREATE_OPTIONS_INIT;
  o.metadata = meta.data();
  o.metadata_size = meta.size();
  o.importance = 7;
  const uint64_t before = Stats(a.get()).total_requests;
  store_writer* w = nullptr;
  REQUIRE(store_create(a.get(), &w, &id, data.size(), &o) == STORE_OK);
  std::memcpy(store_writer_data(w), data.data(), 1000);
  REQUIRE(store_writer_seek(w, 1000, SEEK_SET, nullptr) == STORE_OK);
  REQUIRE(store_writer_write(w, data.data() + 1000, data.size() - 1000) == STORE_OK);
  // Not in the store while it is written: no request, no object.
  CHECK(Stats(a.get()).total_requests == before + 1);  // this stats request only
  store_object_info info = STORE_OBJECT_INFO_INIT;
  CHECK(store_info(b.get(), &id, &info) == STORE_ENOTFOUND);
  const uint64_t at_seal = Stats(a.get()).total_requests;
  REQUIRE(store_writer_seal(w) == STORE_OK);
  // The seal was one request (then the stats request).
  CHECK(Stats(a.get()).total_requests == at_seal + 2);
  REQUIRE(store_info(b.get(), &id, &info) == STORE_OK);
  CHECK(info.importance == 7);
  CHECK(info.metadata_size == meta.size());
  {
    ReaderPtr r = Open(b.get(), id);
    CHECK(SameBytes(store_reader_data(r.get()), data));
    uint64_t msize = 0;
    const void* m = store_reader_metadata(r.get(), &msize);
    REQUIRE(msize == meta.size());
    CHECK(std::memcmp(m, meta.data(), msize) == 0);
  }
  // An abort of a staged writer sends nothing. (b's release of its reader is one-way: a round
  // trip on b first makes sure the server has counted it before `at` is taken.)
  (void)Stats(b.get());
  const store_object_id other = Id("staged-aborted");
  REQUIRE(store_create(a.get(), &w, &other, 10, nullptr) == STORE_OK);
  const uint64_t at = Stats(a.get()).total_requests;
  CHECK(store_writer_abort(w) == STORE_OK);
  CHECK(Stats(a.get()).total_requests == at + 1);
  CHECK(store_info(a.get(), &other, &info) == STORE_ENOTFOUND);
  Delete(a.get(), id);
  CheckEmpty(a.get());
}

TEST_CASE("abort, then the same id can be created again") {
  test::TestStore s("64M");
  REQUIRE(s.started());
  ClientPtr c = Connect(s);

  const store_object_id id = Id("aborted");
  const uint64_t used0 = Stats(c.get()).used_bytes;
  store_writer* raw = nullptr;
  REQUIRE(store_create(c.get(), &raw, &id, kMiB, nullptr) == STORE_OK);
  const std::vector<uint8_t> first = Pattern(20, kMiB);
  REQUIRE(store_writer_write(raw, first.data(), first.size()) == STORE_OK);
  CHECK(Stats(c.get()).created_count == 1);
  CHECK(Stats(c.get()).used_bytes > used0);
  REQUIRE(store_writer_abort(raw) == STORE_OK);

  store_stats st = Stats(c.get());
  CHECK(st.created_count == 0);
  CHECK(st.object_count == 0);
  CHECK(st.used_bytes == used0);
  CHECK(st.total_aborts == 1);
  CHECK(Contains(c.get(), id) == 0);
  store_object_info info = STORE_OBJECT_INFO_INIT;
  CHECK(store_info(c.get(), &id, &info) == STORE_ENOTFOUND);

  const std::vector<uint8_t> second = Pattern(21, 100);
  REQUIRE(store_create(c.get(), &raw, &id, second.size(), nullptr) == STORE_OK);
  REQUIRE(store_writer_write(raw, second.data(), second.size()) == STORE_OK);
  REQUIRE(store_writer_seal(raw) == STORE_OK);
  {
    ReaderPtr r = Open(c.get(), id);
    CHECK(store_reader_size(r.get()) == second.size());
    CHECK(SameBytes(store_reader_data(r.get()), second));
  }

  CHECK(store_writer_abort(nullptr) == STORE_OK);
  Delete(c.get(), id);
  CheckEmpty(c.get());
}

TEST_CASE("delete while a reader is open: unlink semantics") {
  test::TestStore s("64M");
  REQUIRE(s.started());
  ClientPtr a = Connect(s, "a");
  ClientPtr b = Connect(s, "b");

  const store_object_id id = Id("unlinked");
  const std::vector<uint8_t> old_data = Pattern(30, kMiB), new_data = Pattern(31, kMiB);
  Put(a.get(), id, old_data);
  const uint64_t used_one = Stats(a.get()).used_bytes;
  REQUIRE(used_one >= kMiB);

  ReaderPtr old_reader = Open(b.get(), id);
  Delete(a.get(), id);
  CHECK(Contains(a.get(), id) == 0);
  CHECK(Contains(b.get(), id) == 0);
  store_object_info info = STORE_OBJECT_INFO_INIT;
  CHECK(store_info(a.get(), &id, &info) == STORE_ENOTFOUND);
  store_reader* none = nullptr;
  CHECK(store_open_reader(a.get(), &none, &id, 0) == STORE_ENOTFOUND);
  CHECK(store_delete(a.get(), &id) == STORE_ENOTFOUND);
  store_stats st = Stats(a.get());
  CHECK(st.deleted_pending_count == 1);
  CHECK(st.object_count == 0);
  CHECK(st.used_bytes == used_one);  // still held by the reader

  // A new object under the same id, while the old one is still read.
  Put(a.get(), id, new_data);
  CHECK(Contains(b.get(), id) == 1);
  CHECK(SameBytes(store_reader_data(old_reader.get()), old_data));
  {
    std::vector<uint8_t> buf(old_data.size());
    size_t n = 0;
    REQUIRE(store_reader_read(old_reader.get(), buf.data(), buf.size(), &n) == STORE_OK);
    CHECK(n == old_data.size());
    CHECK(buf == old_data);
    ReaderPtr new_reader = Open(b.get(), id);
    CHECK(SameBytes(store_reader_data(new_reader.get()), new_data));
    CHECK(SameBytes(store_reader_data(old_reader.get()), old_data));
  }
  st = Stats(a.get());
  CHECK(st.deleted_pending_count == 1);
  CHECK(st.object_count == 1);
  CHECK(st.used_bytes == 2 * used_one);

  old_reader.reset();
  CHECK(test::WaitFor([&] { return Stats(a.get()).deleted_pending_count == 0; }));
  st = Stats(a.get());
  CHECK(st.used_bytes == used_one);  // only the new object remains
  CHECK(st.object_count == 1);
  {
    ReaderPtr r = Open(a.get(), id);
    CHECK(SameBytes(store_reader_data(r.get()), new_data));
  }

  Delete(a.get(), id);
  CheckEmpty(a.get());
}

TEST_CASE("releases are queued: sent before the client's next request, soon by an idle client") {
  test::TestStore s("64M");
  REQUIRE(s.started());
  const int threads_before = test::ThreadCount();
  ClientPtr a = Connect(s, "a");
  ClientPtr b = Connect(s, "b");
  const store_object_id id = Id("released");
  const std::vector<uint8_t> data = Pattern(40, 4096);
  Put(a.get(), id, data);
  const uint64_t releases0 = Stats(a.get()).total_releases;

  // Closed, then the same client asks: the release went first, in the same send.
  Open(b.get(), id).reset();
  store_stats st = Stats(b.get());
  CHECK(st.open_count == 0);
  CHECK(st.total_releases == releases0 + 1);
  CHECK(Info(b.get(), id).reader_count == 0);

  // Closed by a client that then does nothing: its release thread sends it.
  Open(b.get(), id).reset();
  CHECK(test::WaitFor([&] { return Stats(a.get()).total_releases == releases0 + 2; }));
  CHECK(Stats(a.get()).open_count == 0);

  // 600 readers closed one by one, and a batch: all released, the store saw each once.
  {
    std::vector<store_reader*> many(600, nullptr);
    std::vector<store_object_id> ids(600, id);
    REQUIRE(store_open_readers(b.get(), many.data(), ids.data(), ids.size(), 0) == STORE_OK);
    CHECK(Info(a.get(), id).reader_count == 600);
    for (size_t i = 0; i < 300; i++) store_reader_close(many[i]);
    store_readers_close(many.data() + 300, 300);
    CHECK(test::WaitFor([&] { return Info(a.get(), id).reader_count == 0; }));
    CHECK(Stats(a.get()).total_releases == releases0 + 602);
  }

  // After a burst of gets (b's release thread then looks less often: the gets carry the
  // releases), the last release still goes out once b is quiet.
  {
    const uint64_t before = Stats(a.get()).total_releases;
    for (int i = 0; i < 2000; i++) Open(b.get(), id).reset();
    CHECK(test::WaitFor([&] { return Stats(a.get()).total_releases == before + 2000; }));
    CHECK(Info(a.get(), id).reader_count == 0);
  }

  // A deleted object read by b: its memory is freed once b's release arrives.
  {
    ReaderPtr r = Open(b.get(), id);
    Delete(a.get(), id);
    CHECK(Stats(a.get()).deleted_pending_count == 1);
    r.reset();
    CHECK(test::WaitFor([&] { return Stats(a.get()).deleted_pending_count == 0; }));
    CHECK(Stats(a.get()).used_bytes == 0);
  }

  // Freed with a release queued: the store releases it with the connection.
  Put(a.get(), id, data);
  Open(b.get(), id).reset();
  b.reset();
  CHECK(test::WaitFor([&] { return Stats(a.get()).client_count == 1; }));
  CHECK(Stats(a.get()).open_count == 0);
  Delete(a.get(), id);
  CheckEmpty(a.get());
  a.reset();
  // Each connection's threads ended with it.
  CHECK(test::ThreadCount() == threads_before);
}

TEST_CASE("STORE_CLIENT_RELEASE_DELAY_US=0 sends each release at once, with no thread for it; "
          "STORE_CLIENT_SPIN_US=0 sleeps for every reply") {
  test::TestStore s("64M");
  REQUIRE(s.started());
  setenv("STORE_CLIENT_RELEASE_DELAY_US", "0", 1);
  setenv("STORE_CLIENT_POPULATE", "0", 1);
  setenv("STORE_CLIENT_SPIN_US", "0", 1);
  const int threads_before = test::ThreadCount();
  ClientPtr a = Connect(s, "a");
  unsetenv("STORE_CLIENT_RELEASE_DELAY_US");
  unsetenv("STORE_CLIENT_POPULATE");
  unsetenv("STORE_CLIENT_SPIN_US");
  const store_object_id id = Id("at-once");
  Put(a.get(), id, Pattern(41, 100));
  for (int i = 0; i < 10; i++) Open(a.get(), id).reset();
  CHECK(test::ThreadCount() == threads_before);
  // A get that waits for another client's seal.
  const store_object_id later = Id("sealed-later");
  std::thread t([&] {
    ClientPtr b = Connect(s, "b");
    Put(b.get(), later, Pattern(42, 100));
  });
  Open(a.get(), later, 10000).reset();
  t.join();
  Delete(a.get(), later);
  CHECK(test::WaitFor([&] { return Stats(a.get()).open_count == 0; }));
  Delete(a.get(), id);
  CheckEmpty(a.get());
}

// Resident memory of this process, in KiB (VmRSS; shared pages it maps count, huge pages do not).
long RssKib() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
  }
  return -1;
}

TEST_CASE("a client's resident memory is what it touches: nothing of the store's memory is "
          "mapped ahead unless STORE_CLIENT_POPULATE=all") {
  // 1 GiB on normal pages (the reserved huge pages, if any, are too few for it).
  test::TestStore s("1G", {"--no-hugepages"});
  REQUIRE(s.started());
  const int threads_before = test::ThreadCount();
  const long rss_before = RssKib();
  ClientPtr a = Connect(s, "lazy");
  CHECK(test::ThreadCount() == threads_before);  // no mapping thread
  // A 64 MiB object put and read back: what it costs, and no more.
  const store_object_id id = Id("resident");
  const std::vector<uint8_t> data = Pattern(77, 64 * kMiB);
  Put(a.get(), id, data);
  Open(a.get(), id).reset();
  const long grown = RssKib() - rss_before;
  MESSAGE("resident memory after connecting and putting and reading 64 MiB: +" << grown
                                                                                << " KiB");
  // The object (its pages in both mappings count once each: they are one set of shmem pages,
  // but VmRSS counts them per mapping), the test's own 64 MiB buffer, a few MiB of slack; under
  // AddressSanitizer also the buffer's shadow (an eighth of it).
#ifdef __SANITIZE_ADDRESS__
  constexpr long kShadowKib = 64 * 1024 / 8;
#else
  constexpr long kShadowKib = 0;
#endif
  CHECK(grown < 3 * 64 * 1024 + 16 * 1024 + kShadowKib);
  // With STORE_CLIENT_POPULATE=all a thread maps the whole memory after connecting.
  setenv("STORE_CLIENT_POPULATE", "all", 1);
  ClientPtr b = Connect(s, "all");
  unsetenv("STORE_CLIENT_POPULATE");
  CHECK(test::WaitFor([&] { return RssKib() - rss_before > 900 * 1024; },
                      std::chrono::seconds(60)));
  Delete(a.get(), id);
}

// Page faults this thread may take touching a mapped object of `pages` pages: a few (the
// kernel maps the pages around a read fault only when it can lock them at once, so now and
// then one is left for its own fault), never most of them as without the mapping. Under
// AddressSanitizer or ThreadSanitizer each access also touches shadow memory, whose pages fault
// in on first use.
long MappedFaultsAllowed(size_t pages) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  return static_cast<long>(pages);
#else
  return static_cast<long>(pages / 64);
#endif
}

TEST_CASE("a large object's pages are mapped at create and open: writing and reading it take "
          "almost no page faults, whether the store prefaulted its memory or not") {
  for (bool prefault : {true, false}) {
    INFO("prefault ", prefault);
    test::TestStore s("64M", prefault ? std::vector<std::string>{}
                                      : std::vector<std::string>{"--no-prefault"});
    REQUIRE(s.started());
    // By default nothing is mapped in the background: the calls map alone.
    ClientPtr a = Connect(s, "a");
    ClientPtr b = Connect(s, "b");
    const store_object_id id = Id("mapped");
    const size_t size = 8 * kMiB + 12345;
    store_writer* raw = nullptr;
    REQUIRE(store_create(a.get(), &raw, &id, size, nullptr) == STORE_OK);
    WriterPtr w(raw);
    auto* p = static_cast<uint8_t*>(store_writer_data(w.get()));
    REQUIRE(p != nullptr);
    long f0 = test::ThreadMinorFaults();
    for (size_t i = 0; i < size; i++) p[i] = static_cast<uint8_t>(i * 7);
    CHECK(test::ThreadMinorFaults() - f0 <= MappedFaultsAllowed(size / 4096));
    REQUIRE(store_writer_seal(w.release()) == STORE_OK);

    ReaderPtr r = Open(b.get(), id);
    auto* q = static_cast<const uint8_t*>(store_reader_data(r.get()));
    REQUIRE(q != nullptr);
    f0 = test::ThreadMinorFaults();
    size_t wrong = 0;
    for (size_t i = 0; i < size; i++) wrong += q[i] != static_cast<uint8_t>(i * 7);
    CHECK(test::ThreadMinorFaults() - f0 <= MappedFaultsAllowed(size / 4096));
    CHECK(wrong == 0);
    r.reset();
    Delete(a.get(), id);
    CheckEmpty(a.get());
  }
}

TEST_CASE("back-to-back puts of one size and gets with changing timeouts each carry their own "
          "id, bytes and timeout") {
  test::TestStore s("64M");
  REQUIRE(s.started());
  ClientPtr a = Connect(s, "a");
  ClientPtr b = Connect(s, "b");
  std::vector<store_object_id> ids;
  for (int i = 0; i < 200; i++) {
    ids.push_back(Id("same-size-" + std::to_string(i)));
    Put(i % 2 ? a.get() : b.get(), ids.back(), Pattern(1000 + i, 64));
  }
  Put(a.get(), Id("other-size"), Pattern(999, 65));
  for (int i = 0; i < 200; i++) {
    ReaderPtr r = Open(i % 3 ? a.get() : b.get(), ids[static_cast<size_t>(i)], i % 2 ? 0 : 5000);
    CHECK(store_reader_size(r.get()) == 64);
    CHECK(SameBytes(store_reader_data(r.get()), Pattern(1000 + i, 64)));
  }
  const store_object_id missing = Id("missing");
  store_reader* none = nullptr;
  CHECK(store_open_reader(a.get(), &none, &missing, 0) == STORE_ENOTFOUND);
  CHECK(store_open_reader(a.get(), &none, &missing, 50) == STORE_ETIMEDOUT);
  CHECK(store_open_reader(a.get(), &none, &missing, 0) == STORE_ENOTFOUND);
  std::thread t([&] { Put(b.get(), missing, Pattern(7, 64)); });
  Open(a.get(), missing, -1).reset();
  t.join();
  ids.push_back(missing);
  ids.push_back(Id("other-size"));
  size_t deleted = 0;
  REQUIRE(store_delete_many(a.get(), ids.data(), ids.size(), &deleted) == STORE_OK);
  CHECK(deleted == ids.size());
  CheckEmpty(a.get());
}

TEST_CASE("store_contains and store_delete of sealed, unsealed and missing objects") {
  test::TestStore s("64M");
  REQUIRE(s.started());
  ClientPtr c = Connect(s);

  const store_object_id sealed = Id("c-sealed"), unsealed = Id("c-unsealed"),
                        missing = Id("c-missing");
  Put(c.get(), sealed, Pattern(40, 10));
  store_writer* raw = nullptr;
  // Larger than a staged object: created in the store at once.
  REQUIRE(store_create(c.get(), &raw, &unsealed, 100 * 1024, nullptr) == STORE_OK);
  WriterPtr w(raw);

  CHECK(Contains(c.get(), sealed) == 1);
  CHECK(Contains(c.get(), unsealed) == 0);
  CHECK(Contains(c.get(), missing) == 0);

  CHECK(store_delete(c.get(), &unsealed) == STORE_ENOTSEALED);
  CHECK(std::strlen(store_last_error_message()) > 0);
  CHECK(Info(c.get(), unsealed).state == STORE_STATE_CREATED);  // still there
  CHECK(store_delete(c.get(), &missing) == STORE_ENOTFOUND);
  CHECK(Stats(c.get()).object_count == 2);

  Delete(c.get(), sealed);
  CHECK(Contains(c.get(), sealed) == 0);
  CHECK(store_delete(c.get(), &sealed) == STORE_ENOTFOUND);
  REQUIRE(store_writer_abort(w.release()) == STORE_OK);
  CheckEmpty(c.get());
}

TEST_CASE("store_list and store_info fields") {
  test::TestStore s("64M");
  REQUIRE(s.started());
  ClientPtr a = Connect(s, "a");
  ClientPtr b = Connect(s, "b");

  {
    store_object_info* list = reinterpret_cast<store_object_info*>(0x1);
    size_t count = 99;
    REQUIRE(store_list(a.get(), &list, sizeof *list, &count) == STORE_OK);
    CHECK(count == 0);
    CHECK(list == nullptr);
  }

  const int64_t before = RealtimeNs();
  const store_object_id sid = Id("info-sealed"), cid = Id("info-created");
  const std::vector<uint8_t> smeta = Pattern(50, 33), cmeta = Pattern(51, 5);
  store_create_options so = STORE_CREATE_OPTIONS_INIT;
  so.metadata = smeta.data();
  so.metadata_size = smeta.size();
  so.importance = 7;
  Put(a.get(), sid, Pattern(52, 1234), &so);
  store_create_options co = STORE_CREATE_OPTIONS_INIT;
  co.metadata = cmeta.data();
  co.metadata_size = cmeta.size();
  co.importance = -3;
  store_writer* raw = nullptr;
  // Larger than a staged object: in the store (CREATED) from store_create on.
  const uint64_t csize = 77 * 1024 + 7;
  REQUIRE(store_create(a.get(), &raw, &cid, csize, &co) == STORE_OK);
  WriterPtr w(raw);

  ReaderPtr r1 = Open(a.get(), sid);
  ReaderPtr r2 = Open(b.get(), sid);

  auto check_common = [&](const store_object_info& i) {
    CHECK(i.level == STORE_LEVEL_MEMORY);
    CHECK(i.device == -1);
    CHECK(i.creator_pid == getpid());
    const int64_t now = RealtimeNs();
    CHECK(i.create_time_ns >= before - 60'000'000'000);
    CHECK(i.create_time_ns <= now + 60'000'000'000);
    CHECK(i.last_access_ns >= i.create_time_ns);
    CHECK(i.last_access_ns <= now + 60'000'000'000);
  };
  auto check_sealed = [&](const store_object_info& i) {
    CHECK(SameId(i.id, sid));
    CHECK(i.data_size == 1234);
    CHECK(i.metadata_size == 33);
    CHECK(i.state == STORE_STATE_SEALED);
    CHECK(i.importance == 7);
    CHECK(i.pin_count == 0);
    CHECK(i.reader_count == 2);
    check_common(i);
  };
  auto check_created = [&](const store_object_info& i) {
    CHECK(SameId(i.id, cid));
    CHECK(i.data_size == csize);
    CHECK(i.metadata_size == 5);
    CHECK(i.state == STORE_STATE_CREATED);
    CHECK(i.importance == -3);
    CHECK(i.pin_count == 0);
    CHECK(i.reader_count == 0);
    check_common(i);
  };

  store_object_info* list = nullptr;
  size_t count = 0;
  REQUIRE(store_list(a.get(), &list, sizeof *list, &count) == STORE_OK);
  std::unique_ptr<store_object_info, void (*)(void*)> owned(list, store_free);
  REQUIRE(count == 2);
  REQUIRE(list != nullptr);
  int seen_sealed = 0, seen_created = 0;
  for (size_t i = 0; i < count; i++) {
    if (SameId(list[i].id, sid)) {
      seen_sealed++;
      check_sealed(list[i]);
    } else if (SameId(list[i].id, cid)) {
      seen_created++;
      check_created(list[i]);
    } else {
      FAIL("store_list returned an unknown id " << Hex(list[i].id));
    }
  }
  CHECK(seen_sealed == 1);
  CHECK(seen_created == 1);

  check_sealed(Info(a.get(), sid));
  check_created(Info(a.get(), cid));

  // Closing readers brings reader_count down and touches last_access_ns.
  const int64_t access_before = Info(a.get(), sid).last_access_ns;
  r1.reset();
  r2.reset();
  CHECK(test::WaitFor([&] { return Info(a.get(), sid).reader_count == 0; }));
  CHECK(Info(a.get(), sid).last_access_ns >= access_before);

  store_object_info info = STORE_OBJECT_INFO_INIT;
  const store_object_id missing = Id("info-missing");
  CHECK(store_info(a.get(), &missing, &info) == STORE_ENOTFOUND);

  REQUIRE(store_writer_abort(w.release()) == STORE_OK);
  Delete(a.get(), sid);
  CheckEmpty(a.get());
}

// ---- output structs at the caller's size ----------------------------------------------------

namespace {

constexpr uint8_t kGuard = 0xA5;

// A caller's buffer: `size` bytes of struct (struct_size set to size), then guard bytes that the
// library must never touch. Everything but struct_size starts as guard bytes. The guard is longer
// than any of the structs, so that a library writing a whole struct past a smaller struct_size
// fails the checks instead of overrunning the heap.
struct OutBuffer {
  explicit OutBuffer(size_t size, size_t guard = 1024) : bytes(size + guard, kGuard), size(size) {
    const uint32_t s = static_cast<uint32_t>(size);
    std::memcpy(bytes.data(), &s, sizeof s);
  }
  template <class T>
  T* as() {
    return reinterpret_cast<T*>(bytes.data());
  }
  // Whether the bytes in [from, to) all hold `value`.
  bool All(size_t from, size_t to, uint8_t value) const {
    for (size_t i = from; i < to; i++) {
      if (bytes[i] != value) return false;
    }
    return true;
  }
  bool GuardIntact() const { return All(size, bytes.size(), kGuard); }
  // The library wrote nothing: every byte after struct_size is still a guard byte.
  bool Untouched() const { return All(sizeof(uint32_t), bytes.size(), kGuard); }

  std::vector<uint8_t> bytes;  // from operator new: aligned for any of the structs
  size_t size;
};

}  // namespace

// A struct as a later header may have it: `b` appended after the first layout (struct_size, pad_,
// a). Of the library's structs only store_stats is longer than its first layout yet (see the
// store_stats_get case below), so a caller with an older header than the library's is checked
// here through the code every call uses to write out.
struct GrownOut {
  uint32_t struct_size;
  uint32_t pad_;
  uint64_t a;
  uint64_t b;  // added in the later header
};
template <>
struct storeclient::OutStructFirst<GrownOut> {
  static constexpr size_t kSize = offsetof(GrownOut, b);
};

TEST_CASE("a caller with an older header than the library's gets the fields it has, and not a "
          "byte more") {
  GrownOut full{};
  full.a = 0x1111111111111111ull;
  full.b = 0x2222222222222222ull;
  // The older caller's struct ends before b.
  CHECK(storeclient::OutStructSizeProblem<GrownOut>(offsetof(GrownOut, b), false) == nullptr);
  CHECK(storeclient::OutStructSizeProblem<GrownOut>(offsetof(GrownOut, a), false) != nullptr);
  CHECK(storeclient::OutStructSizeProblem<GrownOut>(0, false) != nullptr);
  CHECK(storeclient::OutStructSizeProblem<GrownOut>(offsetof(GrownOut, b) + 4, true) != nullptr);
  {
    OutBuffer buf(offsetof(GrownOut, b));
    storeclient::WriteOutStruct(full, buf.bytes.data(), buf.size);
    GrownOut got;
    std::memcpy(&got, buf.bytes.data(), buf.size);
    CHECK(got.struct_size == offsetof(GrownOut, b));
    CHECK(got.a == full.a);
    CHECK(buf.GuardIntact());
  }
  // An array of them at the older stride: each element its prefix, nothing between them.
  storeclient::OutArray<GrownOut> arr(offsetof(GrownOut, b));
  REQUIRE(arr.Grow(3));
  for (int i = 0; i < 3; i++) {
    full.a = static_cast<uint64_t>(i) + 1;
    arr.Put(full);
  }
  GrownOut* out = nullptr;
  size_t count = 0;
  arr.Release(&out, &count);
  std::unique_ptr<GrownOut, void (*)(void*)> owned(out, std::free);
  REQUIRE(count == 3);
  for (size_t i = 0; i < count; i++) {
    GrownOut e;
    std::memcpy(&e, reinterpret_cast<const uint8_t*>(out) + i * offsetof(GrownOut, b),
                offsetof(GrownOut, b));
    CHECK(e.struct_size == offsetof(GrownOut, b));
    CHECK(e.a == i + 1);
  }
}

TEST_CASE("store_stats_get writes struct_size bytes: 0 and a size below the first layout are "
          "refused untouched, the first layout gets its fields only, a newer, larger one gets "
          "zeros past the library's fields") {
  test::TestStore s("64M");
  REQUIRE(s.started());
  ClientPtr cp = Connect(s);
  store_client* c = cp.get();
  const store_stats want = Stats(c);

  // 0: the caller forgot to set it.
  {
    OutBuffer b(0);
    CHECK(store_stats_get(c, b.as<store_stats>()) == STORE_EINVAL);
    CHECK(std::string(store_last_error_message()).find("store_stats.struct_size 0") !=
          std::string::npos);
    CHECK(b.Untouched());
  }
  // A struct that ends after the first few fields, as an older header's would: below the first
  // layout with struct_size, so refused, and not a byte past it written (memset(sizeof) would).
  {
    OutBuffer b(offsetof(store_stats, object_count) + sizeof(uint64_t));
    CHECK(store_stats_get(c, b.as<store_stats>()) == STORE_EINVAL);
    CHECK(std::string(store_last_error_message()).find("smaller than the struct's first layout") !=
          std::string::npos);
    CHECK(b.Untouched());
  }
  // The first layout (the header of libstoreclient.so.2 before the compaction totals were
  // appended) ends with total_dropped_bytes; 8 bytes short of it is refused as well.
  constexpr size_t kFirst = storeclient::OutStructFirst<store_stats>::kSize;
  static_assert(kFirst == offsetof(store_stats, total_compactions));
  {
    OutBuffer b(kFirst - 8);
    CHECK(store_stats_get(c, b.as<store_stats>()) == STORE_EINVAL);
    CHECK(b.Untouched());
  }
  // A program built against that header: its fields, and not a byte past them written.
  {
    OutBuffer b(kFirst);
    REQUIRE(store_stats_get(c, b.as<store_stats>()) == STORE_OK);
    const store_stats* got = b.as<store_stats>();
    CHECK(got->struct_size == kFirst);
    CHECK(got->capacity_bytes == want.capacity_bytes);
    CHECK(got->instance_id == want.instance_id);
    CHECK(got->total_dropped_bytes == want.total_dropped_bytes);
    CHECK(b.GuardIntact());
  }
  // The library's own size: every field, nothing past it.
  {
    OutBuffer b(sizeof(store_stats));
    REQUIRE(store_stats_get(c, b.as<store_stats>()) == STORE_OK);
    const store_stats* got = b.as<store_stats>();
    CHECK(got->struct_size == sizeof(store_stats));
    CHECK(got->pad_ == 0);
    CHECK(got->capacity_bytes == want.capacity_bytes);
    CHECK(got->instance_id == want.instance_id);
    CHECK(got->total_dropped_bytes == want.total_dropped_bytes);
    CHECK(got->total_compact_failures == want.total_compact_failures);
    CHECK(b.GuardIntact());
  }
  // A newer header's struct, 40 bytes longer: the library's fields, then zeros up to struct_size
  // (fields it does not know), then the caller's guard bytes untouched.
  {
    OutBuffer b(sizeof(store_stats) + 40);
    REQUIRE(store_stats_get(c, b.as<store_stats>()) == STORE_OK);
    const store_stats* got = b.as<store_stats>();
    CHECK(got->struct_size == sizeof(store_stats) + 40);
    CHECK(got->capacity_bytes == want.capacity_bytes);
    CHECK(got->server_pid == want.server_pid);
    CHECK(got->instance_id == want.instance_id);
    CHECK(got->start_time_ns == want.start_time_ns);
    CHECK(b.All(sizeof(store_stats), sizeof(store_stats) + 40, 0));
    CHECK(b.GuardIntact());
  }
  // STORE_STATS_INIT sets it (C++ builds the struct through a lambda).
  store_stats init = STORE_STATS_INIT;
  CHECK(init.struct_size == sizeof(store_stats));
  CHECK(init.capacity_bytes == 0);
}

TEST_CASE("store_info writes struct_size bytes: refused when too small, zeros past the "
          "library's fields when larger") {
  test::TestStore s("64M");
  REQUIRE(s.started());
  ClientPtr cp = Connect(s);
  store_client* c = cp.get();
  const store_object_id id = Id("out-struct-info");
  Put(c, id, Pattern(60, 4321));

  for (size_t size : {size_t{0}, sizeof(uint32_t) + STORE_OBJECT_ID_SIZE + sizeof(uint64_t),
                      sizeof(store_object_info) - 8}) {
    CAPTURE(size);
    OutBuffer b(size);
    CHECK(store_info(c, &id, b.as<store_object_info>()) == STORE_EINVAL);
    CHECK(std::string(store_last_error_message()).find("store_object_info.struct_size") !=
          std::string::npos);
    CHECK(b.Untouched());
  }
  {
    OutBuffer b(sizeof(store_object_info) + 16);
    REQUIRE(store_info(c, &id, b.as<store_object_info>()) == STORE_OK);
    const store_object_info* got = b.as<store_object_info>();
    CHECK(got->struct_size == sizeof(store_object_info) + 16);
    CHECK(SameId(got->id, id));
    CHECK(got->data_size == 4321);
    CHECK(got->state == STORE_STATE_SEALED);
    CHECK(got->creator_pid == getpid());
    CHECK(b.All(sizeof(store_object_info), sizeof(store_object_info) + 16, 0));
    CHECK(b.GuardIntact());
  }
  // A missing id writes nothing either.
  {
    const store_object_id missing = Id("out-struct-missing");
    OutBuffer b(sizeof(store_object_info));
    CHECK(store_info(c, &missing, b.as<store_object_info>()) == STORE_ENOTFOUND);
    CHECK(b.Untouched());
  }
  Delete(c, id);
  CheckEmpty(c);
}

TEST_CASE("arrays the library allocates are laid out at the caller's elem_size") {
  test::TestStore s("64M");
  REQUIRE(s.started());
  ClientPtr cp = Connect(s, "stride-a");
  ClientPtr other = Connect(s, "stride-b");
  store_client* c = cp.get();
  std::vector<store_object_id> ids;
  for (int i = 0; i < 5; i++) {
    ids.push_back(Id("out-struct-list-" + std::to_string(i)));
    Put(c, ids.back(), Pattern(70 + i, 100 + i));
  }

  // Too small, zero, or not a multiple of 8: refused, with nothing allocated.
  for (size_t elem : {size_t{0}, size_t{8}, sizeof(store_object_info) - 8,
                      sizeof(store_object_info) + 4}) {
    CAPTURE(elem);
    store_object_info* out = reinterpret_cast<store_object_info*>(0x1);
    size_t n = 99;
    CHECK(store_list(c, &out, elem, &n) == STORE_EINVAL);
    CHECK(std::string(store_last_error_message()).find("elem_size") != std::string::npos);
    CHECK(out == nullptr);
    CHECK(n == 0);
    CHECK(store_list_page(c, nullptr, &out, elem, &n, nullptr) == STORE_EINVAL);
    CHECK(out == nullptr);
  }
  store_client_info* clients = nullptr;
  store_gpu_device_stats* gpus = nullptr;
  store_spill_file_info* files = nullptr;
  size_t n = 0;
  CHECK(store_list_clients(c, &clients, 0, &n) == STORE_EINVAL);
  CHECK(store_list_clients(c, &clients, sizeof *clients - 8, &n) == STORE_EINVAL);
  CHECK(store_gpu_stats(c, &gpus, 0, &n, nullptr) == STORE_EINVAL);
  CHECK(store_gpu_stats(c, &gpus, sizeof *gpus - 8, &n, nullptr) == STORE_EINVAL);
  CHECK(store_list_spill_files(c, &files, 0, &n) == STORE_EINVAL);
  CHECK(store_list_spill_files(c, &files, sizeof *files - 8, &n) == STORE_EINVAL);
  CHECK(clients == nullptr);
  CHECK(gpus == nullptr);
  CHECK(files == nullptr);

  // A newer header's element, 24 bytes longer: each element at that stride, its struct_size
  // the stride, the 24 bytes past the library's fields zero.
  const size_t stride = sizeof(store_object_info) + 24;
  auto check_objects = [&](const uint8_t* base, size_t count) {
    std::set<std::string> seen;
    for (size_t i = 0; i < count; i++) {
      const uint8_t* e = base + i * stride;
      store_object_info info;
      std::memcpy(&info, e, sizeof info);
      CHECK(info.struct_size == stride);
      CHECK(info.state == STORE_STATE_SEALED);
      seen.insert(Hex(info.id));
      bool tail_zero = true;
      for (size_t k = sizeof info; k < stride; k++) tail_zero = tail_zero && e[k] == 0;
      CHECK(tail_zero);
    }
    std::set<std::string> want;
    for (const store_object_id& id : ids) want.insert(Hex(id));
    CHECK(seen == want);
  };
  {
    store_object_info* out = nullptr;
    REQUIRE(store_list(c, &out, stride, &n) == STORE_OK);
    std::unique_ptr<store_object_info, void (*)(void*)> owned(out, store_free);
    REQUIRE(n == ids.size());
    check_objects(reinterpret_cast<const uint8_t*>(out), n);
  }
  {
    store_object_info* out = nullptr;
    uint64_t total = 0;
    REQUIRE(store_list_page(c, nullptr, &out, stride, &n, &total) == STORE_OK);
    std::unique_ptr<store_object_info, void (*)(void*)> owned(out, store_free);
    REQUIRE(n == ids.size());
    CHECK(total == ids.size());
    check_objects(reinterpret_cast<const uint8_t*>(out), n);
  }
  {
    const size_t cstride = sizeof(store_client_info) + 8;
    REQUIRE(store_list_clients(c, &clients, cstride, &n) == STORE_OK);
    std::unique_ptr<store_client_info, void (*)(void*)> owned(clients, store_free);
    REQUIRE(n == 2);
    std::set<std::string> names;
    for (size_t i = 0; i < n; i++) {
      const uint8_t* e = reinterpret_cast<const uint8_t*>(clients) + i * cstride;
      store_client_info ci;
      std::memcpy(&ci, e, sizeof ci);
      CHECK(ci.struct_size == cstride);
      names.insert(ci.name);
      uint64_t tail = 1;
      std::memcpy(&tail, e + sizeof ci, sizeof tail);
      CHECK(tail == 0);
    }
    CHECK(names == std::set<std::string>{"stride-a", "stride-b"});
  }

  for (const store_object_id& id : ids) Delete(c, id);
  CheckEmpty(c);
}

TEST_CASE("pin and unpin") {
  test::TestStore s("64M");
  REQUIRE(s.started());
  ClientPtr a = Connect(s, "a");

  const store_object_id id = Id("pinned"), missing = Id("pin-missing");
  Put(a.get(), id, Pattern(60, 4096));

  REQUIRE(store_pin(a.get(), &id) == STORE_OK);
  CHECK(Info(a.get(), id).pin_count == 1);
  CHECK(Stats(a.get()).pinned_count == 1);
  REQUIRE(store_pin(a.get(), &id) == STORE_OK);
  CHECK(Info(a.get(), id).pin_count == 2);
  CHECK(Stats(a.get()).pinned_count == 1);
  REQUIRE(store_unpin(a.get(), &id) == STORE_OK);
  CHECK(Info(a.get(), id).pin_count == 1);
  REQUIRE(store_unpin(a.get(), &id) == STORE_OK);
  CHECK(Info(a.get(), id).pin_count == 0);
  CHECK(Stats(a.get()).pinned_count == 0);
  CHECK(store_unpin(a.get(), &id) == STORE_EMISUSE);
  CHECK(std::strlen(store_last_error_message()) > 0);
  CHECK(Info(a.get(), id).pin_count == 0);

  CHECK(store_pin(a.get(), &missing) == STORE_ENOTFOUND);
  CHECK(store_unpin(a.get(), &missing) == STORE_ENOTFOUND);

  // Pins are per client: B's pins cannot be dropped by A, and go away with B.
  {
    ClientPtr b = Connect(s, "b");
    REQUIRE(store_pin(b.get(), &id) == STORE_OK);
    REQUIRE(store_pin(b.get(), &id) == STORE_OK);
    REQUIRE(store_pin(b.get(), &id) == STORE_OK);
    CHECK(Info(a.get(), id).pin_count == 3);
    CHECK(store_unpin(a.get(), &id) == STORE_EMISUSE);
    CHECK(Info(a.get(), id).pin_count == 3);
    REQUIRE(store_unpin(b.get(), &id) == STORE_OK);
    CHECK(Info(a.get(), id).pin_count == 2);
  }
  CHECK(test::WaitFor([&] { return Info(a.get(), id).pin_count == 0; }));
  CHECK(Stats(a.get()).pinned_count == 0);
  CHECK(Stats(a.get()).client_count == 1);

  Delete(a.get(), id);
  CheckEmpty(a.get());
}

// ---------------------------------------------------------------------------------------------
// Leases.

store_create_options LeasedOpts() {
  store_create_options o = STORE_CREATE_OPTIONS_INIT;
  o.flags = STORE_CREATE_LEASED;
  return o;
}

uint32_t Lease(store_client* c, const store_object_id& id) {
  uint32_t n = 0;
  int rc = store_lease(c, &id, &n);
  const std::string err = store_last_error_message();
  INFO(err);
  REQUIRE(rc == STORE_OK);
  return n;
}

uint32_t Unlease(store_client* c, const store_object_id& id) {
  uint32_t n = 99;
  int rc = store_unlease(c, &id, &n);
  const std::string err = store_last_error_message();
  INFO(err);
  REQUIRE(rc == STORE_OK);
  return n;
}

TEST_CASE("leases: an object created leased goes with its last lease, a plain one stays") {
  test::TestStore s("64M");
  REQUIRE(s.started());
  ClientPtr a = Connect(s, "a");
  ClientPtr b = Connect(s, "b");
  const store_create_options leased = LeasedOpts();
  // Both paths of a put: a staged small object and one written in place.
  const store_object_id small = Id("leased-small"), big = Id("leased-big"), plain = Id("plain");
  Put(a.get(), small, Pattern(1, 100), &leased);
  Put(a.get(), big, Pattern(2, 4 * kMiB), &leased);
  Put(a.get(), plain, Pattern(3, 4096));
  CHECK(Info(b.get(), small).lease_count == 1);
  CHECK(Info(b.get(), big).lease_count == 1);
  CHECK(Info(b.get(), plain).lease_count == 0);

  // B leases both, then A lets go: they stay while B holds its leases.
  CHECK(Lease(b.get(), small) == 2);
  CHECK(Lease(b.get(), big) == 2);
  CHECK(Unlease(a.get(), small) == 1);
  CHECK(store_unlease(a.get(), &small, nullptr) == STORE_EMISUSE);  // A holds none now
  CHECK(Contains(b.get(), small) == 1);
  // A reader B opened keeps its bytes when the last lease goes (unlink semantics).
  ReaderPtr r = Open(b.get(), big);
  CHECK(Unlease(a.get(), big) == 1);
  CHECK(Unlease(b.get(), big) == 0);
  CHECK(Contains(b.get(), big) == 0);
  CHECK(SameBytes(store_reader_data(r.get()), Pattern(2, 4 * kMiB)));
  r.reset();
  CHECK(Unlease(b.get(), small) == 0);
  CHECK(Contains(b.get(), small) == 0);

  // A lease on a plain object only counts: dropping the last one deletes nothing.
  CHECK(Lease(a.get(), plain) == 1);
  CHECK(Lease(a.get(), plain) == 2);
  CHECK(Info(b.get(), plain).lease_count == 2);
  CHECK(Unlease(a.get(), plain) == 1);
  CHECK(Unlease(a.get(), plain) == 0);
  CHECK(Contains(b.get(), plain) == 1);
  Delete(a.get(), plain);
  CheckEmpty(a.get());
}

TEST_CASE("leases: a client's leases go when it disconnects or is killed") {
  test::TestStore s("64M");
  REQUIRE(s.started());
  ClientPtr watcher = Connect(s, "watcher");
  const store_create_options leased = LeasedOpts();
  {
    ClientPtr a = Connect(s, "a");
    for (int i = 0; i < 20; i++) {
      Put(a.get(), Id("gone-" + std::to_string(i)), Pattern(i, i % 2 ? 100 : kMiB), &leased);
    }
    Put(a.get(), Id("kept"), Pattern(99, 4096));
    // A lease on an object created leased by another client keeps it past its creator.
    ClientPtr b = Connect(s, "b");
    Put(b.get(), Id("held"), Pattern(98, kMiB), &leased);
    CHECK(Lease(a.get(), Id("held")) == 2);
    CHECK(Stats(watcher.get()).object_count == 22);
  }  // a and b disconnect
  CHECK(test::WaitFor([&] { return Stats(watcher.get()).object_count == 1; }));
  CHECK(Contains(watcher.get(), Id("kept")) == 1);
  CHECK(Contains(watcher.get(), Id("held")) == 0);
  Delete(watcher.get(), Id("kept"));
  CheckEmpty(watcher.get());

  // A process killed with objects it leased, and a lease on another client's: its objects go,
  // the other client's object goes when that client lets go too.
  Put(watcher.get(), Id("shared"), Pattern(97, kMiB), &leased);
  int ready[2];
  REQUIRE(pipe(ready) == 0);
  pid_t pid = fork();
  if (pid == 0) {
    store_client* c = nullptr;
    if (store_client_connect(&c, s.socket().c_str(), nullptr) != STORE_OK) _exit(1);
    store_create_options o = STORE_CREATE_OPTIONS_INIT;
    o.flags = STORE_CREATE_LEASED;
    std::vector<uint8_t> data(kMiB, 7);
    for (int i = 0; i < 10; i++) {
      store_object_id id{};
      std::string name = "child-" + std::to_string(i);
      store_object_id_from_string(name.data(), name.size(), &id);
      if (store_put(c, &id, data.data(), i % 2 ? 64 : data.size(), &o) != STORE_OK) _exit(2);
    }
    // One left unsealed, too.
    store_writer* w = nullptr;
    store_object_id wid{};
    store_object_id_from_string("child-open", 10, &wid);
    if (store_create(c, &w, &wid, kMiB, &o) != STORE_OK) _exit(3);
    store_object_id sid{};
    store_object_id_from_string("shared", 6, &sid);
    if (store_lease(c, &sid, nullptr) != STORE_OK) _exit(4);
    char x = 1;
    if (write(ready[1], &x, 1) != 1) _exit(5);
    pause();
    _exit(0);
  }
  close(ready[1]);
  char x = 0;
  CHECK(read(ready[0], &x, 1) == 1);
  close(ready[0]);
  CHECK(Stats(watcher.get()).object_count == 12);
  CHECK(Info(watcher.get(), Id("shared")).lease_count == 2);
  kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  CHECK(test::WaitFor([&] { return Stats(watcher.get()).object_count == 1; }));
  CHECK(Info(watcher.get(), Id("shared")).lease_count == 1);
  CHECK(Unlease(watcher.get(), Id("shared")) == 0);
  CheckEmpty(watcher.get());
}

TEST_CASE("leases: refusals, store_delete still deletes at once, and a new object of the id") {
  test::TestStore s("64M");
  REQUIRE(s.started());
  ClientPtr a = Connect(s, "a");
  ClientPtr b = Connect(s, "b");
  const store_object_id id = Id("lease-rules"), missing = Id("lease-missing");
  CHECK(store_lease(a.get(), &missing, nullptr) == STORE_ENOTFOUND);
  CHECK(store_unlease(a.get(), &missing, nullptr) == STORE_EMISUSE);
  CHECK(store_lease(a.get(), nullptr, nullptr) == STORE_EINVAL);
  CHECK(store_lease(nullptr, &id, nullptr) == STORE_EINVAL);

  // Unsealed: nobody leases it, and its creator's lease lasts until the seal.
  store_create_options leased = LeasedOpts();
  store_writer* w = nullptr;
  REQUIRE(store_create(a.get(), &w, &id, kMiB, &leased) == STORE_OK);
  WriterPtr wp(w);
  CHECK(store_lease(b.get(), &id, nullptr) == STORE_ENOTSEALED);
  CHECK(store_unlease(a.get(), &id, nullptr) == STORE_ENOTSEALED);
  REQUIRE(store_writer_seal(wp.release()) == STORE_OK);
  CHECK(Info(b.get(), id).lease_count == 1);

  // Unknown flags and an old options version.
  store_create_options bad = STORE_CREATE_OPTIONS_INIT;
  bad.flags = 2;
  CHECK(store_put(a.get(), &missing, "x", 1, &bad) == STORE_EINVAL);
  store_create_options v1 = STORE_CREATE_OPTIONS_INIT;
  v1.version = 1;
  v1.flags = STORE_CREATE_LEASED;  // not read: version 1 has no flags
  Put(a.get(), missing, Pattern(5, 10), &v1);
  CHECK(Info(a.get(), missing).lease_count == 0);
  Delete(a.get(), missing);

  // store_delete removes a leased object at once; the holders' unleases still succeed, and a
  // new object of the same id is not touched by them.
  CHECK(Lease(b.get(), id) == 2);
  Delete(a.get(), id);
  CHECK(Contains(b.get(), id) == 0);
  Put(a.get(), id, Pattern(6, 4096));
  CHECK(Unlease(b.get(), id) == 0);
  CHECK(Unlease(a.get(), id) == 0);
  CHECK(store_unlease(a.get(), &id, nullptr) == STORE_EMISUSE);
  CHECK(Contains(b.get(), id) == 1);
  CHECK(Info(b.get(), id).lease_count == 0);

  // A read-only client may not hold leases.
  store_connect_options ro = STORE_CONNECT_OPTIONS_INIT;
  ro.read_only = 1;
  store_client* rc = nullptr;
  REQUIRE(store_client_connect(&rc, s.socket().c_str(), &ro) == STORE_OK);
  ClientPtr r(rc);
  CHECK(store_lease(r.get(), &id, nullptr) == STORE_EPERM);
  CHECK(store_unlease(r.get(), &id, nullptr) == STORE_EPERM);
  Delete(a.get(), id);
  CheckEmpty(a.get());
}

// ---------------------------------------------------------------------------------------------
// A full store.

TEST_CASE("a full store: STORE_ENOSPACE without a ghost, and size limits") {
  test::TestStore s("16M");
  REQUIRE(s.started());
  ClientPtr c = Connect(s);

  std::vector<store_object_id> ids = FillWithMiB(c.get(), "full");
  REQUIRE(ids.size() >= 8);
  REQUIRE(ids.size() <= 16);

  // The create that failed left nothing behind.
  const store_object_id extra = Id("full-extra");
  store_writer* w = reinterpret_cast<store_writer*>(0x1);
  CHECK(store_create(c.get(), &w, &extra, kMiB, nullptr) == STORE_ENOSPACE);
  CHECK(w == nullptr);
  CHECK(std::strlen(store_last_error_message()) > 0);
  CHECK(Contains(c.get(), extra) == 0);
  store_object_info info = STORE_OBJECT_INFO_INIT;
  CHECK(store_info(c.get(), &extra, &info) == STORE_ENOTFOUND);
  store_stats st = Stats(c.get());
  CHECK(st.object_count == ids.size());
  CHECK(st.sealed_count == ids.size());
  CHECK(st.created_count == 0);
  CHECK(st.waiting_creates == 0);
  CHECK(st.total_full >= 2);

  // Every object kept its bytes.
  for (size_t i = 0; i < ids.size(); i++) {
    ReaderPtr r = Open(c.get(), ids[i]);
    CHECK(SameBytes(store_reader_data(r.get()), Pattern(i, kMiB)));
  }

  // Deleting one makes room for one.
  Delete(c.get(), ids.front());
  REQUIRE(test::WaitFor([&] { return Stats(c.get()).object_count == ids.size() - 1; }));
  const std::vector<uint8_t> edata = Pattern(999, kMiB);
  REQUIRE(store_create(c.get(), &w, &extra, kMiB, nullptr) == STORE_OK);
  REQUIRE(store_writer_write(w, edata.data(), edata.size()) == STORE_OK);
  REQUIRE(store_writer_seal(w) == STORE_OK);
  {
    ReaderPtr r = Open(c.get(), extra);
    CHECK(SameBytes(store_reader_data(r.get()), edata));
  }
  ids.front() = extra;

  // Sizes that can never be stored.
  const uint64_t capacity = Stats(c.get()).capacity_bytes;
  CHECK(capacity >= 16 * kMiB);
  const store_object_id big = Id("too-big");
  w = reinterpret_cast<store_writer*>(0x1);
  CHECK(store_create(c.get(), &w, &big, capacity + 1, nullptr) == STORE_EINVAL);
  CHECK(w == nullptr);
  CHECK(store_create(c.get(), &w, &big, UINT64_MAX, nullptr) == STORE_EINVAL);
  const char meta[64] = {};
  store_create_options mo = STORE_CREATE_OPTIONS_INIT;
  mo.metadata = meta;
  mo.metadata_size = sizeof meta;
  CHECK(store_create(c.get(), &w, &big, capacity - 10, &mo) == STORE_EINVAL);
  CHECK(store_create(c.get(), &w, &big, 0, nullptr) == STORE_EINVAL);
  CHECK(store_put(c.get(), &big, meta, 0, nullptr) == STORE_EINVAL);
  mo.metadata_size = STORE_MAX_METADATA_SIZE + 1;
  std::vector<uint8_t> huge_meta(mo.metadata_size);
  mo.metadata = huge_meta.data();
  CHECK(store_create(c.get(), &w, &big, 10, &mo) == STORE_EINVAL);
  st = Stats(c.get());
  CHECK(Contains(c.get(), big) == 0);
  CHECK(st.object_count == ids.size());
  CHECK(st.created_count == 0);

  for (auto& id : ids) Delete(c.get(), id);
  CheckEmpty(c.get());
}

TEST_CASE("a create waiting for space on a full store") {
  test::TestStore s("16M");
  REQUIRE(s.started());
  ClientPtr a = Connect(s, "a");
  ClientPtr b = Connect(s, "b");

  std::vector<store_object_id> ids = FillWithMiB(a.get(), "wait");
  REQUIRE(ids.size() >= 2);

  // timeout -1: waits until B deletes an object.
  const store_object_id waited = Id("wait-for-space");
  const std::vector<uint8_t> wdata = Pattern(1234, kMiB);
  std::atomic<bool> returned{false};
  int rc = -100;
  Threads th(s);
  th.Start([&] {
    store_create_options o = STORE_CREATE_OPTIONS_INIT;
    o.timeout_ms = -1;
    rc = store_put(a.get(), &waited, wdata.data(), wdata.size(), &o);
    returned = true;
  });
  CHECK(test::WaitFor([&] { return Stats(b.get()).waiting_creates == 1; }));
  CHECK_FALSE(returned.load());
  CHECK(Contains(b.get(), waited) == 0);
  Delete(b.get(), ids.back());
  ids.pop_back();
  th.Join();
  CHECK(rc == STORE_OK);
  CHECK(Stats(b.get()).waiting_creates == 0);
  {
    ReaderPtr r = Open(b.get(), waited);
    CHECK(SameBytes(store_reader_data(r.get()), wdata));
  }
  ids.push_back(waited);

  // timeout 100 ms on a store that is full again: STORE_ETIMEDOUT, and nothing left behind.
  const store_object_id late = Id("wait-timeout");
  store_create_options o = STORE_CREATE_OPTIONS_INIT;
  o.timeout_ms = 100;
  store_writer* w = reinterpret_cast<store_writer*>(0x1);
  auto t0 = Clock::now();
  CHECK(store_create(a.get(), &w, &late, kMiB, &o) == STORE_ETIMEDOUT);
  auto waited_for = Clock::now() - t0;
  CHECK(w == nullptr);
  CHECK(waited_for >= milliseconds(90));
  CHECK(waited_for < milliseconds(5000));
  store_stats st = Stats(b.get());
  CHECK(st.waiting_creates == 0);
  CHECK(st.created_count == 0);
  CHECK(st.object_count == ids.size());
  CHECK(Contains(b.get(), late) == 0);

  for (auto& id : ids) Delete(b.get(), id);
  CheckEmpty(b.get());
}

TEST_CASE("an inline put that waits for space keeps its data and metadata") {
  test::TestStore s("16M");
  REQUIRE(s.started());
  ClientPtr a = Connect(s, "a");
  ClientPtr b = Connect(s, "b");

  std::vector<store_object_id> ids = FillWithMiB(a.get(), "inline-wait");
  REQUIRE(ids.size() >= 2);
  const size_t mib_objects = ids.size();
  // Small enough to travel inside the create request, which the store keeps while it waits.
  constexpr size_t kSize = 60 * 1024;
  for (int i = 0;; i++) {
    REQUIRE(i < 100);
    store_object_id id = Id("inline-wait-small-" + std::to_string(i));
    std::vector<uint8_t> data = Pattern(i, kSize);
    int rc = store_put(a.get(), &id, data.data(), data.size(), nullptr);
    if (rc == STORE_ENOSPACE) break;
    REQUIRE(rc == STORE_OK);
    ids.push_back(id);
  }

  const store_object_id waited = Id("inline-wait-for-space");
  const std::vector<uint8_t> wdata = Pattern(77, kSize);
  const std::vector<uint8_t> meta = Pattern(78, 300);
  std::atomic<bool> returned{false};
  int rc = -100;
  Threads th(s);
  th.Start([&] {
    store_create_options o = STORE_CREATE_OPTIONS_INIT;
    o.timeout_ms = -1;
    o.metadata = meta.data();
    o.metadata_size = meta.size();
    rc = store_put(a.get(), &waited, wdata.data(), wdata.size(), &o);
    returned = true;
  });
  CHECK(test::WaitFor([&] { return Stats(b.get()).waiting_creates == 1; }));
  // More puts of the same size on the same connection reuse the store's input buffer meanwhile.
  const std::vector<uint8_t> other = Pattern(79, kSize);
  for (int i = 0; i < 3; i++) {
    store_object_id id = Id("inline-wait-other-" + std::to_string(i));
    CHECK(store_put(a.get(), &id, other.data(), other.size(), nullptr) == STORE_ENOSPACE);
  }
  CHECK_FALSE(returned.load());
  Delete(b.get(), ids[mib_objects - 1]);
  ids.erase(ids.begin() + static_cast<ptrdiff_t>(mib_objects - 1));
  th.Join();
  CHECK(rc == STORE_OK);
  {
    ReaderPtr r = Open(b.get(), waited);
    CHECK(SameBytes(store_reader_data(r.get()), wdata));
    uint64_t msize = 0;
    const void* m = store_reader_metadata(r.get(), &msize);
    REQUIRE(msize == meta.size());
    CHECK(std::memcmp(m, meta.data(), meta.size()) == 0);
  }
  ids.push_back(waited);
  for (auto& id : ids) Delete(b.get(), id);
  CheckEmpty(b.get());
}

TEST_CASE("a create queued behind a waiting create that times out is served when it fits") {
  test::TestStore s("16M");
  REQUIRE(s.started());
  ClientPtr a = Connect(s, "a");
  ClientPtr b = Connect(s, "b");
  ClientPtr watcher = Connect(s, "watcher");

  std::vector<store_object_id> ids = FillWithMiB(a.get(), "queue");
  REQUIRE(ids.size() >= 9);
  // Room for exactly one more 1 MiB object.
  Delete(a.get(), ids.back());
  ids.pop_back();

  // B waits (250 ms) for 8 MiB, which cannot fit; A then waits (forever) for 1 MiB behind it.
  const store_object_id big = Id("queue-big"), small = Id("queue-small");
  const std::vector<uint8_t> sdata = Pattern(4321, kMiB);
  std::atomic<int> big_rc{-100}, small_rc{-100};
  Threads th(s);
  th.Start([&] {
    store_create_options o = STORE_CREATE_OPTIONS_INIT;
    o.timeout_ms = 250;
    store_writer* w = nullptr;
    big_rc = store_create(b.get(), &w, &big, 8 * kMiB, &o);
    store_writer_abort(w);
  });
  REQUIRE(test::WaitFor([&] { return Stats(watcher.get()).waiting_creates == 1; }));
  th.Start([&] {
    store_create_options o = STORE_CREATE_OPTIONS_INIT;
    o.timeout_ms = -1;
    small_rc = store_put(a.get(), &small, sdata.data(), sdata.size(), &o);
  });
  // Either A queued behind B, or B already timed out and A went straight in.
  REQUIRE(test::WaitFor([&] {
    return Stats(watcher.get()).waiting_creates == 2 || small_rc.load() != -100;
  }));
  REQUIRE(test::WaitFor([&] { return big_rc.load() != -100; }));
  CHECK(big_rc.load() == STORE_ETIMEDOUT);

  // Once B has given up, A's create fits and must be served without any further delete.
  const bool served = test::WaitFor([&] { return small_rc.load() != -100; },
                                    std::chrono::seconds(5));
  CHECK_MESSAGE(served, "the 1 MiB create still waits although it fits (waiting_creates = "
                            << Stats(watcher.get()).waiting_creates << ")");
  if (!served) {
    // Free more space so that the waiting thread returns and the test can end.
    Delete(watcher.get(), ids.back());
    ids.pop_back();
  }
  th.Join();
  CHECK(small_rc.load() == STORE_OK);
  ids.push_back(small);
  {
    ReaderPtr r = Open(watcher.get(), small);
    CHECK(SameBytes(store_reader_data(r.get()), sdata));
  }
  CHECK(Stats(watcher.get()).waiting_creates == 0);
  CHECK(Contains(watcher.get(), big) == 0);

  for (auto& id : ids) Delete(watcher.get(), id);
  CheckEmpty(watcher.get());
}

// ---------------------------------------------------------------------------------------------
// Arguments, errors and helpers.

TEST_CASE("NULL arguments give STORE_EINVAL; destructors accept NULL") {
  test::TestStore s("64M");
  REQUIRE(s.started());
  ClientPtr cp = Connect(s);
  store_client* c = cp.get();

  const store_object_id id = Id("null-args");
  const uint8_t byte = 7;
  store_reader* r = nullptr;
  store_writer* w = nullptr;
  store_object_info info = STORE_OBJECT_INFO_INIT;
  store_stats st = STORE_STATS_INIT;
  int present = 0;
  uint64_t size = 1;

  CHECK(store_client_connect(nullptr, s.socket().c_str(), nullptr) == STORE_EINVAL);
  store_client_free(nullptr);

  CHECK(store_create(nullptr, &w, &id, 10, nullptr) == STORE_EINVAL);
  CHECK(store_create(c, nullptr, &id, 10, nullptr) == STORE_EINVAL);
  CHECK(store_create(c, &w, nullptr, 10, nullptr) == STORE_EINVAL);
  CHECK(w == nullptr);
  store_create_options bad = STORE_CREATE_OPTIONS_INIT;
  bad.metadata_size = 10;  // with a NULL metadata pointer
  CHECK(store_create(c, &w, &id, 10, &bad) == STORE_EINVAL);

  CHECK(store_writer_write(nullptr, &byte, 1) == STORE_EINVAL);
  CHECK(store_writer_seek(nullptr, 0, SEEK_SET, &size) == STORE_EINVAL);
  CHECK(store_writer_tell(nullptr) == 0);
  CHECK(store_writer_size(nullptr) == 0);
  CHECK(store_writer_data(nullptr) == nullptr);
  CHECK(store_writer_seal(nullptr) == STORE_EINVAL);
  CHECK(store_writer_abort(nullptr) == STORE_OK);
  {
    REQUIRE(store_create(c, &w, &id, 10, nullptr) == STORE_OK);
    WriterPtr wp(w);
    CHECK(store_writer_write(wp.get(), nullptr, 1) == STORE_EINVAL);
    CHECK(store_writer_tell(wp.get()) == 0);
  }
  CHECK(Stats(c).object_count == 0);

  CHECK(store_put(nullptr, &id, &byte, 1, nullptr) == STORE_EINVAL);
  CHECK(store_put(c, nullptr, &byte, 1, nullptr) == STORE_EINVAL);
  CHECK(store_put(c, &id, nullptr, 1, nullptr) == STORE_EINVAL);
  const void* datas[1] = {&byte};
  const uint64_t sizes[1] = {1};
  size_t done = 99;
  CHECK(store_put_many(nullptr, &id, datas, sizes, 1, nullptr, &done) == STORE_EINVAL);
  CHECK(done == 0);
  CHECK(store_put_many(c, nullptr, datas, sizes, 1, nullptr, &done) == STORE_EINVAL);
  CHECK(store_put_many(c, &id, nullptr, sizes, 1, nullptr, &done) == STORE_EINVAL);
  CHECK(store_put_many(c, &id, datas, nullptr, 1, nullptr, &done) == STORE_EINVAL);
  CHECK(done == 0);

  CHECK(store_open_reader(nullptr, &r, &id, 0) == STORE_EINVAL);
  CHECK(store_open_reader(c, nullptr, &id, 0) == STORE_EINVAL);
  CHECK(store_open_reader(c, &r, nullptr, 0) == STORE_EINVAL);
  CHECK(r == nullptr);
  store_reader* slots[1] = {nullptr};
  CHECK(store_open_readers(nullptr, slots, &id, 1, 0) == STORE_EINVAL);
  CHECK(store_open_readers(c, nullptr, &id, 1, 0) == STORE_EINVAL);
  CHECK(store_open_readers(c, slots, nullptr, 1, 0) == STORE_EINVAL);

  uint8_t buf[4];
  size_t nread = 5;
  CHECK(store_reader_read(nullptr, buf, sizeof buf, &nread) == STORE_EINVAL);
  CHECK(nread == 0);
  CHECK(store_reader_seek(nullptr, 0, SEEK_SET, &size) == STORE_EINVAL);
  CHECK(store_reader_tell(nullptr) == 0);
  CHECK(store_reader_size(nullptr) == 0);
  CHECK(store_reader_data(nullptr) == nullptr);
  size = 5;
  CHECK(store_reader_metadata(nullptr, &size) == nullptr);
  CHECK(size == 0);
  CHECK(store_reader_id(nullptr) == nullptr);
  store_reader_close(nullptr);
  store_readers_close(nullptr, 3);
  store_reader* nulls[3] = {nullptr, nullptr, nullptr};
  store_readers_close(nulls, 3);
  {
    Put(c, id, std::vector<uint8_t>(4, 9));
    ReaderPtr rp = Open(c, id);
    CHECK(store_reader_read(rp.get(), nullptr, 1, &nread) == STORE_EINVAL);
    CHECK(store_reader_tell(rp.get()) == 0);
  }
  Delete(c, id);

  CHECK(store_contains(nullptr, &id, &present) == STORE_EINVAL);
  CHECK(store_contains(c, nullptr, &present) == STORE_EINVAL);
  CHECK(store_contains(c, &id, nullptr) == STORE_EINVAL);
  CHECK(store_delete(nullptr, &id) == STORE_EINVAL);
  CHECK(store_delete(c, nullptr) == STORE_EINVAL);
  CHECK(store_info(nullptr, &id, &info) == STORE_EINVAL);
  CHECK(store_info(c, nullptr, &info) == STORE_EINVAL);
  CHECK(store_info(c, &id, nullptr) == STORE_EINVAL);
  store_object_info* list = nullptr;
  size_t count = 0;
  CHECK(store_list(nullptr, &list, sizeof *list, &count) == STORE_EINVAL);
  CHECK(store_list(c, nullptr, sizeof(store_object_info), &count) == STORE_EINVAL);
  CHECK(store_list(c, &list, sizeof *list, nullptr) == STORE_EINVAL);
  store_free(nullptr);
  CHECK(store_pin(nullptr, &id) == STORE_EINVAL);
  CHECK(store_pin(c, nullptr) == STORE_EINVAL);
  CHECK(store_unpin(nullptr, &id) == STORE_EINVAL);
  CHECK(store_unpin(c, nullptr) == STORE_EINVAL);
  CHECK(store_stats_get(nullptr, &st) == STORE_EINVAL);
  CHECK(store_stats_get(c, nullptr) == STORE_EINVAL);

  store_object_id out{};
  char hex[41];
  CHECK(store_object_id_from_string(nullptr, 3, &out) == STORE_EINVAL);
  CHECK(store_object_id_from_string("abc", 3, nullptr) == STORE_EINVAL);
  CHECK(store_object_id_to_hex(nullptr, hex, sizeof hex) == STORE_EINVAL);
  CHECK(store_object_id_to_hex(&id, nullptr, sizeof hex) == STORE_EINVAL);
  CHECK(store_object_id_from_hex(nullptr, &out) == STORE_EINVAL);
  CHECK(store_object_id_from_hex("a9993e364706816aba3e25717850c26c9cd0d89d", nullptr) ==
        STORE_EINVAL);
  CHECK(std::strlen(store_last_error_message()) > 0);

  // The server is unharmed and the store is empty.
  CHECK(s.Alive());
  CheckEmpty(c);
}

TEST_CASE("store_errstr, store_last_error_message and store_version_string") {
  std::set<std::string> texts;
  for (int code = STORE_ERRNO_MIN_; code <= STORE_OK; code++) {
    const char* t = store_errstr(code);
    REQUIRE(t != nullptr);
    CHECK(std::strlen(t) > 0);
    texts.insert(t);
  }
  CHECK(texts.size() == size_t(STORE_OK - STORE_ERRNO_MIN_ + 1));
  CHECK(std::string(store_errstr(STORE_ENOSPACE)) == "store is full");
  REQUIRE(store_errstr(12345) != nullptr);
  REQUIRE(store_errstr(-12345) != nullptr);
  CHECK(std::string(store_version_string()) == STORE_VERSION_STRING);

  // A failure leaves a message on this thread; a failure in the server too.
  test::TestStore s("64M");
  REQUIRE(s.started());
  ClientPtr c = Connect(s);
  const store_object_id id = Id("errmsg");
  store_reader* r = nullptr;
  REQUIRE(store_open_reader(c.get(), &r, &id, 0) == STORE_ENOTFOUND);
  const std::string m1 = store_last_error_message();
  CHECK_FALSE(m1.empty());
  CHECK(m1.find(Hex(id)) != std::string::npos);
  REQUIRE(store_object_id_from_hex("zz", nullptr) == STORE_EINVAL);
  const std::string m2 = store_last_error_message();
  CHECK_FALSE(m2.empty());
  CHECK(m2 != m1);
  Put(c.get(), id, Pattern(1, 8));
  REQUIRE(store_put(c.get(), &id, "x", 1, nullptr) == STORE_EEXISTS);
  CHECK(std::strlen(store_last_error_message()) > 0);
  Delete(c.get(), id);
  CheckEmpty(c.get());
}

TEST_CASE("object ids: from a string (SHA-1), to and from hex") {
  store_object_id a{}, a2{}, b{}, empty{};
  REQUIRE(store_object_id_from_string("abc", 3, &a) == STORE_OK);
  REQUIRE(store_object_id_from_string("abc", 3, &a2) == STORE_OK);
  REQUIRE(store_object_id_from_string("abd", 3, &b) == STORE_OK);
  REQUIRE(store_object_id_from_string("", 0, &empty) == STORE_OK);
  CHECK(SameId(a, a2));
  CHECK_FALSE(SameId(a, b));
  CHECK(Hex(a) == "a9993e364706816aba3e25717850c26c9cd0d89d");
  CHECK(Hex(empty) == "da39a3ee5e6b4b0d3255bfef95601890afd80709");
  const std::string fox = "The quick brown fox jumps over the lazy dog";
  store_object_id f{};
  REQUIRE(store_object_id_from_string(fox.data(), fox.size(), &f) == STORE_OK);
  CHECK(Hex(f) == "2fd4e1c67a2d28fced849ee1bb76e7391b93eb12");
  // Only len bytes count.
  REQUIRE(store_object_id_from_string("abcdef", 3, &a2) == STORE_OK);
  CHECK(SameId(a, a2));

  // Hex round trip, both cases accepted.
  store_object_id back{};
  REQUIRE(store_object_id_from_hex(Hex(a).c_str(), &back) == STORE_OK);
  CHECK(SameId(a, back));
  REQUIRE(store_object_id_from_hex("A9993E364706816ABA3E25717850C26C9CD0D89D", &back) ==
          STORE_OK);
  CHECK(SameId(a, back));
  for (int i = 0; i < 50; i++) {
    store_object_id x = Id("hex-" + std::to_string(i)), y{};
    REQUIRE(store_object_id_from_hex(Hex(x).c_str(), &y) == STORE_OK);
    CHECK(SameId(x, y));
  }

  // Too small a buffer.
  char small[40];
  CHECK(store_object_id_to_hex(&a, small, sizeof small) == STORE_EINVAL);

  // Bad hex leaves *out alone.
  const char* bad[] = {
      "",
      "abc",
      "a9993e364706816aba3e25717850c26c9cd0d89",    // 39 digits
      "a9993e364706816aba3e25717850c26c9cd0d89d0",  // 41 digits
      "g9993e364706816aba3e25717850c26c9cd0d89d",   // not a digit
      "a9993e364706816aba3e25717850c26c9cd0d89 ",   // a space
      "0xa9993e364706816aba3e25717850c26c9cd0d8",   // a prefix
  };
  for (const char* h : bad) {
    CAPTURE(h);
    store_object_id out = b;
    CHECK(store_object_id_from_hex(h, &out) == STORE_EINVAL);
    CHECK(SameId(out, b));
  }
}

// ---------------------------------------------------------------------------------------------
// One client shared by several threads.

TEST_CASE("a client shared by 4 threads doing put/open/close/delete cycles") {
  test::TestStore s("64M");
  REQUIRE(s.started());
  ClientPtr c = Connect(s);

  constexpr int kThreads = 4, kCycles = 500;
  std::atomic<int> ok{0}, failed{0};
  Threads threads(s);
  for (int t = 0; t < kThreads; t++) {
    threads.Start([&, t] {
      for (int i = 0; i < kCycles; i++) {
        const std::string name = "thread-" + std::to_string(t) + "-" + std::to_string(i);
        store_object_id id{};
        store_object_id_from_string(name.data(), name.size(), &id);
        const std::vector<uint8_t> data = Pattern(t * 100000 + i, 64 + (i * 37) % 5000);
        bool good = store_put(c.get(), &id, data.data(), data.size(), nullptr) == STORE_OK;
        store_reader* r = nullptr;
        good = good && store_open_reader(c.get(), &r, &id, 0) == STORE_OK;
        good = good && store_reader_size(r) == data.size() &&
               SameBytes(store_reader_data(r), data);
        store_reader_close(r);
        good = store_delete(c.get(), &id) == STORE_OK && good;
        (good ? ok : failed)++;
      }
    });
  }
  threads.Join();
  CHECK(failed.load() == 0);
  CHECK(ok.load() == kThreads * kCycles);
  store_stats st = Stats(c.get());
  CHECK(st.total_creates == kThreads * kCycles);
  CHECK(st.total_deletes == kThreads * kCycles);
  CheckEmpty(c.get());
}

TEST_CASE("store_put_many from 4 threads of one client at once") {
  test::TestStore s("64M");
  REQUIRE(s.started());
  ClientPtr c = Connect(s);

  constexpr int kThreads = 4, kBatches = 10, kPerBatch = 150;
  auto name = [](int t, int b, int i) {
    return "pm-" + std::to_string(t) + "-" + std::to_string(b) + "-" + std::to_string(i);
  };
  // Every 50th object is above the one-round-trip size.
  auto size_of = [](int i) -> size_t { return i % 50 == 49 ? 70 * 1024 : 1 + (i * 13) % 700; };
  auto seed_of = [](int t, int b, int i) -> uint64_t { return (t * 100 + b) * 1000 + i; };
  std::atomic<int> failed{0};
  std::atomic<size_t> put{0};
  Threads threads(s);
  for (int t = 0; t < kThreads; t++) {
    threads.Start([&, t] {
      for (int b = 0; b < kBatches; b++) {
        std::vector<store_object_id> ids(kPerBatch);
        std::vector<std::vector<uint8_t>> datas;
        std::vector<const void*> ptrs;
        std::vector<uint64_t> sizes;
        for (int i = 0; i < kPerBatch; i++) {
          const std::string n = name(t, b, i);
          store_object_id_from_string(n.data(), n.size(), &ids[i]);
          datas.push_back(Pattern(seed_of(t, b, i), size_of(i)));
        }
        for (auto& d : datas) {
          ptrs.push_back(d.data());
          sizes.push_back(d.size());
        }
        size_t done = 0;
        if (store_put_many(c.get(), ids.data(), ptrs.data(), sizes.data(), kPerBatch, nullptr,
                           &done) != STORE_OK) {
          failed++;
        }
        put += done;
      }
    });
  }
  threads.Join();
  CHECK(failed.load() == 0);
  const size_t total = size_t{kThreads} * kBatches * kPerBatch;
  CHECK(put.load() == total);
  CHECK(Stats(c.get()).object_count == total);

  // Every object holds its own bytes.
  std::vector<store_object_id> ids;
  for (int t = 0; t < kThreads; t++) {
    for (int b = 0; b < kBatches; b++) {
      for (int i = 0; i < kPerBatch; i++) ids.push_back(Id(name(t, b, i)));
    }
  }
  std::vector<store_reader*> readers(ids.size(), nullptr);
  REQUIRE(store_open_readers(c.get(), readers.data(), ids.data(), ids.size(), 0) == STORE_OK);
  size_t good = 0, k = 0;
  for (int t = 0; t < kThreads; t++) {
    for (int b = 0; b < kBatches; b++) {
      for (int i = 0; i < kPerBatch; i++, k++) {
        store_reader* r = readers[k];
        if (r && store_reader_size(r) == size_of(i) &&
            SameBytes(store_reader_data(r), Pattern(seed_of(t, b, i), size_of(i)))) {
          good++;
        }
      }
    }
  }
  CHECK(good == total);
  store_readers_close(readers.data(), readers.size());
  for (auto& id : ids) Delete(c.get(), id);
  CheckEmpty(c.get());
}

TEST_CASE("a thread blocked in an open does not stall the other threads of the client") {
  test::TestStore s("64M");
  REQUIRE(s.started());
  ClientPtr c = Connect(s);
  ClientPtr watcher = Connect(s, "watcher");

  const store_object_id blocked_id = Id("blocked");
  const std::vector<uint8_t> bdata = Pattern(4242, 10000);
  constexpr int kThreads = 3, kCycles = 200;
  std::atomic<bool> returned{false};
  int brc = -100;
  std::vector<uint8_t> got;
  std::atomic<int> ok{0}, failed{0}, finished{0};
  Threads threads(s);
  threads.Start([&] {
    store_reader* r = nullptr;
    brc = store_open_reader(c.get(), &r, &blocked_id, -1);
    if (brc == STORE_OK) {
      auto* p = static_cast<const uint8_t*>(store_reader_data(r));
      if (p) got.assign(p, p + store_reader_size(r));
      store_reader_close(r);
    }
    returned = true;
  });
  REQUIRE(test::WaitFor([&] { return Stats(watcher.get()).waiting_gets == 1; }));

  for (int t = 0; t < kThreads; t++) {
    threads.Start([&, t] {
      for (int i = 0; i < kCycles; i++) {
        const std::string name = "worker-" + std::to_string(t) + "-" + std::to_string(i);
        store_object_id id{};
        store_object_id_from_string(name.data(), name.size(), &id);
        const std::vector<uint8_t> data = Pattern(t * 1000 + i, 100 + i);
        bool good = store_put(c.get(), &id, data.data(), data.size(), nullptr) == STORE_OK;
        store_reader* r = nullptr;
        good = good && store_open_reader(c.get(), &r, &id, 0) == STORE_OK;
        good = good && SameBytes(store_reader_data(r), data);
        store_reader_close(r);
        store_stats st = STORE_STATS_INIT;
        good = good && store_stats_get(c.get(), &st) == STORE_OK && st.waiting_gets == 1;
        good = store_delete(c.get(), &id) == STORE_OK && good;
        (good ? ok : failed)++;
      }
      finished++;
    });
  }
  // The workers finish while the blocked thread still waits.
  const bool all_finished = test::WaitFor([&] { return finished.load() == kThreads; },
                                          std::chrono::seconds(60));
  CHECK(all_finished);
  CHECK_FALSE(returned.load());
  CHECK(ok.load() == kThreads * kCycles);
  CHECK(failed.load() == 0);

  // A put on the same client unblocks it (through the other client if the first is stalled,
  // so that the test ends either way).
  Put(all_finished ? c.get() : watcher.get(), blocked_id, bdata);
  threads.Join();
  CHECK(brc == STORE_OK);
  CHECK(got == bdata);
  CHECK(test::WaitFor([&] { return Info(watcher.get(), blocked_id).reader_count == 0; }));
  CHECK(Stats(watcher.get()).waiting_gets == 0);

  Delete(c.get(), blocked_id);
  CheckEmpty(watcher.get());
}
