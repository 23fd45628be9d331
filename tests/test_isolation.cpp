// test_isolation.cpp - what one client cannot do to the objects of another, against a real store
// server:
//   - sealed bytes are read-only in every client: a write through a reader's pointer (or
//     anywhere in the store's memory through it) faults in the writing process and changes
//     nothing;
//   - a read-only client maps the store's memory from a descriptor that cannot be made
//     writable, and the store refuses its changes with STORE_EPERM while it reads as any other;
//   - with the write window (STORE_CLIENT_WRITE_WINDOW=1) a writer's process can write only the
//     pages of the objects it is writing, until their seal or abort: a write past its object's
//     end, after the seal or abort, or after the client is freed faults and changes nothing;
//     on a store on huge pages (the hugepages suite) the window is refused, with the reason.
#include <doctest.h>

#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
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

// STORE_CLIENT_WRITE_WINDOW=1 in the environment while it lives: the clients connected then
// (children's too) have the write window.
struct WriteWindowOn {
  WriteWindowOn() { setenv("STORE_CLIENT_WRITE_WINDOW", "1", 1); }
  ~WriteWindowOn() { unsetenv("STORE_CLIENT_WRITE_WINDOW"); }
  WriteWindowOn(const WriteWindowOn&) = delete;
  WriteWindowOn& operator=(const WriteWindowOn&) = delete;
};

// Where this process maps the mapping of the store's memory that holds p: the address of the
// region's byte 0 in it (the start of p's mapping less its file offset, from /proc/self/maps);
// 0 if p is in no mapping of it.
uintptr_t MappingBase(const void* p) {
  FILE* f = std::fopen("/proc/self/maps", "r");
  if (!f) return 0;
  const auto a = reinterpret_cast<uintptr_t>(p);
  char line[512];
  uintptr_t base = 0;
  while (std::fgets(line, sizeof line, f)) {
    unsigned long lo = 0, hi = 0, off = 0;
    if (std::sscanf(line, "%lx-%lx %*s %lx", &lo, &hi, &off) != 3) continue;
    if (a >= lo && a < hi && std::strstr(line, "memfd:store")) {
      base = lo - off;
      break;
    }
  }
  std::fclose(f);
  return base;
}

// Whether the store's memory is on reserved huge pages (hugetlbfs) in this process, which maps
// it through c: the kernel page size of its mapping in /proc/self/smaps.
bool RegionOnHugetlbfs(store_client* c, const store_object_id& id) {
  store_reader* r = nullptr;
  REQUIRE(store_open_reader(c, &r, &id, 0) == STORE_OK);
  const auto at = reinterpret_cast<uintptr_t>(store_reader_data(r));
  FILE* f = std::fopen("/proc/self/smaps", "r");
  REQUIRE(f != nullptr);
  char line[512];
  bool in = false, huge = false;
  while (std::fgets(line, sizeof line, f)) {
    unsigned long lo = 0, hi = 0;
    if (std::sscanf(line, "%lx-%lx ", &lo, &hi) == 2) {  // a mapping's header
      in = at >= lo && at < hi;
      continue;
    }
    long kb = 0;
    if (in && std::sscanf(line, "KernelPageSize: %ld kB", &kb) == 1) huge = kb > 4;
  }
  std::fclose(f);
  store_reader_close(r);
  return huge;
}

// A client with the write window, or nullptr where the store's memory is on huge pages: the
// window is refused there (checked: STORE_ENOTSUP and a message that says why and what to do).
// probe is an object in the store, to find out which it is.
ClientPtr WindowClient(const std::string& socket, store_client* other,
                       const store_object_id& probe) {
  const bool huge = RegionOnHugetlbfs(other, probe);
  WriteWindowOn on;
  store_client* c = nullptr;
  const int rc = store_client_connect(&c, socket.c_str(), nullptr);
  const std::string why = store_last_error_message();
  INFO(why);
  if (huge) {
    CHECK(rc == STORE_ENOTSUP);
    CHECK(c == nullptr);
    CHECK(why.find("huge pages") != std::string::npos);
    CHECK(why.find("STORE_CLIENT_WRITE_WINDOW") != std::string::npos);
    MESSAGE("the store is on huge pages: the write window is refused there");
    return nullptr;
  }
  REQUIRE(rc == STORE_OK);
  return ClientPtr(c);
}

constexpr size_t kPage = 4096;
size_t PageRound(size_t n) { return (n + kPage - 1) / kPage * kPage; }

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
    store_object_info info = STORE_OBJECT_INFO_INIT;
    CHECK(store_info(c.get(), &id, &info) == STORE_ENOTFOUND);
  }
  // The owner's objects are exactly as written, for every client.
  CHECK(Intact(c.get(), small, sdata));
  CHECK(Intact(c.get(), large, ldata));
  ClientPtr other = test::Connect(s.socket(), "other");
  CHECK(Intact(other.get(), small, sdata));
  CHECK(Intact(other.get(), large, ldata));
  store_stats st = STORE_STATS_INIT;
  REQUIRE(store_stats_get(c.get(), &st) == STORE_OK);
  CHECK(st.object_count == 2);
  CHECK(test::WaitFor([&] {
    store_stats now = STORE_STATS_INIT;
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
  REQUIRE(store_list(ro.get(), &list, sizeof *list, &count) == STORE_OK);
  CHECK(count == 1);
  store_free(list);
  store_stats st = STORE_STATS_INIT;
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
  store_object_info info = STORE_OBJECT_INFO_INIT;
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

TEST_CASE("with the write window a writer writes its own object's pages only, and only until "
          "its seal or abort") {
  test::TestStore s("64M", {"--no-hugepages"});
  REQUIRE(s.started());
  ClientPtr owner = test::Connect(s.socket(), "owner");
  const store_object_id victim = test::IdOf("window-victim"), hole = test::IdOf("window-hole");
  const store_object_id mine = test::IdOf("window-mine");
  const std::vector<uint8_t> vdata = Pattern(3, 1 << 20);
  {
    Put(owner.get(), victim, vdata);
    ClientPtr probe = WindowClient(s.socket(), owner.get(), victim);
    REQUIRE(store_delete(owner.get(), &victim) == STORE_OK);
    REQUIRE(probe != nullptr);
  }
  WriteWindowOn on;
  // Runs check(size) in a child for writers of these sizes: below 1 MiB (pages fault in as
  // they are written) and above (mapped when the window opens), neither a whole number of
  // pages. Each time the writer's object lands where `hole` was (the store takes the smallest
  // free run that fits), right in front of the sealed victim, so its window ends where the
  // victim starts. The child's status goes to done(size, status).
  auto each_size = [&](auto check, auto done) {
    for (const size_t size : {size_t{(256 << 10) + 100}, size_t{(3 << 20) + 100}}) {
      INFO("a writer of ", size, " bytes");
      Put(owner.get(), hole, std::vector<uint8_t>(PageRound(size), 1));
      Put(owner.get(), victim, vdata);
      REQUIRE(store_delete(owner.get(), &hole) == STORE_OK);
      const std::vector<uint8_t> mdata = Pattern(4, size);
      int status = InChild(s.socket(), [&](store_client* cc) {
        store_writer* w = nullptr;
        if (store_create(cc, &w, &mine, size, nullptr) != STORE_OK) _exit(3);
        auto* p = static_cast<uint8_t*>(store_writer_data(w));
        std::memcpy(p, mdata.data(), size);  // every byte of its own object
        check(cc, w, p, size);
        _exit(4);  // not reached: check faults
      });
      CHECK(KilledBySegv(status));
      done(size, mdata);
      CHECK(Intact(owner.get(), victim, vdata));
      store_object_info info = STORE_OBJECT_INFO_INIT;
      if (store_info(owner.get(), &mine, &info) == STORE_OK) {
        REQUIRE(store_delete(owner.get(), &mine) == STORE_OK);
      }
      REQUIRE(store_delete(owner.get(), &victim) == STORE_OK);
    }
  };
  auto aborted = [&](size_t, const std::vector<uint8_t>&) {
    // The writer was aborted, or its process died or let go of its client with it open.
    store_object_info info = STORE_OBJECT_INFO_INIT;
    CHECK(test::WaitFor([&] { return store_info(owner.get(), &mine, &info) == STORE_ENOTFOUND; }));
  };

  SUBCASE("inside: works; past the end, into the next sealed object: faults") {
    each_size(
        [&](store_client* cc, store_writer*, uint8_t* p, size_t size) {
          // The victim as this process maps it writable: there, or the test cannot tell.
          store_reader* r = nullptr;
          if (store_open_reader(cc, &r, &victim, 0) != STORE_OK) _exit(3);
          const void* rdata = store_reader_data(r);
          const uintptr_t victim_w = MappingBase(p) + (reinterpret_cast<uintptr_t>(rdata) -
                                                       MappingBase(rdata));
          if (victim_w != reinterpret_cast<uintptr_t>(p) + PageRound(size)) _exit(5);
          for (size_t off = size; off < size + (2u << 20); off++) p[off] = 0x5a;  // faults
        },
        aborted);
  }
  SUBCASE("after the seal: its pages are not writable any more") {
    each_size(
        [&](store_client*, store_writer* w, uint8_t* p, size_t size) {
          if (store_writer_seal(w) != STORE_OK) _exit(3);
          p[size / 2] ^= 0xff;  // faults
        },
        [&](size_t, const std::vector<uint8_t>& mdata) { CHECK(Intact(owner.get(), mine, mdata)); });
  }
  SUBCASE("after an abort: likewise") {
    each_size(
        [&](store_client*, store_writer* w, uint8_t* p, size_t) {
          if (store_writer_abort(w) != STORE_OK) _exit(3);
          p[0] = 0x11;  // faults
        },
        aborted);
  }
  SUBCASE("after store_client_free: the writer's pages close with the session") {
    each_size(
        [&](store_client* cc, store_writer*, uint8_t* p, size_t) {
          store_client_free(cc);
          p[1] = 0x22;  // faults
        },
        aborted);
  }
  CHECK(test::WaitFor([&] {
    store_stats now = STORE_STATS_INIT;
    return store_stats_get(owner.get(), &now) == STORE_OK && now.object_count == 0 &&
           now.client_count == 1;
  }));
}

TEST_CASE("with the write window several writers of one process write at once, each its own "
          "object; staged writers and puts work as before") {
  test::TestStore s("64M", {"--no-hugepages"});
  REQUIRE(s.started());
  ClientPtr owner = test::Connect(s.socket(), "owner");
  const store_object_id probe_id = test::IdOf("window-probe");
  Put(owner.get(), probe_id, Pattern(5, 1000));
  ClientPtr c = WindowClient(s.socket(), owner.get(), probe_id);
  REQUIRE(c != nullptr);
  // Four threads, each creating, writing and sealing objects of their own size in turn, so
  // that windows open and close while others are open.
  constexpr int kThreads = 4, kRounds = 8;
  std::vector<std::thread> threads;
  std::vector<int> failures(kThreads, 0);
  for (int t = 0; t < kThreads; t++) {
    threads.emplace_back([&, t] {
      const size_t size = (t % 2 ? (1u << 20) + 4096 * t + 7 : (100u << 10) + t);
      for (int k = 0; k < kRounds; k++) {
        const store_object_id id = test::IdOf("window-t" + std::to_string(t) + "-" + std::to_string(k));
        const std::vector<uint8_t> data = Pattern(static_cast<uint8_t>(t * 16 + k), size);
        store_writer* w = nullptr;
        if (store_create(c.get(), &w, &id, size, nullptr) != STORE_OK) {
          failures[t]++;
          continue;
        }
        // Half in place, half through store_writer_write, a chunk at a time.
        auto* p = static_cast<uint8_t*>(store_writer_data(w));
        for (size_t off = 0; off < size; off += 8192) {
          const size_t n = std::min<size_t>(8192, size - off);
          if (k % 2) {
            std::memcpy(p + off, data.data() + off, n);
          } else if (store_writer_write(w, data.data() + off, n) != STORE_OK) {
            failures[t]++;
          }
          std::this_thread::yield();
        }
        if (store_writer_seal(w) != STORE_OK) failures[t]++;
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < kThreads; t++) CHECK(failures[t] == 0);
  for (int t = 0; t < kThreads; t++) {
    const size_t size = (t % 2 ? (1u << 20) + 4096 * t + 7 : (100u << 10) + t);
    for (int k = 0; k < kRounds; k++) {
      const store_object_id id = test::IdOf("window-t" + std::to_string(t) + "-" + std::to_string(k));
      CHECK(Intact(owner.get(), id, Pattern(static_cast<uint8_t>(t * 16 + k), size)));
      CHECK(store_delete(c.get(), &id) == STORE_OK);
    }
  }
  // Small objects (staged: private memory, sent at the seal) and puts of every kind.
  const store_object_id small = test::IdOf("window-small"), big = test::IdOf("window-big");
  store_writer* w = nullptr;
  REQUIRE(store_create(c.get(), &w, &small, 1000, nullptr) == STORE_OK);
  std::memset(store_writer_data(w), 0x33, 1000);
  REQUIRE(store_writer_seal(w) == STORE_OK);
  CHECK(Intact(owner.get(), small, std::vector<uint8_t>(1000, 0x33)));
  const std::vector<uint8_t> bdata = Pattern(6, 5 << 20);
  Put(c.get(), big, bdata);
  CHECK(Intact(owner.get(), big, bdata));
  // A writer aborted, then its range written by the next object.
  REQUIRE(store_create(c.get(), &w, &small, 1 << 20, nullptr) == STORE_EEXISTS);
  const store_object_id again = test::IdOf("window-again");
  REQUIRE(store_create(c.get(), &w, &again, 1 << 20, nullptr) == STORE_OK);
  CHECK(store_writer_abort(w) == STORE_OK);
  Put(c.get(), again, Pattern(7, 1 << 20));
  CHECK(Intact(owner.get(), again, Pattern(7, 1 << 20)));
  for (const auto& id : {small, big, again, probe_id}) CHECK(store_delete(owner.get(), &id) == STORE_OK);
}

TEST_CASE("without the write window a writer's mapping is writable beyond its object, as before") {
  test::TestStore s("64M");
  REQUIRE(s.started());
  unsetenv("STORE_CLIENT_WRITE_WINDOW");
  ClientPtr owner = test::Connect(s.socket(), "owner");
  const store_object_id mine = test::IdOf("nowindow-mine");
  // Free memory follows the object (a fresh store fills from the bottom): a write there is
  // not caught, and after the seal the object's own pages are still writable in this process.
  int status = InChild(s.socket(), [&](store_client* cc) {
    store_writer* w = nullptr;
    if (store_create(cc, &w, &mine, 300000, nullptr) != STORE_OK) _exit(3);
    auto* p = static_cast<uint8_t*>(store_writer_data(w));
    std::memset(p, 0x44, 300000);
    p[PageRound(300000) + 100] = 1;
    if (store_writer_seal(w) != STORE_OK) _exit(3);
    volatile uint8_t* q = p;
    q[0] = q[0];
    _exit(0);
  });
  CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 0));
  CHECK(Intact(owner.get(), mine, std::vector<uint8_t>(300000, 0x44)));
  CHECK(store_delete(owner.get(), &mine) == STORE_OK);
}

TEST_CASE("the write window is refused, with the reason, where the store is on huge pages") {
  // The store takes huge pages when enough are free (the hugepages suite makes sure they are),
  // else normal pages, where the window opens.
  test::TestStore s("64M");
  REQUIRE(s.started());
  ClientPtr owner = test::Connect(s.socket(), "owner");
  const store_object_id id = test::IdOf("window-huge");
  Put(owner.get(), id, Pattern(8, 1000));
  ClientPtr c = WindowClient(s.socket(), owner.get(), id);
  if (c) MESSAGE("the store is on normal pages here: the window opened");
  // A read-only client has no writable mapping: the window is not its concern.
  WriteWindowOn on;
  store_connect_options o = STORE_CONNECT_OPTIONS_INIT;
  o.read_only = 1;
  store_client* raw = nullptr;
  REQUIRE(store_client_connect(&raw, s.socket().c_str(), &o) == STORE_OK);
  ClientPtr ro(raw);
  CHECK(Intact(ro.get(), id, Pattern(8, 1000)));
  CHECK(store_delete(owner.get(), &id) == STORE_OK);
}
