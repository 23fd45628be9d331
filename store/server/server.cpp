// server.cpp - the server's life: construction, start-up, the loop, shutdown.
//
// Run() checks the spill directories and the socket path, sets up the region, opens the spill
// directories (recovering what a previous store left), the GPU devices, the limits, the signal
// handlers and the listening socket, and then runs the loop until Shutdown(). The rest of the
// server is in files of its own: connections.cpp (accept, read, framing, replies, closing),
// objects.cpp (create, seal, abort, delete, pin, lease; creates waiting for memory; Pump),
// gets.cpp (get and release; gets waiting for objects), introspection.cpp (stats, clients,
// objects, info, list, contains, spill files), metrics.cpp (the metrics file), limits.cpp and
// gpu.cpp; the Spiller (spiller.h) holds what spilling keeps.
#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <cstring>

#include "server/log.h"
#include "server/server.h"
#include "server/server_internal.h"
#include "server/util.h"
#include "storeclient.h"

namespace store {

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

}  // namespace

// ------------------------------------------------------------------------------------------
// Start-up and shutdown.

Server::Server(ServerOptions options, spill::Env* env)
    : options_(std::move(options)),
      spiller_(options_, env ? env : spill::Env::Default(), &table_, this) {}

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
  if (!spiller_.Open(&loop_, region_.get(), &error)) {
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
  uv_idle_init(&loop_, &turn_);
  turn_.data = this;
  uv_timer_init(&loop_, &room_timer_);
  room_timer_.data = this;
  drop_log_.Init(&loop_, [this] { FlushDropLog(); });
  protocol_log_.Init(&loop_, LogLevel::kWarn, "connections closed for protocol errors");
  if (!Listen()) {
    Shutdown();
    uv_run(&loop_, UV_RUN_DEFAULT);
    uv_loop_close(&loop_);
    spiller_.Close();
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
  spiller_.Close();  // releases the spill directories (spill files of live objects stay)
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
  spiller_.Stop();
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
  uv_close(reinterpret_cast<uv_handle_t*>(&turn_), nullptr);
  uv_timer_stop(&room_timer_);
  room_timer_active_ = false;
  uv_close(reinterpret_cast<uv_handle_t*>(&room_timer_), nullptr);
  spiller_.CloseLogs();
  drop_log_.Close();
  protocol_log_.Close();
  if (metrics_active_) {
    uv_timer_stop(&metrics_timer_);
    uv_close(reinterpret_cast<uv_handle_t*>(&metrics_timer_), nullptr);
    metrics_active_ = false;
    unlink(options_.metrics_file.c_str());  // figures of a stopped store would mislead
  }
}

}  // namespace store
