// cuda_driver.cpp - loads the CUDA driver entry points through the static runtime.
#ifdef STORE_HAVE_CUDA

#include "cuda_driver.h"

#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <cstdlib>
#include <map>
#include <mutex>

namespace store::cuda {

namespace {

// Driver API version of the signatures in cuda_driver.h (the VMM calls exist since 10.2; 12.0 is the
// oldest ABI the CUDA 13 runtime offers).
constexpr int kDriverApiVersion = 12000;

template <class F>
bool Resolve(const char* name, F* fn, std::string* why) {
  void* p = nullptr;
  cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
  cudaError_t rc = cudaGetDriverEntryPointByVersion(name, &p, kDriverApiVersion,
                                                    cudaEnableDefault, &q);
  if (rc != cudaSuccess || q != cudaDriverEntryPointSuccess || !p) {
    if (rc != cudaSuccess) {
      *why = std::string("CUDA driver: ") + cudaGetErrorName(rc) + " (" +
             cudaGetErrorString(rc) + ")";
    } else {
      *why = std::string("CUDA driver: it has no ") + name;
    }
    return false;
  }
  *fn = reinterpret_cast<F>(p);
  return true;
}

struct Loaded {
  Driver driver;
  bool ok = false;
  std::string why;
};

// Tests on machines without a GPU may put a test double of the driver in place of the real one
// (tests/fake_cuda_driver.cpp): a shared module that returns a filled table.
bool LoadFake(const char* path, Driver* d, std::string* why) {
  void* h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  void* sym = h ? dlsym(h, "store_fake_cuda_driver") : nullptr;
  if (!sym) {
    *why = std::string("STORE_FAKE_CUDA_DRIVER: cannot load ") + path;
    return false;
  }
  *d = *reinterpret_cast<const Driver* (*)()>(sym)();
  return true;
}

Loaded* Load() {
  static Loaded* loaded = [] {
    auto* l = new Loaded;
    Driver& d = l->driver;
    std::string& why = l->why;
    if (const char* fake = std::getenv("STORE_FAKE_CUDA_DRIVER"); fake && *fake) {
      if (!LoadFake(fake, &d, &why)) return l;
      CUresult rc = d.Init(0);
      l->ok = rc == CUDA_SUCCESS;
      if (!l->ok) why = "CUDA driver (test double): cuInit failed with " + ErrorName(&d, rc);
      return l;
    }
    // cudaDriverGetVersion succeeds with 0 when no driver is installed.
    int version = 0;
    if (cudaDriverGetVersion(&version) != cudaSuccess || version == 0) {
      why = "CUDA driver: none is installed";
      return l;
    }
    bool ok = Resolve("cuInit", &d.Init, &why) &&
              Resolve("cuDeviceGetCount", &d.DeviceGetCount, &why) &&
              Resolve("cuDeviceGet", &d.DeviceGet, &why) &&
              Resolve("cuDeviceGetAttribute", &d.DeviceGetAttribute, &why) &&
              Resolve("cuDeviceGetName", &d.DeviceGetName, &why) &&
              Resolve("cuDeviceGetUuid", &d.DeviceGetUuid, &why) &&
              Resolve("cuDevicePrimaryCtxRetain", &d.DevicePrimaryCtxRetain, &why) &&
              Resolve("cuDevicePrimaryCtxRelease", &d.DevicePrimaryCtxRelease, &why) &&
              Resolve("cuCtxPushCurrent", &d.CtxPushCurrent, &why) &&
              Resolve("cuCtxPopCurrent", &d.CtxPopCurrent, &why) &&
              Resolve("cuMemGetAllocationGranularity", &d.MemGetAllocationGranularity, &why) &&
              Resolve("cuMemCreate", &d.MemCreate, &why) &&
              Resolve("cuMemRelease", &d.MemRelease, &why) &&
              Resolve("cuMemExportToShareableHandle", &d.MemExportToShareableHandle, &why) &&
              Resolve("cuMemImportFromShareableHandle", &d.MemImportFromShareableHandle, &why) &&
              Resolve("cuMemAddressReserve", &d.MemAddressReserve, &why) &&
              Resolve("cuMemAddressFree", &d.MemAddressFree, &why) &&
              Resolve("cuMemMap", &d.MemMap, &why) &&
              Resolve("cuMemUnmap", &d.MemUnmap, &why) &&
              Resolve("cuMemSetAccess", &d.MemSetAccess, &why) &&
              Resolve("cuMemcpyHtoD", &d.MemcpyHtoD, &why) &&
              Resolve("cuMemcpyDtoH", &d.MemcpyDtoH, &why) &&
              Resolve("cuGetErrorName", &d.GetErrorName, &why);
    if (!ok) return l;
    CUresult rc = d.Init(0);
    if (rc != CUDA_SUCCESS) {
      why = "CUDA driver: cuInit failed with " + ErrorName(&d, rc);
      return l;
    }
    l->ok = true;
    return l;
  }();
  return loaded;
}

// Primary contexts are retained once per device and kept for the life of the process: dropping
// the last reference would destroy the context, and making it again costs far more than a call.
std::mutex g_ctx_mu;
std::map<CUdevice, CUcontext>* g_ctx = new std::map<CUdevice, CUcontext>;

}  // namespace

const Driver* GetDriver(std::string* why) {
  Loaded* l = Load();
  if (!l->ok) {
    if (why) *why = l->why;
    return nullptr;
  }
  return &l->driver;
}

std::string ErrorName(const Driver* d, CUresult rc) {
  const char* name = nullptr;
  if (!d || !d->GetErrorName || d->GetErrorName(rc, &name) != CUDA_SUCCESS || !name) {
    name = "CUDA error";
  }
  return std::string(name) + " (" + std::to_string(static_cast<int>(rc)) + ")";
}

ScopedContext::ScopedContext(const Driver* d, CUdevice device) : d_(d) {
  {
    std::lock_guard<std::mutex> lk(g_ctx_mu);
    auto it = g_ctx->find(device);
    if (it != g_ctx->end()) {
      ctx_ = it->second;
    } else {
      rc_ = d_->DevicePrimaryCtxRetain(&ctx_, device);
      if (rc_ != CUDA_SUCCESS) return;
      (*g_ctx)[device] = ctx_;
    }
  }
  rc_ = d_->CtxPushCurrent(ctx_);
  pushed_ = rc_ == CUDA_SUCCESS;
}

ScopedContext::~ScopedContext() {
  if (pushed_) {
    CUcontext popped = nullptr;
    d_->CtxPopCurrent(&popped);
  }
}

}  // namespace store::cuda

#endif  // STORE_HAVE_CUDA
