"""Python client of a `store` server (shared-memory object store), over libstoreclient."""

import ctypes
import dataclasses
import io
import os
import weakref

from . import _lib
from ._lib import (STORE_EINVAL, STORE_ENOTFOUND, STORE_EEXISTS, STORE_ENOSPACE,  # noqa: F401
                   STORE_ENODISK, STORE_ETIMEDOUT, STORE_ESEALED, STORE_ENOTSEALED,
                   STORE_EMISUSE, STORE_ECONN, STORE_EPROTO, STORE_ENOTSUP, STORE_ENOMEM,
                   STORE_ECORRUPT, STORE_EPERM, STORE_ELIMIT, STORE_OK, STORE_OBJECT_ID_SIZE,
                   STORE_STATE_CREATED, STORE_STATE_SEALED, STORE_STATE_SPILLING,
                   STORE_STATE_SPILLED, STORE_STATE_RESTORING, STORE_LEVEL_GPU,
                   STORE_LEVEL_MEMORY, STORE_LEVEL_DISK, STORE_LEVEL_REMOTE,
                   STORE_MAX_METADATA_SIZE)

__all__ = [
    "Client", "Reader", "Writer", "ObjectInfo", "StoreError", "object_id", "version",
    "NotFoundError", "ExistsError", "NoSpaceError", "TimeoutError_", "ConnectionError_",
]

_L = _lib.lib


# ---- errors ----------------------------------------------------------------------------------
class StoreError(Exception):
    """A libstoreclient failure; `.code` is the STORE_E* code, `.message` the details."""

    def __init__(self, code, message=None):
        self.code = code
        self.message = message if message is not None else errstr(code)
        super().__init__(code, self.message)

    def __str__(self):
        return "%s (%d): %s" % (errstr(self.code), self.code, self.message)


class NotFoundError(StoreError, KeyError):
    pass


class ExistsError(StoreError):
    pass


class NoSpaceError(StoreError):
    pass


class TimeoutError_(StoreError, TimeoutError):
    pass


class ConnectionError_(StoreError, ConnectionError):
    pass


class PermissionError_(StoreError, PermissionError):
    pass


_ERROR_CLASSES = {
    STORE_ENOTFOUND: NotFoundError,
    STORE_EEXISTS: ExistsError,
    STORE_ENOSPACE: NoSpaceError,
    STORE_ETIMEDOUT: TimeoutError_,
    STORE_ECONN: ConnectionError_,
    STORE_EPERM: PermissionError_,
}


def errstr(code):
    return _L.store_errstr(code).decode("utf-8", "replace")


def version():
    return _L.store_version_string().decode()


def _check(rc):
    if rc != STORE_OK:
        msg = _L.store_last_error_message().decode("utf-8", "replace")
        raise _ERROR_CLASSES.get(rc, StoreError)(rc, msg)
    return rc


# ---- ids -------------------------------------------------------------------------------------
def object_id(key):
    """The 20-byte id for key: 20 raw bytes are used as is, other str/bytes are hashed."""
    if isinstance(key, _lib.store_object_id):
        return bytes(key.bytes)
    if isinstance(key, str):
        key = key.encode("utf-8")
    elif isinstance(key, (bytearray, memoryview)):
        key = bytes(key)
    if not isinstance(key, bytes):
        raise TypeError("object ids are str or bytes, not %s" % type(key).__name__)
    if len(key) == STORE_OBJECT_ID_SIZE:
        return key
    out = _lib.store_object_id()
    _check(_L.store_object_id_from_string(key, len(key), ctypes.byref(out)))
    return bytes(out.bytes)


def _cid(key):
    out = _lib.store_object_id()
    ctypes.memmove(ctypes.addressof(out), object_id(key), STORE_OBJECT_ID_SIZE)
    return out


def _timeout_ms(timeout):
    if timeout is None:
        return -1
    if timeout < 0:
        return -1
    return int(round(timeout * 1000))


@dataclasses.dataclass
class ObjectInfo:
    id: bytes
    data_size: int
    metadata_size: int
    state: int
    level: int
    device: int
    importance: int
    pin_count: int
    reader_count: int
    create_time_ns: int
    last_access_ns: int
    creator_pid: int

    @property
    def hex(self):
        return self.id.hex()

    @classmethod
    def _from_c(cls, c):
        return cls(bytes(c.id.bytes), c.data_size, c.metadata_size, c.state, c.level, c.device,
                   c.importance, c.pin_count, c.reader_count, c.create_time_ns,
                   c.last_access_ns, c.creator_pid)


def _struct_dict(s):
    return {name: getattr(s, name) for name, _ in s._fields_ if name != "reserved_"}


def _create_options(metadata, importance, timeout_ms, device=-1):
    opts = _lib.store_create_options()
    opts.version = _lib.STORE_CREATE_OPTIONS_VERSION
    meta = bytes(metadata) if metadata else b""
    keep = None
    if meta:
        keep = ctypes.create_string_buffer(meta, len(meta))
        opts.metadata = ctypes.addressof(keep)
    opts.metadata_size = len(meta)
    opts.importance = importance
    opts.device = device
    opts.timeout_ms = timeout_ms
    return opts, keep


# ---- zero-copy buffers -----------------------------------------------------------------------
def _close_reader(handle):
    _L.store_reader_close(handle)


def _reader_memory(handle):
    """A ctypes array over a reader's data; store_reader_close runs when it is collected."""
    size = _L.store_reader_size(handle)
    addr = _L.store_reader_data(handle)
    if not addr:
        _L.store_reader_close(handle)
        raise StoreError(STORE_ENOTSUP, "the object's data is not in host memory (a GPU "
                         "object: use open_reader() and its device_ptr, or read())")
    arr = (ctypes.c_ubyte * size).from_address(addr)
    weakref.finalize(arr, _close_reader, handle)
    return arr


class Reader(io.RawIOBase):
    """A sealed object open for reading (file object). `.buffer` is its memory, read-only."""

    def __init__(self, handle):
        super().__init__()
        self._h = handle
        meta_size = ctypes.c_uint64()
        maddr = _L.store_reader_metadata(handle, ctypes.byref(meta_size))
        self.metadata = ctypes.string_at(maddr, meta_size.value) if maddr else b""
        self.id = bytes(_L.store_reader_id(handle).contents.bytes)
        self.size = _L.store_reader_size(handle)
        #: the store's device number of the data, or -1 for host memory
        self.device = _L.store_reader_device(handle)
        if self.device >= 0:
            # GPU object: no host view. The reader is closed with this file object.
            self._mem = None
            self.buffer = None
            self._finalizer = weakref.finalize(self, _close_reader, handle)
            return
        # From here on the reader is closed by the finalizer of this array, once neither this
        # file object nor any view taken from .buffer uses it.
        self._mem = _reader_memory(handle)
        self.buffer = memoryview(self._mem).cast("B").toreadonly()

    @property
    def address(self):
        return ctypes.addressof(self._mem)

    @property
    def device_ptr(self):
        """(pointer, device) of a GPU object's data: a CUDA device pointer as an int, valid on
        that CUDA device of this process while the reader is open (e.g. for
        cupy.cuda.UnownedMemory or torch's from-pointer helpers)."""
        p = ctypes.c_void_p()
        d = ctypes.c_int()
        _check(_L.store_reader_device_ptr(self._live(), ctypes.byref(p), ctypes.byref(d)))
        return p.value, d.value

    def readable(self):
        return True

    def seekable(self):
        return True

    def _live(self):
        if self.closed:
            raise ValueError("I/O operation on closed reader")
        return self._h

    def readinto(self, b):
        h = self._live()
        mv = memoryview(b).cast("B")
        n = len(mv)
        if n == 0:
            return 0
        if mv.readonly:
            raise TypeError("readinto needs a writable buffer")
        dst = (ctypes.c_char * n).from_buffer(mv)
        got = ctypes.c_size_t()
        _check(_L.store_reader_read(h, dst, n, ctypes.byref(got)))
        return got.value

    def readall(self):
        h = self._live()
        pos = _L.store_reader_tell(h)
        if self.buffer is None:  # a GPU object: copied from the device
            out = bytearray(self.size - pos)
            got = self.readinto(out) if out else 0
            return bytes(out[:got])
        data = bytes(self.buffer[pos:])
        _check(_L.store_reader_seek(h, 0, 2, None))
        return data

    def seek(self, offset, whence=io.SEEK_SET):
        h = self._live()
        pos = ctypes.c_uint64()
        _check(_L.store_reader_seek(h, offset, whence, ctypes.byref(pos)))
        return pos.value

    def tell(self):
        return _L.store_reader_tell(self._live())

    def close(self):
        if not self.closed:
            self.buffer = None
            self._mem = None  # the finalizer closes the reader when the last view is gone
            self._h = None
            if self.device >= 0:
                self._finalizer()
        super().close()


class Writer(io.RawIOBase):
    """An object being created (file object). seal() publishes it; close() without seal aborts.
    `.buffer` is the object's memory, writable until seal or abort."""

    def __init__(self, handle, object_id_):
        super().__init__()
        self._h = handle
        self._pid = os.getpid()
        self.id = object_id_
        self.size = _L.store_writer_size(handle)
        addr = _L.store_writer_data(handle)
        self._mem = (ctypes.c_ubyte * self.size).from_address(addr) if addr else None
        self.buffer = memoryview(self._mem).cast("B") if addr else None
        self.sealed = False

    def writable(self):
        return True

    def seekable(self):
        return True

    def _live(self):
        if self.closed or self._h is None:
            raise ValueError("I/O operation on closed writer")
        return self._h

    @property
    def device_ptr(self):
        """(pointer, device) of a GPU object's data, as Reader.device_ptr."""
        p = ctypes.c_void_p()
        d = ctypes.c_int()
        _check(_L.store_writer_device_ptr(self._live(), ctypes.byref(p), ctypes.byref(d)))
        return p.value, d.value

    def write(self, b):
        h = self._live()
        if isinstance(b, bytes):
            n = len(b)
            _check(_L.store_writer_write(h, b, n))
            return n
        mv = memoryview(b).cast("B")
        n = len(mv)
        if n == 0:
            return 0
        pos = _L.store_writer_tell(h)
        if self.buffer is not None and pos + n <= self.size:
            self.buffer[pos:pos + n] = mv
            _check(_L.store_writer_seek(h, pos + n, 0, None))
            return n
        return self.write(mv.tobytes())

    def seek(self, offset, whence=io.SEEK_SET):
        h = self._live()
        pos = ctypes.c_uint64()
        _check(_L.store_writer_seek(h, offset, whence, ctypes.byref(pos)))
        return pos.value

    def tell(self):
        return _L.store_writer_tell(self._live())

    def _drop_memory(self):
        if self.buffer is not None:
            try:
                self.buffer.release()
            except BufferError:
                pass
        self.buffer = None
        self._mem = None

    def seal(self):
        h = self._live()
        self._drop_memory()
        self._h = None
        self.sealed = True
        _check(_L.store_writer_seal(h))

    def abort(self):
        if self._h is not None:
            h, self._h = self._h, None
            self._drop_memory()
            _check(_L.store_writer_abort(h))

    def close(self):
        if not self.closed:
            try:
                self.abort()
            except StoreError as e:
                # With the connection gone the server has aborted the object already. In a
                # child forked after the writer was made, the object is the parent's: closing
                # frees the child's handle and leaves the object alone (STORE_EMISUSE).
                forked = e.code == STORE_EMISUSE and os.getpid() != self._pid
                if e.code != STORE_ECONN and not forked:
                    raise
        super().close()

    def __exit__(self, exc_type, exc, tb):
        # A writer left by an exception is aborted; otherwise it is sealed unless done already.
        if exc_type is None and self._h is not None and not self.closed:
            self.seal()
        self.close()


# ---- the client ------------------------------------------------------------------------------
class Client:
    def __init__(self, socket_path=None, name=None, read_only=False):
        """Connects to the store at socket_path (None: the default socket). name is shown in
        the store's client list. A read_only client reads, lists and watches; the store refuses
        its changes (PermissionError_), and the memory it maps cannot be made writable."""
        opts = _lib.store_connect_options()
        opts.version = _lib.STORE_CONNECT_OPTIONS_VERSION
        opts.client_name = name.encode() if name else None
        opts.read_only = 1 if read_only else 0
        h = ctypes.c_void_p()
        path = socket_path.encode() if isinstance(socket_path, str) else socket_path
        _check(_L.store_client_connect(ctypes.byref(h), path, ctypes.byref(opts)))
        self._h = h
        self._finalizer = weakref.finalize(self, _L.store_client_free, h)

    # -- lifetime
    def close(self):
        """Disconnects. Views returned by get() stay mapped, but the server no longer holds
        those objects for this client."""
        self._finalizer()

    @property
    def closed(self):
        return not self._finalizer.alive

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _handle(self):
        if not self._finalizer.alive:
            raise StoreError(STORE_EMISUSE, "the client is closed")
        return self._h

    # -- writing
    def put(self, id, data, metadata=b"", importance=0, timeout_ms=0, device=-1):
        """Puts an object; device >= 0 puts it in that GPU's memory (copied from data)."""
        h = self._handle()
        cid = _cid(id)
        opts, keep = _create_options(metadata, importance, timeout_ms, device)
        if device >= 0 and not isinstance(data, bytes):
            data = bytes(memoryview(data).cast("B"))
        if isinstance(data, bytes):
            _check(_L.store_put(h, ctypes.byref(cid), data, len(data), ctypes.byref(opts)))
            return cid_bytes(cid)
        mv = memoryview(data)
        if mv.ndim != 1 or mv.format != "B":
            mv = mv.cast("B")
        if not mv.readonly and mv.contiguous:
            n = len(mv)
            ptr = (ctypes.c_char * n).from_buffer(mv) if n else None
            _check(_L.store_put(h, ctypes.byref(cid), ptr, n, ctypes.byref(opts)))
            return cid_bytes(cid)
        w = self._create(h, cid, len(mv), opts)
        try:
            w.buffer[:] = mv
        except BaseException:
            w.close()
            raise
        w.seal()
        w.close()
        return cid_bytes(cid)

    def _create(self, h, cid, size, opts):
        wh = ctypes.c_void_p()
        _check(_L.store_create(h, ctypes.byref(wh), ctypes.byref(cid), size, ctypes.byref(opts)))
        return Writer(wh, cid_bytes(cid))

    def open_writer(self, id, size, metadata=b"", importance=0, timeout_ms=0, device=-1):
        h = self._handle()
        opts, keep = _create_options(metadata, importance, timeout_ms, device)
        return self._create(h, _cid(id), size, opts)

    # -- reading
    def _open(self, id, timeout):
        h = self._handle()
        cid = _cid(id)
        rh = ctypes.c_void_p()
        _check(_L.store_open_reader(h, ctypes.byref(rh), ctypes.byref(cid), _timeout_ms(timeout)))
        return rh

    def get(self, id, timeout=None):
        """A read-only memoryview of the object's memory (no copy). The object stays held
        until that view (and every view taken from it) is released and collected."""
        rh = self._open(id, timeout)
        return memoryview(_reader_memory(rh)).cast("B").toreadonly()

    def open_reader(self, id, timeout=None):
        return Reader(self._open(id, timeout))

    # -- management
    def contains(self, id):
        present = ctypes.c_int()
        _check(_L.store_contains(self._handle(), ctypes.byref(_cid(id)), ctypes.byref(present)))
        return bool(present.value)

    __contains__ = contains

    def delete(self, id):
        _check(_L.store_delete(self._handle(), ctypes.byref(_cid(id))))

    def info(self, id):
        out = _lib.store_object_info()
        _check(_L.store_info(self._handle(), ctypes.byref(_cid(id)), ctypes.byref(out)))
        return ObjectInfo._from_c(out)

    def list(self):
        out = ctypes.POINTER(_lib.store_object_info)()
        count = ctypes.c_size_t()
        _check(_L.store_list(self._handle(), ctypes.byref(out), ctypes.byref(count)))
        try:
            return [ObjectInfo._from_c(out[i]) for i in range(count.value)]
        finally:
            _L.store_free(out)

    def list_clients(self):
        out = ctypes.POINTER(_lib.store_client_info)()
        count = ctypes.c_size_t()
        _check(_L.store_list_clients(self._handle(), ctypes.byref(out), ctypes.byref(count)))
        try:
            result = []
            for i in range(count.value):
                d = _struct_dict(out[i])
                d["name"] = d["name"].decode("utf-8", "replace")
                result.append(d)
            return result
        finally:
            _L.store_free(out)

    def pin(self, id):
        _check(_L.store_pin(self._handle(), ctypes.byref(_cid(id))))

    def unpin(self, id):
        _check(_L.store_unpin(self._handle(), ctypes.byref(_cid(id))))

    def set_importance(self, id, importance):
        _check(_L.store_set_importance(self._handle(), ctypes.byref(_cid(id)), importance))

    def prefetch(self, ids):
        if isinstance(ids, (str, bytes)):
            ids = [ids]
        ids = list(ids)
        if not ids:
            return
        arr = (_lib.store_object_id * len(ids))(*[_cid(i) for i in ids])
        _check(_L.store_prefetch(self._handle(), arr, len(ids)))

    def evict(self, nbytes):
        spilled = ctypes.c_uint64()
        _check(_L.store_evict(self._handle(), nbytes, ctypes.byref(spilled)))
        return spilled.value

    def stats(self):
        out = _lib.store_stats()
        _check(_L.store_stats_get(self._handle(), ctypes.byref(out)))
        return _struct_dict(out)

    def gpu_stats(self):
        """(backend, [per-device dicts]): backend is "none", "cuda" or "memfd-standin"."""
        arr = ctypes.POINTER(_lib.store_gpu_device_stats)()
        n = ctypes.c_size_t()
        backend = ctypes.c_int()
        _check(_L.store_gpu_stats(self._handle(), ctypes.byref(arr), ctypes.byref(n),
                                  ctypes.byref(backend)))
        try:
            devices = [_struct_dict(arr[i]) for i in range(n.value)]
        finally:
            _L.store_free(arr)
        names = {_lib.STORE_GPU_BACKEND_CUDA: "cuda",
                 _lib.STORE_GPU_BACKEND_MEMFD_STANDIN: "memfd-standin"}
        return names.get(backend.value, "none"), devices


def cid_bytes(cid):
    return bytes(cid.bytes)
