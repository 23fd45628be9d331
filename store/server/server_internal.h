// server_internal.h - the server's private records: connections, waiting requests, held replies.
// Included only by the server's own files (store/server/*.cpp).
#pragma once

#include <uv.h>

#include <list>
#include <memory>
#include <span>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "framing.h"
#include "objects/object_table.h"
#include "server/server.h"

namespace store {

// Most bytes of replies held back while a read's requests are handled; a reply that would pass
// it goes out at once, after those held.
constexpr size_t kMaxCorkBytes = 256u << 10;

// A store_list in progress: it pages through the table in uid order (ObjectTable::
// ForEachVisibleBetween), from the object after the last one listed up to the newest when it
// started. A few words per client, however many objects.
struct Server::ListCursor {
  uint64_t id = 0;     // the cursor the client pages with
  uint64_t upto = 0;   // the newest uid when the list started
  uint64_t after = 0;  // the last uid listed
  uint64_t total = 0;  // visible objects when the list started
};

struct Server::Client {
  Server* server = nullptr;
  uint64_t id = 0;
  uv_pipe_t pipe{};
  proto::FrameBuffer in{proto::kMaxRequestBytes};
  bool handshaken = false;
  bool read_only = false;        // connected read-only: changes are refused (STORE_EPERM)
  bool closing = false;
  bool doomed = false;           // to be closed from the loop's check phase (see DeferClose)
  const char* doom_reason = "";
  std::string name;
  int32_t pid = 0;
  uid_t uid = 0;
  std::unordered_map<uint64_t, uint32_t> readers;  // object uid -> readers held
  std::unordered_map<uint64_t, uint32_t> pins;     // object uid -> pins held
  struct HeldLease {
    ObjectKey id;    // the object's id (an unlease names the id; the instance may be deleted)
    uint32_t n = 0;  // leases held
  };
  std::unordered_map<uint64_t, HeldLease> leases;  // object uid -> leases held
  std::unordered_set<uint64_t> creating;           // uids of this client's CREATED objects
  // What the list of clients shows of those, counted as they change (Server::Hold, Unhold):
  uint64_t readers_held = 0;  // sum of readers
  uint64_t pins_held = 0;     // sum of pins
  uint64_t bytes_held = 0;    // the objects it reads, pins or writes, each once (HeldSize)
  bool Holds(uint64_t uid) const {
    return readers.count(uid) || pins.count(uid) || creating.count(uid);
  }
  std::unordered_set<WaitingGet*> gets;
  std::unordered_set<WaitingCreate*> creates;
  std::unordered_set<EvictWaiter*> evicts;
  std::unique_ptr<ListCursor> list;  // its store_list in progress, if any
  int64_t connect_ns = 0;
  uint64_t objects_created = 0;
  uint64_t requests = 0;
  // Replies to the requests of one read, written together when they are all handled (see
  // Server::Send and Server::Flush).
  bool corked = false;
  std::vector<uint8_t> out;
  // What it makes the server hold, as the limits count it (server/limits.cpp).
  uint32_t waiting = 0;        // its waiting gets, creates and evicts
  uint64_t waiting_bytes = 0;  // the bytes they hold
  uint64_t backlog = 0;        // reply bytes queued to it, as last counted
  uint32_t pending_fds = 0;    // descriptors in its replies not yet written
  size_t input_held = 0;       // bytes its input buffer holds, as last counted
  bool input_refused = false;  // its input buffer may not grow (--max-partial-bytes)
  bool deferred = false;       // its next request waits for the next turn (Server::turn_)
};

struct Server::GpuDevice {
  cuda::DeviceInfo info;
  std::unique_ptr<cuda::ChunkAllocator> alloc;
  struct Chunk {
    int fd;        // owned by the device backend
    uint64_t uid;  // random: the key under which client processes keep their imports
  };
  std::vector<Chunk> chunks;  // index = the allocator's chunk index
  uint64_t objects = 0;
  // Creates waiting for its memory, in arrival order (WaitingCreate::at): served from the
  // head, so a device's waiters cost nothing to the creates and frees of the others.
  std::list<WaitingCreate*> create_queue;
};

// A get that waits for some of its ids. Each id is taken once, when it is first readable: the
// client then holds a reader of that instance, so a later delete, spill or new seal of the id
// changes nothing for this get.
struct Server::WaitingGet {
  Client* client = nullptr;
  uint64_t seq = 0;
  int64_t timeout = 0;             // as asked; 0: no wait for room to restore an object
  std::vector<ObjectKey> ids;      // as asked, in order
  std::vector<uint64_t> taken;     // per id: the instance taken (a reader held), 0 while none
  std::vector<int32_t> status;     // per id: the error it ended with, 0 while none
  std::vector<uint32_t> next_same;  // per id: the next position of the same id, or kEnd
  std::vector<uint8_t> resolved;   // per first position of an id: its wait is over
  std::vector<uint32_t> waiting_on;  // first positions of the distinct ids waited for
  // Per first position waited for: where its entry is in its id's list of waiters, so that an
  // entry leaves in O(1) (thousands of gets may wait on one id and all end at its seal).
  std::vector<uint32_t> waiter_at;
  size_t missing = 0;              // of those, not resolved yet
  uv_timer_t timer{};
  bool has_timer = false;
  uint64_t held = 0;               // bytes counted against the waiting limits
  static constexpr uint32_t kEnd = UINT32_MAX;
  // Its bytes per id, as the waiting limits count them: the id, the instance taken, the status,
  // the chain of equal ids, the resolved flag and, for an id waited for, its waiter entry and
  // the entry's place.
  static constexpr uint64_t kHeldPerId = 20 + 8 + 4 + 4 + 1 + 4 + 16 + 48 + 4;
};

// A create's arguments. metadata and inline_data borrow the request's bytes while it is served
// at once; a create that waits calls Own() first, since the request's buffer is reused.
struct Server::CreateArgs {
  ObjectKey id;
  uint64_t data_size = 0;
  std::span<const uint8_t> metadata;
  std::span<const uint8_t> inline_data;
  bool inline_put = false;
  bool leased = false;   // the creator takes a lease; the object goes with its last lease
  int32_t importance = 0;
  int32_t device = -1;

  CreateArgs() = default;
  CreateArgs(CreateArgs&&) = default;  // the vectors' buffers, and so the spans, move along
  CreateArgs& operator=(CreateArgs&&) = default;

  // Copies the borrowed bytes into the args, which then point at their own copies.
  void Own() {
    owned_metadata.assign(metadata.begin(), metadata.end());
    owned_inline_data.assign(inline_data.begin(), inline_data.end());
    metadata = owned_metadata;
    inline_data = owned_inline_data;
  }

 private:
  std::vector<uint8_t> owned_metadata;
  std::vector<uint8_t> owned_inline_data;
};

struct Server::WaitingCreate {
  Client* client = nullptr;
  uint64_t seq = 0;
  CreateArgs args;
  uv_timer_t timer{};
  bool has_timer = false;
  uint64_t held = 0;  // bytes counted against the waiting limits
  std::list<WaitingCreate*>::iterator at;  // its place in its queue
  // What the waiting limits count for it besides its metadata and inline data: itself and its
  // queue entry.
  static constexpr uint64_t kHeld = 3 * sizeof(void*);
};

// An evict request waiting for the spill jobs started for it (Spiller::Eviction).
struct Server::EvictWaiter : Spiller::Eviction {
  Client* client = nullptr;  // nullptr once it disconnected
  uint64_t seq = 0;
  uint64_t held = 0;  // what the waiting limits count for it
};

// Appends to the replies held back for c a copy of the reply in *tmpl (built by build() the
// first time, with every field present, so that each can be written in place) and returns the
// copy; nullptr when no copy can be held (c not corked or going away, the buffer not 8-aligned
// so far, or full).
template <class Build>
proto::Message* Server::HoldCopy(Client* c, std::vector<uint8_t>* tmpl, Build&& build) {
  if (!c->corked || c->closing || c->doomed || c->out.size() % 8 != 0) return nullptr;
  if (tmpl->empty()) {
    flatbuffers::FlatBufferBuilder b(256);
    b.ForceDefaults(true);
    build(b);
    tmpl->assign(b.GetBufferPointer(), b.GetBufferPointer() + b.GetSize());
  }
  if (c->out.size() + tmpl->size() > kMaxCorkBytes) return nullptr;
  size_t at = c->out.size();
  c->out.insert(c->out.end(), tmpl->begin(), tmpl->end());
  return proto::GetMutableSizePrefixedMessage(c->out.data() + at);
}

}  // namespace store
