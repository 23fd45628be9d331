"""The layout of Python objects in the store (Client.put_object, mars.StoreBackend.put).

An object is pickled with protocol 5; every out-of-band buffer (a NumPy array's data, a
bytearray, a PickleBuffer) is written straight into the store's memory after the pickle stream,
each on a 64-byte boundary, and on read the buffers are handed to pickle.loads as views of the
store's memory, so the rebuilt object uses them without a copy:

    header: b"SCPK", u32 version (1), u64 buffer count, u64 pickle size   (little-endian)
            one u64 size per buffer
    the pickle stream
    each buffer, starting on a 64-byte boundary of the object

A buffer that is neither C- nor Fortran-contiguous stays in the pickle stream (NumPy copies a
non-contiguous array in band itself).
"""

import pickle
import struct

MAGIC = b"SCPK"
_HEAD = struct.Struct("<4sIQQ")
ALIGN = 64


def _align(n):
    return (n + ALIGN - 1) // ALIGN * ALIGN


class Layout:
    """A serialized object not yet written: its size and how to write it into a buffer."""

    __slots__ = ("header", "data", "buffers", "offsets", "size")

    def __init__(self, header, data, buffers, offsets, size):
        self.header = header
        self.data = data
        self.buffers = buffers
        self.offsets = offsets
        self.size = size

    def write_into(self, mem):
        """Writes the object into mem (a writable buffer of at least self.size bytes)."""
        h = len(self.header)
        mem[:h] = self.header
        mem[h:h + len(self.data)] = self.data
        for off, m in zip(self.offsets, self.buffers):
            mem[off:off + m.nbytes] = m.cast("B") if m.format != "B" else m


def serialize(obj):
    """Pickles obj (protocol 5) and lays out its out-of-band buffers. Returns a Layout."""
    buffers = []

    def callback(pb):
        try:
            m = pb.raw()
        except BufferError:  # not contiguous: keep it in the pickle stream
            return True
        buffers.append(m)
        return False

    data = pickle.dumps(obj, protocol=5, buffer_callback=callback)
    header = _HEAD.pack(MAGIC, 1, len(buffers), len(data)) + \
        struct.pack("<%dQ" % len(buffers), *[m.nbytes for m in buffers])
    offsets = []
    pos = len(header) + len(data)
    for m in buffers:
        pos = _align(pos)
        offsets.append(pos)
        pos += m.nbytes
    return Layout(header, data, buffers, offsets, max(pos, 1))


def deserialize(mem):
    """Rebuilds an object from mem (a memoryview of the stored bytes). Out-of-band buffers are
    slices of mem: the object keeps them (and with them the store's object) alive."""
    if len(mem) < _HEAD.size:
        raise ValueError("not an object written by put_object: %d bytes" % len(mem))
    magic, ver, nbuf, plen = _HEAD.unpack_from(mem, 0)
    if magic != MAGIC or ver != 1:
        raise ValueError("not an object written by put_object (no SCPK header)")
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
