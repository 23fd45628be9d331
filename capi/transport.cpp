// transport.cpp - the connection's wire: sending requests (with the queued releases in front),
// batching releases, receiving and handing replies to their waiters, and breaking a session.
//
// Owns: the release thread of each connection (ReleaseMain) and the reader role (ReaderRole).
// Called by: the other files of the library, through Call, CallFinished, SendOneWay, SendAll,
// WaitReply, QueueRelease and the error helpers (client_internal.h).
// Threads: any thread may call; sending is serialised by Conn::send_mu, and receiving is done by
// whichever waiting thread holds the reader role (see client_internal.h).
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "client_internal.h"

namespace storeclient::internal {

// Counts fork()s in this process's history (pthread_atfork, child side). A connection made
// before a fork belongs to the parent: in the child it is inert (see Conn::OwnedByThisProcess).
// The handler is registered when the library is loaded, before any connection can exist.
std::atomic<uint64_t> g_fork_generation{0};
[[maybe_unused]] const int g_atfork_registered = pthread_atfork(
    nullptr, nullptr, [] { g_fork_generation.fetch_add(1, std::memory_order_relaxed); });

void Ref(Conn* c) { c->refs.fetch_add(1, std::memory_order_relaxed); }
void Unref(Conn* c) {
  if (c->refs.fetch_sub(1, std::memory_order_acq_rel) == 1) delete c;
}

namespace {

// The slot of every request whose waiter gave up before its reply came (an exception between
// sending and receiving): the reply is dropped when it arrives. Never written.
Slot g_discard;

int64_t MonoNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

}  // namespace

// The code of a connection the store closes with an error of this status: a refusal of this
// user (STORE_EPERM) or over one of its limits (STORE_ELIMIT, e.g. --max-clients) as it is,
// anything else as a lost connection.
int ClosingCode(int status) {
  return status == STORE_EPERM || status == STORE_ELIMIT ? status : STORE_ECONN;
}

// Ends the session: every call after this fails. The message is what, then detail.
// REQUIRES: c->mu held; c owned by this process.
void MarkBrokenLocked(Conn* c, int code, const char* what, const char* detail) noexcept {
  if (c->broken) return;
  c->broken = true;
  c->broken_code = code;
  std::snprintf(c->broken_message.text, sizeof c->broken_message.text, "%s%s", what, detail);
  // The store aborts this client's unsealed objects: their pages are no longer its to write.
  ShutWindows(c);
  shutdown(c->fd, SHUT_RDWR);
  c->cv.notify_all();
}

void MarkBroken(Conn* c, int code, const char* what, const char* detail) noexcept {
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

namespace {

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

}  // namespace

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

namespace {
void* ReleaseMain(void* arg);
}  // namespace

// Releases objects: queues the uids (see client_internal.h), or sends them at once when
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

namespace {

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

}  // namespace

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

namespace {

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
}  // namespace

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
}  // namespace storeclient::internal
