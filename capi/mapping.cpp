// mapping.cpp - the server's region in this process: its pages mapped ahead of use
// (Populate, the populator thread), the strict write window, and the imported GPU chunks.
//
// Owns: the populator thread of a connection (PopulatorMain) and the write windows.
// Called by: connect.cpp (the populator, the window's set-up), writer.cpp (windows, Populate,
// DeviceData) and reader.cpp (Populate, DeviceData).
// Threads: any; the windows are guarded by Conn::window_mu, the GPU chunks by Conn::gpu_mu, and
// the per-chunk flags of Populate are atomics.
#include <errno.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>

#include "client_internal.h"

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif

namespace storeclient::internal {

// ---- the strict write window ---------------------------------------------------------------
//
// With STORE_CLIENT_WRITE_WINDOW=1 at connect, a process can write to the store's memory only
// where it is writing an object now. The writable mapping (wbase) is mapped read-only;
// store_create makes the new object's pages writable (OpenWindow), and its seal or abort makes
// them read-only again (CloseWindow) before the request goes out, so from the seal on this
// process cannot change the object. A stray write anywhere else faults (SIGSEGV) and changes
// no stored byte. When the session ends (store_client_free, a lost connection: the store then
// aborts the unsealed objects and may hand their memory to others) every window is closed at
// once (ShutWindowsLocked), and a write through a writer's old pointer faults too.
//
// Outside the windows the mapping is read-only rather than inaccessible: the process can read
// all of the memory through `base` anyway, and the pages keep their page table entries, so a
// window opens without a page fault. Pages that come back from PROT_NONE cost a hypervisor with
// shadow page tables one fault each on their next write, which the process's own fault counts
// do not show (measured on a 2-core VM: open + 64 MiB memcpy + close took 130 ms that way, 30 ms
// with PROT_READ, against 5 ms for the memcpy alone).
//
// The store gives every object larger than a staged one pages of its own (a run of 4 KiB pages;
// store/memory/region.h), so a window rounded out to whole pages covers no other object; the
// create checks that the object starts on a page. Windows are kept in a list all the same, so
// that a page two windows share stays writable until both are closed. Huge pages (hugetlbfs)
// can be protected only 2 MiB at a time while objects there are placed 4 KiB apart: the window
// is refused on such a region (store_client_connect).

// Whether STORE_CLIENT_WRITE_WINDOW=1 is in the environment.
bool WriteWindowWanted() {
  const char* env = getenv("STORE_CLIENT_WRITE_WINDOW");
  return env && std::strcmp(env, "1") == 0;
}

uint64_t RoundUpTo(uint64_t v, uint64_t unit) { return (v + unit - 1) / unit * unit; }

namespace {

// Makes [begin, end) of wbase read-only, but for the pages the open windows cover. Returns false
// if an mprotect failed. REQUIRES: c->window_mu held.
bool ProtectUncoveredLocked(Conn* c, uint64_t begin, uint64_t end) noexcept {
  bool ok = true;
  uint64_t at = begin;
  while (at < end) {
    uint64_t covered_to = at, next = end;
    for (const auto& [b, e] : c->windows) {
      if (b <= at && at < e) {
        covered_to = std::max(covered_to, e);
      } else if (b > at) {
        next = std::min(next, b);
      }
    }
    if (covered_to > at) {
      at = std::min(end, covered_to);
      continue;
    }
    ok = mprotect(c->wbase + at, next - at, PROT_READ) == 0 && ok;
    at = next;
  }
  return ok;
}

}  // namespace

// Makes [begin, end) of wbase (page-aligned offsets) writable for a writer of this process.
// Returns 0, -1 if the session has ended (no window opens then), or the errno of the failure.
int OpenWindow(Conn* c, uint64_t begin, uint64_t end) noexcept {
  std::lock_guard<std::mutex> lk(c->window_mu);
  if (c->windows_shut) return -1;
  try {
    c->windows.emplace_back(begin, end);
  } catch (const std::bad_alloc&) {
    return ENOMEM;
  }
  if (mprotect(c->wbase + begin, end - begin, PROT_READ | PROT_WRITE) != 0) {
    const int e = errno;
    c->windows.pop_back();
    ProtectUncoveredLocked(c, begin, end);  // whatever part of it did change
    return e;
  }
  return 0;
}

// Closes the window OpenWindow opened: its pages are read-only again (but for those another
// open window covers). Returns false if an mprotect failed, so that some of them may still be
// writable. A window the end of the session closed already is left alone.
bool CloseWindow(Conn* c, uint64_t begin, uint64_t end) noexcept {
  std::lock_guard<std::mutex> lk(c->window_mu);
  auto it = std::find(c->windows.begin(), c->windows.end(), std::make_pair(begin, end));
  if (it == c->windows.end()) return true;
  c->windows.erase(it);
  return ProtectUncoveredLocked(c, begin, end);
}

namespace {
// The session ends: every window is closed and none opens again. REQUIRES: c->window_mu held.
void ShutWindowsLocked(Conn* c) noexcept {
  c->windows_shut = true;
  for (const auto& [b, e] : c->windows) mprotect(c->wbase + b, e - b, PROT_READ);
  c->windows.clear();
}
}  // namespace

void ShutWindows(Conn* c) noexcept {
  if (!c->write_window) return;
  std::lock_guard<std::mutex> lk(c->window_mu);
  ShutWindowsLocked(c);
}

Population PopulationWanted() {
  const char* env = getenv("STORE_CLIENT_POPULATE");
  if (env && std::strcmp(env, "all") == 0) return Population::kAll;
  if (env && std::strcmp(env, "0") == 0) return Population::kNone;
  return Population::kUsed;
}

void* PopulatorMain(void* arg) {
  Conn* c = static_cast<Conn*>(arg);
  // Per thread on Linux; if refused, it runs as it is.
  setpriority(PRIO_PROCESS, static_cast<id_t>(gettid()), 19);
  // From the bottom of the region up: the server's allocator hands out the low addresses
  // first, so they are the ones objects use first. Chunks already mapped (by a put or get that
  // got there first) are skipped. It steps aside while a put or get maps its object's pages:
  // the two at once are slower than one after the other.
  for (uint64_t i = 0; i < c->chunks; i++) {
    while (c->populating.load(std::memory_order_relaxed) > 0 &&
           !c->stop_populate.load(std::memory_order_relaxed)) {
      usleep(200);
    }
    if (c->stop_populate.load(std::memory_order_relaxed)) break;
    Populate(c, i * kPopulateChunk, kPopulateChunk, true);
  }
  return nullptr;
}

bool InRegion(Conn* c, uint64_t offset, uint64_t len) {
  return offset <= c->region_size && len <= c->region_size - offset;
}

namespace {

// Objects from this size up get their pages mapped in one call when opened, instead of one page
// fault per 4 KiB on first touch.
constexpr uint64_t kPopulateMin = 1u << 20;

// Maps [p, p + len) of one of the region's mappings into this process; in the writable one a
// read fault maps a page writable, as the region is shared shmem, which needs no write
// notification. One read per 64 KiB
// suffices where the kernel maps the 64 KiB around a read fault (fault-around, for pages
// already in memory): 3.0 ms per 64 MiB here, against 5.3 for MADV_POPULATE_READ and 14.5 for
// MADV_POPULATE_WRITE. Whether it did is checked on the last page of the first and of the last
// 64 KiB: if reading either took a fault (fault-around is smaller, or the store has not
// touched those pages yet, as with --no-prefault), MADV_POPULATE_READ maps the range instead.
// Returns false if that failed (kernels before 5.14); the pages then fault in on first touch.
// Reads the byte at a so that the kernel maps its page. The value is unused, and another thread
// or process may be writing it meanwhile: a benign race, left out of ThreadSanitizer's view.
__attribute__((noinline, no_sanitize_thread)) void TouchByte(uintptr_t a) {
  (void)*reinterpret_cast<const volatile uint8_t*>(a);
}

bool MapRange(const uint8_t* p, uint64_t len) {
  constexpr uintptr_t kWindow = 64 * 1024;
  const uintptr_t b = reinterpret_cast<uintptr_t>(p), e = b + len;
  for (uintptr_t a = b & ~(kWindow - 1); a < e; a += kWindow) TouchByte(std::max(a, b));
  rusage before{}, after{};
  getrusage(RUSAGE_THREAD, &before);
  TouchByte(std::min(e, (b & ~(kWindow - 1)) + kWindow) - 1);
  TouchByte(e - 1);
  getrusage(RUSAGE_THREAD, &after);
  if (after.ru_minflt == before.ru_minflt) return true;
  return madvise(const_cast<uint8_t*>(p), len, MADV_POPULATE_READ) == 0;
}

}  // namespace

// Each chunk of the region is mapped once per process and mapping (MapRange): its pages then
// stay mapped.
void Populate(Conn* c, uint64_t offset, uint64_t len, bool background, bool write) {
  std::atomic<uint8_t>* populated = write ? c->wpopulated.get() : c->populated.get();
  uint8_t* base = write ? c->wbase : c->base;
  if (len < kPopulateMin || !populated || !base) return;
  uint64_t first = offset / kPopulateChunk;
  uint64_t last = std::min<uint64_t>((offset + len - 1) / kPopulateChunk, c->chunks - 1);
  uint64_t i = first;
  while (i <= last) {
    if (populated[i].load(std::memory_order_relaxed) != 0) {
      i++;
      continue;
    }
    uint64_t j = i;
    while (j + 1 <= last && populated[j + 1].load(std::memory_order_relaxed) == 0) j++;
    uint64_t begin = i * kPopulateChunk;
    uint64_t end = std::min(c->region_size, (j + 1) * kPopulateChunk);
    if (!background) c->populating.fetch_add(1, std::memory_order_relaxed);
    if (MapRange(base + begin, end - begin)) {
      for (uint64_t k = i; k <= j; k++) populated[k].store(1, std::memory_order_relaxed);
    }
    if (!background) c->populating.fetch_sub(1, std::memory_order_relaxed);
    i = j + 1;
  }
}

// Where a GPU object's data is in this process: maps its chunk on first use (one request for
// the chunk's fd, once per chunk and process). Returns STORE_OK or an error (Fail).
int DeviceData(Conn* c, int32_t device, uint32_t chunk, uint64_t chunk_offset, uint64_t size,
               uint8_t** dptr, int32_t* local_device) {
  const uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(device)) << 32) | chunk;
  storeclient::gpu::Mapping m;
  bool have = false;
  {
    std::lock_guard<std::mutex> lk(c->gpu_mu);
    auto it = c->gpu_chunks.find(key);
    if (it != c->gpu_chunks.end()) {
      m = it->second.second;
      have = true;
    }
  }
  if (!have) {
    flatbuffers::FlatBufferBuilder fbb(64);
    auto body = proto::CreateGpuChunkRequest(fbb, device, chunk);
    std::unique_ptr<Reply> reply;
    int rc = Call(c, fbb, Body::GpuChunkRequest, body.Union(), Body::GpuChunkReply, &reply);
    if (rc != STORE_OK) return rc;
    auto* r = reply->msg->body_as_GpuChunkReply();
    if (reply->fds.size() != 1 || r->device() != device || r->chunk() != chunk ||
        r->size() == 0 || !r->uuid() || r->uuid()->size() != 16) {
      MarkBroken(c, STORE_EPROTO, "the store sent a malformed GPU chunk");
      return BrokenError(c);
    }
    std::string why;
    if (!storeclient::gpu::Import(c->gpu_backend, r->chunk_uid(), reply->fds[0], r->size(),
                                  r->uuid()->data(), &m, &why)) {
      return FailMsg(STORE_ENOTSUP, "cannot map the store's GPU memory: " + why);
    }
    std::lock_guard<std::mutex> lk(c->gpu_mu);
    auto [it, inserted] = c->gpu_chunks.emplace(key, std::make_pair(r->chunk_uid(), m));
    if (!inserted) storeclient::gpu::Release(r->chunk_uid());  // another thread was first
    m = it->second.second;
  }
  if (chunk_offset > m.size || size > m.size - chunk_offset) {
    MarkBroken(c, STORE_EPROTO, "the store placed a GPU object outside its chunk");
    return BrokenError(c);
  }
  *dptr = m.base + chunk_offset;
  *local_device = m.local_device;
  return STORE_OK;
}

}  // namespace storeclient::internal
