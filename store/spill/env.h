// env.h - the filesystem as the spiller sees it, behind an interface (LevelDB's Env), so that
// tests can inject faults (a full disk, EIO, corrupted reads) without root.
//
// Owns: nothing. Called by: spill files (spill_file.cpp) on the libuv threadpool and by the
// spill directory logic (spill_dir.cpp) on the loop thread. Implementations must be thread-safe.
// Every call returns 0 (or a byte count) on success and -errno on failure; none throws.
#pragma once

#include <sys/types.h>
#include <sys/stat.h>
#include <sys/uio.h>

#include <climits>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace store::spill {

// Most iovecs one readv/writev call takes; longer arrays are split.
#ifdef IOV_MAX
inline constexpr int kIovMax = IOV_MAX;
#else
inline constexpr int kIovMax = 1024;
#endif

class Env {
 public:
  virtual ~Env() = default;
  virtual int Open(const std::string& path, int flags, int mode) = 0;  // fd or -errno
  virtual int Close(int fd) = 0;
  // Writes all of iov at off (loops over short writes); bytes written or -errno.
  virtual ssize_t PWritev(int fd, const iovec* iov, int iovcnt, off_t off) = 0;
  // Reads all of iov at off (loops over short reads); bytes read (less at end of file) or -errno.
  virtual ssize_t PReadv(int fd, const iovec* iov, int iovcnt, off_t off) = 0;
  virtual int Fdatasync(int fd) = 0;
  // Copies len bytes from in at in_off to out at out_off (copy_file_range where the filesystem
  // can, which may share the blocks; else read and write). Bytes copied or -errno.
  virtual ssize_t CopyRange(int in, off_t in_off, int out, off_t out_off, size_t len) = 0;
  virtual int Unlink(const std::string& path) = 0;
  virtual int Rename(const std::string& from, const std::string& to) = 0;
  // Renames from to `to` unless `to` exists (then -EEXIST and nothing changes).
  virtual int RenameNoReplace(const std::string& from, const std::string& to) = 0;
  // A second name for a file (link(2)); -EEXIST if `to` exists.
  virtual int Link(const std::string& from, const std::string& to) = 0;
  // Makes the directory's entries durable (fsync of the directory): names created, renamed or
  // removed in it survive a power cut.
  virtual int SyncDir(const std::string& dir) = 0;
  virtual int Mkdir(const std::string& path, int mode) = 0;
  virtual int Rmdir(const std::string& path) = 0;
  // Names in dir, without "." and "..".
  virtual int ListDir(const std::string& dir, std::vector<std::string>* names) = 0;
  virtual int FileSize(const std::string& path, uint64_t* size) = 0;
  // stat(2) of path, or lstat(2) (the link itself) unless follow; 0 or -errno.
  virtual int Stat(const std::string& path, bool follow, struct stat* st) = 0;
  // Size and free space of the filesystem holding path.
  virtual int DiskSpace(const std::string& path, uint64_t* total, uint64_t* avail) = 0;
  // An exclusive advisory lock on an open fd (flock LOCK_EX|LOCK_NB): 0, or -EWOULDBLOCK if
  // another process holds it.
  virtual int TryLock(int fd) = 0;

  // The real filesystem (POSIX calls). Never freed.
  static Env* Default();
};

// Wraps another Env and injects faults: for tests (named as such; not used in production).
class FaultInjectionEnv : public Env {
 public:
  explicit FaultInjectionEnv(Env* base) : base_(base) {}
  // Writes fail with -ENOSPC once this many more bytes have been written (-1 = never).
  void FailWritesAfter(int64_t bytes, int err = 28 /* ENOSPC */);
  // Reads fail with -err (0 = no failure).
  void FailReads(int err);
  // Flip one bit in every byte range read that covers file offset `offset` (-1 = off).
  void CorruptReadsAt(int64_t offset);
  // DiskSpace reports this fraction used (negative = ask the base Env).
  void SetDiskUsedFraction(double f);
  // Writes to files whose path (as opened) contains `part` fail with -err (err 0 = off); other
  // files are written as usual.
  void FailWritesTo(const std::string& part, int err);
  // Bytes of the writes FailWritesTo refused, in all.
  uint64_t refused_write_bytes() const;
  // Opens of files whose path contains `part` fail with -err (err 0 = off).
  void FailOpens(const std::string& part, int err);
  // The next read of at least `bytes` waits, before it reads, until ReleaseHeldRead (a slow
  // disk under one read, at a moment the test chooses); later reads go on as usual.
  void HoldNextReadOf(uint64_t bytes);
  // Whether a read is waiting now.
  bool read_held() const;
  void ReleaseHeldRead();
  uint64_t bytes_written() const;
  // Calls `hook` (empty = none) before each change to the filesystem: a write, a sync, a file
  // created, renamed, linked or removed, a directory made or removed. With a hook, changes run
  // one at a time, each right after its call of the hook, so that the hook sees the files as a
  // crash just before that change would leave them.
  void BeforeEachChange(std::function<void()> hook);
  // Keeps, from now on, a model of what a power cut would leave of the files under root (with a
  // BeforeEachChange hook only): a file's bytes as of its last Fdatasync, a directory's names as
  // of its last SyncDir; whatever is under root now counts as durable. What the model keeps, a
  // filesystem is bound to keep; a real one may keep more.
  void ModelPowerCuts(const std::string& root);
  // Writes into dest (a directory that does not exist yet) the files under root as a power cut
  // now would leave them, by the model. Call it from the hook. Returns 0 or -errno.
  int WritePowerCutImage(const std::string& dest);

  int Open(const std::string& path, int flags, int mode) override;
  int Close(int fd) override;
  ssize_t PWritev(int fd, const iovec* iov, int iovcnt, off_t off) override;
  ssize_t PReadv(int fd, const iovec* iov, int iovcnt, off_t off) override;
  int Fdatasync(int fd) override;
  // Read and write through this Env, so that its faults apply.
  ssize_t CopyRange(int in, off_t in_off, int out, off_t out_off, size_t len) override;
  int Unlink(const std::string& path) override;
  int Rename(const std::string& from, const std::string& to) override;
  int RenameNoReplace(const std::string& from, const std::string& to) override;
  int Link(const std::string& from, const std::string& to) override;
  int SyncDir(const std::string& dir) override;
  int Mkdir(const std::string& path, int mode) override;
  int Rmdir(const std::string& path) override;
  int ListDir(const std::string& dir, std::vector<std::string>* names) override;
  int FileSize(const std::string& path, uint64_t* size) override;
  int Stat(const std::string& path, bool follow, struct stat* st) override;
  int DiskSpace(const std::string& path, uint64_t* total, uint64_t* avail) override;
  int TryLock(int fd) override;

 private:
  Env* base_;
  struct State;
  std::shared_ptr<State> state_ = MakeState();
  static std::shared_ptr<State> MakeState();
  ssize_t WriteWithFaults(int fd, const iovec* iov, int iovcnt, off_t off);
  // Runs op(), after the BeforeEachChange hook if there is one.
  template <typename Op>
  auto Change(Op op) -> decltype(op());
};

}  // namespace store::spill
