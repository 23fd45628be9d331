"""Tests of storeclient.dask against a real `store` server and real Dask workers
(python3-distributed): the mapping on its own, a LocalCluster of two worker processes sharing
the store, and a worker killed while it holds results.

Run by tests/test_dask.sh (not by unittest discovery: it needs Dask). Needs STORE_BIN and
STORECLIENT_LIB in the environment."""

import gc
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
from distributed import Client, LocalCluster, wait  # noqa: E402
import dask.array as da  # noqa: E402

import storeclient  # noqa: E402
from storeclient import mars  # noqa: E402
import storeclient.dask as sd  # noqa: E402

MiB = 1 << 20


def wait_for(cond, timeout=30.0, what="condition"):
    """Polls cond() until it is true; fails the test after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.02)


def reference(data, key):
    """What data[key] gives a worker on the same store (the plugin's get_data sets this up):
    (the StoreRef, the ids of the extra leases taken for it)."""
    held = []
    token = sd._transfer.set(held)
    try:
        return data[key], held
    finally:
        sd._transfer.reset(token)


class StoreCase(unittest.TestCase):
    memory = "256M"
    spill = False

    def setUp(self):
        self.spill_dir = None
        if self.spill:
            import tempfile
            self.spill_dir = tempfile.mkdtemp(prefix="store-dask-spill-")
        self.proc, self.sock, self.tmp = mars.start_store(
            memory=self.memory, spill_dirs=[self.spill_dir] if self.spill_dir else None,
            extra_args=["--log-level", "warn"])
        self.watch = storeclient.Client(self.sock, name="watcher")

    def tearDown(self):
        gc.collect()
        objs = self.watch.list()
        st = self.watch.stats()
        self.watch.close()
        rc = mars.stop_store(self.proc, self.tmp)
        if self.spill_dir:
            import shutil
            shutil.rmtree(self.spill_dir, ignore_errors=True)
        self.assertEqual(objs, [], "objects left in the store")
        self.assertEqual(st["used_bytes"], 0)
        self.assertEqual(rc, 0)

    def objects(self):
        return self.watch.list()


class TestStoreData(StoreCase):
    """The mapping alone, in this process."""

    def test_values_round_trip_into_leased_objects(self):
        d = sd.StoreData(self.sock)
        try:
            a = np.arange(1 << 18, dtype=np.float64).reshape(512, 512)
            d["x"] = a
            d[("y", 0)] = {"k": [1, 2, 3]}
            d["f"] = np.asfortranarray(a)
            self.assertEqual(len(d), 3)
            self.assertIn("x", d)
            self.assertEqual(set(d), {"x", ("y", 0), "f"})
            got = d["x"]
            np.testing.assert_array_equal(got, a)
            self.assertFalse(got.flags.writeable)  # a view of the store's memory
            self.assertEqual(d[("y", 0)], {"k": [1, 2, 3]})
            np.testing.assert_array_equal(d["f"], a)
            infos = {i.id: i for i in self.objects()}
            self.assertEqual(len(infos), 3)
            for key, oid in d.ids().items():
                self.assertEqual(infos[oid].lease_count, 1, key)
            del got
            del d["x"]
            self.assertNotIn("x", d)
            with self.assertRaises(KeyError):
                d["x"]
            wait_for(lambda: len(self.objects()) == 2, what="x's object to go")
            d["f"] = b"replaced"  # a key set again replaces its object
            self.assertEqual(d["f"], b"replaced")
            self.assertEqual(len(self.objects()), 2)
        finally:
            d.close()
        self.assertEqual(self.objects(), [])

    def test_unpicklable_values_stay_in_the_process(self):
        d = sd.StoreData(self.sock)
        try:
            lock = threading.Lock()
            d["lock"] = lock
            self.assertIs(d["lock"], lock)
            self.assertEqual(self.objects(), [])
            del d["lock"]
            self.assertEqual(len(d), 0)
        finally:
            d.close()

    def test_the_same_key_in_two_mappings_shares_one_object(self):
        d1 = sd.StoreData(self.sock, namespace="ns")
        d2 = sd.StoreData(self.sock, namespace="ns")
        try:
            d1["k"] = np.ones(1000)
            d2["k"] = np.ones(1000)  # exists: leased, not written again
            (info,) = self.objects()
            self.assertEqual(info.lease_count, 2)
            del d1["k"]
            np.testing.assert_array_equal(d2["k"], np.ones(1000))
            self.assertEqual(self.objects()[0].lease_count, 1)
        finally:
            d1.close()
            d2.close()

    def test_a_transfer_keeps_the_object_until_the_receiver_has_it(self):
        """What the plugin's get_data does for a worker on the same store: the holder hands out
        a reference with a lease of its own; the holder letting go of the key meanwhile does not
        remove the object; the receiver's unpickled reference holds a lease, adopted by its
        mapping; the holder's transfer lease then goes."""
        holder = sd.StoreData(self.sock, namespace="t")
        try:
            holder["k"] = np.arange(100000)
            ref, held = reference(holder, "k")
            self.assertIsInstance(ref, sd.StoreRef)
            payload = pickle.dumps(ref)
            self.assertLess(len(payload), 200)  # an id, not the bytes
            del holder["k"]  # released while the transfer is under way
            self.assertEqual(self.objects()[0].lease_count, 1)
            # The receiver (here in another process, to count its lease apart).
            code = (
                "import pickle, sys, os\n"
                "sys.path.insert(0, %r)\n"
                "import storeclient.dask as sd\n"
                "d = sd.StoreData(%r, namespace='t')\n"
                "ref = pickle.loads(sys.stdin.buffer.read())\n"
                "d['k'] = ref\n"
                "del ref\n"
                "import gc; gc.collect()\n"
                "print(int(d['k'].sum()), flush=True)\n"
                "import time; time.sleep(600)\n" % (os.path.join(os.path.dirname(__file__), ".."),
                                            self.sock))
            p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE)
            p.stdin.write(payload)
            p.stdin.close()
            line = p.stdout.readline()
            self.assertEqual(int(line), sum(range(100000)))
            self.assertEqual(self.objects()[0].lease_count, 2)
            for oid in held:
                sd._unlease(holder._conn, oid)
            self.assertEqual(self.objects()[0].lease_count, 1)
            p.kill()  # the receiver dies holding it: its lease goes, and with it the object
            p.wait()
            p.stdout.close()
            wait_for(lambda: self.objects() == [], what="the object to go with its last holder")
        finally:
            holder.close()

    def test_a_reference_that_is_never_adopted_lets_go(self):
        d = sd.StoreData(self.sock, namespace="r")
        try:
            d["k"] = b"x" * 1000
            ref, held = reference(d, "k")
            got = pickle.loads(pickle.dumps(ref))  # this process holds a lease through it
            self.assertEqual(self.objects()[0].lease_count, 3)
            self.assertEqual(bytes(got.get()), b"x" * 1000)
            del got
            gc.collect()
            self.assertEqual(self.objects()[0].lease_count, 2)
            for oid in held:
                sd._unlease(d._conn, oid)
            self.assertEqual(self.objects()[0].lease_count, 1)
        finally:
            d.close()


class TestSpilledFigures(StoreCase):
    memory = "64M"
    spill = True

    def test_spilled_total_counts_this_workers_objects_on_disk(self):
        d = sd.StoreData(self.sock)
        try:
            for i in range(4):
                d["k%d" % i] = np.full(MiB, i, dtype=np.uint8)
            self.assertEqual(d.spilled_total, (0, 0))
            self.assertGreaterEqual(d.memory_bytes(), 4 * MiB)
            self.watch.evict(64 * MiB)
            d._usage = (0.0, 0, 0)  # measure now, not from the cache
            spilled, on_disk = d.spilled_total
            self.assertGreaterEqual(spilled, 4 * MiB)
            self.assertEqual(d.memory_bytes(), 0)
            np.testing.assert_array_equal(d["k2"], np.full(MiB, 2, dtype=np.uint8))
        finally:
            d.close()


def _pid():
    return os.getpid()


def _sent(peers, dask_worker=None):
    """(result bytes, bytes on the wire) this worker sent to the workers peers (not to
    clients)."""
    log = [e for e in dask_worker.transfer_outgoing_log if e["who"] in peers]
    return sum(int(e["total"] or 0) for e in log), sum(int(e["compressed"] or 0) for e in log)


class TestCluster(StoreCase):
    memory = "1G"

    def cluster(self):
        return LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                            dashboard_address=None, **sd.worker_options(self.sock))

    def test_results_are_right_and_same_host_transfers_send_ids_not_bytes(self):
        with self.cluster() as cluster, Client(cluster) as client:
            x = da.random.RandomState(0).random((2000, 2000), chunks=(500, 500))
            got = (x + x.T).sum().compute()
            expect = (x.compute() * 2).sum()
            self.assertAlmostEqual(got, expect, delta=1e-6 * expect)
            y = x.rechunk((2000, 250)).sum(axis=0).compute()
            np.testing.assert_allclose(y, x.compute().sum(axis=0))
            sent = client.run(_sent, list(client.scheduler_info()["workers"]))
            moved = sum(v[0] for v in sent.values())
            on_wire = sum(v[1] for v in sent.values())
            # Chunks of 2 MB crossed between the workers; references of ~300 bytes went instead.
            self.assertGreater(moved, 8 * MiB)
            self.assertLess(on_wire, moved / 100)
            # The store's memory counts as the workers' managed memory, and their limits grew
            # by the store's capacity.
            x2 = client.persist(x)
            client.wait_for_workers(2)
            wait(x2)
            limits = client.run(lambda dask_worker: dask_worker.memory_manager.memory_limit)
            capacity = self.watch.stats()["capacity_bytes"]
            for limit in limits.values():
                self.assertGreater(limit, capacity)
            # (the figures are measured at most once a second)
            held = wait_for(lambda: (lambda h: sum(h.values()) >= 2000 * 2000 * 8 and h)(
                client.run(lambda dask_worker: dask_worker.data.memory_bytes())),
                what="the persisted array to count as the workers' memory")
            mem = client.run(lambda dask_worker: dask_worker.monitor.get_process_memory())
            for addr in mem:
                self.assertGreaterEqual(mem[addr], held[addr])
            del x2
        # The cluster closed: nothing of it is left (tearDown checks the store is empty).
        wait_for(lambda: self.objects() == [], what="the cluster's objects to go")

    def test_a_killed_worker_leaves_nothing_behind(self):
        with self.cluster() as cluster, Client(cluster) as client:
            client.wait_for_workers(2)
            workers = sorted(client.scheduler_info()["workers"])
            victim = workers[0]
            pid = client.run(_pid, workers=[victim])[victim]
            futures = [client.submit(np.full, 256 * 1024, i, pure=False, workers=[victim],
                                     allow_other_workers=True)
                       for i in range(8)]
            wait(futures, timeout=60)
            on_victim = [f for f, w in client.who_has(futures).items() if victim in w]
            self.assertTrue(on_victim)  # (others may have run on the other worker)
            mine = [i for i in self.objects() if i.creator_pid == pid]
            self.assertGreaterEqual(len(mine), len(on_victim) + 1)  # and the worker's marker
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: not [i for i in self.objects() if i.creator_pid == pid],
                     what="the killed worker's objects to go")
            # Dask recomputes what was lost, on the worker that is left or the new one.
            wait(futures, timeout=60)
            values = client.gather(futures)
            for i, v in enumerate(values):
                self.assertEqual(int(v[0]), i)
            del values, futures
        wait_for(lambda: self.objects() == [], what="the cluster's objects to go")


if __name__ == "__main__":
    unittest.main()
