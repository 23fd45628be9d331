/*
 * storeclient.hpp - a header-only C++17 RAII layer over the C interface in storeclient.h.
 *
 * Errors: this layer uses exceptions. The C ABI never throws; every failing C call returns a
 * negative STORE_E* code, and this header turns that code into a store::Error thrown on the
 * caller's side. Destructors never throw. Everything here is inline: the header adds no symbols
 * to libstoreclient and depends only on its C ABI.
 *
 * Handles: Client, Writer and Reader each own one C handle, are move-only, and release it in their
 * destructor. A moved-from handle is empty (operator bool is false); calls on it fail like the
 * C calls on NULL.
 */
#ifndef STORECLIENT_HPP
#define STORECLIENT_HPP

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <ostream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#if __cplusplus >= 202002L
#include <span>
#endif

#include "storeclient.h"

namespace store {

// A failed C call: code() is the STORE_E* code, what() the details of that failure.
class Error : public std::runtime_error {
 public:
  // Takes the message from store_last_error_message(); call right after the failing C call.
  explicit Error(int code) : Error(code, store_last_error_message()) {}
  Error(int code, const std::string& message)
      : std::runtime_error(message.empty() ? store_errstr(code) : message), code_(code) {}

  int code() const noexcept { return code_; }

 private:
  int code_;
};

// Throws store::Error if rc is not STORE_OK.
inline void check(int rc) {
  if (rc != STORE_OK) throw Error(rc);
}

// A 20-byte object id; a plain value.
class ObjectId {
 public:
  ObjectId() noexcept : id_{} {}
  explicit ObjectId(const store_object_id& raw) noexcept : id_(raw) {}

  // Exactly STORE_OBJECT_ID_SIZE bytes, else STORE_EINVAL.
  static ObjectId FromBytes(const void* data, size_t size) {
    if (data == nullptr || size != STORE_OBJECT_ID_SIZE)
      throw Error(STORE_EINVAL, "an object id is exactly " +
                                    std::to_string(STORE_OBJECT_ID_SIZE) + " bytes");
    ObjectId id;
    std::memcpy(id.id_.bytes, data, STORE_OBJECT_ID_SIZE);
    return id;
  }
  // A stable id hashed from the bytes of s.
  static ObjectId FromString(std::string_view s) {
    ObjectId id;
    check(store_object_id_from_string(s.data() ? s.data() : "", s.size(), &id.id_));
    return id;
  }
  // Parses exactly 40 hex digits.
  static ObjectId FromHex(std::string_view hex) {
    if (hex.size() != 2 * STORE_OBJECT_ID_SIZE)
      throw Error(STORE_EINVAL, "an object id in hex is exactly " +
                                    std::to_string(2 * STORE_OBJECT_ID_SIZE) + " digits");
    char buf[2 * STORE_OBJECT_ID_SIZE + 1];
    std::memcpy(buf, hex.data(), hex.size());
    buf[hex.size()] = '\0';
    ObjectId id;
    check(store_object_id_from_hex(buf, &id.id_));
    return id;
  }

  std::string hex() const {
    char buf[2 * STORE_OBJECT_ID_SIZE + 1];
    check(store_object_id_to_hex(&id_, buf, sizeof buf));
    return std::string(buf, 2 * STORE_OBJECT_ID_SIZE);
  }
  const uint8_t* bytes() const noexcept { return id_.bytes; }
  const store_object_id& raw() const noexcept { return id_; }

  friend bool operator==(const ObjectId& a, const ObjectId& b) noexcept {
    return std::memcmp(a.id_.bytes, b.id_.bytes, STORE_OBJECT_ID_SIZE) == 0;
  }
  friend bool operator!=(const ObjectId& a, const ObjectId& b) noexcept { return !(a == b); }
  friend bool operator<(const ObjectId& a, const ObjectId& b) noexcept {
    return std::memcmp(a.id_.bytes, b.id_.bytes, STORE_OBJECT_ID_SIZE) < 0;
  }
  friend std::ostream& operator<<(std::ostream& os, const ObjectId& id) { return os << id.hex(); }

 private:
  store_object_id id_;
};

// Options of Client::Create and Client::Put; metadata is only borrowed until that call returns.
struct CreateOptions {
  std::string_view metadata;  // copied into the object after its data; empty = none
  int32_t importance = 0;     // higher values are evicted later
  int32_t device = -1;        // -1 = host memory; >= 0 = that GPU
  int64_t timeout_ms = 0;     // wait for space when full: 0 = fail at once, -1 = forever

  CreateOptions& set_metadata(const void* data, size_t size) noexcept {
    metadata = std::string_view(static_cast<const char*>(data), size);
    return *this;
  }
  store_create_options to_c() const noexcept {
    store_create_options o = STORE_CREATE_OPTIONS_INIT;
    o.metadata = metadata.empty() ? nullptr : metadata.data();
    o.metadata_size = metadata.size();
    o.importance = importance;
    o.device = device;
    o.timeout_ms = timeout_ms;
    return o;
  }
};

// Owns one unsealed object: seal() publishes it; abort() or the destructor throws it away.
class Writer {
 public:
  Writer() noexcept = default;
  explicit Writer(store_writer* adopt) noexcept : w_(adopt) {}
  Writer(Writer&& o) noexcept : w_(std::exchange(o.w_, nullptr)) {}
  Writer& operator=(Writer&& o) noexcept {
    if (this != &o) {
      store_writer_abort(w_);
      w_ = std::exchange(o.w_, nullptr);
    }
    return *this;
  }
  Writer(const Writer&) = delete;
  Writer& operator=(const Writer&) = delete;
  ~Writer() { store_writer_abort(w_); }

  void write(const void* data, size_t size) { check(store_writer_write(w_, data, size)); }
  void write(std::string_view s) { write(s.data(), s.size()); }
  // whence is SEEK_SET, SEEK_CUR or SEEK_END; returns the new position.
  uint64_t seek(int64_t offset, int whence = SEEK_SET) {
    uint64_t pos = 0;
    check(store_writer_seek(w_, offset, whence, &pos));
    return pos;
  }
  uint64_t tell() const noexcept { return store_writer_tell(w_); }
  uint64_t size() const noexcept { return store_writer_size(w_); }
  // The object's bytes in shared memory; nullptr for a device object or an empty Writer.
  uint8_t* data() noexcept { return static_cast<uint8_t*>(store_writer_data(w_)); }
#if __cplusplus >= 202002L
  std::span<uint8_t> span() noexcept {
    uint8_t* p = data();
    return p ? std::span<uint8_t>(p, size()) : std::span<uint8_t>();
  }
#endif

  // A device object's data: a CUDA device pointer valid on *device (may be null). Throws for a
  // host object.
  void* device_ptr(int* device = nullptr) {
    void* p = nullptr;
    check(store_writer_device_ptr(w_, &p, device));
    return p;
  }

  // Both leave the Writer empty, even when they throw.
  void seal() { check(store_writer_seal(std::exchange(w_, nullptr))); }
  void abort() { check(store_writer_abort(std::exchange(w_, nullptr))); }

  explicit operator bool() const noexcept { return w_ != nullptr; }
  store_writer* get() const noexcept { return w_; }

 private:
  store_writer* w_ = nullptr;
};

// Holds one sealed object open for reading; close() or the destructor releases it.
class Reader {
 public:
  Reader() noexcept = default;
  explicit Reader(store_reader* adopt) noexcept : r_(adopt) {}
  Reader(Reader&& o) noexcept : r_(std::exchange(o.r_, nullptr)) {}
  Reader& operator=(Reader&& o) noexcept {
    if (this != &o) {
      store_reader_close(r_);
      r_ = std::exchange(o.r_, nullptr);
    }
    return *this;
  }
  Reader(const Reader&) = delete;
  Reader& operator=(const Reader&) = delete;
  ~Reader() { store_reader_close(r_); }

  // Returns how many bytes were copied; 0 at the end.
  size_t read(void* buf, size_t size) {
    size_t n = 0;
    check(store_reader_read(r_, buf, size, &n));
    return n;
  }
  uint64_t seek(int64_t offset, int whence = SEEK_SET) {
    uint64_t pos = 0;
    check(store_reader_seek(r_, offset, whence, &pos));
    return pos;
  }
  uint64_t tell() const noexcept { return store_reader_tell(r_); }
  uint64_t size() const noexcept { return store_reader_size(r_); }
  // The object's bytes; nullptr for a device object or an empty Reader. Valid until close().
  const uint8_t* data() const noexcept {
    return static_cast<const uint8_t*>(store_reader_data(r_));
  }
#if __cplusplus >= 202002L
  std::span<const uint8_t> span() const noexcept {
    const uint8_t* p = data();
    return p ? std::span<const uint8_t>(p, size()) : std::span<const uint8_t>();
  }
#endif
  // A device object's data, as Writer::device_ptr. Valid until close().
  const void* device_ptr(int* device = nullptr) const {
    const void* p = nullptr;
    check(store_reader_device_ptr(r_, &p, device));
    return p;
  }
  // The store's device number of the data, or -1 for host memory.
  int device() const noexcept { return store_reader_device(r_); }
  // Empty if the object has no metadata. Valid until close().
  std::string_view metadata() const noexcept {
    uint64_t n = 0;
    const void* p = store_reader_metadata(r_, &n);
    return p ? std::string_view(static_cast<const char*>(p), n) : std::string_view();
  }
  ObjectId id() const noexcept {
    const store_object_id* p = store_reader_id(r_);
    return p ? ObjectId(*p) : ObjectId();
  }
  void close() noexcept { store_reader_close(std::exchange(r_, nullptr)); }

  explicit operator bool() const noexcept { return r_ != nullptr; }
  store_reader* get() const noexcept { return r_; }

 private:
  store_reader* r_ = nullptr;
};

// Owns one connection; Writers and Readers it made may outlive it (they can still be closed).
class Client {
 public:
  Client() noexcept = default;
  explicit Client(store_client* adopt) noexcept : c_(adopt) {}
  Client(Client&& o) noexcept : c_(std::exchange(o.c_, nullptr)) {}
  Client& operator=(Client&& o) noexcept {
    if (this != &o) {
      store_client_free(c_);
      c_ = std::exchange(o.c_, nullptr);
    }
    return *this;
  }
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;
  ~Client() { store_client_free(c_); }

  // An empty socket means the default path; an empty name means the program name.
  static Client Connect(const std::string& socket = "", const std::string& name = "") {
    store_connect_options opts = STORE_CONNECT_OPTIONS_INIT;
    opts.client_name = name.empty() ? nullptr : name.c_str();
    store_client* c = nullptr;
    check(store_client_connect(&c, socket.empty() ? nullptr : socket.c_str(), &opts));
    return Client(c);
  }

  Writer Create(const ObjectId& id, uint64_t size, const CreateOptions& opts = {}) {
    store_create_options o = opts.to_c();
    store_writer* w = nullptr;
    check(store_create(c_, &w, &id.raw(), size, &o));
    return Writer(w);
  }
  void Put(const ObjectId& id, const void* data, size_t size, const CreateOptions& opts = {}) {
    store_create_options o = opts.to_c();
    check(store_put(c_, &id.raw(), data, size, &o));
  }
  void Put(const ObjectId& id, std::string_view data, const CreateOptions& opts = {}) {
    Put(id, data.data(), data.size(), opts);
  }

  // timeout_ms: 0 = only if sealed now, > 0 = wait that long, -1 = forever.
  // Returns nullopt if the object is not sealed in time; throws on any other failure.
  std::optional<Reader> TryOpen(const ObjectId& id, int64_t timeout_ms) {
    store_reader* r = nullptr;
    int rc = store_open_reader(c_, &r, &id.raw(), timeout_ms);
    if (rc == STORE_ENOTFOUND || rc == STORE_ETIMEDOUT) return std::nullopt;
    check(rc);
    return std::optional<Reader>(std::in_place, r);
  }
  // As TryOpen, but a missing object throws (STORE_ENOTFOUND, or STORE_ETIMEDOUT after waiting).
  Reader Open(const ObjectId& id, int64_t timeout_ms = -1) {
    store_reader* r = nullptr;
    check(store_open_reader(c_, &r, &id.raw(), timeout_ms));
    return Reader(r);
  }
  // One slot per id, nullopt where that object was not sealed within timeout_ms in all.
  std::vector<std::optional<Reader>> OpenMany(const std::vector<ObjectId>& ids,
                                              int64_t timeout_ms) {
    std::vector<std::optional<Reader>> out;
    if (ids.empty()) return out;
    std::vector<store_object_id> raw;
    raw.reserve(ids.size());
    for (const ObjectId& id : ids) raw.push_back(id.raw());
    std::vector<store_reader*> readers(ids.size(), nullptr);
    out.reserve(ids.size());  // nothing below may throw once the readers are open
    check(store_open_readers(c_, readers.data(), raw.data(), raw.size(), timeout_ms));
    for (store_reader* r : readers) {
      if (r)
        out.emplace_back(std::in_place, r);
      else
        out.emplace_back();
    }
    return out;
  }

  bool Contains(const ObjectId& id) {
    int present = 0;
    check(store_contains(c_, &id.raw(), &present));
    return present != 0;
  }
  void Delete(const ObjectId& id) { check(store_delete(c_, &id.raw())); }
  store_object_info Info(const ObjectId& id) {
    store_object_info info = STORE_OBJECT_INFO_INIT;
    check(store_info(c_, &id.raw(), &info));
    return info;
  }
  std::vector<store_object_info> List() {
    store_object_info* p = nullptr;
    size_t n = 0;
    check(store_list(c_, &p, sizeof *p, &n));
    std::unique_ptr<store_object_info, void (*)(void*)> owned(p, store_free);
    return std::vector<store_object_info>(p, p + n);
  }
  void Pin(const ObjectId& id) { check(store_pin(c_, &id.raw())); }
  void Unpin(const ObjectId& id) { check(store_unpin(c_, &id.raw())); }
  store_stats Stats() {
    store_stats s = STORE_STATS_INIT;
    check(store_stats_get(c_, &s));
    return s;
  }

  explicit operator bool() const noexcept { return c_ != nullptr; }
  store_client* get() const noexcept { return c_; }

 private:
  store_client* c_ = nullptr;
};

}  // namespace store

namespace std {
template <>
struct hash<store::ObjectId> {
  size_t operator()(const store::ObjectId& id) const noexcept {
    uint64_t h = 1469598103934665603ull;  // FNV-1a
    for (size_t i = 0; i < STORE_OBJECT_ID_SIZE; ++i) h = (h ^ id.bytes()[i]) * 1099511628211ull;
    return static_cast<size_t>(h);
  }
};
}  // namespace std

#endif  // STORECLIENT_HPP
