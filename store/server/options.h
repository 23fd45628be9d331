// options.h - the server's command line: parsing, defaults and help text.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "server/log.h"

namespace store {

enum class HugePages { kWhenAvailable, kAsked, kNever };

// What a create that does not fit does when there is no spill directory: wait or fail as its
// timeout says (kRefuse), or first delete the least valuable objects nobody uses (kDrop: a
// cache, as Plasma's users ran it).
enum class WhenFull { kRefuse, kDrop };

struct ServerOptions {
  std::string socket_path;              // default: DefaultSocketPath()
  uint64_t memory = 1ull << 30;         // --memory, bytes
  std::vector<std::string> spill_dirs;  // --spill-dir (repeatable)
  double spill_high = 0.8;              // --spill-high
  double spill_low = 0.6;               // --spill-low
  uint64_t spill_file_max_size = 256ull << 20;  // --spill-file-max-size
  uint32_t spill_file_max_objects = 2000;       // --spill-file-max-objects
  double disk_threshold = 0.95;         // --disk-threshold
  double spill_compact = 0.5;           // --spill-compact: rewrite a file once this much is dead
  uint64_t restore_readahead = 128ull << 20;  // --restore-readahead: bytes restored ahead; 0 = off
  // A DELETED log is rewritten with only the tombstones that still name a record once it holds
  // this many and fewer than half still do. No flag: tests set it low to crash a rewrite.
  uint64_t tombstone_rewrite_entries = 4096;
  bool recover = false;                 // --recover
  WhenFull when_full = WhenFull::kRefuse;  // --when-full refuse|drop (drop: not with --spill-dir)
  LogLevel log_level = LogLevel::kInfo;
  std::string metrics_file;             // --metrics-file: Prometheus text, replaced atomically
  uint64_t metrics_interval_ms = 1000;  // --metrics-interval SECONDS
  // GPU objects.
  uint64_t gpu_memory = 0;              // --gpu-memory, bytes per device; 0 = no GPU objects
  std::vector<int> gpu_devices;         // --gpu-devices; empty = every usable device
  uint64_t gpu_chunk_size = 0;          // --gpu-chunk-size; 0 = min(gpu_memory, 256M)
  std::string gpu_backend = "cuda";     // --gpu-backend: cuda, or memfd-standin (tests only)
  bool prefault = true;                 // --prefault (default), --no-prefault
  // Huge pages for the memory: by default used when the system has them to give (reserved
  // hugetlbfs pages, or transparent huge pages for shared memory), quietly not otherwise;
  // --hugepages also warns when there are none; --no-hugepages never uses them.
  HugePages hugepages = HugePages::kWhenAvailable;
  // Limits on what clients make the server hold (see server/limits.cpp).
  uint32_t max_client_waiting = 1024;           // --max-client-waiting: requests per client
  uint64_t max_waiting_bytes = 256ull << 20;    // --max-waiting-bytes: in all; a quarter each
  uint64_t max_client_backlog = 128ull << 20;   // --max-client-backlog
  uint64_t max_backlog = 1ull << 30;            // --max-backlog: in all
  uint64_t max_partial_bytes = 256ull << 20;    // --max-partial-bytes: in all
  uint32_t max_clients = 0;                     // --max-clients; 0 = from the descriptor limit
  uint32_t max_client_gpu_fds = 64;             // --max-client-gpu-fds
  uint32_t max_objects = 0;                     // --max-objects; 0 = from the machine's memory
  bool help = false;
  bool version = false;
};

// $XDG_RUNTIME_DIR/store.sock if XDG_RUNTIME_DIR is set, else /tmp/store-$UID.sock.
std::string DefaultSocketPath();

// Parses a size: plain bytes, or a number with K, M, G, T (1024-based; also KiB, MiB, GiB,
// TiB) or KB, MB, GB, TB (1000-based). Fractions are allowed with a suffix ("1.5G").
// Returns false for anything else, for 0, and on overflow.
bool ParseSize(const std::string& text, uint64_t* out);

// The most clients --max-clients may allow: the list of clients (ClientsReply) then always fits
// in one reply (see kMaxClientInfoBytes in server/limits.cpp).
inline constexpr uint32_t kMaxClientsCap = 32768;
// The most objects the server's table can number (slots are 32-bit, one value means none).
inline constexpr uint32_t kMaxObjectsCap = UINT32_MAX - 1;

// Parses argv. Returns true on success; on failure fills *error with one line (the caller
// prints it and exits with 2).
bool ParseOptions(int argc, char** argv, ServerOptions* out, std::string* error);

const char* HelpText();

}  // namespace store
