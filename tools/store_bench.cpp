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
//   table_stats, table_page, table_page_middle, table_put, table_get  one request with
//                    1,000,000 objects in the table (100,000 with --quick), and with 10,000
//                    (table_page_middle: the page at the middle of the order, the deepest)
//                    vs the same round trip
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
//
// Owns: the Run (bench/bench.h), made here and passed to every section: the limits, the small
// operations, the many clients, the 64 MiB objects, spilling, the table and fill figures and the
// output each have a file in tools/bench/.
// Called by: the command line (this file holds the program's main, its options and its help).
// Threads: one; the echo process and the client processes are forked children.
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <cstdint>
#include <string>

#include "bench/bench.h"
#include "cli.h"
#include "storeclient.h"

namespace store::bench {

namespace {

const char* const kFigureNames[] = {"small_put", "small_write", "small_get", "idle_put",
                                    "batch_get", "batch_put",
                                    "clients8", "large_put", "large_put_window", "large_get",
                                    "spill", "table", "fill"};

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
          "(file_read_cold) and again from the page cache, into one 8 MiB buffer that stays\n"
          "in the processor's cache (file_read_warm) and into as much memory as the objects\n"
          "fill, each read to its own place as a restore puts it, the same memory each round\n"
          "(file_read_warm_spread), three of each per round. The server's own rates (bytes over the summed time of its spill or restore\n"
          "jobs) are shown as 'also'. Before the file is written or read, an unsynced write of\n"
          "the same size, deleted at once, warms the page cache (first touches of memory can\n"
          "be slower than the disk in a virtual machine).\n"
          "The limits' file is deleted after the reads; with the spill files it needs twice the\n"
          "bytes free on DIR's disk. Three rounds; one with --quick.\n"
          "Every object made is deleted before exit. Exit status: 0 ok, 1 failure, 2 usage.\n");
}

// Parses argv into *set. Returns -1 to go on, or the exit code: 0 after --help, 2 on bad usage
// (with one line on stderr).
int ParseArgs(int argc, char** argv, Settings* set) {
  bool help = false;
  CLI::App app("", "store-bench");
  store::cli::Configure(app);
  using store::cli::Reject;
  store::cli::Flag(app, "-h,--help", [&] { help = true; });
  store::cli::Flag(app, "--json", [set] { set->json = true; });
  store::cli::Flag(app, "--quick", [set] { set->quick = true; });
  store::cli::Value(app, "--socket", [set](const std::string& v) { set->socket = v; });
  store::cli::Value(app, "--spill-dir", [set](std::string v) {
    if (v.empty()) Reject("store-bench: --spill-dir needs a directory");
    while (v.size() > 1 && v.back() == '/') v.pop_back();
    set->spill_dir = v;
  });
  store::cli::Value(app, "--only", [set](std::string v) {
    if (v == "large_put_first") v = "large_put";
    if (v == "clients8_put" || v == "clients8_get") v = "clients8";
    if (v == "restore" || v == "restore_prefetch" || v == "restore_cold") v = "spill";
    bool known = false;
    for (const char* n : kFigureNames) known = known || v == n;
    if (!known) Reject("store-bench: unknown figure '" + v + "'; see --help");
    set->only = v;
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

int Main(int argc, char** argv) {
  Run run;
  if (int rc = ParseArgs(argc, argv, &run.set); rc >= 0) return rc;
  if (run.set.quick) {
    run.set.rounds = 3;
    run.set.round_s = 0.05;
    run.set.large_per_round = 1;
    run.set.spill_rounds = 1;
    run.set.spill_bytes = 256ull << 20;
  }

  double start = Now();
  StartEcho(run);
  InstallStopHandler();

  // A prefix unique to this run: "sb", the pid and a nonce from the clock.
  {
    timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint32_t pid = static_cast<uint32_t>(getpid());
    uint64_t nonce = static_cast<uint64_t>(ts.tv_sec) * 1000000007ull +
                     static_cast<uint64_t>(ts.tv_nsec);
    run.prefix[0] = 's';
    run.prefix[1] = 'b';
    memcpy(run.prefix + 2, &pid, 4);
    memcpy(run.prefix + 6, &nonce, 6);
  }

  store_connect_options copts = STORE_CONNECT_OPTIONS_INIT;
  copts.client_name = "store-bench";
  store_client* client = nullptr;
  Check(run, store_client_connect(&client, run.set.Socket(), &copts), "store_client_connect");
  run.client = client;

  store_stats st = STORE_STATS_INIT;
  Check(run, store_stats_get(run.client, &st), "store_stats_get");
  uint64_t creates_before = st.total_creates;
  if (Wanted(run, "large_put")) PrepareIdleMemory(run, 3);
  Machine m = GetMachine();

  if (!run.set.json) PrintHeader(run, m, st, creates_before);

  uint64_t free_bytes = st.capacity_bytes > st.used_bytes ? st.capacity_bytes - st.used_bytes : 0;
  bool small_fits = free_bytes >= kSmallNeed;
  auto SkipSmall = [&](const char* name) {
    Result r;
    r.name = name;
    r.skipped = true;
    r.reason = "needs " + std::to_string(kSmallNeed >> 20) + " MiB of free store memory; " +
               std::to_string(free_bytes >> 20) + " MiB free";
    Add(run, std::move(r));
  };
  if (Wanted(run, "small_put")) small_fits ? SmallPut(run) : SkipSmall("small_put");
  if (Wanted(run, "small_write")) small_fits ? SmallWrite(run) : SkipSmall("small_write");
  if (Wanted(run, "small_get")) small_fits ? SmallGet(run) : SkipSmall("small_get");
  if (Wanted(run, "idle_put")) small_fits ? IdlePut(run) : SkipSmall("idle_put");
  if (Wanted(run, "batch_get")) small_fits ? BatchGet(run) : SkipSmall("batch_get");
  if (Wanted(run, "batch_put")) small_fits ? BatchPut(run) : SkipSmall("batch_put");
  if (Wanted(run, "clients8")) small_fits ? ManyClients(run) : SkipSmall("clients8");
  if (Wanted(run, "large_put") || Wanted(run, "large_put_window") || Wanted(run, "large_get")) {
    store_stats now = STORE_STATS_INIT;
    Check(run, store_stats_get(run.client, &now), "store_stats_get");
    uint8_t* src = TouchedBuffer(run, kLargeSize, 0);
    FillPattern(src, kLargeSize);
    uint8_t* dst = TouchedBuffer(run, kLargeSize, 1);
    if (Wanted(run, "large_put")) LargePut(run, src, dst, now, creates_before);
    if (Wanted(run, "large_put_window")) LargePutWindow(run, src, dst, now);
    if (Wanted(run, "large_get")) LargeGet(run, src, dst, now);
    munmap(src, kLargeSize);
    munmap(dst, kLargeSize);
  }
  if (Wanted(run, "spill")) {
    store_stats now = Stats(run);
    SpillRestore(run, now);
    if (now.spill_enabled && now.capacity_bytes >= (256ull << 20)) SpillChurn(run);
  }
  if (Wanted(run, "table")) TableFigures(run);
  if (Wanted(run, "fill")) {
    FillFigure(run, "fill_1m_64m", 1ull << 20, 64ull << 20);
    FillFigure(run, "fill_16m_256m", 16ull << 20, 256ull << 20);
    FillFigure(run, "fill_64k_4m", 64ull << 10, 4ull << 20);
  }

  // Every object of the run must be gone: the figures deleted theirs; check the store agrees.
  long left = DeleteAllOfRun(run, false);
  if (left != 0) {
    fprintf(stderr, "store-bench: %ld objects with id prefix %s are left in the store\n", left,
            PrefixHex(run).c_str());
    FailExit(run);
  }
  double elapsed = Now() - start;
  if (run.set.json) {
    PrintJson(run, m, st, creates_before, elapsed, left);
  } else {
    printf("\ncleanup: %llu objects created, %llu deleted, 0 left; elapsed %.1f s\n",
           static_cast<unsigned long long>(run.created),
           static_cast<unsigned long long>(run.deleted), elapsed);
  }
  store_client_free(run.client);
  run.client = nullptr;
  CloseEcho(run);
  return 0;
}

}  // namespace

}  // namespace store::bench

int main(int argc, char** argv) { return store::bench::Main(argc, argv); }
