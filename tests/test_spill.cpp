// test_spill.cpp - unit tests for spill files (layout, index, corruption, faults), the Env fault
// injection, and the spill directories (round-robin, disk threshold, stale instances, recovery).
#include <doctest.h>

#include "harness.h"

#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "spill/deleted_log.h"
#include "spill/env.h"
#include "spill/hash.h"
#include "spill/spill_dir.h"
#include "spill/spill_file.h"

namespace fs = std::filesystem;
using namespace store::spill;

namespace {

constexpr uint64_t kMiB = 1ull << 20;

using test::TempDir;

uint64_t SplitMix(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

std::vector<uint8_t> Bytes(uint64_t seed, size_t n) {
  std::vector<uint8_t> v(n);
  uint64_t s = seed * 0x1234567ull + 42;  // fixed seed, derived from the id
  for (size_t i = 0; i < n; i += 8) {
    uint64_t x = SplitMix(s);
    std::memcpy(v.data() + i, &x, std::min<size_t>(8, n - i));
  }
  return v;
}

struct Obj {
  uint8_t id[20];
  std::vector<uint8_t> data;
  std::vector<uint8_t> metadata;
};

Obj MakeObj(uint32_t n, size_t data_size, size_t metadata_size) {
  Obj o;
  for (int i = 0; i < 20; i++) o.id[i] = static_cast<uint8_t>(n * 31 + i);
  std::memcpy(o.id, &n, sizeof(n));
  o.data = Bytes(n, data_size);
  o.metadata = Bytes(n + 1000000, metadata_size);
  return o;
}

std::vector<SpillRecord> Records(const std::vector<Obj>& objs) {
  std::vector<SpillRecord> recs(objs.size());
  for (size_t i = 0; i < objs.size(); i++) {
    std::memcpy(recs[i].id, objs[i].id, 20);
    recs[i].data = objs[i].data.data();
    recs[i].data_size = objs[i].data.size();
    recs[i].metadata = objs[i].metadata.empty() ? nullptr : objs[i].metadata.data();
    recs[i].metadata_size = objs[i].metadata.size();
  }
  return recs;
}

// Sizes 1 B .. 3 MiB, some with metadata.
std::vector<Obj> MixedObjects() {
  const size_t data_sizes[] = {1,     2,         15,          16,          17,      100,
                               4095,  4096,      4097,        65536,       65537,   kMiB,
                               kMiB + 3, 3 * kMiB, 7, 1000};
  const size_t meta_sizes[] = {0, 8, 0, 1, 100, 0, 0, 16, 3, 0, 4096, 0, 17, 5, 0, 1};
  std::vector<Obj> objs;
  for (size_t i = 0; i < std::size(data_sizes); i++) {
    objs.push_back(MakeObj(static_cast<uint32_t>(i + 1), data_sizes[i], meta_sizes[i]));
  }
  return objs;
}

struct Written {
  std::vector<RecordLocation> locs;
  uint64_t file_size = 0;
};

Written WriteOk(Env* env, const std::string& path, const std::vector<Obj>& objs) {
  Written w;
  std::string error;
  int rc = WriteSpillFile(env, path, Records(objs), &w.locs, &w.file_size, &error);
  INFO("WriteSpillFile: " << error);
  REQUIRE(rc == 0);
  REQUIRE(w.locs.size() == objs.size());
  return w;
}

// Reads object i back into a fresh buffer (pre-filled with junk) and compares.
int ReadBack(Env* env, const std::string& path, const RecordLocation& loc, const Obj& o,
             std::string* error, bool* equal) {
  std::vector<uint8_t> buf(o.data.size() + o.metadata.size() + 1, 0xA5);
  int rc = ReadRecord(env, path, loc, buf.data(), o.data.size(), o.metadata.size(), error);
  *equal = std::equal(o.data.begin(), o.data.end(), buf.begin()) &&
           std::equal(o.metadata.begin(), o.metadata.end(), buf.begin() + o.data.size()) &&
           buf.back() == 0xA5;
  return rc;
}

uint64_t GetU64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v |= static_cast<uint64_t>(p[i]) << (8 * i);
  return v;
}
void PutU64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

std::vector<uint8_t> ReadAt(const std::string& path, uint64_t off, size_t n) {
  std::vector<uint8_t> v(n);
  int fd = ::open(path.c_str(), O_RDONLY);
  REQUIRE(fd >= 0);
  ssize_t r = ::pread(fd, v.data(), n, static_cast<off_t>(off));
  ::close(fd);
  REQUIRE(r == static_cast<ssize_t>(n));
  return v;
}

void WriteAt(const std::string& path, uint64_t off, const void* p, size_t n) {
  int fd = ::open(path.c_str(), O_WRONLY);
  REQUIRE(fd >= 0);
  ssize_t r = ::pwrite(fd, p, n, static_cast<off_t>(off));
  ::close(fd);
  REQUIRE(r == static_cast<ssize_t>(n));
}

void FlipByte(const std::string& path, uint64_t off) {
  uint8_t b = ReadAt(path, off, 1)[0];
  b ^= 0x40;
  WriteAt(path, off, &b, 1);
}

std::vector<std::string> List(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

bool Exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0;
}

// ---- SHA-256 (FIPS 180-4), to check the independent reader's output ----
class Sha256 {
 public:
  Sha256() { Reset(); }
  void Update(const uint8_t* p, size_t n) {
    total_ += n;
    while (n > 0) {
      size_t take = std::min(n, 64 - fill_);
      std::memcpy(buf_ + fill_, p, take);
      fill_ += take;
      p += take;
      n -= take;
      if (fill_ == 64) {
        Block(buf_);
        fill_ = 0;
      }
    }
  }
  std::string HexDigest() {
    uint64_t bits = total_ * 8;
    uint8_t pad = 0x80;
    Update(&pad, 1);
    uint8_t zero = 0;
    while (fill_ != 56) Update(&zero, 1);
    uint8_t len[8];
    for (int i = 0; i < 8; i++) len[i] = static_cast<uint8_t>(bits >> (56 - 8 * i));
    Update(len, 8);
    static const char* hex = "0123456789abcdef";
    std::string out;
    for (uint32_t w : h_) {
      for (int i = 28; i >= 0; i -= 4) out += hex[(w >> i) & 15];
    }
    return out;
  }

 private:
  static uint32_t Rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }
  void Reset() {
    static const uint32_t init[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                     0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    std::memcpy(h_, init, sizeof(h_));
    fill_ = 0;
    total_ = 0;
  }
  void Block(const uint8_t* b) {
    static const uint32_t k[64] = {
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2};
    uint32_t w[64];
    for (int i = 0; i < 16; i++) {
      w[i] = static_cast<uint32_t>(b[4 * i]) << 24 | static_cast<uint32_t>(b[4 * i + 1]) << 16 |
             static_cast<uint32_t>(b[4 * i + 2]) << 8 | b[4 * i + 3];
    }
    for (int i = 16; i < 64; i++) {
      uint32_t s0 = Rotr(w[i - 15], 7) ^ Rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      uint32_t s1 = Rotr(w[i - 2], 17) ^ Rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h_[0], bb = h_[1], c = h_[2], d = h_[3], e = h_[4], f = h_[5], g = h_[6],
             h = h_[7];
    for (int i = 0; i < 64; i++) {
      uint32_t S1 = Rotr(e, 6) ^ Rotr(e, 11) ^ Rotr(e, 25);
      uint32_t ch = (e & f) ^ (~e & g);
      uint32_t t1 = h + S1 + ch + k[i] + w[i];
      uint32_t S0 = Rotr(a, 2) ^ Rotr(a, 13) ^ Rotr(a, 22);
      uint32_t maj = (a & bb) ^ (a & c) ^ (bb & c);
      uint32_t t2 = S0 + maj;
      h = g;
      g = f;
      f = e;
      e = d + t1;
      d = c;
      c = bb;
      bb = a;
      a = t1 + t2;
    }
    h_[0] += a;
    h_[1] += bb;
    h_[2] += c;
    h_[3] += d;
    h_[4] += e;
    h_[5] += f;
    h_[6] += g;
    h_[7] += h;
  }
  uint32_t h_[8];
  uint8_t buf_[64];
  size_t fill_;
  uint64_t total_;
};

std::string Sha256Hex(const std::vector<uint8_t>& v) {
  Sha256 s;
  s.Update(v.data(), v.size());
  return s.HexDigest();
}

std::string ReaderScript() {
  if (const char* p = std::getenv("SPILL_READER"); p != nullptr && *p != '\0') return p;
  // Without meson (a direct build): next to this source file.
  return (fs::path(__FILE__).parent_path() / "spill_reader.py").string();
}

std::string ShellQuote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

// Runs the independent reader; returns its stdout and exit status.
std::string RunReader(const std::string& file, const std::string& count, int* status) {
  std::string cmd = "python3 " + ShellQuote(ReaderScript()) + " " + ShellQuote(file);
  if (!count.empty()) cmd += " " + count;
  FILE* p = ::popen(cmd.c_str(), "r");
  REQUIRE(p != nullptr);
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  *status = ::pclose(p);
  return out;
}

// An Env that records every PWritev's iovec count.
class CountingEnv : public FaultInjectionEnv {
 public:
  explicit CountingEnv(Env* base) : FaultInjectionEnv(base) {}
  ssize_t PWritev(int fd, const iovec* iov, int iovcnt, off_t off) override {
    calls++;
    max_iovcnt = std::max(max_iovcnt.load(), iovcnt);
    return FaultInjectionEnv::PWritev(fd, iov, iovcnt, off);
  }
  std::atomic<int> calls{0};
  std::atomic<int> max_iovcnt{0};
};

}  // namespace

TEST_SUITE("unit") {

TEST_CASE("sha256 of the test matches the standard vectors") {
  const std::string abc = "abc";
  CHECK(Sha256Hex(std::vector<uint8_t>(abc.begin(), abc.end())) ==
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK(Sha256Hex({}) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  std::vector<uint8_t> a(1000000, 'a');
  CHECK(Sha256Hex(a) == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST_CASE("the record checksum gives the library's XXH3 values, in any chunking") {
  // hash.h may run XXH3 from code built for AVX2: the checksums on disk must not change.
  INFO("implementation: " << HashImplementation());
  std::vector<uint8_t> buf(3 * kMiB + 777);
  uint64_t x = 0x9e3779b97f4a7c15ull;
  for (uint8_t& b : buf) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    b = static_cast<uint8_t>(x);
  }
  StreamHash st;
  REQUIRE(st.ok());
  const size_t sizes[] = {0, 1, 3, 16, 17, 128, 129, 240, 241, 1024, 4095, 65536, 1000003,
                          buf.size()};
  const size_t chunks[] = {1, 7, 64, 1000, 4096, 512 * 1024, SIZE_MAX};
  for (uint64_t seed : {0ull, 1ull, 0x0123456789abcdefull}) {
    for (size_t n : sizes) {
      const uint64_t want = XXH3_64bits_withSeed(buf.data(), n, seed);
      CHECK(Hash64(buf.data(), n, seed) == want);
      for (size_t chunk : chunks) {
        if (chunk < 64 && n > 70000) continue;  // slow and says nothing more
        st.Reset(seed);
        for (size_t off = 0; off < n; off += std::min(chunk, n - off)) {
          st.Update(buf.data() + off, std::min(chunk, n - off));
        }
        CHECK_MESSAGE(st.Digest() == want, "size " << n << " chunk " << chunk << " seed " << seed);
      }
    }
  }
}

TEST_CASE("the POSIX env") {
  TempDir tmp;
  Env* env = Env::Default();
  CHECK(Env::Default() == env);
  const std::string path = tmp / "f";
  int fd = env->Open(path, O_CREAT | O_EXCL | O_RDWR, 0600);
  REQUIRE(fd >= 0);
  CHECK((::fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0);
  CHECK(env->Open(path, O_CREAT | O_EXCL | O_RDWR, 0600) == -EEXIST);

  // More iovecs than one pwritev takes.
  const int n = 3 * IOV_MAX + 7;
  std::vector<uint8_t> src = Bytes(5, static_cast<size_t>(n) * 3);
  std::vector<iovec> iov(n);
  for (int i = 0; i < n; i++) iov[i] = {src.data() + 3 * i, 3};
  CHECK(env->PWritev(fd, iov.data(), n, 10) == 3 * n);
  std::vector<uint8_t> dst(src.size() + 100, 0);
  std::vector<iovec> riov(n);
  for (int i = 0; i < n; i++) riov[i] = {dst.data() + 3 * i, 3};
  CHECK(env->PReadv(fd, riov.data(), n, 10) == 3 * n);
  CHECK(std::equal(src.begin(), src.end(), dst.begin()));
  // A read past the end of the file returns what there is.
  iovec tail = {dst.data(), 100};
  CHECK(env->PReadv(fd, &tail, 1, 10 + 3 * n - 5) == 5);
  CHECK(env->Fdatasync(fd) == 0);
  CHECK(env->Close(fd) == 0);
  uint64_t size = 0;
  CHECK(env->FileSize(path, &size) == 0);
  CHECK(size == 10 + 3 * static_cast<uint64_t>(n));

  CHECK(env->Mkdir(tmp / "d", 0700) == 0);
  CHECK(env->Mkdir(tmp / "d", 0700) == -EEXIST);
  CHECK(env->Rename(path, tmp / "d/g") == 0);
  std::vector<std::string> names = {"stale"};
  CHECK(env->ListDir(tmp / "d", &names) == 0);
  CHECK(names == std::vector<std::string>{"g"});
  CHECK(env->Rmdir(tmp / "d") == -ENOTEMPTY);
  CHECK(env->Unlink(tmp / "d/g") == 0);
  CHECK(env->Unlink(tmp / "d/g") == -ENOENT);
  CHECK(env->Rmdir(tmp / "d") == 0);
  CHECK(env->ListDir(tmp / "d", &names) == -ENOENT);
  CHECK(env->FileSize(tmp / "d", &size) == -ENOENT);
  CHECK(env->Open(tmp / "d/x", O_RDONLY, 0) == -ENOENT);

  uint64_t total = 0, avail = 0;
  CHECK(env->DiskSpace(tmp.path, &total, &avail) == 0);
  CHECK(total > 0);
  CHECK(avail <= total);
  FaultInjectionEnv fi(env);
  fi.SetDiskUsedFraction(0.25);
  uint64_t total2 = 0, avail2 = 0;
  CHECK(fi.DiskSpace(tmp.path, &total2, &avail2) == 0);
  CHECK(total2 == total);
  CHECK(avail2 == static_cast<uint64_t>(static_cast<double>(total) * 0.75));
}

TEST_CASE("a spill file of mixed records reads back") {
  TempDir tmp;
  Env* env = Env::Default();
  const std::vector<Obj> objs = MixedObjects();
  const std::string path = tmp / "spill-1.bin";
  Written w = WriteOk(env, path, objs);

  // Layout: records back to back from offset 0, then 44 bytes per index entry and the trailer.
  uint64_t disk_size = 0;
  REQUIRE(env->FileSize(path, &disk_size) == 0);
  CHECK(disk_size == w.file_size);
  uint64_t expect_off = 0;
  for (size_t i = 0; i < objs.size(); i++) {
    CHECK(w.locs[i].offset == expect_off);
    CHECK(w.locs[i].size == 16 + objs[i].data.size() + objs[i].metadata.size());
    CHECK(std::memcmp(w.locs[i].id, objs[i].id, 20) == 0);
    expect_off += w.locs[i].size;
  }
  CHECK(w.file_size == expect_off + objs.size() * kIndexEntry + kTrailer);
  std::vector<uint8_t> h0 = ReadAt(path, 0, 16);
  CHECK(GetU64(h0.data()) == objs[0].metadata.size());
  CHECK(GetU64(h0.data() + 8) == objs[0].data.size());
  std::vector<uint8_t> trailer = ReadAt(path, w.file_size - kTrailer, kTrailer);
  CHECK(GetU64(trailer.data()) == expect_off);
  CHECK(GetU64(trailer.data() + 8) == objs.size());
  CHECK(std::memcmp(trailer.data() + 32, "STSPILL1", 8) == 0);
  CHECK(trailer[24] == kFileVersion);
  CHECK(trailer[28] == kTrailer);

  // The checksum is XXH3-64 of the whole record as stored, seeded with the id's first 8
  // bytes (little-endian).
  for (size_t i : {size_t{1}, size_t{13}}) {
    std::vector<uint8_t> rec = ReadAt(path, w.locs[i].offset, w.locs[i].size);
    CHECK(XXH3_64bits_withSeed(rec.data(), rec.size(), GetU64(objs[i].id)) ==
          w.locs[i].checksum);
    CHECK(XXH3_64bits(rec.data(), rec.size()) != w.locs[i].checksum);
  }

  for (size_t i = 0; i < objs.size(); i++) {
    CAPTURE(i);
    std::string error;
    bool equal = false;
    CHECK(ReadBack(env, path, w.locs[i], objs[i], &error, &equal) == 0);
    CHECK(error.empty());
    CHECK(equal);
  }

  std::vector<IndexedRecord> index;
  std::string error;
  REQUIRE(ReadIndex(env, path, &index, &error) == 0);
  REQUIRE(index.size() == objs.size());
  for (size_t i = 0; i < objs.size(); i++) {
    CAPTURE(i);
    CHECK(std::memcmp(index[i].loc.id, w.locs[i].id, 20) == 0);
    CHECK(index[i].loc.offset == w.locs[i].offset);
    CHECK(index[i].loc.size == w.locs[i].size);
    CHECK(index[i].loc.checksum == w.locs[i].checksum);
    CHECK(index[i].data_size == objs[i].data.size());
    CHECK(index[i].metadata_size == objs[i].metadata.size());
  }

  CHECK(SpillUrl("/tmp/x/spill-3.bin", 0, 17) == "file:///tmp/x/spill-3.bin?offset=0&size=17");
  CHECK(SpillUrl(path, w.locs[5].offset, w.locs[5].size) ==
        "file://" + path + "?offset=" + std::to_string(w.locs[5].offset) +
            "&size=" + std::to_string(w.locs[5].size));
}

TEST_CASE("empty objects and an empty batch") {
  TempDir tmp;
  Env* env = Env::Default();
  std::vector<Obj> objs = {MakeObj(1, 0, 0), MakeObj(2, 0, 5), MakeObj(3, 9, 0)};
  Written w = WriteOk(env, tmp / "a.bin", objs);
  CHECK(w.locs[0].size == 16);
  CHECK(w.locs[1].offset == 16);
  for (size_t i = 0; i < objs.size(); i++) {
    std::string error;
    bool equal = false;
    CHECK(ReadBack(env, tmp / "a.bin", w.locs[i], objs[i], &error, &equal) == 0);
    CHECK(equal);
  }
  std::vector<IndexedRecord> index;
  std::string error;
  CHECK(ReadIndex(env, tmp / "a.bin", &index, &error) == 0);
  CHECK(index.size() == 3);

  Written e = WriteOk(env, tmp / "empty.bin", {});
  CHECK(e.file_size == kTrailer);
  CHECK(ReadIndex(env, tmp / "empty.bin", &index, &error) == 0);
  CHECK(index.empty());
}

TEST_CASE("an independent reader walks the records from offset 0") {
  TempDir tmp;
  Env* env = Env::Default();
  const std::vector<Obj> objs = MixedObjects();
  const std::string path = tmp / "spill-1.bin";
  Written w = WriteOk(env, path, objs);
  const uint64_t index_offset = w.locs.back().offset + w.locs.back().size;

  for (const std::string& count : {std::string(), std::to_string(objs.size())}) {
    CAPTURE(count);
    int status = -1;
    std::string out = RunReader(path, count, &status);
    INFO("reader " << ReaderScript() << " printed:\n" << out);
    REQUIRE(status == 0);
    std::istringstream in(out);
    for (size_t i = 0; i < objs.size(); i++) {
      CAPTURE(i);
      uint64_t off = 0, size = 0;
      std::string meta_sha, data_sha;
      REQUIRE(static_cast<bool>(in >> off >> size >> meta_sha >> data_sha));
      CHECK(off == w.locs[i].offset);
      CHECK(size == w.locs[i].size);
      CHECK(meta_sha == Sha256Hex(objs[i].metadata));
      CHECK(data_sha == Sha256Hex(objs[i].data));
    }
    std::string end;
    uint64_t end_off = 0;
    REQUIRE(static_cast<bool>(in >> end >> end_off));
    CHECK(end == "end");
    CHECK(end_off == index_offset);
  }
}

TEST_CASE("corruption is detected") {
  TempDir tmp;
  Env* env = Env::Default();
  const std::vector<Obj> objs = MixedObjects();

  SUBCASE("a flipped data byte fails that record's checksum only") {
    const std::string path = tmp / "flip.bin";
    Written w = WriteOk(env, path, objs);
    const size_t k = 11;  // 1 MiB of data
    FlipByte(path, w.locs[k].offset + 16 + objs[k].metadata.size() + 123457);
    for (size_t i = 0; i < objs.size(); i++) {
      CAPTURE(i);
      std::string error;
      bool equal = false;
      int rc = ReadBack(env, path, w.locs[i], objs[i], &error, &equal);
      if (i == k) {
        CHECK(rc == kCorrupt);
        CHECK(error.find("checksum mismatch") != std::string::npos);
        CHECK(error.find(path) != std::string::npos);
      } else {
        CHECK(rc == 0);
        CHECK(equal);
      }
    }
    std::vector<IndexedRecord> index;
    std::string error;
    CHECK(ReadIndex(env, path, &index, &error) == 0);  // the index itself is intact
  }

  SUBCASE("a flipped metadata byte fails the checksum") {
    const std::string path = tmp / "meta.bin";
    Written w = WriteOk(env, path, objs);
    const size_t k = 10;  // 4096 bytes of metadata
    FlipByte(path, w.locs[k].offset + 16 + 4000);
    std::string error;
    bool equal = false;
    CHECK(ReadBack(env, path, w.locs[k], objs[k], &error, &equal) == kCorrupt);
    CHECK(error.find("checksum mismatch") != std::string::npos);
  }

  SUBCASE("truncated by one byte") {
    const std::string path = tmp / "trunc.bin";
    Written w = WriteOk(env, path, objs);
    REQUIRE(::truncate(path.c_str(), static_cast<off_t>(w.file_size - 1)) == 0);
    std::vector<IndexedRecord> index;
    std::string error;
    CHECK(ReadIndex(env, path, &index, &error) == kCorrupt);
    CHECK(!error.empty());
    CHECK(index.empty());
  }

  SUBCASE("truncated inside the last record") {
    const std::string path = tmp / "trunc2.bin";
    Written w = WriteOk(env, path, objs);
    const size_t k = objs.size() - 1;
    REQUIRE(::truncate(path.c_str(), static_cast<off_t>(w.locs[k].offset + 20)) == 0);
    std::string error;
    bool equal = false;
    CHECK(ReadBack(env, path, w.locs[k], objs[k], &error, &equal) == kCorrupt);
    CHECK(error.find("size mismatch") != std::string::npos);
    std::vector<IndexedRecord> index;
    CHECK(ReadIndex(env, path, &index, &error) == kCorrupt);
  }

  SUBCASE("trailer and index damage") {
    const std::string path = tmp / "trailer.bin";
    Written w = WriteOk(env, path, objs);
    const uint64_t t = w.file_size - kTrailer;
    const std::vector<uint8_t> good = ReadAt(path, t, kTrailer);
    auto expect_corrupt = [&](const char* what) {
      CAPTURE(what);
      std::vector<IndexedRecord> index;
      std::string error;
      CHECK(ReadIndex(env, path, &index, &error) == kCorrupt);
      CHECK(error.find(path) != std::string::npos);
      WriteAt(path, t, good.data(), good.size());
      CHECK(ReadIndex(env, path, &index, &error) == 0);  // restored
    };
    std::vector<uint8_t> garbage = Bytes(99, kTrailer);
    WriteAt(path, t, garbage.data(), garbage.size());
    expect_corrupt("garbage trailer");

    std::vector<uint8_t> bad = good;
    bad[24] = 3;  // version
    WriteAt(path, t, bad.data(), bad.size());
    expect_corrupt("version");

    bad = good;
    bad[28] = 48;  // trailer size
    WriteAt(path, t, bad.data(), bad.size());
    expect_corrupt("trailer size");

    bad = good;
    PutU64(bad.data(), GetU64(good.data()) + 1);  // index offset
    WriteAt(path, t, bad.data(), bad.size());
    expect_corrupt("index offset");

    bad = good;
    PutU64(bad.data() + 8, GetU64(good.data() + 8) + (1ull << 60));  // huge record count
    WriteAt(path, t, bad.data(), bad.size());
    expect_corrupt("record count");

    // One flipped bit in the index: its checksum.
    const uint64_t index_offset = GetU64(good.data());
    FlipByte(path, index_offset + 3 * kIndexEntry + 25);
    {
      std::vector<IndexedRecord> index;
      std::string error;
      CHECK(ReadIndex(env, path, &index, &error) == kCorrupt);
      CHECK(error.find("index checksum") != std::string::npos);
    }
  }

  SUBCASE("index entries that overlap or leave the records (with a valid index checksum)") {
    // Records of equal sizes, so that a moved entry still finds a matching header.
    const std::vector<Obj> same = {MakeObj(1, 100, 4), MakeObj(2, 100, 4), MakeObj(3, 100, 4)};
    const std::string path = tmp / "overlap.bin";
    Written w = WriteOk(env, path, same);
    const uint64_t index_offset = w.file_size - kTrailer - same.size() * kIndexEntry;
    const std::vector<uint8_t> good_index = ReadAt(path, index_offset, same.size() * kIndexEntry);
    const std::vector<uint8_t> trailer = ReadAt(path, w.file_size - kTrailer, kTrailer);
    auto rewrite = [&](size_t entry, uint64_t offset, uint64_t size) {
      std::vector<uint8_t> idx = good_index;
      PutU64(idx.data() + entry * kIndexEntry + 20, offset);
      PutU64(idx.data() + entry * kIndexEntry + 28, size);
      std::vector<uint8_t> t = trailer;
      PutU64(t.data() + 16, XXH3_64bits(idx.data(), idx.size()));
      WriteAt(path, index_offset, idx.data(), idx.size());
      WriteAt(path, w.file_size - kTrailer, t.data(), t.size());
    };
    std::vector<IndexedRecord> index;
    std::string error;
    rewrite(2, w.locs[2].offset, w.locs[2].size);  // unchanged: still valid
    CHECK(ReadIndex(env, path, &index, &error) == 0);
    rewrite(2, w.locs[1].offset, w.locs[1].size);  // entry 2 on top of record 1
    CHECK(ReadIndex(env, path, &index, &error) == kCorrupt);
    CHECK(error.find("overlap") != std::string::npos);
    rewrite(1, w.locs[1].offset + 1, w.locs[1].size);  // into record 2 by one byte
    CHECK(ReadIndex(env, path, &index, &error) == kCorrupt);
    rewrite(2, w.locs[2].offset, w.locs[2].size + 1);  // past the end of the records
    CHECK(ReadIndex(env, path, &index, &error) == kCorrupt);
    CHECK(error.find("outside") != std::string::npos);
    rewrite(2, index_offset, 0);  // an entry smaller than a header
    CHECK(ReadIndex(env, path, &index, &error) == kCorrupt);
  }

  SUBCASE("a record header whose lengths disagree") {
    const std::string path = tmp / "hdr.bin";
    Written w = WriteOk(env, path, objs);
    const size_t k = 4;  // 100 bytes of metadata, 17 of data
    std::vector<uint8_t> h = ReadAt(path, w.locs[k].offset, 16);
    // Same total, different split: the index still checks out, the read does not.
    PutU64(h.data(), objs[k].metadata.size() + 1);
    PutU64(h.data() + 8, objs[k].data.size() - 1);
    WriteAt(path, w.locs[k].offset, h.data(), h.size());
    std::string error;
    bool equal = false;
    CHECK(ReadBack(env, path, w.locs[k], objs[k], &error, &equal) == kCorrupt);
    CHECK(error.find("size mismatch") != std::string::npos);
    std::vector<IndexedRecord> index;
    CHECK(ReadIndex(env, path, &index, &error) == 0);
    // A different total: the index no longer matches the header.
    PutU64(h.data() + 8, objs[k].data.size() + 1);
    WriteAt(path, w.locs[k].offset, h.data(), h.size());
    error.clear();
    CHECK(ReadIndex(env, path, &index, &error) == kCorrupt);
    CHECK(error.find("size mismatch") != std::string::npos);
    // A location that does not fit the object's sizes.
    RecordLocation loc = w.locs[0];
    loc.size += 1;
    error.clear();
    CHECK(ReadBack(env, path, loc, objs[0], &error, &equal) == kCorrupt);
    CHECK(error.find("size mismatch") != std::string::npos);
  }

  SUBCASE("corrupted reads through FaultInjectionEnv") {
    const std::string path = tmp / "fi.bin";
    Written w = WriteOk(env, path, objs);
    FaultInjectionEnv fi(env);
    const size_t k = 13;  // 3 MiB of data, 5 bytes of metadata
    std::string error;
    bool equal = false;
    fi.CorruptReadsAt(static_cast<int64_t>(w.locs[k].offset + 16 + 5 + 2 * kMiB + 7));
    CHECK(ReadBack(&fi, path, w.locs[k], objs[k], &error, &equal) == kCorrupt);
    CHECK(error.find("checksum mismatch") != std::string::npos);
    CHECK(!equal);  // the flipped bit landed in the returned data
    error.clear();
    CHECK(ReadBack(&fi, path, w.locs[k - 1], objs[k - 1], &error, &equal) == 0);  // not covered
    CHECK(equal);
    // In the metadata (which the caller keeps after the data).
    fi.CorruptReadsAt(static_cast<int64_t>(w.locs[k].offset + 16 + 2));
    CHECK(ReadBack(&fi, path, w.locs[k], objs[k], &error, &equal) == kCorrupt);
    CHECK(!equal);
    // In the header: the lengths no longer match.
    fi.CorruptReadsAt(static_cast<int64_t>(w.locs[k].offset + 8));
    CHECK(ReadBack(&fi, path, w.locs[k], objs[k], &error, &equal) == kCorrupt);
    CHECK(error.find("size mismatch") != std::string::npos);
    // In the trailer.
    fi.CorruptReadsAt(static_cast<int64_t>(w.file_size - 1));
    std::vector<IndexedRecord> index;
    CHECK(ReadIndex(&fi, path, &index, &error) == kCorrupt);
    fi.CorruptReadsAt(-1);
    CHECK(ReadIndex(&fi, path, &index, &error) == 0);
    CHECK(ReadBack(&fi, path, w.locs[k], objs[k], &error, &equal) == 0);
    CHECK(equal);
  }
}

TEST_CASE("write and read faults") {
  TempDir tmp;
  Env* env = Env::Default();
  const std::vector<Obj> objs = MixedObjects();
  uint64_t record_bytes = 0;
  for (const Obj& o : objs) record_bytes += 16 + o.data.size() + o.metadata.size();

  SUBCASE("the disk fills up mid-file") {
    FaultInjectionEnv fi(env);
    fi.FailWritesAfter(static_cast<int64_t>(record_bytes / 2));
    const std::string path = tmp / "full.bin";
    std::vector<RecordLocation> locs;
    uint64_t size = 0;
    std::string error;
    CHECK(WriteSpillFile(&fi, path, Records(objs), &locs, &size, &error) == -ENOSPC);
    CHECK(fi.bytes_written() == record_bytes / 2);  // it did write up to the limit
    CHECK(error.find(path) != std::string::npos);
    CHECK(error.find(std::strerror(ENOSPC)) != std::string::npos);
    CHECK(!Exists(path));
    CHECK(List(tmp.path).empty());
  }

  SUBCASE("the disk fills up in the index") {
    FaultInjectionEnv fi(env);
    fi.FailWritesAfter(static_cast<int64_t>(record_bytes + 10), EIO);
    const std::string path = tmp / "full2.bin";
    std::vector<RecordLocation> locs;
    uint64_t size = 0;
    std::string error;
    CHECK(WriteSpillFile(&fi, path, Records(objs), &locs, &size, &error) == -EIO);
    CHECK(error.find("index") != std::string::npos);
    CHECK(!Exists(path));
    fi.FailWritesAfter(-1);
    CHECK(WriteSpillFile(&fi, path, Records(objs), &locs, &size, &error) == 0);
    CHECK(Exists(path));
  }

  SUBCASE("an existing file is neither overwritten nor removed") {
    const std::string path = tmp / "exists.bin";
    Written w = WriteOk(env, path, objs);
    std::vector<RecordLocation> locs;
    uint64_t size = 0;
    std::string error;
    CHECK(WriteSpillFile(env, path, Records({MakeObj(77, 10, 0)}), &locs, &size, &error) ==
          -EEXIST);
    uint64_t now = 0;
    CHECK(env->FileSize(path, &now) == 0);
    CHECK(now == w.file_size);
  }

  SUBCASE("read errors") {
    const std::string path = tmp / "eio.bin";
    Written w = WriteOk(env, path, objs);
    FaultInjectionEnv fi(env);
    fi.FailReads(EIO);
    std::string error;
    bool equal = false;
    CHECK(ReadBack(&fi, path, w.locs[2], objs[2], &error, &equal) == -EIO);
    CHECK(error.find(path) != std::string::npos);
    std::vector<IndexedRecord> index;
    CHECK(ReadIndex(&fi, path, &index, &error) == -EIO);
    fi.FailReads(0);
    CHECK(ReadBack(&fi, path, w.locs[2], objs[2], &error, &equal) == 0);
    CHECK(equal);
    CHECK(ReadBack(env, tmp / "missing.bin", w.locs[2], objs[2], &error, &equal) == -ENOENT);
  }

  SUBCASE("concurrent writers share one fault-injection env") {
    FaultInjectionEnv fi(env);
    std::vector<Obj> small(objs.begin(), objs.begin() + 11);
    std::atomic<uint64_t> total{0};
    std::atomic<int> failures{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; t++) {
      threads.emplace_back([&, t] {
        for (int j = 0; j < 5; j++) {
          std::vector<RecordLocation> locs;
          uint64_t size = 0;
          std::string error;
          std::string p = tmp / ("t" + std::to_string(t) + "-" + std::to_string(j) + ".bin");
          if (WriteSpillFile(&fi, p, Records(small), &locs, &size, &error) != 0) failures++;
          total += size;
        }
      });
    }
    for (auto& th : threads) th.join();
    CHECK(failures == 0);
    CHECK(fi.bytes_written() == total);
    CHECK(List(tmp.path).size() == 20);
  }
}

TEST_CASE("more records than IOV_MAX / 3 in one file") {
  TempDir tmp;
  CountingEnv env(Env::Default());
  std::vector<Obj> objs;
  for (uint32_t i = 0; i < 3000; i++) objs.push_back(MakeObj(i + 1, 1 + i % 5, 1 + i % 3));
  const std::string path = tmp / "many.bin";
  Written w = WriteOk(&env, path, objs);
  CHECK(env.max_iovcnt <= IOV_MAX);
  CHECK(env.calls >= static_cast<int>((3 * objs.size() + IOV_MAX - 1) / IOV_MAX) + 1);
  std::vector<IndexedRecord> index;
  std::string error;
  REQUIRE(ReadIndex(&env, path, &index, &error) == 0);
  REQUIRE(index.size() == objs.size());
  int bad = 0;
  for (size_t i = 0; i < objs.size(); i++) {
    bool equal = false;
    if (ReadBack(&env, path, index[i].loc, objs[i], &error, &equal) != 0 || !equal) bad++;
    if (index[i].loc.offset != w.locs[i].offset) bad++;
  }
  CHECK(bad == 0);
}

TEST_CASE("spill directories") {
  TempDir tmp;
  Env* env = Env::Default();
  const std::string a = tmp / "a", b = tmp / "b";
  REQUIRE(::mkdir(a.c_str(), 0700) == 0);
  REQUIRE(::mkdir(b.c_str(), 0700) == 0);

  SUBCASE("round-robin, then removed when empty") {
    std::string owned_a, owned_b;
    {
      SpillDirs dirs(env);
      std::string error;
      std::vector<RecoveredFile> recovered;
      REQUIRE(dirs.Open({a, b + "/"}, 0.95, false, &recovered, nullptr, &error));
      CHECK(recovered.empty());
      REQUIRE(dirs.owned().size() == 2);
      owned_a = dirs.owned()[0];
      owned_b = dirs.owned()[1];
      CHECK(fs::path(owned_a).parent_path() == a);
      CHECK(fs::path(owned_b).parent_path() == b);
      CHECK(fs::path(owned_a).filename().string().rfind("store-" + std::to_string(getpid()) + "-",
                                                       0) == 0);
      CHECK(List(a) == std::vector<std::string>{fs::path(owned_a).filename().string()});
      CHECK(List(owned_a) == std::vector<std::string>{"LOCK"});
      CHECK((fs::status(owned_a).permissions() & fs::perms::all) == fs::perms::owner_all);

      std::vector<std::string> files;
      for (int i = 0; i < 4; i++) files.push_back(dirs.NextFile(1000));
      CHECK(fs::path(files[0]).parent_path() == owned_a);
      CHECK(fs::path(files[1]).parent_path() == owned_b);
      CHECK(fs::path(files[2]).parent_path() == owned_a);
      CHECK(fs::path(files[3]).parent_path() == owned_b);
      CHECK(fs::path(files[0]).filename() == "spill-1.bin");
      CHECK(fs::path(files[3]).filename() == "spill-4.bin");
      CHECK(std::set<std::string>(files.begin(), files.end()).size() == 4);

      // A file written and removed through the dirs.
      Written w = WriteOk(env, files[0], {MakeObj(1, 100, 0)});
      CHECK(Exists(files[0]));
      dirs.Remove(files[0]);
      CHECK(!Exists(files[0]));
      CHECK(Exists(owned_a));  // an owned directory stays while the store runs
    }
    CHECK(!Exists(owned_a));
    CHECK(!Exists(owned_b));
    CHECK(List(a).empty());
  }

  SUBCASE("a directory holding data outlives the store, without its LOCK") {
    std::string owned, file;
    {
      SpillDirs dirs(env);
      std::string error;
      REQUIRE(dirs.Open({a}, 0.95, false, nullptr, nullptr, &error));
      owned = dirs.owned()[0];
      file = dirs.NextFile(100);
      WriteOk(env, file, {MakeObj(1, 100, 0)});
    }
    CHECK(Exists(file));
    CHECK(List(owned) == std::vector<std::string>{fs::path(file).filename().string()});
  }

  SUBCASE("disk threshold") {
    FaultInjectionEnv fi(env);
    SpillDirs dirs(&fi);
    std::string error;
    REQUIRE(dirs.Open({a, b}, 0.95, false, nullptr, nullptr, &error));
    fi.SetDiskUsedFraction(0.99);
    CHECK(dirs.NextFile(1) == "");
    fi.SetDiskUsedFraction(0.5);
    CHECK(dirs.NextFile(1) != "");
    CHECK(dirs.NextFile(UINT64_MAX / 2) == "");  // no room for that many bytes
    fi.SetDiskUsedFraction(-1);
    CHECK(dirs.NextFile(1) != "");
  }
}

TEST_CASE("salvaging a damaged file: every record an index entry still names and verifies") {
  TempDir tmp;
  Env* env = Env::Default();
  const std::vector<Obj> objs = MixedObjects();
  const std::string path = tmp / "spill-1.bin";
  Written w = WriteOk(env, path, objs);
  const uint64_t index_offset = w.locs.back().offset + w.locs.back().size;
  auto salvage = [&](size_t expect_kept, uint64_t expect_lost) {
    Salvage sv;
    std::string error;
    REQUIRE(SalvageFile(env, path, &sv, &error) == 0);
    CHECK(sv.records.size() == expect_kept);
    CHECK(sv.lost_records == expect_lost);
    for (const IndexedRecord& r : sv.records) {
      size_t i = 0;
      while (i < objs.size() && std::memcmp(objs[i].id, r.loc.id, 20) != 0) i++;
      REQUIRE(i < objs.size());
      bool equal = false;
      CHECK(ReadBack(env, path, r.loc, objs[i], &error, &equal) == 0);
      CHECK(equal);
    }
    return sv;
  };

  SUBCASE("the trailer cut off") {
    REQUIRE(::truncate(path.c_str(), static_cast<off_t>(w.file_size - 5)) == 0);
    Salvage sv = salvage(objs.size(), 0);
    CHECK(sv.lost_bytes == 0);
  }
  SUBCASE("the trailer and half the index cut off") {
    REQUIRE(::truncate(path.c_str(),
                       static_cast<off_t>(index_offset + kIndexEntry * objs.size() / 2)) == 0);
    salvage(objs.size() / 2, objs.size() - objs.size() / 2);
  }
  SUBCASE("cut inside the records: no entry is left, nothing can be named") {
    REQUIRE(::truncate(path.c_str(), static_cast<off_t>(w.locs[12].offset + 10)) == 0);
    Salvage sv = salvage(0, 12);  // the 12 records walked before the cut
    CHECK(sv.lost_bytes == w.locs[12].offset + 10);
  }
  SUBCASE("an entry's id damaged: its record is not served under the wrong id") {
    FlipByte(path, index_offset + 5 * kIndexEntry + 2);
    salvage(objs.size() - 1, 1);
  }
  SUBCASE("an entry's checksum damaged") {
    FlipByte(path, index_offset + 7 * kIndexEntry + 40);
    salvage(objs.size() - 1, 1);
  }
  SUBCASE("a record's data damaged") {
    FlipByte(path, w.locs[3].offset + 16 + 2);
    salvage(objs.size() - 1, 1);
  }
  SUBCASE("not a spill file") {
    std::vector<uint8_t> junk = Bytes(5, 3000);
    WriteAt(path, 0, junk.data(), junk.size());
    REQUIRE(::truncate(path.c_str(), 3000) == 0);
    Salvage sv = salvage(0, 0);
    CHECK(sv.lost_bytes == 3000);
  }
}

TEST_CASE("version 1 files (unseeded checksums) are still read") {
  TempDir tmp;
  Env* env = Env::Default();
  const std::vector<Obj> objs = {MakeObj(1, 1000, 10), MakeObj(2, 70000, 0), MakeObj(3, 5, 5)};
  const std::string path = tmp / "spill-1.bin";
  Written w = WriteOk(env, path, objs);
  // Rewrite it as version 1 wrote it: unseeded record checksums, version 1 in the trailer.
  const uint64_t index_offset = w.locs.back().offset + w.locs.back().size;
  std::vector<uint8_t> index = ReadAt(path, index_offset, objs.size() * kIndexEntry);
  for (size_t i = 0; i < objs.size(); i++) {
    std::vector<uint8_t> rec = ReadAt(path, w.locs[i].offset, w.locs[i].size);
    PutU64(index.data() + i * kIndexEntry + 36, XXH3_64bits(rec.data(), rec.size()));
  }
  WriteAt(path, index_offset, index.data(), index.size());
  std::vector<uint8_t> trailer = ReadAt(path, w.file_size - kTrailer, kTrailer);
  PutU64(trailer.data() + 16, XXH3_64bits(index.data(), index.size()));
  trailer[24] = 1;
  WriteAt(path, w.file_size - kTrailer, trailer.data(), trailer.size());

  std::vector<IndexedRecord> read;
  std::string error;
  uint32_t version = 0;
  REQUIRE(ReadIndex(env, path, &read, &error, &version) == 0);
  CHECK(version == 1);
  REQUIRE(read.size() == objs.size());
  for (size_t i = 0; i < objs.size(); i++) {
    CHECK(!read[i].loc.seeded);
    bool equal = false;
    CHECK(ReadBack(env, path, read[i].loc, objs[i], &error, &equal) == 0);
    CHECK(equal);
  }
  // Damaged, a version 1 file is salvaged with unseeded checksums.
  REQUIRE(::truncate(path.c_str(), static_cast<off_t>(w.file_size - 3)) == 0);
  Salvage sv;
  REQUIRE(SalvageFile(env, path, &sv, &error) == 0);
  CHECK(sv.version == 1);
  CHECK(sv.records.size() == objs.size());
  for (const IndexedRecord& r : sv.records) CHECK(!r.loc.seeded);
}

TEST_CASE("stale and live instance directories") {
  TempDir tmp;
  Env* env = Env::Default();
  const std::string dir = tmp / "spill";
  REQUIRE(::mkdir(dir.c_str(), 0700) == 0);
  const std::string stale = dir + "/store-1-12345";
  const std::vector<Obj> objs = {MakeObj(1, 1000, 10), MakeObj(2, 5000, 0)};
  // A dead store's directory: a free LOCK, one complete file, one partial file, a temp file.
  auto make_stale = [&] {
    REQUIRE(::mkdir(stale.c_str(), 0700) == 0);
    int fd = ::open((stale + "/LOCK").c_str(), O_CREAT | O_RDWR, 0600);
    REQUIRE(fd >= 0);
    ::close(fd);
    WriteOk(env, stale + "/spill-1.bin", objs);
    Written p = WriteOk(env, stale + "/spill-2.bin", objs);
    REQUIRE(::truncate((stale + "/spill-2.bin").c_str(), static_cast<off_t>(p.file_size - 30)) ==
            0);
    fd = ::open((stale + "/spill-3.bin.tmp").c_str(), O_CREAT | O_RDWR, 0600);
    REQUIRE(fd >= 0);
    ::close(fd);
  };

  SUBCASE("removed without recover") {
    make_stale();
    SpillDirs dirs(env);
    std::vector<RecoveredFile> recovered;
    std::string error;
    REQUIRE(dirs.Open({dir}, 0.95, false, &recovered, nullptr, &error));
    CHECK(recovered.empty());
    CHECK(!Exists(stale));
    CHECK(List(dir) == std::vector<std::string>{fs::path(dirs.owned()[0]).filename().string()});
  }

  SUBCASE("adopted with recover") {
    make_stale();
    SpillDirs dirs(env);
    std::vector<RecoveredFile> recovered;
    std::string error;
    std::vector<RecoveryNote> notes;
    REQUIRE(dirs.Open({dir}, 0.95, true, &recovered, &notes, &error));
    // spill-2.bin lost the end of its trailer: its records are still named by its index.
    REQUIRE(recovered.size() == 2);
    std::sort(recovered.begin(), recovered.end(),
              [](const auto& a, const auto& b) { return a.path < b.path; });
    CHECK(recovered[0].path == stale + "/spill-1.bin");
    CHECK(recovered[1].path == stale + "/spill-2.bin");
    CHECK(recovered[1].records.size() == 2);
    CHECK(!recovered[1].unreadable);
    uint64_t size = 0;
    REQUIRE(env->FileSize(stale + "/spill-1.bin", &size) == 0);
    CHECK(recovered[0].size == size);
    CHECK(recovered[0].records.size() == 2);
    CHECK(List(stale) == std::vector<std::string>{"LOCK", "spill-1.bin", "spill-2.bin"});
    // The damaged file's bytes are also kept in quarantine; the half-written one is removed.
    CHECK(List(dir + "/quarantine") == std::vector<std::string>{"store-1-12345-spill-2.bin"});
    REQUIRE(notes.size() == 2);
    int errors = 0;
    for (const RecoveryNote& n : notes) {
      errors += n.error;
      INFO(n.text);
      CHECK((n.text.find("spill-2.bin") != std::string::npos ||
             n.text.find("spill-3.bin.tmp") != std::string::npos));
    }
    CHECK(errors == 1);
    dirs.Remove(recovered[1].path);
    // The recovered objects read back.
    std::vector<IndexedRecord> index;
    REQUIRE(ReadIndex(env, recovered[0].path, &index, &error) == 0);
    REQUIRE(index.size() == 2);
    for (size_t i = 0; i < 2; i++) {
      bool equal = false;
      CHECK(ReadBack(env, recovered[0].path, index[i].loc, objs[i], &error, &equal) == 0);
      CHECK(equal);
    }
    // The adopted directory is locked: another store leaves it alone.
    {
      SpillDirs other(env);
      std::vector<RecoveredFile> rec2;
      REQUIRE(other.Open({dir}, 0.95, false, &rec2, nullptr, &error));
      CHECK(rec2.empty());
      CHECK(Exists(stale + "/spill-1.bin"));
    }
    dirs.Remove(recovered[0].path);
    CHECK(!Exists(stale));
  }

  SUBCASE("a live store's directory is left alone") {
    SpillDirs live(env);
    std::string error;
    REQUIRE(live.Open({dir}, 0.95, false, nullptr, nullptr, &error));
    const std::string live_dir = live.owned()[0];
    const std::string file = live.NextFile(100);
    WriteOk(env, file, objs);

    // flock locks belong to the open file description: a second open in this process conflicts.
    int fd = ::open((live_dir + "/LOCK").c_str(), O_RDWR);
    REQUIRE(fd >= 0);
    CHECK(::flock(fd, LOCK_EX | LOCK_NB) == -1);
    CHECK(errno == EWOULDBLOCK);
    CHECK(env->TryLock(fd) == -EWOULDBLOCK);
    ::close(fd);

    for (bool recover : {false, true}) {
      SpillDirs other(env);
      std::vector<RecoveredFile> recovered;
      REQUIRE(other.Open({dir}, 0.95, recover, &recovered, nullptr, &error));
      CHECK(recovered.empty());
      CHECK(other.owned()[0] != live_dir);
      CHECK(Exists(file));
      CHECK(Exists(live_dir + "/LOCK"));
    }
  }

  SUBCASE("an instance directory that the dead store left without its LOCK") {
    {
      SpillDirs old(env);
      std::string error;
      REQUIRE(old.Open({dir}, 0.95, false, nullptr, nullptr, &error));
      WriteOk(env, old.NextFile(100), objs);
    }
    SpillDirs dirs(env);
    std::vector<RecoveredFile> recovered;
    std::string error;
    REQUIRE(dirs.Open({dir}, 0.95, true, &recovered, nullptr, &error));
    CHECK(recovered.size() == 1);
  }
}

TEST_CASE("SpillDirs::Open errors") {
  TempDir tmp;
  const std::string file = tmp / "plain";
  int fd = ::open(file.c_str(), O_CREAT | O_RDWR, 0600);
  REQUIRE(fd >= 0);
  ::close(fd);
  SpillDirs dirs(Env::Default());
  std::string error;
  CHECK(!dirs.Open({file}, 0.95, false, nullptr, nullptr, &error));
  CHECK(error.find(file) != std::string::npos);
  SpillDirs none(Env::Default());
  CHECK(!none.Open({}, 0.95, false, nullptr, nullptr, &error));
}

}  // TEST_SUITE

TEST_CASE("copying some records of a spill file into a new one (compaction)") {
  TempDir tmp;
  Env* env = Env::Default();
  const std::vector<Obj> objs = MixedObjects();
  const std::string from = tmp / "spill-1.bin", to = tmp / "spill-2.bin";
  Written w = WriteOk(env, from, objs);
  std::vector<RecordLocation> pick;
  std::vector<size_t> which;
  for (size_t i = 0; i < objs.size(); i += 3) {
    pick.push_back(w.locs[i]);
    which.push_back(i);
  }
  std::vector<RecordLocation> moved;
  uint64_t size = 0;
  std::string error;
  REQUIRE(CopySpillFile(env, from, pick, kFileVersion, to, &moved, &size, &error) == 0);
  REQUIRE(moved.size() == pick.size());
  CHECK(!Exists(to + ".tmp"));
  uint64_t off = 0;
  for (size_t k = 0; k < moved.size(); k++) {
    CHECK(moved[k].offset == off);
    CHECK(moved[k].size == pick[k].size);
    CHECK(moved[k].checksum == pick[k].checksum);
    off += moved[k].size;
    bool equal = false;
    CHECK(ReadBack(env, to, moved[k], objs[which[k]], &error, &equal) == 0);
    CHECK(equal);
  }
  // Its index reads back as any spill file's, and an independent reader walks it.
  std::vector<IndexedRecord> index;
  uint32_t version = 0;
  REQUIRE(ReadIndex(env, to, &index, &error, &version) == 0);
  CHECK(version == kFileVersion);
  CHECK(index.size() == pick.size());
  CHECK(size == off + pick.size() * kIndexEntry + kTrailer);
  // It never replaces a file that exists, and a failed copy leaves nothing.
  CHECK(CopySpillFile(env, from, pick, kFileVersion, to, &moved, &size, &error) == -EEXIST);
  FaultInjectionEnv faulty(env);
  faulty.FailWritesAfter(1000, ENOSPC);
  const std::string third = tmp / "spill-3.bin";
  CHECK(CopySpillFile(&faulty, from, pick, kFileVersion, third, &moved, &size, &error) == -ENOSPC);
  CHECK(!Exists(third));
  CHECK(!Exists(third + ".tmp"));
}

// ---------------------------------------------------------------------------------------------
// The DELETED log's format (spill/deleted_log.h): what --recover reads of it, damaged or torn.

namespace {

using Tombs = std::set<std::pair<uint64_t, uint64_t>>;

// A log of three writes: 3, 1 and 5 tombstones. *at: where each write starts.
std::vector<uint8_t> ThreeWrites(Tombs* all, std::vector<size_t>* at) {
  std::vector<uint8_t> log;
  store::spill::PutDeletedLogHeader(&log);
  uint64_t number = 1;
  for (int n : {3, 1, 5}) {
    std::vector<uint8_t> entries;
    for (int i = 0; i < n; i++) {
      const uint64_t offset = 4096 * static_cast<uint64_t>(i) + 16 * number;
      store::spill::PutTombstone(&entries, number, offset);
      all->emplace(number, offset);
      number++;
    }
    at->push_back(log.size());
    store::spill::PutDeletedLogUnit(&log, log.size(), entries.data(), entries.size());
  }
  return log;
}

Tombs SetOf(const store::spill::DeletedLog& l) { return Tombs(l.tombstones.begin(), l.tombstones.end()); }

}  // namespace

TEST_CASE("DELETED log: each write holds its tombstones twice, and reads back whole") {
  Tombs all;
  std::vector<size_t> at;
  std::vector<uint8_t> log = ThreeWrites(&all, &at);
  REQUIRE(log.size() == 16 + store::spill::DeletedLogUnitBytes(3) +
                            store::spill::DeletedLogUnitBytes(1) +
                            store::spill::DeletedLogUnitBytes(5));
  store::spill::DeletedLog l = store::spill::ParseDeletedLog(log.data(), log.size());
  CHECK(l.version == 2);
  CHECK(l.tombstones.size() == 9);
  CHECK(SetOf(l) == all);
  CHECK(l.end == log.size());
  CHECK(l.repaired == 0);
  CHECK(l.torn_bytes == 0);
  CHECK_FALSE(l.damaged);
  store::spill::DeletedLog empty = store::spill::ParseDeletedLog(nullptr, 0);
  CHECK(empty.tombstones.empty());
  CHECK(empty.end == 0);
}

// One flipped bit, wherever it is, gives back exactly the tombstones written, and the place of
// the next write. (Before the log had checksums, each one revived or hid an object.)
TEST_CASE("DELETED log: any one flipped bit gives back exactly the tombstones written") {
  Tombs all;
  std::vector<size_t> at;
  const std::vector<uint8_t> log = ThreeWrites(&all, &at);
  int repaired = 0;
  for (size_t bit = 0; bit < 8 * log.size(); bit++) {
    std::vector<uint8_t> bad = log;
    bad[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
    store::spill::DeletedLog l = store::spill::ParseDeletedLog(bad.data(), bad.size());
    CAPTURE(bit);
    REQUIRE_FALSE(l.damaged);
    REQUIRE_FALSE(l.unsupported);
    REQUIRE(SetOf(l) == all);
    REQUIRE(l.end == log.size());
    repaired += l.repaired > 0 || l.version == 1;
  }
  // Every bit but those of the header's check of its version is worth a rewrite.
  CHECK(repaired == 8 * static_cast<int>(log.size()) - 32);
}

// A write a power cut tore (cut short anywhere, or its bytes zero): the writes before it are
// read, and the next write goes where it began; if its first copy is whole, it counts.
TEST_CASE("DELETED log: a torn last write is where the log ends") {
  Tombs all;
  std::vector<size_t> at;
  const std::vector<uint8_t> log = ThreeWrites(&all, &at);
  Tombs before;
  for (const auto& t : all) {
    if (t.first <= 4) before.insert(t);
  }
  const size_t last = at[2];
  const size_t first_copy = last + 16 + 5 * 16;
  for (size_t cut = last; cut < log.size(); cut++) {
    CAPTURE(cut);
    for (const bool zeros : {false, true}) {
      CAPTURE(zeros);
      std::vector<uint8_t> torn = log;
      if (zeros) {
        std::fill(torn.begin() + static_cast<ptrdiff_t>(cut), torn.end(), 0);
      } else {
        torn.resize(cut);
      }
      store::spill::DeletedLog l = store::spill::ParseDeletedLog(torn.data(), torn.size());
      REQUIRE_FALSE(l.damaged);
      // (Zeros may leave it whole: the high bytes of a record offset are zero.)
      const bool first_whole =
          torn.size() >= first_copy &&
          std::equal(torn.begin() + static_cast<ptrdiff_t>(last),
                     torn.begin() + static_cast<ptrdiff_t>(first_copy),
                     log.begin() + static_cast<ptrdiff_t>(last));
      if (first_whole) {
        CHECK(SetOf(l) == all);
        CHECK(l.end == log.size());
        CHECK(l.repaired == (torn == log ? 0u : 1u));
      } else {
        CHECK(SetOf(l) == before);
        CHECK(l.end == last);
        CHECK(l.torn_bytes == torn.size() - last);
      }
    }
  }
}

// Both copies of a write damaged, with whole writes after it: the log cannot say what it
// deleted, and says so. Both copies of the last write damaged reads as a torn write (a power
// cut and damage there cannot be told apart).
TEST_CASE("DELETED log: both copies of a write damaged, whole ones after it, is damage") {
  Tombs all;
  std::vector<size_t> at;
  const std::vector<uint8_t> log = ThreeWrites(&all, &at);
  std::vector<uint8_t> bad = log;
  const size_t unit = at[1];
  bad[unit + 16 + 3] ^= 4;       // copy A's entry
  bad[unit + 32 + 16 + 3] ^= 4;  // copy B's
  store::spill::DeletedLog l = store::spill::ParseDeletedLog(bad.data(), bad.size());
  CHECK(l.damaged);
  CHECK(l.damaged_at == unit);
  // A later format is refused, not guessed at.
  std::vector<uint8_t> later = log;
  later[8] = 3;
  later[12] = static_cast<uint8_t>(~3u);
  store::spill::DeletedLog v3 = store::spill::ParseDeletedLog(later.data(), later.size());
  CHECK(v3.unsupported);
  CHECK(v3.found_version == 3);
}

// The first format: 16-byte tombstones, a torn last one ignored.
TEST_CASE("DELETED log: the first format is read") {
  std::vector<uint8_t> v1;
  store::spill::PutTombstone(&v1, 7, 4096);
  store::spill::PutTombstone(&v1, 9, 0);
  v1.insert(v1.end(), {1, 2, 3});
  store::spill::DeletedLog l = store::spill::ParseDeletedLog(v1.data(), v1.size());
  CHECK(l.version == 1);
  CHECK(SetOf(l) == Tombs{{7, 4096}, {9, 0}});
  CHECK(l.end == 32);
}
