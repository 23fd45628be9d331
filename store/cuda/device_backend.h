// device_backend.h - where the server's GPU objects get their memory: chunks of device memory,
// each exported once as a file descriptor that clients import.
//
// Owns: the chunks it made (device memory and their fds), until it is destroyed.
// Called by: the server loop only (store/server/gpu.cpp). Not thread-safe.
//
// Two backends:
//  - CUDA (only when built with the toolkit): cuMemCreate with POSIX fd handles, exported with
//    cuMemExportToShareableHandle. The server never maps the memory itself.
//  - the memfd stand-in: host memory (a memfd per chunk) in place of device memory. It exists to
//    test the fd plumbing, accounting and lifecycle of GPU objects on machines without a GPU. It
//    is never a GPU and nothing it does counts as a GPU test.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "protocol_generated.h"

namespace store::cuda {

struct DeviceInfo {
  int ordinal = 0;            // the device number clients use (as CUDA numbers it here)
  std::string name;
  uint8_t uuid[16] = {};
  uint64_t granularity = 0;   // chunk sizes must be multiples of this
};

class DeviceBackend {
 public:
  virtual ~DeviceBackend() = default;
  virtual proto::GpuBackend kind() const = 0;
  virtual const char* name() const = 0;
  // The devices that can serve GPU objects. False, with *why, when there are none (no driver,
  // no device, no support for exporting memory as fds).
  virtual bool Probe(std::vector<DeviceInfo>* devices, std::string* why) = 0;
  // Makes a chunk of size bytes on device (a probed ordinal); size is a multiple of its
  // granularity. On success *fd is the chunk's shareable fd, owned by the backend.
  virtual bool CreateChunk(int device, uint64_t size, int* fd, std::string* why) = 0;
};

// The CUDA backend, or nullptr with *why when this build has no CUDA support.
std::unique_ptr<DeviceBackend> MakeCudaBackend(std::string* why);
// The memfd stand-in with `devices` pretend devices (a test double; see above).
std::unique_ptr<DeviceBackend> MakeMemfdStandIn(int devices);

}  // namespace store::cuda
