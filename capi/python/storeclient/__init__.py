"""Python client of a `store` server (shared-memory object store), over libstoreclient.

Ids: a key (str or bytes, of any length, the empty one included) is always hashed into a
20-byte id the same way in every binding (store_object_id_from_string: SHA-1 of the key's bytes,
a str as UTF-8). A raw id is an ObjectId: ObjectId(20 bytes), ObjectId.from_hex(40 digits).
Every call that takes an id takes either.

Timeouts are in seconds (a float) everywhere: None waits forever, 0 does not wait. Calls that
create objects wait for room by default (DEFAULT_PUT_TIMEOUT: a spilling store frees memory by
writing objects to disk meanwhile); calls that read wait for the object by default
(DEFAULT_GET_TIMEOUT, None: forever, as Plasma did; pass 0 for a lookup that fails at once).
"""

import ctypes
import dataclasses
import io
import math
import os
import threading
import warnings
import weakref

from . import _lib, _pickle
from ._lib import (STORE_EINVAL, STORE_ENOTFOUND, STORE_EEXISTS, STORE_ENOSPACE,  # noqa: F401
                   STORE_ENODISK, STORE_ETIMEDOUT, STORE_ESEALED, STORE_ENOTSEALED,
                   STORE_EMISUSE, STORE_ECONN, STORE_EPROTO, STORE_ENOTSUP, STORE_ENOMEM,
                   STORE_ECORRUPT, STORE_EPERM, STORE_ELIMIT, STORE_OK, STORE_OBJECT_ID_SIZE,
                   STORE_STATE_CREATED, STORE_STATE_SEALED, STORE_STATE_SPILLING,
                   STORE_STATE_SPILLED, STORE_STATE_RESTORING, STORE_LEVEL_GPU,
                   STORE_LEVEL_MEMORY, STORE_LEVEL_DISK, STORE_LEVEL_REMOTE,
                   STORE_MAX_METADATA_SIZE)

__all__ = [
    "Client", "Reader", "Writer", "ObjectId", "ObjectInfo", "StoreError", "object_id", "version",
    "NotFoundError", "ExistsError", "NoSpaceError", "TimeoutError_", "ConnectionError_",
    "PermissionError_", "DEFAULT_PUT_TIMEOUT", "DEFAULT_GET_TIMEOUT",
]

#: Seconds a create (put, put_object, put_many, open_writer) waits by default for room when the
#: store is full: with a spill directory the store writes other objects to disk meanwhile;
#: without one it waits for readers to close, pins to go or deletes. Then TimeoutError_, whose
#: message says what holds the memory.
DEFAULT_PUT_TIMEOUT = 60.0
#: Seconds a read (get, get_object, get_many, open_reader) waits by default for the object to be
#: created and sealed, and for room to read it back from disk: None, forever.
DEFAULT_GET_TIMEOUT = None

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
    """STORE_ENOTFOUND: no such object (a KeyError too)."""


class ExistsError(StoreError):
    """STORE_EEXISTS: an object with that id exists already (objects are immutable)."""


class NoSpaceError(StoreError):
    """STORE_ENOSPACE: the store is full and the call was not to wait (timeout 0)."""


class TimeoutError_(StoreError, TimeoutError):
    """STORE_ETIMEDOUT: the object was not sealed, or no room was freed, in time."""


class ConnectionError_(StoreError, ConnectionError):
    """STORE_ECONN: the store cannot be reached, or the connection was lost."""


class PermissionError_(StoreError, PermissionError):
    """STORE_EPERM: the store refuses this user, or this read-only client's change."""


_ERROR_CLASSES = {
    STORE_ENOTFOUND: NotFoundError,
    STORE_EEXISTS: ExistsError,
    STORE_ENOSPACE: NoSpaceError,
    STORE_ETIMEDOUT: TimeoutError_,
    STORE_ECONN: ConnectionError_,
    STORE_EPERM: PermissionError_,
}


def errstr(code):
    """The library's short description of a STORE_E* code ("store is full")."""
    return _L.store_errstr(code).decode("utf-8", "replace")


def version():
    """The version of libstoreclient ("0.2.0")."""
    return _L.store_version_string().decode()


def _check(rc):
    if rc != STORE_OK:
        msg = _L.store_last_error_message().decode("utf-8", "replace")
        raise _ERROR_CLASSES.get(rc, StoreError)(rc, msg)
    return rc


# ---- ids -------------------------------------------------------------------------------------
class ObjectId:
    """A raw 20-byte object id, used as is (never hashed).

    ObjectId(b) takes exactly 20 bytes; ObjectId.from_hex(s) 40 hex digits; ObjectId.from_key(k)
    hashes a key as every call given a str or bytes does; ObjectId.from_random() makes a fresh
    one. bytes(oid) / oid.binary() give the 20 bytes, oid.hex() / str(oid) the 40 digits.
    ObjectIds compare, sort, hash and pickle by their bytes; they never equal a str or bytes."""

    __slots__ = ("_b",)

    def __init__(self, raw):
        """The id whose bytes are raw (20 bytes, or another ObjectId)."""
        if isinstance(raw, ObjectId):
            raw = raw._b
        elif isinstance(raw, _lib.store_object_id):
            raw = bytes(raw.bytes)
        elif isinstance(raw, str):
            raise TypeError("ObjectId takes 20 raw bytes; for a key use ObjectId.from_key(%r) "
                            "or pass the key itself, for hex digits ObjectId.from_hex()" % raw)
        b = bytes(raw)
        if len(b) != STORE_OBJECT_ID_SIZE:
            raise ValueError("an ObjectId is exactly %d bytes, not %d (a key of any length is "
                             "hashed: ObjectId.from_key)" % (STORE_OBJECT_ID_SIZE, len(b)))
        self._b = b

    @classmethod
    def from_key(cls, key):
        """The id of a key (str, as UTF-8, or bytes): store_object_id_from_string."""
        if isinstance(key, str):
            key = key.encode("utf-8")
        elif isinstance(key, (bytearray, memoryview)):
            key = bytes(key)
        if not isinstance(key, bytes):
            raise TypeError("keys are str or bytes, not %s" % type(key).__name__)
        out = _lib.store_object_id()
        _check(_L.store_object_id_from_string(key, len(key), ctypes.byref(out)))
        return cls(bytes(out.bytes))

    @classmethod
    def from_hex(cls, hex_digits):
        """Parses 40 hex digits (either case). ValueError otherwise."""
        if isinstance(hex_digits, bytes):
            hex_digits = hex_digits.decode("ascii", "replace")
        if len(hex_digits) != 2 * STORE_OBJECT_ID_SIZE:
            raise ValueError("an id in hex is 40 digits, not %d" % len(hex_digits))
        return cls(bytes.fromhex(hex_digits))

    @classmethod
    def from_random(cls):
        """A new random id (os.urandom)."""
        return cls(os.urandom(STORE_OBJECT_ID_SIZE))

    def binary(self):
        """The 20 bytes."""
        return self._b

    def hex(self):
        """40 lowercase hex digits."""
        return self._b.hex()

    def __bytes__(self):
        return self._b

    def __str__(self):
        return self._b.hex()

    def __repr__(self):
        return "ObjectId.from_hex(%r)" % self._b.hex()

    def __eq__(self, other):
        return isinstance(other, ObjectId) and other._b == self._b

    def __ne__(self, other):
        return not self.__eq__(other)

    def __lt__(self, other):
        if not isinstance(other, ObjectId):
            return NotImplemented
        return self._b < other._b

    def __le__(self, other):
        if not isinstance(other, ObjectId):
            return NotImplemented
        return self._b <= other._b

    def __gt__(self, other):
        if not isinstance(other, ObjectId):
            return NotImplemented
        return self._b > other._b

    def __ge__(self, other):
        if not isinstance(other, ObjectId):
            return NotImplemented
        return self._b >= other._b

    def __hash__(self):
        return hash((ObjectId, self._b))

    def __reduce__(self):
        return (ObjectId, (self._b,))


def object_id(key):
    """The ObjectId of key: an ObjectId (or a ctypes store_object_id) as it is; a str or bytes
    key of any length, hashed (the same id C's store_object_id_from_string and Rust's
    ObjectId::from_key give). TypeError for anything else."""
    if isinstance(key, ObjectId):
        return key
    if isinstance(key, _lib.store_object_id):
        return ObjectId(bytes(key.bytes))
    return ObjectId.from_key(key)


def _cid(key):
    out = _lib.store_object_id()
    ctypes.memmove(ctypes.addressof(out), object_id(key).binary(), STORE_OBJECT_ID_SIZE)
    return out


def _timeout_ms(timeout):
    """Seconds (None = forever, 0 = no wait) to the library's milliseconds (-1, 0, rounded up)."""
    if timeout is None:
        return -1
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError("a timeout is a number of seconds or None, not %s"
                        % type(timeout).__name__)
    if timeout < 0 or timeout != timeout:
        raise ValueError("a timeout is >= 0 seconds, or None to wait forever; got %r" % timeout)
    if math.isinf(timeout):
        return -1
    return min(int(math.ceil(timeout * 1000)), (1 << 63) - 1)


def _put_timeout(timeout, timeout_ms, name):
    """The create timeout in ms from timeout (seconds) or the deprecated timeout_ms keyword."""
    if timeout_ms is None:
        return _timeout_ms(timeout)
    warnings.warn("%s(timeout_ms=...) is deprecated: pass timeout in seconds (None = forever, "
                  "0 = no wait)" % name, DeprecationWarning, stacklevel=3)
    return -1 if timeout_ms < 0 else int(timeout_ms)


@dataclasses.dataclass
class ObjectInfo:
    """What the store reports about one object (info, list, list_page). Sizes are the stored
    ones: an empty value (see Client.put) shows as 1 byte of data and its marker metadata."""

    id: ObjectId
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
    lease_count: int = 0

    @property
    def hex(self):
        """The id in 40 hex digits."""
        return self.id.hex()

    @classmethod
    def _from_c(cls, c):
        return cls(ObjectId(bytes(c.id.bytes)), c.data_size, c.metadata_size, c.state, c.level, c.device,
                   c.importance, c.pin_count, c.reader_count, c.create_time_ns,
                   c.last_access_ns, c.creator_pid, c.lease_count)


def _struct_dict(s):
    return {name: getattr(s, name) for name, _ in s._fields_
            if name not in ("struct_size", "pad_", "reserved_")}


def _create_options(metadata, importance, timeout_ms, device=-1, leased=False):
    opts = _lib.store_create_options()
    opts.version = _lib.STORE_CREATE_OPTIONS_VERSION
    opts.flags = _lib.STORE_CREATE_LEASED if leased else 0
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


# ---- empty values ----------------------------------------------------------------------------
# The store holds objects of at least one byte. An empty value is stored as one zero byte with
# metadata that starts with this marker (the caller's metadata follows it); get, open_reader and
# get_object give it back as empty, with the caller's metadata. Other languages see the stored
# form: one byte of data, the marker in front of the metadata.
EMPTY_MARKER = b"\x00storeclient:empty\x00"


def _is_empty(size, metadata):
    return size == 1 and metadata.startswith(EMPTY_MARKER)


def _reader_metadata(handle):
    meta_size = ctypes.c_uint64()
    maddr = _L.store_reader_metadata(handle, ctypes.byref(meta_size))
    return ctypes.string_at(maddr, meta_size.value) if maddr else b""


# ---- the connection's lifetime ---------------------------------------------------------------
class _Session:
    """Owns a store_client handle. close() frees it only once nothing uses it any more: every
    view from get(), Reader and Writer holds the session (acquire/release), so that the store
    keeps holding their objects for as long as their memory can be read or written here. After
    close() nothing new may acquire it."""

    def __init__(self, handle):
        self.handle = handle
        self._lock = threading.RLock()
        self._users = 0
        self._closing = False
        self._freed = False

    def acquire(self):
        with self._lock:
            if self._closing:
                raise StoreError(STORE_EMISUSE, "the client is closed")
            self._users += 1
        return self.handle

    def release(self):
        with self._lock:
            self._users -= 1
            free = self._closing and self._users == 0 and not self._freed
            if free:
                self._freed = True
        if free:
            _L.store_client_free(self.handle)

    def close(self):
        with self._lock:
            self._closing = True
            free = self._users == 0 and not self._freed
            if free:
                self._freed = True
        if free:
            _L.store_client_free(self.handle)

    @property
    def closing(self):
        return self._closing

    @property
    def freed(self):
        return self._freed


# ---- zero-copy buffers -----------------------------------------------------------------------
def _close_reader(handle):
    _L.store_reader_close(handle)


def _close_reader_of(session, handle):
    _L.store_reader_close(handle)
    if session is not None:
        session.release()


def _reader_memory(handle, session=None):
    """A ctypes array over a reader's data; store_reader_close runs when it is collected, and
    then the session (which the caller acquired for it) is released."""
    size = _L.store_reader_size(handle)
    addr = _L.store_reader_data(handle)
    if not addr:
        _close_reader_of(session, handle)
        raise StoreError(STORE_ENOTSUP, "the object's data is not in host memory (a GPU "
                         "object: use open_reader() and its device_ptr, or read())")
    arr = (ctypes.c_ubyte * size).from_address(addr)
    weakref.finalize(arr, _close_reader_of, session, handle)
    return arr


def _view(handle, session):
    """(read-only memoryview, metadata) of an open reader, which it now owns: an empty value is
    a view of b"" (the reader is closed at once)."""
    metadata = _reader_metadata(handle)
    if _is_empty(_L.store_reader_size(handle), metadata) and _L.store_reader_device(handle) < 0:
        _close_reader_of(session, handle)
        return memoryview(b""), metadata[len(EMPTY_MARKER):]
    return memoryview(_reader_memory(handle, session)).cast("B").toreadonly(), metadata


class Reader(io.RawIOBase):
    """A sealed object open for reading, as a binary file object (read, readinto, seek, tell).
    `.buffer` is its memory, read-only, without a copy; `.metadata` its metadata (bytes), `.id`
    its ObjectId, `.size` its size. The object stays held (never evicted, its memory never
    reused) until the reader is closed and every view taken from `.buffer` is released."""

    def __init__(self, handle, session=None):
        """Takes over an open store_reader handle (Client.open_reader makes Readers)."""
        super().__init__()
        self._h = handle
        self._session = session
        metadata = _reader_metadata(handle)
        self.id = ObjectId(bytes(_L.store_reader_id(handle).contents.bytes))
        self.size = _L.store_reader_size(handle)
        #: the store's device number of the data, or -1 for host memory
        self.device = _L.store_reader_device(handle)
        self._empty = self.device < 0 and _is_empty(self.size, metadata)
        if self._empty:
            # An empty value: nothing to hold; the reader is closed at once.
            _close_reader_of(session, handle)
            self._h = None
            self.metadata = metadata[len(EMPTY_MARKER):]
            self.size = 0
            self._pos = 0
            self._mem = None
            self.buffer = memoryview(b"")
            return
        self.metadata = metadata
        if self.device >= 0:
            # GPU object: no host view. The reader is closed with this file object.
            self._mem = None
            self.buffer = None
            self._finalizer = weakref.finalize(self, _close_reader_of, session, handle)
            return
        # From here on the reader is closed by the finalizer of this array, once neither this
        # file object nor any view taken from .buffer uses it.
        self._mem = _reader_memory(handle, session)
        self.buffer = memoryview(self._mem).cast("B").toreadonly()

    @property
    def address(self):
        """The address of the data in this process (an int), for C code and NumPy."""
        return ctypes.addressof(self._mem) if self._mem is not None else 0

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
        """True: a Reader reads."""
        return True

    def seekable(self):
        """True: a Reader seeks."""
        return True

    def _live(self):
        if self.closed:
            raise ValueError("I/O operation on closed reader")
        return self._h

    def readinto(self, b):
        """Copies into b from the current position; returns the count (0 at the end)."""
        h = self._live()
        if self._empty:
            return 0
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
        """The rest of the object from the current position, as bytes."""
        h = self._live()
        if self._empty:
            return b""
        pos = _L.store_reader_tell(h)
        if self.buffer is None:  # a GPU object: copied from the device
            out = bytearray(self.size - pos)
            got = self.readinto(out) if out else 0
            return bytes(out[:got])
        data = bytes(self.buffer[pos:])
        _check(_L.store_reader_seek(h, 0, 2, None))
        return data

    def seek(self, offset, whence=io.SEEK_SET):
        """Moves the position (within [0, size]; StoreError STORE_EINVAL otherwise)."""
        h = self._live()
        if self._empty:
            if offset != 0 or whence not in (io.SEEK_SET, io.SEEK_CUR, io.SEEK_END):
                raise StoreError(STORE_EINVAL, "position %d is outside the empty object"
                                 % offset)
            return 0
        pos = ctypes.c_uint64()
        _check(_L.store_reader_seek(h, offset, whence, ctypes.byref(pos)))
        return pos.value

    def tell(self):
        """The current position."""
        h = self._live()
        return 0 if self._empty else _L.store_reader_tell(h)

    def close(self):
        """Closes the file object. The object stays held while views of .buffer live."""
        if not self.closed:
            self.buffer = None
            self._mem = None  # the finalizer closes the reader when the last view is gone
            self._h = None
            if self.device >= 0:
                self._finalizer()
        super().close()


class Writer(io.RawIOBase):
    """An object being created, as a binary file object (write, seek, tell). seal() publishes
    it; close() without seal, or leaving a with block by an exception, aborts it (a with block
    that ends normally seals). `.buffer` is the object's memory, writable until seal or abort;
    `.id` its ObjectId, `.size` its size."""

    def __init__(self, handle, object_id_, session=None, empty=False):
        """Takes over a store_writer handle (Client.open_writer makes Writers)."""
        super().__init__()
        self._h = handle
        self._session = session
        self._pid = os.getpid()
        self.id = object_id_
        self._empty = empty
        self.sealed = False
        if empty:
            # Stored as one zero byte (see EMPTY_MARKER); the caller sees an object of size 0.
            _check(_L.store_writer_write(handle, b"\x00", 1))
            self.size = 0
            self._mem = None
            self.buffer = memoryview(bytearray(0))
            return
        self.size = _L.store_writer_size(handle)
        addr = _L.store_writer_data(handle)
        self._mem = (ctypes.c_ubyte * self.size).from_address(addr) if addr else None
        self.buffer = memoryview(self._mem).cast("B") if addr else None

    def _release_session(self):
        session, self._session = self._session, None
        if session is not None:
            session.release()

    def writable(self):
        """True: a Writer writes."""
        return True

    def seekable(self):
        """True: a Writer seeks."""
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
        """Copies b at the current position and advances it; StoreError STORE_EINVAL (nothing
        written) if it would pass the end of the object."""
        h = self._live()
        if self._empty:
            if memoryview(b).nbytes:
                raise StoreError(STORE_EINVAL, "the object is empty: nothing can be written")
            return 0
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
        """Moves the position (within [0, size]; StoreError STORE_EINVAL otherwise)."""
        h = self._live()
        if self._empty:
            if offset != 0:
                raise StoreError(STORE_EINVAL, "position %d is outside the empty object"
                                 % offset)
            return 0
        pos = ctypes.c_uint64()
        _check(_L.store_writer_seek(h, offset, whence, ctypes.byref(pos)))
        return pos.value

    def tell(self):
        """The current position."""
        h = self._live()
        return 0 if self._empty else _L.store_writer_tell(h)

    def _drop_memory(self):
        if self.buffer is not None:
            try:
                self.buffer.release()
            except BufferError:
                pass
        self.buffer = None
        self._mem = None

    def seal(self):
        """Publishes the object: immutable and visible to every client. The writer is done."""
        h = self._live()
        self._drop_memory()
        self._h = None
        self.sealed = True
        try:
            _check(_L.store_writer_seal(h))
        finally:
            self._release_session()

    def abort(self):
        """Throws the object away and frees its id. The writer is done."""
        if self._h is not None:
            h, self._h = self._h, None
            self._drop_memory()
            try:
                _check(_L.store_writer_abort(h))
            finally:
                self._release_session()

    def close(self):
        """Aborts the object unless it was sealed, and closes the file object."""
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
    """A connection to a store server. Safe to share between threads. Every call that takes
    an id takes an ObjectId (a raw id) or a key (str or bytes, hashed; see the module's
    docstring). Failures raise StoreError (or one of its subclasses) with the STORE_E* code in
    .code and the library's details in .message."""

    def __init__(self, socket_path=None, name=None, read_only=False):
        """Connects to the store at socket_path (None: $STORE_SOCKET if set, else the default
        socket, $XDG_RUNTIME_DIR/store.sock or /tmp/store-$UID.sock). name is shown in the
        store's client list. A read_only client reads, lists and watches; the store refuses
        its changes (PermissionError_), and the memory it maps cannot be made writable."""
        opts = _lib.store_connect_options()
        opts.version = _lib.STORE_CONNECT_OPTIONS_VERSION
        opts.client_name = name.encode() if name else None
        opts.read_only = 1 if read_only else 0
        h = ctypes.c_void_p()
        if isinstance(socket_path, os.PathLike):
            socket_path = os.fspath(socket_path)
        path = socket_path.encode() if isinstance(socket_path, str) else socket_path
        _check(_L.store_client_connect(ctypes.byref(h), path, ctypes.byref(opts)))
        self._h = h
        self._session = _Session(h)
        self._finalizer = weakref.finalize(self, self._session.close)

    # -- lifetime
    def close(self):
        """Closes the client: every later call on it raises StoreError (STORE_EMISUSE). Views
        from get() and get_object(), Readers and Writers still open keep the connection, and
        with it their objects, until the last of them is released (collected), so their bytes
        never change under them; the store then sees the client leave. Idempotent."""
        self._finalizer()

    @property
    def closed(self):
        """True once close() was called (the connection may still serve live views)."""
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
    def put(self, id, data, metadata=b"", importance=0, timeout=DEFAULT_PUT_TIMEOUT, device=-1,
            *, leased=False, timeout_ms=None):
        """Stores data (bytes or any buffer, e.g. a bytearray or a NumPy array's memory) under
        id and returns its ObjectId. metadata (bytes, at most 1 MiB) is kept with it;
        importance orders eviction (higher is kept in memory longer); timeout: seconds to wait
        for room when the store is full (None = forever, 0 = NoSpaceError at once), then
        TimeoutError_; device >= 0 puts it in that GPU's memory (copied from data); leased
        makes it a leased object (see lease()), this client holding its first lease.
        ExistsError if the id is taken (objects are immutable). An empty value is stored as
        one marked byte (see EMPTY_MARKER) and read back as empty by this package."""
        h = self._handle()
        cid = _cid(id)
        tms = _put_timeout(timeout, timeout_ms, "put")
        if device < 0 and memoryview(data).nbytes == 0:
            with self.open_writer(cid_bytes(cid), 0, metadata, importance, timeout,
                                  leased=leased, timeout_ms=timeout_ms) as w:
                pass
            return w.id
        opts, keep = _create_options(metadata, importance, tms, device, leased)
        if device >= 0 and not isinstance(data, bytes):
            data = memoryview(data).tobytes()
        if isinstance(data, bytes):
            _check(_L.store_put(h, ctypes.byref(cid), data, len(data), ctypes.byref(opts)))
            return cid_bytes(cid)
        mv = memoryview(data)
        if not mv.c_contiguous:
            mv = memoryview(mv.tobytes())
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

    def _create(self, h, cid, size, opts, empty=False):
        self._session.acquire()
        try:
            wh = ctypes.c_void_p()
            _check(_L.store_create(h, ctypes.byref(wh), ctypes.byref(cid), size,
                                   ctypes.byref(opts)))
        except BaseException:
            self._session.release()
            raise
        try:
            return Writer(wh, cid_bytes(cid), self._session, empty)
        except BaseException:
            _L.store_writer_abort(wh)
            self._session.release()
            raise

    def open_writer(self, id, size, metadata=b"", importance=0, timeout=DEFAULT_PUT_TIMEOUT,
                    device=-1, *, leased=False, timeout_ms=None):
        """Creates an object of size bytes under id and returns its Writer (a file object
        with a writable .buffer); seal() publishes it. Arguments as for put(). size 0 makes an
        empty value."""
        h = self._handle()
        tms = _put_timeout(timeout, timeout_ms, "open_writer")
        empty = size == 0 and device < 0
        if empty:
            metadata = EMPTY_MARKER + bytes(metadata or b"")
        opts, keep = _create_options(metadata, importance, tms, device, leased)
        return self._create(h, _cid(id), 1 if empty else size, opts, empty)

    def put_object(self, id, obj, metadata=b"", importance=0, timeout=DEFAULT_PUT_TIMEOUT, *,
                   leased=False):
        """Stores any picklable Python object under id and returns its ObjectId. It is pickled
        with protocol 5 and its out-of-band buffers (NumPy arrays' data, bytearrays,
        PickleBuffers) are written straight into the store's memory, in the layout described
        in storeclient._pickle (the one mars.StoreBackend uses). Other arguments as for put()."""
        layout = _pickle.serialize(obj)
        w = self.open_writer(id, layout.size, metadata, importance, timeout, leased=leased)
        try:
            layout.write_into(w.buffer)
            w.seal()
        finally:
            w.close()
        return w.id

    def put_many(self, items, metadata=b"", importance=0, timeout=DEFAULT_PUT_TIMEOUT, *,
                 leased=False):
        """Stores many values in few round trips: items is a mapping or an iterable of
        (id, data) pairs; all share metadata, importance, timeout and leased (as for put()). Returns
        their ObjectIds in order. Every item is tried; if any fails, the first failure is
        raised (its message names the id) with .done set to how many were stored."""
        h = self._handle()
        if hasattr(items, "items"):
            items = items.items()
        items = list(items)
        tms = _timeout_ms(timeout)
        ids = [object_id(k) for k, _ in items]
        bufs = []
        done = 0
        first_error = None
        batch = []
        for oid, data in zip(ids, (d for _, d in items)):
            mv = memoryview(data)
            if mv.nbytes == 0:
                try:
                    self.put(oid, b"", metadata, importance, timeout, leased=leased)
                    done += 1
                except StoreError as e:
                    first_error = first_error or e
                continue
            if not mv.c_contiguous or mv.readonly and not isinstance(data, bytes):
                mv = memoryview(mv.tobytes())
            bufs.append(mv)
            batch.append(oid)
        if batch:
            n = len(batch)
            cids = (_lib.store_object_id * n)(*[_cid(i) for i in batch])
            keep = []
            ptrs = (ctypes.c_void_p * n)()
            sizes = (ctypes.c_uint64 * n)()
            for i, mv in enumerate(bufs):
                obj = mv.obj if isinstance(mv.obj, bytes) and mv.nbytes == len(mv.obj) else None
                if obj is not None:
                    ptrs[i] = ctypes.cast(ctypes.c_char_p(obj), ctypes.c_void_p).value
                    keep.append(obj)
                else:
                    mv = mv.cast("B") if (mv.ndim != 1 or mv.format != "B") else mv
                    arr = (ctypes.c_char * mv.nbytes).from_buffer(mv)
                    keep.append(arr)
                    ptrs[i] = ctypes.addressof(arr)
                sizes[i] = bufs[i].nbytes
            opts, keep_meta = _create_options(metadata, importance, tms, leased=leased)
            got = ctypes.c_size_t()
            rc = _L.store_put_many(h, cids, ptrs, sizes, n, ctypes.byref(opts),
                                   ctypes.byref(got))
            done += got.value
            if rc != STORE_OK and first_error is None:
                try:
                    _check(rc)
                except StoreError as e:
                    first_error = e
        if first_error is not None:
            first_error.done = done
            raise first_error
        return ids

    # -- reading
    def _open(self, id, timeout):
        h = self._handle()
        cid = _cid(id)
        rh = ctypes.c_void_p()
        _check(_L.store_open_reader(h, ctypes.byref(rh), ctypes.byref(cid), _timeout_ms(timeout)))
        return rh

    def _open_held(self, id, timeout):
        """Opens a reader with the session acquired for it (released when it is closed)."""
        self._session.acquire()
        try:
            return self._open(id, timeout)
        except BaseException:
            self._session.release()
            raise

    def get(self, id, timeout=DEFAULT_GET_TIMEOUT, with_metadata=False):
        """A read-only memoryview of the object's bytes in the store's memory (no copy); with
        with_metadata, (view, metadata bytes). timeout: seconds to wait for the object to be
        sealed and, if it is on disk, for room to read it back (None = forever, 0 = at once:
        NotFoundError, a KeyError, if it is not there). The object stays held (the store never
        evicts or reuses its memory) until that view and every view taken from it are released
        and collected, even after close()."""
        rh = self._open_held(id, timeout)
        view, metadata = _view(rh, self._session)
        return (view, metadata) if with_metadata else view

    def get_metadata(self, id, timeout=DEFAULT_GET_TIMEOUT):
        """The object's metadata (bytes), waiting as get() does."""
        return self.get(id, timeout, with_metadata=True)[1]

    def get_object(self, id, timeout=DEFAULT_GET_TIMEOUT):
        """The Python object stored by put_object (or mars.StoreBackend.put), rebuilt without
        copying its out-of-band buffers: a NumPy array comes back read-only, over the store's
        memory, and holds the object until it is collected. Waits as get() does. ValueError if
        the object was not written by put_object."""
        return _pickle.deserialize(self.get(id, timeout))

    def get_many(self, ids, timeout=DEFAULT_GET_TIMEOUT, with_metadata=False):
        """Views of many objects in one request (as get()), in the order of ids; None for an
        object that was not there in time (like redis's MGET). timeout bounds the whole call;
        None waits until every object is there."""
        h = self._handle()
        ids = [ids] if isinstance(ids, (str, bytes, ObjectId)) else list(ids)
        n = len(ids)
        if n == 0:
            return []
        cids = (_lib.store_object_id * n)(*[_cid(i) for i in ids])
        out = (ctypes.c_void_p * n)()
        for _ in range(n):
            self._session.acquire()
        try:
            _check(_L.store_open_readers(h, out, cids, n, _timeout_ms(timeout)))
        except BaseException:
            for _ in range(n):
                self._session.release()
            raise
        result = []
        error = None
        for i in range(n):
            if not out[i]:
                self._session.release()
                result.append(None)
                continue
            try:
                view, metadata = _view(out[i], self._session)
            except StoreError as e:  # a GPU object: no host view
                error = error or e
                result.append(None)
                continue
            result.append((view, metadata) if with_metadata else view)
        if error is not None:
            del result
            raise error
        return result

    def open_reader(self, id, timeout=DEFAULT_GET_TIMEOUT):
        """The object as a Reader (a binary file object with .buffer, .metadata, .size),
        waiting as get() does."""
        return Reader(self._open_held(id, timeout), self._session)

    # -- management
    def contains(self, id):
        """True if the object is sealed and visible (`id in client` says the same)."""
        present = ctypes.c_int()
        _check(_L.store_contains(self._handle(), ctypes.byref(_cid(id)), ctypes.byref(present)))
        return bool(present.value)

    __contains__ = contains

    def delete(self, id):
        """Deletes a sealed object: it disappears at once; its memory returns to the store when
        the last view or reader of it (in any process) is released. NotFoundError if absent."""
        _check(_L.store_delete(self._handle(), ctypes.byref(_cid(id))))

    def delete_many(self, ids):
        """Deletes many objects in one request per 65536 and returns how many were deleted.
        Every id is tried. Ids that are not there are skipped, as redis's DEL does: when the
        first id that could not be deleted was missing, the count is returned. When it failed
        for another reason (an object still being written: StoreError STORE_ENOTSEALED), that
        is raised, with .done set to the count."""
        h = self._handle()
        ids = [ids] if isinstance(ids, (str, bytes, ObjectId)) else list(ids)
        if not ids:
            return 0
        cids = (_lib.store_object_id * len(ids))(*[_cid(i) for i in ids])
        deleted = ctypes.c_size_t()
        rc = _L.store_delete_many(h, cids, len(ids), ctypes.byref(deleted))
        if rc not in (STORE_OK, STORE_ENOTFOUND):
            try:
                _check(rc)
            except StoreError as e:
                e.done = deleted.value
                raise
        return deleted.value

    def list_page(self, sort="id", descending=False, limit=100, offset=0, prefix=None):
        """One page of the object table, sorted and filtered by the store: returns
        (ObjectInfos, total), total being how many objects match in all. sort is "id", "size",
        "created", "last_access", "importance" or "state" (ties broken by id); limit at most
        100000; prefix, hex digits the ids start with."""
        sorts = {"id": _lib.STORE_SORT_ID, "size": _lib.STORE_SORT_SIZE,
                 "created": _lib.STORE_SORT_CREATED, "last_access": _lib.STORE_SORT_LAST_ACCESS,
                 "importance": _lib.STORE_SORT_IMPORTANCE, "state": _lib.STORE_SORT_STATE}
        if sort not in sorts:
            raise ValueError("sort is one of %s, not %r" % (", ".join(sorts), sort))
        opts = _lib.store_list_options()
        opts.version = _lib.STORE_LIST_OPTIONS_VERSION
        opts.sort = sorts[sort]
        opts.descending = 1 if descending else 0
        opts.limit = limit
        opts.offset = offset
        opts.id_prefix = prefix.encode() if prefix else None
        out = ctypes.POINTER(_lib.store_object_info)()
        count = ctypes.c_size_t()
        total = ctypes.c_uint64()
        _check(_L.store_list_page(self._handle(), ctypes.byref(opts), ctypes.byref(out),
                                  ctypes.sizeof(_lib.store_object_info), ctypes.byref(count),
                                  ctypes.byref(total)))
        try:
            return [ObjectInfo._from_c(out[i]) for i in range(count.value)], total.value
        finally:
            _L.store_free(out)

    def spill_url(self, id):
        """The URL of the object's copy on disk, "file://PATH?offset=O&size=S" (NotFoundError
        if it has none)."""
        buf = ctypes.create_string_buffer(8192)
        _check(_L.store_spill_url(self._handle(), ctypes.byref(_cid(id)), buf, len(buf)))
        return buf.value.decode("utf-8", "surrogateescape")

    def list_spill_files(self):
        """The store's spill files, as dicts of store_spill_file_info's fields (path a str)."""
        out = ctypes.POINTER(_lib.store_spill_file_info)()
        count = ctypes.c_size_t()
        _check(_L.store_list_spill_files(self._handle(), ctypes.byref(out),
                                         ctypes.sizeof(_lib.store_spill_file_info),
                                         ctypes.byref(count)))
        try:
            result = []
            for i in range(count.value):
                d = _struct_dict(out[i])
                d["path"] = d["path"].decode("utf-8", "surrogateescape")
                result.append(d)
            return result
        finally:
            _L.store_free(out)

    def info(self, id):
        """An ObjectInfo of the object, in any state (one being written included)."""
        out = _lib.store_object_info(struct_size=ctypes.sizeof(_lib.store_object_info))
        _check(_L.store_info(self._handle(), ctypes.byref(_cid(id)), ctypes.byref(out)))
        return ObjectInfo._from_c(out)

    def list(self):
        """ObjectInfos of every object in the store (paged through the store; see list_page for
        one sorted, filtered page)."""
        out = ctypes.POINTER(_lib.store_object_info)()
        count = ctypes.c_size_t()
        _check(_L.store_list(self._handle(), ctypes.byref(out),
                             ctypes.sizeof(_lib.store_object_info), ctypes.byref(count)))
        try:
            return [ObjectInfo._from_c(out[i]) for i in range(count.value)]
        finally:
            _L.store_free(out)

    def list_clients(self):
        """The connected clients, as dicts of store_client_info's fields (name a str)."""
        out = ctypes.POINTER(_lib.store_client_info)()
        count = ctypes.c_size_t()
        _check(_L.store_list_clients(self._handle(), ctypes.byref(out),
                                     ctypes.sizeof(_lib.store_client_info), ctypes.byref(count)))
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
        """Pins a sealed object: never evicted while pinned. Pins are dropped when this client
        disconnects."""
        _check(_L.store_pin(self._handle(), ctypes.byref(_cid(id))))

    def unpin(self, id):
        """Drops one pin of this client (StoreError STORE_EMISUSE if it holds none)."""
        _check(_L.store_unpin(self._handle(), ctypes.byref(_cid(id))))

    def lease(self, id):
        """Takes a lease on a sealed object and returns the leases on it now (all clients).
        A leased object created with leased=True is deleted when its last lease goes; any
        object, leased or not, stays until then unless deleted. Leases go with unlease() or
        when this client disconnects or its process dies. A process handed an object that
        another may let go of leases it first, then reads it. NotFoundError if absent,
        StoreError STORE_ENOTSEALED while it is being written."""
        count = ctypes.c_uint32()
        _check(_L.store_lease(self._handle(), ctypes.byref(_cid(id)), ctypes.byref(count)))
        return count.value

    def unlease(self, id):
        """Drops one of this client's leases on the object and returns the leases left (all
        clients); at 0 a leased object is deleted. StoreError STORE_EMISUSE if this client
        holds none."""
        count = ctypes.c_uint32()
        _check(_L.store_unlease(self._handle(), ctypes.byref(_cid(id)), ctypes.byref(count)))
        return count.value

    def set_importance(self, id, importance):
        """Sets an object's importance: objects of lower importance are evicted first."""
        _check(_L.store_set_importance(self._handle(), ctypes.byref(_cid(id)), importance))

    def prefetch(self, ids):
        """Starts reading spilled objects back into memory, without waiting (one id or many)."""
        if isinstance(ids, (str, bytes, ObjectId)):
            ids = [ids]
        ids = list(ids)
        if not ids:
            return
        arr = (_lib.store_object_id * len(ids))(*[_cid(i) for i in ids])
        _check(_L.store_prefetch(self._handle(), arr, len(ids)))

    def evict(self, nbytes):
        """Spills at least nbytes of evictable objects to disk now and returns the memory freed.
        StoreError STORE_ENOTSUP on a store without a spill directory."""
        spilled = ctypes.c_uint64()
        _check(_L.store_evict(self._handle(), nbytes, ctypes.byref(spilled)))
        return spilled.value

    def stats(self):
        """The store's figures, a dict of store_stats's fields."""
        out = _lib.store_stats(struct_size=ctypes.sizeof(_lib.store_stats))
        _check(_L.store_stats_get(self._handle(), ctypes.byref(out)))
        return _struct_dict(out)

    def gpu_stats(self):
        """(backend, [per-device dicts]): backend is "none", "cuda" or "memfd-standin"."""
        arr = ctypes.POINTER(_lib.store_gpu_device_stats)()
        n = ctypes.c_size_t()
        backend = ctypes.c_int()
        _check(_L.store_gpu_stats(self._handle(), ctypes.byref(arr),
                                  ctypes.sizeof(_lib.store_gpu_device_stats), ctypes.byref(n),
                                  ctypes.byref(backend)))
        try:
            devices = [_struct_dict(arr[i]) for i in range(n.value)]
        finally:
            _L.store_free(arr)
        names = {_lib.STORE_GPU_BACKEND_CUDA: "cuda",
                 _lib.STORE_GPU_BACKEND_MEMFD_STANDIN: "memfd-standin"}
        return names.get(backend.value, "none"), devices


def cid_bytes(cid):
    """The ObjectId of a ctypes store_object_id."""
    return ObjectId(bytes(cid.bytes))
