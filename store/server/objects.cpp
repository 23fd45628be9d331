// objects.cpp - requests that change objects: create, seal, abort, delete, pin, unpin, lease,
// importance, evict and prefetch; the creates waiting for memory, Pump (which serves them and the
// restores, and asks the Spiller for room), --when-full drop, and freeing objects.
#include <algorithm>
#include <cinttypes>
#include <cstring>

#include "server/log.h"
#include "server/server.h"
#include "server/server_internal.h"
#include "server/util.h"
#include "storeclient.h"

namespace store {

using proto::Body;

// ------------------------------------------------------------------------------------------
// Create, seal, abort.

std::string Server::FullMessage(uint64_t want) const {
  const auto& t = table_.counters();
  std::string leased, dropping;
  if (DropMode()) {
    // What leases hold, and what could be dropped: the unused objects without a lease (leased
    // ones are not evictable in drop mode).
    leased = ", " + Bytes(t.lease_kept_bytes) + " leased";
    dropping = "; dropping the " + Bytes(t.evictable_bytes) +
               " of objects nobody uses would not make room";
  }
  return "the store is full: " + Bytes(want) + " requested, " +
         Bytes(region_->allocated_bytes()) + " of " + Bytes(region_->capacity()) +
         " in use (" + Bytes(t.open_bytes) + " held by open readers, " + Bytes(t.pinned_bytes) +
         " pinned" + leased + ", " + Bytes(t.created_bytes) + " being written, " +
         Bytes(t.deleted_pending_bytes) + " deleted but still read)" + dropping;
}

bool Server::CreatedLeased(const Object* o) const {
  if (leases_.empty()) return false;
  auto it = leases_.find(o->uid);
  return it != leases_.end() && it->second.auto_delete;
}

// ------------------------------------------------------------------------------------------
// --when-full drop: a cache. Without a spill directory, a create that does not fit deletes the
// least valuable objects nobody uses, in the spiller's order (lowest importance, then least
// recently used, among sealed objects with no reader, pin or lease: in this mode leased objects
// are out of that order, see KeepLeased), until it fits. Each is deleted as store_delete
// deletes (unlinked, then freed: nobody reads it).
// When all of them would not free enough bytes, none is dropped and the create waits or fails
// as it would without the flag; a release, an unpin, an unlease, a seal or a disconnect that
// makes an object droppable pumps the waiting creates again. Victims are chosen by bytes; when
// the freed bytes are not in one piece, the next candidates go one at a time until it fits (so
// with the free pages cut up by objects that must stay, more may go than the create needed),
// but only if dropping them all could make a run long enough (Region::FitsIfFreed).
// GPU objects are never candidates, and device memory is never made by dropping.

void Server::KeepLeased(Object* o, bool kept) {
  if (!DropMode() || o->lease_kept == kept) return;
  table_.Mutate(o, [kept](Object* x) { x->lease_kept = kept; });
}

bool Server::NoRoomStands(uint64_t size) {
  if (size < no_room_.size) return false;
  if (no_room_.epoch == region_->free_count() + table_.evictable_joins()) return true;
  const int64_t now = MonotonicNs();
  if (now >= no_room_.recheck_ns) return false;
  // Standing: asked again once its time is over, by a pump from the timer.
  if (!room_timer_active_ && !stopping_) {
    const int64_t ms = (no_room_.recheck_ns - now + 999999) / 1000000;
    uv_timer_start(&room_timer_, OnRoomTimer, static_cast<uint64_t>(ms), 0);
    room_timer_active_ = true;
  }
  return true;
}

bool Server::RoomPossible(uint64_t size) {
  if (NoRoomStands(size)) return false;
  const int64_t t0 = MonotonicNs();
  // A "yes" stands as long (a stale one only spills or drops as if it were asked every time).
  if (size <= room_yes_.size && t0 < room_yes_.until_ns) return true;
  const uint64_t epoch = region_->free_count() + table_.evictable_joins();
  std::vector<uint64_t> offsets;
  table_.ForEachEvictable([&](Object* o) {
    if (o->data) offsets.push_back(region_->OffsetOf(o->data));
    return true;
  });
  const bool fits = region_->FitsIfFreed(size, offsets);
  const int64_t t1 = MonotonicNs();
  const int64_t stands_until = t1 + 20 * (t1 - t0);
  if (fits) {
    if (size >= no_room_.size) no_room_ = NoRoom{};  // that "no" was out of date
    room_yes_ = RoomYes{size, stands_until};
    return true;
  }
  // A new epoch, or a smaller size than the one known.
  no_room_ = NoRoom{epoch, size, stands_until};
  room_yes_ = RoomYes{};
  return false;
}

bool Server::SpillingMayFit(uint64_t size) {
  if (NoRoomStands(size)) return false;
  // Asked before any spilling for it: with more candidates than this, finding out could hold
  // the loop for milliseconds; it spills then, and asks once that is done (Pump).
  constexpr uint64_t kAskUpTo = 16384;
  return table_.counters().evictable_count > kAskUpTo || RoomPossible(size);
}

void Server::OnRoomTimer(uv_timer_t* t) {
  auto* s = static_cast<Server*>(t->data);
  s->room_timer_active_ = false;
  s->Pump();
}

void* Server::DropForRoom(uint64_t size, uint64_t* usable) {
  // Known not to make room: nothing to choose (choosing costs O(victims log victims)).
  if (NoRoomStands(size)) return nullptr;
  // Every object in the eviction order may go: leased ones are out of it in this mode.
  std::vector<Object*> victims = ChooseDrops(table_, region_->free_bytes(), size, {});
  // None chosen: all of them would not free enough bytes, or enough are free but not in one
  // piece (then the loop drops one candidate at a time).
  if (victims.empty() && region_->free_bytes() < size) return nullptr;
  bool could_fit = false;
  if (!victims.empty()) {
    // Before any goes: when these would not make a run long enough, go on only if dropping
    // every candidate could (else a create that cannot fit would drop them for nothing).
    std::vector<uint64_t> offsets;
    offsets.reserve(victims.size());
    for (const Object* o : victims) {
      if (o->data) offsets.push_back(region_->OffsetOf(o->data));
    }
    if (!region_->FitsIfFreedNear(size, offsets)) {
      if (!RoomPossible(size)) return nullptr;
      could_fit = true;
    }
  }
  DropTotals dropped;
  void* p = nullptr;
  size_t next = 0;
  while (true) {
    if (region_->free_bytes() >= size && (p = region_->Allocate(size, usable)) != nullptr) break;
    if (next == victims.size()) {
      // Enough bytes are free but not in one piece: the next candidate, one at a time. But only
      // if dropping every candidate could make a run long enough: where objects that stay cut
      // the memory up, it could not, and every droppable object would go for nothing.
      if (!could_fit) {
        if (!RoomPossible(size)) break;
        could_fit = true;
      }
      victims.clear();
      next = 0;
      table_.ForEachEvictable([&](Object* o) {
        victims.push_back(o);
        return false;
      });
      if (victims.empty()) break;
    }
    Object* o = victims[next++];
    dropped.objects++;
    dropped.bytes += o->data_size + o->metadata_size;
    DeleteObject(o);
  }
  NoteDrops(dropped.objects, dropped.bytes);
  return p;
}

void Server::NoteDrops(uint64_t objects, uint64_t bytes) {
  if (objects == 0) return;
  drop_totals_.objects += objects;
  drop_totals_.bytes += bytes;
  drop_unlogged_.objects += objects;
  drop_unlogged_.bytes += bytes;
  if (drop_log_.NowOrLater(stopping_)) FlushDropLog();
}

void Server::FlushDropLog() {
  if (drop_unlogged_.objects == 0) return;
  LOG_INFO("dropped %" PRIu64 " object%s (%s) to make room (--when-full drop)",
           drop_unlogged_.objects, drop_unlogged_.objects == 1 ? "" : "s",
           Bytes(drop_unlogged_.bytes).c_str());
  drop_unlogged_ = DropTotals{};
}

int Server::TryCreate(Client* c, const CreateArgs& a, Object** out, std::string* message) {
  if (table_.Find(a.id)) {
    *message = "object " + Hex(a.id) + " already exists";
    return STORE_EEXISTS;
  }
  if (!AdmitObject(c, message)) return STORE_ELIMIT;
  Object proto;
  if (a.device >= 0) {
    int rc = GpuAllocate(a.device, a.data_size, &proto, message);
    if (rc != STORE_OK) return rc;
  }
  // A GPU object keeps only its metadata here.
  uint64_t total = (a.device >= 0 ? 0 : a.data_size) + a.metadata.size();
  uint64_t usable = 0;
  void* p = total ? region_->Allocate(total, &usable) : nullptr;
  if (!p && total && DropMode()) p = DropForRoom(total, &usable);
  if (!p && total) {
    *message = FullMessage(total);
    if (a.device >= 0) GpuFree(&proto);
    return STORE_ENOSPACE;
  }
  proto.id = a.id;
  proto.data = static_cast<uint8_t*>(p);
  proto.data_size = a.data_size;
  proto.metadata_size = a.metadata.size();
  proto.alloc_size = usable;
  proto.creator = c->id;
  proto.creator_pid = c->pid;
  proto.create_ns = proto.access_ns = RealtimeNs();
  proto.importance = a.importance;
  proto.device = a.device;
  Object* o = table_.Insert(proto);
  if (!a.metadata.empty()) {
    std::memcpy(o->data + (o->on_gpu() ? 0 : o->data_size), a.metadata.data(), a.metadata.size());
  }
  totals_.creates++;
  c->objects_created++;
  if (a.leased) {
    leases_[o->uid] = LeaseState{1, true};
    c->leases[o->uid] = Client::HeldLease{o->id, 1};
    KeepLeased(o, true);
  }
  if (a.inline_put) {
    std::memcpy(o->data, a.inline_data.data(), a.data_size);
    SealObject(o);
  } else {
    Hold(c, o);
    c->creating.insert(o->uid);
  }
  *out = o;
  return STORE_OK;
}


void Server::ReplyCreated(Client* c, uint64_t seq, const Object* o) {
  // Held back with the other replies of a read: a copy of one built reply, values in place.
  proto::Message* m = HoldCopy(c, &created_reply_, [](auto& b) {
    auto body = proto::CreateCreateReply(b);
    b.FinishSizePrefixed(proto::CreateMessage(b, 1, 0, 0, 0, Body::CreateReply, body.Union()),
                         proto::MessageIdentifier());
  });
  if (m) {
    auto* r = static_cast<proto::CreateReply*>(m->mutable_body());
    m->mutate_seq(seq);
    r->mutate_uid(o->uid);
    r->mutate_region_id(region_->id());
    r->mutate_offset(OffsetOf(o));
    r->mutate_data_size(o->data_size);
    r->mutate_metadata_size(o->metadata_size);
    r->mutate_device(o->device);
    r->mutate_chunk(GpuChunkOf(o));
    r->mutate_chunk_offset(GpuOffsetOf(o));
    return;
  }
  fbb_.Clear();
  auto body = proto::CreateCreateReply(fbb_, o->uid, region_->id(), OffsetOf(o), o->data_size,
                                       o->metadata_size, o->device, GpuChunkOf(o),
                                       GpuOffsetOf(o));
  SendEmpty(c, seq, Body::CreateReply, body.Union());
}

void Server::HandleCreate(Client* c, uint64_t seq, const proto::CreateRequest* r) {
  CreateArgs a;
  a.id = KeyOf(r->id());
  a.data_size = r->data_size();
  a.importance = r->importance();
  a.leased = r->leased();
  a.device = r->device();
  int64_t timeout = r->timeout_ms();
  if (a.data_size == 0) {
    return SendError(c, seq, STORE_EINVAL, "an object must have at least one byte of data");
  }
  uint64_t meta = r->metadata() ? r->metadata()->size() : 0;
  if (meta > STORE_MAX_METADATA_SIZE) {
    return SendError(c, seq, STORE_EINVAL,
                     "metadata of " + Bytes(meta) + " is larger than the limit of " +
                         Bytes(STORE_MAX_METADATA_SIZE));
  }
  if (a.device != -1) {
    std::string why;
    if (int rc = CheckGpuCreate(a, r->data() != nullptr, &why); rc != STORE_OK) {
      return SendError(c, seq, rc, why);
    }
    if (meta > max_object_) {
      return SendError(c, seq, STORE_EINVAL, "metadata of " + Bytes(meta) + " can never fit");
    }
  } else if (a.data_size > max_object_ || a.data_size + meta > max_object_) {
    return SendError(c, seq, STORE_EINVAL,
                     "an object of " + Bytes(a.data_size + meta) +
                         " can never fit in this store: the largest it can hold is " +
                         Bytes(max_object_) + " (of " + Bytes(region_->capacity()) + ")");
  }
  if (timeout < -1) {
    return SendError(c, seq, STORE_EINVAL, "timeout_ms must be -1, 0 or positive");
  }
  if (r->data()) {
    if (r->data()->size() != a.data_size || a.data_size > proto::kInlinePutMax) {
      return SendError(c, seq, STORE_EINVAL,
                       "inline data must be exactly data_size bytes and at most " +
                           std::to_string(proto::kInlinePutMax));
    }
    a.inline_put = true;
    a.inline_data = {r->data()->data(), r->data()->size()};
  }
  if (meta) a.metadata = {r->metadata()->data(), r->metadata()->size()};
  Object* o = nullptr;
  std::string message;
  int rc;
  // Creates that already wait keep their turn: a new one queues behind them unless it will
  // not wait at all.
  auto& queue = CreateQueueFor(a.device);
  bool others_wait = !queue.empty();
  if (others_wait && timeout != 0) {
    rc = STORE_ENOSPACE;
    if (table_.Find(a.id)) {
      rc = STORE_EEXISTS;
      message = "object " + Hex(a.id) + " already exists";
    }
  } else {
    // An inline put is sealed inside TryCreate, and the pump after a seal may drop or spill
    // the new object (a create waiting for room): it runs once the reply, which reads the
    // object, is out.
    PumpHold hold(this);
    rc = TryCreate(c, a, &o, &message);  // straight from the request's bytes
    if (rc == STORE_OK) return ReplyCreated(c, seq, o);
  }
  if (rc != STORE_ENOSPACE || timeout == 0) {
    if (rc == STORE_ENOSPACE) {
      totals_.full++;
      const uint64_t size = a.data_size + a.metadata.size();
      if (spiller_.enabled() && a.device < 0 && SpillingMayFit(size)) {
        // It will not wait, but the next one may fit: spill down to the low mark now.
        spiller_.SpillStep(size, nullptr);
        message += "; spilling has started to make room";
      }
    }
    return SendError(c, seq, rc, message);
  }
  // Wait for space, in arrival order.
  const uint64_t held =
      sizeof(WaitingCreate) + WaitingCreate::kHeld + a.metadata.size() + a.inline_data.size();
  if (!AdmitWaiting(c, seq, held)) return;
  auto* w = new WaitingCreate;
  w->client = c;
  w->seq = seq;
  w->held = held;
  w->args = std::move(a);
  w->args.Own();
  if (timeout > 0) {
    uv_timer_init(&loop_, &w->timer);
    w->timer.data = w;
    w->has_timer = true;
    // From now, not from the start of this loop turn (libuv's cached time): a request read late
    // in a long turn would otherwise time out early by the turn's length.
    uv_update_time(&loop_);
    uv_timer_start(
        &w->timer,
        [](uv_timer_t* t) {
          auto* wc = static_cast<WaitingCreate*>(t->data);
          wc->client->server->totals_.full++;
          Server* server = wc->client->server;
          server->FinishCreateWait(
              wc, STORE_ETIMEDOUT, "no space was freed in time: " + server->NoSpaceMessage(wc->args));
          // The creates that waited behind it may fit.
          server->Pump();
        },
        static_cast<uint64_t>(timeout), 0);
  }
  c->creates.insert(w);
  w->at = queue.insert(queue.end(), w);
  if (w->args.device >= 0) gpu_waiting_++;
  Pump();
}

std::string Server::NoSpaceMessage(const CreateArgs& a) const {
  if (a.device >= 0) return GpuFullMessage(a.device, a.data_size);
  return FullMessage(a.data_size + a.metadata.size());
}

void Server::FinishCreateWait(WaitingCreate* w, int status, const std::string& message) {
  auto& queue = CreateQueueFor(w->args.device);
  // One that leaves unserved may have held up smaller ones behind it on its device.
  if (w->args.device >= 0) {
    if (status != STORE_OK) gpu_freed_ = true;
    gpu_waiting_--;
  }
  queue.erase(w->at);
  w->client->creates.erase(w);
  EndWaiting(w->client, w->held);
  if (status != STORE_OK && status != STORE_ECONN) SendError(w->client, w->seq, status, message);
  if (w->has_timer) {
    uv_timer_stop(&w->timer);
    uv_close(reinterpret_cast<uv_handle_t*>(&w->timer),
             [](uv_handle_t* h) { delete static_cast<WaitingCreate*>(h->data); });
  } else {
    delete w;
  }
}

bool Server::ServeWaitingCreates() {
  while (!create_queue_.empty()) {
    WaitingCreate* w = create_queue_.front();
    Object* o = nullptr;
    std::string message;
    int rc = TryCreate(w->client, w->args, &o, &message);
    if (rc == STORE_ENOSPACE) return false;  // the head does not fit: everyone keeps waiting
    Client* c = w->client;
    uint64_t seq = w->seq;
    FinishCreateWait(w, rc, message);  // frees w
    if (rc == STORE_OK) ReplyCreated(c, seq, o);
  }
  return true;
}

// ------------------------------------------------------------------------------------------
// Serving what waits for memory.

// Serves what waits for memory: the GPU creates when device memory was freed, then the queued
// restores and the waiting creates, each in arrival order (restores first), and asks the
// Spiller to free what the marks and the heads of those queues call for. A call made while it
// runs (from a completion or a free it causes) only makes it go round once more.
//
// Invariant on return: every queued restore and create that fits has been served, in arrival
// order (restores first); spilling was started for what the marks and the heads of those
// queues need; and what still waits can be served later: spill writes are in flight, or room
// can only come from outside (a delete, an unpin, a closed reader), which pumps again. Nothing
// waiting for memory is failed here except for a failing disk (STORE_ENODISK) and gets that
// asked not to wait (StallRestores); the others wait for their deadlines.
void Server::Pump() {
  if (pumping_) {
    pump_again_ = true;
    return;
  }
  pumping_ = true;
  do {
    pump_again_ = false;
    if (gpu_freed_) ServeWaitingGpuCreates();
    // Restores wait for memory, or for a job slot (RestoreSlot): a completion pumps again.
    bool restores_busy = false;
    while (Object* o = spiller_.HeadRestore()) {
      if ((restores_busy = !spiller_.RestoreSlot()) || !spiller_.TryStartRestore(o)) break;
      spiller_.PopRestore(o);
    }
    bool blocked = !ServeWaitingCreates() || (!restores_busy && spiller_.HeadRestore() != nullptr);
    if (!spiller_.enabled() || stopping_) continue;  // without spilling, waiters wait for deletes
    // What the waiters need counts only if spilling could make their room at all: where
    // objects that stay cut the memory up, it could not, and their bytes' worth of objects
    // would go to disk for nothing.
    const uint64_t need = spiller_.NeedNow();
    const bool for_waiters = need <= region_->free_bytes() || SpillingMayFit(need);
    if (spiller_.SpillStep(0, nullptr, for_waiters)) pump_again_ = true;  // memory is free now
    if (!blocked || pump_again_) continue;
    // Enough bytes are free in all but not in one piece: spill what the head needs anyway, if
    // spilling every candidate could make a run long enough (else all would go to disk for
    // nothing, where objects that stay cut the memory up).
    bool room_possible = true;
    if (spiller_.jobs() == 0 && !spiller_.BackingOff() && spiller_.CanSpillMore() &&
        (room_possible = RoomPossible(spiller_.NeedNow()))) {
      if (spiller_.SpillStep(spiller_.NeedNow(), nullptr)) pump_again_ = true;
      if (pump_again_ || spiller_.jobs() > 0) continue;
    }
    // Something waits for memory that spilling cannot free now.
    bool backoff = spiller_.BackingOff();
    if (backoff || spiller_.last_error() == STORE_ENODISK) {
      // The disk fails: what needs a spill fails now rather than wait on a broken disk.
      if (spiller_.jobs() > 0) continue;
      std::string why = "spilling cannot make room: " + spiller_.last_message();
      // A restore that waits only for a job slot does not need the disk's writes: the create
      // that is blocked goes then.
      Object* o = restores_busy ? nullptr : spiller_.HeadRestore();
      if (o) {
        spiller_.PopRestore(o);
        spiller_.FailRestore(o, STORE_ENODISK,
                             why + "; " + FullMessage(o->data_size + o->metadata_size));
      } else {
        WaitingCreate* w = create_queue_.front();
        totals_.full++;
        FinishCreateWait(w, STORE_ENODISK,
                         why + "; " + FullMessage(w->args.data_size + w->args.metadata.size()));
      }
      pump_again_ = true;
    } else if ((!spiller_.CanSpillMore() || !room_possible) && !restores_busy) {
      // Only a delete, an unpin or a closed reader can make room: creates and restores wait
      // for it until their deadlines (their timers), except gets that asked not to wait.
      // (Restores that wait for a job slot hear of it after a slot frees, if still no room.)
      StallRestores();
    }
  } while (pump_again_);
  pumping_ = false;
}

void Server::StallRestores() {
  // Gets that asked not to wait (timeout 0) hear now that there is no room; prefetches (a
  // hint) are dropped; every other restore waits for room until its gets' deadlines.
  std::vector<ObjectKey> queued;
  if (!spiller_.Stall(&queued)) return;
  std::vector<std::pair<WaitingGet*, uint32_t>> no_room;
  for (const ObjectKey& id : queued) {
    auto w = get_waiters_.find(id);
    if (w != get_waiters_.end()) {
      const GetWaiters& gw = w->second;
      for (uint32_t k = 0; k < gw.zero; k++) no_room.emplace_back(gw.list[k].get, gw.list[k].first_pos);
    }
  }
  std::vector<WaitingGet*> done;
  for (auto [g, first] : no_room) {
    for (uint32_t i = first; i != WaitingGet::kEnd; i = g->next_same[i]) {
      if (g->taken[i] == 0 && g->status[i] == 0) g->status[i] = STORE_ENOSPACE;
    }
    Unregister(g, first);
    if (g->missing == 0) done.push_back(g);
  }
  for (WaitingGet* g : done) CompleteGet(g, false);
  // What nobody waits for any more leaves the queue (HeadRestore drops it on the way).
  spiller_.HeadRestore();
}

uint64_t Server::WaitingCreateBytes() const {
  if (create_queue_.empty()) return 0;
  const WaitingCreate* w = create_queue_.front();
  return w->args.data_size + w->args.metadata.size();
}

void Server::SealObject(Object* o) {
  o->access_ns = RealtimeNs();  // before Seal: the eviction order reads it
  table_.Seal(o);
  totals_.seals++;
  NotifyWaiters(o->id);
  // Over the high-water mark? Or, when full drops objects, the creates waiting may drop it.
  if (spiller_.enabled() || (DropMode() && !create_queue_.empty())) Pump();
}

// ------------------------------------------------------------------------------------------
// Seal, abort, and freeing.

void Server::HandleSeal(Client* c, uint64_t seq, const proto::SealRequest* r) {
  ObjectKey id = KeyOf(r->id());
  Object* o = table_.Find(id);
  if (!o || (r->uid() != 0 && o->uid != r->uid())) {
    return SendError(c, seq, STORE_ENOTFOUND, "object " + Hex(id) + " does not exist");
  }
  if (o->state != ObjectState::kCreated) {
    return SendError(c, seq, STORE_ESEALED, "object " + Hex(id) + " is already sealed");
  }
  if (o->creator != c->id) {
    return SendError(c, seq, STORE_EPERM,
                     "object " + Hex(id) + " is being written by another client");
  }
  c->creating.erase(o->uid);
  Unhold(c, o);
  SealObject(o);
  fbb_.Clear();
  SendEmpty(c, seq, Body::SealReply, proto::CreateSealReply(fbb_).Union());
}

void Server::HandleAbort(Client* c, uint64_t seq, const proto::AbortRequest* r) {
  ObjectKey id = KeyOf(r->id());
  Object* o = table_.Find(id);
  if (!o || (r->uid() != 0 && o->uid != r->uid())) {
    return SendError(c, seq, STORE_ENOTFOUND, "object " + Hex(id) + " does not exist");
  }
  if (o->state != ObjectState::kCreated) {
    return SendError(c, seq, STORE_ESEALED,
                     "object " + Hex(id) + " is sealed and cannot be aborted; delete it");
  }
  if (o->creator != c->id) {
    return SendError(c, seq, STORE_EPERM,
                     "object " + Hex(id) + " is being written by another client");
  }
  c->creating.erase(o->uid);
  Unhold(c, o);
  totals_.aborts++;
  FreeObject(o);
  fbb_.Clear();
  SendEmpty(c, seq, Body::AbortReply, proto::CreateAbortReply(fbb_).Union());
  Pump();
}

void Server::FreeObject(Object* o) {
  if (o->pins > 0) DropPinsOf(o);  // deleted while pinned: the pins go with it
  spiller_.ForgetRestore(o->uid);  // its queue entry is skipped when it comes up
  if (!leases_.empty()) leases_.erase(o->uid);
  if (o->spill_file && spiller_.TombstoneFor(o)) {
    spiller_.MaybeStartTombJob();  // deletes drop it before
  }
  if (o->data) region_->Free(o->data);
  if (o->on_gpu()) GpuFree(o);
  table_.Erase(o);
}

bool Server::MaybeFree(Object* o) {
  if (!o->deleted || o->readers > 0 || o->state == ObjectState::kSpilling ||
      o->state == ObjectState::kRestoring) {
    return false;
  }
  FreeObject(o);
  return true;
}

// ------------------------------------------------------------------------------------------
// Delete, leases, pins.

void Server::HandleDelete(Client* c, uint64_t seq, const proto::DeleteRequest* r) {
  auto ids = r->ids();
  if (ids->size() > proto::kMaxIdsPerRequest) {
    return SendError(c, seq, STORE_EINVAL,
                     "delete names at most " + std::to_string(proto::kMaxIdsPerRequest) + " ids");
  }
  std::vector<int32_t> statuses(ids->size());
  // Deletes of objects with a copy on disk are acknowledged once their tombstones are durable.
  std::vector<std::pair<uint32_t, SpillDirState*>> needs;
  bool freed = false;
  for (size_t i = 0; i < ids->size(); i++) {
    Object* o = table_.Find(KeyOf(ids->Get(i)));
    if (!o) {
      statuses[i] = STORE_ENOTFOUND;
    } else if (o->state == ObjectState::kCreated) {
      statuses[i] = STORE_ENOTSEALED;
    } else {
      statuses[i] = STORE_OK;
      totals_.deletes++;
      bool on_disk = o->state == ObjectState::kSpilled;
      ObjectKey key = o->id;
      table_.Unlink(o);
      std::vector<SpillDirState*> dirs;
      if (spiller_.TombstoneFor(o, &dirs)) {
        for (SpillDirState* dir : dirs) needs.emplace_back(static_cast<uint32_t>(i), dir);
      }
      freed |= MaybeFree(o);
      if (on_disk) NotifyWaiters(key);  // gets waiting for its restore: it is gone
    }
  }
  if (needs.empty()) {
    fbb_.Clear();
    auto vec = fbb_.CreateVector(statuses);
    SendEmpty(c, seq, Body::DeleteReply, proto::CreateDeleteReply(fbb_, vec).Union());
  } else {
    auto* d = new Spiller::DeferredDelete;
    d->client_id = c->id;
    d->seq = seq;
    d->statuses = std::move(statuses);
    d->needs = std::move(needs);
    spiller_.ReplyWhenDurable(d);
  }
  if (freed) Pump();
}

void Server::ReplyDelete(const Spiller::DeferredDelete& d, const std::string& why) {
  auto c = clients_.find(d.client_id);
  if (c != clients_.end()) {
    fbb_.Clear();
    auto vec = fbb_.CreateVector(d.statuses);
    auto msg = why.empty() ? flatbuffers::Offset<flatbuffers::String>()
                           : fbb_.CreateString(
                                 "deleted, but a restart with --recover could bring it back: " +
                                 why);
    SendEmpty(c->second, d.seq, Body::DeleteReply,
              proto::CreateDeleteReply(fbb_, vec, msg).Union());
  }
}

bool Server::DeleteObject(Object* o) {
  if (o->deleted) return false;
  bool on_disk = o->state == ObjectState::kSpilled;
  ObjectKey key = o->id;
  table_.Unlink(o);
  if (spiller_.TombstoneFor(o)) spiller_.MaybeStartTombJob();  // no reply waits: nobody asked
  bool freed = MaybeFree(o);
  if (on_disk) NotifyWaiters(key);
  return freed;
}

bool Server::DropLeases(uint64_t uid, uint32_t n) {
  auto it = leases_.find(uid);
  if (it == leases_.end()) return false;
  it->second.count -= std::min(n, it->second.count);
  if (it->second.count > 0) return false;
  bool auto_delete = it->second.auto_delete;
  leases_.erase(it);
  Object* o = table_.FindUid(uid);
  if (!o) return false;
  KeepLeased(o, false);
  if (o->deleted) return false;
  // Without a lease an unused object may be dropped to make room (--when-full drop).
  if (!auto_delete) return DropMode() && o->evictable();
  if (o->state == ObjectState::kCreated) return false;  // an unsealed one is aborted
  totals_.deletes++;
  return DeleteObject(o);
}

void Server::HandleLease(Client* c, uint64_t seq, const proto::LeaseRequest* r) {
  ObjectKey id = KeyOf(r->id());
  Object* o = table_.Find(id);
  if (r->unlease()) {
    // The instance of id this client leased: the one in the table, or one deleted since (its
    // lease may outlive it: the count just goes).
    auto it = o ? c->leases.find(o->uid) : c->leases.end();
    if (it == c->leases.end()) {
      for (it = c->leases.begin(); it != c->leases.end(); ++it) {
        if (it->second.id == id) break;
      }
    }
    if (it == c->leases.end()) {
      return SendError(c, seq, STORE_EMISUSE, "this client holds no lease on object " + Hex(id));
    }
    const uint64_t uid = it->first;
    if (o && o->uid == uid && o->state == ObjectState::kCreated) {
      // The creator's lease lasts until the seal (or the abort, which deletes it anyway).
      return SendError(c, seq, STORE_ENOTSEALED, "object " + Hex(id) + " is not sealed yet");
    }
    if (--it->second.n == 0) c->leases.erase(it);
    bool freed = DropLeases(uid, 1);
    auto left = leases_.find(uid);
    fbb_.Clear();
    SendEmpty(c, seq, Body::LeaseReply,
              proto::CreateLeaseReply(fbb_, left == leases_.end() ? 0 : left->second.count)
                  .Union());
    if (freed) Pump();
    return;
  }
  if (!o) return SendError(c, seq, STORE_ENOTFOUND, "object " + Hex(id) + " does not exist");
  if (o->state == ObjectState::kCreated) {
    return SendError(c, seq, STORE_ENOTSEALED, "object " + Hex(id) + " is not sealed yet");
  }
  LeaseState& l = leases_[o->uid];
  Client::HeldLease& mine = c->leases[o->uid];
  if (l.count == UINT32_MAX || mine.n == UINT32_MAX) {
    if (mine.n == 0) c->leases.erase(o->uid);
    if (l.count == 0) leases_.erase(o->uid);
    return SendError(c, seq, STORE_EMISUSE,
                     "object " + Hex(id) + " holds the most leases a count can hold");
  }
  l.count++;
  mine.id = o->id;
  mine.n++;
  KeepLeased(o, true);
  fbb_.Clear();
  SendEmpty(c, seq, Body::LeaseReply, proto::CreateLeaseReply(fbb_, l.count).Union());
}

void Server::HandlePin(Client* c, uint64_t seq, const proto::PinRequest* r) {
  ObjectKey id = KeyOf(r->id());
  Object* o = table_.Find(id);
  if (!o) return SendError(c, seq, STORE_ENOTFOUND, "object " + Hex(id) + " does not exist");
  if (o->state == ObjectState::kCreated) {
    return SendError(c, seq, STORE_ENOTSEALED, "object " + Hex(id) + " is not sealed yet");
  }
  auto it = c->pins.find(o->uid);
  if ((it != c->pins.end() && it->second == UINT32_MAX) || !table_.AddPin(o)) {
    return SendError(c, seq, STORE_EMISUSE,
                     "object " + Hex(id) + " holds the most pins a count can hold");
  }
  if (it == c->pins.end()) {
    Hold(c, o);
    it = c->pins.emplace(o->uid, 0).first;
  }
  it->second++;
  c->pins_held++;
  totals_.pins++;
  // A pin keeps an object in memory: one on disk comes back.
  if (o->state == ObjectState::kSpilled) spiller_.StartRestore(o);
  fbb_.Clear();
  SendEmpty(c, seq, Body::PinReply, proto::CreatePinReply(fbb_).Union());
}

void Server::HandleUnpin(Client* c, uint64_t seq, const proto::UnpinRequest* r) {
  ObjectKey id = KeyOf(r->id());
  Object* o = table_.Find(id);
  if (!o) return SendError(c, seq, STORE_ENOTFOUND, "object " + Hex(id) + " does not exist");
  auto it = c->pins.find(o->uid);
  if (it == c->pins.end()) {
    return SendError(c, seq, STORE_EMISUSE,
                     "this client holds no pin on object " + Hex(id));
  }
  if (--it->second == 0) {
    c->pins.erase(it);
    Unhold(c, o);
  }
  c->pins_held--;
  table_.RemovePin(o);
  totals_.unpins++;
  fbb_.Clear();
  SendEmpty(c, seq, Body::UnpinReply, proto::CreateUnpinReply(fbb_).Union());
  // Evictable now: what waits for memory may be served by spilling it.
  if (o->evictable() && (!create_queue_.empty() || spiller_.RestoresWaiting())) Pump();
}

// ------------------------------------------------------------------------------------------
// Requests for the spiller: evict, prefetch; and importance, which orders its victims.

void Server::FinishEvict(EvictWaiter* ew) {
  if (ew->client) {
    ew->client->evicts.erase(ew);
    EndWaiting(ew->client, ew->held);
    fbb_.Clear();
    SendEmpty(ew->client, ew->seq, Body::EvictReply,
              proto::CreateEvictReply(fbb_, ew->spilled).Union());
  }
  delete ew;
}

void Server::EvictDone(Spiller::Eviction* e) { FinishEvict(static_cast<EvictWaiter*>(e)); }

void Server::HandleEvict(Client* c, uint64_t seq, const proto::EvictRequest* r) {
  if (!spiller_.enabled()) {
    return SendError(c, seq, STORE_ENOTSUP, "this store has no --spill-dir: it cannot spill");
  }
  if (spiller_.BackingOff()) {
    return SendError(c, seq, STORE_ENODISK,
                     "spilling failed a moment ago: " + spiller_.last_message());
  }
  // It waits for the spill jobs it starts: it counts against the waiting limits meanwhile.
  const uint64_t held = sizeof(EvictWaiter);
  if (!AdmitWaiting(c, seq, held)) return;
  auto* ew = new EvictWaiter;
  ew->client = c;
  ew->seq = seq;
  ew->held = held;
  ew->target = r->bytes();
  c->evicts.insert(ew);
  ew->pending++;  // held while the batches start
  spiller_.SpillStep(0, ew);
  int err = spiller_.last_error();
  if (--ew->pending == 0) {
    if (err == STORE_ENODISK && ew->spilled == 0) {
      c->evicts.erase(ew);
      EndWaiting(c, held);
      delete ew;
      SendError(c, seq, STORE_ENODISK, spiller_.last_message());
    } else {
      FinishEvict(ew);
    }
  }
  Pump();
}

void Server::HandlePrefetch(Client* c, uint64_t seq, const proto::PrefetchRequest* r) {
  auto ids = r->ids();
  if (ids->size() > proto::kMaxIdsPerRequest) {
    return SendError(c, seq, STORE_EINVAL,
                     "prefetch names at most " + std::to_string(proto::kMaxIdsPerRequest) + " ids");
  }
  // O(1) per id: each is queued (or started) without serving the queue; the queue is served
  // once at the end.
  uint32_t started = 0;
  for (const proto::ObjectId* id : *ids) {
    Object* o = table_.Find(KeyOf(id));
    if (!o || o->state != ObjectState::kSpilled) continue;
    spiller_.StartRestore(o, true, false);
    started++;
  }
  fbb_.Clear();
  SendEmpty(c, seq, Body::PrefetchReply, proto::CreatePrefetchReply(fbb_, started).Union());
  if (started > 0) Pump();
}

void Server::HandleSetImportance(Client* c, uint64_t seq, const proto::SetImportanceRequest* r) {
  ObjectKey id = KeyOf(r->id());
  Object* o = table_.Find(id);
  if (!o) return SendError(c, seq, STORE_ENOTFOUND, "object " + Hex(id) + " does not exist");
  int32_t importance = r->importance();
  table_.Mutate(o, [&](Object* x) { x->importance = importance; });
  fbb_.Clear();
  SendEmpty(c, seq, Body::SetImportanceReply, proto::CreateSetImportanceReply(fbb_).Union());
}

}  // namespace store
