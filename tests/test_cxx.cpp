// test_cxx.cpp - the C++ layer (storeclient.hpp) against a real store server.
#include <doctest.h>

#include <cstring>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <unordered_set>
#include <vector>

#include "harness.h"
#include "storeclient.hpp"

namespace {

static_assert(!std::is_copy_constructible_v<store::Client>);
static_assert(!std::is_copy_constructible_v<store::Writer>);
static_assert(!std::is_copy_constructible_v<store::Reader>);
static_assert(std::is_nothrow_move_constructible_v<store::Writer>);
static_assert(std::is_nothrow_move_assignable_v<store::Reader>);

// The code of the store::Error that f throws, or STORE_OK if it throws none.
template <class F>
int ErrorCode(F&& f) {
  try {
    f();
  } catch (const store::Error& e) {
    return e.code();
  }
  return STORE_OK;
}

std::string_view Bytes(const store::Reader& r) {
  return std::string_view(reinterpret_cast<const char*>(r.data()), r.size());
}

// Everything the test made is gone: no objects and no memory in use (once another client's
// releases have reached the store: they may wait a few milliseconds).
void CheckEmpty(store::Client& c) {
  test::WaitFor([&] { return c.Stats().deleted_pending_count == 0; });
  store_stats st = c.Stats();
  CHECK(st.object_count == 0);
  CHECK(st.used_bytes == 0);
}

}  // namespace

TEST_CASE("Put then Open returns the same bytes and metadata") {
  test::TestStore s;
  REQUIRE(s.started());
  auto c = store::Client::Connect(s.socket(), "test_cxx");

  const auto a = store::ObjectId::FromString("put-a");
  const auto b = store::ObjectId::FromString("put-b");
  const std::string payload = "hello, shared memory";
  store::CreateOptions opts;
  opts.metadata = "meta-a";
  c.Put(a, payload, opts);
  const uint8_t raw[4] = {0, 1, 2, 255};
  c.Put(b, raw, sizeof raw);

  {
    store::Reader r = c.Open(a, 0);
    REQUIRE(r);
    CHECK(r.id() == a);
    CHECK(r.size() == payload.size());
    CHECK(Bytes(r) == payload);
    CHECK(r.metadata() == "meta-a");

    char buf[6] = {};
    CHECK(r.read(buf, 5) == 5);
    CHECK(std::string_view(buf, 5) == "hello");
    CHECK(r.tell() == 5);
    CHECK(r.seek(-6, SEEK_END) == payload.size() - 6);
    CHECK(r.read(buf, sizeof buf) == 6);
    CHECK(std::string_view(buf, 6) == "memory");
    CHECK(r.read(buf, sizeof buf) == 0);

    store::Reader rb = c.Open(b);
    CHECK(rb.size() == sizeof raw);
    CHECK(std::memcmp(rb.data(), raw, sizeof raw) == 0);
    CHECK(rb.metadata().empty());
  }

  c.Delete(a);
  c.Delete(b);
  CheckEmpty(c);
}

TEST_CASE("ObjectId conversions and comparisons") {
  test::TestStore s;
  REQUIRE(s.started());
  auto c = store::Client::Connect(s.socket());

  const auto a = store::ObjectId::FromString("id-a");
  CHECK(a == store::ObjectId::FromString("id-a"));
  CHECK(a != store::ObjectId::FromString("id-b"));
  CHECK(a.hex().size() == 2 * STORE_OBJECT_ID_SIZE);
  CHECK(store::ObjectId::FromHex(a.hex()) == a);
  CHECK(store::ObjectId::FromBytes(a.bytes(), STORE_OBJECT_ID_SIZE) == a);

  const auto zero = store::ObjectId();
  CHECK(zero.hex() == std::string(2 * STORE_OBJECT_ID_SIZE, '0'));
  CHECK(zero < store::ObjectId::FromHex("0000000000000000000000000000000000000001"));
  CHECK_FALSE(a < a);

  CHECK(ErrorCode([] { store::ObjectId::FromHex("abc"); }) == STORE_EINVAL);
  CHECK(ErrorCode([] {
          store::ObjectId::FromHex("zz00000000000000000000000000000000000000");
        }) == STORE_EINVAL);
  CHECK(ErrorCode([&] { store::ObjectId::FromBytes(a.bytes(), 3); }) == STORE_EINVAL);

  std::unordered_set<store::ObjectId> hashed;
  std::set<store::ObjectId> ordered;
  for (int i = 0; i < 100; ++i) {
    hashed.insert(store::ObjectId::FromString("id-" + std::to_string(i % 50)));
    ordered.insert(store::ObjectId::FromString("id-" + std::to_string(i % 50)));
  }
  CHECK(hashed.size() == 50);
  CHECK(ordered.size() == 50);

  // An id parsed from hex names the same object as the one it came from.
  c.Put(a, "x");
  CHECK(c.Contains(store::ObjectId::FromHex(a.hex())));
  c.Delete(a);
  CheckEmpty(c);
}

TEST_CASE("Create, write and seal through a Writer") {
  test::TestStore s;
  REQUIRE(s.started());
  auto c = store::Client::Connect(s.socket());

  const auto id = store::ObjectId::FromString("writer");
  const char meta[] = {'m', '\0', 'd'};
  store::CreateOptions opts;
  opts.set_metadata(meta, sizeof meta);
  opts.importance = 3;
  store::Writer w = c.Create(id, 10, opts);
  REQUIRE(w);
  CHECK(w.size() == 10);
  CHECK(w.tell() == 0);

  w.write("hello");
  CHECK(w.tell() == 5);
  // Writing past the end fails and moves nothing.
  CHECK(ErrorCode([&] { w.write("too long!"); }) == STORE_EINVAL);
  CHECK(w.tell() == 5);
  CHECK(w.seek(0, SEEK_END) == 10);
  CHECK(w.seek(-5, SEEK_CUR) == 5);
  REQUIRE(w.data() != nullptr);
  std::memcpy(w.data() + 5, "world", 5);
#if __cplusplus >= 202002L
  CHECK(w.span().size() == 10);
#endif

  // Unsealed (and small: staged, so not in the store yet): nobody can open it.
  CHECK_FALSE(c.Contains(id));
  CHECK(ErrorCode([&] { c.Info(id); }) == STORE_ENOTFOUND);
  CHECK_FALSE(c.TryOpen(id, 0).has_value());

  w.seal();
  CHECK_FALSE(w);
  CHECK(c.Contains(id));
  store_object_info info = c.Info(id);
  CHECK(info.state == STORE_STATE_SEALED);
  CHECK(info.data_size == 10);
  CHECK(info.metadata_size == sizeof meta);
  CHECK(info.importance == 3);
  CHECK(info.device == -1);

  {
    store::Reader r = c.Open(id, 0);
    CHECK(Bytes(r) == "helloworld");
    CHECK(r.metadata() == std::string_view(meta, sizeof meta));
  }

  c.Delete(id);
  CheckEmpty(c);
}

TEST_CASE("A Writer destroyed or aborted without seal frees its id") {
  test::TestStore s;
  REQUIRE(s.started());
  auto c = store::Client::Connect(s.socket());
  const auto id = store::ObjectId::FromString("aborted");

  {
    store::Writer w = c.Create(id, 1000);
    w.write("partial");
  }
  CHECK_FALSE(c.Contains(id));
  CHECK(ErrorCode([&] { c.Info(id); }) == STORE_ENOTFOUND);
  CheckEmpty(c);

  store::Writer w = c.Create(id, 1000);
  w.abort();
  CHECK_FALSE(w);
  w.abort();  // an empty Writer aborts nothing
  CheckEmpty(c);

  w = c.Create(id, 4);
  w.write("done");
  w.seal();
  {
    store::Reader r = c.Open(id, 0);
    CHECK(Bytes(r) == "done");
  }
  c.Delete(id);
  CheckEmpty(c);
}

TEST_CASE("TryOpen of a missing id returns nullopt") {
  test::TestStore s;
  REQUIRE(s.started());
  auto c = store::Client::Connect(s.socket());
  const auto missing = store::ObjectId::FromString("missing");

  CHECK_FALSE(c.TryOpen(missing, 0).has_value());
  CHECK_FALSE(c.TryOpen(missing, 20).has_value());  // times out

  const auto present = store::ObjectId::FromString("present");
  c.Put(present, "here");
  {
    std::optional<store::Reader> r = c.TryOpen(present, 0);
    REQUIRE(r.has_value());
    CHECK(Bytes(*r) == "here");
  }
  c.Delete(present);
  CheckEmpty(c);
}

TEST_CASE("Failures throw store::Error with the C code") {
  test::TestStore s;
  REQUIRE(s.started());
  auto c = store::Client::Connect(s.socket());
  const auto missing = store::ObjectId::FromString("missing");

  CHECK_THROWS_AS(c.Open(missing, 0), store::Error);
  try {
    c.Open(missing, 0);
    FAIL("Open of a missing id did not throw");
  } catch (const store::Error& e) {
    CHECK(e.code() == STORE_ENOTFOUND);
    CHECK(std::string(e.what()).size() > 0);
  }
  CHECK(ErrorCode([&] { c.Open(missing, 20); }) == STORE_ETIMEDOUT);
  CHECK(ErrorCode([&] { c.Delete(missing); }) == STORE_ENOTFOUND);
  CHECK(ErrorCode([&] { c.Unpin(missing); }) != STORE_OK);

  // Create of an existing id, sealed or not.
  const auto id = store::ObjectId::FromString("exists");
  c.Put(id, "first");
  // Larger than a staged object: refused at the create.
  CHECK(ErrorCode([&] { c.Create(id, 100 * 1024); }) == STORE_EEXISTS);
  CHECK(ErrorCode([&] { c.Put(id, "second"); }) == STORE_EEXISTS);
  // Small (staged): refused at the seal.
  CHECK(ErrorCode([&] { c.Create(id, 10).seal(); }) == STORE_EEXISTS);
  const auto open = store::ObjectId::FromString("being-written");
  store::Writer w = c.Create(open, 100 * 1024);
  CHECK(ErrorCode([&] { c.Create(open, 100 * 1024); }) == STORE_EEXISTS);
  CHECK(ErrorCode([&] { c.Delete(open); }) == STORE_ENOTSEALED);
  w.abort();

  CHECK(ErrorCode([&] { c.Create(store::ObjectId::FromString("empty"), 0); }) == STORE_EINVAL);
  CHECK(ErrorCode([&] {
          store::Client::Connect(s.dir() + "/nobody-listens.sock");
        }) == STORE_ECONN);

  c.Delete(id);
  CheckEmpty(c);
}

TEST_CASE("Contains, Delete, List, Info, Pin and Stats") {
  test::TestStore s;
  REQUIRE(s.started());
  auto c = store::Client::Connect(s.socket());

  std::set<store::ObjectId> ids;
  for (int i = 0; i < 3; ++i) {
    auto id = store::ObjectId::FromString("obj-" + std::to_string(i));
    c.Put(id, std::string(100 * (i + 1), char('a' + i)));
    ids.insert(id);
  }
  for (const auto& id : ids) CHECK(c.Contains(id));

  std::vector<store_object_info> list = c.List();
  CHECK(list.size() == 3);
  std::set<store::ObjectId> listed;
  for (const auto& info : list) {
    listed.insert(store::ObjectId(info.id));
    CHECK(info.state == STORE_STATE_SEALED);
  }
  CHECK(listed == ids);

  const auto first = store::ObjectId::FromString("obj-0");
  store_object_info info = c.Info(first);
  CHECK(store::ObjectId(info.id) == first);
  CHECK(info.data_size == 100);
  CHECK(info.metadata_size == 0);
  CHECK((info.level & STORE_LEVEL_MEMORY) != 0);
  CHECK(info.pin_count == 0);
  CHECK(info.reader_count == 0);

  c.Pin(first);
  CHECK(c.Info(first).pin_count == 1);
  CHECK(c.Stats().pinned_count == 1);
  c.Unpin(first);
  CHECK(c.Info(first).pin_count == 0);
  CHECK(ErrorCode([&] { c.Unpin(first); }) == STORE_EMISUSE);

  store_stats st = c.Stats();
  CHECK(st.object_count == 3);
  CHECK(st.sealed_count == 3);
  CHECK(st.used_bytes >= 600);
  CHECK(st.used_bytes <= st.capacity_bytes);
  CHECK(st.client_count >= 1);

  c.Delete(first);
  CHECK_FALSE(c.Contains(first));
  CHECK(c.List().size() == 2);
  for (const auto& id : ids)
    if (id != first) c.Delete(id);
  CHECK(c.List().empty());
  CheckEmpty(c);
}

TEST_CASE("OpenMany with one missing id") {
  test::TestStore s;
  REQUIRE(s.started());
  auto c = store::Client::Connect(s.socket());
  const auto a = store::ObjectId::FromString("many-a");
  const auto b = store::ObjectId::FromString("many-b");
  const auto missing = store::ObjectId::FromString("many-missing");
  c.Put(a, "AAA");
  c.Put(b, "BB");

  CHECK(c.OpenMany({}, 0).empty());
  {
    auto readers = c.OpenMany({a, missing, b}, 0);
    REQUIRE(readers.size() == 3);
    REQUIRE(readers[0].has_value());
    CHECK_FALSE(readers[1].has_value());
    REQUIRE(readers[2].has_value());
    CHECK(readers[0]->id() == a);
    CHECK(Bytes(*readers[0]) == "AAA");
    CHECK(Bytes(*readers[2]) == "BB");
    CHECK(c.Info(a).reader_count == 1);

    // Deleted while open: gone from view, memory held until the reader closes.
    c.Delete(a);
    CHECK_FALSE(c.Contains(a));
    CHECK(Bytes(*readers[0]) == "AAA");
    CHECK(c.Stats().deleted_pending_count == 1);
  }
  {
    auto readers = c.OpenMany({missing, b}, 20);  // waits, then gives what it has
    REQUIRE(readers.size() == 2);
    CHECK_FALSE(readers[0].has_value());
    REQUIRE(readers[1].has_value());
    CHECK(Bytes(*readers[1]) == "BB");
  }
  c.Delete(b);
  CheckEmpty(c);
}

TEST_CASE("Open waits for another client's seal") {
  test::TestStore s;
  REQUIRE(s.started());
  auto c = store::Client::Connect(s.socket(), "writer");
  auto other = store::Client::Connect(s.socket(), "reader");
  const auto id = store::ObjectId::FromString("later");

  std::string got;
  int code = STORE_OK;
  std::thread t([&] {
    try {
      store::Reader r = other.Open(id, 10000);
      got = std::string(Bytes(r));
    } catch (const store::Error& e) {
      code = e.code();
    }
  });
  store::Writer w = c.Create(id, 5);
  w.write("ready");
  w.seal();
  t.join();
  CHECK(code == STORE_OK);
  CHECK(got == "ready");

  c.Delete(id);
  CheckEmpty(c);
}

TEST_CASE("Moving Clients, Readers and Writers") {
  test::TestStore s;
  REQUIRE(s.started());
  auto first = store::Client::Connect(s.socket());
  store::Client c = std::move(first);
  CHECK_FALSE(first);
  REQUIRE(c);

  const auto a = store::ObjectId::FromString("move-a");
  const auto b = store::ObjectId::FromString("move-b");

  store::Writer w1 = c.Create(a, 3);
  store::Writer w2 = std::move(w1);
  CHECK_FALSE(w1);
  REQUIRE(w2);
  CHECK(w1.size() == 0);
  w2.write("abc");

  // Move-assigning over a live Writer aborts the object it held.
  store::Writer w3 = c.Create(b, 8);
  w3 = std::move(w2);
  CHECK_FALSE(w2);
  CHECK(w3.tell() == 3);
  CHECK(ErrorCode([&] { c.Info(b); }) == STORE_ENOTFOUND);
  w3.seal();
  CHECK(c.Contains(a));

  std::vector<store::Writer> writers;
  writers.push_back(c.Create(b, 2));
  writers.push_back(store::Writer());
  writers.erase(writers.begin() + 1);
  writers[0].write("bb");
  writers[0].seal();

  {
    store::Reader r1 = c.Open(a, 0);
    store::Reader r2 = std::move(r1);
    CHECK_FALSE(r1);
    CHECK(r1.data() == nullptr);
    CHECK(Bytes(r2) == "abc");
    CHECK(c.Info(a).reader_count == 1);

    // Move-assigning over a live Reader closes the one it held.
    store::Reader r3 = c.Open(b, 0);
    r3 = std::move(r2);
    CHECK(Bytes(r3) == "abc");
    CHECK(c.Info(b).reader_count == 0);

    std::optional<store::Reader> opt = c.TryOpen(b, 0);
    REQUIRE(opt);
    store::Reader r4 = std::move(*opt);
    CHECK(Bytes(r4) == "bb");
    r4.close();
    CHECK_FALSE(r4);
    r4.close();  // closing twice is harmless
    CHECK(c.Info(b).reader_count == 0);
  }

  c.Delete(a);
  c.Delete(b);
  CheckEmpty(c);
}

// The memfd stand-in (host memory in place of device memory) lets the C++ layer's GPU calls run
// without a GPU; its "device pointers" are host pointers.
TEST_CASE("GPU objects through the C++ layer (memfd stand-in)") {
  test::TestStore s("64M", {"--gpu-memory", "8M", "--gpu-backend", "memfd-standin"});
  REQUIRE(s.started());
  auto c = store::Client::Connect(s.socket());
  const auto id = store::ObjectId::FromString("on-device");
  store::CreateOptions opts;
  opts.device = 0;
  opts.metadata = "shape=4";
  store::Writer w = c.Create(id, 4, opts);
  CHECK(w.data() == nullptr);
  int dev = -1;
  void* p = w.device_ptr(&dev);
  REQUIRE(p != nullptr);
  CHECK(dev == 0);
  std::memcpy(p, "gpu!", 4);  // a host pointer only because this is the stand-in
  w.seal();
  {
    store::Reader r = c.Open(id, 0);
    CHECK(r.device() == 0);
    CHECK(r.data() == nullptr);
    CHECK(r.metadata() == "shape=4");
    char buf[4];
    CHECK(r.read(buf, 4) == 4);
    CHECK(std::string_view(buf, 4) == "gpu!");
    CHECK(std::memcmp(r.device_ptr(), "gpu!", 4) == 0);
  }
  {
    c.Put(store::ObjectId::FromString("host"), std::string_view("h"));
    store::Reader h = c.Open(store::ObjectId::FromString("host"), 0);
    CHECK(h.device() == -1);
    CHECK(ErrorCode([&] { h.device_ptr(); }) == STORE_EINVAL);
  }
  c.Delete(id);
  c.Delete(store::ObjectId::FromString("host"));
  CheckEmpty(c);
}
