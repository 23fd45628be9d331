// store_bench.cpp - store-bench: measures a running store server against limits of the same
// machine, measured in the same run.
//
// Every figure is printed beside its limit and the ratio of the two. Each figure runs in
// rounds; within a round the limit and the figure alternate (in short slices for the small
// objects, one operation each for the 64 MiB ones), so both see the same machine load.
// The reported value is the median of the rounds, with their minimum and maximum.
//
// Figures and limits:
//   small_put        store_put of 64 B objects, ops/s         vs a 64 B Unix socket round trip
//   small_write      store_create + store_writer_write + store_writer_seal of 64 B objects (the
//                    writer is staged: one round trip)  vs the same round trip
//   small_get        store_open_reader + store_reader_close   vs the same round trip
//   batch_get        store_open_readers of 1000 ids + closes   vs the same round trip
//   batch_put        store_put_many of 1000 objects            vs the same round trip
//   clients8_put     store_put by 8 processes at once, summed  vs the same by 1 process
//   clients8_get     open_reader + close by 8 processes        vs the same by 1 process
//   large_put_first  the first 64 MiB create + memcpy + seal   vs memcpy (touched / fresh /
//                    through a new mapping / into memory idle since the run started)
//   large_put_new_client  the same right after connecting a new client  vs memcpy (touched)
//   large_put        64 MiB create + memcpy + seal, repeated   vs memcpy (touched)
//   large_put_window the same by a client with the write window (STORE_CLIENT_WRITE_WINDOW=1),
//                    alternated with the default client's puts (shown as 'also')
//                    vs memcpy (touched)
//   large_get        64 MiB open + memcpy out + close          vs memcpy between private buffers
//   spill            store_evict of 8 MiB objects, wall time   vs write + fdatasync of a file
//   restore          sequential open of spilled objects        vs read of a file (cold, warm)
//   restore_prefetch store_prefetch of all, then open each     vs the same reads
//   restore_cold     sequential open, spill files dropped from the page cache first
//   spill_churn      spill files' bytes on disk / the bytes of the live records in them, after
//                    each round of deleting a fifth of the spilled objects and spilling as many
//                    new ones (compaction gives dead bytes back)  vs 1.5, the goal
//   table_stats, table_page, table_put, table_get  one request with 1,000,000 objects in the
//                    table (100,000 with --quick), and with 10,000   vs the same round trip
//   table_memory     the server's heap growth per object while they were added (no limit:
//                    the goal is 200 bytes)
//   fill_1m_64m, fill_16m_256m, fill_64k_4m  the store's free memory filled with objects of
//                    log-uniform sizes in that range (pinned, so a spilling store cannot make
//                    room) until 20 creates in a row do not fit: data / the memory that was
//                    free, vs 1.0 (all of it holding data)
//
// The round trip limit is a forked echo process on a socketpair: send 64 B, get 64 B back.
// socket_rtt waits for the echo in a blocking recv; socket_rtt_poll polls for it first, for as
// long as the library polls for a reply (50 us by default), then blocks: the same wait.
// The spill figures run only when the store spills (stats spill_enabled) and --spill-dir names
// the directory it spills into: their limits are plain file IO in that directory.
// The bench starts no server. Every object it makes carries an id prefix unique to the run
// and is deleted before it exits, on failure too whenever the server is still reachable.
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <chrono>
#include <climits>
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli.h"
#include "hex.h"
#include "storeclient.h"

namespace {

// ---- settings ------------------------------------------------------------------------------

constexpr uint64_t kSmallSize = 64;
constexpr size_t kBatch = 1000;
constexpr size_t kGetSetSize = 1000;  // objects small_get cycles over
constexpr uint64_t kLargeSize = 64ull << 20;
constexpr uint64_t kLargeNeed = 140ull << 20;  // capacity the 64 MiB figures need
constexpr uint64_t kSmallNeed = 16ull << 20;   // generous bound for the small figures
constexpr uint64_t kMaxSmallPerRound = 500000;  // bounds the objects one round may create

struct Settings {
  const char* socket = nullptr;
  bool json = false;
  bool quick = false;
  std::string only;
  int rounds = 5;           // measured rounds per figure
  double round_s = 0.3;     // small-object round: seconds of the figure (and of the limit)
  int large_per_round = 3;  // 64 MiB operations per large round
  std::string spill_dir;    // the directory the server spills into ("" = skip the spill figures)
  int spill_rounds = 3;     // fill + spill + restore cycles
  uint64_t spill_bytes = 1536ull << 20;  // bytes to spill per round, at most (capacity bounds it)
};

Settings g_set;

const char* const kFigureNames[] = {"small_put", "small_write", "small_get", "idle_put",
                                    "batch_get", "batch_put",
                                    "clients8", "large_put", "large_put_window", "large_get",
                                    "spill", "table", "fill"};

// ---- state shared with the failure path ----------------------------------------------------

store_client* g_client = nullptr;
uint8_t g_prefix[12];
uint64_t g_next_id = 0;     // counter part of the next id; never reused within a run
uint64_t g_created = 0;     // objects this run sealed
uint64_t g_deleted = 0;     // objects this run deleted
int g_echo_fd = -1;
pid_t g_echo_pid = -1;
std::string g_scratch;      // the limit's file in the spill directory while it exists
volatile sig_atomic_t g_stop = 0;

void OnSignal(int) { g_stop = 1; }

store_object_id MakeId(uint64_t n) {
  store_object_id id;
  memcpy(id.bytes, g_prefix, sizeof g_prefix);
  memcpy(id.bytes + sizeof g_prefix, &n, sizeof n);
  return id;
}

bool HasPrefix(const store_object_id& id) {
  return memcmp(id.bytes, g_prefix, sizeof g_prefix) == 0;
}

std::string PrefixHex() { return store::hex::Encode(g_prefix, sizeof g_prefix); }

// Deletes every sealed object carrying this run's prefix. Returns how many are left after
// it (-1 if the store could not be listed). quiet: print nothing on errors.
long DeleteAllOfRun(bool quiet) {
  if (!g_client) return -1;
  store_object_info* infos = nullptr;
  size_t count = 0;
  int rc = store_list(g_client, &infos, sizeof *infos, &count);
  if (rc != STORE_OK) {
    if (!quiet) {
      fprintf(stderr, "store-bench: store_list failed: %s: %s\n", store_errstr(rc),
              store_last_error_message());
    }
    return -1;
  }
  long left = 0;
  for (size_t i = 0; i < count; i++) {
    if (!HasPrefix(infos[i].id)) continue;
    if (infos[i].state == STORE_STATE_CREATED) {
      left++;  // aborted by the server when this client disconnects
      continue;
    }
    rc = store_delete(g_client, &infos[i].id);
    if (rc == STORE_OK) {
      g_deleted++;
    } else if (rc != STORE_ENOTFOUND) {
      left++;
      if (!quiet) {
        fprintf(stderr, "store-bench: store_delete failed: %s: %s\n", store_errstr(rc),
                store_last_error_message());
      }
    }
  }
  store_free(infos);
  return left;
}

void CloseEcho() {
  if (g_echo_fd >= 0) {
    close(g_echo_fd);
    g_echo_fd = -1;
  }
  if (g_echo_pid > 0) {
    int st;
    while (waitpid(g_echo_pid, &st, 0) < 0 && errno == EINTR) {
    }
    g_echo_pid = -1;
  }
}

// Exits with status 1 after removing what the run left in the store.
[[noreturn]] void FailExit() {
  if (g_client) {
    long left = DeleteAllOfRun(true);
    if (left > 0) {
      fprintf(stderr, "store-bench: %ld objects with id prefix %s could not be deleted\n", left,
              PrefixHex().c_str());
    } else if (left < 0) {
      fprintf(stderr,
              "store-bench: could not clean up: objects with id prefix %s may be left\n",
              PrefixHex().c_str());
    }
    store_client_free(g_client);
    g_client = nullptr;
  }
  if (!g_scratch.empty()) {
    unlink(g_scratch.c_str());
    unlink((g_scratch + ".warm").c_str());
  }
  CloseEcho();
  exit(1);
}

void Check(int rc, const char* what) {
  if (rc == STORE_OK) return;
  // Print before cleaning up: the cleanup's calls replace the last error message.
  fprintf(stderr, "store-bench: %s failed: %s: %s\n", what, store_errstr(rc),
          store_last_error_message());
  FailExit();
}

[[noreturn]] void DieErrno(const char* what) {
  fprintf(stderr, "store-bench: %s: %s\n", what, strerror(errno));
  FailExit();
}

[[noreturn]] void Die(const char* what) {
  fprintf(stderr, "store-bench: %s\n", what);
  FailExit();
}

void CheckStop() {
  if (g_stop) Die("interrupted");
}

// ---- helpers -------------------------------------------------------------------------------

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Keeps the compiler from dropping stores into memory it cannot see used.
inline void Clobber(void* p) { asm volatile("" : : "r"(p) : "memory"); }

void Put(const store_object_id& id, const void* data, uint64_t size, const char* what) {
  Check(store_put(g_client, &id, data, size, nullptr), what);
  g_created++;
}

void Delete(const store_object_id& id) {
  Check(store_delete(g_client, &id), "store_delete");
  g_deleted++;
}

void DeleteRange(uint64_t first, uint64_t end) {
  for (uint64_t n = first; n < end; n++) {
    store_object_id id = MakeId(n);
    Delete(id);
  }
}

// A private, page-aligned buffer, every page written (so no fault is left in it).
uint8_t* TouchedBuffer(size_t size, uint8_t fill) {
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) DieErrno("mmap of a private buffer");
  memset(p, fill, size);
  return static_cast<uint8_t*>(p);
}

void FillPattern(uint8_t* p, size_t size) {
  uint64_t x = 0x9e3779b97f4a7c15ull;
  for (size_t i = 0; i + 8 <= size; i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    memcpy(p + i, &x, 8);
  }
}

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

std::vector<Result> g_results;

std::string FormatValue(double v, const std::string& unit) {
  char buf[64];
  if (unit == "GB/s" || unit == "ms") {
    snprintf(buf, sizeof buf, "%.2f", v);
  } else if (unit == "of free" || unit == "disk/live") {
    snprintf(buf, sizeof buf, "%.4f", v);
  } else {
    snprintf(buf, sizeof buf, "%.0f", v);
  }
  return buf;
}

std::string Spread(const Series& s) {
  if (s.v.size() <= 1) return "(1 sample)";
  return "(min " + FormatValue(s.Min(), s.unit) + " max " + FormatValue(s.Max(), s.unit) + ")";
}

double Ratio(const Series& fig, const Series& lim) {
  double l = lim.Median();
  return l > 0 ? fig.Median() / l : 0;
}

void PrintLine(const Result& r) {
  if (g_set.json) return;
  if (r.skipped) {
    printf("%-16s skipped: %s\n", r.name.c_str(), r.reason.c_str());
    fflush(stdout);
    return;
  }
  const Series& f = r.figure;
  printf("%-16s %10s %-9s %-32s", r.name.c_str(), FormatValue(f.Median(), f.unit).c_str(),
         f.unit.c_str(), Spread(f).c_str());
  for (const Series& l : r.limits) {
    printf("   limit %-14s %10s %-6s %-32s ratio %.2f", l.name.c_str(),
           FormatValue(l.Median(), l.unit).c_str(), l.unit.c_str(), Spread(l).c_str(),
           Ratio(f, l));
  }
  printf("\n");
  for (const Series& a : r.also) {
    printf("%-16s   also: %s %s %s %s\n", "", a.name.c_str(),
           FormatValue(a.Median(), a.unit).c_str(), a.unit.c_str(), Spread(a).c_str());
  }
  if (!r.note.empty()) printf("%-16s   note: %s\n", "", r.note.c_str());
  fflush(stdout);
}

void Add(Result r) {
  PrintLine(r);
  g_results.push_back(std::move(r));
}

bool Wanted(const char* name) { return g_set.only.empty() || g_set.only == name; }

// ---- a big table ----------------------------------------------------------------------------

// Private anonymous memory of a process (its heap), from /proc/PID/smaps_rollup; 0 if unknown.
uint64_t AnonymousBytes(int pid) {
  std::string path = "/proc/" + std::to_string(pid) + "/smaps_rollup";
  FILE* f = fopen(path.c_str(), "r");
  if (!f) return 0;
  char line[256];
  uint64_t kb = 0;
  while (fgets(line, sizeof line, f)) {
    unsigned long long v;
    if (sscanf(line, "Anonymous: %llu kB", &v) == 1) kb = v;
  }
  fclose(f);
  return kb * 1024;
}

// ---- the round trip limit ------------------------------------------------------------------

bool SendAll(int fd, const void* p, size_t n) {
  const char* c = static_cast<const char*>(p);
  while (n > 0) {
    ssize_t k = send(fd, c, n, MSG_NOSIGNAL);
    if (k < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    c += k;
    n -= static_cast<size_t>(k);
  }
  return true;
}

// Returns 1 when n bytes were read, 0 at a clean end of stream, -1 on an error.
int RecvAll(int fd, void* p, size_t n) {
  char* c = static_cast<char*>(p);
  size_t got = 0;
  while (got < n) {
    ssize_t k = recv(fd, c + got, n - got, 0);
    if (k < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (k == 0) return got == 0 ? 0 : -1;
    got += static_cast<size_t>(k);
  }
  return 1;
}

// Forks the echo process. Called before anything else, so the child holds no store connection.
void StartEcho() {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) DieErrno("socketpair");
  pid_t pid = fork();
  if (pid < 0) DieErrno("fork");
  if (pid == 0) {
    // The child lives until the parent closes its end (or exits).
    signal(SIGINT, SIG_IGN);
    signal(SIGTERM, SIG_IGN);
    close(sv[0]);
    char buf[kSmallSize];
    for (;;) {
      int r = RecvAll(sv[1], buf, sizeof buf);
      if (r <= 0) _exit(r == 0 ? 0 : 1);
      if (!SendAll(sv[1], buf, sizeof buf)) _exit(1);
    }
  }
  close(sv[1]);
  g_echo_fd = sv[0];
  g_echo_pid = pid;
}

// Operations counted and the seconds they took.
struct Tally {
  uint64_t ops = 0;
  double seconds = 0;
  double Rate() const { return seconds > 0 ? static_cast<double>(ops) / seconds : 0; }
};

// The longest a waiting client polls its socket before it sleeps: the library's default, or
// STORE_CLIENT_SPIN_US as the library reads it.
double PollSeconds() {
  static const double s = [] {
    const char* env = getenv("STORE_CLIENT_SPIN_US");
    char* end = nullptr;
    long long us = env ? strtoll(env, &end, 10) : -1;
    if (!env || end == env || *end != '\0' || us < 0) us = 50;
    return static_cast<double>(std::min(us, 1000000LL)) * 1e-6;
  }();
  return s;
}

// Receives the echo; with poll, first polls for up to PollSeconds() as the library does.
bool RecvEcho(char* buf, size_t n, bool poll) {
  size_t got = 0;
  if (poll && PollSeconds() > 0) {
    double until = Now() + PollSeconds();
    while (got < n) {
      ssize_t k = recv(g_echo_fd, buf + got, n - got, MSG_DONTWAIT);
      if (k > 0) {
        got += static_cast<size_t>(k);
        continue;
      }
      if (k == 0 || (errno != EAGAIN && errno != EINTR)) return false;
      if (Now() >= until) break;
    }
  }
  return got == n || RecvAll(g_echo_fd, buf + got, n - got) == 1;
}

// One 64 B round trip to the echo process (buf holds kSmallSize bytes).
void EchoOnce(char* buf, bool poll) {
  if (!SendAll(g_echo_fd, buf, kSmallSize)) DieErrno("send to the echo process");
  if (!RecvEcho(buf, kSmallSize, poll)) DieErrno("recv from the echo process");
}

// 64 B round trips to the echo process for about `seconds`; with poll, the reply is awaited by
// polling first (socket_rtt_poll), as the library awaits the store's replies.
void RttSlice(double seconds, Tally* t, bool poll = false) {
  char buf[kSmallSize];
  memset(buf, 0x5a, sizeof buf);
  double t0 = Now(), t1;
  do {
    for (int k = 0; k < 16; k++) EchoOnce(buf, poll);
    t->ops += 16;
    CheckStop();
    t1 = Now();
  } while (t1 - t0 < seconds);
  t->seconds += t1 - t0;
}

Series RttSeries() { return Series{"socket_rtt", "ops/s", {}}; }
Series RttPollSeries() { return Series{"socket_rtt_poll", "ops/s", {}}; }

// Runs a small-object figure: one warm-up round, then the measured rounds. A round alternates
// the round trip limit and the figure in short slices, so both see the same machine load.
// slice(seconds, tally) runs the figure for about that long; after_round() runs untimed.
template <class Slice, class After>
void RunSmallRounds(Result* r, Slice&& slice, After&& after_round) {
  constexpr int kSlices = 5;
  for (int round = -1; round < g_set.rounds; round++) {  // round -1 warms up, not counted
    double dur = (round < 0 ? g_set.round_s / 4 : g_set.round_s) / kSlices;
    Tally rtt, rtt_poll, fig;
    for (int s = 0; s < kSlices; s++) {
      RttSlice(dur, &rtt);
      RttSlice(dur, &rtt_poll, true);
      slice(dur, &fig);
    }
    after_round(round >= 0);
    if (round >= 0) {
      r->limits[0].v.push_back(rtt.Rate());
      r->limits[1].v.push_back(rtt_poll.Rate());
      r->figure.v.push_back(fig.Rate());
    }
  }
}

void SmallPut() {
  Result r{"small_put", "store_put of 64 B objects, one client, synchronous",
           {}, {}, false, "", "", {}};
  r.figure = Series{"small_put", "ops/s", {}};
  r.limits.push_back(RttSeries());
  r.limits.push_back(RttPollSeries());
  uint8_t data[kSmallSize];
  memset(data, 0xa5, sizeof data);
  uint64_t first = g_next_id;
  RunSmallRounds(
      &r,
      [&](double seconds, Tally* t) {
        uint64_t start = g_next_id;
        double t0 = Now(), t1;
        do {
          store_object_id id = MakeId(g_next_id++);
          Put(id, data, sizeof data, "store_put of a 64 B object");
          CheckStop();
          t1 = Now();
        } while (t1 - t0 < seconds && g_next_id - first < kMaxSmallPerRound);
        t->ops += g_next_id - start;
        t->seconds += t1 - t0;
      },
      [&](bool) {
        DeleteRange(first, g_next_id);
        first = g_next_id;
      });
  Add(std::move(r));
}

// A small object written through a writer: create, write, seal. The writer is staged in this
// process and the seal creates, writes and seals in one request.
void SmallWrite() {
  Result r{"small_write", "store_create + write + seal of 64 B objects, one client, synchronous",
           {}, {}, false, "", "", {}};
  r.figure = Series{"small_write", "ops/s", {}};
  r.limits.push_back(RttSeries());
  r.limits.push_back(RttPollSeries());
  uint8_t data[kSmallSize];
  memset(data, 0x3c, sizeof data);
  uint64_t first = g_next_id;
  RunSmallRounds(
      &r,
      [&](double seconds, Tally* t) {
        uint64_t start = g_next_id;
        double t0 = Now(), t1;
        do {
          store_object_id id = MakeId(g_next_id++);
          store_writer* w = nullptr;
          int rc = store_create(g_client, &w, &id, sizeof data, nullptr);
          if (rc == STORE_OK) rc = store_writer_write(w, data, sizeof data);
          if (rc == STORE_OK) {
            rc = store_writer_seal(w);
          } else if (w) {
            store_writer_abort(w);
          }
          Check(rc, "store_create + write + seal of a 64 B object");
          g_created++;
          CheckStop();
          t1 = Now();
        } while (t1 - t0 < seconds && g_next_id - first < kMaxSmallPerRound);
        t->ops += g_next_id - start;
        t->seconds += t1 - t0;
      },
      [&](bool) {
        DeleteRange(first, g_next_id);
        first = g_next_id;
      });
  Add(std::move(r));
}

long RegionMappedKiB();

// Whether the library maps the region in the background after connecting, as it reads it.
const char* Population() {
  const char* pop = getenv("STORE_CLIENT_POPULATE");
  if (pop && strcmp(pop, "0") == 0) return "off (STORE_CLIENT_POPULATE=0)";
  if (pop && strcmp(pop, "all") == 0) return "all of it at connect (STORE_CLIENT_POPULATE=all)";
  return "objects as they are used";
}

// One 64 B store_put (and one echo, the limit) after the client slept: what a client that calls
// now and then waits for. Each round alternates a few sleeps + echoes with as many sleeps +
// puts and keeps the median of each; the sleeps are not timed. On a VM a processor that went
// idle is slow to wake, and a process whose page tables the hypervisor must bring back pays for
// how much memory it has touched (see README, "First use").
void IdlePut() {
  constexpr double kSleep = 0.5;
  const int pairs = g_set.quick ? 1 : 3;
  Result r{"idle_put",
           "store_put of a 64 B object after the client slept 0.5 s (the sleep not timed)",
           {}, {}, false, "", "", {}};
  r.figure = Series{"idle_put", "ms", {}};
  r.limits.push_back(Series{"socket_rtt_idle", "ms", {}});
  uint8_t data[kSmallSize];
  memset(data, 0x6b, sizeof data);
  char buf[kSmallSize];
  memset(buf, 0x5a, sizeof buf);
  auto nap = [] { usleep(static_cast<useconds_t>(kSleep * 1e6)); };
  uint64_t first = g_next_id;
  for (int round = 0; round < g_set.rounds; round++) {
    Series rtt{"", "ms", {}}, put{"", "ms", {}};
    for (int k = 0; k < pairs; k++) {
      nap();
      double t0 = Now();
      EchoOnce(buf, true);
      rtt.v.push_back((Now() - t0) * 1e3);
      nap();
      store_object_id id = MakeId(g_next_id++);
      t0 = Now();
      Put(id, data, sizeof data, "store_put of a 64 B object");
      put.v.push_back((Now() - t0) * 1e3);
      CheckStop();
    }
    r.limits[0].v.push_back(rtt.Median());
    r.figure.v.push_back(put.Median());
  }
  DeleteRange(first, g_next_id);
  long mapped_kib = RegionMappedKiB();
  r.note = "median of " + std::to_string(pairs) + " per round; " +
           (mapped_kib < 0 ? std::string("the region's mapping not found")
                           : std::to_string(mapped_kib >> 10) +
                                 " MiB of the region mapped in this process") +
           "; population of the region " + Population();
  Add(std::move(r));
}

// Puts kGetSetSize 64 B objects; returns the first counter.
uint64_t PutSmallSet(std::vector<store_object_id>* ids) {
  uint8_t data[kSmallSize];
  memset(data, 0x3c, sizeof data);
  uint64_t first = g_next_id;
  ids->clear();
  for (size_t i = 0; i < kGetSetSize; i++) {
    store_object_id id = MakeId(g_next_id++);
    Put(id, data, sizeof data, "store_put of a 64 B object");
    ids->push_back(id);
  }
  return first;
}

void SmallGet() {
  Result r{"small_get", "store_open_reader (timeout 0) + store_reader_close of 64 B objects",
           {}, {}, false, "", "", {}};
  r.figure = Series{"small_get", "ops/s", {}};
  r.limits.push_back(RttSeries());
  r.limits.push_back(RttPollSeries());
  std::vector<store_object_id> ids;
  uint64_t first = PutSmallSet(&ids);
  size_t i = 0;
  RunSmallRounds(
      &r,
      [&](double seconds, Tally* t) {
        double t0 = Now(), t1;
        do {
          store_reader* rd = nullptr;
          Check(store_open_reader(g_client, &rd, &ids[i], 0), "store_open_reader");
          if (store_reader_size(rd) != kSmallSize) {
            store_reader_close(rd);
            Die("store_open_reader returned an object of the wrong size");
          }
          store_reader_close(rd);
          if (++i == ids.size()) i = 0;
          t->ops++;
          CheckStop();
          t1 = Now();
        } while (t1 - t0 < seconds);
        t->seconds += t1 - t0;
      },
      [](bool) {});
  DeleteRange(first, first + ids.size());
  Add(std::move(r));
}

void BatchGet() {
  Result r{"batch_get", "store_open_readers of 1000 ids, then store_readers_close; objects/s",
           {}, {}, false, "", "", {}};
  r.figure = Series{"batch_get", "obj/s", {}};
  r.limits.push_back(RttSeries());
  r.limits.push_back(RttPollSeries());
  std::vector<store_object_id> ids;
  static_assert(kGetSetSize == kBatch, "batch_get reuses the small_get set");
  uint64_t first = PutSmallSet(&ids);
  std::vector<store_reader*> out(kBatch, nullptr);
  Tally opens, closes;  // over every round, the warm-up included
  RunSmallRounds(
      &r,
      [&](double seconds, Tally* t) {
        double s0 = Now(), t1;
        do {
          double b0 = Now();
          Check(store_open_readers(g_client, out.data(), ids.data(), kBatch, 0),
                "store_open_readers of 1000 ids");
          double o1 = Now();
          bool missing = false;
          for (size_t k = 0; k < kBatch; k++) {
            if (!out[k] || store_reader_size(out[k]) != kSmallSize) missing = true;
          }
          store_readers_close(out.data(), kBatch);
          t1 = Now();
          if (missing) Die("store_open_readers missed a sealed object or gave a wrong size");
          opens.ops++;
          opens.seconds += o1 - b0;
          closes.seconds += t1 - o1;
          t->ops += kBatch;
          CheckStop();
        } while (t1 - s0 < seconds);
        t->seconds += t1 - s0;
      },
      [](bool) {});
  DeleteRange(first, first + ids.size());
  char note[200];
  double nb = static_cast<double>(opens.ops);
  double batch_s = (opens.seconds + closes.seconds) / nb;
  snprintf(note, sizeof note,
           "one batch of 1000 takes %.0f us on average (%.1f round trips): "
           "open_readers %.0f us, store_readers_close %.0f us",
           1e6 * batch_s, batch_s * r.limits[0].Median(), 1e6 * opens.seconds / nb,
           1e6 * closes.seconds / nb);
  r.note = note;
  Add(std::move(r));
}

void BatchPut() {
  Result r{"batch_put", "store_put_many of 1000 64 B objects; objects/s",
           {}, {}, false, "", "", {}};
  r.figure = Series{"batch_put", "obj/s", {}};
  r.limits.push_back(RttSeries());
  r.limits.push_back(RttPollSeries());
  uint8_t data[kSmallSize];
  memset(data, 0x69, sizeof data);
  std::vector<store_object_id> ids(kBatch);
  std::vector<const void*> datas(kBatch, data);
  std::vector<uint64_t> sizes(kBatch, kSmallSize);
  uint64_t first = g_next_id;
  RunSmallRounds(
      &r,
      [&](double seconds, Tally* t) {
        double timed = 0;
        do {  // at least one batch per slice
          for (size_t k = 0; k < kBatch; k++) ids[k] = MakeId(g_next_id + k);
          size_t done = 0;
          double t0 = Now();
          int rc = store_put_many(g_client, ids.data(), datas.data(), sizes.data(), kBatch,
                                  nullptr, &done);
          timed += Now() - t0;
          g_next_id += kBatch;
          g_created += done;
          Check(rc, "store_put_many of 1000 64 B objects");
          t->ops += kBatch;
          CheckStop();
        } while (timed < seconds && g_next_id - first < kMaxSmallPerRound);
        t->seconds += timed;
      },
      [&](bool) {
        DeleteRange(first, g_next_id);
        first = g_next_id;
      });
  Add(std::move(r));
}

// ---- many clients --------------------------------------------------------------------------
//
// Aggregate small operations of kClients processes at once, against one process doing the
// same: each process has its own connection. A run forks the processes; each connects, says it
// is ready, waits for the start (the parent closes a pipe), runs store_put of new 64 B objects
// (or store_open_reader + close of a shared set) for the run's seconds, reports its count and
// time, then deletes its objects (untimed). The aggregate is the sum of the per-process rates.

constexpr int kClients = 8;

struct ChildReport {
  uint64_t ops;
  double seconds;
  int32_t failed;  // a store call failed in the child
};

// Reads n bytes from a pipe; false at its end or on an error.
bool ReadAll(int fd, void* p, size_t n) {
  char* c = static_cast<char*>(p);
  while (n > 0) {
    ssize_t k = read(fd, c, n);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return false;
    c += k;
    n -= static_cast<size_t>(k);
  }
  return true;
}

// Runs `procs` processes for `seconds`; put (new objects) or get (of ids). Returns ops/s, the
// sum over the processes.
double MultiRun(int procs, bool put, double seconds, const std::vector<store_object_id>& ids) {
  int ready[2], start[2];
  if (pipe2(ready, O_CLOEXEC) != 0 || pipe2(start, O_CLOEXEC) != 0) DieErrno("pipe");
  std::vector<pid_t> pids;
  for (int p = 0; p < procs; p++) {
    uint64_t base = g_next_id;
    g_next_id += kMaxSmallPerRound;  // each child's ids are its own
    pid_t pid = fork();
    if (pid < 0) DieErrno("fork");
    if (pid == 0) {
      signal(SIGINT, SIG_IGN);
      signal(SIGTERM, SIG_IGN);
      close(ready[0]);
      close(start[1]);
      close(g_echo_fd);  // the echo process ends when the parent closes its end
      ChildReport rep{0, 0, 0};
      store_connect_options co = STORE_CONNECT_OPTIONS_INIT;
      co.client_name = "store-bench-child";
      store_client* c = nullptr;
      if (store_client_connect(&c, g_set.socket, &co) != STORE_OK) rep.failed = 1;
      char b = 0;
      if (write(ready[1], &b, 1) != 1) _exit(1);
      if (read(start[0], &b, 1) != 0) rep.failed = 1;  // the parent closes it to start
      uint8_t data[kSmallSize];
      memset(data, 0x5c, sizeof data);
      uint64_t n = 0;
      size_t i = static_cast<size_t>(p) * 131 % (ids.empty() ? 1 : ids.size());
      double t0 = Now(), t1 = t0;
      while (!rep.failed) {
        for (int k = 0; k < 16 && !rep.failed; k++) {
          if (put) {
            store_object_id id = MakeId(base + n);
            if (store_put(c, &id, data, sizeof data, nullptr) != STORE_OK) rep.failed = 1;
          } else {
            store_reader* rd = nullptr;
            if (store_open_reader(c, &rd, &ids[i], 0) != STORE_OK) rep.failed = 1;
            store_reader_close(rd);
            if (++i == ids.size()) i = 0;
          }
          n++;
        }
        t1 = Now();
        if (t1 - t0 >= seconds || (put && n + 16 > kMaxSmallPerRound)) break;
      }
      rep.ops = n;
      rep.seconds = t1 - t0;
      if (put) {
        for (uint64_t k = 0; k < n; k++) {
          store_object_id id = MakeId(base + k);
          store_delete(c, &id);
        }
      }
      store_client_free(c);
      if (write(ready[1], &rep, sizeof rep) != sizeof rep) _exit(1);
      _exit(0);
    }
    pids.push_back(pid);
  }
  close(ready[1]);
  close(start[0]);
  bool failed = false;
  for (int p = 0; p < procs && !failed; p++) {
    char b;
    failed = !ReadAll(ready[0], &b, 1);
  }
  close(start[1]);  // go (a child waiting for it when another failed sees the end and fails)
  double rate = 0;
  for (int p = 0; p < procs && !failed; p++) {
    ChildReport rep;
    if (!ReadAll(ready[0], &rep, sizeof rep)) {
      failed = true;
      break;
    }
    if (rep.failed) failed = true;
    if (rep.seconds > 0) rate += static_cast<double>(rep.ops) / rep.seconds;
  }
  close(ready[0]);
  for (pid_t pid : pids) {
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
  }
  if (failed) Die("a store call failed in a client process");
  CheckStop();
  return rate;
}

void ManyClients() {
  const double seconds = g_set.round_s;
  std::vector<store_object_id> ids;
  uint64_t first = PutSmallSet(&ids);
  for (bool put : {true, false}) {
    std::string name = put ? "clients8_put" : "clients8_get";
    Result r{name,
             std::string("aggregate ") + (put ? "store_put of 64 B objects" :
                                                "store_open_reader + close of 64 B objects") +
                 " by " + std::to_string(kClients) + " processes, each its own connection",
             {}, {}, false, "", "", {}};
    r.figure = Series{name, "ops/s", {}};
    r.limits.push_back(Series{put ? "clients1_put" : "clients1_get", "ops/s", {}});
    MultiRun(1, put, seconds / 4, ids);  // warm-up
    for (int round = 0; round < g_set.rounds; round++) {
      r.limits[0].v.push_back(MultiRun(1, put, seconds, ids));
      r.figure.v.push_back(MultiRun(kClients, put, seconds, ids));
    }
    r.note = "limit: the same operations by one process, measured the same way; " +
             std::to_string(std::max(1L, sysconf(_SC_NPROCESSORS_ONLN))) + " CPUs online";
    Add(std::move(r));
  }
  DeleteRange(first, first + ids.size());
}

// ---- 64 MiB objects ------------------------------------------------------------------------

constexpr double kGB = 1e9;

// memcpy of kLargeSize between two touched private buffers; seconds.
double MemcpyTouched(uint8_t* dst, const uint8_t* src) {
  double t0 = Now();
  memcpy(dst, src, kLargeSize);
  Clobber(dst);
  return Now() - t0;
}

// The mappings MemcpyFresh and MemcpyMapped made, unmapped by FreeLimitMaps once the figures
// that sample them are done: an munmap of that size flushes this process's TLB, and on a VM with
// shadow paging that slows the memcpy of the next put into the region by a third to a half
// (measured: 18 -> 12 GB/s after a 64 MiB munmap; steady puts 0.5 of memcpy instead of 0.9).
// At most 26 buffers of 64 MiB (1.6 GiB) in a full run, 12 with --quick.
std::vector<void*> g_limit_maps;

// memcpy of kLargeSize into a fresh anonymous mapping no one has touched; seconds.
double MemcpyFresh(const uint8_t* src) {
  void* p = mmap(nullptr, kLargeSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) DieErrno("mmap of a fresh buffer");
  g_limit_maps.push_back(p);
  double t0 = Now();
  memcpy(p, src, kLargeSize);
  Clobber(p);
  return Now() - t0;
}

void FreeLimitMaps() {
  for (void* p : g_limit_maps) {
    if (munmap(p, kLargeSize) != 0) DieErrno("munmap");
  }
  g_limit_maps.clear();
}

// memcpy of kLargeSize into shared memory whose pages exist and were written through another
// mapping, through a second mapping made and fully mapped (MAP_POPULATE) just before: what the
// first write to a range of the region costs a process that has mapped it but not yet touched
// those pages. Equals memcpy_touched on most machines; below it where a hypervisor builds its
// page tables lazily (shadow paging), where each process's first access to each page faults
// into the hypervisor however the mapping was made. Seconds.
double MemcpyMapped(const uint8_t* src) {
  int fd = memfd_create("store-bench", MFD_CLOEXEC);
  if (fd < 0) DieErrno("memfd_create");
  if (ftruncate(fd, static_cast<off_t>(kLargeSize)) != 0) DieErrno("ftruncate of a memfd");
  void* a = mmap(nullptr, kLargeSize, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
  if (a == MAP_FAILED) DieErrno("mmap of a memfd");
  memset(a, 1, kLargeSize);
  Clobber(a);
  void* b = mmap(nullptr, kLargeSize, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
  if (b == MAP_FAILED) DieErrno("mmap of a memfd");
  close(fd);
  g_limit_maps.push_back(a);
  g_limit_maps.push_back(b);
  double t0 = Now();
  memcpy(b, src, kLargeSize);
  Clobber(b);
  return Now() - t0;
}

// One field (in kB) of a mapping in /proc/self/smaps: the mapping that starts at `base`, or, with
// base NULL, the store's region ("memfd:store"). -1 if the mapping or the field is not found.
long SmapsField(const void* base, const char* field) {
  FILE* f = fopen("/proc/self/smaps", "r");
  if (!f) return -1;
  char want[32];
  snprintf(want, sizeof want, "%lx-", reinterpret_cast<unsigned long>(base));
  const size_t field_len = strlen(field);
  char line[512];
  bool in = false;
  long kib = -1;
  while (fgets(line, sizeof line, f)) {
    unsigned long lo = 0, hi = 0;
    if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2) {  // a mapping's header (fields are "Name:")
      if (in) break;  // the next mapping's header
      in = base ? strncmp(line, want, strlen(want)) == 0 : strstr(line, " /memfd:store") != nullptr;
      continue;
    }
    if (in && strncmp(line, field, field_len) == 0 && line[field_len] == ':') {
      kib = atol(line + field_len + 1);
      break;
    }
  }
  fclose(f);
  return kib;
}

// KiB of the store's region mapped into this process (the Rss, or the hugetlb pages, of the
// "memfd:store" mapping in /proc/self/smaps), or -1 if it is not found.
long RegionMappedKiB() {
  const long rss = SmapsField(nullptr, "Rss");
  if (rss < 0) return -1;
  // A hugetlb mapping counts its pages apart from Rss.
  return rss + std::max(0L, SmapsField(nullptr, "Shared_Hugetlb")) +
         std::max(0L, SmapsField(nullptr, "Private_Hugetlb"));
}

// Whether this process maps the store's region with huge pages: hugetlbfs (a 2 MiB kernel page
// size) or transparent huge pages for shared memory (ShmemPmdMapped).
bool RegionOnHugePages() {
  return SmapsField(nullptr, "KernelPageSize") > 4 || SmapsField(nullptr, "ShmemPmdMapped") > 0;
}

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
IdleMemory g_idle;

void PrepareIdleMemory(int count) {
  const size_t len = static_cast<size_t>(count) * kLargeSize;
  const bool huge = RegionOnHugePages();
  auto keep = [&](void* p) {
    Clobber(p);
    g_idle.p = static_cast<uint8_t*>(p);
    g_idle.count = count;
    g_idle.written_at = Now();
    g_idle.pages = huge ? "2 MiB" : "4 KiB";
  };
  void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) DieErrno("mmap of the idle buffers");
  if (huge) {
    // Transparent huge pages if the system gives them to a process that asks, else reserved
    // ones (hugetlbfs) if enough are left beside the store's.
    if (madvise(p, len, MADV_HUGEPAGE) == 0) {
      memset(p, 1, len);
      if (SmapsField(p, "AnonHugePages") >= static_cast<long>(len >> 10) / 2) return keep(p);
    }
    munmap(p, len);
    p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
    if (p == MAP_FAILED) {
      g_idle.missing = "the region is on huge pages and this process could get none for it";
      return;
    }
  }
  memset(p, 1, len);
  keep(p);
}

// memcpy of kLargeSize into idle buffer k, which nothing touched since the run started; seconds.
double MemcpyIdle(const uint8_t* src, int k) {
  uint8_t* p = g_idle.p + static_cast<size_t>(k) * kLargeSize;
  double t0 = Now();
  memcpy(p, src, kLargeSize);
  Clobber(p);
  return Now() - t0;
}

void FreeIdleMemory() {
  if (g_idle.p) munmap(g_idle.p, static_cast<size_t>(g_idle.count) * kLargeSize);
  g_idle.p = nullptr;
}

long MinorFaults() {
  struct rusage ru;
  if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
  return ru.ru_minflt;
}

// create + memcpy + seal of one 64 MiB object, timed; the delete after it is not. Seconds.
// *faults (may be NULL) receives the minor page faults this process took meanwhile.
// keep: not NULL = the object is not deleted, its id goes there.
double LargePutOnce(const uint8_t* src, long* faults = nullptr, store_client* client = nullptr,
                    store_object_id* keep = nullptr) {
  if (!client) client = g_client;
  store_object_id id = MakeId(g_next_id++);
  long f0 = MinorFaults();
  double t0 = Now();
  store_writer* w = nullptr;
  Check(store_create(client, &w, &id, kLargeSize, nullptr), "store_create of 64 MiB");
  void* p = store_writer_data(w);
  if (!p) {
    store_writer_abort(w);
    Die("store_writer_data returned NULL");
  }
  memcpy(p, src, kLargeSize);
  Clobber(p);
  Check(store_writer_seal(w), "store_writer_seal of 64 MiB");
  double t = Now() - t0;
  if (faults) *faults = MinorFaults() - f0;
  g_created++;
  if (keep) {
    *keep = id;
  } else {
    Delete(id);
  }
  return t;
}

bool LargeFits(Result* r, const store_stats& st) {
  uint64_t free_bytes = st.capacity_bytes > st.used_bytes ? st.capacity_bytes - st.used_bytes : 0;
  if (st.capacity_bytes < kLargeNeed || free_bytes < kLargeNeed) {
    char why[200];
    snprintf(why, sizeof why,
             "needs %llu MiB of free store memory; capacity %llu MiB, %llu MiB free",
             static_cast<unsigned long long>(kLargeNeed >> 20),
             static_cast<unsigned long long>(st.capacity_bytes >> 20),
             static_cast<unsigned long long>(free_bytes >> 20));
    r->skipped = true;
    r->reason = why;
    return false;
  }
  return true;
}

void LargePut(uint8_t* src, uint8_t* dst, const store_stats& st, uint64_t creates_before) {
  Result first{"large_put_first",
               "the run's first 64 MiB store_create + memcpy into store_writer_data + seal",
               {}, {}, false, "", "", {}};
  Result steady{"large_put", "64 MiB store_create + memcpy + seal, repeated (create/delete)",
                {}, {}, false, "", "", {}};
  if (!LargeFits(&first, st)) {
    FreeIdleMemory();
    steady.skipped = true;
    steady.reason = first.reason;
    Add(std::move(first));
    Add(std::move(steady));
    return;
  }
  for (Result* r : {&first, &steady}) {
    r->figure = Series{r->name, "GB/s", {}};
    r->limits.push_back(Series{"memcpy_touched", "GB/s", {}});
  }
  first.limits.push_back(Series{"memcpy_fresh", "GB/s", {}});
  first.limits.push_back(Series{"memcpy_mapped", "GB/s", {}});
  if (g_idle.p) first.limits.push_back(Series{"memcpy_idle", "GB/s", {}});
  // The first ones are measured alone, each with its limits sampled right before it. They are
  // kept until all are done, so each lands on a range of the region no earlier one of this run
  // used: up to 3, as many as fit beside the 64 MiB the figures need anyway.
  uint64_t free_bytes = st.capacity_bytes - st.used_bytes;
  int firsts = static_cast<int>(std::min<uint64_t>(3, (free_bytes - (kLargeNeed - kLargeSize)) /
                                                          (kLargeSize + (4ull << 20))));
  if (firsts < 1) firsts = 1;
  long first_faults = 0;
  const long mapped_kib = RegionMappedKiB();
  std::vector<store_object_id> kept;
  // The limits that fault pages in go first, all of them: the page faults of a fresh
  // mapping slow whatever copy comes next (measured: steady puts 0.87-0.91 of memcpy with a
  // memcpy_fresh before each round, 0.93-0.98 without), and the figure is compared with the
  // touched memcpy measured right before it.
  for (int k = 0; k < firsts; k++) {
    first.limits[1].v.push_back(static_cast<double>(kLargeSize) / MemcpyFresh(src) / kGB);
    first.limits[2].v.push_back(static_cast<double>(kLargeSize) / MemcpyMapped(src) / kGB);
  }
  const double idle_s = g_idle.p ? Now() - g_idle.written_at : 0;
  for (int k = 0; k < firsts; k++) {
    first.limits[0].v.push_back(static_cast<double>(kLargeSize) / MemcpyTouched(dst, src) / kGB);
    if (g_idle.p && k < g_idle.count) {
      first.limits[3].v.push_back(static_cast<double>(kLargeSize) / MemcpyIdle(src, k) / kGB);
    }
    long f = 0;
    store_object_id id{};
    first.figure.v.push_back(static_cast<double>(kLargeSize) /
                             LargePutOnce(src, &f, nullptr, &id) / kGB);
    kept.push_back(id);
    first_faults += f;
  }
  for (const store_object_id& id : kept) Delete(id);
  // Only a fresh server guarantees memory no object ever used; this process's mapping of
  // the region is fresh either way.
  first.note = std::to_string(firsts) + " puts, each on a range this run had not used; " +
               std::to_string(st.total_creates) + " objects created in the server before them (" +
               std::to_string(creates_before) + " before this run" +
               (creates_before == 0 ? ", a fresh server" : "") + "); " +
               std::to_string(first_faults) + " minor page faults in this process in all; " +
               (mapped_kib < 0 ? std::string("the region's mapping not found")
                               : std::to_string(mapped_kib >> 10) + " of " +
                                     std::to_string(st.capacity_bytes >> 20) +
                                     " MiB of the region mapped in this process before them");
  if (g_idle.p) {
    char idle[200];
    snprintf(idle, sizeof idle,
             "; memcpy_idle: into private memory on %s pages written %.0f s before, when the "
             "run started",
             g_idle.pages.c_str(), idle_s);
    first.note += idle;
  } else if (!g_idle.missing.empty()) {
    first.note += "; no memcpy_idle: " + g_idle.missing;
  }
  long steady_faults = 0;

  // A client connected right before its first 64 MiB put: its process has mapped nothing of
  // the region yet (the library maps the region in the background after connecting, racing
  // this put). Its connect time is noted; each round connects a new client.
  Result fresh{"large_put_new_client",
               "64 MiB store_create + memcpy + seal right after store_client_connect of a new "
               "client (connect not timed)",
               {}, {}, false, "", "", {}};
  fresh.figure = Series{fresh.name, "GB/s", {}};
  fresh.limits.push_back(Series{"memcpy_touched", "GB/s", {}});
  fresh.limits.push_back(Series{"memcpy_mapped", "GB/s", {}});
  Series connect_ms{"store_client_connect", "ms", {}};
  for (int round = 0; round < g_set.rounds; round++) {
    fresh.limits[1].v.push_back(static_cast<double>(kLargeSize) / MemcpyMapped(src) / kGB);
    fresh.limits[0].v.push_back(static_cast<double>(kLargeSize) / MemcpyTouched(dst, src) / kGB);
    store_connect_options co = STORE_CONNECT_OPTIONS_INIT;
    co.client_name = "store-bench-fresh";
    store_client* c = nullptr;
    double c0 = Now();
    Check(store_client_connect(&c, g_set.socket, &co), "store_client_connect");
    connect_ms.v.push_back((Now() - c0) * 1e3);
    fresh.figure.v.push_back(static_cast<double>(kLargeSize) / LargePutOnce(src, nullptr, c) /
                             kGB);
    store_client_free(c);
    CheckStop();
  }
  fresh.also.push_back(connect_ms);
  fresh.note = std::string("population of the region: ") + Population();

  for (int round = 0; round < g_set.rounds; round++) {
    double touched = 0, put = 0;
    // The limit first, then the puts back to back.
    for (int k = 0; k < g_set.large_per_round; k++) touched += MemcpyTouched(dst, src);
    for (int k = 0; k < g_set.large_per_round; k++) {
      long f = 0;
      put += LargePutOnce(src, &f);
      steady_faults += f;
      CheckStop();
    }
    double bytes = static_cast<double>(kLargeSize) * g_set.large_per_round;
    steady.limits[0].v.push_back(bytes / touched / kGB);
    steady.figure.v.push_back(bytes / put / kGB);
  }
  steady.note = std::to_string(steady_faults / (g_set.rounds * g_set.large_per_round)) +
                " minor page faults per put in this process on average";
  FreeLimitMaps();
  FreeIdleMemory();
  Add(std::move(first));
  Add(std::move(fresh));
  Add(std::move(steady));
}

// The steady 64 MiB put by a client with the strict write window (STORE_CLIENT_WRITE_WINDOW=1:
// each put also makes the object's pages writable at the create and read-only at the seal),
// beside the same put by the default client in the same rounds: per round the limit, then the
// default puts, then the window's, back to back. The window client's first put (which maps its
// pages) is not counted. Skipped where the library refuses the window (a store on huge pages).
void LargePutWindow(uint8_t* src, uint8_t* dst, const store_stats& st) {
  Result r{"large_put_window",
           "64 MiB store_create + memcpy + seal, repeated (create/delete), by a client with the "
           "write window (STORE_CLIENT_WRITE_WINDOW=1)",
           {}, {}, false, "", "", {}};
  if (!LargeFits(&r, st)) {
    Add(std::move(r));
    return;
  }
  const char* before = getenv("STORE_CLIENT_WRITE_WINDOW");
  const std::string saved = before ? before : "";
  setenv("STORE_CLIENT_WRITE_WINDOW", "1", 1);
  store_connect_options co = STORE_CONNECT_OPTIONS_INIT;
  co.client_name = "store-bench-window";
  store_client* c = nullptr;
  const int rc = store_client_connect(&c, g_set.socket, &co);
  if (before) {
    setenv("STORE_CLIENT_WRITE_WINDOW", saved.c_str(), 1);
  } else {
    unsetenv("STORE_CLIENT_WRITE_WINDOW");
  }
  if (rc == STORE_ENOTSUP) {
    r.skipped = true;
    r.reason = store_last_error_message();
    Add(std::move(r));
    return;
  }
  Check(rc, "store_client_connect with STORE_CLIENT_WRITE_WINDOW=1");
  r.figure = Series{r.name, "GB/s", {}};
  r.limits.push_back(Series{"memcpy_touched", "GB/s", {}});
  r.also.push_back(Series{"large_put (the default client, same rounds)", "GB/s", {}});
  long faults = 0;
  for (int round = -1; round < g_set.rounds; round++) {  // round -1 warms up, not counted
    double touched = 0, put = 0, window = 0;
    for (int k = 0; k < g_set.large_per_round; k++) touched += MemcpyTouched(dst, src);
    for (int k = 0; k < g_set.large_per_round; k++) put += LargePutOnce(src);
    for (int k = 0; k < g_set.large_per_round; k++) {
      long f = 0;
      window += LargePutOnce(src, &f, c);
      if (round >= 0) faults += f;
      CheckStop();
    }
    if (round < 0) continue;
    const double bytes = static_cast<double>(kLargeSize) * g_set.large_per_round;
    r.limits[0].v.push_back(bytes / touched / kGB);
    r.also[0].v.push_back(bytes / put / kGB);
    r.figure.v.push_back(bytes / window / kGB);
  }
  store_client_free(c);
  char note[256];
  snprintf(note, sizeof note,
           "window / default put %.3f (medians); %ld minor page faults per put with the window "
           "in this process on average",
           r.also[0].Median() > 0 ? r.figure.Median() / r.also[0].Median() : 0.0,
           faults / (g_set.rounds * g_set.large_per_round));
  r.note = note;
  Add(std::move(r));
}

void LargeGet(uint8_t* src, uint8_t* dst, const store_stats& st) {
  Result r{"large_get", "64 MiB store_open_reader + memcpy out of store_reader_data + close",
           {}, {}, false, "", "", {}};
  if (!LargeFits(&r, st)) {
    Add(std::move(r));
    return;
  }
  r.figure = Series{"large_get", "GB/s", {}};
  r.limits.push_back(Series{"memcpy_touched", "GB/s", {}});

  store_object_id id = MakeId(g_next_id++);
  {
    store_writer* w = nullptr;
    Check(store_create(g_client, &w, &id, kLargeSize, nullptr), "store_create of 64 MiB");
    void* p = store_writer_data(w);
    if (!p) {
      store_writer_abort(w);
      Die("store_writer_data returned NULL");
    }
    memcpy(p, src, kLargeSize);
    Check(store_writer_seal(w), "store_writer_seal of 64 MiB");
    g_created++;
  }
  bool verified = false;
  for (int round = -1; round < g_set.rounds; round++) {  // round -1 warms up, not counted
    double touched = 0, get = 0;
    for (int k = 0; k < g_set.large_per_round; k++) {
      touched += MemcpyTouched(dst, src);
      memset(dst, 0, 4096);
      double t0 = Now();
      store_reader* rd = nullptr;
      Check(store_open_reader(g_client, &rd, &id, 0), "store_open_reader of 64 MiB");
      const void* p = store_reader_data(rd);
      if (!p || store_reader_size(rd) != kLargeSize) {
        store_reader_close(rd);
        Die("store_reader_data returned NULL or the wrong size");
      }
      memcpy(dst, p, kLargeSize);
      Clobber(dst);
      store_reader_close(rd);
      get += Now() - t0;
      if (!verified) {
        if (memcmp(dst, src, kLargeSize) != 0) Die("the 64 MiB object read back differs");
        verified = true;
      }
      CheckStop();
    }
    if (round >= 0) {
      double bytes = static_cast<double>(kLargeSize) * g_set.large_per_round;
      r.limits[0].v.push_back(bytes / touched / kGB);
      r.figure.v.push_back(bytes / get / kGB);
    }
  }
  Delete(id);
  Add(std::move(r));
}

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

std::string ReadFirstLine(const char* path, const char* starts_with);

constexpr uint64_t kSpillObject = 8ull << 20;
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

void RemoveScratch() {
  if (unlink(g_scratch.c_str()) != 0) DieErrno(("unlink " + g_scratch).c_str());
}

// Writes `bytes` (a multiple of kSpillObject) from src into a new file at g_scratch, then
// fdatasync and close. Seconds from the open to the end of the fdatasync.
double WriteScratch(const uint8_t* src, uint64_t bytes) {
  double t0 = Now();
  int fd = open(g_scratch.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
  if (fd < 0) DieErrno(("create " + g_scratch).c_str());
  for (uint64_t done = 0; done < bytes;) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(kSpillObject, bytes - done));
    ssize_t k = write(fd, src, n);
    if (k < 0) {
      if (errno == EINTR) continue;
      DieErrno(("write " + g_scratch).c_str());
    }
    done += static_cast<uint64_t>(k);
  }
  if (fdatasync(fd) != 0) DieErrno(("fdatasync " + g_scratch).c_str());
  double t = Now() - t0;
  close(fd);
  CheckStop();
  return t;
}

// Writes `bytes` into a new file without syncing and deletes it: nothing reaches the disk, but
// that much memory has just been used by the page cache. In a virtual machine whose free
// memory goes back to the host, the first touch of memory can be slower than the disk; warmed
// first, the limits and the figures find warm pages alike. The file is g_scratch + ".warm".
void WarmPageCache(const uint8_t* src, uint64_t bytes) {
  const std::string path = g_scratch + ".warm";
  int fd = open(path.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
  if (fd < 0) DieErrno(("create " + path).c_str());
  for (uint64_t done = 0; done < bytes;) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(kSpillObject, bytes - done));
    ssize_t k = write(fd, src, n);
    if (k < 0) {
      if (errno == EINTR) continue;
      DieErrno(("write " + path).c_str());
    }
    done += static_cast<uint64_t>(k);
  }
  close(fd);
  if (unlink(path.c_str()) != 0) DieErrno(("unlink " + path).c_str());
  CheckStop();
}

// Reads the whole of g_scratch sequentially into buf (kSpillObject bytes). Seconds.
double ReadScratch(uint8_t* buf, uint64_t expect) {
  double t0 = Now();
  int fd = open(g_scratch.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) DieErrno(("open " + g_scratch).c_str());
  uint64_t done = 0;
  for (;;) {
    ssize_t k = read(fd, buf, kSpillObject);
    if (k < 0) {
      if (errno == EINTR) continue;
      DieErrno(("read " + g_scratch).c_str());
    }
    if (k == 0) break;
    done += static_cast<uint64_t>(k);
  }
  Clobber(buf);
  double t = Now() - t0;
  close(fd);
  if (done != expect) Die("the limit's file read back has the wrong size");
  CheckStop();
  return t;
}

// Drops a file's (clean) pages from the page cache.
void DropFromCache(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) DieErrno(("open " + path).c_str());
  int rc = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  close(fd);
  if (rc != 0) {
    errno = rc;
    DieErrno(("posix_fadvise DONTNEED " + path).c_str());
  }
}

// Pages of [off, off + len) of a file in the page cache, and pages in all; adds to *resident
// and *total. Does nothing when the file cannot be mapped.
void CountResident(const std::string& path, uint64_t off, uint64_t len, uint64_t* resident,
                   uint64_t* total) {
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  uint64_t lo = off / page * page;
  uint64_t hi = off + len;
  if (hi <= lo) return;
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  void* p = mmap(nullptr, hi - lo, PROT_READ, MAP_SHARED, fd, static_cast<off_t>(lo));
  close(fd);
  if (p == MAP_FAILED) return;
  std::vector<unsigned char> vec((hi - lo + page - 1) / page);
  if (mincore(p, hi - lo, vec.data()) == 0) {
    for (unsigned char v : vec) *resident += v & 1;
    *total += vec.size();
  }
  munmap(p, hi - lo);
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

std::vector<SpillRecordAt> SpillRecords(const std::vector<store_object_id>& ids) {
  std::vector<SpillRecordAt> recs;
  char url[4096];
  for (const store_object_id& id : ids) {
    Check(store_spill_url(g_client, &id, url, sizeof url), "store_spill_url");
    SpillRecordAt r;
    if (!ParseSpillUrl(url, &r)) Die((std::string("cannot parse the spill URL ") + url).c_str());
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

double ScratchResidentPercent(uint64_t bytes) {
  uint64_t resident = 0, total = 0;
  CountResident(g_scratch, 0, bytes, &resident, &total);
  return total ? 100.0 * static_cast<double>(resident) / static_cast<double>(total) : -1;
}

store_stats Stats() {
  store_stats s = STORE_STATS_INIT;
  Check(store_stats_get(g_client, &s), "store_stats_get");
  return s;
}

// Waits until no spill or restore is in flight in the server (the server may spill on its own
// once use passes its high mark).
void WaitSpillIdle() {
  double t0 = Now();
  for (;;) {
    store_stats s = Stats();
    if (s.spilling_count == 0 && s.restoring_count == 0) return;
    if (Now() - t0 > 60) Die("the server kept spilling or restoring for 60 s");
    CheckStop();
    usleep(5000);
  }
}

// Counts the objects of ids by state: in memory (sealed), spilled, other.
void CountStates(const std::vector<store_object_id>& ids, size_t* in_memory, size_t* spilled) {
  *in_memory = *spilled = 0;
  for (const store_object_id& id : ids) {
    store_object_info info = STORE_OBJECT_INFO_INIT;
    Check(store_info(g_client, &id, &info), "store_info");
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
double RestoreSequential(const std::vector<store_object_id>& ids, const uint8_t* pattern,
                         bool verify) {
  double timed = 0;
  for (size_t i = 0; i < ids.size(); i++) {
    double t0 = Now();
    store_reader* rd = nullptr;
    Check(store_open_reader(g_client, &rd, &ids[i], kRestoreTimeoutMs),
          "store_open_reader of a spilled object");
    double t1 = Now();
    const uint8_t* p = static_cast<const uint8_t*>(store_reader_data(rd));
    if (!p || store_reader_size(rd) != kSpillObject) {
      store_reader_close(rd);
      Die("a restored object has no data or the wrong size");
    }
    if (verify && !SameAsObject(p, pattern, i)) {
      store_reader_close(rd);
      Die("an object restored from disk differs from what was written");
    }
    double t2 = Now();
    store_reader_close(rd);
    timed += (t1 - t0) + (Now() - t2);
    CheckStop();
  }
  return timed;
}

// store_prefetch of all, then opens and closes each. Seconds in all.
double RestorePrefetched(const std::vector<store_object_id>& ids) {
  double t0 = Now();
  Check(store_prefetch(g_client, ids.data(), ids.size()), "store_prefetch");
  for (size_t i = 0; i < ids.size(); i++) {
    store_reader* rd = nullptr;
    Check(store_open_reader(g_client, &rd, &ids[i], kRestoreTimeoutMs),
          "store_open_reader of a prefetched object");
    if (store_reader_size(rd) != kSpillObject) {
      store_reader_close(rd);
      Die("a prefetched object has the wrong size");
    }
    store_reader_close(rd);
  }
  double t = Now() - t0;
  CheckStop();
  return t;
}

// Evicts the objects of ids that are in memory again. Restored objects keep their copies on
// disk, so this writes nothing. Returns the bytes written (0 expected).
uint64_t EvictAgain(const std::vector<store_object_id>& ids) {
  store_stats before = Stats();
  size_t in_memory = 0, spilled = 0;
  for (int attempt = 0;; attempt++) {
    WaitSpillIdle();
    CountStates(ids, &in_memory, &spilled);
    if (spilled == ids.size()) break;
    if (in_memory == 0 || attempt == 3) {
      Die("store_evict left restored objects of this run in memory");
    }
    // An 8 MiB object takes exactly 8 MiB of the store (a size class, page aligned).
    uint64_t freed = 0;
    Check(store_evict(g_client, static_cast<uint64_t>(in_memory) * kSpillObject, &freed),
          "store_evict of restored objects");
  }
  return Stats().total_spilled_bytes - before.total_spilled_bytes;
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

// Churn on disk: 96 objects of 1 MiB spilled, then rounds that delete a fifth of them at random
// and put and spill as many new ones (each spill makes a file).
// After each round, once spilling and compaction are quiet: disk bytes / live record bytes.
void SpillChurn() {
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
    store_object_id id = MakeId(g_next_id);
    Check(store_put(g_client, &id, data.data(), size, &co), "store_put of 1 MiB");
    live.push_back(g_next_id++);
    g_created++;
  };
  auto settle = [&] {
    // Quiet: no spill write or restore, and the dead bytes stable (compaction done).
    uint64_t last = UINT64_MAX;
    for (int i = 0; i < 2000; i++) {
      store_stats st = Stats();
      if (st.spilling_count == 0 && st.restoring_count == 0 && st.spill_dead_bytes == last) return st;
      last = st.spill_dead_bytes;
      usleep(5000);
    }
    return Stats();
  };
  for (size_t i = 0; i < n; i++) put();
  uint64_t evicted = 0;
  Check(store_evict(g_client, UINT64_MAX, &evicted), "store_evict");
  const int rounds = g_set.quick ? 3 : 10;
  for (int round = 0; round < rounds; round++) {
    for (size_t k = 0; k < n / 5; k++) {
      size_t i = rng() % live.size();
      store_object_id id = MakeId(live[i]);
      Delete(id);
      live[i] = live.back();
      live.pop_back();
    }
    for (size_t k = 0; k < n / 5; k++) put();
    Check(store_evict(g_client, UINT64_MAX, &evicted), "store_evict");
    store_stats st = settle();
    const double live_bytes = static_cast<double>(live.size()) * static_cast<double>(16 + size);
    r.figure.v.push_back(static_cast<double>(st.spill_disk_bytes) / live_bytes);
    r.limits[0].v.push_back(1.5);
    CheckStop();
  }
  for (uint64_t id : live) {
    store_object_id oid = MakeId(id);
    Delete(oid);
  }
  Add(std::move(r));
}

void SpillRestore(const store_stats& st) {
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
      Add(std::move(*r));
    }
  };
  if (!st.spill_enabled) {
    return skip("the store does not spill (started without --spill-dir)");
  }
  if (g_set.spill_dir.empty()) {
    return skip("pass --spill-dir DIR, the directory the store spills into, to measure the "
                "disk's own rate");
  }
  const std::string& dir = g_set.spill_dir;
  struct stat dst;
  if (stat(dir.c_str(), &dst) != 0 || !S_ISDIR(dst.st_mode)) {
    return skip("--spill-dir " + dir + " is not a directory");
  }
  if (access(dir.c_str(), W_OK | X_OK) != 0) {
    return skip("cannot write into --spill-dir " + dir + ": " + strerror(errno));
  }

  // How much: the setting, bounded by the memory free below the high mark and by the disk.
  uint64_t bytes = g_set.spill_bytes;
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
    r->also.push_back(Series{r->name + "_server", "GB/s", {}});
  }

  uint8_t* pattern = TouchedBuffer(kSpillObject, 0);
  FillPattern(pattern, kSpillObject);
  uint8_t* rbuf = TouchedBuffer(kSpillObject, 1);
  {
    char name[64];
    snprintf(name, sizeof name, "/.store-bench-%d-%s.tmp", static_cast<int>(getpid()),
             PrefixHex().substr(16).c_str());
    g_scratch = dir + name;
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
  for (int round = 0; round < g_set.spill_rounds; round++) {
    // Fill.
    store_stats s0 = Stats();
    store_create_options co = STORE_CREATE_OPTIONS_INIT;
    co.importance = kSpillImportance;
    co.timeout_ms = 10000;
    for (size_t i = 0; i < n; i++) {
      ids[i] = MakeId(g_next_id++);
      store_writer* w = nullptr;
      Check(store_create(g_client, &w, &ids[i], kSpillObject, &co), "store_create of 8 MiB");
      uint8_t* p = static_cast<uint8_t*>(store_writer_data(w));
      if (!p) {
        store_writer_abort(w);
        Die("store_writer_data returned NULL");
      }
      memcpy(p, pattern, kSpillObject);
      StampObject(p, i);
      Check(store_writer_seal(w), "store_writer_seal of 8 MiB");
      g_created++;
      CheckStop();
    }
    WaitSpillIdle();
    store_stats s1 = Stats();
    size_t in_memory = 0, spilled = 0;
    CountStates(ids, &in_memory, &spilled);
    early += n - in_memory;
    // The memory the objects still in memory hold: all of it when nothing was spilled yet.
    uint64_t target = in_memory == n && s1.used_bytes > s0.used_bytes
                          ? s1.used_bytes - s0.used_bytes
                          : static_cast<uint64_t>(in_memory) * kSpillObject;

    // Spill: the limit right before the figure. The limit's file leaves the page cache at once,
    // so that the spill gets the pages the limit had.
    double w0 = Now();
    WarmPageCache(pattern, warm_bytes);
    warm_s += Now() - w0;
    double wt = WriteScratch(pattern, bytes);
    DropFromCache(g_scratch);
    spill.limits[0].v.push_back(Rate(bytes, wt));
    store_stats a = Stats();
    uint64_t freed = 0;
    double t0 = Now();
    Check(store_evict(g_client, target, &freed), "store_evict");
    double et = Now() - t0;
    store_stats b = Stats();
    uint64_t written = b.total_spilled_bytes - a.total_spilled_bytes;
    spill.figure.v.push_back(Rate(written, et));
    spill.also[0].v.push_back(
        Rate(written, static_cast<double>(b.total_spill_ns - a.total_spill_ns) / 1e9));
    spill_files = b.spill_files > a.spill_files ? b.spill_files - a.spill_files : 0;
    object_spill_bytes = written;
    CountStates(ids, &in_memory, &spilled);
    if (spilled != n) {
      Die(("store_evict left " + std::to_string(n - spilled) + " of " + std::to_string(n) +
           " objects of this run in memory")
              .c_str());
    }
    std::vector<SpillRecordAt> recs = SpillRecords(ids);
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
    std::vector<double> cold_s, warm_s_reads;
    w0 = Now();
    WarmPageCache(pattern, warm_bytes);  // for the reads: the spill files hold the others
    warm_s += Now() - w0;
    for (int k = 0; k < kReadSamples; k++) {
      DropFromCache(g_scratch);
      double cold_pct = ScratchResidentPercent(bytes);
      if (round == 0 && k == 0) scratch_cold_resident = cold_pct;
      cold_s.push_back(ReadScratch(rbuf, bytes));
      warm_s_reads.push_back(ReadScratch(rbuf, bytes));
    }
    RemoveScratch();
    double warm_pct = ResidentPercent(recs);
    if (round == 0) warm_resident_first = warm_pct;
    a = Stats();
    double rt = RestoreSequential(ids, pattern, true);
    b = Stats();
    for (Result* r : {&restore, &prefetch, &cold}) {
      for (double t : cold_s) r->limits[0].v.push_back(Rate(bytes, t));
      for (double t : warm_s_reads) r->limits[1].v.push_back(Rate(bytes, t));
    }
    restore.figure.v.push_back(Rate(bytes, rt));
    restore.also[0].v.push_back(ServerRestoreRate(a, b));

    // Prefetched: evicted again (nothing to write), then all asked for at once.
    prefetch_rewritten += EvictAgain(ids);
    if (round == 0) prefetch_resident_first = ResidentPercent(recs);
    a = Stats();
    double pt = RestorePrefetched(ids);
    b = Stats();
    prefetch.figure.v.push_back(Rate(bytes, pt));
    prefetch.also[0].v.push_back(ServerRestoreRate(a, b));

    // Cold: evicted again, the spill files dropped from the page cache.
    prefetch_rewritten += EvictAgain(ids);
    recs = SpillRecords(ids);
    std::vector<std::string> files;
    for (const SpillRecordAt& r : recs) {
      if (std::find(files.begin(), files.end(), r.path) == files.end()) files.push_back(r.path);
    }
    for (const std::string& f : files) DropFromCache(f);
    double cpct = ResidentPercent(recs);
    if (round == 0) cold_resident_first = cpct;
    a = Stats();
    double ct = RestoreSequential(ids, pattern, true);
    b = Stats();
    cold.figure.v.push_back(Rate(bytes, ct));
    cold.also[0].v.push_back(ServerRestoreRate(a, b));

    for (const store_object_id& id : ids) Delete(id);
  }
  g_scratch.clear();
  munmap(pattern, kSpillObject);
  munmap(rbuf, kSpillObject);

  // Spill files of deleted objects go with the last of them.
  store_stats end = STORE_STATS_INIT;
  for (int k = 0; k < 100; k++) {
    end = Stats();
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
  Add(std::move(spill));
  Add(std::move(restore));
  Add(std::move(prefetch));
  Add(std::move(cold));
}

// ---- output --------------------------------------------------------------------------------

using Json = nlohmann::ordered_json;  // keys in the order they are set

Json SeriesJson(const Series& s) {
  return Json{{"name", s.name}, {"unit", s.unit},   {"median", s.Median()},
              {"min", s.Min()}, {"max", s.Max()}, {"samples", s.v}};
}

// The table figures: what one request costs with few and with very many objects in the table
// (stats, a sorted page of 50, a put, a get), and the server's memory per object.
// How much of the free memory holds data when it is filled with objects of random sizes, log-
// uniform in [lo, hi]: creates (sealed without writing, and pinned so that a store that spills
// cannot make room) until 20 in a row do not fit, per round; the objects go after each round.
void FillFigure(const char* name, uint64_t lo, uint64_t hi) {
  Result r{name,
           "data / free memory, filled with log-uniform sizes in " + std::to_string(lo >> 10) +
               " KiB .. " + std::to_string(hi >> 10) + " KiB until 20 creates in a row fail",
           {}, {}, false, "", "", {}};
  r.figure = Series{name, "of free", {}};
  r.limits.push_back(Series{"all_data", "of free", {}});
  std::mt19937_64 rng(lo ^ (hi << 7) ^ 0x5eed);
  std::uniform_real_distribution<double> u(std::log(static_cast<double>(lo)),
                                           std::log(static_cast<double>(hi)));
  const int rounds = g_set.quick ? 1 : 3;
  for (int round = 0; round < rounds; round++) {
    store_stats st = Stats();
    const uint64_t free_bytes = st.capacity_bytes - st.used_bytes;
    const uint64_t first = g_next_id;
    uint64_t data = 0;
    for (int misses = 0; misses < 20;) {
      uint64_t size = static_cast<uint64_t>(std::exp(u(rng)));
      store_object_id id = MakeId(g_next_id);
      store_create_options o = STORE_CREATE_OPTIONS_INIT;
      o.timeout_ms = 0;
      store_writer* w = nullptr;
      int rc = store_create(g_client, &w, &id, size, &o);
      if (rc == STORE_ENOSPACE || rc == STORE_EINVAL) {
        misses++;
        continue;
      }
      Check(rc, "store_create of a fill object");
      Check(store_writer_seal(w), "store_writer_seal of a fill object");
      g_next_id++;
      g_created++;
      Check(store_pin(g_client, &id), "store_pin of a fill object");
      data += size;
      misses = 0;
      CheckStop();
    }
    for (uint64_t n = first; n < g_next_id; n++) {
      store_object_id id = MakeId(n);
      Check(store_unpin(g_client, &id), "store_unpin");
    }
    DeleteRange(first, g_next_id);
    r.figure.v.push_back(free_bytes ? static_cast<double>(data) / static_cast<double>(free_bytes) : 0);
    r.limits[0].v.push_back(1.0);
  }
  Add(std::move(r));
}

void TableFigures() {
  const uint64_t big = g_set.quick ? 100000 : 1000000;
  const uint64_t small = 10000;
  store_stats st = Stats();
  uint64_t need = big * 192;  // 16-byte objects take 64-byte size classes; generous bound
  if (st.capacity_bytes - st.used_bytes < need) {
    Result r;
    r.name = "table";
    r.skipped = true;
    r.reason = "needs " + std::to_string(need >> 20) + " MiB of free store memory";
    Add(std::move(r));
    return;
  }
  uint64_t first = g_next_id;
  std::vector<store_object_id> ids;
  std::vector<const void*> datas;
  std::vector<uint64_t> sizes;
  static const char payload[16] = "table-figure-16";
  uint64_t anon_before = AnonymousBytes(st.server_pid);
  auto fill_to = [&](uint64_t n) {
    while (ids.size() < n) {
      size_t k = static_cast<size_t>(std::min<uint64_t>(n - ids.size(), 10000));
      std::vector<store_object_id> batch;
      for (size_t i = 0; i < k; i++) batch.push_back(MakeId(g_next_id++));
      datas.assign(k, payload);
      sizes.assign(k, sizeof payload);
      size_t done = 0;
      Check(store_put_many(g_client, batch.data(), datas.data(), sizes.data(), k, nullptr, &done),
            "store_put_many for the table figures");
      g_created += done;
      ids.insert(ids.end(), batch.begin(), batch.end());
      CheckStop();
    }
  };
  auto median_ms = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0 : v[v.size() / 2];
  };
  struct AtSize {
    double stats_ms, page_ms, put_ops, get_ops;
  };
  auto measure = [&]() {
    AtSize a{};
    std::vector<double> ts, tp;
    for (int i = 0; i < 9; i++) {
      store_stats x = STORE_STATS_INIT;
      double t0 = Now();
      Check(store_stats_get(g_client, &x), "store_stats_get");
      ts.push_back((Now() - t0) * 1e3);
      store_list_options lo = STORE_LIST_OPTIONS_INIT;
      lo.sort = STORE_SORT_SIZE;
      lo.descending = 1;
      lo.limit = 50;
      store_object_info* page = nullptr;
      size_t n = 0;
      t0 = Now();
      Check(store_list_page(g_client, &lo, &page, sizeof *page, &n, nullptr), "store_list_page");
      tp.push_back((Now() - t0) * 1e3);
      store_free(page);
    }
    a.stats_ms = median_ms(ts);
    a.page_ms = median_ms(tp);
    // Puts and gets of new objects while the table holds what it holds.
    const int k = g_set.quick ? 2000 : 10000;
    std::vector<store_object_id> extra;
    double t0 = Now();
    for (int i = 0; i < k; i++) {
      extra.push_back(MakeId(g_next_id++));
      Put(extra.back(), payload, sizeof payload, "store_put (table)");
    }
    a.put_ops = k / (Now() - t0);
    t0 = Now();
    for (int i = 0; i < k; i++) {
      store_reader* r = nullptr;
      Check(store_open_reader(g_client, &r, &extra[static_cast<size_t>(i)], 0), "store_open_reader (table)");
      store_reader_close(r);
    }
    a.get_ops = k / (Now() - t0);
    size_t deleted = 0;
    Check(store_delete_many(g_client, extra.data(), extra.size(), &deleted), "store_delete_many");
    g_deleted += deleted;
    return a;
  };
  Tally rtt;
  RttSlice(0.2, &rtt);
  double rtt_ms = rtt.seconds / std::max<uint64_t>(1, rtt.ops) * 1e3;
  fill_to(small);
  AtSize at_small = measure();
  fill_to(big);
  uint64_t anon_after = AnonymousBytes(st.server_pid);
  AtSize at_big = measure();
  size_t deleted = 0;
  Check(store_delete_many(g_client, ids.data(), ids.size(), &deleted), "store_delete_many");
  g_deleted += deleted;
  (void)first;

  auto line = [&](const char* name, const char* desc, const char* unit, double v_small,
                  double v_big, const char* limit_name, double limit) {
    Result r;
    r.name = name;
    r.description = desc;
    r.figure = Series{name, unit, {v_big}};
    r.limits.push_back(Series{limit_name, unit, {limit}});
    r.also.push_back(Series{std::string("at ") + std::to_string(small) + " objects", unit, {v_small}});
    Add(std::move(r));
  };
  std::string at = "with " + std::to_string(big) + " objects in the table";
  line("table_stats", ("store_stats_get latency " + at).c_str(), "ms", at_small.stats_ms,
       at_big.stats_ms, "socket_rtt", rtt_ms);
  line("table_page", ("store_list_page of 50 by size, latency " + at).c_str(), "ms",
       at_small.page_ms, at_big.page_ms, "socket_rtt", rtt_ms);
  line("table_put", ("store_put of 16 B " + at).c_str(), "ops/s", at_small.put_ops,
       at_big.put_ops, "socket_rtt", 1e3 / rtt_ms);
  line("table_get", ("store_open_reader + close " + at).c_str(), "ops/s", at_small.get_ops,
       at_big.get_ops, "socket_rtt", 1e3 / rtt_ms);
  // Memory per object has no limit to measure against: the issue's goal is 200 bytes.
  Result mem;
  mem.name = "table_memory";
  mem.description = "growth of the server's heap (anonymous memory) per object while " +
                    std::to_string(big) + " objects of 16 B were added";
  if (anon_before == 0 || anon_after <= anon_before) {
    mem.skipped = true;
    mem.reason = "the server's /proc/PID/smaps_rollup cannot be read (another user?)";
  } else {
    const double grew = static_cast<double>(anon_after - anon_before);
    mem.figure = Series{mem.name, "B/object", {grew / static_cast<double>(big)}};
    char note[160];
    snprintf(note, sizeof note,
             "server heap grew %.1f MiB (table, indexes, allocator); indexes that earlier figures "
             "grew are not counted again",
             grew / 1048576.0);
    mem.note = note;
  }
  Add(std::move(mem));
}

struct Machine {
  int nproc = 0;
  std::string kernel;
  std::string cpu;
  std::string thp;
};

std::string ReadFirstLine(const char* path, const char* starts_with) {
  FILE* f = fopen(path, "r");
  if (!f) return "";
  char line[512];
  std::string out;
  while (fgets(line, sizeof line, f)) {
    if (!starts_with || strncmp(line, starts_with, strlen(starts_with)) == 0) {
      out = line;
      break;
    }
  }
  fclose(f);
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  if (starts_with) {
    size_t colon = out.find(':');
    out = colon == std::string::npos ? "" : out.substr(colon + 1);
    while (!out.empty() && out.front() == ' ') out.erase(0, 1);
  }
  return out;
}

Machine GetMachine() {
  Machine m;
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) {
    m.nproc = CPU_COUNT(&set);
  } else {
    m.nproc = static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
  }
  struct utsname u;
  if (uname(&u) == 0) m.kernel = std::string(u.sysname) + " " + u.release + " " + u.machine;
  m.cpu = ReadFirstLine("/proc/cpuinfo", "model name");
  m.thp = ReadFirstLine("/sys/kernel/mm/transparent_hugepage/enabled", nullptr);
  return m;
}

// One JSON document on stdout. Figures that are not numbers (NaN, infinities) print as null.
void PrintJson(const Machine& m, const store_stats& st, uint64_t creates_before, double elapsed,
               long left) {
  Json figures = Json::array();
  for (const Result& r : g_results) {
    Json f{{"name", r.name}, {"description", r.description}, {"skipped", r.skipped}};
    if (r.skipped) {
      f["reason"] = r.reason;
      figures.push_back(std::move(f));
      continue;
    }
    f["figure"] = SeriesJson(r.figure);
    Json limits = Json::array();
    for (const Series& l : r.limits) {
      Json j = SeriesJson(l);
      j["ratio"] = Ratio(r.figure, l);
      limits.push_back(std::move(j));
    }
    f["limits"] = std::move(limits);
    if (!r.also.empty()) {
      Json also = Json::array();
      for (const Series& a : r.also) also.push_back(SeriesJson(a));
      f["also"] = std::move(also);
    }
    if (!r.note.empty()) f["note"] = r.note;
    figures.push_back(std::move(f));
  }
  Json doc{
      {"tool", "store-bench"},
      {"library_version", store_version_string()},
      {"machine",
       {{"nproc", m.nproc}, {"kernel", m.kernel}, {"cpu", m.cpu}, {"transparent_hugepage", m.thp}}},
      {"store",
       {{"socket", g_set.socket ? Json(g_set.socket) : Json(nullptr)},
        {"server_pid", st.server_pid},
        {"capacity_bytes", st.capacity_bytes},
        {"used_bytes_at_start", st.used_bytes},
        {"objects_at_start", st.object_count},
        {"creates_before_run", creates_before}}},
      {"mode", g_set.quick ? "quick" : "full"},
      {"rounds", g_set.rounds},
      {"spill_rounds", g_set.spill_rounds},
      {"spill_dir", g_set.spill_dir.empty() ? Json(nullptr) : Json(g_set.spill_dir)},
      {"id_prefix", PrefixHex()},
      {"figures", std::move(figures)},
      {"cleanup", {{"created", g_created}, {"deleted", g_deleted}, {"left", left}}},
      {"elapsed_s", elapsed},
  };
  // Bytes that are not UTF-8 (a kernel or CPU name could hold some) become U+FFFD.
  std::string text = doc.dump(2, ' ', false, Json::error_handler_t::replace);
  text += '\n';
  fputs(text.c_str(), stdout);
}

void Usage(FILE* f) {
  fprintf(f,
          "Usage: store-bench [OPTIONS]\n"
          "Measures a running store server and prints each figure beside a limit of this\n"
          "machine measured in the same run, and their ratio. Starts no server.\n"
          "\n"
          "  --socket PATH   the server's socket (default: the library default,\n"
          "                  $STORE_SOCKET, else $XDG_RUNTIME_DIR/store.sock, else\n"
          "                  /tmp/store-$UID.sock)\n"
          "  --json          print one JSON document instead of text\n"
          "  --quick         fewer and shorter rounds (a smoke run of a few seconds)\n"
          "  --only NAME     run one figure: small_put, small_write, small_get, idle_put, batch_get,\n"
          "                  batch_put, clients8 (clients8_put and clients8_get: 8\n"
          "                  processes at once against 1), large_put (with\n"
          "                  large_put_first), large_put_window (large_put by a client\n"
          "                  with STORE_CLIENT_WRITE_WINDOW=1), large_get,\n"
          "                  spill (with the restore figures; restore is a synonym), table,\n"
          "                  fill (fill_1m_64m, fill_16m_256m, fill_64k_4m)\n"
          "  --spill-dir DIR the directory the store spills into (its --spill-dir): enables\n"
          "                  the spill and restore figures, whose limits are file IO in DIR\n"
          "  --help          show this help and exit\n"
          "\n"
          "Figures are medians of several rounds (min and max shown). Limits: socket_rtt is a\n"
          "64 B send + 64 B echo over a socketpair to a forked process; socket_rtt_poll is the\n"
          "same with the reply polled for first, for as long as the library polls for a reply\n"
          "(STORE_CLIENT_SPIN_US, default 50 us), then waited for; memcpy_touched copies\n"
          "64 MiB between private buffers already written; memcpy_fresh copies into a new,\n"
          "never touched anonymous mapping; memcpy_mapped copies into shared memory already\n"
          "written through another mapping, through a second mapping made with MAP_POPULATE\n"
          "just before (the first write of a process to pages it has mapped but not yet\n"
          "touched: near memcpy_touched on most machines, far below it on a VM that builds\n"
          "its page tables lazily); memcpy_idle copies into private memory, on pages of the\n"
          "region's size, that was written when the run started and left alone since (a host\n"
          "may unmap or reclaim a VM's idle memory, as it may the region's unused ranges).\n"
          "GB/s is 10^9 bytes per second.\n"
          "The 64 MiB figures need 140 MiB of free store memory and are skipped otherwise.\n"
          "\n"
          "The spill figures run when the store spills (its stats say spill_enabled) and\n"
          "--spill-dir is given. Each round fills the store with 8 MiB objects (up to 1.5 GiB,\n"
          "at most 75%% of its capacity; 256 MiB with --quick), times store_evict of them all\n"
          "against writing + fdatasync of a file of the same size in DIR (file_write), then\n"
          "times reading them back: opened in turn (restore), after store_prefetch of all\n"
          "(restore_prefetch), and in turn with the spill files dropped from the page cache\n"
          "(restore_cold), against reading that file after posix_fadvise DONTNEED\n"
          "(file_read_cold) and again from the page cache (file_read_warm), three of each per\n"
          "round. The server's own rates (bytes over the summed time of its spill or restore\n"
          "jobs) are shown as 'also'. Before the file is written or read, an unsynced write of\n"
          "the same size, deleted at once, warms the page cache (first touches of memory can\n"
          "be slower than the disk in a virtual machine).\n"
          "The limits' file is deleted after the reads; with the spill files it needs twice the\n"
          "bytes free on DIR's disk. Three rounds; one with --quick.\n"
          "Every object made is deleted before exit. Exit status: 0 ok, 1 failure, 2 usage.\n");
}

// Parses argv into g_set. Returns -1 to go on, or the exit code: 0 after --help, 2 on bad usage
// (with one line on stderr).
int ParseArgs(int argc, char** argv) {
  static std::string socket_path;
  bool help = false;
  CLI::App app("", "store-bench");
  store::cli::Configure(app);
  using store::cli::Reject;
  store::cli::Flag(app, "-h,--help", [&] { help = true; });
  store::cli::Flag(app, "--json", [] { g_set.json = true; });
  store::cli::Flag(app, "--quick", [] { g_set.quick = true; });
  store::cli::Value(app, "--socket", [](const std::string& v) {
    socket_path = v;
    g_set.socket = socket_path.c_str();
  });
  store::cli::Value(app, "--spill-dir", [](std::string v) {
    if (v.empty()) Reject("store-bench: --spill-dir needs a directory");
    while (v.size() > 1 && v.back() == '/') v.pop_back();
    g_set.spill_dir = v;
  });
  store::cli::Value(app, "--only", [](std::string v) {
    if (v == "large_put_first") v = "large_put";
    if (v == "clients8_put" || v == "clients8_get") v = "clients8";
    if (v == "restore" || v == "restore_prefetch" || v == "restore_cold") v = "spill";
    bool known = false;
    for (const char* n : kFigureNames) known = known || v == n;
    if (!known) Reject("store-bench: unknown figure '" + v + "'; see --help");
    g_set.only = v;
  });
  store::cli::Failure failure;
  std::string error;
  if (!store::cli::Parse(app, argc, argv, &failure)) {
    switch (failure.kind) {
      case store::cli::Failure::Kind::kNeedsValue:
        error = "store-bench: " + failure.option + " needs a value";
        break;
      case store::cli::Failure::Kind::kTakesNoValue:
        error = "store-bench: " + failure.option + " takes no value; see --help";
        break;
      case store::cli::Failure::Kind::kOther:
        error = failure.message;
        break;
    }
  } else if (help) {
    Usage(stdout);
    return 0;
  } else if (auto rest = app.remaining(); !rest.empty()) {
    error = "store-bench: unknown argument '" + rest[0] + "'; see --help";
  } else {
    return -1;
  }
  fprintf(stderr, "%s\n", error.c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (int rc = ParseArgs(argc, argv); rc >= 0) return rc;
  if (g_set.quick) {
    g_set.rounds = 3;
    g_set.round_s = 0.05;
    g_set.large_per_round = 1;
    g_set.spill_rounds = 1;
    g_set.spill_bytes = 256ull << 20;
  }

  double start = Now();
  StartEcho();

  struct sigaction sa{};
  sa.sa_handler = OnSignal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);

  // A prefix unique to this run: "sb", the pid and a nonce from the clock.
  {
    timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint32_t pid = static_cast<uint32_t>(getpid());
    uint64_t nonce = static_cast<uint64_t>(ts.tv_sec) * 1000000007ull +
                     static_cast<uint64_t>(ts.tv_nsec);
    g_prefix[0] = 's';
    g_prefix[1] = 'b';
    memcpy(g_prefix + 2, &pid, 4);
    memcpy(g_prefix + 6, &nonce, 6);
  }

  store_connect_options copts = STORE_CONNECT_OPTIONS_INIT;
  copts.client_name = "store-bench";
  store_client* client = nullptr;
  Check(store_client_connect(&client, g_set.socket, &copts), "store_client_connect");
  g_client = client;

  store_stats st = STORE_STATS_INIT;
  Check(store_stats_get(g_client, &st), "store_stats_get");
  uint64_t creates_before = st.total_creates;
  if (Wanted("large_put")) PrepareIdleMemory(3);
  Machine m = GetMachine();

  if (!g_set.json) {
    printf("store-bench %s   %s mode, median of %d rounds (min and max in parentheses)",
           store_version_string(), g_set.quick ? "quick" : "full", g_set.rounds);
    if (Wanted("spill") && !g_set.spill_dir.empty()) {
      printf("; spill figures: %d round%s", g_set.spill_rounds, g_set.spill_rounds == 1 ? "" : "s");
    }
    printf("\n");
    printf("machine: nproc %d, kernel %s, cpu %s, transparent_hugepage %s\n", m.nproc,
           m.kernel.c_str(), m.cpu.empty() ? "?" : m.cpu.c_str(),
           m.thp.empty() ? "?" : m.thp.c_str());
    printf("store:   socket %s, server pid %d, capacity %.1f MiB, used %.1f MiB, %llu objects, "
           "%llu creates before this run\n",
           g_set.socket ? g_set.socket : "(default)", st.server_pid,
           static_cast<double>(st.capacity_bytes) / (1 << 20),
           static_cast<double>(st.used_bytes) / (1 << 20),
           static_cast<unsigned long long>(st.object_count),
           static_cast<unsigned long long>(creates_before));
    printf("ids:     prefix %s\n\n", PrefixHex().c_str());
    fflush(stdout);
  }

  uint64_t free_bytes = st.capacity_bytes > st.used_bytes ? st.capacity_bytes - st.used_bytes : 0;
  bool small_fits = free_bytes >= kSmallNeed;
  auto SkipSmall = [&](const char* name) {
    Result r;
    r.name = name;
    r.skipped = true;
    r.reason = "needs " + std::to_string(kSmallNeed >> 20) + " MiB of free store memory; " +
               std::to_string(free_bytes >> 20) + " MiB free";
    Add(std::move(r));
  };
  if (Wanted("small_put")) small_fits ? SmallPut() : SkipSmall("small_put");
  if (Wanted("small_write")) small_fits ? SmallWrite() : SkipSmall("small_write");
  if (Wanted("small_get")) small_fits ? SmallGet() : SkipSmall("small_get");
  if (Wanted("idle_put")) small_fits ? IdlePut() : SkipSmall("idle_put");
  if (Wanted("batch_get")) small_fits ? BatchGet() : SkipSmall("batch_get");
  if (Wanted("batch_put")) small_fits ? BatchPut() : SkipSmall("batch_put");
  if (Wanted("clients8")) small_fits ? ManyClients() : SkipSmall("clients8");
  if (Wanted("large_put") || Wanted("large_put_window") || Wanted("large_get")) {
    store_stats now = STORE_STATS_INIT;
    Check(store_stats_get(g_client, &now), "store_stats_get");
    uint8_t* src = TouchedBuffer(kLargeSize, 0);
    FillPattern(src, kLargeSize);
    uint8_t* dst = TouchedBuffer(kLargeSize, 1);
    if (Wanted("large_put")) LargePut(src, dst, now, creates_before);
    if (Wanted("large_put_window")) LargePutWindow(src, dst, now);
    if (Wanted("large_get")) LargeGet(src, dst, now);
    munmap(src, kLargeSize);
    munmap(dst, kLargeSize);
  }
  if (Wanted("spill")) {
    store_stats now = Stats();
    SpillRestore(now);
    if (now.spill_enabled && now.capacity_bytes >= (256ull << 20)) SpillChurn();
  }
  if (Wanted("table")) TableFigures();
  if (Wanted("fill")) {
    FillFigure("fill_1m_64m", 1ull << 20, 64ull << 20);
    FillFigure("fill_16m_256m", 16ull << 20, 256ull << 20);
    FillFigure("fill_64k_4m", 64ull << 10, 4ull << 20);
  }

  // Every object of the run must be gone: the figures deleted theirs; check the store agrees.
  long left = DeleteAllOfRun(false);
  if (left != 0) {
    fprintf(stderr, "store-bench: %ld objects with id prefix %s are left in the store\n", left,
            PrefixHex().c_str());
    FailExit();
  }
  double elapsed = Now() - start;
  if (g_set.json) {
    PrintJson(m, st, creates_before, elapsed, left);
  } else {
    printf("\ncleanup: %llu objects created, %llu deleted, 0 left; elapsed %.1f s\n",
           static_cast<unsigned long long>(g_created),
           static_cast<unsigned long long>(g_deleted), elapsed);
  }
  store_client_free(g_client);
  g_client = nullptr;
  CloseEcho();
  return 0;
}
