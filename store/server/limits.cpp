// limits.cpp - what one client can make the server hold, and the bound on each.
//
// Every resource a client can make the server hold for it is counted, per client and in all,
// and bounded by a flag (server/options.h):
//
//   waiting requests   a get waiting for a seal holds its id list and per-id state, a create
//                      waiting for space its copy of the metadata and inline data.
//                      --max-client-waiting (requests per client) and --max-waiting-bytes (in
//                      all; one client may hold a quarter). Over either the request gets
//                      STORE_ELIMIT and the connection stays open.
//   reply backlog      replies queued for a client that does not read them (libuv's write
//                      queue, recounted when a write is queued and when libuv finishes one).
//                      --max-client-backlog: that client is disconnected; --max-backlog (in
//                      all): the client with the largest backlog is disconnected.
//   partial frames     every connection reads into one shared buffer; a connection keeps memory
//                      of its own only for a message not yet complete (up to 4 MiB), freed when
//                      the message is. --max-partial-bytes (in all): the client holding the most
//                      (the one growing, if it is that one) gets STORE_ELIMIT and is
//                      disconnected.
//   connections        the descriptor limit is raised to its hard limit at start; two
//                      descriptors per client (its socket, and one in flight in the connect
//                      reply) after a reserve for the loop, spill files and logs, GPU chunks
//                      and GPU chunk replies. --max-clients: a connection over it is accepted,
//                      sent STORE_ELIMIT (seq 0) and closed. --max-clients is at most
//                      kMaxClientsCap, so the list of clients always fits in one reply.
//   descriptors        a GPU chunk reply carries a duplicate of the chunk's descriptor until it
//                      is written to the client's socket. --max-client-gpu-fds per client, and a
//                      pool of four times that in all: a GPU chunk request over either gets
//                      STORE_ELIMIT (a client reading its replies never comes near).
//   objects            whatever its size, an object costs the server about 200 bytes of its
//                      own (its entry, indexes, eviction order), on disk as in memory, so tiny
//                      spilled objects could take the server's memory far past the disk's.
//                      --max-objects counts every object (deleted ones still read included;
//                      objects belong to no client once sealed, so the limit is global): a
//                      create over it gets STORE_ELIMIT, or with --when-full drop drops the
//                      least valuable unused objects first. By default one object per 2 KiB
//                      of the machine's memory. A recovery keeps every object it finds.
//
// Counting costs O(1) per request and no system call: a waiting request adds its bytes when it
// starts to wait and takes them off when it ends; the backlog is read from the stream's write
// queue size (a field) when a write is queued or completes; input buffers are counted when a
// read's requests are done. Finding the client to disconnect (the largest) walks the clients,
// and only when a total is over its limit.
//
// Each hit counts (store_stats, `store info`, the metrics file) and is logged at warn level,
// naming the client, at most once a second per limit, with how many hits were not logged.
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <cstring>

#include "server/log.h"
#include "server/server.h"
#include "server/server_internal.h"
#include "server/util.h"
#include "storeclient.h"

namespace store {

namespace {

// The flag of each limit, as logs and error messages name it.
constexpr const char* kLimitFlag[] = {
    "--max-client-waiting", "--max-waiting-bytes", "--max-client-backlog", "--max-backlog",
    "--max-partial-bytes",  "--max-clients",       "accept",               "--max-client-gpu-fds",
    "--max-objects",
};
static_assert(sizeof kLimitFlag / sizeof kLimitFlag[0] == 9);

// The read buffer every connection reads into.
constexpr size_t kReadBufBytes = 64u << 10;
// Scratch space (for a message that arrived unaligned) a connection keeps between reads.
constexpr size_t kKeepScratchBytes = 64u << 10;

// Descriptors the server keeps for itself whatever the clients do: stdio, the loop (epoll,
// signals, async), the listener, the region, the metrics file, the files of spill and restore
// jobs on the threadpool, and accept itself. Spill directories add one each, and the spill files
// kept open for restores (Spiller::kKeptReadFds).
constexpr uint64_t kBaseReserveFds = 64;
// The most clients served by default, however many descriptors there are.
constexpr uint64_t kDefaultMaxClients = 16384;

// --max-objects' default: one object per kRamPerObject bytes of the machine's memory, so that
// the server's own memory for them (its table and indexes: about 200 bytes an object) stays
// near a tenth of it; at least kMinDefaultMaxObjects.
constexpr uint64_t kRamPerObject = 2048;
constexpr uint64_t kMinDefaultMaxObjects = uint64_t{1} << 20;

// The largest entry of one client in a ClientsReply: its name (kMaxClientName bytes, each
// escaped to at most 4 by Printable) and its fields, with the table's overhead.
constexpr uint64_t kMaxClientInfoBytes = 4 * proto::kMaxClientName + 256;
static_assert(kMaxClientsCap * kMaxClientInfoBytes + 4096 < proto::kMaxReplyBytes,
              "the list of clients must fit in one reply at --max-clients' cap");

std::string Who(uint64_t id, const std::string& name, int32_t pid) {
  char buf[96];
  snprintf(buf, sizeof buf, "client %" PRIu64 " (pid %d", id, static_cast<int>(pid));
  std::string out = buf;
  out += name.empty() ? ", no name yet)" : ", '" + name + "')";
  return out;
}

}  // namespace

void Server::SetUpLimits() {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    if (rl.rlim_cur < rl.rlim_max) {
      rlimit raised = rl;
      raised.rlim_cur = rl.rlim_max;
      if (setrlimit(RLIMIT_NOFILE, &raised) == 0) {
        rl = raised;
      } else {
        LOG_WARN("cannot raise the descriptor limit from %llu to %llu: %s",
                 static_cast<unsigned long long>(rl.rlim_cur),
                 static_cast<unsigned long long>(rl.rlim_max), std::strerror(errno));
      }
    }
    fd_limit_ = rl.rlim_cur == RLIM_INFINITY ? (1u << 20) : rl.rlim_cur;
  } else {
    fd_limit_ = 1024;
  }
  uint64_t chunks = 0;
  for (const auto& d : gpus_) {
    uint64_t size = d->alloc->chunk_size();
    chunks += size ? (d->alloc->capacity() + size - 1) / size : 0;
  }
  gpu_fd_pool_ = gpus_.empty() ? 0 : 4ull * options_.max_client_gpu_fds;
  const uint64_t reserve = kBaseReserveFds + options_.spill_dirs.size() +
                           (options_.spill_dirs.empty() ? 0 : Spiller::kKeptReadFds) + chunks +
                           gpu_fd_pool_;
  const uint64_t fit = fd_limit_ > reserve + 2 ? (fd_limit_ - reserve) / 2 : 1;
  if (options_.max_clients == 0) {
    max_clients_ = std::min(fit, kDefaultMaxClients);
  } else if (options_.max_clients > fit) {
    LOG_WARN("--max-clients %u: the descriptor limit (%" PRIu64 ", %" PRIu64
             " of them kept for the store itself) allows %" PRIu64 " clients; serving that many",
             options_.max_clients, fd_limit_, reserve, fit);
    max_clients_ = fit;
  } else {
    max_clients_ = options_.max_clients;
  }
  LOG_DEBUG("serving up to %" PRIu64 " clients (descriptor limit %" PRIu64 ")", max_clients_,
            fd_limit_);

  if (options_.max_objects != 0) {
    max_objects_ = options_.max_objects;
  } else {
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    const uint64_t ram =
        pages > 0 && page > 0 ? static_cast<uint64_t>(pages) * static_cast<uint64_t>(page) : 0;
    max_objects_ = std::clamp<uint64_t>(ram / kRamPerObject, kMinDefaultMaxObjects, kMaxObjectsCap);
  }
  // A recovery keeps every object it found, however many: creates wait for deletes then.
  if (table_.instances() > max_objects_) {
    LOG_WARN("recovered %zu objects, more than --max-objects allows (%" PRIu64
             "): every one is served, and creates are refused until deletes bring the count "
             "under the limit",
             table_.instances(), max_objects_);
  }
  read_buf_.reset(new uint64_t[kReadBufBytes / sizeof(uint64_t)]);
}

bool Server::LimitHit(LimitKind k) {
  LimitState& l = limits_[k];
  l.hits++;
  const int64_t now = MonotonicNs();
  if (now < l.log_until) {
    l.quiet++;
    return false;
  }
  l.log_until = now + 1000000000;
  return true;
}

void Server::LogLimit(LimitKind k, const Client* c, const std::string& what) {
  LimitState& l = limits_[k];
  std::string who = c ? Who(c->id, c->name, c->pid) + ": " : "";
  std::string more;
  if (l.quiet > 0) {
    more = " (and " + std::to_string(l.quiet) + " more since the last such line)";
  }
  LOG_WARN("limit %s: %s%s%s", kLimitFlag[k], who.c_str(), what.c_str(), more.c_str());
  l.quiet = 0;
}

// ------------------------------------------------------------------------------------------
// Objects.

bool Server::AdmitObject(Client* c, std::string* message) {
  if (table_.instances() < max_objects_) return true;
  if (DropMode()) {
    // A cache: the least valuable object nobody uses goes, as when memory is full. Only a
    // recovery brings a store past the limit, and drop mode has no spill dir to recover from:
    // one object makes room. The first in the eviction order: leased ones are not in it.
    Object* victim = nullptr;
    table_.ForEachEvictable([&](Object* o) {
      victim = o;
      return false;
    });
    if (victim) {
      NoteDrops(1, victim->data_size + victim->metadata_size);
      DeleteObject(victim);
      if (table_.instances() < max_objects_) return true;
    }
  }
  const uint64_t pending = table_.counters().deleted_pending_count;
  std::string held = std::to_string(table_.instances()) + " objects" +
                     (pending ? " (" + std::to_string(pending) + " of them deleted but still read)"
                              : std::string()) +
                     ", as many as --max-objects allows (" + std::to_string(max_objects_) + ")";
  if (LimitHit(kLimitObjects)) LogLimit(kLimitObjects, c, "refused a create: the store holds " + held);
  *message = "the store holds " + held +
             (DropMode() ? " and none of them can be dropped" : std::string()) +
             "; delete objects, or raise --max-objects of the store";
  return false;
}

// ------------------------------------------------------------------------------------------
// Waiting requests.

bool Server::AdmitWaiting(Client* c, uint64_t seq, uint64_t bytes) {
  const uint64_t share = options_.max_waiting_bytes / 4;
  std::string why;
  LimitKind k;
  if (c->waiting >= options_.max_client_waiting) {
    k = kLimitClientWaiting;
    why = "this client has " + std::to_string(c->waiting) +
          " requests waiting, as many as --max-client-waiting allows";
  } else if (c->waiting_bytes + bytes > share ||
             waiting_bytes_ + bytes > options_.max_waiting_bytes) {
    k = kLimitWaitingBytes;
    why = "a waiting request holds " + Bytes(bytes) + "; waiting requests hold " +
          Bytes(c->waiting_bytes) + " of this client (which may hold " + Bytes(share) +
          ", a quarter of --max-waiting-bytes) and " + Bytes(waiting_bytes_) + " in all (of " +
          Bytes(options_.max_waiting_bytes) + ")";
  } else {
    c->waiting++;
    c->waiting_bytes += bytes;
    waiting_bytes_ += bytes;
    return true;
  }
  if (LimitHit(k)) LogLimit(k, c, "refused a request that would wait: " + why);
  SendError(c, seq, STORE_ELIMIT,
            "the request cannot wait: " + why + " (raise " + kLimitFlag[k] +
                " of the store, or wait for fewer requests at once)");
  return false;
}

void Server::EndWaiting(Client* c, uint64_t bytes) {
  if (bytes == 0) return;
  c->waiting--;
  c->waiting_bytes -= bytes;
  waiting_bytes_ -= bytes;
}

// ------------------------------------------------------------------------------------------
// Reply backlog.

void Server::NoteBacklog(Client* c) {
  const uint64_t q =
      c->closing || c->doomed
          ? 0
          : uv_stream_get_write_queue_size(reinterpret_cast<const uv_stream_t*>(&c->pipe));
  backlog_bytes_ = backlog_bytes_ - c->backlog + q;
  c->backlog = q;
}

void Server::CheckBacklog(Client* c) {
  NoteBacklog(c);
  if (c->backlog > options_.max_client_backlog) {
    if (LimitHit(kLimitClientBacklog)) {
      LogLimit(kLimitClientBacklog, c,
               "disconnected: " + Bytes(c->backlog) +
                   " of replies queued that it does not read (raise --max-client-backlog of "
                   "the store if it reads that slowly)");
    }
    DeferClose(c, "it does not read its replies (--max-client-backlog)");
    return;
  }
  while (backlog_bytes_ > options_.max_backlog) {
    Client* largest = nullptr;
    for (auto& [id, k] : clients_) {
      if (!k->closing && !k->doomed && (!largest || k->backlog > largest->backlog)) largest = k;
    }
    if (!largest || largest->backlog == 0) break;
    if (LimitHit(kLimitBacklog)) {
      LogLimit(kLimitBacklog, largest,
               "disconnected, the largest of " + Bytes(backlog_bytes_) +
                   " of replies queued to clients that do not read them: " +
                   Bytes(largest->backlog));
    }
    DeferClose(largest, "the largest backlog of replies (--max-backlog)");
  }
}

// ------------------------------------------------------------------------------------------
// Connections and descriptors.

bool Server::AdmitClient(Client* c) {
  // c is counted among clients_ already.
  if (clients_.size() <= max_clients_) return true;
  if (LimitHit(kLimitClients)) {
    LogLimit(kLimitClients, c,
             "refused a connection: " + std::to_string(clients_.size() - 1) +
                 " clients are connected, as many as --max-clients allows");
  }
  SendError(c, 0, STORE_ELIMIT,
            "the store serves " + std::to_string(max_clients_) +
                " clients at once and that many are connected (its --max-clients); try again "
                "later");
  CloseClient(c, "over --max-clients");
  return false;
}

bool Server::AdmitGpuFd(Client* c, uint64_t seq) {
  // In all: the pool, and one in flight per client (the connect reply's region descriptor).
  const uint64_t pool = gpu_fd_pool_ + clients_.size();
  if (c->pending_fds < options_.max_client_gpu_fds && pending_fds_ < pool) return true;
  std::string why =
      c->pending_fds >= options_.max_client_gpu_fds
          ? std::to_string(c->pending_fds) +
                " replies carrying a descriptor are queued to this client, not read yet, as "
                "many as --max-client-gpu-fds allows"
          : std::to_string(pending_fds_) +
                " replies carrying a descriptor are queued to clients that do not read them, "
                "as many as four times --max-client-gpu-fds allows in all";
  if (LimitHit(kLimitGpuFds)) LogLimit(kLimitGpuFds, c, "refused a GPU chunk request: " + why);
  SendError(c, seq, STORE_ELIMIT,
            "the GPU chunk cannot be sent now: " + why +
                " (read the replies; or raise --max-client-gpu-fds of the store)");
  return false;
}

// ------------------------------------------------------------------------------------------
// Partial frames.

void Server::NoteInput(Client* c) {
  const size_t held = c->closing ? 0 : c->in.held();
  partial_bytes_ = partial_bytes_ - c->input_held + held;
  c->input_held = held;
}

bool Server::HoldInput(Client* c, size_t held) {
  while (partial_bytes_ - c->input_held + held > options_.max_partial_bytes) {
    Client* largest = c;
    size_t most = held;
    for (auto& [id, k] : clients_) {
      if (k != c && !k->closing && !k->doomed && k->input_held > most) {
        largest = k;
        most = k->input_held;
      }
    }
    const std::string what =
        "input buffers hold " + Bytes(partial_bytes_) + " of requests not yet complete, " +
        "over --max-partial-bytes (" + Bytes(options_.max_partial_bytes) +
        "); this client holds the most: " + Bytes(most);
    if (LimitHit(kLimitPartial)) LogLimit(kLimitPartial, largest, "disconnected: " + what);
    SendError(largest, 0, STORE_ELIMIT,
              "the store's buffers for requests not yet complete are full and this client's "
              "is the largest (--max-partial-bytes); closing the connection");
    if (largest == c) return false;
    largest->in.Release();
    largest->input_refused = true;
    NoteInput(largest);
    DeferClose(largest, "over --max-partial-bytes");
  }
  return true;
}

void Server::KeepInput(Client* c) {
  if (c->closing) return;
  if (!c->in.EndLoan()) {
    LOG_ERROR("out of memory for the %zu bytes of a request of client %" PRIu64, c->in.size(),
              c->id);
    CloseClient(c, "out of memory for its request");
    return;
  }
  c->in.Trim(kKeepScratchBytes);
  if (c->in.held() > c->input_held && !HoldInput(c, c->in.held())) {
    CloseClient(c, "over --max-partial-bytes");
    return;
  }
  NoteInput(c);
}

}  // namespace store
