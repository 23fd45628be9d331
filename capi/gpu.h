// gpu.h - libstoreclient's side of GPU objects: importing the server's chunks of device memory
// once per process, and copying between host and device for the file-like calls.
//
// Owns: the process-wide table of imported chunks (keyed by the chunk's uid, which is unique
// to a chunk of one server), each mapped once and reference-counted by the connections that
// use it. A handle can be imported once per process, so every client of the same server in a
// process shares the mapping; the last connection to let go unmaps it.
// Called by: capi/mapping.cpp (Import, Release), the connection's destructor (Release, in
// capi/client_internal.h), capi/writer.cpp and capi/reader.cpp (the copies), from any thread
// (the table has its own lock).
// Never prints, aborts or throws: failures return false with *why.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace storeclient::gpu {

// What backs the server's device memory (mirrors proto::GpuBackend).
enum class Backend : uint8_t { kNone = 0, kCuda = 1, kMemfdStandIn = 2 };

struct Mapping {
  uint8_t* base = nullptr;  // the chunk's first byte: a device pointer (a host pointer for the
                            // memfd stand-in)
  uint64_t size = 0;
  int local_device = -1;    // the CUDA device number in this process
};

// Maps chunk `chunk_uid` (its fd and size as the server sent them; uuid = the device's 16-byte
// UUID) or takes another reference to the mapping this process already has. fd is not closed.
bool Import(Backend backend, uint64_t chunk_uid, int fd, uint64_t size, const uint8_t* uuid,
            Mapping* out, std::string* why);
// Drops a reference taken by Import; the last one unmaps the chunk.
void Release(uint64_t chunk_uid);

bool CopyToDevice(Backend backend, int local_device, void* dst, const void* src, size_t n,
                  std::string* why);
bool CopyToHost(Backend backend, int local_device, void* dst, const void* src, size_t n,
                std::string* why);

}  // namespace storeclient::gpu
