#include "spill/deleted_log.h"

#include <cstring>

#include "spill/hash.h"

namespace store::spill {

namespace {

constexpr char kMagic[8] = {'S', 'T', 'D', 'E', 'L', 'L', 'O', 'G'};
// Batch marks: copy A and copy B of a unit. Where a batch could be looked for (a multiple of 16
// bytes into the file) an entry holds the high half of a record offset, never these.
constexpr uint32_t kMarkA = 0x41424d54;  // "TMBA"
constexpr uint32_t kMarkB = 0x42424d54;  // "TMBB"

void PutU32(std::vector<uint8_t>* out, uint32_t v) {
  for (int i = 0; i < 4; i++) out->push_back(static_cast<uint8_t>(v >> (8 * i)));
}
void PutU64(std::vector<uint8_t>* out, uint64_t v) {
  for (int i = 0; i < 8; i++) out->push_back(static_cast<uint8_t>(v >> (8 * i)));
}
uint32_t U32(const uint8_t* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; i++) v |= uint32_t{p[i]} << (8 * i);
  return v;
}
uint64_t U64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v |= uint64_t{p[i]} << (8 * i);
  return v;
}

// The checksum of a batch: its entries, seeded with a hash of its first 8 bytes seeded with its
// file offset.
uint64_t BatchSum(const uint8_t* head, const uint8_t* entries, size_t bytes, uint64_t at) {
  return Hash64(entries, bytes, Hash64(head, 8, at));
}

void PutBatch(std::vector<uint8_t>* out, uint64_t at, uint32_t mark, const uint8_t* entries,
              size_t bytes) {
  uint8_t head[8];
  const uint32_t count = static_cast<uint32_t>(bytes / kTombstoneBytes);
  for (int i = 0; i < 4; i++) {
    head[i] = static_cast<uint8_t>(count >> (8 * i));
    head[4 + i] = static_cast<uint8_t>(mark >> (8 * i));
  }
  out->insert(out->end(), head, head + 8);
  PutU64(out, BatchSum(head, entries, bytes, at));
  out->insert(out->end(), entries, entries + bytes);
}

// The length of the whole batch with mark `mark` (0: either) at file offset `at`, or 0 if there
// is none.
uint64_t BatchAt(const uint8_t* p, size_t n, uint64_t at, uint32_t mark) {
  if (at > n || n - at < kDeletedBatchHeaderBytes + kTombstoneBytes) return 0;
  const uint64_t count = U32(p + at);
  const uint32_t m = U32(p + at + 4);
  if (m != kMarkA && m != kMarkB) return 0;
  if (mark != 0 && m != mark) return 0;
  if (count == 0 || count > (n - at - kDeletedBatchHeaderBytes) / kTombstoneBytes) return 0;
  const uint64_t bytes = kTombstoneBytes * count;
  if (BatchSum(p + at, p + at + kDeletedBatchHeaderBytes, bytes, at) != U64(p + at + 8)) return 0;
  return kDeletedBatchHeaderBytes + bytes;
}

void TakeBatch(const uint8_t* p, uint64_t at, uint64_t len, DeletedLog* log) {
  for (uint64_t e = at + kDeletedBatchHeaderBytes; e < at + len; e += kTombstoneBytes) {
    log->tombstones.emplace_back(U64(p + e), U64(p + e + 8));
  }
}

}  // namespace

void PutTombstone(std::vector<uint8_t>* out, uint64_t number, uint64_t offset) {
  PutU64(out, number);
  PutU64(out, offset);
}

void PutDeletedLogHeader(std::vector<uint8_t>* out) {
  out->insert(out->end(), kMagic, kMagic + sizeof kMagic);
  PutU32(out, kDeletedLogVersion);
  PutU32(out, ~kDeletedLogVersion);
}

void PutDeletedLogUnit(std::vector<uint8_t>* out, uint64_t at, const uint8_t* entries,
                       size_t bytes) {
  PutBatch(out, at, kMarkA, entries, bytes);
  PutBatch(out, at + kDeletedBatchHeaderBytes + bytes, kMarkB, entries, bytes);
}

DeletedLog ParseDeletedLog(const uint8_t* p, size_t n) {
  DeletedLog log;
  if (n == 0) return log;
  if (n < kDeletedHeaderBytes || std::memcmp(p, kMagic, sizeof kMagic) != 0) {
    // Format 1. (Format 2 read so, its header torn by a crash or damaged, still gives every
    // tombstone it holds, at least once: its entries sit where format 1 has them, and its
    // headers read as tombstones of file numbers of 2^32 and more, which no file has.)
    log.version = 1;
    for (uint64_t i = 0; i + kTombstoneBytes <= n; i += kTombstoneBytes) {
      const uint64_t number = U64(p + i);
      if (number == 0 || number >> 32 != 0) continue;  // no such file
      log.tombstones.emplace_back(number, U64(p + i + 8));
    }
    log.end = n - n % kTombstoneBytes;
    return log;
  }
  log.found_version = U32(p + 8);
  if (log.found_version != kDeletedLogVersion) {
    if (U32(p + 12) == ~log.found_version) {
      log.unsupported = true;  // a later format
      return log;
    }
    log.repaired++;  // a damaged header: format 2 is the only one it can be
  }
  log.version = 2;
  uint64_t pos = kDeletedHeaderBytes;
  while (pos < n) {
    if (const uint64_t len = BatchAt(p, n, pos, kMarkA); len > 0) {
      TakeBatch(p, pos, len, &log);
      // Copy B is not needed; one that fails (or is cut short: a write a crash tore after its
      // first copy, never acknowledged) is worth a rewrite.
      if (BatchAt(p, n, pos + len, kMarkB) != len) log.repaired++;
      pos += 2 * len;
      continue;
    }
    // Copy A fails: copy B is the batch at pos + len whose length is len.
    bool found = false;
    for (uint64_t y = pos + 32; y <= n && n - y >= y - pos; y += 16) {
      if (BatchAt(p, n, y, kMarkB) == y - pos) {
        TakeBatch(p, y, y - pos, &log);
        log.repaired++;
        pos = y + (y - pos);
        found = true;
        break;
      }
    }
    if (found) continue;
    // Neither copy: damage if a whole batch follows, else the torn last write.
    for (uint64_t y = pos + 16; y < n; y += 16) {
      if (BatchAt(p, n, y, 0) > 0) {
        log.damaged = true;
        log.damaged_at = pos;
        return log;
      }
    }
    log.torn_bytes = n - pos;
    break;
  }
  log.end = pos;
  return log;
}

}  // namespace store::spill
