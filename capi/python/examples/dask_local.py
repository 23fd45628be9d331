"""Two local Dask workers sharing one store: results stay in the store, and a worker needing
another's result reads it from there.

    build/tools/store --socket /tmp/store.sock --memory 2G --spill-dir /tmp/store-spill &
    STORECLIENT_LIB=build/capi/libstoreclient.so.2 python3 capi/python/examples/dask_local.py /tmp/store.sock
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import dask.array as da  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402

import storeclient  # noqa: E402
import storeclient.dask  # noqa: E402


def main():
    socket = sys.argv[1] if len(sys.argv) > 1 else None
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None,
                      **storeclient.dask.worker_options(socket)) as cluster, \
            Client(cluster) as client:
        x = da.random.RandomState(0).random((4000, 4000), chunks=(1000, 1000))
        print("sum of x + x.T:", (x + x.T).sum().compute())

        def sent(dask_worker):
            log = dask_worker.transfer_outgoing_log
            return sum(e["total"] for e in log), sum(e["compressed"] or 0 for e in log)
        for worker, (moved, wire) in client.run(sent).items():
            print("%s handed on %.1f MB of results in %d bytes" % (worker, moved / 1e6, wire))
        with storeclient.Client(socket) as store:
            print("objects in the store now:", len(store.list()))
    with storeclient.Client(socket) as store:
        print("objects in the store after the cluster closed:", len(store.list()))


if __name__ == "__main__":
    main()
