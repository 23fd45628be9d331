// test_isolation.cpp - what one client cannot do to the objects of another, against a real store
// server:
//   - sealed bytes are read-only in every client: a write through a reader's pointer (or
//     anywhere in the store's memory through it) faults in the writing process and changes
//     nothing;
//   - a read-only client maps the store's memory from a descriptor that cannot be made
//     writable, and the store refuses its changes with STORE_EPERM while it reads as any other.
#include <doctest.h>

#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "client_util.h"
#include "harness.h"
#include "storeclient.h"

namespace {

using test::ClientPtr;
using test::ReaderPtr;

std::vector<uint8_t> Pattern(uint8_t seed, size_t n) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; i++) v[i] = static_cast<uint8_t>(seed + i * 7);
  return v;
}

void Put(store_client* c, const store_object_id& id, const std::vector<uint8_t>& data) {
  int rc = store_put(c, &id, data.data(), data.size(), nullptr);
  INFO(store_last_error_message());
  REQUIRE(rc == STORE_OK);
}

bool Intact(store_client* c, const store_object_id& id, const std::vector<uint8_t>& data) {
  store_reader* r = nullptr;
  if (store_open_reader(c, &r, &id, 0) != STORE_OK) return false;
  bool same = store_reader_size(r) == data.size() &&
              std::memcmp(store_reader_data(r), data.data(), data.size()) == 0;
  store_reader_close(r);
  return same;
}

// Runs fn in a child process with a client of its own; returns the child's wait status.
template <class F>
int InChild(const std::string& socket, F fn) {
  pid_t pid = fork();
  if (pid == 0) {
    signal(SIGSEGV, SIG_DFL);  // the test runner's crash handler is not the child's business
    signal(SIGBUS, SIG_DFL);
    store_client* c = nullptr;
    if (store_client_connect(&c, socket.c_str(), nullptr) != STORE_OK) _exit(2);
    fn(c);
    _exit(0);  // not reached when fn faults
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return status;
}

bool KilledBySegv(int status) { return WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV; }

}  // namespace

TEST_CASE("a write through a reader's pointer faults in the writer and changes no stored byte") {
  test::TestStore s("64M");
  REQUIRE(s.started());
  ClientPtr c = test::Connect(s.socket(), "owner");
  // A small object (it shares its page with others), a large one, and the memory around them.
  const store_object_id small = test::IdOf("iso-small"), large = test::IdOf("iso-large");
  const std::vector<uint8_t> sdata = Pattern(1, 100), ldata = Pattern(2, 3 << 20);
  Put(c.get(), small, sdata);
  Put(c.get(), large, ldata);

  SUBCASE("into the object it read") {
    for (const auto& [id, size] : {std::pair{small, sdata.size()}, std::pair{large, ldata.size()}}) {
      int status = InChild(s.socket(), [&, id = id, size = size](store_client* cc) {
        store_reader* r = nullptr;
        if (store_open_reader(cc, &r, &id, 0) != STORE_OK) _exit(3);
        auto* p = const_cast<uint8_t*>(static_cast<const uint8_t*>(store_reader_data(r)));
        p[size / 2] ^= 0xff;  // faults
        _exit(4);
      });
      CHECK(KilledBySegv(status));
    }
  }
  SUBCASE("into other objects and free memory, through a reader's pointer") {
    int status = InChild(s.socket(), [&](store_client* cc) {
      store_reader* r = nullptr;
      if (store_open_reader(cc, &r, &small, 0) != STORE_OK) _exit(3);
      auto* p = const_cast<uint8_t*>(static_cast<const uint8_t*>(store_reader_data(r)));
      // Forward past the small object, into the large one and the free memory after it.
      for (size_t off = 128; off < (8u << 20); off += 4096) p[off] = 0x5a;
      _exit(4);
    });
    CHECK(KilledBySegv(status));
  }
  SUBCASE("a writer's pointer to a staged (small) object is private memory") {
    // The child fills a staged writer and dies before sealing: nothing reaches the store.
    const store_object_id id = test::IdOf("iso-staged");
    int status = InChild(s.socket(), [&](store_client* cc) {
      store_writer* w = nullptr;
      if (store_create(cc, &w, &id, 1000, nullptr) != STORE_OK) _exit(3);
      std::memset(store_writer_data(w), 0x77, 1000);
      raise(SIGKILL);
    });
    CHECK((WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL));
    store_object_info info{};
    CHECK(store_info(c.get(), &id, &info) == STORE_ENOTFOUND);
  }
  // The owner's objects are exactly as written, for every client.
  CHECK(Intact(c.get(), small, sdata));
  CHECK(Intact(c.get(), large, ldata));
  ClientPtr other = test::Connect(s.socket(), "other");
  CHECK(Intact(other.get(), small, sdata));
  CHECK(Intact(other.get(), large, ldata));
  store_stats st{};
  REQUIRE(store_stats_get(c.get(), &st) == STORE_OK);
  CHECK(st.object_count == 2);
  CHECK(test::WaitFor([&] {
    store_stats now{};
    return store_stats_get(c.get(), &now) == STORE_OK && now.client_count == 2 &&
           now.open_count == 0;
  }));
}

TEST_CASE("a writer still writes its own object in place, and readers see it once sealed") {
  test::TestStore s("64M");
  REQUIRE(s.started());
  ClientPtr c = test::Connect(s.socket(), "writer");
  for (size_t size : {size_t{10}, size_t{64 << 10}, size_t{(64 << 10) + 1}, size_t{5 << 20}}) {
    INFO("size ", size);
    const store_object_id id = test::IdOf("in-place-" + std::to_string(size));
    const std::vector<uint8_t> data = Pattern(static_cast<uint8_t>(size), size);
    store_writer* w = nullptr;
    REQUIRE(store_create(c.get(), &w, &id, size, nullptr) == STORE_OK);
    auto* p = static_cast<uint8_t*>(store_writer_data(w));
    REQUIRE(p != nullptr);
    std::memcpy(p, data.data(), size);
    REQUIRE(store_writer_seal(w) == STORE_OK);
    CHECK(Intact(c.get(), id, data));
    REQUIRE(store_delete(c.get(), &id) == STORE_OK);
  }
}

TEST_CASE("a read-only client reads as any other; its changes get STORE_EPERM and its mapping "
          "cannot be made writable") {
  test::TestStore s("64M");
  REQUIRE(s.started());
  ClientPtr owner = test::Connect(s.socket(), "owner");
  const store_object_id id = test::IdOf("ro-visible"), mine = test::IdOf("ro-mine");
  const std::vector<uint8_t> data = Pattern(9, 200000);
  Put(owner.get(), id, data);

  store_connect_options o = STORE_CONNECT_OPTIONS_INIT;
  o.client_name = "reader-only";
  o.read_only = 1;
  store_client* raw = nullptr;
  REQUIRE(store_client_connect(&raw, s.socket().c_str(), &o) == STORE_OK);
  ClientPtr ro(raw);

  // It reads, waits, lists and watches.
  CHECK(Intact(ro.get(), id, data));
  int present = 0;
  CHECK(store_contains(ro.get(), &id, &present) == STORE_OK);
  CHECK(present == 1);
  store_object_info* list = nullptr;
  size_t count = 0;
  REQUIRE(store_list(ro.get(), &list, &count) == STORE_OK);
  CHECK(count == 1);
  store_free(list);
  store_stats st{};
  CHECK(store_stats_get(ro.get(), &st) == STORE_OK);
  CHECK(store_prefetch(ro.get(), &id, 1) == STORE_OK);

  // Every change is refused, with a reason.
  auto refused = [](int rc) {
    INFO(store_last_error_message());
    CHECK(rc == STORE_EPERM);
    CHECK(std::string(store_last_error_message()).find("read-only") != std::string::npos);
  };
  store_writer* w = nullptr;
  refused(store_create(ro.get(), &w, &mine, 10, nullptr));
  CHECK(w == nullptr);
  refused(store_create(ro.get(), &w, &mine, 1 << 20, nullptr));
  refused(store_put(ro.get(), &mine, "x", 1, nullptr));
  const void* datas[1] = {"x"};
  const uint64_t sizes[1] = {1};
  refused(store_put_many(ro.get(), &mine, datas, sizes, 1, nullptr, nullptr));
  refused(store_delete(ro.get(), &id));
  refused(store_pin(ro.get(), &id));
  refused(store_unpin(ro.get(), &id));
  refused(store_set_importance(ro.get(), &id, 3));
  refused(store_evict(ro.get(), 1, nullptr));
  CHECK(Intact(owner.get(), id, data));
  store_object_info info{};
  CHECK(store_info(owner.get(), &mine, &info) == STORE_ENOTFOUND);

  // Its mapping of the store's memory was made from a read-only descriptor: not even an
  // mprotect can make it writable. (A normal client's read-only mapping could be: it holds a
  // writable descriptor; that is what read-only clients add.)
  store_reader* r = nullptr;
  REQUIRE(store_open_reader(ro.get(), &r, &id, 0) == STORE_OK);
  const long page = sysconf(_SC_PAGESIZE);
  const uintptr_t at = reinterpret_cast<uintptr_t>(store_reader_data(r));
  // The page the object starts in (inside the mapping); a mapping of huge pages takes only a
  // 2 MiB-aligned range (EINVAL otherwise), and such a mapping starts 2 MiB-aligned, so the
  // huge page around the object is inside it too.
  const uintptr_t huge = 2u << 20;
  int rc = mprotect(reinterpret_cast<void*>(at & ~static_cast<uintptr_t>(page - 1)),
                    static_cast<size_t>(page), PROT_READ | PROT_WRITE);
  if (rc != 0 && errno == EINVAL) {
    rc = mprotect(reinterpret_cast<void*>((at / huge) * huge), huge, PROT_READ | PROT_WRITE);
  }
  CHECK(rc == -1);
  CHECK(errno == EACCES);
  store_reader_close(r);
  ro.reset();
  REQUIRE(store_delete(owner.get(), &id) == STORE_OK);
}
