// client_internal.h - what the files of libstoreclient share: the connection (Conn), the
// public handles, the error reporting and the calls that send requests and map the region.
//
// Owns: the types only; each function declared here is defined in the file named above it.
// Called by: capi/*.cpp (errors, transport, connect, mapping, writer, reader, management, ids).
// Threads: see below; every declaration says what it requires.
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
//
// The names below are in storeclient::internal, hidden like everything of the library but the
// exported store_* functions (capi/libstoreclient.map).
#pragma once

#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "framing.h"
#include "gpu.h"
#include "storeclient.h"

namespace storeclient::internal {

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

// The details of this thread's last failure (store_last_error_message). errors.cpp.
extern thread_local Message t_message;

// Sets this thread's message (printf-style, or as it is) and returns code. errors.cpp.
int Fail(int code, const char* fmt, ...) noexcept __attribute__((format(printf, 2, 3)));
int FailMsg(int code, const char* message) noexcept;
int FailMsg(int code, const std::string& message) noexcept;

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

// Counts fork()s in this process's history (pthread_atfork, child side; transport.cpp). A
// connection made before a fork belongs to the parent: in the child it is inert (see
// Conn::OwnedByThisProcess).
extern std::atomic<uint64_t> g_fork_generation;

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

// References to a Conn: the client and each of its readers and writers hold one; the last
// Unref deletes it. transport.cpp.
void Ref(Conn* c);
void Unref(Conn* c);

// ---- breaking, sending and receiving (transport.cpp) ---------------------------------------

// The code of a connection the store closes with an error of this status.
int ClosingCode(int status);
// Ends the session: every call after this fails. REQUIRES (Locked): c->mu held; c owned by
// this process.
void MarkBrokenLocked(Conn* c, int code, const char* what, const char* detail = "") noexcept;
void MarkBroken(Conn* c, int code, const char* what, const char* detail = "") noexcept;
// The error of every call on a connection inherited from the parent process (see Conn).
int InheritedError(const Conn* c) noexcept;
// The error of a call on a broken, freed or inherited connection.
int BrokenError(Conn* c) noexcept;
// Whether requests may go out on c.
bool Usable(Conn* c);
// Finishes the message in fbb (size-prefixed) with seq and body.
void FinishMessage(flatbuffers::FlatBufferBuilder& fbb, uint64_t seq, Body type,
                   flatbuffers::Offset<void> body);
// Sends a whole message after the queued releases. Returns STORE_OK or STORE_ECONN.
int SendAll(Conn* c, const uint8_t* data, size_t len);
// Makes queueing and sending releases allocate nothing afterwards.
void PrepareReleases(Conn* c);
// Starts a thread of the library with every signal blocked.
bool StartThread(pthread_t* t, void* (*main)(void*), Conn* c);
// Queues releases of objects (or sends them at once). REQUIRES: c owned by this process.
void QueueRelease(Conn* c, const uint64_t* uids, size_t n);
// Waits for the reply registered under seq; on success *out owns it.
int WaitReply(Conn* c, uint64_t seq, Slot* slot, std::unique_ptr<Reply>* out);
// Leaves nothing in c->waiting pointing at slot. REQUIRES: c->mu not held.
void Forget(Conn* c, uint64_t seq, Slot* slot, bool sent) noexcept;
// Sends one request and waits for its reply; checks the reply's status and body type.
int Call(Conn* c, flatbuffers::FlatBufferBuilder& fbb, Body type, flatbuffers::Offset<void> body,
         Body want, std::unique_ptr<Reply>* out);
// As Call, for a request already finished with its seq.
int CallFinished(Conn* c, uint64_t seq, const uint8_t* msg, size_t len, Body want,
                 std::unique_ptr<Reply>* out);
// Sends a request that has no reply (release, disconnect).
int SendOneWay(Conn* c, flatbuffers::FlatBufferBuilder& fbb, Body type,
               flatbuffers::Offset<void> body);
// An object id as the protocol carries it.
proto::ObjectId ProtoId(const store_object_id* id);
// A vector of n ids in fbb, for get, delete and prefetch requests.
flatbuffers::Offset<flatbuffers::Vector<const proto::ObjectId*>> IdVector(
    flatbuffers::FlatBufferBuilder& fbb, const store_object_id* ids, size_t n);

// ---- the region and GPU chunks (mapping.cpp) -----------------------------------------------

// The unit of the strict write window (see "the strict write window" in mapping.cpp): the
// store places objects larger than a staged one on pages of this size.
constexpr uint64_t kWindowPage = 4096;

// Whether STORE_CLIENT_WRITE_WINDOW=1 is in the environment.
bool WriteWindowWanted();
uint64_t RoundUpTo(uint64_t v, uint64_t unit);
// Makes [begin, end) of wbase writable for a writer of this process. Returns 0, -1 if the
// session has ended, or the errno of the failure.
int OpenWindow(Conn* c, uint64_t begin, uint64_t end) noexcept;
// Closes the window OpenWindow opened. Returns false if an mprotect failed.
bool CloseWindow(Conn* c, uint64_t begin, uint64_t end) noexcept;
// The session ends: every window is closed and none opens again.
void ShutWindows(Conn* c) noexcept;

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
Population PopulationWanted();
// Maps the whole read-only mapping, chunk by chunk (Population::kAll); a thread's main.
void* PopulatorMain(void* arg);
// Whether [offset, offset + len) is inside the region.
bool InRegion(Conn* c, uint64_t offset, uint64_t len);
// write: the writable mapping (a writer's object), else the read-only one.
void Populate(Conn* c, uint64_t offset, uint64_t len, bool background = false,
              bool write = false);
// Where a GPU object's data is in this process: maps its chunk on first use.
int DeviceData(Conn* c, int32_t device, uint32_t chunk, uint64_t chunk_offset, uint64_t size,
               uint8_t** dptr, int32_t* local_device);

// The seek of readers and writers.
inline int SeekImpl(uint64_t* pos, uint64_t size, int64_t offset, int whence, uint64_t* out) {
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

}  // namespace storeclient::internal

// ---- public handles ------------------------------------------------------------------------

struct store_client {
  storeclient::internal::Conn* conn;
};

struct store_writer {
  storeclient::internal::Conn* conn;
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
  storeclient::internal::Conn* conn;
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

