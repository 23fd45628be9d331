// spill.cpp - the spill figures: spill, restore, restore_prefetch, restore_cold against file IO
// in the spill directory (limits.cpp), and spill_churn against its goal.
//
// Owns: nothing beyond the objects a figure makes (deleted before it returns) and, while they
// run, the limits' file (run.scratch, which the failure path deletes).
// Called by: Main() in tools/store_bench.cpp, when --only allows the spill figures.
// Threads: one.
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <random>
#include <string>
#include <vector>

#include "bench.h"

namespace store::bench {

// ---- spilling to disk ----------------------------------------------------------------------
//
// One round: fill the store with 8 MiB objects, write a file of the same size into the spill
// directory (the spill limit), store_evict them all (the spill figure), read that file back
// after dropping it from the page cache and again warm (the restore limits), delete it, then
// open each object (the restore figure: the spill files are as the server left them, usually
// still in the page cache). Then twice more from disk: evicted again (their copies on disk
// are kept, so nothing is written) and restored with store_prefetch of all first, and, with
// the spill files dropped from the page cache, sequentially. Every object is deleted at the
// end of the round.

namespace {

constexpr uint64_t kSpillMin = 32ull << 20;             // below this the figures say too little
constexpr int32_t kSpillImportance = INT32_MIN / 2;    // spilled before anything else
constexpr double kSpillFill = 0.75;  // of the capacity: below the server's default high mark
constexpr int64_t kRestoreTimeoutMs = 120000;
constexpr int kReadSamples = 3;  // cold and warm reads of the limit's file per round

std::string FsType(const std::string& dir) {
  struct statfs sf;
  if (statfs(dir.c_str(), &sf) != 0) return "?";
  switch (static_cast<unsigned long>(sf.f_type)) {
    case 0xEF53: return "ext2/3/4";
    case 0x58465342: return "xfs";
    case 0x9123683E: return "btrfs";
    case 0x01021994: return "tmpfs";
    case 0x794c7630: return "overlayfs";
    case 0x2FC12FC1: return "zfs";
    case 0x6969: return "nfs";
    case 0x65735546: return "fuse";
    default: {
      char b[32];
      snprintf(b, sizeof b, "0x%lx", static_cast<unsigned long>(sf.f_type));
      return b;
    }
  }
}

// Where an object's copy on disk lies (store_spill_url).
struct SpillRecordAt {
  std::string path;
  uint64_t offset = 0;
  uint64_t size = 0;
};

bool ParseSpillUrl(const char* url, SpillRecordAt* out) {
  std::string u = url;
  if (u.compare(0, 7, "file://") != 0) return false;
  size_t q = u.rfind('?');
  if (q == std::string::npos) return false;
  out->path = u.substr(7, q - 7);
  unsigned long long o = 0, z = 0;
  if (sscanf(u.c_str() + q, "?offset=%llu&size=%llu", &o, &z) != 2) return false;
  out->offset = o;
  out->size = z;
  return true;
}

std::vector<SpillRecordAt> SpillRecords(Run& run, const std::vector<store_object_id>& ids) {
  std::vector<SpillRecordAt> recs;
  char url[4096];
  for (const store_object_id& id : ids) {
    Check(run, store_spill_url(run.client, &id, url, sizeof url), "store_spill_url");
    SpillRecordAt r;
    if (!ParseSpillUrl(url, &r)) {
      Die(run, (std::string("cannot parse the spill URL ") + url).c_str());
    }
    recs.push_back(r);
  }
  return recs;
}

// Percent of the spill records' pages in the page cache; -1 if none could be checked.
double ResidentPercent(const std::vector<SpillRecordAt>& recs) {
  uint64_t resident = 0, total = 0;
  for (const SpillRecordAt& r : recs) CountResident(r.path, r.offset, r.size, &resident, &total);
  return total ? 100.0 * static_cast<double>(resident) / static_cast<double>(total) : -1;
}

// Waits until no spill or restore is in flight in the server (the server may spill on its own
// once use passes its high mark).
void WaitSpillIdle(Run& run) {
  double t0 = Now();
  for (;;) {
    store_stats s = Stats(run);
    if (s.spilling_count == 0 && s.restoring_count == 0) return;
    if (Now() - t0 > 60) Die(run, "the server kept spilling or restoring for 60 s");
    CheckStop(run);
    usleep(5000);
  }
}

// Counts the objects of ids by state: in memory (sealed), spilled, other.
void CountStates(Run& run, const std::vector<store_object_id>& ids, size_t* in_memory,
                 size_t* spilled) {
  *in_memory = *spilled = 0;
  for (const store_object_id& id : ids) {
    store_object_info info = STORE_OBJECT_INFO_INIT;
    Check(run, store_info(run.client, &id, &info), "store_info");
    if (info.state == STORE_STATE_SEALED) ++*in_memory;
    if (info.state == STORE_STATE_SPILLED) ++*spilled;
  }
}

// Stamps object i's first 8 bytes into a copy of the pattern.
void StampObject(uint8_t* dst, uint64_t i) { memcpy(dst, &i, sizeof i); }

bool SameAsObject(const uint8_t* p, const uint8_t* pattern, uint64_t i) {
  uint64_t got;
  memcpy(&got, p, sizeof got);
  return got == i && memcmp(p + 8, pattern + 8, kSpillObject - 8) == 0;
}

// Opens every object in turn (it is restored from disk on the way), checks it untimed, closes
// it. Seconds of the opens and closes.
double RestoreSequential(Run& run, const std::vector<store_object_id>& ids, const uint8_t* pattern,
                         bool verify) {
  double timed = 0;
  for (size_t i = 0; i < ids.size(); i++) {
    double t0 = Now();
    store_reader* rd = nullptr;
    Check(run, store_open_reader(run.client, &rd, &ids[i], kRestoreTimeoutMs),
          "store_open_reader of a spilled object");
    double t1 = Now();
    const uint8_t* p = static_cast<const uint8_t*>(store_reader_data(rd));
    if (!p || store_reader_size(rd) != kSpillObject) {
      store_reader_close(rd);
      Die(run, "a restored object has no data or the wrong size");
    }
    if (verify && !SameAsObject(p, pattern, i)) {
      store_reader_close(rd);
      Die(run, "an object restored from disk differs from what was written");
    }
    double t2 = Now();
    store_reader_close(rd);
    timed += (t1 - t0) + (Now() - t2);
    CheckStop(run);
  }
  return timed;
}

// store_prefetch of all, then opens and closes each. Seconds in all.
double RestorePrefetched(Run& run, const std::vector<store_object_id>& ids) {
  double t0 = Now();
  Check(run, store_prefetch(run.client, ids.data(), ids.size()), "store_prefetch");
  for (size_t i = 0; i < ids.size(); i++) {
    store_reader* rd = nullptr;
    Check(run, store_open_reader(run.client, &rd, &ids[i], kRestoreTimeoutMs),
          "store_open_reader of a prefetched object");
    if (store_reader_size(rd) != kSpillObject) {
      store_reader_close(rd);
      Die(run, "a prefetched object has the wrong size");
    }
    store_reader_close(rd);
  }
  double t = Now() - t0;
  CheckStop(run);
  return t;
}

// Evicts the objects of ids that are in memory again. Restored objects keep their copies on
// disk, so this writes nothing. Returns the bytes written (0 expected).
uint64_t EvictAgain(Run& run, const std::vector<store_object_id>& ids) {
  store_stats before = Stats(run);
  size_t in_memory = 0, spilled = 0;
  for (int attempt = 0;; attempt++) {
    WaitSpillIdle(run);
    CountStates(run, ids, &in_memory, &spilled);
    if (spilled == ids.size()) break;
    if (in_memory == 0 || attempt == 3) {
      Die(run, "store_evict left restored objects of this run in memory");
    }
    // An 8 MiB object takes exactly 8 MiB of the store (a size class, page aligned).
    uint64_t freed = 0;
    Check(run, store_evict(run.client, static_cast<uint64_t>(in_memory) * kSpillObject, &freed),
          "store_evict of restored objects");
  }
  return Stats(run).total_spilled_bytes - before.total_spilled_bytes;
}

double Rate(uint64_t bytes, double seconds) {
  return seconds > 0 ? static_cast<double>(bytes) / seconds / kGB : 0;
}

// The server's restore rate between two snapshots: bytes over the summed time of its jobs.
double ServerRestoreRate(const store_stats& a, const store_stats& b) {
  return Rate(b.total_restored_bytes - a.total_restored_bytes,
              static_cast<double>(b.total_restore_ns - a.total_restore_ns) / 1e9);
}

std::string Mib(uint64_t b) { return std::to_string(b >> 20) + " MiB"; }

std::string Secs(double s) {
  char b[32];
  snprintf(b, sizeof b, "%.2f s", s);
  return b;
}

std::string Pct(double p) {
  if (p < 0) return "unknown";
  char b[32];
  snprintf(b, sizeof b, "%.0f%%", p);
  return b;
}

}  // namespace

// Churn on disk: 96 objects of 1 MiB spilled, then rounds that delete a fifth of them at random
// and put and spill as many new ones (each spill makes a file).
// After each round, once spilling and compaction are quiet: disk bytes / live record bytes.
void SpillChurn(Run& run) {
  Result r{"spill_churn", "spill files' bytes / live record bytes after rounds of deleting a "
           "fifth of the spilled 1 MiB objects and spilling as many new ones", {}, {}, false, "",
           "", {}};
  r.figure = Series{"spill_churn", "disk/live", {}};
  r.limits.push_back(Series{"goal", "disk/live", {}});
  const size_t n = 96;
  const uint64_t size = 1ull << 20;
  std::vector<uint8_t> data(size, 0x6c);
  std::vector<uint64_t> live;  // ids (counter part) of the run's spilled objects
  std::mt19937_64 rng(1234);
  store_create_options co = STORE_CREATE_OPTIONS_INIT;
  co.importance = kSpillImportance;
  co.timeout_ms = 10000;
  auto put = [&] {
    store_object_id id = MakeId(run, run.next_id);
    Check(run, store_put(run.client, &id, data.data(), size, &co), "store_put of 1 MiB");
    live.push_back(run.next_id++);
    run.created++;
  };
  auto settle = [&] {
    // Quiet: no spill write or restore, and the dead bytes stable (compaction done).
    uint64_t last = UINT64_MAX;
    for (int i = 0; i < 2000; i++) {
      store_stats st = Stats(run);
      if (st.spilling_count == 0 && st.restoring_count == 0 && st.spill_dead_bytes == last) return st;
      last = st.spill_dead_bytes;
      usleep(5000);
    }
    return Stats(run);
  };
  for (size_t i = 0; i < n; i++) put();
  uint64_t evicted = 0;
  Check(run, store_evict(run.client, UINT64_MAX, &evicted), "store_evict");
  const int rounds = run.set.quick ? 3 : 10;
  for (int round = 0; round < rounds; round++) {
    for (size_t k = 0; k < n / 5; k++) {
      size_t i = rng() % live.size();
      store_object_id id = MakeId(run, live[i]);
      Delete(run, id);
      live[i] = live.back();
      live.pop_back();
    }
    for (size_t k = 0; k < n / 5; k++) put();
    Check(run, store_evict(run.client, UINT64_MAX, &evicted), "store_evict");
    store_stats st = settle();
    const double live_bytes = static_cast<double>(live.size()) * static_cast<double>(16 + size);
    r.figure.v.push_back(static_cast<double>(st.spill_disk_bytes) / live_bytes);
    r.limits[0].v.push_back(1.5);
    CheckStop(run);
  }
  for (uint64_t id : live) {
    store_object_id oid = MakeId(run, id);
    Delete(run, oid);
  }
  Add(run, std::move(r));
}

void SpillRestore(Run& run, const store_stats& st) {
  Result spill{"spill", "store_evict of all the run's 8 MiB objects (written + fdatasync), "
               "wall time around the call", {}, {}, false, "", "", {}};
  Result restore{"restore", "store_open_reader + close of each spilled 8 MiB object in turn, "
                 "spill files as the server left them", {}, {}, false, "", "", {}};
  Result prefetch{"restore_prefetch", "store_prefetch of all the spilled objects, then open + "
                  "close of each", {}, {}, false, "", "", {}};
  Result cold{"restore_cold", "open + close of each spilled object in turn, spill files "
              "dropped from the page cache first", {}, {}, false, "", "", {}};
  auto skip = [&](const std::string& why) {
    for (Result* r : {&spill, &restore}) {
      r->skipped = true;
      r->reason = why;
      Add(run, std::move(*r));
    }
  };
  if (!st.spill_enabled) {
    return skip("the store does not spill (started without --spill-dir)");
  }
  if (run.set.spill_dir.empty()) {
    return skip("pass --spill-dir DIR, the directory the store spills into, to measure the "
                "disk's own rate");
  }
  const std::string& dir = run.set.spill_dir;
  struct stat dst;
  if (stat(dir.c_str(), &dst) != 0 || !S_ISDIR(dst.st_mode)) {
    return skip("--spill-dir " + dir + " is not a directory");
  }
  if (access(dir.c_str(), W_OK | X_OK) != 0) {
    return skip("cannot write into --spill-dir " + dir + ": " + strerror(errno));
  }

  // How much: the setting, bounded by the memory free below the high mark and by the disk.
  uint64_t bytes = run.set.spill_bytes;
  uint64_t fill_cap = static_cast<uint64_t>(kSpillFill * static_cast<double>(st.capacity_bytes));
  uint64_t mem_room = fill_cap > st.used_bytes ? fill_cap - st.used_bytes : 0;
  bytes = std::min(bytes, mem_room);
  struct statvfs sv;
  uint64_t disk_room = 0;
  if (statvfs(dir.c_str(), &sv) == 0) {
    // The limit's file and the spill files exist at once; keep a tenth of the disk free.
    uint64_t total = static_cast<uint64_t>(sv.f_blocks) * sv.f_frsize;
    uint64_t avail = static_cast<uint64_t>(sv.f_bavail) * sv.f_frsize;
    disk_room = avail > total / 10 ? (avail - total / 10) / 2 : 0;
    bytes = std::min(bytes, disk_room);
  }
  bytes = bytes / kSpillObject * kSpillObject;
  if (bytes < kSpillMin) {
    return skip("needs " + Mib(kSpillMin) + " of store memory below " +
                std::to_string(static_cast<int>(kSpillFill * 100)) + "% of the capacity (" +
                Mib(mem_room) + " there) and twice that on the disk of " + dir + " (" +
                Mib(disk_room) + " usable)");
  }
  const size_t n = bytes / kSpillObject;

  for (Result* r : {&spill, &restore, &prefetch, &cold}) r->figure = Series{r->name, "GB/s", {}};
  spill.limits.push_back(Series{"file_write", "GB/s", {}});
  spill.also.push_back(Series{"spill_server", "GB/s", {}});
  for (Result* r : {&restore, &prefetch, &cold}) {
    r->limits.push_back(Series{"file_read_cold", "GB/s", {}});
    r->limits.push_back(Series{"file_read_warm", "GB/s", {}});
    r->limits.push_back(Series{"file_read_warm_spread", "GB/s", {}});
    r->also.push_back(Series{r->name + "_server", "GB/s", {}});
  }

  uint8_t* pattern = TouchedBuffer(run, kSpillObject, 0);
  FillPattern(pattern, kSpillObject);
  uint8_t* rbuf = TouchedBuffer(run, kSpillObject, 1);
  // A restore writes each object to its own place in the store's memory: as much memory, read
  // into the same way each round (its first round pays for first touches, as the restore's).
  uint8_t* spread = TouchedBuffer(run, bytes, 1);
  {
    char name[64];
    snprintf(name, sizeof name, "/.store-bench-%d-%s.tmp", static_cast<int>(getpid()),
             PrefixHex(run).substr(16).c_str());
    run.scratch = dir + name;
  }

  // The warm-up stays well below the kernel's background writeback threshold (by default a
  // tenth of the available memory), so none of it is written.
  uint64_t warm_bytes = bytes;
  {
    uint64_t avail_kb = 0;
    std::string line = ReadFirstLine("/proc/meminfo", "MemAvailable");
    if (!line.empty()) avail_kb = strtoull(line.c_str(), nullptr, 10);
    if (avail_kb > 0) warm_bytes = std::min(warm_bytes, avail_kb * 1024 / 20);
    warm_bytes = warm_bytes / kSpillObject * kSpillObject;
  }

  std::vector<store_object_id> ids(n);
  uint64_t object_spill_bytes = 0, spill_files = 0;
  double scratch_cold_resident = -1, warm_resident_first = -1, cold_resident_first = -1;
  double prefetch_resident_first = -1;
  size_t early = 0;  // objects the server spilled on its own during the fill
  double warm_s = 0;  // spent warming the page cache
  uint64_t prefetch_rewritten = 0;
  bool outside_dir = false, other_fs = false;
  std::string spill_path_example;
  for (int round = 0; round < run.set.spill_rounds; round++) {
    // Fill.
    store_stats s0 = Stats(run);
    store_create_options co = STORE_CREATE_OPTIONS_INIT;
    co.importance = kSpillImportance;
    co.timeout_ms = 10000;
    for (size_t i = 0; i < n; i++) {
      ids[i] = MakeId(run, run.next_id++);
      store_writer* w = nullptr;
      Check(run, store_create(run.client, &w, &ids[i], kSpillObject, &co), "store_create of 8 MiB");
      uint8_t* p = static_cast<uint8_t*>(store_writer_data(w));
      if (!p) {
        store_writer_abort(w);
        Die(run, "store_writer_data returned NULL");
      }
      memcpy(p, pattern, kSpillObject);
      StampObject(p, i);
      Check(run, store_writer_seal(w), "store_writer_seal of 8 MiB");
      run.created++;
      CheckStop(run);
    }
    WaitSpillIdle(run);
    store_stats s1 = Stats(run);
    size_t in_memory = 0, spilled = 0;
    CountStates(run, ids, &in_memory, &spilled);
    early += n - in_memory;
    // The memory the objects still in memory hold: all of it when nothing was spilled yet.
    uint64_t target = in_memory == n && s1.used_bytes > s0.used_bytes
                          ? s1.used_bytes - s0.used_bytes
                          : static_cast<uint64_t>(in_memory) * kSpillObject;

    // Spill: the limit right before the figure. The limit's file leaves the page cache at once,
    // so that the spill gets the pages the limit had.
    double w0 = Now();
    WarmPageCache(run, pattern, warm_bytes);
    warm_s += Now() - w0;
    double wt = WriteScratch(run, pattern, bytes);
    DropFromCache(run, run.scratch);
    spill.limits[0].v.push_back(Rate(bytes, wt));
    store_stats a = Stats(run);
    uint64_t freed = 0;
    double t0 = Now();
    Check(run, store_evict(run.client, target, &freed), "store_evict");
    double et = Now() - t0;
    store_stats b = Stats(run);
    uint64_t written = b.total_spilled_bytes - a.total_spilled_bytes;
    spill.figure.v.push_back(Rate(written, et));
    spill.also[0].v.push_back(
        Rate(written, static_cast<double>(b.total_spill_ns - a.total_spill_ns) / 1e9));
    spill_files = b.spill_files > a.spill_files ? b.spill_files - a.spill_files : 0;
    object_spill_bytes = written;
    CountStates(run, ids, &in_memory, &spilled);
    if (spilled != n) {
      Die(run, ("store_evict left " + std::to_string(n - spilled) + " of " + std::to_string(n) +
           " objects of this run in memory")
              .c_str());
    }
    std::vector<SpillRecordAt> recs = SpillRecords(run, ids);
    if (round == 0 && !recs.empty()) {
      spill_path_example = recs[0].path;
      char real[PATH_MAX];
      std::string base = realpath(dir.c_str(), real) ? real : dir;
      for (const SpillRecordAt& r : recs) {
        if (r.path.compare(0, base.size() + 1, base + "/") != 0) outside_dir = true;
        struct stat fst;
        if (stat(r.path.c_str(), &fst) == 0 && fst.st_dev != dst.st_dev) other_fs = true;
      }
    }

    // Restore, as the spill left the files: the limits right before the figure. A read of a
    // file just dropped from the page cache varies by 2x from one to the next here, so each
    // round takes several (each sample is in the series).
    std::vector<double> cold_s, warm_s_reads, spread_s_reads;
    w0 = Now();
    WarmPageCache(run, pattern, warm_bytes);  // for the reads: the spill files hold the others
    warm_s += Now() - w0;
    for (int k = 0; k < kReadSamples; k++) {
      DropFromCache(run, run.scratch);
      double cold_pct = ScratchResidentPercent(run, bytes);
      if (round == 0 && k == 0) scratch_cold_resident = cold_pct;
      cold_s.push_back(ReadScratch(run, rbuf, bytes));
      warm_s_reads.push_back(ReadScratch(run, rbuf, bytes));
      spread_s_reads.push_back(ReadScratch(run, spread, bytes, true));
    }
    RemoveScratch(run);
    double warm_pct = ResidentPercent(recs);
    if (round == 0) warm_resident_first = warm_pct;
    a = Stats(run);
    double rt = RestoreSequential(run, ids, pattern, true);
    b = Stats(run);
    for (Result* r : {&restore, &prefetch, &cold}) {
      for (double t : cold_s) r->limits[0].v.push_back(Rate(bytes, t));
      for (double t : warm_s_reads) r->limits[1].v.push_back(Rate(bytes, t));
      for (double t : spread_s_reads) r->limits[2].v.push_back(Rate(bytes, t));
    }
    restore.figure.v.push_back(Rate(bytes, rt));
    restore.also[0].v.push_back(ServerRestoreRate(a, b));

    // Prefetched: evicted again (nothing to write), then all asked for at once.
    prefetch_rewritten += EvictAgain(run, ids);
    if (round == 0) prefetch_resident_first = ResidentPercent(recs);
    a = Stats(run);
    double pt = RestorePrefetched(run, ids);
    b = Stats(run);
    prefetch.figure.v.push_back(Rate(bytes, pt));
    prefetch.also[0].v.push_back(ServerRestoreRate(a, b));

    // Cold: evicted again, the spill files dropped from the page cache.
    prefetch_rewritten += EvictAgain(run, ids);
    recs = SpillRecords(run, ids);
    std::vector<std::string> files;
    for (const SpillRecordAt& r : recs) {
      if (std::find(files.begin(), files.end(), r.path) == files.end()) files.push_back(r.path);
    }
    for (const std::string& f : files) DropFromCache(run, f);
    double cpct = ResidentPercent(recs);
    if (round == 0) cold_resident_first = cpct;
    a = Stats(run);
    double ct = RestoreSequential(run, ids, pattern, true);
    b = Stats(run);
    cold.figure.v.push_back(Rate(bytes, ct));
    cold.also[0].v.push_back(ServerRestoreRate(a, b));

    for (const store_object_id& id : ids) Delete(run, id);
  }
  run.scratch.clear();
  munmap(pattern, kSpillObject);
  munmap(rbuf, kSpillObject);
  munmap(spread, bytes);

  // Spill files of deleted objects go with the last of them.
  store_stats end = STORE_STATS_INIT;
  for (int k = 0; k < 100; k++) {
    end = Stats(run);
    if (end.spill_disk_bytes <= st.spill_disk_bytes) break;
    usleep(10000);
  }

  std::string where = " into " + FsType(dir) + " at " + dir;
  if (outside_dir) where += " (but the store spills elsewhere: " + spill_path_example + ")";
  if (other_fs) where += " (but the spill files are on another filesystem)";
  spill.note = std::to_string(n) + " objects, " + Mib(bytes) + " per round" + where + ", " +
               std::to_string(object_spill_bytes) + " bytes written into " +
               std::to_string(spill_files) + (spill_files == 1 ? " spill file" : " spill files") +
               " by one store_evict; spill_server = bytes / the sum of the server's "
               "spill job times (jobs may overlap); before the write and the reads an unsynced write "
               "of " + Mib(warm_bytes) + ", deleted, warmed the page cache (" + Secs(warm_s) +
               " in all)";
  if (early > 0) {
    spill.note += "; " + std::to_string(early) +
                  " objects were spilled by the server on its own during the fill (its high "
                  "mark) and are not in the figure";
  }
  if (end.spill_disk_bytes > st.spill_disk_bytes) {
    spill.note += "; " + std::to_string(end.spill_disk_bytes - st.spill_disk_bytes) +
                  " bytes of spill files still on disk after every object was deleted";
  }
  restore.note = "the spill files were " + Pct(warm_resident_first) +
                 " in the page cache before the restore (the server writes through it), the "
                 "limit's file " + Pct(scratch_cold_resident) + " before its cold read";
  restore.note += warm_resident_first >= 50
                      ? ": this restore mostly reads the page cache, compare with file_read_warm; "
                        "restore_cold is the disk-bound case"
                      : ": compare with file_read_cold";
  prefetch.note = "the spill files were " + Pct(prefetch_resident_first) +
                  " in the page cache before it";
  if (prefetch_rewritten > 0) {
    prefetch.note += "; evicting restored objects wrote " + std::to_string(prefetch_rewritten) +
                     " bytes again";
  }
  cold.note = "posix_fadvise DONTNEED on the spill files first: " + Pct(cold_resident_first) +
              " of their pages left in the page cache";
  Add(run, std::move(spill));
  Add(run, std::move(restore));
  Add(run, std::move(prefetch));
  Add(run, std::move(cold));
}

}  // namespace store::bench
