// spiller.cpp - the server's side of spilling: when to spill, what, and what it does to objects.
//
// How it works
// ------------
// Memory use is kept between two marks (eviction/policy.h). Pump() is the one place that
// decides: it serves what waits for memory (restores first, then creates, each in arrival
// order), and asks SpillStep() to free what the marks and the head of those queues call for.
// SpillStep takes victims in eviction order (lowest importance, then least recently used, among
// sealed objects nobody reads or pins). A victim that still has a copy on disk is dropped from
// memory at once; the others are marked SPILLING and written together into one fused spill file
// on the libuv threadpool, straight from the shared region (gathered writes, no copies). While
// SPILLING an object stays readable; when its write completes it loses its memory (SPILLED)
// unless someone opened or pinned it meanwhile, in which case it stays SEALED with a copy on
// disk. A failed write loses nothing: the objects stay in memory, the failure is counted,
// logged once per burst, and for a second new spills pause while what needed them fails with
// STORE_ENODISK.
//
// A get of a SPILLED object restores it: memory is allocated (spilling others if needed), the
// record is read back on the threadpool and checked (size and XXH3 checksum) before anyone sees
// it; a mismatch gives STORE_ECORRUPT, never wrong bytes. Gets of one object share one restore.
// A restored object keeps its spilled copy, so evicting it again writes nothing.
//
// Spill files are reference counted by the objects whose copy they hold, and deleted with the
// last one. Deleting an object whose copy lives on in a file that other objects keep appends a
// 16-byte tombstone (file number, record offset) to that directory's DELETED log, so that a
// store restarted with --recover does not bring the deleted object back.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cerrno>
#include <cinttypes>
#include <cstring>
#include <ctime>

#include "server/log.h"
#include "server/server.h"
#include "server/server_internal.h"
#include "server/util.h"
#include "spill/spill_file.h"
#include "storeclient.h"

namespace store {

using proto::Body;

namespace {

// At most this many spill files are written at once (the threadpool is shared with restores).
constexpr int kMaxSpillJobs = 2;
// After a failed spill write, new spills wait this long.
constexpr int64_t kSpillBackoffNs = 1000000000;

std::string Dirname(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

// n of ".../spill-<n>.bin", 0 if the name is not like that.
uint64_t FileNumber(const std::string& path) {
  size_t slash = path.rfind('/');
  std::string name = path.substr(slash == std::string::npos ? 0 : slash + 1);
  if (name.rfind("spill-", 0) != 0) return 0;
  return std::strtoull(name.c_str() + 6, nullptr, 10);
}

// ns of ".../store-<pid>-<ns>", 0 if the name is not like that.
uint64_t InstanceStart(const std::string& dir) {
  size_t dash = dir.rfind('-');
  if (dash == std::string::npos) return 0;
  return std::strtoull(dir.c_str() + dash + 1, nullptr, 10);
}

}  // namespace

// ------------------------------------------------------------------------------------------
// Start-up: the spill directories, and what a previous store left in them.

bool Server::OpenSpill(std::string* error) {
  if (options_.spill_dirs.empty()) {
    if (options_.recover) LOG_WARN("--recover has no effect without --spill-dir");
    return true;
  }
  dirs_ = std::make_unique<spill::SpillDirs>(env_);
  std::vector<spill::RecoveredFile> recovered;
  if (!dirs_->Open(options_.spill_dirs, options_.disk_threshold, options_.recover, &recovered,
                   error)) {
    dirs_.reset();
    return false;
  }
  // Newest first (instance start time, then file number): if an id is found twice, the newest
  // record wins.
  std::vector<spill::RecoveredFile> files = recovered;
  std::sort(files.begin(), files.end(), [](const auto& a, const auto& b) {
    std::string da = Dirname(a.path), db = Dirname(b.path);
    if (da != db) return da > db;  // "store-<pid>-<ns>": compare by start time below
    return FileNumber(a.path) > FileNumber(b.path);
  });
  std::stable_sort(files.begin(), files.end(), [](const auto& a, const auto& b) {
    return InstanceStart(Dirname(a.path)) > InstanceStart(Dirname(b.path));
  });
  for (const auto& f : files) RecoverFile(f.path);
  if (options_.recover) {
    LOG_INFO("recovered %" PRIu64 " spilled objects from %zu spill files",
             table_.counters().spilled_count, recovered.size());
  }
  return true;
}

void Server::RecoverFile(const std::string& path) {
  std::vector<spill::IndexedRecord> index;
  std::string error;
  if (spill::ReadIndex(env_, path, &index, &error) != 0) {
    LOG_WARN("ignoring spill file %s: %s", path.c_str(), error.c_str());
    dirs_->Remove(path);
    return;
  }
  const auto& deleted = Tombstones(Dirname(path));
  uint64_t number = FileNumber(path);
  uint64_t size = 0;
  env_->FileSize(path, &size);
  auto owned = std::make_unique<SpillFile>();
  SpillFile* f = owned.get();
  f->id = next_spill_file_++;
  f->path = path;
  f->number = number;
  f->size = size;
  f->created_ns = RealtimeNs();
  spill_files_.emplace(f->id, std::move(owned));
  int64_t now = RealtimeNs();
  for (const auto& rec : index) {
    ObjectKey key;
    std::memcpy(key.bytes, rec.loc.id, 20);
    if (table_.Find(key) || rec.data_size == 0 || deleted.count({number, rec.loc.offset})) {
      f->dead_bytes += rec.loc.size;  // a duplicate (or empty) record: nobody can read it
      continue;
    }
    Object proto;
    proto.id = key;
    proto.data_size = rec.data_size;
    proto.metadata_size = rec.metadata_size;
    proto.create_ns = proto.access_ns = now;
    Object* o = table_.Insert(proto);
    table_.Mutate(o, [&](Object* x) {
      x->state = ObjectState::kSpilled;
      x->spill_file = f;
      x->spill_offset = rec.loc.offset;
      x->spill_checksum = rec.loc.checksum;
    });
    f->live_objects++;
    f->live_bytes += rec.loc.size;
  }
  if (f->live_objects == 0) RemoveSpillFile(f);
}

// ------------------------------------------------------------------------------------------
// Deciding.

uint64_t Server::NeedNow() const {
  uint64_t need = 0;
  if (!pending_restores_.empty()) {
    const Object* o = pending_restores_.front();
    need = std::max(need, o->data_size + o->metadata_size);
  }
  if (!create_queue_.empty()) {
    const WaitingCreate* w = create_queue_.front();
    need = std::max(need, w->args.data_size + w->args.metadata.size());
  }
  return need;
}

bool Server::CanSpillMore() const {
  return table_.counters().evictable_count > 0 || spill_jobs_ > 0;
}

void Server::Pump() {
  if (pumping_) {
    pump_again_ = true;
    return;
  }
  pumping_ = true;
  do {
    pump_again_ = false;
    if (gpu_freed_) ServeWaitingGpuCreates();
    while (!pending_restores_.empty()) {
      Object* o = pending_restores_.front();
      if (!TryStartRestore(o)) break;
      pending_restores_.pop_front();
    }
    bool blocked = !ServeWaitingCreates() || !pending_restores_.empty();
    if (!dirs_ || stopping_) continue;  // without spilling, waiters wait for deletes
    SpillStep(0, nullptr);
    if (!blocked || pump_again_) continue;
    if (spill_jobs_ == 0 && MonotonicNs() >= spill_backoff_until_ && CanSpillMore()) {
      // Enough bytes are free in all but not in one piece: spill what the head needs anyway.
      SpillStep(NeedNow(), nullptr);
      if (pump_again_ || spill_jobs_ > 0) continue;
    }
    // Something waits for memory. Fail it only when no spill can ever make room.
    int64_t now = MonotonicNs();
    bool backoff = now < spill_backoff_until_;
    int code = 0;
    std::string why;
    if (backoff || last_spill_error_ == STORE_ENODISK) {
      if (spill_jobs_ == 0) {
        code = STORE_ENODISK;
        why = "spilling cannot make room: " + last_spill_message_;
      }
    } else if (!CanSpillMore()) {
      code = STORE_ENOSPACE;
      why = "nothing more can be spilled";
    }
    if (code == 0) continue;
    if (!pending_restores_.empty()) {
      Object* o = pending_restores_.front();
      pending_restores_.pop_front();
      FailRestore(o, code == STORE_ENODISK ? STORE_ENODISK : STORE_ENOSPACE,
                  why + "; " + FullMessage(o->data_size + o->metadata_size));
    } else {
      WaitingCreate* w = create_queue_.front();
      totals_.full++;
      FinishCreateWait(w, code,
                       why + "; " + FullMessage(w->args.data_size + w->args.metadata.size()));
    }
    pump_again_ = true;
  } while (pump_again_);
  pumping_ = false;
}

void Server::SpillStep(uint64_t at_least, EvictWaiter* ew) {
  if (!dirs_ || stopping_) return;
  bool drops_only = MonotonicNs() < spill_backoff_until_;  // writes pause after a failure
  uint64_t need;
  if (ew) {
    need = ew->target;
  } else {
    need = BytesToFree(region_->allocated_bytes(), region_->capacity(), policy_, NeedNow(),
                       spill_in_flight_);
    need = std::max(need, at_least);
  }
  last_spill_error_ = 0;
  while (need > 0 && (ew || spill_jobs_ < kMaxSpillJobs)) {
    SpillBatch b = ChooseVictims(table_, need, policy_, drops_only);
    if (b.write.empty() && b.drop.empty()) break;
    for (Object* o : b.drop) DropToDisk(o);
    if (ew) ew->spilled += b.bytes;
    if (!b.drop.empty()) pump_again_ = true;  // memory is free now
    if (!b.write.empty()) {
      uint64_t write_bytes = 0;
      for (Object* o : b.write) write_bytes += o->alloc_size;
      if (ew) ew->spilled -= write_bytes;  // counted when written
      size_t before = spill_jobs_;
      StartSpillJob(std::move(b.write), ew);
      if (static_cast<size_t>(spill_jobs_) == before) break;  // no directory could take it
    }
    need -= std::min(need, b.bytes);
  }
}

// ------------------------------------------------------------------------------------------
// Spilling.

void Server::DropToDisk(Object* o) {
  // Frees o's memory and leaves it SPILLED. REQUIRES: o has a copy on disk and no reader.
  region_->Free(o->data);
  table_.Mutate(o, [](Object* x) {
    x->data = nullptr;
    x->alloc_size = 0;
    x->state = ObjectState::kSpilled;
  });
}

void Server::StartSpillJob(std::vector<Object*> victims, EvictWaiter* ew) {
  auto* job = new SpillJob;
  job->server = this;
  uint64_t file_bytes = spill::kTrailer;
  for (Object* o : victims) {
    file_bytes += spill::kRecordHeader + spill::kIndexEntry + o->data_size + o->metadata_size;
  }
  job->path = dirs_->NextFile(file_bytes);
  if (job->path.empty()) {
    delete job;
    last_spill_error_ = STORE_ENODISK;
    last_spill_message_ = "no spill directory can take " + std::to_string(file_bytes) +
                          " more bytes (each is full or over --disk-threshold)";
    if (!nodisk_logged_) LOG_WARN("%s", last_spill_message_.c_str());
    nodisk_logged_ = true;  // once per burst: until a spill succeeds again
    return;
  }
  job->objects = std::move(victims);
  job->evict = ew;
  for (Object* o : job->objects) {
    spill::SpillRecord r;
    std::memcpy(r.id, o->id.bytes, 20);
    r.data = o->data;
    r.data_size = o->data_size;
    r.metadata = o->data + o->data_size;
    r.metadata_size = o->metadata_size;
    job->records.push_back(r);
    job->memory += o->alloc_size;
    table_.Mutate(o, [](Object* x) { x->state = ObjectState::kSpilling; });
  }
  spill_jobs_++;
  spill_in_flight_ += job->memory;
  if (ew) ew->pending++;
  job->req.data = job;
  int rc = uv_queue_work(&loop_, &job->req, SpillWork, SpillDone);
  if (rc != 0) {  // cannot happen with a live loop; undo
    job->rc = -EAGAIN;
    job->error = uv_strerror(rc);
    SpillDone(&job->req, 0);
  }
}

void Server::SpillWork(uv_work_t* req) {
  auto* job = static_cast<SpillJob*>(req->data);
  int64_t t0 = MonotonicNs();
  job->rc = spill::WriteSpillFile(job->server->env_, job->path, job->records, &job->locations,
                                  &job->file_size, &job->error);
  job->ns = MonotonicNs() - t0;
}

void Server::SpillDone(uv_work_t* req, int /*status*/) {
  auto* job = static_cast<SpillJob*>(req->data);
  Server* s = job->server;
  s->spill_jobs_--;
  s->spill_in_flight_ -= job->memory;
  uint64_t freed = 0;
  if (job->rc == 0) {
    auto owned = std::make_unique<SpillFile>();
    SpillFile* f = owned.get();
    f->id = s->next_spill_file_++;
    f->path = job->path;
    f->number = FileNumber(job->path);
    std::vector<uint64_t> dead_offsets;
    f->size = job->file_size;
    f->created_ns = RealtimeNs();
    s->spill_files_.emplace(f->id, std::move(owned));
    s->spill_totals_.objects += job->objects.size();
    s->spill_totals_.ns += static_cast<uint64_t>(job->ns);
    for (size_t i = 0; i < job->objects.size(); i++) {
      Object* o = job->objects[i];
      const spill::RecordLocation& loc = job->locations[i];
      s->spill_totals_.bytes += loc.size;
      if (o->deleted) {
        f->dead_bytes += loc.size;
        dead_offsets.push_back(loc.offset);
        s->table_.Mutate(o, [](Object* x) { x->state = ObjectState::kSealed; });
        uint64_t mem = o->alloc_size;
        if (s->MaybeFree(o)) freed += mem;
        continue;
      }
      o->spill_file = f;
      o->spill_offset = loc.offset;
      o->spill_checksum = loc.checksum;
      f->live_objects++;
      f->live_bytes += loc.size;
      if (o->readers == 0 && o->pins == 0) {
        freed += o->alloc_size;
        s->DropToDisk(o);
      } else {
        // Opened or pinned while it was written: it stays in memory, with its copy on disk.
        s->table_.Mutate(o, [](Object* x) { x->state = ObjectState::kSealed; });
      }
    }
    if (f->live_objects == 0) {
      s->RemoveSpillFile(f);
    } else {
      for (uint64_t off : dead_offsets) s->RecordDeletion(f, off);
    }
    s->last_spill_error_ = 0;
    s->nodisk_logged_ = false;
  } else {
    s->spill_totals_.failures++;
    int64_t now = MonotonicNs();
    // Logged once per burst: the first failure after a quiet second.
    if (now >= s->spill_backoff_until_) {
      LOG_ERROR("spilling %zu objects failed (they stay in memory): %s", job->objects.size(),
                job->error.c_str());
    }
    s->spill_backoff_until_ = now + kSpillBackoffNs;
    s->last_spill_error_ = STORE_ENODISK;
    s->last_spill_message_ = job->error;
    for (Object* o : job->objects) {
      s->table_.Mutate(o, [](Object* x) { x->state = ObjectState::kSealed; });
      s->MaybeFree(o);
    }
  }
  if (EvictWaiter* ew = job->evict) {
    ew->spilled += freed;
    if (--ew->pending == 0) s->FinishEvict(ew);
  }
  delete job;
  s->Pump();
}

void Server::DropSpillCopy(Object* o, bool dead) {
  SpillFile* f = o->spill_file;
  o->spill_file = nullptr;
  f->live_objects--;
  f->live_bytes -= o->spill_size();
  if (dead) f->dead_bytes += o->spill_size();
  if (f->live_objects == 0) {
    RemoveSpillFile(f);
  } else if (dead) {
    RecordDeletion(f, o->spill_offset);
  }
}

void Server::RecordDeletion(SpillFile* f, uint64_t offset) {
  std::string dir = Dirname(f->path);
  TombLog& log = tomb_logs_[dir];
  if (log.fd < 0) {
    std::string path = dir + "/DELETED";
    log.fd = env_->Open(path, O_WRONLY | O_CREAT, 0600);
    if (log.fd < 0) {
      LOG_WARN("cannot open %s (%s): a store restarted with --recover could bring deleted "
               "objects back", path.c_str(), std::strerror(-log.fd));
      return;
    }
    env_->FileSize(path, &log.size);
  }
  uint8_t entry[16];
  for (int i = 0; i < 8; i++) {
    entry[i] = static_cast<uint8_t>(f->number >> (8 * i));
    entry[8 + i] = static_cast<uint8_t>(offset >> (8 * i));
  }
  iovec iov{entry, sizeof entry};
  if (env_->PWritev(log.fd, &iov, 1, static_cast<off_t>(log.size)) == 16) log.size += 16;
}

void Server::RemoveSpillFile(SpillFile* f) {
  std::string dir = Dirname(f->path);
  bool last_in_dir = true;
  for (auto& [id, other] : spill_files_) {
    if (other.get() != f && Dirname(other->path) == dir) {
      last_in_dir = false;
      break;
    }
  }
  if (last_in_dir) {  // no file left for the tombstones to filter
    auto it = tomb_logs_.find(dir);
    if (it != tomb_logs_.end()) {
      if (it->second.fd >= 0) env_->Close(it->second.fd);
      tomb_logs_.erase(it);
    }
    env_->Unlink(dir + "/DELETED");
  }
  // Unlinking a large file can take tens of milliseconds: do it on the threadpool, then let
  // SpillDirs tidy its directory on the loop.
  struct UnlinkJob {
    uv_work_t req;
    Server* server;
    std::string path;
  };
  auto* job = new UnlinkJob{{}, this, f->path};
  job->req.data = job;
  spill_files_.erase(f->id);
  int rc = uv_queue_work(
      &loop_, &job->req,
      [](uv_work_t* req) {
        auto* j = static_cast<UnlinkJob*>(req->data);
        j->server->env_->Unlink(j->path);
      },
      [](uv_work_t* req, int) {
        auto* j = static_cast<UnlinkJob*>(req->data);
        if (j->server->dirs_) j->server->dirs_->Remove(j->path);
        delete j;
      });
  if (rc != 0) {
    dirs_->Remove(job->path);
    delete job;
  }
}

const std::set<std::pair<uint64_t, uint64_t>>& Server::Tombstones(const std::string& dir) {
  auto it = recovered_tombstones_.find(dir);
  if (it != recovered_tombstones_.end()) return it->second;
  auto& set = recovered_tombstones_[dir];
  std::string path = dir + "/DELETED";
  int fd = env_->Open(path, O_RDONLY, 0);
  if (fd < 0) return set;
  uint64_t size = 0;
  env_->FileSize(path, &size);
  std::vector<uint8_t> buf(size - size % 16);
  iovec iov{buf.data(), buf.size()};
  ssize_t n = buf.empty() ? 0 : env_->PReadv(fd, &iov, 1, 0);
  env_->Close(fd);
  for (ssize_t i = 0; i + 16 <= n; i += 16) {  // a torn last entry is ignored
    uint64_t number = 0, offset = 0;
    for (int b = 0; b < 8; b++) {
      number |= uint64_t{buf[i + b]} << (8 * b);
      offset |= uint64_t{buf[i + 8 + b]} << (8 * b);
    }
    set.emplace(number, offset);
  }
  return set;
}

// ------------------------------------------------------------------------------------------
// Restoring.

void Server::StartRestore(Object* o) {
  if (o->state != ObjectState::kSpilled || !dirs_) return;
  if (std::find(pending_restores_.begin(), pending_restores_.end(), o) != pending_restores_.end()) {
    return;
  }
  o->restore_error = 0;
  if (!pending_restores_.empty() || !TryStartRestore(o)) {
    pending_restores_.push_back(o);
    Pump();
  }
}

bool Server::TryStartRestore(Object* o) {
  uint64_t total = o->data_size + o->metadata_size;
  uint64_t usable = 0;
  void* p = region_->Allocate(total, &usable);
  if (!p) return false;
  table_.Mutate(o, [&](Object* x) {
    x->data = static_cast<uint8_t*>(p);
    x->alloc_size = usable;
    x->state = ObjectState::kRestoring;
  });
  auto* job = new RestoreJob;
  job->server = this;
  job->object = o;
  job->path = o->spill_file->path;
  std::memcpy(job->location.id, o->id.bytes, 20);
  job->location.offset = o->spill_offset;
  job->location.size = o->spill_size();
  job->location.checksum = o->spill_checksum;
  job->dst = o->data;
  job->data_size = o->data_size;
  job->metadata_size = o->metadata_size;
  job->req.data = job;
  if (uv_queue_work(&loop_, &job->req, RestoreWork, RestoreDone) != 0) {
    job->rc = -EAGAIN;
    job->error = "cannot queue the read";
    RestoreDone(&job->req, 0);
  }
  return true;
}

void Server::RestoreWork(uv_work_t* req) {
  auto* job = static_cast<RestoreJob*>(req->data);
  int64_t t0 = MonotonicNs();
  job->rc = spill::ReadRecord(job->server->env_, job->path, job->location, job->dst,
                              job->data_size, job->metadata_size, &job->error);
  job->ns = MonotonicNs() - t0;
}

void Server::RestoreDone(uv_work_t* req, int /*status*/) {
  auto* job = static_cast<RestoreJob*>(req->data);
  Server* s = job->server;
  Object* o = job->object;
  ObjectKey key = o->id;
  bool deleted = o->deleted;
  if (job->rc == 0) {
    s->spill_totals_.restored_objects++;
    s->spill_totals_.restored_bytes += job->location.size;
    s->spill_totals_.restore_ns += static_cast<uint64_t>(job->ns);
    o->access_ns = RealtimeNs();
    s->table_.Mutate(o, [](Object* x) { x->state = ObjectState::kSealed; });
    if (!deleted) s->NotifyWaiters(key);
    s->MaybeFree(o);
  } else {
    s->spill_totals_.restore_failures++;
    s->DropToDisk(o);  // the memory read into is not served
    // Corrupt or unreadable: either way the bytes cannot be served.
    int code = STORE_ECORRUPT;
    std::string why = job->error;
    delete job;
    if (deleted) {
      s->MaybeFree(o);
      s->NotifyWaiters(key);
    } else {
      s->FailRestore(o, code, why);
    }
    s->Pump();
    return;
  }
  delete job;
  if (deleted) s->NotifyWaiters(key);
  s->Pump();
}

void Server::FailRestore(Object* o, int code, const std::string& message) {
  o->restore_error = static_cast<int16_t>(code);
  LOG_ERROR("cannot restore object %s: %s", Hex(o->id).c_str(), message.c_str());
  NotifyWaiters(o->id);
}

// ------------------------------------------------------------------------------------------
// Requests.

void Server::FinishEvict(EvictWaiter* ew) {
  evict_waiters_.erase(std::remove(evict_waiters_.begin(), evict_waiters_.end(), ew),
                       evict_waiters_.end());
  if (ew->client) {
    fbb_.Clear();
    SendEmpty(ew->client, ew->seq, Body::EvictReply,
              proto::CreateEvictReply(fbb_, ew->spilled).Union());
  }
  delete ew;
}

void Server::HandleEvict(Client* c, uint64_t seq, const proto::EvictRequest* r) {
  if (!dirs_) {
    return SendError(c, seq, STORE_ENOTSUP, "this store has no --spill-dir: it cannot spill");
  }
  if (MonotonicNs() < spill_backoff_until_) {
    return SendError(c, seq, STORE_ENODISK, "spilling failed a moment ago: " + last_spill_message_);
  }
  auto* ew = new EvictWaiter;
  ew->client = c;
  ew->seq = seq;
  ew->target = r->bytes();
  evict_waiters_.push_back(ew);
  ew->pending++;  // held while the batches start
  SpillStep(0, ew);
  int err = last_spill_error_;
  if (--ew->pending == 0) {
    if (err == STORE_ENODISK && ew->spilled == 0) {
      evict_waiters_.pop_back();
      delete ew;
      SendError(c, seq, STORE_ENODISK, last_spill_message_);
    } else {
      FinishEvict(ew);
    }
  }
  Pump();
}

void Server::HandlePrefetch(Client* c, uint64_t seq, const proto::PrefetchRequest* r) {
  auto ids = r->ids();
  if (ids->size() > proto::kMaxIdsPerRequest) {
    return SendError(c, seq, STORE_EINVAL,
                     "prefetch names at most " + std::to_string(proto::kMaxIdsPerRequest) + " ids");
  }
  uint32_t started = 0;
  std::vector<Object*> on_disk;
  for (const proto::ObjectId* id : *ids) {
    Object* o = table_.Find(KeyOf(id));
    if (o && o->state == ObjectState::kSpilled) on_disk.push_back(o);
  }
  for (Object* o : on_disk) {
    if (o->state != ObjectState::kSpilled) continue;
    StartRestore(o);
    started++;
  }
  fbb_.Clear();
  SendEmpty(c, seq, Body::PrefetchReply, proto::CreatePrefetchReply(fbb_, started).Union());
}

void Server::HandleSetImportance(Client* c, uint64_t seq, const proto::SetImportanceRequest* r) {
  ObjectKey id = KeyOf(r->id());
  Object* o = table_.Find(id);
  if (!o) return SendError(c, seq, STORE_ENOTFOUND, "object " + Hex(id) + " does not exist");
  int32_t importance = r->importance();
  table_.Mutate(o, [&](Object* x) { x->importance = importance; });
  fbb_.Clear();
  SendEmpty(c, seq, Body::SetImportanceReply, proto::CreateSetImportanceReply(fbb_).Union());
}

void Server::HandleSpillFiles(Client* c, uint64_t seq) {
  fbb_.Clear();
  std::vector<flatbuffers::Offset<proto::SpillFileInfo>> files;
  for (auto& [id, f] : spill_files_) {
    auto path = fbb_.CreateString(f->path);
    files.push_back(proto::CreateSpillFileInfo(fbb_, path, f->size, f->live_objects,
                                               f->live_bytes, f->dead_bytes, f->created_ns));
  }
  auto vec = fbb_.CreateVector(files);
  SendEmpty(c, seq, Body::SpillFilesReply, proto::CreateSpillFilesReply(fbb_, vec).Union());
}

}  // namespace store
