// clients.cpp - clients8_put and clients8_get: small operations by 8 processes at once, each
// with its own connection, against the same by one process.
//
// Owns: the client processes of a run (forked, waited for before MultiRun returns).
// Called by: Main() in tools/store_bench.cpp.
// Threads: one; each client process is a forked child that runs its loop and exits.
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <string>
#include <vector>

#include "bench.h"

namespace store::bench {

// ---- many clients --------------------------------------------------------------------------
//
// Aggregate small operations of kClients processes at once, against one process doing the
// same: each process has its own connection. A run forks the processes; each connects, says it
// is ready, waits for the start (the parent closes a pipe), runs store_put of new 64 B objects
// (or store_open_reader + close of a shared set) for the run's seconds, reports its count and
// time, then deletes its objects (untimed). The aggregate is the sum of the per-process rates.

namespace {

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
double MultiRun(Run& run, int procs, bool put, double seconds,
                const std::vector<store_object_id>& ids) {
  int ready[2], start[2];
  if (pipe2(ready, O_CLOEXEC) != 0 || pipe2(start, O_CLOEXEC) != 0) DieErrno(run, "pipe");
  std::vector<pid_t> pids;
  for (int p = 0; p < procs; p++) {
    uint64_t base = run.next_id;
    run.next_id += kMaxSmallPerRound;  // each child's ids are its own
    pid_t pid = fork();
    if (pid < 0) DieErrno(run, "fork");
    if (pid == 0) {
      signal(SIGINT, SIG_IGN);
      signal(SIGTERM, SIG_IGN);
      close(ready[0]);
      close(start[1]);
      close(run.echo_fd);  // the echo process ends when the parent closes its end
      ChildReport rep{0, 0, 0};
      store_connect_options co = STORE_CONNECT_OPTIONS_INIT;
      co.client_name = "store-bench-child";
      store_client* c = nullptr;
      if (store_client_connect(&c, run.set.Socket(), &co) != STORE_OK) rep.failed = 1;
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
            store_object_id id = MakeId(run, base + n);
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
          store_object_id id = MakeId(run, base + k);
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
  if (failed) Die(run, "a store call failed in a client process");
  CheckStop(run);
  return rate;
}

}  // namespace

void ManyClients(Run& run) {
  const double seconds = run.set.round_s;
  std::vector<store_object_id> ids;
  uint64_t first = PutSmallSet(run, &ids);
  for (bool put : {true, false}) {
    std::string name = put ? "clients8_put" : "clients8_get";
    Result r{name,
             std::string("aggregate ") + (put ? "store_put of 64 B objects" :
                                                "store_open_reader + close of 64 B objects") +
                 " by " + std::to_string(kClients) + " processes, each its own connection",
             {}, {}, false, "", "", {}};
    r.figure = Series{name, "ops/s", {}};
    r.limits.push_back(Series{put ? "clients1_put" : "clients1_get", "ops/s", {}});
    MultiRun(run, 1, put, seconds / 4, ids);  // warm-up
    for (int round = 0; round < run.set.rounds; round++) {
      r.limits[0].v.push_back(MultiRun(run, 1, put, seconds, ids));
      r.figure.v.push_back(MultiRun(run, kClients, put, seconds, ids));
    }
    r.note = "limit: the same operations by one process, measured the same way; " +
             std::to_string(std::max(1L, sysconf(_SC_NPROCESSORS_ONLN))) + " CPUs online";
    Add(run, std::move(r));
  }
  DeleteRange(run, first, first + ids.size());
}

}  // namespace store::bench
