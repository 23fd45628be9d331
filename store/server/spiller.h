// spiller.h - spilling: objects written to spill files on disk, and restored from them.
//
// Owns: the spill directories (spill::SpillDirs) and their DELETED logs, the spill files, the
// spill, restore, compaction, unlink and tomb jobs in flight, the queue of restores waiting for
// memory, the read-ahead streams, the delete replies waiting for durable tombstones, and the
// spill totals. It does not own the objects: it changes their state and memory through the
// ObjectTable and the Region it is given, as the server does.
// Called by: the Server, which holds one and decides when memory is needed (Server::Pump); the
// Spiller calls back through Spiller::Host (serve waiters, free objects, reply to deletes).
// Threads: the loop thread, except the jobs' *Work functions, which run on the libuv threadpool,
// touch only their job and the spill::Env, and hand back to the loop in their *Done.
//
// How spilling works, restoring, tombstones, compaction and read-ahead: see spiller.cpp.
#pragma once

#include <uv.h>

#include <cstdint>
#include <deque>
#include <list>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "eviction/policy.h"
#include "memory/region.h"
#include "objects/object_table.h"
#include "server/options.h"
#include "server/secondly_log.h"
#include "spill/env.h"
#include "spill/spill_dir.h"

namespace store {

struct SpillDirState;

// One spill file, as the server accounts for it. Objects point at it while they have a copy
// in it; it is deleted when the last of them goes.
struct SpillFile {
  uint64_t id = 0;
  std::string path;
  SpillDirState* dir = nullptr;  // the directory holding it
  uint64_t number = 0;        // n of spill-<n>.bin
  uint64_t size = 0;
  uint64_t live_objects = 0;  // objects whose copy is here
  uint64_t live_bytes = 0;
  uint64_t dead_bytes = 0;    // records of deleted objects
  int64_t created_ns = 0;
  uint32_t version = 0;       // of the file format (its records' checksums)
  uint32_t readers = 0;       // restores and a compaction reading it now: it stays until 0
  bool removing = false;      // no live object left: removed once readers is 0
  bool compacting = false;    // its live records are being copied to a new file
  // A descriptor of it for restores, kept after a restore's read (up to kKeptReadFds files, the
  // least recently restored from closed first, and at its removal), so the kernel's read-ahead
  // state follows restores in turn: a descriptor opened per record starts that state afresh,
  // and its first read gets no read-ahead. Opened on the threadpool.
  int read_fd = -1;
  std::list<SpillFile*>::iterator kept;  // its place in Spiller::kept_fds_ while read_fd >= 0
  int64_t compact_after_ns = 0;  // after a failed compaction: not again before then
  // (record offset, object uid) of every record written into it for an object, in offset
  // order: how a read-ahead finds the objects that follow one. Entries outlive their objects
  // (deleted, or moved by a compaction); a reader checks that the object is still there.
  std::vector<std::pair<uint64_t, uint64_t>> records;
};

// A directory holding spill files (one this store owns, or one --recover adopted) and its
// DELETED log: tombstones (file number, record offset) of deleted objects whose records live on
// in files that other objects keep, each write of them twice with checksums
// (spill/deleted_log.h). A store started with --recover serves no record a tombstone names. The
// log is written only by the TombJob in flight.
struct SpillDirState {
  std::string path;
  bool adopted = false;
  uint64_t files = 0;            // spill files in it that exist or are being written
  std::vector<uint8_t> pending;  // tombstones not written yet
  // Of pending, the bytes at its front that failed writes left (their deletes were told
  // STORE_ENODISK): tried again once the pause that follows a failure is over (by
  // Spiller::tomb_timer_, or with the next tombstones then), so that what is on disk comes to
  // say they are deleted after all. Writes during the pause take only the new entries.
  uint64_t unwritten = 0;
  bool failing = false;          // its last write failed (logged once until one succeeds)
  bool tidy_failing = false;     // likewise for a rewrite or removal that carried no tombstone
  bool log_unreadable = false;   // --recover could not read its log: nothing of it is served
  uint64_t log_bytes = 0;        // bytes of the log on disk (up to its last whole write)
  uint64_t log_entries = 0;      // tombstones in it
  // Its next write is a rewrite: --recover found it in the first format, or read a write of it
  // from one copy only.
  bool log_rewrite = false;
  int log_fd = -1;               // open while it has entries; used by the tomb job only
  int64_t retry_after_ns = 0;    // after a failed write: no rewrite or removal before then
  // The log's entries whose file may still exist, by file number: what a rewrite keeps.
  std::unordered_map<uint64_t, std::vector<uint64_t>> live;
  uint64_t live_entries = 0;
};

class Spiller {
 public:
  // Spill files whose descriptor is kept open for restores (SpillFile::read_fd), at most.
  static constexpr uint64_t kKeptReadFds = 16;
  // An evict request as the Spiller sees it: what it asked for, what was spilled for it, and
  // the spill jobs still writing for it. The server's EvictWaiter extends it with its client.
  struct Eviction {
    uint64_t target = 0;
    uint64_t spilled = 0;
    int pending = 0;  // spill jobs still writing for it
  };

  // A delete reply held until the tombstones it wrote are durable (see Server::HandleDelete).
  struct DeferredDelete {
    uint64_t client_id = 0;  // the client may be gone by then
    uint64_t seq = 0;
    std::vector<int32_t> statuses;
    // Ids whose tombstone went to a directory's log: (position in statuses, that directory).
    std::vector<std::pair<uint32_t, SpillDirState*>> needs;
  };

  // What the Spiller needs of the server that holds it. Called on the loop thread.
  class Host {
   public:
    virtual ~Host() = default;
    // Serves what waits for memory (restores, then creates): memory was freed, or a restore
    // was queued. Reentrant calls are folded into the running one.
    virtual void Pump() = 0;
    // Tells the gets waiting for this id that its object was restored, failed to restore, or
    // was deleted while on disk.
    virtual void NotifyWaiters(const ObjectKey& id) = 0;
    // Frees o if it is deleted, unread and not in the middle of IO; whether it did.
    virtual bool MaybeFree(Object* o) = 0;
    // Whether a get waits for the object with this id.
    virtual bool GetsWaitFor(const ObjectKey& id) const = 0;
    // The bytes the first create waiting for memory needs; 0 when none waits.
    virtual uint64_t WaitingCreateBytes() const = 0;
    // Whether o was created leased: it then goes into a spill file of leased objects.
    virtual bool CreatedLeased(const Object* o) const = 0;
    // The spill jobs of an evict request are done (e->spilled says what they freed): its reply
    // goes out, and e is freed.
    virtual void EvictDone(Eviction* e) = 0;
    // The tombstones of a delete are written, or failed (d.statuses then says STORE_ENODISK and
    // why says what failed): its reply goes out. The Spiller frees d afterwards.
    virtual void ReplyDelete(const DeferredDelete& d, const std::string& why) = 0;
  };

  struct Totals {
    uint64_t objects = 0, bytes = 0, ns = 0, failures = 0;
    uint64_t restored_objects = 0, restored_bytes = 0, restore_ns = 0, restore_failures = 0;
  };
  // Compactions since start: files rewritten, the bytes written into the new files, the disk
  // bytes given back (old size minus new, summed), and the compactions that failed.
  struct CompactTotals {
    uint64_t files = 0, bytes_copied = 0, bytes_freed = 0, failures = 0;
  };

  // env: the filesystem spill files live on (tests pass a fault injector). options, table and
  // host must outlive the Spiller.
  Spiller(const ServerOptions& options, spill::Env* env, ObjectTable* table, Host* host);
  ~Spiller();
  Spiller(const Spiller&) = delete;
  Spiller& operator=(const Spiller&) = delete;

  // Start-up and shutdown.
  // Opens the spill directories (none: spilling is off) and, with --recover, adopts the spilled
  // objects a previous store left in them. The loop must exist: removing spill files whose
  // records are all deleted, and their tombstone logs, queues work on it. Returns false with
  // *error when the directories cannot be used.
  bool Open(uv_loop_t* loop, Region* region, std::string* error);
  // The server is shutting down: no spill, compaction or read-ahead starts from now on.
  void Stop();
  // At stop, after Stop(): the restore failures and compactions (done or failed) not logged yet
  // are said, and the logs' timers go.
  void CloseLogs();
  // After the loop ended: closes the DELETED logs and releases the spill directories (the
  // spill files of live objects stay).
  void Close();

  // Whether this store spills (it has a --spill-dir).
  bool enabled() const { return dirs_ != nullptr; }

  // Deciding (for Server::Pump, which is the one place that decides).
  // The memory the head of the waiting restores and creates needs.
  uint64_t NeedNow();
  // Whether spilling can free more memory: an evictable object, or a spill write in flight.
  bool CanSpillMore() const;
  // Spills what the water marks and the waiting requests call for (the waiting requests only
  // if for_waiters: the server leaves them out when no spilling could make their room), and at
  // least `at_least` bytes (or, for an evict request, its target). Returns whether it freed
  // memory at once (objects with a copy on disk dropped from memory).
  bool SpillStep(uint64_t at_least, Eviction* ew, bool for_waiters = true);
  // Spill files being written.
  int jobs() const { return spill_jobs_; }
  // Whether new spill writes pause after a failed one.
  bool BackingOff() const;
  // The error of the last spill attempt (STORE_ENODISK or 0), and what it said.
  int last_error() const { return last_spill_error_; }
  const std::string& last_message() const { return last_spill_message_; }

  // Restoring.
  // Queues a restore of o (spilled) unless one is queued or running; prefetch: asked by a
  // prefetch (kept only while spilling can make room). Pump serves the queue unless told not to
  // (a caller queueing many pumps once at the end).
  void StartRestore(Object* o, bool prefetch = false, bool pump = true);
  // The first queued restore still wanted (dropping the ones nobody wants any more), or nullptr.
  Object* HeadRestore();
  // Takes o off the queue. REQUIRES: o is HeadRestore().
  void PopRestore(const Object* o);
  // Restore jobs in flight at most: each may hold a descriptor of its file until its
  // completion runs on the loop (the server keeps kBaseReserveFds for such jobs), and one pump
  // starts no more than this many. The rest wait in the queue for a completion.
  static constexpr int kMaxRestoreJobs = 32;
  bool RestoreSlot() const { return restore_jobs_ < kMaxRestoreJobs; }
  // Starts restoring o into memory allocated now; false when there is no room (or no
  // RestoreSlot).
  // A read-ahead's restore (a guess) leaves o's access time as it was, so that an object read
  // ahead and never read is dropped before the objects that were read.
  bool TryStartRestore(Object* o, bool readahead = false);
  // o cannot be restored: its gets hear the error (code), and the failure is logged (at most
  // once a second, with how many were not).
  void FailRestore(Object* o, int code, const std::string& message);
  // Whether a restore of the object with this uid is queued.
  bool RestoreQueued(uint64_t uid) const { return restore_queued_.count(uid) != 0; }
  // Whether restores wait for memory.
  bool RestoresWaiting() const { return !pending_restores_.empty(); }
  // The object with this uid is gone: its queue entry is skipped when it comes up.
  void ForgetRestore(uint64_t uid) { restore_queued_.erase(uid); }
  // Spilling cannot make room now (Server::StallRestores): the restores asked for since the
  // last call (queued, or asked again) are looked at, each once: prefetches among them become
  // plain restores, and the ids of those still queued are put in *ids. False, doing nothing,
  // when none was asked for since. O(restores asked since), amortized: the restores of objects
  // gone leave the queue in a pass over it once it has doubled since the last such pass.
  bool Stall(std::vector<ObjectKey>* ids);
  // A get took a reader of o: if a read-ahead stream passed o, its reader is there now, and
  // the stream tops its window up.
  void MaybeReadAheadOnGet(Object* o) {
    if (o->spill_file != nullptr) ContinueReadAhead(o);
  }

  // Deletes.
  // Writes o's tombstones if it has a copy on disk (or one being written, or copied by a
  // compaction) and drops that copy; adds the directories they went to to *dirs (may be
  // nullptr). Returns whether it wrote any.
  bool TombstoneFor(Object* o, std::vector<SpillDirState*>* dirs = nullptr);
  // Starts a tomb job if none runs and there is work: tombstones to write, replies waiting,
  // logs to rewrite or to remove.
  void MaybeStartTombJob();
  // Holds d (taken over) until the tombstones it needs are durable; then Host::ReplyDelete.
  void ReplyWhenDurable(DeferredDelete* d);

  // What introspection shows.
  const std::map<uint64_t, std::unique_ptr<SpillFile>>& files() const { return spill_files_; }
  const Totals& totals() const { return spill_totals_; }
  // Bytes of the spill files on disk, and of those the records of deleted objects.
  // Counted as files come and go, O(1): stats and metrics ask for them.
  void DiskBytes(uint64_t* disk, uint64_t* dead) const {
    *disk = disk_total_;
    *dead = dead_total_;
  }
  const CompactTotals& compact_totals() const { return compact_totals_; }
  // Tombstones whose write failed and that are not written yet, in all directories: records of
  // deletes answered STORE_ENODISK (one per copy of the object on disk, usually one).
  uint64_t undurable_deletes() const;

 private:
  struct SpillJob;
  struct RestoreJob;
  struct TombJob;
  struct CompactJob;

  // Start-up (the body of Open).
  bool OpenDirs(std::string* error);
  void RecoverFile(const spill::RecoveredFile& rf, SpillDirState* dir,
                   const std::set<std::pair<uint64_t, uint64_t>>& deleted);
  // Spilling.
  void DropToDisk(Object* o);
  void StartSpillJob(std::vector<Object*> victims, Eviction* ew);
  // One spill file of victims; leased: all of them were created leased.
  void StartSpillJobOf(std::vector<Object*> victims, Eviction* ew, bool leased);
  static void SpillWork(uv_work_t* req);
  static void SpillDone(uv_work_t* req, int status);
  void DropSpillCopy(Object* o, bool dead);
  void RemoveSpillFile(SpillFile* f);
  // Restoring.
  bool RestoreWanted(const Object* o) const;
  static void RestoreWork(uv_work_t* req);
  static void RestoreDone(uv_work_t* req, int status);
  // Read-ahead (--restore-readahead): a get that restores the record right after the one the
  // last such get restored, in the same spill file, starts a stream. The stream keeps the
  // objects that follow restored (or being restored), up to --restore-readahead bytes ahead of
  // its reader: every get of one of them moves the window on, into the spill file written next
  // when it reaches the end of one. It takes only free memory below the high mark.
  struct ReadaheadStream;
  // Notes a get that restores o: returns the stream to read ahead once o's restore started.
  ReadaheadStream* NoteDemandRestore(Object* o);
  // The stream whose reader o's get moved on (o is one of the records it passed, or the one
  // right after them), or nullptr.
  ReadaheadStream* ReaderMoved(const Object* o);
  void ReadAhead(ReadaheadStream* s);
  void ContinueReadAhead(Object* o);
  // Deletion records (tombstones) and the DELETED logs.
  SpillDirState* DirState(const std::string& dir);
  // Queues a tombstone for the record at (number, offset) of a file in dir; written by the
  // next tomb job.
  void QueueTombstone(SpillDirState* dir, uint64_t number, uint64_t offset);
  static void TombWork(uv_work_t* req);
  static void TombDone(uv_work_t* req, int status);
  void SpillFileGone(SpillDirState* dir, uint64_t number);
  // Reads dir's DELETED log into *set (and dir's live entries). False, with *error, if the log
  // is there but cannot be read: then dir's deleted objects cannot be told from the others.
  bool LoadTombstones(SpillDirState* dir, std::set<std::pair<uint64_t, uint64_t>>* set,
                      std::string* error);
  // Starts tomb_timer_ for the first directory whose failed tombstones wait for the end of
  // their pause (none: nothing).
  void ArmTombTimer();
  // Compaction: a spill file whose dead records pass --spill-compact of its size is rewritten
  // with its live records only, one file at a time.
  void MaybeCompact(SpillFile* f);
  void StartCompaction(SpillFile* f);
  static void CompactIndexWork(uv_work_t* req);
  static void CompactIndexDone(uv_work_t* req, int status);
  static void CompactCopyWork(uv_work_t* req);
  static void CompactCopyDone(uv_work_t* req, int status);
  void EndCompaction(CompactJob* job);

  // What it is given.
  const ServerOptions& options_;
  spill::Env* env_;
  ObjectTable& table_;
  Host& host_;
  uv_loop_t* loop_ = nullptr;  // set by Open
  Region* region_ = nullptr;   // set by Open
  bool stopping_ = false;      // set by Stop

  std::unique_ptr<spill::SpillDirs> dirs_;
  SpillPolicy policy_;
  // By id, in order: a page of store_list_spill_files starts at the id after the last one.
  std::map<uint64_t, std::unique_ptr<SpillFile>> spill_files_;
  // The files this store's spills wrote, by number (numbers are given in the order the writes
  // start): how a read-ahead finds the file written after one.
  std::unordered_map<uint64_t, SpillFile*> spilled_by_number_;
  // Files with a read_fd, the most recently restored from first.
  std::list<SpillFile*> kept_fds_;
  void KeepReadFd(SpillFile* f, int fd);
  void CloseReadFd(SpillFile* f);
  uint64_t next_spill_file_ = 1;
  int spill_jobs_ = 0;              // spill files being written
  uint64_t spill_in_flight_ = 0;    // memory they will free
  int64_t spill_backoff_until_ = 0;  // after a failed write, monotonic ns
  int last_spill_error_ = 0;
  bool nodisk_logged_ = false;
  std::string last_spill_message_;
  // Spilled objects waiting for memory to restore into, by uid, in arrival order. An entry
  // counts only while restore_queued_ has its uid (true: asked by a prefetch); the others are
  // skipped when they reach the front.
  std::deque<uint64_t> pending_restores_;
  std::unordered_map<uint64_t, bool> restore_queued_;
  // Uids of the restores queued or asked for again since Stall last ran (stall_all_: too many
  // to keep, the whole queue is looked at), and the queue's length after its last pass.
  std::vector<uint64_t> stall_new_;
  bool stall_all_ = false;
  size_t stall_compacted_ = 0;
  void NoteAsked(uint64_t uid);
  void PopFrontRestore();
  int restore_jobs_ = 0;  // started, their completion not run yet
  // The sizes of the files in spill_files_, and their dead bytes (DiskBytes). A file's size is
  // set before it joins the map (AddSpillFile) and its dead bytes only grow, through AddDead.
  uint64_t disk_total_ = 0, dead_total_ = 0;
  void AddSpillFile(std::unique_ptr<SpillFile> f) {
    disk_total_ += f->size;
    dead_total_ += f->dead_bytes;
    const uint64_t id = f->id;
    spill_files_.emplace(id, std::move(f));
  }
  // Unlinks a spill file and fsyncs its directory (on any thread): see RemoveSpillFile.
  void UnlinkDurably(const std::string& path);
  void AddDead(SpillFile* f, uint64_t bytes) {
    f->dead_bytes += bytes;
    dead_total_ += bytes;
  }
  // Read-ahead streams (NoteDemandRestore), least recently used first out.
  static constexpr int kReadaheadStreams = 4;
  static constexpr size_t kReadaheadRecords = 64;  // the most records a stream holds ahead
  struct ReadaheadStream {
    SpillFile* file = nullptr;  // where its last demand get restored from (nullptr: unused)
    uint64_t prev_end = 0;      // just past the record that get restored
    SpillFile* at = nullptr;    // where it reads ahead next (nullptr: not reading ahead)
    uint64_t next = 0;          // the offset in *at it goes on from
    // The records it passed ahead of its reader, in order (restored, being restored, or in
    // memory already), and their objects' bytes in memory.
    struct Ahead {
      uint64_t file_id, offset, bytes;
    };
    std::deque<Ahead> ahead;
    uint64_t ahead_bytes = 0;
    uint64_t used = 0;  // when last used (readahead_clock_)
  } readahead_[kReadaheadStreams];
  uint64_t readahead_clock_ = 0;
  uint64_t readahead_restores_ = 0;  // restores started by read-ahead (debug log)
  // One restore failure, compaction (churn compacts many small files a second) and failed
  // compaction is logged a second at most; the others are counted.
  CountedLog restore_log_, compact_log_, compact_fail_log_;
  // The directories of spill files, by path (owned ones and adopted ones).
  std::unordered_map<std::string, std::unique_ptr<SpillDirState>> dir_states_;
  // Where the objects being spilled will be, by uid: a delete then writes their tombstone.
  struct SpillingAt {
    SpillDirState* dir;
    uint64_t number;
    uint64_t offset;
  };
  std::unordered_map<uint64_t, SpillingAt> spilling_at_;
  // Where the objects a compaction copies will be in its new file, by uid: a delete then writes
  // a tombstone for that record too.
  std::unordered_map<uint64_t, SpillingAt> compacting_at_;
  // The records a compaction copied out of a file that is not gone yet (a restore still reads
  // it, or its unlink has not finished), by uid: a delete tombstones them too, or after a crash
  // before the unlink a --recover would find the old copy untombstoned and serve the deleted
  // object again. Dropped when the file is gone (SpillFileGone), by file (moved_by_file_).
  std::unordered_map<uint64_t, std::vector<SpillingAt>> moved_from_;
  std::map<std::pair<const SpillDirState*, uint64_t>, std::vector<uint64_t>> moved_by_file_;
  CompactJob* compact_job_ = nullptr;   // the one in flight
  std::set<uint64_t> compact_wanted_;  // ids of files to look at once it is done
  CompactTotals compact_totals_;
  TombJob* tomb_job_ = nullptr;                    // the one in flight
  uv_timer_t tomb_timer_{};  // tries again the tombstones a failed write left (unwritten)
  bool tomb_timer_open_ = false;
  std::vector<DeferredDelete*> deletes_waiting_;   // for the next tomb job
  Totals spill_totals_;
};

}  // namespace store
