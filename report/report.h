// report.h - snapshots of a running store and their text, JSON and INFO renderings.
//
// A snapshot is what one refresh of store-top asks the server for: its stats, optionally the
// connected clients, and one page of the object table as the server sorts and filters it. That
// is three requests at most, whatever the number of objects, so a store with a million objects
// costs the same to watch as an empty one (the server still walks its table once per page).
//
// The functions here only read: they never create, pin or delete anything. They print to the
// FILE* they are given and nothing else; errors come back as STORE_E* codes.
//
// Owns: nothing beyond the snapshots it returns; the caller's client stays the caller's.
// Called by: tools/store_top.cpp (the live view, --once, --json), tools/store_main.cpp (`store
// info`, `store ls`) and tests/test_top.cpp. A client of the store through libstoreclient; the
// server's core (store/) never links it.
// Threads: any. The functions keep no state between calls; a client passed in is used as the
// client library's rules allow.
#pragma once

#include <stdint.h>
#include <stdio.h>

#include <string>
#include <vector>

#include "storeclient.h"

namespace store::report {

// The socket the library connects to when given NULL: $STORE_SOCKET if set, else
// $XDG_RUNTIME_DIR/store.sock if XDG_RUNTIME_DIR is set, else /tmp/store-$UID.sock.
std::string DefaultSocketPath();

// The last failure's message on this thread, naming socket_path if the library's text does not
// ("cannot connect to the store at PATH: ...").
std::string ConnectError(const std::string& socket_path);

// Which page of the object table to fetch.
struct PageRequest {
  uint32_t sort = STORE_SORT_SIZE;  // STORE_SORT_*
  bool descending = true;
  uint64_t offset = 0;
  uint32_t limit = 20;   // 0 = fetch no objects
  std::string prefix;    // hex id prefix; empty = all
};

struct Snapshot {
  store_stats stats = STORE_STATS_INIT;
  bool has_clients = false;
  std::vector<store_client_info> clients;
  PageRequest page;
  uint64_t objects_matching = 0;  // objects that match page.prefix, over all pages
  std::vector<store_object_info> objects;
  int gpu_backend = STORE_GPU_BACKEND_NONE;  // what backs its GPU objects
  std::vector<store_gpu_device_stats> gpus;  // one per device serving GPU objects
  int64_t taken_ns = 0;  // CLOCK_REALTIME when the snapshot was taken
  int requests = 0;      // requests this snapshot sent to the server
};

// "cuda", "memfd-standin" or "none".
const char* GpuBackendName(int backend);

// Figures derived from stats alone.
struct Derived {
  uint64_t free_bytes;
  // Sealed bytes in memory that nobody reads or pins: what the server may spill or drop.
  // Servers that count it report store_stats.evictable_bytes, and then min == max == that.
  // Otherwise only bounds are known (open and pinned bytes are counted separately, and an
  // object can be both): at least sealed - open - pinned, at most sealed - max(open, pinned).
  bool evictable_exact;
  uint64_t evictable_min;
  uint64_t evictable_max;
  // Sealed bytes in memory held by readers or pins: sealed - evictable (the larger value when
  // evictable is only bounded).
  uint64_t held_bytes;
  double used_ratio;  // used / capacity, 0 when capacity is 0
  // Average spill and restore throughput since start, bytes per second of I/O time; 0 if none.
  double spill_write_bps;
  double restore_read_bps;
  bool spill_idle;  // nothing spilling, spilled or restoring, and nothing ever spilled
};
Derived Derive(const store_stats& s);

// Operations per second between two snapshots of the same server, from the total_* counters.
// valid is false when there is no earlier snapshot, the server changed (another pid, or its
// uptime went backwards) or no time passed.
struct Rates {
  bool valid = false;
  double seconds = 0;  // the server time between the two snapshots
  double creates = 0, seals = 0, gets = 0, releases = 0, deletes = 0, aborts = 0, pins = 0;
  double spilled_objects = 0, spilled_bytes = 0;    // written to spill files
  double restored_objects = 0, restored_bytes = 0;  // read back into memory
  double requests = 0;  // every request from every client...
  double others = 0;    // ...less the ones the watcher itself sent
};
// own_requests: requests the watcher sent after prev's stats request up to and including cur's.
Rates ComputeRates(const store_stats& prev, const store_stats& cur, int own_requests);

// Fills *out. Sends a stats request, a clients request when with_clients is set, and an
// objects request when page.limit > 0. Returns STORE_OK or the first failure's code (the
// details are in store_last_error_message()).
int Fetch(store_client* client, const PageRequest& page, bool with_clients, Snapshot* out);

// ---- formatting ---------------------------------------------------------------------------

// "0 B", "512 B", "1.5 KiB", "64.0 MiB", "1.00 GiB".
std::string Bytes(uint64_t n);
// Compact form for tables: "512", "1.5K", "64.0M", "1.00G".
std::string BytesShort(uint64_t n);
// "0.3s", "45s", "12m03s", "3h07m", "2d04h". Negative durations print as "0s".
std::string Duration(int64_t ns);
// "creating", "sealed", "spilling", "spilled", "restoring", or "state N".
const char* StateName(uint32_t state);
// Sort keys: "id", "size", "created", "last_access", "importance", "state"; nullptr if unknown.
const char* SortName(uint32_t sort);
// Parses a SortName() (also "age" and "access"); false if unknown.
bool ParseSort(const std::string& name, uint32_t* sort);
// 40 lowercase hex digits.
std::string HexId(const store_object_id& id);

// A plain-text snapshot, for terminals and logs. socket is only printed.
void PrintText(const Snapshot& s, const std::string& socket, FILE* out);
// The snapshot as one JSON document (a single line followed by a newline).
void PrintJson(const Snapshot& s, const std::string& socket, FILE* out);
// Redis-INFO-style sections (# memory, # objects, # clients, # operations, # spill), each
// followed by key:value lines and a blank line.
void PrintInfoSections(const Snapshot& s, FILE* out);

// A page of objects as one JSON document: {"total": N, "objects": [{...}, ...]} and a newline;
// each object has the fields PrintJson() gives objects.
void PrintObjectsJson(const std::vector<store_object_info>& objects, uint64_t total, FILE* out);

// Connects to socket_path (NULL = the default socket), prints PrintInfoSections() to out and
// disconnects. Returns 0, or 1 with a one-line message on stderr when the store cannot be
// reached or answers with an error.
int PrintInfo(const char* socket_path, FILE* out);

}  // namespace store::report
