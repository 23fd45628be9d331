// introspection.cpp - requests that look and change nothing: contains, info, list, stats,
// clients and objects (the pages store-top shows), and spill files.
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cstring>

#include "server/log.h"
#include "server/server.h"
#include "server/server_internal.h"
#include "server/util.h"
#include "spill/spill_file.h"
#include "storeclient.h"

namespace store {

using proto::Body;

// ------------------------------------------------------------------------------------------
// Contains, info, list.

void Server::HandleContains(Client* c, uint64_t seq, const proto::ContainsRequest* r) {
  auto ids = r->ids();
  if (ids->size() > proto::kMaxIdsPerRequest) {
    return SendError(c, seq, STORE_EINVAL,
                     "contains names at most " + std::to_string(proto::kMaxIdsPerRequest) + " ids");
  }
  totals_.contains += ids->size();
  fbb_.Clear();
  std::vector<uint8_t> present(ids->size());
  for (size_t i = 0; i < ids->size(); i++) {
    Object* o = table_.Find(KeyOf(ids->Get(i)));
    present[i] = o && o->state != ObjectState::kCreated;
  }
  auto vec = fbb_.CreateVector(present);
  SendEmpty(c, seq, Body::ContainsReply, proto::CreateContainsReply(fbb_, vec).Union());
}

proto::ObjectInfo Server::InfoOf(const Object& o) const {
  uint32_t level = 0;
  if (o.in_memory()) level |= o.device >= 0 ? STORE_LEVEL_GPU : STORE_LEVEL_MEMORY;
  if (o.spill_file) level |= STORE_LEVEL_DISK;
  uint32_t leases = 0;
  if (!leases_.empty()) {
    auto it = leases_.find(o.uid);
    if (it != leases_.end()) leases = it->second.count;
  }
  return proto::ObjectInfo(proto::ToProto(o.id.bytes), o.data_size, o.metadata_size,
                           static_cast<uint32_t>(o.state), level, o.device, o.importance, o.pins,
                           o.readers, o.create_ns, o.access_ns, o.creator_pid, leases);
}

void Server::HandleInfo(Client* c, uint64_t seq, const proto::InfoRequest* r) {
  totals_.infos++;
  ObjectKey id = KeyOf(r->id());
  Object* o = table_.Find(id);
  if (!o) return SendError(c, seq, STORE_ENOTFOUND, "object " + Hex(id) + " does not exist");
  fbb_.Clear();
  proto::ObjectInfo info = InfoOf(*o);
  flatbuffers::Offset<flatbuffers::String> url;
  if (o->spill_file) {
    url = fbb_.CreateString(spill::SpillUrl(o->spill_file->path, o->spill_offset, o->spill_size()));
  }
  SendEmpty(c, seq, Body::InfoReply, proto::CreateInfoReply(fbb_, &info, url).Union());
}

void Server::HandleList(Client* c, uint64_t seq, const proto::ListRequest* r) {
  uint32_t limit = r->limit();
  if (limit == 0 || limit > proto::kMaxListPage) limit = proto::kMaxListPage;
  if (r->cursor() == 0) {
    // The objects there now: those up to the newest uid, paged in uid order. Nothing is copied.
    totals_.lists++;
    auto l = std::make_unique<ListCursor>();
    l->id = next_list_id_++;
    l->upto = table_.last_uid();
    l->total = table_.visible();
    c->list = std::move(l);
  } else if (!c->list || c->list->id != r->cursor()) {
    return SendError(c, seq, STORE_EINVAL,
                     "unknown list cursor (a list was started again, or it ended)");
  }
  ListCursor& l = *c->list;
  std::vector<proto::ObjectInfo> page;
  page.reserve(std::min<uint64_t>(limit, l.total));
  bool more = false;
  table_.ForEachVisibleBetween(l.after, l.upto, [&](const Object& o) {
    if (page.size() == limit) {
      more = true;  // one more is there: the next page starts with it
      return false;
    }
    page.push_back(InfoOf(o));
    l.after = o.uid;
    return true;
  });
  const uint64_t total = l.total;
  const uint64_t cursor = more ? l.id : 0;
  if (cursor == 0) c->list.reset();
  fbb_.Clear();
  auto vec = fbb_.CreateVectorOfStructs(page);
  SendEmpty(c, seq, Body::ListReply, proto::CreateListReply(fbb_, vec, cursor, total).Union());
}

// ------------------------------------------------------------------------------------------
// Stats, clients, objects.

void Server::HandleStats(Client* c, uint64_t seq) {
  const auto& t = table_.counters();
  uint64_t largest_free = region_->LargestFree();
  fbb_.Clear();
  auto gpus = GpuStats();
  proto::StatsReplyBuilder b(fbb_);
  b.add_gpu_backend(GpuBackendKind());
  b.add_gpus(gpus);
  b.add_capacity_bytes(region_->capacity());
  b.add_used_bytes(region_->allocated_bytes());
  b.add_object_count(t.objects);
  b.add_client_count(clients_.size());
  b.add_created_count(t.created_count);
  b.add_sealed_count(t.sealed_count);
  b.add_created_bytes(t.created_bytes);
  b.add_sealed_bytes(t.sealed_bytes);
  b.add_pinned_count(t.pinned_count);
  b.add_pinned_bytes(t.pinned_bytes);
  b.add_open_count(t.open_count);
  b.add_open_bytes(t.open_bytes);
  b.add_deleted_pending_count(t.deleted_pending_count);
  b.add_deleted_pending_bytes(t.deleted_pending_bytes);
  b.add_waiting_gets(waiting_gets_);
  b.add_waiting_creates(create_queue_.size() + gpu_waiting_);
  b.add_total_creates(totals_.creates);
  b.add_total_seals(totals_.seals);
  b.add_total_gets(totals_.gets);
  b.add_total_releases(totals_.releases);
  b.add_total_deletes(totals_.deletes);
  b.add_total_aborts(totals_.aborts);
  b.add_total_full(totals_.full);
  b.add_uptime_ns(static_cast<uint64_t>(MonotonicNs() - start_ns_));
  b.add_server_pid(static_cast<int32_t>(getpid()));
  b.add_largest_free_bytes(largest_free);
  b.add_resident_bytes(region_->ResidentBytes());
  b.add_total_contains(totals_.contains);
  b.add_total_infos(totals_.infos);
  b.add_total_lists(totals_.lists);
  b.add_total_pins(totals_.pins);
  b.add_total_unpins(totals_.unpins);
  b.add_total_requests(totals_.requests);
  b.add_total_bad_requests(totals_.bad_requests);
  b.add_spilling_count(t.spilling_count);
  b.add_spilling_bytes(t.spilling_bytes);
  b.add_spilled_count(t.spilled_count);
  b.add_spilled_bytes(t.spilled_bytes);
  b.add_restoring_count(t.restoring_count);
  b.add_restoring_bytes(t.restoring_bytes);
  b.add_evictable_bytes(t.evictable_bytes);
  b.add_spill_enabled(spiller_.enabled());
  uint64_t disk = 0, dead = 0;
  spiller_.DiskBytes(&disk, &dead);
  b.add_spill_files(spiller_.files().size());
  b.add_spill_disk_bytes(disk);
  b.add_spill_dead_bytes(dead);
  b.add_total_spilled_objects(spiller_.totals().objects);
  b.add_total_spilled_bytes(spiller_.totals().bytes);
  b.add_total_spill_ns(spiller_.totals().ns);
  b.add_total_restored_objects(spiller_.totals().restored_objects);
  b.add_total_restored_bytes(spiller_.totals().restored_bytes);
  b.add_total_restore_ns(spiller_.totals().restore_ns);
  b.add_total_spill_failures(spiller_.totals().failures);
  b.add_total_restore_failures(spiller_.totals().restore_failures);
  // Limits (server/limits.cpp).
  b.add_waiting_bytes(waiting_bytes_);
  b.add_backlog_bytes(backlog_bytes_);
  b.add_partial_bytes(partial_bytes_);
  b.add_pending_fds(pending_fds_);
  b.add_limit_client_waiting(options_.max_client_waiting);
  b.add_limit_waiting_bytes(options_.max_waiting_bytes);
  b.add_limit_client_backlog(options_.max_client_backlog);
  b.add_limit_backlog(options_.max_backlog);
  b.add_limit_partial_bytes(options_.max_partial_bytes);
  b.add_limit_clients(max_clients_);
  b.add_limit_client_gpu_fds(options_.max_client_gpu_fds);
  b.add_fd_limit(fd_limit_);
  b.add_refused_client_waiting(limits_[kLimitClientWaiting].hits);
  b.add_refused_waiting_bytes(limits_[kLimitWaitingBytes].hits);
  b.add_closed_client_backlog(limits_[kLimitClientBacklog].hits);
  b.add_closed_backlog(limits_[kLimitBacklog].hits);
  b.add_closed_partial(limits_[kLimitPartial].hits);
  b.add_refused_clients(limits_[kLimitClients].hits);
  b.add_accept_failures(limits_[kLimitAccept].hits);
  b.add_refused_gpu_fds(limits_[kLimitGpuFds].hits);
  b.add_instance_id(instance_id_);
  b.add_start_time_ns(start_realtime_ns_);
  b.add_when_full_drop(DropMode());
  b.add_total_dropped_objects(drop_totals_.objects);
  b.add_total_dropped_bytes(drop_totals_.bytes);
  const Spiller::CompactTotals& compact = spiller_.compact_totals();
  b.add_total_compactions(compact.files);
  b.add_total_compact_bytes_copied(compact.bytes_copied);
  b.add_total_compact_bytes_freed(compact.bytes_freed);
  b.add_total_compact_failures(compact.failures);
  b.add_limit_objects(max_objects_);
  b.add_refused_objects(limits_[kLimitObjects].hits);
  b.add_spill_undurable_deletes(spiller_.undurable_deletes());
  auto body = b.Finish();
  SendEmpty(c, seq, Body::StatsReply, body.Union());
}

void Server::HandleClients(Client* c, uint64_t seq) {
  fbb_.Clear();
  std::vector<flatbuffers::Offset<proto::ClientInfo>> infos;
  infos.reserve(clients_.size());
  for (auto& [id, k] : clients_) {
    // Counted as they change (Server::Hold): a request costs nothing per object held.
    auto name = fbb_.CreateString(k->name);
    proto::ClientInfoBuilder b(fbb_);
    b.add_client_id(k->id);
    b.add_name(name);
    b.add_pid(k->pid);
    b.add_uid(static_cast<uint32_t>(k->uid));
    b.add_objects_created(k->objects_created);
    b.add_creating(k->creating.size());
    b.add_readers(k->readers_held);
    b.add_pins(k->pins_held);
    b.add_bytes_held(k->bytes_held);
    b.add_connect_time_ns(k->connect_ns);
    b.add_requests(k->requests);
    infos.push_back(b.Finish());
  }
  auto vec = fbb_.CreateVector(infos);
  SendEmpty(c, seq, Body::ClientsReply, proto::CreateClientsReply(fbb_, vec, c->id).Union());
}

namespace {
// memcmp's order of two ids, 8 bytes at a time and inline: a page sorted by a key most objects
// share compares ids for nearly every object of the table. Words loaded big-endian compare as
// their bytes do.
template <class T>
inline T LoadBig(const uint8_t* p) {
  T x;
  std::memcpy(&x, p, sizeof x);
  if constexpr (std::endian::native == std::endian::little) {
    if constexpr (sizeof x == 8) x = __builtin_bswap64(x);
    if constexpr (sizeof x == 4) x = __builtin_bswap32(x);
  }
  return x;
}
inline bool IdLess(const ObjectKey& a, const ObjectKey& b) {
  for (size_t i = 0; i < 16; i += 8) {
    uint64_t x = LoadBig<uint64_t>(a.bytes + i), y = LoadBig<uint64_t>(b.bytes + i);
    if (x != y) return x < y;
  }
  return LoadBig<uint32_t>(a.bytes + 16) < LoadBig<uint32_t>(b.bytes + 16);
}

// The first `want` visible objects of the table in `order` (of those that `match`, if filter)
// into *out, sorted, from a bounded heap: one pass, O(n log want). Returns how many matched.
// Out of line, with everything it calls inlined (flatten): once a selection's sorts sat beside
// it in HandleObjects, the compiler called the comparator once per object, and a page 20,000
// deep in a million objects took 40-47 ms instead of 28.
template <class Match, class Order>
__attribute__((noinline, flatten)) uint64_t FirstRanks(const ObjectTable& table, uint64_t want,
                                                       bool filter, const Match& match,
                                                       const Order& order,
                                                       std::vector<const Object*>* out) {
  std::vector<const Object*>& heap = *out;
  heap.reserve(want);
  uint64_t total = 0;
  table.ForEachVisible([&](const Object& o) {
    if (filter && !match(o)) return;
    total++;
    if (want == 0) return;
    if (heap.size() < want) {
      heap.push_back(&o);
      std::push_heap(heap.begin(), heap.end(), order);
    } else if (order(&o, heap.front())) {
      std::pop_heap(heap.begin(), heap.end(), order);
      heap.back() = &o;
      std::push_heap(heap.begin(), heap.end(), order);
    }
  });
  std::sort_heap(heap.begin(), heap.end(), order);
  return total;
}

// Puts the elements of v at ranks [begin, end) of order in v[begin, end), sorted: O(n) expected.
template <class Order>
__attribute__((noinline)) void SelectRanks(std::vector<const Object*>& v, uint64_t begin,
                                           uint64_t end, const Order& order) {
  auto at = [&](uint64_t i) { return v.begin() + static_cast<ptrdiff_t>(i); };
  std::nth_element(v.begin(), at(begin), v.end(), order);
  if (end < v.size()) std::nth_element(at(begin), at(end), v.end(), order);
  std::sort(at(begin), at(end), order);
}

}  // namespace

void Server::HandleObjects(Client* c, uint64_t seq, const proto::ObjectsRequest* r) {
  if (r->limit() > proto::kMaxPageObjects) {
    return SendError(c, seq, STORE_EINVAL,
                     "a page holds at most " + std::to_string(proto::kMaxPageObjects) + " objects");
  }
  uint32_t nibbles = r->prefix_nibbles();
  const auto* prefix = r->prefix();
  uint32_t have = prefix ? prefix->size() : 0;
  if (nibbles > 40 || (nibbles + 1) / 2 > have) {
    return SendError(c, seq, STORE_EINVAL, "the id prefix is longer than its bytes or than an id");
  }
  auto matches = [&](const Object& o) {
    for (uint32_t i = 0; i < nibbles; i++) {
      uint8_t want = prefix->Get(i / 2), got = o.id.bytes[i / 2];
      if (i % 2 == 0 ? (want >> 4) != (got >> 4) : (want & 15) != (got & 15)) return false;
    }
    return true;
  };
  auto key = r->sort();
  bool desc = r->descending();
  auto less = [key](const Object* a, const Object* b) {
    switch (key) {
      case proto::SortKey::Size:
        if (a->data_size != b->data_size) return a->data_size < b->data_size;
        break;
      case proto::SortKey::Created:
        if (a->create_ns != b->create_ns) return a->create_ns < b->create_ns;
        break;
      case proto::SortKey::LastAccess:
        if (a->access_ns != b->access_ns) return a->access_ns < b->access_ns;
        break;
      case proto::SortKey::Importance:
        if (a->importance != b->importance) return a->importance < b->importance;
        break;
      case proto::SortKey::State:
        if (a->state != b->state) return a->state < b->state;
        break;
      default:
        break;
    }
    return IdLess(a->id, b->id);
  };
  // A page past the middle is the same rows as a page from the other end in reverse order:
  // keep whichever end is nearer, so the last page costs what the first does.
  uint64_t visible = table_.visible();
  uint64_t offset = std::min<uint64_t>(r->offset(), visible);
  uint64_t limit = std::min<uint64_t>(r->limit(), visible - offset);
  bool from_end = nibbles == 0 && offset > visible / 2;
  if (from_end) {
    desc = !desc;
    offset = visible - offset - limit;
  }
  auto order = [&](const Object* a, const Object* b) { return desc ? less(b, a) : less(a, b); };
  // The page is the objects at ranks [offset, offset + limit) in that order. A page near the
  // front (the common one) comes from a bounded heap of the first offset+limit: one pass,
  // O(n log k), memory for k pointers. A deeper one from a selection over them all: O(n)
  // expected whatever the offset, memory for n pointers (in a table of two million, a heap of a
  // million took 1.6 s, of 65,400 0.23 s, the selection 0.13 s).
  constexpr uint64_t kMaxHeap = 32768;
  uint64_t want = std::min<uint64_t>(offset + limit, visible);
  std::vector<const Object*> heap;
  uint64_t total = 0;
  const bool select = want > kMaxHeap;
  if (!select) {
    total = FirstRanks(table_, want, nibbles != 0, matches, order, &heap);
  } else {
    heap.reserve(visible);
    table_.ForEachVisible([&](const Object& o) {
      if (!nibbles || matches(o)) heap.push_back(&o);
    });
    total = heap.size();
  }
  const uint64_t begin = std::min<uint64_t>(offset, heap.size());
  const uint64_t end = std::min<uint64_t>(heap.size(), begin + limit);
  if (select) SelectRanks(heap, begin, end, order);
  if (from_end) {
    std::reverse(heap.begin() + static_cast<ptrdiff_t>(begin),
                 heap.begin() + static_cast<ptrdiff_t>(end));
  }
  const auto& all = heap;
  fbb_.Clear();
  proto::ObjectInfo* infos = nullptr;
  auto vec = fbb_.CreateUninitializedVectorOfStructs(end - begin, &infos);
  for (uint64_t i = begin; i < end; i++) infos[i - begin] = InfoOf(*all[i]);
  SendEmpty(c, seq, Body::ObjectsReply, proto::CreateObjectsReply(fbb_, total, vec).Union());
}

void Server::HandleSpillFiles(Client* c, uint64_t seq, const proto::SpillFilesRequest* r) {
  uint32_t limit = r->limit();
  if (limit == 0 || limit > proto::kMaxSpillFilesPage) limit = proto::kMaxSpillFilesPage;
  // The files after the last one listed, in id order: O(log n) to find the first.
  std::vector<const SpillFile*> after;
  const auto& all = spiller_.files();
  auto it = all.upper_bound(r->after());
  for (; it != all.end() && after.size() < limit; ++it) after.push_back(it->second.get());
  const bool more = it != all.end();
  fbb_.Clear();
  std::vector<flatbuffers::Offset<proto::SpillFileInfo>> files;
  for (const SpillFile* f : after) {
    auto path = fbb_.CreateString(f->path);
    files.push_back(proto::CreateSpillFileInfo(fbb_, path, f->size, f->live_objects,
                                               f->live_bytes, f->dead_bytes, f->created_ns));
  }
  auto vec = fbb_.CreateVector(files);
  uint64_t next = more ? after.back()->id : 0;
  SendEmpty(c, seq, Body::SpillFilesReply, proto::CreateSpillFilesReply(fbb_, vec, next).Union());
}

}  // namespace store
