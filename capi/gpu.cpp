// gpu.cpp - imports of GPU chunks and host<->device copies (see gpu.h).
#include "gpu.h"

#include <sys/mman.h>

#include <cerrno>
#include <cstring>
#include <mutex>
#include <new>
#include <unordered_map>

#ifdef STORE_HAVE_CUDA
#include "cuda_driver.h"
#endif

namespace storeclient::gpu {

namespace {

struct Entry {
  Backend backend = Backend::kNone;
  Mapping m;
  uint64_t refs = 0;
};

// Never destroyed: connections may be released from other static destructors at exit.
std::mutex* g_mu = new std::mutex;
std::unordered_map<uint64_t, Entry>* g_chunks = new std::unordered_map<uint64_t, Entry>;

#ifdef STORE_HAVE_CUDA
using store::cuda::Driver;
using store::cuda::ErrorName;
using store::cuda::ScopedContext;

bool CudaImport(int fd, uint64_t size, const uint8_t* uuid, Mapping* out, std::string* why) {
  std::string err;
  const Driver* d = store::cuda::GetDriver(&err);
  if (!d) {
    *why = "this process cannot use the GPU: " + err;
    return false;
  }
  int count = 0;
  CUresult rc = d->DeviceGetCount(&count);
  if (rc != CUDA_SUCCESS) {
    *why = "cuDeviceGetCount: " + ErrorName(d, rc);
    return false;
  }
  CUdevice dev = -1;
  int ordinal = -1;
  for (int i = 0; i < count && ordinal < 0; i++) {
    CUdevice cand;
    CUuuid u;
    if (d->DeviceGet(&cand, i) != CUDA_SUCCESS || d->DeviceGetUuid(&u, cand) != CUDA_SUCCESS) {
      continue;
    }
    if (std::memcmp(u.bytes, uuid, 16) == 0) {
      dev = cand;
      ordinal = i;
    }
  }
  if (ordinal < 0) {
    *why = "the store's GPU is not visible to this process (check CUDA_VISIBLE_DEVICES)";
    return false;
  }
  ScopedContext ctx(d, dev);
  if (!ctx.ok()) {
    *why = "no CUDA context on device " + std::to_string(ordinal) + ": " +
           ErrorName(d, ctx.error());
    return false;
  }
  CUmemGenericAllocationHandle h;
  rc = d->MemImportFromShareableHandle(&h, reinterpret_cast<void*>(static_cast<intptr_t>(fd)),
                                       CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR);
  if (rc != CUDA_SUCCESS) {
    *why = "cuMemImportFromShareableHandle: " + ErrorName(d, rc);
    return false;
  }
  CUdeviceptr va = 0;
  rc = d->MemAddressReserve(&va, size, 0, 0, 0);
  if (rc != CUDA_SUCCESS) {
    *why = "cuMemAddressReserve: " + ErrorName(d, rc);
    d->MemRelease(h);
    return false;
  }
  rc = d->MemMap(va, size, 0, h, 0);
  if (rc != CUDA_SUCCESS) {
    *why = "cuMemMap: " + ErrorName(d, rc);
    d->MemAddressFree(va, size);
    d->MemRelease(h);
    return false;
  }
  // The mapping keeps the memory alive from here on.
  d->MemRelease(h);
  CUmemAccessDesc access{};
  access.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  access.location.id = dev;
  access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  rc = d->MemSetAccess(va, size, &access, 1);
  if (rc != CUDA_SUCCESS) {
    *why = "cuMemSetAccess: " + ErrorName(d, rc);
    d->MemUnmap(va, size);
    d->MemAddressFree(va, size);
    return false;
  }
  out->base = reinterpret_cast<uint8_t*>(static_cast<uintptr_t>(va));
  out->size = size;
  out->local_device = ordinal;
  return true;
}

void CudaUnmap(const Mapping& m) {
  const Driver* d = store::cuda::GetDriver(nullptr);
  if (!d) return;
  auto va = static_cast<CUdeviceptr>(reinterpret_cast<uintptr_t>(m.base));
  d->MemUnmap(va, m.size);
  d->MemAddressFree(va, m.size);
}

bool CudaCopy(int local_device, void* dst, const void* src, size_t n, bool to_device,
              std::string* why) {
  std::string err;
  const Driver* d = store::cuda::GetDriver(&err);
  if (!d) {
    *why = "this process cannot use the GPU: " + err;
    return false;
  }
  CUdevice dev;
  CUresult rc = d->DeviceGet(&dev, local_device);
  if (rc == CUDA_SUCCESS) {
    ScopedContext ctx(d, dev);
    rc = !ctx.ok() ? ctx.error()
         : to_device
             ? d->MemcpyHtoD(static_cast<CUdeviceptr>(reinterpret_cast<uintptr_t>(dst)), src, n)
             : d->MemcpyDtoH(dst, static_cast<CUdeviceptr>(reinterpret_cast<uintptr_t>(src)), n);
  }
  if (rc != CUDA_SUCCESS) {
    *why = std::string(to_device ? "copy to the GPU: " : "copy from the GPU: ") + ErrorName(d, rc);
    return false;
  }
  return true;
}
#endif  // STORE_HAVE_CUDA

bool StandInImport(int fd, uint64_t size, Mapping* out, std::string* why) {
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) {
    *why = std::string("cannot map a chunk of the memfd stand-in: ") + std::strerror(errno);
    return false;
  }
  out->base = static_cast<uint8_t*>(p);
  out->size = size;
  out->local_device = 0;
  return true;
}

}  // namespace

bool Import(Backend backend, uint64_t chunk_uid, int fd, uint64_t size, const uint8_t* uuid,
            Mapping* out, std::string* why) {
  std::lock_guard<std::mutex> lk(*g_mu);
  auto it = g_chunks->find(chunk_uid);
  if (it != g_chunks->end()) {
    if (it->second.backend != backend || it->second.m.size != size) {
      *why = "the store sent a chunk that does not match this process's import of it";
      return false;
    }
    it->second.refs++;
    *out = it->second.m;
    return true;
  }
  Entry e;
  e.backend = backend;
  e.refs = 1;
  bool ok = false;
  switch (backend) {
    case Backend::kMemfdStandIn:
      ok = StandInImport(fd, size, &e.m, why);
      break;
    case Backend::kCuda:
#ifdef STORE_HAVE_CUDA
      ok = CudaImport(fd, size, uuid, &e.m, why);
#else
      (void)uuid;
      *why = "this libstoreclient was built without CUDA support";
#endif
      break;
    default:
      *why = "the store serves no GPU objects";
      break;
  }
  if (!ok) return false;
  try {
    (*g_chunks)[chunk_uid] = e;
  } catch (const std::bad_alloc&) {
    if (backend == Backend::kMemfdStandIn) munmap(e.m.base, e.m.size);
#ifdef STORE_HAVE_CUDA
    if (backend == Backend::kCuda) CudaUnmap(e.m);
#endif
    *why = "out of memory";
    return false;
  }
  *out = e.m;
  return true;
}

void Release(uint64_t chunk_uid) {
  std::lock_guard<std::mutex> lk(*g_mu);
  auto it = g_chunks->find(chunk_uid);
  if (it == g_chunks->end() || --it->second.refs > 0) return;
  const Entry& e = it->second;
  if (e.backend == Backend::kMemfdStandIn) munmap(e.m.base, e.m.size);
#ifdef STORE_HAVE_CUDA
  if (e.backend == Backend::kCuda) CudaUnmap(e.m);
#endif
  g_chunks->erase(it);
}

namespace {
bool Copy(Backend backend, int local_device, void* dst, const void* src, size_t n,
          bool to_device, std::string* why) {
  if (backend == Backend::kMemfdStandIn) {
    std::memcpy(dst, src, n);
    return true;
  }
#ifdef STORE_HAVE_CUDA
  if (backend == Backend::kCuda) return CudaCopy(local_device, dst, src, n, to_device, why);
#else
  (void)local_device;
  (void)to_device;
#endif
  *why = "no GPU backend";
  return false;
}
}  // namespace

bool CopyToDevice(Backend backend, int local_device, void* dst, const void* src, size_t n,
                  std::string* why) {
  return Copy(backend, local_device, dst, src, n, true, why);
}

bool CopyToHost(Backend backend, int local_device, void* dst, const void* src, size_t n,
                std::string* why) {
  return Copy(backend, local_device, dst, src, n, false, why);
}

}  // namespace storeclient::gpu
