// bench.h - what the sections of store-bench share: the settings, the run's context, the
// samples and results, the failure path, and the limits each section measures its figure
// against.
//
// Owns: the types. The one Run lives in Main() (tools/store_bench.cpp) and is passed to every
// section: the limits (limits.cpp), the small operations (small_ops.cpp), the many clients
// (clients.cpp), the 64 MiB objects (large.cpp), spilling (spill.cpp), the table and fill
// figures (fill_table.cpp); output.cpp prints what they add.
// Called by: tools/store_bench.cpp and the files of tools/bench/.
// Threads: one. The forked processes (the echo process, the client processes of clients8) run
// on copies of the Run that fork gave them and never return into the parent's code.
//
// Every function that can fail takes the Run: a failure prints one line, deletes what the run
// left in the store (FailExit) and exits with status 1.
#pragma once

#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "storeclient.h"

namespace store::bench {

// ---- settings ------------------------------------------------------------------------------

constexpr uint64_t kSmallSize = 64;
constexpr size_t kBatch = 1000;
constexpr size_t kGetSetSize = 1000;  // objects small_get cycles over
constexpr uint64_t kLargeSize = 64ull << 20;
constexpr uint64_t kLargeNeed = 140ull << 20;  // capacity the 64 MiB figures need
constexpr uint64_t kSmallNeed = 16ull << 20;   // generous bound for the small figures
constexpr uint64_t kMaxSmallPerRound = 500000;  // bounds the objects one round may create
constexpr uint64_t kSpillObject = 8ull << 20;  // the spill figures' objects, and the file IO unit
constexpr double kGB = 1e9;

struct Settings {
  std::optional<std::string> socket;  // --socket; unset = the library's default
  bool json = false;
  bool quick = false;
  std::string only;
  int rounds = 5;           // measured rounds per figure
  double round_s = 0.3;     // small-object round: seconds of the figure (and of the limit)
  int large_per_round = 3;  // 64 MiB operations per large round
  std::string spill_dir;    // the directory the server spills into ("" = skip the spill figures)
  int spill_rounds = 3;     // fill + spill + restore cycles
  uint64_t spill_bytes = 1536ull << 20;  // bytes to spill per round, at most (capacity bounds it)

  // The socket as the library takes it: NULL for its default.
  const char* Socket() const { return socket ? socket->c_str() : nullptr; }
};

// ---- samples and results -------------------------------------------------------------------

struct Series {
  std::string name;
  std::string unit;
  std::vector<double> v;

  double Median() const {
    if (v.empty()) return 0;
    std::vector<double> s = v;
    std::sort(s.begin(), s.end());
    size_t m = s.size() / 2;
    return s.size() % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
  }
  double Min() const { return v.empty() ? 0 : *std::min_element(v.begin(), v.end()); }
  double Max() const { return v.empty() ? 0 : *std::max_element(v.begin(), v.end()); }
};

struct Result {
  std::string name;
  std::string description;
  Series figure;
  std::vector<Series> limits;
  bool skipped = false;
  std::string reason;
  std::string note;
  std::vector<Series> also;  // related figures shown without a ratio (e.g. the server's own)
};

// Operations counted and the seconds they took.
struct Tally {
  uint64_t ops = 0;
  double seconds = 0;
  double Rate() const { return seconds > 0 ? static_cast<double>(ops) / seconds : 0; }
};

// Memory that was written when the run started and not touched again until the first 64 MiB
// puts. On a virtual machine the host may unmap or reclaim guest memory that sits idle, and the
// next write to it is slower: 64 MiB of private memory written 60 s after it was last touched ran
// at 0.84-0.86 of a copy into hot memory on 2 MiB pages here, 0.21 on 4 KiB pages. The ranges of
// the region that no object has used sit just as idle since the store touched them at start, so
// the first puts are compared with a copy into this, on pages of the region's size.
struct IdleMemory {
  uint8_t* p = nullptr;
  int count = 0;  // buffers of kLargeSize
  double written_at = 0;
  std::string pages;  // "2 MiB" or "4 KiB"
  std::string missing;  // why there is none
};

// ---- the run -------------------------------------------------------------------------------

// One run of store-bench: its settings, its connection, the ids it makes and what it counted,
// the figures so far, and what the failure path must undo (the objects, the limits' file, the
// echo process). Main() owns the only one; it is never copied.
struct Run {
  Settings set;
  store_client* client = nullptr;
  uint8_t prefix[12] = {};
  uint64_t next_id = 0;     // counter part of the next id; never reused within a run
  uint64_t created = 0;     // objects this run sealed
  uint64_t deleted = 0;     // objects this run deleted
  int echo_fd = -1;
  pid_t echo_pid = -1;
  std::string scratch;      // the limit's file in the spill directory while it exists
  // The mappings MemcpyFresh and MemcpyMapped made, unmapped by FreeLimitMaps once the figures
  // that sample them are done: an munmap of that size flushes this process's TLB, and on a VM
  // with shadow paging that slows the memcpy of the next put into the region by a third to a
  // half (measured: 18 -> 12 GB/s after a 64 MiB munmap; steady puts 0.5 of memcpy instead of
  // 0.9). At most 26 buffers of 64 MiB (1.6 GiB) in a full run, 12 with --quick.
  std::vector<void*> limit_maps;
  IdleMemory idle;          // PrepareIdleMemory fills it before the first figure
  std::vector<Result> results;

  Run() = default;
  Run(const Run&) = delete;
  Run& operator=(const Run&) = delete;
};

// ---- the run's ids and the failure path (context.cpp) --------------------------------------

store_object_id MakeId(const Run& run, uint64_t n);
bool HasPrefix(const Run& run, const store_object_id& id);
std::string PrefixHex(const Run& run);

// Deletes every sealed object carrying this run's prefix. Returns how many are left after
// it (-1 if the store could not be listed). quiet: print nothing on errors.
long DeleteAllOfRun(Run& run, bool quiet);

// Exits with status 1 after removing what the run left in the store.
[[noreturn]] void FailExit(Run& run);
void Check(Run& run, int rc, const char* what);
[[noreturn]] void DieErrno(Run& run, const char* what);
[[noreturn]] void Die(Run& run, const char* what);

// SIGINT and SIGTERM stop the run at the next CheckStop, which fails it (and so cleans up).
void InstallStopHandler();
void CheckStop(Run& run);

double Now();

// Keeps the compiler from dropping stores into memory it cannot see used.
inline void Clobber(void* p) { asm volatile("" : : "r"(p) : "memory"); }

void Put(Run& run, const store_object_id& id, const void* data, uint64_t size, const char* what);
void Delete(Run& run, const store_object_id& id);
void DeleteRange(Run& run, uint64_t first, uint64_t end);
// A private, page-aligned buffer, every page written (so no fault is left in it).
uint8_t* TouchedBuffer(Run& run, size_t size, uint8_t fill);
void FillPattern(uint8_t* p, size_t size);
store_stats Stats(Run& run);
bool Wanted(const Run& run, const char* name);

// ---- limits of the machine (limits.cpp) ----------------------------------------------------

// The round trip limit: a forked echo process on a socketpair.
void StartEcho(Run& run);
void CloseEcho(Run& run);
// One 64 B round trip to the echo process (buf holds kSmallSize bytes).
void EchoOnce(Run& run, char* buf, bool poll);
// 64 B round trips to the echo process for about `seconds`; with poll, the reply is awaited by
// polling first (socket_rtt_poll), as the library awaits the store's replies.
void RttSlice(Run& run, double seconds, Tally* t, bool poll = false);
Series RttSeries();
Series RttPollSeries();

// memcpy of kLargeSize: between touched private buffers, into a fresh mapping, into shared
// memory through a second mapping, into idle memory. Seconds.
double MemcpyTouched(uint8_t* dst, const uint8_t* src);
double MemcpyFresh(Run& run, const uint8_t* src);
double MemcpyMapped(Run& run, const uint8_t* src);
void FreeLimitMaps(Run& run);
void PrepareIdleMemory(Run& run, int count);
double MemcpyIdle(Run& run, const uint8_t* src, int k);
void FreeIdleMemory(Run& run);

// What this process has of the store's region, and how the library maps it.
long RegionMappedKiB();
bool RegionOnHugePages();
const char* Population();

// File IO in the spill directory, on the limits' file (run.scratch).
void RemoveScratch(Run& run);
double WriteScratch(Run& run, const uint8_t* src, uint64_t bytes);
void WarmPageCache(Run& run, const uint8_t* src, uint64_t bytes);
// Reads the limits' file in kSpillObject reads into buf: each into buf itself, or with spread
// each to its own place (buf then holds expect bytes), as a restore fills as much memory.
double ReadScratch(Run& run, uint8_t* buf, uint64_t expect, bool spread = false);
void DropFromCache(Run& run, const std::string& path);
void CountResident(const std::string& path, uint64_t off, uint64_t len, uint64_t* resident,
                   uint64_t* total);
double ScratchResidentPercent(Run& run, uint64_t bytes);

// ---- the figures, one section each ---------------------------------------------------------

// small_ops.cpp
void SmallPut(Run& run);
void SmallWrite(Run& run);
void SmallGet(Run& run);
void IdlePut(Run& run);
void BatchGet(Run& run);
void BatchPut(Run& run);
// Puts kGetSetSize 64 B objects; returns the first counter.
uint64_t PutSmallSet(Run& run, std::vector<store_object_id>* ids);

// clients.cpp
void ManyClients(Run& run);

// large.cpp
void LargePut(Run& run, uint8_t* src, uint8_t* dst, const store_stats& st,
              uint64_t creates_before);
void LargePutWindow(Run& run, uint8_t* src, uint8_t* dst, const store_stats& st);
void LargeGet(Run& run, uint8_t* src, uint8_t* dst, const store_stats& st);

// spill.cpp
void SpillRestore(Run& run, const store_stats& st);
void SpillChurn(Run& run);

// fill_table.cpp
void FillFigure(Run& run, const char* name, uint64_t lo, uint64_t hi);
void TableFigures(Run& run);

// ---- output (output.cpp) -------------------------------------------------------------------

struct Machine {
  int nproc = 0;
  std::string kernel;
  std::string cpu;
  std::string thp;
};

// The first line of a file, or the value of its first line that starts with starts_with
// ("key: value"); "" if there is none.
std::string ReadFirstLine(const char* path, const char* starts_with);
Machine GetMachine();

// Prints a figure's lines (but with --json) and keeps it for the JSON document.
void Add(Run& run, Result r);
// The text mode's lines before the first figure.
void PrintHeader(const Run& run, const Machine& m, const store_stats& st,
                 uint64_t creates_before);
void PrintJson(const Run& run, const Machine& m, const store_stats& st, uint64_t creates_before,
               double elapsed, long left);

}  // namespace store::bench
