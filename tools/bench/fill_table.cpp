// fill_table.cpp - the figures of a full store and a big table: fill_1m_64m, fill_16m_256m and
// fill_64k_4m (how much of the free memory holds data), and table_stats, table_page,
// table_put, table_get and table_memory (one request with very many objects in the table).
//
// Owns: nothing beyond the objects a figure makes, which it deletes before it returns.
// Called by: Main() in tools/store_bench.cpp.
// Threads: one.
#include <stdio.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "bench.h"

namespace store::bench {

namespace {

// Private anonymous memory of a process (its heap), from /proc/PID/smaps_rollup; 0 if unknown.
uint64_t AnonymousBytes(int pid) {
  std::string path = "/proc/" + std::to_string(pid) + "/smaps_rollup";
  FILE* f = fopen(path.c_str(), "r");
  if (!f) return 0;
  char line[256];
  uint64_t kb = 0;
  while (fgets(line, sizeof line, f)) {
    unsigned long long v;
    if (sscanf(line, "Anonymous: %llu kB", &v) == 1) kb = v;
  }
  fclose(f);
  return kb * 1024;
}

}  // namespace

// How much of the free memory holds data when it is filled with objects of random sizes, log-
// uniform in [lo, hi]: creates (sealed without writing, and pinned so that a store that spills
// cannot make room) until 20 in a row do not fit, per round; the objects go after each round.
void FillFigure(Run& run, const char* name, uint64_t lo, uint64_t hi) {
  Result r{name,
           "data / free memory, filled with log-uniform sizes in " + std::to_string(lo >> 10) +
               " KiB .. " + std::to_string(hi >> 10) + " KiB until 20 creates in a row fail",
           {}, {}, false, "", "", {}};
  r.figure = Series{name, "of free", {}};
  r.limits.push_back(Series{"all_data", "of free", {}});
  std::mt19937_64 rng(lo ^ (hi << 7) ^ 0x5eed);
  std::uniform_real_distribution<double> u(std::log(static_cast<double>(lo)),
                                           std::log(static_cast<double>(hi)));
  const int rounds = run.set.quick ? 1 : 3;
  for (int round = 0; round < rounds; round++) {
    store_stats st = Stats(run);
    const uint64_t free_bytes = st.capacity_bytes - st.used_bytes;
    const uint64_t first = run.next_id;
    uint64_t data = 0;
    for (int misses = 0; misses < 20;) {
      uint64_t size = static_cast<uint64_t>(std::exp(u(rng)));
      store_object_id id = MakeId(run, run.next_id);
      store_create_options o = STORE_CREATE_OPTIONS_INIT;
      o.timeout_ms = 0;
      store_writer* w = nullptr;
      int rc = store_create(run.client, &w, &id, size, &o);
      if (rc == STORE_ENOSPACE || rc == STORE_EINVAL) {
        misses++;
        continue;
      }
      Check(run, rc, "store_create of a fill object");
      Check(run, store_writer_seal(w), "store_writer_seal of a fill object");
      run.next_id++;
      run.created++;
      Check(run, store_pin(run.client, &id), "store_pin of a fill object");
      data += size;
      misses = 0;
      CheckStop(run);
    }
    for (uint64_t n = first; n < run.next_id; n++) {
      store_object_id id = MakeId(run, n);
      Check(run, store_unpin(run.client, &id), "store_unpin");
    }
    DeleteRange(run, first, run.next_id);
    r.figure.v.push_back(free_bytes ? static_cast<double>(data) / static_cast<double>(free_bytes) : 0);
    r.limits[0].v.push_back(1.0);
  }
  Add(run, std::move(r));
}

// The table figures: what one request costs with few and with very many objects in the table
// (stats, a sorted page of 50, a put, a get), and the server's memory per object.
void TableFigures(Run& run) {
  const uint64_t big = run.set.quick ? 100000 : 1000000;
  const uint64_t small = 10000;
  store_stats st = Stats(run);
  uint64_t need = big * 192;  // 16-byte objects take 64-byte size classes; generous bound
  if (st.capacity_bytes - st.used_bytes < need) {
    Result r;
    r.name = "table";
    r.skipped = true;
    r.reason = "needs " + std::to_string(need >> 20) + " MiB of free store memory";
    Add(run, std::move(r));
    return;
  }
  uint64_t first = run.next_id;
  std::vector<store_object_id> ids;
  std::vector<const void*> datas;
  std::vector<uint64_t> sizes;
  static const char payload[16] = "table-figure-16";
  uint64_t anon_before = AnonymousBytes(st.server_pid);
  auto fill_to = [&](uint64_t n) {
    while (ids.size() < n) {
      size_t k = static_cast<size_t>(std::min<uint64_t>(n - ids.size(), 10000));
      std::vector<store_object_id> batch;
      for (size_t i = 0; i < k; i++) batch.push_back(MakeId(run, run.next_id++));
      datas.assign(k, payload);
      sizes.assign(k, sizeof payload);
      size_t done = 0;
      Check(run,
            store_put_many(run.client, batch.data(), datas.data(), sizes.data(), k, nullptr,
                           &done),
            "store_put_many for the table figures");
      run.created += done;
      ids.insert(ids.end(), batch.begin(), batch.end());
      CheckStop(run);
    }
  };
  auto median_ms = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0 : v[v.size() / 2];
  };
  struct AtSize {
    double stats_ms, page_ms, middle_ms, put_ops, get_ops;
  };
  auto measure = [&]() {
    AtSize a{};
    std::vector<double> ts, tp, tm;
    for (int i = 0; i < 9; i++) {
      store_stats x = STORE_STATS_INIT;
      double t0 = Now();
      Check(run, store_stats_get(run.client, &x), "store_stats_get");
      ts.push_back((Now() - t0) * 1e3);
      store_list_options lo = STORE_LIST_OPTIONS_INIT;
      lo.sort = STORE_SORT_SIZE;
      lo.descending = 1;
      lo.limit = 50;
      store_object_info* page = nullptr;
      size_t n = 0;
      t0 = Now();
      Check(run, store_list_page(run.client, &lo, &page, sizeof *page, &n, nullptr),
            "store_list_page");
      tp.push_back((Now() - t0) * 1e3);
      store_free(page);
      lo.offset = ids.size() / 2;  // the deepest page there is
      t0 = Now();
      Check(run, store_list_page(run.client, &lo, &page, sizeof *page, &n, nullptr),
            "store_list_page (middle)");
      tm.push_back((Now() - t0) * 1e3);
      store_free(page);
    }
    a.stats_ms = median_ms(ts);
    a.page_ms = median_ms(tp);
    a.middle_ms = median_ms(tm);
    // Puts and gets of new objects while the table holds what it holds.
    const int k = run.set.quick ? 2000 : 10000;
    std::vector<store_object_id> extra;
    double t0 = Now();
    for (int i = 0; i < k; i++) {
      extra.push_back(MakeId(run, run.next_id++));
      Put(run, extra.back(), payload, sizeof payload, "store_put (table)");
    }
    a.put_ops = k / (Now() - t0);
    t0 = Now();
    for (int i = 0; i < k; i++) {
      store_reader* r = nullptr;
      Check(run, store_open_reader(run.client, &r, &extra[static_cast<size_t>(i)], 0),
            "store_open_reader (table)");
      store_reader_close(r);
    }
    a.get_ops = k / (Now() - t0);
    size_t deleted = 0;
    Check(run, store_delete_many(run.client, extra.data(), extra.size(), &deleted),
          "store_delete_many");
    run.deleted += deleted;
    return a;
  };
  Tally rtt;
  RttSlice(run, 0.2, &rtt);
  double rtt_ms = rtt.seconds / std::max<uint64_t>(1, rtt.ops) * 1e3;
  fill_to(small);
  AtSize at_small = measure();
  fill_to(big);
  uint64_t anon_after = AnonymousBytes(st.server_pid);
  AtSize at_big = measure();
  size_t deleted = 0;
  Check(run, store_delete_many(run.client, ids.data(), ids.size(), &deleted), "store_delete_many");
  run.deleted += deleted;
  (void)first;

  auto line = [&](const char* name, const char* desc, const char* unit, double v_small,
                  double v_big, const char* limit_name, double limit) {
    Result r;
    r.name = name;
    r.description = desc;
    r.figure = Series{name, unit, {v_big}};
    r.limits.push_back(Series{limit_name, unit, {limit}});
    r.also.push_back(Series{std::string("at ") + std::to_string(small) + " objects", unit, {v_small}});
    Add(run, std::move(r));
  };
  std::string at = "with " + std::to_string(big) + " objects in the table";
  line("table_stats", ("store_stats_get latency " + at).c_str(), "ms", at_small.stats_ms,
       at_big.stats_ms, "socket_rtt", rtt_ms);
  line("table_page", ("store_list_page of 50 by size, latency " + at).c_str(), "ms",
       at_small.page_ms, at_big.page_ms, "socket_rtt", rtt_ms);
  line("table_page_middle",
       ("store_list_page of 50 by size at the middle of the order, latency " + at).c_str(), "ms",
       at_small.middle_ms, at_big.middle_ms, "socket_rtt", rtt_ms);
  line("table_put", ("store_put of 16 B " + at).c_str(), "ops/s", at_small.put_ops,
       at_big.put_ops, "socket_rtt", 1e3 / rtt_ms);
  line("table_get", ("store_open_reader + close " + at).c_str(), "ops/s", at_small.get_ops,
       at_big.get_ops, "socket_rtt", 1e3 / rtt_ms);
  // Memory per object has no limit to measure against: the goal is 200 bytes.
  Result mem;
  mem.name = "table_memory";
  mem.description = "growth of the server's heap (anonymous memory) per object while " +
                    std::to_string(big) + " objects of 16 B were added";
  if (anon_before == 0 || anon_after <= anon_before) {
    mem.skipped = true;
    mem.reason = "the server's /proc/PID/smaps_rollup cannot be read (another user?)";
  } else {
    const double grew = static_cast<double>(anon_after - anon_before);
    mem.figure = Series{mem.name, "B/object", {grew / static_cast<double>(big)}};
    char note[160];
    snprintf(note, sizeof note,
             "server heap grew %.1f MiB (table, indexes, allocator); indexes that earlier figures "
             "grew are not counted again",
             grew / 1048576.0);
    mem.note = note;
  }
  Add(run, std::move(mem));
}

}  // namespace store::bench
