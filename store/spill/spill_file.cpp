#include "spill/spill_file.h"

#include "spill/hash.h"

#include <fcntl.h>
#include <limits.h>
#include <xxhash.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <memory>

namespace store::spill {

namespace {


constexpr char kMagic[8] = {'S', 'T', 'S', 'P', 'I', 'L', 'L', '1'};
// A restore reads and hashes a record this much at a time (it stays in the CPU's cache between).
constexpr uint64_t kReadChunk = 512u << 10;

void PutU64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
void PutU32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint64_t GetU64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v |= static_cast<uint64_t>(p[i]) << (8 * i);
  return v;
}
uint32_t GetU32(const uint8_t* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; i++) v |= static_cast<uint32_t>(p[i]) << (8 * i);
  return v;
}

std::string ErrnoText(int neg) { return std::strerror(-neg); }

// XXH3-64 of a record: header, then metadata, then data (the on-disk order), seeded (seed 0
// is XXH3-64 unseeded, as version 1 files have it).
uint64_t RecordChecksum(StreamHash* st, uint64_t seed, const uint8_t* header,
                        const uint8_t* metadata, uint64_t metadata_size, const uint8_t* data,
                        uint64_t data_size) {
  st->Reset(seed);
  st->Update(header, kRecordHeader);
  st->Update(metadata, metadata_size);
  st->Update(data, data_size);
  return st->Digest();
}

// Closes an fd on scope exit (read paths).
struct FdCloser {
  Env* env;
  int fd;
  ~FdCloser() {
    if (fd >= 0) env->Close(fd);
  }
};

int Corrupt(std::string* error, const std::string& path, const std::string& what) {
  if (error) *error = "spill file " + path + ": " + what;
  return kCorrupt;
}

uint64_t SeedOf(const RecordLocation& loc) { return loc.seeded ? IdSeed(loc.id) : 0; }

}  // namespace

// Writes the index of locs and the trailer at index_offset of the open file fd (named tmp),
// syncs, closes and renames it to path; on failure removes it.
int FinishSpillFile(Env* env, int fd, const std::string& tmp, const std::string& path,
                    std::vector<RecordLocation> locs, uint64_t index_offset, uint32_t version,
                    std::vector<RecordLocation>* out, uint64_t* file_size, std::string* error);

uint64_t IdSeed(const uint8_t id[20]) { return GetU64(id); }

std::vector<uint64_t> RecordOffsets(const std::vector<SpillRecord>& records) {
  std::vector<uint64_t> out;
  out.reserve(records.size());
  uint64_t off = 0;
  for (const SpillRecord& r : records) {
    out.push_back(off);
    off += kRecordHeader + r.metadata_size + r.data_size;
  }
  return out;
}

int WriteSpillFile(Env* env, const std::string& path, const std::vector<SpillRecord>& records,
                   std::vector<RecordLocation>* out, uint64_t* file_size, std::string* error) {
  StreamHash st;
  if (!st.ok()) {
    if (error) *error = "write spill file " + path + ": out of memory";
    return -ENOMEM;
  }
  const std::string tmp = path + ".tmp";
  int fd = env->Open(tmp, O_CREAT | O_EXCL | O_WRONLY, 0600);
  if (fd < 0) {
    if (error) *error = "write spill file " + path + ": open: " + ErrnoText(fd);
    return fd;
  }
  // Any failure after the open: close, remove the partial file, report.
  auto fail = [&](int rc, const char* what) {
    env->Close(fd);
    env->Unlink(tmp);
    if (error) *error = "write spill file " + path + ": " + what + ": " + ErrnoText(rc);
    return rc;
  };

  const size_t n = records.size();
  std::vector<RecordLocation> locs(n);
  std::vector<std::array<uint8_t, kRecordHeader>> headers(n);
  std::vector<iovec> iov;
  iov.reserve(3 * n);
  uint64_t off = 0;
  for (size_t i = 0; i < n; i++) {
    const SpillRecord& r = records[i];
    uint8_t* h = headers[i].data();
    PutU64(h, r.metadata_size);
    PutU64(h + 8, r.data_size);
    constexpr uint64_t kMax = static_cast<uint64_t>(INT64_MAX);
    if (r.metadata_size > kMax - kRecordHeader ||
        r.data_size > kMax - kRecordHeader - r.metadata_size ||
        off > kMax - (kRecordHeader + r.metadata_size + r.data_size)) {
      return fail(-EFBIG, "records too large");
    }
    uint64_t size = kRecordHeader + r.metadata_size + r.data_size;
    std::memcpy(locs[i].id, r.id, sizeof(r.id));
    locs[i].offset = off;
    locs[i].size = size;
    locs[i].seeded = true;
    locs[i].checksum = RecordChecksum(&st, IdSeed(r.id), h, r.metadata, r.metadata_size,
                                      r.data, r.data_size);
    iov.push_back({h, kRecordHeader});
    // iovecs point straight at the caller's memory: no copies.
    if (r.metadata_size > 0) iov.push_back({const_cast<uint8_t*>(r.metadata), r.metadata_size});
    if (r.data_size > 0) iov.push_back({const_cast<uint8_t*>(r.data), r.data_size});
    off += size;
  }

  // The records: one gathered write per IOV_MAX iovecs.
  uint64_t pos = 0;
  for (size_t first = 0; first < iov.size(); first += static_cast<size_t>(kIovMax)) {
    size_t cnt = std::min<size_t>(kIovMax, iov.size() - first);
    uint64_t want = 0;
    for (size_t k = first; k < first + cnt; k++) want += iov[k].iov_len;
    ssize_t w =
        env->PWritev(fd, iov.data() + first, static_cast<int>(cnt), static_cast<off_t>(pos));
    if (w < 0) return fail(static_cast<int>(w), "write records");
    if (static_cast<uint64_t>(w) != want) return fail(-EIO, "write records (short write)");
    pos += want;
  }

  return FinishSpillFile(env, fd, tmp, path, std::move(locs), off, kFileVersion, out, file_size,
                         error);
}

int FinishSpillFile(Env* env, int fd, const std::string& tmp, const std::string& path,
                    std::vector<RecordLocation> locs, uint64_t index_offset, uint32_t version,
                    std::vector<RecordLocation>* out, uint64_t* file_size, std::string* error) {
  auto fail = [&](int rc, const char* what) {
    env->Close(fd);
    env->Unlink(tmp);
    if (error) *error = "write spill file " + path + ": " + what + ": " + ErrnoText(rc);
    return rc;
  };
  const size_t n = locs.size();
  std::vector<uint8_t> index(n * kIndexEntry);
  for (size_t i = 0; i < n; i++) {
    uint8_t* e = index.data() + i * kIndexEntry;
    std::memcpy(e, locs[i].id, 20);
    PutU64(e + 20, locs[i].offset);
    PutU64(e + 28, locs[i].size);
    PutU64(e + 36, locs[i].checksum);
  }
  uint8_t trailer[kTrailer];
  PutU64(trailer, index_offset);
  PutU64(trailer + 8, n);
  PutU64(trailer + 16, XXH3_64bits(index.data(), index.size()));
  PutU32(trailer + 24, version);
  PutU32(trailer + 28, static_cast<uint32_t>(kTrailer));
  std::memcpy(trailer + 32, kMagic, sizeof(kMagic));
  iovec tail[2] = {{index.data(), index.size()}, {trailer, kTrailer}};
  const uint64_t tail_size = index.size() + kTrailer;
  ssize_t w = env->PWritev(fd, tail, 2, static_cast<off_t>(index_offset));
  if (w < 0) return fail(static_cast<int>(w), "write index");
  if (static_cast<uint64_t>(w) != tail_size) return fail(-EIO, "write index (short write)");

  int rc = env->Fdatasync(fd);
  if (rc < 0) return fail(rc, "fdatasync");
  rc = env->Close(fd);
  if (rc < 0) {
    env->Unlink(tmp);
    if (error) *error = "write spill file " + path + ": close: " + ErrnoText(rc);
    return rc;
  }
  // Under its final name only once whole: a crash before this leaves a ".tmp" file.
  rc = env->RenameNoReplace(tmp, path);
  if (rc < 0) {
    env->Unlink(tmp);
    if (error) *error = "write spill file " + path + ": rename: " + ErrnoText(rc);
    return rc;
  }
  // The rename made durable before anyone relies on the file (the spiller frees the objects'
  // memory next): after a power cut the directory could otherwise still name only the ".tmp"
  // file, which a --recover removes.
  rc = env->SyncDir(Dirname(path));
  if (rc < 0) {
    env->Unlink(path);
    if (error) *error = "write spill file " + path + ": sync its directory: " + ErrnoText(rc);
    return rc;
  }
  if (out) *out = std::move(locs);
  if (file_size) *file_size = index_offset + tail_size;
  return 0;
}

int CopySpillFile(Env* env, const std::string& from_path, const std::vector<RecordLocation>& from,
                  uint32_t version, const std::string& path, std::vector<RecordLocation>* out,
                  uint64_t* file_size, std::string* error) {
  int in = env->Open(from_path, O_RDONLY, 0);
  if (in < 0) {
    if (error) *error = "copy spill file " + from_path + ": open: " + ErrnoText(in);
    return in;
  }
  FdCloser closer{env, in};
  const std::string tmp = path + ".tmp";
  int fd = env->Open(tmp, O_CREAT | O_EXCL | O_WRONLY, 0600);
  if (fd < 0) {
    if (error) *error = "write spill file " + path + ": open: " + ErrnoText(fd);
    return fd;
  }
  std::vector<RecordLocation> locs = from;
  uint64_t off = 0;
  for (RecordLocation& loc : locs) {
    ssize_t n = env->CopyRange(in, static_cast<off_t>(loc.offset), fd, static_cast<off_t>(off),
                               loc.size);
    if (n < 0 || static_cast<uint64_t>(n) != loc.size) {
      int rc = n < 0 ? static_cast<int>(n) : -EIO;
      env->Close(fd);
      env->Unlink(tmp);
      if (error) {
        *error = "copy spill file " + from_path + " at offset " + std::to_string(loc.offset) +
                 " to " + path + ": " + (n < 0 ? ErrnoText(rc) : "short copy");
      }
      return rc;
    }
    loc.offset = off;
    off += loc.size;
  }
  return FinishSpillFile(env, fd, tmp, path, std::move(locs), off, version, out, file_size, error);
}

int OpenForRecords(Env* env, const std::string& path, std::string* error) {
  int fd = env->Open(path, O_RDONLY, 0);
  if (fd < 0 && error) *error = "read spill file " + path + ": open: " + ErrnoText(fd);
  return fd;
}

int ReadRecord(Env* env, const std::string& path, const RecordLocation& loc, uint8_t* dst,
               uint64_t data_size, uint64_t metadata_size, std::string* error) {
  int fd = OpenForRecords(env, path, error);
  if (fd < 0) return fd;
  FdCloser closer{env, fd};
  return ReadRecordFrom(env, fd, path, loc, dst, data_size, metadata_size, error);
}

int ReadRecordFrom(Env* env, int fd, const std::string& path, const RecordLocation& loc,
                   uint8_t* dst, uint64_t data_size, uint64_t metadata_size, std::string* error) {
  const uint64_t expect = kRecordHeader + data_size + metadata_size;
  if (data_size > UINT64_MAX - kRecordHeader ||
      metadata_size > UINT64_MAX - kRecordHeader - data_size || loc.size != expect) {
    return Corrupt(error, path,
                   "size mismatch at offset " + std::to_string(loc.offset) + ": record size " +
                       std::to_string(loc.size) + ", object needs " +
                       std::to_string(kRecordHeader) + "+" + std::to_string(metadata_size) + "+" +
                       std::to_string(data_size));
  }
  StreamHash st;
  if (!st.ok()) {
    if (error) *error = "read spill file " + path + ": out of memory";
    return -ENOMEM;
  }
  // Each chunk is hashed just after it lands (it is still in the cache then), instead of one
  // read and a second pass over all the bytes. The kernel's own read-ahead follows the chunks;
  // asking it for the whole record first (POSIX_FADV_WILLNEED) made cold restores slower here
  // (1.8-2.6 against 4.8 GB/s for 8 MiB records read in turn, 0.6 against 0.7 of a cold read in
  // store-bench's restore_cold), so it is not asked.
  st.Reset(SeedOf(loc));
  uint8_t header[kRecordHeader];
  // The record's bytes in file order, and where each goes: header, metadata, data.
  const iovec parts[3] = {{header, kRecordHeader},
                          {dst + data_size, static_cast<size_t>(metadata_size)},
                          {dst, static_cast<size_t>(data_size)}};
  uint64_t pos = 0;  // within the record
  while (pos < loc.size) {
    const uint64_t chunk = std::min<uint64_t>(kReadChunk, loc.size - pos);
    iovec iov[3];
    int cnt = 0;
    uint64_t part_start = 0;
    for (const iovec& part : parts) {
      const uint64_t part_end = part_start + part.iov_len;
      const uint64_t lo = std::max(pos, part_start), hi = std::min(pos + chunk, part_end);
      if (lo < hi) {
        iov[cnt++] = {static_cast<uint8_t*>(part.iov_base) + (lo - part_start), hi - lo};
      }
      part_start = part_end;
    }
    ssize_t r = env->PReadv(fd, iov, cnt, static_cast<off_t>(loc.offset + pos));
    if (r < 0) {
      if (error) {
        *error = "read spill file " + path + " at offset " + std::to_string(loc.offset + pos) +
                 ": " + ErrnoText(static_cast<int>(r));
      }
      return static_cast<int>(r);
    }
    if (static_cast<uint64_t>(r) != chunk) {
      return Corrupt(error, path,
                     "size mismatch at offset " + std::to_string(loc.offset) + ": read " +
                         std::to_string(pos + static_cast<uint64_t>(r)) + " of " +
                         std::to_string(loc.size) + " bytes");
    }
    for (int i = 0; i < cnt; i++) st.Update(iov[i].iov_base, iov[i].iov_len);
    pos += chunk;
  }
  const uint64_t hm = GetU64(header), hd = GetU64(header + 8);
  if (hm != metadata_size || hd != data_size) {
    return Corrupt(error, path,
                   "size mismatch at offset " + std::to_string(loc.offset) +
                       ": header says metadata " + std::to_string(hm) + ", data " +
                       std::to_string(hd) + "; expected " + std::to_string(metadata_size) + ", " +
                       std::to_string(data_size));
  }
  if (st.Digest() != loc.checksum) {
    return Corrupt(error, path,
                   "checksum mismatch for the record at offset " + std::to_string(loc.offset));
  }
  return 0;
}

int ReadIndex(Env* env, const std::string& path, std::vector<IndexedRecord>* out,
              std::string* error, uint32_t* version_out) {
  out->clear();
  uint64_t file_size = 0;
  int rc = env->FileSize(path, &file_size);
  if (rc < 0) {
    if (error) *error = "spill file " + path + ": stat: " + ErrnoText(rc);
    return rc;
  }
  if (file_size < kTrailer) {
    return Corrupt(error, path,
                   "too short for a trailer (" + std::to_string(file_size) + " bytes)");
  }
  int fd = env->Open(path, O_RDONLY, 0);
  if (fd < 0) {
    if (error) *error = "spill file " + path + ": open: " + ErrnoText(fd);
    return fd;
  }
  FdCloser closer{env, fd};
  auto read_at = [&](void* buf, size_t len, uint64_t off, const char* what) -> int {
    iovec v = {buf, len};
    ssize_t r = env->PReadv(fd, &v, 1, static_cast<off_t>(off));
    if (r < 0) {
      if (error)
        *error = "spill file " + path + ": read " + what + ": " + ErrnoText(static_cast<int>(r));
      return static_cast<int>(r);
    }
    if (static_cast<size_t>(r) != len) {
      return Corrupt(error, path, std::string("short read of the ") + what);
    }
    return 0;
  };

  uint8_t trailer[kTrailer];
  rc = read_at(trailer, kTrailer, file_size - kTrailer, "trailer");
  if (rc != 0) return rc;
  if (std::memcmp(trailer + 32, kMagic, sizeof(kMagic)) != 0) {
    return Corrupt(error, path, "no intact trailer (bad magic): not a spill file, or cut short");
  }
  const uint32_t version = GetU32(trailer + 24);
  if (version < kOldestVersion || version > kFileVersion) {
    return Corrupt(error, path, "unsupported version " + std::to_string(version));
  }
  const uint32_t tsize = GetU32(trailer + 28);
  if (tsize != kTrailer) {
    return Corrupt(error, path, "bad trailer size " + std::to_string(tsize));
  }
  const uint64_t index_offset = GetU64(trailer);
  const uint64_t count = GetU64(trailer + 8);
  const uint64_t index_checksum = GetU64(trailer + 16);
  const uint64_t body = file_size - kTrailer;
  if (count > body / kIndexEntry || index_offset > body ||
      index_offset + count * kIndexEntry != body) {
    return Corrupt(error, path,
                   "index at " + std::to_string(index_offset) + " with " + std::to_string(count) +
                       " entries does not end at the trailer (file size " +
                       std::to_string(file_size) + ")");
  }
  std::vector<uint8_t> index(count * kIndexEntry);
  if (!index.empty()) {
    rc = read_at(index.data(), index.size(), index_offset, "index");
    if (rc != 0) return rc;
  }
  if (XXH3_64bits(index.data(), index.size()) != index_checksum) {
    return Corrupt(error, path, "index checksum mismatch");
  }

  std::vector<IndexedRecord> recs(count);
  for (uint64_t i = 0; i < count; i++) {
    const uint8_t* e = index.data() + i * kIndexEntry;
    RecordLocation& loc = recs[i].loc;
    std::memcpy(loc.id, e, 20);
    loc.offset = GetU64(e + 20);
    loc.size = GetU64(e + 28);
    loc.checksum = GetU64(e + 36);
    loc.seeded = version >= 2;
    if (loc.size < kRecordHeader || loc.offset > index_offset ||
        loc.size > index_offset - loc.offset) {
      return Corrupt(error, path,
                     "index entry " + std::to_string(i) + " (offset " + std::to_string(loc.offset) +
                         ", size " + std::to_string(loc.size) + ") lies outside the records");
    }
  }
  // No two records may overlap.
  std::vector<size_t> order(count);
  for (size_t i = 0; i < order.size(); i++) order[i] = i;
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return recs[a].loc.offset < recs[b].loc.offset; });
  for (size_t k = 1; k < order.size(); k++) {
    const RecordLocation& prev = recs[order[k - 1]].loc;
    const RecordLocation& cur = recs[order[k]].loc;
    if (prev.offset + prev.size > cur.offset) {
      return Corrupt(error, path,
                     "index entries overlap at offsets " + std::to_string(prev.offset) + " and " +
                         std::to_string(cur.offset));
    }
  }
  for (uint64_t i = 0; i < count; i++) {
    RecordLocation& loc = recs[i].loc;
    uint8_t header[kRecordHeader];
    rc = read_at(header, kRecordHeader, loc.offset, "record header");
    if (rc != 0) return rc;
    const uint64_t m = GetU64(header), d = GetU64(header + 8);
    const uint64_t payload = loc.size - kRecordHeader;
    if (m > payload || d != payload - m) {
      return Corrupt(error, path,
                     "size mismatch at offset " + std::to_string(loc.offset) +
                         ": header says metadata " + std::to_string(m) + ", data " +
                         std::to_string(d) + "; index says record size " +
                         std::to_string(loc.size));
    }
    recs[i].metadata_size = m;
    recs[i].data_size = d;
  }
  *out = std::move(recs);
  if (version_out) *version_out = version;
  return 0;
}

int SalvageFile(Env* env, const std::string& path, Salvage* out, std::string* error) {
  *out = Salvage();
  uint64_t file_size = 0;
  int rc = env->FileSize(path, &file_size);
  if (rc < 0) {
    if (error) *error = "spill file " + path + ": stat: " + ErrnoText(rc);
    return rc;
  }
  int fd = env->Open(path, O_RDONLY, 0);
  if (fd < 0) {
    if (error) *error = "spill file " + path + ": open: " + ErrnoText(fd);
    return fd;
  }
  FdCloser closer{env, fd};
  int io_error = 0;
  // Reads len bytes at off; false at end of file, on a short read or an error (io_error).
  auto read_at = [&](void* buf, uint64_t len, uint64_t off) {
    if (off > file_size || len > file_size - off) return false;
    iovec v = {buf, static_cast<size_t>(len)};
    ssize_t r = env->PReadv(fd, &v, 1, static_cast<off_t>(off));
    if (r < 0) io_error = static_cast<int>(r);
    return r >= 0 && static_cast<uint64_t>(r) == len;
  };

  // 1. The records, walked from offset 0 through their headers while they fit in the file.
  std::vector<std::pair<uint64_t, uint64_t>> walked;  // (offset, size)
  uint64_t walk_end = 0;
  for (;;) {
    uint8_t h[kRecordHeader];
    if (!read_at(h, kRecordHeader, walk_end)) break;
    const uint64_t m = GetU64(h), d = GetU64(h + 8);
    const uint64_t left = file_size - walk_end - kRecordHeader;
    if (m > left || d > left - m) break;
    walked.emplace_back(walk_end, kRecordHeader + m + d);
    walk_end += kRecordHeader + m + d;
  }
  if (io_error != 0) {
    if (error) *error = "spill file " + path + ": read: " + ErrnoText(io_error);
    return io_error;
  }

  // 2. Where the index entries are: as the trailer says, if its magic, size and bounds hold;
  // else from the end of the walked records up to the end of the file.
  uint64_t index_offset = walk_end, count = (file_size - walk_end) / kIndexEntry;
  uint32_t version = 0;  // 0: unknown, try both
  bool trailer_ok = false;
  if (file_size >= kTrailer) {
    uint8_t t[kTrailer];
    if (read_at(t, kTrailer, file_size - kTrailer) &&
        std::memcmp(t + 32, kMagic, sizeof(kMagic)) == 0 && GetU32(t + 28) == kTrailer) {
      const uint64_t io = GetU64(t), n = GetU64(t + 8);
      const uint64_t body = file_size - kTrailer;
      const uint32_t v = GetU32(t + 24);
      if (n <= body / kIndexEntry && io <= body && io + n * kIndexEntry == body &&
          v >= kOldestVersion && v <= kFileVersion) {
        index_offset = io;
        count = n;
        version = v;
        trailer_ok = true;
      }
    }
  }
  std::vector<uint8_t> index(count * kIndexEntry);
  if (!index.empty() && !read_at(index.data(), index.size(), index_offset)) {
    if (io_error != 0) {
      if (error) *error = "spill file " + path + ": read: " + ErrnoText(io_error);
      return io_error;
    }
    index.clear();
    count = 0;
  }

  // 3. Each entry whose record is whole and matches it: size, header, checksum. A file's
  // entries are all of one version; when the trailer cannot say which, the seeded checksum
  // (version 2) is tried first, and unseeded ones (version 1) count only if none was seeded.
  StreamHash st;
  if (!st.ok()) {
    if (error) *error = "spill file " + path + ": out of memory";
    return -ENOMEM;
  }
  struct Candidate {
    IndexedRecord rec;
    bool v2 = false, v1 = false;
  };
  std::vector<Candidate> found;
  std::vector<uint8_t> buf;
  for (uint64_t i = 0; i < count; i++) {
    const uint8_t* e = index.data() + i * kIndexEntry;
    Candidate c;
    RecordLocation& loc = c.rec.loc;
    std::memcpy(loc.id, e, 20);
    loc.offset = GetU64(e + 20);
    loc.size = GetU64(e + 28);
    loc.checksum = GetU64(e + 36);
    if (loc.size < kRecordHeader || loc.offset > index_offset ||
        loc.size > index_offset - loc.offset || loc.size > (1ull << 40)) {
      continue;
    }
    buf.resize(loc.size);
    if (!read_at(buf.data(), loc.size, loc.offset)) {
      if (io_error != 0) {
        if (error) *error = "spill file " + path + ": read: " + ErrnoText(io_error);
        return io_error;
      }
      continue;
    }
    const uint64_t m = GetU64(buf.data()), d = GetU64(buf.data() + 8);
    if (m > loc.size - kRecordHeader || d != loc.size - kRecordHeader - m) continue;
    c.rec.metadata_size = m;
    c.rec.data_size = d;
    const uint8_t* meta = buf.data() + kRecordHeader;
    if (version != 1) {
      c.v2 = RecordChecksum(&st, IdSeed(loc.id), buf.data(), meta, m, meta + m, d) ==
             loc.checksum;
    }
    if (version != 2 && !c.v2) {
      c.v1 = RecordChecksum(&st, 0, buf.data(), meta, m, meta + m, d) == loc.checksum;
    }
    if (c.v2 || c.v1) found.push_back(c);
  }
  bool any_v2 = false;
  for (const Candidate& c : found) any_v2 |= c.v2;
  std::vector<IndexedRecord> kept;
  for (const Candidate& c : found) {
    if (any_v2 ? !c.v2 : !c.v1) continue;
    kept.push_back(c.rec);
    kept.back().loc.seeded = any_v2;
  }
  std::sort(kept.begin(), kept.end(),
            [](const IndexedRecord& a, const IndexedRecord& b) { return a.loc.offset < b.loc.offset; });
  // No two kept records may overlap (a damaged entry could repeat another's range).
  std::vector<IndexedRecord> clean;
  for (const IndexedRecord& r : kept) {
    if (!clean.empty() && clean.back().loc.offset + clean.back().loc.size > r.loc.offset) continue;
    clean.push_back(r);
  }
  out->records = std::move(clean);
  out->version = out->records.empty() ? 0 : (any_v2 ? 2 : 1);
  out->records_known = std::max<uint64_t>(trailer_ok ? count : 0, walked.size());
  out->records_known = std::max<uint64_t>(out->records_known, out->records.size());
  out->lost_records = out->records_known - out->records.size();
  uint64_t covered = 0;
  for (const IndexedRecord& r : out->records) covered += r.loc.size;
  // The records end where the index starts: as the trailer says; else after the walked
  // records if entries were found there; else (no index at all) the whole file may be records.
  const uint64_t record_bytes =
      trailer_ok ? index_offset : !out->records.empty() ? walk_end : file_size;
  out->lost_bytes = record_bytes > covered ? record_bytes - covered : 0;
  return 0;
}

std::string Dirname(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

std::string SpillUrl(const std::string& absolute_path, uint64_t offset, uint64_t size) {
  return "file://" + absolute_path + "?offset=" + std::to_string(offset) +
         "&size=" + std::to_string(size);
}

}  // namespace store::spill
