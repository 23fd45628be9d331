// writer.cpp - creating objects: store_create and the writer's calls, store_put and
// store_put_many (pipelined inline creates).
//
// Owns: the store_writer handles (each holds a reference to its Conn) and a staged writer's
// private buffers.
// Called by: applications.
// Threads: any thread may create; a writer is used by one thread at a time.
#include <errno.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include "client_internal.h"

using namespace storeclient::internal;

static_assert(STORE_STAGED_MAX <= proto::kInlinePutMax,
              "a staged object is sealed as an inline put");

extern "C" {

// ---- writing -------------------------------------------------------------------------------

namespace {

int CheckCreateOptions(const store_create_options* o) {
  if (!o) return STORE_OK;
  // Version 1 options end before flags.
  if (o->version != STORE_CREATE_OPTIONS_VERSION && o->version != 1) {
    return Fail(STORE_EINVAL, "store_create_options.version is %u; this library knows 1 to %u",
                o->version, STORE_CREATE_OPTIONS_VERSION);
  }
  if (o->version >= 2 && (o->flags & ~STORE_CREATE_LEASED) != 0) {
    return Fail(STORE_EINVAL, "unknown store_create_options.flags 0x%x", o->flags);
  }
  if (o->metadata_size > 0 && !o->metadata) return Fail(STORE_EINVAL, "metadata is NULL");
  if (o->metadata_size > STORE_MAX_METADATA_SIZE) {
    return Fail(STORE_EINVAL, "metadata of %llu bytes is over the limit of %u",
                static_cast<unsigned long long>(o->metadata_size), STORE_MAX_METADATA_SIZE);
  }
  if (o->timeout_ms < -1) return Fail(STORE_EINVAL, "timeout_ms must be -1, 0 or positive");
  return STORE_OK;
}

flatbuffers::Offset<proto::CreateRequest> BuildCreate(flatbuffers::FlatBufferBuilder& fbb,
                                                      const store_object_id* id,
                                                      uint64_t size,
                                                      const store_create_options* o,
                                                      const void* inline_data) {
  static const store_create_options kDefaults = STORE_CREATE_OPTIONS_INIT;
  if (!o) o = &kDefaults;
  flatbuffers::Offset<flatbuffers::Vector<uint8_t>> meta, data;
  if (o->metadata_size) {
    meta = fbb.CreateVector(static_cast<const uint8_t*>(o->metadata), o->metadata_size);
  }
  if (inline_data) data = fbb.CreateVector(static_cast<const uint8_t*>(inline_data), size);
  proto::ObjectId pid = ProtoId(id);
  proto::CreateRequestBuilder b(fbb);
  b.add_id(&pid);
  b.add_data_size(size);
  if (o->metadata_size) b.add_metadata(meta);
  b.add_importance(o->importance);
  b.add_device(o->device);
  b.add_timeout_ms(o->timeout_ms);
  if (o->version >= 2 && (o->flags & STORE_CREATE_LEASED)) b.add_leased(true);
  if (inline_data) b.add_data(data);
  return b.Finish();
}

// Rewrites a copy of a built inline create (seq never 0, so the field is there; data of
// size bytes) into the create of another object of that size: seq, id and data in place.
void RewriteCreate(uint8_t* msg, uint64_t seq, const store_object_id* id, const void* data,
                   uint64_t size) {
  auto* m = proto::GetMutableSizePrefixedMessage(msg);
  auto* r = static_cast<proto::CreateRequest*>(m->mutable_body());
  m->mutate_seq(seq);
  *r->mutable_id() = ProtoId(id);
  std::memcpy(r->mutable_data()->Data(), data, size);
}

}  // namespace

namespace {
// Aborts an object this client created but holds no writer for. Best effort; never throws.
void AbortCreated(Conn* c, const store_object_id& id, uint64_t uid) noexcept {
  Guard([&] {
    flatbuffers::FlatBufferBuilder fbb(128);
    proto::ObjectId pid = ProtoId(&id);
    std::unique_ptr<Reply> reply;
    return Call(c, fbb, Body::AbortRequest, proto::CreateAbortRequest(fbb, &pid, uid).Union(),
                Body::AbortReply, &reply);
  });
}
}  // namespace

int store_create(store_client* client, store_writer** out, const store_object_id* id,
                 uint64_t data_size, const store_create_options* opts) {
  return Guard([&]() -> int {
    if (!out) return Fail(STORE_EINVAL, "out is NULL");
    *out = nullptr;
    if (!client || !id) return Fail(STORE_EINVAL, "client or id is NULL");
    if (data_size == 0) return Fail(STORE_EINVAL, "an object must have at least one byte");
    if (int rc = CheckCreateOptions(opts); rc != STORE_OK) return rc;
    Conn* c = client->conn;
    if (!c->OwnedByThisProcess()) return InheritedError(c);
    if (!Usable(c)) return BrokenError(c);
    if (c->read_only) {
      return Fail(STORE_EPERM, "this client connected read-only: it cannot create objects");
    }
    if (data_size <= STORE_STAGED_MAX && !(opts && opts->device >= 0)) {
      // Staged: written into a private buffer and sent whole at the seal, which creates and
      // seals it in one round trip. No page of the store is writable through it.
      auto* w = new (std::nothrow)
          store_writer{c, *id, 0, nullptr, data_size, 0, -1, -1, nullptr};
      if (!w) return Fail(STORE_ENOMEM, "out of memory for a writer");
      w->staged = true;
      w->data = static_cast<uint8_t*>(std::calloc(1, data_size));
      w->meta_size = opts ? opts->metadata_size : 0;
      if (w->meta_size) w->meta = static_cast<uint8_t*>(std::malloc(w->meta_size));
      if (!w->data || (w->meta_size && !w->meta)) {
        std::free(w->data);
        std::free(w->meta);
        delete w;
        return Fail(STORE_ENOMEM, "out of memory for a writer of %llu bytes",
                    static_cast<unsigned long long>(data_size));
      }
      if (w->meta_size) std::memcpy(w->meta, opts->metadata, w->meta_size);
      w->importance = opts ? opts->importance : 0;
      w->timeout_ms = opts ? opts->timeout_ms : 0;
      w->flags = opts && opts->version >= 2 ? opts->flags : 0;
      Ref(c);
      *out = w;
      return STORE_OK;
    }
    flatbuffers::FlatBufferBuilder fbb(256 + (opts ? opts->metadata_size : 0));
    auto body = BuildCreate(fbb, id, data_size, opts, nullptr);
    std::unique_ptr<Reply> reply;
    int rc = Call(c, fbb, Body::CreateRequest, body.Union(), Body::CreateReply, &reply);
    if (rc != STORE_OK) return rc;
    auto* r = reply->msg->body_as_CreateReply();
    const int32_t device = opts ? opts->device : -1;
    const bool on_gpu = r->device() >= 0;
    if (r->region_id() != c->region_id || r->data_size() != data_size || r->device() != device ||
        !InRegion(c, r->offset(), (on_gpu ? 0 : r->data_size()) + r->metadata_size())) {
      MarkBroken(c, STORE_EPROTO, "the store placed an object outside its memory");
      return BrokenError(c);
    }
    uint64_t win_begin = 0, win_end = 0;
    if (!on_gpu && c->write_window) {
      // The object's pages, writable until its seal or abort.
      if (r->offset() % kWindowPage != 0) {
        AbortCreated(c, *id, r->uid());
        return Fail(STORE_EPROTO,
                    "the store placed an object of %llu bytes at offset %llu, not at the start "
                    "of a page of its own, so a write window (STORE_CLIENT_WRITE_WINDOW) would "
                    "open another object's bytes; the object was aborted",
                    static_cast<unsigned long long>(data_size),
                    static_cast<unsigned long long>(r->offset()));
      }
      win_begin = r->offset();
      win_end = std::min(RoundUpTo(r->offset() + data_size, kWindowPage),
                         RoundUpTo(c->region_size, kWindowPage));
      if (int e = OpenWindow(c, win_begin, win_end); e != 0) {
        AbortCreated(c, *id, r->uid());
        if (e < 0) return BrokenError(c);
        return Fail(STORE_ENOMEM,
                    "cannot make the new object's pages writable (STORE_CLIENT_WRITE_WINDOW): "
                    "mprotect: %s; the object was aborted", std::strerror(e));
      }
    }
    // With a window, after it opened: the pages are mapped writable.
    if (!on_gpu) Populate(c, r->offset(), data_size, false, true);
    uint8_t* data = on_gpu ? nullptr : c->wbase + r->offset();
    auto* w = new (std::nothrow)
        store_writer{c, *id, r->uid(), data, data_size, 0, on_gpu ? device : -1, -1, nullptr};
    if (!w) {
      // The store made an object this process cannot hold a writer for: it is aborted.
      if (win_end > win_begin) CloseWindow(c, win_begin, win_end);
      AbortCreated(c, *id, r->uid());
      return Fail(STORE_ENOMEM, "out of memory for a writer");
    }
    w->win_begin = win_begin;
    w->win_end = win_end;
    Ref(c);
    if (on_gpu) {
      rc = Guard([&] {
        return DeviceData(c, device, r->chunk(), r->chunk_offset(), data_size, &w->dptr,
                          &w->local_device);
      });
      if (rc != STORE_OK) {
        const Message why = t_message;
        store_writer_abort(w);
        return FailMsg(rc, why.text);
      }
    }
    *out = w;
    return STORE_OK;
  });
}

int store_writer_write(store_writer* w, const void* data, size_t size) {
  if (!w || (!data && size)) return Fail(STORE_EINVAL, "writer or data is NULL");
  if (!Usable(w->conn)) return BrokenError(w->conn);
  if (size > w->size - w->pos) {
    return Fail(STORE_EINVAL, "writing %zu bytes at %llu would pass the end of the object (%llu)",
                size, static_cast<unsigned long long>(w->pos),
                static_cast<unsigned long long>(w->size));
  }
  if (size && w->device >= 0) {
    std::string why;
    if (!storeclient::gpu::CopyToDevice(w->conn->gpu_backend, w->local_device, w->dptr + w->pos,
                                        data, size, &why)) {
      return FailMsg(STORE_EINVAL, why);
    }
  } else if (size) {
    std::memcpy(w->data + w->pos, data, size);
  }
  w->pos += size;
  return STORE_OK;
}

int store_writer_seek(store_writer* w, int64_t offset, int whence, uint64_t* pos) {
  if (!w) return Fail(STORE_EINVAL, "writer is NULL");
  if (!w->conn->OwnedByThisProcess()) return InheritedError(w->conn);
  return SeekImpl(&w->pos, w->size, offset, whence, pos);
}

uint64_t store_writer_tell(const store_writer* w) { return w ? w->pos : 0; }
uint64_t store_writer_size(const store_writer* w) { return w ? w->size : 0; }

void* store_writer_data(store_writer* w) {
  if (!w || !Usable(w->conn)) return nullptr;
  return w->data;
}

namespace {
int FinishWriter(store_writer* w, bool seal) {
  Conn* c = w->conn;
  // The window closes before the seal or abort goes out: once the store has sealed the object,
  // this process cannot change it. In a forked child, whose windows are copies of the parent's
  // and whose locks may be held by the parent's threads, its copy is made read-only directly.
  int window_errno = 0;  // of a window that did not close
  if (w->win_end > w->win_begin) {
    if (c->OwnedByThisProcess()) {
      if (!CloseWindow(c, w->win_begin, w->win_end)) window_errno = errno ? errno : EINVAL;
    } else {
      mprotect(c->wbase + w->win_begin, w->win_end - w->win_begin, PROT_READ);
    }
  }
  int rc = Guard([&]() -> int {
    if (window_errno != 0) {
      // Not sealed while this process may still write it: the session ends, so the store
      // aborts the object.
      MarkBroken(c, STORE_ECONN,
                 "cannot make a written object's pages read-only again "
                 "(STORE_CLIENT_WRITE_WINDOW): mprotect: ", std::strerror(window_errno));
      return BrokenError(c);
    }
    if (w->staged) {
      if (!c->OwnedByThisProcess()) return InheritedError(c);
      if (!seal) return STORE_OK;  // nothing was sent: nothing to abort
      // Create, data and seal in one request.
      store_create_options o = STORE_CREATE_OPTIONS_INIT;
      o.metadata = w->meta;
      o.metadata_size = w->meta_size;
      o.importance = w->importance;
      o.timeout_ms = w->timeout_ms;
      o.flags = w->flags;
      flatbuffers::FlatBufferBuilder fbb(256 + w->size + w->meta_size);
      auto body = BuildCreate(fbb, &w->id, w->size, &o, w->data);
      std::unique_ptr<Reply> reply;
      return Call(c, fbb, Body::CreateRequest, body.Union(), Body::CreateReply, &reply);
    }
    flatbuffers::FlatBufferBuilder fbb(128);
    proto::ObjectId pid = ProtoId(&w->id);
    std::unique_ptr<Reply> reply;
    if (seal) {
      auto body = proto::CreateSealRequest(fbb, &pid, w->uid);
      return Call(c, fbb, Body::SealRequest, body.Union(), Body::SealReply, &reply);
    }
    auto body = proto::CreateAbortRequest(fbb, &pid, w->uid);
    return Call(c, fbb, Body::AbortRequest, body.Union(), Body::AbortReply, &reply);
  });
  if (w->staged) {
    std::free(w->data);
    std::free(w->meta);
  }
  delete w;
  Unref(c);
  return rc;
}
}  // namespace

int store_writer_device_ptr(store_writer* w, void** dptr, int* device) {
  return DevicePtr(w, dptr, device, "writer");
}

int store_writer_seal(store_writer* w) {
  if (!w) return Fail(STORE_EINVAL, "writer is NULL");
  return FinishWriter(w, true);
}

int store_writer_abort(store_writer* w) {
  if (!w) return STORE_OK;
  int rc = FinishWriter(w, false);
  // A writer whose client is gone was aborted by the server already.
  return rc == STORE_ECONN ? STORE_OK : rc;
}

int store_put(store_client* client, const store_object_id* id, const void* data,
              uint64_t data_size, const store_create_options* opts) {
  return Guard([&]() -> int {
    if (!client || !id || !data) return Fail(STORE_EINVAL, "client, id or data is NULL");
    if (data_size == 0) return Fail(STORE_EINVAL, "an object must have at least one byte");
    if (int rc = CheckCreateOptions(opts); rc != STORE_OK) return rc;
    const bool on_gpu = opts && opts->device >= 0;
    if (data_size <= proto::kInlinePutMax && !opts) {
      // Puts of one size without options differ only in seq, id and data: this thread's last
      // one is copied with those written in place.
      thread_local std::vector<uint8_t> t_put;
      thread_local uint64_t t_put_size = 0;
      Conn* c = client->conn;
      const uint64_t seq = c->next_seq.fetch_add(1, std::memory_order_relaxed);
      if (t_put_size == data_size) {
        RewriteCreate(t_put.data(), seq, id, data, data_size);
      } else {
        flatbuffers::FlatBufferBuilder fbb(256 + data_size);
        auto body = BuildCreate(fbb, id, data_size, nullptr, data);
        FinishMessage(fbb, seq, Body::CreateRequest, body.Union());
        t_put_size = 0;
        t_put.assign(fbb.GetBufferPointer(), fbb.GetBufferPointer() + fbb.GetSize());
        t_put_size = data_size;
      }
      std::unique_ptr<Reply> reply;
      return CallFinished(c, seq, t_put.data(), t_put.size(), Body::CreateReply, &reply);
    }
    if (data_size <= proto::kInlinePutMax && !on_gpu) {
      flatbuffers::FlatBufferBuilder fbb(256 + data_size + (opts ? opts->metadata_size : 0));
      auto body = BuildCreate(fbb, id, data_size, opts, data);
      std::unique_ptr<Reply> reply;
      return Call(client->conn, fbb, Body::CreateRequest, body.Union(), Body::CreateReply,
                  &reply);
    }
    store_writer* w = nullptr;
    int rc = store_create(client, &w, id, data_size, opts);
    if (rc != STORE_OK) return rc;
    if (on_gpu) {
      rc = store_writer_write(w, data, data_size);
      if (rc != STORE_OK) {
        const Message why = t_message;
        store_writer_abort(w);
        return FailMsg(rc, why.text);
      }
    } else {
      std::memcpy(w->data, data, data_size);
    }
    return store_writer_seal(w);
  });
}

namespace {

// store_put_many puts objects of inline size with pipelined requests: a batch is sent in one
// write, then its replies are collected.
// One batch of inline creates on the wire: sent by PutSend, its replies taken by PutCollect.
// Its slots are registered in the connection's table from PutSend until PutCollect takes
// their replies; whatever ends the batch before that (an exception) unregisters the rest
// (Abandon, as Request does for one request).
struct PutBatch {
  Conn* conn = nullptr;
  const store_object_id* ids = nullptr;
  size_t k = 0;          // requests registered: slots[0, k)
  size_t collected = 0;  // of which PutCollect has taken the replies
  bool sent = false;     // SendAll returned: the requests went out (or the connection broke)
  std::vector<uint64_t> seqs;
  std::vector<Slot> slots;  // never resized while registered
  int send_rc = STORE_OK;
  Message send_message;
  // The requests on the wire, and the builder of the last one built; kept for the next batch.
  std::vector<uint8_t> wire;
  flatbuffers::FlatBufferBuilder fbb{1024};

  PutBatch() = default;
  PutBatch(const PutBatch&) = delete;
  PutBatch& operator=(const PutBatch&) = delete;
  ~PutBatch() { Abandon(); }

  // Unregisters the slots whose replies were not collected. Never throws.
  void Abandon() noexcept {
    for (size_t i = collected; i < k; i++) Forget(conn, seqs[i], &slots[i], sent);
    k = collected = 0;
  }
};

// Builds and sends k inline creates without waiting for their replies. Out of memory, none is
// sent and the batch fails with STORE_ENOMEM.
void PutSend(Conn* c, const store_object_id* ids, const void* const* datas, const uint64_t* sizes,
             size_t k, const store_create_options* opts, PutBatch* b) {
  b->Abandon();  // a no-op: the batch before was collected
  b->conn = c;
  b->ids = ids;
  b->sent = false;
  b->send_rc = STORE_OK;
  if (!Usable(c)) {
    b->send_rc = BrokenError(c);
    b->send_message = t_message;
    return;
  }
  try {
    b->seqs.assign(k, 0);
    b->slots.assign(k, Slot{});
    // Requests of one size differ only in seq, id and data: one is built, and the ones after
    // it are copies of it with those fields written in place. Every request is a multiple of 8
    // bytes long, so each copy in wire is as aligned as the builder's buffer.
    std::vector<uint8_t>& wire = b->wire;
    wire.clear();
    flatbuffers::FlatBufferBuilder& fbb = b->fbb;
    uint64_t built_size = 0;  // the data size of the request in fbb; 0 = none yet
    for (size_t i = 0; i < k; i++) {
      b->seqs[i] = c->next_seq.fetch_add(1, std::memory_order_relaxed);
      if (sizes[i] != built_size) {
        fbb.Clear();
        auto body = BuildCreate(fbb, &ids[i], sizes[i], opts, datas[i]);
        FinishMessage(fbb, b->seqs[i], Body::CreateRequest, body.Union());
        built_size = sizes[i];
        if (wire.empty()) wire.reserve(fbb.GetSize() * k + 64);
        wire.insert(wire.end(), fbb.GetBufferPointer(), fbb.GetBufferPointer() + fbb.GetSize());
        continue;
      }
      size_t at = wire.size();
      wire.insert(wire.end(), fbb.GetBufferPointer(), fbb.GetBufferPointer() + fbb.GetSize());
      RewriteCreate(wire.data() + at, b->seqs[i], &ids[i], datas[i], sizes[i]);
    }
    std::lock_guard<std::mutex> lk(c->mu);
    for (size_t i = 0; i < k; i++) {
      c->waiting.Insert(b->seqs[i], &b->slots[i]);
      b->slots[i].registered = true;
      b->k = i + 1;
    }
  } catch (const std::bad_alloc&) {
    b->Abandon();  // not sent: the ones registered are removed
    b->send_rc = Fail(STORE_ENOMEM, "out of memory building %zu puts", k);
    b->send_message = t_message;
    return;
  }
  int rc;
  bool threw = false;  // then nothing of the batch went out
  try {
    rc = SendAll(c, b->wire.data(), b->wire.size());
  } catch (const std::bad_alloc&) {
    threw = true;
    rc = Fail(STORE_ENOMEM, "out of memory sending %zu puts", k);
  }
  // Sent: the requests went out, or the connection broke and no reply will come.
  b->sent = !threw;
  if (threw) b->Abandon();
  b->send_rc = rc;
  if (rc != STORE_OK) b->send_message = t_message;
}

// Waits for the replies of a batch PutSend sent; counts the objects put. Never throws.
int PutCollect(Conn* c, PutBatch* b, size_t* put) {
  int first = b->send_rc;
  Message first_message = b->send_message;
  while (b->collected < b->k) {
    const size_t i = b->collected;
    std::unique_ptr<Reply> reply;
    int rc = WaitReply(c, b->seqs[i], &b->slots[i], &reply);
    b->collected++;
    if (rc == STORE_OK) {
      const proto::Message* m = reply->msg;
      if (m->status() != 0) {
        rc = m->status() < 0 && m->status() >= STORE_ERRNO_MIN_ ? m->status() : STORE_EPROTO;
        char hex[41];
        store_object_id_to_hex(&b->ids[i], hex, sizeof hex);
        Fail(rc, "object %s: %s", hex, m->error() ? m->error()->c_str() : store_errstr(rc));
      } else if (m->body_type() != Body::CreateReply) {
        MarkBroken(c, STORE_EPROTO, "the store sent a reply of the wrong type");
        rc = BrokenError(c);
      } else {
        (*put)++;
      }
    }
    if (rc != STORE_OK && first == STORE_OK) {
      first = rc;
      first_message = t_message;
    }
  }
  b->k = b->collected = 0;
  return first == STORE_OK ? STORE_OK : FailMsg(first, first_message.text);
}

}  // namespace

int store_put_many(store_client* client, const store_object_id* ids, const void* const* datas,
                   const uint64_t* sizes, size_t n, const store_create_options* opts,
                   size_t* done) {
  if (done) *done = 0;
  size_t put = 0;
  int rc = Guard([&]() -> int {
    if (!client || (n && (!ids || !datas || !sizes))) {
      return Fail(STORE_EINVAL, "client, ids, datas or sizes is NULL");
    }
    if (!client->conn->OwnedByThisProcess()) return InheritedError(client->conn);
    if (int rc = CheckCreateOptions(opts); rc != STORE_OK) return rc;
    for (size_t i = 0; i < n; i++) {
      if (!datas[i] || sizes[i] == 0) {
        return Fail(STORE_EINVAL, "object %zu has no data or a zero size", i);
      }
    }
    constexpr size_t kBatch = 128;
    int first = STORE_OK;
    Message first_message;
    auto note = [&](int rc) {
      if (rc != STORE_OK && first == STORE_OK) {
        first = rc;
        first_message = t_message;
      }
    };
    // Two batches of inline creates in flight: the next one is built and sent while the store
    // works on the one before, whose replies are taken after.
    PutBatch batches[2];
    PutBatch* in_flight = nullptr;
    int cur = 0;
    size_t i = 0;
    while (i < n && first != STORE_ECONN) {
      if (sizes[i] > proto::kInlinePutMax || (opts && opts->device >= 0)) {
        if (in_flight) {
          note(PutCollect(client->conn, in_flight, &put));
          in_flight = nullptr;
          if (first == STORE_ECONN) break;
        }
        int rc = store_put(client, &ids[i], datas[i], sizes[i], opts);
        if (rc == STORE_OK) put++;
        note(rc);
        i++;
      } else {
        size_t k = 0;
        while (i + k < n && k < kBatch && sizes[i + k] <= proto::kInlinePutMax) k++;
        PutBatch* b = &batches[cur];
        cur ^= 1;
        PutSend(client->conn, ids + i, datas + i, sizes + i, k, opts, b);
        i += k;
        if (in_flight) note(PutCollect(client->conn, in_flight, &put));
        in_flight = b;
      }
    }
    if (in_flight) note(PutCollect(client->conn, in_flight, &put));
    return first == STORE_OK ? STORE_OK : FailMsg(first, first_message.text);
  });
  if (done) *done = put;
  return rc;
}

}  // extern "C"
