// test_integrity_client.cpp - libstoreclient keeps its sessions whole, against a real store:
// a forked child cannot end its parent's session through an inherited client; the client
// refuses a server of another user and reports a server's refusal as such; an allocation that
// fails in the middle of a call leaves no reply to land in freed memory and no thread waiting
// forever; and a socket path that does not work says why.
//
// Work that could crash or hang the process runs in a forked child with a deadline; such a
// child reports its failed checks on stderr and exits with their count.
#include <doctest.h>

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <malloc.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include "client_util.h"
#include "harness.h"
#include "storeclient.h"

// ---- allocation failures on demand --------------------------------------------------------------
// This binary's operator new (the library's allocations come here too): while armed on a thread,
// the allocation numbered fail_at (counting from 0) on that thread throws std::bad_alloc, and
// with fail_after also every one after it, as a real shortage would.
namespace alloc_fault {
thread_local bool armed = false;
thread_local long seen = 0;
thread_local long fail_at = 0;
thread_local bool fail_after = false;

void Arm(long at, bool after) {
  seen = 0;
  fail_at = at;
  fail_after = after;
  armed = true;
}
// Returns how many allocations the armed thread made.
long Disarm() {
  armed = false;
  return seen;
}
}  // namespace alloc_fault

// GCC takes these for the built-in operators and warns that free() does not match new.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void* operator new(std::size_t n) {
  if (alloc_fault::armed) {
    long i = alloc_fault::seen++;
    if (i == alloc_fault::fail_at || (alloc_fault::fail_after && i > alloc_fault::fail_at)) {
      throw std::bad_alloc();
    }
  }
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) { return operator new(n); }
// The nothrow forms as the standard library defines them (the library allocates with them):
// replaced here too, so that they take their memory from the operator new above, and are freed
// by the operator delete below, also where a sanitizer runtime replaces the library's own.
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  try {
    return operator new(n);
  } catch (...) {
    return nullptr;
  }
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
  return operator new(n, std::nothrow);
}
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
#pragma GCC diagnostic pop

namespace {

using test::ClientPtr;
using test::IdOf;

constexpr uint32_t kNobody = 65534;

// ---- checks in a forked child -------------------------------------------------------------------
int g_child_failures = 0;

#define CHILD_EXPECT(cond)                                                                \
  do {                                                                                    \
    if (!(cond)) {                                                                        \
      std::fprintf(stderr, "child %d: %s:%d: failed: %s (last error: %s)\n",              \
                   static_cast<int>(getpid()), __FILE__, __LINE__, #cond,                 \
                   store_last_error_message());                                           \
      g_child_failures++;                                                                 \
    }                                                                                     \
  } while (0)

// Runs fn in a forked child, which exits with the number of failed CHILD_EXPECTs (or through
// fn itself). Returns the wait status, -1 if it had to be killed after timeout.
template <class F>
int RunChild(F fn, std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
  std::fflush(stdout);
  std::fflush(stderr);
  pid_t pid = fork();
  if (pid == 0) {
    g_child_failures = 0;
    try {
      fn();
    } catch (...) {
      // A REQUIRE in the child (or anything else thrown) must not run the tests on here.
      std::fprintf(stderr, "child %d: exception\n", static_cast<int>(getpid()));
      g_child_failures++;
    }
    std::fflush(stderr);
    _exit(g_child_failures > 255 ? 255 : g_child_failures);
  }
  REQUIRE(pid > 0);
  return test::WaitExit(pid, timeout);
}

std::string Describe(int status) {
  if (status == -1) return "killed after its deadline (it hung)";
  if (WIFEXITED(status)) return "exited with " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return "died of signal " + std::to_string(WTERMSIG(status));
  return "status " + std::to_string(status);
}

bool Contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

// Drops root for good in a forked child: the groups, then the group, then the user.
bool BecomeNobody() {
  return setgroups(0, nullptr) == 0 && setgid(kNobody) == 0 && setuid(kNobody) == 0;
}

// The call failed because the client was inherited across fork().
bool Inert(int rc) {
  return rc == STORE_EMISUSE && Contains(store_last_error_message(), "parent process") &&
         Contains(store_last_error_message(), "fork");
}

store_stats Stats(store_client* c) {
  store_stats st = STORE_STATS_INIT;
  REQUIRE(store_stats_get(c, &st) == STORE_OK);
  return st;
}

uint32_t ReaderCount(store_client* c, const store_object_id& id) {
  store_object_info info = STORE_OBJECT_INFO_INIT;
  REQUIRE(store_info(c, &id, &info) == STORE_OK);
  return info.reader_count;
}

// The object's bytes, read through a reader of c; "" if it cannot be opened.
std::string ReadAll(store_client* c, const store_object_id& id) {
  store_reader* r = nullptr;
  if (store_open_reader(c, &r, &id, 0) != STORE_OK) return "";
  std::string out(static_cast<size_t>(store_reader_size(r)), '\0');
  size_t n = 0;
  int rc = store_reader_read(r, out.data(), out.size(), &n);
  store_reader_close(r);
  if (rc != STORE_OK || n != out.size()) return "";
  return out;
}

// What a parent checks once its child is gone: its session goes on as before. The parent's
// reader of id is still open, and its client is the only one connected.
void ParentSessionIsWhole(store_client* c, const store_object_id& id, const std::string& data) {
  // The child's own client may still be on its way out: wait for the server to drop it.
  CHECK(test::WaitFor([&] { return Stats(c).client_count == 1; }));
  CHECK(test::WaitFor([&] { return ReaderCount(c, id) == 1; }));
  CHECK(ReadAll(c, id) == data);
  const store_object_id more = IdOf("integrity-after-fork");
  CHECK(store_put(c, &more, "after", 5, nullptr) == STORE_OK);
  CHECK(ReadAll(c, more) == "after");
  CHECK(store_delete(c, &more) == STORE_OK);
  store_client_info* list = nullptr;
  size_t n = 0;
  REQUIRE(store_list_clients(c, &list, sizeof *list, &n) == STORE_OK);
  CHECK(n == 1);
  CHECK((n == 1 && list[0].is_self == 1 && list[0].readers_held == 1));
  store_free(list);
}

// In a child: a client of its own works.
void ChildOwnClientWorks(const std::string& socket, const store_object_id& id,
                         const std::string& data) {
  store_client* own = nullptr;
  CHILD_EXPECT(store_client_connect(&own, socket.c_str(), nullptr) == STORE_OK);
  if (!own) return;
  store_reader* r = nullptr;
  CHILD_EXPECT(store_open_reader(own, &r, &id, 0) == STORE_OK);
  if (r) {
    CHILD_EXPECT(store_reader_size(r) == data.size());
    CHILD_EXPECT(std::memcmp(store_reader_data(r), data.data(), data.size()) == 0);
    store_reader_close(r);
  }
  store_client_free(own);
}

// ---- fork ---------------------------------------------------------------------------------------

// Under AddressSanitizer the fork cases are not run. A child forked while another thread of the
// parent (the connection's release thread) holds the sanitizer allocator's lock inherits it
// held, and the child's first allocation on another thread then waits forever: GCC 12's libasan
// takes that lock around fork in no handler (later runtimes do). Seen in 7 of 30 runs of these
// cases; the normal build runs them.
#ifdef __SANITIZE_ADDRESS__
#define SKIP_FORK_UNDER_ASAN()                                                              \
  do {                                                                                      \
    MESSAGE("not run under AddressSanitizer: its allocator's lock may be inherited held"); \
    return;                                                                                 \
  } while (0)
#else
#define SKIP_FORK_UNDER_ASAN() \
  do {                         \
  } while (0)
#endif

TEST_CASE("fork: an inherited client is inert in the child, and the parent's session goes on") {
  SKIP_FORK_UNDER_ASAN();
  test::TestStore s;
  REQUIRE(s.started());
  ClientPtr parent = test::Connect(s.socket(), "parent");
  store_client* c = parent.get();
  const store_object_id id = IdOf("integrity-fork-a");
  const std::string data(3000, 'a');
  REQUIRE(store_put(c, &id, data.data(), data.size(), nullptr) == STORE_OK);
  store_reader* r = nullptr;
  REQUIRE(store_open_reader(c, &r, &id, 0) == STORE_OK);
  // A second reader, closed before the fork: its release may still be queued (and the
  // connection's release thread is running).
  store_reader* closed = nullptr;
  REQUIRE(store_open_reader(c, &closed, &id, 0) == STORE_OK);
  store_reader_close(closed);
  // Two objects being written, which the child tries to seal and to abort.
  const store_object_id wid1 = IdOf("integrity-fork-w1"), wid2 = IdOf("integrity-fork-w2");
  store_writer* w1 = nullptr;
  store_writer* w2 = nullptr;
  REQUIRE(store_create(c, &w1, &wid1, 4, nullptr) == STORE_OK);
  REQUIRE(store_create(c, &w2, &wid2, 4, nullptr) == STORE_OK);

  const int status = RunChild([&] {
    const store_object_id other = IdOf("integrity-fork-child");
    CHILD_EXPECT(Inert(store_put(c, &other, "x", 1, nullptr)));
    const void* datas[1] = {"x"};
    const uint64_t sizes[1] = {1};
    size_t done = 7;
    CHILD_EXPECT(Inert(store_put_many(c, &other, datas, sizes, 1, nullptr, &done)));
    CHILD_EXPECT(done == 0);
    store_reader* r2 = reinterpret_cast<store_reader*>(0x1);
    CHILD_EXPECT(Inert(store_open_reader(c, &r2, &id, 0)));
    CHILD_EXPECT(r2 == nullptr);
    store_reader* many[1] = {nullptr};
    CHILD_EXPECT(Inert(store_open_readers(c, many, &id, 1, 0)));
    store_writer* w = nullptr;
    CHILD_EXPECT(Inert(store_create(c, &w, &other, 10, nullptr)));
    store_stats st = STORE_STATS_INIT;
    CHILD_EXPECT(Inert(store_stats_get(c, &st)));
    int present = 1;
    CHILD_EXPECT(Inert(store_contains(c, &id, &present)));
    store_object_info info = STORE_OBJECT_INFO_INIT;
    CHILD_EXPECT(Inert(store_info(c, &id, &info)));
    store_object_info* list = nullptr;
    size_t count = 0;
    CHILD_EXPECT(Inert(store_list(c, &list, sizeof *list, &count)));
    store_client_info* clients = nullptr;
    CHILD_EXPECT(Inert(store_list_clients(c, &clients, sizeof *clients, &count)));
    CHILD_EXPECT(Inert(store_pin(c, &id)));
    CHILD_EXPECT(Inert(store_delete(c, &id)));
    CHILD_EXPECT(Inert(store_set_importance(c, &id, 5)));
    CHILD_EXPECT(Inert(store_prefetch(c, &id, 1)));
    // The inherited reader: no data, no reads, no seeks.
    char buf[16];
    size_t nread = 9;
    CHILD_EXPECT(Inert(store_reader_read(r, buf, sizeof buf, &nread)));
    CHILD_EXPECT(nread == 0);
    CHILD_EXPECT(Inert(store_reader_seek(r, 0, SEEK_SET, nullptr)));
    CHILD_EXPECT(store_reader_data(r) == nullptr);
    CHILD_EXPECT(store_reader_size(r) == data.size());
    // The inherited writers: neither written, sealed nor aborted (each handle is freed).
    CHILD_EXPECT(Inert(store_writer_write(w1, "kid!", 4)));
    CHILD_EXPECT(store_writer_data(w1) == nullptr);
    CHILD_EXPECT(Inert(store_writer_seal(w1)));
    CHILD_EXPECT(Inert(store_writer_abort(w2)));
    // Closing and freeing what was inherited sends nothing.
    store_reader_close(r);
    store_client_free(c);
    ChildOwnClientWorks(s.socket(), id, data);
  });
  INFO("child: " << Describe(status));
  CHECK(test::ExitedCleanly(status));

  ParentSessionIsWhole(c, id, data);
  // The child neither sealed nor aborted the parent's objects: the parent does.
  std::memcpy(store_writer_data(w1), "one!", 4);
  std::memcpy(store_writer_data(w2), "two!", 4);
  CHECK(store_writer_seal(w1) == STORE_OK);
  CHECK(store_writer_seal(w2) == STORE_OK);
  CHECK(ReadAll(c, wid1) == "one!");
  CHECK(ReadAll(c, wid2) == "two!");
  store_reader_close(r);
  CHECK(store_delete(c, &id) == STORE_OK);
  CHECK(store_delete(c, &wid1) == STORE_OK);
  CHECK(store_delete(c, &wid2) == STORE_OK);
}

TEST_CASE("fork: a child that frees the inherited client and exits through exit() ends nothing") {
  SKIP_FORK_UNDER_ASAN();
  test::TestStore s;
  REQUIRE(s.started());
  ClientPtr parent = test::Connect(s.socket(), "parent");
  store_client* c = parent.get();
  const store_object_id id = IdOf("integrity-fork-b");
  const std::string data(5000, 'b');
  REQUIRE(store_put(c, &id, data.data(), data.size(), nullptr) == STORE_OK);
  store_reader* r = nullptr;
  REQUIRE(store_open_reader(c, &r, &id, 0) == STORE_OK);
  store_reader* closed = nullptr;
  REQUIRE(store_open_reader(c, &closed, &id, 0) == STORE_OK);
  store_reader_close(closed);

  SUBCASE("freed, then exit()") {
    const int status = RunChild([&] {
      store_reader_close(r);
      store_client_free(c);
      std::exit(0);
    }, std::chrono::seconds(10));
    INFO("child: " << Describe(status));
    CHECK(test::ExitedCleanly(status));
  }
  SUBCASE("the client freed first, its reader after, then exit()") {
    const int status = RunChild([&] {
      store_client_free(c);
      store_reader_close(r);
      std::exit(0);
    }, std::chrono::seconds(10));
    INFO("child: " << Describe(status));
    CHECK(test::ExitedCleanly(status));
  }
  SUBCASE("exit() with everything still open") {
    const int status = RunChild([&] { std::exit(0); }, std::chrono::seconds(10));
    INFO("child: " << Describe(status));
    CHECK(test::ExitedCleanly(status));
  }
  ParentSessionIsWhole(c, id, data);
  store_reader_close(r);
  CHECK(store_delete(c, &id) == STORE_OK);
}

TEST_CASE("fork: a child forked while other threads wait in calls frees the client at once") {
  SKIP_FORK_UNDER_ASAN();
  test::TestStore s;
  REQUIRE(s.started());
  ClientPtr parent = test::Connect(s.socket(), "parent");
  ClientPtr observer = test::Connect(s.socket(), "observer");
  store_client* c = parent.get();
  const store_object_id id = IdOf("integrity-fork-c");
  const std::string data(100, 'c');
  REQUIRE(store_put(c, &id, data.data(), data.size(), nullptr) == STORE_OK);
  store_reader* r = nullptr;
  REQUIRE(store_open_reader(c, &r, &id, 0) == STORE_OK);
  store_reader* closed = nullptr;
  REQUIRE(store_open_reader(c, &closed, &id, 0) == STORE_OK);
  store_reader_close(closed);  // starts the connection's release thread
  // Two threads wait for objects nobody has put yet: one reads the socket, the other waits
  // for it (on the connection's condition variable).
  const store_object_id later1 = IdOf("integrity-fork-later1");
  const store_object_id later2 = IdOf("integrity-fork-later2");
  std::atomic<int> rc1{1}, rc2{1};
  std::string got1, got2;
  auto waiter = [c](const store_object_id* want, std::atomic<int>* rc, std::string* got) {
    store_reader* wr = nullptr;
    int x = store_open_reader(c, &wr, want, -1);
    if (x == STORE_OK) {
      got->assign(static_cast<const char*>(store_reader_data(wr)), store_reader_size(wr));
      store_reader_close(wr);
    }
    rc->store(x);
  };
  std::thread t1(waiter, &later1, &rc1, &got1);
  std::thread t2(waiter, &later2, &rc2, &got2);
  REQUIRE(test::WaitFor([&] { return Stats(observer.get()).waiting_gets == 2; }));

  const int status = RunChild([&] {
    store_stats st = STORE_STATS_INIT;
    CHILD_EXPECT(Inert(store_stats_get(c, &st)));
    store_reader_close(r);
    store_client_free(c);
    // The objects the parent's threads wait for come from the child's own client.
    store_client* own = nullptr;
    CHILD_EXPECT(store_client_connect(&own, s.socket().c_str(), nullptr) == STORE_OK);
    if (!own) return;
    CHILD_EXPECT(store_put(own, &later1, "first", 5, nullptr) == STORE_OK);
    CHILD_EXPECT(store_put(own, &later2, "second", 6, nullptr) == STORE_OK);
    store_client_free(own);
  }, std::chrono::seconds(10));
  INFO("child: " << Describe(status));
  CHECK(test::ExitedCleanly(status));
  if (!test::ExitedCleanly(status)) {
    // Release the waiting threads so that the test can end.
    store_put(observer.get(), &later1, "first", 5, nullptr);
    store_put(observer.get(), &later2, "second", 6, nullptr);
  }
  t1.join();
  t2.join();
  CHECK(rc1.load() == STORE_OK);
  CHECK(rc2.load() == STORE_OK);
  CHECK(got1 == "first");
  CHECK(got2 == "second");
  observer.reset();
  ParentSessionIsWhole(c, id, data);
  store_reader_close(r);
  CHECK(store_delete(c, &id) == STORE_OK);
  CHECK(store_delete(c, &later1) == STORE_OK);
  CHECK(store_delete(c, &later2) == STORE_OK);
}

// ---- the server's user --------------------------------------------------------------------------

TEST_CASE("connect: a server run by another user (not root) is refused with STORE_EPERM") {
  if (geteuid() != 0) {
    MESSAGE("needs root to listen as another user: skipped");
    return;
  }
  test::TempDir dir;
  REQUIRE(chmod(dir.path.c_str(), 0777) == 0);
  const std::string sock = dir / "squatted.sock";
  int ready[2], hold[2];
  REQUIRE(pipe2(ready, O_CLOEXEC) == 0);
  REQUIRE(pipe2(hold, O_CLOEXEC) == 0);
  std::fflush(stdout);
  std::fflush(stderr);
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    // Another user takes the socket path, accepts one connection and closes it unanswered.
    close(ready[0]);
    close(hold[1]);
    if (!BecomeNobody()) _exit(2);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, sock.c_str(), sizeof a.sun_path - 1);
    if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
        chmod(sock.c_str(), 0666) != 0 || listen(fd, 4) != 0) {
      _exit(3);
    }
    if (write(ready[1], "r", 1) != 1) _exit(4);
    pollfd p[2] = {{fd, POLLIN, 0}, {hold[0], POLLIN, 0}};
    if (poll(p, 2, 10000) > 0 && (p[0].revents & POLLIN)) {
      int conn = accept(fd, nullptr, nullptr);
      if (conn >= 0) close(conn);
    }
    char ch;
    while (read(hold[0], &ch, 1) > 0) {
    }
    _exit(0);
  }
  close(ready[1]);
  close(hold[0]);
  char ch = 0;
  REQUIRE(read(ready[0], &ch, 1) == 1);
  close(ready[0]);

  store_client* client = reinterpret_cast<store_client*>(0x1);
  const int rc = store_client_connect(&client, sock.c_str(), nullptr);
  const std::string msg = store_last_error_message();
  close(hold[1]);
  INFO(msg);
  CHECK(rc == STORE_EPERM);
  CHECK(client == nullptr);
  CHECK(Contains(msg, std::to_string(kNobody)));
  CHECK(Contains(msg, sock));
  CHECK(test::ExitedCleanly(test::WaitExit(pid)));
  if (client && client != reinterpret_cast<store_client*>(0x1)) store_client_free(client);
}

// ---- a server that refuses this user ------------------------------------------------------------

TEST_CASE("connect: a store that refuses this user gives STORE_EPERM and its reason") {
  if (geteuid() != 0) {
    MESSAGE("needs root to connect as another user: skipped");
    return;
  }
  test::TestStore s;
  REQUIRE(s.started());
  // Let another user reach the socket, so that the server's own check is what refuses it.
  REQUIRE(chmod(s.dir().c_str(), 0755) == 0);
  REQUIRE(chmod(s.socket().c_str(), 0666) == 0);
  constexpr int kAttempts = 50;
  const int status = RunChild([&] {
    if (!BecomeNobody()) {
      std::fprintf(stderr, "cannot become uid %u\n", kNobody);
      g_child_failures++;
      return;
    }
    for (int i = 0; i < kAttempts; i++) {
      store_client* c = reinterpret_cast<store_client*>(0x1);
      const int rc = store_client_connect(&c, s.socket().c_str(), nullptr);
      const std::string msg = store_last_error_message();
      if (rc != STORE_EPERM || c != nullptr || !Contains(msg, "user") ||
          !Contains(msg, s.socket())) {
        std::fprintf(stderr, "attempt %d: rc %d (%s): %s\n", i, rc, store_errstr(rc),
                     msg.c_str());
        g_child_failures++;
      }
      if (c && c != reinterpret_cast<store_client*>(0x1)) store_client_free(c);
    }
  });
  INFO("child: " << Describe(status));
  CHECK(test::ExitedCleanly(status));
  CHECK(s.Alive());
  ClientPtr c = test::Connect(s.socket(), "checker");
  CHECK(Stats(c.get()).client_count == 1);
}

// ---- allocation failures in the middle of a call ------------------------------------------------

// This process's address space in bytes (VmSize), read without allocating.
long VmSize() {
  int fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  char buf[8192];
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return -1;
  buf[n] = '\0';
  const char* p = std::strstr(buf, "VmSize:");
  return p ? std::strtol(p + 7, nullptr, 10) * 1024 : -1;
}

// Blocks of memory filled with one byte, to find writes into memory the library gave back.
struct Sentinels {
  static constexpr size_t kBlock = 1000;
  static constexpr uint8_t kByte = 0x5a;
  std::vector<uint8_t*> blocks;
  explicit Sentinels(size_t n) {
    for (size_t i = 0; i < n; i++) {
      auto* b = static_cast<uint8_t*>(std::malloc(kBlock));
      if (!b) break;
      std::memset(b, kByte, kBlock);
      blocks.push_back(b);
    }
  }
  ~Sentinels() {
    for (uint8_t* b : blocks) std::free(b);
  }
  // Blocks written since.
  size_t Changed() const {
    size_t bad = 0;
    for (uint8_t* b : blocks) {
      for (size_t i = 0; i < kBlock; i++) {
        if (b[i] != kByte) {
          bad++;
          break;
        }
      }
    }
    return bad;
  }
};

// The process of OomAfterFirstBatch: a fresh one, so that the heap holds no memory of this
// process's history. (glibc retries an allocation that fails in one arena in another: the
// arenas left by the threads of earlier tests have address space reserved already, which an
// address-space limit does not stop.)
constexpr const char* kOomSocketEnv = "INTEGRITY_OOM_SOCKET";

// put_many of two batches where the second cannot be built: returns the failed checks.
int OomAfterFirstBatch(const std::string& socket) {
  g_child_failures = 0;
  store_client* c = nullptr;
  CHILD_EXPECT(store_client_connect(&c, socket.c_str(), nullptr) == STORE_OK);
  if (!c) return g_child_failures;
  // Two batches of 128 inline puts of 64 KiB: each is about 8.4 MiB on the wire, built in
  // one buffer. The address space is limited so that the first batch is built and sent but
  // the second cannot be built. Allocations from 1 MiB up get mappings of their own, so each
  // batch's buffer takes 8.4 MiB more address space; the margin above what is mapped now
  // starts at 12 MiB and moves if need be.
  CHILD_EXPECT(mallopt(M_MMAP_THRESHOLD, 1 << 20) == 1);
  constexpr size_t kObject = 64 << 10, kCount = 256, kFirstBatch = 128;
  std::vector<char> bytes(kObject);
  for (size_t i = 0; i < kObject; i++) bytes[i] = static_cast<char>('A' + i % 23);
  std::vector<const void*> datas(kCount, bytes.data());
  std::vector<uint64_t> sizes(kCount, kObject);
  rlimit old{};
  CHILD_EXPECT(getrlimit(RLIMIT_AS, &old) == 0);
  bool provoked = false;
  long margin_mib = 12;
  for (int attempt = 0; attempt < 8 && !provoked; attempt++) {
    std::vector<store_object_id> ids;
    for (size_t i = 0; i < kCount; i++) {
      ids.push_back(IdOf("integrity-oom-" + std::to_string(margin_mib) + "-" +
                         std::to_string(i)));
    }
    const long vm = VmSize();
    CHILD_EXPECT(vm > 0);
    rlimit lim = old;
    lim.rlim_cur = static_cast<rlim_t>(vm + (margin_mib << 20));
    CHILD_EXPECT(setrlimit(RLIMIT_AS, &lim) == 0);
    size_t done = 0;
    const int rc =
        store_put_many(c, ids.data(), datas.data(), sizes.data(), kCount, nullptr, &done);
    setrlimit(RLIMIT_AS, &old);
    const std::string msg = store_last_error_message();
    // Before the library is called again: blocks that would take memory it gave back.
    Sentinels sentinels(16384);
    std::vector<int> present(kCount, 0);
    size_t count = 0;
    for (size_t i = 0; i < kCount; i++) {
      CHILD_EXPECT(store_contains(c, &ids[i], &present[i]) == STORE_OK);
      count += present[i];
    }
    const bool target = rc == STORE_ENOMEM && count == kFirstBatch;
    if (target) {
      provoked = true;
      CHILD_EXPECT(Contains(msg, "out of memory"));
      CHILD_EXPECT(done == kFirstBatch);
      for (size_t i = 0; i < kCount; i++) CHILD_EXPECT(present[i] == (i < kFirstBatch));
      // The client goes on: every object of the first batch is whole, more calls work.
      for (size_t i = 0; i < kFirstBatch; i++) {
        store_reader* r = nullptr;
        CHILD_EXPECT(store_open_reader(c, &r, &ids[i], 0) == STORE_OK);
        if (!r) continue;
        CHILD_EXPECT(store_reader_size(r) == kObject);
        CHILD_EXPECT(std::memcmp(store_reader_data(r), bytes.data(), kObject) == 0);
        store_reader_close(r);
      }
      store_stats st = STORE_STATS_INIT;
      CHILD_EXPECT(store_stats_get(c, &st) == STORE_OK);
      CHILD_EXPECT(st.client_count == 1);
      const store_object_id extra = IdOf("integrity-oom-extra");
      CHILD_EXPECT(store_put(c, &extra, "extra", 5, nullptr) == STORE_OK);
      CHILD_EXPECT(store_delete(c, &extra) == STORE_OK);
      CHILD_EXPECT(sentinels.Changed() == 0);
    }
    size_t deleted = 0;
    for (size_t i = 0; i < kCount; i++) {
      if (present[i]) deleted += store_delete(c, &ids[i]) == STORE_OK;
    }
    CHILD_EXPECT(deleted == count);
    // Too much room: both batches went out; too little: not even the first.
    margin_mib += rc == STORE_OK ? -1 : count == 0 ? 1 : 0;
  }
  if (!provoked) {
    std::fprintf(stderr, "no address-space limit made the second batch fail\n");
    g_child_failures++;
  }
  store_client_free(c);
  return g_child_failures;
}

TEST_CASE("put_many: out of memory after a batch went out, the client stays whole") {
#ifdef __SANITIZE_ADDRESS__
  // The case runs out of memory through RLIMIT_AS, and AddressSanitizer's allocator, which
  // reserves terabytes of address space for its shadow, fails under any such limit.
  MESSAGE("not run under AddressSanitizer (an address-space limit stops its allocator)");
  return;
#endif
  if (const char* socket = std::getenv(kOomSocketEnv)) {
    // This binary again, started by the test below: run the case and report.
    std::fflush(stdout);
    const int failures = OomAfterFirstBatch(socket);
    std::fflush(stderr);
    _exit(failures > 255 ? 255 : failures);
  }
  test::TestStore s("256M");
  REQUIRE(s.started());
  std::fflush(stdout);
  std::fflush(stderr);
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    setenv(kOomSocketEnv, s.socket().c_str(), 1);
    // No thread of the library's own: every allocation is the test's thread's.
    setenv("STORE_CLIENT_POPULATE", "0", 1);
    setenv("STORE_CLIENT_RELEASE_DELAY_US", "0", 1);
    execl("/proc/self/exe", "test_integrity_client",
          "--test-case=put_many: out of memory after a batch went out*", "--no-version",
          static_cast<char*>(nullptr));
    _exit(127);
  }
  const int status = test::WaitExit(pid, std::chrono::seconds(120));
  INFO("the process of the case: " << Describe(status));
  CHECK(test::ExitedCleanly(status));
  ClientPtr c = test::Connect(s.socket(), "checker");
  CHECK(Stats(c.get()).object_count == 0);
}

// Runs call(c, k, after) -- which arms alloc_fault (Arm(k, after)) around the one library call
// under test and returns that call's code -- for k = 0, 1, ... until the call makes no
// allocation numbered k; first with the allocation numbered k failing alone, then with it and
// every one after it failing. After each, the client must work, or, where the failure lost bytes
// it had received, report a closed connection (it is then connected again); check(c, k, rc)
// verifies what the call left. In a child with a deadline: a thread left waiting forever fails
// the test instead of hanging it.
template <class Call, class Check>
void SweepAllocationFailures(const std::string& socket, const char* what, Call call,
                             Check check) {
  const int status = RunChild([&] {
    // No thread of the library's own; releases go out at once.
    setenv("STORE_CLIENT_POPULATE", "0", 1);
    store_client* c = nullptr;
    CHILD_EXPECT(store_client_connect(&c, socket.c_str(), nullptr) == STORE_OK);
    if (!c) return;
    int broken = 0, points = 0;
    store_stats baseline = STORE_STATS_INIT;
    CHILD_EXPECT(store_stats_get(c, &baseline) == STORE_OK);
    for (bool after : {false, true}) {
      for (long k = 0;; k++) {
        const int rc = call(c, k, after);
        const long made = alloc_fault::seen;
        const std::string msg = store_last_error_message();
        // Allocation k not reached: the call ran without a failure, every point was tried.
        const bool reached = made > k;
        points += reached;
        const int before = g_child_failures;
        if (reached && rc == STORE_OK) {
          std::fprintf(stderr, "%s: allocation %ld failed, yet the call succeeded\n", what, k);
          g_child_failures++;
        }
        store_stats st = STORE_STATS_INIT;
        const int src = store_stats_get(c, &st);
        if (src == STORE_ECONN && Contains(store_last_error_message(), "out of memory")) {
          // Received bytes were lost: the connection is closed, and says why.
          broken++;
          store_client_free(c);
          c = nullptr;
          CHILD_EXPECT(store_client_connect(&c, socket.c_str(), nullptr) == STORE_OK);
          if (!c) return;
          // Once the server has let the old connection go, it has done all it was sent.
          CHILD_EXPECT(test::WaitFor([&] {
            return store_stats_get(c, &st) == STORE_OK && st.client_count == baseline.client_count;
          }));
        } else {
          CHILD_EXPECT(src == STORE_OK);
        }
        check(c, k, rc);
        if (g_child_failures != before) {
          std::fprintf(stderr, "%s: the failures above followed allocation %ld failing%s "
                       "(the call gave %d: %s)\n", what, k, after ? ", and all after it" : "",
                       rc, msg.c_str());
        }
        if (g_child_failures > 20) return;
        if (!reached) break;
      }
    }
    std::fprintf(stderr, "%s: %d allocation failures tried, %d closed the connection\n", what,
                 points, broken);
    CHILD_EXPECT(points > 0);
    store_client_free(c);
  }, std::chrono::seconds(150));
  INFO(what << ": child " << Describe(status));
  CHECK(test::ExitedCleanly(status));
}

std::string SweepId(long k, size_t i) {
  return "integrity-sweep-" + std::to_string(k) + "-" + std::to_string(i);
}

TEST_CASE("allocation failures at every point of put_many leave no dangling reply or waiter") {
  test::TestStore s("128M");
  REQUIRE(s.started());
  // Small objects of three sizes in two batches; one id is there already (its error is
  // formatted); a reader closed just before (its release goes out in front of the batch).
  constexpr size_t kCount = 150, kDup = 70;
  const store_object_id dup = IdOf("integrity-sweep-dup");
  {
    ClientPtr c = test::Connect(s.socket(), "setup");
    REQUIRE(store_put(c.get(), &dup, "dup", 3, nullptr) == STORE_OK);
  }
  auto body = [](size_t i) {
    return std::string(100 + (i % 3) * 2000, static_cast<char>('a' + i % 26));
  };
  SweepAllocationFailures(
      s.socket(), "put_many",
      [&](store_client* c, long k, bool after) {
        std::vector<store_object_id> ids;
        std::vector<std::string> bodies;
        std::vector<const void*> datas;
        std::vector<uint64_t> sizes;
        for (size_t i = 0; i < kCount; i++) {
          ids.push_back(i == kDup ? dup : IdOf(SweepId(k, i)));
          bodies.push_back(body(i));
        }
        for (auto& b : bodies) {
          datas.push_back(b.data());
          sizes.push_back(b.size());
        }
        store_reader* r = nullptr;
        if (store_open_reader(c, &r, &dup, 0) == STORE_OK) store_reader_close(r);
        size_t done = 0;
        alloc_fault::Arm(k, after);
        const int rc =
            store_put_many(c, ids.data(), datas.data(), sizes.data(), kCount, nullptr, &done);
        alloc_fault::Disarm();
        return rc;
      },
      [&](store_client* c, long k, int rc) {
        // The duplicate always fails the call, if nothing else does first.
        CHILD_EXPECT((rc == STORE_EEXISTS || rc == STORE_ENOMEM));
        // Whatever was put is whole; then it is deleted.
        for (size_t i = 0; i < kCount; i++) {
          if (i == kDup) continue;
          const store_object_id id = IdOf(SweepId(k, i));
          int present = 0;
          CHILD_EXPECT(store_contains(c, &id, &present) == STORE_OK);
          if (!present) continue;
          CHILD_EXPECT(ReadAll(c, id) == body(i));
          CHILD_EXPECT(store_delete(c, &id) == STORE_OK);
        }
        const store_object_id probe = IdOf("integrity-sweep-probe");
        CHILD_EXPECT(store_put(c, &probe, "probe", 5, nullptr) == STORE_OK);
        CHILD_EXPECT(ReadAll(c, probe) == "probe");
        CHILD_EXPECT(store_delete(c, &probe) == STORE_OK);
        CHILD_EXPECT(test::WaitFor([&] {
          store_object_info info = STORE_OBJECT_INFO_INIT;
          return store_info(c, &dup, &info) == STORE_OK && info.reader_count == 0;
        }));
      });
  ClientPtr c = test::Connect(s.socket(), "checker");
  CHECK(store_delete(c.get(), &dup) == STORE_OK);
  CHECK(Stats(c.get()).object_count == 0);
}

TEST_CASE("allocation failures at every point of gets and lists leave no reader held") {
  test::TestStore s("128M");
  REQUIRE(s.started());
  constexpr size_t kCount = 200;
  std::vector<store_object_id> ids;
  ClientPtr owner = test::Connect(s.socket(), "owner");
  for (size_t i = 0; i < kCount; i++) {
    ids.push_back(IdOf("integrity-get-" + std::to_string(i)));
    const std::string b = "object " + std::to_string(i);
    REQUIRE(store_put(owner.get(), &ids[i], b.data(), b.size(), nullptr) == STORE_OK);
  }
  SweepAllocationFailures(
      s.socket(), "gets and lists",
      [&](store_client* c, long k, bool after) {
        (void)k;
        std::vector<store_reader*> readers(kCount, nullptr);
        store_reader* one = nullptr;
        store_object_info* list = nullptr;
        size_t count = 0;
        alloc_fault::Arm(k, after);
        int rc = store_open_reader(c, &one, &ids[7], 0);
        if (rc == STORE_OK) rc = store_open_readers(c, readers.data(), ids.data(), kCount, 0);
        if (rc == STORE_OK) rc = store_list(c, &list, sizeof *list, &count);
        alloc_fault::Disarm();
        if (one) {
          CHILD_EXPECT(store_reader_size(one) == 8);
          store_reader_close(one);
        }
        for (size_t i = 0; i < kCount; i++) {
          if (!readers[i]) continue;
          const std::string want = "object " + std::to_string(i);
          CHILD_EXPECT(store_reader_size(readers[i]) == want.size());
          // NULL once the connection is closed (the list after the gets may close it).
          const void* d = store_reader_data(readers[i]);
          CHILD_EXPECT((d == nullptr || std::memcmp(d, want.data(), want.size()) == 0));
        }
        store_readers_close(readers.data(), kCount);
        if (rc == STORE_OK) CHILD_EXPECT(count == kCount);
        store_free(list);
        return rc;
      },
      [&](store_client* c, long, int) {
        // Every reader the store handed out is released again.
        CHILD_EXPECT(test::WaitFor([&] {
          store_stats st = STORE_STATS_INIT;
          return store_stats_get(c, &st) == STORE_OK && st.open_count == 0;
        }));
      });
  for (auto& id : ids) CHECK(store_delete(owner.get(), &id) == STORE_OK);
  CHECK(Stats(owner.get()).object_count == 0);
}

// ---- what a socket path that does not work says -------------------------------------------------

// Connects to path; returns the code, *msg the message.
int ConnectTo(const std::string& path, std::string* msg) {
  store_client* c = reinterpret_cast<store_client*>(0x1);
  const int rc = store_client_connect(&c, path.c_str(), nullptr);
  *msg = store_last_error_message();
  if (rc == STORE_OK) store_client_free(c);
  CHECK((rc == STORE_OK || c == nullptr));
  return rc;
}

TEST_CASE("connect: the error names what is wrong with the socket path") {
  test::TempDir dir;
  std::string msg;
  SUBCASE("the directory does not exist") {
    const std::string path = dir.path + "/missing/store.sock";
    CHECK(ConnectTo(path, &msg) == STORE_ECONN);
    CHECK(msg == "cannot connect to the store at " + path + ": the directory " + dir.path +
                     "/missing does not exist");
  }
  SUBCASE("the directory exists, nothing listens") {
    const std::string path = dir / "store.sock";
    CHECK(ConnectTo(path, &msg) == STORE_ECONN);
    CHECK(msg == "cannot connect to the store at " + path +
                     ": nothing is listening (no such socket)");
  }
  SUBCASE("a socket left by a store that is gone") {
    const std::string path = dir / "stale.sock";
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd >= 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
    REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    close(fd);
    CHECK(ConnectTo(path, &msg) == STORE_ECONN);
    CHECK(msg == "cannot connect to the store at " + path +
                     ": nothing is listening (the socket is left from a store that is gone)");
  }
  SUBCASE("a file that is not a socket") {
    const std::string path = dir / "plain";
    FILE* f = std::fopen(path.c_str(), "w");
    REQUIRE(f);
    std::fclose(f);
    CHECK(ConnectTo(path, &msg) == STORE_ECONN);
    CHECK(msg == "cannot connect to the store at " + path + ": it is not a socket");
  }
  SUBCASE("a directory this user may not enter, or a socket it may not write to") {
    test::TestStore s;
    REQUIRE(s.started());
    // As root, the refusal is tried in a child that has become another user.
    const bool root = geteuid() == 0;
    const std::string user = std::to_string(root ? kNobody : geteuid());
    auto attempt = [&](const std::string& want_detail) {
      if (!root) {
        CHECK(ConnectTo(s.socket(), &msg) == STORE_EPERM);
        CHECK(msg == "cannot connect to the store at " + s.socket() + ": permission denied " +
                         want_detail);
        return;
      }
      const int status = RunChild([&] {
        if (!BecomeNobody()) {
          g_child_failures++;
          return;
        }
        store_client* c = nullptr;
        const int rc = store_client_connect(&c, s.socket().c_str(), nullptr);
        const std::string m = store_last_error_message();
        CHILD_EXPECT(rc == STORE_EPERM);
        CHILD_EXPECT(c == nullptr);
        CHILD_EXPECT(m == "cannot connect to the store at " + s.socket() +
                              ": permission denied " + want_detail);
      });
      INFO("child: " << Describe(status));
      CHECK(test::ExitedCleanly(status));
    };
    // The store's directory is its owner's only (0700).
    REQUIRE(chmod(s.dir().c_str(), root ? 0700 : 0) == 0);
    attempt("(this user, uid " + user + ", may not enter the directory " + s.dir() + ")");
    REQUIRE(chmod(s.dir().c_str(), 0755) == 0);
    if (root) attempt("(this user, uid " + user + ", may not write to the socket)");
    REQUIRE(chmod(s.dir().c_str(), 0700) == 0);
  }
}

}  // namespace
