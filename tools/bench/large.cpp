// large.cpp - the 64 MiB figures: large_put_first, large_put_new_client, large_put,
// large_put_window and large_get, each against memcpy (limits.cpp).
//
// Owns: nothing beyond the objects and clients a figure makes, gone before it returns.
// Called by: Main() in tools/store_bench.cpp, with the source and destination buffers it made.
// Threads: one.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include <algorithm>
#include <string>
#include <vector>

#include "bench.h"

namespace store::bench {

// ---- 64 MiB objects ------------------------------------------------------------------------

namespace {

long MinorFaults() {
  struct rusage ru;
  if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
  return ru.ru_minflt;
}

// create + memcpy + seal of one 64 MiB object, timed; the delete after it is not. Seconds.
// *faults (may be NULL) receives the minor page faults this process took meanwhile.
// keep: not NULL = the object is not deleted, its id goes there.
double LargePutOnce(Run& run, const uint8_t* src, long* faults = nullptr,
                    store_client* client = nullptr, store_object_id* keep = nullptr) {
  if (!client) client = run.client;
  store_object_id id = MakeId(run, run.next_id++);
  long f0 = MinorFaults();
  double t0 = Now();
  store_writer* w = nullptr;
  Check(run, store_create(client, &w, &id, kLargeSize, nullptr), "store_create of 64 MiB");
  void* p = store_writer_data(w);
  if (!p) {
    store_writer_abort(w);
    Die(run, "store_writer_data returned NULL");
  }
  memcpy(p, src, kLargeSize);
  Clobber(p);
  Check(run, store_writer_seal(w), "store_writer_seal of 64 MiB");
  double t = Now() - t0;
  if (faults) *faults = MinorFaults() - f0;
  run.created++;
  if (keep) {
    *keep = id;
  } else {
    Delete(run, id);
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

}  // namespace

void LargePut(Run& run, uint8_t* src, uint8_t* dst, const store_stats& st,
              uint64_t creates_before) {
  Result first{"large_put_first",
               "the run's first 64 MiB store_create + memcpy into store_writer_data + seal",
               {}, {}, false, "", "", {}};
  Result steady{"large_put", "64 MiB store_create + memcpy + seal, repeated (create/delete)",
                {}, {}, false, "", "", {}};
  if (!LargeFits(&first, st)) {
    FreeIdleMemory(run);
    steady.skipped = true;
    steady.reason = first.reason;
    Add(run, std::move(first));
    Add(run, std::move(steady));
    return;
  }
  for (Result* r : {&first, &steady}) {
    r->figure = Series{r->name, "GB/s", {}};
    r->limits.push_back(Series{"memcpy_touched", "GB/s", {}});
  }
  first.limits.push_back(Series{"memcpy_fresh", "GB/s", {}});
  first.limits.push_back(Series{"memcpy_mapped", "GB/s", {}});
  if (run.idle.p) first.limits.push_back(Series{"memcpy_idle", "GB/s", {}});
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
    first.limits[1].v.push_back(static_cast<double>(kLargeSize) / MemcpyFresh(run, src) / kGB);
    first.limits[2].v.push_back(static_cast<double>(kLargeSize) / MemcpyMapped(run, src) / kGB);
  }
  const double idle_s = run.idle.p ? Now() - run.idle.written_at : 0;
  for (int k = 0; k < firsts; k++) {
    first.limits[0].v.push_back(static_cast<double>(kLargeSize) / MemcpyTouched(dst, src) / kGB);
    if (run.idle.p && k < run.idle.count) {
      first.limits[3].v.push_back(static_cast<double>(kLargeSize) / MemcpyIdle(run, src, k) / kGB);
    }
    long f = 0;
    store_object_id id{};
    first.figure.v.push_back(static_cast<double>(kLargeSize) /
                             LargePutOnce(run, src, &f, nullptr, &id) / kGB);
    kept.push_back(id);
    first_faults += f;
  }
  for (const store_object_id& id : kept) Delete(run, id);
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
  if (run.idle.p) {
    char idle[200];
    snprintf(idle, sizeof idle,
             "; memcpy_idle: into private memory on %s pages written %.0f s before, when the "
             "run started",
             run.idle.pages.c_str(), idle_s);
    first.note += idle;
  } else if (!run.idle.missing.empty()) {
    first.note += "; no memcpy_idle: " + run.idle.missing;
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
  for (int round = 0; round < run.set.rounds; round++) {
    fresh.limits[1].v.push_back(static_cast<double>(kLargeSize) / MemcpyMapped(run, src) / kGB);
    fresh.limits[0].v.push_back(static_cast<double>(kLargeSize) / MemcpyTouched(dst, src) / kGB);
    store_connect_options co = STORE_CONNECT_OPTIONS_INIT;
    co.client_name = "store-bench-fresh";
    store_client* c = nullptr;
    double c0 = Now();
    Check(run, store_client_connect(&c, run.set.Socket(), &co), "store_client_connect");
    connect_ms.v.push_back((Now() - c0) * 1e3);
    fresh.figure.v.push_back(static_cast<double>(kLargeSize) / LargePutOnce(run, src, nullptr, c) /
                             kGB);
    store_client_free(c);
    CheckStop(run);
  }
  fresh.also.push_back(connect_ms);
  fresh.note = std::string("population of the region: ") + Population();

  for (int round = 0; round < run.set.rounds; round++) {
    double touched = 0, put = 0;
    // The limit first, then the puts back to back.
    for (int k = 0; k < run.set.large_per_round; k++) touched += MemcpyTouched(dst, src);
    for (int k = 0; k < run.set.large_per_round; k++) {
      long f = 0;
      put += LargePutOnce(run, src, &f);
      steady_faults += f;
      CheckStop(run);
    }
    double bytes = static_cast<double>(kLargeSize) * run.set.large_per_round;
    steady.limits[0].v.push_back(bytes / touched / kGB);
    steady.figure.v.push_back(bytes / put / kGB);
  }
  steady.note = std::to_string(steady_faults / (run.set.rounds * run.set.large_per_round)) +
                " minor page faults per put in this process on average";
  FreeLimitMaps(run);
  FreeIdleMemory(run);
  Add(run, std::move(first));
  Add(run, std::move(fresh));
  Add(run, std::move(steady));
}

// The steady 64 MiB put by a client with the strict write window (STORE_CLIENT_WRITE_WINDOW=1:
// each put also makes the object's pages writable at the create and read-only at the seal),
// beside the same put by the default client in the same rounds: per round the limit, then the
// default puts, then the window's, back to back. The window client's first put (which maps its
// pages) is not counted. Skipped where the library refuses the window (a store on huge pages).
void LargePutWindow(Run& run, uint8_t* src, uint8_t* dst, const store_stats& st) {
  Result r{"large_put_window",
           "64 MiB store_create + memcpy + seal, repeated (create/delete), by a client with the "
           "write window (STORE_CLIENT_WRITE_WINDOW=1)",
           {}, {}, false, "", "", {}};
  if (!LargeFits(&r, st)) {
    Add(run, std::move(r));
    return;
  }
  const char* before = getenv("STORE_CLIENT_WRITE_WINDOW");
  const std::string saved = before ? before : "";
  setenv("STORE_CLIENT_WRITE_WINDOW", "1", 1);
  store_connect_options co = STORE_CONNECT_OPTIONS_INIT;
  co.client_name = "store-bench-window";
  store_client* c = nullptr;
  const int rc = store_client_connect(&c, run.set.Socket(), &co);
  if (before) {
    setenv("STORE_CLIENT_WRITE_WINDOW", saved.c_str(), 1);
  } else {
    unsetenv("STORE_CLIENT_WRITE_WINDOW");
  }
  if (rc == STORE_ENOTSUP) {
    r.skipped = true;
    r.reason = store_last_error_message();
    Add(run, std::move(r));
    return;
  }
  Check(run, rc, "store_client_connect with STORE_CLIENT_WRITE_WINDOW=1");
  r.figure = Series{r.name, "GB/s", {}};
  r.limits.push_back(Series{"memcpy_touched", "GB/s", {}});
  r.also.push_back(Series{"large_put (the default client, same rounds)", "GB/s", {}});
  long faults = 0;
  for (int round = -1; round < run.set.rounds; round++) {  // round -1 warms up, not counted
    double touched = 0, put = 0, window = 0;
    for (int k = 0; k < run.set.large_per_round; k++) touched += MemcpyTouched(dst, src);
    for (int k = 0; k < run.set.large_per_round; k++) put += LargePutOnce(run, src);
    for (int k = 0; k < run.set.large_per_round; k++) {
      long f = 0;
      window += LargePutOnce(run, src, &f, c);
      if (round >= 0) faults += f;
      CheckStop(run);
    }
    if (round < 0) continue;
    const double bytes = static_cast<double>(kLargeSize) * run.set.large_per_round;
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
           faults / (run.set.rounds * run.set.large_per_round));
  r.note = note;
  Add(run, std::move(r));
}

void LargeGet(Run& run, uint8_t* src, uint8_t* dst, const store_stats& st) {
  Result r{"large_get", "64 MiB store_open_reader + memcpy out of store_reader_data + close",
           {}, {}, false, "", "", {}};
  if (!LargeFits(&r, st)) {
    Add(run, std::move(r));
    return;
  }
  r.figure = Series{"large_get", "GB/s", {}};
  r.limits.push_back(Series{"memcpy_touched", "GB/s", {}});

  store_object_id id = MakeId(run, run.next_id++);
  {
    store_writer* w = nullptr;
    Check(run, store_create(run.client, &w, &id, kLargeSize, nullptr), "store_create of 64 MiB");
    void* p = store_writer_data(w);
    if (!p) {
      store_writer_abort(w);
      Die(run, "store_writer_data returned NULL");
    }
    memcpy(p, src, kLargeSize);
    Check(run, store_writer_seal(w), "store_writer_seal of 64 MiB");
    run.created++;
  }
  bool verified = false;
  for (int round = -1; round < run.set.rounds; round++) {  // round -1 warms up, not counted
    double touched = 0, get = 0;
    for (int k = 0; k < run.set.large_per_round; k++) {
      touched += MemcpyTouched(dst, src);
      memset(dst, 0, 4096);
      double t0 = Now();
      store_reader* rd = nullptr;
      Check(run, store_open_reader(run.client, &rd, &id, 0), "store_open_reader of 64 MiB");
      const void* p = store_reader_data(rd);
      if (!p || store_reader_size(rd) != kLargeSize) {
        store_reader_close(rd);
        Die(run, "store_reader_data returned NULL or the wrong size");
      }
      memcpy(dst, p, kLargeSize);
      Clobber(dst);
      store_reader_close(rd);
      get += Now() - t0;
      if (!verified) {
        if (memcmp(dst, src, kLargeSize) != 0) Die(run, "the 64 MiB object read back differs");
        verified = true;
      }
      CheckStop(run);
    }
    if (round >= 0) {
      double bytes = static_cast<double>(kLargeSize) * run.set.large_per_round;
      r.limits[0].v.push_back(bytes / touched / kGB);
      r.figure.v.push_back(bytes / get / kGB);
    }
  }
  Delete(run, id);
  Add(run, std::move(r));
}

}  // namespace store::bench
