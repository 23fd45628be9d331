// report.cpp - see report.h.
#include "report.h"

#include "framing.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>

#include <nlohmann/json.hpp>

namespace store::report {

namespace {

int64_t RealtimeNs() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

uint64_t Sub(uint64_t a, uint64_t b) { return a > b ? a - b : 0; }

// A name as the server reported it, printable: control and non-ASCII bytes become '?'.
std::string Printable(const char* s, size_t max) {
  std::string r;
  for (size_t i = 0; i < max && s[i]; i++) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    r += (c >= 0x20 && c < 0x7f) ? static_cast<char>(c) : '?';
  }
  return r;
}

std::string Scaled(uint64_t n, bool short_form) {
  static const char* const kLong[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  static const char* const kShort[] = {"B", "K", "M", "G", "T", "P", "E"};
  char buf[32];
  if (n < 1024) {
    snprintf(buf, sizeof buf, short_form ? "%" PRIu64 "B" : "%" PRIu64 " B", n);
    return buf;
  }
  double v = static_cast<double>(n);
  int u = 0;
  while (v >= 1024 && u < 6) {
    v /= 1024;
    u++;
  }
  // Three significant digits, and never "1024.0" after rounding.
  const char* unit = short_form ? kShort[u] : kLong[u];
  const char* sep = short_form ? "" : " ";
  if (v < 9.995) {
    snprintf(buf, sizeof buf, "%.2f%s%s", v, sep, unit);
  } else if (v < 99.95) {
    snprintf(buf, sizeof buf, "%.1f%s%s", v, sep, unit);
  } else {
    snprintf(buf, sizeof buf, "%.0f%s%s", v, sep, unit);
  }
  return buf;
}

using Json = nlohmann::ordered_json;  // keys in the order they are set

// Writes doc on one line and a newline. Strings that are not UTF-8 (client names are whatever
// bytes a client sent) get U+FFFD in place of the bad bytes; numbers that are not finite print
// as null.
void WriteJson(const Json& doc, FILE* out) {
  std::string text = doc.dump(-1, ' ', false, Json::error_handler_t::replace);
  text += '\n';
  fputs(text.c_str(), out);
}

Json JsonStats(const store_stats& s) {
  Json j = Json::object();
  j["capacity_bytes"] = s.capacity_bytes;
  j["used_bytes"] = s.used_bytes;
  j["largest_free_bytes"] = s.largest_free_bytes;
  j["resident_bytes"] = s.resident_bytes;
  j["object_count"] = s.object_count;
  j["client_count"] = s.client_count;
  j["created_count"] = s.created_count;
  j["created_bytes"] = s.created_bytes;
  j["sealed_count"] = s.sealed_count;
  j["sealed_bytes"] = s.sealed_bytes;
  j["open_count"] = s.open_count;
  j["open_bytes"] = s.open_bytes;
  j["pinned_count"] = s.pinned_count;
  j["pinned_bytes"] = s.pinned_bytes;
  j["deleted_pending_count"] = s.deleted_pending_count;
  j["deleted_pending_bytes"] = s.deleted_pending_bytes;
  j["spilling_count"] = s.spilling_count;
  j["spilling_bytes"] = s.spilling_bytes;
  j["spilled_count"] = s.spilled_count;
  j["spilled_bytes"] = s.spilled_bytes;
  j["restoring_count"] = s.restoring_count;
  j["restoring_bytes"] = s.restoring_bytes;
  j["evictable_bytes"] = s.evictable_bytes;
  j["spill_enabled"] = s.spill_enabled;
  j["spill_files"] = s.spill_files;
  j["spill_disk_bytes"] = s.spill_disk_bytes;
  j["spill_dead_bytes"] = s.spill_dead_bytes;
  j["total_spilled_objects"] = s.total_spilled_objects;
  j["total_spilled_bytes"] = s.total_spilled_bytes;
  j["total_spill_ns"] = s.total_spill_ns;
  j["total_restored_objects"] = s.total_restored_objects;
  j["total_restored_bytes"] = s.total_restored_bytes;
  j["total_restore_ns"] = s.total_restore_ns;
  j["total_spill_failures"] = s.total_spill_failures;
  j["total_restore_failures"] = s.total_restore_failures;
  j["total_compactions"] = s.total_compactions;
  j["total_compact_bytes_copied"] = s.total_compact_bytes_copied;
  j["total_compact_bytes_freed"] = s.total_compact_bytes_freed;
  j["total_compact_failures"] = s.total_compact_failures;
  j["spill_undurable_deletes"] = s.spill_undurable_deletes;
  j["waiting_bytes"] = s.waiting_bytes;
  j["backlog_bytes"] = s.backlog_bytes;
  j["partial_bytes"] = s.partial_bytes;
  j["pending_fds"] = s.pending_fds;
  j["limit_client_waiting"] = s.limit_client_waiting;
  j["limit_waiting_bytes"] = s.limit_waiting_bytes;
  j["limit_client_backlog"] = s.limit_client_backlog;
  j["limit_backlog"] = s.limit_backlog;
  j["limit_partial_bytes"] = s.limit_partial_bytes;
  j["limit_clients"] = s.limit_clients;
  j["limit_client_gpu_fds"] = s.limit_client_gpu_fds;
  j["fd_limit"] = s.fd_limit;
  j["refused_client_waiting"] = s.refused_client_waiting;
  j["refused_waiting_bytes"] = s.refused_waiting_bytes;
  j["closed_client_backlog"] = s.closed_client_backlog;
  j["closed_backlog"] = s.closed_backlog;
  j["closed_partial"] = s.closed_partial;
  j["refused_clients"] = s.refused_clients;
  j["accept_failures"] = s.accept_failures;
  j["refused_gpu_fds"] = s.refused_gpu_fds;
  j["limit_objects"] = s.limit_objects;
  j["refused_objects"] = s.refused_objects;
  j["waiting_gets"] = s.waiting_gets;
  j["waiting_creates"] = s.waiting_creates;
  j["total_creates"] = s.total_creates;
  j["total_seals"] = s.total_seals;
  j["total_gets"] = s.total_gets;
  j["total_releases"] = s.total_releases;
  j["total_deletes"] = s.total_deletes;
  j["total_aborts"] = s.total_aborts;
  j["total_full"] = s.total_full;
  j["when_full_drop"] = s.when_full_drop;
  j["total_dropped_objects"] = s.total_dropped_objects;
  j["total_dropped_bytes"] = s.total_dropped_bytes;
  j["total_contains"] = s.total_contains;
  j["total_infos"] = s.total_infos;
  j["total_lists"] = s.total_lists;
  j["total_pins"] = s.total_pins;
  j["total_unpins"] = s.total_unpins;
  j["total_requests"] = s.total_requests;
  j["total_bad_requests"] = s.total_bad_requests;
  j["uptime_ns"] = s.uptime_ns;
  j["server_pid"] = s.server_pid;
  return j;
}

Json JsonObject(const store_object_info& o) {
  Json j = Json::object();
  j["id"] = HexId(o.id);
  j["data_size"] = o.data_size;
  j["metadata_size"] = o.metadata_size;
  j["state"] = StateName(o.state);
  j["level"] = o.level;
  j["device"] = o.device;
  j["importance"] = o.importance;
  j["reader_count"] = o.reader_count;
  j["pin_count"] = o.pin_count;
  j["create_time_ns"] = o.create_time_ns;
  j["last_access_ns"] = o.last_access_ns;
  j["creator_pid"] = o.creator_pid;
  return j;
}

Json JsonClient(const store_client_info& c) {
  Json j = Json::object();
  j["client_id"] = c.client_id;
  j["name"] = std::string(c.name, strnlen(c.name, sizeof c.name));
  j["pid"] = c.pid;
  j["uid"] = c.uid;
  j["objects_created"] = c.objects_created;
  j["creating_count"] = c.creating_count;
  j["readers_held"] = c.readers_held;
  j["pins_held"] = c.pins_held;
  j["bytes_held"] = c.bytes_held;
  j["connect_time_ns"] = c.connect_time_ns;
  j["requests"] = c.requests;
  j["is_self"] = c.is_self != 0;
  return j;
}

void TextRow(FILE* out, const char* label, uint64_t count, uint64_t bytes) {
  fprintf(out, "  %-22s %12" PRIu64 " %16" PRIu64 "  %s\n", label, count, bytes,
          Bytes(bytes).c_str());
}

void TextBytes(FILE* out, const char* label, uint64_t bytes, const char* note = "") {
  fprintf(out, "  %-22s %16" PRIu64 "  %s%s\n", label, bytes, Bytes(bytes).c_str(), note);
}

}  // namespace

std::string DefaultSocketPath() { return store::proto::DefaultSocketPath(); }

std::string ConnectError(const std::string& socket_path) {
  std::string m = store_last_error_message();
  if (m.find(socket_path) != std::string::npos) return m;
  return "cannot connect to the store at " + socket_path + ": " + m;
}

Derived Derive(const store_stats& s) {
  Derived d{};
  d.free_bytes = Sub(s.capacity_bytes, s.used_bytes);
  uint64_t hi = std::max(s.open_bytes, s.pinned_bytes);
  d.evictable_min = Sub(s.sealed_bytes, s.open_bytes + s.pinned_bytes);
  d.evictable_max = Sub(s.sealed_bytes, hi);
  // A server without the figure reports 0; a real 0 is also exact when the bounds allow no
  // other value. In the remaining case (0 reported, bounds wider) the bounds are shown: they
  // hold 0 too, so they are right either way.
  if (s.evictable_bytes > 0 || d.evictable_max == 0) {
    d.evictable_exact = true;
    d.evictable_min = d.evictable_max = std::min(s.evictable_bytes, s.sealed_bytes);
  }
  d.held_bytes = Sub(s.sealed_bytes, d.evictable_min);
  d.used_ratio = s.capacity_bytes ? static_cast<double>(s.used_bytes) /
                                        static_cast<double>(s.capacity_bytes)
                                  : 0.0;
  d.spill_write_bps = s.total_spill_ns ? static_cast<double>(s.total_spilled_bytes) * 1e9 /
                                             static_cast<double>(s.total_spill_ns)
                                       : 0.0;
  d.restore_read_bps = s.total_restore_ns ? static_cast<double>(s.total_restored_bytes) * 1e9 /
                                                static_cast<double>(s.total_restore_ns)
                                          : 0.0;
  d.spill_idle = s.spilling_count == 0 && s.spilled_count == 0 && s.restoring_count == 0 &&
                 s.total_spilled_objects == 0 && s.total_restored_objects == 0 &&
                 s.spill_files == 0;
  return d;
}

Rates ComputeRates(const store_stats& prev, const store_stats& cur, int own_requests) {
  Rates r;
  if (prev.server_pid != cur.server_pid || cur.uptime_ns <= prev.uptime_ns) return r;
  r.seconds = static_cast<double>(cur.uptime_ns - prev.uptime_ns) / 1e9;
  auto rate = [&](uint64_t a, uint64_t b) { return static_cast<double>(Sub(b, a)) / r.seconds; };
  r.creates = rate(prev.total_creates, cur.total_creates);
  r.seals = rate(prev.total_seals, cur.total_seals);
  r.gets = rate(prev.total_gets, cur.total_gets);
  r.releases = rate(prev.total_releases, cur.total_releases);
  r.deletes = rate(prev.total_deletes, cur.total_deletes);
  r.aborts = rate(prev.total_aborts, cur.total_aborts);
  r.pins = rate(prev.total_pins, cur.total_pins);
  r.spilled_objects = rate(prev.total_spilled_objects, cur.total_spilled_objects);
  r.spilled_bytes = rate(prev.total_spilled_bytes, cur.total_spilled_bytes);
  r.restored_objects = rate(prev.total_restored_objects, cur.total_restored_objects);
  r.restored_bytes = rate(prev.total_restored_bytes, cur.total_restored_bytes);
  r.requests = rate(prev.total_requests, cur.total_requests);
  uint64_t all = Sub(cur.total_requests, prev.total_requests);
  r.others = static_cast<double>(Sub(all, static_cast<uint64_t>(std::max(own_requests, 0)))) /
             r.seconds;
  r.valid = true;
  return r;
}

const char* GpuBackendName(int backend) {
  switch (backend) {
    case STORE_GPU_BACKEND_CUDA: return "cuda";
    case STORE_GPU_BACKEND_MEMFD_STANDIN: return "memfd-standin";
    default: return "none";
  }
}

int Fetch(store_client* client, const PageRequest& page, bool with_clients, Snapshot* out) {
  out->requests = 0;
  out->page = page;
  out->taken_ns = RealtimeNs();
  out->requests++;
  int rc = store_stats_get(client, &out->stats);
  if (rc != STORE_OK) return rc;

  store_gpu_device_stats* gpus = nullptr;
  size_t ngpus = 0;
  out->requests++;
  rc = store_gpu_stats(client, &gpus, sizeof *gpus, &ngpus, &out->gpu_backend);
  if (rc != STORE_OK) return rc;
  out->gpus.assign(gpus, gpus + ngpus);
  store_free(gpus);

  out->has_clients = false;
  out->clients.clear();
  if (with_clients) {
    store_client_info* list = nullptr;
    size_t n = 0;
    out->requests++;
    rc = store_list_clients(client, &list, sizeof *list, &n);
    if (rc != STORE_OK) return rc;
    out->clients.assign(list, list + n);
    store_free(list);
    std::sort(out->clients.begin(), out->clients.end(),
              [](const store_client_info& a, const store_client_info& b) {
                return a.client_id < b.client_id;
              });
    out->has_clients = true;
  }

  out->objects.clear();
  out->objects_matching = 0;
  if (page.limit > 0) {
    store_list_options o = STORE_LIST_OPTIONS_INIT;
    o.sort = page.sort;
    o.descending = page.descending ? 1 : 0;
    o.limit = std::min<uint32_t>(page.limit, STORE_MAX_PAGE_OBJECTS);
    o.offset = page.offset;
    o.id_prefix = page.prefix.empty() ? nullptr : page.prefix.c_str();
    store_object_info* objs = nullptr;
    size_t n = 0;
    uint64_t total = 0;
    out->requests++;
    rc = store_list_page(client, &o, &objs, sizeof *objs, &n, &total);
    if (rc != STORE_OK) return rc;
    out->objects.assign(objs, objs + n);
    store_free(objs);
    out->objects_matching = total;
  }
  return STORE_OK;
}

// ---- formatting ---------------------------------------------------------------------------

std::string Bytes(uint64_t n) { return Scaled(n, false); }
std::string BytesShort(uint64_t n) { return Scaled(n, true); }

std::string Duration(int64_t ns) {
  char buf[32];
  if (ns < 0) ns = 0;
  int64_t s = ns / 1000000000;
  if (s < 10) {
    snprintf(buf, sizeof buf, "%.1fs", static_cast<double>(ns) / 1e9);
  } else if (s < 60) {
    snprintf(buf, sizeof buf, "%" PRId64 "s", s);
  } else if (s < 3600) {
    snprintf(buf, sizeof buf, "%" PRId64 "m%02" PRId64 "s", s / 60, s % 60);
  } else if (s < 86400) {
    snprintf(buf, sizeof buf, "%" PRId64 "h%02" PRId64 "m", s / 3600, s / 60 % 60);
  } else {
    snprintf(buf, sizeof buf, "%" PRId64 "d%02" PRId64 "h", s / 86400, s / 3600 % 24);
  }
  return buf;
}

const char* StateName(uint32_t state) {
  switch (state) {
    case STORE_STATE_CREATED: return "creating";
    case STORE_STATE_SEALED: return "sealed";
    case STORE_STATE_SPILLING: return "spilling";
    case STORE_STATE_SPILLED: return "spilled";
    case STORE_STATE_RESTORING: return "restoring";
    default: return "unknown";
  }
}

const char* SortName(uint32_t sort) {
  switch (sort) {
    case STORE_SORT_ID: return "id";
    case STORE_SORT_SIZE: return "size";
    case STORE_SORT_CREATED: return "created";
    case STORE_SORT_LAST_ACCESS: return "last_access";
    case STORE_SORT_IMPORTANCE: return "importance";
    case STORE_SORT_STATE: return "state";
    default: return nullptr;
  }
}

bool ParseSort(const std::string& name, uint32_t* sort) {
  for (uint32_t k = STORE_SORT_ID; k <= STORE_SORT_STATE; k++) {
    if (name == SortName(k)) {
      *sort = k;
      return true;
    }
  }
  if (name == "age") {
    *sort = STORE_SORT_CREATED;
    return true;
  }
  if (name == "access") {
    *sort = STORE_SORT_LAST_ACCESS;
    return true;
  }
  return false;
}

std::string HexId(const store_object_id& id) {
  char hex[2 * STORE_OBJECT_ID_SIZE + 1];
  if (store_object_id_to_hex(&id, hex, sizeof hex) != STORE_OK) return "?";
  return hex;
}

namespace {
// What each limit of the store watches now, the limit, and how often it refused a request or
// closed a connection.
void PrintLimits(const store_stats& s, FILE* out) {
  fprintf(out, "\n%-34s%12s %12s %10s\n", "limits", "now", "limit", "hits");
  auto row = [&](const char* name, const std::string& now, const std::string& limit,
                 uint64_t hits) {
    fprintf(out, "  %-32s%12s %12s %10" PRIu64 "\n", name, now.c_str(), limit.c_str(), hits);
  };
  auto n = [](uint64_t v) { return std::to_string(v); };
  row("waiting requests, per client", "-", n(s.limit_client_waiting), s.refused_client_waiting);
  row("waiting bytes", BytesShort(s.waiting_bytes), BytesShort(s.limit_waiting_bytes),
      s.refused_waiting_bytes);
  row("reply backlog, per client", "-", BytesShort(s.limit_client_backlog),
      s.closed_client_backlog);
  row("reply backlog", BytesShort(s.backlog_bytes), BytesShort(s.limit_backlog),
      s.closed_backlog);
  row("partial requests", BytesShort(s.partial_bytes), BytesShort(s.limit_partial_bytes),
      s.closed_partial);
  row("clients", n(s.client_count), n(s.limit_clients), s.refused_clients);
  row("failed accepts (descriptor limit)", "-", n(s.fd_limit), s.accept_failures);
  row("unsent GPU fds (limit per client)", n(s.pending_fds), n(s.limit_client_gpu_fds),
      s.refused_gpu_fds);
  row("objects", n(s.object_count), n(s.limit_objects), s.refused_objects);
}
}  // namespace

void PrintText(const Snapshot& snap, const std::string& socket, FILE* out) {
  const store_stats& s = snap.stats;
  Derived d = Derive(s);
  fprintf(out, "store at %s: server pid %d, up %s, %" PRIu64 " client%s\n", socket.c_str(),
          s.server_pid, Duration(static_cast<int64_t>(s.uptime_ns)).c_str(), s.client_count,
          s.client_count == 1 ? "" : "s");

  fprintf(out, "\n%-25s%16s\n", "memory", "bytes");
  TextBytes(out, "capacity", s.capacity_bytes);
  char pct[48];
  snprintf(pct, sizeof pct, " (%.1f%%)", 100.0 * d.used_ratio);
  TextBytes(out, "used", s.used_bytes, pct);
  TextBytes(out, "free", d.free_bytes);
  TextBytes(out, "largest free block", s.largest_free_bytes, " (the largest object that fits now)");
  TextBytes(out, "resident", s.resident_bytes);
  TextBytes(out, "pinned", s.pinned_bytes);
  TextBytes(out, "open by readers", s.open_bytes);
  if (d.evictable_exact) {
    TextBytes(out, "evictable", d.evictable_min, " (sealed, in memory, not read or pinned)");
  } else {
    std::string most = " (at most " + Bytes(d.evictable_max) + ")";
    TextBytes(out, "evictable, at least", d.evictable_min, most.c_str());
  }

  std::string objects = "objects: " + std::to_string(s.object_count);
  fprintf(out, "\n%-25s%12s %16s\n", objects.c_str(), "count", "bytes");
  TextRow(out, "creating", s.created_count, s.created_bytes);
  TextRow(out, "sealed", s.sealed_count, s.sealed_bytes);
  TextRow(out, "open by readers", s.open_count, s.open_bytes);
  TextRow(out, "pinned", s.pinned_count, s.pinned_bytes);
  TextRow(out, "deleted, still read", s.deleted_pending_count, s.deleted_pending_bytes);
  TextRow(out, "spilling", s.spilling_count, s.spilling_bytes);
  TextRow(out, "spilled", s.spilled_count, s.spilled_bytes);
  TextRow(out, "restoring", s.restoring_count, s.restoring_bytes);

  if (!s.spill_enabled && d.spill_idle) {
    fprintf(out, "spill: off (the store has no spill directory)\n");
  } else {
    fprintf(out, "spill: %s\n", !s.spill_enabled ? "off (objects from before remain)"
                                 : d.spill_idle  ? "on, none yet"
                                                 : "on");
    fprintf(out, "  %-22s %12" PRIu64 "\n", "files", s.spill_files);
    TextBytes(out, "on disk", s.spill_disk_bytes);
    TextBytes(out, "of which dead", s.spill_dead_bytes, " (records of deleted objects)");
    TextRow(out, "written since start", s.total_spilled_objects, s.total_spilled_bytes);
    TextRow(out, "restored since start", s.total_restored_objects, s.total_restored_bytes);
    fprintf(out, "  %-22s %s/s writing, %s/s reading\n", "throughput",
            Bytes(static_cast<uint64_t>(d.spill_write_bps)).c_str(),
            Bytes(static_cast<uint64_t>(d.restore_read_bps)).c_str());
    // Compaction: the files rewritten without their dead records, and the disk they gave back.
    TextRow(out, "compacted, bytes freed", s.total_compactions, s.total_compact_bytes_freed);
    fprintf(out, "  %-22s %12" PRIu64 "\n", "failed spills", s.total_spill_failures);
    fprintf(out, "  %-22s %12" PRIu64 "\n", "failed restores", s.total_restore_failures);
    fprintf(out, "  %-22s %12" PRIu64 "\n", "failed compactions", s.total_compact_failures);
    if (s.spill_undurable_deletes > 0) {
      fprintf(out, "  %-22s %12" PRIu64 " (their record's write failed: a crash now could "
              "bring them back)\n", "undurable deletes", s.spill_undurable_deletes);
    }
  }
  if (s.when_full_drop) {
    fprintf(out, "when full: drop unused objects (lowest importance, least recently used first)\n");
    TextRow(out, "dropped since start", s.total_dropped_objects, s.total_dropped_bytes);
  } else {
    fprintf(out, "when full: refuse (creates wait for room as their timeout says)\n");
  }
  fprintf(out, "waiting: %" PRIu64 " gets, %" PRIu64 " creates\n", s.waiting_gets,
          s.waiting_creates);
  PrintLimits(s, out);
  if (!snap.gpus.empty()) {
    fprintf(out, "gpu objects (%s):\n", GpuBackendName(snap.gpu_backend));
    for (const auto& g : snap.gpus) {
      fprintf(out, "  device %d: %s of %s used, %" PRIu64 " objects, %u chunks of %s\n", g.device,
              Bytes(g.used_bytes).c_str(), Bytes(g.capacity_bytes).c_str(), g.object_count,
              g.chunks, Bytes(g.chunk_size).c_str());
    }
  }

  double up = static_cast<double>(s.uptime_ns) / 1e9;
  auto avg = [&](uint64_t n) { return up > 0 ? static_cast<double>(n) / up : 0.0; };
  fprintf(out, "\n%-25s%12s  %14s\n", "operations since start", "total", "average/s");
  struct {
    const char* name;
    uint64_t n;
  } ops[] = {{"create", s.total_creates},   {"seal", s.total_seals},
             {"get", s.total_gets},         {"release", s.total_releases},
             {"delete", s.total_deletes},   {"abort", s.total_aborts},
             {"pin", s.total_pins},         {"unpin", s.total_unpins},
             {"refused, full", s.total_full}, {"requests", s.total_requests},
             {"bad requests", s.total_bad_requests}};
  for (auto& op : ops) {
    fprintf(out, "  %-22s %12" PRIu64 "  %14.1f\n", op.name, op.n, avg(op.n));
  }

  // The object table, unless no page was asked for.
  if (snap.page.limit > 0) {
    const char* sort = SortName(snap.page.sort);
    fprintf(out, "\nobjects by %s, %s", sort ? sort : "?",
            snap.page.descending ? "descending" : "ascending");
    if (!snap.page.prefix.empty()) fprintf(out, ", id prefix %s", snap.page.prefix.c_str());
    fprintf(out, ": %zu shown of %" PRIu64 "\n", snap.objects.size(), snap.objects_matching);
  }
  if (!snap.objects.empty()) {
    fprintf(out, "  %-40s %8s %8s %-9s %5s %5s %5s %7s %9s %7s\n", "ID", "SIZE", "META", "STATE",
            "IMP", "RDRS", "PINS", "AGE", "ACCESSED", "CREATOR");
    for (const auto& o : snap.objects) {
      fprintf(out, "  %-40s %8s %8s %-9s %5d %5u %5u %7s %9s %7d\n", HexId(o.id).c_str(),
              BytesShort(o.data_size).c_str(), BytesShort(o.metadata_size).c_str(),
              StateName(o.state), o.importance, o.reader_count, o.pin_count,
              Duration(snap.taken_ns - o.create_time_ns).c_str(),
              (Duration(snap.taken_ns - o.last_access_ns) + " ago").c_str(), o.creator_pid);
    }
  }

  if (snap.has_clients) {
    fprintf(out, "\nclients: %zu\n", snap.clients.size());
    fprintf(out, "  %5s %-20s %8s %8s %8s %8s %8s %9s %9s %9s\n", "ID", "NAME", "PID", "CREATED",
            "CREATING", "READERS", "PINS", "HELD", "REQUESTS", "CONNECTED");
    for (const auto& c : snap.clients) {
      std::string name = Printable(c.name, sizeof c.name);
      if (c.is_self) name += " (this)";
      fprintf(out,
              "  %5" PRIu64 " %-20s %8d %8" PRIu64 " %8" PRIu64 " %8" PRIu64 " %8" PRIu64
              " %9s %9" PRIu64 " %9s\n",
              c.client_id, name.c_str(), c.pid, c.objects_created, c.creating_count,
              c.readers_held, c.pins_held, BytesShort(c.bytes_held).c_str(), c.requests,
              Duration(snap.taken_ns - c.connect_time_ns).c_str());
    }
  }
}

void PrintJson(const Snapshot& snap, const std::string& socket, FILE* out) {
  Derived d = Derive(snap.stats);
  Json doc = Json::object();
  doc["socket"] = socket;
  doc["library_version"] = store_version_string();
  doc["time_ns"] = snap.taken_ns;
  doc["stats"] = JsonStats(snap.stats);
  doc["derived"] = Json{
      {"free_bytes", d.free_bytes},
      {"used_ratio", d.used_ratio},
      {"evictable_exact", d.evictable_exact},
      {"evictable_bytes_min", d.evictable_min},
      {"evictable_bytes_max", d.evictable_max},
      {"held_bytes", d.held_bytes},
      {"spill_write_bytes_per_second", d.spill_write_bps},
      {"restore_read_bytes_per_second", d.restore_read_bps},
  };
  Json devices = Json::array();
  for (const auto& g : snap.gpus) {
    devices.push_back(Json{
        {"device", g.device},
        {"capacity_bytes", g.capacity_bytes},
        {"used_bytes", g.used_bytes},
        {"object_count", g.object_count},
        {"chunks", g.chunks},
        {"chunk_size", g.chunk_size},
        {"largest_free_bytes", g.largest_free_bytes},
    });
  }
  doc["gpu"] = Json{{"backend", GpuBackendName(snap.gpu_backend)}, {"devices", devices}};
  if (snap.has_clients) {
    Json clients = Json::array();
    for (const auto& c : snap.clients) clients.push_back(JsonClient(c));
    doc["clients"] = std::move(clients);
  }
  if (snap.page.limit > 0) {  // a page was asked for
    const char* sort = SortName(snap.page.sort);
    Json page = Json::array();
    for (const auto& o : snap.objects) page.push_back(JsonObject(o));
    doc["objects"] = Json{
        {"sort", sort ? sort : "?"},
        {"descending", snap.page.descending},
        {"offset", snap.page.offset},
        {"limit", snap.page.limit},
        {"id_prefix", snap.page.prefix},
        {"matching", snap.objects_matching},
        {"page", std::move(page)},
    };
  }
  WriteJson(doc, out);
}

void PrintInfoSections(const Snapshot& snap, FILE* out) {
  const store_stats& s = snap.stats;
  Derived d = Derive(s);
  auto u = [&](const char* k, uint64_t v) { fprintf(out, "%s:%" PRIu64 "\n", k, v); };
  auto h = [&](const char* k, uint64_t v) { fprintf(out, "%s:%s\n", k, BytesShort(v).c_str()); };

  fputs("# memory\n", out);
  u("capacity_bytes", s.capacity_bytes);
  h("capacity_human", s.capacity_bytes);
  u("used_bytes", s.used_bytes);
  h("used_human", s.used_bytes);
  fprintf(out, "used_ratio:%.4f\n", d.used_ratio);
  u("free_bytes", d.free_bytes);
  u("largest_free_bytes", s.largest_free_bytes);
  // 0 = all free memory is one block; near 1 = free memory is in pieces too small to use.
  double frag = d.free_bytes ? 1.0 - static_cast<double>(std::min(s.largest_free_bytes,
                                                                  d.free_bytes)) /
                                         static_cast<double>(d.free_bytes)
                             : 0.0;
  fprintf(out, "fragmentation_ratio:%.4f\n", frag);
  u("resident_bytes", s.resident_bytes);
  u("pinned_bytes", s.pinned_bytes);
  u("open_bytes", s.open_bytes);
  u("evictable_bytes", d.evictable_min);
  u("evictable_exact", d.evictable_exact ? 1 : 0);
  if (!d.evictable_exact) u("evictable_bytes_max", d.evictable_max);
  u("when_full_drop", s.when_full_drop);
  fputc('\n', out);

  fputs("# objects\n", out);
  u("objects", s.object_count);
  u("creating_count", s.created_count);
  u("creating_bytes", s.created_bytes);
  u("sealed_count", s.sealed_count);
  u("sealed_bytes", s.sealed_bytes);
  u("open_count", s.open_count);
  u("open_bytes", s.open_bytes);
  u("pinned_count", s.pinned_count);
  u("pinned_bytes", s.pinned_bytes);
  u("deleted_pending_count", s.deleted_pending_count);
  u("deleted_pending_bytes", s.deleted_pending_bytes);
  u("waiting_gets", s.waiting_gets);
  u("waiting_creates", s.waiting_creates);
  fputc('\n', out);

  fputs("# clients\n", out);
  u("connected_clients", s.client_count);
  if (snap.has_clients) {
    for (size_t i = 0; i < snap.clients.size(); i++) {
      const auto& c = snap.clients[i];
      std::string name = Printable(c.name, sizeof c.name);
      for (char& ch : name) {
        if (ch == ',' || ch == '=' || ch == ' ' || ch == ':') ch = '_';
      }
      fprintf(out,
              "client%zu:id=%" PRIu64 ",name=%s,pid=%d,uid=%u,objects_created=%" PRIu64
              ",creating=%" PRIu64 ",readers=%" PRIu64 ",pins=%" PRIu64 ",bytes_held=%" PRIu64
              ",requests=%" PRIu64 ",connected_seconds=%" PRId64 ",self=%d\n",
              i, c.client_id, name.c_str(), c.pid, c.uid, c.objects_created, c.creating_count,
              c.readers_held, c.pins_held, c.bytes_held, c.requests,
              std::max<int64_t>(0, (snap.taken_ns - c.connect_time_ns) / 1000000000),
              c.is_self ? 1 : 0);
    }
  }
  fputc('\n', out);

  fputs("# operations\n", out);
  u("server_pid", static_cast<uint64_t>(s.server_pid));
  u("uptime_seconds", s.uptime_ns / 1000000000);
  u("total_creates", s.total_creates);
  u("total_seals", s.total_seals);
  u("total_gets", s.total_gets);
  u("total_releases", s.total_releases);
  u("total_deletes", s.total_deletes);
  u("total_aborts", s.total_aborts);
  u("total_full", s.total_full);
  u("total_dropped_objects", s.total_dropped_objects);
  u("total_dropped_bytes", s.total_dropped_bytes);
  u("total_contains", s.total_contains);
  u("total_infos", s.total_infos);
  u("total_lists", s.total_lists);
  u("total_pins", s.total_pins);
  u("total_unpins", s.total_unpins);
  u("total_requests", s.total_requests);
  u("total_bad_requests", s.total_bad_requests);
  fputc('\n', out);

  fputs("# spill\n", out);
  u("spill_enabled", s.spill_enabled);
  u("spilling_count", s.spilling_count);
  u("spilling_bytes", s.spilling_bytes);
  u("spilled_count", s.spilled_count);
  u("spilled_bytes", s.spilled_bytes);
  u("restoring_count", s.restoring_count);
  u("restoring_bytes", s.restoring_bytes);
  u("spill_files", s.spill_files);
  u("spill_disk_bytes", s.spill_disk_bytes);
  u("spill_dead_bytes", s.spill_dead_bytes);
  u("total_spilled_objects", s.total_spilled_objects);
  u("total_spilled_bytes", s.total_spilled_bytes);
  u("total_restored_objects", s.total_restored_objects);
  u("total_restored_bytes", s.total_restored_bytes);
  fprintf(out, "spill_write_bytes_per_second:%.0f\n", d.spill_write_bps);
  fprintf(out, "restore_read_bytes_per_second:%.0f\n", d.restore_read_bps);
  u("total_spill_failures", s.total_spill_failures);
  u("total_restore_failures", s.total_restore_failures);
  u("total_compactions", s.total_compactions);
  u("total_compact_bytes_copied", s.total_compact_bytes_copied);
  u("total_compact_bytes_freed", s.total_compact_bytes_freed);
  u("total_compact_failures", s.total_compact_failures);
  u("spill_undurable_deletes", s.spill_undurable_deletes);
  fputc('\n', out);

  // Each limit (a flag of the store), what it watches now, and how often it was hit.
  fputs("# limits\n", out);
  u("limit_client_waiting", s.limit_client_waiting);
  u("refused_client_waiting", s.refused_client_waiting);
  u("waiting_bytes", s.waiting_bytes);
  u("limit_waiting_bytes", s.limit_waiting_bytes);
  u("refused_waiting_bytes", s.refused_waiting_bytes);
  u("limit_client_backlog", s.limit_client_backlog);
  u("closed_client_backlog", s.closed_client_backlog);
  u("backlog_bytes", s.backlog_bytes);
  u("limit_backlog", s.limit_backlog);
  u("closed_backlog", s.closed_backlog);
  u("partial_bytes", s.partial_bytes);
  u("limit_partial_bytes", s.limit_partial_bytes);
  u("closed_partial", s.closed_partial);
  u("limit_clients", s.limit_clients);
  u("refused_clients", s.refused_clients);
  u("fd_limit", s.fd_limit);
  u("accept_failures", s.accept_failures);
  u("pending_fds", s.pending_fds);
  u("limit_client_gpu_fds", s.limit_client_gpu_fds);
  u("refused_gpu_fds", s.refused_gpu_fds);
  u("limit_objects", s.limit_objects);
  u("refused_objects", s.refused_objects);
  fputc('\n', out);

  fputs("# gpu\n", out);
  fprintf(out, "gpu_backend:%s\n", GpuBackendName(snap.gpu_backend));
  for (const auto& g : snap.gpus) {
    fprintf(out,
            "gpu%d:capacity_bytes=%" PRIu64 ",used_bytes=%" PRIu64 ",objects=%" PRIu64
            ",chunks=%u,chunk_size=%" PRIu64 ",largest_free_bytes=%" PRIu64 "\n",
            g.device, g.capacity_bytes, g.used_bytes, g.object_count, g.chunks, g.chunk_size,
            g.largest_free_bytes);
  }
}

void PrintObjectsJson(const std::vector<store_object_info>& objects, uint64_t total, FILE* out) {
  Json list = Json::array();
  for (const auto& o : objects) list.push_back(JsonObject(o));
  WriteJson(Json{{"total", total}, {"objects", std::move(list)}}, out);
}

int PrintInfo(const char* socket_path, FILE* out) {
  std::string path = socket_path ? socket_path : DefaultSocketPath();
  store_connect_options co = STORE_CONNECT_OPTIONS_INIT;
  co.client_name = "store info";
  store_client* client = nullptr;
  int rc = store_client_connect(&client, path.c_str(), &co);
  if (rc != STORE_OK) {
    fprintf(stderr, "%s\n", ConnectError(path).c_str());
    return 1;
  }
  PageRequest none;
  none.limit = 0;
  Snapshot snap;
  rc = Fetch(client, none, true, &snap);
  if (rc != STORE_OK) {
    fprintf(stderr, "store at %s: %s\n", path.c_str(), store_last_error_message());
    store_client_free(client);
    return 1;
  }
  store_client_free(client);
  PrintInfoSections(snap, out);
  return 0;
}

}  // namespace store::report
