// test_spill_faults.cpp - spilling when the disk misbehaves. The server runs in this process on a
// thread, with a FaultInjectionEnv between the spiller and the filesystem: a full disk, writes
// that fail halfway, read errors, corrupted reads, a disk over the threshold, tombstones and
// compactions that cannot be written, and a kill or a power cut before each change to the disk
// (the spill directory, as each would leave it, recovered by a real store). Clients talk to it
// through the C API as usual.
#include <doctest.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "client_util.h"
#include "harness.h"
#include "spill_util.h"
#include "server/log.h"
#include "server/options.h"
#include "server/server.h"
#include "spill/deleted_log.h"
#include "spill/env.h"
#include "storeclient.h"

namespace fs = std::filesystem;
using namespace spill_test;

namespace {


// A store server on a thread of this process, spilling through a fault injector.
class InProcessStore {
 public:
  explicit InProcessStore(uint64_t memory = 64 * kMiB)
      : InProcessStore("", false, nullptr, memory) {}
  // A store on spill_dir ("" = a new one of its own), with --recover if recover; prepare (may
  // be empty) is called with the fault injector before the store starts, configure (may be
  // empty) with its options.
  InProcessStore(const std::string& spill_dir, bool recover,
                 const std::function<void(store::spill::FaultInjectionEnv&)>& prepare,
                 uint64_t memory = 64 * kMiB,
                 const std::function<void(store::ServerOptions&)>& configure = nullptr)
      : env_(store::spill::Env::Default()) {
    socket_ = tmp_.path + "/store.sock";
    spill_dir_ = spill_dir.empty() ? tmp_.path + "/spill" : spill_dir;
    if (spill_dir.empty()) REQUIRE(mkdir(spill_dir_.c_str(), 0700) == 0);
    if (prepare) prepare(env_);
    store::ServerOptions o;
    o.socket_path = socket_;
    o.memory = memory;
    o.spill_dirs = {spill_dir_};
    o.recover = recover;
    o.log_level = store::LogLevel::kWarn;
    if (configure) configure(o);
    store::SetLogLevel(store::LogLevel::kWarn);
    server_ = std::make_unique<store::Server>(o, &env_);
    thread_ = std::thread([this] { rc_ = server_->Run(); });
    bool up = test::WaitFor([&] { return rc_.load() != -1 || test::SocketAccepts(socket_); });
    if (!up || rc_.load() != -1) {
      thread_.join();
      FAIL("the in-process store did not start (Run returned ", rc_.load(), ")");
    }
    // One round trip: the loop is running, so Stop() can reach it.
    store_client* c = nullptr;
    REQUIRE(store_client_connect(&c, socket_.c_str(), nullptr) == STORE_OK);
    store_stats st = STORE_STATS_INIT;
    int rc = store_stats_get(c, &st);
    store_client_free(c);
    REQUIRE(rc == STORE_OK);
  }
  ~InProcessStore() { Stop(); }
  InProcessStore(const InProcessStore&) = delete;
  InProcessStore& operator=(const InProcessStore&) = delete;

  // Stops the server and returns what Run() returned (0 after a clean stop).
  int Stop() {
    if (thread_.joinable()) {
      server_->Stop();
      thread_.join();
    }
    return rc_.load();
  }

  store::spill::FaultInjectionEnv& env() { return env_; }
  const std::string& socket() const { return socket_; }
  const std::string& spill_dir() const { return spill_dir_; }

 private:
  TempDir tmp_;
  store::spill::FaultInjectionEnv env_;
  std::unique_ptr<store::Server> server_;
  std::thread thread_;
  std::atomic<int> rc_{-1};
  std::string socket_, spill_dir_;
};

ClientPtr Connect(const InProcessStore& s) { return test::Connect(s.socket(), "test_spill_faults"); }

// Offset of the object's record in its spill file (from its URL "...?offset=O&size=S").
uint64_t RecordOffset(store_client* c, const Obj& obj) {
  char buf[4096];
  int rc = store_spill_url(c, &obj.id, buf, sizeof buf);
  INFO(store_last_error_message());
  REQUIRE(rc == STORE_OK);
  std::string url = buf;
  size_t q = url.rfind("?offset=");
  size_t amp = url.find("&size=");
  REQUIRE(q != std::string::npos);
  REQUIRE(amp != std::string::npos);
  CHECK(std::stoull(url.substr(amp + 6)) == 16 + obj.meta + obj.size);
  return std::stoull(url.substr(q + 8, amp - q - 8));
}

// Every file under the spill directory other than the stores' LOCK files.
std::vector<std::string> FilesUnder(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (it->is_regular_file() && it->path().filename() != "LOCK") {
      out.push_back(it->path().string());
    }
  }
  return out;
}

std::vector<Obj> PutMany(store_client* c, const std::string& prefix, int n, uint64_t size,
                         uint64_t seed) {
  std::vector<Obj> objs;
  for (int i = 0; i < n; i++) {
    objs.push_back(MakeObj(prefix + "-" + std::to_string(i), seed + i, size, i % 2 ? 40 : 0));
    Put(c, objs.back());
  }
  return objs;
}

bool Contains(store_client* c, const Obj& o) {
  int present = -1;
  REQUIRE(store_contains(c, &o.id, &present) == STORE_OK);
  return present == 1;
}

// Evicts everything once spilling works again (after a failed write new spills pause ~1 s).
bool EvictSucceeds(store_client* c, uint64_t* spilled) {
  return test::WaitFor(
      [&] { return store_evict(c, kAll, spilled) == STORE_OK && *spilled > 0; },
      std::chrono::seconds(10));
}

// Spill files keep the records of deleted objects beside the others (no compaction).
void NoCompaction(store::ServerOptions& o) { o.spill_compact = 1.0; }

// n objects put and then spilled, each checked to be on disk.
std::vector<Obj> PutSpilled(store_client* c, const std::string& prefix, int n, uint64_t size,
                            uint64_t seed) {
  std::vector<Obj> objs = PutMany(c, prefix, n, size, seed);
  uint64_t spilled = 0;
  REQUIRE(EvictSucceeds(c, &spilled));
  for (const Obj& o : objs) REQUIRE(IsSpilled(c, o));
  return objs;
}

// The directory holding obj's spill file.
std::string SpillDirOf(store_client* c, const Obj& obj) {
  return fs::path(UrlOf(c, obj).path).parent_path();
}

// The tombstones the DELETED log at path holds, read as --recover reads them (-1: no log, or
// one --recover could not use).
int64_t TombstonesIn(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return -1;
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  store::spill::DeletedLog log = store::spill::ParseDeletedLog(bytes.data(), bytes.size());
  if (log.damaged || log.unsupported) return -1;
  return static_cast<int64_t>(log.tombstones.size());
}

// What this process writes to its standard error (the in-process server's log) while it lives.
class StderrCapture {
 public:
  explicit StderrCapture(const std::string& path) : path_(path) {
    saved_ = dup(STDERR_FILENO);
    int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    REQUIRE(fd >= 0);
    REQUIRE(dup2(fd, STDERR_FILENO) == STDERR_FILENO);
    close(fd);
  }
  ~StderrCapture() {
    dup2(saved_, STDERR_FILENO);
    close(saved_);
  }
  StderrCapture(const StderrCapture&) = delete;
  StderrCapture& operator=(const StderrCapture&) = delete;
  std::string Text() const {
    std::ifstream f(path_);
    return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  }

 private:
  std::string path_;
  int saved_ = -1;
};

}  // namespace

TEST_CASE("a full disk: spills fail, nothing is lost, creates that need a spill get ENODISK") {
  InProcessStore s;
  ClientPtr c = Connect(s);

  std::vector<Obj> objs = PutMany(c.get(), "full", 20, kMiB, 10);
  s.env().FailWritesAfter(0, ENOSPC);
  uint64_t spilled = 12345;
  int rc = store_evict(c.get(), kAll, &spilled);
  {
    INFO(store_last_error_message());
    CHECK((rc == STORE_ENODISK || (rc == STORE_OK && spilled == 0)));
  }
  CHECK(spilled == 0);
  store_stats st = Stats(c.get());
  CHECK(st.total_spill_failures >= 1);
  CHECK(st.total_spilled_objects == 0);
  CHECK(st.spill_files == 0);
  CHECK(st.spilling_count == 0);
  CHECK(FilesUnder(s.spill_dir()).empty());
  for (const Obj& o : objs) CHECK(InMemoryOnly(c.get(), o));
  for (const Obj& o : objs) ReadBack(c.get(), o);

  // A create that only fits after a spill fails with STORE_ENODISK instead of waiting forever.
  const Obj big = MakeObj("big", 99, 48 * kMiB);
  rc = TryPut(c.get(), big, 0, -1);
  {
    const std::string err = store_last_error_message();
    INFO(err);
    CHECK(rc == STORE_ENODISK);
  }
  st = Stats(c.get());
  CHECK(st.waiting_creates == 0);
  CHECK(st.object_count == objs.size());
  store_object_info none = STORE_OBJECT_INFO_INIT;
  CHECK(store_info(c.get(), &big.id, &none) == STORE_ENOTFOUND);
  // After the backoff the spiller tries again, fails again, and so does the create.
  const uint64_t failures = Stats(c.get()).total_spill_failures;
  CHECK(test::WaitFor(
      [&] {
        return TryPut(c.get(), big, 0, -1) == STORE_ENODISK &&
               Stats(c.get()).total_spill_failures > failures;
      },
      std::chrono::seconds(10)));
  CHECK(FilesUnder(s.spill_dir()).empty());
  for (const Obj& o : objs) ReadBack(c.get(), o);

  // The disk has room again: once the backoff is over, spilling works.
  s.env().FailWritesAfter(-1);
  CHECK(EvictSucceeds(c.get(), &spilled));
  CHECK(spilled >= objs.size() * kMiB);
  for (const Obj& o : objs) CHECK(IsSpilled(c.get(), o));
  st = Stats(c.get());
  CHECK(st.total_spilled_objects == objs.size());
  CHECK(st.spill_files >= 1);
  Put(c.get(), big, 0, -1);
  for (const Obj& o : objs) ReadBack(c.get(), o);
  ReadBack(c.get(), big);
  c.reset();
  CHECK(s.Stop() == 0);
}

TEST_CASE("a spill write that fails halfway leaves no partial file and loses nothing") {
  InProcessStore s;
  ClientPtr c = Connect(s);

  std::vector<Obj> objs = PutMany(c.get(), "half", 8, kMiB + 7, 100);
  const uint64_t before = s.env().bytes_written();
  // The batch is about 8 MiB: fail after 3.5 MiB of it.
  s.env().FailWritesAfter(3 * kMiB + 512 * kKiB, EIO);
  uint64_t spilled = 12345;
  int rc = store_evict(c.get(), kAll, &spilled);
  CHECK((rc == STORE_ENODISK || (rc == STORE_OK && spilled == 0)));
  CHECK(spilled == 0);
  CHECK(s.env().bytes_written() - before == 3 * kMiB + 512 * kKiB);  // it did write part
  {
    std::vector<std::string> files = FilesUnder(s.spill_dir());
    std::string list;
    for (auto& f : files) list += f + "\n";
    INFO(list);
    CHECK(files.empty());
  }
  store_stats st = Stats(c.get());
  CHECK(st.total_spill_failures == 1);
  CHECK(st.spill_files == 0);
  CHECK(st.spill_disk_bytes == 0);
  CHECK(st.object_count == objs.size());
  for (const Obj& o : objs) CHECK(InMemoryOnly(c.get(), o));
  for (const Obj& o : objs) ReadBack(c.get(), o);

  s.env().FailWritesAfter(-1);
  CHECK(EvictSucceeds(c.get(), &spilled));
  for (const Obj& o : objs) CHECK(IsSpilled(c.get(), o));
  for (const Obj& o : objs) ReadBack(c.get(), o);
  CHECK(Stats(c.get()).total_spill_failures == 1);
}

TEST_CASE("read errors: the restore fails with STORE_ECORRUPT and the object stays on disk") {
  InProcessStore s;
  ClientPtr c = Connect(s);

  std::vector<Obj> objs = PutMany(c.get(), "eio", 3, 2 * kMiB + 1, 200);
  uint64_t spilled = 0;
  REQUIRE(store_evict(c.get(), kAll, &spilled) == STORE_OK);
  for (const Obj& o : objs) REQUIRE(IsSpilled(c.get(), o));
  store_stats before = Stats(c.get());

  s.env().FailReads(EIO);
  store_reader* r = nullptr;
  CHECK(store_open_reader(c.get(), &r, &objs[0].id, 0) == STORE_ECORRUPT);
  CHECK(r == nullptr);
  CHECK(store_open_reader(c.get(), &r, &objs[0].id, 1000) == STORE_ECORRUPT);
  CHECK(IsSpilled(c.get(), objs[0]));
  // A prefetch fails quietly: the object stays on disk.
  REQUIRE(store_prefetch(c.get(), &objs[1].id, 1) == STORE_OK);
  REQUIRE(test::WaitFor([&] { return Stats(c.get()).total_restore_failures >= before.total_restore_failures + 3; }));
  REQUIRE(test::WaitFor([&] { return Quiet(c.get()); }));
  CHECK(IsSpilled(c.get(), objs[1]));
  store_stats st = Stats(c.get());
  CHECK(st.total_restore_failures == before.total_restore_failures + 3);
  CHECK(st.total_restored_objects == before.total_restored_objects);
  CHECK(st.used_bytes == before.used_bytes);
  CHECK(st.spilled_count == 3);

  // Readable again once the disk answers.
  s.env().FailReads(0);
  for (const Obj& o : objs) ReadBack(c.get(), o);
  st = Stats(c.get());
  CHECK(st.total_restored_objects == before.total_restored_objects + 3);
  CHECK(st.total_restore_failures == before.total_restore_failures + 3);
}

// Out of descriptors or of memory, the bytes on disk are fine: the restore's error says what ran
// out (a client told STORE_ECORRUPT might drop or recompute good data), and the object reads
// once there is enough again.
TEST_CASE("a restore that runs out of descriptors or memory says so, not STORE_ECORRUPT") {
  InProcessStore s;
  ClientPtr c = Connect(s);
  std::vector<Obj> objs = PutMany(c.get(), "resources", 3, kMiB, 250);
  uint64_t spilled = 0;
  REQUIRE(store_evict(c.get(), kAll, &spilled) == STORE_OK);
  for (const Obj& o : objs) REQUIRE(IsSpilled(c.get(), o));
  struct Case {
    const char* what;
    int err;
    bool open;  // the open of the spill file fails, else its read
    int code;
    const char* text;
  };
  for (const Case& k : {Case{"EMFILE", EMFILE, true, STORE_ELIMIT, "file descriptors"},
                        Case{"ENFILE", ENFILE, true, STORE_ELIMIT, "file descriptors"},
                        Case{"ENOMEM", ENOMEM, false, STORE_ENOMEM, "out of memory"}}) {
    INFO(k.what);
    if (k.open) {
      s.env().FailOpens("/spill-", k.err);
    } else {
      s.env().FailReads(k.err);
    }
    store_reader* r = nullptr;
    CHECK(store_open_reader(c.get(), &r, &objs[0].id, 1000) == k.code);
    std::string err = store_last_error_message();
    INFO(err);
    CHECK(err.find(k.text) != std::string::npos);
    CHECK(r == nullptr);
    CHECK(IsSpilled(c.get(), objs[0]));
    s.env().FailOpens("", 0);
    s.env().FailReads(0);
  }
  // Damaged bytes still say STORE_ECORRUPT, and a read error too.
  s.env().FailReads(EIO);
  store_reader* r = nullptr;
  CHECK(store_open_reader(c.get(), &r, &objs[1].id, 1000) == STORE_ECORRUPT);
  s.env().FailReads(0);
  for (const Obj& o : objs) ReadBack(c.get(), o);
}

TEST_CASE("a corrupted read of an object's data: STORE_ECORRUPT, never wrong bytes") {
  InProcessStore s;
  ClientPtr c = Connect(s);

  std::vector<Obj> objs = {MakeObj("flip-0", 300, kMiB, 10), MakeObj("flip-1", 301, 3 * kMiB, 33),
                           MakeObj("flip-2", 302, 64 * kKiB, 0)};
  for (const Obj& o : objs) Put(c.get(), o);
  uint64_t spilled = 0;
  REQUIRE(store_evict(c.get(), kAll, &spilled) == STORE_OK);
  const Obj& bad = objs[1];
  const uint64_t data_at = RecordOffset(c.get(), bad) + 16 + bad.meta;
  store_stats before = Stats(c.get());

  s.env().CorruptReadsAt(static_cast<int64_t>(data_at + bad.size - 1));  // its last byte
  store_reader* r = nullptr;
  CHECK(store_open_reader(c.get(), &r, &bad.id, 0) == STORE_ECORRUPT);
  CHECK(r == nullptr);
  CHECK(IsSpilled(c.get(), bad));
  // The other records of the file do not cover that offset.
  ReadBack(c.get(), objs[0]);
  ReadBack(c.get(), objs[2]);
  // Its metadata, too.
  s.env().CorruptReadsAt(static_cast<int64_t>(data_at - 1));
  CHECK(store_open_reader(c.get(), &r, &bad.id, 0) == STORE_ECORRUPT);
  // And its header.
  s.env().CorruptReadsAt(static_cast<int64_t>(RecordOffset(c.get(), bad) + 9));
  CHECK(store_open_reader(c.get(), &r, &bad.id, 0) == STORE_ECORRUPT);
  store_stats st = Stats(c.get());
  CHECK(st.total_restore_failures == before.total_restore_failures + 3);
  CHECK(st.total_restored_objects == before.total_restored_objects + 2);

  s.env().CorruptReadsAt(-1);
  ReadBack(c.get(), bad);
}

TEST_CASE("a disk over the threshold: creates and restores that need a spill get STORE_ENODISK") {
  InProcessStore s;
  ClientPtr c = Connect(s);

  // One object on disk before the disk fills up.
  const Obj x = MakeObj("spilled-before", 498, 8 * kMiB, 8);
  Put(c.get(), x);
  uint64_t spilled = 0;
  REQUIRE(store_evict(c.get(), kAll, &spilled) == STORE_OK);
  REQUIRE(IsSpilled(c.get(), x));

  s.env().SetDiskUsedFraction(0.99);  // the default threshold is 0.95
  std::vector<Obj> objs = PutMany(c.get(), "threshold", 40, kMiB, 400);
  const Obj big = MakeObj("big", 499, 32 * kMiB);
  int rc = TryPut(c.get(), big, 0, -1);
  {
    const std::string err = store_last_error_message();
    INFO(err);
    CHECK(rc == STORE_ENODISK);
  }
  spilled = 1;
  CHECK(store_evict(c.get(), kAll, &spilled) == STORE_ENODISK);
  CHECK(spilled == 0);
  store_stats st = Stats(c.get());
  CHECK(st.waiting_creates == 0);
  CHECK(st.total_spilled_objects == 1);
  CHECK(st.spill_files == 1);
  CHECK(FilesUnder(s.spill_dir()).size() == 1);
  for (const Obj& o : objs) CHECK(InMemoryOnly(c.get(), o));
  for (const Obj& o : objs) ReadBack(c.get(), o);

  // Fill the rest of memory: the spilled object has nowhere to be restored to.
  std::vector<Obj> extra;
  for (int i = 0; i < 100; i++) {
    Obj o = MakeObj("extra-" + std::to_string(i), 450 + i, kMiB);
    rc = TryPut(c.get(), o, 0, 0);
    if (rc == STORE_ENOSPACE) break;
    REQUIRE(rc == STORE_OK);
    extra.push_back(o);
  }
  REQUIRE(test::WaitFor([&] { return Quiet(c.get()); }));
  st = Stats(c.get());
  REQUIRE(st.capacity_bytes - st.used_bytes < x.size);
  store_reader* r = nullptr;
  rc = store_open_reader(c.get(), &r, &x.id, 0);
  {
    const std::string err = store_last_error_message();
    INFO(err);
    CHECK(rc == STORE_ENODISK);
    CHECK(r == nullptr);
  }
  CHECK(IsSpilled(c.get(), x));
  CHECK(Stats(c.get()).used_bytes == st.used_bytes);

  // Just under the threshold the directory is used again.
  s.env().SetDiskUsedFraction(0.9);
  ReadBack(c.get(), x);
  Put(c.get(), big, 0, -1);
  st = Stats(c.get());
  CHECK(st.total_spilled_objects > 1);
  for (const Obj& o : objs) ReadBack(c.get(), o);
  for (const Obj& o : extra) ReadBack(c.get(), o);
  ReadBack(c.get(), big);
  ReadBack(c.get(), x);
  s.env().SetDiskUsedFraction(-1);
}

TEST_CASE("a tombstone that cannot be written: the delete says it is not durable; later ones are") {
  InProcessStore s;
  ClientPtr c = Connect(s);
  // Four objects in one spill file: deleting one while the others keep the file needs a
  // tombstone in the directory's DELETED log.
  std::vector<Obj> objs = PutMany(c.get(), "tomb", 4, kMiB, 800);
  uint64_t spilled = 0;
  REQUIRE(EvictSucceeds(c.get(), &spilled));
  for (const Obj& o : objs) REQUIRE(IsSpilled(c.get(), o));

  s.env().FailWritesTo("/DELETED", EIO);
  int rc = store_delete(c.get(), &objs[0].id);
  std::string err = store_last_error_message();
  INFO(err);
  CHECK(rc == STORE_ENODISK);
  CHECK(err.find("--recover") != std::string::npos);
  CHECK(err.find("DELETED") != std::string::npos);
  // Deleted all the same: gone from view.
  store_object_info none = STORE_OBJECT_INFO_INIT;
  CHECK(store_info(c.get(), &objs[0].id, &none) == STORE_ENOTFOUND);
  // A delete of many ids: the ones that needed the log say so, the missing one is ENOTFOUND.
  store_object_id ids[2] = {objs[1].id, objs[0].id};
  size_t deleted = 9;
  rc = store_delete_many(c.get(), ids, 2, &deleted);
  CHECK(rc == STORE_ENODISK);
  CHECK(deleted == 0);

  // The disk works again: deletes are durable (acknowledged with STORE_OK) again.
  s.env().FailWritesTo("", 0);
  CHECK(store_delete(c.get(), &objs[2].id) == STORE_OK);
  ReadBack(c.get(), objs[3]);
  CHECK(store_delete(c.get(), &objs[3].id) == STORE_OK);
  CHECK(test::WaitFor([&] { return FilesUnder(s.spill_dir()).size() <= 1; }));
  store_stats st = Stats(c.get());
  CHECK(st.object_count == 0);
  CHECK(st.spill_files == 0);
  c.reset();
  CHECK(s.Stop() == 0);
}

// A delete told STORE_ENODISK is still a delete: its tombstone is kept and written by the store
// once the disk works again, so that a store recovered from what is on disk after that does not
// serve the object again. The same when the write that failed was a rewrite of the log
// (--recover reads the log as it was before it).
TEST_CASE("a tombstone that could not be written is written once the disk works again") {
  for (const bool rewrite : {false, true}) {
    CAPTURE(rewrite);
    // No compaction: the deleted objects' records stay on disk beside the kept one's. The log
    // rewritten once it holds 3 entries and most name records of removed files: the first
    // delete below, after two of a removed file, makes it a rewrite, which fails.
    InProcessStore s("", false, nullptr, 64 * kMiB, [&](store::ServerOptions& o) {
      NoCompaction(o);
      if (rewrite) o.tombstone_rewrite_entries = 3;
    });
    ClientPtr c = Connect(s);
    std::vector<Obj> gone = PutSpilled(c.get(), "tomb-gone", 2, kMiB, 900);
    std::vector<Obj> objs = PutSpilled(c.get(), "tomb-kept", 4, kMiB, 910);
    const std::string log = SpillDirOf(c.get(), objs[0]) + "/DELETED";
    if (rewrite) {
      // Two tombstones whose file then goes: the next write rewrites the log.
      for (const Obj& o : gone) Delete(c.get(), o);
      REQUIRE(test::WaitFor([&] { return Quiet(c.get()) && Stats(c.get()).spill_files == 1; }));
    }

    // Not written: the delete says so. The next delete's own is written at once; the store
    // tries the first again once its pause after a failure is over.
    s.env().FailWritesTo("/DELETED", EIO);
    CHECK(store_delete(c.get(), &objs[0].id) == STORE_ENODISK);
    CHECK(Stats(c.get()).spill_undurable_deletes == 1);
    s.env().FailWritesTo("", 0);
    CHECK(store_delete(c.get(), &objs[1].id) == STORE_OK);
    s.env().FailWritesTo("/DELETED", EIO);
    CHECK(store_delete(c.get(), &objs[2].id) == STORE_ENODISK);
    CHECK(Stats(c.get()).spill_undurable_deletes >= 1);  // 2 unless the first was written since
    s.env().FailWritesTo("", 0);
    CHECK(test::WaitFor([&] { return TombstonesIn(log) == (rewrite ? 5 : 3); },
                        std::chrono::seconds(10)));
    // (Counted once the loop hears of the write, a moment after the file shows it.)
    CHECK(test::WaitFor([&] { return Stats(c.get()).spill_undurable_deletes == 0; }));

    // A crash now: the spill directory as it is, recovered. (The log holds the three, and with
    // a rewrite, the two of the removed file: the rewrite failed, the appends did not.)
    TempDir image;
    fs::copy(s.spill_dir(), image.path + "/spill", fs::copy_options::recursive);
    test::TestStore r("16M", SpillArgs(image.path + "/spill", {"--recover", "--no-prefault"}));
    INFO(r.Log());
    REQUIRE(r.started());
    ClientPtr rc = test::Connect(r.socket(), "after the crash");
    for (int i = 0; i < 3; i++) {
      bool intact = false;
      CHECK(TryRead(rc.get(), objs[i], &intact) == STORE_ENOTFOUND);
    }
    ReadBack(rc.get(), objs[3]);
    CHECK(Stats(rc.get()).object_count == (rewrite ? 1 : 3));
    rc.reset();
    CHECK(ExitedZero(r.Stop()));

    CHECK(store_delete(c.get(), &objs[3].id) == STORE_OK);
    if (!rewrite) {
      for (const Obj& o : gone) Delete(c.get(), o);
    }
    CHECK(test::WaitFor([&] { return FilesUnder(s.spill_dir()).empty(); }));
    c.reset();
    CHECK(s.Stop() == 0);
  }
}

// While the log keeps failing, each delete tries only its own tombstone; the ones that failed
// before are tried again once a second. (Each delete used to try them all: 2,000 deletes tried
// 32 MB.)
TEST_CASE("deletes while the tombstone log fails try their own tombstones, not all that failed") {
  InProcessStore s("", false, nullptr, 64 * kMiB, NoCompaction);
  ClientPtr c = Connect(s);
  constexpr int kN = 2000;
  std::vector<Obj> objs = PutSpilled(c.get(), "backlog", kN, 4 * kKiB, 940);
  const std::string log = SpillDirOf(c.get(), objs[0]) + "/DELETED";
  // All but the last, which keeps the file and so the log.
  s.env().FailWritesTo("/DELETED", EIO);
  int refused = 0;
  for (int i = 0; i + 1 < kN; i++) refused += store_delete(c.get(), &objs[i].id) == STORE_ENODISK;
  CHECK(refused == kN - 1);
  CHECK(Stats(c.get()).spill_undurable_deletes == kN - 1);
  // Each tombstone once with its delete (a write of 64 bytes: it is written twice, each copy
  // with its header), and all of them once a second (32 bytes each, and the headers; the
  // deletes take well under a second here, under the sanitizers a few).
  const uint64_t tried = s.env().refused_write_bytes();
  MESSAGE(tried << " bytes of tombstones tried for " << kN << " deletes");
  CHECK(tried <= 64 * kN + 32 * kN * 8);
  s.env().FailWritesTo("", 0);
  CHECK(test::WaitFor([&] { return TombstonesIn(log) == kN - 1; }, std::chrono::seconds(10)));
  CHECK(test::WaitFor([&] { return Stats(c.get()).spill_undurable_deletes == 0; }));
  Delete(c.get(), objs.back());
  CHECK(test::WaitFor([&] { return Quiet(c.get()) && FilesUnder(s.spill_dir()).empty(); }));
  c.reset();
  CHECK(s.Stop() == 0);
}

// A store recovered from dir serves objs[2] and objs[3] (each read back), not objs[0] and
// objs[1]; once it deletes the two, dir is empty.
void RecoveredServesLastTwo(const std::string& dir, const std::vector<Obj>& objs) {
  InProcessStore s(dir, true, nullptr, 64 * kMiB, NoCompaction);
  ClientPtr c = Connect(s);
  CHECK_FALSE(Contains(c.get(), objs[0]));
  CHECK_FALSE(Contains(c.get(), objs[1]));
  ReadBack(c.get(), objs[2]);
  ReadBack(c.get(), objs[3]);
  Delete(c.get(), objs[2]);
  Delete(c.get(), objs[3]);
  CHECK(test::WaitFor([&] { return Quiet(c.get()) && FilesUnder(dir).empty(); }));
  c.reset();
  CHECK(s.Stop() == 0);
}

// --recover cannot tell the deleted objects of a directory whose DELETED log it cannot read from
// the others: it serves none of that directory's files (they stay on disk, and an error says
// why), never the deleted ones. Once the log reads, a later --recover serves the others.
TEST_CASE("--recover with a DELETED log it cannot read serves nothing of that directory") {
  TempDir work;
  const std::string dir = work.Sub("spill");
  std::vector<Obj> objs;
  {
    InProcessStore s(dir, false, nullptr, 64 * kMiB, NoCompaction);
    ClientPtr c = Connect(s);
    objs = PutSpilled(c.get(), "unreadable-log", 4, kMiB, 960);
    Delete(c.get(), objs[0]);
    Delete(c.get(), objs[1]);
    c.reset();
    CHECK(s.Stop() == 0);  // the spill file of the other two stays, and the log
  }
  const size_t files = FilesUnder(dir).size();
  REQUIRE(files == 2);  // the spill file and its DELETED log
  {
    StderrCapture err(work.path + "/stderr");
    InProcessStore s(dir, true, [](store::spill::FaultInjectionEnv& env) {
      env.FailOpens("/DELETED", EIO);
    });
    ClientPtr c = Connect(s);
    for (const Obj& o : objs) CHECK_FALSE(Contains(c.get(), o));
    CHECK(Stats(c.get()).object_count == 0);
    c.reset();
    CHECK(s.Stop() == 0);
    const std::string log = err.Text();
    INFO(log);
    CHECK(log.find("DELETED") != std::string::npos);
    CHECK(log.find("not served") != std::string::npos);
  }
  CHECK(FilesUnder(dir).size() == files);  // nothing removed
  RecoveredServesLastTwo(dir, objs);
}

// A log --recover found in the first format is written anew at start. If that write fails, no
// delete is at stake: the log on disk still holds them all. A warning says so (not the error
// about deletes that are not durable), and the next delete there writes it anew.
TEST_CASE("a log to be written anew that cannot be stays as it is; the next delete writes it") {
  TempDir work;
  const std::string dir = work.Sub("spill");
  std::vector<Obj> objs;
  std::string log;
  {
    InProcessStore s(dir, false, nullptr, 64 * kMiB, NoCompaction);
    ClientPtr c = Connect(s);
    objs = PutSpilled(c.get(), "first-format", 4, kMiB, 970);
    const std::string file = UrlOf(c.get(), objs[0]).path;
    const uint64_t number = std::stoull(fs::path(file).filename().string().substr(6));
    const uint64_t offset = RecordOffset(c.get(), objs[0]);
    log = SpillDirOf(c.get(), objs[0]) + "/DELETED";
    Delete(c.get(), objs[0]);
    c.reset();
    CHECK(s.Stop() == 0);
    // The log as a store of the first format wrote it: one bare record.
    std::ofstream f(log, std::ios::binary | std::ios::trunc);
    for (uint64_t v : {number, offset}) {
      for (int b = 0; b < 8; b++) f.put(static_cast<char>(v >> (8 * b)));
    }
  }
  REQUIRE(fs::file_size(log) == 16);
  {
    StderrCapture err(work.path + "/stderr");
    InProcessStore s(dir, true, [](store::spill::FaultInjectionEnv& env) {
      env.FailWritesTo("/DELETED", EIO);
    }, 64 * kMiB, NoCompaction);
    ClientPtr c = Connect(s);
    CHECK_FALSE(Contains(c.get(), objs[0]));
    ReadBack(c.get(), objs[1]);
    CHECK(test::WaitFor([&] { return err.Text().find("stays as it is") != std::string::npos; }));
    CHECK(Stats(c.get()).spill_undurable_deletes == 0);
    CHECK(fs::file_size(log) == 16);
    s.env().FailWritesTo("", 0);
    CHECK(store_delete(c.get(), &objs[1].id) == STORE_OK);
    CHECK(TombstonesIn(log) == 2);
    c.reset();
    CHECK(s.Stop() == 0);
    const std::string text = err.Text();
    INFO(text);
    CHECK(text.find("not durable") == std::string::npos);
  }
  std::ifstream f(log, std::ios::binary);
  std::string head(8, '\0');
  f.read(head.data(), 8);
  CHECK(head == "STDELLOG");
  RecoveredServesLastTwo(dir, objs);
}

TEST_CASE("a tombstone that could not be written is written at a clean stop") {
  InProcessStore s("", false, nullptr, 64 * kMiB, NoCompaction);
  ClientPtr c = Connect(s);
  std::vector<Obj> objs = PutSpilled(c.get(), "tomb-stop", 2, kMiB, 920);
  const std::string spill_dir = SpillDirOf(c.get(), objs[0]);
  s.env().FailWritesTo("/DELETED", EIO);
  CHECK(store_delete(c.get(), &objs[0].id) == STORE_ENODISK);
  s.env().FailWritesTo("", 0);
  c.reset();
  CHECK(s.Stop() == 0);  // well before the store's own try, a second after the failure
  CHECK(TombstonesIn(spill_dir + "/DELETED") == 1);
  // What the stop left, recovered: the deleted object is not served, the other one is.
  test::TestStore r("16M", SpillArgs(s.spill_dir(), {"--recover", "--no-prefault"}));
  INFO(r.Log());
  REQUIRE(r.started());
  ClientPtr rc = test::Connect(r.socket(), "after the stop");
  bool intact = false;
  CHECK(TryRead(rc.get(), objs[0], &intact) == STORE_ENOTFOUND);
  ReadBack(rc.get(), objs[1]);
  Delete(rc.get(), objs[1]);
  CHECK(test::WaitFor([&] { return Quiet(rc.get()) && FilesUnder(s.spill_dir()).empty(); }));
  rc.reset();
  CHECK(ExitedZero(r.Stop()));
}

TEST_CASE("a compaction that cannot write its new file: counted as failed, the old file stays") {
  InProcessStore s;  // --spill-compact 0.5 (the default)
  ClientPtr c = Connect(s);
  // Four objects in one spill file; deleting three makes more than half of it dead.
  std::vector<Obj> objs = PutMany(c.get(), "cmpfail", 4, kMiB, 900);
  uint64_t spilled = 0;
  REQUIRE(EvictSucceeds(c.get(), &spilled));
  for (const Obj& o : objs) REQUIRE(IsSpilled(c.get(), o));
  const std::string path = UrlOf(c.get(), objs[3]).path;
  const uint64_t size = fs::file_size(path);
  store_stats st = Stats(c.get());
  CHECK(st.total_compactions == 0);
  CHECK(st.total_compact_failures == 0);

  // The compaction writes its new file as <name>.bin.tmp; only those writes fail.
  s.env().FailWritesTo(".bin.tmp", EIO);
  for (size_t i = 0; i < 3; i++) Delete(c.get(), objs[i]);
  CHECK(test::WaitFor([&] { return Stats(c.get()).total_compact_failures == 1; }));
  st = Stats(c.get());
  CHECK(st.total_compact_failures == 1);
  CHECK(st.total_compactions == 0);
  CHECK(st.total_compact_bytes_copied == 0);
  CHECK(st.total_compact_bytes_freed == 0);
  // Nothing lost, nothing left behind: the old file as it was, the partial one removed.
  CHECK(st.spill_files == 1);
  CHECK(st.spill_disk_bytes == size);
  CHECK(UrlOf(c.get(), objs[3]).path == path);
  CHECK(fs::file_size(path) == size);
  for (const std::string& f : FilesUnder(s.spill_dir())) {
    CHECK(f.find(".tmp") == std::string::npos);
  }
  ReadBack(c.get(), objs[3]);

  s.env().FailWritesTo("", 0);
  Delete(c.get(), objs[3]);
  CHECK(test::WaitFor([&] { return Stats(c.get()).spill_files == 0; }));
  st = Stats(c.get());
  CHECK(st.total_compact_failures == 1);
  CHECK(st.total_compactions == 0);
  c.reset();
  CHECK(s.Stop() == 0);
}

// A compaction moves an object's record to a new file while a restore still reads the old one,
// which then stays on disk until that read ends. A delete of the moved object must tombstone
// its old record too: a crash before the old file's unlink, then --recover, used to find that
// record untombstoned and serve the deleted object again. The crash is the spill directory as
// it is at that moment, copied, and recovered by a real store.
TEST_CASE("an object deleted after its file was compacted, while the old file is still read, "
          "does not come back after a crash") {
  InProcessStore s;  // --spill-compact 0.5 (the default)
  ClientPtr c = Connect(s);
  const Obj big = MakeObj("moved-big", 950, 4 * kMiB), k = MakeObj("moved-k", 951, 64 * kKiB, 9),
            dead = MakeObj("moved-dead", 952, 8 * kMiB);
  for (const Obj* o : {&big, &k, &dead}) Put(c.get(), *o);
  uint64_t spilled = 0;
  REQUIRE(EvictSucceeds(c.get(), &spilled));
  const std::string old_file = UrlOf(c.get(), k).path;
  REQUIRE(UrlOf(c.get(), big).path == old_file);
  REQUIRE(UrlOf(c.get(), dead).path == old_file);

  // A restore of big holds the old file: its first read waits until released.
  s.env().HoldNextReadOf(256 * kKiB);
  ClientPtr reader = Connect(s);
  std::atomic<int> open_rc{1};
  std::thread restore([&] {
    store_reader* r = nullptr;
    open_rc = store_open_reader(reader.get(), &r, &big.id, 30000);
    if (open_rc == STORE_OK) store_reader_close(r);
  });
  REQUIRE(test::WaitFor([&] { return s.env().read_held(); }));

  // Two thirds of the file dead: it is compacted, k moves into the new file.
  Delete(c.get(), dead);
  REQUIRE(test::WaitFor([&] { return Stats(c.get()).total_compactions == 1; }));
  const std::string new_file = UrlOf(c.get(), k).path;
  CHECK(new_file != old_file);
  REQUIRE(fs::exists(old_file));  // still read
  Delete(c.get(), k);             // durable when it returns

  // The crash: the spill directory as it is now.
  TempDir crash;
  const std::string copy = crash.Sub("spill");
  fs::copy(s.spill_dir(), copy, fs::copy_options::recursive);
  CHECK(fs::exists(copy + old_file.substr(s.spill_dir().size())));

  s.env().ReleaseHeldRead();
  restore.join();
  CHECK(open_rc == STORE_OK);
  reader.reset();
  c.reset();
  CHECK(s.Stop() == 0);

  test::TestStore r("64M", SpillArgs(copy, {"--recover"}));
  INFO(r.Log());
  REQUIRE(r.started());
  ClientPtr rc = test::Connect(r.socket(), "after the crash");
  int present = -1;
  REQUIRE(store_contains(rc.get(), &k.id, &present) == STORE_OK);
  CHECK(present == 0);
  REQUIRE(store_contains(rc.get(), &dead.id, &present) == STORE_OK);
  CHECK(present == 0);
  ReadBack(rc.get(), big);
  CHECK(Stats(rc.get()).object_count == 1);
}

namespace {

// What each crash must show of an object: spilled_from, the first crash after the test saw it
// spilled (every later one has it, unless it was deleted meanwhile); delete_sent, the first
// crash after its delete was sent (every earlier one has it, if spilled); deleted_from, the
// first after the delete returned (no later one has it).
constexpr uint64_t kNever = UINT64_MAX;
struct Tracked {
  Obj obj;
  uint64_t spilled_from = kNever, delete_sent = kNever, deleted_from = kNever;
};

// Recovers each crash image under dir ("kill-N" and "cut-N" for N < total) with a real store
// and checks it against objs: the store starts; an object it serves is byte-exact; none whose
// delete returned before the crash; every one spilled before the crash and not yet being
// deleted, for crashes before `stopping` (a crash while the store stops may leave less).
// Removes each image once checked.
void CheckCrashes(const std::string& dir, uint64_t total, uint64_t stopping,
                  const std::vector<Tracked>& objs) {
  int lost = 0, back = 0, damaged = 0, failed = 0;
  for (uint64_t k = 0; k < 2 * total; k++) {
    const uint64_t n = k / 2;
    const bool cut = k % 2 == 1;
    const std::string image = dir + (cut ? "/cut-" : "/kill-") + std::to_string(n);
    INFO((cut ? "a power cut" : "a kill") << " before change " << n);
    test::TestStore r("16M", SpillArgs(image, {"--recover", "--no-prefault"}));
    INFO(r.Log());
    if (!r.started()) {
      failed++;
      CHECK(r.started());
      continue;
    }
    ClientPtr rc = test::Connect(r.socket(), "after the crash");
    uint64_t present = 0;
    for (const Tracked& t : objs) {
      bool intact = false;
      int got = TryRead(rc.get(), t.obj, &intact);
      CHECK((got == STORE_OK || got == STORE_ENOTFOUND));
      if (got == STORE_OK) {
        present++;
        if (!intact) damaged++;
        if (n >= t.deleted_from) {
          back++;
          const std::string what = std::string(cut ? "power cut " : "kill ") +
                                   std::to_string(n) + ": deleted object " + Hex(t.obj.id) +
                                   " came back";
          MESSAGE(what);
        }
      } else if (n >= t.spilled_from && n < t.delete_sent && n < stopping) {
        lost++;
        const std::string what = std::string(cut ? "power cut " : "kill ") +
                                 std::to_string(n) + ": spilled object " + Hex(t.obj.id) +
                                 " was lost";
        MESSAGE(what);
      }
    }
    CHECK(Stats(rc.get()).object_count == present);
    rc.reset();
    CHECK(ExitedZero(r.Stop()));
    fs::remove_all(image);
  }
  CHECK(failed == 0);
  CHECK(lost == 0);
  CHECK(back == 0);
  CHECK(damaged == 0);
}

// Before each change the fault injector sees, the kill image and the power-cut image of the
// spill directory under dir, numbered by a counter (*steps: the next change's number). Any
// image that could not be written is counted in *errors.
void RecordCrashes(store::spill::FaultInjectionEnv& env, const std::string& spill_dir,
                   const std::string& dir, std::atomic<uint64_t>* steps,
                   std::atomic<int>* errors) {
  env.BeforeEachChange([&env, spill_dir, dir, steps, errors] {
    const uint64_t n = steps->load();
    std::error_code ec;
    fs::copy(spill_dir, dir + "/kill-" + std::to_string(n), fs::copy_options::recursive, ec);
    if (ec) (*errors)++;
    if (env.WritePowerCutImage(dir + "/cut-" + std::to_string(n)) != 0) (*errors)++;
    steps->store(n + 1);
  });
  env.ModelPowerCuts(spill_dir);
}

// How many of the kill images under dir (of changes before `total`) hold a file named `name`.
int ImagesWith(const std::string& dir, uint64_t total, const std::string& name) {
  int n = 0;
  for (uint64_t i = 0; i < total; i++) {
    std::error_code ec;
    for (auto it = fs::recursive_directory_iterator(dir + "/kill-" + std::to_string(i), ec);
         !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
      if (it->path().filename() == name) {
        n++;
        break;
      }
    }
  }
  return n;
}

// Tombstone logs rewritten (without the entries of removed files) at a few entries, so that
// the crash tests see rewrites: --recover reads either log whole, never a part of the new one.
constexpr uint64_t kCrashTestRewriteEntries = 4;

}  // namespace

// A crash just before each change the spiller makes to the disk, one after another: every file
// written, synced, renamed, linked or removed while objects are spilled, restored, deleted (their
// tombstones) and their files compacted or removed. Each change is preceded by two crashes: a
// kill (the spill directory as it is at that moment, copied) and a power cut (what the model of
// FaultInjectionEnv::ModelPowerCuts keeps: the bytes each file had at its last fdatasync, the
// names each directory had at its last fsync). Each is recovered by a real store: it serves
// every object that was spilled and not yet deleted, byte-exact, and none whose delete was
// acknowledged. (Shown to fail without the directory fsync after a spill file's rename, or
// after a tombstone log's creation, or with tombstones not written.)
TEST_CASE("a kill or a power cut just before any change to the spill files loses no spilled "
          "object and brings back no deleted one") {
  TempDir crashes;
  // --spill-compact 0.5 (the default)
  InProcessStore s("", false, nullptr, 64 * kMiB, [](store::ServerOptions& o) {
    o.tombstone_rewrite_entries = kCrashTestRewriteEntries;
  });
  ClientPtr c = Connect(s);
  // The crashes, numbered by the change they come before: steps is the next one's number.
  std::atomic<uint64_t> steps{0};
  std::atomic<int> image_errors{0};
  RecordCrashes(s.env(), s.spill_dir(), crashes.path, &steps, &image_errors);
  std::vector<Tracked> objs;
  for (int i = 0; i < 16; i++) {
    objs.push_back({MakeObj("every-step-" + std::to_string(i), 2000 + i, 96 * kKiB + 8 * i,
                            i % 2 ? 40 : 0)});
  }
  // Four spill files of four objects.
  for (int f = 0; f < 4; f++) {
    for (int i = 4 * f; i < 4 * f + 4; i++) Put(c.get(), objs[i].obj);
    uint64_t spilled = 0;
    REQUIRE(EvictSucceeds(c.get(), &spilled));
    for (int i = 4 * f; i < 4 * f + 4; i++) {
      REQUIRE(IsSpilled(c.get(), objs[i].obj));
      objs[i].spilled_from = steps.load();
    }
  }
  REQUIRE(Stats(c.get()).spill_files == 4);
  // The last file read back: its objects in memory, their copies still on disk.
  for (int i = 12; i < 16; i++) ReadBack(c.get(), objs[i].obj);
  auto del = [&](int i) {
    objs[i].delete_sent = steps.load();
    Delete(c.get(), objs[i].obj);
    objs[i].deleted_from = steps.load();
  };
  // Three of file 0 (it is compacted: its last object moves), one of file 1, all of file 2
  // (it is removed), one read back from file 3.
  for (int i : {0, 1, 2, 5, 8, 9, 10, 11, 13}) del(i);
  REQUIRE(test::WaitFor([&] {
    store_stats st = Stats(c.get());
    return st.total_compactions >= 1 && st.spill_files == 3 && Quiet(c.get());
  }));
  // The rest of file 1, then the moved object (its old file gone); then the rest: every spill
  // file and the tombstone log go.
  for (int i : {4, 6, 3}) del(i);
  REQUIRE(test::WaitFor([&] { return Quiet(c.get()); }));
  for (int i : {7, 12, 14, 15}) del(i);
  REQUIRE(test::WaitFor([&] { return Quiet(c.get()) && Stats(c.get()).spill_files == 0; }));
  const uint64_t stopping = steps.load();
  c.reset();
  CHECK(s.Stop() == 0);
  s.env().BeforeEachChange(nullptr);
  const uint64_t total = steps.load();
  MESSAGE(total << " changes to the spill files, " << stopping << " before the stop");
  REQUIRE(total > 40);
  // The log was rewritten (after files 0 and 2 went, 2 of its 9 entries name a record).
  CHECK(ImagesWith(crashes.path, total, "DELETED.tmp") >= 3);

  REQUIRE(image_errors == 0);
  CheckCrashes(crashes.path, total, stopping, objs);
}

// The same for the changes a store started with --recover makes to what a crash left (a
// half-written file removed, a file of leased objects removed, a damaged file linked into
// quarantine, the old instance's directory adopted) and then while its recovered objects are
// deleted until the old directory goes: a crash at any of those moments, recovered again, serves
// the same objects, none deleted, nothing damaged.
TEST_CASE("a kill or a power cut at any step of a recovery and of the deletes after it loses no "
          "recovered object and brings back no deleted one") {
  TempDir work;
  const std::string left = work.Sub("left");  // what the first store's crash left
  std::vector<Tracked> objs;
  for (int i = 0; i < 12; i++) {
    objs.push_back({MakeObj("recovered-" + std::to_string(i), 3000 + i, 80 * kKiB + 8 * i,
                            i % 2 ? 24 : 0)});
  }
  std::vector<Tracked> leased;
  for (int i = 0; i < 4; i++) {
    leased.push_back({MakeObj("recovered-leased-" + std::to_string(i), 3100 + i, 64 * kKiB)});
  }
  {
    InProcessStore s;
    ClientPtr c = Connect(s);
    // Three spill files of four objects, and one of objects created leased.
    for (int f = 0; f < 3; f++) {
      for (int i = 4 * f; i < 4 * f + 4; i++) Put(c.get(), objs[i].obj);
      uint64_t spilled = 0;
      REQUIRE(EvictSucceeds(c.get(), &spilled));
    }
    ClientPtr holder = Connect(s);
    for (Tracked& t : leased) {
      std::vector<uint8_t> data = Bytes(t.obj.seed, t.obj.size);
      store_create_options o = STORE_CREATE_OPTIONS_INIT;
      o.flags = STORE_CREATE_LEASED;
      REQUIRE(store_put(holder.get(), &t.obj.id, data.data(), data.size(), &o) == STORE_OK);
      t.deleted_from = 0;  // its lease holders go with the store
    }
    uint64_t spilled = 0;
    REQUIRE(EvictSucceeds(c.get(), &spilled));
    for (const Tracked& t : objs) REQUIRE(IsSpilled(c.get(), t.obj));
    for (const Tracked& t : leased) REQUIRE(IsSpilled(c.get(), t.obj));
    // One of the first file and one of the second deleted (tombstones in the log).
    for (int i : {1, 6}) {
      Delete(c.get(), objs[i].obj);
      objs[i].deleted_from = 0;
    }
    // The third file's index damaged (its last entry): the file goes into quarantine, and the
    // records the rest of the index names are served.
    const std::string damaged_file = UrlOf(c.get(), objs[9].obj).path;
    const uint64_t at = fs::file_size(damaged_file) - 40 - 44 + 30;
    REQUIRE(test::WaitFor([&] { return Quiet(c.get()); }));
    // The crash: the spill directory as it is now, with a spill file half-written.
    fs::copy(s.spill_dir(), left, fs::copy_options::recursive);
    const std::string instance = fs::path(damaged_file).parent_path().filename().string();
    FlipByte(left + "/" + instance + "/" + fs::path(damaged_file).filename().string(), at);
    WriteJunk(left + "/" + instance + "/spill-99.bin.tmp", 7, 5000);
    holder.reset();
    c.reset();
    CHECK(s.Stop() == 0);
  }
  for (int i = 0; i < 12; i++) {
    if (i != 1 && i != 6) objs[i].spilled_from = 0;  // on disk all along
  }

  const std::string crashes = work.Sub("crashes");
  std::atomic<uint64_t> steps{0};
  std::atomic<int> image_errors{0};
  uint64_t stopping = 0;
  {
    StderrCapture err(work.path + "/stderr");  // the recovery's log
    InProcessStore s(
        left, true,
        [&](store::spill::FaultInjectionEnv& env) {
          RecordCrashes(env, left, crashes, &steps, &image_errors);
        },
        64 * kMiB,
        [](store::ServerOptions& o) { o.tombstone_rewrite_entries = kCrashTestRewriteEntries; });
    ClientPtr c = Connect(s);
    int unnamed = 0;  // the damaged entry's record: the index no longer names it
    for (size_t i = 0; i < objs.size(); i++) {
      Tracked& t = objs[i];
      INFO(Hex(t.obj.id));
      const bool there = Contains(c.get(), t.obj);
      if (!there && t.spilled_from == 0 && i >= 8) {
        unnamed++;
        t.spilled_from = kNever;
        continue;
      }
      CHECK(there == (t.spilled_from == 0));
    }
    CHECK(unnamed == 1);
    for (const Tracked& t : leased) CHECK_FALSE(Contains(c.get(), t.obj));
    auto del = [&](int i) {
      objs[i].delete_sent = steps.load();
      Delete(c.get(), objs[i].obj);
      objs[i].deleted_from = steps.load();
    };
    // The rest of the second file (it goes), two read back first; then three quarters of the
    // first (it is compacted: its last object moves to a file of the new store's directory),
    // the moved object once its old file is gone, and all the others (the old directory goes).
    ReadBack(c.get(), objs[4].obj);
    ReadBack(c.get(), objs[5].obj);
    for (int i : {4, 5, 7}) del(i);
    REQUIRE(test::WaitFor([&] { return Quiet(c.get()); }));
    const std::string first_file = UrlOf(c.get(), objs[3].obj).path;
    for (int i : {0, 2}) del(i);
    REQUIRE(test::WaitFor([&] {
      return Quiet(c.get()) && UrlOf(c.get(), objs[3].obj).path != first_file &&
             !fs::exists(first_file);
    }));
    for (int i : {8, 9, 10, 11, 3}) {
      if (objs[i].spilled_from == 0) del(i);
    }
    REQUIRE(test::WaitFor([&] { return Quiet(c.get()) && Stats(c.get()).spill_files == 0; }));
    stopping = steps.load();
    c.reset();
    CHECK(s.Stop() == 0);
    s.env().BeforeEachChange(nullptr);
    const std::string log = err.Text();
    INFO(log);
    CHECK(log.find("quarantine") != std::string::npos);
  }
  const uint64_t total = steps.load();
  MESSAGE(total << " changes to the spill files, " << stopping << " before the stop");
  REQUIRE(total > 10);
  // The old directory's log was rewritten (after the second file went, 3 of its 5 entries
  // name none): an image before the new log's write, its sync and its rename.
  CHECK(ImagesWith(crashes, total, "DELETED.tmp") >= 3);
  REQUIRE(image_errors == 0);
  objs.insert(objs.end(), leased.begin(), leased.end());
  CheckCrashes(crashes, total, stopping, objs);
}

TEST_CASE("compactions that fail one after another are logged once a second at most") {
  TempDir logs;
  StderrCapture err(logs.path + "/stderr");
  InProcessStore s;  // --spill-compact 0.5 (the default)
  ClientPtr c = Connect(s);
  // Six spill files of four objects; deleting three of each makes more than half of it dead.
  constexpr int kFiles = 6;
  std::vector<std::vector<Obj>> files;
  for (int f = 0; f < kFiles; f++) {
    files.push_back(PutMany(c.get(), "cmpfails" + std::to_string(f), 4, kMiB, 1000 + 10 * f));
    uint64_t spilled = 0;
    REQUIRE(EvictSucceeds(c.get(), &spilled));
  }
  REQUIRE(Stats(c.get()).spill_files == kFiles);
  // A disk that fails every compaction's writes: each fails in turn, at once.
  s.env().FailWritesTo(".bin.tmp", EIO);
  const auto t0 = std::chrono::steady_clock::now();
  for (const auto& objs : files) {
    for (size_t i = 0; i < 3; i++) Delete(c.get(), objs[i]);
  }
  REQUIRE(test::WaitFor([&] { return Stats(c.get()).total_compact_failures == kFiles; }));
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  size_t lines = 0;
  CHECK(test::WaitFor([&] {
    return test::LoggedOrCounted(err.Text(), "cannot compact spill file ",
                                 " more compactions failed in the last second", &lines) == kFiles;
  }));
  INFO(err.Text());
  CHECK(lines >= 1);
  CHECK(static_cast<double>(lines) <= seconds + 2);
  s.env().FailWritesTo("", 0);
  for (const auto& objs : files) ReadBack(c.get(), objs[3]);
  for (const auto& objs : files) Delete(c.get(), objs[3]);
  CHECK(test::WaitFor([&] { return Stats(c.get()).spill_files == 0; }));
  c.reset();
  CHECK(s.Stop() == 0);
}
