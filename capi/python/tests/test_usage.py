"""The package as its users meet it, against a real `store` server: views that outlive close(),
timeouts in seconds with defaults that suit a spilling store, Python objects (pickle protocol 5
with out-of-band buffers, NumPy arrays), batches, metadata, pages, empty values.

Needs STORE_BIN and STORECLIENT_LIB, like test_storeclient.py. The NumPy cases are skipped only
where numpy cannot be imported (Debian's python3-numpy for /usr/bin/python3)."""

import gc
import os
import sys
import threading
import unittest
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import storeclient  # noqa: E402
from test_storeclient import MiB, ServerTest  # noqa: E402

try:
    import numpy
except ImportError:  # pragma: no cover - depends on the machine
    numpy = None


def wait_for(cond, timeout=10.0):
    """Polls cond until it holds (True) or timeout seconds pass (its last value)."""
    import time
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            return cond()
        time.sleep(0.001)
    return True


class TestViewLifetime(ServerTest):
    memory = "32M"

    def test_view_outlives_close_and_keeps_its_bytes(self):
        # A view from get() keeps its reader (and the connection) after close(): another client
        # that deletes the object and fills the store never gets its memory.
        other = self.client
        a = storeclient.Client(self.sock, name="closing")
        data = bytes(range(256)) * (4 * 4096)  # 4 MiB
        a.put("kept", data)
        view = a.get("kept")
        reader = a.open_reader("kept")
        clients = other.stats()["client_count"]
        a.close()
        self.assertTrue(a.closed)
        with self.assertRaises(storeclient.StoreError) as cm:
            a.get("kept")
        self.assertEqual(cm.exception.code, storeclient.STORE_EMISUSE)
        # The store still counts both readers, and the client is still connected for them.
        self.assertEqual(other.info("kept").reader_count, 2)
        self.assertEqual(other.stats()["client_count"], clients)
        other.delete("kept")
        # Fill the store with other objects: none may land in the view's memory.
        filled = []
        for i in range(64):
            try:
                other.put("fill-%d" % i, bytes([i + 1]) * MiB, timeout=0)
            except storeclient.NoSpaceError:
                break
            filled.append("fill-%d" % i)
        self.assertGreater(len(filled), 10)
        self.assertEqual(bytes(view), data)
        self.assertEqual(reader.read(16), data[:16])
        # The last view released: the connection ends and the memory returns.
        reader.close()
        del view
        gc.collect()
        self.assertTrue(wait_for(lambda: other.stats()["client_count"] == clients - 1))
        self.assertTrue(wait_for(lambda: other.stats()["deleted_pending_count"] == 0))
        other.delete_many(filled)

    def test_writer_outlives_close(self):
        a = storeclient.Client(self.sock, name="closing-writer")
        w = a.open_writer("late", 1 * MiB)
        a.close()
        w.buffer[:4] = b"late"
        w.seal()
        w.close()
        self.assertEqual(bytes(self.client.get("late", timeout=0)[:4]), b"late")
        self.client.delete("late")

    def test_close_without_views_disconnects_at_once(self):
        clients = self.client.stats()["client_count"]
        a = storeclient.Client(self.sock)
        self.assertEqual(self.client.stats()["client_count"], clients + 1)
        a.close()
        a.close()  # idempotent
        self.assertTrue(wait_for(lambda: self.client.stats()["client_count"] == clients))


class TestTimeouts(ServerTest):
    memory = "32M"

    def test_get_timeouts_in_seconds(self):
        c = self.client
        with self.assertRaises(storeclient.NotFoundError):
            c.get("missing", timeout=0)
        with self.assertRaises(storeclient.TimeoutError_):
            c.get("missing", timeout=0.05)
        with self.assertRaises(ValueError):
            c.get("missing", timeout=-1)
        # None waits until the object is sealed.
        got = []
        t = threading.Thread(target=lambda: got.append(bytes(c.get("later", timeout=None))))
        t.start()
        self.assertTrue(wait_for(lambda: c.stats()["waiting_gets"] == 1))
        c.put("later", b"here")
        t.join(10)
        self.assertEqual(got, [b"here"])
        c.delete("later")

    def test_put_waits_for_room_by_default(self):
        # A full store: the object held by a reader cannot go. A put that needs its room waits
        # (by default) until the reader closes, instead of failing at once.
        c = self.client
        c.put("big", b"x" * (20 * MiB))
        view = c.get("big")
        c.delete("big")  # freed when the view goes
        with self.assertRaises(storeclient.NoSpaceError):
            c.put("next", b"y" * (20 * MiB), timeout=0)
        done = []

        def put():
            try:
                with storeclient.Client(self.sock) as c2:
                    done.append(c2.put("next", b"y" * (20 * MiB)))
            except Exception as e:  # reported by the assertion below
                done.append(e)

        t = threading.Thread(target=put)
        t.start()
        self.assertTrue(wait_for(lambda: c.stats()["waiting_creates"] == 1))
        del view
        gc.collect()
        t.join(30)
        self.assertEqual(done, [storeclient.object_id("next")])
        # A short wait that nothing ends: TimeoutError_, saying what holds the memory.
        view = c.get("next")
        c.delete("next")
        with self.assertRaises(storeclient.TimeoutError_) as cm:
            c.put("third", b"z" * (20 * MiB), timeout=0.05)
        self.assertIn("open readers", cm.exception.message)
        del view
        gc.collect()

    def test_timeout_ms_still_accepted(self):
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            self.client.put("old", b"style", timeout_ms=0)
        self.assertTrue(any(issubclass(x.category, DeprecationWarning) for x in w))
        self.client.delete("old")


class TestSpillingPut(ServerTest):
    memory = "64M"
    spill = True

    def test_large_put_into_a_spilling_store_waits_for_the_spill(self):
        # More than the free memory: the store must spill the others first. The default put
        # waits for that; before, it failed with "spilling has started to make room".
        c = self.client
        for i in range(3):
            c.put("old-%d" % i, bytes([i]) * (16 * MiB))
        data = b"n" * (40 * MiB)
        c.put("new", data)
        self.assertGreater(c.stats()["total_spilled_objects"], 0)
        self.assertTrue(c.get("new") == data)
        c.delete_many(["old-0", "old-1", "old-2", "new"])


class TestObjects(ServerTest):
    def test_put_object_get_object(self):
        c = self.client
        obj = {"a": 1, "s": "text", "l": [1, 2.5, None], "blob": bytearray(os.urandom(100000))}
        oid = c.put_object("obj", obj, metadata=b"m")
        self.assertEqual(oid, storeclient.object_id("obj"))
        self.assertEqual(c.get_object("obj"), obj)
        self.assertEqual(c.get_metadata("obj"), b"m")
        with self.assertRaises(ValueError):
            c.put("raw", b"not a pickled object")
            c.get_object("raw")
        c.delete_many(["obj", "raw"])

    @unittest.skipIf(numpy is None, "numpy cannot be imported (python3-numpy)")
    def test_numpy_arrays_zero_copy(self):
        c = self.client
        base = numpy.arange(200 * 300, dtype=numpy.float64).reshape(200, 300)
        cases = {
            "c": base,
            "fortran": numpy.asfortranarray(base),
            "strided": base[::3, ::2],          # neither: copied once into the store, as C order
            "column-slice": base[:, 10:20],     # neither
            "transposed": base.T,               # Fortran-contiguous
            "ints": numpy.arange(10, dtype=numpy.int32),
            "empty": numpy.zeros((0, 5)),
        }
        for name, arr in cases.items():
            c.put_object(name, arr)
            back = c.get_object(name)
            self.assertEqual(back.dtype, arr.dtype, name)
            self.assertEqual(back.shape, arr.shape, name)
            self.assertTrue(numpy.array_equal(back, arr), name)
            self.assertEqual(back.flags.f_contiguous, arr.flags.f_contiguous, name)
            if arr.size:
                # Rebuilt over the store's memory: read-only, and the object held while it lives.
                self.assertFalse(back.flags.writeable, name)
                # Out of band: in the store's memory, on a 64-byte boundary.
                self.assertEqual(back.ctypes.data % 64, 0, name)
                self.assertEqual(c.info(name).reader_count, 1, name)
                with self.assertRaises(ValueError):
                    back[(0,) * back.ndim] = 1
            del back
            gc.collect()
            self.assertEqual(c.info(name).reader_count, 0, name)
        # Arrays inside other objects, and a raw put of an array's bytes.
        nested = {"x": base, "y": [numpy.ones(3), "z"]}
        c.put_object("nested", nested)
        back = c.get_object("nested")
        self.assertTrue(numpy.array_equal(back["x"], base))
        self.assertTrue(numpy.array_equal(back["y"][0], numpy.ones(3)))
        del back
        # A non-contiguous array is not pickled in band (two copies): its elements go straight
        # into the store once, after the pickle stream, which stays small.
        c.put_object("big-strided", numpy.zeros((2000, 2000))[:, :1000])
        self.assertLess(c.info("big-strided").data_size, 8 * 1000 * 2000 + 4096)
        view = c.get("big-strided")
        self.assertEqual(bytes(view[4:8]), (2).to_bytes(4, "little"))  # format version 2
        del view
        c.put("raw-array", numpy.asfortranarray(base))
        self.assertEqual(bytes(c.get("raw-array")), base.tobytes())
        c.delete_many(list(cases) + ["nested", "raw-array", "big-strided"])


class TestBatchesAndPages(ServerTest):
    def test_put_many_get_many_delete_many(self):
        c = self.client
        items = {"k%d" % i: bytes([i]) * (i + 1) for i in range(50)}
        items["big"] = bytearray(b"B" * (200 * 1024))  # larger than a staged object
        items["empty"] = b""
        ids = c.put_many(items, metadata=b"batch")
        self.assertEqual(ids, [storeclient.object_id(k) for k in items])
        keys = list(items) + ["missing"]
        views = c.get_many(keys, timeout=0)
        self.assertEqual(len(views), len(keys))
        self.assertIsNone(views[-1])
        for k, v in zip(keys, views[:-1]):
            self.assertEqual(bytes(v), bytes(items[k]), k)
        del views
        pairs = c.get_many(["k3", "empty"], timeout=0, with_metadata=True)
        self.assertEqual([(bytes(v), m) for v, m in pairs], [(b"\x03" * 4, b"batch"),
                                                             (b"", b"batch")])
        del pairs
        # A duplicate fails the batch after every other item was tried.
        with self.assertRaises(storeclient.ExistsError) as cm:
            c.put_many([("k1", b"again"), ("fresh", b"new")])
        self.assertEqual(cm.exception.done, 1)
        self.assertEqual(bytes(c.get("fresh", timeout=0)), b"new")
        # Missing ids are skipped by delete_many, like redis's DEL.
        self.assertEqual(c.delete_many(list(items) + ["fresh", "missing"]), len(items) + 1)
        self.assertEqual(c.delete_many([]), 0)

    def test_metadata_on_get_and_list_page(self):
        c = self.client
        for i in range(30):
            c.put("p%02d" % i, b"x" * (i + 1), metadata=b"meta-%d" % i, importance=i % 3)
        view, meta = c.get("p07", with_metadata=True)
        self.assertEqual((bytes(view), meta), (b"x" * 8, b"meta-7"))
        del view
        with c.open_reader("p07") as r:
            self.assertEqual(r.metadata, b"meta-7")
        page, total = c.list_page(sort="size", descending=True, limit=10)
        self.assertEqual(total, 30)
        self.assertEqual([o.data_size for o in page], list(range(30, 20, -1)))
        page2, _ = c.list_page(sort="size", descending=True, limit=10, offset=10)
        self.assertEqual([o.data_size for o in page2], list(range(20, 10, -1)))
        prefix = storeclient.object_id("p05").hex()[:6]
        hits, n = c.list_page(prefix=prefix)
        self.assertIn(storeclient.object_id("p05"), [o.id for o in hits])
        self.assertEqual(n, len(hits))
        with self.assertRaises(ValueError):
            c.list_page(sort="colour")
        c.delete_many(["p%02d" % i for i in range(30)])

    def test_empty_values(self):
        c = self.client
        c.put("e", b"")
        c.put("e-meta", bytearray(), metadata=b"kept")
        self.assertTrue(c.contains("e"))
        self.assertEqual(bytes(c.get("e")), b"")
        self.assertEqual(c.get("e-meta", with_metadata=True)[1], b"kept")
        with c.open_reader("e") as r:
            self.assertEqual((r.size, r.read(), r.tell(), r.metadata), (0, b"", 0, b""))
        with c.open_writer("w0", 0, metadata=b"m") as w:
            self.assertEqual(w.write(b""), 0)
            with self.assertRaises(storeclient.StoreError):
                w.write(b"x")
        self.assertEqual(c.get("w0", with_metadata=True)[1], b"m")
        # The stored form, as C and Rust see it: one byte and the marker.
        info = c.info("e")
        self.assertEqual((info.data_size, info.metadata_size),
                         (1, len(storeclient.EMPTY_MARKER)))
        self.assertEqual(c.get_object(c.put_object("obj-empty", b"")), b"")
        self.assertEqual(c.stats()["open_count"], 0)
        c.delete_many(["e", "e-meta", "w0", "obj-empty"])

    def test_spill_calls(self):
        c = self.client
        self.assertEqual(c.list_spill_files(), [])
        c.put("s", b"x")
        with self.assertRaises(storeclient.NotFoundError):
            c.spill_url("s")  # no copy on disk
        c.delete("s")


class TestSpillCalls(ServerTest):
    memory = "32M"
    spill = True

    def test_spill_url_and_files(self):
        c = self.client
        c.put("s", b"y" * MiB)
        self.assertGreater(c.evict(1), 0)
        url = c.spill_url("s")
        self.assertTrue(url.startswith("file://" + self._tmp_spill), url)
        files = c.list_spill_files()
        self.assertEqual(len(files), 1)
        self.assertEqual(files[0]["live_objects"], 1)
        self.assertTrue(files[0]["path"].startswith(self._tmp_spill))
        c.delete("s")


class TestDocstrings(unittest.TestCase):
    def test_every_public_call_has_a_docstring(self):
        from storeclient import mars
        missing = []
        for owner in (storeclient.Client, storeclient.Reader, storeclient.Writer,
                      storeclient.ObjectId, mars.StoreBackend):
            for name, member in vars(owner).items():
                if name.startswith("_") and name != "__init__":
                    continue
                fn = member.fget if isinstance(member, property) else member
                fn = getattr(fn, "__func__", fn)
                if callable(fn) and not (fn.__doc__ or "").strip():
                    missing.append("%s.%s" % (owner.__name__, name))
        for name in storeclient.__all__ + ["errstr"]:
            obj = getattr(storeclient, name)
            if callable(obj) and not (obj.__doc__ or "").strip():
                missing.append(name)
        for name in mars.__all__:
            obj = getattr(mars, name)
            if callable(obj) and not (obj.__doc__ or "").strip():
                missing.append("mars." + name)
        self.assertEqual(missing, [])


if __name__ == "__main__":
    unittest.main()
