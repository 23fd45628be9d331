// spill_file.h - fused spill files: many objects per file, and the index that finds them again.
//
// File layout (all integers little-endian):
//   record*   each record is [u64 metadata_len][u64 data_len][metadata][data], back to back
//             from offset 0, so any reader of that layout can walk the file from the start.
//   index     one entry per record: [20-byte object id][u64 offset][u64 size][u64 checksum]
//             where size includes the 16-byte record header and checksum is XXH3-64 of the
//             whole record (header, metadata, data), seeded with the first 8 bytes of the
//             object id read as a u64 (version 2; version 1 files, unseeded, are still read).
//             The seed ties each entry's checksum to its id: a damaged id fails it.
//   trailer   [u64 index_offset][u64 record_count][u64 XXH3-64 of the index][u32 version]
//             [u32 trailer size = 40][8 bytes magic "STSPILL1"], the last 40 bytes of the file.
// A file is written as "<path>.tmp" and renamed to <path> once complete and synced, so a file
// under its final name was whole once; a ".tmp" file is what a crash mid-write left.
// An object is addressed by file://<absolute path>?offset=<o>&size=<s>.
//
// Called by: the spiller, on the libuv threadpool (these functions block on IO). Thread-safe:
// they share no state. Every failure returns a negative errno (or kCorrupt) and a message.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "spill/env.h"

namespace store::spill {

inline constexpr int kCorrupt = -100000;  // checksum, size or layout mismatch
inline constexpr uint32_t kFileVersion = 2;   // written
inline constexpr uint32_t kOldestVersion = 1;  // still read
inline constexpr size_t kRecordHeader = 16;
inline constexpr size_t kIndexEntry = 44;
inline constexpr size_t kTrailer = 40;

struct SpillRecord {
  uint8_t id[20];
  const uint8_t* data = nullptr;      // data_size bytes (in the shared region)
  uint64_t data_size = 0;
  const uint8_t* metadata = nullptr;  // metadata_size bytes (in the region, after the data)
  uint64_t metadata_size = 0;
};

struct RecordLocation {
  uint8_t id[20];
  uint64_t offset = 0;    // of the record header in the file
  uint64_t size = 0;      // 16 + metadata_size + data_size
  uint64_t checksum = 0;  // XXH3-64 of the record, seeded with IdSeed(id) if `seeded`
  bool seeded = true;     // false for records of version 1 files
};

// The checksum seed of a record of object `id` (version 2): its first 8 bytes, little-endian.
uint64_t IdSeed(const uint8_t id[20]);

// Writes records to a new file "<path>.tmp" (O_CREAT|O_EXCL), then the index and trailer, then
// fdatasync, then renames it to path. On success fills *out (one location per record, same
// order) and returns 0. On failure removes the partial file and returns -errno (e.g. -ENOSPC,
// -EIO) with *error set. The offsets follow from the sizes alone (RecordOffsets).
int WriteSpillFile(Env* env, const std::string& path, const std::vector<SpillRecord>& records,
                   std::vector<RecordLocation>* out, uint64_t* file_size, std::string* error);

// Reads the record at loc into memory laid out as the store keeps objects: data at dst, metadata
// at dst + data_size. Checks the header's lengths against the expected sizes and the checksum;
// returns 0, -errno, or kCorrupt with *error saying what did not match. dst is written even on
// failure (the caller must not serve it then).
int ReadRecord(Env* env, const std::string& path, const RecordLocation& loc, uint8_t* dst,
               uint64_t data_size, uint64_t metadata_size, std::string* error);
// Opens the spill file at path for ReadRecordFrom: the descriptor, or -errno with *error set.
int OpenForRecords(Env* env, const std::string& path, std::string* error);

// As ReadRecord, from fd, a descriptor of the file at path opened for reading (path only names it
// in *error). A descriptor kept open across reads keeps the kernel's read-ahead state of the file.
int ReadRecordFrom(Env* env, int fd, const std::string& path, const RecordLocation& loc,
                   uint8_t* dst, uint64_t data_size, uint64_t metadata_size, std::string* error);

struct IndexedRecord {
  RecordLocation loc;
  uint64_t metadata_size = 0;
  uint64_t data_size = 0;
};

// Writes a new spill file at path (as WriteSpillFile: "<path>.tmp", fdatasync, rename) holding
// the records `from` names in the file at from_path, in that order, their bytes copied as they
// are (copy_file_range: the filesystem may share the blocks). The index keeps their ids and
// checksums, and version (the checksums' version in from_path). On success *out has their
// locations in the new file.
int CopySpillFile(Env* env, const std::string& from_path, const std::vector<RecordLocation>& from,
                  uint32_t version, const std::string& path, std::vector<RecordLocation>* out,
                  uint64_t* file_size, std::string* error);

// The offset each record will have in a file written from `records`, in order.
std::vector<uint64_t> RecordOffsets(const std::vector<SpillRecord>& records);

// Reads a file's trailer and index (and each record's header, for its sizes). Returns 0, or
// kCorrupt for a partial or damaged file, or -errno. *version (may be NULL) receives the
// file's version.
int ReadIndex(Env* env, const std::string& path, std::vector<IndexedRecord>* out,
              std::string* error, uint32_t* version = nullptr);

// What can still be read from a file whose index does not read back (ReadIndex said kCorrupt):
// the records that an index entry still names and whose whole record matches that entry's
// size, header and checksum. The index is found from the trailer when it is intact enough, else
// after the records (walked from offset 0 through their headers) up to the end of the file.
struct Salvage {
  std::vector<IndexedRecord> records;  // verified, in file order
  uint32_t version = 0;                // of the records kept (0 if none)
  uint64_t records_known = 0;  // records the file held, as far as can be told (index or walk)
  uint64_t lost_records = 0;   // of those, not kept
  uint64_t lost_bytes = 0;     // bytes of the file that no kept record covers
};
// Returns 0 with *out filled, or -errno if the file cannot be read (nothing can be said then).
int SalvageFile(Env* env, const std::string& path, Salvage* out, std::string* error);

// The directory part of a path ("." for a bare name).
std::string Dirname(const std::string& path);

// "file://<path>?offset=<o>&size=<s>"
std::string SpillUrl(const std::string& absolute_path, uint64_t offset, uint64_t size);

}  // namespace store::spill
