// spiller.cpp - the Spiller (spiller.h): what to spill, writing and restoring, and what it does
// to objects; tombstones, compaction and read-ahead.
//
// How it works
// ------------
// Memory use is kept between two marks (eviction/policy.h). Server::Pump() (server/objects.cpp)
// is the one place that decides: it serves what waits for memory (restores first, then creates,
// each in arrival order), and asks SpillStep() to free what the marks and the head of those
// queues call for.
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
// last one.
//
// Deletes are never undone by a crash. Deleting an object with a copy on disk (or one being
// written to disk) queues a 16-byte tombstone (file number, record offset) for the DELETED log
// of that file's directory, and the delete's reply waits until the log is durable: one tomb job
// at a time appends what is queued and fdatasyncs (group commit: the deletes that arrive while
// it runs go out with the next); each write holds its tombstones twice, each copy checksummed
// (spill/deleted_log.h), so that damage to one copy neither revives nor hides an object. A
// store started with --recover serves no record a tombstone names. The offsets of a file being written are known before it is written (RecordOffsets), so
// an object deleted mid-write gets its tombstone like any other. A log is removed only when its
// directory holds no spill file any more, and only after an fsync of the directory made the
// files' removal durable; it is rewritten without the entries of removed files once those are
// most of it. A spill file is written under a ".tmp" name and renamed once whole.
//
// At start with --recover, the files of stale directories come from SpillDirs::Open with the
// records that can still be served: all of an intact file, the verified ones of a damaged file
// (whose bytes SpillDirs keeps in quarantine). What was lost is logged at error level.
#include "server/spiller.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cerrno>
#include <cinttypes>
#include <cstring>
#include <ctime>
#include <unordered_set>

#include "server/log.h"
#include "server/util.h"
#include "spill/deleted_log.h"
#include "spill/spill_file.h"
#include "storeclient.h"

namespace store {

using spill::Dirname;

namespace {

// At most this many spill files are written at once (the threadpool is shared with restores).
constexpr int kMaxSpillJobs = 2;
// After a failed spill write, new spills wait this long.
constexpr int64_t kSpillBackoffNs = 1000000000;

// Notes that f holds o's record at offset (SpillFile::records). Records are added in file
// order everywhere a file is made; one out of order is placed by insertion all the same.
void AddRecord(SpillFile* f, uint64_t offset, uint64_t uid) {
  auto& r = f->records;
  if (r.empty() || r.back().first < offset) {
    r.emplace_back(offset, uid);
  } else {
    r.insert(std::lower_bound(r.begin(), r.end(), std::make_pair(offset, uint64_t{0})),
             {offset, uid});
  }
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

struct Spiller::SpillJob {
  uv_work_t req{};
  Spiller* spiller = nullptr;
  SpillDirState* dir = nullptr;
  uint64_t number = 0;  // n of its spill-<n>.bin
  std::string path;
  std::vector<Object*> objects;
  std::vector<spill::SpillRecord> records;
  std::vector<spill::RecordLocation> locations;
  uint64_t memory = 0;  // memory the objects hold
  uint64_t file_size = 0;
  Eviction* evict = nullptr;
  int rc = 0;
  std::string error;
  int64_t ns = 0;
};

// One write of the DELETED logs on the threadpool; at most one runs at a time, so the logs are
// only ever touched by one thread. Each item appends tombstones (then fdatasync), rewrites the
// log with the entries still needed (write, fdatasync, rename, fsync of the directory), or
// removes it once the directory holds no spill file (fsync of the directory first, so the
// files' removal is durable before the log's).
struct Spiller::TombJob {
  uv_work_t req{};
  Spiller* spiller = nullptr;
  struct Item {
    SpillDirState* dir = nullptr;
    enum Kind { kAppend, kRewrite, kRemove } kind = kAppend;
    std::string path;           // the directory
    int fd = -1;                // the log, if open (kAppend); the job opens it otherwise
    uint64_t offset = 0;        // kAppend: where the entries go
    std::vector<uint8_t> bytes;  // kAppend: what goes at offset; kRewrite: the whole new log
    // The pending tombstones it takes (16 bytes each): on disk once it succeeds, pending again
    // if it fails.
    std::vector<uint8_t> taken;
    uint64_t retried = 0;       // of taken, the bytes that failed before
    uint64_t entries = 0;       // kRewrite: tombstones in the new log
    int rc = 0;                 // 0 or -errno
    std::string error;
  };
  std::vector<Item> items;
  std::vector<DeferredDelete*> replies;  // sent once the items are done
};

// A compaction: the old file's index is read (threadpool), its live records chosen (loop),
// copied to a new file (threadpool), and the objects moved to it (loop).
struct Spiller::CompactJob {
  uv_work_t req{};
  Spiller* spiller = nullptr;
  SpillFile* from = nullptr;  // holds a reader count of it until the end
  std::string from_path;
  uint32_t version = 0;
  std::vector<spill::IndexedRecord> index;  // the old file's records
  std::vector<spill::RecordLocation> live;  // the ones to copy, in the old file
  std::vector<uint64_t> uids;               // their objects
  std::string path;                         // the new file
  SpillDirState* dir = nullptr;
  uint64_t number = 0;
  std::vector<spill::RecordLocation> locations;  // in the new file
  uint64_t file_size = 0;
  int rc = 0;
  std::string error;
};

struct Spiller::RestoreJob {
  uv_work_t req{};
  Spiller* spiller = nullptr;
  SpillFile* file = nullptr;  // holds a reader count of it until the read is done
  Object* object = nullptr;
  std::string path;
  int fd = -1;         // the file's read_fd, when it had one at the start
  int opened_fd = -1;  // else a descriptor the read opened, kept by the file when done
  spill::RecordLocation location;
  uint8_t* dst = nullptr;
  uint64_t data_size = 0, metadata_size = 0;
  bool readahead = false;  // started by a read-ahead: o's access time stays as it was
  int rc = 0;
  std::string error;
  int64_t ns = 0;
};

// ------------------------------------------------------------------------------------------
// Start-up and shutdown: the spill directories, and what a previous store left in them.

Spiller::Spiller(const ServerOptions& options, spill::Env* env, ObjectTable* table, Host* host)
    : options_(options), env_(env), table_(*table), host_(*host) {
  policy_.high = options_.spill_high;
  policy_.low = options_.spill_low;
  policy_.max_file_bytes = options_.spill_file_max_size;
  policy_.max_file_objects = options_.spill_file_max_objects;
}

Spiller::~Spiller() = default;

bool Spiller::Open(uv_loop_t* loop, Region* region, std::string* error) {
  loop_ = loop;
  region_ = region;
  if (!OpenDirs(error)) return false;
  restore_log_.Init(loop_, LogLevel::kError, "restores failed");
  compact_log_.Init(loop_, LogLevel::kInfo, "spill files compacted");
  compact_fail_log_.Init(loop_, LogLevel::kWarn, "compactions failed");
  uv_timer_init(loop_, &tomb_timer_);
  tomb_timer_.data = this;
  tomb_timer_open_ = true;
  MaybeStartTombJob();  // logs --recover found to be written anew (log_rewrite): now
  return true;
}

void Spiller::Stop() {
  stopping_ = true;
  // A last try, without the pause, for tombstones a failed write left: the spill files stay.
  bool unwritten = false;
  for (auto& [path, dir] : dir_states_) {
    if (dir->unwritten == 0) continue;
    dir->retry_after_ns = 0;
    unwritten = true;
  }
  if (unwritten) MaybeStartTombJob();
}

void Spiller::CloseLogs() {
  if (tomb_timer_open_) {
    uv_timer_stop(&tomb_timer_);
    uv_close(reinterpret_cast<uv_handle_t*>(&tomb_timer_), nullptr);
    tomb_timer_open_ = false;
  }
  restore_log_.Close();
  compact_log_.Close();
  compact_fail_log_.Close();
}

void Spiller::Close() {
  while (!kept_fds_.empty()) CloseReadFd(kept_fds_.front());
  for (auto& [path, dir] : dir_states_) {
    if (dir->log_fd >= 0) env_->Close(dir->log_fd);
    dir->log_fd = -1;
  }
  dirs_.reset();  // releases the spill directories (spill files of live objects stay)
}

bool Spiller::OpenDirs(std::string* error) {
  if (options_.spill_dirs.empty()) {
    if (options_.recover) LOG_WARN("--recover has no effect without --spill-dir");
    return true;
  }
  dirs_ = std::make_unique<spill::SpillDirs>(env_);
  std::vector<spill::RecoveredFile> recovered;
  std::vector<spill::RecoveryNote> notes;
  if (!dirs_->Open(options_.spill_dirs, options_.disk_threshold, options_.recover, &recovered,
                   &notes, error)) {
    dirs_.reset();
    return false;
  }
  for (const auto& n : notes) {
    if (n.error) {
      LOG_ERROR("%s", n.text.c_str());
    } else {
      LOG_INFO("%s", n.text.c_str());
    }
  }
  for (const std::string& d : dirs_->owned()) DirState(d);
  // Newest first (instance start time, then file number): if an id is found twice, the newest
  // record wins.
  std::vector<spill::RecoveredFile*> files;
  for (auto& f : recovered) files.push_back(&f);
  std::sort(files.begin(), files.end(), [](const auto* a, const auto* b) {
    std::string da = Dirname(a->path), db = Dirname(b->path);
    if (da != db) return da > db;  // "store-<pid>-<ns>": compare by start time below
    return FileNumber(a->path) > FileNumber(b->path);
  });
  std::stable_sort(files.begin(), files.end(), [](const auto* a, const auto* b) {
    return InstanceStart(Dirname(a->path)) > InstanceStart(Dirname(b->path));
  });
  std::unordered_map<SpillDirState*, std::set<std::pair<uint64_t, uint64_t>>> deleted;
  for (auto* f : files) {
    SpillDirState* dir = DirState(Dirname(f->path));
    dir->adopted = true;
    auto it = deleted.find(dir);
    if (it == deleted.end()) {
      it = deleted.emplace(dir, std::set<std::pair<uint64_t, uint64_t>>{}).first;
      std::string why;
      if (!LoadTombstones(dir, &it->second, &why)) {
        // Its deleted objects cannot be told from the others: none is served.
        dir->log_unreadable = true;
        LOG_ERROR("%s: the spill files in %s are left in place and not served (objects deleted "
                  "there would come back); restart with --recover once the log reads",
                  why.c_str(), dir->path.c_str());
      }
    }
    if (dir->log_unreadable) {
      dir->files++;  // left in place, as an unreadable file
      continue;
    }
    RecoverFile(*f, dir, it->second);
  }
  if (options_.recover) {
    LOG_INFO("recovered %" PRIu64 " spilled objects from %zu spill files",
             table_.counters().spilled_count, recovered.size());
  }
  return true;
}

void Spiller::RecoverFile(const spill::RecoveredFile& rf, SpillDirState* dir,
                         const std::set<std::pair<uint64_t, uint64_t>>& deleted) {
  uint64_t number = FileNumber(rf.path);
  dir->files++;
  if (rf.unreadable) return;  // left in place: it counts, so its tombstones stay, but serves nothing
  auto owned = std::make_unique<SpillFile>();
  SpillFile* f = owned.get();
  f->id = next_spill_file_++;
  f->path = rf.path;
  f->dir = dir;
  f->number = number;
  f->size = rf.size;
  f->version = rf.version;
  f->created_ns = RealtimeNs();
  AddSpillFile(std::move(owned));
  int64_t now = RealtimeNs();
  for (const auto& rec : rf.records) {
    ObjectKey key;
    std::memcpy(key.bytes, rec.loc.id, 20);
    if (table_.Find(key) || rec.data_size == 0 || deleted.count({number, rec.loc.offset})) {
      AddDead(f, rec.loc.size);  // a duplicate (or empty) record: nobody can read it
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
    AddRecord(f, rec.loc.offset, o->uid);
    f->live_objects++;
    f->live_bytes += rec.loc.size;
  }
  if (f->live_objects == 0) RemoveSpillFile(f);
}

// ------------------------------------------------------------------------------------------
// Deciding.

uint64_t Spiller::NeedNow() {
  uint64_t need = 0;
  if (const Object* o = HeadRestore()) need = std::max(need, o->data_size + o->metadata_size);
  need = std::max(need, host_.WaitingCreateBytes());
  return need;
}

bool Spiller::BackingOff() const { return MonotonicNs() < spill_backoff_until_; }

bool Spiller::CanSpillMore() const {
  return table_.counters().evictable_count > 0 || spill_jobs_ > 0;
}

bool Spiller::SpillStep(uint64_t at_least, Eviction* ew, bool for_waiters) {
  if (!dirs_ || stopping_) return false;
  bool drops_only = MonotonicNs() < spill_backoff_until_;  // writes pause after a failure
  uint64_t need;
  if (ew) {
    need = ew->target;
  } else {
    need = BytesToFree(region_->allocated_bytes(), region_->capacity(), policy_,
                       for_waiters ? NeedNow() : 0, spill_in_flight_);
    need = std::max(need, at_least);
  }
  last_spill_error_ = 0;
  bool freed_now = false;
  while (need > 0 && (ew || spill_jobs_ < kMaxSpillJobs)) {
    SpillBatch b = ChooseVictims(table_, need, policy_, drops_only);
    if (b.write.empty() && b.drop.empty()) break;
    for (Object* o : b.drop) DropToDisk(o);
    if (ew) ew->spilled += b.bytes;
    if (!b.drop.empty()) freed_now = true;  // memory is free now
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
  return freed_now;
}

// ------------------------------------------------------------------------------------------
// Spilling.

void Spiller::DropToDisk(Object* o) {
  // Frees o's memory and leaves it SPILLED. REQUIRES: o has a copy on disk and no reader.
  region_->Free(o->data);
  table_.Mutate(o, [](Object* x) {
    x->data = nullptr;
    x->alloc_size = 0;
    x->state = ObjectState::kSpilled;
  });
}

void Spiller::StartSpillJob(std::vector<Object*> victims, Eviction* ew) {
  // Objects created leased go into files of their own, which recovery removes (spill_dir.h).
  auto leased = std::stable_partition(victims.begin(), victims.end(),
                                      [this](const Object* o) { return !host_.CreatedLeased(o); });
  if (leased != victims.end()) {
    std::vector<Object*> those(leased, victims.end());
    victims.erase(leased, victims.end());
    StartSpillJobOf(std::move(those), ew, true);
  }
  if (victims.empty()) return;
  StartSpillJobOf(std::move(victims), ew, false);
}

void Spiller::StartSpillJobOf(std::vector<Object*> victims, Eviction* ew, bool leased) {
  auto* job = new SpillJob;
  job->spiller = this;
  uint64_t file_bytes = spill::kTrailer;
  for (Object* o : victims) {
    file_bytes += spill::kRecordHeader + spill::kIndexEntry + o->data_size + o->metadata_size;
  }
  job->path = dirs_->NextFile(file_bytes, leased);
  if (job->path.empty()) {
    delete job;
    last_spill_error_ = STORE_ENODISK;
    last_spill_message_ = "no spill directory can take " + std::to_string(file_bytes) +
                          " more bytes (each is full or over --disk-threshold)";
    if (!nodisk_logged_) LOG_WARN("%s", last_spill_message_.c_str());
    nodisk_logged_ = true;  // once per burst: until a spill succeeds again
    return;
  }
  job->dir = DirState(Dirname(job->path));
  job->number = FileNumber(job->path);
  job->dir->files++;  // from now on it may exist (as .tmp, then under its name)
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
  // Where each record will be: a delete during the write writes its tombstone from this.
  std::vector<uint64_t> offsets = spill::RecordOffsets(job->records);
  for (size_t i = 0; i < job->objects.size(); i++) {
    spilling_at_[job->objects[i]->uid] = SpillingAt{job->dir, job->number, offsets[i]};
  }
  spill_jobs_++;
  spill_in_flight_ += job->memory;
  if (ew) ew->pending++;
  job->req.data = job;
  int rc = uv_queue_work(loop_, &job->req, SpillWork, SpillDone);
  if (rc != 0) {  // cannot happen with a live loop; undo
    job->rc = -EAGAIN;
    job->error = uv_strerror(rc);
    SpillDone(&job->req, 0);
  }
}

void Spiller::SpillWork(uv_work_t* req) {
  auto* job = static_cast<SpillJob*>(req->data);
  int64_t t0 = MonotonicNs();
  job->rc = spill::WriteSpillFile(job->spiller->env_, job->path, job->records, &job->locations,
                                  &job->file_size, &job->error);
  job->ns = MonotonicNs() - t0;
}

void Spiller::SpillDone(uv_work_t* req, int /*status*/) {
  auto* job = static_cast<SpillJob*>(req->data);
  Spiller* s = job->spiller;
  s->spill_jobs_--;
  s->spill_in_flight_ -= job->memory;
  for (Object* o : job->objects) s->spilling_at_.erase(o->uid);
  uint64_t freed = 0;
  if (job->rc == 0) {
    auto owned = std::make_unique<SpillFile>();
    SpillFile* f = owned.get();
    f->id = s->next_spill_file_++;
    f->path = job->path;
    f->dir = job->dir;
    f->number = job->number;
    f->size = job->file_size;
    f->version = spill::kFileVersion;
    f->created_ns = RealtimeNs();
    s->AddSpillFile(std::move(owned));
    s->spilled_by_number_[f->number] = f;
    s->spill_totals_.objects += job->objects.size();
    s->spill_totals_.ns += static_cast<uint64_t>(job->ns);
    for (size_t i = 0; i < job->objects.size(); i++) {
      Object* o = job->objects[i];
      const spill::RecordLocation& loc = job->locations[i];
      s->spill_totals_.bytes += loc.size;
      if (o->deleted) {
        // Deleted during the write: its tombstone was queued then (TombstoneFor).
        s->AddDead(f, loc.size);
        s->table_.Mutate(o, [](Object* x) { x->state = ObjectState::kSealed; });
        uint64_t mem = o->alloc_size;
        if (s->host_.MaybeFree(o)) freed += mem;
        continue;
      }
      o->spill_file = f;
      o->spill_offset = loc.offset;
      o->spill_checksum = loc.checksum;
      AddRecord(f, loc.offset, o->uid);
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
    if (f->live_objects == 0) s->RemoveSpillFile(f);
    s->last_spill_error_ = 0;
    s->nodisk_logged_ = false;
  } else {
    s->SpillFileGone(job->dir, job->number);  // the partial file was removed
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
      s->host_.MaybeFree(o);
    }
  }
  if (Eviction* ew = job->evict) {
    ew->spilled += freed;
    if (--ew->pending == 0) s->host_.EvictDone(ew);
  }
  delete job;
  s->host_.Pump();
}

void Spiller::DropSpillCopy(Object* o, bool dead) {
  SpillFile* f = o->spill_file;
  o->spill_file = nullptr;
  f->live_objects--;
  f->live_bytes -= o->spill_size();
  if (dead) AddDead(f, o->spill_size());
  if (f->live_objects == 0) {
    RemoveSpillFile(f);
  } else if (dead) {
    MaybeCompact(f);
  }
}

void Spiller::RemoveSpillFile(SpillFile* f) {
  if (f->readers > 0) {
    f->removing = true;  // a restore or a compaction still reads it: removed when it is done
    return;
  }
  // Unlinking a large file can take tens of milliseconds: do it on the threadpool, then let
  // SpillDirs tidy its directory on the loop and the directory's log follow (SpillFileGone).
  // The removal is made durable (an fsync of the directory) before SpillFileGone: from then on
  // a delete of an object a compaction moved out of the file tombstones only its new record,
  // and after a power cut that lost the removal the file would serve the old one again.
  struct UnlinkJob {
    uv_work_t req;
    Spiller* spiller;
    std::string path;
    SpillDirState* dir;
    uint64_t number;
  };
  CloseReadFd(f);  // before the unlink, or the file's blocks would stay in use
  auto* job = new UnlinkJob{{}, this, f->path, f->dir, f->number};
  job->req.data = job;
  for (ReadaheadStream& s : readahead_) {
    if (s.file == f || s.at == f) s = ReadaheadStream{};
  }
  auto by_number = spilled_by_number_.find(f->number);
  if (by_number != spilled_by_number_.end() && by_number->second == f) {
    spilled_by_number_.erase(by_number);
  }
  disk_total_ -= f->size;
  dead_total_ -= f->dead_bytes;
  spill_files_.erase(f->id);
  int rc = uv_queue_work(
      loop_, &job->req,
      [](uv_work_t* req) {
        auto* j = static_cast<UnlinkJob*>(req->data);
        j->spiller->UnlinkDurably(j->path);
      },
      [](uv_work_t* req, int) {
        auto* j = static_cast<UnlinkJob*>(req->data);
        if (j->spiller->dirs_) j->spiller->dirs_->Remove(j->path);
        j->spiller->SpillFileGone(j->dir, j->number);
        delete j;
      });
  if (rc != 0) {
    UnlinkDurably(job->path);
    if (dirs_) dirs_->Remove(job->path);
    SpillFileGone(job->dir, job->number);
    delete job;
  }
}

void Spiller::UnlinkDurably(const std::string& path) {
  env_->Unlink(path);
  env_->SyncDir(Dirname(path));
}

// ------------------------------------------------------------------------------------------
// Tombstones and the DELETED logs.

namespace {

constexpr const char* kDeletedLog = "DELETED";
constexpr size_t kTombstone = spill::kTombstoneBytes;

}  // namespace

SpillDirState* Spiller::DirState(const std::string& dir) {
  auto& slot = dir_states_[dir];
  if (!slot) {
    slot = std::make_unique<SpillDirState>();
    slot->path = dir;
  }
  return slot.get();
}

bool Spiller::LoadTombstones(SpillDirState* dir, std::set<std::pair<uint64_t, uint64_t>>* set,
                             std::string* error) {
  std::string path = dir->path + "/" + kDeletedLog;
  int fd = env_->Open(path, O_RDONLY, 0);
  if (fd == -ENOENT) return true;  // nothing deleted there
  auto fail = [&](const char* what, int rc) {
    *error = std::string(what) + " " + path + ": " + std::strerror(-rc);
    if (fd >= 0) env_->Close(fd);
    return false;
  };
  if (fd < 0) return fail("cannot open", fd);
  uint64_t size = 0;
  if (int rc = env_->FileSize(path, &size); rc < 0) return fail("cannot stat", rc);
  std::vector<uint8_t> buf(size);
  uint64_t got = 0;
  while (got < buf.size()) {
    iovec iov{buf.data() + got, buf.size() - got};
    ssize_t n = env_->PReadv(fd, &iov, 1, static_cast<off_t>(got));
    if (n < 0) return fail("cannot read", static_cast<int>(n));
    if (n == 0) break;  // shorter than it was a moment ago: what is there
    got += static_cast<uint64_t>(n);
  }
  env_->Close(fd);
  const spill::DeletedLog log = spill::ParseDeletedLog(buf.data(), got);
  if (log.unsupported) {
    *error = path + " is a DELETED log of format version " + std::to_string(log.found_version) +
             ", which this store does not read";
    return false;
  }
  if (log.damaged) {
    *error = path + " is damaged: neither copy of the deletes written at byte " +
             std::to_string(log.damaged_at) + " reads back whole, and later writes do";
    return false;
  }
  for (const auto& t : log.tombstones) {
    if (set->insert(t).second) {
      dir->live[t.first].push_back(t.second);
      dir->live_entries++;
    }
  }
  dir->log_bytes = log.end;
  dir->log_entries = log.tombstones.size();
  if (log.version == 1) {
    dir->log_rewrite = true;  // in the current format, at its first write
  } else if (log.repaired > 0) {
    LOG_WARN("%s: %" PRIu64 " of its writes read from one of their two copies (the other "
             "does not read back whole); the log is written anew", path.c_str(), log.repaired);
    dir->log_rewrite = true;
  }
  if (log.torn_bytes > 0) {
    LOG_INFO("%s: its last %" PRIu64 " bytes are a write a crash cut short (never "
             "acknowledged): ignored", path.c_str(), log.torn_bytes);
  }
  return true;
}

void Spiller::QueueTombstone(SpillDirState* dir, uint64_t number, uint64_t offset) {
  spill::PutTombstone(&dir->pending, number, offset);
  dir->live[number].push_back(offset);
  dir->live_entries++;
}

bool Spiller::TombstoneFor(Object* o, std::vector<SpillDirState*>* dirs) {
  auto add = [&](SpillDirState* d) {
    if (dirs && std::find(dirs->begin(), dirs->end(), d) == dirs->end()) dirs->push_back(d);
  };
  // Its records in files compacted since, which are still on disk.
  if (!moved_from_.empty()) {
    auto m = moved_from_.find(o->uid);
    if (m != moved_from_.end()) {
      for (const SpillingAt& at : m->second) {
        QueueTombstone(at.dir, at.number, at.offset);
        add(at.dir);
      }
      moved_from_.erase(m);
    }
  }
  if (o->spill_file) {
    SpillDirState* dir = o->spill_file->dir;
    QueueTombstone(dir, o->spill_file->number, o->spill_offset);
    add(dir);
    // Its record is being copied by a compaction: the copy must never come back either.
    auto c = compacting_at_.find(o->uid);
    if (c != compacting_at_.end()) {
      QueueTombstone(c->second.dir, c->second.number, c->second.offset);
      add(c->second.dir);
      compacting_at_.erase(c);
    }
    DropSpillCopy(o, true);
    return true;
  }
  if (o->state == ObjectState::kSpilling) {
    auto it = spilling_at_.find(o->uid);
    if (it != spilling_at_.end()) {
      QueueTombstone(it->second.dir, it->second.number, it->second.offset);
      add(it->second.dir);
      return true;
    }
  }
  return false;
}

void Spiller::SpillFileGone(SpillDirState* dir, uint64_t number) {
  if (!dir) return;
  auto mf = moved_by_file_.find({dir, number});
  if (mf != moved_by_file_.end()) {
    for (uint64_t uid : mf->second) {
      auto m = moved_from_.find(uid);
      if (m == moved_from_.end()) continue;  // deleted since: tombstoned
      std::erase_if(m->second, [&](const SpillingAt& a) {
        return a.dir == dir && a.number == number;
      });
      if (m->second.empty()) moved_from_.erase(m);
    }
    moved_by_file_.erase(mf);
  }
  if (dir->files > 0) dir->files--;
  auto it = dir->live.find(number);
  if (it != dir->live.end()) {
    dir->live_entries -= it->second.size();
    dir->live.erase(it);
  }
  MaybeStartTombJob();
}

void Spiller::ReplyWhenDurable(DeferredDelete* d) {
  deletes_waiting_.push_back(d);
  MaybeStartTombJob();
}

void Spiller::MaybeStartTombJob() {
  if (tomb_job_) return;  // TombDone starts the next
  auto* job = new TombJob;
  job->spiller = this;
  const int64_t now = MonotonicNs();
  for (auto& [path, d] : dir_states_) {
    SpillDirState* dir = d.get();
    if (dir->log_unreadable) continue;  // nothing of it is served: no tombstone goes there
    TombJob::Item item;
    item.dir = dir;
    item.path = dir->path;
    item.fd = dir->log_fd;
    const uint64_t entries = dir->log_entries + dir->pending.size() / kTombstone;
    const bool housekeeping = now >= dir->retry_after_ns;
    const bool fresh = dir->pending.size() > dir->unwritten;  // tombstones no write tried yet
    if (housekeeping && dir->files == 0 && dir->pending.empty() &&
        (dir->log_bytes > 0 || dir->log_fd >= 0 || dir->log_rewrite)) {
      // No file left that a tombstone could name.
      item.kind = TombJob::Item::kRemove;
    } else if ((dir->log_rewrite && (housekeeping || fresh)) ||
               (housekeeping && entries >= options_.tombstone_rewrite_entries &&
                2 * dir->live_entries < entries)) {
      // Most of its entries name records of removed files, or it is to be written anew: a new
      // log of the others.
      item.kind = TombJob::Item::kRewrite;
      std::vector<uint8_t> all;
      for (const auto& [number, offsets] : dir->live) {
        for (uint64_t off : offsets) spill::PutTombstone(&all, number, off);
      }
      item.entries = all.size() / kTombstone;
      spill::PutDeletedLogHeader(&item.bytes);
      if (!all.empty()) {
        spill::PutDeletedLogUnit(&item.bytes, item.bytes.size(), all.data(), all.size());
      }
      item.taken.swap(dir->pending);  // the rewrite holds them
      item.retried = dir->unwritten;
      dir->unwritten = 0;
    } else if (!dir->pending.empty() && (housekeeping || fresh)) {
      item.kind = TombJob::Item::kAppend;
      item.offset = dir->log_bytes;
      if (housekeeping) {
        item.taken.swap(dir->pending);
        item.retried = dir->unwritten;
        dir->unwritten = 0;
      } else {
        // During the pause after a failure, only the new entries: what failed waits for its
        // end, so that deletes on a failing disk do not each try the whole backlog again.
        item.taken.assign(dir->pending.begin() + static_cast<ptrdiff_t>(dir->unwritten),
                          dir->pending.end());
        dir->pending.resize(dir->unwritten);
      }
      if (item.offset == 0) spill::PutDeletedLogHeader(&item.bytes);  // a new log
      spill::PutDeletedLogUnit(&item.bytes, item.offset + item.bytes.size(), item.taken.data(),
                               item.taken.size());
    } else {
      continue;
    }
    job->items.push_back(std::move(item));
  }
  if (job->items.empty()) {
    // Nothing to write: replies still waiting need nothing more (their logs failed before).
    for (DeferredDelete* d : deletes_waiting_) job->replies.push_back(d);
    deletes_waiting_.clear();
    if (job->replies.empty()) {
      delete job;
      return;
    }
    TombDone(&job->req, 0);
    return;
  }
  job->replies.swap(deletes_waiting_);
  job->req.data = job;
  tomb_job_ = job;
  if (uv_queue_work(loop_, &job->req, TombWork, TombDone) != 0) {
    for (auto& item : job->items) {
      item.rc = -EAGAIN;
      item.error = "cannot queue the write";
    }
    TombDone(&job->req, 0);
  }
}

void Spiller::TombWork(uv_work_t* req) {
  auto* job = static_cast<TombJob*>(req->data);
  spill::Env* env = job->spiller->env_;
  for (TombJob::Item& item : job->items) {
    const std::string log = item.path + "/" + kDeletedLog;
    auto fail = [&](int rc, const char* what) {
      item.rc = rc;
      item.error = std::string(what) + " " + log + ": " + std::strerror(-rc);
    };
    switch (item.kind) {
      case TombJob::Item::kAppend: {
        bool opened = false;
        if (item.fd < 0) {
          item.fd = env->Open(log, O_WRONLY | O_CREAT, 0600);
          if (item.fd < 0) {
            fail(item.fd, "cannot open");
            break;
          }
          opened = true;
        }
        iovec iov{item.bytes.data(), item.bytes.size()};
        ssize_t w = env->PWritev(item.fd, &iov, 1, static_cast<off_t>(item.offset));
        if (w < 0) {
          fail(static_cast<int>(w), "cannot write");
        } else if (static_cast<size_t>(w) != item.bytes.size()) {
          fail(-EIO, "short write to");
        } else if (int rc = env->Fdatasync(item.fd); rc < 0) {
          fail(rc, "cannot sync");
        } else if (opened) {
          // A log this open may have just created: its name made durable too, or a power cut
          // could lose the whole log and revive what it deletes. Retried on the next append if
          // it fails (the descriptor is not kept then).
          if (int drc = env->SyncDir(item.path); drc < 0) {
            fail(drc, "cannot sync the directory of");
            env->Close(item.fd);
            item.fd = -1;
          }
        }
        break;
      }
      case TombJob::Item::kRewrite: {
        const std::string tmp = log + ".tmp";
        int fd = env->Open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd < 0) {
          fail(fd, "cannot open");
          break;
        }
        iovec iov{item.bytes.data(), item.bytes.size()};
        ssize_t w = item.bytes.empty() ? 0 : env->PWritev(fd, &iov, 1, 0);
        int rc = w < 0 ? static_cast<int>(w)
                 : static_cast<size_t>(w) != item.bytes.size() ? -EIO
                                                                : env->Fdatasync(fd);
        if (rc == 0) rc = env->Rename(tmp, log);
        if (rc == 0) rc = env->SyncDir(item.path);
        if (rc < 0) {
          env->Close(fd);
          env->Unlink(tmp);
          fail(rc, "cannot rewrite");
          break;
        }
        if (item.fd >= 0) env->Close(item.fd);
        item.fd = fd;
        break;
      }
      case TombJob::Item::kRemove: {
        // The files' removal must be durable before the log's.
        int rc = env->SyncDir(item.path);
        if (rc == 0) {
          rc = env->Unlink(log);
          if (rc == -ENOENT) rc = 0;
        }
        if (rc < 0) {
          fail(rc, "cannot remove");
          break;
        }
        if (item.fd >= 0) env->Close(item.fd);
        item.fd = -1;
        break;
      }
    }
  }
}

void Spiller::TombDone(uv_work_t* req, int /*status*/) {
  auto* job = static_cast<TombJob*>(req->data);
  Spiller* s = job->spiller;
  if (s->tomb_job_ == job) s->tomb_job_ = nullptr;
  std::unordered_map<SpillDirState*, const TombJob::Item*> failed;
  for (TombJob::Item& item : job->items) {
    SpillDirState* dir = item.dir;
    dir->log_fd = item.fd;
    if (item.rc != 0) {
      // The deletes that needed it are told. Its entries join what failed before, ahead of
      // any queued since, and are tried again once the pause is over (by tomb_timer_).
      dir->retry_after_ns = MonotonicNs() + kSpillBackoffNs;
      failed[dir] = &item;
      std::vector<uint8_t>& kept = item.taken;
      if (item.kind != TombJob::Item::kRemove && !kept.empty()) {
        kept.insert(kept.end(), dir->pending.begin(), dir->pending.end());
        dir->unwritten += kept.size() - dir->pending.size();
        dir->pending.swap(kept);
      }
      if (kept.empty()) {
        // A rewrite or removal no tombstone rode on: the log on disk still says what it said.
        if (!dir->tidy_failing) {
          LOG_WARN("%s: the log stays as it is, which keeps every delete it holds; tried again "
                   "later", item.error.c_str());
        }
        dir->tidy_failing = true;
        continue;
      }
      if (!dir->failing) {
        LOG_ERROR("%s: deletes of spilled objects in %s are not durable until a write of its "
                  "log succeeds (a store restarted with --recover could serve them again); "
                  "tried again every %d s",
                  item.error.c_str(), item.path.c_str(),
                  static_cast<int>(kSpillBackoffNs / 1000000000));
      }
      dir->failing = true;
      continue;
    }
    if (dir->failing) {
      LOG_INFO("the deletes of spilled objects in %s are durable again", item.path.c_str());
      dir->failing = false;
    }
    dir->tidy_failing = false;
    switch (item.kind) {
      case TombJob::Item::kAppend:
        dir->log_bytes = item.offset + item.bytes.size();
        dir->log_entries += item.taken.size() / kTombstone;
        break;
      case TombJob::Item::kRewrite:
        dir->log_bytes = item.bytes.size();
        dir->log_entries = item.entries;
        dir->log_rewrite = false;
        break;
      case TombJob::Item::kRemove:
        dir->log_bytes = 0;
        dir->log_entries = 0;
        dir->log_rewrite = false;
        if (dir->adopted && s->dirs_) s->dirs_->RemoveIfEmpty(dir->path);
        break;
    }
  }
  for (DeferredDelete* d : job->replies) {
    std::string why;
    for (auto [pos, dir] : d->needs) {
      auto it = failed.find(dir);
      if (it == failed.end()) continue;
      d->statuses[pos] = STORE_ENODISK;
      why = it->second->error;
    }
    s->host_.ReplyDelete(*d, why);
    delete d;
  }
  delete job;
  s->MaybeStartTombJob();
  if (!failed.empty()) s->ArmTombTimer();
}

uint64_t Spiller::undurable_deletes() const {
  uint64_t bytes = 0;
  for (const auto& [path, dir] : dir_states_) bytes += dir->unwritten;
  if (tomb_job_) {
    for (const TombJob::Item& item : tomb_job_->items) bytes += item.retried;  // set before it ran
  }
  return bytes / kTombstone;
}

void Spiller::ArmTombTimer() {
  if (!tomb_timer_open_ || stopping_) return;
  const int64_t now = MonotonicNs();
  int64_t next = INT64_MAX;
  for (auto& [path, dir] : dir_states_) {
    if (dir->unwritten > 0 && dir->retry_after_ns > now) next = std::min(next, dir->retry_after_ns);
  }
  if (next == INT64_MAX) return;
  uv_timer_start(
      &tomb_timer_,
      [](uv_timer_t* t) {
        auto* s = static_cast<Spiller*>(t->data);
        s->MaybeStartTombJob();
        s->ArmTombTimer();  // the loop's clock may run a little behind: fired early, again
      },
      static_cast<uint64_t>((next - now) / 1000000) + 1, 0);
}

// ------------------------------------------------------------------------------------------
// Compaction: a file whose dead records pass --spill-compact of its bytes is rewritten.
//
// One file at a time. The old file's index is read on the threadpool; on the loop, its live
// records are the ones whose object still points at them; the new file's offsets follow from
// their sizes, and from then on a delete of one of those objects writes a tombstone for its
// record in the new file as well (compacting_at_), so neither copy can come back. The records
// are copied (copy_file_range) into a new file written as .tmp and renamed once whole and
// synced; then, on the loop, the objects still there move to it and the old file is removed
// once no restore reads it. A crash at any point leaves the old file whole, the new one whole
// or absent, and every acknowledged delete tombstoned in both.

void Spiller::MaybeCompact(SpillFile* f) {
  if (!dirs_ || stopping_ || options_.spill_compact >= 1.0 || f->compacting || f->removing ||
      f->live_objects == 0 || f->size == 0) {
    return;
  }
  if (static_cast<double>(f->dead_bytes) <= options_.spill_compact * static_cast<double>(f->size)) {
    return;
  }
  if (MonotonicNs() < f->compact_after_ns) return;
  if (compact_job_) {
    compact_wanted_.insert(f->id);  // looked at again when the running one is done
    return;
  }
  StartCompaction(f);
}

void Spiller::StartCompaction(SpillFile* f) {
  auto* job = new CompactJob;
  job->spiller = this;
  job->from = f;
  job->from_path = f->path;
  job->version = f->version;
  f->compacting = true;
  f->readers++;
  compact_job_ = job;
  job->req.data = job;
  if (uv_queue_work(loop_, &job->req, CompactIndexWork, CompactIndexDone) != 0) {
    job->rc = -EAGAIN;
    job->error = "cannot queue the work";
    CompactIndexDone(&job->req, 0);
  }
}

void Spiller::CompactIndexWork(uv_work_t* req) {
  auto* job = static_cast<CompactJob*>(req->data);
  job->rc = spill::ReadIndex(job->spiller->env_, job->from_path, &job->index, &job->error);
}

void Spiller::CompactIndexDone(uv_work_t* req, int /*status*/) {
  auto* job = static_cast<CompactJob*>(req->data);
  Spiller* s = job->spiller;
  SpillFile* f = job->from;
  if (job->rc == 0 && !s->stopping_ && !f->removing) {
    // Its live records: those whose object still points at them.
    for (const auto& rec : job->index) {
      ObjectKey key;
      std::memcpy(key.bytes, rec.loc.id, 20);
      Object* o = s->table_.Find(key);
      if (!o || o->spill_file != f || o->spill_offset != rec.loc.offset) continue;
      spill::RecordLocation loc = rec.loc;
      loc.seeded = f->version >= 2;
      job->live.push_back(loc);
      job->uids.push_back(o->uid);
    }
    uint64_t bytes = spill::kTrailer;
    for (const auto& l : job->live) bytes += l.size + spill::kIndexEntry;
    job->path = job->live.empty()
                    ? ""
                    : s->dirs_->NextFile(bytes, spill::IsLeasedSpillFile(f->path));
  }
  if (job->rc != 0 || job->path.empty() || s->stopping_ || f->removing) {
    return s->EndCompaction(job);  // a failure is logged there
  }
  job->dir = s->DirState(Dirname(job->path));
  job->number = FileNumber(job->path);
  job->dir->files++;  // from now on it may exist
  uint64_t off = 0;
  for (size_t i = 0; i < job->live.size(); i++) {
    s->compacting_at_[job->uids[i]] = SpillingAt{job->dir, job->number, off};
    off += job->live[i].size;
  }
  if (uv_queue_work(s->loop_, &job->req, CompactCopyWork, CompactCopyDone) != 0) {
    job->rc = -EAGAIN;
    job->error = "cannot queue the copy";
    CompactCopyDone(&job->req, 0);
  }
}

void Spiller::CompactCopyWork(uv_work_t* req) {
  auto* job = static_cast<CompactJob*>(req->data);
  job->rc = spill::CopySpillFile(job->spiller->env_, job->from_path, job->live, job->version,
                                 job->path, &job->locations, &job->file_size, &job->error);
}

void Spiller::CompactCopyDone(uv_work_t* req, int /*status*/) {
  auto* job = static_cast<CompactJob*>(req->data);
  Spiller* s = job->spiller;
  SpillFile* f = job->from;
  for (uint64_t uid : job->uids) s->compacting_at_.erase(uid);
  if (job->rc != 0) {
    s->SpillFileGone(job->dir, job->number);  // the partial file was removed
    return s->EndCompaction(job);
  }
  auto owned = std::make_unique<SpillFile>();
  SpillFile* nf = owned.get();
  nf->id = s->next_spill_file_++;
  nf->path = job->path;
  nf->dir = job->dir;
  nf->number = job->number;
  nf->size = job->file_size;
  nf->version = job->version;
  nf->created_ns = RealtimeNs();
  s->AddSpillFile(std::move(owned));
  // The objects still there move to the new file; the records of those deleted meanwhile are
  // dead in it (and tombstoned). The old records stay on disk until the old file is gone: a
  // delete tombstones them too (moved_from_).
  std::vector<uint64_t> moved;
  for (size_t i = 0; i < job->uids.size(); i++) {
    const spill::RecordLocation& was = job->live[i];
    const spill::RecordLocation& now = job->locations[i];
    Object* o = s->table_.FindUid(job->uids[i]);
    if (!o || o->spill_file != f || o->spill_offset != was.offset) {
      s->AddDead(nf, now.size);
      continue;
    }
    f->live_objects--;
    f->live_bytes -= was.size;
    s->AddDead(f, was.size);
    s->moved_from_[o->uid].push_back(SpillingAt{f->dir, f->number, was.offset});
    moved.push_back(o->uid);
    o->spill_file = nf;
    o->spill_offset = now.offset;
    AddRecord(nf, now.offset, o->uid);
    nf->live_objects++;
    nf->live_bytes += now.size;
  }
  if (!moved.empty()) {
    std::vector<uint64_t>& by_file = s->moved_by_file_[{f->dir, f->number}];
    by_file.insert(by_file.end(), moved.begin(), moved.end());
  }
  s->compact_totals_.files++;
  s->compact_totals_.bytes_copied += job->file_size;
  s->compact_totals_.bytes_freed += f->size > job->file_size ? f->size - job->file_size : 0;
  // One line a second at most (info); the others are counted, and each is said at debug level.
  const LogLevel level = s->compact_log_.Now(s->stopping_) ? LogLevel::kInfo : LogLevel::kDebug;
  STORE_LOG(level,
            "compacted spill file %s (%" PRIu64 " of %" PRIu64 " bytes dead) into %s (%" PRIu64
            " bytes)", f->path.c_str(), f->dead_bytes, f->size, nf->path.c_str(), nf->size);
  if (nf->live_objects == 0) s->RemoveSpillFile(nf);
  s->EndCompaction(job);
}

void Spiller::EndCompaction(CompactJob* job) {
  SpillFile* f = job->from;
  if (job->rc != 0) {
    compact_totals_.failures++;
    f->compact_after_ns = MonotonicNs() + 60ll * 1000000000;  // not again for a minute
    // One line a second at most: a failing disk fails the compaction of every file that asks.
    if (compact_fail_log_.Now(stopping_)) {
      LOG_WARN("cannot compact spill file %s (it stays as it is): %s", job->from_path.c_str(),
               job->error.c_str());
    }
  }
  f->compacting = false;
  compact_job_ = nullptr;
  f->readers--;
  // All its objects moved: removed now, or once the restores still reading it are done.
  if (f->removing || f->live_objects == 0) RemoveSpillFile(f);
  delete job;
  // The next file that asked meanwhile.
  while (!compact_job_ && !compact_wanted_.empty()) {
    uint64_t id = *compact_wanted_.begin();
    compact_wanted_.erase(compact_wanted_.begin());
    auto it = spill_files_.find(id);
    if (it != spill_files_.end()) MaybeCompact(it->second.get());
  }
}

// ------------------------------------------------------------------------------------------
// Restoring.

void Spiller::StartRestore(Object* o, bool prefetch, bool pump) {
  if (o->state != ObjectState::kSpilled || !dirs_) return;
  auto it = restore_queued_.find(o->uid);
  if (it != restore_queued_.end()) {
    it->second = it->second || prefetch;
    NoteAsked(o->uid);  // a new asker: tell it if nothing can make room
    if (pump) host_.Pump();
    return;
  }
  o->restore_error = 0;
  ReadaheadStream* stream = prefetch ? nullptr : NoteDemandRestore(o);
  if (pending_restores_.empty() && TryStartRestore(o)) {
    if (stream != nullptr) ReadAhead(stream);
    return;
  }
  pending_restores_.push_back(o->uid);
  restore_queued_.emplace(o->uid, prefetch);
  NoteAsked(o->uid);
  if (pump) host_.Pump();
}

// ------------------------------------------------------------------------------------------
// Read-ahead.
//
// Objects are often read back in the order they were spilled (a partition, a frame's chunks),
// and one restore at a time leaves the disk and the second core idle between a reply and the
// next get. So, as a file system reads ahead, a get that restores the record right after the
// one the previous such get restored (same file, next offset) starts a stream, and the stream
// restores the objects that follow, as if they had been prefetched, until --restore-readahead
// bytes of them are ahead of its reader. Every get of one of those moves the reader on and the
// stream tops its window up again, so restores start one or two at a time, well before they
// are asked for (a window read whole when the reader reaches it would keep the reader waiting
// for its first object, restored alongside the rest). At the end of a spill file the stream
// goes on into the file written next: one eviction writes its objects into several files in
// turn. Read-ahead only takes memory that is free below the high mark, never makes room by
// spilling, never jumps the queue of restores waiting for memory, and stops at an object it
// cannot restore now (the reader's next get tries again); what it restored keeps its copy on
// disk, so the spiller drops it again without writing if nobody reads it. A few streams are
// kept, the least recently used replaced.

Spiller::ReadaheadStream* Spiller::ReaderMoved(const Object* o) {
  const SpillFile* f = o->spill_file;
  const uint64_t at = o->spill_offset, end = at + o->spill_size();
  for (ReadaheadStream& s : readahead_) {
    if (s.at == nullptr) continue;
    bool moved = false;
    for (size_t i = 0; i < s.ahead.size(); i++) {
      if (s.ahead[i].file_id == f->id && s.ahead[i].offset == at) {
        // The reader is here: what it passed is behind it.
        for (size_t k = 0; k <= i; k++) {
          s.ahead_bytes -= s.ahead.front().bytes;
          s.ahead.pop_front();
        }
        moved = true;
        break;
      }
    }
    if (!moved && s.at == f && at == s.next) {
      // Right after the window: the stream could not keep ahead (memory ran short).
      s.ahead.clear();
      s.ahead_bytes = 0;
      s.next = end;
      moved = true;
    }
    if (moved) {
      s.file = o->spill_file;
      s.prev_end = end;
      s.used = ++readahead_clock_;
      return &s;
    }
  }
  return nullptr;
}

Spiller::ReadaheadStream* Spiller::NoteDemandRestore(Object* o) {
  if (options_.restore_readahead == 0 || o->spill_file == nullptr) return nullptr;
  if (ReadaheadStream* s = ReaderMoved(o)) return s;
  SpillFile* f = o->spill_file;
  const uint64_t at = o->spill_offset, end = at + o->spill_size();
  ReadaheadStream* mine = nullptr;
  ReadaheadStream* lru = &readahead_[0];
  for (ReadaheadStream& s : readahead_) {
    if (s.file == f) mine = &s;
    if (s.file == nullptr || s.used < lru->used) lru = &s;
  }
  if (mine && at == mine->prev_end) {
    // The second in order: read ahead from here.
    mine->at = f;
    mine->next = mine->prev_end = end;
    mine->ahead.clear();
    mine->ahead_bytes = 0;
    mine->used = ++readahead_clock_;
    return mine;
  }
  if (!mine) mine = lru;
  *mine = ReadaheadStream{};
  mine->file = f;
  mine->prev_end = end;
  mine->used = ++readahead_clock_;
  return nullptr;
}

void Spiller::ContinueReadAhead(Object* o) {
  if (options_.restore_readahead == 0) return;
  if (ReadaheadStream* s = ReaderMoved(o)) ReadAhead(s);
}

void Spiller::ReadAhead(ReadaheadStream* s) {
  const uint64_t mark = static_cast<uint64_t>(static_cast<double>(region_->capacity()) *
                                              policy_.high);
  const uint64_t budget = options_.restore_readahead;
  int started = 0;
  // Records looked at, bounded so that one get never walks far through records that are gone
  // (deleted, or moved by a compaction) or files that have none left.
  int looked = 0;
  while (s->at != nullptr && s->ahead_bytes < budget && s->ahead.size() < kReadaheadRecords &&
         looked++ < 4 * static_cast<int>(kReadaheadRecords)) {
    SpillFile* f = s->at;
    auto it = std::lower_bound(f->records.begin(), f->records.end(),
                               std::make_pair(s->next, uint64_t{0}));
    if (it == f->records.end()) {
      // The end of the file: on into the one the same spilling wrote next, once it is there.
      auto me = spilled_by_number_.find(f->number);
      auto n = spilled_by_number_.find(f->number + 1);
      if (me == spilled_by_number_.end() || me->second != f || n == spilled_by_number_.end() ||
          n->second->records.empty()) {
        break;
      }
      s->at = n->second;
      s->next = 0;
      continue;
    }
    Object* x = table_.FindUid(it->second);
    if (!x || x->spill_file != f || x->spill_offset != it->first) {  // gone or moved
      s->next = it->first + 1;
      continue;
    }
    const uint64_t size = x->data_size + x->metadata_size;
    if (x->state == ObjectState::kSpilled && !x->deleted) {
      if (stopping_ || !pending_restores_.empty() ||
          region_->allocated_bytes() + size > mark || !TryStartRestore(x, true)) {
        break;
      }
      readahead_restores_++;
      started++;
    }
    s->ahead.push_back({f->id, it->first, size});
    s->ahead_bytes += size;
    s->next = it->first + x->spill_size();
  }
  if (started > 0) {
    LOG_DEBUG("read ahead %d objects, to offset %" PRIu64 " of spill file %s (%" PRIu64
              " restores started by read-ahead so far)",
              started, s->next, s->at->path.c_str(), readahead_restores_);
  }
}

bool Spiller::RestoreWanted(const Object* o) const {
  if (o->pins > 0) return true;
  if (host_.GetsWaitFor(o->id)) return true;
  auto q = restore_queued_.find(o->uid);
  return q != restore_queued_.end() && q->second;  // a prefetch
}

void Spiller::PopRestore(const Object* o) {
  restore_queued_.erase(o->uid);
  PopFrontRestore();
}

void Spiller::PopFrontRestore() {
  pending_restores_.pop_front();
  stall_compacted_ = std::min(stall_compacted_, pending_restores_.size());
  if (pending_restores_.empty()) {  // nothing left that a stall could concern
    stall_new_.clear();
    stall_all_ = false;
  }
}

Object* Spiller::HeadRestore() {
  while (!pending_restores_.empty()) {
    uint64_t uid = pending_restores_.front();
    Object* o = restore_queued_.count(uid) ? table_.FindUid(uid) : nullptr;
    if (o && o->state == ObjectState::kSpilled && !o->deleted && RestoreWanted(o)) return o;
    // Freed, deleted, restored another way, or nobody waits for it any more.
    restore_queued_.erase(uid);
    PopFrontRestore();
  }
  return nullptr;
}

void Spiller::NoteAsked(uint64_t uid) {
  if (stall_all_) return;
  // More than the queue holds: asked again and again. The next Stall looks at the whole queue
  // instead, which these calls pay for.
  if (stall_new_.size() > pending_restores_.size() + 1024) {
    stall_new_.clear();
    stall_all_ = true;
    return;
  }
  stall_new_.push_back(uid);
}

bool Spiller::Stall(std::vector<ObjectKey>* ids) {
  if (!stall_all_ && stall_new_.empty()) return false;
  // The entries of objects gone leave the queue once it has doubled since the last pass.
  const bool compact = pending_restores_.size() >= 2 * stall_compacted_ + 64;
  auto live = [&](uint64_t uid, std::unordered_map<uint64_t, bool>::iterator* q) -> Object* {
    *q = restore_queued_.find(uid);
    Object* o = *q != restore_queued_.end() ? table_.FindUid(uid) : nullptr;
    return o && o->state == ObjectState::kSpilled && !o->deleted ? o : nullptr;
  };
  // Prefetches (a hint) become plain restores, kept only while a get or a pin wants them (see
  // Server::StallRestores). Each id is reported once.
  std::unordered_set<uint64_t> seen;
  auto note = [&](uint64_t uid) {
    std::unordered_map<uint64_t, bool>::iterator q;
    Object* o = live(uid, &q);
    if (!o || !seen.insert(uid).second) return;
    q->second = false;  // no longer a prefetch
    ids->push_back(o->id);
  };
  if (stall_all_ || compact) {
    std::deque<uint64_t> keep;
    for (uint64_t uid : pending_restores_) {
      std::unordered_map<uint64_t, bool>::iterator q;
      if (!live(uid, &q)) {
        if (q != restore_queued_.end()) restore_queued_.erase(q);
        continue;
      }
      keep.push_back(uid);
      if (stall_all_) note(uid);
    }
    pending_restores_.swap(keep);
    stall_compacted_ = pending_restores_.size();
  }
  if (!stall_all_) {
    for (uint64_t uid : stall_new_) note(uid);
  }
  stall_new_.clear();
  stall_all_ = false;
  return true;
}

bool Spiller::TryStartRestore(Object* o, bool readahead) {
  if (!RestoreSlot()) return false;
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
  job->spiller = this;
  job->object = o;
  job->readahead = readahead;
  job->file = o->spill_file;
  job->file->readers++;
  job->path = o->spill_file->path;
  job->fd = o->spill_file->read_fd;
  std::memcpy(job->location.id, o->id.bytes, 20);
  job->location.offset = o->spill_offset;
  job->location.size = o->spill_size();
  job->location.checksum = o->spill_checksum;
  job->location.seeded = o->spill_file->version >= 2;
  job->dst = o->data;
  job->data_size = o->data_size;
  job->metadata_size = o->metadata_size;
  job->req.data = job;
  restore_jobs_++;
  if (uv_queue_work(loop_, &job->req, RestoreWork, RestoreDone) != 0) {
    job->rc = -EAGAIN;
    job->error = "cannot queue the read";
    RestoreDone(&job->req, 0);
  }
  return true;
}

void Spiller::RestoreWork(uv_work_t* req) {
  auto* job = static_cast<RestoreJob*>(req->data);
  int64_t t0 = MonotonicNs();
  spill::Env* env = job->spiller->env_;
  int fd = job->fd;
  if (fd < 0) fd = job->opened_fd = spill::OpenForRecords(env, job->path, &job->error);
  job->rc = fd < 0 ? fd
                   : spill::ReadRecordFrom(env, fd, job->path, job->location, job->dst,
                                           job->data_size, job->metadata_size, &job->error);
  job->ns = MonotonicNs() - t0;
}

void Spiller::RestoreDone(uv_work_t* req, int /*status*/) {
  auto* job = static_cast<RestoreJob*>(req->data);
  Spiller* s = job->spiller;
  Object* o = job->object;
  ObjectKey key = o->id;
  bool deleted = o->deleted;
  s->restore_jobs_--;
  s->KeepReadFd(job->file, job->opened_fd);
  if (--job->file->readers == 0 && job->file->removing) s->RemoveSpillFile(job->file);
  if (job->rc == 0) {
    s->spill_totals_.restored_objects++;
    s->spill_totals_.restored_bytes += job->location.size;
    s->spill_totals_.restore_ns += static_cast<uint64_t>(job->ns);
    if (!job->readahead) o->access_ns = RealtimeNs();  // a get's or a prefetch's
    s->table_.Mutate(o, [](Object* x) { x->state = ObjectState::kSealed; });
    if (!deleted) s->host_.NotifyWaiters(key);
    s->host_.MaybeFree(o);
  } else {
    s->spill_totals_.restore_failures++;
    s->DropToDisk(o);  // the memory read into is not served
    // Out of descriptors or memory: the bytes on disk may well be good, and the next get tries
    // again. Else corrupt or unreadable: either way the bytes cannot be served.
    int code = job->rc == -EMFILE || job->rc == -ENFILE ? STORE_ELIMIT
               : job->rc == -ENOMEM                      ? STORE_ENOMEM
                                                         : STORE_ECORRUPT;
    std::string why = job->error;
    delete job;
    if (deleted) {
      s->host_.MaybeFree(o);
      s->host_.NotifyWaiters(key);
    } else {
      s->FailRestore(o, code, why);
    }
    s->host_.Pump();
    return;
  }
  delete job;
  if (deleted) s->host_.NotifyWaiters(key);
  s->host_.Pump();
}

void Spiller::KeepReadFd(SpillFile* f, int fd) {
  if (f->read_fd >= 0) {
    if (fd >= 0) env_->Close(fd);  // another read opened the file first
    kept_fds_.splice(kept_fds_.begin(), kept_fds_, f->kept);
    return;
  }
  if (fd < 0) return;
  if (kept_fds_.size() >= kKeptReadFds) {
    // The least recently restored from that no read uses now (a read in flight holds the file's
    // descriptor until it is done; it also holds a reader count).
    for (auto it = kept_fds_.end(); it != kept_fds_.begin();) {
      --it;
      if ((*it)->readers == 0) {
        CloseReadFd(*it);
        break;
      }
    }
  }
  f->read_fd = fd;
  kept_fds_.push_front(f);
  f->kept = kept_fds_.begin();
}

void Spiller::CloseReadFd(SpillFile* f) {
  if (f->read_fd < 0) return;
  env_->Close(f->read_fd);
  f->read_fd = -1;
  kept_fds_.erase(f->kept);
}

void Spiller::FailRestore(Object* o, int code, const std::string& message) {
  static_assert(STORE_ERRNO_MIN_ >= INT8_MIN, "a STORE_E* code fits restore_error");
  o->restore_error = static_cast<int8_t>(code);
  // Logged once per second at most, with how many were not: a prefetch of many spilled
  // objects on a failing disk must not flood the log.
  if (restore_log_.Now(stopping_)) {
    LOG_ERROR("cannot restore object %s: %s", Hex(o->id).c_str(), message.c_str());
  }
  host_.NotifyWaiters(o->id);
}

}  // namespace store
