// connect.cpp - store_client_connect and store_client_free: the socket, the handshake, the
// region's two mappings and the connection's threads.
//
// Owns: nothing past the calls; the Conn it makes is owned by the store_client it returns.
// Called by: applications.
// Threads: any; a store_client is used by one thread while it is being connected or freed.
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>

#include "client_internal.h"

using namespace storeclient::internal;

extern "C" {

// ---- connecting ----------------------------------------------------------------------------

namespace {

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

}  // extern "C"
