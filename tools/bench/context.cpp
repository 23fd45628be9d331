// context.cpp - the run's ids, its failure path, and the puts and deletes that keep its counts.
//
// Owns: the stop flag the signal handler sets (the one global of store-bench).
// Called by: every section of store-bench (bench.h) and Main() in tools/store_bench.cpp.
// Threads: one; the handler only writes the flag.
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>

#include "bench.h"
#include "hex.h"

namespace store::bench {

namespace {

// Set by SIGINT and SIGTERM, read by CheckStop. A global because a signal handler is given
// nothing but the signal number, so it cannot reach the Run; and volatile sig_atomic_t
// because that is the one kind of object a handler may write.
volatile sig_atomic_t g_stop = 0;

void OnSignal(int) { g_stop = 1; }

}  // namespace

store_object_id MakeId(const Run& run, uint64_t n) {
  store_object_id id;
  memcpy(id.bytes, run.prefix, sizeof run.prefix);
  memcpy(id.bytes + sizeof run.prefix, &n, sizeof n);
  return id;
}

bool HasPrefix(const Run& run, const store_object_id& id) {
  return memcmp(id.bytes, run.prefix, sizeof run.prefix) == 0;
}

std::string PrefixHex(const Run& run) {
  return store::hex::Encode(run.prefix, sizeof run.prefix);
}

// Deletes every sealed object carrying this run's prefix. Returns how many are left after
// it (-1 if the store could not be listed). quiet: print nothing on errors.
long DeleteAllOfRun(Run& run, bool quiet) {
  if (!run.client) return -1;
  store_object_info* infos = nullptr;
  size_t count = 0;
  int rc = store_list(run.client, &infos, sizeof *infos, &count);
  if (rc != STORE_OK) {
    if (!quiet) {
      fprintf(stderr, "store-bench: store_list failed: %s: %s\n", store_errstr(rc),
              store_last_error_message());
    }
    return -1;
  }
  long left = 0;
  for (size_t i = 0; i < count; i++) {
    if (!HasPrefix(run, infos[i].id)) continue;
    if (infos[i].state == STORE_STATE_CREATED) {
      left++;  // aborted by the server when this client disconnects
      continue;
    }
    rc = store_delete(run.client, &infos[i].id);
    if (rc == STORE_OK) {
      run.deleted++;
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

// Exits with status 1 after removing what the run left in the store.
[[noreturn]] void FailExit(Run& run) {
  if (run.client) {
    long left = DeleteAllOfRun(run, true);
    if (left > 0) {
      fprintf(stderr, "store-bench: %ld objects with id prefix %s could not be deleted\n", left,
              PrefixHex(run).c_str());
    } else if (left < 0) {
      fprintf(stderr,
              "store-bench: could not clean up: objects with id prefix %s may be left\n",
              PrefixHex(run).c_str());
    }
    store_client_free(run.client);
    run.client = nullptr;
  }
  if (!run.scratch.empty()) {
    unlink(run.scratch.c_str());
    unlink((run.scratch + ".warm").c_str());
  }
  CloseEcho(run);
  exit(1);
}

void Check(Run& run, int rc, const char* what) {
  if (rc == STORE_OK) return;
  // Print before cleaning up: the cleanup's calls replace the last error message.
  fprintf(stderr, "store-bench: %s failed: %s: %s\n", what, store_errstr(rc),
          store_last_error_message());
  FailExit(run);
}

[[noreturn]] void DieErrno(Run& run, const char* what) {
  fprintf(stderr, "store-bench: %s: %s\n", what, strerror(errno));
  FailExit(run);
}

[[noreturn]] void Die(Run& run, const char* what) {
  fprintf(stderr, "store-bench: %s\n", what);
  FailExit(run);
}

void InstallStopHandler() {
  struct sigaction sa{};
  sa.sa_handler = OnSignal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

void CheckStop(Run& run) {
  if (g_stop) Die(run, "interrupted");
}

// ---- helpers -------------------------------------------------------------------------------

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void Put(Run& run, const store_object_id& id, const void* data, uint64_t size,
         const char* what) {
  Check(run, store_put(run.client, &id, data, size, nullptr), what);
  run.created++;
}

void Delete(Run& run, const store_object_id& id) {
  Check(run, store_delete(run.client, &id), "store_delete");
  run.deleted++;
}

void DeleteRange(Run& run, uint64_t first, uint64_t end) {
  for (uint64_t n = first; n < end; n++) {
    store_object_id id = MakeId(run, n);
    Delete(run, id);
  }
}

// A private, page-aligned buffer, every page written (so no fault is left in it).
uint8_t* TouchedBuffer(Run& run, size_t size, uint8_t fill) {
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) DieErrno(run, "mmap of a private buffer");
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

store_stats Stats(Run& run) {
  store_stats s = STORE_STATS_INIT;
  Check(run, store_stats_get(run.client, &s), "store_stats_get");
  return s;
}

bool Wanted(const Run& run, const char* name) {
  return run.set.only.empty() || run.set.only == name;
}

}  // namespace store::bench
