"""A Mars storage backend (the storage-lib StorageBackend interface) over a `store` server."""

import asyncio
import enum
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from . import Client, ObjectId, _pickle

__all__ = ["StorageLevel", "ObjectInfo", "StoreBackend", "start_store", "stop_store"]


class StorageLevel(enum.IntFlag):
    """Where an object's bytes are (Mars's StorageLevel; the store's STORE_LEVEL_* bits)."""

    GPU = 1 << 0
    MEMORY = 1 << 1
    DISK = 1 << 2
    REMOTE = 1 << 3


@dataclass
class ObjectInfo:
    """What put() and object_info() report: size in the store, device (None: host memory) and
    the ObjectId."""

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
    """Starts a `store` server (store_bin, else $STORE_BIN, else `store` on PATH) on
    socket_path (default: in a new temporary directory) and waits until it listens; returns
    (Popen, socket_path, temp_dir). RuntimeError if it exits at start, TimeoutError if it does
    not listen within start_timeout seconds."""
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
# The layout of storeclient._pickle (Client.put_object / get_object read and write the same).
def _serialize(obj):
    lay = _pickle.serialize(obj)
    return lay.header, lay.data, lay.buffers, lay.offsets, lay.size


def _deserialize(mem):
    return _pickle.deserialize(mem)


# ---- the backend -----------------------------------------------------------------------------
class StoreBackend:
    """A Mars storage backend (the StorageBackend interface of Mars's storage lib) over a
    `store` server: Python objects are pickled with protocol 5 and their out-of-band buffers
    written straight into the store's shared memory (storeclient._pickle), then rebuilt over
    that memory on get, without a copy. Objects are addressed by random ObjectIds. Levels:
    MEMORY, and DISK when the store spills. Failures raise storeclient.StoreError subclasses
    (NotFoundError for a missing object, TimeoutError_ when no room was freed in time)."""

    name = "store"

    def __init__(self, socket_path=None, put_timeout=60.0, client_name="mars", **kwargs):
        """Connects to the store at socket_path (None: $STORE_SOCKET or the default socket).
        put_timeout: seconds a put or open_writer waits for room when the store is full (None
        = forever, 0 = fail at once); client_name is shown in the store's client list."""
        self._socket_path = socket_path
        self._client = Client(socket_path, name=client_name)
        self._put_timeout = put_timeout
        stats = self._client.stats()
        self._capacity = stats["capacity_bytes"]
        self._level = StorageLevel.MEMORY
        if stats["spill_enabled"]:
            self._level |= StorageLevel.DISK

    @classmethod
    async def setup(cls, **kwargs) -> Tuple[Dict, Dict]:
        """Starts a store server for this backend. kwargs: memory (e.g. "4G"), spill_dirs (a
        directory or a list), store_bin (else $STORE_BIN or `store` on PATH), store_args (more
        flags), put_timeout. Returns (init_params for __init__, teardown_params for
        teardown)."""
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
        """Stops the server setup() started (SIGTERM, then waits) and removes its directory.
        Returns its exit code (0 after a clean stop), or None when only a pid was given."""
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
        """MEMORY, with DISK when the store has a spill directory."""
        return self._level

    @property
    def size(self) -> Optional[int]:
        """The store's shared memory, in bytes."""
        return self._capacity

    @property
    def client(self) -> Client:
        """The storeclient.Client this backend uses."""
        return self._client

    def _get(self, object_id, timeout):
        # Returned in a box that get() empties, so that the finished future does not keep the
        # object (and with it the store's memory) alive after the caller drops it.
        return [self._client.get_object(object_id, timeout)]

    async def get(self, object_id, **kwargs) -> object:
        """The object, rebuilt over the store's memory: out-of-band buffers that the unpickled
        object keeps (e.g. NumPy arrays) hold the object open until they are collected.
        kwargs: timeout, seconds to wait for the object (default 0: NotFoundError at once)."""
        box = await asyncio.to_thread(self._get, object_id, kwargs.get("timeout", 0))
        return box.pop()

    def _put(self, obj, importance):
        layout = _pickle.serialize(obj)
        w = self._client.open_writer(ObjectId.from_random(), layout.size, importance=importance,
                                     timeout=self._put_timeout)
        try:
            layout.write_into(w.buffer)
            w.seal()
        finally:
            w.close()
        return ObjectInfo(size=layout.size, device=None, object_id=w.id)

    async def put(self, obj, importance: int = 0) -> ObjectInfo:
        """Stores obj under a new random ObjectId (ObjectInfo.object_id), waiting up to
        put_timeout for room. importance: higher is kept in memory longer."""
        return await asyncio.to_thread(self._put, obj, importance)

    async def delete(self, object_id):
        """Deletes the object (NotFoundError if absent); readers still open keep its bytes."""
        self._client.delete(object_id)

    async def object_info(self, object_id) -> ObjectInfo:
        """Its size in the store (the serialized size) and device (None for host memory)."""
        info = self._client.info(object_id)
        return ObjectInfo(size=info.data_size, device=None if info.device < 0 else info.device,
                          object_id=object_id)

    async def open_writer(self, size=None):
        """A storeclient.Writer of size bytes under a new random ObjectId (writer.id); write,
        then seal() it. ValueError without a size."""
        if size is None:
            raise ValueError("StoreBackend.open_writer needs the size")
        return await asyncio.to_thread(self._client.open_writer, ObjectId.from_random(), size,
                                       b"", 0, self._put_timeout)

    async def open_reader(self, object_id):
        """A storeclient.Reader of the object's bytes (NotFoundError if absent)."""
        return await asyncio.to_thread(self._client.open_reader, object_id, 0)

    async def list(self) -> List:
        """ObjectInfos of every object in the store."""
        return [ObjectInfo(size=i.data_size, device=None if i.device < 0 else i.device,
                           object_id=i.id) for i in self._client.list()]

    async def prefetch(self, object_id):
        """Starts reading spilled objects (one id or a list) back into memory."""
        ids = object_id if isinstance(object_id, (list, tuple)) else [object_id]
        self._client.prefetch(ids)

    async def pin(self, object_id):
        """Keeps the object in memory (never spilled) until unpin."""
        self._client.pin(object_id)

    async def unpin(self, object_id):
        """Drops a pin taken by pin()."""
        self._client.unpin(object_id)

    def close(self):
        """Closes the client (objects still read through it stay held until released)."""
        self._client.close()
