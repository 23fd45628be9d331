#include "spill/env.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <condition_variable>
#include <map>
#include <mutex>
#include <unordered_map>

namespace store::spill {

namespace {


inline int Err() { return errno != 0 ? -errno : -EIO; }

// Advances a private copy of an iovec array past `n` transferred bytes.
void Advance(std::vector<iovec>& v, size_t& first, size_t n) {
  while (n > 0 && first < v.size()) {
    if (n >= v[first].iov_len) {
      n -= v[first].iov_len;
      v[first].iov_len = 0;
      first++;
    } else {
      v[first].iov_base = static_cast<uint8_t*>(v[first].iov_base) + n;
      v[first].iov_len -= n;
      n = 0;
    }
  }
  while (first < v.size() && v[first].iov_len == 0) first++;
}

size_t TotalLen(const iovec* iov, int iovcnt) {
  size_t total = 0;
  for (int i = 0; i < iovcnt; i++) total += iov[i].iov_len;
  return total;
}

// pwritev/preadv over the whole array: retries EINTR, continues after short transfers and
// passes at most IOV_MAX entries per call. A read stops at end of file.
template <typename Fn>
ssize_t TransferAll(Fn fn, const iovec* iov, int iovcnt, off_t off, bool is_write) {
  if (iovcnt < 0) return -EINVAL;
  std::vector<iovec> v(iov, iov + iovcnt);
  size_t first = 0;
  Advance(v, first, 0);
  size_t done = 0;
  while (first < v.size()) {
    int cnt = static_cast<int>(std::min<size_t>(v.size() - first, kIovMax));
    ssize_t n = fn(v.data() + first, cnt, off + static_cast<off_t>(done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Err();
    }
    if (n == 0) {
      if (is_write) return -EIO;  // no progress on a regular file: give up rather than spin
      break;                      // end of file
    }
    done += static_cast<size_t>(n);
    Advance(v, first, static_cast<size_t>(n));
  }
  return static_cast<ssize_t>(done);
}

// Copies [done, len) of a range through a buffer, with env's reads and writes.
ssize_t CopyByReading(Env* env, int in, off_t in_off, int out, off_t out_off, size_t len,
                      size_t done) {
  std::vector<uint8_t> buf(std::min<size_t>(len - done, 1u << 20));
  while (done < len) {
    size_t n = std::min(buf.size(), len - done);
    iovec v{buf.data(), n};
    ssize_t r = env->PReadv(in, &v, 1, in_off + static_cast<off_t>(done));
    if (r < 0) return r;
    if (r == 0) break;
    v.iov_len = static_cast<size_t>(r);
    ssize_t w = env->PWritev(out, &v, 1, out_off + static_cast<off_t>(done));
    if (w < 0) return w;
    if (w != r) return -EIO;
    done += static_cast<size_t>(r);
  }
  return static_cast<ssize_t>(done);
}

class PosixEnv final : public Env {
 public:
  int Open(const std::string& path, int flags, int mode) override {
    for (;;) {
      int fd = ::open(path.c_str(), flags | O_CLOEXEC, mode);
      if (fd >= 0) return fd;
      if (errno != EINTR) return Err();
    }
  }

  int Close(int fd) override {
    // Not retried on EINTR: on Linux the descriptor is released either way.
    if (::close(fd) != 0 && errno != EINTR) return Err();
    return 0;
  }

  ssize_t PWritev(int fd, const iovec* iov, int iovcnt, off_t off) override {
    return TransferAll([fd](const iovec* v, int c, off_t o) { return ::pwritev(fd, v, c, o); }, iov,
                       iovcnt, off, true);
  }

  ssize_t PReadv(int fd, const iovec* iov, int iovcnt, off_t off) override {
    return TransferAll([fd](const iovec* v, int c, off_t o) { return ::preadv(fd, v, c, o); }, iov,
                       iovcnt, off, false);
  }

  int Fdatasync(int fd) override {
    for (;;) {
      if (::fdatasync(fd) == 0) return 0;
      if (errno != EINTR) return Err();
    }
  }

  ssize_t CopyRange(int in, off_t in_off, int out, off_t out_off, size_t len) override {
    size_t done = 0;
    while (done < len) {
      loff_t a = in_off + static_cast<off_t>(done), b = out_off + static_cast<off_t>(done);
      ssize_t n = ::copy_file_range(in, &a, out, &b, len - done, 0);
      if (n > 0) {
        done += static_cast<size_t>(n);
        continue;
      }
      if (n == 0) return static_cast<ssize_t>(done);  // end of the input
      if (errno == EINTR) continue;
      if (errno != EXDEV && errno != ENOSYS && errno != EINVAL && errno != EOPNOTSUPP) {
        return Err();
      }
      return CopyByReading(this, in, in_off, out, out_off, len, done);
    }
    return static_cast<ssize_t>(done);
  }

  int Unlink(const std::string& path) override { return ::unlink(path.c_str()) == 0 ? 0 : Err(); }

  int Rename(const std::string& from, const std::string& to) override {
    return ::rename(from.c_str(), to.c_str()) == 0 ? 0 : Err();
  }

  int RenameNoReplace(const std::string& from, const std::string& to) override {
    if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_NOREPLACE) == 0) {
      return 0;
    }
    if (errno != EINVAL && errno != ENOSYS) return Err();
    // A filesystem without RENAME_NOREPLACE: a link fails if `to` exists, like the rename.
    if (::link(from.c_str(), to.c_str()) != 0) return Err();
    ::unlink(from.c_str());
    return 0;
  }

  int Link(const std::string& from, const std::string& to) override {
    return ::link(from.c_str(), to.c_str()) == 0 ? 0 : Err();
  }

  int SyncDir(const std::string& dir) override {
    int fd = Open(dir, O_RDONLY | O_DIRECTORY, 0);
    if (fd < 0) return fd;
    int rc = 0;
    for (;;) {
      if (::fsync(fd) == 0) break;
      if (errno != EINTR) {
        rc = Err();
        break;
      }
    }
    ::close(fd);
    return rc;
  }

  int Mkdir(const std::string& path, int mode) override {
    return ::mkdir(path.c_str(), static_cast<mode_t>(mode)) == 0 ? 0 : Err();
  }

  int Rmdir(const std::string& path) override { return ::rmdir(path.c_str()) == 0 ? 0 : Err(); }

  int ListDir(const std::string& dir, std::vector<std::string>* names) override {
    names->clear();
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr) return Err();
    int rc = 0;
    for (;;) {
      errno = 0;
      dirent* e = ::readdir(d);
      if (e == nullptr) {
        if (errno != 0) rc = Err();
        break;
      }
      if (std::strcmp(e->d_name, ".") == 0 || std::strcmp(e->d_name, "..") == 0) continue;
      names->emplace_back(e->d_name);
    }
    ::closedir(d);
    return rc;
  }

  int FileSize(const std::string& path, uint64_t* size) override {
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) return Err();
    *size = static_cast<uint64_t>(st.st_size);
    return 0;
  }

  int Stat(const std::string& path, bool follow, struct stat* st) override {
    return (follow ? ::stat(path.c_str(), st) : ::lstat(path.c_str(), st)) == 0 ? 0 : Err();
  }

  int DiskSpace(const std::string& path, uint64_t* total, uint64_t* avail) override {
    struct statvfs sv;
    if (::statvfs(path.c_str(), &sv) != 0) return Err();
    *total = static_cast<uint64_t>(sv.f_blocks) * sv.f_frsize;
    *avail = static_cast<uint64_t>(sv.f_bavail) * sv.f_frsize;
    return 0;
  }

  int TryLock(int fd) override {
    for (;;) {
      if (::flock(fd, LOCK_EX | LOCK_NB) == 0) return 0;
      if (errno != EINTR) return Err();
    }
  }
};

}  // namespace

Env* Env::Default() {
  static Env* env = new PosixEnv();
  return env;
}

// ---- FaultInjectionEnv: a test double ----

struct FaultInjectionEnv::State {
  mutable std::mutex mu;
  uint64_t written = 0;
  bool write_limit_set = false;
  uint64_t write_limit = 0;  // fail once `written` reaches this
  int write_err = 28;
  int read_err = 0;
  int64_t corrupt_at = -1;
  double used_fraction = -1.0;
  std::string fail_part;  // FailWritesTo
  int fail_part_err = 0;
  uint64_t refused_bytes = 0;   // by FailWritesTo
  std::string fail_open_part;  // FailOpens
  int fail_open_err = 0;
  std::unordered_map<int, std::string> paths;  // open fds -> their paths (for FailWritesTo)
  uint64_t hold_at_least = 0;  // HoldNextReadOf: 0 = none armed
  bool holding = false, released = false;
  std::condition_variable held_cv;
  std::function<void()> before_change;  // BeforeEachChange
  std::mutex change_mu;                 // held across the hook and the change it precedes
  // ModelPowerCuts, guarded by change_mu. A file's bytes as of its last sync, shared by the
  // durable names of it; an inode number maps to the file that has it now (a removed file's
  // number may be reused).
  struct Inode {
    std::string data;
  };
  struct Entry {
    bool dir = false;
    std::shared_ptr<Inode> inode;  // files only
  };
  std::string model_root;  // empty: no model
  std::unordered_map<ino_t, std::shared_ptr<Inode>> inodes;
  std::map<std::string, std::map<std::string, Entry>> names;  // directory -> its durable names

  std::shared_ptr<Inode>& InodeOf(ino_t ino) {
    auto& p = inodes[ino];
    if (!p) p = std::make_shared<Inode>();
    return p;
  }
  // The file's bytes now become its durable bytes.
  void SyncData(int fd) {
    struct stat st;
    if (fstat(fd, &st) != 0) return;
    // fd may be open for writing only.
    int rfd = open(("/proc/self/fd/" + std::to_string(fd)).c_str(), O_RDONLY | O_CLOEXEC);
    if (rfd < 0) return;
    std::string data(static_cast<size_t>(st.st_size), '\0');
    size_t done = 0;
    while (done < data.size()) {
      ssize_t n = pread(rfd, data.data() + done, data.size() - done, static_cast<off_t>(done));
      if (n <= 0) break;
      done += static_cast<size_t>(n);
    }
    close(rfd);
    data.resize(done);
    InodeOf(st.st_ino)->data = std::move(data);
  }
  // The directory's names now become its durable names.
  void SyncNames(const std::string& dir) {
    std::map<std::string, Entry> now;
    if (DIR* d = opendir(dir.c_str())) {
      while (dirent* e = readdir(d)) {
        std::string name = e->d_name;
        if (name == "." || name == "..") continue;
        struct stat st;
        if (lstat((dir + "/" + name).c_str(), &st) != 0) continue;
        Entry entry;
        entry.dir = S_ISDIR(st.st_mode);
        if (!entry.dir) entry.inode = InodeOf(st.st_ino);
        now[name] = entry;
      }
      closedir(d);
    }
    names[dir] = std::move(now);
  }
  // Everything under dir is durable as it is.
  void TakeAsDurable(const std::string& dir) {
    SyncNames(dir);
    for (const auto& [name, e] : names[dir]) {
      const std::string path = dir + "/" + name;
      if (e.dir) {
        TakeAsDurable(path);
      } else if (int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC); fd >= 0) {
        SyncData(fd);
        close(fd);
      }
    }
  }
  // Before path's name goes (unlinked, or replaced by a rename): if it is the file's last name,
  // its inode number is free for a new file once it goes.
  void NameGoing(const std::string& path) {
    struct stat st;
    if (lstat(path.c_str(), &st) == 0 && !S_ISDIR(st.st_mode) && st.st_nlink <= 1) {
      inodes.erase(st.st_ino);
    }
  }
  int WriteImage(const std::string& dir, const std::string& dest) const {
    if (mkdir(dest.c_str(), 0700) != 0) return Err();
    auto it = names.find(dir);
    if (it == names.end()) return 0;
    for (const auto& [name, e] : it->second) {
      const std::string from = dir + "/" + name, to = dest + "/" + name;
      if (e.dir) {
        if (int rc = WriteImage(from, to); rc < 0) return rc;
        continue;
      }
      int fd = open(to.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
      if (fd < 0) return Err();
      const std::string& data = e.inode->data;
      size_t done = 0;
      while (done < data.size()) {
        ssize_t n = write(fd, data.data() + done, data.size() - done);
        if (n <= 0) {
          close(fd);
          return Err();
        }
        done += static_cast<size_t>(n);
      }
      close(fd);
    }
    return 0;
  }
};

template <typename Op>
auto FaultInjectionEnv::Change(Op op) -> decltype(op()) {
  std::function<void()> hook;
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    hook = state_->before_change;
  }
  if (!hook) return op();
  std::lock_guard<std::mutex> lock(state_->change_mu);
  hook();
  return op();
}

void FaultInjectionEnv::BeforeEachChange(std::function<void()> hook) {
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->before_change = std::move(hook);
}

void FaultInjectionEnv::ModelPowerCuts(const std::string& root) {
  std::lock_guard<std::mutex> lock(state_->change_mu);
  state_->model_root = root;
  state_->inodes.clear();
  state_->names.clear();
  state_->TakeAsDurable(root);
}

int FaultInjectionEnv::WritePowerCutImage(const std::string& dest) {
  // Called from the hook, with change_mu held.
  if (state_->model_root.empty()) return -EINVAL;
  return state_->WriteImage(state_->model_root, dest);
}

std::shared_ptr<FaultInjectionEnv::State> FaultInjectionEnv::MakeState() {
  return std::make_shared<State>();
}

void FaultInjectionEnv::FailWritesAfter(int64_t bytes, int err) {
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->write_limit_set = bytes >= 0;
  state_->write_limit = bytes >= 0 ? state_->written + static_cast<uint64_t>(bytes) : 0;
  state_->write_err = err;
}

void FaultInjectionEnv::HoldNextReadOf(uint64_t bytes) {
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->hold_at_least = bytes;
  state_->holding = false;
  state_->released = false;
}

bool FaultInjectionEnv::read_held() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->holding;
}

void FaultInjectionEnv::ReleaseHeldRead() {
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->released = true;
  state_->held_cv.notify_all();
}

void FaultInjectionEnv::FailReads(int err) {
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->read_err = err;
}

void FaultInjectionEnv::CorruptReadsAt(int64_t offset) {
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->corrupt_at = offset;
}

void FaultInjectionEnv::SetDiskUsedFraction(double f) {
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->used_fraction = f;
}

void FaultInjectionEnv::FailWritesTo(const std::string& part, int err) {
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->fail_part = part;
  state_->fail_part_err = err;
}

uint64_t FaultInjectionEnv::bytes_written() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->written;
}

uint64_t FaultInjectionEnv::refused_write_bytes() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->refused_bytes;
}

void FaultInjectionEnv::FailOpens(const std::string& part, int err) {
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->fail_open_part = part;
  state_->fail_open_err = err;
}

int FaultInjectionEnv::Open(const std::string& path, int flags, int mode) {
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    if (state_->fail_open_err != 0 && path.find(state_->fail_open_part) != std::string::npos) {
      return -state_->fail_open_err;
    }
  }
  int fd = (flags & (O_CREAT | O_TRUNC)) != 0
               ? Change([&] { return base_->Open(path, flags, mode); })
               : base_->Open(path, flags, mode);
  if (fd >= 0) {
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->paths[fd] = path;
  }
  return fd;
}

int FaultInjectionEnv::Close(int fd) {
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->paths.erase(fd);
  }
  return base_->Close(fd);
}

ssize_t FaultInjectionEnv::PWritev(int fd, const iovec* iov, int iovcnt, off_t off) {
  return Change([&] { return WriteWithFaults(fd, iov, iovcnt, off); });
}

ssize_t FaultInjectionEnv::WriteWithFaults(int fd, const iovec* iov, int iovcnt, off_t off) {
  // The lock is held across the write so that concurrent writers see one exact byte limit.
  std::lock_guard<std::mutex> lock(state_->mu);
  State& s = *state_;
  if (s.fail_part_err != 0) {
    auto it = s.paths.find(fd);
    const std::string& p = it == s.paths.end() ? std::string() : it->second;
    const std::string& x = s.fail_part;
    if (p.find(x) != std::string::npos) {
      s.refused_bytes += TotalLen(iov, iovcnt);
      return -s.fail_part_err;
    }
  }
  size_t total = TotalLen(iov, iovcnt);
  if (!s.write_limit_set || s.written + total <= s.write_limit) {
    ssize_t n = base_->PWritev(fd, iov, iovcnt, off);
    if (n > 0) s.written += static_cast<uint64_t>(n);
    return n;
  }
  // The "disk" fills up inside this request: write what still fits, then fail.
  uint64_t room = s.write_limit > s.written ? s.write_limit - s.written : 0;
  std::vector<iovec> part;
  for (int i = 0; i < iovcnt && room > 0; i++) {
    size_t len = static_cast<size_t>(std::min<uint64_t>(iov[i].iov_len, room));
    part.push_back({iov[i].iov_base, len});
    room -= len;
  }
  if (!part.empty()) {
    ssize_t n = base_->PWritev(fd, part.data(), static_cast<int>(part.size()), off);
    if (n < 0) return n;
    s.written += static_cast<uint64_t>(n);
  }
  return -s.write_err;
}

ssize_t FaultInjectionEnv::PReadv(int fd, const iovec* iov, int iovcnt, off_t off) {
  int read_err;
  int64_t corrupt_at;
  {
    std::unique_lock<std::mutex> lock(state_->mu);
    read_err = state_->read_err;
    corrupt_at = state_->corrupt_at;
    uint64_t want = 0;
    for (int i = 0; i < iovcnt; i++) want += iov[i].iov_len;
    if (state_->hold_at_least > 0 && want >= state_->hold_at_least) {
      state_->hold_at_least = 0;
      state_->holding = true;
      state_->held_cv.wait(lock, [&] { return state_->released; });
      state_->holding = false;
    }
  }
  if (read_err != 0) return -read_err;
  ssize_t n = base_->PReadv(fd, iov, iovcnt, off);
  if (n > 0 && corrupt_at >= 0 && corrupt_at >= off && corrupt_at < off + n) {
    uint64_t pos = static_cast<uint64_t>(corrupt_at - off);
    for (int i = 0; i < iovcnt; i++) {
      if (pos < iov[i].iov_len) {
        static_cast<uint8_t*>(iov[i].iov_base)[pos] ^= 1;
        break;
      }
      pos -= iov[i].iov_len;
    }
  }
  return n;
}

int FaultInjectionEnv::Fdatasync(int fd) {
  return Change([&] {
    int rc = base_->Fdatasync(fd);
    if (rc == 0 && !state_->model_root.empty()) state_->SyncData(fd);
    return rc;
  });
}
ssize_t FaultInjectionEnv::CopyRange(int in, off_t in_off, int out, off_t out_off, size_t len) {
  return CopyByReading(this, in, in_off, out, out_off, len, 0);
}
int FaultInjectionEnv::Unlink(const std::string& path) {
  return Change([&] {
    if (!state_->model_root.empty()) state_->NameGoing(path);
    return base_->Unlink(path);
  });
}
int FaultInjectionEnv::Rename(const std::string& from, const std::string& to) {
  return Change([&] {
    if (!state_->model_root.empty()) state_->NameGoing(to);
    return base_->Rename(from, to);
  });
}
int FaultInjectionEnv::RenameNoReplace(const std::string& from, const std::string& to) {
  return Change([&] { return base_->RenameNoReplace(from, to); });
}
int FaultInjectionEnv::Link(const std::string& from, const std::string& to) {
  return Change([&] { return base_->Link(from, to); });
}
int FaultInjectionEnv::SyncDir(const std::string& dir) {
  return Change([&] {
    int rc = base_->SyncDir(dir);
    if (rc == 0 && !state_->model_root.empty()) state_->SyncNames(dir);
    return rc;
  });
}
int FaultInjectionEnv::Mkdir(const std::string& path, int mode) {
  return Change([&] { return base_->Mkdir(path, mode); });
}
int FaultInjectionEnv::Rmdir(const std::string& path) {
  return Change([&] { return base_->Rmdir(path); });
}
int FaultInjectionEnv::ListDir(const std::string& dir, std::vector<std::string>* names) {
  return base_->ListDir(dir, names);
}
int FaultInjectionEnv::FileSize(const std::string& path, uint64_t* size) {
  return base_->FileSize(path, size);
}
int FaultInjectionEnv::Stat(const std::string& path, bool follow, struct stat* st) {
  return base_->Stat(path, follow, st);
}

int FaultInjectionEnv::DiskSpace(const std::string& path, uint64_t* total, uint64_t* avail) {
  double f;
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    f = state_->used_fraction;
  }
  int rc = base_->DiskSpace(path, total, avail);
  if (rc != 0 || f < 0) return rc;
  if (f > 1) f = 1;
  *avail = static_cast<uint64_t>(static_cast<double>(*total) * (1.0 - f));
  return 0;
}

int FaultInjectionEnv::TryLock(int fd) { return base_->TryLock(fd); }

}  // namespace store::spill
