// reader.cpp - reading objects: store_open_reader(s), the reader's calls, and closing readers
// (their releases go out batched, see transport.cpp).
//
// Owns: the store_reader handles (each holds a reference to its Conn).
// Called by: applications.
// Threads: any thread may open; a reader is used by one thread at a time.
#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "client_internal.h"

using namespace storeclient::internal;

extern "C" {

// ---- reading -------------------------------------------------------------------------------

namespace {

void SendRelease(Conn* c, const uint64_t* uids, size_t n) {
  try {
    QueueRelease(c, uids, n);
  } catch (...) {
  }
}

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// A reader over an object the store handed out (l->status() == 0). On failure returns the error
// (the connection is broken if the store placed it outside its memory; STORE_ENOMEM out of
// memory); the caller releases the object. Never throws.
int MakeReader(Conn* c, const store_object_id& id, const proto::ObjectLocation* l,
               store_reader** out) noexcept {
  const bool on_gpu = l->device() >= 0;
  if (l->region_id() != c->region_id ||
      !InRegion(c, l->offset(), (on_gpu ? 0 : l->data_size()) + l->metadata_size())) {
    MarkBroken(c, STORE_EPROTO, "the store placed an object outside its memory");
    return BrokenError(c);
  }
  const uint8_t* d = c->base + l->offset();
  store_reader* r = nullptr;
  if (on_gpu) {
    uint8_t* dptr = nullptr;
    int32_t local = -1;
    int rc = Guard([&] {
      return DeviceData(c, l->device(), l->chunk(), l->chunk_offset(), l->data_size(), &dptr,
                        &local);
    });
    if (rc != STORE_OK) return rc;
    r = new (std::nothrow) store_reader{c, id, l->uid(), nullptr, l->data_size(), d,
                                        l->metadata_size(), 0, l->device(), local, dptr};
  } else {
    Populate(c, l->offset(), l->data_size());
    r = new (std::nothrow) store_reader{c, id, l->uid(), d, l->data_size(), d + l->data_size(),
                                        l->metadata_size(), 0, -1, -1, nullptr};
  }
  if (!r) return Fail(STORE_ENOMEM, "out of memory for a reader");
  Ref(c);
  *out = r;
  return STORE_OK;
}

// Releases every object a get reply handed out, without allocating (but for the queue).
void ReleaseHandedOut(Conn* c, const flatbuffers::Vector<const proto::ObjectLocation*>* locs) {
  uint64_t uids[64];
  size_t m = 0;
  for (flatbuffers::uoffset_t i = 0; i < locs->size(); i++) {
    const proto::ObjectLocation* l = locs->Get(i);
    if (l->status() != 0) continue;
    uids[m++] = l->uid();
    if (m == 64) {
      SendRelease(c, uids, m);
      m = 0;
    }
  }
  if (m > 0) SendRelease(c, uids, m);
}

// One get request for up to kMaxIdsPerRequest ids.
int OpenBatch(store_client* client, store_reader** out, const store_object_id* ids, size_t n,
              int64_t timeout_ms) {
  Conn* c = client->conn;
  flatbuffers::FlatBufferBuilder fbb(160 + 24 * n);
  auto vec = IdVector(fbb, ids, n);
  auto body = proto::CreateGetRequest(fbb, vec, timeout_ms);
  std::unique_ptr<Reply> reply;
  int rc = Call(c, fbb, Body::GetRequest, body.Union(), Body::GetReply, &reply);
  if (rc != STORE_OK) return rc;
  auto* locs = reply->msg->body_as_GetReply()->objects();
  if (locs->size() != n) {
    MarkBroken(c, STORE_EPROTO, "the store answered a get with the wrong number of objects");
    return BrokenError(c);
  }
  for (size_t i = 0; i < n; i++) out[i] = nullptr;
  for (size_t i = 0; i < n; i++) {
    const proto::ObjectLocation* l = locs->Get(static_cast<flatbuffers::uoffset_t>(i));
    if (l->status() != 0) continue;
    int prc = MakeReader(c, ids[i], l, &out[i]);
    if (prc == STORE_OK) continue;
    // None is opened: the readers made are dropped, every object handed out released.
    const Message why = t_message;
    for (size_t j = 0; j < i; j++) {
      if (out[j]) {
        delete out[j];
        Unref(c);
        out[j] = nullptr;
      }
    }
    ReleaseHandedOut(c, locs);
    return FailMsg(prc, why.text);
  }
  return STORE_OK;
}

}  // namespace

int store_open_readers(store_client* client, store_reader** out, const store_object_id* ids,
                       size_t n, int64_t timeout_ms) {
  return Guard([&]() -> int {
    if (!client || (n && (!out || !ids))) return Fail(STORE_EINVAL, "client, out or ids is NULL");
    if (!client->conn->OwnedByThisProcess()) return InheritedError(client->conn);
    if (timeout_ms < -1) return Fail(STORE_EINVAL, "timeout_ms must be -1, 0 or positive");
    for (size_t i = 0; i < n; i++) out[i] = nullptr;
    int64_t deadline = timeout_ms > 0 ? NowMs() + timeout_ms : 0;
    for (size_t start = 0; start < n; start += proto::kMaxIdsPerRequest) {
      size_t k = std::min<size_t>(n - start, proto::kMaxIdsPerRequest);
      int64_t t = timeout_ms;
      if (timeout_ms > 0) t = std::max<int64_t>(0, deadline - NowMs());
      int rc = OpenBatch(client, out + start, ids + start, k, t);
      if (rc != STORE_OK) {
        for (size_t i = 0; i < start; i++) {
          store_reader_close(out[i]);
          out[i] = nullptr;
        }
        return rc;
      }
    }
    return STORE_OK;
  });
}

int store_open_reader(store_client* client, store_reader** out, const store_object_id* id,
                      int64_t timeout_ms) {
  return Guard([&]() -> int {
    if (!out) return Fail(STORE_EINVAL, "out is NULL");
    *out = nullptr;
    if (!client || !id) return Fail(STORE_EINVAL, "client or id is NULL");
    if (timeout_ms < -1) return Fail(STORE_EINVAL, "timeout_ms must be -1, 0 or positive");
    Conn* c = client->conn;
    // Gets of one id differ only in seq, id and timeout: this thread's first one, built with
    // every field present, is copied with those written in place.
    thread_local std::vector<uint8_t> t_get;
    const uint64_t seq = c->next_seq.fetch_add(1, std::memory_order_relaxed);
    if (t_get.empty()) {
      flatbuffers::FlatBufferBuilder fbb(128);
      fbb.ForceDefaults(true);
      proto::ObjectId pid = ProtoId(id);
      auto vec = fbb.CreateVectorOfStructs(&pid, 1);
      auto body = proto::CreateGetRequest(fbb, vec, timeout_ms);
      FinishMessage(fbb, seq, Body::GetRequest, body.Union());
      t_get.assign(fbb.GetBufferPointer(), fbb.GetBufferPointer() + fbb.GetSize());
    } else {
      auto* m = proto::GetMutableSizePrefixedMessage(t_get.data());
      auto* g = static_cast<proto::GetRequest*>(m->mutable_body());
      m->mutate_seq(seq);
      g->mutate_timeout_ms(timeout_ms);
      *g->mutable_ids()->GetMutableObject(0) = ProtoId(id);
    }
    std::unique_ptr<Reply> reply;
    int rc = CallFinished(c, seq, t_get.data(), t_get.size(), Body::GetReply, &reply);
    if (rc != STORE_OK) return rc;
    auto* locs = reply->msg->body_as_GetReply()->objects();
    if (locs->size() != 1) {
      MarkBroken(c, STORE_EPROTO, "the store answered a get with the wrong number of objects");
      return BrokenError(c);
    }
    const proto::ObjectLocation* l = locs->Get(0);
    if (l->status() != 0) {
      char hex[41];
      store_object_id_to_hex(id, hex, sizeof hex);
      switch (l->status()) {
        case STORE_ETIMEDOUT:
          return Fail(STORE_ETIMEDOUT, "object %s was not sealed (or read back from disk) within %lld ms", hex,
                      static_cast<long long>(timeout_ms));
        case STORE_ENOTFOUND:
          return Fail(STORE_ENOTFOUND, "object %s is not in the store (or not sealed yet)", hex);
        case STORE_ECORRUPT:
          return Fail(STORE_ECORRUPT,
                      "object %s could not be read back from disk intact (the server's log "
                      "says why); it is not served", hex);
        case STORE_ELIMIT:
          return Fail(STORE_ELIMIT, "object %s is on disk and the store is out of file "
                      "descriptors to read it back now (the server's log says why); it stays on "
                      "disk", hex);
        case STORE_ENOMEM:
          return Fail(STORE_ENOMEM, "object %s is on disk and the store ran out of memory "
                      "reading it back (the server's log says why); it stays on disk", hex);
        case STORE_ENOSPACE:
          return Fail(STORE_ENOSPACE, "object %s is on disk and no memory could be freed to "
                      "restore it into%s", hex, timeout_ms > 0 ? " within the timeout" : "");
        case STORE_ENODISK:
          return Fail(STORE_ENODISK, "object %s is on disk and there is no memory to restore it "
                      "into: spilling other objects to make room fails (the server's log says "
                      "why)", hex);
        case STORE_EMISUSE:
          return Fail(STORE_EMISUSE, "object %s has as many open readers as a count can hold",
                      hex);
        default:
          return Fail(STORE_EPROTO, "object %s: unexpected status %d", hex, l->status());
      }
    }
    rc = MakeReader(c, *id, l, out);
    if (rc != STORE_OK) {
      const Message why = t_message;
      uint64_t uid = l->uid();
      SendRelease(c, &uid, 1);
      return FailMsg(rc, why.text);
    }
    return STORE_OK;
  });
}

int store_reader_read(store_reader* r, void* buf, size_t size, size_t* nread) {
  if (nread) *nread = 0;
  if (!r || (!buf && size)) return Fail(STORE_EINVAL, "reader or buffer is NULL");
  if (!Usable(r->conn)) return BrokenError(r->conn);
  size_t n = static_cast<size_t>(std::min<uint64_t>(size, r->size - r->pos));
  if (n && r->device >= 0) {
    std::string why;
    if (!storeclient::gpu::CopyToHost(r->conn->gpu_backend, r->local_device, buf,
                                      r->dptr + r->pos, n, &why)) {
      return FailMsg(STORE_EINVAL, why);
    }
  } else if (n) {
    std::memcpy(buf, r->data + r->pos, n);
  }
  r->pos += n;
  if (nread) *nread = n;
  return STORE_OK;
}

int store_reader_seek(store_reader* r, int64_t offset, int whence, uint64_t* pos) {
  if (!r) return Fail(STORE_EINVAL, "reader is NULL");
  if (!r->conn->OwnedByThisProcess()) return InheritedError(r->conn);
  return SeekImpl(&r->pos, r->size, offset, whence, pos);
}

uint64_t store_reader_tell(const store_reader* r) { return r ? r->pos : 0; }
uint64_t store_reader_size(const store_reader* r) { return r ? r->size : 0; }

const void* store_reader_data(const store_reader* r) {
  if (!r || !Usable(r->conn)) return nullptr;
  return r->data;
}

int store_reader_device_ptr(const store_reader* r, const void** dptr, int* device) {
  return DevicePtr(r, dptr, device, "reader");
}

int store_reader_device(const store_reader* r) { return r ? r->device : -1; }

const void* store_reader_metadata(const store_reader* r, uint64_t* size) {
  if (size) *size = 0;
  if (!r || !Usable(r->conn) || r->metadata_size == 0) return nullptr;
  if (size) *size = r->metadata_size;
  return r->metadata;
}

const store_object_id* store_reader_id(const store_reader* r) { return r ? &r->id : nullptr; }

void store_reader_close(store_reader* r) {
  if (!r) return;
  Conn* c = r->conn;
  if (Usable(c)) SendRelease(c, &r->uid, 1);
  delete r;
  Unref(c);
}

void store_readers_close(store_reader** readers, size_t n) {
  if (!readers) return;
  try {
    // Group by connection (readers normally share one), one release message per group.
    std::vector<uint64_t> uids;
    size_t i = 0;
    while (i < n) {
      if (!readers[i]) {
        i++;
        continue;
      }
      Conn* c = readers[i]->conn;
      uids.clear();
      for (size_t j = i; j < n; j++) {
        if (readers[j] && readers[j]->conn == c) uids.push_back(readers[j]->uid);
      }
      if (Usable(c)) {
        for (size_t k = 0; k < uids.size(); k += proto::kMaxIdsPerRequest) {
          SendRelease(c, uids.data() + k, std::min<size_t>(proto::kMaxIdsPerRequest, uids.size() - k));
        }
      }
      for (size_t j = i; j < n; j++) {
        if (readers[j] && readers[j]->conn == c) {
          delete readers[j];
          readers[j] = nullptr;
          Unref(c);
        }
      }
    }
  } catch (...) {
    // Out of memory while grouping: fall back to one release per reader.
    for (size_t i = 0; i < n; i++) {
      store_reader_close(readers[i]);
      readers[i] = nullptr;
    }
  }
}

}  // extern "C"
