"""Dask on two local worker processes, with and without the store.

    /usr/bin/python3 capi/python/bench/dask_bench.py [--store-bin build/tools/store] [--runs 3]
        [--quick] [--json] [--store-arg=--hugepages]

Each workload runs on a LocalCluster(n_workers=2, threads_per_worker=1, processes=True), once as
plain Dask (results in the workers, fetched over TCP) and once with storeclient.dask (results in
a store both workers share, fetched by reference). For each it reports the median wall time of
--runs runs of its second computation on the same cluster (the first, with every page new to
the workers, is shown beside it), and the bytes the workers sent each other over TCP for
results (the sum of what their get_data replies wrote), beside the limit measured in the same
run: a local TCP copy of the same bytes is what plain Dask pays at best, and the store pays none
of it. The store's spilled bytes are its total since it started (both computations).

Workloads:
  transpose   (x + x.T).sum() on 8000x8000 float64 in 1000x1000 chunks (512 MB)
  rechunk     a 12000x12000 float64 array (1.15 GB) in column blocks rechunked to row blocks, then
              summed: every output chunk takes a piece of every input chunk (an all-to-all shuffle)
  pressure    the transpose of an array persisted first (all of it held at once) with little
              memory: plain Dask's two workers may each hold a quarter of
              the input beyond 300 MB for the process (Dask spills to disk); with the store they have
              the same limits and the store has half the input's size, with a spill directory
              (the store spills); the result is the same
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))


def workload(name, quick):
    import dask.array as da
    if name == "transpose":
        n, c = (4000, 1000) if quick else (8000, 1000)
        x = da.random.RandomState(1).random((n, n), chunks=(c, c))
        return (x + x.T).sum(), n * n * 8
    if name == "pressure":
        n, c = (4000, 500) if quick else (8000, 1000)
        x = da.random.RandomState(3).random((n, n), chunks=(c, c))

        def held(client):  # all of x held at once, as after a persist
            from distributed import wait
            xp = client.persist(x)
            wait(xp)
            value = (xp + xp.T).sum().compute()
            del xp
            return value
        return held, n * n * 8
    if name == "rechunk":
        n, c = (6000, 500) if quick else (12000, 1000)
        x = da.random.RandomState(2).random((n, n), chunks=(n, c))
        return x.rechunk((c, n)).sum(), n * n * 8
    raise ValueError(name)


def tcp_copy_rate(nbytes=256 << 20):
    """Bytes per second one local TCP connection carries (send and receive in one process)."""
    import threading
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    out = socket.create_connection(srv.getsockname())
    inp, _ = srv.accept()
    chunk = b"x" * (4 << 20)
    got = [0]

    def reader():
        buf = bytearray(4 << 20)
        while got[0] < nbytes:
            k = inp.recv_into(buf)
            if not k:
                break
            got[0] += k

    t = threading.Thread(target=reader)
    start = time.perf_counter()
    t.start()
    sent = 0
    while sent < nbytes:
        out.sendall(chunk)
        sent += len(chunk)
    t.join()
    elapsed = time.perf_counter() - start
    for s in (out, inp, srv):
        s.close()
    return nbytes / elapsed


def run_one(name, quick, sock=None, memory_limit=None):
    from distributed import Client, LocalCluster
    import storeclient.dask as sd
    if sock:
        extra = sd.worker_options(sock, memory_limit=memory_limit)
    else:
        extra = {"memory_limit": memory_limit} if memory_limit else {}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None, **extra) as cluster, Client(cluster) as client:
        expr, nbytes = workload(name, quick)
        run = expr if callable(expr) else (lambda client: expr.compute())
        start = time.perf_counter()
        value = run(client)
        cold = time.perf_counter() - start
        # Again on the same workers: memory they have used before (their own heap, the pages of
        # the store they have mapped) is cheaper to use again.
        client.run(lambda dask_worker: dask_worker.transfer_outgoing_log.clear())
        start = time.perf_counter()
        value2 = run(client)
        wall = time.perf_counter() - start
        assert abs(value2 - value) <= 1e-6 * abs(value), (value, value2)

        def sent(dask_worker):
            return sum(int(e["compressed"] or 0) for e in dask_worker.transfer_outgoing_log), \
                sum(int(e["total"] or 0) for e in dask_worker.transfer_outgoing_log)
        per = client.run(sent)
        tcp = sum(v[0] for v in per.values())
        moved = sum(v[1] for v in per.values())
        def dask_spilled(dask_worker):  # bytes Dask's SpillBuffer wrote to disk
            slow = getattr(dask_worker.data, "_slow_uncached", None)
            return getattr(getattr(slow, "metrics", None), "write_bytes_total", 0)
        spilled = sum(client.run(dask_spilled).values())
        if sock:
            import storeclient
            with storeclient.Client(sock) as c:
                spilled = c.stats().get("total_spilled_bytes", 0)
    return {"wall": wall, "cold": cold, "tcp_bytes": tcp, "result_bytes_moved": moved, "value": float(value),
            "input_bytes": nbytes, "spilled_bytes": spilled}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store-bin", default=os.environ.get("STORE_BIN"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="smaller arrays, one run")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--workloads", default="transpose,rechunk,pressure")
    ap.add_argument("--store-arg", action="append", default=[],
                    help="an argument for the store server, e.g. --store-arg=--hugepages "
                         "(repeatable)")
    args = ap.parse_args()
    if args.quick:
        args.runs = 1
    from storeclient import mars
    import dask

    # The workers' scratch space, removed at the end (Dask's default is a shared
    # dask-worker-space in the temporary directory, left behind).
    scratch = tempfile.mkdtemp(prefix="store-dask-bench-work-")
    dask.config.set({"temporary-directory": scratch})
    try:
        run_all(args, mars)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run_all(args, mars):
    report = {"tcp_copy_bytes_per_s": tcp_copy_rate(), "workloads": {}}
    for name in args.workloads.split(","):
        plain, stored = [], []
        spill_dir = None
        for _ in range(args.runs):
            _, nbytes = workload(name, args.quick)
            # A worker's limit counts its whole process (about 175 MB of Python, NumPy and Dask
            # here) and Dask spills from 60 % of it.
            limit = (300 << 20) + nbytes // 4 if name == "pressure" else None
            plain.append(run_one(name, args.quick, memory_limit=limit))
            spill_dir = tempfile.mkdtemp(prefix="store-dask-bench-")
            memory = "%dM" % max(64, (nbytes // 2 if name == "pressure" else 3 * nbytes) >> 20)
            proc, sock, tmp = mars.start_store(args.store_bin, memory=memory,
                                               spill_dirs=[spill_dir],
                                               extra_args=["--log-level", "warn"] + args.store_arg)
            try:
                stored.append(run_one(name, args.quick, sock, limit))
            finally:
                mars.stop_store(proc, tmp)
                shutil.rmtree(spill_dir, ignore_errors=True)
        for a, b in zip(plain, stored):
            if abs(a["value"] - b["value"]) > 1e-6 * abs(a["value"]):
                raise SystemExit("%s: results differ: %r vs %r" % (name, a["value"], b["value"]))

        def med(runs, k):
            return statistics.median(r[k] for r in runs)
        w = {"plain_wall_s": med(plain, "wall"), "store_wall_s": med(stored, "wall"),
             "plain_first_s": med(plain, "cold"), "store_first_s": med(stored, "cold"),
             "plain_tcp_bytes": med(plain, "tcp_bytes"), "store_tcp_bytes": med(stored, "tcp_bytes"),
             "result_bytes_moved": med(plain, "result_bytes_moved"),
             "store_spilled_bytes": med(stored, "spilled_bytes"),
             "plain_spilled_bytes": med(plain, "spilled_bytes"), "runs": args.runs}
        w["speedup"] = w["plain_wall_s"] / w["store_wall_s"] if w["store_wall_s"] else None
        w["speedup_first"] = w["plain_first_s"] / w["store_first_s"] if w["store_first_s"] else None
        w["plain_tcp_limit_s"] = w["plain_tcp_bytes"] / report["tcp_copy_bytes_per_s"]
        report["workloads"][name] = w
        if not args.json:
            print("%-9s plain %5.2f s (first %5.2f), %7.1f MB over TCP (%.2f s at the TCP "
                  "limit), %6.1f MB spilled | store %5.2f s (first %5.2f), %6.3f MB over TCP, "
                  "%6.1f MB spilled | %.2fx (first %.2fx)"
                  % (name, w["plain_wall_s"], w["plain_first_s"], w["plain_tcp_bytes"] / 1e6,
                     w["plain_tcp_limit_s"], w["plain_spilled_bytes"] / 1e6,
                     w["store_wall_s"], w["store_first_s"], w["store_tcp_bytes"] / 1e6,
                     w["store_spilled_bytes"] / 1e6, w["speedup"], w["speedup_first"]),
                  flush=True)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print("local TCP copy limit: %.2f GB/s" % (report["tcp_copy_bytes_per_s"] / 1e9))


if __name__ == "__main__":
    main()
