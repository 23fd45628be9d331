// spill_util.h - what the spilling and integrity tests share: objects whose every byte follows
// from a seed (so they can be checked anywhere), put/read/delete helpers that stop the test on
// an unexpected status, spill URLs and spill files on disk, and crashing a server. Include after
// <doctest.h>, client_util.h and harness.h.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "client_util.h"
#include "harness.h"
#include "storeclient.h"

namespace spill_test {

namespace fs = std::filesystem;

constexpr uint64_t kKiB = 1ull << 10;
constexpr uint64_t kMiB = 1ull << 20;
constexpr uint64_t kAll = UINT64_MAX;  // store_evict: everything evictable

// Declare a TempDir before the TestStore that uses it, so that the store stops first.
using test::TempDir;

using test::ClientPtr;
using test::ReaderPtr;
using test::WriterPtr;

inline ClientPtr Connect(const std::string& socket, const char* name = "test_spilling") {
  return test::Connect(socket, name);
}

inline store_object_id Id(const std::string& s) { return test::IdOf(s); }

inline std::string Hex(const store_object_id& id) { return test::HexOf(id); }

// ---- Content: every byte of an object follows from a seed, so it can be checked anywhere. ----

inline uint64_t Mix(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

inline uint64_t Word(uint64_t seed, uint64_t i) { return Mix(seed * 0x100000001B3ull ^ Mix(i)); }

inline void Fill(uint64_t seed, uint8_t* p, size_t n) {
  size_t words = n / 8;
  for (size_t i = 0; i < words; i++) {
    uint64_t w = Word(seed, i);
    std::memcpy(p + 8 * i, &w, 8);
  }
  if (n % 8) {
    uint64_t w = Word(seed, words);
    std::memcpy(p + 8 * words, &w, n % 8);
  }
}

inline std::vector<uint8_t> Bytes(uint64_t seed, size_t n) {
  std::vector<uint8_t> v(n);
  Fill(seed, v.data(), n);
  return v;
}

inline bool Matches(uint64_t seed, const uint8_t* p, size_t n) {
  if (p == nullptr) return false;
  size_t words = n / 8;
  for (size_t i = 0; i < words; i++) {
    uint64_t w = Word(seed, i), got;
    std::memcpy(&got, p + 8 * i, 8);
    if (got != w) return false;
  }
  if (n % 8) {
    uint64_t w = Word(seed, words);
    if (std::memcmp(p + 8 * words, &w, n % 8) != 0) return false;
  }
  return true;
}

inline uint64_t MetaSeed(uint64_t seed) { return seed ^ 0x5EED0000000000A5ull; }

// One test object: its id and how to recompute its bytes.
struct Obj {
  store_object_id id;
  uint64_t seed = 0;
  uint64_t size = 0;
  uint64_t meta = 0;
};

inline Obj MakeObj(const std::string& name, uint64_t seed, uint64_t size, uint64_t meta = 0) {
  return Obj{Id(name), seed, size, meta};
}

// Creates and seals obj (data written in place); returns the status of the first failing step.
inline int TryPut(store_client* c, const Obj& obj, int32_t importance = 0, int64_t timeout_ms = -1) {
  std::vector<uint8_t> m = Bytes(MetaSeed(obj.seed), obj.meta);
  store_create_options o = STORE_CREATE_OPTIONS_INIT;
  o.metadata = obj.meta ? m.data() : nullptr;
  o.metadata_size = obj.meta;
  o.importance = importance;
  o.timeout_ms = timeout_ms;
  store_writer* w = nullptr;
  int rc = store_create(c, &w, &obj.id, obj.size, &o);
  if (rc != STORE_OK) return rc;
  void* p = store_writer_data(w);
  if (!p) {
    store_writer_abort(w);
    return STORE_EMISUSE;
  }
  Fill(obj.seed, static_cast<uint8_t*>(p), obj.size);
  return store_writer_seal(w);
}

inline void Put(store_client* c, const Obj& obj, int32_t importance = 0, int64_t timeout_ms = -1) {
  int rc = TryPut(c, obj, importance, timeout_ms);
  const std::string err = store_last_error_message();
  INFO(err);
  REQUIRE(rc == STORE_OK);
}

// Opens obj (timeout 0: a spilled object is restored), checks every byte of data and metadata
// and closes it. Returns the open's status; *intact tells whether the bytes were right.
inline int TryRead(store_client* c, const Obj& obj, bool* intact) {
  *intact = false;
  store_reader* r = nullptr;
  int rc = store_open_reader(c, &r, &obj.id, 0);
  if (rc != STORE_OK) return rc;
  ReaderPtr rp(r);
  uint64_t msize = 0;
  const void* m = store_reader_metadata(r, &msize);
  bool meta_ok = obj.meta == 0
                     ? msize == 0
                     : (msize == obj.meta &&
                        Matches(MetaSeed(obj.seed), static_cast<const uint8_t*>(m), msize));
  *intact = store_reader_size(r) == obj.size &&
            Matches(obj.seed, static_cast<const uint8_t*>(store_reader_data(r)), obj.size) &&
            meta_ok;
  return STORE_OK;
}

inline void ReadBack(store_client* c, const Obj& obj) {
  bool intact = false;
  int rc = TryRead(c, obj, &intact);
  const std::string err = store_last_error_message();
  INFO("object ", Hex(obj.id), ": ", err);
  REQUIRE(rc == STORE_OK);
  CHECK(intact);
}

// Cuts a store's memory into 1 MiB holes between objects that stay: creates 1 MiB objects
// through hog, never sealed (never spilled or dropped), until the store is full (at least 24),
// then aborts every other one. Returns them all, the aborted ones null (the even places).
inline std::vector<WriterPtr> CutIntoHoles(store_client* hog) {
  store_create_options opts = STORE_CREATE_OPTIONS_INIT;
  opts.timeout_ms = 0;
  std::vector<WriterPtr> unsealed;
  for (int i = 0; i < 64; i++) {
    const Obj o = MakeObj("hog-" + std::to_string(i), 1000 + i, kMiB);
    store_writer* w = nullptr;
    if (store_create(hog, &w, &o.id, o.size, &opts) != STORE_OK) break;
    unsealed.emplace_back(w);
  }
  REQUIRE(unsealed.size() >= 24);
  for (size_t i = 0; i < unsealed.size(); i += 2) {
    REQUIRE(store_writer_abort(unsealed[i].release()) == STORE_OK);
  }
  return unsealed;
}

inline ReaderPtr Open(store_client* c, const Obj& obj) {
  store_reader* r = nullptr;
  int rc = store_open_reader(c, &r, &obj.id, 0);
  const std::string err = store_last_error_message();
  INFO(err);
  REQUIRE(rc == STORE_OK);
  return ReaderPtr(r);
}

inline void Delete(store_client* c, const Obj& obj) {
  int rc = store_delete(c, &obj.id);
  const std::string err = store_last_error_message();
  INFO(err);
  REQUIRE(rc == STORE_OK);
}

inline store_stats Stats(store_client* c) {
  store_stats st = STORE_STATS_INIT;
  int rc = store_stats_get(c, &st);
  const std::string err = store_last_error_message();
  INFO(err);
  REQUIRE(rc == STORE_OK);
  return st;
}

inline store_object_info Info(store_client* c, const Obj& obj) {
  store_object_info info = STORE_OBJECT_INFO_INIT;
  int rc = store_info(c, &obj.id, &info);
  const std::string err = store_last_error_message();
  INFO(err);
  REQUIRE(rc == STORE_OK);
  return info;
}

inline bool IsSpilled(store_client* c, const Obj& obj) {
  store_object_info i = Info(c, obj);
  return i.state == STORE_STATE_SPILLED && i.level == STORE_LEVEL_DISK;
}

inline bool InMemoryOnly(store_client* c, const Obj& obj) {
  store_object_info i = Info(c, obj);
  return i.state == STORE_STATE_SEALED && i.level == STORE_LEVEL_MEMORY;
}

inline uint64_t Evict(store_client* c, uint64_t bytes) {
  uint64_t spilled = 0;
  int rc = store_evict(c, bytes, &spilled);
  const std::string err = store_last_error_message();
  INFO(err);
  REQUIRE(rc == STORE_OK);
  return spilled;
}

// No spill write or restore in flight.
inline bool Quiet(store_client* c) {
  store_stats st = Stats(c);
  return st.spilling_count == 0 && st.restoring_count == 0;
}

struct SpillUrl {
  std::string path;
  uint64_t offset = 0;
  uint64_t size = 0;
};

// Parses "file://PATH?offset=O&size=S".
inline SpillUrl ParseUrl(const std::string& url) {
  INFO("url: ", url);
  SpillUrl u;
  REQUIRE(url.rfind("file://", 0) == 0);
  size_t q = url.rfind("?offset=");
  REQUIRE(q != std::string::npos);
  size_t amp = url.find("&size=", q);
  REQUIRE(amp != std::string::npos);
  u.path = url.substr(7, q - 7);
  std::string off = url.substr(q + 8, amp - (q + 8));
  std::string size = url.substr(amp + 6);
  REQUIRE(!off.empty());
  REQUIRE(!size.empty());
  REQUIRE(off.find_first_not_of("0123456789") == std::string::npos);
  REQUIRE(size.find_first_not_of("0123456789") == std::string::npos);
  u.offset = std::stoull(off);
  u.size = std::stoull(size);
  return u;
}

inline SpillUrl UrlOf(store_client* c, const Obj& obj) {
  char buf[4096];
  int rc = store_spill_url(c, &obj.id, buf, sizeof buf);
  const std::string err = store_last_error_message();
  INFO(err);
  REQUIRE(rc == STORE_OK);
  return ParseUrl(buf);
}

inline bool StartsWith(const std::string& s, const std::string& p) { return s.rfind(p, 0) == 0; }

// Subdirectories of a spill directory owned by store instances ("store-<pid>-<ns>").
inline std::vector<std::string> InstanceDirs(const std::string& spill_dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(spill_dir, ec)) {
    std::string name = e.path().filename().string();
    if (StartsWith(name, "store-") && e.is_directory()) out.push_back(e.path().string());
  }
  return out;
}

// Every spill file under a spill directory, and their total size.
inline std::vector<std::string> SpillFiles(const std::string& spill_dir, uint64_t* total = nullptr) {
  std::vector<std::string> out;
  if (total) *total = 0;
  for (const std::string& d : InstanceDirs(spill_dir)) {
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(d, ec)) {
      std::string name = e.path().filename().string();
      if (StartsWith(name, "spill-") && name.size() > 4 &&
          name.compare(name.size() - 4, 4, ".bin") == 0) {
        out.push_back(e.path().string());
        if (total) *total += fs::file_size(e.path(), ec);
      }
    }
  }
  return out;
}

// Everything in a directory tree, for messages.
inline std::string Tree(const std::string& dir) {
  std::string s;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    s += it->path().string() + "\n";
  }
  return s;
}

inline uint64_t LoadU64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v |= static_cast<uint64_t>(p[i]) << (8 * i);
  return v;
}

inline std::vector<uint8_t> ReadFileAt(const std::string& path, uint64_t offset, uint64_t n) {
  std::vector<uint8_t> buf(n);
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  INFO(path);
  REQUIRE(fd >= 0);
  ssize_t r = pread(fd, buf.data(), n, static_cast<off_t>(offset));
  close(fd);
  REQUIRE(r == static_cast<ssize_t>(n));
  return buf;
}

// Flips the low bit of the byte at `offset` of a file.
inline void FlipByte(const std::string& path, uint64_t offset) {
  int fd = open(path.c_str(), O_RDWR | O_CLOEXEC);
  INFO(path);
  REQUIRE(fd >= 0);
  uint8_t b = 0;
  REQUIRE(pread(fd, &b, 1, static_cast<off_t>(offset)) == 1);
  b ^= 1;
  REQUIRE(pwrite(fd, &b, 1, static_cast<off_t>(offset)) == 1);
  close(fd);
}

inline bool ExitedZero(int status) { return status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0; }

// Kills the server with SIGKILL and reaps it through Stop(), which then reports the signal.
inline void Crash(test::TestStore& s) {
  REQUIRE(s.pid() > 0);
  REQUIRE(kill(s.pid(), SIGKILL) == 0);
  int status = s.Stop();
  INFO("wait status ", status);
  CHECK(status != -1);
  CHECK(WIFSIGNALED(status));
  CHECK(WTERMSIG(status) == SIGKILL);
  CHECK_FALSE(s.Alive());
  CHECK(s.Stop() == status);  // stopping again (as the destructor does) changes nothing
}

inline std::vector<std::string> SpillArgs(const std::string& dir, std::vector<std::string> more = {}) {
  std::vector<std::string> a = {"--spill-dir", dir};
  for (auto& m : more) a.push_back(m);
  return a;
}


// Writes n bytes that follow from seed to a new file at path.
inline void WriteJunk(const std::string& path, uint64_t seed, size_t n) {
  FILE* f = std::fopen(path.c_str(), "wb");
  INFO(path);
  REQUIRE(f != nullptr);
  std::vector<uint8_t> bytes = Bytes(seed, n);
  REQUIRE(std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size());
  std::fclose(f);
}

// Fills the store with pinned 1 MiB objects until a put that does not wait fails: nothing can
// be spilled then. Returns them (unpin them to give the memory back).
inline std::vector<Obj> PinEverything(store_client* c, const std::string& tag, uint64_t seed) {
  std::vector<Obj> pinned;
  for (int i = 0; i < 1000; i++) {
    Obj o = MakeObj(tag + std::to_string(i), seed + i, kMiB);
    int rc = TryPut(c, o, 0, 0);
    if (rc == STORE_ENOSPACE) break;
    REQUIRE(rc == STORE_OK);
    REQUIRE(store_pin(c, &o.id) == STORE_OK);
    pinned.push_back(o);
  }
  REQUIRE(test::WaitFor([&] { return Quiet(c); }));
  REQUIRE(Stats(c).evictable_bytes == 0);
  return pinned;
}

}  // namespace spill_test
