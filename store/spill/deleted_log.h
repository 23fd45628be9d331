// deleted_log.h - the format of a spill directory's DELETED log: the tombstones (file number,
// record offset) of deleted objects whose records live on in spill files other objects keep.
// A store started with --recover serves no record the log names.
//
// Format 2 (written):
//   header  [8 bytes magic "STDELLOG"][u32 LE version = 2][u32 LE ~version]     16 bytes
//   then one unit per write of the log: the same batch of tombstones twice, copy A then
//   copy B, each
//     [u32 LE count >= 1][u32 LE mark: "TMBA" or "TMBB"]
//     [u64 LE XXH3-64 of the entries, seeded with XXH3-64 of the 8 bytes before it, seeded
//      with the file offset of the batch]
//     count x [u64 LE file number][u64 LE record offset]
//   All little-endian, every entry at a multiple of 16 bytes; a unit is 2 x (16 + 16 x count).
// Format 1 (read, never written): 16-byte entries [u64 LE number][u64 LE offset], no header
// and no checksum. A file that does not start with the header is read as format 1.
//
// Reading: each unit is taken from the first of its copies whose checksum holds, so one
// flipped bit, or a damaged sector inside one copy, revives no deleted object and hides no
// live one. Where neither copy holds:
//   - if a whole batch follows further on, the log is damaged: its directory's deleted objects
//     cannot be told from the others (the caller serves none of them);
//   - otherwise it is the torn last write of a power cut (never acknowledged): the log ends
//     there, and the next write goes there.
// Called by: the spiller (recovery on the loop thread, writes on the threadpool). Pure
// functions of bytes; no I/O.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace store::spill {

inline constexpr size_t kTombstoneBytes = 16;       // [u64 number][u64 offset]
inline constexpr size_t kDeletedHeaderBytes = 16;   // format 2
inline constexpr size_t kDeletedBatchHeaderBytes = 16;
inline constexpr uint32_t kDeletedLogVersion = 2;

// Appends one tombstone (16 bytes) to out.
void PutTombstone(std::vector<uint8_t>* out, uint64_t number, uint64_t offset);

// Appends the format 2 header to out.
void PutDeletedLogHeader(std::vector<uint8_t>* out);

// Appends one unit holding the tombstones in [entries, entries + bytes) (bytes a non-zero
// multiple of 16), to be written at file offset `at` (where out's end will be in the file).
void PutDeletedLogUnit(std::vector<uint8_t>* out, uint64_t at, const uint8_t* entries,
                       size_t bytes);

// Bytes a unit of n tombstones takes.
inline uint64_t DeletedLogUnitBytes(uint64_t n) {
  return 2 * (kDeletedBatchHeaderBytes + kTombstoneBytes * n);
}

struct DeletedLog {
  int version = 0;  // 1 or 2; 0 for an empty file
  // The tombstones, in file order (repeats possible).
  std::vector<std::pair<uint64_t, uint64_t>> tombstones;
  // Where the next write goes: the end of the last whole unit (format 2) or entry (format 1).
  uint64_t end = 0;
  uint64_t repaired = 0;    // units read from one copy (the other fails), damaged headers
  uint64_t torn_bytes = 0;  // bytes after `end` that are no whole unit (a torn last write)
  bool damaged = false;     // neither copy of a unit holds and whole batches follow it
  uint64_t damaged_at = 0;  // file offset of that unit
  bool unsupported = false;  // format 2's header with a version this store does not know
  uint32_t found_version = 0;
};

// Reads a whole log (n bytes at p).
DeletedLog ParseDeletedLog(const uint8_t* p, size_t n);

}  // namespace store::spill
