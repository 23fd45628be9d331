// gets.cpp - get and release: readers of objects, and the gets waiting for objects to be
// sealed or restored.
#include <bit>
#include <cstring>

#include "server/log.h"
#include "server/server.h"
#include "server/server_internal.h"
#include "server/util.h"
#include "storeclient.h"

namespace store {

using proto::Body;

namespace {

// A get reads an object that is sealed or being spilled: its bytes are still in memory.
bool Readable(const Object* o) {
  return o && (o->state == ObjectState::kSealed || o->state == ObjectState::kSpilling);
}

// Whether a get must wait for o (nullptr: no such object). An object on disk is brought back
// whatever the timeout; a missing or unsealed one is waited for only when the caller asked to.
bool GetWaitsFor(const Object* o, int64_t timeout) {
  if (Readable(o)) return false;
  bool on_disk = o && (o->state == ObjectState::kSpilled || o->state == ObjectState::kRestoring);
  return on_disk || timeout != 0;
}

}  // namespace

// ------------------------------------------------------------------------------------------
// Readers, and the gets waiting for objects.

void Server::NotifyWaiters(const ObjectKey& id) {
  auto it = get_waiters_.find(id);
  if (it == get_waiters_.end()) return;
  Object* o = table_.Find(id);
  const bool readable = Readable(o);
  const bool failed = o && o->state == ObjectState::kSpilled && o->restore_error != 0;
  const int64_t now = RealtimeNs();
  std::vector<GetWaiter> list = it->second.list;  // a copy: resolving edits it
  std::vector<WaitingGet*> ready;
  for (const GetWaiter& w : list) {
    WaitingGet* g = w.get;
    if (readable) {
      TakeForGet(g, w.first_pos, o, now);
    } else if (failed) {
      for (uint32_t i = w.first_pos; i != WaitingGet::kEnd; i = g->next_same[i]) {
        g->status[i] = o->restore_error;
      }
    } else if (o || g->timeout != 0) {
      // Not there yet (being restored, or gone and to be waited for again): keep waiting.
      continue;
    }
    // Else gone, and the get does not wait for missing ids: it ends with STORE_ENOTFOUND.
    Unregister(g, w.first_pos);
    if (g->missing == 0) ready.push_back(g);
  }
  for (WaitingGet* g : ready) CompleteGet(g, false);
}

bool Server::GetsWaitFor(const ObjectKey& id) const {
  auto w = get_waiters_.find(id);
  return w != get_waiters_.end() && !w->second.list.empty();
}

int Server::TakeReader(Client* c, Object* o, int64_t now) {
  auto it = c->readers.find(o->uid);
  if ((it != c->readers.end() && it->second == UINT32_MAX) || !table_.AddReader(o)) {
    return STORE_EMISUSE;
  }
  if (it == c->readers.end()) {
    Hold(c, o);
    it = c->readers.emplace(o->uid, 0).first;
  }
  it->second++;
  c->readers_held++;
  o->access_ns = now;
  totals_.gets++;
  spiller_.MaybeReadAheadOnGet(o);
  return STORE_OK;
}

void Server::TakeForGet(WaitingGet* g, uint32_t first_pos, Object* o, int64_t now) {
  for (uint32_t i = first_pos; i != WaitingGet::kEnd; i = g->next_same[i]) {
    if (g->taken[i] != 0 || g->status[i] != 0) continue;
    int rc = TakeReader(g->client, o, now);
    if (rc == STORE_OK) {
      g->taken[i] = o->uid;
    } else {
      g->status[i] = rc;
    }
  }
}

void Server::MoveWaiter(GetWaiters* w, uint32_t from, uint32_t to) {
  if (from == to) return;
  GetWaiter& e = w->list[to];
  e = w->list[from];
  e.get->waiter_at[e.first_pos] = to;
}

void Server::Unregister(WaitingGet* g, uint32_t first_pos) {
  if (g->resolved[first_pos]) return;
  g->resolved[first_pos] = 1;
  g->missing--;
  auto it = get_waiters_.find(g->ids[first_pos]);
  if (it == get_waiters_.end()) return;
  GetWaiters& w = it->second;
  auto& v = w.list;
  const uint32_t k = g->waiter_at[first_pos];
  if (k < v.size() && v[k].get == g && v[k].first_pos == first_pos) {
    uint32_t hole = k;
    if (hole < w.zero) {
      // The last of the gets that do not wait for room moves into its place: they stay first.
      MoveWaiter(&w, --w.zero, hole);
      hole = w.zero;
    }
    MoveWaiter(&w, static_cast<uint32_t>(v.size() - 1), hole);  // the last entry
    v.pop_back();
  }
  if (v.empty()) get_waiters_.erase(it);
}

// ------------------------------------------------------------------------------------------
// Get and release.

void Server::HandleGet(Client* c, uint64_t seq, const proto::GetRequest* r) {
  auto ids = r->ids();
  if (ids->size() == 0 || ids->size() > proto::kMaxIdsPerRequest) {
    return SendError(c, seq, STORE_EINVAL,
                     "a get names 1 to " + std::to_string(proto::kMaxIdsPerRequest) + " ids");
  }
  int64_t timeout = r->timeout_ms();
  if (timeout < -1) return SendError(c, seq, STORE_EINVAL, "timeout_ms must be -1, 0 or positive");
  if (ids->size() == 1) {
    // The common case, answered at once with no WaitingGet: one id the get need not wait for.
    Object* o = table_.Find(KeyOf(ids->Get(0)));
    if (!GetWaitsFor(o, timeout)) {
      if (proto::ObjectLocation* loc = HoldGetOneReply(c, seq)) {
        return Locate(c, o, RealtimeNs(), false, loc);
      }
    }
  }
  const uint32_t n = ids->size();
  {
    // Answered at once when no id is waited for (every one readable, or missing and not waited
    // for): no WaitingGet, one lookup per id.
    std::vector<Object*>& objs = get_scratch_;
    objs.clear();
    bool waits = false;
    for (const proto::ObjectId* id : *ids) {
      Object* o = table_.Find(KeyOf(id));
      objs.push_back(o);
      waits = waits || GetWaitsFor(o, timeout);
    }
    if (!waits) {
      const int64_t now = RealtimeNs();
      fbb_.Clear();
      proto::ObjectLocation* locs = nullptr;
      auto vec = fbb_.CreateUninitializedVectorOfStructs(n, &locs);
      for (uint32_t i = 0; i < n; i++) Locate(c, objs[i], now, false, &locs[i]);
      auto body = proto::CreateGetReply(fbb_, vec);
      fbb_.FinishSizePrefixed(
          proto::CreateMessage(fbb_, seq, 0, 0, 0, Body::GetReply, body.Union()),
          proto::MessageIdentifier());
      return Send(c);
    }
  }
  // It waits for some id: its id list and per-id state count against the waiting limits.
  const uint64_t held = sizeof(WaitingGet) + uint64_t{n} * WaitingGet::kHeldPerId;
  if (!AdmitWaiting(c, seq, held)) return;
  auto* g = new WaitingGet;
  g->client = c;
  g->seq = seq;
  g->held = held;
  g->timeout = timeout;
  g->ids.reserve(n);
  for (const proto::ObjectId* id : *ids) g->ids.push_back(KeyOf(id));
  g->taken.assign(n, 0);
  g->status.assign(n, 0);
  g->next_same.assign(n, WaitingGet::kEnd);
  g->resolved.assign(n, 0);
  // Each id is taken now if it is readable; the others are waited for once per distinct id
  // (the positions of one id are chained from its first through next_same).
  const int64_t now = RealtimeNs();
  std::vector<uint32_t> firsts;
  std::vector<uint32_t> tail;       // per entry of firsts: the last position of that id so far
  std::vector<Object*> readable;    // per entry of firsts: its object, if readable now
  // A short list is searched; a longer one goes through an open-addressing table of entries of
  // firsts (linear probing, at most half full: one allocation).
  const bool hashed = n > 16;
  std::vector<uint32_t> slots;
  size_t mask = 0;
  if (hashed) {
    slots.assign(std::bit_ceil(size_t{2} * n), UINT32_MAX);
    mask = slots.size() - 1;
  }
  for (uint32_t i = 0; i < n; i++) {
    uint32_t entry = UINT32_MAX;
    if (hashed) {
      size_t h = ObjectKeyHash()(g->ids[i]);
      h ^= h >> 29;
      for (size_t k = h & mask;; k = (k + 1) & mask) {
        if (slots[k] == UINT32_MAX) {
          slots[k] = static_cast<uint32_t>(firsts.size());
          break;
        }
        if (g->ids[firsts[slots[k]]] == g->ids[i]) {
          entry = slots[k];
          break;
        }
      }
    } else {
      for (uint32_t k = 0; k < firsts.size(); k++) {
        if (g->ids[firsts[k]] == g->ids[i]) {
          entry = k;
          break;
        }
      }
    }
    if (entry != UINT32_MAX) {
      g->next_same[tail[entry]] = i;
      tail[entry] = i;
      continue;
    }
    firsts.push_back(i);
    tail.push_back(i);
    Object* o = table_.Find(g->ids[i]);
    readable.push_back(Readable(o) ? o : nullptr);
    if (GetWaitsFor(o, timeout)) g->waiting_on.push_back(i);
  }
  for (size_t k = 0; k < firsts.size(); k++) {
    if (readable[k]) TakeForGet(g, firsts[k], readable[k], now);
  }
  g->missing = g->waiting_on.size();
  if (g->missing == 0) return CompleteGet(g, false);
  g->waiter_at.assign(n, 0);
  for (uint32_t first : g->waiting_on) {
    GetWaiters& w = get_waiters_[g->ids[first]];
    auto k = static_cast<uint32_t>(w.list.size());
    w.list.push_back({g, first});
    g->waiter_at[first] = k;
    if (timeout == 0) {
      // Among the first: the first entry that waits for room moves to the end.
      const uint32_t at = w.zero++;
      MoveWaiter(&w, at, k);
      w.list[at] = {g, first};
      g->waiter_at[first] = at;
    }
  }
  c->gets.insert(g);
  waiting_gets_++;
  if (timeout > 0) {
    uv_timer_init(&loop_, &g->timer);
    g->timer.data = g;
    g->has_timer = true;
    // From now, not from the start of this loop turn (libuv's cached time): a request read late
    // in a long turn would otherwise time out early by the turn's length.
    uv_update_time(&loop_);
    uv_timer_start(
        &g->timer,
        [](uv_timer_t* t) {
          auto* wg = static_cast<WaitingGet*>(t->data);
          wg->client->server->CompleteGet(wg, true);
        },
        static_cast<uint64_t>(timeout), 0);
  }
  std::vector<Object*> to_restore;
  for (uint32_t first : g->waiting_on) {
    Object* o = table_.Find(g->ids[first]);
    if (o && o->state == ObjectState::kSpilled) to_restore.push_back(o);
  }
  g = nullptr;  // a restore that fails at once completes (and frees) the get
  for (Object* o : to_restore) spiller_.StartRestore(o, false, false);
  if (!to_restore.empty()) Pump();
}

void Server::CancelGet(WaitingGet* g) {
  for (uint32_t first : g->waiting_on) Unregister(g, first);
  if (g->client->gets.erase(g)) waiting_gets_--;
  EndWaiting(g->client, g->held);
  if (g->has_timer) {
    uv_timer_stop(&g->timer);
    uv_close(reinterpret_cast<uv_handle_t*>(&g->timer),
             [](uv_handle_t* h) { delete static_cast<WaitingGet*>(h->data); });
  } else {
    delete g;
  }
}

// The reply to a get of one id, held back with the other replies of a read: a copy of one
// built reply, seq set, whose one location the caller writes in place. nullptr when no reply
// can be held (see HoldCopy).
proto::ObjectLocation* Server::HoldGetOneReply(Client* c, uint64_t seq) {
  proto::Message* held = HoldCopy(c, &get_one_reply_, [](auto& b) {
    proto::ObjectLocation* l = nullptr;
    auto v = b.CreateUninitializedVectorOfStructs(1, &l);
    *l = proto::ObjectLocation();
    auto body = proto::CreateGetReply(b, v);
    b.FinishSizePrefixed(proto::CreateMessage(b, 1, 0, 0, 0, Body::GetReply, body.Union()),
                         proto::MessageIdentifier());
  });
  if (!held) return nullptr;
  held->mutate_seq(seq);
  auto* reply = static_cast<proto::GetReply*>(held->mutable_body());
  return reply->mutable_objects()->GetMutableObject(0);
}

void Server::Where(const Object* o, proto::ObjectLocation* loc) const {
  *loc = proto::ObjectLocation(o->uid, region_->id(), OffsetOf(o), o->data_size,
                               o->metadata_size, 0, o->device, GpuOffsetOf(o), GpuChunkOf(o));
}

static proto::ObjectLocation Missing(int status) {
  return proto::ObjectLocation(0, 0, 0, 0, 0, status, -1, 0, 0);
}

void Server::Locate(Client* c, Object* o, int64_t now, bool timed_out,
                    proto::ObjectLocation* loc) {
  if (Readable(o)) {
    int rc = TakeReader(c, o, now);
    if (rc == STORE_OK) {
      Where(o, loc);
    } else {
      *loc = Missing(rc);
    }
    return;
  }
  int status = timed_out ? STORE_ETIMEDOUT : STORE_ENOTFOUND;
  if (o && o->state == ObjectState::kSpilled) {
    if (o->restore_error != 0) {
      status = o->restore_error;
    } else if (timed_out && spiller_.RestoreQueued(o->uid)) {
      status = STORE_ENOSPACE;  // on disk, and no room could be made for it in time
    }
  }
  *loc = Missing(status);
}

void Server::CompleteGet(WaitingGet* g, bool timed_out) {
  Client* c = g->client;
  int64_t now = RealtimeNs();
  // A get of one id is answered with a held copy of one built reply; others are built here.
  proto::ObjectLocation* locs = g->ids.size() == 1 ? HoldGetOneReply(c, g->seq) : nullptr;
  const bool held = locs != nullptr;
  flatbuffers::Offset<flatbuffers::Vector<const proto::ObjectLocation*>> vec;
  if (!held) {
    fbb_.Clear();
    vec = fbb_.CreateUninitializedVectorOfStructs(g->ids.size(), &locs);
  }
  for (size_t i = 0; i < g->ids.size(); i++) {
    if (g->taken[i] != 0) {
      // Held by a reader of the client since it was taken, unless the client released that
      // uid before it was told of it (it can guess uids): then it is not handed out.
      const Object* o = table_.FindUid(g->taken[i]);
      if (Readable(o)) {
        Where(o, &locs[i]);
      } else {
        locs[i] = Missing(STORE_ENOTFOUND);
      }
    } else if (g->status[i] != 0) {
      locs[i] = Missing(g->status[i]);
    } else {
      Locate(c, table_.Find(g->ids[i]), now, timed_out, &locs[i]);
    }
  }
  if (held) {
    CancelGet(g);  // unregisters and frees g; the reply is held back
    return;
  }
  auto body = proto::CreateGetReply(fbb_, vec);
  fbb_.FinishSizePrefixed(proto::CreateMessage(fbb_, g->seq, 0, 0, 0, Body::GetReply,
                                               body.Union()),
                          proto::MessageIdentifier());
  CancelGet(g);  // unregisters and frees g; the reply is built
  Send(c);
}

void Server::ReleaseReader(Client* c, Object* o) {
  auto it = c->readers.find(o->uid);
  if (--it->second == 0) {
    c->readers.erase(it);
    Unhold(c, o);
  }
  c->readers_held--;
  o->access_ns = RealtimeNs();  // before RemoveReader: the eviction order reads it
  table_.RemoveReader(o);
  totals_.releases++;
}

void Server::Hold(Client* c, const Object* o) {
  if (!c->Holds(o->uid)) c->bytes_held += HeldSize(o);
}

void Server::Unhold(Client* c, const Object* o) {
  if (!c->Holds(o->uid)) c->bytes_held -= HeldSize(o);
}

uint64_t Server::HeldSize(const Object* o) const {
  return region_->UsableSize((o->on_gpu() ? 0 : o->data_size) + o->metadata_size);
}

void Server::DropPinsOf(const Object* o) {
  for (auto& [id, c] : clients_) {
    auto it = c->pins.find(o->uid);
    if (it == c->pins.end()) continue;
    c->pins_held -= it->second;
    c->pins.erase(it);
    Unhold(c, o);
  }
}

void Server::HandleRelease(Client* c, uint64_t seq, const proto::ReleaseRequest* r) {
  auto uids = r->uids();
  if (uids->size() > proto::kMaxIdsPerRequest) {
    return ProtocolError(c, seq, "a release names at most " +
                                     std::to_string(proto::kMaxIdsPerRequest) + " objects");
  }
  bool freed = false;
  for (uint64_t uid : *uids) {
    auto it = c->readers.find(uid);
    Object* o = it == c->readers.end() ? nullptr : table_.FindUid(uid);
    if (!o) {
      // What the uids before it freed is freed: the creates waiting for room hear of it.
      if (freed) Pump();
      return ProtocolError(c, seq, "release of object instance " + std::to_string(uid) +
                                       ", which this client does not hold");
    }
    ReleaseReader(c, o);
    freed |= MaybeFree(o) || o->evictable();
  }
  if (freed) Pump();
}

}  // namespace store
