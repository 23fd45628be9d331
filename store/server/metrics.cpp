// metrics.cpp - the metrics file (--metrics-file): the figures of stats in the Prometheus text
// format, rewritten every --metrics-interval-ms from a loop timer.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "server/log.h"
#include "server/server.h"
#include "server/server_internal.h"
#include "server/util.h"

namespace store {

// ------------------------------------------------------------------------------------------
// Metrics file: the same figures as stats, in the Prometheus text format, replaced atomically
// (write a temporary file, then rename) so a node exporter's textfile collector never reads half.

void Server::OnMetricsTimer(uv_timer_t* t) { static_cast<Server*>(t->data)->WriteMetrics(); }

void Server::WriteMetrics() {
  const auto& t = table_.counters();
  std::string out;
  out.reserve(4096);
  auto metric = [&](const char* name, const char* type, const char* help, uint64_t value,
                    const char* labels = nullptr) {
    if (!labels || std::strstr(labels, "first")) {
      out += "# HELP store_";
      out += name;
      out += ' ';
      out += help;
      out += "\n# TYPE store_";
      out += name;
      out += ' ';
      out += type;
      out += '\n';
    }
    out += "store_";
    out += name;
    if (labels) {
      const char* l = std::strchr(labels, '{');
      out += l ? l : "";
    }
    out += ' ';
    out += std::to_string(value);
    out += '\n';
  };
  metric("capacity_bytes", "gauge", "Shared memory for objects.", region_->capacity());
  metric("used_bytes", "gauge", "Bytes allocated to objects.", region_->allocated_bytes());
  metric("resident_bytes", "gauge", "Memory the region holds.", region_->ResidentBytes());
  metric("objects", "gauge", "Objects in the table.", t.objects);
  metric("clients", "gauge", "Connected clients.", clients_.size());
  metric("objects_by_state", "gauge", "Objects by state.", t.created_count,
         "first{state=\"created\"}");
  metric("objects_by_state", "gauge", "", t.sealed_count, "{state=\"sealed\"}");
  metric("objects_by_state", "gauge", "", t.open_count, "{state=\"open\"}");
  metric("objects_by_state", "gauge", "", t.pinned_count, "{state=\"pinned\"}");
  metric("objects_by_state", "gauge", "", t.deleted_pending_count, "{state=\"deleted_pending\"}");
  metric("bytes_by_state", "gauge", "Object bytes by state.", t.created_bytes,
         "first{state=\"created\"}");
  metric("bytes_by_state", "gauge", "", t.sealed_bytes, "{state=\"sealed\"}");
  metric("bytes_by_state", "gauge", "", t.open_bytes, "{state=\"open\"}");
  metric("bytes_by_state", "gauge", "", t.pinned_bytes, "{state=\"pinned\"}");
  metric("bytes_by_state", "gauge", "", t.deleted_pending_bytes, "{state=\"deleted_pending\"}");
  metric("waiting_gets", "gauge", "Get requests waiting for a seal.", waiting_gets_);
  metric("waiting_creates", "gauge", "Create requests waiting for space.",
         create_queue_.size() + gpu_waiting_);
  metric("operations_total", "counter", "Operations since start.", totals_.creates,
         "first{op=\"create\"}");
  metric("operations_total", "counter", "", totals_.seals, "{op=\"seal\"}");
  metric("operations_total", "counter", "", totals_.gets, "{op=\"get\"}");
  metric("operations_total", "counter", "", totals_.releases, "{op=\"release\"}");
  metric("operations_total", "counter", "", totals_.deletes, "{op=\"delete\"}");
  metric("operations_total", "counter", "", totals_.aborts, "{op=\"abort\"}");
  metric("requests_total", "counter", "Requests from all clients.", totals_.requests);
  metric("bad_requests_total", "counter", "Requests refused as protocol errors.",
         totals_.bad_requests);
  metric("full_total", "counter", "Creates refused for lack of space.", totals_.full);
  metric("when_full_drop", "gauge", "1 when unused objects are dropped to make room.",
         DropMode() ? 1 : 0);
  metric("dropped_objects_total", "counter", "Objects dropped to make room.",
         drop_totals_.objects);
  metric("dropped_bytes_total", "counter", "Data and metadata bytes of the objects dropped.",
         drop_totals_.bytes);
  // Spilling (all 0 without --spill-dir): what is on disk now, and the totals since start.
  uint64_t disk = 0, dead = 0;
  spiller_.DiskBytes(&disk, &dead);
  const Spiller::Totals& spill = spiller_.totals();
  metric("spill_enabled", "gauge", "1 when the store spills to disk.", spiller_.enabled() ? 1 : 0);
  metric("spilled_objects", "gauge", "Objects whose only copy is on disk.", t.spilled_count);
  metric("spilled_bytes", "gauge", "Their bytes.", t.spilled_bytes);
  metric("spill_files", "gauge", "Spill files on disk.", spiller_.files().size());
  metric("spill_disk_bytes", "gauge", "Bytes of the spill files.", disk);
  metric("spill_dead_bytes", "gauge", "Of which records of deleted objects.", dead);
  metric("spill_undurable_deletes", "gauge",
         "Deletes of spilled objects whose record's write failed and is not yet done.",
         spiller_.undurable_deletes());
  metric("spilled_objects_total", "counter", "Objects written to spill files.", spill.objects);
  metric("spilled_bytes_total", "counter", "Record bytes written to spill files.", spill.bytes);
  metric("restored_objects_total", "counter", "Objects read back from spill files.",
         spill.restored_objects);
  metric("restored_bytes_total", "counter", "Record bytes read back.", spill.restored_bytes);
  metric("spill_failures_total", "counter", "Spill files that could not be written (nothing lost).",
         spill.failures);
  metric("restore_failures_total", "counter", "Restores that failed (I/O error or corrupt data).",
         spill.restore_failures);
  // Compaction of spill files (--spill-compact): how much disk it gave back.
  const Spiller::CompactTotals& compact = spiller_.compact_totals();
  metric("spill_compactions_total", "counter", "Spill files rewritten without their dead records.",
         compact.files);
  metric("spill_compact_bytes_copied_total", "counter",
         "Bytes written into the spill files compactions made.", compact.bytes_copied);
  metric("spill_compact_bytes_freed_total", "counter",
         "Disk bytes compactions gave back (old file size minus new).", compact.bytes_freed);
  metric("spill_compact_failures_total", "counter",
         "Compactions that failed (the old spill file stays).", compact.failures);
  // Limits: the totals they watch, and how often each was hit (see server/limits.cpp).
  metric("limit_usage", "gauge", "What the limits watch, now.", waiting_bytes_,
         "first{what=\"waiting_bytes\"}");
  metric("limit_usage", "gauge", "", backlog_bytes_, "{what=\"backlog_bytes\"}");
  metric("limit_usage", "gauge", "", partial_bytes_, "{what=\"partial_bytes\"}");
  metric("limit_usage", "gauge", "", pending_fds_, "{what=\"pending_fds\"}");
  metric("limit_usage", "gauge", "", table_.instances(), "{what=\"objects\"}");
  metric("limit_hits_total", "counter", "Requests refused or clients closed by a limit.",
         limits_[kLimitClientWaiting].hits, "first{limit=\"max_client_waiting\"}");
  metric("limit_hits_total", "counter", "", limits_[kLimitWaitingBytes].hits,
         "{limit=\"max_waiting_bytes\"}");
  metric("limit_hits_total", "counter", "", limits_[kLimitClientBacklog].hits,
         "{limit=\"max_client_backlog\"}");
  metric("limit_hits_total", "counter", "", limits_[kLimitBacklog].hits,
         "{limit=\"max_backlog\"}");
  metric("limit_hits_total", "counter", "", limits_[kLimitPartial].hits,
         "{limit=\"max_partial_bytes\"}");
  metric("limit_hits_total", "counter", "", limits_[kLimitClients].hits,
         "{limit=\"max_clients\"}");
  metric("limit_hits_total", "counter", "", limits_[kLimitAccept].hits,
         "{limit=\"accept\"}");
  metric("limit_hits_total", "counter", "", limits_[kLimitGpuFds].hits,
         "{limit=\"max_client_gpu_fds\"}");
  metric("limit_hits_total", "counter", "", limits_[kLimitObjects].hits,
         "{limit=\"max_objects\"}");
  // GPU objects, per device (only when the store serves them).
  auto per_gpu = [&](const char* name, const char* help, auto value) {
    for (size_t i = 0; i < gpus_.size(); i++) {
      std::string l = std::string(i == 0 ? "first" : "") + "{device=\"" +
                      std::to_string(gpus_[i]->info.ordinal) + "\"}";
      metric(name, "gauge", help, value(*gpus_[i]), l.c_str());
    }
  };
  per_gpu("gpu_capacity_bytes", "Device memory GPU objects may take.",
          [](const GpuDevice& d) { return d.alloc->capacity(); });
  per_gpu("gpu_used_bytes", "Device memory allocated to GPU objects.",
          [](const GpuDevice& d) { return d.alloc->used_bytes(); });
  per_gpu("gpu_objects", "GPU objects on the device.",
          [](const GpuDevice& d) { return d.objects; });

  std::string tmp = options_.metrics_file + ".tmp";
  // A new file, never one found there: the directory may be one other users write to (a node
  // exporter's), and a link planted as tmp would have the store write through it.
  unlink(tmp.c_str());
  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
  bool ok = fd >= 0;
  size_t done = 0;
  while (ok && done < out.size()) {
    ssize_t n = write(fd, out.data() + done, out.size() - done);
    if (n < 0 && errno == EINTR) continue;
    ok = n > 0;
    if (ok) done += static_cast<size_t>(n);
  }
  if (fd >= 0) close(fd);
  ok = ok && rename(tmp.c_str(), options_.metrics_file.c_str()) == 0;
  if (!ok) {
    if (!metrics_failing_) {
      LOG_WARN("cannot write the metrics file %s: %s", options_.metrics_file.c_str(),
               std::strerror(errno));
    }
    metrics_failing_ = true;
    unlink(tmp.c_str());
  } else {
    metrics_failing_ = false;
  }
}

}  // namespace store
