// limits.cpp - the limits of this machine that store-bench measures each figure against, in
// the same run: a 64 B socket round trip to a forked echo process, memcpy of 64 MiB (into
// touched, fresh, freshly mapped shared and idle memory), and file IO in the spill directory.
//
// Owns: the echo process, the limits' mappings (run.limit_maps), the idle buffers (run.idle)
// and the limits' file (run.scratch); the Run holds them so the failure path can undo them.
// Called by: the sections (small_ops.cpp, large.cpp, spill.cpp, fill_table.cpp) and Main() in
// tools/store_bench.cpp (the echo process, the idle buffers).
// Threads: one. The echo process is a forked child that only echoes until its socket closes.
//
// The round trip limit is a forked echo process on a socketpair: send 64 B, get 64 B back.
// socket_rtt waits for the echo in a blocking recv; socket_rtt_poll polls for it first, for as
// long as the library polls for a reply (50 us by default), then blocks: the same wait.
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <string>
#include <vector>

#include "bench.h"

namespace store::bench {

// ---- the round trip limit ------------------------------------------------------------------

namespace {

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

}  // namespace

// Forks the echo process. Called before anything else, so the child holds no store connection.
void StartEcho(Run& run) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) DieErrno(run, "socketpair");
  pid_t pid = fork();
  if (pid < 0) DieErrno(run, "fork");
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
  run.echo_fd = sv[0];
  run.echo_pid = pid;
}

// Operations counted and the seconds they took.

void CloseEcho(Run& run) {
  if (run.echo_fd >= 0) {
    close(run.echo_fd);
    run.echo_fd = -1;
  }
  if (run.echo_pid > 0) {
    int st;
    while (waitpid(run.echo_pid, &st, 0) < 0 && errno == EINTR) {
    }
    run.echo_pid = -1;
  }
}

namespace {

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
bool RecvEcho(Run& run, char* buf, size_t n, bool poll) {
  size_t got = 0;
  if (poll && PollSeconds() > 0) {
    double until = Now() + PollSeconds();
    while (got < n) {
      ssize_t k = recv(run.echo_fd, buf + got, n - got, MSG_DONTWAIT);
      if (k > 0) {
        got += static_cast<size_t>(k);
        continue;
      }
      if (k == 0 || (errno != EAGAIN && errno != EINTR)) return false;
      if (Now() >= until) break;
    }
  }
  return got == n || RecvAll(run.echo_fd, buf + got, n - got) == 1;
}

}  // namespace

// One 64 B round trip to the echo process (buf holds kSmallSize bytes).
void EchoOnce(Run& run, char* buf, bool poll) {
  if (!SendAll(run.echo_fd, buf, kSmallSize)) DieErrno(run, "send to the echo process");
  if (!RecvEcho(run, buf, kSmallSize, poll)) DieErrno(run, "recv from the echo process");
}

// 64 B round trips to the echo process for about `seconds`; with poll, the reply is awaited by
// polling first (socket_rtt_poll), as the library awaits the store's replies.
void RttSlice(Run& run, double seconds, Tally* t, bool poll) {
  char buf[kSmallSize];
  memset(buf, 0x5a, sizeof buf);
  double t0 = Now(), t1;
  do {
    for (int k = 0; k < 16; k++) EchoOnce(run, buf, poll);
    t->ops += 16;
    CheckStop(run);
    t1 = Now();
  } while (t1 - t0 < seconds);
  t->seconds += t1 - t0;
}

Series RttSeries() { return Series{"socket_rtt", "ops/s", {}}; }
Series RttPollSeries() { return Series{"socket_rtt_poll", "ops/s", {}}; }

// ---- the memcpy limits ---------------------------------------------------------------------

// memcpy of kLargeSize between two touched private buffers; seconds.
double MemcpyTouched(uint8_t* dst, const uint8_t* src) {
  double t0 = Now();
  memcpy(dst, src, kLargeSize);
  Clobber(dst);
  return Now() - t0;
}

// memcpy of kLargeSize into a fresh anonymous mapping no one has touched; seconds.
double MemcpyFresh(Run& run, const uint8_t* src) {
  void* p = mmap(nullptr, kLargeSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) DieErrno(run, "mmap of a fresh buffer");
  run.limit_maps.push_back(p);
  double t0 = Now();
  memcpy(p, src, kLargeSize);
  Clobber(p);
  return Now() - t0;
}

void FreeLimitMaps(Run& run) {
  for (void* p : run.limit_maps) {
    if (munmap(p, kLargeSize) != 0) DieErrno(run, "munmap");
  }
  run.limit_maps.clear();
}

// memcpy of kLargeSize into shared memory whose pages exist and were written through another
// mapping, through a second mapping made and fully mapped (MAP_POPULATE) just before: what the
// first write to a range of the region costs a process that has mapped it but not yet touched
// those pages. Equals memcpy_touched on most machines; below it where a hypervisor builds its
// page tables lazily (shadow paging), where each process's first access to each page faults
// into the hypervisor however the mapping was made. Seconds.
double MemcpyMapped(Run& run, const uint8_t* src) {
  int fd = memfd_create("store-bench", MFD_CLOEXEC);
  if (fd < 0) DieErrno(run, "memfd_create");
  if (ftruncate(fd, static_cast<off_t>(kLargeSize)) != 0) DieErrno(run, "ftruncate of a memfd");
  void* a = mmap(nullptr, kLargeSize, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
  if (a == MAP_FAILED) DieErrno(run, "mmap of a memfd");
  memset(a, 1, kLargeSize);
  Clobber(a);
  void* b = mmap(nullptr, kLargeSize, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
  if (b == MAP_FAILED) DieErrno(run, "mmap of a memfd");
  close(fd);
  run.limit_maps.push_back(a);
  run.limit_maps.push_back(b);
  double t0 = Now();
  memcpy(b, src, kLargeSize);
  Clobber(b);
  return Now() - t0;
}

namespace {

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

}  // namespace

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

// Whether the library maps the region in the background after connecting, as it reads it.
const char* Population() {
  const char* pop = getenv("STORE_CLIENT_POPULATE");
  if (pop && strcmp(pop, "0") == 0) return "off (STORE_CLIENT_POPULATE=0)";
  if (pop && strcmp(pop, "all") == 0) return "all of it at connect (STORE_CLIENT_POPULATE=all)";
  return "objects as they are used";
}

// Fills run.idle (see IdleMemory in bench.h).
void PrepareIdleMemory(Run& run, int count) {
  const size_t len = static_cast<size_t>(count) * kLargeSize;
  const bool huge = RegionOnHugePages();
  auto keep = [&](void* p) {
    Clobber(p);
    run.idle.p = static_cast<uint8_t*>(p);
    run.idle.count = count;
    run.idle.written_at = Now();
    run.idle.pages = huge ? "2 MiB" : "4 KiB";
  };
  void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) DieErrno(run, "mmap of the idle buffers");
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
      run.idle.missing = "the region is on huge pages and this process could get none for it";
      return;
    }
  }
  memset(p, 1, len);
  keep(p);
}

// memcpy of kLargeSize into idle buffer k, which nothing touched since the run started; seconds.
double MemcpyIdle(Run& run, const uint8_t* src, int k) {
  uint8_t* p = run.idle.p + static_cast<size_t>(k) * kLargeSize;
  double t0 = Now();
  memcpy(p, src, kLargeSize);
  Clobber(p);
  return Now() - t0;
}

void FreeIdleMemory(Run& run) {
  if (run.idle.p) munmap(run.idle.p, static_cast<size_t>(run.idle.count) * kLargeSize);
  run.idle.p = nullptr;
}

// ---- file IO in the spill directory --------------------------------------------------------

void RemoveScratch(Run& run) {
  if (unlink(run.scratch.c_str()) != 0) DieErrno(run, ("unlink " + run.scratch).c_str());
}

// Writes `bytes` (a multiple of kSpillObject) from src into a new file at run.scratch, then
// fdatasync and close. Seconds from the open to the end of the fdatasync.
double WriteScratch(Run& run, const uint8_t* src, uint64_t bytes) {
  double t0 = Now();
  int fd = open(run.scratch.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
  if (fd < 0) DieErrno(run, ("create " + run.scratch).c_str());
  for (uint64_t done = 0; done < bytes;) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(kSpillObject, bytes - done));
    ssize_t k = write(fd, src, n);
    if (k < 0) {
      if (errno == EINTR) continue;
      DieErrno(run, ("write " + run.scratch).c_str());
    }
    done += static_cast<uint64_t>(k);
  }
  if (fdatasync(fd) != 0) DieErrno(run, ("fdatasync " + run.scratch).c_str());
  double t = Now() - t0;
  close(fd);
  CheckStop(run);
  return t;
}

// Writes `bytes` into a new file without syncing and deletes it: nothing reaches the disk, but
// that much memory has just been used by the page cache. In a virtual machine whose free
// memory goes back to the host, the first touch of memory can be slower than the disk; warmed
// first, the limits and the figures find warm pages alike. The file is run.scratch + ".warm".
void WarmPageCache(Run& run, const uint8_t* src, uint64_t bytes) {
  const std::string path = run.scratch + ".warm";
  int fd = open(path.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
  if (fd < 0) DieErrno(run, ("create " + path).c_str());
  for (uint64_t done = 0; done < bytes;) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(kSpillObject, bytes - done));
    ssize_t k = write(fd, src, n);
    if (k < 0) {
      if (errno == EINTR) continue;
      DieErrno(run, ("write " + path).c_str());
    }
    done += static_cast<uint64_t>(k);
  }
  close(fd);
  if (unlink(path.c_str()) != 0) DieErrno(run, ("unlink " + path).c_str());
  CheckStop(run);
}

// Reads the whole of run.scratch sequentially into buf (kSpillObject bytes). Seconds.
double ReadScratch(Run& run, uint8_t* buf, uint64_t expect, bool spread) {
  double t0 = Now();
  int fd = open(run.scratch.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) DieErrno(run, ("open " + run.scratch).c_str());
  uint64_t done = 0;
  for (;;) {
    char end;  // spread: past expect only the end of the file, or a byte to say it grew
    ssize_t k = !spread ? read(fd, buf, kSpillObject)
                : done < expect ? read(fd, buf + done, std::min<uint64_t>(kSpillObject, expect - done))
                                : read(fd, &end, 1);
    if (k < 0) {
      if (errno == EINTR) continue;
      DieErrno(run, ("read " + run.scratch).c_str());
    }
    if (k == 0) break;
    done += static_cast<uint64_t>(k);
  }
  Clobber(buf);
  double t = Now() - t0;
  close(fd);
  if (done != expect) Die(run, "the limit's file read back has the wrong size");
  CheckStop(run);
  return t;
}

// Drops a file's (clean) pages from the page cache.
void DropFromCache(Run& run, const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) DieErrno(run, ("open " + path).c_str());
  int rc = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  close(fd);
  if (rc != 0) {
    errno = rc;
    DieErrno(run, ("posix_fadvise DONTNEED " + path).c_str());
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

double ScratchResidentPercent(Run& run, uint64_t bytes) {
  uint64_t resident = 0, total = 0;
  CountResident(run.scratch, 0, bytes, &resident, &total);
  return total ? 100.0 * static_cast<double>(resident) / static_cast<double>(total) : -1;
}

}  // namespace store::bench
