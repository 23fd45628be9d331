// client.cpp - libstoreclient: the connection, the region mapping, readers and writers.
//
// A store_client owns a Conn: the socket, the mapping of the server's region and the state
// needed to match replies to requests. Readers and writers hold a reference to the Conn, so
// they stay safe to close after store_client_free (their other calls then give STORE_ECONN).
//
// Threads: several threads may call on one client. Sending is serialised by send_mu. Receiving
// is done by whichever waiting thread takes the "reader" role: it reads from the socket, hands
// every complete reply to the thread waiting for that seq, and wakes the others, so a get that
// waits for a seal never blocks the other threads' replies.
//
// Releases are one-way and batched: closing a reader queues its uid, and the queue goes out
// in front of the next request on the connection (in the same send), when it reaches
// kReleaseBatch uids, or within twice release_delay_ns (1 ms) of its first uid, whichever
// comes first. The last is the job of the connection's release thread, so an idle client holds
// nothing longer than that. A get + release then costs one round trip and no extra wake-up of
// the store.
//
// fork(): a connection belongs to the process that made it. In a forked child it is inert:
// calls give STORE_EMISUSE, and freeing it sends nothing and takes no lock (see Conn).
//
// Out of memory: a request's reply slot never outlives the request, whatever throws (Request,
// PutBatch: a reply that comes after its waiter gave up is dropped); the reader role is always
// given back (ReaderRole); received bytes are never lost to an exception, and when a reply
// cannot be kept the connection is closed with STORE_ENOMEM. Reporting a failure allocates
// nothing (Message).
//
// Nothing here prints, aborts or lets an exception out: every exported function catches.
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <unordered_map>
#include <vector>

#include "framing.h"
#include "gpu.h"
#include "hex.h"
#include "out_struct.h"
#include "sha1.h"
#include "storeclient.h"

namespace {

using store::proto::Body;
namespace proto = store::proto;

// ---- errors --------------------------------------------------------------------------------

// A message of the library, in room of its own: reporting a failure never allocates, so it
// works out of memory too (a longer message is cut).
struct Message {
  char text[1024] = "";
  bool empty() const { return text[0] == '\0'; }
  void Set(const char* s, size_t n) noexcept {
    n = std::min(n, sizeof text - 1);
    std::memmove(text, s, n);
    text[n] = '\0';
  }
  void Set(const char* s) noexcept { Set(s, std::strlen(s)); }
};

// The details of this thread's last failure (store_last_error_message).
thread_local Message t_message;

int Fail(int code, const char* fmt, ...) noexcept __attribute__((format(printf, 2, 3)));
int Fail(int code, const char* fmt, ...) noexcept {
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(t_message.text, sizeof t_message.text, fmt, ap);
  va_end(ap);
  return code;
}

int FailMsg(int code, const char* message) noexcept {
  t_message.Set(message);
  return code;
}

int FailMsg(int code, const std::string& message) noexcept {
  t_message.Set(message.data(), message.size());
  return code;
}

// Runs f, turning any exception into an error code (nothing crosses the C ABI).
template <class F>
int Guard(F&& f) noexcept {
  try {
    return f();
  } catch (const std::bad_alloc&) {
    return Fail(STORE_ENOMEM, "out of memory");
  } catch (const std::exception& e) {
    return Fail(STORE_EINVAL, "unexpected error: %s", e.what());
  } catch (...) {
    return Fail(STORE_EINVAL, "unexpected error");
  }
}

// ---- a received reply ----------------------------------------------------------------------

// One allocation: the 8-aligned copy of the message follows the struct.
struct Reply {
  size_t len = 0;
  std::vector<int> fds;
  const proto::Message* msg = nullptr;
  ~Reply() {
    for (int fd : fds) close(fd);
  }
  uint8_t* bytes() { return reinterpret_cast<uint8_t*>(this + 1); }
  static std::unique_ptr<Reply> Make(size_t len) {
    static_assert(sizeof(Reply) % 8 == 0);
    auto r = std::unique_ptr<Reply>(new (::operator new(sizeof(Reply) + len)) Reply);
    r->len = len;
    return r;
  }
  static void operator delete(void* p) { ::operator delete(p); }
};

// Where the reply to one request goes. Registered in the connection's table (Conn::waiting) by
// seq until the reader role delivers the reply into it (done) or its waiter takes it out; see
// Request, which makes sure no slot stays registered once its storage is gone.
struct Slot {
  bool done = false;
  bool registered = false;  // in Conn::waiting; guarded by Conn::mu
  Reply* reply = nullptr;   // owned by the slot until its waiter takes it
};

// The slot of every request whose waiter gave up before its reply came (an exception between
// sending and receiving): the reply is dropped when it arrives. Never written.
Slot g_discard;

// The slots of the requests waiting for a reply, by seq (never 0): an open-addressing table
// (linear probing, backward-shift deletion, at most half full), so registering a request
// allocates nothing.
class SlotMap {
 public:
  void Insert(uint64_t seq, Slot* slot) {
    if ((size_ + 1) * 2 > keys_.size()) Grow();
    size_t i = Home(seq);
    while (keys_[i] != 0) i = (i + 1) & mask_;
    keys_[i] = seq;
    slots_[i] = slot;
    size_++;
  }
  // The slot of seq; nullptr if it is not there.
  Slot* Find(uint64_t seq) const {
    if (keys_.empty()) return nullptr;
    for (size_t i = Home(seq); keys_[i] != 0; i = (i + 1) & mask_) {
      if (keys_[i] == seq) return slots_[i];
    }
    return nullptr;
  }
  // Points seq, which is there, at another slot. Allocates nothing.
  void Replace(uint64_t seq, Slot* slot) {
    for (size_t i = Home(seq); keys_[i] != 0; i = (i + 1) & mask_) {
      if (keys_[i] == seq) {
        slots_[i] = slot;
        return;
      }
    }
  }
  // Removes seq and returns its slot; nullptr if it is not there.
  Slot* Take(uint64_t seq) {
    if (keys_.empty()) return nullptr;
    size_t i = Home(seq);
    while (keys_[i] != seq) {
      if (keys_[i] == 0) return nullptr;
      i = (i + 1) & mask_;
    }
    Slot* slot = slots_[i];
    // Backward shift: move later entries of the run into the hole when their home allows.
    size_t hole = i;
    for (size_t j = (i + 1) & mask_; keys_[j] != 0; j = (j + 1) & mask_) {
      size_t home = Home(keys_[j]);
      if (((j - home) & mask_) >= ((j - hole) & mask_)) {
        keys_[hole] = keys_[j];
        slots_[hole] = slots_[j];
        hole = j;
      }
    }
    keys_[hole] = 0;
    slots_[hole] = nullptr;
    size_--;
    return slot;
  }

 private:
  size_t Home(uint64_t seq) const {
    return static_cast<size_t>((seq * 0x9E3779B97F4A7C15ull) >> 32) & mask_;
  }
  void Grow() {
    std::vector<uint64_t> keys(std::max<size_t>(16, keys_.size() * 2), 0);
    std::vector<Slot*> slots(keys.size(), nullptr);
    keys.swap(keys_);
    slots.swap(slots_);
    mask_ = keys_.size() - 1;
    size_ = 0;
    for (size_t i = 0; i < keys.size(); i++) {
      if (keys[i] != 0) Insert(keys[i], slots[i]);
    }
  }
  std::vector<uint64_t> keys_;
  std::vector<Slot*> slots_;
  size_t mask_ = 0;
  size_t size_ = 0;
};

// ---- the connection ------------------------------------------------------------------------

constexpr uint64_t kPopulateChunk = 2u << 20;
#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif

// Counts fork()s in this process's history (pthread_atfork, child side). A connection made
// before a fork belongs to the parent: in the child it is inert (see Conn::OwnedByThisProcess).
// The handler is registered when the library is loaded, before any connection can exist.
std::atomic<uint64_t> g_fork_generation{0};
[[maybe_unused]] const int g_atfork_registered = pthread_atfork(
    nullptr, nullptr, [] { g_fork_generation.fetch_add(1, std::memory_order_relaxed); });

// Queued releases go out once the oldest has waited this long, looked at once per this long
// (STORE_CLIENT_RELEASE_DELAY_US in the environment sets another delay; 0 sends every release
// at once), or when this many are queued.
constexpr int64_t kReleaseDelayNs = 1000000;
constexpr int64_t kMaxReleaseDelayNs = 1000000000;
constexpr size_t kReleaseBatch = 256;

// A thread waiting for a reply polls the socket for up to kSpinNs before it sleeps
// (STORE_CLIENT_SPIN_US in the environment sets another time; 0 never polls). On a machine
// whose idle processors are slow to wake (a virtual machine), waking a sleeping client costs
// more than the whole request: polling doubled small puts and gets on a 2-core VM. After
// kSpinMissesToPause polls in a row that saw no reply (a busy store, a get waiting for a
// seal) the next kSpinPause waits sleep at once.
constexpr int64_t kSpinNs = 50000;
constexpr int kSpinMissesToPause = 2;
constexpr int kSpinPause = 64;

int64_t MonoNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

// The condition variables of a connection, apart from it: see ~Conn.
struct CondVars {
  std::condition_variable cv;
  std::condition_variable release_cv;
};

// After fork() the child has a copy of every connection of its parent, with the parent's socket
// (the same socket, not a new one: whatever the child sent or shut down would act on the
// parent's session) and the parent's locks in whatever state the parent's other threads left
// them. Such a connection is inert in the child: every call on it, its readers and writers
// gives STORE_EMISUSE without touching a lock or the socket, and freeing it closes the child's
// descriptor and mapping only (see store_client_free).
struct Conn {
  // False in a child forked after the connection was made.
  bool OwnedByThisProcess() const {
    return fork_generation == g_fork_generation.load(std::memory_order_relaxed);
  }

  // fork()s seen when the connection was made, and the process that made it.
  const uint64_t fork_generation = g_fork_generation.load(std::memory_order_relaxed);
  const pid_t owner_pid = getpid();
  std::atomic<int> refs{1};
  int fd = -1;
  std::mutex send_mu;  // serialises sending; guards the release queue below
  std::mutex mu;       // guards what follows, up to the GPU chunks
  CondVars* const cvs = new CondVars;
  std::condition_variable& cv = cvs->cv;
  bool reading = false;
  bool broken = false;
  int broken_code = STORE_ECONN;
  Message broken_message;
  bool freed = false;  // store_client_free was called
  proto::FrameBuffer in{proto::kMaxReplyBytes};
  std::deque<int> fds;
  SlotMap waiting;
  std::atomic<uint64_t> next_seq{1};
  // The server's region, mapped twice: `base` read-only, where readers point (a stray write
  // through a reader's pointer faults and changes nothing), and `wbase` writable, where the
  // writers of objects larger than a staged one point (nullptr for a read-only client).
  uint64_t region_id = 0;
  uint8_t* base = nullptr;
  uint8_t* wbase = nullptr;
  uint64_t region_size = 0;
  uint64_t client_id = 0;
  bool read_only = false;
  // The strict write window (STORE_CLIENT_WRITE_WINDOW=1 at connect; see OpenWindow): wbase is
  // mapped read-only but for the pages of the objects this process is writing now. `windows`
  // holds those page ranges [begin, end) as offsets into the region, one per writer; once the
  // session ends (windows_shut) none is opened again. Guarded by window_mu, which is taken
  // after mu (MarkBrokenLocked), never before it.
  bool write_window = false;
  std::mutex window_mu;
  std::vector<std::pair<uint64_t, uint64_t>> windows;
  bool windows_shut = false;
  // Per 2 MiB chunk of the region and mapping: 1 once it is mapped in this process
  // (MapRange), else 0.
  std::unique_ptr<std::atomic<uint8_t>[]> populated;
  std::unique_ptr<std::atomic<uint8_t>[]> wpopulated;
  uint64_t chunks = 0;
  // GPU objects: what backs the server's device memory, and the chunks of it this connection
  // has imported: (device << 32 | chunk) -> (chunk uid, mapping). See gpu.h.
  storeclient::gpu::Backend gpu_backend = storeclient::gpu::Backend::kNone;
  std::mutex gpu_mu;
  std::unordered_map<uint64_t, std::pair<uint64_t, storeclient::gpu::Mapping>> gpu_chunks;

  // Releases not sent yet (see the top of this file). Guarded by send_mu.
  std::vector<uint64_t> pending_releases;
  int64_t pending_since_ns = 0;   // when the first of them was queued
  uint64_t releases_queued = 0;   // ever; the release thread's sign of activity
  uint64_t requests_sent = 0;     // ever (SendAll); each carried the queued releases
  bool release_sleeping = false;  // the release thread waits with no deadline
  bool stop_release = false;
  std::condition_variable& release_cv = cvs->release_cv;
  flatbuffers::FlatBufferBuilder release_fbb{256};
  std::vector<uint8_t> release_one;  // a release of one uid, to copy (BuildReleaseLocked)
  // The thread that sends releases that waited release_delay_ns (ReleaseMain); started with
  // the first release queued.
  pthread_t release_thread{};
  bool has_release_thread = false;
  int64_t release_delay_ns = 0;  // 0: every release goes out at once

  // Waiting for a reply (see ReceiveSome). Used by the thread in the reader role only.
  int64_t spin_ns = 0;
  int spin_misses = 0;  // polls in a row that ended without a reply
  int spin_skip = 0;    // waits left that sleep at once

  // The thread that maps the whole region into this process after connecting (see
  // StartPopulator); it stops early when stop_populate is set.
  pthread_t populator{};
  bool has_populator = false;
  std::atomic<bool> stop_populate{false};
  std::atomic<int> populating{0};  // calls of Populate for an object in progress

  // In a forked child: the parent's threads are not there to join, and the locks and condition
  // variables may hold the state of parent threads that were waiting (glibc's
  // pthread_cond_destroy waits for the waiters a condition variable counts: forever, in a
  // child). So the child takes no lock, gives the condition variables' memory back without
  // destroying them, and leaves the GPU chunks mapped (CUDA does not survive fork, and the
  // chunk table's lock may be held). What is closed and unmapped is the child's own copy.
  ~Conn() {
    const bool owned = OwnedByThisProcess();
    if (owned) {
      if (has_populator) {
        stop_populate.store(true, std::memory_order_relaxed);
        pthread_join(populator, nullptr);
      }
      bool join;
      {
        std::lock_guard<std::mutex> lk(send_mu);
        join = has_release_thread;
        stop_release = true;
        release_cv.notify_one();
      }
      if (join) pthread_join(release_thread, nullptr);
      for (auto& [key, chunk] : gpu_chunks) storeclient::gpu::Release(chunk.first);
      delete cvs;
    } else {
      ::operator delete(cvs);
    }
    if (base) munmap(base, region_size);
    if (wbase) munmap(wbase, region_size);
    if (fd >= 0) close(fd);
    for (int f : fds) close(f);
  }
};

void Ref(Conn* c) { c->refs.fetch_add(1, std::memory_order_relaxed); }
void Unref(Conn* c) {
  if (c->refs.fetch_sub(1, std::memory_order_acq_rel) == 1) delete c;
}

// ---- the strict write window ---------------------------------------------------------------
//
// With STORE_CLIENT_WRITE_WINDOW=1 at connect, a process can write to the store's memory only
// where it is writing an object now. The writable mapping (wbase) is mapped read-only;
// store_create makes the new object's pages writable (OpenWindow), and its seal or abort makes
// them read-only again (CloseWindow) before the request goes out, so from the seal on this
// process cannot change the object. A stray write anywhere else faults (SIGSEGV) and changes
// no stored byte. When the session ends (store_client_free, a lost connection: the store then
// aborts the unsealed objects and may hand their memory to others) every window is closed at
// once (ShutWindowsLocked), and a write through a writer's old pointer faults too.
//
// Outside the windows the mapping is read-only rather than inaccessible: the process can read
// all of the memory through `base` anyway, and the pages keep their page table entries, so a
// window opens without a page fault. Pages that come back from PROT_NONE cost a hypervisor with
// shadow page tables one fault each on their next write, which the process's own fault counts
// do not show (measured on a 2-core VM: open + 64 MiB memcpy + close took 130 ms that way, 30 ms
// with PROT_READ, against 5 ms for the memcpy alone).
//
// The store gives every object larger than a staged one pages of its own (a run of 4 KiB pages;
// store/memory/region.h), so a window rounded out to whole pages covers no other object; the
// create checks that the object starts on a page. Windows are kept in a list all the same, so
// that a page two windows share stays writable until both are closed. Huge pages (hugetlbfs)
// can be protected only 2 MiB at a time while objects there are placed 4 KiB apart: the window
// is refused on such a region (store_client_connect).
constexpr uint64_t kWindowPage = 4096;

// Whether STORE_CLIENT_WRITE_WINDOW=1 is in the environment.
bool WriteWindowWanted() {
  const char* env = getenv("STORE_CLIENT_WRITE_WINDOW");
  return env && std::strcmp(env, "1") == 0;
}

uint64_t RoundUpTo(uint64_t v, uint64_t unit) { return (v + unit - 1) / unit * unit; }

// Makes [begin, end) of wbase read-only, but for the pages the open windows cover. Returns false
// if an mprotect failed. REQUIRES: c->window_mu held.
bool ProtectUncoveredLocked(Conn* c, uint64_t begin, uint64_t end) noexcept {
  bool ok = true;
  uint64_t at = begin;
  while (at < end) {
    uint64_t covered_to = at, next = end;
    for (const auto& [b, e] : c->windows) {
      if (b <= at && at < e) {
        covered_to = std::max(covered_to, e);
      } else if (b > at) {
        next = std::min(next, b);
      }
    }
    if (covered_to > at) {
      at = std::min(end, covered_to);
      continue;
    }
    ok = mprotect(c->wbase + at, next - at, PROT_READ) == 0 && ok;
    at = next;
  }
  return ok;
}

// Makes [begin, end) of wbase (page-aligned offsets) writable for a writer of this process.
// Returns 0, -1 if the session has ended (no window opens then), or the errno of the failure.
int OpenWindow(Conn* c, uint64_t begin, uint64_t end) noexcept {
  std::lock_guard<std::mutex> lk(c->window_mu);
  if (c->windows_shut) return -1;
  try {
    c->windows.emplace_back(begin, end);
  } catch (const std::bad_alloc&) {
    return ENOMEM;
  }
  if (mprotect(c->wbase + begin, end - begin, PROT_READ | PROT_WRITE) != 0) {
    const int e = errno;
    c->windows.pop_back();
    ProtectUncoveredLocked(c, begin, end);  // whatever part of it did change
    return e;
  }
  return 0;
}

// Closes the window OpenWindow opened: its pages are read-only again (but for those another
// open window covers). Returns false if an mprotect failed, so that some of them may still be
// writable. A window the end of the session closed already is left alone.
bool CloseWindow(Conn* c, uint64_t begin, uint64_t end) noexcept {
  std::lock_guard<std::mutex> lk(c->window_mu);
  auto it = std::find(c->windows.begin(), c->windows.end(), std::make_pair(begin, end));
  if (it == c->windows.end()) return true;
  c->windows.erase(it);
  return ProtectUncoveredLocked(c, begin, end);
}

// The session ends: every window is closed and none opens again. REQUIRES: c->window_mu held.
void ShutWindowsLocked(Conn* c) noexcept {
  c->windows_shut = true;
  for (const auto& [b, e] : c->windows) mprotect(c->wbase + b, e - b, PROT_READ);
  c->windows.clear();
}

void ShutWindows(Conn* c) noexcept {
  if (!c->write_window) return;
  std::lock_guard<std::mutex> lk(c->window_mu);
  ShutWindowsLocked(c);
}
// The code of a connection the store closes with an error of this status: a refusal of this
// user (STORE_EPERM) or over one of its limits (STORE_ELIMIT, e.g. --max-clients) as it is,
// anything else as a lost connection.
int ClosingCode(int status) {
  return status == STORE_EPERM || status == STORE_ELIMIT ? status : STORE_ECONN;
}


// Ends the session: every call after this fails. The message is what, then detail.
// REQUIRES: c->mu held; c owned by this process.
void MarkBrokenLocked(Conn* c, int code, const char* what, const char* detail = "") noexcept {
  if (c->broken) return;
  c->broken = true;
  c->broken_code = code;
  std::snprintf(c->broken_message.text, sizeof c->broken_message.text, "%s%s", what, detail);
  // The store aborts this client's unsealed objects: their pages are no longer its to write.
  ShutWindows(c);
  shutdown(c->fd, SHUT_RDWR);
  c->cv.notify_all();
}

void MarkBroken(Conn* c, int code, const char* what, const char* detail = "") noexcept {
  std::lock_guard<std::mutex> lk(c->mu);
  MarkBrokenLocked(c, code, what, detail);
}

// The error of every call on a connection inherited from the parent process (see Conn).
int InheritedError(const Conn* c) noexcept {
  return Fail(STORE_EMISUSE,
              "the client belongs to the parent process (pid %d) that connected it: after "
              "fork() the child must connect its own client",
              static_cast<int>(c->owner_pid));
}

int BrokenError(Conn* c) noexcept {
  if (!c->OwnedByThisProcess()) return InheritedError(c);
  std::lock_guard<std::mutex> lk(c->mu);
  if (c->freed) return Fail(STORE_ECONN, "the client was freed");
  return FailMsg(STORE_ECONN, c->broken_message.empty() ? "the connection to the store is lost"
                                                        : c->broken_message.text);
}

// Whether requests may go out on c: not once it is broken or freed, nor in a forked child
// (where it takes no lock).
bool Usable(Conn* c) {
  if (!c->OwnedByThisProcess()) return false;
  std::lock_guard<std::mutex> lk(c->mu);
  return !c->broken && !c->freed;
}

void FinishMessage(flatbuffers::FlatBufferBuilder& fbb, uint64_t seq, Body type,
                   flatbuffers::Offset<void> body) {
  fbb.FinishSizePrefixed(proto::CreateMessage(fbb, seq, 0, 0, 0, type, body),
                         proto::MessageIdentifier());
}

// Sends the buffers whole. Returns STORE_OK or STORE_ECONN (the connection is then broken).
// REQUIRES: c->send_mu held.
int SendVecLocked(Conn* c, iovec* iov, int n) {
  while (n > 0) {
    msghdr mh{};
    mh.msg_iov = iov;
    mh.msg_iovlen = static_cast<size_t>(n);
    ssize_t k = sendmsg(c->fd, &mh, MSG_NOSIGNAL);
    if (k < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      c->pending_releases.clear();
      MarkBroken(c, STORE_ECONN, "the connection to the store is lost: ", std::strerror(e));
      return BrokenError(c);
    }
    size_t left = static_cast<size_t>(k);
    while (n > 0 && left >= iov->iov_len) {
      left -= iov->iov_len;
      iov++;
      n--;
    }
    if (n > 0) {
      iov->iov_base = static_cast<uint8_t*>(iov->iov_base) + left;
      iov->iov_len -= left;
    }
  }
  return STORE_OK;
}

// Builds one release message of up to kMaxIdsPerRequest queued uids, takes them off the queue
// and returns where the message is. A release of one uid (the common case: one reader closed
// between two requests) is a copy of the first one built, its seq and uid written in place.
// If it throws (out of memory), the queue is as it was.
// REQUIRES: c->send_mu held, the queue not empty.
iovec BuildReleaseLocked(Conn* c) {
  auto& q = c->pending_releases;
  const size_t n = std::min<size_t>(q.size(), proto::kMaxIdsPerRequest);
  const uint64_t seq = c->next_seq.fetch_add(1, std::memory_order_relaxed);
  if (n == 1 && !c->release_one.empty()) {
    auto* m = proto::GetMutableSizePrefixedMessage(c->release_one.data());
    m->mutate_seq(seq);
    static_cast<proto::ReleaseRequest*>(m->mutable_body())->mutable_uids()->Mutate(0, q[0]);
    q.clear();
    return iovec{c->release_one.data(), c->release_one.size()};
  }
  auto& fbb = c->release_fbb;
  fbb.Clear();
  auto v = fbb.CreateVector(q.data(), n);
  FinishMessage(fbb, seq, Body::ReleaseRequest, proto::CreateReleaseRequest(fbb, v).Union());
  // seq is never 0, so the field is in the message and can be written in place.
  if (n == 1) c->release_one.assign(fbb.GetBufferPointer(), fbb.GetBufferPointer() + fbb.GetSize());
  q.erase(q.begin(), q.begin() + static_cast<std::ptrdiff_t>(n));
  return iovec{fbb.GetBufferPointer(), fbb.GetSize()};
}

// Sends every queued release now. REQUIRES: c->send_mu held.
int FlushReleasesLocked(Conn* c) {
  while (!c->pending_releases.empty()) {
    iovec iov = BuildReleaseLocked(c);
    int rc = SendVecLocked(c, &iov, 1);
    if (rc != STORE_OK) return rc;
  }
  return STORE_OK;
}

// Sends a whole message, after the queued releases (in the same send when they fit one
// message). Returns STORE_OK or STORE_ECONN (the connection is then broken). If it throws (out
// of memory building the releases), the message was not sent.
int SendAll(Conn* c, const uint8_t* data, size_t len) {
  std::lock_guard<std::mutex> lk(c->send_mu);
  c->requests_sent++;
  iovec iov[2];
  int n = 0;
  if (!c->pending_releases.empty()) {
    if (c->pending_releases.size() > proto::kMaxIdsPerRequest) {
      int rc = FlushReleasesLocked(c);
      if (rc != STORE_OK) return rc;
    } else {
      iov[n++] = BuildReleaseLocked(c);
    }
  }
  iov[n++] = iovec{const_cast<uint8_t*>(data), len};
  return SendVecLocked(c, iov, n);
}

// Gives the release queue and builders room for 2 * kReleaseBatch uids, so that queueing and
// sending that many releases allocates nothing (closing readers works out of memory too).
void PrepareReleases(Conn* c) {
  std::lock_guard<std::mutex> lk(c->send_mu);
  auto& q = c->pending_releases;
  q.assign(2 * kReleaseBatch, 0);
  BuildReleaseLocked(c);
  q.assign(1, 0);
  BuildReleaseLocked(c);  // the copy of a release of one uid
  q.clear();
}

// Starts a thread of the library with every signal blocked (signals are the application's).
bool StartThread(pthread_t* t, void* (*main)(void*), Conn* c) {
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  bool ok = pthread_create(t, nullptr, main, c) == 0;
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  return ok;
}

void* ReleaseMain(void* arg);

// Releases objects: queues the uids (see the top of this file), or sends them at once when
// the queue would pass kReleaseBatch or no release thread can send them (a delay of 0, a
// thread that could not be made). REQUIRES: c owned by this process (Usable).
void QueueRelease(Conn* c, const uint64_t* uids, size_t n) {
  std::lock_guard<std::mutex> lk(c->send_mu);
  auto& q = c->pending_releases;
  bool defer = c->release_delay_ns > 0 && q.size() + n <= kReleaseBatch && !c->stop_release;
  if (defer && !c->has_release_thread) {
    c->has_release_thread = StartThread(&c->release_thread, ReleaseMain, c);
    if (!c->has_release_thread) c->release_delay_ns = 0;  // from now on, at once
    defer = c->has_release_thread;
  }
  if (q.empty()) c->pending_since_ns = MonoNs();
  q.insert(q.end(), uids, uids + n);
  c->releases_queued++;
  if (!defer) {
    FlushReleasesLocked(c);
    return;
  }
  if (c->release_sleeping) {
    c->release_sleeping = false;
    c->release_cv.notify_one();
  }
}

// The release thread: once per release_delay_ns it sends the queued releases if the oldest
// has waited that long, so none waits more than twice that. After kIdleChecks looks that found
// no new release it sleeps until the next is queued, so an idle client costs nothing. While
// the client keeps sending requests, which carry its releases anyway, it looks twice as
// seldom each time, down to once per kMaxBackoff delays: a wake-up of this thread costs the
// client more than its share of a CPU (measured on a 2-core VM: gets + releases in a loop ran
// 7% slower with a look per 1 ms than per 5 ms). The release queued last before the client
// goes quiet then waits up to (kMaxBackoff + 1) delays. Signals are blocked.
constexpr int kIdleChecks = 20;
constexpr int64_t kMaxBackoff = 8;

void* ReleaseMain(void* arg) {
  Conn* c = static_cast<Conn*>(arg);
  std::unique_lock<std::mutex> lk(c->send_mu);
  uint64_t seen = c->releases_queued;
  uint64_t sent = c->requests_sent;
  int64_t nap = c->release_delay_ns;
  int idle = 0;
  while (!c->stop_release) {
    if (!c->pending_releases.empty() &&
        MonoNs() - c->pending_since_ns >= c->release_delay_ns) {
      try {
        FlushReleasesLocked(c);
      } catch (...) {
        // Out of memory: the releases stay queued for the next look or request.
      }
    }
    if (c->releases_queued != seen) {
      seen = c->releases_queued;
      idle = 0;
    } else if (c->pending_releases.empty() && ++idle > kIdleChecks) {
      c->release_sleeping = true;
      c->release_cv.wait(lk, [c] { return !c->release_sleeping || c->stop_release; });
      c->release_sleeping = false;
      seen = c->releases_queued;
      sent = c->requests_sent;
      nap = c->release_delay_ns;
      idle = 0;
    }
    if (c->requests_sent != sent) {
      sent = c->requests_sent;
      nap = std::min(nap * 2, kMaxBackoff * c->release_delay_ns);
    } else {
      nap = c->release_delay_ns;
    }
    c->release_cv.wait_for(lk, std::chrono::nanoseconds(nap));
  }
  return nullptr;
}

// Receives once into c->in, queueing any descriptors. Called by the thread in the reader role,
// without c->mu. Returns false when the connection is lost or broke the rules: *code, *what and
// *detail (static strings) say how. Once bytes are received nothing can throw, so nothing
// received is lost to an exception.
bool ReceiveSome(Conn* c, bool spin, int* code, const char** what, const char** detail) {
  *detail = "";
  size_t avail = 0;
  uint8_t* p = c->in.Reserve(std::max<size_t>(c->in.Pending(), 64 * 1024), &avail);
  if (!p) {
    *code = STORE_ENOMEM;
    *what = "out of memory receiving a reply";
    return false;
  }
  iovec iov{p, avail};
  constexpr size_t kMaxRecvFds = 16;
  alignas(cmsghdr) char control[CMSG_SPACE(kMaxRecvFds * sizeof(int))];
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  mh.msg_control = control;
  mh.msg_controllen = sizeof control;
  ssize_t n = -1;
  bool block = true;  // no reply yet: wait for it
  if (spin && c->spin_ns > 0) {
    if (c->spin_skip > 0) {
      c->spin_skip--;
    } else {
      const int64_t until = MonoNs() + c->spin_ns;
      for (;;) {
        n = recvmsg(c->fd, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
        if (n >= 0 || (errno != EAGAIN && errno != EINTR)) break;
        if (MonoNs() >= until) break;
      }
      block = n < 0 && (errno == EAGAIN || errno == EINTR);
      if (!block) {
        c->spin_misses = 0;
      } else if (++c->spin_misses >= kSpinMissesToPause) {
        c->spin_misses = 0;
        c->spin_skip = kSpinPause;
      }
    }
  }
  if (block) {
    do {
      n = recvmsg(c->fd, &mh, MSG_CMSG_CLOEXEC);
    } while (n < 0 && errno == EINTR);
  }
  if (n < 0) {
    *code = STORE_ECONN;
    *what = "the connection to the store is lost: ";
    *detail = std::strerror(errno);
    return false;
  }
  c->in.Commit(static_cast<size_t>(n));
  int got[kMaxRecvFds];
  size_t ngot = 0;
  for (cmsghdr* cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
    if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
      size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < k; i++) {
        int f;
        std::memcpy(&f, CMSG_DATA(cm) + i * sizeof(int), sizeof f);
        if (ngot < kMaxRecvFds) {
          got[ngot++] = f;
        } else {
          close(f);
        }
      }
    }
  }
  bool queued = true;
  {
    std::lock_guard<std::mutex> lk(c->mu);
    size_t i = 0;
    try {
      for (; i < ngot; i++) c->fds.push_back(got[i]);
    } catch (...) {
      for (; i < ngot; i++) close(got[i]);
      queued = false;
    }
  }
  if (!queued) {
    *code = STORE_ENOMEM;
    *what = "out of memory receiving the store's descriptors (the connection is closed)";
    return false;
  }
  if (mh.msg_flags & MSG_CTRUNC) {
    *code = STORE_EPROTO;
    *what = "the store sent more descriptors than expected";
    return false;
  }
  if (n == 0) {
    *code = STORE_ECONN;
    *what = "the store closed the connection";
    return false;
  }
  return true;
}

// Hands every complete buffered message to its waiting slot; drops the replies of requests
// given up (g_discard). Returns false (and breaks the connection) on a bad message, or when a
// reply taken off the buffer cannot be kept (out of memory: its bytes are lost). Never throws.
// REQUIRES: c->mu held and the caller in the reader role.
bool DeliverLocked(Conn* c) noexcept {
  for (;;) {
    const uint8_t* data;
    size_t len;
    auto next = c->in.Pop(&data, &len);
    if (next == proto::FrameBuffer::Next::kNone) return true;
    if (next == proto::FrameBuffer::Next::kTooLarge) {
      MarkBrokenLocked(c, STORE_EPROTO, "the store sent a reply of an impossible size");
      return false;
    }
    // Verified where it is (valid until the next Pop), so that nothing is allocated for a
    // reply that is dropped or breaks the connection.
    const proto::Message* m = proto::VerifyMessage(data, len);
    if (!m) {
      MarkBrokenLocked(c, STORE_EPROTO, "the store sent a malformed reply");
      return false;
    }
    uint32_t nfds = m->num_fds();
    if (nfds > proto::kMaxFdsPerMessage || nfds > c->fds.size()) {
      MarkBrokenLocked(c, STORE_EPROTO, "a reply's descriptors did not arrive");
      return false;
    }
    Slot* slot = c->waiting.Find(m->seq());
    if (slot == &g_discard) {
      c->waiting.Take(m->seq());
      for (uint32_t i = 0; i < nfds; i++) {
        close(c->fds.front());
        c->fds.pop_front();
      }
      continue;
    }
    if (!slot) {
      // Unsolicited: the server reports why it is closing the connection.
      MarkBrokenLocked(c, ClosingCode(m->status()),
                       "the store closed the connection: ",
                       m->error() ? m->error()->c_str() : "unexpected reply");
      return false;
    }
    Reply* r = nullptr;
    try {
      auto made = Reply::Make(len);
      made->fds.reserve(nfds);
      r = made.release();
    } catch (...) {
      MarkBrokenLocked(c, STORE_ENOMEM,
                       "out of memory for a reply of the store (the connection is closed)");
      return false;
    }
    std::memcpy(r->bytes(), data, len);
    r->msg = proto::GetSizePrefixedMessage(r->bytes());
    for (uint32_t i = 0; i < nfds; i++) {
      r->fds.push_back(c->fds.front());  // reserved: does not allocate
      c->fds.pop_front();
    }
    c->waiting.Take(m->seq());
    slot->registered = false;
    slot->reply = r;
    slot->done = true;
  }
}

// The reader role of WaitReply: taken on construction, given back (waking the other waiters)
// however the scope ends, an exception included, so no thread waits for a reader that left.
class ReaderRole {
 public:
  ReaderRole(Conn* c, std::unique_lock<std::mutex>& lk) : c_(c), lk_(lk) { c_->reading = true; }
  ~ReaderRole() {
    if (!lk_.owns_lock()) lk_.lock();
    c_->reading = false;
    c_->cv.notify_all();
  }
  ReaderRole(const ReaderRole&) = delete;
  ReaderRole& operator=(const ReaderRole&) = delete;

 private:
  Conn* c_;
  std::unique_lock<std::mutex>& lk_;
};

// Waits for the reply registered under seq. On success *out owns it. A request in flight when
// the connection breaks gets the reason's code (STORE_ECONN when the store is gone or the client
// freed; STORE_ENOMEM, STORE_EPROTO, STORE_EPERM or STORE_ELIMIT), as the calls after it get STORE_ECONN. On
// return the slot is no longer registered.
int WaitReply(Conn* c, uint64_t seq, Slot* slot, std::unique_ptr<Reply>* out) {
  std::unique_lock<std::mutex> lk(c->mu);
  while (!slot->done) {
    if (c->broken) {
      if (slot->registered) {
        c->waiting.Take(seq);
        slot->registered = false;
      }
      return FailMsg(c->broken_code, c->broken_message.text);
    }
    if (c->reading) {
      c->cv.wait(lk);
      continue;
    }
    ReaderRole role(c, lk);
    // Messages already buffered by the previous reader come first.
    bool ok = DeliverLocked(c);
    if (ok && !slot->done) {
      lk.unlock();
      int code = STORE_ECONN;
      const char* what = "";
      const char* detail = "";
      ok = ReceiveSome(c, true, &code, &what, &detail);
      lk.lock();
      if (!ok) MarkBrokenLocked(c, code, what, detail);
      else DeliverLocked(c);
    }
  }
  out->reset(slot->reply);
  slot->reply = nullptr;
  return STORE_OK;
}

// Leaves nothing in c->waiting pointing at slot, and frees a reply it holds: a request sent
// whose reply has not come is pointed at g_discard (its reply is dropped when it comes; the
// table does not grow), one not sent is removed. Never throws. REQUIRES: c->mu not held.
void Forget(Conn* c, uint64_t seq, Slot* slot, bool sent) noexcept {
  std::lock_guard<std::mutex> lk(c->mu);
  if (slot->registered) {
    if (sent) {
      c->waiting.Replace(seq, &g_discard);
    } else {
      c->waiting.Take(seq);
    }
    slot->registered = false;
  }
  delete slot->reply;
  slot->reply = nullptr;
}

// One request waiting for its reply, its slot registered under seq for its lifetime: whatever
// ends that (a reply, an error, an exception), the table is left pointing at no dead slot.
class Request {
 public:
  // Throws (out of memory growing the table) with nothing registered.
  Request(Conn* c, uint64_t seq) : c_(c), seq_(seq) {
    std::lock_guard<std::mutex> lk(c->mu);
    c->waiting.Insert(seq, &slot_);
    slot_.registered = true;
  }
  ~Request() {
    if (!settled_) Forget(c_, seq_, &slot_, sent_);
  }
  Request(const Request&) = delete;
  Request& operator=(const Request&) = delete;
  // SendAll returned: the request went out, or the connection broke.
  void Sent() { sent_ = true; }
  // Waits as WaitReply does; once it returns, the slot is unregistered and empty.
  int Wait(std::unique_ptr<Reply>* out) {
    int rc = WaitReply(c_, seq_, &slot_, out);
    settled_ = true;
    return rc;
  }

 private:
  Conn* c_;
  uint64_t seq_;
  Slot slot_;
  bool sent_ = false;
  bool settled_ = false;
};

// Sends one request and waits for its reply; checks the reply's status and body type.
// The builder must hold a body not yet finished; Call finishes it with a fresh seq.
int CallFinished(Conn* c, uint64_t seq, const uint8_t* msg, size_t len, Body want,
                 std::unique_ptr<Reply>* out);

int Call(Conn* c, flatbuffers::FlatBufferBuilder& fbb, Body type, flatbuffers::Offset<void> body,
         Body want, std::unique_ptr<Reply>* out) {
  uint64_t seq = c->next_seq.fetch_add(1, std::memory_order_relaxed);
  FinishMessage(fbb, seq, type, body);
  return CallFinished(c, seq, fbb.GetBufferPointer(), fbb.GetSize(), want, out);
}

// As Call, for a request already finished with its seq.
int CallFinished(Conn* c, uint64_t seq, const uint8_t* msg, size_t len, Body want,
                 std::unique_ptr<Reply>* out) {
  if (!Usable(c)) return BrokenError(c);
  Request req(c, seq);
  int rc = SendAll(c, msg, len);
  req.Sent();
  if (rc != STORE_OK) return rc;
  rc = req.Wait(out);
  if (rc != STORE_OK) return rc;
  const proto::Message* m = (*out)->msg;
  if (m->status() != 0) {
    int code = m->status();
    if (code > 0 || code < STORE_ERRNO_MIN_) code = STORE_EPROTO;
    return FailMsg(code, m->error() ? m->error()->str() : store_errstr(code));
  }
  if (m->body_type() != want) {
    MarkBroken(c, STORE_EPROTO, "the store sent a reply of the wrong type");
    return BrokenError(c);
  }
  return STORE_OK;
}

// Sends a request that has no reply (release).
int SendOneWay(Conn* c, flatbuffers::FlatBufferBuilder& fbb, Body type,
               flatbuffers::Offset<void> body) {
  if (!Usable(c)) return BrokenError(c);
  FinishMessage(fbb, c->next_seq.fetch_add(1, std::memory_order_relaxed), type, body);
  return SendAll(c, fbb.GetBufferPointer(), fbb.GetSize());
}

proto::ObjectId ProtoId(const store_object_id* id) { return proto::ToProto(id->bytes); }

// A vector of n ids in fbb, for get, delete and prefetch requests.
flatbuffers::Offset<flatbuffers::Vector<const proto::ObjectId*>> IdVector(
    flatbuffers::FlatBufferBuilder& fbb, const store_object_id* ids, size_t n) {
  proto::ObjectId* slots = nullptr;
  auto vec = fbb.CreateUninitializedVectorOfStructs(n, &slots);
  for (size_t i = 0; i < n; i++) slots[i] = ProtoId(&ids[i]);
  return vec;
}

using storeclient::OutArray;

store_object_info FromProto(const proto::ObjectInfo& p) {
  store_object_info out{};
  std::memcpy(out.id.bytes, p.id().bytes()->Data(), STORE_OBJECT_ID_SIZE);
  out.data_size = p.data_size();
  out.metadata_size = p.metadata_size();
  out.state = p.state();
  out.level = p.level();
  out.device = p.device();
  out.importance = p.importance();
  out.pin_count = p.pin_count();
  out.reader_count = p.reader_count();
  out.create_time_ns = p.create_time_ns();
  out.last_access_ns = p.last_access_ns();
  out.creator_pid = p.creator_pid();
  out.lease_count = p.lease_count();
  return out;
}

// The check of the struct_size a caller set in an output struct of type T (named `what`) before
// the library writes it; STORE_EINVAL when the caller's struct is too small.
template <class T>
int CheckOutStruct(const T* out, const char* what) {
  if (const char* why = storeclient::OutStructSizeProblem<T>(out->struct_size, false)) {
    return Fail(STORE_EINVAL,
                "%s.struct_size %u %s (sizeof(%s) is %zu in this library, %zu at least)", what,
                out->struct_size, why, what, sizeof(T), storeclient::OutStructFirst<T>::kSize);
  }
  return STORE_OK;
}

// The start of every call that hands the caller an array of T (named `what`): clear the outputs,
// check the args, elem_size included.
template <class T>
int BeginList(store_client* client, T** out, size_t elem_size, size_t* count, const char* what) {
  if (out) *out = nullptr;
  if (count) *count = 0;
  if (!client || !out || !count) return Fail(STORE_EINVAL, "client, out or count is NULL");
  if (const char* why = storeclient::OutStructSizeProblem<T>(elem_size, true)) {
    return Fail(STORE_EINVAL, "elem_size %zu %s (sizeof(%s) is %zu in this library, %zu at least)",
                elem_size, why, what, sizeof(T), storeclient::OutStructFirst<T>::kSize);
  }
  return STORE_OK;
}

// Copies a reply's vector into a new C array for the caller (freed with store_free), its elements
// elem_size bytes apart: fill(i) converts entry i.
template <class T, class Vec, class Fill>
int CopyOut(const Vec* vec, T** out, size_t elem_size, size_t* count, const char* what,
            Fill fill) {
  if (vec->size() == 0) return STORE_OK;
  OutArray<T> arr(elem_size);
  if (!arr.Grow(vec->size())) {
    return Fail(STORE_ENOMEM, "out of memory for %u %s", vec->size(), what);
  }
  for (flatbuffers::uoffset_t i = 0; i < vec->size(); i++) arr.Put(fill(i));
  arr.Release(out, count);
  return STORE_OK;
}

int SeekImpl(uint64_t* pos, uint64_t size, int64_t offset, int whence, uint64_t* out) {
  int64_t origin;
  switch (whence) {
    case SEEK_SET: origin = 0; break;
    case SEEK_CUR: origin = static_cast<int64_t>(*pos); break;
    case SEEK_END: origin = static_cast<int64_t>(size); break;
    default: return Fail(STORE_EINVAL, "whence must be SEEK_SET, SEEK_CUR or SEEK_END");
  }
  __int128 target = static_cast<__int128>(origin) + offset;
  if (target < 0 || target > static_cast<__int128>(size)) {
    return Fail(STORE_EINVAL, "seek to %lld is outside the object (0..%llu)",
                static_cast<long long>(target), static_cast<unsigned long long>(size));
  }
  *pos = static_cast<uint64_t>(target);
  if (out) *out = *pos;
  return STORE_OK;
}

}  // namespace

// ---- public handles ------------------------------------------------------------------------

struct store_client {
  Conn* conn;
};

static_assert(STORE_STAGED_MAX <= proto::kInlinePutMax,
              "a staged object is sealed as an inline put");

struct store_writer {
  Conn* conn;
  store_object_id id;
  uint64_t uid;
  uint8_t* data;      // nullptr for a device object
  uint64_t size;
  uint64_t pos;
  int32_t device;     // -1, or the store's device number
  int32_t local_device;
  uint8_t* dptr;      // a device object's data (device pointer)
  // A staged writer (a small host object, see store_create): the store has no object yet
  // (uid 0); data is a private buffer the caller fills, and the seal sends it with these as one
  // inline put. Freed with the writer.
  bool staged = false;
  uint8_t* meta = nullptr;
  uint64_t meta_size = 0;
  int32_t importance = 0;
  int64_t timeout_ms = 0;
  uint32_t flags = 0;
  // Its write window (STORE_CLIENT_WRITE_WINDOW): the region's pages [win_begin, win_end) this
  // writer opened in wbase, closed by its seal or abort. Empty (0, 0) without one.
  uint64_t win_begin = 0;
  uint64_t win_end = 0;
};

struct store_reader {
  Conn* conn;
  store_object_id id;
  uint64_t uid;
  const uint8_t* data;  // nullptr for a device object
  uint64_t size;
  const uint8_t* metadata;
  uint64_t metadata_size;
  uint64_t pos;
  int32_t device;       // -1, or the store's device number
  int32_t local_device;
  const uint8_t* dptr;  // a device object's data (device pointer)
};

extern "C" {

// ---- errors and versions -------------------------------------------------------------------

const char* store_errstr(int code) {
  switch (code) {
    case STORE_OK: return "ok";
#define STORE_XX_STR_(name, value, text) \
    case STORE_##name: return text;
    STORE_ERRNO_MAP(STORE_XX_STR_)
#undef STORE_XX_STR_
    default: return "unknown error";
  }
}

const char* store_last_error_message(void) { return t_message.text; }

const char* store_version_string(void) { return STORE_VERSION_STRING; }

// ---- connecting ----------------------------------------------------------------------------

namespace {

// What of the region a process maps ahead of use (STORE_CLIENT_POPULATE in the environment at
// connect): by default only the objects it creates or opens, each when first used (1 MiB and
// larger in one call; smaller ones page by page as they are touched), so a process's resident
// memory is what it uses: memory monitors (Dask's, say) count mapped shared pages as the
// process's own. "all" also maps the whole read-only mapping in a thread of its own after
// connecting, chunk by chunk from the bottom of the region up (where the store places objects
// first), so that no later get takes a page fault; it costs page tables in this process (2 MiB
// per GiB of region) and CPU time after connecting (about 50 ms per GiB on a 2-core VM), at the
// lowest priority (nice 19), so eight processes connecting at once do not slow the store or each
// other (measured: aggregate small ops of 8 new clients 2.6x higher than at the normal
// priority). Not SCHED_IDLE: on a machine kept busy (by clients polling for replies, say) that
// never finished the mapping. "0" maps nothing ahead: every page faults in on first touch.
enum class Population { kUsed, kAll, kNone };
Population PopulationWanted() {
  const char* env = getenv("STORE_CLIENT_POPULATE");
  if (env && std::strcmp(env, "all") == 0) return Population::kAll;
  if (env && std::strcmp(env, "0") == 0) return Population::kNone;
  return Population::kUsed;
}

// write: the writable mapping (a writer's object), else the read-only one.
void Populate(Conn* c, uint64_t offset, uint64_t len, bool background = false,
              bool write = false);

void* PopulatorMain(void* arg) {
  Conn* c = static_cast<Conn*>(arg);
  // Per thread on Linux; if refused, it runs as it is.
  setpriority(PRIO_PROCESS, static_cast<id_t>(gettid()), 19);
  // From the bottom of the region up: the server's allocator hands out the low addresses
  // first, so they are the ones objects use first. Chunks already mapped (by a put or get that
  // got there first) are skipped. It steps aside while a put or get maps its object's pages:
  // the two at once are slower than one after the other.
  for (uint64_t i = 0; i < c->chunks; i++) {
    while (c->populating.load(std::memory_order_relaxed) > 0 &&
           !c->stop_populate.load(std::memory_order_relaxed)) {
      usleep(200);
    }
    if (c->stop_populate.load(std::memory_order_relaxed)) break;
    Populate(c, i * kPopulateChunk, kPopulateChunk, true);
  }
  return nullptr;
}

// Whether fd is a file on hugetlbfs (the store backs its memory with reserved huge pages).
bool HugetlbFs(int fd) {
  constexpr decltype(statfs::f_type) kHugetlbfsMagic = 0x958458f6;  // linux/magic.h
  struct statfs sf {};
  return fstatfs(fd, &sf) == 0 && sf.f_type == kHugetlbfsMagic;
}

// Reads a number of microseconds from the environment variable name into *ns, at most max_us.
void EnvMicros(const char* name, int64_t max_us, int64_t* ns) {
  const char* env = getenv(name);
  if (!env) return;
  char* end = nullptr;
  long long us = std::strtoll(env, &end, 10);
  if (end != env && *end == '\0' && us >= 0) *ns = std::min<int64_t>(us, max_us) * 1000;
}

// Sets up what the connection's threads need and starts the populator.
void StartThreads(Conn* c) {
  c->release_delay_ns = kReleaseDelayNs;
  EnvMicros("STORE_CLIENT_RELEASE_DELAY_US", kMaxReleaseDelayNs / 1000, &c->release_delay_ns);
  // Polling only pays when the store can run on another processor meanwhile.
  cpu_set_t cpus;
  c->spin_ns = sched_getaffinity(0, sizeof cpus, &cpus) == 0 && CPU_COUNT(&cpus) < 2 ? 0 : kSpinNs;
  EnvMicros("STORE_CLIENT_SPIN_US", 1000000, &c->spin_ns);
  if (!c->populated || PopulationWanted() != Population::kAll) return;
  // A hugetlbfs region was mapped whole at connect.
  if (c->populated[0].load(std::memory_order_relaxed) != 0) return;
  c->has_populator = StartThread(&c->populator, PopulatorMain, c);
}

// The error of a connect() to path that failed with errno e: says which case it is.
int ConnectError(const std::string& path, int e) {
  const size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "."
                          : slash == 0               ? "/"
                                                     : path.substr(0, slash);
  const char* p = path.c_str();
  const char* d = dir.c_str();
  const unsigned uid = static_cast<unsigned>(geteuid());
  constexpr const char* kCannot = "cannot connect to the store at";
  struct stat st {};
  switch (e) {
    case ENOENT:
      if (stat(d, &st) != 0 && errno == ENOENT) {
        return Fail(STORE_ECONN, "%s %s: the directory %s does not exist", kCannot, p, d);
      }
      return Fail(STORE_ECONN, "%s %s: nothing is listening (no such socket)", kCannot, p);
    case ENOTDIR:
      return Fail(STORE_ECONN, "%s %s: %s is not a directory", kCannot, p, d);
    case ECONNREFUSED:
      if (stat(p, &st) == 0 && !S_ISSOCK(st.st_mode)) {
        return Fail(STORE_ECONN, "%s %s: it is not a socket", kCannot, p);
      }
      return Fail(STORE_ECONN,
                  "%s %s: nothing is listening (the socket is left from a store that is gone)",
                  kCannot, p);
    case EACCES:
      if (faccessat(AT_FDCWD, d, X_OK, AT_EACCESS) != 0) {
        return Fail(STORE_EPERM,
                    "%s %s: permission denied (this user, uid %u, may not enter the directory "
                    "%s)", kCannot, p, uid, d);
      }
      return Fail(STORE_EPERM,
                  "%s %s: permission denied (this user, uid %u, may not write to the socket)",
                  kCannot, p, uid);
    case EAGAIN:
      return Fail(STORE_ECONN,
                  "%s %s: it has too many connections waiting to be accepted; try again",
                  kCannot, p);
    default:
      return Fail(STORE_ECONN, "%s %s: %s", kCannot, p, std::strerror(e));
  }
}

// A socket path in a directory others may write to (/tmp) can be taken by anyone: the server
// must run as this user or as root. STORE_EPERM otherwise, before anything is sent to it.
int CheckServerUser(int fd, const std::string& path) {
  ucred cred{};
  socklen_t len = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    return Fail(STORE_ECONN, "cannot connect to the store at %s: cannot read its credentials: %s",
                path.c_str(), std::strerror(errno));
  }
  if (cred.uid != geteuid() && cred.uid != 0) {
    return Fail(STORE_EPERM, "refusing the store at %s: it runs as uid %u, which is neither this "
                "user (uid %u) nor root; another user may have taken the socket path",
                path.c_str(), static_cast<unsigned>(cred.uid), static_cast<unsigned>(geteuid()));
  }
  return STORE_OK;
}

// The error of a handshake that failed with rc. A server that refuses the client (another
// user's) sends an error with seq 0 and closes: that error is what the caller gets, whether it
// was read as the reply or the server closed before the request went out (a failed send; what
// the server sent is then still in the socket).
int HandshakeError(Conn* c, const std::string& path, int rc) {
  if (rc != STORE_ECONN && rc != STORE_EPERM && rc != STORE_ELIMIT) return rc;
  {
    std::lock_guard<std::mutex> lk(c->mu);
    if (c->broken_code == STORE_EPERM || c->broken_code == STORE_ELIMIT) {
      return Fail(c->broken_code, "cannot connect to the store at %s: %s", path.c_str(),
                  c->broken_message.text);
    }
  }
  // Read what the server left (it has closed its end, so it is all there).
  for (;;) {
    size_t avail = 0;
    uint8_t* p = c->in.Reserve(64 * 1024, &avail);
    if (!p) break;
    ssize_t n = recv(c->fd, p, avail, MSG_DONTWAIT);
    if (n <= 0) break;
    c->in.Commit(static_cast<size_t>(n));
  }
  for (;;) {
    const uint8_t* data;
    size_t len;
    if (c->in.Pop(&data, &len) != proto::FrameBuffer::Next::kMessage) break;
    const proto::Message* m = proto::VerifyMessage(data, len);
    if (!m) break;
    if (m->seq() != 0 || m->status() == 0) continue;
    return Fail(ClosingCode(m->status()), "cannot connect to the store at %s: the store closed the connection: %s",
                path.c_str(), m->error() ? m->error()->c_str() : store_errstr(m->status()));
  }
  return rc;
}

}  // namespace

int store_client_connect(store_client** out, const char* socket_path,
                         const store_connect_options* opts) {
  return Guard([&]() -> int {
    if (!out) return Fail(STORE_EINVAL, "out is NULL");
    *out = nullptr;
    // Version 1 options end before read_only.
    if (opts && opts->version != STORE_CONNECT_OPTIONS_VERSION && opts->version != 1) {
      return Fail(STORE_EINVAL,
                  "store_connect_options.version is %u; this library knows 1 to %u",
                  opts->version, STORE_CONNECT_OPTIONS_VERSION);
    }
    const bool read_only = opts && opts->version >= 2 && opts->read_only != 0;
    std::string path = socket_path ? socket_path : proto::DefaultSocketPath();
    sockaddr_un addr{};
    if (path.empty() || path.size() >= sizeof addr.sun_path) {
      return Fail(STORE_EINVAL, "socket path '%s' is empty or too long", path.c_str());
    }
    std::string name;
    if (opts && opts->client_name) {
      name = opts->client_name;
    } else {
      extern char* program_invocation_short_name;
      name = program_invocation_short_name ? program_invocation_short_name : "";
    }
    if (name.size() > proto::kMaxClientName) name.resize(proto::kMaxClientName);

    auto conn = std::unique_ptr<Conn>(new Conn);
    conn->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (conn->fd < 0) return Fail(STORE_ECONN, "socket: %s", std::strerror(errno));
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path.c_str(), path.size());
    int rc;
    do {
      rc = connect(conn->fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    } while (rc != 0 && errno == EINTR);
    if (rc != 0) return ConnectError(path, errno);
    if (int prc = CheckServerUser(conn->fd, path); prc != STORE_OK) return prc;
    flatbuffers::FlatBufferBuilder fbb(256);
    auto n = fbb.CreateString(name);
    auto body = proto::CreateConnectRequest(fbb, proto::kProtocolVersion, n,
                                            static_cast<int32_t>(getpid()), read_only);
    std::unique_ptr<Reply> reply;
    rc = Call(conn.get(), fbb, Body::ConnectRequest, body.Union(), Body::ConnectReply, &reply);
    if (rc != STORE_OK) return HandshakeError(conn.get(), path, rc);
    auto* r = reply->msg->body_as_ConnectReply();
    if (reply->fds.size() != 1) return Fail(STORE_EPROTO, "the store sent no memory descriptor");
    uint64_t size = r->region()->size();
    // Huge pages (hugetlbfs) are mapped whole at once: 512 page table entries per GiB, about
    // 0.3-0.7 ms per GiB here, against a background thread racing the first puts.
    const Population population = PopulationWanted();
    const bool map_now = HugetlbFs(reply->fds[0]) && population != Population::kNone;
    // Read-only for readers; a read-only client was sent a descriptor that cannot be mapped
    // writable at all.
    void* base = mmap(nullptr, size, PROT_READ, MAP_SHARED | (map_now ? MAP_POPULATE : 0),
                      reply->fds[0], 0);
    if (base == MAP_FAILED) {
      return Fail(STORE_ENOMEM, "cannot map the store's %llu bytes of shared memory: %s",
                  static_cast<unsigned long long>(size), std::strerror(errno));
    }
    conn->base = static_cast<uint8_t*>(base);
    conn->region_size = size;
    const bool window = !read_only && WriteWindowWanted();
    if (window && HugetlbFs(reply->fds[0])) {
      return Fail(STORE_ENOTSUP,
                  "STORE_CLIENT_WRITE_WINDOW=1: the store at %s keeps its memory on huge pages "
                  "(hugetlbfs), which can be protected only 2 MiB at a time, and objects there "
                  "share them, so a write window cannot be kept to one object's pages; unset "
                  "STORE_CLIENT_WRITE_WINDOW or run the store with --no-hugepages",
                  path.c_str());
    }
    if (window && sysconf(_SC_PAGESIZE) != static_cast<long>(kWindowPage)) {
      return Fail(STORE_ENOTSUP,
                  "STORE_CLIENT_WRITE_WINDOW=1: this system's pages are %ld bytes, and the store "
                  "places objects %llu bytes apart, so a write window cannot be kept to one "
                  "object's pages; unset STORE_CLIENT_WRITE_WINDOW",
                  sysconf(_SC_PAGESIZE), static_cast<unsigned long long>(kWindowPage));
    }
    if (!read_only) {
      // Writers' pointers: mapped as writers need it (each writer's range when it is created);
      // with the write window read-only but for the objects being written (OpenWindow).
      void* wbase = mmap(nullptr, size, window ? PROT_READ : PROT_READ | PROT_WRITE,
                         MAP_SHARED | (map_now ? MAP_POPULATE : 0), reply->fds[0], 0);
      if (wbase == MAP_FAILED) {
        return Fail(STORE_ENOMEM, "cannot map the store's %llu bytes of shared memory: %s",
                    static_cast<unsigned long long>(size), std::strerror(errno));
      }
      conn->wbase = static_cast<uint8_t*>(wbase);
    }
    conn->read_only = read_only;
    conn->write_window = window;
    conn->region_id = r->region()->region_id();
    conn->gpu_backend = static_cast<storeclient::gpu::Backend>(r->gpu_backend());
    conn->client_id = r->client_id();
    conn->chunks = (size + kPopulateChunk - 1) / kPopulateChunk;
    if (population != Population::kNone) {
      conn->populated.reset(new (std::nothrow) std::atomic<uint8_t>[conn->chunks]());
      if (!read_only) {
        conn->wpopulated.reset(new (std::nothrow) std::atomic<uint8_t>[conn->chunks]());
      }
    }
    if (map_now) {
      for (uint64_t i = 0; i < conn->chunks; i++) {
        if (conn->populated) conn->populated[i].store(1, std::memory_order_relaxed);
        if (conn->wpopulated) conn->wpopulated[i].store(1, std::memory_order_relaxed);
      }
    }
    PrepareReleases(conn.get());
    StartThreads(conn.get());
    auto* client = new store_client{conn.release()};
    *out = client;
    return STORE_OK;
  });
}

void store_client_free(store_client* client) {
  if (!client) return;
  Conn* c = client->conn;
  if (!c->OwnedByThisProcess()) {
    // Inherited from the parent process: the session is the parent's. Nothing is sent and no
    // lock taken; the last reference closes this process's descriptor (see ~Conn).
    delete client;
    Unref(c);
    return;
  }
  // Before the store hears of it: it aborts the unsealed objects, whose pages may then serve
  // others.
  ShutWindows(c);
  try {
    if (Usable(c)) {
      flatbuffers::FlatBufferBuilder fbb(64);
      SendOneWay(c, fbb, Body::DisconnectRequest, proto::CreateDisconnectRequest(fbb).Union());
    }
  } catch (...) {
  }
  {
    std::lock_guard<std::mutex> lk(c->mu);
    c->freed = true;
    MarkBrokenLocked(c, STORE_ECONN, "the client was freed");
  }
  delete client;
  Unref(c);
}

// ---- writing -------------------------------------------------------------------------------

namespace {

int CheckCreateOptions(const store_create_options* o) {
  if (!o) return STORE_OK;
  // Version 1 options end before flags.
  if (o->version != STORE_CREATE_OPTIONS_VERSION && o->version != 1) {
    return Fail(STORE_EINVAL, "store_create_options.version is %u; this library knows 1 to %u",
                o->version, STORE_CREATE_OPTIONS_VERSION);
  }
  if (o->version >= 2 && (o->flags & ~STORE_CREATE_LEASED) != 0) {
    return Fail(STORE_EINVAL, "unknown store_create_options.flags 0x%x", o->flags);
  }
  if (o->metadata_size > 0 && !o->metadata) return Fail(STORE_EINVAL, "metadata is NULL");
  if (o->metadata_size > STORE_MAX_METADATA_SIZE) {
    return Fail(STORE_EINVAL, "metadata of %llu bytes is over the limit of %u",
                static_cast<unsigned long long>(o->metadata_size), STORE_MAX_METADATA_SIZE);
  }
  if (o->timeout_ms < -1) return Fail(STORE_EINVAL, "timeout_ms must be -1, 0 or positive");
  return STORE_OK;
}

flatbuffers::Offset<proto::CreateRequest> BuildCreate(flatbuffers::FlatBufferBuilder& fbb,
                                                      const store_object_id* id,
                                                      uint64_t size,
                                                      const store_create_options* o,
                                                      const void* inline_data) {
  static const store_create_options kDefaults = STORE_CREATE_OPTIONS_INIT;
  if (!o) o = &kDefaults;
  flatbuffers::Offset<flatbuffers::Vector<uint8_t>> meta, data;
  if (o->metadata_size) {
    meta = fbb.CreateVector(static_cast<const uint8_t*>(o->metadata), o->metadata_size);
  }
  if (inline_data) data = fbb.CreateVector(static_cast<const uint8_t*>(inline_data), size);
  proto::ObjectId pid = ProtoId(id);
  proto::CreateRequestBuilder b(fbb);
  b.add_id(&pid);
  b.add_data_size(size);
  if (o->metadata_size) b.add_metadata(meta);
  b.add_importance(o->importance);
  b.add_device(o->device);
  b.add_timeout_ms(o->timeout_ms);
  if (o->version >= 2 && (o->flags & STORE_CREATE_LEASED)) b.add_leased(true);
  if (inline_data) b.add_data(data);
  return b.Finish();
}

// Rewrites a copy of a built inline create (seq never 0, so the field is there; data of
// size bytes) into the create of another object of that size: seq, id and data in place.
void RewriteCreate(uint8_t* msg, uint64_t seq, const store_object_id* id, const void* data,
                   uint64_t size) {
  auto* m = proto::GetMutableSizePrefixedMessage(msg);
  auto* r = static_cast<proto::CreateRequest*>(m->mutable_body());
  m->mutate_seq(seq);
  *r->mutable_id() = ProtoId(id);
  std::memcpy(r->mutable_data()->Data(), data, size);
}

bool InRegion(Conn* c, uint64_t offset, uint64_t len) {
  return offset <= c->region_size && len <= c->region_size - offset;
}

// Objects from this size up get their pages mapped in one call when opened, instead of one page
// fault per 4 KiB on first touch.
constexpr uint64_t kPopulateMin = 1u << 20;

// Maps [p, p + len) of one of the region's mappings into this process; in the writable one a
// read fault maps a page writable, as the region is shared shmem, which needs no write
// notification. One read per 64 KiB
// suffices where the kernel maps the 64 KiB around a read fault (fault-around, for pages
// already in memory): 3.0 ms per 64 MiB here, against 5.3 for MADV_POPULATE_READ and 14.5 for
// MADV_POPULATE_WRITE. Whether it did is checked on the last page of the first and of the last
// 64 KiB: if reading either took a fault (fault-around is smaller, or the store has not
// touched those pages yet, as with --no-prefault), MADV_POPULATE_READ maps the range instead.
// Returns false if that failed (kernels before 5.14); the pages then fault in on first touch.
// Reads the byte at a so that the kernel maps its page. The value is unused, and another thread
// or process may be writing it meanwhile: a benign race, left out of ThreadSanitizer's view.
__attribute__((noinline, no_sanitize_thread)) void TouchByte(uintptr_t a) {
  (void)*reinterpret_cast<const volatile uint8_t*>(a);
}

bool MapRange(const uint8_t* p, uint64_t len) {
  constexpr uintptr_t kWindow = 64 * 1024;
  const uintptr_t b = reinterpret_cast<uintptr_t>(p), e = b + len;
  for (uintptr_t a = b & ~(kWindow - 1); a < e; a += kWindow) TouchByte(std::max(a, b));
  rusage before{}, after{};
  getrusage(RUSAGE_THREAD, &before);
  TouchByte(std::min(e, (b & ~(kWindow - 1)) + kWindow) - 1);
  TouchByte(e - 1);
  getrusage(RUSAGE_THREAD, &after);
  if (after.ru_minflt == before.ru_minflt) return true;
  return madvise(const_cast<uint8_t*>(p), len, MADV_POPULATE_READ) == 0;
}

// Each chunk of the region is mapped once per process and mapping (MapRange): its pages then
// stay mapped.
void Populate(Conn* c, uint64_t offset, uint64_t len, bool background, bool write) {
  std::atomic<uint8_t>* populated = write ? c->wpopulated.get() : c->populated.get();
  uint8_t* base = write ? c->wbase : c->base;
  if (len < kPopulateMin || !populated || !base) return;
  uint64_t first = offset / kPopulateChunk;
  uint64_t last = std::min<uint64_t>((offset + len - 1) / kPopulateChunk, c->chunks - 1);
  uint64_t i = first;
  while (i <= last) {
    if (populated[i].load(std::memory_order_relaxed) != 0) {
      i++;
      continue;
    }
    uint64_t j = i;
    while (j + 1 <= last && populated[j + 1].load(std::memory_order_relaxed) == 0) j++;
    uint64_t begin = i * kPopulateChunk;
    uint64_t end = std::min(c->region_size, (j + 1) * kPopulateChunk);
    if (!background) c->populating.fetch_add(1, std::memory_order_relaxed);
    if (MapRange(base + begin, end - begin)) {
      for (uint64_t k = i; k <= j; k++) populated[k].store(1, std::memory_order_relaxed);
    }
    if (!background) c->populating.fetch_sub(1, std::memory_order_relaxed);
    i = j + 1;
  }
}

// Where a GPU object's data is in this process: maps its chunk on first use (one request for
// the chunk's fd, once per chunk and process). Returns STORE_OK or an error (Fail).
int DeviceData(Conn* c, int32_t device, uint32_t chunk, uint64_t chunk_offset, uint64_t size,
               uint8_t** dptr, int32_t* local_device) {
  const uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(device)) << 32) | chunk;
  storeclient::gpu::Mapping m;
  bool have = false;
  {
    std::lock_guard<std::mutex> lk(c->gpu_mu);
    auto it = c->gpu_chunks.find(key);
    if (it != c->gpu_chunks.end()) {
      m = it->second.second;
      have = true;
    }
  }
  if (!have) {
    flatbuffers::FlatBufferBuilder fbb(64);
    auto body = proto::CreateGpuChunkRequest(fbb, device, chunk);
    std::unique_ptr<Reply> reply;
    int rc = Call(c, fbb, Body::GpuChunkRequest, body.Union(), Body::GpuChunkReply, &reply);
    if (rc != STORE_OK) return rc;
    auto* r = reply->msg->body_as_GpuChunkReply();
    if (reply->fds.size() != 1 || r->device() != device || r->chunk() != chunk ||
        r->size() == 0 || !r->uuid() || r->uuid()->size() != 16) {
      MarkBroken(c, STORE_EPROTO, "the store sent a malformed GPU chunk");
      return BrokenError(c);
    }
    std::string why;
    if (!storeclient::gpu::Import(c->gpu_backend, r->chunk_uid(), reply->fds[0], r->size(),
                                  r->uuid()->data(), &m, &why)) {
      return FailMsg(STORE_ENOTSUP, "cannot map the store's GPU memory: " + why);
    }
    std::lock_guard<std::mutex> lk(c->gpu_mu);
    auto [it, inserted] = c->gpu_chunks.emplace(key, std::make_pair(r->chunk_uid(), m));
    if (!inserted) storeclient::gpu::Release(r->chunk_uid());  // another thread was first
    m = it->second.second;
  }
  if (chunk_offset > m.size || size > m.size - chunk_offset) {
    MarkBroken(c, STORE_EPROTO, "the store placed a GPU object outside its chunk");
    return BrokenError(c);
  }
  *dptr = m.base + chunk_offset;
  *local_device = m.local_device;
  return STORE_OK;
}

}  // namespace

namespace {
// Aborts an object this client created but holds no writer for. Best effort; never throws.
void AbortCreated(Conn* c, const store_object_id& id, uint64_t uid) noexcept {
  Guard([&] {
    flatbuffers::FlatBufferBuilder fbb(128);
    proto::ObjectId pid = ProtoId(&id);
    std::unique_ptr<Reply> reply;
    return Call(c, fbb, Body::AbortRequest, proto::CreateAbortRequest(fbb, &pid, uid).Union(),
                Body::AbortReply, &reply);
  });
}
}  // namespace

int store_create(store_client* client, store_writer** out, const store_object_id* id,
                 uint64_t data_size, const store_create_options* opts) {
  return Guard([&]() -> int {
    if (!out) return Fail(STORE_EINVAL, "out is NULL");
    *out = nullptr;
    if (!client || !id) return Fail(STORE_EINVAL, "client or id is NULL");
    if (data_size == 0) return Fail(STORE_EINVAL, "an object must have at least one byte");
    if (int rc = CheckCreateOptions(opts); rc != STORE_OK) return rc;
    Conn* c = client->conn;
    if (!c->OwnedByThisProcess()) return InheritedError(c);
    if (!Usable(c)) return BrokenError(c);
    if (c->read_only) {
      return Fail(STORE_EPERM, "this client connected read-only: it cannot create objects");
    }
    if (data_size <= STORE_STAGED_MAX && !(opts && opts->device >= 0)) {
      // Staged: written into a private buffer and sent whole at the seal, which creates and
      // seals it in one round trip. No page of the store is writable through it.
      auto* w = new (std::nothrow)
          store_writer{c, *id, 0, nullptr, data_size, 0, -1, -1, nullptr};
      if (!w) return Fail(STORE_ENOMEM, "out of memory for a writer");
      w->staged = true;
      w->data = static_cast<uint8_t*>(std::calloc(1, data_size));
      w->meta_size = opts ? opts->metadata_size : 0;
      if (w->meta_size) w->meta = static_cast<uint8_t*>(std::malloc(w->meta_size));
      if (!w->data || (w->meta_size && !w->meta)) {
        std::free(w->data);
        std::free(w->meta);
        delete w;
        return Fail(STORE_ENOMEM, "out of memory for a writer of %llu bytes",
                    static_cast<unsigned long long>(data_size));
      }
      if (w->meta_size) std::memcpy(w->meta, opts->metadata, w->meta_size);
      w->importance = opts ? opts->importance : 0;
      w->timeout_ms = opts ? opts->timeout_ms : 0;
      w->flags = opts && opts->version >= 2 ? opts->flags : 0;
      Ref(c);
      *out = w;
      return STORE_OK;
    }
    flatbuffers::FlatBufferBuilder fbb(256 + (opts ? opts->metadata_size : 0));
    auto body = BuildCreate(fbb, id, data_size, opts, nullptr);
    std::unique_ptr<Reply> reply;
    int rc = Call(c, fbb, Body::CreateRequest, body.Union(), Body::CreateReply, &reply);
    if (rc != STORE_OK) return rc;
    auto* r = reply->msg->body_as_CreateReply();
    const int32_t device = opts ? opts->device : -1;
    const bool on_gpu = r->device() >= 0;
    if (r->region_id() != c->region_id || r->data_size() != data_size || r->device() != device ||
        !InRegion(c, r->offset(), (on_gpu ? 0 : r->data_size()) + r->metadata_size())) {
      MarkBroken(c, STORE_EPROTO, "the store placed an object outside its memory");
      return BrokenError(c);
    }
    uint64_t win_begin = 0, win_end = 0;
    if (!on_gpu && c->write_window) {
      // The object's pages, writable until its seal or abort.
      if (r->offset() % kWindowPage != 0) {
        AbortCreated(c, *id, r->uid());
        return Fail(STORE_EPROTO,
                    "the store placed an object of %llu bytes at offset %llu, not at the start "
                    "of a page of its own, so a write window (STORE_CLIENT_WRITE_WINDOW) would "
                    "open another object's bytes; the object was aborted",
                    static_cast<unsigned long long>(data_size),
                    static_cast<unsigned long long>(r->offset()));
      }
      win_begin = r->offset();
      win_end = std::min(RoundUpTo(r->offset() + data_size, kWindowPage),
                         RoundUpTo(c->region_size, kWindowPage));
      if (int e = OpenWindow(c, win_begin, win_end); e != 0) {
        AbortCreated(c, *id, r->uid());
        if (e < 0) return BrokenError(c);
        return Fail(STORE_ENOMEM,
                    "cannot make the new object's pages writable (STORE_CLIENT_WRITE_WINDOW): "
                    "mprotect: %s; the object was aborted", std::strerror(e));
      }
    }
    // With a window, after it opened: the pages are mapped writable.
    if (!on_gpu) Populate(c, r->offset(), data_size, false, true);
    uint8_t* data = on_gpu ? nullptr : c->wbase + r->offset();
    auto* w = new (std::nothrow)
        store_writer{c, *id, r->uid(), data, data_size, 0, on_gpu ? device : -1, -1, nullptr};
    if (!w) {
      // The store made an object this process cannot hold a writer for: it is aborted.
      if (win_end > win_begin) CloseWindow(c, win_begin, win_end);
      AbortCreated(c, *id, r->uid());
      return Fail(STORE_ENOMEM, "out of memory for a writer");
    }
    w->win_begin = win_begin;
    w->win_end = win_end;
    Ref(c);
    if (on_gpu) {
      rc = Guard([&] {
        return DeviceData(c, device, r->chunk(), r->chunk_offset(), data_size, &w->dptr,
                          &w->local_device);
      });
      if (rc != STORE_OK) {
        const Message why = t_message;
        store_writer_abort(w);
        return FailMsg(rc, why.text);
      }
    }
    *out = w;
    return STORE_OK;
  });
}

int store_writer_write(store_writer* w, const void* data, size_t size) {
  if (!w || (!data && size)) return Fail(STORE_EINVAL, "writer or data is NULL");
  if (!Usable(w->conn)) return BrokenError(w->conn);
  if (size > w->size - w->pos) {
    return Fail(STORE_EINVAL, "writing %zu bytes at %llu would pass the end of the object (%llu)",
                size, static_cast<unsigned long long>(w->pos),
                static_cast<unsigned long long>(w->size));
  }
  if (size && w->device >= 0) {
    std::string why;
    if (!storeclient::gpu::CopyToDevice(w->conn->gpu_backend, w->local_device, w->dptr + w->pos,
                                        data, size, &why)) {
      return FailMsg(STORE_EINVAL, why);
    }
  } else if (size) {
    std::memcpy(w->data + w->pos, data, size);
  }
  w->pos += size;
  return STORE_OK;
}

int store_writer_seek(store_writer* w, int64_t offset, int whence, uint64_t* pos) {
  if (!w) return Fail(STORE_EINVAL, "writer is NULL");
  if (!w->conn->OwnedByThisProcess()) return InheritedError(w->conn);
  return SeekImpl(&w->pos, w->size, offset, whence, pos);
}

uint64_t store_writer_tell(const store_writer* w) { return w ? w->pos : 0; }
uint64_t store_writer_size(const store_writer* w) { return w ? w->size : 0; }

void* store_writer_data(store_writer* w) {
  if (!w || !Usable(w->conn)) return nullptr;
  return w->data;
}

namespace {
int FinishWriter(store_writer* w, bool seal) {
  Conn* c = w->conn;
  // The window closes before the seal or abort goes out: once the store has sealed the object,
  // this process cannot change it. In a forked child, whose windows are copies of the parent's
  // and whose locks may be held by the parent's threads, its copy is made read-only directly.
  int window_errno = 0;  // of a window that did not close
  if (w->win_end > w->win_begin) {
    if (c->OwnedByThisProcess()) {
      if (!CloseWindow(c, w->win_begin, w->win_end)) window_errno = errno ? errno : EINVAL;
    } else {
      mprotect(c->wbase + w->win_begin, w->win_end - w->win_begin, PROT_READ);
    }
  }
  int rc = Guard([&]() -> int {
    if (window_errno != 0) {
      // Not sealed while this process may still write it: the session ends, so the store
      // aborts the object.
      MarkBroken(c, STORE_ECONN,
                 "cannot make a written object's pages read-only again "
                 "(STORE_CLIENT_WRITE_WINDOW): mprotect: ", std::strerror(window_errno));
      return BrokenError(c);
    }
    if (w->staged) {
      if (!c->OwnedByThisProcess()) return InheritedError(c);
      if (!seal) return STORE_OK;  // nothing was sent: nothing to abort
      // Create, data and seal in one request.
      store_create_options o = STORE_CREATE_OPTIONS_INIT;
      o.metadata = w->meta;
      o.metadata_size = w->meta_size;
      o.importance = w->importance;
      o.timeout_ms = w->timeout_ms;
      o.flags = w->flags;
      flatbuffers::FlatBufferBuilder fbb(256 + w->size + w->meta_size);
      auto body = BuildCreate(fbb, &w->id, w->size, &o, w->data);
      std::unique_ptr<Reply> reply;
      return Call(c, fbb, Body::CreateRequest, body.Union(), Body::CreateReply, &reply);
    }
    flatbuffers::FlatBufferBuilder fbb(128);
    proto::ObjectId pid = ProtoId(&w->id);
    std::unique_ptr<Reply> reply;
    if (seal) {
      auto body = proto::CreateSealRequest(fbb, &pid, w->uid);
      return Call(c, fbb, Body::SealRequest, body.Union(), Body::SealReply, &reply);
    }
    auto body = proto::CreateAbortRequest(fbb, &pid, w->uid);
    return Call(c, fbb, Body::AbortRequest, body.Union(), Body::AbortReply, &reply);
  });
  if (w->staged) {
    std::free(w->data);
    std::free(w->meta);
  }
  delete w;
  Unref(c);
  return rc;
}
}  // namespace

extern "C++" {
namespace {
// store_writer_device_ptr and store_reader_device_ptr: H is store_writer or store_reader.
template <class H, class P>
int DevicePtr(H* h, P** dptr, int* device, const char* what) {
  if (dptr) *dptr = nullptr;
  if (device) *device = -1;
  if (!h || !dptr) return Fail(STORE_EINVAL, "%s or dptr is NULL", what);
  if (!h->conn->OwnedByThisProcess()) return InheritedError(h->conn);
  if (h->device < 0) {
    return Fail(STORE_EINVAL, "the object is in host memory: use store_%s_data", what);
  }
  if (!Usable(h->conn)) return BrokenError(h->conn);
  *dptr = h->dptr;
  if (device) *device = h->local_device;
  return STORE_OK;
}
}  // namespace
}  // extern "C++"

int store_writer_device_ptr(store_writer* w, void** dptr, int* device) {
  return DevicePtr(w, dptr, device, "writer");
}

int store_writer_seal(store_writer* w) {
  if (!w) return Fail(STORE_EINVAL, "writer is NULL");
  return FinishWriter(w, true);
}

int store_writer_abort(store_writer* w) {
  if (!w) return STORE_OK;
  int rc = FinishWriter(w, false);
  // A writer whose client is gone was aborted by the server already.
  return rc == STORE_ECONN ? STORE_OK : rc;
}

int store_put(store_client* client, const store_object_id* id, const void* data,
              uint64_t data_size, const store_create_options* opts) {
  return Guard([&]() -> int {
    if (!client || !id || !data) return Fail(STORE_EINVAL, "client, id or data is NULL");
    if (data_size == 0) return Fail(STORE_EINVAL, "an object must have at least one byte");
    if (int rc = CheckCreateOptions(opts); rc != STORE_OK) return rc;
    const bool on_gpu = opts && opts->device >= 0;
    if (data_size <= proto::kInlinePutMax && !opts) {
      // Puts of one size without options differ only in seq, id and data: this thread's last
      // one is copied with those written in place.
      thread_local std::vector<uint8_t> t_put;
      thread_local uint64_t t_put_size = 0;
      Conn* c = client->conn;
      const uint64_t seq = c->next_seq.fetch_add(1, std::memory_order_relaxed);
      if (t_put_size == data_size) {
        RewriteCreate(t_put.data(), seq, id, data, data_size);
      } else {
        flatbuffers::FlatBufferBuilder fbb(256 + data_size);
        auto body = BuildCreate(fbb, id, data_size, nullptr, data);
        FinishMessage(fbb, seq, Body::CreateRequest, body.Union());
        t_put_size = 0;
        t_put.assign(fbb.GetBufferPointer(), fbb.GetBufferPointer() + fbb.GetSize());
        t_put_size = data_size;
      }
      std::unique_ptr<Reply> reply;
      return CallFinished(c, seq, t_put.data(), t_put.size(), Body::CreateReply, &reply);
    }
    if (data_size <= proto::kInlinePutMax && !on_gpu) {
      flatbuffers::FlatBufferBuilder fbb(256 + data_size + (opts ? opts->metadata_size : 0));
      auto body = BuildCreate(fbb, id, data_size, opts, data);
      std::unique_ptr<Reply> reply;
      return Call(client->conn, fbb, Body::CreateRequest, body.Union(), Body::CreateReply,
                  &reply);
    }
    store_writer* w = nullptr;
    int rc = store_create(client, &w, id, data_size, opts);
    if (rc != STORE_OK) return rc;
    if (on_gpu) {
      rc = store_writer_write(w, data, data_size);
      if (rc != STORE_OK) {
        const Message why = t_message;
        store_writer_abort(w);
        return FailMsg(rc, why.text);
      }
    } else {
      std::memcpy(w->data, data, data_size);
    }
    return store_writer_seal(w);
  });
}

namespace {

// store_put_many puts objects of inline size with pipelined requests: a batch is sent in one
// write, then its replies are collected.
// One batch of inline creates on the wire: sent by PutSend, its replies taken by PutCollect.
// Its slots are registered in the connection's table from PutSend until PutCollect takes
// their replies; whatever ends the batch before that (an exception) unregisters the rest
// (Abandon, as Request does for one request).
struct PutBatch {
  Conn* conn = nullptr;
  const store_object_id* ids = nullptr;
  size_t k = 0;          // requests registered: slots[0, k)
  size_t collected = 0;  // of which PutCollect has taken the replies
  bool sent = false;     // SendAll returned: the requests went out (or the connection broke)
  std::vector<uint64_t> seqs;
  std::vector<Slot> slots;  // never resized while registered
  int send_rc = STORE_OK;
  Message send_message;
  // The requests on the wire, and the builder of the last one built; kept for the next batch.
  std::vector<uint8_t> wire;
  flatbuffers::FlatBufferBuilder fbb{1024};

  PutBatch() = default;
  PutBatch(const PutBatch&) = delete;
  PutBatch& operator=(const PutBatch&) = delete;
  ~PutBatch() { Abandon(); }

  // Unregisters the slots whose replies were not collected. Never throws.
  void Abandon() noexcept {
    for (size_t i = collected; i < k; i++) Forget(conn, seqs[i], &slots[i], sent);
    k = collected = 0;
  }
};

// Builds and sends k inline creates without waiting for their replies. Out of memory, none is
// sent and the batch fails with STORE_ENOMEM.
void PutSend(Conn* c, const store_object_id* ids, const void* const* datas, const uint64_t* sizes,
             size_t k, const store_create_options* opts, PutBatch* b) {
  b->Abandon();  // a no-op: the batch before was collected
  b->conn = c;
  b->ids = ids;
  b->sent = false;
  b->send_rc = STORE_OK;
  if (!Usable(c)) {
    b->send_rc = BrokenError(c);
    b->send_message = t_message;
    return;
  }
  try {
    b->seqs.assign(k, 0);
    b->slots.assign(k, Slot{});
    // Requests of one size differ only in seq, id and data: one is built, and the ones after
    // it are copies of it with those fields written in place. Every request is a multiple of 8
    // bytes long, so each copy in wire is as aligned as the builder's buffer.
    std::vector<uint8_t>& wire = b->wire;
    wire.clear();
    flatbuffers::FlatBufferBuilder& fbb = b->fbb;
    uint64_t built_size = 0;  // the data size of the request in fbb; 0 = none yet
    for (size_t i = 0; i < k; i++) {
      b->seqs[i] = c->next_seq.fetch_add(1, std::memory_order_relaxed);
      if (sizes[i] != built_size) {
        fbb.Clear();
        auto body = BuildCreate(fbb, &ids[i], sizes[i], opts, datas[i]);
        FinishMessage(fbb, b->seqs[i], Body::CreateRequest, body.Union());
        built_size = sizes[i];
        if (wire.empty()) wire.reserve(fbb.GetSize() * k + 64);
        wire.insert(wire.end(), fbb.GetBufferPointer(), fbb.GetBufferPointer() + fbb.GetSize());
        continue;
      }
      size_t at = wire.size();
      wire.insert(wire.end(), fbb.GetBufferPointer(), fbb.GetBufferPointer() + fbb.GetSize());
      RewriteCreate(wire.data() + at, b->seqs[i], &ids[i], datas[i], sizes[i]);
    }
    std::lock_guard<std::mutex> lk(c->mu);
    for (size_t i = 0; i < k; i++) {
      c->waiting.Insert(b->seqs[i], &b->slots[i]);
      b->slots[i].registered = true;
      b->k = i + 1;
    }
  } catch (const std::bad_alloc&) {
    b->Abandon();  // not sent: the ones registered are removed
    b->send_rc = Fail(STORE_ENOMEM, "out of memory building %zu puts", k);
    b->send_message = t_message;
    return;
  }
  int rc;
  bool threw = false;  // then nothing of the batch went out
  try {
    rc = SendAll(c, b->wire.data(), b->wire.size());
  } catch (const std::bad_alloc&) {
    threw = true;
    rc = Fail(STORE_ENOMEM, "out of memory sending %zu puts", k);
  }
  // Sent: the requests went out, or the connection broke and no reply will come.
  b->sent = !threw;
  if (threw) b->Abandon();
  b->send_rc = rc;
  if (rc != STORE_OK) b->send_message = t_message;
}

// Waits for the replies of a batch PutSend sent; counts the objects put. Never throws.
int PutCollect(Conn* c, PutBatch* b, size_t* put) {
  int first = b->send_rc;
  Message first_message = b->send_message;
  while (b->collected < b->k) {
    const size_t i = b->collected;
    std::unique_ptr<Reply> reply;
    int rc = WaitReply(c, b->seqs[i], &b->slots[i], &reply);
    b->collected++;
    if (rc == STORE_OK) {
      const proto::Message* m = reply->msg;
      if (m->status() != 0) {
        rc = m->status() < 0 && m->status() >= STORE_ERRNO_MIN_ ? m->status() : STORE_EPROTO;
        char hex[41];
        store_object_id_to_hex(&b->ids[i], hex, sizeof hex);
        Fail(rc, "object %s: %s", hex, m->error() ? m->error()->c_str() : store_errstr(rc));
      } else if (m->body_type() != Body::CreateReply) {
        MarkBroken(c, STORE_EPROTO, "the store sent a reply of the wrong type");
        rc = BrokenError(c);
      } else {
        (*put)++;
      }
    }
    if (rc != STORE_OK && first == STORE_OK) {
      first = rc;
      first_message = t_message;
    }
  }
  b->k = b->collected = 0;
  return first == STORE_OK ? STORE_OK : FailMsg(first, first_message.text);
}

}  // namespace

int store_put_many(store_client* client, const store_object_id* ids, const void* const* datas,
                   const uint64_t* sizes, size_t n, const store_create_options* opts,
                   size_t* done) {
  if (done) *done = 0;
  size_t put = 0;
  int rc = Guard([&]() -> int {
    if (!client || (n && (!ids || !datas || !sizes))) {
      return Fail(STORE_EINVAL, "client, ids, datas or sizes is NULL");
    }
    if (!client->conn->OwnedByThisProcess()) return InheritedError(client->conn);
    if (int rc = CheckCreateOptions(opts); rc != STORE_OK) return rc;
    for (size_t i = 0; i < n; i++) {
      if (!datas[i] || sizes[i] == 0) {
        return Fail(STORE_EINVAL, "object %zu has no data or a zero size", i);
      }
    }
    constexpr size_t kBatch = 128;
    int first = STORE_OK;
    Message first_message;
    auto note = [&](int rc) {
      if (rc != STORE_OK && first == STORE_OK) {
        first = rc;
        first_message = t_message;
      }
    };
    // Two batches of inline creates in flight: the next one is built and sent while the store
    // works on the one before, whose replies are taken after.
    PutBatch batches[2];
    PutBatch* in_flight = nullptr;
    int cur = 0;
    size_t i = 0;
    while (i < n && first != STORE_ECONN) {
      if (sizes[i] > proto::kInlinePutMax || (opts && opts->device >= 0)) {
        if (in_flight) {
          note(PutCollect(client->conn, in_flight, &put));
          in_flight = nullptr;
          if (first == STORE_ECONN) break;
        }
        int rc = store_put(client, &ids[i], datas[i], sizes[i], opts);
        if (rc == STORE_OK) put++;
        note(rc);
        i++;
      } else {
        size_t k = 0;
        while (i + k < n && k < kBatch && sizes[i + k] <= proto::kInlinePutMax) k++;
        PutBatch* b = &batches[cur];
        cur ^= 1;
        PutSend(client->conn, ids + i, datas + i, sizes + i, k, opts, b);
        i += k;
        if (in_flight) note(PutCollect(client->conn, in_flight, &put));
        in_flight = b;
      }
    }
    if (in_flight) note(PutCollect(client->conn, in_flight, &put));
    return first == STORE_OK ? STORE_OK : FailMsg(first, first_message.text);
  });
  if (done) *done = put;
  return rc;
}

// ---- reading -------------------------------------------------------------------------------

namespace {

void SendRelease(Conn* c, const uint64_t* uids, size_t n) {
  try {
    QueueRelease(c, uids, n);
  } catch (...) {
  }
}

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// A reader over an object the store handed out (l->status() == 0). On failure returns the error
// (the connection is broken if the store placed it outside its memory; STORE_ENOMEM out of
// memory); the caller releases the object. Never throws.
int MakeReader(Conn* c, const store_object_id& id, const proto::ObjectLocation* l,
               store_reader** out) noexcept {
  const bool on_gpu = l->device() >= 0;
  if (l->region_id() != c->region_id ||
      !InRegion(c, l->offset(), (on_gpu ? 0 : l->data_size()) + l->metadata_size())) {
    MarkBroken(c, STORE_EPROTO, "the store placed an object outside its memory");
    return BrokenError(c);
  }
  const uint8_t* d = c->base + l->offset();
  store_reader* r = nullptr;
  if (on_gpu) {
    uint8_t* dptr = nullptr;
    int32_t local = -1;
    int rc = Guard([&] {
      return DeviceData(c, l->device(), l->chunk(), l->chunk_offset(), l->data_size(), &dptr,
                        &local);
    });
    if (rc != STORE_OK) return rc;
    r = new (std::nothrow) store_reader{c, id, l->uid(), nullptr, l->data_size(), d,
                                        l->metadata_size(), 0, l->device(), local, dptr};
  } else {
    Populate(c, l->offset(), l->data_size());
    r = new (std::nothrow) store_reader{c, id, l->uid(), d, l->data_size(), d + l->data_size(),
                                        l->metadata_size(), 0, -1, -1, nullptr};
  }
  if (!r) return Fail(STORE_ENOMEM, "out of memory for a reader");
  Ref(c);
  *out = r;
  return STORE_OK;
}

// Releases every object a get reply handed out, without allocating (but for the queue).
void ReleaseHandedOut(Conn* c, const flatbuffers::Vector<const proto::ObjectLocation*>* locs) {
  uint64_t uids[64];
  size_t m = 0;
  for (flatbuffers::uoffset_t i = 0; i < locs->size(); i++) {
    const proto::ObjectLocation* l = locs->Get(i);
    if (l->status() != 0) continue;
    uids[m++] = l->uid();
    if (m == 64) {
      SendRelease(c, uids, m);
      m = 0;
    }
  }
  if (m > 0) SendRelease(c, uids, m);
}

// One get request for up to kMaxIdsPerRequest ids.
int OpenBatch(store_client* client, store_reader** out, const store_object_id* ids, size_t n,
              int64_t timeout_ms) {
  Conn* c = client->conn;
  flatbuffers::FlatBufferBuilder fbb(160 + 24 * n);
  auto vec = IdVector(fbb, ids, n);
  auto body = proto::CreateGetRequest(fbb, vec, timeout_ms);
  std::unique_ptr<Reply> reply;
  int rc = Call(c, fbb, Body::GetRequest, body.Union(), Body::GetReply, &reply);
  if (rc != STORE_OK) return rc;
  auto* locs = reply->msg->body_as_GetReply()->objects();
  if (locs->size() != n) {
    MarkBroken(c, STORE_EPROTO, "the store answered a get with the wrong number of objects");
    return BrokenError(c);
  }
  for (size_t i = 0; i < n; i++) out[i] = nullptr;
  for (size_t i = 0; i < n; i++) {
    const proto::ObjectLocation* l = locs->Get(static_cast<flatbuffers::uoffset_t>(i));
    if (l->status() != 0) continue;
    int prc = MakeReader(c, ids[i], l, &out[i]);
    if (prc == STORE_OK) continue;
    // None is opened: the readers made are dropped, every object handed out released.
    const Message why = t_message;
    for (size_t j = 0; j < i; j++) {
      if (out[j]) {
        delete out[j];
        Unref(c);
        out[j] = nullptr;
      }
    }
    ReleaseHandedOut(c, locs);
    return FailMsg(prc, why.text);
  }
  return STORE_OK;
}

}  // namespace

int store_open_readers(store_client* client, store_reader** out, const store_object_id* ids,
                       size_t n, int64_t timeout_ms) {
  return Guard([&]() -> int {
    if (!client || (n && (!out || !ids))) return Fail(STORE_EINVAL, "client, out or ids is NULL");
    if (!client->conn->OwnedByThisProcess()) return InheritedError(client->conn);
    if (timeout_ms < -1) return Fail(STORE_EINVAL, "timeout_ms must be -1, 0 or positive");
    for (size_t i = 0; i < n; i++) out[i] = nullptr;
    int64_t deadline = timeout_ms > 0 ? NowMs() + timeout_ms : 0;
    for (size_t start = 0; start < n; start += proto::kMaxIdsPerRequest) {
      size_t k = std::min<size_t>(n - start, proto::kMaxIdsPerRequest);
      int64_t t = timeout_ms;
      if (timeout_ms > 0) t = std::max<int64_t>(0, deadline - NowMs());
      int rc = OpenBatch(client, out + start, ids + start, k, t);
      if (rc != STORE_OK) {
        for (size_t i = 0; i < start; i++) {
          store_reader_close(out[i]);
          out[i] = nullptr;
        }
        return rc;
      }
    }
    return STORE_OK;
  });
}

int store_open_reader(store_client* client, store_reader** out, const store_object_id* id,
                      int64_t timeout_ms) {
  return Guard([&]() -> int {
    if (!out) return Fail(STORE_EINVAL, "out is NULL");
    *out = nullptr;
    if (!client || !id) return Fail(STORE_EINVAL, "client or id is NULL");
    if (timeout_ms < -1) return Fail(STORE_EINVAL, "timeout_ms must be -1, 0 or positive");
    Conn* c = client->conn;
    // Gets of one id differ only in seq, id and timeout: this thread's first one, built with
    // every field present, is copied with those written in place.
    thread_local std::vector<uint8_t> t_get;
    const uint64_t seq = c->next_seq.fetch_add(1, std::memory_order_relaxed);
    if (t_get.empty()) {
      flatbuffers::FlatBufferBuilder fbb(128);
      fbb.ForceDefaults(true);
      proto::ObjectId pid = ProtoId(id);
      auto vec = fbb.CreateVectorOfStructs(&pid, 1);
      auto body = proto::CreateGetRequest(fbb, vec, timeout_ms);
      FinishMessage(fbb, seq, Body::GetRequest, body.Union());
      t_get.assign(fbb.GetBufferPointer(), fbb.GetBufferPointer() + fbb.GetSize());
    } else {
      auto* m = proto::GetMutableSizePrefixedMessage(t_get.data());
      auto* g = static_cast<proto::GetRequest*>(m->mutable_body());
      m->mutate_seq(seq);
      g->mutate_timeout_ms(timeout_ms);
      *g->mutable_ids()->GetMutableObject(0) = ProtoId(id);
    }
    std::unique_ptr<Reply> reply;
    int rc = CallFinished(c, seq, t_get.data(), t_get.size(), Body::GetReply, &reply);
    if (rc != STORE_OK) return rc;
    auto* locs = reply->msg->body_as_GetReply()->objects();
    if (locs->size() != 1) {
      MarkBroken(c, STORE_EPROTO, "the store answered a get with the wrong number of objects");
      return BrokenError(c);
    }
    const proto::ObjectLocation* l = locs->Get(0);
    if (l->status() != 0) {
      char hex[41];
      store_object_id_to_hex(id, hex, sizeof hex);
      switch (l->status()) {
        case STORE_ETIMEDOUT:
          return Fail(STORE_ETIMEDOUT, "object %s was not sealed (or read back from disk) within %lld ms", hex,
                      static_cast<long long>(timeout_ms));
        case STORE_ENOTFOUND:
          return Fail(STORE_ENOTFOUND, "object %s is not in the store (or not sealed yet)", hex);
        case STORE_ECORRUPT:
          return Fail(STORE_ECORRUPT,
                      "object %s could not be read back from disk intact (the server's log "
                      "says why); it is not served", hex);
        case STORE_ENOSPACE:
          return Fail(STORE_ENOSPACE, "object %s is on disk and no memory could be freed to "
                      "restore it into%s", hex, timeout_ms > 0 ? " within the timeout" : "");
        case STORE_ENODISK:
          return Fail(STORE_ENODISK, "object %s is on disk and there is no memory to restore it "
                      "into: spilling other objects to make room fails (the server's log says "
                      "why)", hex);
        case STORE_EMISUSE:
          return Fail(STORE_EMISUSE, "object %s has as many open readers as a count can hold",
                      hex);
        default:
          return Fail(STORE_EPROTO, "object %s: unexpected status %d", hex, l->status());
      }
    }
    rc = MakeReader(c, *id, l, out);
    if (rc != STORE_OK) {
      const Message why = t_message;
      uint64_t uid = l->uid();
      SendRelease(c, &uid, 1);
      return FailMsg(rc, why.text);
    }
    return STORE_OK;
  });
}

int store_reader_read(store_reader* r, void* buf, size_t size, size_t* nread) {
  if (nread) *nread = 0;
  if (!r || (!buf && size)) return Fail(STORE_EINVAL, "reader or buffer is NULL");
  if (!Usable(r->conn)) return BrokenError(r->conn);
  size_t n = static_cast<size_t>(std::min<uint64_t>(size, r->size - r->pos));
  if (n && r->device >= 0) {
    std::string why;
    if (!storeclient::gpu::CopyToHost(r->conn->gpu_backend, r->local_device, buf,
                                      r->dptr + r->pos, n, &why)) {
      return FailMsg(STORE_EINVAL, why);
    }
  } else if (n) {
    std::memcpy(buf, r->data + r->pos, n);
  }
  r->pos += n;
  if (nread) *nread = n;
  return STORE_OK;
}

int store_reader_seek(store_reader* r, int64_t offset, int whence, uint64_t* pos) {
  if (!r) return Fail(STORE_EINVAL, "reader is NULL");
  if (!r->conn->OwnedByThisProcess()) return InheritedError(r->conn);
  return SeekImpl(&r->pos, r->size, offset, whence, pos);
}

uint64_t store_reader_tell(const store_reader* r) { return r ? r->pos : 0; }
uint64_t store_reader_size(const store_reader* r) { return r ? r->size : 0; }

const void* store_reader_data(const store_reader* r) {
  if (!r || !Usable(r->conn)) return nullptr;
  return r->data;
}

int store_reader_device_ptr(const store_reader* r, const void** dptr, int* device) {
  return DevicePtr(r, dptr, device, "reader");
}

int store_reader_device(const store_reader* r) { return r ? r->device : -1; }

const void* store_reader_metadata(const store_reader* r, uint64_t* size) {
  if (size) *size = 0;
  if (!r || !Usable(r->conn) || r->metadata_size == 0) return nullptr;
  if (size) *size = r->metadata_size;
  return r->metadata;
}

const store_object_id* store_reader_id(const store_reader* r) { return r ? &r->id : nullptr; }

void store_reader_close(store_reader* r) {
  if (!r) return;
  Conn* c = r->conn;
  if (Usable(c)) SendRelease(c, &r->uid, 1);
  delete r;
  Unref(c);
}

void store_readers_close(store_reader** readers, size_t n) {
  if (!readers) return;
  try {
    // Group by connection (readers normally share one), one release message per group.
    std::vector<uint64_t> uids;
    size_t i = 0;
    while (i < n) {
      if (!readers[i]) {
        i++;
        continue;
      }
      Conn* c = readers[i]->conn;
      uids.clear();
      for (size_t j = i; j < n; j++) {
        if (readers[j] && readers[j]->conn == c) uids.push_back(readers[j]->uid);
      }
      if (Usable(c)) {
        for (size_t k = 0; k < uids.size(); k += proto::kMaxIdsPerRequest) {
          SendRelease(c, uids.data() + k, std::min<size_t>(proto::kMaxIdsPerRequest, uids.size() - k));
        }
      }
      for (size_t j = i; j < n; j++) {
        if (readers[j] && readers[j]->conn == c) {
          delete readers[j];
          readers[j] = nullptr;
          Unref(c);
        }
      }
    }
  } catch (...) {
    // Out of memory while grouping: fall back to one release per reader.
    for (size_t i = 0; i < n; i++) {
      store_reader_close(readers[i]);
      readers[i] = nullptr;
    }
  }
}

// ---- management ----------------------------------------------------------------------------

int store_contains(store_client* client, const store_object_id* id, int* present) {
  return Guard([&]() -> int {
    if (present) *present = 0;
    if (!client || !id || !present) return Fail(STORE_EINVAL, "client, id or present is NULL");
    flatbuffers::FlatBufferBuilder fbb(128);
    proto::ObjectId pid = ProtoId(id);
    auto vec = fbb.CreateVectorOfStructs(&pid, 1);
    std::unique_ptr<Reply> reply;
    int rc = Call(client->conn, fbb, Body::ContainsRequest,
                  proto::CreateContainsRequest(fbb, vec).Union(), Body::ContainsReply, &reply);
    if (rc != STORE_OK) return rc;
    auto* p = reply->msg->body_as_ContainsReply()->present();
    if (p->size() != 1) return Fail(STORE_EPROTO, "bad contains reply");
    *present = p->Get(0) ? 1 : 0;
    return STORE_OK;
  });
}

int store_delete(store_client* client, const store_object_id* id) {
  return Guard([&]() -> int {
    if (!client || !id) return Fail(STORE_EINVAL, "client or id is NULL");
    flatbuffers::FlatBufferBuilder fbb(128);
    proto::ObjectId pid = ProtoId(id);
    auto vec = fbb.CreateVectorOfStructs(&pid, 1);
    std::unique_ptr<Reply> reply;
    int rc = Call(client->conn, fbb, Body::DeleteRequest,
                  proto::CreateDeleteRequest(fbb, vec).Union(), Body::DeleteReply, &reply);
    if (rc != STORE_OK) return rc;
    auto* dr = reply->msg->body_as_DeleteReply();
    auto* s = dr->statuses();
    if (s->size() != 1) return Fail(STORE_EPROTO, "bad delete reply");
    int st = s->Get(0);
    if (st == STORE_OK) return STORE_OK;
    char hex[41];
    store_object_id_to_hex(id, hex, sizeof hex);
    if (st == STORE_ENOTSEALED) {
      return Fail(st, "object %s is still being written; its creator can abort it", hex);
    }
    if (st == STORE_ENOTFOUND) return Fail(st, "object %s is not in the store", hex);
    return Fail(st < 0 && st >= STORE_ERRNO_MIN_ ? st : STORE_EPROTO, "object %s: %s", hex,
                dr->error() ? dr->error()->c_str() : "cannot delete it");
  });
}

int store_delete_many(store_client* client, const store_object_id* ids, size_t n,
                      size_t* deleted) {
  if (deleted) *deleted = 0;
  return Guard([&]() -> int {
    if (!client || (n && !ids)) return Fail(STORE_EINVAL, "client or ids is NULL");
    if (!client->conn->OwnedByThisProcess()) return InheritedError(client->conn);
    int first = STORE_OK;
    Message first_message;
    for (size_t start = 0; start < n; start += proto::kMaxIdsPerRequest) {
      size_t k = std::min<size_t>(n - start, proto::kMaxIdsPerRequest);
      flatbuffers::FlatBufferBuilder fbb(64 + 24 * k);
      auto vec = IdVector(fbb, ids + start, k);
      std::unique_ptr<Reply> reply;
      int rc = Call(client->conn, fbb, Body::DeleteRequest,
                    proto::CreateDeleteRequest(fbb, vec).Union(), Body::DeleteReply, &reply);
      if (rc != STORE_OK) return rc;
      auto* dr = reply->msg->body_as_DeleteReply();
      auto* st = dr->statuses();
      if (st->size() != k) return Fail(STORE_EPROTO, "bad delete reply");
      for (size_t i = 0; i < k; i++) {
        int code = st->Get(static_cast<flatbuffers::uoffset_t>(i));
        if (code == STORE_OK) {
          if (deleted) (*deleted)++;
        } else if (first == STORE_OK) {
          first = code < 0 && code >= STORE_ERRNO_MIN_ ? code : STORE_EPROTO;
          char hex[41];
          store_object_id_to_hex(&ids[start + i], hex, sizeof hex);
          Fail(first, "cannot delete object %s: %s", hex,
               dr->error() ? dr->error()->c_str() : store_errstr(first));
          first_message = t_message;
        }
      }
    }
    if (first != STORE_OK) t_message = first_message;
    return first;
  });
}

int store_info(store_client* client, const store_object_id* id, store_object_info* info) {
  return Guard([&]() -> int {
    if (!client || !id || !info) return Fail(STORE_EINVAL, "client, id or info is NULL");
    if (int rc = CheckOutStruct(info, "store_object_info"); rc != STORE_OK) return rc;
    const size_t caller_size = info->struct_size;
    flatbuffers::FlatBufferBuilder fbb(128);
    proto::ObjectId pid = ProtoId(id);
    std::unique_ptr<Reply> reply;
    int rc = Call(client->conn, fbb, Body::InfoRequest, proto::CreateInfoRequest(fbb, &pid).Union(),
                  Body::InfoReply, &reply);
    if (rc != STORE_OK) return rc;
    storeclient::WriteOutStruct(FromProto(*reply->msg->body_as_InfoReply()->info()), info,
                                caller_size);
    return STORE_OK;
  });
}

int store_list(store_client* client, store_object_info** out, size_t elem_size, size_t* count) {
  return Guard([&]() -> int {
    if (int rc = BeginList(client, out, elem_size, count, "store_object_info"); rc != STORE_OK) {
      return rc;
    }
    // Page by page (each reply is bounded), through a snapshot the server keeps for this list.
    OutArray<store_object_info> all(elem_size);
    uint64_t cursor = 0;
    do {
      flatbuffers::FlatBufferBuilder fbb(64);
      std::unique_ptr<Reply> reply;
      int rc = Call(client->conn, fbb, Body::ListRequest,
                    proto::CreateListRequest(fbb, cursor, proto::kMaxListPage).Union(),
                    Body::ListReply, &reply);
      if (rc != STORE_OK) return rc;
      auto* r = reply->msg->body_as_ListReply();
      auto* objs = r->objects();
      if (!all.Grow(objs->size())) {
        return Fail(STORE_ENOMEM, "out of memory for %zu objects", all.size + objs->size());
      }
      for (flatbuffers::uoffset_t i = 0; i < objs->size(); i++) all.Put(FromProto(*objs->Get(i)));
      if (r->cursor() != 0 && r->cursor() == cursor && objs->size() == 0) {
        MarkBroken(client->conn, STORE_EPROTO, "the store's list makes no progress");
        return BrokenError(client->conn);
      }
      cursor = r->cursor();
    } while (cursor != 0);
    all.Release(out, count);
    return STORE_OK;
  });
}

void store_free(void* p) { std::free(p); }

int store_pin(store_client* client, const store_object_id* id) {
  return Guard([&]() -> int {
    if (!client || !id) return Fail(STORE_EINVAL, "client or id is NULL");
    flatbuffers::FlatBufferBuilder fbb(128);
    proto::ObjectId pid = ProtoId(id);
    std::unique_ptr<Reply> reply;
    return Call(client->conn, fbb, Body::PinRequest, proto::CreatePinRequest(fbb, &pid).Union(),
                Body::PinReply, &reply);
  });
}

int store_unpin(store_client* client, const store_object_id* id) {
  return Guard([&]() -> int {
    if (!client || !id) return Fail(STORE_EINVAL, "client or id is NULL");
    flatbuffers::FlatBufferBuilder fbb(128);
    proto::ObjectId pid = ProtoId(id);
    std::unique_ptr<Reply> reply;
    return Call(client->conn, fbb, Body::UnpinRequest,
                proto::CreateUnpinRequest(fbb, &pid).Union(), Body::UnpinReply, &reply);
  });
}

namespace {
int LeaseCall(store_client* client, const store_object_id* id, bool unlease,
              uint32_t* lease_count) {
  return Guard([&]() -> int {
    if (lease_count) *lease_count = 0;
    if (!client || !id) return Fail(STORE_EINVAL, "client or id is NULL");
    flatbuffers::FlatBufferBuilder fbb(128);
    proto::ObjectId pid = ProtoId(id);
    std::unique_ptr<Reply> reply;
    int rc = Call(client->conn, fbb, Body::LeaseRequest,
                  proto::CreateLeaseRequest(fbb, &pid, unlease).Union(), Body::LeaseReply, &reply);
    if (rc != STORE_OK) return rc;
    if (lease_count) *lease_count = reply->msg->body_as_LeaseReply()->lease_count();
    return STORE_OK;
  });
}
}  // namespace

int store_lease(store_client* client, const store_object_id* id, uint32_t* lease_count) {
  return LeaseCall(client, id, false, lease_count);
}

int store_unlease(store_client* client, const store_object_id* id, uint32_t* lease_count) {
  return LeaseCall(client, id, true, lease_count);
}

namespace {
// Asks the store for its stats (store_stats_get and store_gpu_stats read different parts).
int CallStats(Conn* c, std::unique_ptr<Reply>* reply) {
  flatbuffers::FlatBufferBuilder fbb(64);
  return Call(c, fbb, Body::StatsRequest, proto::CreateStatsRequest(fbb).Union(),
              Body::StatsReply, reply);
}
}  // namespace

int store_stats_get(store_client* client, store_stats* stats) {
  return Guard([&]() -> int {
    if (!client || !stats) return Fail(STORE_EINVAL, "client or stats is NULL");
    if (int rc = CheckOutStruct(stats, "store_stats"); rc != STORE_OK) return rc;
    const size_t caller_size = stats->struct_size;
    std::unique_ptr<Reply> reply;
    if (int rc = CallStats(client->conn, &reply); rc != STORE_OK) return rc;
    auto* s = reply->msg->body_as_StatsReply();
    // Filled in whole here, then copied out at the caller's size.
    store_stats full{};
    full.capacity_bytes = s->capacity_bytes();
    full.used_bytes = s->used_bytes();
    full.object_count = s->object_count();
    full.client_count = s->client_count();
    full.created_count = s->created_count();
    full.sealed_count = s->sealed_count();
    full.created_bytes = s->created_bytes();
    full.sealed_bytes = s->sealed_bytes();
    full.pinned_count = s->pinned_count();
    full.pinned_bytes = s->pinned_bytes();
    full.open_count = s->open_count();
    full.open_bytes = s->open_bytes();
    full.deleted_pending_count = s->deleted_pending_count();
    full.deleted_pending_bytes = s->deleted_pending_bytes();
    full.waiting_gets = s->waiting_gets();
    full.waiting_creates = s->waiting_creates();
    full.total_creates = s->total_creates();
    full.total_seals = s->total_seals();
    full.total_gets = s->total_gets();
    full.total_releases = s->total_releases();
    full.total_deletes = s->total_deletes();
    full.total_aborts = s->total_aborts();
    full.total_full = s->total_full();
    full.uptime_ns = s->uptime_ns();
    full.server_pid = s->server_pid();
    full.largest_free_bytes = s->largest_free_bytes();
    full.resident_bytes = s->resident_bytes();
    full.total_contains = s->total_contains();
    full.total_infos = s->total_infos();
    full.total_lists = s->total_lists();
    full.total_pins = s->total_pins();
    full.total_unpins = s->total_unpins();
    full.total_requests = s->total_requests();
    full.total_bad_requests = s->total_bad_requests();
    full.spilling_count = s->spilling_count();
    full.spilling_bytes = s->spilling_bytes();
    full.spilled_count = s->spilled_count();
    full.spilled_bytes = s->spilled_bytes();
    full.restoring_count = s->restoring_count();
    full.restoring_bytes = s->restoring_bytes();
    full.evictable_bytes = s->evictable_bytes();
    full.spill_enabled = s->spill_enabled() ? 1 : 0;
    full.spill_files = s->spill_files();
    full.spill_disk_bytes = s->spill_disk_bytes();
    full.spill_dead_bytes = s->spill_dead_bytes();
    full.total_spilled_objects = s->total_spilled_objects();
    full.total_spilled_bytes = s->total_spilled_bytes();
    full.total_spill_ns = s->total_spill_ns();
    full.total_restored_objects = s->total_restored_objects();
    full.total_restored_bytes = s->total_restored_bytes();
    full.total_restore_ns = s->total_restore_ns();
    full.total_spill_failures = s->total_spill_failures();
    full.total_restore_failures = s->total_restore_failures();
    full.waiting_bytes = s->waiting_bytes();
    full.backlog_bytes = s->backlog_bytes();
    full.partial_bytes = s->partial_bytes();
    full.pending_fds = s->pending_fds();
    full.limit_client_waiting = s->limit_client_waiting();
    full.limit_waiting_bytes = s->limit_waiting_bytes();
    full.limit_client_backlog = s->limit_client_backlog();
    full.limit_backlog = s->limit_backlog();
    full.limit_partial_bytes = s->limit_partial_bytes();
    full.limit_clients = s->limit_clients();
    full.limit_client_gpu_fds = s->limit_client_gpu_fds();
    full.fd_limit = s->fd_limit();
    full.refused_client_waiting = s->refused_client_waiting();
    full.refused_waiting_bytes = s->refused_waiting_bytes();
    full.closed_client_backlog = s->closed_client_backlog();
    full.closed_backlog = s->closed_backlog();
    full.closed_partial = s->closed_partial();
    full.refused_clients = s->refused_clients();
    full.accept_failures = s->accept_failures();
    full.refused_gpu_fds = s->refused_gpu_fds();
    full.instance_id = s->instance_id();
    full.start_time_ns = s->start_time_ns();
    full.when_full_drop = s->when_full_drop() ? 1 : 0;
    full.total_dropped_objects = s->total_dropped_objects();
    full.total_dropped_bytes = s->total_dropped_bytes();
    storeclient::WriteOutStruct(full, stats, caller_size);
    return STORE_OK;
  });
}

int store_gpu_stats(store_client* client, store_gpu_device_stats** out, size_t elem_size,
                    size_t* count, int* backend) {
  return Guard([&]() -> int {
    if (backend) *backend = STORE_GPU_BACKEND_NONE;
    if (int rc = BeginList(client, out, elem_size, count, "store_gpu_device_stats");
        rc != STORE_OK) {
      return rc;
    }
    // The store said at connect what backs its GPU objects, for its lifetime: with none there
    // are no devices to ask about (store-top and store info call this on every refresh).
    if (client->conn->gpu_backend == storeclient::gpu::Backend::kNone) {
      return Usable(client->conn) ? STORE_OK : BrokenError(client->conn);
    }
    std::unique_ptr<Reply> reply;
    if (int rc = CallStats(client->conn, &reply); rc != STORE_OK) return rc;
    auto* s = reply->msg->body_as_StatsReply();
    if (backend) *backend = static_cast<int>(s->gpu_backend());
    auto* gpus = s->gpus();
    if (!gpus) return STORE_OK;
    return CopyOut(gpus, out, elem_size, count, "devices", [&](flatbuffers::uoffset_t i) {
      const proto::GpuDeviceStats* g = gpus->Get(i);
      store_gpu_device_stats v{};
      v.device = g->device();
      v.chunks = g->chunks();
      v.capacity_bytes = g->capacity_bytes();
      v.used_bytes = g->used_bytes();
      v.object_count = g->object_count();
      v.chunk_size = g->chunk_size();
      v.largest_free_bytes = g->largest_free_bytes();
      return v;
    });
  });
}

int store_set_importance(store_client* client, const store_object_id* id, int32_t importance) {
  return Guard([&]() -> int {
    if (!client || !id) return Fail(STORE_EINVAL, "client or id is NULL");
    flatbuffers::FlatBufferBuilder fbb(128);
    proto::ObjectId pid = ProtoId(id);
    std::unique_ptr<Reply> reply;
    return Call(client->conn, fbb, Body::SetImportanceRequest,
                proto::CreateSetImportanceRequest(fbb, &pid, importance).Union(),
                Body::SetImportanceReply, &reply);
  });
}

int store_prefetch(store_client* client, const store_object_id* ids, size_t n) {
  return Guard([&]() -> int {
    if (!client || (n && !ids)) return Fail(STORE_EINVAL, "client or ids is NULL");
    if (!client->conn->OwnedByThisProcess()) return InheritedError(client->conn);
    for (size_t start = 0; start < n; start += proto::kMaxIdsPerRequest) {
      size_t k = std::min<size_t>(n - start, proto::kMaxIdsPerRequest);
      flatbuffers::FlatBufferBuilder fbb(64 + 24 * k);
      auto vec = IdVector(fbb, ids + start, k);
      std::unique_ptr<Reply> reply;
      int rc = Call(client->conn, fbb, Body::PrefetchRequest,
                    proto::CreatePrefetchRequest(fbb, vec).Union(), Body::PrefetchReply, &reply);
      if (rc != STORE_OK) return rc;
    }
    return STORE_OK;
  });
}

int store_evict(store_client* client, uint64_t bytes, uint64_t* spilled) {
  return Guard([&]() -> int {
    if (spilled) *spilled = 0;
    if (!client) return Fail(STORE_EINVAL, "client is NULL");
    flatbuffers::FlatBufferBuilder fbb(64);
    std::unique_ptr<Reply> reply;
    int rc = Call(client->conn, fbb, Body::EvictRequest,
                  proto::CreateEvictRequest(fbb, bytes).Union(), Body::EvictReply, &reply);
    if (rc != STORE_OK) return rc;
    if (spilled) *spilled = reply->msg->body_as_EvictReply()->spilled();
    return STORE_OK;
  });
}

int store_spill_url(store_client* client, const store_object_id* id, char* buf, size_t len) {
  return Guard([&]() -> int {
    if (buf && len) buf[0] = '\0';
    if (!client || !id || !buf) return Fail(STORE_EINVAL, "client, id or buf is NULL");
    flatbuffers::FlatBufferBuilder fbb(128);
    proto::ObjectId pid = ProtoId(id);
    std::unique_ptr<Reply> reply;
    int rc = Call(client->conn, fbb, Body::InfoRequest, proto::CreateInfoRequest(fbb, &pid).Union(),
                  Body::InfoReply, &reply);
    if (rc != STORE_OK) return rc;
    auto* url = reply->msg->body_as_InfoReply()->spill_url();
    if (!url || url->size() == 0) {
      char hex[41];
      store_object_id_to_hex(id, hex, sizeof hex);
      return Fail(STORE_ENOTFOUND, "object %s has no copy on disk", hex);
    }
    if (url->size() + 1 > len) {
      return Fail(STORE_EINVAL, "the URL needs %u bytes, the buffer has %zu", url->size() + 1, len);
    }
    std::memcpy(buf, url->data(), url->size());
    buf[url->size()] = '\0';
    return STORE_OK;
  });
}

int store_list_spill_files(store_client* client, store_spill_file_info** out, size_t elem_size,
                           size_t* count) {
  return Guard([&]() -> int {
    if (int rc = BeginList(client, out, elem_size, count, "store_spill_file_info");
        rc != STORE_OK) {
      return rc;
    }
    OutArray<store_spill_file_info> all(elem_size);
    uint64_t after = 0;
    do {
      flatbuffers::FlatBufferBuilder fbb(64);
      std::unique_ptr<Reply> reply;
      int rc = Call(client->conn, fbb, Body::SpillFilesRequest,
                    proto::CreateSpillFilesRequest(fbb, after).Union(), Body::SpillFilesReply,
                    &reply);
      if (rc != STORE_OK) return rc;
      auto* r = reply->msg->body_as_SpillFilesReply();
      auto* files = r->files();
      if (!all.Grow(files->size())) {
        return Fail(STORE_ENOMEM, "out of memory for %zu spill files", all.size + files->size());
      }
      for (flatbuffers::uoffset_t i = 0; i < files->size(); i++) {
        const proto::SpillFileInfo* f = files->Get(i);
        store_spill_file_info o{};
        if (f->path()) {
          size_t n = std::min<size_t>(f->path()->size(), sizeof o.path - 1);
          std::memcpy(o.path, f->path()->data(), n);
        }
        o.size = f->size();
        o.live_objects = f->live_objects();
        o.live_bytes = f->live_bytes();
        o.dead_bytes = f->dead_bytes();
        o.created_time_ns = f->created_ns();
        all.Put(o);
      }
      if (r->next() != 0 && r->next() <= after) {
        MarkBroken(client->conn, STORE_EPROTO, "the store's list of spill files makes no progress");
        return BrokenError(client->conn);
      }
      after = r->next();
    } while (after != 0);
    all.Release(out, count);
    return STORE_OK;
  });
}

int store_list_clients(store_client* client, store_client_info** out, size_t elem_size,
                       size_t* count) {
  return Guard([&]() -> int {
    if (int rc = BeginList(client, out, elem_size, count, "store_client_info"); rc != STORE_OK) {
      return rc;
    }
    flatbuffers::FlatBufferBuilder fbb(64);
    std::unique_ptr<Reply> reply;
    int rc = Call(client->conn, fbb, Body::ClientsRequest, proto::CreateClientsRequest(fbb).Union(),
                  Body::ClientsReply, &reply);
    if (rc != STORE_OK) return rc;
    auto* r = reply->msg->body_as_ClientsReply();
    auto* list = r->clients();
    return CopyOut(list, out, elem_size, count, "clients", [&](flatbuffers::uoffset_t i) {
      const proto::ClientInfo* k = list->Get(i);
      store_client_info o{};
      o.client_id = k->client_id();
      if (k->name()) {
        size_t n = std::min<size_t>(k->name()->size(), sizeof o.name - 1);
        std::memcpy(o.name, k->name()->data(), n);
        o.name[n] = '\0';
      }
      o.pid = k->pid();
      o.uid = k->uid();
      o.objects_created = k->objects_created();
      o.creating_count = k->creating();
      o.readers_held = k->readers();
      o.pins_held = k->pins();
      o.bytes_held = k->bytes_held();
      o.connect_time_ns = k->connect_time_ns();
      o.requests = k->requests();
      o.is_self = k->client_id() == r->self_id();
      return o;
    });
  });
}

int store_list_page(store_client* client, const store_list_options* opts, store_object_info** out,
                    size_t elem_size, size_t* count, uint64_t* total) {
  return Guard([&]() -> int {
    if (total) *total = 0;
    if (int rc = BeginList(client, out, elem_size, count, "store_object_info"); rc != STORE_OK) {
      return rc;
    }
    static const store_list_options kDefaults = STORE_LIST_OPTIONS_INIT;
    if (!opts) opts = &kDefaults;
    if (opts->version != STORE_LIST_OPTIONS_VERSION) {
      return Fail(STORE_EINVAL, "store_list_options.version is %u; this library knows %u",
                  opts->version, STORE_LIST_OPTIONS_VERSION);
    }
    if (opts->sort > STORE_SORT_STATE) return Fail(STORE_EINVAL, "unknown sort key %u", opts->sort);
    if (opts->limit > STORE_MAX_PAGE_OBJECTS) {
      return Fail(STORE_EINVAL, "limit %u is over STORE_MAX_PAGE_OBJECTS", opts->limit);
    }
    std::vector<uint8_t> prefix;
    size_t nibbles = 0;
    if (opts->id_prefix) {
      for (const char* p = opts->id_prefix; *p; p++, nibbles++) {
        char ch = *p;
        int v = ch >= '0' && ch <= '9' ? ch - '0'
                : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
                : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10 : -1;
        if (v < 0 || nibbles >= 40) {
          return Fail(STORE_EINVAL, "id_prefix must be at most 40 hex digits: '%.48s'",
                      opts->id_prefix);
        }
        if (nibbles % 2 == 0) {
          prefix.push_back(static_cast<uint8_t>(v << 4));
        } else {
          prefix.back() |= static_cast<uint8_t>(v);
        }
      }
    }
    flatbuffers::FlatBufferBuilder fbb(128);
    auto pv = fbb.CreateVector(prefix);
    auto body = proto::CreateObjectsRequest(fbb, static_cast<proto::SortKey>(opts->sort),
                                            opts->descending != 0, opts->offset, opts->limit, pv,
                                            static_cast<uint32_t>(nibbles));
    std::unique_ptr<Reply> reply;
    int rc = Call(client->conn, fbb, Body::ObjectsRequest, body.Union(), Body::ObjectsReply, &reply);
    if (rc != STORE_OK) return rc;
    auto* r = reply->msg->body_as_ObjectsReply();
    if (total) *total = r->total();
    auto* objs = r->objects();
    return CopyOut(objs, out, elem_size, count, "objects",
                   [&](flatbuffers::uoffset_t i) { return FromProto(*objs->Get(i)); });
  });
}

// ---- helpers -------------------------------------------------------------------------------

int store_object_id_from_string(const char* str, size_t len, store_object_id* out) {
  if (!out || (!str && len)) return Fail(STORE_EINVAL, "str or out is NULL");
  store::Sha1(str, len, out->bytes);
  return STORE_OK;
}

int store_object_id_to_hex(const store_object_id* id, char* hex, size_t hex_size) {
  if (!id || !hex) return Fail(STORE_EINVAL, "id or hex is NULL");
  if (hex_size < 2 * STORE_OBJECT_ID_SIZE + 1) {
    return Fail(STORE_EINVAL, "hex needs %d bytes, got %zu", 2 * STORE_OBJECT_ID_SIZE + 1,
                hex_size);
  }
  store::hex::Encode(id->bytes, STORE_OBJECT_ID_SIZE, hex);
  hex[2 * STORE_OBJECT_ID_SIZE] = '\0';
  return STORE_OK;
}

int store_object_id_from_hex(const char* hex, store_object_id* out) {
  if (!hex || !out) return Fail(STORE_EINVAL, "hex or out is NULL");
  auto val = [](char ch) -> int {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
  };
  store_object_id id;
  for (int i = 0; i < STORE_OBJECT_ID_SIZE; i++) {
    int hi = val(hex[2 * i]);
    int lo = hi < 0 ? -1 : val(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return Fail(STORE_EINVAL, "not 40 hex digits: '%.41s'", hex);
    id.bytes[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  if (hex[2 * STORE_OBJECT_ID_SIZE] != '\0') {
    return Fail(STORE_EINVAL, "more than 40 hex digits: '%.48s'", hex);
  }
  *out = id;
  return STORE_OK;
}

}  // extern "C"
