// test_lifecycle.cpp - clients that die, disconnect or lose their server, against a real store
// server. Client processes are forked children that connect on their own.
#include <doctest.h>

#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

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

ClientPtr Connect(const test::TestStore& s, const char* name = "test_lifecycle") {
  return test::Connect(s.socket(), name);
}

store_object_id Id(const std::string& s) {
  store_object_id id{};
  store_object_id_from_string(s.data(), s.size(), &id);
  return id;
}

// Deterministic bytes seeded by seed.
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

void Put(store_client* c, const store_object_id& id, const std::vector<uint8_t>& data) {
  int rc = store_put(c, &id, data.data(), data.size(), nullptr);
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

void CheckEmpty(store_client* c) {
  store_stats st = Stats(c);
  CHECK(st.object_count == 0);
  CHECK(st.used_bytes == 0);
  CHECK(st.created_count == 0);
  CHECK(st.deleted_pending_count == 0);
}

// Open descriptors and mappings of the store's memory in this process.
int OpenFds() {
  int n = 0;
  DIR* d = opendir("/proc/self/fd");
  if (!d) return -1;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] != '.') n++;
  }
  closedir(d);
  return n - 1;  // the directory's own descriptor
}

int StoreMappings() {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  int n = 0;
  while (std::getline(maps, line)) {
    if (line.find("memfd:store") != std::string::npos) n++;
  }
  return n;
}

// A pipe a child uses to tell the parent it reached a point ('r' = ready, anything else = a
// failure code).
struct Pipe {
  int fds[2] = {-1, -1};
  Pipe() { REQUIRE(pipe2(fds, O_CLOEXEC) == 0); }
  ~Pipe() {
    for (int fd : fds) {
      if (fd >= 0) close(fd);
    }
  }
  // In the child: report and keep the write end open.
  void Signal(char c) {
    ssize_t n = write(fds[1], &c, 1);
    (void)n;
  }
  // In the parent, after the fork: close the write end, then wait for one byte.
  // Returns the byte, or 0 if the child closed the pipe or the wait timed out.
  char Await(int timeout_ms = 10000) {
    if (fds[1] >= 0) {
      close(fds[1]);
      fds[1] = -1;
    }
    pollfd p{fds[0], POLLIN, 0};
    int rc;
    do {
      rc = poll(&p, 1, timeout_ms);
    } while (rc < 0 && errno == EINTR);
    if (rc <= 0) return 0;
    char c = 0;
    ssize_t n;
    do {
      n = read(fds[0], &c, 1);
    } while (n < 0 && errno == EINTR);
    return n == 1 ? c : 0;
  }
};

// In a child: blocks until killed.
[[noreturn]] void BlockForever() {
  for (;;) pause();
}

// A forked child that is SIGKILLed and reaped when the guard goes (also when a REQUIRE fails).
struct Child {
  pid_t pid = -1;
  explicit Child(pid_t p) : pid(p) {}
  ~Child() {
    if (pid > 0) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
  }
  // Kills it and checks it died of SIGKILL (and not of anything else before).
  void Kill() {
    REQUIRE(pid > 0);
    REQUIRE(kill(pid, SIGKILL) == 0);
    int st = test::WaitExit(pid);
    pid = -1;
    CHECK(WIFSIGNALED(st));
    CHECK(WTERMSIG(st) == SIGKILL);
  }
};

// Connects in the child (never use the parent's client there). Returns nullptr on failure.
store_client* ChildConnect(const std::string& socket, const char* name) {
  store_connect_options o = STORE_CONNECT_OPTIONS_INIT;
  o.client_name = name;
  store_client* c = nullptr;
  if (store_client_connect(&c, socket.c_str(), &o) != STORE_OK) return nullptr;
  return c;
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
// Killed client processes.

TEST_CASE("a writer killed mid-write: its object is aborted and the id is free again") {
  test::TestStore s("64M");
  REQUIRE(s.started());
  ClientPtr c = Connect(s);

  const store_object_id id = Id("killed-writer");
  const std::vector<uint8_t> data = Pattern(1, 4 * kMiB);
  const std::string sock = s.socket();
  Pipe p;
  Child child(test::ForkChild([&]() -> int {
    close(p.fds[0]);
    store_client* cc = ChildConnect(sock, "killed-writer");
    if (!cc) {
      p.Signal('c');
      return 1;
    }
    store_writer* w = nullptr;
    if (store_create(cc, &w, &id, data.size(), nullptr) != STORE_OK) {
      p.Signal('w');
      return 1;
    }
    if (store_writer_write(w, data.data(), data.size() / 2) != STORE_OK) {
      p.Signal('h');
      return 1;
    }
    p.Signal('r');
    BlockForever();
  }));
  REQUIRE(child.pid > 0);
  REQUIRE(p.Await() == 'r');

  store_stats st = Stats(c.get());
  CHECK(st.created_count == 1);
  CHECK(st.used_bytes >= 4 * kMiB);
  CHECK(st.client_count == 2);
  CHECK(Contains(c.get(), id) == 0);
  store_writer* w = nullptr;
  CHECK(store_create(c.get(), &w, &id, 100 * 1024, nullptr) == STORE_EEXISTS);

  child.Kill();
  CHECK(test::WaitFor([&] {
    store_stats now = Stats(c.get());
    return now.used_bytes == 0 && now.created_count == 0;
  }));
  st = Stats(c.get());
  CHECK(st.object_count == 0);
  CHECK(st.client_count == 1);
  CHECK(st.total_aborts == 1);

  // The id can be created again, with full content.
  Put(c.get(), id, data);
  store_reader* r = nullptr;
  REQUIRE(store_open_reader(c.get(), &r, &id, 0) == STORE_OK);
  CHECK(SameBytes(store_reader_data(r), data));
  store_reader_close(r);
  Delete(c.get(), id);
  CheckEmpty(c.get());
}

TEST_CASE("a reader process killed while holding 3 readers of a deleted object") {
  test::TestStore s("64M");
  REQUIRE(s.started());
  ClientPtr c = Connect(s);

  const store_object_id id = Id("killed-readers");
  const std::vector<uint8_t> data = Pattern(2, 2 * kMiB);
  Put(c.get(), id, data);
  const uint64_t used = Stats(c.get()).used_bytes;
  REQUIRE(used >= 2 * kMiB);

  const std::string sock = s.socket();
  Pipe p;
  Child child(test::ForkChild([&]() -> int {
    close(p.fds[0]);
    store_client* cc = ChildConnect(sock, "killed-readers");
    if (!cc) {
      p.Signal('c');
      return 1;
    }
    for (int i = 0; i < 3; i++) {
      store_reader* r = nullptr;
      if (store_open_reader(cc, &r, &id, 0) != STORE_OK || !SameBytes(store_reader_data(r), data)) {
        p.Signal('o');
        return 1;
      }
    }
    p.Signal('r');
    BlockForever();
  }));
  REQUIRE(child.pid > 0);
  REQUIRE(p.Await() == 'r');

  CHECK(Info(c.get(), id).reader_count == 3);
  Delete(c.get(), id);
  store_stats st = Stats(c.get());
  CHECK(st.deleted_pending_count == 1);
  CHECK(st.object_count == 0);
  CHECK(st.used_bytes == used);

  child.Kill();
  CHECK(test::WaitFor([&] { return Stats(c.get()).used_bytes == 0; }));
  st = Stats(c.get());
  CHECK(st.deleted_pending_count == 0);
  CHECK(st.open_count == 0);
  CHECK(st.client_count == 1);
  CheckEmpty(c.get());
}

TEST_CASE("a process killed while holding pins: the pins are dropped") {
  test::TestStore s("64M");
  REQUIRE(s.started());
  ClientPtr c = Connect(s);

  const store_object_id id = Id("killed-pins");
  Put(c.get(), id, Pattern(3, 1000));
  REQUIRE(store_pin(c.get(), &id) == STORE_OK);  // the parent's own pin stays

  const std::string sock = s.socket();
  Pipe p;
  Child child(test::ForkChild([&]() -> int {
    close(p.fds[0]);
    store_client* cc = ChildConnect(sock, "killed-pins");
    if (!cc) {
      p.Signal('c');
      return 1;
    }
    for (int i = 0; i < 3; i++) {
      if (store_pin(cc, &id) != STORE_OK) {
        p.Signal('p');
        return 1;
      }
    }
    p.Signal('r');
    BlockForever();
  }));
  REQUIRE(child.pid > 0);
  REQUIRE(p.Await() == 'r');
  CHECK(Info(c.get(), id).pin_count == 4);

  child.Kill();
  CHECK(test::WaitFor([&] { return Info(c.get(), id).pin_count == 1; }));
  CHECK(Stats(c.get()).pinned_count == 1);
  REQUIRE(store_unpin(c.get(), &id) == STORE_OK);
  CHECK(Info(c.get(), id).pin_count == 0);
  CHECK(Stats(c.get()).pinned_count == 0);
  CHECK(Stats(c.get()).client_count == 1);

  Delete(c.get(), id);
  CheckEmpty(c.get());
}

TEST_CASE("a process killed while blocked in an open with timeout -1") {
  test::TestStore s("64M");
  REQUIRE(s.started());
  ClientPtr c = Connect(s);

  const store_object_id id = Id("killed-waiter");
  const std::string sock = s.socket();
  Pipe p;
  Child child(test::ForkChild([&]() -> int {
    close(p.fds[0]);
    store_client* cc = ChildConnect(sock, "killed-waiter");
    if (!cc) {
      p.Signal('c');
      return 1;
    }
    p.Signal('r');
    store_reader* r = nullptr;
    store_open_reader(cc, &r, &id, -1);
    p.Signal('x');  // it should never get here
    BlockForever();
  }));
  REQUIRE(child.pid > 0);
  REQUIRE(p.Await() == 'r');
  CHECK(test::WaitFor([&] { return Stats(c.get()).waiting_gets == 1; }));

  child.Kill();
  CHECK(test::WaitFor([&] {
    store_stats st = Stats(c.get());
    return st.waiting_gets == 0 && st.client_count == 1;
  }));

  // The server keeps serving; sealing the id hands no reader to the dead client.
  CHECK(s.Alive());
  const std::vector<uint8_t> data = Pattern(4, 3000);
  const uint64_t gets_before = Stats(c.get()).total_gets;
  Put(c.get(), id, data);
  store_stats st = Stats(c.get());
  CHECK(st.open_count == 0);
  CHECK(st.total_gets == gets_before);
  CHECK(Info(c.get(), id).reader_count == 0);
  store_reader* r = nullptr;
  REQUIRE(store_open_reader(c.get(), &r, &id, 0) == STORE_OK);
  CHECK(SameBytes(store_reader_data(r), data));
  store_reader_close(r);
  Delete(c.get(), id);
  CheckEmpty(c.get());
}

TEST_CASE("a process killed while waiting in a create for space") {
  test::TestStore s("16M");
  REQUIRE(s.started());
  ClientPtr c = Connect(s);

  std::vector<store_object_id> ids;
  for (int i = 0; i < 1000; i++) {
    store_object_id id = Id("fill-" + std::to_string(i));
    std::vector<uint8_t> data = Pattern(i, kMiB);
    int rc = store_put(c.get(), &id, data.data(), data.size(), nullptr);
    if (rc == STORE_ENOSPACE) break;
    REQUIRE(rc == STORE_OK);
    ids.push_back(id);
  }
  REQUIRE(ids.size() >= 2);
  REQUIRE(ids.size() < 1000);

  const store_object_id waited = Id("killed-create");
  const std::string sock = s.socket();
  Pipe p;
  Child child(test::ForkChild([&]() -> int {
    close(p.fds[0]);
    store_client* cc = ChildConnect(sock, "killed-create");
    if (!cc) {
      p.Signal('c');
      return 1;
    }
    p.Signal('r');
    store_create_options o = STORE_CREATE_OPTIONS_INIT;
    o.timeout_ms = -1;
    store_writer* w = nullptr;
    store_create(cc, &w, &waited, kMiB, &o);
    p.Signal('x');  // it should never get here
    BlockForever();
  }));
  REQUIRE(child.pid > 0);
  REQUIRE(p.Await() == 'r');
  CHECK(test::WaitFor([&] { return Stats(c.get()).waiting_creates == 1; }));

  child.Kill();
  CHECK(test::WaitFor([&] {
    store_stats st = Stats(c.get());
    return st.waiting_creates == 0 && st.client_count == 1;
  }));

  // Freed space is not handed to the dead waiter.
  Delete(c.get(), ids.back());
  ids.pop_back();
  store_stats st = Stats(c.get());
  CHECK(st.created_count == 0);
  CHECK(st.object_count == ids.size());
  CHECK(Contains(c.get(), waited) == 0);
  const std::vector<uint8_t> data = Pattern(77, kMiB);
  Put(c.get(), waited, data);
  ids.push_back(waited);

  for (auto& id : ids) Delete(c.get(), id);
  CheckEmpty(c.get());
}

TEST_CASE("a killed process at the head of the create queue does not hold up the creates behind") {
  test::TestStore s("16M");
  REQUIRE(s.started());
  ClientPtr c = Connect(s);
  ClientPtr waiter = Connect(s, "waiter");

  std::vector<store_object_id> ids;
  for (int i = 0; i < 1000; i++) {
    store_object_id id = Id("head-" + std::to_string(i));
    std::vector<uint8_t> data = Pattern(i, kMiB);
    int rc = store_put(c.get(), &id, data.data(), data.size(), nullptr);
    if (rc == STORE_ENOSPACE) break;
    REQUIRE(rc == STORE_OK);
    ids.push_back(id);
  }
  REQUIRE(ids.size() >= 9);
  REQUIRE(ids.size() < 1000);
  // Room for exactly one more 1 MiB object.
  Delete(c.get(), ids.back());
  ids.pop_back();

  // The child waits forever for 8 MiB, which cannot fit.
  const store_object_id big = Id("head-big"), small = Id("head-small");
  const std::string sock = s.socket();
  Pipe p;
  Child child(test::ForkChild([&]() -> int {
    close(p.fds[0]);
    store_client* cc = ChildConnect(sock, "head-of-queue");
    if (!cc) {
      p.Signal('c');
      return 1;
    }
    p.Signal('r');
    store_create_options o = STORE_CREATE_OPTIONS_INIT;
    o.timeout_ms = -1;
    store_writer* w = nullptr;
    store_create(cc, &w, &big, 8 * kMiB, &o);
    p.Signal('x');  // it should never get here
    BlockForever();
  }));
  REQUIRE(child.pid > 0);
  REQUIRE(p.Await() == 'r');
  REQUIRE(test::WaitFor([&] { return Stats(c.get()).waiting_creates == 1; }));

  // The parent waits for 1 MiB behind it.
  const std::vector<uint8_t> sdata = Pattern(555, kMiB);
  std::atomic<int> small_rc{-100};
  Threads th(s);
  th.Start([&] {
    store_create_options o = STORE_CREATE_OPTIONS_INIT;
    o.timeout_ms = -1;
    small_rc = store_put(waiter.get(), &small, sdata.data(), sdata.size(), &o);
  });
  REQUIRE(test::WaitFor([&] { return Stats(c.get()).waiting_creates == 2; }));
  CHECK(small_rc.load() == -100);

  child.Kill();
  // The dead child's create is gone; the parent's fits and must be served.
  const bool served = test::WaitFor([&] { return small_rc.load() != -100; },
                                    std::chrono::seconds(5));
  CHECK_MESSAGE(served, "the 1 MiB create still waits although it fits (waiting_creates = "
                            << Stats(c.get()).waiting_creates << ")");
  if (!served) {
    // Free more space so that the waiting thread returns and the test can end.
    Delete(c.get(), ids.back());
    ids.pop_back();
  }
  th.Join();
  CHECK(small_rc.load() == STORE_OK);
  ids.push_back(small);
  store_stats st = Stats(c.get());
  CHECK(st.waiting_creates == 0);
  CHECK(st.client_count == 2);
  CHECK(Contains(c.get(), big) == 0);
  store_reader* r = nullptr;
  REQUIRE(store_open_reader(c.get(), &r, &small, 0) == STORE_OK);
  CHECK(SameBytes(store_reader_data(r), sdata));
  store_reader_close(r);

  for (auto& id : ids) Delete(c.get(), id);
  CheckEmpty(c.get());
}

// ---------------------------------------------------------------------------------------------
// A lost connection.

TEST_CASE("the server goes away: every call gives STORE_ECONN at once") {
  const int fds_before = OpenFds();
  test::TestStore s("64M");
  REQUIRE(s.started());
  ClientPtr c = Connect(s);

  const store_object_id id = Id("lost"), other = Id("lost-other");
  const std::vector<uint8_t> data = Pattern(5, 4096);
  Put(c.get(), id, data);
  store_reader* raw_reader = nullptr;
  REQUIRE(store_open_reader(c.get(), &raw_reader, &id, 0) == STORE_OK);
  ReaderPtr r(raw_reader);
  REQUIRE(SameBytes(store_reader_data(r.get()), data));
  store_writer* w_seal = nullptr;
  store_writer* w_abort = nullptr;
  REQUIRE(store_create(c.get(), &w_seal, &other, 100, nullptr) == STORE_OK);
  const store_object_id third = Id("lost-third");
  REQUIRE(store_create(c.get(), &w_abort, &third, 100, nullptr) == STORE_OK);

  // A sealed object fills half the store, so that a second half waits for space.
  const uint64_t capacity = Stats(c.get()).capacity_bytes;
  ClientPtr filler = Connect(s, "filler");
  const store_object_id fill = Id("lost-fill");
  store_writer* fill_writer = nullptr;
  REQUIRE(store_create(filler.get(), &fill_writer, &fill, capacity / 2 + 4096, nullptr) ==
          STORE_OK);
  REQUIRE(store_writer_data(fill_writer) != nullptr);
  std::memset(store_writer_data(fill_writer), 0x5A, capacity / 2 + 4096);
  REQUIRE(store_writer_seal(fill_writer) == STORE_OK);  // sealed: closing clients frees nothing

  // Threads blocked in opens (forever, and with a long timeout) and in a create waiting for
  // space (with a long timeout) when the server goes.
  int blocked_rc = -100, timed_rc = -100, create_rc = -100;
  Threads th(s);
  th.Start([&] {
    store_reader* br = nullptr;
    const store_object_id never = Id("lost-never");
    blocked_rc = store_open_reader(c.get(), &br, &never, -1);
    store_reader_close(br);
  });
  th.Start([&] {
    store_reader* br = nullptr;
    const store_object_id never = Id("lost-never-2");
    timed_rc = store_open_reader(c.get(), &br, &never, 600000);
    store_reader_close(br);
  });
  th.Start([&] {
    store_create_options o = STORE_CREATE_OPTIONS_INIT;
    o.timeout_ms = 600000;
    store_writer* cw = nullptr;
    const store_object_id half = Id("lost-half");
    create_rc = store_create(c.get(), &cw, &half, capacity / 2 + 4096, &o);
    store_writer_abort(cw);
  });
  CHECK(test::WaitFor([&] {
    store_stats now = Stats(c.get());
    return now.waiting_gets == 2 && now.waiting_creates == 1;
  }));

  auto stop_start = Clock::now();
  const int st = s.Stop();
  CHECK(Clock::now() - stop_start < milliseconds(5000));
  CHECK(st != -1);
  CHECK(WIFEXITED(st));
  CHECK(WEXITSTATUS(st) == 0);
  th.Join();
  CHECK(blocked_rc == STORE_ECONN);
  CHECK(timed_rc == STORE_ECONN);
  CHECK(create_rc == STORE_ECONN);
  filler.reset();

  auto t0 = Clock::now();
  store_stats stats = STORE_STATS_INIT;
  CHECK(store_stats_get(c.get(), &stats) == STORE_ECONN);
  CHECK(std::strlen(store_last_error_message()) > 0);
  CHECK(store_put(c.get(), &id, data.data(), data.size(), nullptr) == STORE_ECONN);
  const std::vector<uint8_t> big = Pattern(6, 2 * kMiB);
  CHECK(store_put(c.get(), &id, big.data(), big.size(), nullptr) == STORE_ECONN);
  store_writer* w = nullptr;
  CHECK(store_create(c.get(), &w, &id, 10, nullptr) == STORE_ECONN);
  CHECK(w == nullptr);
  store_reader* r2 = nullptr;
  CHECK(store_open_reader(c.get(), &r2, &id, 0) == STORE_ECONN);
  CHECK(store_open_reader(c.get(), &r2, &id, -1) == STORE_ECONN);
  CHECK(r2 == nullptr);
  store_reader* slots[2] = {nullptr, nullptr};
  const store_object_id two[2] = {id, other};
  CHECK(store_open_readers(c.get(), slots, two, 2, -1) == STORE_ECONN);
  int present = -1;
  CHECK(store_contains(c.get(), &id, &present) == STORE_ECONN);
  CHECK(store_delete(c.get(), &id) == STORE_ECONN);
  store_object_info info = STORE_OBJECT_INFO_INIT;
  CHECK(store_info(c.get(), &id, &info) == STORE_ECONN);
  store_object_info* list = nullptr;
  size_t count = 0;
  CHECK(store_list(c.get(), &list, sizeof *list, &count) == STORE_ECONN);
  CHECK(list == nullptr);
  CHECK(store_pin(c.get(), &id) == STORE_ECONN);
  CHECK(store_unpin(c.get(), &id) == STORE_ECONN);
  size_t done = 99;
  const void* datas[1] = {data.data()};
  const uint64_t sizes[1] = {data.size()};
  CHECK(store_put_many(c.get(), &other, datas, sizes, 1, nullptr, &done) == STORE_ECONN);
  CHECK(done == 0);

  // The reader opened before: no more data, but it can be closed.
  CHECK(store_reader_data(r.get()) == nullptr);
  uint8_t buf[16];
  size_t nread = 99;
  CHECK(store_reader_read(r.get(), buf, sizeof buf, &nread) == STORE_ECONN);
  CHECK(nread == 0);
  r.reset();
  // The writers: no more writing; seal reports the lost connection; abort is safe.
  CHECK(store_writer_data(w_seal) == nullptr);
  CHECK(store_writer_write(w_seal, data.data(), 10) == STORE_ECONN);
  CHECK(store_writer_seal(w_seal) == STORE_ECONN);
  const int abort_rc = store_writer_abort(w_abort);
  CHECK((abort_rc == STORE_OK || abort_rc == STORE_ECONN));
  CHECK(Clock::now() - t0 < milliseconds(5000));

  // Nothing listens there any more.
  store_client* again = reinterpret_cast<store_client*>(0x1);
  CHECK(store_client_connect(&again, s.socket().c_str(), nullptr) == STORE_ECONN);
  CHECK(again == nullptr);
  // A socket bound but not listening, and a path where nothing exists.
  const std::string dead = s.dir() + "/dead.sock";
  int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(lfd >= 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strncpy(a.sun_path, dead.c_str(), sizeof a.sun_path - 1);
  REQUIRE(bind(lfd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  CHECK(store_client_connect(&again, dead.c_str(), nullptr) == STORE_ECONN);
  close(lfd);
  unlink(dead.c_str());
  CHECK(store_client_connect(&again, (s.dir() + "/nothing.sock").c_str(), nullptr) ==
        STORE_ECONN);
  CHECK(again == nullptr);
  CHECK(std::strlen(store_last_error_message()) > 0);

  c.reset();
  // Everything the client had is released: no descriptor, no mapping left.
  CHECK(StoreMappings() == 0);
  CHECK(OpenFds() == fds_before);
}

TEST_CASE("store_client_free with a reader and writers still open") {
  const int fds_before = OpenFds();
  test::TestStore s("64M");
  REQUIRE(s.started());
  ClientPtr observer = Connect(s, "observer");

  const store_object_id rid = Id("freed-read"), wid = Id("freed-write"),
                        sid = Id("freed-seal");
  const std::vector<uint8_t> data = Pattern(7, 100000);
  Put(observer.get(), rid, data);
  const uint64_t used_alone = Stats(observer.get()).used_bytes;

  store_client* c = nullptr;
  REQUIRE(store_client_connect(&c, s.socket().c_str(), nullptr) == STORE_OK);
  // Each client maps the store twice: read-only for readers, writable for writers.
  const int mappings = StoreMappings();
  CHECK(mappings >= 4);
  store_reader* r = nullptr;
  REQUIRE(store_open_reader(c, &r, &rid, 0) == STORE_OK);
  store_writer* w = nullptr;
  REQUIRE(store_create(c, &w, &wid, kMiB, nullptr) == STORE_OK);
  REQUIRE(store_writer_write(w, data.data(), data.size()) == STORE_OK);
  store_writer* ws = nullptr;  // staged (small): the store has no object for it
  REQUIRE(store_create(c, &ws, &sid, 10, nullptr) == STORE_OK);
  store_stats st = Stats(observer.get());
  CHECK(st.client_count == 2);
  CHECK(st.created_count == 1);
  CHECK(Info(observer.get(), rid).reader_count == 1);

  store_client_free(c);

  // The server aborts the writers' objects and releases the reader.
  CHECK(test::WaitFor([&] {
    store_stats now = Stats(observer.get());
    return now.client_count == 1 && now.created_count == 0;
  }));
  CHECK(test::WaitFor([&] { return Info(observer.get(), rid).reader_count == 0; }));
  st = Stats(observer.get());
  CHECK(st.total_aborts == 1);
  CHECK(st.open_count == 0);
  CHECK(st.object_count == 1);
  CHECK(st.used_bytes == used_alone);
  CHECK(Contains(observer.get(), wid) == 0);
  store_object_info info = STORE_OBJECT_INFO_INIT;
  CHECK(store_info(observer.get(), &wid, &info) == STORE_ENOTFOUND);

  // The handles of the freed client: every call but closing gives STORE_ECONN.
  uint8_t buf[8];
  size_t nread = 99;
  CHECK(store_reader_read(r, buf, sizeof buf, &nread) == STORE_ECONN);
  CHECK(nread == 0);
  CHECK(store_reader_data(r) == nullptr);
  CHECK(store_writer_data(w) == nullptr);
  CHECK(store_writer_write(w, data.data(), 1) == STORE_ECONN);
  CHECK(store_writer_seal(ws) == STORE_ECONN);
  const int abort_rc = store_writer_abort(w);
  CHECK((abort_rc == STORE_OK || abort_rc == STORE_ECONN));
  store_reader_close(r);
  CHECK(StoreMappings() == mappings - 2);

  // The ids of the aborted objects are free again; the read object is intact.
  Put(observer.get(), wid, Pattern(8, 64));
  Put(observer.get(), sid, Pattern(9, 64));
  {
    store_reader* rr = nullptr;
    REQUIRE(store_open_reader(observer.get(), &rr, &rid, 0) == STORE_OK);
    CHECK(SameBytes(store_reader_data(rr), data));
    store_reader_close(rr);
  }
  for (auto& id : {rid, wid, sid}) Delete(observer.get(), id);
  CheckEmpty(observer.get());
  observer.reset();
  CHECK(StoreMappings() == 0);
  CHECK(OpenFds() == fds_before);
}

TEST_CASE("client_count follows clients connecting, freeing and dying") {
  test::TestStore s("64M");
  REQUIRE(s.started());
  ClientPtr a = Connect(s, "a");
  CHECK(Stats(a.get()).client_count == 1);
  ClientPtr b = Connect(s, "b");
  CHECK(Stats(a.get()).client_count == 2);
  ClientPtr c = Connect(s, "c");
  CHECK(Stats(a.get()).client_count == 3);
  CHECK(Stats(b.get()).client_count == 3);

  b.reset();
  CHECK(test::WaitFor([&] { return Stats(a.get()).client_count == 2; }));
  c.reset();
  CHECK(test::WaitFor([&] { return Stats(a.get()).client_count == 1; }));

  // A child that connects and dies.
  const std::string sock = s.socket();
  Pipe p;
  Child child(test::ForkChild([&]() -> int {
    close(p.fds[0]);
    store_client* cc = ChildConnect(sock, "dies");
    p.Signal(cc ? 'r' : 'c');
    BlockForever();
  }));
  REQUIRE(child.pid > 0);
  REQUIRE(p.Await() == 'r');
  CHECK(Stats(a.get()).client_count == 2);
  child.Kill();
  CHECK(test::WaitFor([&] { return Stats(a.get()).client_count == 1; }));

  // A child that frees its client and exits normally.
  Pipe q;
  pid_t pid = test::ForkChild([&]() -> int {
    close(q.fds[0]);
    store_client* cc = ChildConnect(sock, "exits");
    if (!cc) return 2;
    store_stats st = STORE_STATS_INIT;
    int rc = store_stats_get(cc, &st);
    store_client_free(cc);
    return rc == STORE_OK && st.client_count == 2 ? 0 : 3;
  });
  REQUIRE(pid > 0);
  const int status = test::WaitExit(pid);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  CHECK(test::WaitFor([&] { return Stats(a.get()).client_count == 1; }));

  CheckEmpty(a.get());
}
