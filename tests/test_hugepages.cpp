// test_hugepages.cpp - the store on reserved huge pages (hugetlbfs), against a real store
// process: used by default when enough are free, and quietly not when too few are (unless the
// kernel may lend surplus ones, which the store gives back when it stops); never with
// --no-hugepages. A client maps such a region whole when it connects, so its puts and gets take
// no page fault and no mapping thread runs. Objects spill from and restore into huge pages
// intact (the region frees only whole huge pages and zeroes the rest).
// Run through with_hugepages.sh, which makes sure enough huge pages are free (skipped where it
// cannot).
#include <doctest.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "client_util.h"
#include "harness.h"
#include "storeclient.h"

using namespace test;

namespace {

constexpr uint64_t kMiB = 1ull << 20;

// A field of /proc/meminfo (HugePages_Free, Hugepagesize, ...); -1 if missing.
long long MemInfo(const char* key) {
  FILE* f = std::fopen("/proc/meminfo", "re");
  if (!f) return -1;
  char line[256];
  long long v = -1;
  const std::string prefix = std::string(key) + ":";
  while (std::fgets(line, sizeof line, f)) {
    if (std::string(line).rfind(prefix, 0) == 0) {
      v = std::atoll(line + prefix.size());
      break;
    }
  }
  std::fclose(f);
  return v;
}

long long FreeHugePages() { return MemInfo("HugePages_Free"); }
long long SurplusHugePages() { return MemInfo("HugePages_Surp"); }

// Sets vm.nr_overcommit_hugepages (how many surplus huge pages the kernel may take from free
// memory when the pool runs short) for a scope and sets it back. ok() is false where the knob
// cannot be written (not root), and then nothing changed.
class OvercommitHugePages {
 public:
  explicit OvercommitHugePages(long long pages) {
    old_ = Read();
    ok_ = old_ >= 0 && Write(pages) && Read() == pages;
  }
  ~OvercommitHugePages() {
    if (ok_) Write(old_);
  }
  bool ok() const { return ok_; }

 private:
  static constexpr const char* kKnob = "/proc/sys/vm/nr_overcommit_hugepages";
  static long long Read() {
    FILE* f = std::fopen(kKnob, "re");
    if (!f) return -1;
    long long v = -1;
    if (std::fscanf(f, "%lld", &v) != 1) v = -1;
    std::fclose(f);
    return v;
  }
  static bool Write(long long v) {
    FILE* f = std::fopen(kKnob, "we");
    if (!f) return false;
    bool ok = std::fprintf(f, "%lld\n", v) > 0;
    ok = std::fclose(f) == 0 && ok;
    return ok;
  }
  long long old_ = -1;
  bool ok_ = false;
};

// Page faults allowed while touching mapped memory: none, except under a sanitizer, whose
// shadow memory faults in on first use.
long FaultsAllowed(uint64_t bytes) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  return static_cast<long>(bytes / 4096);
#else
  (void)bytes;
  return 0;
#endif
}

// What the start-up line says. The store writes it just after its socket starts to accept,
// which is all TestStore waits for, so the line is awaited here.
bool StartedOnHugePages(const TestStore& s) {
  std::string log;
  const bool seen = WaitFor([&] {
    log = s.Log();
    return log.find(" listening on ") != std::string::npos;
  });
  REQUIRE_MESSAGE(seen, log);
  return log.find(", huge pages") != std::string::npos;
}

store_stats Stats(store_client* c) {
  store_stats st = STORE_STATS_INIT;
  REQUIRE(store_stats_get(c, &st) == STORE_OK);
  return st;
}

uint8_t Byte(uint64_t seed, uint64_t i) { return static_cast<uint8_t>((i * 131 + seed * 7) >> 3); }

void PutPattern(store_client* c, const store_object_id& id, uint64_t size, uint64_t seed) {
  store_create_options o = STORE_CREATE_OPTIONS_INIT;
  o.timeout_ms = 10000;  // waits for spills to make room
  store_writer* raw = nullptr;
  const int rc = store_create(c, &raw, &id, size, &o);
  INFO(store_last_error_message());
  REQUIRE(rc == STORE_OK);
  WriterPtr w(raw);
  auto* p = static_cast<uint8_t*>(store_writer_data(w.get()));
  REQUIRE(p != nullptr);
  for (uint64_t i = 0; i < size; i++) p[i] = Byte(seed, i);
  REQUIRE(store_writer_seal(w.release()) == STORE_OK);
}

// Opens id (restoring it if spilled) and counts the bytes that differ from the pattern.
uint64_t WrongBytes(store_client* c, const store_object_id& id, uint64_t size, uint64_t seed) {
  store_reader* raw = nullptr;
  REQUIRE(store_open_reader(c, &raw, &id, 10000) == STORE_OK);
  ReaderPtr r(raw);
  REQUIRE(store_reader_size(r.get()) == size);
  auto* q = static_cast<const uint8_t*>(store_reader_data(r.get()));
  REQUIRE(q != nullptr);
  uint64_t wrong = 0;
  for (uint64_t i = 0; i < size; i++) wrong += q[i] != Byte(seed, i);
  return wrong;
}

}  // namespace

TEST_CASE("by default, and with --hugepages, the store takes huge pages when enough are free, "
          "and a client maps them all at connect") {
  for (const std::vector<std::string>& extra :
       {std::vector<std::string>{}, std::vector<std::string>{"--hugepages"}}) {
    INFO("flags: ", extra.empty() ? "none" : extra[0]);
    const long long free_before = FreeHugePages();
    REQUIRE(free_before >= 8);
    std::vector<std::string> args = extra;
    args.insert(args.end(), {"--log-level", "info"});
    {
      TestStore s("16M", args);
      REQUIRE_MESSAGE(s.started(), s.Log());
      CHECK_MESSAGE(StartedOnHugePages(s), s.Log());
      CHECK(s.Log().find("warn") == std::string::npos);
      // 16 MiB of 2 MiB pages, all taken at start.
      CHECK(FreeHugePages() == free_before - 8);

      const int threads = ThreadCount();
      ClientPtr a = Connect(s.socket(), "a");
      ClientPtr b = Connect(s.socket(), "b");
      // No thread maps the region in the background: it was mapped whole at connect.
      CHECK(ThreadCount() == threads);

      const store_object_id id = IdOf("huge-put");
      const uint64_t size = 8 * kMiB + 4321;
      store_writer* raw = nullptr;
      REQUIRE(store_create(a.get(), &raw, &id, size, nullptr) == STORE_OK);
      WriterPtr w(raw);
      auto* p = static_cast<uint8_t*>(store_writer_data(w.get()));
      REQUIRE(p != nullptr);
      long f0 = ThreadMinorFaults();
      for (uint64_t i = 0; i < size; i++) p[i] = Byte(1, i);
      CHECK(ThreadMinorFaults() - f0 <= FaultsAllowed(size));
      REQUIRE(store_writer_seal(w.release()) == STORE_OK);

      store_reader* rr = nullptr;
      REQUIRE(store_open_reader(b.get(), &rr, &id, 0) == STORE_OK);
      ReaderPtr r(rr);
      auto* q = static_cast<const uint8_t*>(store_reader_data(r.get()));
      REQUIRE(q != nullptr);
      f0 = ThreadMinorFaults();
      uint64_t wrong = 0;
      for (uint64_t i = 0; i < size; i++) wrong += q[i] != Byte(1, i);
      CHECK(ThreadMinorFaults() - f0 <= FaultsAllowed(size));
      CHECK(wrong == 0);
      r.reset();
      REQUIRE(store_delete(a.get(), &id) == STORE_OK);
      CHECK(WaitFor([&] { return Stats(a.get()).object_count == 0; }));
      a.reset();
      b.reset();
      CHECK(ExitedCleanly(s.Stop()));
    }
    // The pages go back to the pool when the store stops.
    CHECK(FreeHugePages() == free_before);
  }
}

TEST_CASE("with --no-hugepages, or with too few huge pages free, the store uses normal pages "
          "and leaves the pool alone") {
  const long long free_before = FreeHugePages();
  REQUIRE(free_before >= 8);
  SUBCASE("--no-hugepages") {
    TestStore s("16M", {"--no-hugepages", "--log-level", "info"});
    REQUIRE_MESSAGE(s.started(), s.Log());
    CHECK_MESSAGE(!StartedOnHugePages(s), s.Log());
    CHECK(s.Log().find("warn") == std::string::npos);
    CHECK(FreeHugePages() == free_before);
    ClientPtr a = Connect(s.socket(), "a");
    const store_object_id id = IdOf("normal-pages");
    PutPattern(a.get(), id, 3 * kMiB, 5);
    CHECK(WrongBytes(a.get(), id, 3 * kMiB, 5) == 0);
    REQUIRE(store_delete(a.get(), &id) == STORE_OK);
    a.reset();
    CHECK(ExitedCleanly(s.Stop()));
  }
  SUBCASE("one huge page more than is free: quietly normal pages by default") {
    OvercommitHugePages none(0);
    REQUIRE_MESSAGE((none.ok() || SurplusHugePages() == 0), "vm.nr_overcommit_hugepages is set");
    const std::string memory = std::to_string((free_before + 1) * 2) + "M";
    TestStore s(memory, {"--log-level", "info"});
    REQUIRE_MESSAGE(s.started(), s.Log());
    CHECK_MESSAGE(!StartedOnHugePages(s), s.Log());
    CHECK(s.Log().find("warn") == std::string::npos);
    CHECK(FreeHugePages() == free_before);
    CHECK(ExitedCleanly(s.Stop()));
  }
  SUBCASE("one huge page more than is free, with --hugepages: a warning says how many are needed") {
    OvercommitHugePages none(0);
    const std::string memory = std::to_string((free_before + 1) * 2) + "M";
    TestStore s(memory, {"--hugepages"});
    REQUIRE_MESSAGE(s.started(), s.Log());
    const std::string want = std::to_string(free_before + 1) + " needed";
    CHECK_MESSAGE(s.Log().find(want) != std::string::npos, s.Log());
    CHECK(FreeHugePages() == free_before);
    CHECK(ExitedCleanly(s.Stop()));
  }
  CHECK(FreeHugePages() == free_before);
}

TEST_CASE("a --memory that is not a whole number of huge pages gets normal pages by default, and "
          "is rounded up to huge pages with --hugepages") {
  const long long free_before = FreeHugePages();
  REQUIRE(free_before >= 2);
  for (bool asked : {false, true}) {
    INFO("--hugepages ", asked);
    std::vector<std::string> args = {"--log-level", "info"};
    if (asked) args.push_back("--hugepages");
    TestStore s("3M", args);
    REQUIRE_MESSAGE(s.started(), s.Log());
    CHECK(StartedOnHugePages(s) == asked);
    CHECK(FreeHugePages() == free_before - (asked ? 2 : 0));
    ClientPtr c = Connect(s.socket(), "sizes");
    CHECK(Stats(c.get()).capacity_bytes == (asked ? 4 : 3) * kMiB);
    c.reset();
    CHECK(ExitedCleanly(s.Stop()));
  }
  CHECK(FreeHugePages() == free_before);
}

TEST_CASE("with too few huge pages free, the store borrows surplus ones where the kernel lends "
          "them (vm.nr_overcommit_hugepages) and gives them back when it stops") {
  const long long free_before = FreeHugePages();
  const long long surplus_before = SurplusHugePages();
  REQUIRE(free_before >= 0);
  REQUIRE(surplus_before >= 0);
  OvercommitHugePages lend(surplus_before + 4);
  if (!lend.ok()) {
    WARN_MESSAGE(false, "vm.nr_overcommit_hugepages cannot be set here (not root): case not run");
    return;
  }
  // Four huge pages more than the pool has free: the kernel lends those four.
  const std::string memory = std::to_string((free_before + 4) * 2) + "M";
  TestStore s(memory, {"--log-level", "info"});
  REQUIRE_MESSAGE(s.started(), s.Log());
  CHECK_MESSAGE(StartedOnHugePages(s), s.Log());
  CHECK(FreeHugePages() == 0);
  CHECK(SurplusHugePages() == surplus_before + 4);
  ClientPtr c = Connect(s.socket(), "borrower");
  CHECK(Stats(c.get()).capacity_bytes == static_cast<uint64_t>(free_before + 4) * 2 * kMiB);
  const store_object_id id = IdOf("on-surplus-pages");
  PutPattern(c.get(), id, 5 * kMiB + 77, 9);
  CHECK(WrongBytes(c.get(), id, 5 * kMiB + 77, 9) == 0);
  REQUIRE(store_delete(c.get(), &id) == STORE_OK);
  c.reset();
  CHECK(ExitedCleanly(s.Stop()));
  CHECK(SurplusHugePages() == surplus_before);
  CHECK(FreeHugePages() == free_before);
}

TEST_CASE("objects spill from huge pages and come back intact, and freed huge pages are reused") {
  TempDir tmp;
  const std::string spill = tmp.path + "/spill";
  REQUIRE(std::filesystem::create_directory(spill));
  {
    TestStore s("16M", {"--spill-dir", spill, "--log-level", "info"});
    REQUIRE_MESSAGE(s.started(), s.Log());
    REQUIRE_MESSAGE(StartedOnHugePages(s), s.Log());
    ClientPtr c = Connect(s.socket(), "spiller");
    // Sizes that start and end inside huge pages, 3x the memory in all.
    std::vector<std::pair<store_object_id, uint64_t>> objs;
    uint64_t total = 0;
    for (int i = 0; total < 48 * kMiB; i++) {
      const uint64_t size = (i % 3 == 0) ? 3 * kMiB + 12345 : (i % 3 == 1) ? 700000 : 40000 + i;
      objs.push_back({IdOf("spill-" + std::to_string(i)), size});
      PutPattern(c.get(), objs.back().first, size, static_cast<uint64_t>(i));
      total += size;
    }
    store_stats st = Stats(c.get());
    CHECK(st.spilled_count > 0);
    CHECK(st.total_spill_failures == 0);
    // Every object reads back as written, most of them restored from the spill files, twice
    // over so that restores land on memory freed by spills.
    for (int pass = 0; pass < 2; pass++) {
      for (size_t i = 0; i < objs.size(); i++) {
        INFO("object ", i, " pass ", pass);
        CHECK(WrongBytes(c.get(), objs[i].first, objs[i].second, i) == 0);
      }
    }
    CHECK(Stats(c.get()).total_restored_objects > 0);
    for (auto& [id, size] : objs) REQUIRE(store_delete(c.get(), &id) == STORE_OK);
    CHECK(WaitFor([&] {
      store_stats now = Stats(c.get());
      return now.object_count == 0 && now.used_bytes == 0 && now.spill_files == 0;
    }));
    c.reset();
    CHECK(ExitedCleanly(s.Stop()));
  }
}
