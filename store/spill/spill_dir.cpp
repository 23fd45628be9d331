#include "spill/spill_dir.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "spill/spill_file.h"

namespace store::spill {

namespace {

constexpr const char* kLockName = "LOCK";
constexpr const char* kInstancePrefix = "store-";
// An instance directory is created under this prefix and renamed to "store-..." only once its
// LOCK is held, so a starting store never sees another's directory without a held LOCK.
constexpr const char* kCreatingPrefix = "tmp-store-";

bool StartsWith(const std::string& s, const char* p) { return s.rfind(p, 0) == 0; }
bool EndsWith(const std::string& s, const char* suffix) {
  size_t n = std::strlen(suffix);
  return s.size() >= n && s.compare(s.size() - n, n, suffix) == 0;
}
bool IsSpillFileName(const std::string& name) {
  return StartsWith(name, "spill-") && EndsWith(name, ".bin");
}
// A spill file of objects created leased (IsLeasedSpillFile in spill_dir.h).
constexpr const char* kLeasedSuffix = ".leased.bin";

std::string Join(const std::string& dir, const std::string& name) {
  return dir == "/" ? "/" + name : dir + "/" + name;
}

std::string Parent(const std::string& path) {
  size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

// An absolute, lexically normal path without a trailing slash; "" if the cwd is unknown.
std::string Absolute(const std::string& dir) {
  std::filesystem::path p(dir);
  if (!p.is_absolute()) {
    std::error_code ec;
    std::filesystem::path cwd = std::filesystem::current_path(ec);
    if (ec) return "";
    p = cwd / p;
  }
  std::string s = p.lexically_normal().string();
  while (s.size() > 1 && s.back() == '/') s.pop_back();
  return s;
}

std::string ErrnoText(int neg) { return std::strerror(-neg); }

}  // namespace

SpillDirs::~SpillDirs() {
  // Unlink each LOCK while still holding it, then drop the lock. Non-empty directories stay:
  // they hold spilled data (a later start with recover adopts them).
  for (size_t i = 0; i < owned_.size(); i++) {
    env_->Unlink(Join(owned_[i], kLockName));
    env_->Rmdir(owned_[i]);
    env_->Close(lock_fds_[i]);
  }
  for (const Adopted& a : adopted_) {
    env_->Unlink(Join(a.dir, kLockName));
    env_->Rmdir(a.dir);
    env_->Close(a.lock_fd);
  }
}

namespace {

constexpr const char* kQuarantine = "quarantine";

// A free name for `name` in dir: name, else name.1, name.2, ...
std::string FreeName(Env* env, const std::string& dir, const std::string& name) {
  std::string candidate = Join(dir, name);
  uint64_t size = 0;
  for (int i = 1; env->FileSize(candidate, &size) == 0 && i < 1000; i++) {
    candidate = Join(dir, name + "." + std::to_string(i));
  }
  return candidate;
}

std::string Plural(uint64_t n, const char* one, const char* many) {
  return std::to_string(n) + " " + (n == 1 ? one : many);
}

// What recover does with one spill file of a stale directory `sub` under `parent`.
void RecoverOne(Env* env, const std::string& parent, const std::string& sub,
                const std::string& name, std::vector<RecoveredFile>* recovered,
                std::vector<RecoveryNote>* notes, bool* kept) {
  const std::string path = Join(sub, name);
  auto note = [&](bool error, const std::string& text) {
    if (notes) notes->push_back({error, text});
  };
  RecoveredFile rf;
  rf.path = path;
  std::string why;
  int irc = ReadIndex(env, path, &rf.records, &why, &rf.version);
  if (irc == 0 && env->FileSize(path, &rf.size) == 0) {
    if (recovered) recovered->push_back(std::move(rf));
    *kept = true;
    return;
  }
  Salvage sv;
  std::string sv_error;
  int src = irc == kCorrupt ? SalvageFile(env, path, &sv, &sv_error) : irc;
  if (src < 0) {
    // Unreadable now (EIO, EACCES...): not served, but not deleted either.
    note(true, "cannot read spill file " + path + " (" + (irc == kCorrupt ? sv_error : why) +
                   "): its objects are not served; it is left in place");
    rf.records.clear();
    rf.unreadable = true;
    if (recovered) recovered->push_back(std::move(rf));
    *kept = true;
    return;
  }
  // Damaged: keep its bytes in quarantine, serve what can still be read.
  const std::string prefix = "spill file " + path + ": ";
  if (why.rfind(prefix, 0) == 0) why = why.substr(prefix.size());
  const std::string qdir = Join(parent, kQuarantine);
  int mrc = env->Mkdir(qdir, 0700);
  std::string qpath = FreeName(env, qdir, sub.substr(sub.find_last_of('/') + 1) + "-" + name);
  const bool serve = !sv.records.empty();
  int qrc = mrc < 0 && mrc != -EEXIST ? mrc : serve ? env->Link(path, qpath)
                                                    : env->Rename(path, qpath);
  std::string text = "spill file " + path + " is damaged (" + why + "): recovered " +
                     std::to_string(sv.records.size()) + " of its " +
                     Plural(sv.records_known, "record", "records") + ", lost " +
                     std::to_string(sv.lost_records) + " (" +
                     Plural(sv.lost_bytes, "byte", "bytes") + " unread)";
  if (qrc == 0) {
    env->SyncDir(qdir);
    text += serve ? "; a copy of the file is kept as " + qpath
                  : "; the file is moved to " + qpath;
  } else if (serve) {
    text += "; no copy could be kept in " + qdir + " (" + ErrnoText(qrc) +
            "): the damaged bytes stay in the file until its last object is deleted";
  } else {
    text += "; it could not be moved to " + qdir + " (" + ErrnoText(qrc) + "): left in place";
  }
  note(true, text);
  if (serve || qrc != 0) {
    rf.records = std::move(sv.records);
    rf.version = sv.version;
    env->FileSize(path, &rf.size);
    rf.unreadable = !serve;
    if (recovered) recovered->push_back(std::move(rf));
    *kept = true;
  }
}

// Why the spill directory dir cannot be trusted, or "": it must be a directory of this user
// (or root) that no other user may write to. Another user who could write there could plant
// what the store then trusts: a link named as a dead store's directory, whose target's files the
// store would remove, or spill files that --recover would serve as objects.
std::string Untrusted(Env* env, const std::string& dir) {
  struct stat st;
  const uid_t me = geteuid();
  // A link is followed only if this user or root made it.
  if (int rc = env->Stat(dir, false, &st); rc < 0) return "spill dir " + dir + ": " + ErrnoText(rc);
  if (S_ISLNK(st.st_mode) && st.st_uid != me && st.st_uid != 0) {
    return "spill dir " + dir + " is a link made by uid " + std::to_string(st.st_uid) +
           ", not by this user (uid " + std::to_string(me) + ") or root; use the directory itself";
  }
  if (int rc = env->Stat(dir, true, &st); rc < 0) return "spill dir " + dir + ": " + ErrnoText(rc);
  if (!S_ISDIR(st.st_mode)) return "spill dir " + dir + " is not a directory";
  if (st.st_uid != me && st.st_uid != 0) {
    return "spill dir " + dir + " is owned by uid " + std::to_string(st.st_uid) +
           ", not by this user (uid " + std::to_string(me) +
           "): its owner could plant files the store would serve, or links it would follow; "
           "use a directory of this user's";
  }
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
    return "spill dir " + dir + " (mode " + mode +
           ") may be written by other users: they could plant files the store would serve, "
           "or links it would follow; use a directory only its owner may write to (chmod "
           "go-w), such as a new one under it";
  }
  return "";
}

// Whether path is a directory (not a link to one) of this user.
bool OwnDirectory(Env* env, const std::string& path) {
  struct stat st;
  return env->Stat(path, false, &st) == 0 && S_ISDIR(st.st_mode) && st.st_uid == geteuid();
}

}  // namespace

bool SpillDirs::Open(const std::vector<std::string>& dirs, double disk_threshold, bool recover,
                     std::vector<RecoveredFile>* recovered, std::vector<RecoveryNote>* notes,
                     std::string* error) {
  threshold_ = disk_threshold;
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  const uint64_t start_ns =
      static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
  const std::string name =
      kInstancePrefix + std::to_string(getpid()) + "-" + std::to_string(start_ns);
  auto fail = [&](const std::string& msg) {
    if (error) *error = msg;
    return false;
  };

  std::vector<std::string> parents;
  for (const std::string& given : dirs) {
    const std::string dir = Absolute(given);
    if (given.empty() || dir.empty()) return fail("spill dir '" + given + "': bad path");
    bool dup = false;
    for (const std::string& p : parents) dup = dup || p == dir;
    if (dup) continue;
    parents.push_back(dir);

    int rc = env_->Mkdir(dir, 0700);
    if (rc < 0 && rc != -EEXIST) return fail("spill dir " + dir + ": mkdir: " + ErrnoText(rc));
    if (std::string why = Untrusted(env_, dir); !why.empty()) return fail(why);
    std::vector<std::string> names;
    rc = env_->ListDir(dir, &names);
    if (rc < 0) return fail("spill dir " + dir + ": " + ErrnoText(rc));

    // Subdirectories a store was making when it died (between their mkdir and their rename to
    // the final name; they hold no spill file): removed once the process named in them is gone.
    for (const std::string& n : names) {
      if (!StartsWith(n, kCreatingPrefix)) continue;
      const char* digits = n.c_str() + std::strlen(kCreatingPrefix);
      char* end = nullptr;
      const long pid = std::strtol(digits, &end, 10);
      if (end == digits || *end != '-' || pid <= 0 || pid == getpid()) continue;
      if (kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH) continue;  // alive
      const std::string sub = Join(dir, n);
      if (!OwnDirectory(env_, sub)) continue;
      env_->Unlink(Join(sub, kLockName));
      env_->Rmdir(sub);
    }

    // Subdirectories of other instances: live ones hold their LOCK; the rest are stale.
    for (const std::string& n : names) {
      if (!StartsWith(n, kInstancePrefix) || n == name) continue;
      const std::string sub = Join(dir, n);
      if (!OwnDirectory(env_, sub)) {
        if (notes) {
          notes->push_back({false, "left alone " + sub + ": not a directory of this user (a "
                                   "link, or another user's), so not a store's"});
        }
        continue;
      }
      int fd = env_->Open(Join(sub, kLockName), O_RDWR | O_CREAT, 0600);
      if (fd < 0) continue;          // not a directory, or not ours to touch
      if (env_->TryLock(fd) != 0) {  // a live store
        env_->Close(fd);
        continue;
      }
      std::vector<std::string> files;
      if (env_->ListDir(sub, &files) < 0) {
        env_->Close(fd);
        continue;
      }
      bool kept = false;
      for (const std::string& f : files) {
        if (f == kLockName) continue;
        const std::string path = Join(sub, f);
        if (!recover) {
          env_->Unlink(path);
        } else if (IsSpillFileName(f) && EndsWith(f, kLeasedSuffix)) {
          // Objects that lived by their leases: every holder went with that store.
          env_->Unlink(path);
          if (notes) {
            notes->push_back({false, "removed " + path +
                                         ", a spill file of objects created leased (their "
                                         "lease holders went with the store that wrote it)"});
          }
        } else if (IsSpillFileName(f)) {
          RecoverOne(env_, dir, sub, f, recovered, notes, &kept);
        } else if (EndsWith(f, ".tmp")) {
          env_->Unlink(path);
          if (notes) {
            notes->push_back({false, "removed " + path +
                                         ", a spill file a crash left half-written (its "
                                         "objects were still in memory then)"});
          }
        }
      }
      if (!kept) {
        // No spill file is left for a DELETED log to filter.
        env_->Unlink(Join(sub, "DELETED"));
      }
      if (kept) {
        adopted_.push_back({sub, fd});
      } else {
        env_->Unlink(Join(sub, kLockName));
        env_->Rmdir(sub);
        env_->Close(fd);
      }
    }

    // This instance's subdirectory, visible under its final name only with the LOCK held.
    const std::string creating =
        Join(dir, kCreatingPrefix + name.substr(std::strlen(kInstancePrefix)));
    const std::string mine = Join(dir, name);
    rc = env_->Mkdir(creating, 0700);
    if (rc < 0) return fail("spill dir " + creating + ": mkdir: " + ErrnoText(rc));
    const std::string lock_path = Join(creating, kLockName);
    int fd = env_->Open(lock_path, O_RDWR | O_CREAT | O_EXCL, 0600);
    if (fd < 0) {
      env_->Rmdir(creating);
      return fail("spill dir " + lock_path + ": open: " + ErrnoText(fd));
    }
    const char* step = "flock";
    rc = env_->TryLock(fd);
    if (rc == 0) {
      step = "rename";
      rc = env_->Rename(creating, mine);
    }
    if (rc == 0) {
      // Its name made durable before any file in it is relied on: after a power cut the spill
      // directory could otherwise name only the files of older stores, and records a compaction
      // moved in here from one of them would be lost once the old file's removal was durable.
      step = "fsync";
      rc = env_->SyncDir(dir);
      if (rc < 0) env_->Rename(mine, creating);
    }
    if (rc < 0) {
      env_->Unlink(lock_path);
      env_->Rmdir(creating);
      env_->Close(fd);
      return fail("spill dir " + mine + ": " + step + ": " + ErrnoText(rc));
    }
    owned_.push_back(mine);
    lock_fds_.push_back(fd);
  }
  if (owned_.empty()) return fail("no spill directory given");
  return true;
}

bool IsLeasedSpillFile(const std::string& path) { return EndsWith(path, kLeasedSuffix); }

std::string SpillDirs::NextFile(uint64_t bytes, bool leased) {
  const size_t n = owned_.size();
  for (size_t k = 0; k < n; k++) {
    const size_t i = (next_dir_ + k) % n;
    uint64_t total = 0, avail = 0;
    if (env_->DiskSpace(owned_[i], &total, &avail) != 0 || total == 0) continue;
    const double used = 1.0 - static_cast<double>(avail) / static_cast<double>(total);
    if (used > threshold_ || avail < bytes) continue;
    next_dir_ = (i + 1) % n;
    return Join(owned_[i], "spill-" + std::to_string(next_file_++) +
                               (leased ? kLeasedSuffix : ".bin"));
  }
  return "";
}

void SpillDirs::Remove(const std::string& path) {
  env_->Unlink(path);
  RemoveIfEmpty(Parent(path));
}

void SpillDirs::RemoveIfEmpty(const std::string& dir) {
  for (size_t i = 0; i < adopted_.size(); i++) {
    if (adopted_[i].dir != dir) continue;
    std::vector<std::string> names;
    if (env_->ListDir(dir, &names) < 0) return;
    for (const std::string& n : names) {
      // Still holds recovered data, or the log that keeps deleted records from coming back.
      if (IsSpillFileName(n) || n == "DELETED") return;
    }
    env_->Unlink(Join(dir, kLockName));
    env_->Rmdir(dir);
    env_->Close(adopted_[i].lock_fd);
    adopted_.erase(adopted_.begin() + static_cast<std::ptrdiff_t>(i));
    return;
  }
}

}  // namespace store::spill
