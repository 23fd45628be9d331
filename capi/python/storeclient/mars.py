"""A Mars storage backend (the storage-lib StorageBackend interface) over a `store` server."""

import asyncio
import enum
import os
import pickle
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from . import Client

__all__ = ["StorageLevel", "ObjectInfo", "StoreBackend", "start_store", "stop_store"]


class StorageLevel(enum.IntFlag):
    GPU = 1 << 0
    MEMORY = 1 << 1
    DISK = 1 << 2
    REMOTE = 1 << 3


@dataclass
class ObjectInfo:
    size: Optional[int] = None
    device: Optional[int] = None
    object_id: Any = None


# ---- the server process ----------------------------------------------------------------------
def _find_store_bin(store_bin=None):
    path = store_bin or os.environ.get("STORE_BIN") or shutil.which("store")
    if not path:
        raise FileNotFoundError("no `store` binary: pass store_bin, set STORE_BIN or PATH")
    return path


def _wait_for_socket(path, proc, timeout):
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError("the store server exited with code %d at start" % proc.returncode)
        if os.path.exists(path):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                return
            except OSError:
                pass
            finally:
                s.close()
        if time.monotonic() > deadline:
            raise TimeoutError("the store server did not listen on %s in time" % path)
        time.sleep(0.005)


def start_store(store_bin=None, memory=None, spill_dirs=None, extra_args=(), socket_path=None,
                start_timeout=30.0):
    """Starts a `store` server; returns (Popen, socket_path, temp_dir)."""
    tmp_dir = tempfile.mkdtemp(prefix="store-")
    path = socket_path or os.path.join(tmp_dir, "store.sock")
    args = [_find_store_bin(store_bin), "--socket", path]
    if memory is not None:
        args += ["--memory", str(memory)]
    if isinstance(spill_dirs, (str, os.PathLike)):
        spill_dirs = [spill_dirs]
    for d in spill_dirs or ():
        args += ["--spill-dir", str(d)]
    args += list(extra_args)
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL)
    try:
        _wait_for_socket(path, proc, start_timeout)
    except BaseException:
        proc.kill()
        proc.wait()
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return proc, path, tmp_dir


def stop_store(proc, tmp_dir=None, timeout=30.0):
    """SIGTERMs the server, waits for it and removes tmp_dir; returns its exit code."""
    rc = proc.poll()
    if rc is None:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
    if tmp_dir:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return rc


# ---- object layout ---------------------------------------------------------------------------
# header: magic, version, buffer count, pickle size, then one u64 size per buffer; the pickle
# bytes follow, then each buffer starting on a 64-byte boundary.
_MAGIC = b"SCPK"
_HEAD = struct.Struct("<4sIQQ")
_ALIGN = 64


def _align(n):
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def _serialize(obj):
    buffers = []

    def callback(pb):
        try:
            m = pb.raw()
        except BufferError:  # not contiguous: keep it in the pickle stream
            return True
        buffers.append(m)
        return False

    data = pickle.dumps(obj, protocol=5, buffer_callback=callback)
    header = _HEAD.pack(_MAGIC, 1, len(buffers), len(data)) + \
        struct.pack("<%dQ" % len(buffers), *[m.nbytes for m in buffers])
    offsets = []
    pos = len(header) + len(data)
    for m in buffers:
        pos = _align(pos)
        offsets.append(pos)
        pos += m.nbytes
    return header, data, buffers, offsets, max(pos, 1)


def _deserialize(mem):
    magic, ver, nbuf, plen = _HEAD.unpack_from(mem, 0)
    if magic != _MAGIC or ver != 1:
        raise ValueError("not an object written by StoreBackend.put")
    sizes = struct.unpack_from("<%dQ" % nbuf, mem, _HEAD.size)
    start = _HEAD.size + 8 * nbuf
    data = mem[start:start + plen]
    pos = start + plen
    buffers = []
    for size in sizes:
        pos = _align(pos)
        buffers.append(mem[pos:pos + size])
        pos += size
    return pickle.loads(data, buffers=buffers)


# ---- the backend -----------------------------------------------------------------------------
class StoreBackend:
    name = "store"

    def __init__(self, socket_path=None, put_timeout=60.0, client_name="mars", **kwargs):
        self._socket_path = socket_path
        self._client = Client(socket_path, name=client_name)
        self._put_timeout_ms = -1 if put_timeout is None else int(put_timeout * 1000)
        stats = self._client.stats()
        self._capacity = stats["capacity_bytes"]
        self._level = StorageLevel.MEMORY
        if stats["spill_enabled"]:
            self._level |= StorageLevel.DISK

    @classmethod
    async def setup(cls, **kwargs) -> Tuple[Dict, Dict]:
        memory = kwargs.pop("memory", kwargs.pop("store_memory", None))
        spill_dirs = kwargs.pop("spill_dirs", kwargs.pop("spill_dir", None))
        proc, path, tmp_dir = await asyncio.to_thread(
            start_store, kwargs.pop("store_bin", None), memory, spill_dirs,
            kwargs.pop("store_args", ()))
        init_params = dict(socket_path=path, put_timeout=kwargs.pop("put_timeout", 60.0))
        teardown_params = dict(process=proc, pid=proc.pid, tmp_dir=tmp_dir)
        return init_params, teardown_params

    @staticmethod
    async def teardown(**kwargs):
        proc = kwargs.get("process")
        if proc is not None:
            return await asyncio.to_thread(stop_store, proc, kwargs.get("tmp_dir"))
        pid = kwargs.get("pid")
        if pid:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        if kwargs.get("tmp_dir"):
            shutil.rmtree(kwargs["tmp_dir"], ignore_errors=True)
        return None

    @property
    def level(self) -> StorageLevel:
        return self._level

    @property
    def size(self) -> Optional[int]:
        return self._capacity

    @property
    def client(self) -> Client:
        return self._client

    def _get(self, object_id, timeout):
        # Returned in a box that get() empties, so that the finished future does not keep the
        # object (and with it the store's memory) alive after the caller drops it.
        return [_deserialize(self._client.get(object_id, timeout))]

    async def get(self, object_id, **kwargs) -> object:
        """The object, rebuilt over the store's memory: out-of-band buffers that the unpickled
        object keeps (e.g. NumPy arrays) hold the object open until they are collected."""
        box = await asyncio.to_thread(self._get, object_id, kwargs.get("timeout", 0))
        return box.pop()

    def _put(self, obj, importance):
        header, data, buffers, offsets, size = _serialize(obj)
        object_id = os.urandom(20)
        w = self._client.open_writer(object_id, size, importance=importance,
                                     timeout_ms=self._put_timeout_ms)
        try:
            mem = w.buffer
            mem[:len(header)] = header
            mem[len(header):len(header) + len(data)] = data
            for off, m in zip(offsets, buffers):
                mem[off:off + m.nbytes] = m.cast("B") if m.format != "B" else m
            w.seal()
        finally:
            w.close()
        return ObjectInfo(size=size, device=None, object_id=object_id)

    async def put(self, obj, importance: int = 0) -> ObjectInfo:
        return await asyncio.to_thread(self._put, obj, importance)

    async def delete(self, object_id):
        self._client.delete(object_id)

    async def object_info(self, object_id) -> ObjectInfo:
        info = self._client.info(object_id)
        return ObjectInfo(size=info.data_size, device=None if info.device < 0 else info.device,
                          object_id=object_id)

    async def open_writer(self, size=None):
        if size is None:
            raise ValueError("StoreBackend.open_writer needs the size")
        return await asyncio.to_thread(self._client.open_writer, os.urandom(20), size, b"", 0,
                                       self._put_timeout_ms)

    async def open_reader(self, object_id):
        return await asyncio.to_thread(self._client.open_reader, object_id, 0)

    async def list(self) -> List:
        return [ObjectInfo(size=i.data_size, device=None if i.device < 0 else i.device,
                           object_id=i.id) for i in self._client.list()]

    async def prefetch(self, object_id):
        ids = object_id if isinstance(object_id, (list, tuple)) else [object_id]
        self._client.prefetch(ids)

    async def pin(self, object_id):
        self._client.pin(object_id)

    async def unpin(self, object_id):
        self._client.unpin(object_id)

    def close(self):
        self._client.close()
