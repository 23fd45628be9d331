// region.cpp - the memfd region: its pages (PageHeap) and the manual jemalloc arena that
// serves small objects from extents of those pages.
//
// Layout of the work (see ../shared/notes/allocator-cuda-fds.md, section 1):
//   memfd (sealed SHRINK|GROW|SEAL) -> fallocate (pages reserved, no SIGBUS) -> one MAP_SHARED
//   mapping -> a PageHeap over all of it -> an arena created with experimental.arenas_create_ext
//   and metadata_use_hooks=false (jemalloc's own metadata stays on the heap).
// Objects of kLargeFrom bytes and more take a run of pages from the PageHeap: their size rounded
// up to a page, no size class. Smaller ones come from the arena, whose alloc hook takes extents
// from the same PageHeap and whose dalloc hook gives them back; with retain off (malloc_conf
// below) jemalloc asks for exact sizes and hands back extents it no longer uses after its
// decay, or at once on a purge (which Allocate asks for when a large object does not fit).
// The nine extent hooks below are all ours; none of jemalloc's defaults are safe on a shared
// mapping (MADV_DONTNEED frees nothing on memfd pages yet jemalloc would treat them as zeroed).
#include "memory/region.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysinfo.h>
#include <unistd.h>

// jemalloc's API is called by its je_ names (JEMALLOC_NO_DEMANGLE keeps the header's je_ macros).
// By default they expand to the plain names of the system's jemalloc, which is also the server's
// malloc. With -Dserver_heap=system the server links a copy of that jemalloc whose public
// symbols carry the je_ prefix (jemalloc_prefixed.sh), so malloc stays the system's, and
// JEMALLOC_NO_RENAME (set by that build) makes the header declare the je_ names as they are.
#define JEMALLOC_NO_DEMANGLE
#include <jemalloc/jemalloc.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cinttypes>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <new>
#include <string>
#include <type_traits>
#include <vector>

// jemalloc 5.3 reuses a free *dirty* extent only for requests at least 1/64 of its size
// (opt.lg_extent_max_active_fit = 6), a heap-fragmentation guard. A primed region is one free
// dirty extent of nearly its whole capacity, and with dirty_decay_ms = -1 free memory stays
// dirty, so without this every small allocation would fail while the region is empty (a
// 64-byte request needs a 4 KiB slab, which may only come from a dirty extent <= 256 KiB).
// 63 turns the guard off (every size shifted right by 63 is 0). This is jemalloc's documented
// start-up configuration symbol and applies to the whole process; Region::Create checks that
// the value in effect (MALLOC_CONF may override it) is large enough for its capacity.
// retain:false makes jemalloc ask the hooks for the extents it needs, exact size, and give them
// back through the dalloc hook, instead of growing in ever larger steps and keeping them.
const char* je_malloc_conf = "lg_extent_max_active_fit:63,retain:false";

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#ifndef MFD_HUGETLB
#define MFD_HUGETLB 0x0004U
#endif

namespace store {

namespace {

constexpr uint64_t kHugePage = 2ull << 20;
// Largest capacity accepted: keeps every offset and rounding below overflow.
constexpr uint64_t kMaxCapacity = 1ull << 46;
// Objects from this size up take pages of their own (PageHeap); smaller ones share jemalloc's
// slabs. jemalloc's small size classes end at 14 KiB, 2 KiB apart: either way an object costs
// at most a page more than its size.
constexpr uint64_t kLargeFrom = 16ull << 10;
constexpr uint64_t kPage = 4096;

// Mirrors jemalloc 5.3.0's internal arena_config_t, the argument of
// "experimental.arenas_create_ext". The layout is not public, so it is repeated here.
struct ArenaConfig530 {
  extent_hooks_t* extent_hooks;
  bool metadata_use_hooks;
};

std::string ErrnoText(const std::string& what, int err) {
  return what + ": " + std::strerror(err);
}

std::string ArenaCtl(unsigned arena, const char* leaf) {
  return "arena." + std::to_string(arena) + "." + leaf;
}

uint64_t RoundUp(uint64_t v, uint64_t to) { return (v + to - 1) / to * to; }

// The bracketed word of /sys/kernel/mm/transparent_hugepage/shmem_enabled, or "" if unknown.
std::string ShmemThpPolicy() {
  FILE* f = std::fopen("/sys/kernel/mm/transparent_hugepage/shmem_enabled", "re");
  if (f == nullptr) return "";
  char buf[256] = {};
  size_t n = std::fread(buf, 1, sizeof buf - 1, f);
  std::fclose(f);
  buf[n] = '\0';
  const char* open = std::strchr(buf, '[');
  const char* close = open ? std::strchr(open, ']') : nullptr;
  if (open == nullptr || close == nullptr) return "";
  return std::string(open + 1, close);
}

// kB of the mapping at `base` that the kernel maps with PMD-sized (huge) shmem pages.
uint64_t ShmemPmdMappedKb(const void* base) {
  FILE* f = std::fopen("/proc/self/smaps", "re");
  if (f == nullptr) return 0;
  char want[32];
  std::snprintf(want, sizeof want, "%" PRIxPTR "-", reinterpret_cast<uintptr_t>(base));
  size_t want_len = std::strlen(want);
  char line[512];
  bool in_mapping = false;
  uint64_t kb = 0;
  while (std::fgets(line, sizeof line, f) != nullptr) {
    uintptr_t lo = 0, hi = 0;
    if (std::sscanf(line, "%" SCNxPTR "-%" SCNxPTR, &lo, &hi) == 2) {  // a mapping's header line
      if (in_mapping) break;
      in_mapping = std::strncmp(line, want, want_len) == 0;
      continue;
    }
    unsigned long long v = 0;
    if (in_mapping && std::sscanf(line, "ShmemPmdMapped: %llu kB", &v) == 1) {
      kb = v;
      break;
    }
  }
  std::fclose(f);
  return kb;
}

// Writes every page's first byte back to itself. The region is fresh (all zeros) and no
// client can map it yet, so this changes no data; it only faults the pages in.
void TouchPages(uint8_t* base, uint64_t len, uint64_t step) {
  volatile uint8_t* p = base;
  for (uint64_t off = 0; off < len; off += step) p[off] = p[off];
}

// MADV_POPULATE_WRITE (Linux 5.14), else a write per page.
void Prefault(uint8_t* base, uint64_t len, uint64_t page) {
  if (madvise(base, len, MADV_POPULATE_WRITE) == 0) return;
  TouchPages(base, len, page);
}

}  // namespace

// Everything the extent hooks need. `hooks` must be the first member: jemalloc hands each hook
// the extent_hooks_t* it was given, and the hook recovers its HookState from it. Lives as long
// as the arena (the arena is destroyed before this is freed).
struct Region::HookState {
  extent_hooks_t hooks;
  int fd = -1;
  uint8_t* base = nullptr;
  uint64_t capacity = 0;
  PageHeap* heap = nullptr;  // owned by the Region; outlives the arena
  bool hugetlb = false;  // hugetlbfs: holes can only be punched in whole 2 MiB pages
  bool arena_created = false;
  unsigned arena = 0;
  std::mutex mu;         // guards heap

  static HookState* From(extent_hooks_t* h) { return reinterpret_cast<HookState*>(h); }

  // An extent for jemalloc: a run of pages of the heap (new_addr: one that grows an extent in
  // place, only if the pages after it are free).
  static void* Alloc(extent_hooks_t* h, void* new_addr, size_t size, size_t alignment, bool* zero,
                     bool* commit, unsigned /*arena_ind*/) {
    HookState* s = From(h);
    if (alignment == 0 || (alignment & (alignment - 1)) != 0) return nullptr;
    uint64_t off = 0, taken = 0;
    {
      std::lock_guard<std::mutex> lock(s->mu);
      if (new_addr != nullptr) {
        auto* a = static_cast<uint8_t*>(new_addr);
        if (a < s->base || reinterpret_cast<uintptr_t>(a) % alignment != 0) return nullptr;
        off = static_cast<uint64_t>(a - s->base);
        if (!s->heap->AllocateAt(off, size)) return nullptr;
      } else if (!s->heap->Allocate(size, alignment, &off, &taken)) {
        return nullptr;
      }
    }
    // Pages freed by others are not zero: clear them only when jemalloc needs it (the store
    // asks for no zeroed memory).
    if (*zero) std::memset(s->base + off, 0, size);
    *commit = true;  // shmem pages are reserved by fallocate / committed on touch
    return s->base + off;
  }
  // The extent's pages go back to the heap, for any object.
  static bool Dalloc(extent_hooks_t* h, void* addr, size_t size, bool, unsigned) {
    HookState* s = From(h);
    std::lock_guard<std::mutex> lock(s->mu);
    s->heap->Free(static_cast<uint64_t>(static_cast<uint8_t*>(addr) - s->base), size);
    return false;
  }
  // The region is unmapped by ~Region.
  static void Destroy(extent_hooks_t*, void*, size_t, bool, unsigned) {}
  static bool Commit(extent_hooks_t*, void*, size_t, size_t, size_t, unsigned) { return false; }
  static bool Decommit(extent_hooks_t*, void*, size_t, size_t, size_t, unsigned) { return true; }
  static bool PurgeLazy(extent_hooks_t*, void*, size_t, size_t, size_t, unsigned) { return true; }
  // Frees the pages of a free range: afterwards every mapping of the memfd reads zeros there,
  // which is what jemalloc assumes after a successful forced purge.
  static bool PurgeForced(extent_hooks_t* h, void* addr, size_t /*size*/, size_t offset, size_t length,
                          unsigned /*arena_ind*/) {
    HookState* s = From(h);
    uint64_t off = static_cast<uint64_t>(static_cast<uint8_t*>(addr) - s->base) + offset;
    if (off > s->capacity || length > s->capacity - off) return true;
    s->Punch(off, length);
    return false;
  }
  // Extents come from and go back to one heap as page runs: any split or merge is fine.
  static bool Split(extent_hooks_t*, void*, size_t, size_t, size_t, bool, unsigned) { return false; }
  static bool Merge(extent_hooks_t*, void*, size_t, void*, size_t, bool, unsigned) { return false; }

  // Gives the pages of [off, off + length) back to the OS; the range reads zero afterwards.
  void Punch(uint64_t off, uint64_t length) {
    if (length == 0) return;
    constexpr int kMode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
    if (!hugetlb) {
      if (fallocate(fd, kMode, static_cast<off_t>(off), static_cast<off_t>(length)) != 0) {
        std::memset(base + off, 0, length);
      }
      return;
    }
    // hugetlbfs frees only whole huge pages: punch the ones fully inside the range and zero
    // the partial ends by hand, so the whole range reads zero either way.
    uint64_t lo = RoundUp(off, kHugePage);
    uint64_t hi = (off + length) / kHugePage * kHugePage;
    if (lo >= hi) {
      std::memset(base + off, 0, length);
      return;
    }
    std::memset(base + off, 0, lo - off);
    std::memset(base + hi, 0, off + length - hi);
    if (fallocate(fd, kMode, static_cast<off_t>(lo), static_cast<off_t>(hi - lo)) != 0) {
      std::memset(base + lo, 0, hi - lo);
    }
  }

  HookState() : hooks{Alloc, Dalloc, Destroy, Commit, Decommit, PurgeLazy, PurgeForced, Split, Merge} {}
};

std::unique_ptr<Region> Region::Create(const RegionOptions& options, std::string* error) {
  static std::atomic<uint64_t> next_id{1};
  std::string scratch;
  if (error == nullptr) error = &scratch;
  auto fail = [error](std::string msg) -> std::unique_ptr<Region> {
    *error = std::move(msg);
    return nullptr;
  };
  if (options.capacity == 0) return fail("region capacity must be > 0");
  if (options.capacity > kMaxCapacity) {
    return fail("region capacity " + std::to_string(options.capacity) + " bytes is too large");
  }
  // fallocate below really allocates: a capacity beyond RAM + swap would run the machine into
  // the OOM killer before it could fail.
  struct sysinfo si;
  if (sysinfo(&si) == 0) {
    uint64_t memory = (static_cast<uint64_t>(si.totalram) + si.totalswap) * si.mem_unit;
    if (options.capacity > memory) {
      return fail("region capacity " + std::to_string(options.capacity) +
                  " bytes exceeds this machine's memory (" + std::to_string(memory) +
                  " bytes of RAM + swap)");
    }
  }
  long sys_page = sysconf(_SC_PAGESIZE);
  const uint64_t page = sys_page > 0 ? static_cast<uint64_t>(sys_page) : 4096;

  // From here on, ~Region undoes whatever has been done so far.
  std::unique_ptr<Region> r(new (std::nothrow) Region());
  if (r == nullptr) return fail("out of memory creating region");
  r->hooks_.reset(new (std::nothrow) HookState());
  if (r->hooks_ == nullptr) return fail("out of memory creating region");
  HookState* hs = r->hooks_.get();
  static_assert(std::is_standard_layout_v<HookState> && offsetof(HookState, hooks) == 0,
                "a hook recovers its HookState from the extent_hooks_t* it receives");

  // 1. The memfd: hugetlbfs if asked for and possible (there must be enough reserved huge pages,
  //    which fallocate proves), else ordinary shmem.
  bool hugetlb = false;
  uint64_t cap = 0;
  if (options.hugepages && !(options.hugepages_exact && options.capacity % kHugePage != 0)) {
    int fd = memfd_create("store", MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_HUGETLB);
    if (fd >= 0) {
      uint64_t hcap = RoundUp(options.capacity, kHugePage);
      if (ftruncate(fd, static_cast<off_t>(hcap)) == 0 &&
          fallocate(fd, 0, 0, static_cast<off_t>(hcap)) == 0) {
        r->fd_ = fd;
        cap = hcap;
        hugetlb = true;
      } else {
        close(fd);
      }
    }
  }
  if (!hugetlb) {
    r->fd_ = memfd_create("store", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (r->fd_ < 0) return fail(ErrnoText("memfd_create", errno));
    cap = RoundUp(options.capacity, page);
    if (ftruncate(r->fd_, static_cast<off_t>(cap)) != 0) {
      return fail(ErrnoText("ftruncate of the region to " + std::to_string(cap) + " bytes", errno));
    }
  }

  // 2. The one server-side mapping.
  void* m = mmap(nullptr, cap, PROT_READ | PROT_WRITE, MAP_SHARED, r->fd_, 0);
  if (m == MAP_FAILED) return fail(ErrnoText("mmap of " + std::to_string(cap) + " bytes", errno));
  r->base_ = static_cast<uint8_t*>(m);
  r->capacity_ = cap;

  // 3. Reserve the pages. For transparent huge pages the pages must first be faulted through
  //    the MADV_HUGEPAGE mapping: fallocate has no mapping to consult and would allocate small
  //    pages. fallocate then fills whatever the populate left out.
  bool populated = false;
  if (options.hugepages && !hugetlb) {
    bool advised = madvise(r->base_, cap, MADV_HUGEPAGE) == 0;
    std::string policy = ShmemThpPolicy();
    if (advised && policy != "never" && policy != "deny" && !policy.empty()) {
      Prefault(r->base_, cap, page);
      populated = true;
    }
  }
  if (!hugetlb && fallocate(r->fd_, 0, 0, static_cast<off_t>(cap)) != 0) {
    return fail(ErrnoText("fallocate of " + std::to_string(cap) +
                              " bytes for the shared memory region (not enough memory?)",
                          errno));
  }
  if (fcntl(r->fd_, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    return fail(ErrnoText("sealing the region memfd", errno));
  }
  // A second descriptor of the same memory, opened read-only, for read-only clients: a mapping
  // of it cannot be made writable (mmap and mprotect refuse PROT_WRITE).
  {
    std::string self = "/proc/self/fd/" + std::to_string(r->fd_);
    r->ro_fd_ = open(self.c_str(), O_RDONLY | O_CLOEXEC);
    if (r->ro_fd_ < 0) {
      return fail(ErrnoText("reopening the region read-only (" + self + ")", errno));
    }
  }
  if (options.prefault && !populated) {
    Prefault(r->base_, cap, hugetlb ? kHugePage : page);
    populated = true;
  }
  if (hugetlb) {
    r->hugepages_active_ = true;
  } else if (options.hugepages && populated) {
    r->hugepages_active_ = ShmemPmdMappedKb(r->base_) > 0;
  }

  // 4. The pages, and the arena for small objects.
  r->heap_.reset(new (std::nothrow) PageHeap(cap, kPage));
  if (r->heap_ == nullptr) return fail("out of memory creating region");
  hs->heap = r->heap_.get();
  //    metadata_use_hooks=false keeps jemalloc's bookkeeping out of the region.
  hs->fd = r->fd_;
  hs->base = r->base_;
  hs->capacity = cap;
  hs->hugetlb = hugetlb;
  unsigned arena = 0;
  size_t arena_len = sizeof arena;
  ArenaConfig530 config{&hs->hooks, false};
  int rc = je_mallctl("experimental.arenas_create_ext", &arena, &arena_len, &config, sizeof config);
  if (rc != 0) return fail(ErrnoText("jemalloc experimental.arenas_create_ext", rc));
  hs->arena_created = true;
  hs->arena = arena;
  r->arena_ = arena;
  r->flags_ = MALLOCX_ARENA(arena) | MALLOCX_TCACHE_NONE;

  // 5. Decay: -1 keeps the extents jemalloc no longer uses until a purge hands them back.
  //    muzzy 0: a decayed extent goes straight back to the heap (the dalloc hook).
  ssize_t dirty = static_cast<ssize_t>(options.dirty_decay_ms < 0 ? -1 : options.dirty_decay_ms);
  ssize_t muzzy = 0;
  std::string name = ArenaCtl(arena, "dirty_decay_ms");
  rc = je_mallctl(name.c_str(), nullptr, nullptr, &dirty, sizeof dirty);
  if (rc != 0) return fail(ErrnoText("jemalloc " + name, rc));
  name = ArenaCtl(arena, "muzzy_decay_ms");
  rc = je_mallctl(name.c_str(), nullptr, nullptr, &muzzy, sizeof muzzy);
  if (rc != 0) return fail(ErrnoText("jemalloc " + name, rc));
  r->decay_ms_ = options.dirty_decay_ms;

  r->id_ = next_id.fetch_add(1, std::memory_order_relaxed);
  return r;
}

Region::~Region() {
  if (hooks_ != nullptr && hooks_->arena_created) {
    std::string name = ArenaCtl(hooks_->arena, "destroy");
    if (je_mallctl(name.c_str(), nullptr, nullptr, nullptr, 0) != 0) {
      // The arena still points at the hooks: keep them (a small leak) rather than free them.
      (void)hooks_.release();
    }
  }
  hooks_.reset();
  if (base_ != nullptr) munmap(base_, capacity_);
  if (fd_ >= 0) close(fd_);
  if (ro_fd_ >= 0) close(ro_fd_);
}

void* Region::Allocate(uint64_t size, uint64_t* usable) {
  if (usable != nullptr) *usable = 0;
  if (size == 0 || size > capacity_) return nullptr;
  uint64_t u = 0;
  void* p = nullptr;
  if (size >= kLargeFrom) {
    // Pages of its own: the size rounded up to a page. When they are not free in one run,
    // jemalloc may hold unused extents (small objects freed): purge them back and try again.
    for (int attempt = 0; attempt < 2 && p == nullptr; attempt++) {
      if (attempt == 1) PurgeArena();
      std::lock_guard<std::mutex> lock(hooks_->mu);
      uint64_t off = 0;
      if (heap_->Allocate(size, kPage, &off, &u)) {
        large_.emplace(off, u);
        p = base_ + off;
      }
    }
  } else {
    p = je_mallocx(static_cast<size_t>(size), flags_ | MALLOCX_ALIGN(64));
    if (p != nullptr) u = je_sallocx(p, flags_);
  }
  if (p == nullptr) return nullptr;
  allocated_ += u;
  allocations_++;
  if (usable != nullptr) *usable = u;
  return p;
}

uint64_t Region::UsableSize(uint64_t size) const {
  if (size == 0) return 0;
  if (size >= kLargeFrom) {
    const uint64_t page = heap_->page();
    return (size + page - 1) & ~(page - 1);
  }
  return je_nallocx(static_cast<size_t>(size), flags_ | MALLOCX_ALIGN(64));
}

void Region::Free(void* p) {
  if (p == nullptr) return;
  uint64_t u = 0;
  auto it = large_.find(OffsetOf(p));
  if (it != large_.end()) {
    u = it->second;
    std::lock_guard<std::mutex> lock(hooks_->mu);
    heap_->Free(it->first, u);
    large_.erase(it);
  } else {
    u = je_sallocx(p, flags_);
    je_dallocx(p, flags_);
  }
  allocated_ -= u;
  allocations_--;
  frees_++;
}

uint64_t Region::LargestFree() {
  // The longest free run of pages: the largest object a create gets now. Small objects come
  // from jemalloc's extents, which hold what they need.
  std::lock_guard<std::mutex> lock(hooks_->mu);
  return heap_->largest_free();
}

bool Region::FitsIfFreed(uint64_t size, const std::vector<uint64_t>& offsets) {
  // A run made by freeing objects holds at least one of them; a free run is whole already.
  return LargestFree() >= RoundUp(size, kPage) || FitsIfFreedNear(size, offsets);
}

bool Region::FitsIfFreedNear(uint64_t size, const std::vector<uint64_t>& offsets) {
  if (size < kLargeFrom) return true;  // a small object's room comes from any freed object
  const uint64_t need = RoundUp(size, kPage);
  // Each freed object with the free runs on either side: the runs that freeing them makes
  // are these segments where they meet.
  std::vector<std::pair<uint64_t, uint64_t>> segs;  // [start, end)
  {
    std::lock_guard<std::mutex> lock(hooks_->mu);
    for (uint64_t off : offsets) {
      auto it = large_.find(off);
      // A small object: freeing it may empty its extent, which a purge gives back. No telling.
      if (it == large_.end()) return true;
      const uint64_t end = off + it->second;
      segs.emplace_back(off - heap_->FreeEndingAt(off), end + heap_->FreeStartingAt(end));
    }
  }
  std::sort(segs.begin(), segs.end());
  uint64_t start = 0, end = 0;
  for (const auto& [s, e] : segs) {
    if (s > end) start = s;
    end = std::max(end, e);
    if (end - start >= need) return true;
  }
  return false;
}

void Region::PurgeArena() {
  std::string name = ArenaCtl(arena_, "purge");
  je_mallctl(name.c_str(), nullptr, nullptr, nullptr, 0);
}

void Region::PunchFree() {
  std::lock_guard<std::mutex> lock(hooks_->mu);
  heap_->ForEachFree([&](uint64_t off, uint64_t len) { hooks_->Punch(off, len); });
}

uint64_t Region::ResidentBytes() const {
  struct stat st;
  if (fstat(fd_, &st) != 0) return 0;
  return static_cast<uint64_t>(st.st_blocks) * 512;
}

void Region::Purge() {
  PurgeArena();
  PunchFree();
}

void Region::Decay() {
  if (decay_ms_ < 0) return;
  std::string name = ArenaCtl(arena_, "decay");
  je_mallctl(name.c_str(), nullptr, nullptr, nullptr, 0);
  PunchFree();
}

}  // namespace store
