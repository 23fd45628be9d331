// management.cpp - the calls that look at and manage the store rather than one object's
// bytes: contains, delete, info, lists, pins, leases, stats, importance, prefetch, evict and
// spill files.
//
// Owns: nothing past a call; the arrays it hands out are the caller's (store_free).
// Called by: applications.
// Threads: any.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "client_internal.h"
#include "out_struct.h"

using namespace storeclient::internal;

namespace {

using storeclient::OutArray;

store_object_info FromProto(const proto::ObjectInfo& p) {
  store_object_info out{};
  std::memcpy(out.id.bytes, p.id().bytes()->Data(), STORE_OBJECT_ID_SIZE);
  out.data_size = p.data_size();
  out.metadata_size = p.metadata_size();
  out.state = p.state();
  out.level = p.level();
  out.device = p.device();
  out.importance = p.importance();
  out.pin_count = p.pin_count();
  out.reader_count = p.reader_count();
  out.create_time_ns = p.create_time_ns();
  out.last_access_ns = p.last_access_ns();
  out.creator_pid = p.creator_pid();
  out.lease_count = p.lease_count();
  return out;
}

// The check of the struct_size a caller set in an output struct of type T (named `what`) before
// the library writes it; STORE_EINVAL when the caller's struct is too small.
template <class T>
int CheckOutStruct(const T* out, const char* what) {
  if (const char* why = storeclient::OutStructSizeProblem<T>(out->struct_size, false)) {
    return Fail(STORE_EINVAL,
                "%s.struct_size %u %s (sizeof(%s) is %zu in this library, %zu at least)", what,
                out->struct_size, why, what, sizeof(T), storeclient::OutStructFirst<T>::kSize);
  }
  return STORE_OK;
}

// The start of every call that hands the caller an array of T (named `what`): clear the outputs,
// check the args, elem_size included.
template <class T>
int BeginList(store_client* client, T** out, size_t elem_size, size_t* count, const char* what) {
  if (out) *out = nullptr;
  if (count) *count = 0;
  if (!client || !out || !count) return Fail(STORE_EINVAL, "client, out or count is NULL");
  if (const char* why = storeclient::OutStructSizeProblem<T>(elem_size, true)) {
    return Fail(STORE_EINVAL, "elem_size %zu %s (sizeof(%s) is %zu in this library, %zu at least)",
                elem_size, why, what, sizeof(T), storeclient::OutStructFirst<T>::kSize);
  }
  return STORE_OK;
}

// Copies a reply's vector into a new C array for the caller (freed with store_free), its elements
// elem_size bytes apart: fill(i) converts entry i.
template <class T, class Vec, class Fill>
int CopyOut(const Vec* vec, T** out, size_t elem_size, size_t* count, const char* what,
            Fill fill) {
  if (vec->size() == 0) return STORE_OK;
  OutArray<T> arr(elem_size);
  if (!arr.Grow(vec->size())) {
    return Fail(STORE_ENOMEM, "out of memory for %u %s", vec->size(), what);
  }
  for (flatbuffers::uoffset_t i = 0; i < vec->size(); i++) arr.Put(fill(i));
  arr.Release(out, count);
  return STORE_OK;
}

}  // namespace

extern "C" {

// ---- management ----------------------------------------------------------------------------

int store_contains(store_client* client, const store_object_id* id, int* present) {
  return Guard([&]() -> int {
    if (present) *present = 0;
    if (!client || !id || !present) return Fail(STORE_EINVAL, "client, id or present is NULL");
    flatbuffers::FlatBufferBuilder fbb(128);
    proto::ObjectId pid = ProtoId(id);
    auto vec = fbb.CreateVectorOfStructs(&pid, 1);
    std::unique_ptr<Reply> reply;
    int rc = Call(client->conn, fbb, Body::ContainsRequest,
                  proto::CreateContainsRequest(fbb, vec).Union(), Body::ContainsReply, &reply);
    if (rc != STORE_OK) return rc;
    auto* p = reply->msg->body_as_ContainsReply()->present();
    if (p->size() != 1) return Fail(STORE_EPROTO, "bad contains reply");
    *present = p->Get(0) ? 1 : 0;
    return STORE_OK;
  });
}

int store_delete(store_client* client, const store_object_id* id) {
  return Guard([&]() -> int {
    if (!client || !id) return Fail(STORE_EINVAL, "client or id is NULL");
    flatbuffers::FlatBufferBuilder fbb(128);
    proto::ObjectId pid = ProtoId(id);
    auto vec = fbb.CreateVectorOfStructs(&pid, 1);
    std::unique_ptr<Reply> reply;
    int rc = Call(client->conn, fbb, Body::DeleteRequest,
                  proto::CreateDeleteRequest(fbb, vec).Union(), Body::DeleteReply, &reply);
    if (rc != STORE_OK) return rc;
    auto* dr = reply->msg->body_as_DeleteReply();
    auto* s = dr->statuses();
    if (s->size() != 1) return Fail(STORE_EPROTO, "bad delete reply");
    int st = s->Get(0);
    if (st == STORE_OK) return STORE_OK;
    char hex[41];
    store_object_id_to_hex(id, hex, sizeof hex);
    if (st == STORE_ENOTSEALED) {
      return Fail(st, "object %s is still being written; its creator can abort it", hex);
    }
    if (st == STORE_ENOTFOUND) return Fail(st, "object %s is not in the store", hex);
    return Fail(st < 0 && st >= STORE_ERRNO_MIN_ ? st : STORE_EPROTO, "object %s: %s", hex,
                dr->error() ? dr->error()->c_str() : "cannot delete it");
  });
}

int store_delete_many(store_client* client, const store_object_id* ids, size_t n,
                      size_t* deleted) {
  if (deleted) *deleted = 0;
  return Guard([&]() -> int {
    if (!client || (n && !ids)) return Fail(STORE_EINVAL, "client or ids is NULL");
    if (!client->conn->OwnedByThisProcess()) return InheritedError(client->conn);
    int first = STORE_OK;
    Message first_message;
    for (size_t start = 0; start < n; start += proto::kMaxIdsPerRequest) {
      size_t k = std::min<size_t>(n - start, proto::kMaxIdsPerRequest);
      flatbuffers::FlatBufferBuilder fbb(64 + 24 * k);
      auto vec = IdVector(fbb, ids + start, k);
      std::unique_ptr<Reply> reply;
      int rc = Call(client->conn, fbb, Body::DeleteRequest,
                    proto::CreateDeleteRequest(fbb, vec).Union(), Body::DeleteReply, &reply);
      if (rc != STORE_OK) return rc;
      auto* dr = reply->msg->body_as_DeleteReply();
      auto* st = dr->statuses();
      if (st->size() != k) return Fail(STORE_EPROTO, "bad delete reply");
      for (size_t i = 0; i < k; i++) {
        int code = st->Get(static_cast<flatbuffers::uoffset_t>(i));
        if (code == STORE_OK) {
          if (deleted) (*deleted)++;
        } else if (first == STORE_OK) {
          first = code < 0 && code >= STORE_ERRNO_MIN_ ? code : STORE_EPROTO;
          char hex[41];
          store_object_id_to_hex(&ids[start + i], hex, sizeof hex);
          Fail(first, "cannot delete object %s: %s", hex,
               dr->error() ? dr->error()->c_str() : store_errstr(first));
          first_message = t_message;
        }
      }
    }
    if (first != STORE_OK) t_message = first_message;
    return first;
  });
}

int store_info(store_client* client, const store_object_id* id, store_object_info* info) {
  return Guard([&]() -> int {
    if (!client || !id || !info) return Fail(STORE_EINVAL, "client, id or info is NULL");
    if (int rc = CheckOutStruct(info, "store_object_info"); rc != STORE_OK) return rc;
    const size_t caller_size = info->struct_size;
    flatbuffers::FlatBufferBuilder fbb(128);
    proto::ObjectId pid = ProtoId(id);
    std::unique_ptr<Reply> reply;
    int rc = Call(client->conn, fbb, Body::InfoRequest, proto::CreateInfoRequest(fbb, &pid).Union(),
                  Body::InfoReply, &reply);
    if (rc != STORE_OK) return rc;
    storeclient::WriteOutStruct(FromProto(*reply->msg->body_as_InfoReply()->info()), info,
                                caller_size);
    return STORE_OK;
  });
}

int store_list(store_client* client, store_object_info** out, size_t elem_size, size_t* count) {
  return Guard([&]() -> int {
    if (int rc = BeginList(client, out, elem_size, count, "store_object_info"); rc != STORE_OK) {
      return rc;
    }
    // Page by page (each reply is bounded), through a snapshot the server keeps for this list.
    OutArray<store_object_info> all(elem_size);
    uint64_t cursor = 0;
    do {
      flatbuffers::FlatBufferBuilder fbb(64);
      std::unique_ptr<Reply> reply;
      int rc = Call(client->conn, fbb, Body::ListRequest,
                    proto::CreateListRequest(fbb, cursor, proto::kMaxListPage).Union(),
                    Body::ListReply, &reply);
      if (rc != STORE_OK) return rc;
      auto* r = reply->msg->body_as_ListReply();
      auto* objs = r->objects();
      if (!all.Grow(objs->size())) {
        return Fail(STORE_ENOMEM, "out of memory for %zu objects", all.size + objs->size());
      }
      for (flatbuffers::uoffset_t i = 0; i < objs->size(); i++) all.Put(FromProto(*objs->Get(i)));
      if (r->cursor() != 0 && r->cursor() == cursor && objs->size() == 0) {
        MarkBroken(client->conn, STORE_EPROTO, "the store's list makes no progress");
        return BrokenError(client->conn);
      }
      cursor = r->cursor();
    } while (cursor != 0);
    all.Release(out, count);
    return STORE_OK;
  });
}

void store_free(void* p) { std::free(p); }

int store_pin(store_client* client, const store_object_id* id) {
  return Guard([&]() -> int {
    if (!client || !id) return Fail(STORE_EINVAL, "client or id is NULL");
    flatbuffers::FlatBufferBuilder fbb(128);
    proto::ObjectId pid = ProtoId(id);
    std::unique_ptr<Reply> reply;
    return Call(client->conn, fbb, Body::PinRequest, proto::CreatePinRequest(fbb, &pid).Union(),
                Body::PinReply, &reply);
  });
}

int store_unpin(store_client* client, const store_object_id* id) {
  return Guard([&]() -> int {
    if (!client || !id) return Fail(STORE_EINVAL, "client or id is NULL");
    flatbuffers::FlatBufferBuilder fbb(128);
    proto::ObjectId pid = ProtoId(id);
    std::unique_ptr<Reply> reply;
    return Call(client->conn, fbb, Body::UnpinRequest,
                proto::CreateUnpinRequest(fbb, &pid).Union(), Body::UnpinReply, &reply);
  });
}

namespace {
int LeaseCall(store_client* client, const store_object_id* id, bool unlease,
              uint32_t* lease_count) {
  return Guard([&]() -> int {
    if (lease_count) *lease_count = 0;
    if (!client || !id) return Fail(STORE_EINVAL, "client or id is NULL");
    flatbuffers::FlatBufferBuilder fbb(128);
    proto::ObjectId pid = ProtoId(id);
    std::unique_ptr<Reply> reply;
    int rc = Call(client->conn, fbb, Body::LeaseRequest,
                  proto::CreateLeaseRequest(fbb, &pid, unlease).Union(), Body::LeaseReply, &reply);
    if (rc != STORE_OK) return rc;
    if (lease_count) *lease_count = reply->msg->body_as_LeaseReply()->lease_count();
    return STORE_OK;
  });
}
}  // namespace

int store_lease(store_client* client, const store_object_id* id, uint32_t* lease_count) {
  return LeaseCall(client, id, false, lease_count);
}

int store_unlease(store_client* client, const store_object_id* id, uint32_t* lease_count) {
  return LeaseCall(client, id, true, lease_count);
}

namespace {
// Asks the store for its stats (store_stats_get and store_gpu_stats read different parts).
int CallStats(Conn* c, std::unique_ptr<Reply>* reply) {
  flatbuffers::FlatBufferBuilder fbb(64);
  return Call(c, fbb, Body::StatsRequest, proto::CreateStatsRequest(fbb).Union(),
              Body::StatsReply, reply);
}
}  // namespace

int store_stats_get(store_client* client, store_stats* stats) {
  return Guard([&]() -> int {
    if (!client || !stats) return Fail(STORE_EINVAL, "client or stats is NULL");
    if (int rc = CheckOutStruct(stats, "store_stats"); rc != STORE_OK) return rc;
    const size_t caller_size = stats->struct_size;
    std::unique_ptr<Reply> reply;
    if (int rc = CallStats(client->conn, &reply); rc != STORE_OK) return rc;
    auto* s = reply->msg->body_as_StatsReply();
    // Filled in whole here, then copied out at the caller's size.
    store_stats full{};
    full.capacity_bytes = s->capacity_bytes();
    full.used_bytes = s->used_bytes();
    full.object_count = s->object_count();
    full.client_count = s->client_count();
    full.created_count = s->created_count();
    full.sealed_count = s->sealed_count();
    full.created_bytes = s->created_bytes();
    full.sealed_bytes = s->sealed_bytes();
    full.pinned_count = s->pinned_count();
    full.pinned_bytes = s->pinned_bytes();
    full.open_count = s->open_count();
    full.open_bytes = s->open_bytes();
    full.deleted_pending_count = s->deleted_pending_count();
    full.deleted_pending_bytes = s->deleted_pending_bytes();
    full.waiting_gets = s->waiting_gets();
    full.waiting_creates = s->waiting_creates();
    full.total_creates = s->total_creates();
    full.total_seals = s->total_seals();
    full.total_gets = s->total_gets();
    full.total_releases = s->total_releases();
    full.total_deletes = s->total_deletes();
    full.total_aborts = s->total_aborts();
    full.total_full = s->total_full();
    full.uptime_ns = s->uptime_ns();
    full.server_pid = s->server_pid();
    full.largest_free_bytes = s->largest_free_bytes();
    full.resident_bytes = s->resident_bytes();
    full.total_contains = s->total_contains();
    full.total_infos = s->total_infos();
    full.total_lists = s->total_lists();
    full.total_pins = s->total_pins();
    full.total_unpins = s->total_unpins();
    full.total_requests = s->total_requests();
    full.total_bad_requests = s->total_bad_requests();
    full.spilling_count = s->spilling_count();
    full.spilling_bytes = s->spilling_bytes();
    full.spilled_count = s->spilled_count();
    full.spilled_bytes = s->spilled_bytes();
    full.restoring_count = s->restoring_count();
    full.restoring_bytes = s->restoring_bytes();
    full.evictable_bytes = s->evictable_bytes();
    full.spill_enabled = s->spill_enabled() ? 1 : 0;
    full.spill_files = s->spill_files();
    full.spill_disk_bytes = s->spill_disk_bytes();
    full.spill_dead_bytes = s->spill_dead_bytes();
    full.total_spilled_objects = s->total_spilled_objects();
    full.total_spilled_bytes = s->total_spilled_bytes();
    full.total_spill_ns = s->total_spill_ns();
    full.total_restored_objects = s->total_restored_objects();
    full.total_restored_bytes = s->total_restored_bytes();
    full.total_restore_ns = s->total_restore_ns();
    full.total_spill_failures = s->total_spill_failures();
    full.total_restore_failures = s->total_restore_failures();
    full.waiting_bytes = s->waiting_bytes();
    full.backlog_bytes = s->backlog_bytes();
    full.partial_bytes = s->partial_bytes();
    full.pending_fds = s->pending_fds();
    full.limit_client_waiting = s->limit_client_waiting();
    full.limit_waiting_bytes = s->limit_waiting_bytes();
    full.limit_client_backlog = s->limit_client_backlog();
    full.limit_backlog = s->limit_backlog();
    full.limit_partial_bytes = s->limit_partial_bytes();
    full.limit_clients = s->limit_clients();
    full.limit_client_gpu_fds = s->limit_client_gpu_fds();
    full.fd_limit = s->fd_limit();
    full.refused_client_waiting = s->refused_client_waiting();
    full.refused_waiting_bytes = s->refused_waiting_bytes();
    full.closed_client_backlog = s->closed_client_backlog();
    full.closed_backlog = s->closed_backlog();
    full.closed_partial = s->closed_partial();
    full.refused_clients = s->refused_clients();
    full.accept_failures = s->accept_failures();
    full.refused_gpu_fds = s->refused_gpu_fds();
    full.instance_id = s->instance_id();
    full.start_time_ns = s->start_time_ns();
    full.when_full_drop = s->when_full_drop() ? 1 : 0;
    full.total_dropped_objects = s->total_dropped_objects();
    full.total_dropped_bytes = s->total_dropped_bytes();
    full.total_compactions = s->total_compactions();
    full.total_compact_bytes_copied = s->total_compact_bytes_copied();
    full.total_compact_bytes_freed = s->total_compact_bytes_freed();
    full.total_compact_failures = s->total_compact_failures();
    full.limit_objects = s->limit_objects();
    full.refused_objects = s->refused_objects();
    full.spill_undurable_deletes = s->spill_undurable_deletes();
    storeclient::WriteOutStruct(full, stats, caller_size);
    return STORE_OK;
  });
}

int store_gpu_stats(store_client* client, store_gpu_device_stats** out, size_t elem_size,
                    size_t* count, int* backend) {
  return Guard([&]() -> int {
    if (backend) *backend = STORE_GPU_BACKEND_NONE;
    if (int rc = BeginList(client, out, elem_size, count, "store_gpu_device_stats");
        rc != STORE_OK) {
      return rc;
    }
    // The store said at connect what backs its GPU objects, for its lifetime: with none there
    // are no devices to ask about (store-top and store info call this on every refresh).
    if (client->conn->gpu_backend == storeclient::gpu::Backend::kNone) {
      return Usable(client->conn) ? STORE_OK : BrokenError(client->conn);
    }
    std::unique_ptr<Reply> reply;
    if (int rc = CallStats(client->conn, &reply); rc != STORE_OK) return rc;
    auto* s = reply->msg->body_as_StatsReply();
    if (backend) *backend = static_cast<int>(s->gpu_backend());
    auto* gpus = s->gpus();
    if (!gpus) return STORE_OK;
    return CopyOut(gpus, out, elem_size, count, "devices", [&](flatbuffers::uoffset_t i) {
      const proto::GpuDeviceStats* g = gpus->Get(i);
      store_gpu_device_stats v{};
      v.device = g->device();
      v.chunks = g->chunks();
      v.capacity_bytes = g->capacity_bytes();
      v.used_bytes = g->used_bytes();
      v.object_count = g->object_count();
      v.chunk_size = g->chunk_size();
      v.largest_free_bytes = g->largest_free_bytes();
      return v;
    });
  });
}

int store_set_importance(store_client* client, const store_object_id* id, int32_t importance) {
  return Guard([&]() -> int {
    if (!client || !id) return Fail(STORE_EINVAL, "client or id is NULL");
    flatbuffers::FlatBufferBuilder fbb(128);
    proto::ObjectId pid = ProtoId(id);
    std::unique_ptr<Reply> reply;
    return Call(client->conn, fbb, Body::SetImportanceRequest,
                proto::CreateSetImportanceRequest(fbb, &pid, importance).Union(),
                Body::SetImportanceReply, &reply);
  });
}

int store_prefetch(store_client* client, const store_object_id* ids, size_t n) {
  return Guard([&]() -> int {
    if (!client || (n && !ids)) return Fail(STORE_EINVAL, "client or ids is NULL");
    if (!client->conn->OwnedByThisProcess()) return InheritedError(client->conn);
    for (size_t start = 0; start < n; start += proto::kMaxIdsPerRequest) {
      size_t k = std::min<size_t>(n - start, proto::kMaxIdsPerRequest);
      flatbuffers::FlatBufferBuilder fbb(64 + 24 * k);
      auto vec = IdVector(fbb, ids + start, k);
      std::unique_ptr<Reply> reply;
      int rc = Call(client->conn, fbb, Body::PrefetchRequest,
                    proto::CreatePrefetchRequest(fbb, vec).Union(), Body::PrefetchReply, &reply);
      if (rc != STORE_OK) return rc;
    }
    return STORE_OK;
  });
}

int store_evict(store_client* client, uint64_t bytes, uint64_t* spilled) {
  return Guard([&]() -> int {
    if (spilled) *spilled = 0;
    if (!client) return Fail(STORE_EINVAL, "client is NULL");
    flatbuffers::FlatBufferBuilder fbb(64);
    std::unique_ptr<Reply> reply;
    int rc = Call(client->conn, fbb, Body::EvictRequest,
                  proto::CreateEvictRequest(fbb, bytes).Union(), Body::EvictReply, &reply);
    if (rc != STORE_OK) return rc;
    if (spilled) *spilled = reply->msg->body_as_EvictReply()->spilled();
    return STORE_OK;
  });
}

int store_spill_url(store_client* client, const store_object_id* id, char* buf, size_t len) {
  return Guard([&]() -> int {
    if (buf && len) buf[0] = '\0';
    if (!client || !id || !buf) return Fail(STORE_EINVAL, "client, id or buf is NULL");
    flatbuffers::FlatBufferBuilder fbb(128);
    proto::ObjectId pid = ProtoId(id);
    std::unique_ptr<Reply> reply;
    int rc = Call(client->conn, fbb, Body::InfoRequest, proto::CreateInfoRequest(fbb, &pid).Union(),
                  Body::InfoReply, &reply);
    if (rc != STORE_OK) return rc;
    auto* url = reply->msg->body_as_InfoReply()->spill_url();
    if (!url || url->size() == 0) {
      char hex[41];
      store_object_id_to_hex(id, hex, sizeof hex);
      return Fail(STORE_ENOTFOUND, "object %s has no copy on disk", hex);
    }
    if (url->size() + 1 > len) {
      return Fail(STORE_EINVAL, "the URL needs %u bytes, the buffer has %zu", url->size() + 1, len);
    }
    std::memcpy(buf, url->data(), url->size());
    buf[url->size()] = '\0';
    return STORE_OK;
  });
}

int store_list_spill_files(store_client* client, store_spill_file_info** out, size_t elem_size,
                           size_t* count) {
  return Guard([&]() -> int {
    if (int rc = BeginList(client, out, elem_size, count, "store_spill_file_info");
        rc != STORE_OK) {
      return rc;
    }
    OutArray<store_spill_file_info> all(elem_size);
    uint64_t after = 0;
    do {
      flatbuffers::FlatBufferBuilder fbb(64);
      std::unique_ptr<Reply> reply;
      int rc = Call(client->conn, fbb, Body::SpillFilesRequest,
                    proto::CreateSpillFilesRequest(fbb, after).Union(), Body::SpillFilesReply,
                    &reply);
      if (rc != STORE_OK) return rc;
      auto* r = reply->msg->body_as_SpillFilesReply();
      auto* files = r->files();
      if (!all.Grow(files->size())) {
        return Fail(STORE_ENOMEM, "out of memory for %zu spill files", all.size + files->size());
      }
      for (flatbuffers::uoffset_t i = 0; i < files->size(); i++) {
        const proto::SpillFileInfo* f = files->Get(i);
        store_spill_file_info o{};
        if (f->path()) {
          size_t n = std::min<size_t>(f->path()->size(), sizeof o.path - 1);
          std::memcpy(o.path, f->path()->data(), n);
        }
        o.size = f->size();
        o.live_objects = f->live_objects();
        o.live_bytes = f->live_bytes();
        o.dead_bytes = f->dead_bytes();
        o.created_time_ns = f->created_ns();
        all.Put(o);
      }
      if (r->next() != 0 && r->next() <= after) {
        MarkBroken(client->conn, STORE_EPROTO, "the store's list of spill files makes no progress");
        return BrokenError(client->conn);
      }
      after = r->next();
    } while (after != 0);
    all.Release(out, count);
    return STORE_OK;
  });
}

int store_list_clients(store_client* client, store_client_info** out, size_t elem_size,
                       size_t* count) {
  return Guard([&]() -> int {
    if (int rc = BeginList(client, out, elem_size, count, "store_client_info"); rc != STORE_OK) {
      return rc;
    }
    flatbuffers::FlatBufferBuilder fbb(64);
    std::unique_ptr<Reply> reply;
    int rc = Call(client->conn, fbb, Body::ClientsRequest, proto::CreateClientsRequest(fbb).Union(),
                  Body::ClientsReply, &reply);
    if (rc != STORE_OK) return rc;
    auto* r = reply->msg->body_as_ClientsReply();
    auto* list = r->clients();
    return CopyOut(list, out, elem_size, count, "clients", [&](flatbuffers::uoffset_t i) {
      const proto::ClientInfo* k = list->Get(i);
      store_client_info o{};
      o.client_id = k->client_id();
      if (k->name()) {
        size_t n = std::min<size_t>(k->name()->size(), sizeof o.name - 1);
        std::memcpy(o.name, k->name()->data(), n);
        o.name[n] = '\0';
      }
      o.pid = k->pid();
      o.uid = k->uid();
      o.objects_created = k->objects_created();
      o.creating_count = k->creating();
      o.readers_held = k->readers();
      o.pins_held = k->pins();
      o.bytes_held = k->bytes_held();
      o.connect_time_ns = k->connect_time_ns();
      o.requests = k->requests();
      o.is_self = k->client_id() == r->self_id();
      return o;
    });
  });
}

int store_list_page(store_client* client, const store_list_options* opts, store_object_info** out,
                    size_t elem_size, size_t* count, uint64_t* total) {
  return Guard([&]() -> int {
    if (total) *total = 0;
    if (int rc = BeginList(client, out, elem_size, count, "store_object_info"); rc != STORE_OK) {
      return rc;
    }
    static const store_list_options kDefaults = STORE_LIST_OPTIONS_INIT;
    if (!opts) opts = &kDefaults;
    if (opts->version != STORE_LIST_OPTIONS_VERSION) {
      return Fail(STORE_EINVAL, "store_list_options.version is %u; this library knows %u",
                  opts->version, STORE_LIST_OPTIONS_VERSION);
    }
    if (opts->sort > STORE_SORT_STATE) return Fail(STORE_EINVAL, "unknown sort key %u", opts->sort);
    if (opts->limit > STORE_MAX_PAGE_OBJECTS) {
      return Fail(STORE_EINVAL, "limit %u is over STORE_MAX_PAGE_OBJECTS", opts->limit);
    }
    std::vector<uint8_t> prefix;
    size_t nibbles = 0;
    if (opts->id_prefix) {
      for (const char* p = opts->id_prefix; *p; p++, nibbles++) {
        char ch = *p;
        int v = ch >= '0' && ch <= '9' ? ch - '0'
                : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
                : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10 : -1;
        if (v < 0 || nibbles >= 40) {
          return Fail(STORE_EINVAL, "id_prefix must be at most 40 hex digits: '%.48s'",
                      opts->id_prefix);
        }
        if (nibbles % 2 == 0) {
          prefix.push_back(static_cast<uint8_t>(v << 4));
        } else {
          prefix.back() |= static_cast<uint8_t>(v);
        }
      }
    }
    flatbuffers::FlatBufferBuilder fbb(128);
    auto pv = fbb.CreateVector(prefix);
    auto body = proto::CreateObjectsRequest(fbb, static_cast<proto::SortKey>(opts->sort),
                                            opts->descending != 0, opts->offset, opts->limit, pv,
                                            static_cast<uint32_t>(nibbles));
    std::unique_ptr<Reply> reply;
    int rc = Call(client->conn, fbb, Body::ObjectsRequest, body.Union(), Body::ObjectsReply, &reply);
    if (rc != STORE_OK) return rc;
    auto* r = reply->msg->body_as_ObjectsReply();
    if (total) *total = r->total();
    auto* objs = r->objects();
    return CopyOut(objs, out, elem_size, count, "objects",
                   [&](flatbuffers::uoffset_t i) { return FromProto(*objs->Get(i)); });
  });
}

}  // extern "C"
