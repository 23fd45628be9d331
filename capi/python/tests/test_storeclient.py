"""Tests of the storeclient package against a real `store` server.

Needs STORE_BIN (the server) and STORECLIENT_LIB (libstoreclient.so.2) in the environment."""

import asyncio
import ctypes
import gc
import io
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import storeclient  # noqa: E402
from storeclient import _lib, mars  # noqa: E402

MiB = 1 << 20
HERE = os.path.dirname(os.path.abspath(__file__))


def load_id_vectors():
    """(key bytes, id hex, note) from tests/id_vectors.txt (or $STORE_ID_VECTORS)."""
    path = os.environ.get("STORE_ID_VECTORS") or os.path.join(HERE, "..", "..", "..", "tests",
                                                              "id_vectors.txt")
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or line.startswith("#"):
                continue
            key_hex, id_hex, note = line.split("\t")
            out.append((bytes.fromhex(key_hex), id_hex, note))
    return out


class ServerTest(unittest.TestCase):
    memory = "256M"
    spill = False

    def setUp(self):
        spill_dirs = None
        self._tmp_spill = None
        if self.spill:
            import tempfile
            self._tmp_spill = tempfile.mkdtemp(prefix="store-spill-")
            spill_dirs = [self._tmp_spill]
        self.proc, self.sock, self.tmp_dir = mars.start_store(
            memory=self.memory, spill_dirs=spill_dirs, extra_args=["--log-level", "warn"])
        self.client = storeclient.Client(self.sock, name="test")

    def tearDown(self):
        self.client.close()
        gc.collect()
        with storeclient.Client(self.sock) as c:
            objs = c.list()
            st = c.stats()
        rc = mars.stop_store(self.proc, self.tmp_dir)
        if self._tmp_spill:
            import shutil
            shutil.rmtree(self._tmp_spill, ignore_errors=True)
        self.assertEqual(objs, [], "the test left objects in the store")
        self.assertEqual(st["object_count"], 0)
        self.assertEqual(rc, 0)


class TestClient(ServerTest):
    def test_struct_sizes(self):
        # struct_size took store_object_info's padding after the id; the others grew by 8.
        self.assertEqual(ctypes.sizeof(_lib.store_object_info), 88)
        # 624 before struct_size, 632 before the compaction totals, 664 before --max-objects,
        # 680 before spill_undurable_deletes
        self.assertEqual(ctypes.sizeof(_lib.store_stats), 688)
        self.assertEqual(ctypes.sizeof(_lib.store_client_info), 152)
        self.assertEqual(ctypes.sizeof(_lib.store_spill_file_info), 4144)
        self.assertEqual(ctypes.sizeof(_lib.store_gpu_device_stats), 56)
        self.assertEqual(ctypes.sizeof(_lib.store_create_options), 48)  # 40 in version 1
        self.assertEqual(ctypes.sizeof(_lib.store_connect_options), 24)
        self.assertEqual(storeclient.version(), "0.2.0")

    def test_leases(self):
        c = self.client
        c.put("plain", b"p")
        c.put("leased", b"l", leased=True)
        c.put_object("obj", [1, 2], leased=True)
        self.assertEqual(c.info("leased").lease_count, 1)
        self.assertEqual(c.info("plain").lease_count, 0)
        with storeclient.Client(self.sock) as other:
            self.assertEqual(other.lease("leased"), 2)
            self.assertEqual(c.unlease("leased"), 1)
            self.assertTrue(c.contains("leased"))
        # The other client left: its lease went, and with the last one the object (the store
        # sees the goodbye after this client's next request, maybe).
        deadline = time.monotonic() + 10
        while c.contains("leased") and time.monotonic() < deadline:
            time.sleep(0.01)
        self.assertFalse(c.contains("leased"))
        self.assertEqual(c.lease("plain"), 1)
        self.assertEqual(c.unlease("plain"), 0)
        self.assertTrue(c.contains("plain"))  # not created leased: it stays
        with self.assertRaises(storeclient.StoreError) as e:
            c.unlease("plain")
        self.assertEqual(e.exception.code, storeclient.STORE_EMISUSE)
        with self.assertRaises(storeclient.NotFoundError):
            c.lease("absent")
        self.assertEqual(c.unlease("obj"), 0)
        self.assertFalse(c.contains("obj"))
        c.delete("plain")

    def test_round_trip_with_metadata(self):
        c = self.client
        c.put("a", b"hello world", metadata=b"meta!", importance=3)
        self.assertTrue(c.contains("a"))
        self.assertIn("a", c)
        mv = c.get("a")
        self.assertEqual(bytes(mv), b"hello world")
        self.assertTrue(mv.readonly)
        del mv
        with c.open_reader("a") as r:
            self.assertEqual(r.metadata, b"meta!")
            self.assertEqual(r.size, 11)
            self.assertEqual(r.read(), b"hello world")
        info = c.info("a")
        self.assertEqual(info.data_size, 11)
        self.assertEqual(info.metadata_size, 5)
        self.assertEqual(info.importance, 3)
        self.assertEqual(info.state, storeclient.STORE_STATE_SEALED)
        self.assertTrue(info.level & storeclient.STORE_LEVEL_MEMORY)
        self.assertEqual(info.device, -1)
        self.assertEqual(info.creator_pid, os.getpid())
        self.assertEqual(info.reader_count, 0)
        # other buffer types
        c.put("b", bytearray(b"xyz"))
        c.put("c", memoryview(b"readonly view"))
        self.assertEqual(bytes(c.get("b")), b"xyz")
        self.assertEqual(bytes(c.get("c")), b"readonly view")
        for k in "abc":
            c.delete(k)
        self.assertFalse(c.contains("a"))

    def test_large_buffer(self):
        data = bytearray(os.urandom(MiB)) * 64
        self.client.put("big", data)
        mv = self.client.get("big")
        self.assertEqual(len(mv), 64 * MiB)
        self.assertTrue(mv == data)
        del mv
        self.client.delete("big")

    def test_zero_copy(self):
        c = self.client
        c.put("z", b"0123456789" * 1000)
        m1 = c.get("z")
        m2 = c.get("z")
        # The view's owner is the ctypes array over the object's memory.
        a1, a2 = ctypes.addressof(m1.obj), ctypes.addressof(m2.obj)
        self.assertEqual(a1, a2)
        rh = ctypes.c_void_p()
        cid = storeclient._cid("z")
        rc = _lib.lib.store_open_reader(c._h, ctypes.byref(rh), ctypes.byref(cid), 0)
        self.assertEqual(rc, 0)
        try:
            self.assertEqual(_lib.lib.store_reader_data(rh), a1)
        finally:
            _lib.lib.store_reader_close(rh)
        self.assertEqual(c.info("z").reader_count, 2)
        s = m1[10:20]
        del m1
        gc.collect()
        self.assertEqual(c.info("z").reader_count, 2)  # the slice keeps its reader
        self.assertEqual(bytes(s), b"0123456789")
        del s, m2
        self.assertEqual(c.info("z").reader_count, 0)
        with c.open_reader("z") as r:
            self.assertEqual(r.address, a1)
            self.assertEqual(r.buffer[:10].tobytes(), b"0123456789")
        self.assertEqual(c.info("z").reader_count, 0)
        c.delete("z")

    def test_reader_file_semantics(self):
        c = self.client
        c.put("f", bytes(range(256)))
        with c.open_reader("f") as r:
            self.assertIsInstance(r, io.RawIOBase)
            self.assertTrue(r.readable() and r.seekable())
            buf = bytearray(16)
            self.assertEqual(r.readinto(buf), 16)
            self.assertEqual(bytes(buf), bytes(range(16)))
            self.assertEqual(r.tell(), 16)
            self.assertEqual(r.seek(100), 100)
            self.assertEqual(r.read(4), bytes([100, 101, 102, 103]))
            self.assertEqual(r.seek(-6, io.SEEK_END), 250)
            self.assertEqual(r.seek(2, io.SEEK_CUR), 252)
            self.assertEqual(r.read(), bytes([252, 253, 254, 255]))
            self.assertEqual(r.read(10), b"")
            self.assertEqual(r.readinto(buf), 0)
            with self.assertRaises(storeclient.StoreError) as cm:
                r.seek(257)
            self.assertEqual(cm.exception.code, storeclient.STORE_EINVAL)
            r.seek(0)
            self.assertEqual(r.read(), bytes(range(256)))
        self.assertTrue(r.closed)
        with self.assertRaises(ValueError):
            r.read()
        c.delete("f")

    def test_writer_file_semantics(self):
        c = self.client
        with c.open_writer("w", 10, metadata=b"m") as w:
            self.assertIsInstance(w, io.RawIOBase)
            self.assertEqual(w.write(b"abc"), 3)
            self.assertEqual(w.tell(), 3)
            self.assertEqual(w.write(bytearray(b"de")), 2)
            w.seek(8)
            with self.assertRaises(storeclient.StoreError) as cm:
                w.write(b"xyz")  # past the end
            self.assertEqual(cm.exception.code, storeclient.STORE_EINVAL)
            self.assertEqual(w.tell(), 8)
            w.write(b"XY")
            w.buffer[5:8] = b"567"
            with self.assertRaises(storeclient.NotFoundError):
                c.info("w")  # small: staged in this process until the seal
            self.assertFalse(c.contains("w"))
            w.seal()
        self.assertTrue(w.closed)
        self.assertEqual(bytes(c.get("w")), b"abcde567XY")
        c.delete("w")

        # close without seal aborts and frees the id
        w = c.open_writer("w2", 100)
        w.write(b"x" * 10)
        w.close()
        self.assertFalse(c.contains("w2"))
        with self.assertRaises(storeclient.NotFoundError):
            c.info("w2")
        # an exception in the with block aborts too
        with self.assertRaises(RuntimeError):
            with c.open_writer("w2", 100) as w:
                raise RuntimeError("boom")
        self.assertFalse(c.contains("w2"))
        # a with block that ends normally seals
        with c.open_writer("w3", 3) as w:
            w.write(b"end")
        self.assertEqual(bytes(c.get("w3")), b"end")
        c.delete("w3")

    def test_errors(self):
        c = self.client
        with self.assertRaises(storeclient.StoreError) as cm:
            c.get("missing", timeout=0)
        self.assertEqual(cm.exception.code, storeclient.STORE_ENOTFOUND)
        self.assertIsInstance(cm.exception, storeclient.NotFoundError)
        self.assertTrue(cm.exception.message)
        with self.assertRaises(storeclient.StoreError) as cm:
            c.get("missing", timeout=0.05)
        self.assertEqual(cm.exception.code, storeclient.STORE_ETIMEDOUT)
        with self.assertRaises(storeclient.StoreError) as cm:
            c.delete("missing")
        self.assertEqual(cm.exception.code, storeclient.STORE_ENOTFOUND)
        c.put("dup", b"1")
        with self.assertRaises(storeclient.StoreError) as cm:
            c.put("dup", b"2")
        self.assertEqual(cm.exception.code, storeclient.STORE_EEXISTS)
        self.assertIsInstance(cm.exception, storeclient.ExistsError)
        with self.assertRaises(storeclient.StoreError) as cm:
            c.unpin("dup")
        self.assertEqual(cm.exception.code, storeclient.STORE_EMISUSE)
        with self.assertRaises(storeclient.StoreError) as cm:
            c.evict(1)  # no spill directory
        self.assertEqual(cm.exception.code, storeclient.STORE_ENOTSUP)
        c.delete("dup")
        with self.assertRaises(storeclient.StoreError) as cm:
            storeclient.Client(self.sock + ".nothing")
        self.assertEqual(cm.exception.code, storeclient.STORE_ECONN)

    def test_ids(self):
        # One rule: a str or bytes key of any length is hashed; a raw id is an ObjectId.
        c = self.client
        raw = storeclient.ObjectId(bytes(range(20)))
        c.put(raw, b"raw")
        self.assertEqual([o.id for o in c.list()], [raw])
        self.assertEqual(storeclient.object_id(raw), raw)
        self.assertEqual(bytes(raw), bytes(range(20)))
        self.assertEqual(storeclient.ObjectId.from_hex(raw.hex()), raw)
        # 20 bytes given as a key are a key: hashed, not the raw id.
        self.assertNotEqual(storeclient.object_id(bytes(range(20))), raw)
        self.assertFalse(c.contains(bytes(range(20))))
        self.assertEqual(bytes(c.get(raw)), b"raw")
        hashed = storeclient.object_id("name")
        self.assertIsInstance(hashed, storeclient.ObjectId)
        self.assertEqual(hashed, storeclient.object_id(b"name"))
        self.assertEqual(hashed, storeclient.ObjectId.from_key("name"))
        c.put("name", b"str")
        self.assertEqual(bytes(c.get(hashed)), b"str")
        self.assertEqual(bytes(c.get(b"name")), b"str")
        self.assertEqual(sorted(o.id for o in c.list()), sorted([raw, hashed]))
        # ObjectIds are values: hashable, comparable, picklable, never equal to bytes.
        import pickle
        self.assertEqual(pickle.loads(pickle.dumps(hashed)), hashed)
        self.assertEqual(len({hashed, storeclient.object_id("name"), raw}), 2)
        self.assertNotEqual(raw, bytes(range(20)))
        self.assertEqual(str(raw), raw.hex())
        with self.assertRaises(TypeError):
            c.contains(42)
        with self.assertRaises(TypeError):
            storeclient.ObjectId("a str is a key, not an id")
        with self.assertRaises(ValueError):
            storeclient.ObjectId(b"short")
        with self.assertRaises(ValueError):
            storeclient.ObjectId.from_hex("abc")
        c.delete(raw)
        c.delete("name")

    def test_id_vectors(self):
        # The vectors shared with the C and Rust tests, and a 20-character key put from C
        # (store_object_id_from_string, as C and Rust programs do) is found from Python by it.
        vectors = load_id_vectors()
        self.assertTrue(any(len(k) == 20 for k, _, _ in vectors))
        self.assertTrue(any(len(k) == 0 for k, _, _ in vectors))
        for key, hex_id, note in vectors:
            self.assertEqual(storeclient.object_id(key).hex(), hex_id, note)
            try:
                text = key.decode("utf-8")
            except UnicodeDecodeError:
                continue
            self.assertEqual(storeclient.object_id(text).hex(), hex_id, note)
        key = "abcdefghijklmnopqrst"
        self.assertEqual(len(key), 20)
        cid = _lib.store_object_id()
        self.assertEqual(_lib.lib.store_object_id_from_string(key.encode(), 20,
                                                              ctypes.byref(cid)), 0)
        self.assertEqual(_lib.lib.store_put(self.client._h, ctypes.byref(cid), b"from C", 6,
                                            None), 0)
        self.assertEqual(bytes(self.client.get(key, timeout=0)), b"from C")
        self.assertEqual(bytes(self.client.get(key.encode(), timeout=0)), b"from C")
        self.client.delete(key)

    def test_stats_list_info_pin(self):
        c = self.client
        st = c.stats()
        self.assertEqual(st["object_count"], 0)
        self.assertEqual(st["capacity_bytes"], 256 * MiB)
        self.assertEqual(st["server_pid"], self.proc.pid)
        self.assertGreaterEqual(st["client_count"], 1)
        self.assertEqual(st["spill_enabled"], 0)
        self.assertNotIn("reserved_", st)
        c.put("s1", b"x" * 1000, importance=1)
        c.put("s2", b"y" * 2000)
        w = c.open_writer("s3", 100 * 1024)  # larger than a staged object: in the store
        st = c.stats()
        self.assertEqual(st["object_count"], 3)
        self.assertEqual(st["sealed_count"], 2)
        self.assertEqual(st["created_count"], 1)
        objs = {o.id: o for o in c.list()}
        self.assertEqual(objs[storeclient.object_id("s3")].state, storeclient.STORE_STATE_CREATED)
        self.assertEqual(objs[storeclient.object_id("s2")].data_size, 2000)
        w.close()
        c.pin("s1")
        self.assertEqual(c.info("s1").pin_count, 1)
        self.assertEqual(c.stats()["pinned_count"], 1)
        c.unpin("s1")
        self.assertEqual(c.info("s1").pin_count, 0)
        c.set_importance("s2", 7)
        self.assertEqual(c.info("s2").importance, 7)
        c.prefetch(["s1", "s2"])
        names = [ci["name"] for ci in c.list_clients() if ci["is_self"]]
        self.assertEqual(names, ["test"])
        c.delete("s1")
        c.delete("s2")
        self.assertEqual(c.stats()["object_count"], 0)

    def test_closed_client(self):
        c = storeclient.Client(self.sock)
        c.put("k", b"v")
        mv = c.get("k")
        c.close()
        self.assertTrue(c.closed)
        with self.assertRaises(storeclient.StoreError) as cm:
            c.contains("k")
        self.assertEqual(cm.exception.code, storeclient.STORE_EMISUSE)
        del mv
        self.client.delete("k")


class TestFork(ServerTest):
    """A child forked from a process with a Client lets the inherited one go (finalized, at
    interpreter exit, or not at all) and the parent's session goes on (fork_helper.py)."""

    def run_helper(self, variant):
        import subprocess
        helper = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fork_helper.py")
        r = subprocess.run([sys.executable, helper, self.sock, variant], capture_output=True,
                           text=True, timeout=60)
        report = "stdout:\n%s\nstderr:\n%s" % (r.stdout, r.stderr)
        self.assertEqual(r.returncode, 0, report)
        self.assertEqual(r.stdout.strip(), "ok", report)
        # No finalizer of the child raised ("Exception ignored in ...").
        self.assertEqual(r.stderr, "", report)
        self.assertEqual(self.client.stats()["client_count"], 1)

    def test_child_collects_the_inherited_client(self):
        self.run_helper("gc")

    def test_child_leaves_through_interpreter_exit(self):
        self.run_helper("exit")

    def test_child_leaves_through_os_exit(self):
        self.run_helper("os_exit")


class TestMars(unittest.TestCase):
    def test_backend(self):
        async def run():
            init, teardown = await mars.StoreBackend.setup(
                memory="128M", store_args=["--log-level", "warn"])
            try:
                b = mars.StoreBackend(**init)
                self.assertEqual(b.level, mars.StorageLevel.MEMORY)
                big = bytearray(os.urandom(8 * MiB))
                obj = {"a": 1, "s": "text", "blob": big, "l": [1, 2, 3]}
                info = await b.put(obj)
                self.assertIsInstance(info.object_id, storeclient.ObjectId)
                self.assertGreater(info.size, 8 * MiB)
                back = await b.get(info.object_id)
                self.assertEqual(back, obj)
                oi = await b.object_info(info.object_id)
                self.assertEqual(oi.size, info.size)
                self.assertEqual([o.object_id for o in await b.list()], [info.object_id])
                await b.pin(info.object_id)
                await b.unpin(info.object_id)
                await b.prefetch(info.object_id)
                # the out-of-band buffer sits after the pickle, unpickled from the store memory
                with await b.open_reader(info.object_id) as r:
                    self.assertEqual(r.size, info.size)
                    self.assertNotEqual(bytes(r.buffer).find(bytes(big[:4096])), -1)
                # zero-copy rebuild: a readonly PickleBuffer target gets the store's memory
                mv_obj = {"view": pickle_view(big[:1000])}
                info2 = await b.put(mv_obj)
                back2 = await b.get(info2.object_id)
                self.assertEqual(bytes(back2["view"]), bytes(big[:1000]))
                self.assertEqual(b.client.info(info2.object_id).reader_count, 1)
                del back2
                self.assertEqual(b.client.info(info2.object_id).reader_count, 0)
                # file objects
                w = await b.open_writer(5)
                w.write(b"12345")
                w.seal()
                w.close()
                r = await b.open_reader(w.id)
                self.assertEqual(r.read(), b"12345")
                r.close()
                for oid in (info.object_id, info2.object_id, w.id):
                    await b.delete(oid)
                self.assertEqual(await b.list(), [])
                with self.assertRaises(storeclient.NotFoundError):
                    await b.get(info.object_id)
                b.close()
            finally:
                rc = await mars.StoreBackend.teardown(**teardown)
            self.assertEqual(rc, 0)
            self.assertFalse(os.path.exists(teardown["tmp_dir"]))

        asyncio.run(run())

    def test_backend_spill(self):
        async def run():
            import tempfile
            spill = tempfile.mkdtemp(prefix="store-spill-")
            init, teardown = await mars.StoreBackend.setup(memory="32M", spill_dirs=[spill],
                                                           put_timeout=30,
                                                           store_args=["--log-level", "warn"])
            try:
                b = mars.StoreBackend(**init)
                self.assertEqual(b.level, mars.StorageLevel.MEMORY | mars.StorageLevel.DISK)
                objs = [bytearray(os.urandom(4 * MiB)) for _ in range(16)]  # 64 MiB > 32 MiB
                infos = [await b.put(o) for o in objs]
                st = b.client.stats()
                self.assertGreater(st["total_spilled_objects"], 0)
                levels = [b.client.info(i.object_id).level for i in infos]
                self.assertTrue(any(lv & storeclient.STORE_LEVEL_DISK for lv in levels))
                await b.prefetch([i.object_id for i in infos[:2]])
                for o, i in zip(objs, infos):
                    self.assertEqual(await b.get(i.object_id), o)
                self.assertGreater(b.client.stats()["total_restored_objects"], 0)
                for i in infos:
                    await b.delete(i.object_id)
                self.assertEqual(b.client.stats()["object_count"], 0)
                b.close()
            finally:
                rc = await mars.StoreBackend.teardown(**teardown)
                import shutil
                shutil.rmtree(spill, ignore_errors=True)
            self.assertEqual(rc, 0)

        asyncio.run(run())


class TestGpuStandIn(unittest.TestCase):
    """GPU objects on the memfd stand-in: host memory standing in for device memory, so the
    device pointers are host pointers. Tests the binding's plumbing, not a GPU."""

    def setUp(self):
        self.proc, self.sock, self.tmp_dir = mars.start_store(
            memory="64M", extra_args=["--log-level", "warn", "--gpu-memory", "8M",
                                      "--gpu-backend", "memfd-standin"])
        self.client = storeclient.Client(self.sock, name="gpu")

    def tearDown(self):
        self.client.close()
        gc.collect()
        with storeclient.Client(self.sock) as c:
            objs = c.list()
            backend, gpus = c.gpu_stats()
        rc = mars.stop_store(self.proc, self.tmp_dir)
        self.assertEqual(objs, [])
        self.assertEqual(gpus[0]["used_bytes"], 0)
        self.assertEqual(rc, 0)

    def test_put_read_device_ptr_and_stats(self):
        data = bytes(range(256)) * 40
        oid = self.client.put("tensor", bytearray(data), metadata=b"shape", device=0)
        backend, gpus = self.client.gpu_stats()
        self.assertEqual(backend, "memfd-standin")
        self.assertEqual(len(gpus), 1)
        self.assertEqual(gpus[0]["object_count"], 1)
        self.assertEqual(gpus[0]["used_bytes"], len(data))
        info = self.client.info(oid)
        self.assertEqual(info.device, 0)
        with self.assertRaises(storeclient.StoreError):
            self.client.get(oid)  # no host view of a GPU object
        with self.client.open_reader(oid) as r:
            self.assertEqual(r.device, 0)
            self.assertIsNone(r.buffer)
            self.assertEqual(r.metadata, b"shape")
            ptr, dev = r.device_ptr
            self.assertEqual(ctypes.string_at(ptr, len(data)), data)  # stand-in: host pointer
            self.assertEqual(r.read(10), data[:10])
            self.assertEqual(r.read(), data[10:])
        with self.client.open_writer("w", 4, device=0) as w:
            self.assertIsNone(w.buffer)
            w.write(b"ab")
            w.write(memoryview(b"cd"))
        with self.client.open_reader("w") as r:
            self.assertEqual(r.read(), b"abcd")
        self.client.delete(oid)
        self.client.delete("w")


class _View:
    """A read-only buffer that pickles out of band and is rebuilt from whatever it is given."""

    def __init__(self, mv):
        self.mv = mv

    def __reduce_ex__(self, protocol):
        import pickle
        return _View, (pickle.PickleBuffer(self.mv),)

    def __bytes__(self):
        return bytes(self.mv)


def pickle_view(data):
    return _View(memoryview(bytes(data)))


if __name__ == "__main__":
    unittest.main()
