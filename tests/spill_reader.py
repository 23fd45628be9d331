#!/usr/bin/env python3
"""Walks a spill file from offset 0 using only the record layout
[u64 LE metadata_len][u64 LE data_len][metadata][data], back to back.

Usage: spill_reader.py FILE [COUNT]

COUNT is the number of records; without it, it is taken from the trailer (the last 40 bytes
start with u64 index_offset, u64 record_count). Prints one line per record:
    <offset> <size> <sha256 of metadata> <sha256 of data>
and finally "end <offset after the last record>".
"""
import hashlib
import struct
import sys


def main():
    if len(sys.argv) not in (2, 3):
        sys.stderr.write(__doc__)
        return 2
    path = sys.argv[1]
    with open(path, "rb") as f:
        if len(sys.argv) == 3:
            count = int(sys.argv[2])
        else:
            f.seek(0, 2)
            size = f.tell()
            if size < 40:
                sys.stderr.write("file too short for a trailer\n")
                return 1
            f.seek(size - 40)
            _, count = struct.unpack("<QQ", f.read(16))
        offset = 0
        for _ in range(count):
            f.seek(offset)
            header = f.read(16)
            if len(header) != 16:
                sys.stderr.write("short header at offset %d\n" % offset)
                return 1
            metadata_len, data_len = struct.unpack("<QQ", header)
            metadata = f.read(metadata_len)
            data = f.read(data_len)
            if len(metadata) != metadata_len or len(data) != data_len:
                sys.stderr.write("short record at offset %d\n" % offset)
                return 1
            size = 16 + metadata_len + data_len
            print("%d %d %s %s" % (offset, size, hashlib.sha256(metadata).hexdigest(),
                                   hashlib.sha256(data).hexdigest()))
            offset += size
        print("end %d" % offset)
    return 0


if __name__ == "__main__":
    sys.exit(main())
