// gpu.cpp - the server's GPU objects: device memory in chunks, sub-allocated on the host.
//
// Each device that serves GPU objects has a ChunkAllocator (cuda/chunk_allocator.h) over chunks
// of --gpu-chunk-size bytes, made on demand by the device backend (cuda/device_backend.h) up to
// --gpu-memory. A chunk's fd is exported once and handed to each client process that asks for it
// (GpuChunkRequest); the client maps the whole chunk once and finds objects at their offsets.
// The server never maps device memory: creating, freeing and accounting are bookkeeping here.
//
// GPU objects share the host objects' ids, lifecycle, readers, pins, delete and disconnect
// rules. They are never spilled. Their metadata lives in the host region. A create that does
// not fit on its device waits (timeout) in a queue of its own, served in order per device as
// GPU objects are freed; host creates never wait behind it.
#include <sys/random.h>

#include <algorithm>
#include <cinttypes>
#include <cstring>

#include "storeclient.h"

#include "server/log.h"
#include "server/server_internal.h"
#include "server/util.h"

namespace store {

namespace {
constexpr uint64_t kDefaultGpuChunk = 256ull << 20;

uint64_t RandomU64() {
  uint64_t v = 0;
  if (getrandom(&v, sizeof v, 0) != sizeof v) v = static_cast<uint64_t>(MonotonicNs());
  return v | 1;  // never 0
}
}  // namespace

void Server::StartGpu() {
  if (options_.gpu_memory == 0) {
    gpu_disabled_why_ =
        "GPU objects are not enabled on this store (start it with --gpu-memory SIZE)";
    return;
  }
  std::string why;
  if (options_.gpu_backend == "memfd-standin") {
    int n = 1;
    for (int d : options_.gpu_devices) n = std::max(n, d + 1);
    gpu_backend_ = cuda::MakeMemfdStandIn(n);
  } else {
    gpu_backend_ = cuda::MakeCudaBackend(&why);
  }
  std::vector<cuda::DeviceInfo> found;
  if (!gpu_backend_ || !gpu_backend_->Probe(&found, &why)) {
    gpu_disabled_why_ = "GPU objects are disabled: " + why;
    LOG_WARN("%s", gpu_disabled_why_.c_str());
    gpu_backend_.reset();
    return;
  }
  std::string missing;
  for (const cuda::DeviceInfo& info : found) {
    if (!options_.gpu_devices.empty() &&
        std::find(options_.gpu_devices.begin(), options_.gpu_devices.end(), info.ordinal) ==
            options_.gpu_devices.end()) {
      continue;
    }
    uint64_t chunk = options_.gpu_chunk_size
                         ? options_.gpu_chunk_size
                         : std::min<uint64_t>(options_.gpu_memory, kDefaultGpuChunk);
    uint64_t g = info.granularity ? info.granularity : 1;
    chunk = (chunk + g - 1) / g * g;
    uint64_t max_chunks = (options_.gpu_memory + chunk - 1) / chunk;
    if (max_chunks > UINT32_MAX) max_chunks = UINT32_MAX;
    auto dev = std::make_unique<GpuDevice>();
    dev->info = info;
    GpuDevice* d = dev.get();
    dev->alloc = std::make_unique<cuda::ChunkAllocator>(
        chunk, static_cast<uint32_t>(max_chunks), [this, d](uint32_t index) {
          int fd = -1;
          std::string err;
          if (!gpu_backend_->CreateChunk(d->info.ordinal, d->alloc->chunk_size(), &fd, &err)) {
            LOG_WARN("GPU device %d: cannot make chunk %u: %s", d->info.ordinal, index,
                     err.c_str());
            return false;
          }
          d->chunks.push_back({fd, RandomU64()});
          return true;
        });
    if (!dev->alloc->valid()) {
      LOG_WARN("GPU device %d: chunk size %" PRIu64 " is not usable", info.ordinal, chunk);
      continue;
    }
    LOG_INFO("GPU objects on device %d (%s, %s): %s in chunks of %s (the largest GPU object)",
             info.ordinal, info.name.c_str(), gpu_backend_->name(),
             Bytes(chunk * max_chunks).c_str(), Bytes(chunk).c_str());
    gpus_.push_back(std::move(dev));
  }
  for (int want : options_.gpu_devices) {
    if (!FindGpu(want)) missing += " " + std::to_string(want);
  }
  if (!missing.empty()) LOG_WARN("GPU devices not usable, skipped:%s", missing.c_str());
  if (gpus_.empty()) {
    gpu_disabled_why_ = "GPU objects are disabled: none of the devices asked for is usable";
    LOG_WARN("%s", gpu_disabled_why_.c_str());
    gpu_backend_.reset();
  }
}

Server::GpuDevice* Server::FindGpu(int device) const {
  for (const auto& d : gpus_) {
    if (d->info.ordinal == device) return d.get();
  }
  return nullptr;
}

std::string Server::GpuDevicesText() const {
  std::string s;
  for (const auto& d : gpus_) s += (s.empty() ? "" : ", ") + std::to_string(d->info.ordinal);
  return s;
}

// Checks a create on a device; returns STORE_OK or a code with *message.
int Server::CheckGpuCreate(const CreateArgs& a, bool inline_put, std::string* message) const {
  if (a.device < -1) {
    *message = "device must be -1 (host memory) or a GPU number";
    return STORE_EINVAL;
  }
  if (gpus_.empty()) {
    *message = gpu_disabled_why_;
    return STORE_ENOTSUP;
  }
  const GpuDevice* d = FindGpu(a.device);
  if (!d) {
    *message = "device " + std::to_string(a.device) +
               " does not serve GPU objects in this store (it serves " + GpuDevicesText() + ")";
    return STORE_EINVAL;
  }
  if (a.data_size > d->alloc->chunk_size()) {
    *message = "a GPU object of " + Bytes(a.data_size) +
               " can never fit: the largest is one chunk, " + Bytes(d->alloc->chunk_size()) +
               " (see --gpu-chunk-size)";
    return STORE_EINVAL;
  }
  if (inline_put) {
    *message = "inline data is for host objects; write a GPU object through its writer";
    return STORE_EINVAL;
  }
  return STORE_OK;
}

std::string Server::GpuFullMessage(int device, uint64_t want) const {
  const GpuDevice* d = FindGpu(device);
  if (!d) return "device " + std::to_string(device) + " is gone";
  return "GPU device " + std::to_string(device) + " is full: " + Bytes(want) + " requested, " +
         Bytes(d->alloc->used_bytes()) + " of " + Bytes(d->alloc->capacity()) + " in use by " +
         std::to_string(d->objects) + " objects";
}

// Takes device memory for a new object. Returns STORE_OK or STORE_ENOSPACE.
int Server::GpuAllocate(int device, uint64_t size, Object* proto, std::string* message) {
  GpuDevice* d = FindGpu(device);
  cuda::Allocation al;
  if (!d || !d->alloc->Allocate(size, &al)) {
    *message = GpuFullMessage(device, size);
    return STORE_ENOSPACE;
  }
  d->objects++;
  proto->device = device;
  proto->data_size = size;
  proto->gpu_chunk = al.chunk;
  proto->gpu_offset = al.offset;
  return STORE_OK;
}

// Gives back what GpuAllocate took for o; the size taken is data_size rounded to the alignment.
void Server::GpuFree(Object* o) {
  GpuDevice* d = FindGpu(o->device);
  if (!d) return;
  uint64_t align = d->alloc->alignment();
  uint64_t taken = (o->data_size + align - 1) / align * align;
  if (!d->alloc->Free({o->gpu_chunk, o->gpu_offset, taken})) {
    LOG_ERROR("GPU device %d: object %s freed a range the allocator does not know", o->device,
              Hex(o->id).c_str());
    return;
  }
  d->objects--;
  gpu_freed_ = true;
}

std::list<Server::WaitingCreate*>& Server::CreateQueueFor(int device) {
  if (device < 0) return create_queue_;
  GpuDevice* d = FindGpu(device);
  return d ? d->create_queue : no_queue_;
}

bool Server::ServeWaitingGpuCreates() {
  gpu_freed_ = false;
  // Each device's queue from its head, until a create does not fit: the rest keep waiting.
  for (const auto& d : gpus_) {
    while (!d->create_queue.empty()) {
      WaitingCreate* w = d->create_queue.front();
      Object* o = nullptr;
      std::string message;
      int rc = TryCreate(w->client, w->args, &o, &message);
      if (rc == STORE_ENOSPACE) break;
      Client* c = w->client;
      uint64_t seq = w->seq;
      FinishCreateWait(w, rc, message);  // removes it from the queue and frees it
      if (rc == STORE_OK) ReplyCreated(c, seq, o);
    }
  }
  return gpu_waiting_ == 0;
}

void Server::HandleGpuChunk(Client* c, uint64_t seq, const proto::GpuChunkRequest* r) {
  const GpuDevice* d = FindGpu(r->device());
  if (!d) {
    if (gpus_.empty()) return SendError(c, seq, STORE_ENOTSUP, gpu_disabled_why_);
    return SendError(c, seq, STORE_EINVAL,
                     "device " + std::to_string(r->device()) + " does not serve GPU objects");
  }
  if (r->chunk() >= d->chunks.size()) {
    return SendError(c, seq, STORE_EINVAL,
                     "device " + std::to_string(r->device()) + " has no chunk " +
                         std::to_string(r->chunk()));
  }
  if (!AdmitGpuFd(c, seq)) return;
  const GpuDevice::Chunk& ch = d->chunks[r->chunk()];
  fbb_.Clear();
  auto uuid = fbb_.CreateVector(d->info.uuid, sizeof d->info.uuid);
  auto body = proto::CreateGpuChunkReply(fbb_, r->device(), r->chunk(), ch.uid,
                                         d->alloc->chunk_size(), uuid);
  fbb_.FinishSizePrefixed(
      proto::CreateMessage(fbb_, seq, 0, 0, 1, proto::Body::GpuChunkReply, body.Union()),
      proto::MessageIdentifier());
  Send(c, ch.fd);
}

flatbuffers::Offset<flatbuffers::Vector<const proto::GpuDeviceStats*>> Server::GpuStats() {
  std::vector<proto::GpuDeviceStats> v;
  for (const auto& d : gpus_) {
    v.emplace_back(d->info.ordinal, d->alloc->chunk_count(), d->alloc->capacity(),
                   d->alloc->used_bytes(), d->objects, d->alloc->chunk_size(),
                   d->alloc->largest_free());
  }
  return fbb_.CreateVectorOfStructs(v);
}

proto::GpuBackend Server::GpuBackendKind() const {
  return gpu_backend_ ? gpu_backend_->kind() : proto::GpuBackend::None;
}

}  // namespace store
