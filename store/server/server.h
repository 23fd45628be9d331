// server.h - the store server: one libuv loop that owns every piece of state.
//
// Owns: the listening socket, the connected clients, the shared memory Region, the
// ObjectTable, the gets waiting for seals and the creates waiting for space, and the Spiller
// (server/spiller.h), which owns what spilling keeps and calls back through Spiller::Host.
// Called by: tools/store_main.cpp (Run blocks until SIGINT/SIGTERM or Stop()).
// Threads: everything runs on the loop thread. Stop() may be called from any thread.
//
// Requests flow one way: socket -> OnRead (framing, length cap) -> VerifyMessage (flatbuffers
// Verifier) -> Dispatch (semantic checks) -> a Handle* method (state change) -> a reply.
// A request that breaks the protocol gets an error reply and its connection is closed; a
// request that is well formed but cannot be served gets an error reply only. Nothing a client
// sends can stop the server.
//
// The class is defined in several files, one part each: server.cpp (start-up, the loop,
// shutdown), connections.cpp (accept, read, dispatch, replies, closing), objects.cpp (requests
// that change objects, creates waiting for memory, Pump, --when-full drop, evict and prefetch),
// gets.cpp (get, release, gets waiting for objects), introspection.cpp (contains, info, list,
// stats, clients, objects, spill files), metrics.cpp (the metrics file), limits.cpp and gpu.cpp.
#pragma once

#include <uv.h>

#include <cstdint>
#include <deque>
#include <list>
#include <memory>
#include <set>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "cuda/chunk_allocator.h"
#include "cuda/device_backend.h"
#include "eviction/policy.h"
#include "framing.h"
#include "memory/region.h"
#include "objects/object_table.h"
#include "server/options.h"
#include "server/secondly_log.h"
#include "server/spiller.h"
#include "spill/env.h"
#include "spill/spill_dir.h"

namespace store {

class Server final : private Spiller::Host {
 public:
  // env: the filesystem for spilling (nullptr = the real one); tests pass a fault injector.
  explicit Server(ServerOptions options, spill::Env* env = nullptr);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Sets up memory and the socket, serves until stopped, cleans up. Returns the process exit
  // code: 0 after a clean stop, 1 if it could not start (the reason is logged).
  int Run();
  // Asks the loop to stop (async-signal-safe enough for tests: uses uv_async_send).
  void Stop();

 private:
  struct Client;
  struct ListCursor;
  struct WaitingGet;
  struct WaitingCreate;
  struct CreateArgs;
  struct EvictWaiter;
  struct GpuDevice;

  // Start-up and shutdown.
  bool PrepareSocket();
  bool Listen();
  void Shutdown();
  static void OnSignal(uv_signal_t* h, int signum);
  static void OnAsyncStop(uv_async_t* h);
  static void OnMetricsTimer(uv_timer_t* t);
  void WriteMetrics();

  // Connections.
  static void OnConnection(uv_stream_t* server, int status);
  static void OnAlloc(uv_handle_t* h, size_t suggested, uv_buf_t* buf);
  static void OnRead(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf);
  void ProcessInput(Client* c);
  void CloseClient(Client* c, const char* why);
  // Closes c once the current callback is done: for failures found while replying, when the
  // caller may still be walking state that closing would free. Later replies are dropped.
  void DeferClose(Client* c, const char* why);
  void ReleaseClientState(Client* c);

  // Limits (server/limits.cpp): what clients make the server hold, each bounded by a flag,
  // counted in O(1) per request, reported in stats and logged at most once a second each.
  enum LimitKind {
    kLimitClientWaiting, kLimitWaitingBytes, kLimitClientBacklog, kLimitBacklog, kLimitPartial,
    kLimitClients, kLimitAccept, kLimitGpuFds, kLimitObjects, kLimitKinds
  };
  // Raises the descriptor limit, works out --max-clients' default, sets up the read buffer.
  void SetUpLimits();
  // Counts a hit of limit k; true when it is to be logged now (then LogLimit says what).
  bool LimitHit(LimitKind k);
  void LogLimit(LimitKind k, const Client* c, const std::string& what);
  // Whether c may have one more waiting request holding bytes; if not, it gets STORE_ELIMIT.
  // The bytes are counted until EndWaiting.
  bool AdmitWaiting(Client* c, uint64_t seq, uint64_t bytes);
  void EndWaiting(Client* c, uint64_t bytes);
  // Recounts c's reply backlog from its stream's write queue; CheckBacklog also disconnects
  // clients over --max-client-backlog and --max-backlog.
  void NoteBacklog(Client* c);
  void CheckBacklog(Client* c);
  static void OnWritten(uv_write_t* req, int status);
  // A new connection: false (and refused with STORE_ELIMIT) over --max-clients.
  bool AdmitClient(Client* c);
  // Whether c may be sent one more reply carrying a GPU chunk's descriptor.
  bool AdmitGpuFd(Client* c, uint64_t seq);
  // Whether one more object may be created under --max-objects (with --when-full drop, after
  // dropping the least valuable unused objects); if not, *message says why (STORE_ELIMIT).
  bool AdmitObject(Client* c, std::string* message);
  // Partial frames: whether c's input buffer may grow to `held` bytes under
  // --max-partial-bytes, disconnecting the client holding the most if not (c itself: false).
  bool HoldInput(Client* c, size_t held);
  // After a read: the read buffer lent to c is given back, its own buffer trimmed and counted.
  void KeepInput(Client* c);
  void NoteInput(Client* c);

  // Replies.
  // Sends the reply in fbb_ (with fd, if given). While a read's requests are handled the
  // reply is held back in the client's buffer, up to kMaxCorkBytes, and Flush writes them all.
  void Send(Client* c, int fd = -1);
  void Flush(Client* c);
  // A copy of a reply template appended to c's held-back replies, to write values into.
  template <class Build>
  static proto::Message* HoldCopy(Client* c, std::vector<uint8_t>* tmpl, Build&& build);
  void SendError(Client* c, uint64_t seq, int code, const std::string& message);
  void SendEmpty(Client* c, uint64_t seq, proto::Body type, flatbuffers::Offset<void> body);
  // Sends an error and closes the connection: for requests that break the protocol.
  void ProtocolError(Client* c, uint64_t seq, const std::string& message);

  // Requests.
  void Dispatch(Client* c, const proto::Message* m);
  void HandleConnect(Client* c, uint64_t seq, const proto::ConnectRequest* r);
  void HandleCreate(Client* c, uint64_t seq, const proto::CreateRequest* r);
  void HandleSeal(Client* c, uint64_t seq, const proto::SealRequest* r);
  void HandleAbort(Client* c, uint64_t seq, const proto::AbortRequest* r);
  void HandleGet(Client* c, uint64_t seq, const proto::GetRequest* r);
  void HandleRelease(Client* c, uint64_t seq, const proto::ReleaseRequest* r);
  void HandleContains(Client* c, uint64_t seq, const proto::ContainsRequest* r);
  void HandleDelete(Client* c, uint64_t seq, const proto::DeleteRequest* r);
  void HandleInfo(Client* c, uint64_t seq, const proto::InfoRequest* r);
  void HandleList(Client* c, uint64_t seq, const proto::ListRequest* r);
  void HandlePin(Client* c, uint64_t seq, const proto::PinRequest* r);
  // Leases (server/objects.cpp): objects created leased go with their last lease.
  void HandleLease(Client* c, uint64_t seq, const proto::LeaseRequest* r);
  // Drops n of c's leases on the object with this uid; deletes it if that was the last lease on
  // an object created leased. Returns whether memory may have been freed.
  bool DropLeases(uint64_t uid, uint32_t n);
  // Deletes o as store_delete does (unlink; tombstones for its copies on disk). Returns whether
  // its memory was freed. The caller counts it (a delete, or a drop).
  bool DeleteObject(Object* o);
  void HandleUnpin(Client* c, uint64_t seq, const proto::UnpinRequest* r);
  void HandleStats(Client* c, uint64_t seq);
  void HandleClients(Client* c, uint64_t seq);
  void HandleObjects(Client* c, uint64_t seq, const proto::ObjectsRequest* r);

  // Object operations shared by several requests.
  // Tries to allocate and insert; returns STORE_OK, or an error with *message set.
  int TryCreate(Client* c, const CreateArgs& a, Object** out, std::string* message);
  // --when-full drop (server/objects.cpp): deletes the least valuable objects nobody uses
  // (eviction order; not leased) until `size` bytes can be allocated, and allocates them. Drops
  // nothing and returns nullptr when all of those would not free enough.
  void* DropForRoom(uint64_t size, uint64_t* usable);
  // Whether freeing every object in the eviction order (spilled or dropped) could make a run
  // of `size` bytes in one piece. O(n log n). Asked at every pump while something waits for
  // more memory than is free; a "no" stands until memory is freed or an object joins the
  // order, and even then, like a "yes", for a time 20 times as long as finding it took (so
  // that a client whose gets, releases or unpins put objects back in the order cannot make the
  // loop spend more than about a twentieth of its time on it); a timer pumps when a standing
  // "no" is over (OnRoomTimer).
  bool RoomPossible(uint64_t size);
  // Whether a "no" of RoomPossible stands for `size` now (O(1)).
  bool NoRoomStands(uint64_t size);
  // Whether spilling for `size` may make its room: RoomPossible where it is cheap to ask (up to
  // 16,384 candidates), else yes unless a "no" stands.
  bool SpillingMayFit(uint64_t size);
  struct NoRoom {
    uint64_t epoch = UINT64_MAX;  // region frees + eviction-order joins when it was found
    uint64_t size = 0;            // the smallest size found not to fit then
    int64_t recheck_ns = 0;       // MonotonicNs() before which it stands whatever the epoch
  } no_room_;
  struct RoomYes {
    uint64_t size = 0;     // the largest size found to fit
    int64_t until_ns = 0;  // MonotonicNs() before which that stands
  } room_yes_;
  static void OnRoomTimer(uv_timer_t* t);
  uv_timer_t room_timer_{};
  bool room_timer_active_ = false;
  bool DropMode() const { return options_.when_full == WhenFull::kDrop; }
  // Created with STORE_CREATE_LEASED (deleted when its last lease goes).
  bool CreatedLeased(const Object* o) const override;
  // In drop mode a leased object is kept: out of the eviction order while any lease on it lasts
  // (Object::lease_kept), so that what a drop walks is only what it may take. Call with true
  // when a lease is taken, false when the last goes; nothing outside drop mode.
  void KeepLeased(Object* o, bool kept);
  // Counts drops; logs them at most once a second, aggregated (FlushDropLog).
  void NoteDrops(uint64_t objects, uint64_t bytes);
  void FlushDropLog();
  void ReplyCreated(Client* c, uint64_t seq, const Object* o);
  void SealObject(Object* o);
  // Tells the gets waiting for this id that its object changed: sealed, restored, failed to
  // restore, or deleted while on disk. Each get takes the id (or its error) once.
  void NotifyWaiters(const ObjectKey& id) override;
  // Makes c a reader of o (readable): counts, access time. STORE_OK, or STORE_EMISUSE when o or
  // c already holds the most readers a count can hold.
  int TakeReader(Client* c, Object* o, int64_t now);
  // Takes o for every position of g's id at first_pos (an error there ends those positions).
  void TakeForGet(WaitingGet* g, uint32_t first_pos, Object* o, int64_t now);
  void Unregister(WaitingGet* g, uint32_t first_pos);
  struct GetWaiters;
  // list[from] into list[to], telling its get where it is now.
  static void MoveWaiter(GetWaiters* w, uint32_t from, uint32_t to);
  void FreeObject(Object* o);
  // Frees o if it is deleted, unread and not in the middle of IO.
  bool MaybeFree(Object* o) override;
  void ReleaseReader(Client* c, Object* o);
  // What the list of clients counts (Client::readers_held, pins_held, bytes_held) as they
  // change, O(1) each. Hold: c takes its first reader, pin or create of o (call before adding
  // it); Unhold: c's last one went (call after removing it). An object is counted once, by
  // HeldSize: what it takes in memory, also while a pinned one is still on disk.
  void Hold(Client* c, const Object* o);
  void Unhold(Client* c, const Object* o);
  uint64_t HeldSize(const Object* o) const;
  // The pins clients hold on o, which is being freed (deleted while pinned), go with it.
  void DropPinsOf(const Object* o);
  // Serves what waits for memory (restores, then creates, in order), spilling to make room;
  // the one place that decides. Reentrant calls are folded into the running one. Its invariant
  // is stated where it is defined (server/objects.cpp).
  void Pump() override;
  bool ServeWaitingCreates();
  // Spilling cannot make room now: gets that do not wait for room (timeout 0) end with
  // STORE_ENOSPACE, restores nobody waits for are dropped; the rest wait for their deadlines.
  void StallRestores();

  // What the Spiller asks of the server (Spiller::Host); the others are above.
  bool GetsWaitFor(const ObjectKey& id) const override;
  uint64_t WaitingCreateBytes() const override;
  void EvictDone(Spiller::Eviction* e) override;
  void ReplyDelete(const Spiller::DeferredDelete& d, const std::string& why) override;

  // Requests for the spiller (server/objects.cpp) and about it (server/introspection.cpp).
  void FinishEvict(EvictWaiter* ew);
  void HandlePrefetch(Client* c, uint64_t seq, const proto::PrefetchRequest* r);
  void HandleEvict(Client* c, uint64_t seq, const proto::EvictRequest* r);
  void HandleSetImportance(Client* c, uint64_t seq, const proto::SetImportanceRequest* r);
  void HandleSpillFiles(Client* c, uint64_t seq, const proto::SpillFilesRequest* r);
  void CompleteGet(WaitingGet* g, bool timed_out);
  proto::ObjectLocation* HoldGetOneReply(Client* c, uint64_t seq);
  // Writes where o is into *loc and makes c a reader of it, if o is readable; else the status
  // of a get that did not find it.
  void Locate(Client* c, Object* o, int64_t now, bool timed_out, proto::ObjectLocation* loc);
  // Where o (readable, already taken for the client) is.
  void Where(const Object* o, proto::ObjectLocation* loc) const;
  void CancelGet(WaitingGet* g);
  void FinishCreateWait(WaitingCreate* w, int status, const std::string& message);
  std::string FullMessage(uint64_t want) const;
  // GPU objects (server/gpu.cpp).
  void StartGpu();
  GpuDevice* FindGpu(int device) const;
  std::string GpuDevicesText() const;
  int CheckGpuCreate(const CreateArgs& a, bool inline_put, std::string* message) const;
  std::string GpuFullMessage(int device, uint64_t want) const;
  int GpuAllocate(int device, uint64_t size, Object* proto, std::string* message);
  void GpuFree(Object* o);
  // Serves the GPU creates waiting for device memory; true when none is left waiting.
  bool ServeWaitingGpuCreates();
  void HandleGpuChunk(Client* c, uint64_t seq, const proto::GpuChunkRequest* r);
  flatbuffers::Offset<flatbuffers::Vector<const proto::GpuDeviceStats*>> GpuStats();
  proto::GpuBackend GpuBackendKind() const;
  // Why a create gets no space now: host memory or its device.
  std::string NoSpaceMessage(const CreateArgs& a) const;
  proto::ObjectInfo InfoOf(const Object& o) const;
  // Where replies put an object: its offset in the region (0 when not in memory), and the
  // device memory of a GPU object (0 for a host object, whose entry holds a spill record there).
  uint64_t OffsetOf(const Object* o) const { return o->data ? region_->OffsetOf(o->data) : 0; }
  static uint64_t GpuOffsetOf(const Object* o) { return o->on_gpu() ? o->gpu_offset : 0; }
  static uint32_t GpuChunkOf(const Object* o) { return o->on_gpu() ? o->gpu_chunk : 0; }

  ServerOptions options_;
  uv_loop_t loop_{};
  uv_pipe_t listener_{};
  uv_signal_t sigint_{}, sigterm_{};
  uv_async_t async_stop_{};
  uv_check_t closer_{};
  std::vector<uint64_t> doomed_;
  // Turns of the loop. A page of the objects (ObjectsRequest) is a pass over the whole table,
  // a second or more for millions of objects: one runs per turn at most. A client whose next
  // request is one when one already ran stops being read, its input kept, until the next turn
  // (an idle handle, so the loop does not sleep meanwhile); the other clients are served in
  // between, in turns that each hold at most one such pass.
  uv_idle_t turn_{};
  bool scanned_ = false;            // a page of the objects was made in this turn
  uint64_t scanner_ = 0;            // by this client
  std::vector<uint64_t> deferred_;  // clients waiting for the next turn, in order
  static void OnTurn(uv_idle_t* h);
  void Defer(Client* c);
  void ResumeInput(Client* c);
  uv_timer_t metrics_timer_{};
  bool metrics_active_ = false;
  bool metrics_failing_ = false;
  bool listening_ = false;
  bool stopping_ = false;
  std::unique_ptr<Region> region_;
  ObjectTable table_;
  std::unordered_map<uint64_t, Client*> clients_;
  struct LeaseState {
    uint32_t count = 0;        // leases over all clients
    bool auto_delete = false;  // created leased: deleted when count reaches 0
  };
  std::unordered_map<uint64_t, LeaseState> leases_;  // by object uid; only leased objects
  uint64_t next_client_id_ = 1;
  uint64_t next_list_id_ = 1;  // store_list cursors (ListCursor::id)
  struct GetWaiter {
    WaitingGet* get;
    uint32_t first_pos;  // of the id in the get's ids
  };
  // The gets waiting for an id. Those that asked not to wait for room (timeout 0) come first,
  // list[0, zero): a stall tells them, however many others wait (StallRestores).
  struct GetWaiters {
    std::vector<GetWaiter> list;
    uint32_t zero = 0;
  };
  std::unordered_map<ObjectKey, GetWaiters, ObjectKeyHash> get_waiters_;
  size_t waiting_gets_ = 0;
  // Lists, each entry knowing its place (WaitingCreate::at): one leaves in O(1) when it times
  // out or its client goes, however many wait.
  std::list<WaitingCreate*> create_queue_;
  // GPU objects.
  std::unique_ptr<cuda::DeviceBackend> gpu_backend_;
  std::vector<std::unique_ptr<GpuDevice>> gpus_;
  std::string gpu_disabled_why_;
  size_t gpu_waiting_ = 0;  // GPU creates waiting for device memory (GpuDevice::create_queue)
  // The queue a create for this device waits in (an empty one for a device not served).
  std::list<WaitingCreate*>& CreateQueueFor(int device);
  std::list<WaitingCreate*> no_queue_;
  bool gpu_freed_ = false;                       // since the queue was last served
  flatbuffers::FlatBufferBuilder fbb_{1024};
  std::vector<uint8_t> created_reply_;  // the create reply ReplyCreated copies (built once)
  std::vector<uint8_t> get_one_reply_;  // the reply to a get of one id CompleteGet copies
  std::vector<Object*> get_scratch_;    // HandleGet's objects of a get answered at once
  bool pumping_ = false, pump_again_ = false;
  // Holds Pump back while it lives (a Pump called meanwhile runs when it ends): for work that
  // must finish before a pump may free what it uses.
  class PumpHold {
   public:
    explicit PumpHold(Server* s) : s_(s), held_(!s->pumping_) { s_->pumping_ = true; }
    ~PumpHold() {
      if (!held_) return;
      s_->pumping_ = false;
      if (s_->pump_again_) s_->Pump();
    }
    PumpHold(const PumpHold&) = delete;
    PumpHold& operator=(const PumpHold&) = delete;

   private:
    Server* s_;
    bool held_;
  };

  // Spilling: the Spiller, and the evict requests waiting for its writes.
  Spiller spiller_;
  // --when-full drop: totals since start (stats), and the drops not logged yet.
  struct DropTotals {
    uint64_t objects = 0, bytes = 0;
  } drop_totals_, drop_unlogged_;
  SecondlyLog drop_log_;
  // Protocol errors: one logged a second at most, the others counted.
  CountedLog protocol_log_;
  int64_t start_ns_ = 0;
  int64_t start_realtime_ns_ = 0;  // CLOCK_REALTIME at start (store_stats.start_time_ns)
  uint64_t instance_id_ = 0;       // random, never 0 (store_stats.instance_id)
  uint64_t max_object_ = 0;  // the largest allocation the empty region allowed
  // Limits (server/limits.cpp).
  struct LimitState {
    uint64_t hits = 0;
    int64_t log_until = 0;  // monotonic ns: hits before then are counted, not logged
    uint64_t quiet = 0;     // hits not logged since the last line
  };
  LimitState limits_[kLimitKinds];
  uint64_t waiting_bytes_ = 0;  // held by waiting gets and creates
  uint64_t backlog_bytes_ = 0;  // queued replies, over all clients
  uint64_t partial_bytes_ = 0;  // clients' input buffers
  uint64_t pending_fds_ = 0;    // descriptors in replies not yet written
  uint64_t max_clients_ = 0;
  uint64_t max_objects_ = 0;    // --max-objects, or its default
  uint64_t fd_limit_ = 0;
  uint64_t gpu_fd_pool_ = 0;    // descriptors kept for GPU chunk replies, over all clients
  std::unique_ptr<uint64_t[]> read_buf_;  // every connection reads into it (FrameBuffer::Lend)
  struct Totals {
    uint64_t creates = 0, seals = 0, gets = 0, releases = 0, deletes = 0, aborts = 0, full = 0;
    uint64_t contains = 0, infos = 0, lists = 0, pins = 0, unpins = 0;
    uint64_t requests = 0, bad_requests = 0;
  } totals_;
};

}  // namespace store
