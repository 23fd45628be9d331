// test_gpu.cpp - GPU objects end to end against a real store, built twice:
//
//  - test_gpu_standin (suite integration): the store runs with --gpu-backend memfd-standin, host
//    memory standing in for device memory. It exercises the fd plumbing, the process-wide
//    imports, accounting and lifecycle of GPU objects on machines without a GPU. It is NOT a GPU
//    test: no device memory is involved, and "device pointers" are host pointers.
//  - test_cuda (suite cuda, built only with the CUDA toolkit): the same cases on the CUDA backend
//    with real device memory. Without a usable CUDA device it exits 77 (skipped), never passing.
//  - the same binary as cuda_fake_driver (suite integration): the store's CUDA code paths on a
//    test double of the CUDA driver API (tests/fake_cuda_driver.cpp). Not a GPU test either.
//
// Other processes are this binary run again (--child ...), not forks: CUDA does not support a
// child that keeps using the runtime after fork() without exec.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest.h>

#include <sys/wait.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "client_util.h"
#include "harness.h"
#include "storeclient.h"

#ifdef GPU_TEST_CUDA
#include <cuda_runtime_api.h>
#include <dlfcn.h>
#endif

namespace {

using test::ClientPtr;
using test::Connect;
using test::IdOf;
using test::ReaderPtr;
using test::WriterPtr;

constexpr uint64_t kChunk = 4u << 20;
constexpr uint64_t kGpuMemory = 8u << 20;

std::vector<std::string> GpuArgs() {
  std::vector<std::string> a = {"--gpu-memory", "8M", "--gpu-chunk-size", "4M"};
#ifndef GPU_TEST_CUDA
  a.push_back("--gpu-backend");
  a.push_back("memfd-standin");
#endif
  return a;
}

#ifdef GPU_TEST_CUDA
constexpr int kBackend = STORE_GPU_BACKEND_CUDA;
// Set when the store and the library run on the test double of the CUDA driver
// (tests/fake_cuda_driver.cpp), whose device pointers are host addresses.
bool g_fake_driver = false;
// Device memory is read and written through the CUDA runtime, as an application would.
bool DevWrite(void* dptr, int device, const void* src, size_t n) {
  if (g_fake_driver) {
    std::memcpy(dptr, src, n);
    return true;
  }
  return cudaSetDevice(device) == cudaSuccess &&
         cudaMemcpy(dptr, src, n, cudaMemcpyHostToDevice) == cudaSuccess;
}
bool DevRead(const void* dptr, int device, void* dst, size_t n) {
  if (g_fake_driver) {
    std::memcpy(dst, dptr, n);
    return true;
  }
  return cudaSetDevice(device) == cudaSuccess &&
         cudaMemcpy(dst, dptr, n, cudaMemcpyDeviceToHost) == cudaSuccess;
}
#else
constexpr int kBackend = STORE_GPU_BACKEND_MEMFD_STANDIN;
// The stand-in's "device pointers" are host pointers into the chunk's memfd mapping.
bool DevWrite(void* dptr, int, const void* src, size_t n) {
  std::memcpy(dptr, src, n);
  return true;
}
bool DevRead(const void* dptr, int, void* dst, size_t n) {
  std::memcpy(dst, dptr, n);
  return true;
}
#endif

std::string g_self;  // this binary, to run children

std::string Pattern(size_t n, unsigned seed) {
  std::string s(n, '\0');
  uint32_t x = seed * 2654435761u + 1;
  for (size_t i = 0; i < n; i++) {
    x = x * 1664525u + 1013904223u;
    s[i] = static_cast<char>(x >> 24);
  }
  return s;
}

store_gpu_device_stats Gpu0(store_client* c) {
  store_gpu_device_stats* v = nullptr;
  size_t n = 0;
  int backend = -1;
  REQUIRE(store_gpu_stats(c, &v, sizeof *v, &n, &backend) == STORE_OK);
  CHECK(backend == kBackend);
  REQUIRE(n == 1);
  store_gpu_device_stats s = v[0];
  store_free(v);
  CHECK(s.device == 0);
  return s;
}

store_object_info Info(store_client* c, const store_object_id& id) {
  store_object_info info = STORE_OBJECT_INFO_INIT;
  REQUIRE(store_info(c, &id, &info) == STORE_OK);
  return info;
}

// ---- child processes -----------------------------------------------------------------------

// --child write SOCKET KEY SIZE SEED: creates KEY on device 0, writes the first half with
// store_writer_write and the rest through the device pointer, seals. Exit 0 on success.
int ChildWrite(const std::string& socket, const std::string& key, size_t size, unsigned seed) {
  store_connect_options o = STORE_CONNECT_OPTIONS_INIT;
  o.client_name = "gpu-writer";
  store_client* c = nullptr;
  if (store_client_connect(&c, socket.c_str(), &o) != STORE_OK) return 10;
  store_object_id id{};
  store_object_id_from_string(key.data(), key.size(), &id);
  store_create_options co = STORE_CREATE_OPTIONS_INIT;
  co.device = 0;
  const char meta[] = "gpu-meta";
  co.metadata = meta;
  co.metadata_size = sizeof meta;
  store_writer* w = nullptr;
  if (store_create(c, &w, &id, size, &co) != STORE_OK) return 11;
  if (store_writer_data(w) != nullptr) return 12;  // device objects have no host view
  std::string data = Pattern(size, seed);
  size_t half = size / 2;
  if (store_writer_write(w, data.data(), half) != STORE_OK) return 13;
  void* dptr = nullptr;
  int dev = -1;
  if (store_writer_device_ptr(w, &dptr, &dev) != STORE_OK || !dptr || dev < 0) return 14;
  if (!DevWrite(static_cast<char*>(dptr) + half, dev, data.data() + half, size - half)) return 15;
  if (store_writer_seal(w) != STORE_OK) return 16;
  store_client_free(c);
  return 0;
}

// --child hold SOCKET KEY: opens a reader of KEY, reads its first byte through the device
// pointer, then waits to be killed.
int ChildHold(const std::string& socket, const std::string& key) {
  store_client* c = nullptr;
  if (store_client_connect(&c, socket.c_str(), nullptr) != STORE_OK) return 10;
  store_object_id id{};
  store_object_id_from_string(key.data(), key.size(), &id);
  store_reader* r = nullptr;
  if (store_open_reader(c, &r, &id, 1000) != STORE_OK) return 11;
  const void* dptr = nullptr;
  int dev = -1;
  char b = 0;
  if (store_reader_device_ptr(r, &dptr, &dev) != STORE_OK || !DevRead(dptr, dev, &b, 1)) return 12;
  for (;;) pause();
}

int RunChild(const std::vector<std::string>& args) {
  std::vector<std::string> all = {g_self, "--child"};
  all.insert(all.end(), args.begin(), args.end());
  return test::WaitExit(test::Spawn(all), std::chrono::seconds(60));
}

}  // namespace

// ---- cases ---------------------------------------------------------------------------------

TEST_CASE("another process reads a GPU object through the device pointer and by copy") {
  test::TestStore store("64M", GpuArgs());
  REQUIRE(store.started());
  const size_t size = 300000;
  int st = RunChild({"write", store.socket(), "tensor", std::to_string(size), "7"});
  REQUIRE(WIFEXITED(st));
  REQUIRE(WEXITSTATUS(st) == 0);

  ClientPtr c = Connect(store.socket(), "gpu-reader");
  store_object_id id = IdOf("tensor");
  store_object_info info = Info(c.get(), id);
  CHECK(info.state == STORE_STATE_SEALED);
  CHECK(info.level == STORE_LEVEL_GPU);
  CHECK(info.device == 0);
  CHECK(info.data_size == size);

  store_reader* raw = nullptr;
  REQUIRE(store_open_reader(c.get(), &raw, &id, 0) == STORE_OK);
  ReaderPtr r(raw);
  CHECK(store_reader_device(r.get()) == 0);
  CHECK(store_reader_data(r.get()) == nullptr);
  CHECK(store_reader_size(r.get()) == size);
  uint64_t msize = 0;
  const char* meta = static_cast<const char*>(store_reader_metadata(r.get(), &msize));
  REQUIRE(meta != nullptr);
  CHECK(std::string(meta, msize) == std::string("gpu-meta", 9));
  const std::string want = Pattern(size, 7);

  const void* dptr = nullptr;
  int dev = -1;
  REQUIRE(store_reader_device_ptr(r.get(), &dptr, &dev) == STORE_OK);
  REQUIRE(dptr != nullptr);
  std::string through_ptr(size, '\0');
  REQUIRE(DevRead(dptr, dev, through_ptr.data(), size));
  CHECK(through_ptr == want);

  // The file-like calls: read in pieces, seek back, read again.
  std::string by_copy(size, '\0');
  size_t got = 0, n = 0;
  while (got < size) {
    REQUIRE(store_reader_read(r.get(), by_copy.data() + got, 65536, &n) == STORE_OK);
    REQUIRE(n > 0);
    got += n;
  }
  CHECK(by_copy == want);
  CHECK(store_reader_read(r.get(), by_copy.data(), 10, &n) == STORE_OK);
  CHECK(n == 0);
  uint64_t pos = 0;
  REQUIRE(store_reader_seek(r.get(), -100, SEEK_END, &pos) == STORE_OK);
  CHECK(pos == size - 100);
  char tail[100];
  REQUIRE(store_reader_read(r.get(), tail, sizeof tail, &n) == STORE_OK);
  CHECK(n == 100);
  CHECK(std::string(tail, 100) == want.substr(size - 100));

  store_gpu_device_stats g = Gpu0(c.get());
  CHECK(g.object_count == 1);
  CHECK(g.used_bytes == (size + 255) / 256 * 256);
  CHECK(g.chunks == 1);
  CHECK(g.chunk_size == kChunk);
  CHECK(g.capacity_bytes == kGpuMemory);
  r.reset();
  REQUIRE(store_delete(c.get(), &id) == STORE_OK);
  CHECK(test::WaitFor([&] { return Gpu0(c.get()).used_bytes == 0; }));
  CHECK(Gpu0(c.get()).object_count == 0);
}

TEST_CASE("writers of GPU objects: device pointer, bounds, seek, abort") {
  test::TestStore store("64M", GpuArgs());
  REQUIRE(store.started());
  ClientPtr c = Connect(store.socket(), "gpu-writer");
  store_create_options co = STORE_CREATE_OPTIONS_INIT;
  co.device = 0;
  store_object_id id = IdOf("w");
  store_writer* raw = nullptr;
  REQUIRE(store_create(c.get(), &raw, &id, 1000, &co) == STORE_OK);
  WriterPtr w(raw);
  CHECK(store_writer_data(w.get()) == nullptr);
  CHECK(store_writer_size(w.get()) == 1000);
  void* dptr = nullptr;
  int dev = -1;
  REQUIRE(store_writer_device_ptr(w.get(), &dptr, &dev) == STORE_OK);
  CHECK(dptr != nullptr);
  CHECK(reinterpret_cast<uintptr_t>(dptr) % 256 == 0);
  std::string data = Pattern(1000, 3);
  CHECK(store_writer_write(w.get(), data.data(), 1001) == STORE_EINVAL);  // past the end
  REQUIRE(store_writer_seek(w.get(), 500, SEEK_SET, nullptr) == STORE_OK);
  REQUIRE(store_writer_write(w.get(), data.data() + 500, 500) == STORE_OK);
  CHECK(store_writer_tell(w.get()) == 1000);
  REQUIRE(store_writer_seek(w.get(), 0, SEEK_SET, nullptr) == STORE_OK);
  REQUIRE(store_writer_write(w.get(), data.data(), 500) == STORE_OK);
  CHECK(Info(c.get(), id).state == STORE_STATE_CREATED);
  REQUIRE(store_writer_seal(w.release()) == STORE_OK);

  // Host objects have no device pointer; device objects have no host pointer.
  store_object_id hid = IdOf("host");
  REQUIRE(store_put(c.get(), &hid, "abc", 3, nullptr) == STORE_OK);
  store_reader* hr = nullptr;
  REQUIRE(store_open_reader(c.get(), &hr, &hid, 0) == STORE_OK);
  const void* p = reinterpret_cast<const void*>(1);
  CHECK(store_reader_device_ptr(hr, &p, &dev) == STORE_EINVAL);
  CHECK(p == nullptr);
  CHECK(store_reader_device(hr) == -1);
  store_reader_close(hr);

  store_reader* r = nullptr;
  REQUIRE(store_open_reader(c.get(), &r, &id, 0) == STORE_OK);
  std::string back(1000, '\0');
  size_t n = 0;
  REQUIRE(store_reader_read(r, back.data(), back.size(), &n) == STORE_OK);
  CHECK(n == 1000);
  CHECK(back == data);
  store_reader_close(r);

  // Abort gives the device memory back at once.
  store_object_id aid = IdOf("aborted");
  REQUIRE(store_create(c.get(), &raw, &aid, 4096, &co) == STORE_OK);
  CHECK(Gpu0(c.get()).object_count == 2);
  REQUIRE(store_writer_abort(raw) == STORE_OK);
  CHECK(Gpu0(c.get()).object_count == 1);
  CHECK(store_contains(c.get(), &aid, reinterpret_cast<int*>(&n)) == STORE_OK);

  // store_put of a small GPU object goes through the writer, not inline.
  store_object_id pid = IdOf("put");
  REQUIRE(store_put(c.get(), &pid, "0123456789", 10, &co) == STORE_OK);
  CHECK(Info(c.get(), pid).level == STORE_LEVEL_GPU);
  REQUIRE(store_open_reader(c.get(), &r, &pid, 0) == STORE_OK);
  char ten[10];
  REQUIRE(store_reader_read(r, ten, 10, &n) == STORE_OK);
  CHECK(std::string(ten, 10) == "0123456789");
  store_reader_close(r);

  store_object_id all[] = {id, hid, pid};
  REQUIRE(store_delete_many(c.get(), all, 3, nullptr) == STORE_OK);
  CHECK(Gpu0(c.get()).used_bytes == 0);
}

TEST_CASE("a deleted GPU object stays readable by its open reader; memory returns on close") {
  test::TestStore store("64M", GpuArgs());
  REQUIRE(store.started());
  ClientPtr c = Connect(store.socket(), "gpu");
  store_create_options co = STORE_CREATE_OPTIONS_INIT;
  co.device = 0;
  store_object_id id = IdOf("doomed");
  std::string data = Pattern(100000, 9);
  REQUIRE(store_put(c.get(), &id, data.data(), data.size(), &co) == STORE_OK);
  store_reader* r = nullptr;
  REQUIRE(store_open_reader(c.get(), &r, &id, 0) == STORE_OK);
  REQUIRE(store_delete(c.get(), &id) == STORE_OK);
  int present = 1;
  REQUIRE(store_contains(c.get(), &id, &present) == STORE_OK);
  CHECK(present == 0);
  CHECK(Gpu0(c.get()).used_bytes > 0);  // still mapped and read
  const void* dptr = nullptr;
  int dev = -1;
  REQUIRE(store_reader_device_ptr(r, &dptr, &dev) == STORE_OK);
  std::string back(data.size(), '\0');
  REQUIRE(DevRead(dptr, dev, back.data(), back.size()));
  CHECK(back == data);
  // The id is free again: a new object of the same id gets other memory.
  REQUIRE(store_put(c.get(), &id, "new", 3, &co) == STORE_OK);
  store_reader_close(r);
  CHECK(test::WaitFor([&] { return Gpu0(c.get()).used_bytes == 256; }));
  REQUIRE(store_delete(c.get(), &id) == STORE_OK);
}

TEST_CASE("a client killed while holding a GPU reader releases it") {
  test::TestStore store("64M", GpuArgs());
  REQUIRE(store.started());
  ClientPtr c = Connect(store.socket(), "gpu");
  store_create_options co = STORE_CREATE_OPTIONS_INIT;
  co.device = 0;
  store_object_id id = IdOf("held");
  std::string data = Pattern(5000, 1);
  REQUIRE(store_put(c.get(), &id, data.data(), data.size(), &co) == STORE_OK);
  pid_t child = test::Spawn({g_self, "--child", "hold", store.socket(), "held"});
  REQUIRE(child > 0);
  CHECK(test::WaitFor([&] { return Info(c.get(), id).reader_count == 1; },
                      std::chrono::seconds(30)));
  // Deleted while the child holds it: the memory stays until the child is gone.
  REQUIRE(store_delete(c.get(), &id) == STORE_OK);
  CHECK(Gpu0(c.get()).object_count == 1);
  kill(child, SIGKILL);
  int st = test::WaitExit(child);
  CHECK(WIFSIGNALED(st));
  CHECK(test::WaitFor([&] { return Gpu0(c.get()).object_count == 0; }));
  CHECK(Gpu0(c.get()).used_bytes == 0);
  store_stats s = STORE_STATS_INIT;
  REQUIRE(store_stats_get(c.get(), &s) == STORE_OK);
  CHECK(s.object_count == 0);
  CHECK(s.client_count == 1);
}

TEST_CASE("many small GPU objects") {
  test::TestStore store("64M", GpuArgs());
  REQUIRE(store.started());
  ClientPtr c = Connect(store.socket(), "gpu");
  store_create_options co = STORE_CREATE_OPTIONS_INIT;
  co.device = 0;
  const size_t n = 2000;
  std::vector<store_object_id> ids(n);
  std::vector<std::string> datas(n);
  std::vector<const void*> ptrs(n);
  std::vector<uint64_t> sizes(n);
  uint64_t want_used = 0;
  for (size_t i = 0; i < n; i++) {
    ids[i] = IdOf("small-" + std::to_string(i));
    datas[i] = Pattern(1 + (i * 37) % 1500, static_cast<unsigned>(i));
    ptrs[i] = datas[i].data();
    sizes[i] = datas[i].size();
    want_used += (sizes[i] + 255) / 256 * 256;
  }
  size_t done = 0;
  REQUIRE(store_put_many(c.get(), ids.data(), ptrs.data(), sizes.data(), n, &co, &done) ==
          STORE_OK);
  CHECK(done == n);
  store_gpu_device_stats g = Gpu0(c.get());
  CHECK(g.object_count == n);
  CHECK(g.used_bytes == want_used);
  CHECK(g.chunks == 1);  // ~1.7 MiB fits in one 4 MiB chunk
  // Read every one back in one batch, through the device pointers.
  std::vector<store_reader*> rs(n);
  REQUIRE(store_open_readers(c.get(), rs.data(), ids.data(), n, 0) == STORE_OK);
  size_t same = 0;
  for (size_t i = 0; i < n; i++) {
    REQUIRE(rs[i] != nullptr);
    const void* dptr = nullptr;
    int dev = -1;
    REQUIRE(store_reader_device_ptr(rs[i], &dptr, &dev) == STORE_OK);
    std::string back(sizes[i], '\0');
    REQUIRE(DevRead(dptr, dev, back.data(), back.size()));
    same += back == datas[i];
  }
  CHECK(same == n);
  store_readers_close(rs.data(), n);
  size_t deleted = 0;
  REQUIRE(store_delete_many(c.get(), ids.data(), n, &deleted) == STORE_OK);
  CHECK(deleted == n);
  CHECK(test::WaitFor([&] { return Gpu0(c.get()).used_bytes == 0; }));
}

TEST_CASE("a full device: creates fail at once, time out, or wait for a delete") {
  test::TestStore store("64M", GpuArgs());
  REQUIRE(store.started());
  ClientPtr c = Connect(store.socket(), "gpu");
  store_create_options co = STORE_CREATE_OPTIONS_INIT;
  co.device = 0;
  // Two objects of a whole chunk fill the device.
  store_object_id a = IdOf("a"), b = IdOf("b"), x = IdOf("x");
  std::string big(kChunk, 'a');
  REQUIRE(store_put(c.get(), &a, big.data(), big.size(), &co) == STORE_OK);
  REQUIRE(store_put(c.get(), &b, big.data(), big.size(), &co) == STORE_OK);
  store_gpu_device_stats g = Gpu0(c.get());
  CHECK(g.chunks == 2);
  CHECK(g.used_bytes == kGpuMemory);
  CHECK(g.largest_free_bytes == 0);

  store_writer* w = nullptr;
  CHECK(store_create(c.get(), &w, &x, 256, &co) == STORE_ENOSPACE);
  CHECK(std::string(store_last_error_message()).find("GPU device 0 is full") != std::string::npos);
  co.timeout_ms = 50;
  CHECK(store_create(c.get(), &w, &x, 256, &co) == STORE_ETIMEDOUT);
  // Host memory is not affected by a full device.
  REQUIRE(store_put(c.get(), &x, "host", 4, nullptr) == STORE_OK);
  REQUIRE(store_delete(c.get(), &x) == STORE_OK);

  // One waits (forever) on another client; a delete makes room and it is served.
  co.timeout_ms = -1;
  int waited = 1;
  std::thread t([&] {
    ClientPtr c2 = Connect(store.socket(), "gpu-waiter");
    store_writer* w2 = nullptr;
    waited = store_create(c2.get(), &w2, &x, 1000, &co);
    if (waited == STORE_OK) waited = store_writer_seal(w2);
  });
  CHECK(test::WaitFor([&] {
    store_stats s = STORE_STATS_INIT;
    return store_stats_get(c.get(), &s) == STORE_OK && s.waiting_creates == 1;
  }));
  REQUIRE(store_delete(c.get(), &a) == STORE_OK);
  t.join();
  CHECK(waited == STORE_OK);
  CHECK(Info(c.get(), x).level == STORE_LEVEL_GPU);
  store_object_id rest[] = {b, x};
  REQUIRE(store_delete_many(c.get(), rest, 2, nullptr) == STORE_OK);
  CHECK(Gpu0(c.get()).used_bytes == 0);

  // Larger than a chunk can never fit.
  CHECK(store_create(c.get(), &w, &x, kChunk + 1, &co) == STORE_EINVAL);

  // Device memory is free but the host region has no room for the metadata: the create fails
  // and gives the device memory back.
  std::vector<store_object_id> fill;
  std::string chunk(1u << 20, 'h');
  // 1 MiB objects, then 64 KiB ones: the host region is full to the last 64 KiB.
  for (size_t size : {size_t{1} << 20, size_t{64} << 10}) {
    for (int i = 0;; i++) {
      store_object_id hid = IdOf("host-fill-" + std::to_string(size) + "-" + std::to_string(i));
      if (store_put(c.get(), &hid, chunk.data(), size, nullptr) != STORE_OK) break;
      fill.push_back(hid);
    }
  }
  REQUIRE(!fill.empty());
  std::string meta(900u << 10, 'm');
  co.timeout_ms = 0;
  co.metadata = meta.data();
  co.metadata_size = meta.size();
  CHECK(store_create(c.get(), &w, &x, 1000, &co) == STORE_ENOSPACE);
  store_gpu_device_stats after = Gpu0(c.get());
  CHECK(after.used_bytes == 0);
  CHECK(after.object_count == 0);
  REQUIRE(store_delete_many(c.get(), fill.data(), fill.size(), nullptr) == STORE_OK);
}

TEST_CASE("clients in one process share one import of a chunk") {
  test::TestStore store("64M", GpuArgs());
  REQUIRE(store.started());
  ClientPtr c1 = Connect(store.socket(), "one");
  ClientPtr c2 = Connect(store.socket(), "two");
  store_create_options co = STORE_CREATE_OPTIONS_INIT;
  co.device = 0;
  store_object_id id = IdOf("shared");
  REQUIRE(store_put(c1.get(), &id, "shared bytes", 12, &co) == STORE_OK);
  store_reader *r1 = nullptr, *r2 = nullptr;
  REQUIRE(store_open_reader(c1.get(), &r1, &id, 0) == STORE_OK);
  REQUIRE(store_open_reader(c2.get(), &r2, &id, 0) == STORE_OK);
  const void *p1 = nullptr, *p2 = nullptr;
  int d1 = -1, d2 = -1;
  REQUIRE(store_reader_device_ptr(r1, &p1, &d1) == STORE_OK);
  REQUIRE(store_reader_device_ptr(r2, &p2, &d2) == STORE_OK);
  CHECK(p1 == p2);  // the same mapping
  CHECK(d1 == d2);
#ifndef GPU_TEST_CUDA
  // The stand-in's mapping is visible in /proc/self/maps: one, until the last user goes.
  auto mappings = [] {
    std::ifstream maps("/proc/self/maps");
    std::string line;
    int n = 0;
    while (std::getline(maps, line)) n += line.find("store-gpu-standin") != std::string::npos;
    return n;
  };
  CHECK(mappings() == 1);
  store_reader_close(r1);
  c1.reset();
  CHECK(mappings() == 1);  // c2 still uses it
  store_reader_close(r2);
  REQUIRE(store_delete(c2.get(), &id) == STORE_OK);
  c2.reset();
  CHECK(mappings() == 0);
#else
  // On the driver's test double, count the address ranges the library holds.
  size_t (*reserved)() = nullptr;
  if (g_fake_driver) {
    void* h = dlopen(std::getenv("STORE_FAKE_CUDA_DRIVER"), RTLD_NOW | RTLD_NOLOAD);
    REQUIRE(h != nullptr);
    reserved = reinterpret_cast<size_t (*)()>(dlsym(h, "store_fake_cuda_driver_reserved"));
    bool found = reserved != nullptr;
    REQUIRE(found);
    CHECK(reserved() == 1);
  }
  store_reader_close(r1);
  c1.reset();
  if (reserved) CHECK(reserved() == 1);  // c2 still uses it
  store_reader_close(r2);
  REQUIRE(store_delete(c2.get(), &id) == STORE_OK);
  c2.reset();
  if (reserved) CHECK(reserved() == 0);  // unmapped and freed with the last user
#endif
}

TEST_CASE("store info and the metrics file report the figures of each device") {
  test::TempDir dir;
  std::vector<std::string> args = GpuArgs();
  for (const char* a : {"--metrics-file", "", "--metrics-interval", "0.05"}) args.push_back(a);
  args[args.size() - 3] = dir / "metrics";
  test::TestStore store("64M", args);
  REQUIRE(store.started());
  ClientPtr c = Connect(store.socket(), "gpu");
  store_create_options co = STORE_CREATE_OPTIONS_INIT;
  co.device = 0;
  store_object_id id = IdOf("one");
  std::string data(1000, 'x');
  REQUIRE(store_put(c.get(), &id, data.data(), data.size(), &co) == STORE_OK);

  std::string cmd = test::StoreBin() + " info --socket " + store.socket();
  FILE* p = popen(cmd.c_str(), "r");
  REQUIRE(p != nullptr);
  std::string info;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) info.append(buf, n);
  CHECK(pclose(p) == 0);
  CHECK(info.find(std::string("gpu_backend:") +
                  (kBackend == STORE_GPU_BACKEND_CUDA ? "cuda" : "memfd-standin")) !=
        std::string::npos);
  CHECK(info.find("gpu0:capacity_bytes=8388608,used_bytes=1024,objects=1,chunks=1,"
                  "chunk_size=4194304") != std::string::npos);

  // store-top's one-shot views.
  if (const char* top = std::getenv("STORE_TOP_BIN")) {
    auto run = [&](const std::string& args) {
      std::string out;
      FILE* f = popen((std::string(top) + " --socket " + store.socket() + " " + args).c_str(), "r");
      REQUIRE(f != nullptr);
      while ((n = fread(buf, 1, sizeof buf, f)) > 0) out.append(buf, n);
      CHECK(pclose(f) == 0);
      return out;
    };
    std::string once = run("--once");
    CHECK(once.find(std::string("gpu objects (") + (kBackend == STORE_GPU_BACKEND_CUDA
                                                        ? "cuda" : "memfd-standin") + "):") !=
          std::string::npos);
    CHECK(once.find("device 0: 1.00 KiB of 8.00 MiB used, 1 objects, 1 chunks of 4.00 MiB") !=
          std::string::npos);
    std::string json = run("--json");
    CHECK(json.find("\"used_bytes\":1024") != std::string::npos);
    CHECK(json.find("\"chunk_size\":4194304") != std::string::npos);
  }

  auto metrics = [&] {
    std::ifstream f(dir / "metrics");
    return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  };
  CHECK(test::WaitFor([&] {
    std::string m = metrics();
    return m.find("store_gpu_used_bytes{device=\"0\"} 1024\n") != std::string::npos &&
           m.find("store_gpu_objects{device=\"0\"} 1\n") != std::string::npos;
  }));
  CHECK(metrics().find("store_gpu_capacity_bytes{device=\"0\"} 8388608\n") != std::string::npos);
  REQUIRE(store_delete(c.get(), &id) == STORE_OK);
}

#ifndef GPU_TEST_CUDA
// ---- stores without GPU objects (no backend involved) --------------------------------------

TEST_CASE("without --gpu-memory, GPU creates get STORE_ENOTSUP saying how to enable them") {
  test::TestStore store("64M");
  REQUIRE(store.started());
  ClientPtr c = Connect(store.socket(), "gpu");
  store_create_options co = STORE_CREATE_OPTIONS_INIT;
  co.device = 0;
  store_object_id id = IdOf("x");
  store_writer* w = nullptr;
  CHECK(store_create(c.get(), &w, &id, 100, &co) == STORE_ENOTSUP);
  CHECK(w == nullptr);
  CHECK(std::string(store_last_error_message()).find("--gpu-memory") != std::string::npos);
  CHECK(store_put(c.get(), &id, "abc", 3, &co) == STORE_ENOTSUP);
  store_gpu_device_stats* v = reinterpret_cast<store_gpu_device_stats*>(1);
  size_t n = 7;
  int backend = -1;
  REQUIRE(store_gpu_stats(c.get(), &v, sizeof *v, &n, &backend) == STORE_OK);
  CHECK(v == nullptr);
  CHECK(n == 0);
  CHECK(backend == STORE_GPU_BACKEND_NONE);
  store_stats s = STORE_STATS_INIT;
  REQUIRE(store_stats_get(c.get(), &s) == STORE_OK);
  CHECK(s.object_count == 0);
}

TEST_CASE("--gpu-memory on a machine without a usable GPU: one log line, ENOTSUP, no crash") {
  test::TestStore store("64M", {"--gpu-memory", "64M", "--log-level", "info"});
  REQUIRE(store.started());
  ClientPtr c = Connect(store.socket(), "gpu");
  store_gpu_device_stats* v = nullptr;
  size_t n = 0;
  int backend = -1;
  REQUIRE(store_gpu_stats(c.get(), &v, sizeof *v, &n, &backend) == STORE_OK);
  store_free(v);
  if (backend == STORE_GPU_BACKEND_CUDA) {
    MESSAGE("this machine has a usable GPU: the cuda suite covers it");
    return;
  }
  CHECK(backend == STORE_GPU_BACKEND_NONE);
  std::string log = store.Log();
  size_t first = log.find("GPU objects are disabled");
  CHECK(first != std::string::npos);
  CHECK(log.find("GPU objects are disabled", first + 1) == std::string::npos);
  store_create_options co = STORE_CREATE_OPTIONS_INIT;
  co.device = 0;
  store_object_id id = IdOf("x");
  store_writer* w = nullptr;
  CHECK(store_create(c.get(), &w, &id, 100, &co) == STORE_ENOTSUP);
  CHECK(std::string(store_last_error_message()).find("GPU objects are disabled") !=
        std::string::npos);
  // Host objects work as ever.
  REQUIRE(store_put(c.get(), &id, "abc", 3, nullptr) == STORE_OK);
  REQUIRE(store_delete(c.get(), &id) == STORE_OK);
  CHECK(store.Alive());
}
#endif

int main(int argc, char** argv) {
  g_self = "/proc/self/exe";
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n > 0) g_self.assign(buf, static_cast<size_t>(n));
#ifdef GPU_TEST_CUDA
  const char* fake = std::getenv("STORE_FAKE_CUDA_DRIVER");
  g_fake_driver = fake && *fake;  // the CUDA paths on the driver's test double: not a GPU
#endif
  if (argc >= 2 && std::string(argv[1]) == "--child") {
    std::string mode = argc >= 3 ? argv[2] : "";
    if (mode == "write" && argc == 7) {
      return ChildWrite(argv[3], argv[4], std::stoul(argv[5]), std::stoul(argv[6]));
    }
    if (mode == "hold" && argc == 5) return ChildHold(argv[3], argv[4]);
    return 2;
  }
#ifdef GPU_TEST_CUDA
  if (!g_fake_driver) {
    int count = 0;
    cudaError_t rc = cudaGetDeviceCount(&count);
    if (rc != cudaSuccess || count == 0) {
      std::printf("no usable CUDA device (%s): the cuda suite is skipped\n",
                  rc != cudaSuccess ? cudaGetErrorName(rc) : "0 devices");
      return 77;
    }
  }
#endif
  doctest::Context ctx(argc, argv);
  return ctx.run();
}
