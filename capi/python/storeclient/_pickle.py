"""The layout of Python objects in the store (Client.put_object, mars.StoreBackend.put).

An object is pickled with protocol 5; every out-of-band buffer (a NumPy array's data, a
bytearray, a PickleBuffer) is written straight into the store's memory after the pickle stream,
each on a 64-byte boundary, and on read the buffers are handed to pickle.loads as views of the
store's memory, so the rebuilt object uses them without a copy:

    header: b"SCPK", u32 version (1), u64 buffer count, u64 pickle size   (little-endian)
            one u64 size per buffer
    the pickle stream
    each buffer, starting on a 64-byte boundary of the object

A NumPy array that is neither C- nor Fortran-contiguous (a slice with steps, a transposed view
of a part) is not pickled in band, which would copy it twice: its elements are copied once,
straight into the store, as one more buffer, and rebuilt as a C-contiguous array over it. Such
an object has version 2, whose header also counts those arrays (their buffers follow the others
and their sizes follow the others' sizes):

    header: b"SCPK", u32 version (2), u64 buffer count, u64 pickle size, u64 array count

Any other buffer that is not contiguous stays in the pickle stream.
"""

import contextvars
import io
import pickle
import struct
import sys

MAGIC = b"SCPK"
_HEAD = struct.Struct("<4sIQQ")
_ARRAYS = struct.Struct("<Q")
#: The arrays of the object being rebuilt (deserialize), for _rebuild_array.
_loading = contextvars.ContextVar("storeclient_pickle_arrays", default=None)
ALIGN = 64


def _align(n):
    return (n + ALIGN - 1) // ALIGN * ALIGN


class Layout:
    """A serialized object not yet written: its size and how to write it into a buffer."""

    __slots__ = ("header", "data", "buffers", "offsets", "size", "arrays")

    def __init__(self, header, data, buffers, offsets, size, arrays=()):
        self.header = header
        self.data = data
        self.buffers = buffers  # memoryviews, then the non-contiguous arrays
        self.offsets = offsets
        self.size = size
        self.arrays = len(arrays)

    def write_into(self, mem):
        """Writes the object into mem (a writable buffer of at least self.size bytes)."""
        h = len(self.header)
        mem[:h] = self.header
        mem[h:h + len(self.data)] = self.data
        first_array = len(self.buffers) - self.arrays
        for i, (off, m) in enumerate(zip(self.offsets, self.buffers)):
            if i < first_array:
                mem[off:off + m.nbytes] = m.cast("B") if m.format != "B" else m
                continue
            np = sys.modules["numpy"]
            out = np.frombuffer(mem[off:off + m.nbytes], dtype=m.dtype).reshape(m.shape)
            np.copyto(out, m, casting="no")


def _rebuild_array(index, dtype, shape):
    """A C-contiguous array over the index-th array buffer of the object being rebuilt."""
    arrays = _loading.get()
    if arrays is None or index >= len(arrays):
        raise pickle.UnpicklingError("an array stored apart outside of storeclient's deserialize")
    np = sys.modules.get("numpy") or __import__("numpy")
    return np.frombuffer(arrays[index], dtype=np.dtype(dtype)).reshape(shape)


class _Pickler(pickle.Pickler):
    def __init__(self, file, buffer_callback, arrays):
        super().__init__(file, protocol=5, buffer_callback=buffer_callback)
        self._arrays = arrays
        self._ndarray = getattr(sys.modules.get("numpy"), "ndarray", None)

    def reducer_override(self, obj):
        if type(obj) is not self._ndarray or obj.dtype.hasobject:
            return NotImplemented
        flags = obj.flags
        if flags.c_contiguous or flags.f_contiguous or obj.size == 0:
            return NotImplemented
        self._arrays.append(obj)
        return (_rebuild_array, (len(self._arrays) - 1, obj.dtype.str, obj.shape))


def serialize(obj):
    """Pickles obj (protocol 5) and lays out its out-of-band buffers. Returns a Layout."""
    buffers = []
    arrays = []

    def callback(pb):
        try:
            m = pb.raw()
        except BufferError:  # not contiguous: keep it in the pickle stream
            return True
        buffers.append(m)
        return False

    f = io.BytesIO()
    if "numpy" in sys.modules:
        _Pickler(f, callback, arrays).dump(obj)
    else:
        pickle.Pickler(f, protocol=5, buffer_callback=callback).dump(obj)
    data = f.getbuffer()
    sizes = [m.nbytes for m in buffers] + [a.nbytes for a in arrays]
    if arrays:
        header = _HEAD.pack(MAGIC, 2, len(buffers), len(data)) + _ARRAYS.pack(len(arrays))
    else:
        header = _HEAD.pack(MAGIC, 1, len(buffers), len(data))
    header += struct.pack("<%dQ" % len(sizes), *sizes)
    offsets = []
    pos = len(header) + len(data)
    for n in sizes:
        pos = _align(pos)
        offsets.append(pos)
        pos += n
    return Layout(header, data, buffers + arrays, offsets, max(pos, 1), arrays)


def deserialize(mem):
    """Rebuilds an object from mem (a memoryview of the stored bytes). Out-of-band buffers are
    slices of mem: the object keeps them (and with them the store's object) alive."""
    if len(mem) < _HEAD.size:
        raise ValueError("not an object written by put_object: %d bytes" % len(mem))
    magic, ver, nbuf, plen = _HEAD.unpack_from(mem, 0)
    if magic != MAGIC or ver not in (1, 2):
        raise ValueError("not an object written by put_object (no SCPK header)")
    start = _HEAD.size
    narr = 0
    if ver == 2:
        (narr,) = _ARRAYS.unpack_from(mem, start)
        start += _ARRAYS.size
    sizes = struct.unpack_from("<%dQ" % (nbuf + narr), mem, start)
    start += 8 * (nbuf + narr)
    data = mem[start:start + plen]
    pos = start + plen
    buffers = []
    for size in sizes:
        pos = _align(pos)
        buffers.append(mem[pos:pos + size])
        pos += size
    if not narr:
        return pickle.loads(data, buffers=buffers)
    token = _loading.set(buffers[nbuf:])
    try:
        return pickle.loads(data, buffers=buffers[:nbuf])
    finally:
        _loading.reset(token)
