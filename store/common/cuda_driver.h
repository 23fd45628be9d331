// cuda_driver.h - the CUDA driver calls the store makes, reached without linking libcuda.
//
// Owns: nothing but a table of function pointers, filled once per process.
// Called by: the server's CUDA device backend and libstoreclient's GPU imports.
// Built only when the CUDA toolkit was found (STORE_HAVE_CUDA). The static CUDA runtime loads
// the driver lazily on its first call, so a machine without a driver or a GPU gets an error
// code from Load(), never a failure to start. See ../shared/notes/allocator-cuda-fds.md 2.3.
#pragma once

#ifdef STORE_HAVE_CUDA

#include <cuda.h>

#include <string>

namespace store::cuda {

struct Driver {
  decltype(&::cuInit) Init = nullptr;
  decltype(&::cuDeviceGetCount) DeviceGetCount = nullptr;
  decltype(&::cuDeviceGet) DeviceGet = nullptr;
  decltype(&::cuDeviceGetAttribute) DeviceGetAttribute = nullptr;
  decltype(&::cuDeviceGetName) DeviceGetName = nullptr;
  decltype(&::cuDeviceGetUuid) DeviceGetUuid = nullptr;
  decltype(&::cuDevicePrimaryCtxRetain) DevicePrimaryCtxRetain = nullptr;
  decltype(&::cuDevicePrimaryCtxRelease) DevicePrimaryCtxRelease = nullptr;
  decltype(&::cuCtxPushCurrent) CtxPushCurrent = nullptr;
  decltype(&::cuCtxPopCurrent) CtxPopCurrent = nullptr;
  decltype(&::cuMemGetAllocationGranularity) MemGetAllocationGranularity = nullptr;
  decltype(&::cuMemCreate) MemCreate = nullptr;
  decltype(&::cuMemRelease) MemRelease = nullptr;
  decltype(&::cuMemExportToShareableHandle) MemExportToShareableHandle = nullptr;
  decltype(&::cuMemImportFromShareableHandle) MemImportFromShareableHandle = nullptr;
  decltype(&::cuMemAddressReserve) MemAddressReserve = nullptr;
  decltype(&::cuMemAddressFree) MemAddressFree = nullptr;
  decltype(&::cuMemMap) MemMap = nullptr;
  decltype(&::cuMemUnmap) MemUnmap = nullptr;
  decltype(&::cuMemSetAccess) MemSetAccess = nullptr;
  decltype(&::cuMemcpyHtoD) MemcpyHtoD = nullptr;
  decltype(&::cuMemcpyDtoH) MemcpyDtoH = nullptr;
  decltype(&::cuGetErrorName) GetErrorName = nullptr;
};

// The process's driver table, loaded on first use (thread-safe). nullptr when there is no usable
// driver; *why (may be null) then says why, e.g. "CUDA driver: cudaErrorInsufficientDriver
// (no driver is installed or it is older than this runtime)".
const Driver* GetDriver(std::string* why);

// "CUDA_ERROR_OUT_OF_MEMORY (2)": a driver status for messages.
std::string ErrorName(const Driver* d, CUresult rc);

// Makes device's primary context current on this thread for the scope, and restores the
// previous one after. ok() is false if the context could not be had.
class ScopedContext {
 public:
  ScopedContext(const Driver* d, CUdevice device);
  ~ScopedContext();
  ScopedContext(const ScopedContext&) = delete;
  ScopedContext& operator=(const ScopedContext&) = delete;
  bool ok() const { return pushed_; }
  CUresult error() const { return rc_; }

 private:
  const Driver* d_;
  CUcontext ctx_ = nullptr;
  bool pushed_ = false;
  CUresult rc_ = CUDA_SUCCESS;
};

}  // namespace store::cuda

#endif  // STORE_HAVE_CUDA
