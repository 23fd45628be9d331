// small_ops.cpp - the small-object figures: small_put, small_write, small_get, idle_put,
// batch_get and batch_put, each against the 64 B socket round trip (limits.cpp).
//
// Owns: nothing beyond the objects a figure makes, which it deletes before it returns.
// Called by: Main() in tools/store_bench.cpp; PutSmallSet also by clients.cpp.
// Threads: one.
#include <string.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "bench.h"

namespace store::bench {

namespace {

// Runs a small-object figure: one warm-up round, then the measured rounds. A round alternates
// the round trip limit and the figure in short slices, so both see the same machine load.
// slice(seconds, tally) runs the figure for about that long; after_round() runs untimed.
template <class Slice, class After>
void RunSmallRounds(Run& run, Result* r, Slice&& slice, After&& after_round) {
  constexpr int kSlices = 5;
  for (int round = -1; round < run.set.rounds; round++) {  // round -1 warms up, not counted
    double dur = (round < 0 ? run.set.round_s / 4 : run.set.round_s) / kSlices;
    Tally rtt, rtt_poll, fig;
    for (int s = 0; s < kSlices; s++) {
      RttSlice(run, dur, &rtt);
      RttSlice(run, dur, &rtt_poll, true);
      slice(dur, &fig);
    }
    after_round(round >= 0);
    if (round >= 0) {
      r->limits[0].v.push_back(rtt.Rate());
      r->limits[1].v.push_back(rtt_poll.Rate());
      r->figure.v.push_back(fig.Rate());
    }
  }
}

}  // namespace

void SmallPut(Run& run) {
  Result r{"small_put", "store_put of 64 B objects, one client, synchronous",
           {}, {}, false, "", "", {}};
  r.figure = Series{"small_put", "ops/s", {}};
  r.limits.push_back(RttSeries());
  r.limits.push_back(RttPollSeries());
  uint8_t data[kSmallSize];
  memset(data, 0xa5, sizeof data);
  uint64_t first = run.next_id;
  RunSmallRounds(run, 
      &r,
      [&](double seconds, Tally* t) {
        uint64_t start = run.next_id;
        double t0 = Now(), t1;
        do {
          store_object_id id = MakeId(run, run.next_id++);
          Put(run, id, data, sizeof data, "store_put of a 64 B object");
          CheckStop(run);
          t1 = Now();
        } while (t1 - t0 < seconds && run.next_id - first < kMaxSmallPerRound);
        t->ops += run.next_id - start;
        t->seconds += t1 - t0;
      },
      [&](bool) {
        DeleteRange(run, first, run.next_id);
        first = run.next_id;
      });
  Add(run, std::move(r));
}

// A small object written through a writer: create, write, seal. The writer is staged in this
// process and the seal creates, writes and seals in one request.
void SmallWrite(Run& run) {
  Result r{"small_write", "store_create + write + seal of 64 B objects, one client, synchronous",
           {}, {}, false, "", "", {}};
  r.figure = Series{"small_write", "ops/s", {}};
  r.limits.push_back(RttSeries());
  r.limits.push_back(RttPollSeries());
  uint8_t data[kSmallSize];
  memset(data, 0x3c, sizeof data);
  uint64_t first = run.next_id;
  RunSmallRounds(run, 
      &r,
      [&](double seconds, Tally* t) {
        uint64_t start = run.next_id;
        double t0 = Now(), t1;
        do {
          store_object_id id = MakeId(run, run.next_id++);
          store_writer* w = nullptr;
          int rc = store_create(run.client, &w, &id, sizeof data, nullptr);
          if (rc == STORE_OK) rc = store_writer_write(w, data, sizeof data);
          if (rc == STORE_OK) {
            rc = store_writer_seal(w);
          } else if (w) {
            store_writer_abort(w);
          }
          Check(run, rc, "store_create + write + seal of a 64 B object");
          run.created++;
          CheckStop(run);
          t1 = Now();
        } while (t1 - t0 < seconds && run.next_id - first < kMaxSmallPerRound);
        t->ops += run.next_id - start;
        t->seconds += t1 - t0;
      },
      [&](bool) {
        DeleteRange(run, first, run.next_id);
        first = run.next_id;
      });
  Add(run, std::move(r));
}

// One 64 B store_put (and one echo, the limit) after the client slept: what a client that calls
// now and then waits for. Each round alternates a few sleeps + echoes with as many sleeps +
// puts and keeps the median of each; the sleeps are not timed. On a VM a processor that went
// idle is slow to wake, and a process whose page tables the hypervisor must bring back pays for
// how much memory it has touched (see README, "First use").
void IdlePut(Run& run) {
  constexpr double kSleep = 0.5;
  const int pairs = run.set.quick ? 1 : 3;
  Result r{"idle_put",
           "store_put of a 64 B object after the client slept 0.5 s (the sleep not timed)",
           {}, {}, false, "", "", {}};
  r.figure = Series{"idle_put", "ms", {}};
  r.limits.push_back(Series{"socket_rtt_idle", "ms", {}});
  uint8_t data[kSmallSize];
  memset(data, 0x6b, sizeof data);
  char buf[kSmallSize];
  memset(buf, 0x5a, sizeof buf);
  auto nap = [] { usleep(static_cast<useconds_t>(kSleep * 1e6)); };
  uint64_t first = run.next_id;
  for (int round = 0; round < run.set.rounds; round++) {
    Series rtt{"", "ms", {}}, put{"", "ms", {}};
    for (int k = 0; k < pairs; k++) {
      nap();
      double t0 = Now();
      EchoOnce(run, buf, true);
      rtt.v.push_back((Now() - t0) * 1e3);
      nap();
      store_object_id id = MakeId(run, run.next_id++);
      t0 = Now();
      Put(run, id, data, sizeof data, "store_put of a 64 B object");
      put.v.push_back((Now() - t0) * 1e3);
      CheckStop(run);
    }
    r.limits[0].v.push_back(rtt.Median());
    r.figure.v.push_back(put.Median());
  }
  DeleteRange(run, first, run.next_id);
  long mapped_kib = RegionMappedKiB();
  r.note = "median of " + std::to_string(pairs) + " per round; " +
           (mapped_kib < 0 ? std::string("the region's mapping not found")
                           : std::to_string(mapped_kib >> 10) +
                                 " MiB of the region mapped in this process") +
           "; population of the region " + Population();
  Add(run, std::move(r));
}

// Puts kGetSetSize 64 B objects; returns the first counter.
uint64_t PutSmallSet(Run& run, std::vector<store_object_id>* ids) {
  uint8_t data[kSmallSize];
  memset(data, 0x3c, sizeof data);
  uint64_t first = run.next_id;
  ids->clear();
  for (size_t i = 0; i < kGetSetSize; i++) {
    store_object_id id = MakeId(run, run.next_id++);
    Put(run, id, data, sizeof data, "store_put of a 64 B object");
    ids->push_back(id);
  }
  return first;
}

void SmallGet(Run& run) {
  Result r{"small_get", "store_open_reader (timeout 0) + store_reader_close of 64 B objects",
           {}, {}, false, "", "", {}};
  r.figure = Series{"small_get", "ops/s", {}};
  r.limits.push_back(RttSeries());
  r.limits.push_back(RttPollSeries());
  std::vector<store_object_id> ids;
  uint64_t first = PutSmallSet(run, &ids);
  size_t i = 0;
  RunSmallRounds(run, 
      &r,
      [&](double seconds, Tally* t) {
        double t0 = Now(), t1;
        do {
          store_reader* rd = nullptr;
          Check(run, store_open_reader(run.client, &rd, &ids[i], 0), "store_open_reader");
          if (store_reader_size(rd) != kSmallSize) {
            store_reader_close(rd);
            Die(run, "store_open_reader returned an object of the wrong size");
          }
          store_reader_close(rd);
          if (++i == ids.size()) i = 0;
          t->ops++;
          CheckStop(run);
          t1 = Now();
        } while (t1 - t0 < seconds);
        t->seconds += t1 - t0;
      },
      [](bool) {});
  DeleteRange(run, first, first + ids.size());
  Add(run, std::move(r));
}

void BatchGet(Run& run) {
  Result r{"batch_get", "store_open_readers of 1000 ids, then store_readers_close; objects/s",
           {}, {}, false, "", "", {}};
  r.figure = Series{"batch_get", "obj/s", {}};
  r.limits.push_back(RttSeries());
  r.limits.push_back(RttPollSeries());
  std::vector<store_object_id> ids;
  static_assert(kGetSetSize == kBatch, "batch_get reuses the small_get set");
  uint64_t first = PutSmallSet(run, &ids);
  std::vector<store_reader*> out(kBatch, nullptr);
  Tally opens, closes;  // over every round, the warm-up included
  RunSmallRounds(run, 
      &r,
      [&](double seconds, Tally* t) {
        double s0 = Now(), t1;
        do {
          double b0 = Now();
          Check(run, store_open_readers(run.client, out.data(), ids.data(), kBatch, 0),
                "store_open_readers of 1000 ids");
          double o1 = Now();
          bool missing = false;
          for (size_t k = 0; k < kBatch; k++) {
            if (!out[k] || store_reader_size(out[k]) != kSmallSize) missing = true;
          }
          store_readers_close(out.data(), kBatch);
          t1 = Now();
          if (missing) Die(run, "store_open_readers missed a sealed object or gave a wrong size");
          opens.ops++;
          opens.seconds += o1 - b0;
          closes.seconds += t1 - o1;
          t->ops += kBatch;
          CheckStop(run);
        } while (t1 - s0 < seconds);
        t->seconds += t1 - s0;
      },
      [](bool) {});
  DeleteRange(run, first, first + ids.size());
  char note[200];
  double nb = static_cast<double>(opens.ops);
  double batch_s = (opens.seconds + closes.seconds) / nb;
  snprintf(note, sizeof note,
           "one batch of 1000 takes %.0f us on average (%.1f round trips): "
           "open_readers %.0f us, store_readers_close %.0f us",
           1e6 * batch_s, batch_s * r.limits[0].Median(), 1e6 * opens.seconds / nb,
           1e6 * closes.seconds / nb);
  r.note = note;
  Add(run, std::move(r));
}

void BatchPut(Run& run) {
  Result r{"batch_put", "store_put_many of 1000 64 B objects; objects/s",
           {}, {}, false, "", "", {}};
  r.figure = Series{"batch_put", "obj/s", {}};
  r.limits.push_back(RttSeries());
  r.limits.push_back(RttPollSeries());
  uint8_t data[kSmallSize];
  memset(data, 0x69, sizeof data);
  std::vector<store_object_id> ids(kBatch);
  std::vector<const void*> datas(kBatch, data);
  std::vector<uint64_t> sizes(kBatch, kSmallSize);
  uint64_t first = run.next_id;
  RunSmallRounds(run, 
      &r,
      [&](double seconds, Tally* t) {
        double timed = 0;
        do {  // at least one batch per slice
          for (size_t k = 0; k < kBatch; k++) ids[k] = MakeId(run, run.next_id + k);
          size_t done = 0;
          double t0 = Now();
          int rc = store_put_many(run.client, ids.data(), datas.data(), sizes.data(), kBatch,
                                  nullptr, &done);
          timed += Now() - t0;
          run.next_id += kBatch;
          run.created += done;
          Check(run, rc, "store_put_many of 1000 64 B objects");
          t->ops += kBatch;
          CheckStop(run);
        } while (timed < seconds && run.next_id - first < kMaxSmallPerRound);
        t->seconds += timed;
      },
      [&](bool) {
        DeleteRange(run, first, run.next_id);
        first = run.next_id;
      });
  Add(run, std::move(r));
}

}  // namespace store::bench
