// spill_dir.h - the directories a store spills into, and the part of each it owns.
//
// Each --spill-dir gets a subdirectory owned by this store instance, "store-<pid>-<start ns>",
// holding a LOCK file (flock'ed while the store runs) and the spill files "spill-<n>.bin".
// Objects created leased (STORE_CREATE_LEASED: deleted when their last lease goes) are spilled
// into files of their own, "spill-<n>.leased.bin", so that the name, made durable by the
// file's rename, says what a crash does to them: their lease holders were clients of the store
// that wrote the file, so they are gone with it, and recovery removes such files unread.
// At start, subdirectories of dead stores (their LOCK is free) are either removed or, with
// --recover, adopted: their spill files are listed for the caller to register, with the
// records each still holds. A damaged file is never deleted: what can still be read of it is
// served, and its bytes are kept in "<dir>/quarantine" (moved there when nothing of it can be
// read, else linked there); a file a crash left half-written (".tmp") is removed.
// Directories are chosen round-robin; one whose filesystem is fuller than the threshold is
// skipped.
// Called by: the server loop thread only.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "spill/env.h"
#include "spill/spill_file.h"

namespace store::spill {

// Whether path names a spill file of objects created leased.
bool IsLeasedSpillFile(const std::string& path);

struct RecoveredFile {
  std::string path;  // absolute
  uint64_t size = 0;
  uint32_t version = 0;
  std::vector<IndexedRecord> records;  // what can be served from it
  bool unreadable = false;  // it could not be read now (an I/O error): left in place, not served
};

// Something recovery did that the operator must hear of: an error (data lost or not served)
// or an information.
struct RecoveryNote {
  bool error = false;
  std::string text;
};

class SpillDirs {
 public:
  explicit SpillDirs(Env* env) : env_(env) {}
  ~SpillDirs();  // releases the locks; removes this instance's (then empty) directories

  // Sets up one owned subdirectory per dir (absolute paths are kept). With recover, stale
  // subdirectories' spill files are returned in *recovered (see the top of this file) and what
  // was found damaged, quarantined or removed in *notes; without, stale subdirectories are
  // removed. Returns false with *error on failure.
  bool Open(const std::vector<std::string>& dirs, double disk_threshold, bool recover,
            std::vector<RecoveredFile>* recovered, std::vector<RecoveryNote>* notes,
            std::string* error);

  // A new file path in the next directory (round-robin) whose filesystem is at most
  // disk_threshold full and has room for `bytes`; "" when none can take it. leased: a file
  // for objects created leased ("spill-<n>.leased.bin").
  std::string NextFile(uint64_t bytes, bool leased = false);

  // Removes a spill file (and, for an adopted stale directory, the directory once empty).
  void Remove(const std::string& path);
  // Removes an adopted stale directory once it holds no spill file and no DELETED log.
  void RemoveIfEmpty(const std::string& dir);

  bool empty() const { return owned_.empty(); }
  const std::vector<std::string>& owned() const { return owned_; }

 private:
  Env* env_;
  double threshold_ = 0.95;
  std::vector<std::string> owned_;  // this instance's subdirectories
  std::vector<int> lock_fds_;
  struct Adopted {
    std::string dir;  // a stale subdirectory taken over by Open(recover = true)
    int lock_fd = -1;  // its LOCK, held so that no other store removes or adopts it too
  };
  std::vector<Adopted> adopted_;
  size_t next_dir_ = 0;
  uint64_t next_file_ = 1;
};

}  // namespace store::spill
