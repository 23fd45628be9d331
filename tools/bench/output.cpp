// output.cpp - store-bench's output: a figure's text lines as it is added, the header before
// the first figure, and the one JSON document (--json) after the last.
//
// Owns: nothing; the results live in the Run.
// Called by: every section (Add), Main() in tools/store_bench.cpp (GetMachine, PrintHeader,
// PrintJson) and spill.cpp (ReadFirstLine).
// Threads: one.
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <string>

#include <nlohmann/json.hpp>

#include "bench.h"

namespace store::bench {

namespace {

std::string FormatValue(double v, const std::string& unit) {
  char buf[64];
  if (unit == "GB/s" || unit == "ms") {
    snprintf(buf, sizeof buf, "%.2f", v);
  } else if (unit == "of free" || unit == "disk/live") {
    snprintf(buf, sizeof buf, "%.4f", v);
  } else {
    snprintf(buf, sizeof buf, "%.0f", v);
  }
  return buf;
}

std::string Spread(const Series& s) {
  if (s.v.size() <= 1) return "(1 sample)";
  return "(min " + FormatValue(s.Min(), s.unit) + " max " + FormatValue(s.Max(), s.unit) + ")";
}

double Ratio(const Series& fig, const Series& lim) {
  double l = lim.Median();
  return l > 0 ? fig.Median() / l : 0;
}

void PrintLine(const Run& run, const Result& r) {
  if (run.set.json) return;
  if (r.skipped) {
    printf("%-16s skipped: %s\n", r.name.c_str(), r.reason.c_str());
    fflush(stdout);
    return;
  }
  const Series& f = r.figure;
  printf("%-16s %10s %-9s %-32s", r.name.c_str(), FormatValue(f.Median(), f.unit).c_str(),
         f.unit.c_str(), Spread(f).c_str());
  for (const Series& l : r.limits) {
    printf("   limit %-14s %10s %-6s %-32s ratio %.2f", l.name.c_str(),
           FormatValue(l.Median(), l.unit).c_str(), l.unit.c_str(), Spread(l).c_str(),
           Ratio(f, l));
  }
  printf("\n");
  for (const Series& a : r.also) {
    printf("%-16s   also: %s %s %s %s\n", "", a.name.c_str(),
           FormatValue(a.Median(), a.unit).c_str(), a.unit.c_str(), Spread(a).c_str());
  }
  if (!r.note.empty()) printf("%-16s   note: %s\n", "", r.note.c_str());
  fflush(stdout);
}

using Json = nlohmann::ordered_json;  // keys in the order they are set

Json SeriesJson(const Series& s) {
  return Json{{"name", s.name}, {"unit", s.unit},   {"median", s.Median()},
              {"min", s.Min()}, {"max", s.Max()}, {"samples", s.v}};
}

}  // namespace

void Add(Run& run, Result r) {
  PrintLine(run, r);
  run.results.push_back(std::move(r));
}

void PrintHeader(const Run& run, const Machine& m, const store_stats& st,
                 uint64_t creates_before) {
  printf("store-bench %s   %s mode, median of %d rounds (min and max in parentheses)",
         store_version_string(), run.set.quick ? "quick" : "full", run.set.rounds);
  if (Wanted(run, "spill") && !run.set.spill_dir.empty()) {
    printf("; spill figures: %d round%s", run.set.spill_rounds,
           run.set.spill_rounds == 1 ? "" : "s");
  }
  printf("\n");
  printf("machine: nproc %d, kernel %s, cpu %s, transparent_hugepage %s\n", m.nproc,
         m.kernel.c_str(), m.cpu.empty() ? "?" : m.cpu.c_str(),
         m.thp.empty() ? "?" : m.thp.c_str());
  printf("store:   socket %s, server pid %d, capacity %.1f MiB, used %.1f MiB, %llu objects, "
         "%llu creates before this run\n",
         run.set.Socket() ? run.set.Socket() : "(default)", st.server_pid,
         static_cast<double>(st.capacity_bytes) / (1 << 20),
         static_cast<double>(st.used_bytes) / (1 << 20),
         static_cast<unsigned long long>(st.object_count),
         static_cast<unsigned long long>(creates_before));
  printf("ids:     prefix %s\n\n", PrefixHex(run).c_str());
  fflush(stdout);
}

std::string ReadFirstLine(const char* path, const char* starts_with) {
  FILE* f = fopen(path, "r");
  if (!f) return "";
  char line[512];
  std::string out;
  while (fgets(line, sizeof line, f)) {
    if (!starts_with || strncmp(line, starts_with, strlen(starts_with)) == 0) {
      out = line;
      break;
    }
  }
  fclose(f);
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  if (starts_with) {
    size_t colon = out.find(':');
    out = colon == std::string::npos ? "" : out.substr(colon + 1);
    while (!out.empty() && out.front() == ' ') out.erase(0, 1);
  }
  return out;
}

Machine GetMachine() {
  Machine m;
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) {
    m.nproc = CPU_COUNT(&set);
  } else {
    m.nproc = static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
  }
  struct utsname u;
  if (uname(&u) == 0) m.kernel = std::string(u.sysname) + " " + u.release + " " + u.machine;
  m.cpu = ReadFirstLine("/proc/cpuinfo", "model name");
  m.thp = ReadFirstLine("/sys/kernel/mm/transparent_hugepage/enabled", nullptr);
  return m;
}

// One JSON document on stdout. Figures that are not numbers (NaN, infinities) print as null.
void PrintJson(const Run& run, const Machine& m, const store_stats& st, uint64_t creates_before,
               double elapsed, long left) {
  Json figures = Json::array();
  for (const Result& r : run.results) {
    Json f{{"name", r.name}, {"description", r.description}, {"skipped", r.skipped}};
    if (r.skipped) {
      f["reason"] = r.reason;
      figures.push_back(std::move(f));
      continue;
    }
    f["figure"] = SeriesJson(r.figure);
    Json limits = Json::array();
    for (const Series& l : r.limits) {
      Json j = SeriesJson(l);
      j["ratio"] = Ratio(r.figure, l);
      limits.push_back(std::move(j));
    }
    f["limits"] = std::move(limits);
    if (!r.also.empty()) {
      Json also = Json::array();
      for (const Series& a : r.also) also.push_back(SeriesJson(a));
      f["also"] = std::move(also);
    }
    if (!r.note.empty()) f["note"] = r.note;
    figures.push_back(std::move(f));
  }
  Json doc{
      {"tool", "store-bench"},
      {"library_version", store_version_string()},
      {"machine",
       {{"nproc", m.nproc}, {"kernel", m.kernel}, {"cpu", m.cpu}, {"transparent_hugepage", m.thp}}},
      {"store",
       {{"socket", run.set.Socket() ? Json(run.set.Socket()) : Json(nullptr)},
        {"server_pid", st.server_pid},
        {"capacity_bytes", st.capacity_bytes},
        {"used_bytes_at_start", st.used_bytes},
        {"objects_at_start", st.object_count},
        {"creates_before_run", creates_before}}},
      {"mode", run.set.quick ? "quick" : "full"},
      {"rounds", run.set.rounds},
      {"spill_rounds", run.set.spill_rounds},
      {"spill_dir", run.set.spill_dir.empty() ? Json(nullptr) : Json(run.set.spill_dir)},
      {"id_prefix", PrefixHex(run)},
      {"figures", std::move(figures)},
      {"cleanup", {{"created", run.created}, {"deleted", run.deleted}, {"left", left}}},
      {"elapsed_s", elapsed},
  };
  // Bytes that are not UTF-8 (a kernel or CPU name could hold some) become U+FFFD.
  std::string text = doc.dump(2, ' ', false, Json::error_handler_t::replace);
  text += '\n';
  fputs(text.c_str(), stdout);
}

}  // namespace store::bench
