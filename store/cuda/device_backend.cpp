// device_backend.cpp - the CUDA VMM backend (when built with CUDA) and the memfd stand-in.
#include "cuda/device_backend.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "cuda_driver.h"

namespace store::cuda {

// ---- the memfd stand-in --------------------------------------------------------------------

namespace {

class MemfdStandIn final : public DeviceBackend {
 public:
  explicit MemfdStandIn(int devices) : devices_(devices) {}
  ~MemfdStandIn() override {
    for (int fd : fds_) close(fd);
  }
  proto::GpuBackend kind() const override { return proto::GpuBackend::MemfdStandIn; }
  const char* name() const override { return "memfd stand-in (host memory, not a GPU)"; }
  bool Probe(std::vector<DeviceInfo>* devices, std::string* why) override {
    if (devices_ <= 0) {
      *why = "the memfd stand-in has no devices";
      return false;
    }
    for (int i = 0; i < devices_; i++) {
      DeviceInfo d;
      d.ordinal = i;
      d.name = "memfd stand-in " + std::to_string(i);
      std::memcpy(d.uuid, "memfd-standin-", 14);
      d.uuid[14] = static_cast<uint8_t>(i >> 8);
      d.uuid[15] = static_cast<uint8_t>(i);
      d.granularity = 2u << 20;
      devices->push_back(d);
    }
    return true;
  }
  bool CreateChunk(int device, uint64_t size, int* fd, std::string* why) override {
    std::string label = "store-gpu-standin-" + std::to_string(device);
    int f = memfd_create(label.c_str(), MFD_CLOEXEC);
    if (f < 0) {
      *why = std::string("memfd_create: ") + std::strerror(errno);
      return false;
    }
    if (ftruncate(f, static_cast<off_t>(size)) != 0) {
      *why = std::string("ftruncate: ") + std::strerror(errno);
      close(f);
      return false;
    }
    fds_.push_back(f);
    *fd = f;
    return true;
  }

 private:
  int devices_;
  std::vector<int> fds_;
};

}  // namespace

std::unique_ptr<DeviceBackend> MakeMemfdStandIn(int devices) {
  return std::make_unique<MemfdStandIn>(devices);
}

// ---- CUDA ----------------------------------------------------------------------------------

#ifdef STORE_HAVE_CUDA

namespace {

class CudaBackend final : public DeviceBackend {
 public:
  explicit CudaBackend(const Driver* d) : d_(d) {}
  ~CudaBackend() override {
    for (auto& c : chunks_) {
      close(c.fd);
      d_->MemRelease(c.handle);
    }
  }
  proto::GpuBackend kind() const override { return proto::GpuBackend::Cuda; }
  const char* name() const override { return "CUDA"; }

  bool Probe(std::vector<DeviceInfo>* devices, std::string* why) override {
    int count = 0;
    CUresult rc = d_->DeviceGetCount(&count);
    if (rc != CUDA_SUCCESS) {
      *why = "cuDeviceGetCount: " + ErrorName(d_, rc);
      return false;
    }
    if (count == 0) {
      *why = "no CUDA device is visible";
      return false;
    }
    std::string skipped;
    for (int i = 0; i < count; i++) {
      CUdevice dev;
      if (d_->DeviceGet(&dev, i) != CUDA_SUCCESS) continue;
      int vmm = 0, fdh = 0;
      d_->DeviceGetAttribute(&vmm, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, dev);
      d_->DeviceGetAttribute(&fdh, CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED,
                             dev);
      if (!vmm || !fdh) {
        skipped += " device " + std::to_string(i) +
                   (vmm ? " cannot export memory as fds;" : " has no virtual memory management;");
        continue;
      }
      DeviceInfo info;
      info.ordinal = i;
      char name[256] = {};
      d_->DeviceGetName(name, sizeof name - 1, dev);
      info.name = name;
      CUuuid uuid;
      if (d_->DeviceGetUuid(&uuid, dev) == CUDA_SUCCESS) std::memcpy(info.uuid, uuid.bytes, 16);
      CUmemAllocationProp prop = Prop(dev);
      size_t gran = 0;
      ScopedContext ctx(d_, dev);
      rc = ctx.ok() ? d_->MemGetAllocationGranularity(&gran, &prop,
                                                      CU_MEM_ALLOC_GRANULARITY_MINIMUM)
                    : ctx.error();
      if (rc != CUDA_SUCCESS || gran == 0) {
        skipped += " device " + std::to_string(i) + ": " + ErrorName(d_, rc) + ";";
        continue;
      }
      info.granularity = gran;
      devices->push_back(info);
    }
    if (devices->empty()) {
      *why = "no CUDA device can share memory through fds:" + skipped;
      return false;
    }
    return true;
  }

  bool CreateChunk(int device, uint64_t size, int* fd, std::string* why) override {
    CUdevice dev;
    CUresult rc = d_->DeviceGet(&dev, device);
    if (rc != CUDA_SUCCESS) {
      *why = "cuDeviceGet: " + ErrorName(d_, rc);
      return false;
    }
    ScopedContext ctx(d_, dev);
    if (!ctx.ok()) {
      *why = "no context on device " + std::to_string(device) + ": " + ErrorName(d_, ctx.error());
      return false;
    }
    CUmemAllocationProp prop = Prop(dev);
    CUmemGenericAllocationHandle h;
    rc = d_->MemCreate(&h, size, &prop, 0);
    if (rc != CUDA_SUCCESS) {
      *why = "cuMemCreate of " + std::to_string(size) + " bytes: " + ErrorName(d_, rc);
      return false;
    }
    int f = -1;
    rc = d_->MemExportToShareableHandle(&f, h, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0);
    if (rc != CUDA_SUCCESS || f < 0) {
      *why = "cuMemExportToShareableHandle: " + ErrorName(d_, rc);
      d_->MemRelease(h);
      return false;
    }
    chunks_.push_back({h, f});
    *fd = f;
    return true;
  }

 private:
  static CUmemAllocationProp Prop(CUdevice dev) {
    CUmemAllocationProp prop{};
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = dev;
    prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
    return prop;
  }
  struct Chunk {
    CUmemGenericAllocationHandle handle;
    int fd;
  };
  const Driver* d_;
  std::vector<Chunk> chunks_;
};

}  // namespace

std::unique_ptr<DeviceBackend> MakeCudaBackend(std::string* why) {
  const Driver* d = GetDriver(why);
  if (!d) return nullptr;
  return std::make_unique<CudaBackend>(d);
}

#else

std::unique_ptr<DeviceBackend> MakeCudaBackend(std::string* why) {
  *why = "this build of the store has no CUDA support (built without the CUDA toolkit)";
  return nullptr;
}

#endif  // STORE_HAVE_CUDA

}  // namespace store::cuda
