// fake_cuda_driver.cpp - A TEST DOUBLE of the CUDA driver API, for machines without a GPU.
//
// It is not a GPU and nothing that runs on it counts as having run on one. It lets the store's
// CUDA code paths (the server's VMM chunks and fd export, the client's import, address
// reservation, mapping, access and copies, the context handling) run in the tests here, against
// a model of the documented rules of the calls the store makes:
//  - "device memory" of an allocation is a memfd; an exported handle is a dup of it; importing
//    it in another process gives a handle on the same memory;
//  - cuMemCreate sizes must be multiples of the granularity (2 MiB), cuMemMap needs a reserved
//    range, offset 0 and a size equal to the allocation's, and the mapping is inaccessible
//    until cuMemSetAccess; copies outside accessible mappings fail;
//  - calls that need a context fail without a current one (CUDA_ERROR_INVALID_CONTEXT);
//  - memory lives while a handle or a mapping refers to it.
// Device pointers are host addresses here, so tests read and write them with memcpy.
//
// Built as a shared module; the store's driver table (store/common/cuda_driver.cpp) loads it
// instead of the real driver when STORE_FAKE_CUDA_DRIVER names it.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <vector>

#include "cuda_driver.h"

namespace {

constexpr size_t kGranularity = 2u << 20;
constexpr int kDevices = 1;

struct Allocation {
  int fd = -1;
  size_t size = 0;
  int refs = 0;  // handles + mappings
};

struct Mapping {
  size_t size = 0;
  Allocation* alloc = nullptr;
  bool accessible = false;
};

std::mutex mu;
std::map<CUmemGenericAllocationHandle, Allocation*> handles;
std::map<uintptr_t, size_t> reserved;       // va -> size
std::map<uintptr_t, Mapping> mappings;      // va -> mapping
CUmemGenericAllocationHandle next_handle = 1;
thread_local std::vector<CUcontext> ctx_stack;
bool initialised = false;

CUcontext FakeContext(CUdevice dev) { return reinterpret_cast<CUcontext>(0x1000 + dev); }

void Unref(Allocation* a) {
  if (--a->refs == 0) {
    close(a->fd);
    delete a;
  }
}

bool InContext() { return !ctx_stack.empty(); }

// An accessible mapped range containing [p, p + n).
bool Accessible(uintptr_t p, size_t n) {
  auto it = mappings.upper_bound(p);
  if (it == mappings.begin()) return false;
  --it;
  return it->second.accessible && p >= it->first && n <= it->second.size &&
         p - it->first <= it->second.size - n;
}

CUresult Init(unsigned int flags) {
  if (flags != 0) return CUDA_ERROR_INVALID_VALUE;
  initialised = true;
  return CUDA_SUCCESS;
}
CUresult DeviceGetCount(int* n) {
  if (!initialised) return CUDA_ERROR_NOT_INITIALIZED;
  *n = kDevices;
  return CUDA_SUCCESS;
}
CUresult DeviceGet(CUdevice* d, int ordinal) {
  if (ordinal < 0 || ordinal >= kDevices) return CUDA_ERROR_INVALID_DEVICE;
  *d = ordinal;
  return CUDA_SUCCESS;
}
CUresult DeviceGetAttribute(int* v, CUdevice_attribute attr, CUdevice dev) {
  if (dev < 0 || dev >= kDevices) return CUDA_ERROR_INVALID_DEVICE;
  *v = (attr == CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED ||
        attr == CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED)
           ? 1
           : 0;
  return CUDA_SUCCESS;
}
CUresult DeviceGetName(char* name, int len, CUdevice dev) {
  if (dev < 0 || dev >= kDevices) return CUDA_ERROR_INVALID_DEVICE;
  std::snprintf(name, static_cast<size_t>(len), "fake CUDA device %d (test double)", dev);
  return CUDA_SUCCESS;
}
CUresult DeviceGetUuid(CUuuid* u, CUdevice dev) {
  if (dev < 0 || dev >= kDevices) return CUDA_ERROR_INVALID_DEVICE;
  std::memcpy(u->bytes, "fake-cuda-dev-0", 16);
  u->bytes[15] = static_cast<char>(dev);
  return CUDA_SUCCESS;
}
CUresult PrimaryCtxRetain(CUcontext* c, CUdevice dev) {
  if (dev < 0 || dev >= kDevices) return CUDA_ERROR_INVALID_DEVICE;
  *c = FakeContext(dev);
  return CUDA_SUCCESS;
}
CUresult PrimaryCtxRelease(CUdevice) { return CUDA_SUCCESS; }
CUresult CtxPush(CUcontext c) {
  ctx_stack.push_back(c);
  return CUDA_SUCCESS;
}
CUresult CtxPop(CUcontext* c) {
  if (ctx_stack.empty()) return CUDA_ERROR_INVALID_CONTEXT;
  if (c) *c = ctx_stack.back();
  ctx_stack.pop_back();
  return CUDA_SUCCESS;
}
CUresult Granularity(size_t* g, const CUmemAllocationProp* prop, CUmemAllocationGranularity_flags) {
  if (!prop || prop->location.type != CU_MEM_LOCATION_TYPE_DEVICE) return CUDA_ERROR_INVALID_VALUE;
  *g = kGranularity;
  return CUDA_SUCCESS;
}
CUresult MemCreate(CUmemGenericAllocationHandle* h, size_t size, const CUmemAllocationProp* prop,
                   unsigned long long flags) {
  if (!InContext()) return CUDA_ERROR_INVALID_CONTEXT;
  if (flags != 0 || size == 0 || size % kGranularity != 0 || !prop ||
      prop->type != CU_MEM_ALLOCATION_TYPE_PINNED ||
      prop->requestedHandleTypes != CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  int fd = memfd_create("fake-cuda-allocation", MFD_CLOEXEC);
  if (fd < 0 || ftruncate(fd, static_cast<off_t>(size)) != 0) {
    if (fd >= 0) close(fd);
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  std::lock_guard<std::mutex> lk(mu);
  auto* a = new Allocation{fd, size, 1};
  *h = next_handle++;
  handles[*h] = a;
  return CUDA_SUCCESS;
}
CUresult MemRelease(CUmemGenericAllocationHandle h) {
  std::lock_guard<std::mutex> lk(mu);
  auto it = handles.find(h);
  if (it == handles.end()) return CUDA_ERROR_INVALID_VALUE;
  Unref(it->second);
  handles.erase(it);
  return CUDA_SUCCESS;
}
CUresult Export(void* out, CUmemGenericAllocationHandle h, CUmemAllocationHandleType type,
                unsigned long long flags) {
  std::lock_guard<std::mutex> lk(mu);
  auto it = handles.find(h);
  if (it == handles.end() || type != CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR || flags != 0) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  int fd = fcntl(it->second->fd, F_DUPFD_CLOEXEC, 0);
  if (fd < 0) return CUDA_ERROR_OUT_OF_MEMORY;
  *static_cast<int*>(out) = fd;
  return CUDA_SUCCESS;
}
CUresult Import(CUmemGenericAllocationHandle* h, void* os_handle, CUmemAllocationHandleType type) {
  if (!InContext()) return CUDA_ERROR_INVALID_CONTEXT;
  if (type != CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR) return CUDA_ERROR_INVALID_VALUE;
  int fd = static_cast<int>(reinterpret_cast<intptr_t>(os_handle));
  off_t size = lseek(fd, 0, SEEK_END);
  if (size <= 0) return CUDA_ERROR_INVALID_HANDLE;
  int own = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (own < 0) return CUDA_ERROR_INVALID_HANDLE;
  std::lock_guard<std::mutex> lk(mu);
  auto* a = new Allocation{own, static_cast<size_t>(size), 1};
  *h = next_handle++;
  handles[*h] = a;
  return CUDA_SUCCESS;
}
CUresult AddressReserve(CUdeviceptr* ptr, size_t size, size_t alignment, CUdeviceptr addr,
                        unsigned long long flags) {
  if (size == 0 || size % kGranularity != 0 || flags != 0 || addr != 0 ||
      (alignment != 0 && alignment % kGranularity != 0)) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  void* p = mmap(nullptr, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) return CUDA_ERROR_OUT_OF_MEMORY;
  std::lock_guard<std::mutex> lk(mu);
  reserved[reinterpret_cast<uintptr_t>(p)] = size;
  *ptr = reinterpret_cast<uintptr_t>(p);
  return CUDA_SUCCESS;
}
CUresult AddressFree(CUdeviceptr ptr, size_t size) {
  std::lock_guard<std::mutex> lk(mu);
  auto it = reserved.find(ptr);
  if (it == reserved.end() || it->second != size) return CUDA_ERROR_INVALID_VALUE;
  if (mappings.count(ptr)) return CUDA_ERROR_INVALID_VALUE;  // still mapped
  munmap(reinterpret_cast<void*>(ptr), size);
  reserved.erase(it);
  return CUDA_SUCCESS;
}
CUresult MemMap(CUdeviceptr ptr, size_t size, size_t offset, CUmemGenericAllocationHandle h,
                unsigned long long flags) {
  std::lock_guard<std::mutex> lk(mu);
  auto r = reserved.find(ptr);
  auto a = handles.find(h);
  if (r == reserved.end() || a == handles.end() || offset != 0 || flags != 0 ||
      size != a->second->size || size > r->second || mappings.count(ptr)) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  void* p = mmap(reinterpret_cast<void*>(ptr), size, PROT_NONE, MAP_SHARED | MAP_FIXED,
                 a->second->fd, 0);
  if (p == MAP_FAILED) return CUDA_ERROR_OUT_OF_MEMORY;
  a->second->refs++;
  mappings[ptr] = Mapping{size, a->second, false};
  return CUDA_SUCCESS;
}
CUresult MemUnmap(CUdeviceptr ptr, size_t size) {
  std::lock_guard<std::mutex> lk(mu);
  auto it = mappings.find(ptr);
  if (it == mappings.end() || it->second.size != size) return CUDA_ERROR_INVALID_VALUE;
  mmap(reinterpret_cast<void*>(ptr), size, PROT_NONE,
       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
  Unref(it->second.alloc);
  mappings.erase(it);
  return CUDA_SUCCESS;
}
CUresult SetAccess(CUdeviceptr ptr, size_t size, const CUmemAccessDesc* desc, size_t count) {
  std::lock_guard<std::mutex> lk(mu);
  auto it = mappings.find(ptr);
  if (it == mappings.end() || it->second.size != size || count != 1 || !desc ||
      desc->location.type != CU_MEM_LOCATION_TYPE_DEVICE || desc->location.id < 0 ||
      desc->location.id >= kDevices || desc->flags != CU_MEM_ACCESS_FLAGS_PROT_READWRITE) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  if (mprotect(reinterpret_cast<void*>(ptr), size, PROT_READ | PROT_WRITE) != 0) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  it->second.accessible = true;
  return CUDA_SUCCESS;
}
CUresult HtoD(CUdeviceptr dst, const void* src, size_t n) {
  if (!InContext()) return CUDA_ERROR_INVALID_CONTEXT;
  std::lock_guard<std::mutex> lk(mu);
  if (!Accessible(dst, n)) return CUDA_ERROR_INVALID_VALUE;
  std::memcpy(reinterpret_cast<void*>(dst), src, n);
  return CUDA_SUCCESS;
}
CUresult DtoH(void* dst, CUdeviceptr src, size_t n) {
  if (!InContext()) return CUDA_ERROR_INVALID_CONTEXT;
  std::lock_guard<std::mutex> lk(mu);
  if (!Accessible(src, n)) return CUDA_ERROR_INVALID_VALUE;
  std::memcpy(dst, reinterpret_cast<void*>(src), n);
  return CUDA_SUCCESS;
}
CUresult ErrorName(CUresult rc, const char** name) {
  switch (rc) {
    case CUDA_SUCCESS: *name = "CUDA_SUCCESS"; break;
    case CUDA_ERROR_INVALID_VALUE: *name = "CUDA_ERROR_INVALID_VALUE"; break;
    case CUDA_ERROR_INVALID_CONTEXT: *name = "CUDA_ERROR_INVALID_CONTEXT"; break;
    case CUDA_ERROR_OUT_OF_MEMORY: *name = "CUDA_ERROR_OUT_OF_MEMORY"; break;
    default: *name = "CUDA_ERROR (fake driver)"; break;
  }
  return CUDA_SUCCESS;
}

}  // namespace

extern "C" __attribute__((visibility("default"))) const store::cuda::Driver*
store_fake_cuda_driver() {
  static const store::cuda::Driver d = [] {
    store::cuda::Driver t;
    t.Init = Init;
    t.DeviceGetCount = DeviceGetCount;
    t.DeviceGet = DeviceGet;
    t.DeviceGetAttribute = DeviceGetAttribute;
    t.DeviceGetName = DeviceGetName;
    t.DeviceGetUuid = DeviceGetUuid;
    t.DevicePrimaryCtxRetain = PrimaryCtxRetain;
    t.DevicePrimaryCtxRelease = PrimaryCtxRelease;
    t.CtxPushCurrent = CtxPush;
    t.CtxPopCurrent = CtxPop;
    t.MemGetAllocationGranularity = Granularity;
    t.MemCreate = MemCreate;
    t.MemRelease = MemRelease;
    t.MemExportToShareableHandle = Export;
    t.MemImportFromShareableHandle = Import;
    t.MemAddressReserve = AddressReserve;
    t.MemAddressFree = AddressFree;
    t.MemMap = MemMap;
    t.MemUnmap = MemUnmap;
    t.MemSetAccess = SetAccess;
    t.MemcpyHtoD = HtoD;
    t.MemcpyDtoH = DtoH;
    t.GetErrorName = ErrorName;
    return t;
  }();
  return &d;
}

// For the tests: address ranges this process has reserved (mapped or not) and not freed.
extern "C" __attribute__((visibility("default"))) size_t store_fake_cuda_driver_reserved() {
  std::lock_guard<std::mutex> lk(mu);
  return reserved.size();
}
