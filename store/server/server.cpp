#include "server/server.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cinttypes>
#include <cstring>
#include <ctime>

#include "server/log.h"
#include "server/server_internal.h"
#include "server/util.h"
#include "spill/spill_file.h"
#include "storeclient.h"

namespace store {

using proto::Body;

namespace {

// What hugetlbfs has (/proc/meminfo) against what a region of capacity bytes needs, and the
// sysctls that would give enough, for the --hugepages warning: a pool reserved for good, or
// surplus pages that the kernel takes from free memory when asked and gives back afterwards.
std::string HugetlbAdvice(uint64_t capacity) {
  unsigned long long total = 0, avail = 0, surplus = 0, kib = 0;
  int found = 0;
  if (FILE* f = fopen("/proc/meminfo", "r")) {
    char line[128];
    while (fgets(line, sizeof line, f)) {
      found += sscanf(line, "HugePages_Total: %llu", &total) == 1;
      found += sscanf(line, "HugePages_Free: %llu", &avail) == 1;
      found += sscanf(line, "HugePages_Surp: %llu", &surplus) == 1;
      found += sscanf(line, "Hugepagesize: %llu kB", &kib) == 1;
    }
    fclose(f);
  }
  if (found != 4 || kib == 0) return "hugetlbfs is not available";
  const unsigned long long need = (capacity + (kib << 10) - 1) / (kib << 10);
  const unsigned long long missing = need > avail ? need - avail : 0;
  char buf[320];
  snprintf(buf, sizeof buf,
           "hugetlbfs has %llu of %llu huge pages of %llu KiB free, %llu needed: e.g. sysctl "
           "vm.nr_hugepages=%llu to reserve them, or vm.nr_overcommit_hugepages=%llu to let the "
           "kernel lend them while it has the memory",
           avail, total, kib, need, total - surplus + missing, surplus + missing);
  return buf;
}

// A get reads an object that is sealed or being spilled: its bytes are still in memory.
bool Readable(const Object* o) {
  return o && (o->state == ObjectState::kSealed || o->state == ObjectState::kSpilling);
}

// Whether a get must wait for o (nullptr: no such object). An object on disk is brought back
// whatever the timeout; a missing or unsealed one is waited for only when the caller asked to.
bool GetWaitsFor(const Object* o, int64_t timeout) {
  if (Readable(o)) return false;
  bool on_disk = o && (o->state == ObjectState::kSpilled || o->state == ObjectState::kRestoring);
  return on_disk || timeout != 0;
}

// Most bytes of replies held back while a read's requests are handled; a reply that would pass
// it goes out at once, after those held.
constexpr size_t kMaxCorkBytes = 256u << 10;
// The held-back buffer a client keeps between reads; a larger one is given back.
constexpr size_t kKeepCorkBytes = 64u << 10;

struct WriteReq {
  uv_write_t req;
  flatbuffers::DetachedBuffer data;  // one reply (Send) ...
  std::vector<uint8_t> bytes;        // ... or the replies of a read (Flush)
  uv_pipe_t* fd_wrap = nullptr;
};

}  // namespace

// Written, or cancelled by the connection's close: the bytes leave the client's backlog and a
// descriptor sent along is closed.
void Server::OnWritten(uv_write_t* req, int /*status*/) {
  auto* w = reinterpret_cast<WriteReq*>(req);
  auto* c = static_cast<Client*>(req->handle->data);
  Server* s = c->server;
  if (w->fd_wrap) {
    uv_close(reinterpret_cast<uv_handle_t*>(w->fd_wrap),
             [](uv_handle_t* h) { delete reinterpret_cast<uv_pipe_t*>(h); });
    c->pending_fds--;
    s->pending_fds_--;
  }
  delete w;
  s->NoteBacklog(c);
}

// ------------------------------------------------------------------------------------------
// Start-up and shutdown.

Server::Server(ServerOptions options, spill::Env* env)
    : options_(std::move(options)), env_(env ? env : spill::Env::Default()) {
  policy_.high = options_.spill_high;
  policy_.low = options_.spill_low;
  policy_.max_file_bytes = options_.spill_file_max_size;
  policy_.max_file_objects = options_.spill_file_max_objects;
}

Server::~Server() = default;

bool Server::PrepareSocket() {
  const std::string& path = options_.socket_path;
  struct stat st;
  if (lstat(path.c_str(), &st) != 0) {
    int err = errno;
    // Name the directory when it is the directory that is wrong (bind would only say
    // "permission denied" for a missing one).
    size_t slash = path.rfind('/');
    std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
    struct stat ds;
    if (stat(dir.c_str(), &ds) != 0) {
      LOG_ERROR("cannot use socket path %s: the directory %s %s", path.c_str(), dir.c_str(),
                errno == ENOENT ? "does not exist" : std::strerror(errno));
      return false;
    }
    if (!S_ISDIR(ds.st_mode)) {
      LOG_ERROR("cannot use socket path %s: %s is not a directory", path.c_str(), dir.c_str());
      return false;
    }
    if (err == ENOENT) {
      if (access(dir.c_str(), W_OK | X_OK) != 0) {
        LOG_ERROR("cannot use socket path %s: this user (uid %u) may not create files in the "
                  "directory %s", path.c_str(), static_cast<unsigned>(geteuid()), dir.c_str());
        return false;
      }
      return true;
    }
    LOG_ERROR("cannot use socket path %s: %s (in the directory %s)", path.c_str(),
              std::strerror(err), dir.c_str());
    return false;
  }
  if (!S_ISSOCK(st.st_mode)) {
    LOG_ERROR("cannot use socket path %s: it exists and is not a socket", path.c_str());
    return false;
  }
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    LOG_ERROR("socket: %s", std::strerror(errno));
    return false;
  }
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
  int rc = connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  int err = errno;
  close(fd);
  if (rc == 0) {
    LOG_ERROR("another store is already listening on %s; not starting", path.c_str());
    return false;
  }
  if (err != ECONNREFUSED) {
    LOG_ERROR("cannot tell whether a store is listening on %s: %s", path.c_str(),
              std::strerror(err));
    return false;
  }
  if (unlink(path.c_str()) != 0) {
    LOG_ERROR("cannot remove the stale socket %s: %s", path.c_str(), std::strerror(errno));
    return false;
  }
  LOG_INFO("removed the stale socket %s left by a store that is gone", path.c_str());
  return true;
}

bool Server::Listen() {
  uv_pipe_init(&loop_, &listener_, 0);
  listener_.data = this;
  mode_t old = umask(0177);  // the socket is created 0600: owner only
  int rc = uv_pipe_bind(&listener_, options_.socket_path.c_str());
  umask(old);
  if (rc != 0) {
    LOG_ERROR("cannot bind %s: %s", options_.socket_path.c_str(), uv_strerror(rc));
    uv_close(reinterpret_cast<uv_handle_t*>(&listener_), nullptr);
    return false;
  }
  rc = uv_listen(reinterpret_cast<uv_stream_t*>(&listener_), 1024, OnConnection);
  if (rc != 0) {
    LOG_ERROR("cannot listen on %s: %s", options_.socket_path.c_str(), uv_strerror(rc));
    uv_close(reinterpret_cast<uv_handle_t*>(&listener_), nullptr);
    unlink(options_.socket_path.c_str());
    return false;
  }
  listening_ = true;
  return true;
}

int Server::Run() {
  signal(SIGPIPE, SIG_IGN);
  start_ns_ = MonotonicNs();
  start_realtime_ns_ = RealtimeNs();
  // Which store this is, for clients that must tell whether they share one.
  if (getrandom(&instance_id_, sizeof instance_id_, 0) != sizeof instance_id_) {
    instance_id_ = static_cast<uint64_t>(start_realtime_ns_) * 0x9E3779B97F4A7C15ull ^
                   (static_cast<uint64_t>(getpid()) << 32) ^ static_cast<uint64_t>(start_ns_);
  }
  if (instance_id_ == 0) instance_id_ = 1;
  for (const auto& d : options_.spill_dirs) {
    struct stat st;
    if (stat(d.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
      LOG_ERROR("--spill-dir %s is not a directory", d.c_str());
      return 1;
    }
  }
  if (!PrepareSocket()) return 1;

  RegionOptions ro;
  ro.capacity = options_.memory;
  ro.prefault = options_.prefault;
  ro.hugepages = options_.hugepages != HugePages::kNever;
  // Unasked, huge pages never make the memory larger than --memory says.
  ro.hugepages_exact = options_.hugepages == HugePages::kWhenAvailable;
  std::string error;
  region_ = Region::Create(ro, &error);
  if (!region_) {
    LOG_ERROR("cannot set up %s of shared memory: %s", Bytes(options_.memory).c_str(),
              error.c_str());
    return 1;
  }

  // The largest object: the whole capacity (large objects take whole pages, no size class).
  max_object_ = region_->LargestFree();
  // The loop exists before recovery: removing spill files whose records are all deleted, and
  // their tombstone logs, queues work on it.
  uv_loop_init(&loop_);
  loop_.data = this;
  if (!OpenSpill(&error)) {
    LOG_ERROR("cannot use the spill directories: %s", error.c_str());
    uv_run(&loop_, UV_RUN_DEFAULT);
    uv_loop_close(&loop_);
    region_.reset();
    return 1;
  }
  if (options_.hugepages == HugePages::kAsked && !region_->hugepages_active()) {
    LOG_WARN("--hugepages: the system gave no huge pages (%s; transparent huge pages for shared "
             "memory are off); using normal pages",
             HugetlbAdvice(options_.memory).c_str());
  }
  StartGpu();
  SetUpLimits();
  // Signals first: once the socket accepts, a SIGTERM must find its handler.
  uv_signal_init(&loop_, &sigint_);
  uv_signal_init(&loop_, &sigterm_);
  sigint_.data = sigterm_.data = this;
  uv_signal_start(&sigint_, OnSignal, SIGINT);
  uv_signal_start(&sigterm_, OnSignal, SIGTERM);
  uv_async_init(&loop_, &async_stop_, OnAsyncStop);
  async_stop_.data = this;
  uv_check_init(&loop_, &closer_);
  closer_.data = this;
  InitSecondlyLog(&restore_log_, &Server::FlushRestoreLog);
  InitSecondlyLog(&drop_log_, &Server::FlushDropLog);
  if (!Listen()) {
    Shutdown();
    uv_run(&loop_, UV_RUN_DEFAULT);
    uv_loop_close(&loop_);
    dirs_.reset();
    region_.reset();
    return 1;
  }
  if (!options_.metrics_file.empty()) {
    uv_timer_init(&loop_, &metrics_timer_);
    metrics_timer_.data = this;
    WriteMetrics();
    uv_timer_start(&metrics_timer_, OnMetricsTimer, options_.metrics_interval_ms,
                   options_.metrics_interval_ms);
    metrics_active_ = true;
  }

  LOG_INFO("store %s listening on %s with %s of shared memory (objects up to %s)%s%s%s",
           STORE_VERSION_STRING, options_.socket_path.c_str(), Bytes(region_->capacity()).c_str(),
           Bytes(max_object_).c_str(),
           options_.prefault ? ", prefaulted" : "",
           region_->hugepages_active() ? ", huge pages" : "",
           DropMode() ? "; when full, unused objects are dropped" : "");
  uv_run(&loop_, UV_RUN_DEFAULT);
  int rc = uv_loop_close(&loop_);
  if (rc != 0) LOG_WARN("event loop closed with handles still open: %s", uv_strerror(rc));
  for (auto& [path, dir] : dir_states_) {
    if (dir->log_fd >= 0) env_->Close(dir->log_fd);
    dir->log_fd = -1;
  }
  dirs_.reset();  // releases the spill directories (spill files of live objects stay)
  region_.reset();
  LOG_INFO("stopped");
  return 0;
}

void Server::Stop() { uv_async_send(&async_stop_); }

void Server::OnAsyncStop(uv_async_t* h) { static_cast<Server*>(h->data)->Shutdown(); }

void Server::OnSignal(uv_signal_t* h, int signum) {
  auto* s = static_cast<Server*>(h->data);
  LOG_INFO("received %s, shutting down", signum == SIGINT ? "SIGINT" : "SIGTERM");
  s->Shutdown();
}

void Server::Shutdown() {
  if (stopping_) return;
  stopping_ = true;
  if (listening_) {
    uv_close(reinterpret_cast<uv_handle_t*>(&listener_), nullptr);
    unlink(options_.socket_path.c_str());
    listening_ = false;
  }
  std::vector<Client*> all;
  for (auto& [id, c] : clients_) all.push_back(c);
  for (Client* c : all) CloseClient(c, "server shutting down");
  uv_close(reinterpret_cast<uv_handle_t*>(&sigint_), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&sigterm_), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&async_stop_), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&closer_), nullptr);
  CloseSecondlyLog(&restore_log_);
  CloseSecondlyLog(&drop_log_);
  if (metrics_active_) {
    uv_timer_stop(&metrics_timer_);
    uv_close(reinterpret_cast<uv_handle_t*>(&metrics_timer_), nullptr);
    metrics_active_ = false;
    unlink(options_.metrics_file.c_str());  // figures of a stopped store would mislead
  }
}

// ------------------------------------------------------------------------------------------
// Connections.

void Server::OnConnection(uv_stream_t* listener, int status) {
  auto* s = static_cast<Server*>(listener->data);
  if (status < 0) {
    if (s->LimitHit(kLimitAccept)) {
      s->LogLimit(kLimitAccept, nullptr,
                  std::string("a connection was dropped: accept failed: ") +
                      uv_strerror(status) + " (" + std::to_string(s->clients_.size()) +
                      " clients connected)");
    }
    return;
  }
  auto* c = new Client;
  c->server = s;
  uv_pipe_init(&s->loop_, &c->pipe, 1);  // ipc: lets uv_write2 send the region fd
  c->pipe.data = c;
  if (uv_accept(listener, reinterpret_cast<uv_stream_t*>(&c->pipe)) != 0) {
    uv_close(reinterpret_cast<uv_handle_t*>(&c->pipe),
             [](uv_handle_t* h) { delete static_cast<Client*>(h->data); });
    return;
  }
  c->id = s->next_client_id_++;
  c->connect_ns = RealtimeNs();
  s->clients_.emplace(c->id, c);

  uv_os_fd_t fd;
  uv_fileno(reinterpret_cast<uv_handle_t*>(&c->pipe), &fd);
  ucred cred{};
  socklen_t len = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
    c->pid = cred.pid;
    c->uid = cred.uid;
    if (cred.uid != geteuid() && cred.uid != 0) {
      LOG_WARN("refusing a client of uid %u (pid %d): only uid %u may connect",
               static_cast<unsigned>(cred.uid), static_cast<int>(cred.pid),
               static_cast<unsigned>(geteuid()));
      s->SendError(c, 0, STORE_EPERM, "this store accepts only clients of its own user");
      s->CloseClient(c, "permission denied");
      return;
    }
  }
  if (!s->AdmitClient(c)) return;
  uv_read_start(reinterpret_cast<uv_stream_t*>(&c->pipe), OnAlloc, OnRead);
  LOG_DEBUG("client %" PRIu64 " connected (pid %d)", c->id, static_cast<int>(c->pid));
}

void Server::OnAlloc(uv_handle_t* h, size_t /*suggested*/, uv_buf_t* buf) {
  auto* c = static_cast<Client*>(h->data);
  Server* s = c->server;
  size_t avail = 0;
  uint8_t* p;
  if (c->in.size() == 0) {
    // The common case: no part of a message is waiting for the rest. The read goes to the
    // server's buffer; KeepInput keeps what is left of it once its requests are handled.
    p = c->in.Lend(reinterpret_cast<uint8_t*>(s->read_buf_.get()), 64 * 1024, &avail);
  } else {
    size_t want = std::max<size_t>(c->in.Pending(), 64 * 1024);
    size_t grown = c->in.CapacityFor(want);
    if (c->input_refused || (grown > c->in.held() && !s->HoldInput(c, grown))) {
      c->input_refused = true;  // OnRead gets UV_ENOBUFS and closes it
      *buf = uv_buf_init(nullptr, 0);
      return;
    }
    p = c->in.Reserve(want, &avail);
    s->NoteInput(c);
  }
  *buf = uv_buf_init(reinterpret_cast<char*>(p), p ? static_cast<unsigned>(avail) : 0);
}

void Server::OnRead(uv_stream_t* stream, ssize_t nread, const uv_buf_t* /*buf*/) {
  auto* c = static_cast<Client*>(stream->data);
  Server* s = c->server;
  auto* pipe = reinterpret_cast<uv_pipe_t*>(stream);
  // A client has no business sending descriptors: accept and close any, so they cannot pile up.
  while (uv_pipe_pending_count(pipe) > 0) {
    auto* tmp = new uv_pipe_t;
    uv_pipe_init(&s->loop_, tmp, 0);
    if (uv_accept(stream, reinterpret_cast<uv_stream_t*>(tmp)) != 0) {
      delete tmp;
      break;
    }
    uv_close(reinterpret_cast<uv_handle_t*>(tmp),
             [](uv_handle_t* h) { delete reinterpret_cast<uv_pipe_t*>(h); });
  }
  if (nread < 0) {
    s->CloseClient(c, nread == UV_EOF         ? "disconnected"
                      : c->input_refused      ? "over --max-partial-bytes"
                                              : uv_strerror(static_cast<int>(nread)));
    return;
  }
  if (nread > 0 && !c->closing && !c->doomed) {
    c->in.Commit(static_cast<size_t>(nread));
    s->ProcessInput(c);
  }
  // The common case, inline: every request was whole and nothing is kept.
  if (!c->closing && c->input_held == 0 && c->in.size() == 0 && c->in.EndLoan() &&
      c->in.held() == 0) {
    return;
  }
  s->KeepInput(c);
}

void Server::ProcessInput(Client* c) {
  // The replies to all the requests of this read leave in one write.
  c->corked = true;
  while (!c->closing && !c->doomed) {
    const uint8_t* msg;
    size_t len;
    auto next = c->in.Pop(&msg, &len);
    if (next == proto::FrameBuffer::Next::kNone) break;
    if (next == proto::FrameBuffer::Next::kTooLarge) {
      ProtocolError(c, 0,
                    "message length is out of bounds (at most " +
                        std::to_string(proto::kMaxRequestBytes) + " bytes per request)");
      break;
    }
    const proto::Message* m = proto::VerifyMessage(msg, len);
    if (!m) {
      ProtocolError(c, 0, "malformed message (it failed verification)");
      break;
    }
    Dispatch(c, m);
  }
  c->corked = false;
  Flush(c);
}

void Server::DeferClose(Client* c, const char* why) {
  if (c->closing || c->doomed) return;
  Flush(c);  // the replies held back still go out
  if (c->doomed) return;  // writing them failed
  c->doomed = true;
  c->doom_reason = why;
  NoteBacklog(c);  // its queued replies go with it
  uv_read_stop(reinterpret_cast<uv_stream_t*>(&c->pipe));
  doomed_.push_back(c->id);
  uv_check_start(&closer_, [](uv_check_t* h) {
    auto* s = static_cast<Server*>(h->data);
    uv_check_stop(h);
    std::vector<uint64_t> ids;
    ids.swap(s->doomed_);
    for (uint64_t id : ids) {
      auto it = s->clients_.find(id);
      if (it != s->clients_.end()) s->CloseClient(it->second, it->second->doom_reason);
    }
  });
}

void Server::CloseClient(Client* c, const char* why) {
  if (c->closing) return;
  Flush(c);  // the replies held back still go out, such as the error that closes it
  c->closing = true;
  NoteBacklog(c);
  NoteInput(c);
  LOG_DEBUG("client %" PRIu64 " (%s, pid %d) closing: %s", c->id, c->name.c_str(),
            static_cast<int>(c->pid), why);
  ReleaseClientState(c);
  clients_.erase(c->id);
  uv_close(reinterpret_cast<uv_handle_t*>(&c->pipe),
           [](uv_handle_t* h) { delete static_cast<Client*>(h->data); });
}

void Server::ReleaseClientState(Client* c) {
  // Waiting gets and creates are cancelled: nobody is left to answer.
  for (WaitingGet* g : std::vector<WaitingGet*>(c->gets.begin(), c->gets.end())) CancelGet(g);
  bool freed = !c->creates.empty();  // the creates behind its waiting ones may fit now
  for (WaitingCreate* w : std::vector<WaitingCreate*>(c->creates.begin(), c->creates.end())) {
    FinishCreateWait(w, STORE_ECONN, "");
  }
  // Readers.
  for (auto& [uid, count] : c->readers) {
    Object* o = table_.FindUid(uid);
    if (!o) continue;
    for (uint32_t i = 0; i < count; i++) table_.RemoveReader(o);
    totals_.releases += count;
    // Freed, or unread now: what waits for memory may spill or drop it.
    freed |= MaybeFree(o) || o->evictable();
  }
  c->readers.clear();
  // Pins.
  for (auto& [uid, count] : c->pins) {
    Object* o = table_.FindUid(uid);
    if (!o) continue;
    for (uint32_t i = 0; i < count; i++) table_.RemovePin(o);
    freed = true;  // it may be evictable now
  }
  c->pins.clear();
  // Leases: an object created leased goes with its last one.
  for (auto& [uid, held] : c->leases) freed |= DropLeases(uid, held.n);
  c->leases.clear();
  for (EvictWaiter* ew : evict_waiters_) {
    if (ew->client == c) ew->client = nullptr;
  }
  // Objects it was still writing are aborted.
  for (uint64_t uid : c->creating) {
    Object* o = table_.FindUid(uid);
    if (!o || o->state != ObjectState::kCreated) continue;
    totals_.aborts++;
    FreeObject(o);
    freed = true;
  }
  c->creating.clear();
  if (freed) Pump();
}

// ------------------------------------------------------------------------------------------
// Replies.

void Server::Send(Client* c, int fd) {
  if (c->closing || c->doomed) {
    fbb_.Clear();
    return;
  }
  if (c->corked && fd < 0 && c->out.size() + fbb_.GetSize() <= kMaxCorkBytes) {
    c->out.insert(c->out.end(), fbb_.GetBufferPointer(), fbb_.GetBufferPointer() + fbb_.GetSize());
    fbb_.Clear();
    return;
  }
  Flush(c);  // what was held back goes first
  if (c->closing || c->doomed) {
    fbb_.Clear();
    return;
  }
  auto* stream = reinterpret_cast<uv_stream_t*>(&c->pipe);
  size_t skip = 0;
  if (fd < 0 && uv_stream_get_write_queue_size(stream) == 0) {
    // The common case: the socket takes the whole reply now. No request, no callback.
    uv_buf_t now = uv_buf_init(reinterpret_cast<char*>(fbb_.GetBufferPointer()), fbb_.GetSize());
    int n = uv_try_write(stream, &now, 1);
    if (n == static_cast<int>(fbb_.GetSize())) {
      fbb_.Clear();
      return;
    }
    if (n > 0) skip = static_cast<size_t>(n);
  }
  auto* w = new WriteReq;
  w->data = fbb_.Release();
  uv_buf_t buf = uv_buf_init(reinterpret_cast<char*>(w->data.data()) + skip,
                             static_cast<unsigned>(w->data.size() - skip));
  int rc;
  if (fd >= 0) {
    w->fd_wrap = new uv_pipe_t;
    uv_pipe_init(&loop_, w->fd_wrap, 0);
    int dup_fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (dup_fd < 0 || uv_pipe_open(w->fd_wrap, dup_fd) != 0) {
      if (dup_fd >= 0) close(dup_fd);
      delete w->fd_wrap;
      delete w;
      DeferClose(c, "cannot pass the region descriptor");
      return;
    }
    rc = uv_write2(&w->req, stream, &buf, 1, reinterpret_cast<uv_stream_t*>(w->fd_wrap),
                   OnWritten);
    if (rc == 0) {
      c->pending_fds++;
      pending_fds_++;
    }
  } else {
    rc = uv_write(&w->req, stream, &buf, 1, OnWritten);
  }
  if (rc != 0) {
    if (w->fd_wrap) {
      uv_close(reinterpret_cast<uv_handle_t*>(w->fd_wrap),
               [](uv_handle_t* h) { delete reinterpret_cast<uv_pipe_t*>(h); });
    }
    delete w;
    DeferClose(c, "its connection failed");
    return;
  }
  CheckBacklog(c);
}

void Server::Flush(Client* c) {
  if (c->out.empty()) return;
  if (c->closing || c->doomed) {
    c->out.clear();
    return;
  }
  auto* stream = reinterpret_cast<uv_stream_t*>(&c->pipe);
  size_t skip = 0;
  if (uv_stream_get_write_queue_size(stream) == 0) {
    uv_buf_t now = uv_buf_init(reinterpret_cast<char*>(c->out.data()),
                               static_cast<unsigned>(c->out.size()));
    int n = uv_try_write(stream, &now, 1);
    if (n == static_cast<int>(c->out.size())) {
      if (c->out.capacity() > kKeepCorkBytes) {
        std::vector<uint8_t>().swap(c->out);
      } else {
        c->out.clear();
      }
      return;
    }
    if (n > 0) skip = static_cast<size_t>(n);
  }
  auto* w = new WriteReq;
  w->bytes.swap(c->out);
  uv_buf_t buf = uv_buf_init(reinterpret_cast<char*>(w->bytes.data()) + skip,
                             static_cast<unsigned>(w->bytes.size() - skip));
  if (uv_write(&w->req, stream, &buf, 1, OnWritten) != 0) {
    delete w;
    DeferClose(c, "its connection failed");
    return;
  }
  CheckBacklog(c);
}

void Server::SendError(Client* c, uint64_t seq, int code, const std::string& message) {
  fbb_.Clear();
  auto err = fbb_.CreateString(message);
  proto::MessageBuilder mb(fbb_);
  mb.add_seq(seq);
  mb.add_status(code);
  mb.add_error(err);
  fbb_.FinishSizePrefixed(mb.Finish(), proto::MessageIdentifier());
  Send(c);
}

void Server::SendEmpty(Client* c, uint64_t seq, Body type, flatbuffers::Offset<void> body) {
  fbb_.FinishSizePrefixed(proto::CreateMessage(fbb_, seq, 0, 0, 0, type, body),
                          proto::MessageIdentifier());
  if (fbb_.GetSize() > proto::kMaxReplyBytes) {
    // Every reply is bounded by construction (lists are paged); this one is not.
    LOG_ERROR("a reply of %u bytes to client %" PRIu64 " is over the protocol's limit of %u; "
              "sending an error instead", fbb_.GetSize(), c->id, proto::kMaxReplyBytes);
    return SendError(c, seq, STORE_ENOMEM, "the reply would be larger than the protocol allows");
  }
  Send(c);
}

void Server::ProtocolError(Client* c, uint64_t seq, const std::string& message) {
  LOG_WARN("client %" PRIu64 " (%s, pid %d): %s; closing its connection", c->id,
           c->name.c_str(), static_cast<int>(c->pid), message.c_str());
  totals_.bad_requests++;
  SendError(c, seq, STORE_EPROTO, message);
  CloseClient(c, "protocol error");
}

// ------------------------------------------------------------------------------------------
// Dispatch.

void Server::Dispatch(Client* c, const proto::Message* m) {
  uint64_t seq = m->seq();
  Body type = m->body_type();
  c->requests++;
  totals_.requests++;
  if (!c->handshaken && type != Body::ConnectRequest) {
    ProtocolError(c, seq, "the first message must be a connect request");
    return;
  }
  if (c->read_only) {
    switch (type) {
      case Body::CreateRequest:
      case Body::SealRequest:
      case Body::AbortRequest:
      case Body::DeleteRequest:
      case Body::PinRequest:
      case Body::UnpinRequest:
      case Body::LeaseRequest:
      case Body::EvictRequest:
      case Body::SetImportanceRequest:
        return SendError(c, seq, STORE_EPERM,
                         "this client connected read-only: it may read but not change the store");
      default:
        break;
    }
  }
  switch (type) {
    case Body::ConnectRequest:
      if (c->handshaken) return ProtocolError(c, seq, "already connected");
      return HandleConnect(c, seq, m->body_as_ConnectRequest());
    case Body::CreateRequest:
      return HandleCreate(c, seq, m->body_as_CreateRequest());
    case Body::SealRequest:
      return HandleSeal(c, seq, m->body_as_SealRequest());
    case Body::AbortRequest:
      return HandleAbort(c, seq, m->body_as_AbortRequest());
    case Body::GetRequest:
      return HandleGet(c, seq, m->body_as_GetRequest());
    case Body::ReleaseRequest:
      return HandleRelease(c, seq, m->body_as_ReleaseRequest());
    case Body::ContainsRequest:
      return HandleContains(c, seq, m->body_as_ContainsRequest());
    case Body::DeleteRequest:
      return HandleDelete(c, seq, m->body_as_DeleteRequest());
    case Body::InfoRequest:
      return HandleInfo(c, seq, m->body_as_InfoRequest());
    case Body::ListRequest:
      return HandleList(c, seq, m->body_as_ListRequest());
    case Body::PinRequest:
      return HandlePin(c, seq, m->body_as_PinRequest());
    case Body::UnpinRequest:
      return HandleUnpin(c, seq, m->body_as_UnpinRequest());
    case Body::StatsRequest:
      return HandleStats(c, seq);
    case Body::ClientsRequest:
      return HandleClients(c, seq);
    case Body::ObjectsRequest:
      return HandleObjects(c, seq, m->body_as_ObjectsRequest());
    case Body::PrefetchRequest:
      return HandlePrefetch(c, seq, m->body_as_PrefetchRequest());
    case Body::EvictRequest:
      return HandleEvict(c, seq, m->body_as_EvictRequest());
    case Body::SetImportanceRequest:
      return HandleSetImportance(c, seq, m->body_as_SetImportanceRequest());
    case Body::SpillFilesRequest:
      return HandleSpillFiles(c, seq, m->body_as_SpillFilesRequest());
    case Body::LeaseRequest:
      return HandleLease(c, seq, m->body_as_LeaseRequest());
    case Body::GpuChunkRequest:
      return HandleGpuChunk(c, seq, m->body_as_GpuChunkRequest());
    case Body::DisconnectRequest:
      return CloseClient(c, "said goodbye");
    default:
      return ProtocolError(c, seq,
                           "unexpected message type " + std::to_string(static_cast<int>(type)));
  }
}

// ------------------------------------------------------------------------------------------
// Connect.

void Server::HandleConnect(Client* c, uint64_t seq, const proto::ConnectRequest* r) {
  if (r->protocol_version() != proto::kProtocolVersion) {
    return ProtocolError(c, seq,
                         "protocol version " + std::to_string(r->protocol_version()) +
                             " is not supported; this server speaks version " +
                             std::to_string(proto::kProtocolVersion));
  }
  if (r->client_name()) {
    if (r->client_name()->size() > proto::kMaxClientName) {
      return ProtocolError(c, seq, "client name is longer than " +
                                       std::to_string(proto::kMaxClientName) + " bytes");
    }
    // Kept printable: the name goes into log lines and store-top's table.
    c->name = Printable(r->client_name()->c_str(), r->client_name()->size());
  }
  c->handshaken = true;
  c->read_only = r->read_only();
  fbb_.Clear();
  auto version = fbb_.CreateString(STORE_VERSION_STRING);
  auto region = proto::CreateRegion(fbb_, region_->id(), region_->capacity());
  auto body = proto::CreateConnectReply(fbb_, proto::kProtocolVersion, version, c->id, region,
                                        region_->capacity(), GpuBackendKind(), c->read_only);
  fbb_.FinishSizePrefixed(
      proto::CreateMessage(fbb_, seq, 0, 0, 1, Body::ConnectReply, body.Union()),
      proto::MessageIdentifier());
  // A read-only client gets a descriptor that cannot be mapped writable.
  Send(c, c->read_only ? region_->read_only_fd() : region_->fd());
  LOG_DEBUG("client %" PRIu64 " is '%s' (pid %d)", c->id, c->name.c_str(),
            static_cast<int>(c->pid));
}

// ------------------------------------------------------------------------------------------
// Create, seal, abort.

std::string Server::FullMessage(uint64_t want) const {
  const auto& t = table_.counters();
  std::string leased, dropping;
  if (DropMode()) {
    // What leases hold, and what could be dropped: the unused objects without a lease.
    uint64_t leased_bytes = 0, leased_unused = 0;
    for (const auto& [uid, l] : leases_) {
      const Object* o = table_.FindUid(uid);
      if (!o || o->deleted || l.count == 0) continue;
      leased_bytes += o->alloc_size;
      if (o->evictable()) leased_unused += o->alloc_size;
    }
    leased = ", " + Bytes(leased_bytes) + " leased";
    dropping = "; dropping the " + Bytes(t.evictable_bytes - leased_unused) +
               " of objects nobody uses would not make room";
  }
  return "the store is full: " + Bytes(want) + " requested, " +
         Bytes(region_->allocated_bytes()) + " of " + Bytes(region_->capacity()) +
         " in use (" + Bytes(t.open_bytes) + " held by open readers, " + Bytes(t.pinned_bytes) +
         " pinned" + leased + ", " + Bytes(t.created_bytes) + " being written, " +
         Bytes(t.deleted_pending_bytes) + " deleted but still read)" + dropping;
}

bool Server::CreatedLeased(const Object* o) const {
  if (leases_.empty()) return false;
  auto it = leases_.find(o->uid);
  return it != leases_.end() && it->second.auto_delete;
}

// ------------------------------------------------------------------------------------------
// --when-full drop: a cache. Without a spill directory, a create that does not fit deletes the
// least valuable objects nobody uses, in the spiller's order (lowest importance, then least
// recently used, among sealed objects with no reader and no pin), skipping leased ones, until
// it fits. Each is deleted as store_delete deletes (unlinked, then freed: nobody reads it).
// When all of them would not free enough bytes, none is dropped and the create waits or fails
// as it would without the flag; a release, an unpin, an unlease, a seal or a disconnect that
// makes an object droppable pumps the waiting creates again. Victims are chosen by bytes; when
// the freed bytes are not in one piece, the next candidates go one at a time until it fits (so
// with the free pages cut up by objects that must stay, more may go than the create needed).
// GPU objects are never candidates, and device memory is never made by dropping.

bool Server::Droppable(const Object* o) const {
  if (!o->evictable()) return false;
  if (leases_.empty()) return true;
  auto it = leases_.find(o->uid);
  return it == leases_.end() || it->second.count == 0;
}

void* Server::DropForRoom(uint64_t size, uint64_t* usable) {
  auto free_now = [this] {
    uint64_t used = region_->allocated_bytes(), cap = region_->capacity();
    return cap > used ? cap - used : 0;
  };
  auto keep = [this](const Object* o) { return !Droppable(o); };
  std::vector<Object*> victims = ChooseDrops(table_, free_now(), size, keep);
  // None chosen: all of them would not free enough bytes, or enough are free but not in one
  // piece (then the loop drops one candidate at a time).
  if (victims.empty() && free_now() < size) return nullptr;
  DropTotals dropped;
  void* p = nullptr;
  size_t next = 0;
  while (true) {
    if (free_now() >= size && (p = region_->Allocate(size, usable)) != nullptr) break;
    if (next == victims.size()) {
      // Enough bytes are free but not in one piece: the next candidate, one at a time.
      victims.clear();
      next = 0;
      table_.ForEachEvictable([&](Object* o) {
        if (keep(o)) return true;
        victims.push_back(o);
        return false;
      });
      if (victims.empty()) break;
    }
    Object* o = victims[next++];
    dropped.objects++;
    dropped.bytes += o->data_size + o->metadata_size;
    DeleteObject(o);
  }
  NoteDrops(dropped.objects, dropped.bytes);
  return p;
}

void Server::InitSecondlyLog(SecondlyLog* l, void (Server::*flush)()) {
  l->server = this;
  l->flush = flush;
  uv_timer_init(&loop_, &l->timer);
  l->timer.data = l;
}

void Server::CloseSecondlyLog(SecondlyLog* l) {
  uv_timer_stop(&l->timer);
  uv_close(reinterpret_cast<uv_handle_t*>(&l->timer), nullptr);
  l->timer_on = false;
  (this->*l->flush)();
}

bool Server::LogNowOrLater(SecondlyLog* l) {
  const int64_t now = MonotonicNs();
  if (now >= l->until) {
    l->until = now + 1000000000;
    return true;
  }
  if (!l->timer_on && !stopping_) {
    l->timer_on = true;
    uv_timer_start(
        &l->timer,
        [](uv_timer_t* t) {
          auto* l = static_cast<SecondlyLog*>(t->data);
          l->timer_on = false;
          (l->server->*l->flush)();
          l->until = MonotonicNs() + 1000000000;
        },
        static_cast<uint64_t>((l->until - now) / 1000000 + 1), 0);
  }
  return false;
}

void Server::NoteDrops(uint64_t objects, uint64_t bytes) {
  if (objects == 0) return;
  drop_totals_.objects += objects;
  drop_totals_.bytes += bytes;
  drop_unlogged_.objects += objects;
  drop_unlogged_.bytes += bytes;
  if (LogNowOrLater(&drop_log_)) FlushDropLog();
}

void Server::FlushDropLog() {
  if (drop_unlogged_.objects == 0) return;
  LOG_INFO("dropped %" PRIu64 " object%s (%s) to make room (--when-full drop)",
           drop_unlogged_.objects, drop_unlogged_.objects == 1 ? "" : "s",
           Bytes(drop_unlogged_.bytes).c_str());
  drop_unlogged_ = DropTotals{};
}

int Server::TryCreate(Client* c, const CreateArgs& a, Object** out, std::string* message) {
  if (table_.Find(a.id)) {
    *message = "object " + Hex(a.id) + " already exists";
    return STORE_EEXISTS;
  }
  Object proto;
  if (a.device >= 0) {
    int rc = GpuAllocate(a.device, a.data_size, &proto, message);
    if (rc != STORE_OK) return rc;
  }
  // A GPU object keeps only its metadata here.
  uint64_t total = (a.device >= 0 ? 0 : a.data_size) + a.metadata.size();
  uint64_t usable = 0;
  void* p = total ? region_->Allocate(total, &usable) : nullptr;
  if (!p && total && DropMode()) p = DropForRoom(total, &usable);
  if (!p && total) {
    *message = FullMessage(total);
    if (a.device >= 0) GpuFree(&proto);
    return STORE_ENOSPACE;
  }
  proto.id = a.id;
  proto.data = static_cast<uint8_t*>(p);
  proto.data_size = a.data_size;
  proto.metadata_size = a.metadata.size();
  proto.alloc_size = usable;
  proto.creator = c->id;
  proto.creator_pid = c->pid;
  proto.create_ns = proto.access_ns = RealtimeNs();
  proto.importance = a.importance;
  proto.device = a.device;
  Object* o = table_.Insert(proto);
  if (!a.metadata.empty()) {
    std::memcpy(o->data + (o->on_gpu() ? 0 : o->data_size), a.metadata.data(), a.metadata.size());
  }
  totals_.creates++;
  c->objects_created++;
  if (a.leased) {
    leases_[o->uid] = LeaseState{1, true};
    c->leases[o->uid] = Client::HeldLease{o->id, 1};
  }
  if (a.inline_put) {
    std::memcpy(o->data, a.inline_data.data(), a.data_size);
    SealObject(o);
  } else {
    c->creating.insert(o->uid);
  }
  *out = o;
  return STORE_OK;
}

// Appends to the replies held back for c a copy of the reply in *tmpl (built by build() the
// first time, with every field present, so that each can be written in place) and returns the
// copy; nullptr when no copy can be held (c not corked or going away, the buffer not 8-aligned
// so far, or full).
template <class Build>
proto::Message* Server::HoldCopy(Client* c, std::vector<uint8_t>* tmpl, Build&& build) {
  if (!c->corked || c->closing || c->doomed || c->out.size() % 8 != 0) return nullptr;
  if (tmpl->empty()) {
    flatbuffers::FlatBufferBuilder b(256);
    b.ForceDefaults(true);
    build(b);
    tmpl->assign(b.GetBufferPointer(), b.GetBufferPointer() + b.GetSize());
  }
  if (c->out.size() + tmpl->size() > kMaxCorkBytes) return nullptr;
  size_t at = c->out.size();
  c->out.insert(c->out.end(), tmpl->begin(), tmpl->end());
  return proto::GetMutableSizePrefixedMessage(c->out.data() + at);
}

void Server::ReplyCreated(Client* c, uint64_t seq, const Object* o) {
  // Held back with the other replies of a read: a copy of one built reply, values in place.
  proto::Message* m = HoldCopy(c, &created_reply_, [](auto& b) {
    auto body = proto::CreateCreateReply(b);
    b.FinishSizePrefixed(proto::CreateMessage(b, 1, 0, 0, 0, Body::CreateReply, body.Union()),
                         proto::MessageIdentifier());
  });
  if (m) {
    auto* r = static_cast<proto::CreateReply*>(m->mutable_body());
    m->mutate_seq(seq);
    r->mutate_uid(o->uid);
    r->mutate_region_id(region_->id());
    r->mutate_offset(OffsetOf(o));
    r->mutate_data_size(o->data_size);
    r->mutate_metadata_size(o->metadata_size);
    r->mutate_device(o->device);
    r->mutate_chunk(GpuChunkOf(o));
    r->mutate_chunk_offset(GpuOffsetOf(o));
    return;
  }
  fbb_.Clear();
  auto body = proto::CreateCreateReply(fbb_, o->uid, region_->id(), OffsetOf(o), o->data_size,
                                       o->metadata_size, o->device, GpuChunkOf(o),
                                       GpuOffsetOf(o));
  SendEmpty(c, seq, Body::CreateReply, body.Union());
}

void Server::HandleCreate(Client* c, uint64_t seq, const proto::CreateRequest* r) {
  CreateArgs a;
  a.id = KeyOf(r->id());
  a.data_size = r->data_size();
  a.importance = r->importance();
  a.leased = r->leased();
  a.device = r->device();
  int64_t timeout = r->timeout_ms();
  if (a.data_size == 0) {
    return SendError(c, seq, STORE_EINVAL, "an object must have at least one byte of data");
  }
  uint64_t meta = r->metadata() ? r->metadata()->size() : 0;
  if (meta > STORE_MAX_METADATA_SIZE) {
    return SendError(c, seq, STORE_EINVAL,
                     "metadata of " + Bytes(meta) + " is larger than the limit of " +
                         Bytes(STORE_MAX_METADATA_SIZE));
  }
  if (a.device != -1) {
    std::string why;
    if (int rc = CheckGpuCreate(a, r->data() != nullptr, &why); rc != STORE_OK) {
      return SendError(c, seq, rc, why);
    }
    if (meta > max_object_) {
      return SendError(c, seq, STORE_EINVAL, "metadata of " + Bytes(meta) + " can never fit");
    }
  } else if (a.data_size > max_object_ || a.data_size + meta > max_object_) {
    return SendError(c, seq, STORE_EINVAL,
                     "an object of " + Bytes(a.data_size + meta) +
                         " can never fit in this store: the largest it can hold is " +
                         Bytes(max_object_) + " (of " + Bytes(region_->capacity()) + ")");
  }
  if (timeout < -1) {
    return SendError(c, seq, STORE_EINVAL, "timeout_ms must be -1, 0 or positive");
  }
  if (r->data()) {
    if (r->data()->size() != a.data_size || a.data_size > proto::kInlinePutMax) {
      return SendError(c, seq, STORE_EINVAL,
                       "inline data must be exactly data_size bytes and at most " +
                           std::to_string(proto::kInlinePutMax));
    }
    a.inline_put = true;
    a.inline_data = {r->data()->data(), r->data()->size()};
  }
  if (meta) a.metadata = {r->metadata()->data(), r->metadata()->size()};
  Object* o = nullptr;
  std::string message;
  int rc;
  // Creates that already wait keep their turn: a new one queues behind them unless it will
  // not wait at all.
  auto& queue = a.device >= 0 ? gpu_create_queue_ : create_queue_;
  bool others_wait = a.device >= 0 ? std::any_of(queue.begin(), queue.end(),
                                                 [&](const WaitingCreate* w) {
                                                   return w->args.device == a.device;
                                                 })
                                   : !queue.empty();
  if (others_wait && timeout != 0) {
    rc = STORE_ENOSPACE;
    if (table_.Find(a.id)) {
      rc = STORE_EEXISTS;
      message = "object " + Hex(a.id) + " already exists";
    }
  } else {
    rc = TryCreate(c, a, &o, &message);  // straight from the request's bytes
  }
  if (rc == STORE_OK) return ReplyCreated(c, seq, o);
  if (rc != STORE_ENOSPACE || timeout == 0) {
    if (rc == STORE_ENOSPACE) {
      totals_.full++;
      if (dirs_ && a.device < 0) {
        // It will not wait, but the next one may fit: spill down to the low mark now.
        SpillStep(a.data_size + a.metadata.size(), nullptr);
        message += "; spilling has started to make room";
      }
    }
    return SendError(c, seq, rc, message);
  }
  // Wait for space, in arrival order.
  const uint64_t held = sizeof(WaitingCreate) + a.metadata.size() + a.inline_data.size();
  if (!AdmitWaiting(c, seq, held)) return;
  auto* w = new WaitingCreate;
  w->client = c;
  w->seq = seq;
  w->held = held;
  w->args = std::move(a);
  w->args.Own();
  if (timeout > 0) {
    uv_timer_init(&loop_, &w->timer);
    w->timer.data = w;
    w->has_timer = true;
    uv_timer_start(
        &w->timer,
        [](uv_timer_t* t) {
          auto* wc = static_cast<WaitingCreate*>(t->data);
          wc->client->server->totals_.full++;
          Server* server = wc->client->server;
          server->FinishCreateWait(
              wc, STORE_ETIMEDOUT, "no space was freed in time: " + server->NoSpaceMessage(wc->args));
          // The creates that waited behind it may fit.
          server->Pump();
        },
        static_cast<uint64_t>(timeout), 0);
  }
  c->creates.insert(w);
  queue.push_back(w);
  Pump();
}

std::string Server::NoSpaceMessage(const CreateArgs& a) const {
  if (a.device >= 0) return GpuFullMessage(a.device, a.data_size);
  return FullMessage(a.data_size + a.metadata.size());
}

void Server::FinishCreateWait(WaitingCreate* w, int status, const std::string& message) {
  auto& queue = w->args.device >= 0 ? gpu_create_queue_ : create_queue_;
  // One that leaves unserved may have held up smaller ones behind it on its device.
  if (w->args.device >= 0 && status != STORE_OK) gpu_freed_ = true;
  auto it = std::find(queue.begin(), queue.end(), w);
  if (it != queue.end()) queue.erase(it);
  w->client->creates.erase(w);
  EndWaiting(w->client, w->held);
  if (status != STORE_OK && status != STORE_ECONN) SendError(w->client, w->seq, status, message);
  if (w->has_timer) {
    uv_timer_stop(&w->timer);
    uv_close(reinterpret_cast<uv_handle_t*>(&w->timer),
             [](uv_handle_t* h) { delete static_cast<WaitingCreate*>(h->data); });
  } else {
    delete w;
  }
}

bool Server::ServeWaitingCreates() {
  while (!create_queue_.empty()) {
    WaitingCreate* w = create_queue_.front();
    Object* o = nullptr;
    std::string message;
    int rc = TryCreate(w->client, w->args, &o, &message);
    if (rc == STORE_ENOSPACE) return false;  // the head does not fit: everyone keeps waiting
    Client* c = w->client;
    uint64_t seq = w->seq;
    FinishCreateWait(w, rc, message);  // frees w
    if (rc == STORE_OK) ReplyCreated(c, seq, o);
  }
  return true;
}

void Server::SealObject(Object* o) {
  o->access_ns = RealtimeNs();  // before Seal: the eviction order reads it
  table_.Seal(o);
  totals_.seals++;
  NotifyWaiters(o->id);
  // Over the high-water mark? Or, when full drops objects, the creates waiting may drop it.
  if (dirs_ || (DropMode() && !create_queue_.empty())) Pump();
}

void Server::NotifyWaiters(const ObjectKey& id) {
  auto it = get_waiters_.find(id);
  if (it == get_waiters_.end()) return;
  Object* o = table_.Find(id);
  const bool readable = Readable(o);
  const bool failed = o && o->state == ObjectState::kSpilled && o->restore_error != 0;
  const int64_t now = RealtimeNs();
  std::vector<GetWaiter> list = it->second;  // a copy: resolving edits it
  std::vector<WaitingGet*> ready;
  for (const GetWaiter& w : list) {
    WaitingGet* g = w.get;
    if (readable) {
      TakeForGet(g, w.first_pos, o, now);
    } else if (failed) {
      for (uint32_t i = w.first_pos; i != WaitingGet::kEnd; i = g->next_same[i]) {
        g->status[i] = o->restore_error;
      }
    } else if (o || g->timeout != 0) {
      // Not there yet (being restored, or gone and to be waited for again): keep waiting.
      continue;
    }
    // Else gone, and the get does not wait for missing ids: it ends with STORE_ENOTFOUND.
    Unregister(g, w.first_pos);
    if (g->missing == 0) ready.push_back(g);
  }
  for (WaitingGet* g : ready) CompleteGet(g, false);
}

int Server::TakeReader(Client* c, Object* o, int64_t now) {
  uint32_t& mine = c->readers[o->uid];
  if (mine == UINT32_MAX || !table_.AddReader(o)) {
    if (mine == 0) c->readers.erase(o->uid);
    return STORE_EMISUSE;
  }
  mine++;
  o->access_ns = now;
  totals_.gets++;
  MaybeReadAheadOnGet(o);
  return STORE_OK;
}

void Server::TakeForGet(WaitingGet* g, uint32_t first_pos, Object* o, int64_t now) {
  for (uint32_t i = first_pos; i != WaitingGet::kEnd; i = g->next_same[i]) {
    if (g->taken[i] != 0 || g->status[i] != 0) continue;
    int rc = TakeReader(g->client, o, now);
    if (rc == STORE_OK) {
      g->taken[i] = o->uid;
    } else {
      g->status[i] = rc;
    }
  }
}

void Server::Unregister(WaitingGet* g, uint32_t first_pos) {
  if (g->resolved[first_pos]) return;
  g->resolved[first_pos] = 1;
  g->missing--;
  auto it = get_waiters_.find(g->ids[first_pos]);
  if (it == get_waiters_.end()) return;
  auto& v = it->second;
  for (size_t k = 0; k < v.size(); k++) {
    if (v[k].get == g) {
      v[k] = v.back();
      v.pop_back();
      break;
    }
  }
  if (v.empty()) get_waiters_.erase(it);
}

void Server::HandleSeal(Client* c, uint64_t seq, const proto::SealRequest* r) {
  ObjectKey id = KeyOf(r->id());
  Object* o = table_.Find(id);
  if (!o || (r->uid() != 0 && o->uid != r->uid())) {
    return SendError(c, seq, STORE_ENOTFOUND, "object " + Hex(id) + " does not exist");
  }
  if (o->state != ObjectState::kCreated) {
    return SendError(c, seq, STORE_ESEALED, "object " + Hex(id) + " is already sealed");
  }
  if (o->creator != c->id) {
    return SendError(c, seq, STORE_EPERM,
                     "object " + Hex(id) + " is being written by another client");
  }
  c->creating.erase(o->uid);
  SealObject(o);
  fbb_.Clear();
  SendEmpty(c, seq, Body::SealReply, proto::CreateSealReply(fbb_).Union());
}

void Server::HandleAbort(Client* c, uint64_t seq, const proto::AbortRequest* r) {
  ObjectKey id = KeyOf(r->id());
  Object* o = table_.Find(id);
  if (!o || (r->uid() != 0 && o->uid != r->uid())) {
    return SendError(c, seq, STORE_ENOTFOUND, "object " + Hex(id) + " does not exist");
  }
  if (o->state != ObjectState::kCreated) {
    return SendError(c, seq, STORE_ESEALED,
                     "object " + Hex(id) + " is sealed and cannot be aborted; delete it");
  }
  if (o->creator != c->id) {
    return SendError(c, seq, STORE_EPERM,
                     "object " + Hex(id) + " is being written by another client");
  }
  c->creating.erase(o->uid);
  totals_.aborts++;
  FreeObject(o);
  fbb_.Clear();
  SendEmpty(c, seq, Body::AbortReply, proto::CreateAbortReply(fbb_).Union());
  Pump();
}

void Server::FreeObject(Object* o) {
  restore_queued_.erase(o->uid);  // its queue entry is skipped when it comes up
  if (!leases_.empty()) leases_.erase(o->uid);
  if (o->spill_file && TombstoneFor(o)) MaybeStartTombJob();  // deletes drop it before
  if (o->data) region_->Free(o->data);
  if (o->on_gpu()) GpuFree(o);
  table_.Erase(o);
}

bool Server::MaybeFree(Object* o) {
  if (!o->deleted || o->readers > 0 || o->state == ObjectState::kSpilling ||
      o->state == ObjectState::kRestoring) {
    return false;
  }
  FreeObject(o);
  return true;
}

// ------------------------------------------------------------------------------------------
// Get and release.

void Server::HandleGet(Client* c, uint64_t seq, const proto::GetRequest* r) {
  auto ids = r->ids();
  if (ids->size() == 0 || ids->size() > proto::kMaxIdsPerRequest) {
    return SendError(c, seq, STORE_EINVAL,
                     "a get names 1 to " + std::to_string(proto::kMaxIdsPerRequest) + " ids");
  }
  int64_t timeout = r->timeout_ms();
  if (timeout < -1) return SendError(c, seq, STORE_EINVAL, "timeout_ms must be -1, 0 or positive");
  if (ids->size() == 1) {
    // The common case, answered at once with no WaitingGet: one id the get need not wait for.
    Object* o = table_.Find(KeyOf(ids->Get(0)));
    if (!GetWaitsFor(o, timeout)) {
      if (proto::ObjectLocation* loc = HoldGetOneReply(c, seq)) {
        return Locate(c, o, RealtimeNs(), false, loc);
      }
    }
  }
  const uint32_t n = ids->size();
  {
    // Answered at once when no id is waited for (every one readable, or missing and not waited
    // for): no WaitingGet, one lookup per id.
    std::vector<Object*>& objs = get_scratch_;
    objs.clear();
    bool waits = false;
    for (const proto::ObjectId* id : *ids) {
      Object* o = table_.Find(KeyOf(id));
      objs.push_back(o);
      waits = waits || GetWaitsFor(o, timeout);
    }
    if (!waits) {
      const int64_t now = RealtimeNs();
      fbb_.Clear();
      proto::ObjectLocation* locs = nullptr;
      auto vec = fbb_.CreateUninitializedVectorOfStructs(n, &locs);
      for (uint32_t i = 0; i < n; i++) Locate(c, objs[i], now, false, &locs[i]);
      auto body = proto::CreateGetReply(fbb_, vec);
      fbb_.FinishSizePrefixed(
          proto::CreateMessage(fbb_, seq, 0, 0, 0, Body::GetReply, body.Union()),
          proto::MessageIdentifier());
      return Send(c);
    }
  }
  // It waits for some id: its id list and per-id state count against the waiting limits.
  const uint64_t held = sizeof(WaitingGet) + uint64_t{n} * WaitingGet::kHeldPerId;
  if (!AdmitWaiting(c, seq, held)) return;
  auto* g = new WaitingGet;
  g->client = c;
  g->seq = seq;
  g->held = held;
  g->timeout = timeout;
  g->ids.reserve(n);
  for (const proto::ObjectId* id : *ids) g->ids.push_back(KeyOf(id));
  g->taken.assign(n, 0);
  g->status.assign(n, 0);
  g->next_same.assign(n, WaitingGet::kEnd);
  g->resolved.assign(n, 0);
  // Each id is taken now if it is readable; the others are waited for once per distinct id
  // (the positions of one id are chained from its first through next_same).
  const int64_t now = RealtimeNs();
  std::vector<uint32_t> firsts;
  std::vector<uint32_t> tail;       // per entry of firsts: the last position of that id so far
  std::vector<Object*> readable;    // per entry of firsts: its object, if readable now
  // A short list is searched; a longer one goes through an open-addressing table of entries of
  // firsts (linear probing, at most half full: one allocation).
  const bool hashed = n > 16;
  std::vector<uint32_t> slots;
  size_t mask = 0;
  if (hashed) {
    slots.assign(std::bit_ceil(size_t{2} * n), UINT32_MAX);
    mask = slots.size() - 1;
  }
  for (uint32_t i = 0; i < n; i++) {
    uint32_t entry = UINT32_MAX;
    if (hashed) {
      size_t h = ObjectKeyHash()(g->ids[i]);
      h ^= h >> 29;
      for (size_t k = h & mask;; k = (k + 1) & mask) {
        if (slots[k] == UINT32_MAX) {
          slots[k] = static_cast<uint32_t>(firsts.size());
          break;
        }
        if (g->ids[firsts[slots[k]]] == g->ids[i]) {
          entry = slots[k];
          break;
        }
      }
    } else {
      for (uint32_t k = 0; k < firsts.size(); k++) {
        if (g->ids[firsts[k]] == g->ids[i]) {
          entry = k;
          break;
        }
      }
    }
    if (entry != UINT32_MAX) {
      g->next_same[tail[entry]] = i;
      tail[entry] = i;
      continue;
    }
    firsts.push_back(i);
    tail.push_back(i);
    Object* o = table_.Find(g->ids[i]);
    readable.push_back(Readable(o) ? o : nullptr);
    if (GetWaitsFor(o, timeout)) g->waiting_on.push_back(i);
  }
  for (size_t k = 0; k < firsts.size(); k++) {
    if (readable[k]) TakeForGet(g, firsts[k], readable[k], now);
  }
  g->missing = g->waiting_on.size();
  if (g->missing == 0) return CompleteGet(g, false);
  for (uint32_t first : g->waiting_on) get_waiters_[g->ids[first]].push_back({g, first});
  c->gets.insert(g);
  waiting_gets_++;
  if (timeout > 0) {
    uv_timer_init(&loop_, &g->timer);
    g->timer.data = g;
    g->has_timer = true;
    uv_timer_start(
        &g->timer,
        [](uv_timer_t* t) {
          auto* wg = static_cast<WaitingGet*>(t->data);
          wg->client->server->CompleteGet(wg, true);
        },
        static_cast<uint64_t>(timeout), 0);
  }
  std::vector<Object*> to_restore;
  for (uint32_t first : g->waiting_on) {
    Object* o = table_.Find(g->ids[first]);
    if (o && o->state == ObjectState::kSpilled) to_restore.push_back(o);
  }
  g = nullptr;  // a restore that fails at once completes (and frees) the get
  for (Object* o : to_restore) StartRestore(o, false, false);
  if (!to_restore.empty()) Pump();
}

void Server::CancelGet(WaitingGet* g) {
  for (uint32_t first : g->waiting_on) Unregister(g, first);
  if (g->client->gets.erase(g)) waiting_gets_--;
  EndWaiting(g->client, g->held);
  if (g->has_timer) {
    uv_timer_stop(&g->timer);
    uv_close(reinterpret_cast<uv_handle_t*>(&g->timer),
             [](uv_handle_t* h) { delete static_cast<WaitingGet*>(h->data); });
  } else {
    delete g;
  }
}

// The reply to a get of one id, held back with the other replies of a read: a copy of one
// built reply, seq set, whose one location the caller writes in place. nullptr when no reply
// can be held (see HoldCopy).
proto::ObjectLocation* Server::HoldGetOneReply(Client* c, uint64_t seq) {
  proto::Message* held = HoldCopy(c, &get_one_reply_, [](auto& b) {
    proto::ObjectLocation* l = nullptr;
    auto v = b.CreateUninitializedVectorOfStructs(1, &l);
    *l = proto::ObjectLocation();
    auto body = proto::CreateGetReply(b, v);
    b.FinishSizePrefixed(proto::CreateMessage(b, 1, 0, 0, 0, Body::GetReply, body.Union()),
                         proto::MessageIdentifier());
  });
  if (!held) return nullptr;
  held->mutate_seq(seq);
  auto* reply = static_cast<proto::GetReply*>(held->mutable_body());
  return reply->mutable_objects()->GetMutableObject(0);
}

void Server::Where(const Object* o, proto::ObjectLocation* loc) const {
  *loc = proto::ObjectLocation(o->uid, region_->id(), OffsetOf(o), o->data_size,
                               o->metadata_size, 0, o->device, GpuOffsetOf(o), GpuChunkOf(o));
}

static proto::ObjectLocation Missing(int status) {
  return proto::ObjectLocation(0, 0, 0, 0, 0, status, -1, 0, 0);
}

void Server::Locate(Client* c, Object* o, int64_t now, bool timed_out,
                    proto::ObjectLocation* loc) {
  if (Readable(o)) {
    int rc = TakeReader(c, o, now);
    if (rc == STORE_OK) {
      Where(o, loc);
    } else {
      *loc = Missing(rc);
    }
    return;
  }
  int status = timed_out ? STORE_ETIMEDOUT : STORE_ENOTFOUND;
  if (o && o->state == ObjectState::kSpilled) {
    if (o->restore_error != 0) {
      status = o->restore_error;
    } else if (timed_out && restore_queued_.count(o->uid)) {
      status = STORE_ENOSPACE;  // on disk, and no room could be made for it in time
    }
  }
  *loc = Missing(status);
}

void Server::CompleteGet(WaitingGet* g, bool timed_out) {
  Client* c = g->client;
  int64_t now = RealtimeNs();
  // A get of one id is answered with a held copy of one built reply; others are built here.
  proto::ObjectLocation* locs = g->ids.size() == 1 ? HoldGetOneReply(c, g->seq) : nullptr;
  const bool held = locs != nullptr;
  flatbuffers::Offset<flatbuffers::Vector<const proto::ObjectLocation*>> vec;
  if (!held) {
    fbb_.Clear();
    vec = fbb_.CreateUninitializedVectorOfStructs(g->ids.size(), &locs);
  }
  for (size_t i = 0; i < g->ids.size(); i++) {
    if (g->taken[i] != 0) {
      // Held by a reader of the client since it was taken, unless the client released that
      // uid before it was told of it (it can guess uids): then it is not handed out.
      const Object* o = table_.FindUid(g->taken[i]);
      if (Readable(o)) {
        Where(o, &locs[i]);
      } else {
        locs[i] = Missing(STORE_ENOTFOUND);
      }
    } else if (g->status[i] != 0) {
      locs[i] = Missing(g->status[i]);
    } else {
      Locate(c, table_.Find(g->ids[i]), now, timed_out, &locs[i]);
    }
  }
  if (held) {
    CancelGet(g);  // unregisters and frees g; the reply is held back
    return;
  }
  auto body = proto::CreateGetReply(fbb_, vec);
  fbb_.FinishSizePrefixed(proto::CreateMessage(fbb_, g->seq, 0, 0, 0, Body::GetReply,
                                               body.Union()),
                          proto::MessageIdentifier());
  CancelGet(g);  // unregisters and frees g; the reply is built
  Send(c);
}

void Server::ReleaseReader(Client* c, Object* o) {
  auto it = c->readers.find(o->uid);
  if (--it->second == 0) c->readers.erase(it);
  o->access_ns = RealtimeNs();  // before RemoveReader: the eviction order reads it
  table_.RemoveReader(o);
  totals_.releases++;
}

void Server::HandleRelease(Client* c, uint64_t seq, const proto::ReleaseRequest* r) {
  auto uids = r->uids();
  if (uids->size() > proto::kMaxIdsPerRequest) {
    return ProtocolError(c, seq, "a release names at most " +
                                     std::to_string(proto::kMaxIdsPerRequest) + " objects");
  }
  bool freed = false;
  for (uint64_t uid : *uids) {
    auto it = c->readers.find(uid);
    Object* o = it == c->readers.end() ? nullptr : table_.FindUid(uid);
    if (!o) {
      return ProtocolError(c, seq, "release of object instance " + std::to_string(uid) +
                                       ", which this client does not hold");
    }
    ReleaseReader(c, o);
    freed |= MaybeFree(o) || o->evictable();
  }
  if (freed) Pump();
}

// ------------------------------------------------------------------------------------------
// Management.

void Server::HandleContains(Client* c, uint64_t seq, const proto::ContainsRequest* r) {
  auto ids = r->ids();
  if (ids->size() > proto::kMaxIdsPerRequest) {
    return SendError(c, seq, STORE_EINVAL,
                     "contains names at most " + std::to_string(proto::kMaxIdsPerRequest) + " ids");
  }
  totals_.contains += ids->size();
  fbb_.Clear();
  std::vector<uint8_t> present(ids->size());
  for (size_t i = 0; i < ids->size(); i++) {
    Object* o = table_.Find(KeyOf(ids->Get(i)));
    present[i] = o && o->state != ObjectState::kCreated;
  }
  auto vec = fbb_.CreateVector(present);
  SendEmpty(c, seq, Body::ContainsReply, proto::CreateContainsReply(fbb_, vec).Union());
}

void Server::HandleDelete(Client* c, uint64_t seq, const proto::DeleteRequest* r) {
  auto ids = r->ids();
  if (ids->size() > proto::kMaxIdsPerRequest) {
    return SendError(c, seq, STORE_EINVAL,
                     "delete names at most " + std::to_string(proto::kMaxIdsPerRequest) + " ids");
  }
  std::vector<int32_t> statuses(ids->size());
  // Deletes of objects with a copy on disk are acknowledged once their tombstones are durable.
  std::vector<std::pair<uint32_t, SpillDirState*>> needs;
  bool freed = false;
  for (size_t i = 0; i < ids->size(); i++) {
    Object* o = table_.Find(KeyOf(ids->Get(i)));
    if (!o) {
      statuses[i] = STORE_ENOTFOUND;
    } else if (o->state == ObjectState::kCreated) {
      statuses[i] = STORE_ENOTSEALED;
    } else {
      statuses[i] = STORE_OK;
      totals_.deletes++;
      bool on_disk = o->state == ObjectState::kSpilled;
      ObjectKey key = o->id;
      table_.Unlink(o);
      std::vector<SpillDirState*> dirs;
      if (TombstoneFor(o, &dirs)) {
        for (SpillDirState* dir : dirs) needs.emplace_back(static_cast<uint32_t>(i), dir);
      }
      freed |= MaybeFree(o);
      if (on_disk) NotifyWaiters(key);  // gets waiting for its restore: it is gone
    }
  }
  if (needs.empty()) {
    fbb_.Clear();
    auto vec = fbb_.CreateVector(statuses);
    SendEmpty(c, seq, Body::DeleteReply, proto::CreateDeleteReply(fbb_, vec).Union());
  } else {
    auto* d = new DeferredDelete;
    d->client_id = c->id;
    d->seq = seq;
    d->statuses = std::move(statuses);
    d->needs = std::move(needs);
    deletes_waiting_.push_back(d);
    MaybeStartTombJob();
  }
  if (freed) Pump();
}

proto::ObjectInfo Server::InfoOf(const Object& o) const {
  uint32_t level = 0;
  if (o.in_memory()) level |= o.device >= 0 ? STORE_LEVEL_GPU : STORE_LEVEL_MEMORY;
  if (o.spill_file) level |= STORE_LEVEL_DISK;
  uint32_t leases = 0;
  if (!leases_.empty()) {
    auto it = leases_.find(o.uid);
    if (it != leases_.end()) leases = it->second.count;
  }
  return proto::ObjectInfo(proto::ToProto(o.id.bytes), o.data_size, o.metadata_size,
                           static_cast<uint32_t>(o.state), level, o.device, o.importance, o.pins,
                           o.readers, o.create_ns, o.access_ns, o.creator_pid, leases);
}

void Server::HandleInfo(Client* c, uint64_t seq, const proto::InfoRequest* r) {
  totals_.infos++;
  ObjectKey id = KeyOf(r->id());
  Object* o = table_.Find(id);
  if (!o) return SendError(c, seq, STORE_ENOTFOUND, "object " + Hex(id) + " does not exist");
  fbb_.Clear();
  proto::ObjectInfo info = InfoOf(*o);
  flatbuffers::Offset<flatbuffers::String> url;
  if (o->spill_file) {
    url = fbb_.CreateString(spill::SpillUrl(o->spill_file->path, o->spill_offset, o->spill_size()));
  }
  SendEmpty(c, seq, Body::InfoReply, proto::CreateInfoReply(fbb_, &info, url).Union());
}

void Server::HandleList(Client* c, uint64_t seq, const proto::ListRequest* r) {
  uint32_t limit = r->limit();
  if (limit == 0 || limit > proto::kMaxListPage) limit = proto::kMaxListPage;
  if (r->cursor() == 0) {
    // A snapshot of the uids of every visible object: 8 bytes each, one list per client.
    totals_.lists++;
    auto snap = std::make_unique<ListSnapshot>();
    snap->id = next_list_id_++;
    snap->uids.reserve(table_.visible());
    table_.ForEachVisible([&](const Object& o) { snap->uids.push_back(o.uid); });
    c->list = std::move(snap);
  } else if (!c->list || c->list->id != r->cursor()) {
    return SendError(c, seq, STORE_EINVAL,
                     "unknown list cursor (a list was started again, or it ended)");
  }
  ListSnapshot& snap = *c->list;
  std::vector<proto::ObjectInfo> page;
  page.reserve(std::min<size_t>(limit, snap.uids.size() - snap.pos));
  while (snap.pos < snap.uids.size() && page.size() < limit) {
    const Object* o = table_.FindUid(snap.uids[snap.pos++]);
    if (o && !o->deleted) page.push_back(InfoOf(*o));  // still there
  }
  const uint64_t total = snap.uids.size();
  const uint64_t cursor = snap.pos < snap.uids.size() ? snap.id : 0;
  if (cursor == 0) c->list.reset();
  fbb_.Clear();
  auto vec = fbb_.CreateVectorOfStructs(page);
  SendEmpty(c, seq, Body::ListReply, proto::CreateListReply(fbb_, vec, cursor, total).Union());
}

bool Server::DeleteObject(Object* o) {
  if (o->deleted) return false;
  bool on_disk = o->state == ObjectState::kSpilled;
  ObjectKey key = o->id;
  table_.Unlink(o);
  if (TombstoneFor(o)) MaybeStartTombJob();  // no reply waits for it: nobody asked
  bool freed = MaybeFree(o);
  if (on_disk) NotifyWaiters(key);
  return freed;
}

bool Server::DropLeases(uint64_t uid, uint32_t n) {
  auto it = leases_.find(uid);
  if (it == leases_.end()) return false;
  it->second.count -= std::min(n, it->second.count);
  if (it->second.count > 0) return false;
  bool auto_delete = it->second.auto_delete;
  leases_.erase(it);
  Object* o = table_.FindUid(uid);
  if (!o || o->deleted) return false;
  // Without a lease an unused object may be dropped to make room (--when-full drop).
  if (!auto_delete) return DropMode() && o->evictable();
  if (o->state == ObjectState::kCreated) return false;  // an unsealed one is aborted
  totals_.deletes++;
  return DeleteObject(o);
}

void Server::HandleLease(Client* c, uint64_t seq, const proto::LeaseRequest* r) {
  ObjectKey id = KeyOf(r->id());
  Object* o = table_.Find(id);
  if (r->unlease()) {
    // The instance of id this client leased: the one in the table, or one deleted since (its
    // lease may outlive it: the count just goes).
    auto it = o ? c->leases.find(o->uid) : c->leases.end();
    if (it == c->leases.end()) {
      for (it = c->leases.begin(); it != c->leases.end(); ++it) {
        if (it->second.id == id) break;
      }
    }
    if (it == c->leases.end()) {
      return SendError(c, seq, STORE_EMISUSE, "this client holds no lease on object " + Hex(id));
    }
    const uint64_t uid = it->first;
    if (o && o->uid == uid && o->state == ObjectState::kCreated) {
      // The creator's lease lasts until the seal (or the abort, which deletes it anyway).
      return SendError(c, seq, STORE_ENOTSEALED, "object " + Hex(id) + " is not sealed yet");
    }
    if (--it->second.n == 0) c->leases.erase(it);
    bool freed = DropLeases(uid, 1);
    auto left = leases_.find(uid);
    fbb_.Clear();
    SendEmpty(c, seq, Body::LeaseReply,
              proto::CreateLeaseReply(fbb_, left == leases_.end() ? 0 : left->second.count)
                  .Union());
    if (freed) Pump();
    return;
  }
  if (!o) return SendError(c, seq, STORE_ENOTFOUND, "object " + Hex(id) + " does not exist");
  if (o->state == ObjectState::kCreated) {
    return SendError(c, seq, STORE_ENOTSEALED, "object " + Hex(id) + " is not sealed yet");
  }
  LeaseState& l = leases_[o->uid];
  Client::HeldLease& mine = c->leases[o->uid];
  if (l.count == UINT32_MAX || mine.n == UINT32_MAX) {
    if (mine.n == 0) c->leases.erase(o->uid);
    if (l.count == 0) leases_.erase(o->uid);
    return SendError(c, seq, STORE_EMISUSE,
                     "object " + Hex(id) + " holds the most leases a count can hold");
  }
  l.count++;
  mine.id = o->id;
  mine.n++;
  fbb_.Clear();
  SendEmpty(c, seq, Body::LeaseReply, proto::CreateLeaseReply(fbb_, l.count).Union());
}

void Server::HandlePin(Client* c, uint64_t seq, const proto::PinRequest* r) {
  ObjectKey id = KeyOf(r->id());
  Object* o = table_.Find(id);
  if (!o) return SendError(c, seq, STORE_ENOTFOUND, "object " + Hex(id) + " does not exist");
  if (o->state == ObjectState::kCreated) {
    return SendError(c, seq, STORE_ENOTSEALED, "object " + Hex(id) + " is not sealed yet");
  }
  uint32_t& mine = c->pins[o->uid];
  if (mine == UINT32_MAX || !table_.AddPin(o)) {
    if (mine == 0) c->pins.erase(o->uid);
    return SendError(c, seq, STORE_EMISUSE,
                     "object " + Hex(id) + " holds the most pins a count can hold");
  }
  mine++;
  totals_.pins++;
  // A pin keeps an object in memory: one on disk comes back.
  if (o->state == ObjectState::kSpilled) StartRestore(o);
  fbb_.Clear();
  SendEmpty(c, seq, Body::PinReply, proto::CreatePinReply(fbb_).Union());
}

void Server::HandleUnpin(Client* c, uint64_t seq, const proto::UnpinRequest* r) {
  ObjectKey id = KeyOf(r->id());
  Object* o = table_.Find(id);
  if (!o) return SendError(c, seq, STORE_ENOTFOUND, "object " + Hex(id) + " does not exist");
  auto it = c->pins.find(o->uid);
  if (it == c->pins.end()) {
    return SendError(c, seq, STORE_EMISUSE,
                     "this client holds no pin on object " + Hex(id));
  }
  if (--it->second == 0) c->pins.erase(it);
  table_.RemovePin(o);
  totals_.unpins++;
  fbb_.Clear();
  SendEmpty(c, seq, Body::UnpinReply, proto::CreateUnpinReply(fbb_).Union());
  // Evictable now: what waits for memory may be served by spilling it.
  if (o->evictable() && (!create_queue_.empty() || !pending_restores_.empty())) Pump();
}

void Server::HandleStats(Client* c, uint64_t seq) {
  const auto& t = table_.counters();
  uint64_t largest_free = region_->LargestFree();
  fbb_.Clear();
  auto gpus = GpuStats();
  proto::StatsReplyBuilder b(fbb_);
  b.add_gpu_backend(GpuBackendKind());
  b.add_gpus(gpus);
  b.add_capacity_bytes(region_->capacity());
  b.add_used_bytes(region_->allocated_bytes());
  b.add_object_count(t.objects);
  b.add_client_count(clients_.size());
  b.add_created_count(t.created_count);
  b.add_sealed_count(t.sealed_count);
  b.add_created_bytes(t.created_bytes);
  b.add_sealed_bytes(t.sealed_bytes);
  b.add_pinned_count(t.pinned_count);
  b.add_pinned_bytes(t.pinned_bytes);
  b.add_open_count(t.open_count);
  b.add_open_bytes(t.open_bytes);
  b.add_deleted_pending_count(t.deleted_pending_count);
  b.add_deleted_pending_bytes(t.deleted_pending_bytes);
  b.add_waiting_gets(waiting_gets_);
  b.add_waiting_creates(create_queue_.size() + gpu_create_queue_.size());
  b.add_total_creates(totals_.creates);
  b.add_total_seals(totals_.seals);
  b.add_total_gets(totals_.gets);
  b.add_total_releases(totals_.releases);
  b.add_total_deletes(totals_.deletes);
  b.add_total_aborts(totals_.aborts);
  b.add_total_full(totals_.full);
  b.add_uptime_ns(static_cast<uint64_t>(MonotonicNs() - start_ns_));
  b.add_server_pid(static_cast<int32_t>(getpid()));
  b.add_largest_free_bytes(largest_free);
  b.add_resident_bytes(region_->ResidentBytes());
  b.add_total_contains(totals_.contains);
  b.add_total_infos(totals_.infos);
  b.add_total_lists(totals_.lists);
  b.add_total_pins(totals_.pins);
  b.add_total_unpins(totals_.unpins);
  b.add_total_requests(totals_.requests);
  b.add_total_bad_requests(totals_.bad_requests);
  b.add_spilling_count(t.spilling_count);
  b.add_spilling_bytes(t.spilling_bytes);
  b.add_spilled_count(t.spilled_count);
  b.add_spilled_bytes(t.spilled_bytes);
  b.add_restoring_count(t.restoring_count);
  b.add_restoring_bytes(t.restoring_bytes);
  b.add_evictable_bytes(t.evictable_bytes);
  b.add_spill_enabled(dirs_ != nullptr);
  uint64_t disk = 0, dead = 0;
  for (auto& [id, f] : spill_files_) {
    disk += f->size;
    dead += f->dead_bytes;
  }
  b.add_spill_files(spill_files_.size());
  b.add_spill_disk_bytes(disk);
  b.add_spill_dead_bytes(dead);
  b.add_total_spilled_objects(spill_totals_.objects);
  b.add_total_spilled_bytes(spill_totals_.bytes);
  b.add_total_spill_ns(spill_totals_.ns);
  b.add_total_restored_objects(spill_totals_.restored_objects);
  b.add_total_restored_bytes(spill_totals_.restored_bytes);
  b.add_total_restore_ns(spill_totals_.restore_ns);
  b.add_total_spill_failures(spill_totals_.failures);
  b.add_total_restore_failures(spill_totals_.restore_failures);
  // Limits (server/limits.cpp).
  b.add_waiting_bytes(waiting_bytes_);
  b.add_backlog_bytes(backlog_bytes_);
  b.add_partial_bytes(partial_bytes_);
  b.add_pending_fds(pending_fds_);
  b.add_limit_client_waiting(options_.max_client_waiting);
  b.add_limit_waiting_bytes(options_.max_waiting_bytes);
  b.add_limit_client_backlog(options_.max_client_backlog);
  b.add_limit_backlog(options_.max_backlog);
  b.add_limit_partial_bytes(options_.max_partial_bytes);
  b.add_limit_clients(max_clients_);
  b.add_limit_client_gpu_fds(options_.max_client_gpu_fds);
  b.add_fd_limit(fd_limit_);
  b.add_refused_client_waiting(limits_[kLimitClientWaiting].hits);
  b.add_refused_waiting_bytes(limits_[kLimitWaitingBytes].hits);
  b.add_closed_client_backlog(limits_[kLimitClientBacklog].hits);
  b.add_closed_backlog(limits_[kLimitBacklog].hits);
  b.add_closed_partial(limits_[kLimitPartial].hits);
  b.add_refused_clients(limits_[kLimitClients].hits);
  b.add_accept_failures(limits_[kLimitAccept].hits);
  b.add_refused_gpu_fds(limits_[kLimitGpuFds].hits);
  b.add_instance_id(instance_id_);
  b.add_start_time_ns(start_realtime_ns_);
  b.add_when_full_drop(DropMode());
  b.add_total_dropped_objects(drop_totals_.objects);
  b.add_total_dropped_bytes(drop_totals_.bytes);
  auto body = b.Finish();
  SendEmpty(c, seq, Body::StatsReply, body.Union());
}

void Server::HandleClients(Client* c, uint64_t seq) {
  fbb_.Clear();
  std::vector<flatbuffers::Offset<proto::ClientInfo>> infos;
  infos.reserve(clients_.size());
  for (auto& [id, k] : clients_) {
    // Bytes held: every object it writes, reads or pins, each counted once.
    std::unordered_set<uint64_t> seen;
    uint64_t bytes = 0, readers = 0, pins = 0;
    auto add = [&](uint64_t uid) {
      if (!seen.insert(uid).second) return;
      if (Object* o = table_.FindUid(uid)) bytes += o->alloc_size;
    };
    for (auto& [uid, n] : k->readers) {
      readers += n;
      add(uid);
    }
    for (auto& [uid, n] : k->pins) {
      pins += n;
      add(uid);
    }
    for (uint64_t uid : k->creating) add(uid);
    auto name = fbb_.CreateString(k->name);
    proto::ClientInfoBuilder b(fbb_);
    b.add_client_id(k->id);
    b.add_name(name);
    b.add_pid(k->pid);
    b.add_uid(static_cast<uint32_t>(k->uid));
    b.add_objects_created(k->objects_created);
    b.add_creating(k->creating.size());
    b.add_readers(readers);
    b.add_pins(pins);
    b.add_bytes_held(bytes);
    b.add_connect_time_ns(k->connect_ns);
    b.add_requests(k->requests);
    infos.push_back(b.Finish());
  }
  auto vec = fbb_.CreateVector(infos);
  SendEmpty(c, seq, Body::ClientsReply, proto::CreateClientsReply(fbb_, vec, c->id).Union());
}

namespace {
// memcmp's order of two ids, 8 bytes at a time and inline: a page sorted by a key most objects
// share compares ids for nearly every object of the table. Words loaded big-endian compare as
// their bytes do.
template <class T>
inline T LoadBig(const uint8_t* p) {
  T x;
  std::memcpy(&x, p, sizeof x);
  if constexpr (std::endian::native == std::endian::little) {
    if constexpr (sizeof x == 8) x = __builtin_bswap64(x);
    if constexpr (sizeof x == 4) x = __builtin_bswap32(x);
  }
  return x;
}
inline bool IdLess(const ObjectKey& a, const ObjectKey& b) {
  for (size_t i = 0; i < 16; i += 8) {
    uint64_t x = LoadBig<uint64_t>(a.bytes + i), y = LoadBig<uint64_t>(b.bytes + i);
    if (x != y) return x < y;
  }
  return LoadBig<uint32_t>(a.bytes + 16) < LoadBig<uint32_t>(b.bytes + 16);
}
}  // namespace

void Server::HandleObjects(Client* c, uint64_t seq, const proto::ObjectsRequest* r) {
  if (r->limit() > proto::kMaxPageObjects) {
    return SendError(c, seq, STORE_EINVAL,
                     "a page holds at most " + std::to_string(proto::kMaxPageObjects) + " objects");
  }
  uint32_t nibbles = r->prefix_nibbles();
  const auto* prefix = r->prefix();
  uint32_t have = prefix ? prefix->size() : 0;
  if (nibbles > 40 || (nibbles + 1) / 2 > have) {
    return SendError(c, seq, STORE_EINVAL, "the id prefix is longer than its bytes or than an id");
  }
  auto matches = [&](const Object& o) {
    for (uint32_t i = 0; i < nibbles; i++) {
      uint8_t want = prefix->Get(i / 2), got = o.id.bytes[i / 2];
      if (i % 2 == 0 ? (want >> 4) != (got >> 4) : (want & 15) != (got & 15)) return false;
    }
    return true;
  };
  auto key = r->sort();
  bool desc = r->descending();
  auto less = [key](const Object* a, const Object* b) {
    switch (key) {
      case proto::SortKey::Size:
        if (a->data_size != b->data_size) return a->data_size < b->data_size;
        break;
      case proto::SortKey::Created:
        if (a->create_ns != b->create_ns) return a->create_ns < b->create_ns;
        break;
      case proto::SortKey::LastAccess:
        if (a->access_ns != b->access_ns) return a->access_ns < b->access_ns;
        break;
      case proto::SortKey::Importance:
        if (a->importance != b->importance) return a->importance < b->importance;
        break;
      case proto::SortKey::State:
        if (a->state != b->state) return a->state < b->state;
        break;
      default:
        break;
    }
    return IdLess(a->id, b->id);
  };
  // A page past the middle is the same rows as a page from the other end in reverse order:
  // keep whichever end is nearer, so the last page costs what the first does.
  uint64_t visible = table_.visible();
  uint64_t offset = std::min<uint64_t>(r->offset(), visible);
  uint64_t limit = std::min<uint64_t>(r->limit(), visible - offset);
  bool from_end = nibbles == 0 && offset > visible / 2;
  if (from_end) {
    desc = !desc;
    offset = visible - offset - limit;
  }
  auto order = [&](const Object* a, const Object* b) { return desc ? less(b, a) : less(a, b); };
  // Keep the first offset+limit in a bounded heap: one pass, O(n log k), no copy of the table.
  uint64_t want = std::min<uint64_t>(offset + limit, visible);
  std::vector<const Object*> heap;
  heap.reserve(want);
  uint64_t total = 0;
  table_.ForEachVisible([&](const Object& o) {
    if (nibbles && !matches(o)) return;
    total++;
    if (want == 0) return;
    if (heap.size() < want) {
      heap.push_back(&o);
      std::push_heap(heap.begin(), heap.end(), order);
    } else if (order(&o, heap.front())) {
      std::pop_heap(heap.begin(), heap.end(), order);
      heap.back() = &o;
      std::push_heap(heap.begin(), heap.end(), order);
    }
  });
  std::sort_heap(heap.begin(), heap.end(), order);
  uint64_t begin = std::min<uint64_t>(offset, heap.size());
  uint64_t end = std::min<uint64_t>(heap.size(), begin + limit);
  if (from_end) {
    std::reverse(heap.begin() + static_cast<ptrdiff_t>(begin),
                 heap.begin() + static_cast<ptrdiff_t>(end));
  }
  const auto& all = heap;
  fbb_.Clear();
  proto::ObjectInfo* infos = nullptr;
  auto vec = fbb_.CreateUninitializedVectorOfStructs(end - begin, &infos);
  for (uint64_t i = begin; i < end; i++) infos[i - begin] = InfoOf(*all[i]);
  SendEmpty(c, seq, Body::ObjectsReply, proto::CreateObjectsReply(fbb_, total, vec).Union());
}

// ------------------------------------------------------------------------------------------
// Metrics file: the same figures as stats, in the Prometheus text format, replaced atomically
// (write a temporary file, then rename) so a node exporter's textfile collector never reads half.

void Server::OnMetricsTimer(uv_timer_t* t) { static_cast<Server*>(t->data)->WriteMetrics(); }

void Server::WriteMetrics() {
  const auto& t = table_.counters();
  std::string out;
  out.reserve(4096);
  auto metric = [&](const char* name, const char* type, const char* help, uint64_t value,
                    const char* labels = nullptr) {
    if (!labels || std::strstr(labels, "first")) {
      out += "# HELP store_";
      out += name;
      out += ' ';
      out += help;
      out += "\n# TYPE store_";
      out += name;
      out += ' ';
      out += type;
      out += '\n';
    }
    out += "store_";
    out += name;
    if (labels) {
      const char* l = std::strchr(labels, '{');
      out += l ? l : "";
    }
    out += ' ';
    out += std::to_string(value);
    out += '\n';
  };
  metric("capacity_bytes", "gauge", "Shared memory for objects.", region_->capacity());
  metric("used_bytes", "gauge", "Bytes allocated to objects.", region_->allocated_bytes());
  metric("resident_bytes", "gauge", "Memory the region holds.", region_->ResidentBytes());
  metric("objects", "gauge", "Objects in the table.", t.objects);
  metric("clients", "gauge", "Connected clients.", clients_.size());
  metric("objects_by_state", "gauge", "Objects by state.", t.created_count,
         "first{state=\"created\"}");
  metric("objects_by_state", "gauge", "", t.sealed_count, "{state=\"sealed\"}");
  metric("objects_by_state", "gauge", "", t.open_count, "{state=\"open\"}");
  metric("objects_by_state", "gauge", "", t.pinned_count, "{state=\"pinned\"}");
  metric("objects_by_state", "gauge", "", t.deleted_pending_count, "{state=\"deleted_pending\"}");
  metric("bytes_by_state", "gauge", "Object bytes by state.", t.created_bytes,
         "first{state=\"created\"}");
  metric("bytes_by_state", "gauge", "", t.sealed_bytes, "{state=\"sealed\"}");
  metric("bytes_by_state", "gauge", "", t.open_bytes, "{state=\"open\"}");
  metric("bytes_by_state", "gauge", "", t.pinned_bytes, "{state=\"pinned\"}");
  metric("bytes_by_state", "gauge", "", t.deleted_pending_bytes, "{state=\"deleted_pending\"}");
  metric("waiting_gets", "gauge", "Get requests waiting for a seal.", waiting_gets_);
  metric("waiting_creates", "gauge", "Create requests waiting for space.",
         create_queue_.size() + gpu_create_queue_.size());
  metric("operations_total", "counter", "Operations since start.", totals_.creates,
         "first{op=\"create\"}");
  metric("operations_total", "counter", "", totals_.seals, "{op=\"seal\"}");
  metric("operations_total", "counter", "", totals_.gets, "{op=\"get\"}");
  metric("operations_total", "counter", "", totals_.releases, "{op=\"release\"}");
  metric("operations_total", "counter", "", totals_.deletes, "{op=\"delete\"}");
  metric("operations_total", "counter", "", totals_.aborts, "{op=\"abort\"}");
  metric("requests_total", "counter", "Requests from all clients.", totals_.requests);
  metric("bad_requests_total", "counter", "Requests refused as protocol errors.",
         totals_.bad_requests);
  metric("full_total", "counter", "Creates refused for lack of space.", totals_.full);
  metric("when_full_drop", "gauge", "1 when unused objects are dropped to make room.",
         DropMode() ? 1 : 0);
  metric("dropped_objects_total", "counter", "Objects dropped to make room.",
         drop_totals_.objects);
  metric("dropped_bytes_total", "counter", "Data and metadata bytes of the objects dropped.",
         drop_totals_.bytes);
  // Limits: the totals they watch, and how often each was hit (see server/limits.cpp).
  metric("limit_usage", "gauge", "What the limits watch, now.", waiting_bytes_,
         "first{what=\"waiting_bytes\"}");
  metric("limit_usage", "gauge", "", backlog_bytes_, "{what=\"backlog_bytes\"}");
  metric("limit_usage", "gauge", "", partial_bytes_, "{what=\"partial_bytes\"}");
  metric("limit_usage", "gauge", "", pending_fds_, "{what=\"pending_fds\"}");
  metric("limit_hits_total", "counter", "Requests refused or clients closed by a limit.",
         limits_[kLimitClientWaiting].hits, "first{limit=\"max_client_waiting\"}");
  metric("limit_hits_total", "counter", "", limits_[kLimitWaitingBytes].hits,
         "{limit=\"max_waiting_bytes\"}");
  metric("limit_hits_total", "counter", "", limits_[kLimitClientBacklog].hits,
         "{limit=\"max_client_backlog\"}");
  metric("limit_hits_total", "counter", "", limits_[kLimitBacklog].hits,
         "{limit=\"max_backlog\"}");
  metric("limit_hits_total", "counter", "", limits_[kLimitPartial].hits,
         "{limit=\"max_partial_bytes\"}");
  metric("limit_hits_total", "counter", "", limits_[kLimitClients].hits,
         "{limit=\"max_clients\"}");
  metric("limit_hits_total", "counter", "", limits_[kLimitAccept].hits,
         "{limit=\"accept\"}");
  metric("limit_hits_total", "counter", "", limits_[kLimitGpuFds].hits,
         "{limit=\"max_client_gpu_fds\"}");
  // GPU objects, per device (only when the store serves them).
  auto per_gpu = [&](const char* name, const char* help, auto value) {
    for (size_t i = 0; i < gpus_.size(); i++) {
      std::string l = std::string(i == 0 ? "first" : "") + "{device=\"" +
                      std::to_string(gpus_[i]->info.ordinal) + "\"}";
      metric(name, "gauge", help, value(*gpus_[i]), l.c_str());
    }
  };
  per_gpu("gpu_capacity_bytes", "Device memory GPU objects may take.",
          [](const GpuDevice& d) { return d.alloc->capacity(); });
  per_gpu("gpu_used_bytes", "Device memory allocated to GPU objects.",
          [](const GpuDevice& d) { return d.alloc->used_bytes(); });
  per_gpu("gpu_objects", "GPU objects on the device.",
          [](const GpuDevice& d) { return d.objects; });

  std::string tmp = options_.metrics_file + ".tmp";
  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  bool ok = fd >= 0;
  size_t done = 0;
  while (ok && done < out.size()) {
    ssize_t n = write(fd, out.data() + done, out.size() - done);
    if (n < 0 && errno == EINTR) continue;
    ok = n > 0;
    if (ok) done += static_cast<size_t>(n);
  }
  if (fd >= 0) close(fd);
  ok = ok && rename(tmp.c_str(), options_.metrics_file.c_str()) == 0;
  if (!ok) {
    if (!metrics_failing_) {
      LOG_WARN("cannot write the metrics file %s: %s", options_.metrics_file.c_str(),
               std::strerror(errno));
    }
    metrics_failing_ = true;
    unlink(tmp.c_str());
  } else {
    metrics_failing_ = false;
  }
}

}  // namespace store
